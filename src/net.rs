//! TCP connections with two kinds of writer: a task that writes through
//! [`Conn`], an `AsyncWrite` that may wait (hyper and tungstenite on a
//! WebSocket; a peer link's task on the peer wire), and threads that put a
//! whole frame on the socket at once and never wait ([`Socket::write_now`]:
//! the hub's delivering threads; the publish path relaying to a peer).
//!
//! Every write goes through one lock per connection, so frames never
//! interleave, and nothing waits while holding it: a write takes what the
//! kernel accepts now and keeps the rest of a frame, to send before
//! anything else. `Conn`'s writes are accepted into that rest (a bounded
//! amount) and sent when they flush; a frame offered to `write_now` while a
//! rest is waiting is not taken ([`Written::Busy`]), and its writer hands it
//! to the task, which waits for the socket.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::Shutdown;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes of [`Conn`]'s writes kept unsent before they have to wait
/// for the socket: room for a frame of coalesced messages and a few
/// replies.
const REST_LIMIT: usize = 128 * 1024;

/// What [`Socket::write_now`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// All of it is out (or the connection is closing and it was dropped).
    All,
    /// Part of it is out; the socket keeps the rest and sends it before
    /// anything else once its writer flushes.
    Partly,
    /// Nothing was taken: the socket cannot take more now, or bytes are
    /// waiting before it.
    Busy,
}

/// The connection as its task reads and writes it.
pub struct Conn(Arc<Socket>);

impl Conn {
    /// A connection over `stream`, and the socket for direct writes.
    pub fn new(stream: TcpStream) -> (Self, Arc<Socket>) {
        let socket = Arc::new(Socket {
            stream,
            out: Mutex::new(Out {
                rest: Vec::new(),
                closed: false,
            }),
        });
        (Self(socket.clone()), socket)
    }

    /// The socket for direct writes.
    pub fn socket(&self) -> &Arc<Socket> {
        &self.0
    }
}

/// A TCP socket and what is waiting to be written to it.
pub struct Socket {
    stream: TcpStream,
    out: Mutex<Out>,
}

struct Out {
    /// Bytes accepted but not yet written; they go before anything else.
    rest: Vec<u8>,
    /// No more frames from `write_now`.
    closed: bool,
}

impl Socket {
    // NB: a poisoned lock only means a thread panicked while holding it;
    // the buffer is still whole, so writing carries on.
    fn lock(&self) -> MutexGuard<'_, Out> {
        self.out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The TCP stream underneath.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Whether nothing is kept unsent.
    pub fn is_drained(&self) -> bool {
        self.lock().rest.is_empty()
    }

    /// Stops frames from [`write_now`](Self::write_now): from now on only
    /// [`Conn`] writes (a WebSocket's close frame is the last thing out).
    pub fn close_frames(&self) {
        self.lock().closed = true;
    }

    /// Writes what is kept unsent, waiting for the socket as needed.
    pub async fn flush(&self) -> io::Result<()> {
        poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Waits until the socket can take more bytes.
    pub async fn writable(&self) -> io::Result<()> {
        self.stream.writable().await
    }

    /// Writes `head` then `body` as one frame now, if nothing is waiting
    /// before it, keeping whatever the socket does not take. Once frames
    /// are closed (by [`close_frames`](Self::close_frames), or by a failed
    /// write: the connection is gone, and its reader sees that) the frame
    /// is dropped with a `NotConnected` error.
    pub fn write_now(&self, head: &[u8], body: &[u8]) -> io::Result<Written> {
        let mut out = self.lock();
        if out.closed {
            return Err(io::ErrorKind::NotConnected.into());
        }
        if !out.rest.is_empty() {
            return Ok(Written::Busy);
        }
        match self.write_frame(&mut out, head, body) {
            Ok(Some(written)) => Ok(written),
            Ok(None) => Ok(Written::Busy),
            Err(e) => {
                out.closed = true;
                Err(e)
            }
        }
    }

    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut out = self.lock();
            match self.send_rest(&mut out) {
                Ok(true) => return Poll::Ready(Ok(())),
                Ok(false) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            drop(out);
            ready!(self.stream.poll_write_ready(cx))?;
        }
    }

    /// Writes as much of the rest as the socket takes now. Ok(true) once
    /// nothing is left.
    fn send_rest(&self, out: &mut Out) -> io::Result<bool> {
        while !out.rest.is_empty() {
            match self.stream.try_write(&out.rest) {
                Ok(n) => {
                    out.rest.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        // Frees a slow reader's buffer once it has caught up.
        out.rest = Vec::new();
        Ok(true)
    }

    /// Writes `head` then `body` now, keeping whatever the socket does not
    /// take. `None` if it took nothing (the socket is full).
    fn write_frame(&self, out: &mut Out, head: &[u8], body: &[u8]) -> io::Result<Option<Written>> {
        let bufs = [head, body];
        let total = head.len() + body.len();
        let slices = [IoSlice::new(head), IoSlice::new(body)];
        let mut sent = match self.stream.try_write_vectored(&slices) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        };
        if sent == total {
            return Ok(Some(Written::All));
        }
        for buf in bufs {
            let skip = sent.min(buf.len());
            out.rest.extend_from_slice(&buf[skip..]);
            sent -= skip;
        }
        Ok(Some(Written::Partly))
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let socket = &*self.0;
        loop {
            let mut out = socket.lock();
            if socket.send_rest(&mut out)? && socket.write_frame(&mut out, &[], buf)?.is_some() {
                return Poll::Ready(Ok(buf.len()));
            }
            if out.rest.len() + buf.len() <= REST_LIMIT {
                out.rest.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            drop(out);
            ready!(socket.stream.poll_write_ready(cx))?;
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.0.poll_flush(cx))?;
        Poll::Ready(socket2::SockRef::from(&self.0.stream).shutdown(Shutdown::Write))
    }
}
