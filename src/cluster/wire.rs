//! The peer wire: how [`PeerFrame`]s travel on a plain TCP (or TLS)
//! connection between two pods, without HTTP/2 in between.
//!
//! A connection opens with [`PREFACE`] from the dialling pod, answered by
//! the same preface from the accepting one; after it, each side sends
//! frames, each a 4-byte big-endian length and that many bytes of a
//! protobuf-encoded `PeerFrame`. The dialling pod sends its hello first;
//! the accepting one answers with its own, or with a refusal and closes.
//!
//! A pod that does not answer the preface (it closes, answers something
//! else, or its TLS knows no [`ALPN`]) is [`DialError::NoWire`]: it is not
//! a herald pod of this wire's version, and the link backs off and retries.

use std::io;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

use super::handshake::Refusal as Refused;
use crate::proto::v1::{Hello, PeerFrame, Refusal, peer_frame};
use crate::tls::PeerTls;

/// The first bytes on a connection, in both directions.
pub const PREFACE: &[u8; 16] = b"herald-peer/3\r\n\n";

/// The wire's ALPN protocol id under TLS.
pub const ALPN: &[u8] = b"herald-peer/3";

/// A connection to a peer: TCP, or TLS over it.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

/// Bytes of the length before each frame.
const LENGTH_BYTES: usize = 4;

/// A connection idle this long is probed...
pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(5);
/// ...every second, and given up after five probes unanswered: a peer that
/// vanished without closing (its node died, a partition) is noticed within
/// about ten seconds, as the gRPC stream's HTTP/2 pings did.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// Probes unanswered before the connection is given up.
pub const KEEPALIVE_PROBES: u32 = 5;
/// Data written but not acknowledged for this long ends the connection too
/// (keepalive probes only an idle one).
#[cfg(target_os = "linux")]
const UNACKED_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes a hello (or a refusal) may take.
const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;

/// Sets up `stream` for the wire: no Nagle delay, and the kernel's
/// keepalive so that a vanished peer ends the connection.
pub fn tune(stream: &TcpStream) {
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    let tuned = stream
        .set_nodelay(true)
        .and_then(|()| socket.set_tcp_keepalive(&keepalive));
    #[cfg(target_os = "linux")]
    let tuned = tuned.and_then(|()| socket.set_tcp_user_timeout(Some(UNACKED_TIMEOUT)));
    if let Err(e) = tuned {
        tracing::debug!(error = %e, "peer connection options not set");
    }
}

/// Why reading frames from a peer failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The length says more than this pod accepts from a peer.
    #[error("a frame of {len} bytes is over the limit of {max}")]
    TooLong {
        /// The frame's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The bytes are not a `PeerFrame`.
    #[error("a frame that does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Appends `frame` to `buf`, length first.
pub fn encode(frame: &PeerFrame, buf: &mut BytesMut) {
    let len = frame.encoded_len();
    buf.reserve(LENGTH_BYTES + len);
    buf.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
    frame.encode_raw(buf);
}

/// Takes the next whole frame off the front of `buf`: `Ok(None)` while
/// it needs more bytes. A frame longer than `max` is an error before its
/// bytes arrive, so a peer cannot make this pod buffer without bound.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<PeerFrame>, WireError> {
    let Some(head) = buf.get(..LENGTH_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(head.try_into().unwrap_or_default()) as usize;
    if len > max {
        return Err(WireError::TooLong { len, max });
    }
    if buf.len() < LENGTH_BYTES + len {
        buf.reserve(LENGTH_BYTES + len - buf.len());
        return Ok(None);
    }
    buf.advance(LENGTH_BYTES);
    let body = buf.split_to(len);
    Ok(Some(PeerFrame::decode(body)?))
}

/// Reads from `reader` into `buf` until a whole frame is there; `Ok(None)`
/// when the connection ends first.
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<PeerFrame>, WireError> {
    loop {
        if let Some(frame) = decode(buf, max)? {
            return Ok(Some(frame));
        }
        buf.reserve(512);
        if reader.read_buf(buf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Why dialling a peer on the wire failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The peer does not answer with the preface: it does not speak the
    /// wire (an earlier release serves only gRPC on this port).
    #[error("{0}")]
    NoWire(&'static str),
    /// The peer refused this pod, saying why.
    #[error("{0}")]
    Refused(String),
    /// The connection failed, or the peer's answer is not a frame.
    #[error("{0}")]
    Wire(#[from] WireError),
}

impl From<io::Error> for DialError {
    fn from(error: io::Error) -> Self {
        Self::Wire(error.into())
    }
}

/// Connects to a peer (under TLS when `tls` is given), sends the preface
/// and `hello`, and waits for the peer's preface and hello.
pub async fn dial(
    address: &str,
    tls: Option<&PeerTls>,
    hello: &PeerFrame,
) -> Result<(Box<dyn PeerIo>, Hello), DialError> {
    let tcp = TcpStream::connect(address).await?;
    tune(&tcp);
    let mut io: Box<dyn PeerIo> = match tls {
        None => Box::new(tcp),
        Some(tls) => match tls.connector().connect(tls.server_name.clone(), tcp).await {
            Ok(stream) => Box::new(stream),
            Err(e) if knows_no_wire(&e) => {
                return Err(DialError::NoWire(
                    "the peer's TLS does not offer the peer wire",
                ));
            }
            Err(e) => return Err(e.into()),
        },
    };
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(PREFACE);
    encode(hello, &mut out);
    io.write_all(&out).await?;
    let mut preface = [0; PREFACE.len()];
    match io.read_exact(&mut preface).await {
        Ok(_) if &preface == PREFACE => {}
        Ok(_) => {
            return Err(DialError::NoWire(
                "the peer answered the preface with something else",
            ));
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) =>
        {
            return Err(DialError::NoWire(
                "the peer closed the connection at the preface",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let mut buf = BytesMut::new();
    match read_frame(&mut io, &mut buf, MAX_HANDSHAKE_BYTES).await? {
        Some(PeerFrame {
            kind: Some(peer_frame::Kind::Hello(theirs)),
        }) => Ok((io, theirs)),
        Some(PeerFrame {
            kind: Some(peer_frame::Kind::Refusal(Refusal { reason })),
        }) => Err(DialError::Refused(reason)),
        _ => Err(DialError::Refused(Refused::NoHello.to_string())),
    }
}

/// Whether a TLS handshake failed because the server offers none of the
/// client's ALPN protocols: a pod of an earlier release speaks only `h2`.
fn knows_no_wire(error: &io::Error) -> bool {
    matches!(
        error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    )
}

/// The accepting side's first half of the handshake: reads the preface
/// and the dialling pod's hello. Bytes read past it stay in `buf`.
pub async fn read_hello<IO: PeerIo>(
    stream: &mut IO,
    buf: &mut BytesMut,
) -> Result<Hello, DialError> {
    let mut preface = [0; PREFACE.len()];
    stream.read_exact(&mut preface).await?;
    if &preface != PREFACE {
        return Err(DialError::NoWire("not the peer wire's preface"));
    }
    match read_frame(stream, buf, MAX_HANDSHAKE_BYTES).await? {
        Some(PeerFrame {
            kind: Some(peer_frame::Kind::Hello(theirs)),
        }) => Ok(theirs),
        _ => Err(DialError::Refused(Refused::NoHello.to_string())),
    }
}

/// Reads the dialler's proof of the cluster secret, the frame after the
/// hellos; an error when the next frame is anything else.
pub async fn read_proof<IO: PeerIo>(
    stream: &mut IO,
    buf: &mut BytesMut,
) -> Result<Vec<u8>, DialError> {
    match read_frame(stream, buf, MAX_HANDSHAKE_BYTES).await? {
        Some(PeerFrame {
            kind: Some(peer_frame::Kind::Proof(proof)),
        }) => Ok(proof.mac),
        _ => Err(DialError::Refused(Refused::NoProof.to_string())),
    }
}

/// Writes one frame, after the handshake's prefaces.
pub async fn send<IO: PeerIo>(stream: &mut IO, frame: &PeerFrame) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(frame.encoded_len() + LENGTH_BYTES);
    encode(frame, &mut out);
    stream.write_all(&out).await
}

/// The refusal a peer sent after the handshake, if `buf` holds one.
pub fn refusal_in(buf: &mut BytesMut) -> Option<String> {
    match decode(buf, MAX_HANDSHAKE_BYTES) {
        Ok(Some(PeerFrame {
            kind: Some(peer_frame::Kind::Refusal(Refusal { reason })),
        })) => Some(reason),
        _ => None,
    }
}

/// The accepting side's answer: the preface and `frame` (its hello, or a
/// refusal).
pub async fn answer<IO: PeerIo>(stream: &mut IO, frame: &PeerFrame) -> io::Result<()> {
    let mut out = BytesMut::with_capacity(256);
    out.put_slice(PREFACE);
    encode(frame, &mut out);
    stream.write_all(&out).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::v1::Envelope;

    fn envelope(data: &str) -> PeerFrame {
        PeerFrame {
            kind: Some(peer_frame::Kind::Envelope(Envelope {
                id: "01J00000000000000000000000".into(),
                topic: "news".into(),
                data: data.as_bytes().to_vec().into(),
                origin: "0123456789abcdef".into(),
                ..Envelope::default()
            })),
        }
    }

    #[test]
    fn frames_come_back_whole_and_in_order() {
        let mut buf = BytesMut::new();
        encode(&envelope("1"), &mut buf);
        encode(&envelope("22"), &mut buf);
        assert_eq!(
            decode(&mut buf, 1024).expect("decodes"),
            Some(envelope("1"))
        );
        assert_eq!(
            decode(&mut buf, 1024).expect("decodes"),
            Some(envelope("22"))
        );
        assert_eq!(decode(&mut buf, 1024).expect("decodes"), None);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_frame_split_across_reads_waits_for_its_last_byte() {
        let mut whole = BytesMut::new();
        encode(&envelope("split"), &mut whole);
        let mut buf = BytesMut::new();
        for (i, byte) in whole.iter().enumerate() {
            assert_eq!(
                decode(&mut buf, 1024).expect("decodes"),
                None,
                "after {i} bytes"
            );
            buf.put_u8(*byte);
        }
        assert_eq!(
            decode(&mut buf, 1024).expect("decodes"),
            Some(envelope("split"))
        );
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_its_bytes_arrive() {
        let mut buf = BytesMut::new();
        buf.put_u32(1 << 30);
        assert!(matches!(
            decode(&mut buf, 1024),
            Err(WireError::TooLong { len, max: 1024 }) if len == 1 << 30
        ));
    }

    #[test]
    fn bytes_that_are_not_a_peer_frame_are_an_error() {
        let mut buf = BytesMut::new();
        buf.put_u32(3);
        buf.put_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(decode(&mut buf, 1024), Err(WireError::Decode(_))));
    }
}
