//! The public listener's TCP connections, shared by their two writers.
//!
//! A connection is read and written by hyper, and after the upgrade by
//! tungstenite (requests in; replies, pings and close frames out), and it
//! is also written by the hub's delivering threads, which put message frames
//! straight on the socket ([`Outlet`], the session's [`Wire`]). Every write
//! goes through one lock per connection, so frames never interleave.
//!
//! Nothing here waits while holding the lock: a write takes what the kernel
//! accepts now, and keeps the rest of a frame to send before anything else.
//! hyper's and tungstenite's writes are accepted into that rest (a bounded
//! amount) and sent when they flush; a delivering thread that finds a rest
//! leaves the frame to the session ([`Written::Busy`]), which waits for the
//! socket.

use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use super::session::Meters;
use crate::hub::{Outgoing, Wire, Written};
use crate::stats;

/// Most bytes of hyper's and tungstenite's writes kept unsent before they
/// have to wait for the socket: room for a frame of coalesced messages and
/// a few replies.
const REST_LIMIT: usize = 128 * 1024;

/// Accepts TCP connections for the HTTP routers, with `TCP_NODELAY` set,
/// as [`Conn`]s whose sockets the gateway can hand to the hub.
pub struct SharedListener(TcpListener);

impl SharedListener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener) -> Self {
        Self(listener)
    }

    /// The next connection and its peer's address.
    pub async fn accept(&mut self) -> (Conn, SocketAddr) {
        // axum's accept retries, and backs off on errors such as running
        // out of file descriptors.
        let (stream, addr) = Listener::accept(&mut self.0).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        (Conn(Arc::new(Socket::new(stream))), addr)
    }
}

/// One accepted connection as hyper sees it.
pub struct Conn(Arc<Socket>);

impl Conn {
    /// The connection as the requests arriving on it carry it.
    pub fn connection(&self) -> Connection {
        Connection(self.0.clone())
    }

    /// Writes what of `bytes` the socket takes now, without waiting: for a
    /// last word before the connection is dropped.
    pub fn try_write(&self, bytes: &[u8]) -> io::Result<usize> {
        self.0.stream.try_write(bytes)
    }
}

/// The connection a request arrived on: the extension through which the
/// WebSocket gateway reaches the socket under an upgrade.
#[derive(Clone)]
pub struct Connection(pub Arc<Socket>);

/// A TCP socket and what is waiting to be written to it.
pub struct Socket {
    stream: TcpStream,
    out: Mutex<Out>,
}

struct Out {
    /// Bytes accepted but not yet written; they go before anything else.
    rest: Vec<u8>,
    /// The session is closing: no more message frames.
    closed: bool,
}

impl Socket {
    /// The address of the socket's other end (a client, or its proxy).
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.stream.peer_addr().ok().map(|a| a.ip())
    }

    fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            out: Mutex::new(Out {
                rest: Vec::new(),
                closed: false,
            }),
        }
    }

    // NB: a poisoned lock only means a thread panicked while holding it;
    // the buffer is still whole, so writing carries on.
    fn lock(&self) -> MutexGuard<'_, Out> {
        self.out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops message frames: from now on the session's close frame is the
    /// last thing written.
    pub fn close_messages(&self) {
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
        // Frees a slow client's buffer once it has caught up.
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

/// A session's socket as the hub writes to it: message frames, counted in
/// the gateway's meters.
pub struct Outlet {
    socket: Arc<Socket>,
    meters: Meters,
}

impl Outlet {
    /// The outlet of `socket`, counting into `meters`.
    pub fn new(socket: Arc<Socket>, meters: Meters) -> Self {
        Self { socket, meters }
    }

    /// The socket written to.
    pub fn socket(&self) -> &Socket {
        &self.socket
    }

    /// Where writes are counted.
    pub fn meters(&self) -> &Meters {
        &self.meters
    }
}

impl Wire for Outlet {
    fn write_now(&self, batch: &[Outgoing]) -> Written {
        let Some(first) = batch.first() else {
            return Written::All;
        };
        let mut out = self.socket.lock();
        if out.closed {
            return Written::All;
        }
        if !out.rest.is_empty() {
            return Written::Busy;
        }
        let joined;
        let payload: &[u8] = match batch {
            [one] => one.frame().as_bytes(),
            _ => {
                joined = join(batch);
                &joined
            }
        };
        let mut header = [0u8; 10];
        let header = text_header(payload.len(), &mut header);
        match self.socket.write_frame(&mut out, header, payload) {
            Ok(Some(written)) => {
                drop(out);
                stats::add(&self.meters.counters.bytes_out, payload.len() as u64);
                if let Some(message) = first.message() {
                    let waited = message.received().elapsed().as_secs_f64();
                    self.meters.latency.record(waited, &[]);
                }
                written
            }
            Ok(None) => Written::Busy,
            Err(e) => {
                // The connection is gone; its session sees that on its next
                // read and ends. Nothing more is written to it.
                tracing::debug!(error = %e, "message write failed");
                out.closed = true;
                Written::All
            }
        }
    }
}

/// Protocol v1 messages, newline-separated, as one text payload.
fn join(batch: &[Outgoing]) -> Vec<u8> {
    let size = batch.iter().map(|m| m.frame().len() + 1).sum();
    let mut joined = Vec::with_capacity(size);
    for (i, message) in batch.iter().enumerate() {
        if i > 0 {
            joined.push(b'\n');
        }
        joined.extend_from_slice(message.frame().as_bytes());
    }
    joined
}

/// The header of an unmasked, final text frame of `len` bytes (RFC 6455
/// §5.2), written into `buf`.
fn text_header(len: usize, buf: &mut [u8; 10]) -> &[u8] {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Text),
        ..FrameHeader::default()
    };
    let mut cursor = io::Cursor::new(&mut buf[..]);
    header
        .format(len as u64, &mut cursor)
        .expect("a server frame header fits in 10 bytes");
    let used = cursor.position() as usize;
    &buf[..used]
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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::message::sample;
    use crate::stats::Counters;

    /// Stands for the id generator tests used to pass around.
    struct Ids;

    fn message(_: &Ids, data: &str) -> Outgoing {
        Outgoing::Message(sample("t", 1, data))
    }

    /// An outlet on one end of a loopback connection, and the other end.
    async fn pair() -> (Outlet, TcpStream, Arc<Counters>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let client = TcpStream::connect(listener.local_addr().expect("addr"));
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (server, _) = accepted.expect("accept");
        let counters = Arc::new(Counters::default());
        let meters = Meters {
            counters: counters.clone(),
            latency: opentelemetry::global::meter("test")
                .f64_histogram("latency")
                .build(),
        };
        let outlet = Outlet::new(Arc::new(Socket::new(server)), meters);
        (outlet, client.expect("connect"), counters)
    }

    /// Reads one unmasked frame: its first byte and its payload.
    async fn read_frame(client: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.expect("frame header");
        let len = match head[1] {
            126 => u64::from(client.read_u16().await.expect("length")),
            127 => client.read_u64().await.expect("length"),
            n => u64::from(n),
        };
        let mut payload = vec![0u8; len as usize];
        client.read_exact(&mut payload).await.expect("payload");
        (head[0], payload)
    }

    #[test]
    fn text_headers_use_the_shortest_length_encoding() {
        let mut buf = [0u8; 10];
        assert_eq!(text_header(5, &mut buf), [0x81, 5]);
        assert_eq!(text_header(300, &mut buf), [0x81, 126, 1, 44]);
        assert_eq!(
            text_header(70_000, &mut buf),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 17, 112]
        );
    }

    #[tokio::test]
    async fn a_batch_goes_out_as_one_text_frame_of_newline_separated_messages() {
        let (outlet, mut client, counters) = pair().await;
        let ids = Ids;
        let batch = [message(&ids, "1"), message(&ids, "2")];
        assert_eq!(outlet.write_now(&batch[..1]), Written::All);
        assert_eq!(outlet.write_now(&batch), Written::All);

        let (first, alone) = read_frame(&mut client).await;
        assert_eq!(first, 0x81, "final text frame");
        assert_eq!(alone, batch[0].frame().as_bytes());
        let (_, joined) = read_frame(&mut client).await;
        let expected = format!(
            "{}\n{}",
            batch[0].frame().as_str(),
            batch[1].frame().as_str()
        );
        assert_eq!(joined, expected.as_bytes());
        let bytes_out = counters
            .bytes_out
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(bytes_out as usize, alone.len() + joined.len());
    }

    #[tokio::test]
    async fn a_full_socket_keeps_the_rest_of_a_frame_and_sends_it_first() {
        let (outlet, mut client, _) = pair().await;
        let ids = Ids;
        let big = message(&ids, &format!("\"{}\"", "x".repeat(60_000)));
        // The client reads nothing until the socket is full.
        let mut sent = 0;
        let last = loop {
            match outlet.write_now(std::slice::from_ref(&big)) {
                Written::All => sent += 1,
                other => break other,
            }
        };
        if last == Written::Partly {
            sent += 1;
            assert_eq!(
                outlet.write_now(std::slice::from_ref(&big)),
                Written::Busy,
                "nothing goes before the rest"
            );
        }
        // What hyper or tungstenite write now queues behind the rest.
        let mut conn = Conn(outlet.socket.clone());
        let pong = [0x8a, 0];
        let reader = tokio::spawn(async move {
            for _ in 0..sent {
                let (first, payload) = read_frame(&mut client).await;
                assert_eq!((first, payload.len()), (0x81, big.frame().len()));
            }
            read_frame(&mut client).await
        });
        tokio::io::AsyncWriteExt::write_all(&mut conn, &pong)
            .await
            .expect("accepted");
        outlet.socket().flush().await.expect("flushed");
        assert_eq!(reader.await.expect("reader"), (0x8a, Vec::new()));
    }

    #[tokio::test]
    async fn after_close_no_message_frame_is_written() {
        let (outlet, mut client, _) = pair().await;
        let ids = Ids;
        outlet.socket().close_messages();
        assert_eq!(outlet.write_now(&[message(&ids, "1")]), Written::All);
        drop(outlet);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty(), "{rest:?}");
    }
}
