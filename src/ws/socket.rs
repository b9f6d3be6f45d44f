//! The public listener's TCP connections, shared by their two writers
//! ([`crate::net`]): hyper, and after the upgrade tungstenite (requests in;
//! replies, pings and close frames out), write through the [`Conn`]; the
//! hub's delivering threads put message frames straight on the socket
//! ([`Outlet`], the session's [`Wire`]). A delivering thread that finds the
//! socket busy leaves the frame to the session, which waits for it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use super::session::Meters;
use crate::hub::{Wire, Written};
use crate::message::Message;
use crate::net::{Conn, Socket};
use crate::stats;

/// Accepts TCP connections for the public router, with `TCP_NODELAY` set,
/// as [`Conn`]s whose sockets the gateway can hand to the hub.
pub struct SharedListener(TcpListener);

impl SharedListener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener) -> Self {
        Self(listener)
    }
}

impl Listener for SharedListener {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        // axum's own accept loop retries, and backs off on errors such as
        // running out of file descriptors.
        let (stream, addr) = Listener::accept(&mut self.0).await;
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        (Conn::new(stream).0, addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// The connection a request arrived on: the extension through which the
/// WebSocket gateway reaches the socket under an upgrade.
#[derive(Clone)]
pub struct Connection(pub Arc<Socket>);

impl Connected<IncomingStream<'_, SharedListener>> for Connection {
    fn connect_info(stream: IncomingStream<'_, SharedListener>) -> Self {
        Self(stream.io().socket().clone())
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
    fn write_now(&self, batch: &[Arc<Message>]) -> Written {
        let Some(first) = batch.first() else {
            return Written::All;
        };
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
        match self.socket.write_now(header, payload) {
            Ok(Written::Busy) => Written::Busy,
            Ok(written) => {
                stats::add(&self.meters.counters.bytes_out, payload.len() as u64);
                let waited = first.received().elapsed().as_secs_f64();
                self.meters.latency.record(waited, &[]);
                written
            }
            Err(e) => {
                // The session is closing, or the connection is gone (its
                // session sees that on its next read and ends): the frame
                // is dropped.
                if e.kind() != io::ErrorKind::NotConnected {
                    tracing::debug!(error = %e, "message write failed");
                }
                Written::All
            }
        }
    }
}

/// Protocol v1 messages, newline-separated, as one text payload.
fn join(batch: &[Arc<Message>]) -> Vec<u8> {
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    use tokio::net::TcpStream;

    use super::*;
    use crate::message::{IdGenerator, NodeId};
    use crate::stats::Counters;
    use crate::topic::Topic;

    fn message(ids: &IdGenerator, data: &str) -> Arc<Message> {
        let topic = Topic::new("t").expect("valid topic");
        let data = Bytes::from(data.to_owned());
        Arc::new(Message::new(ids.next_id(), topic, data, NodeId::random()))
    }

    /// An outlet on one end of a loopback connection (and the connection
    /// as hyper would hold it), and the other end.
    async fn pair() -> (Outlet, Conn, TcpStream, Arc<Counters>) {
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
        let (conn, socket) = Conn::new(server);
        (
            Outlet::new(socket, meters),
            conn,
            client.expect("connect"),
            counters,
        )
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
        let (outlet, _, mut client, counters) = pair().await;
        let ids = IdGenerator::new(NodeId::random());
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
        let (outlet, mut conn, mut client, _) = pair().await;
        let ids = IdGenerator::new(NodeId::random());
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
        let (outlet, _, mut client, _) = pair().await;
        let ids = IdGenerator::new(NodeId::random());
        outlet.socket().close_frames();
        assert_eq!(outlet.write_now(&[message(&ids, "1")]), Written::All);
        drop(outlet);
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.expect("read");
        assert!(rest.is_empty(), "{rest:?}");
    }
}
