//! The users' WebSocket client: just enough RFC 6455 to upgrade, send text
//! frames and read what a server pushes, at the lowest cost per frame.
//!
//! The load generator shares the machine's cores with the servers it
//! measures, so every cycle it spends per received frame is taken from
//! them. A general-purpose client pays for things a bench user does not
//! need: tungstenite zero-fills its whole read buffer before every read,
//! and its stream adapter registers wakers for both directions on every
//! poll. This client reads into spare buffer capacity without clearing it,
//! hands out frames as slices of that buffer (nothing allocated per frame),
//! and answers pings itself, so the caller sees only data and close frames.
//!
//! What it rejects, with an error: a refused upgrade, a wrong
//! `Sec-WebSocket-Accept`, a masked or fragmented server frame (neither
//! herald, NATS nor Socket.IO sends one), and a frame larger than [`MAX_FRAME`].

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// What the read buffer starts with; it grows for larger frames and a
/// user that fell behind.
const INITIAL_BUFFER: usize = 4 * 1024;

/// The largest frame accepted (herald's frames stop at 64 KiB of messages
/// plus a header).
pub const MAX_FRAME: usize = 1024 * 1024;

/// The largest HTTP upgrade response accepted.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Why the connection cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The server closed the TCP connection.
    #[error("the server closed the connection")]
    Eof,
    /// The server did not upgrade the connection properly.
    #[error("upgrade refused: {0}")]
    Upgrade(String),
    /// The server broke the framing rules this client relies on.
    #[error("bad frame: {0}")]
    Frame(&'static str),
}

/// A frame from the server, borrowed from the client's buffer until the
/// next read.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text or binary data frame's payload.
    Data(&'a [u8]),
    /// The server closed the WebSocket (its payload: code and reason).
    Close(&'a [u8]),
}

/// One upgraded WebSocket connection.
pub struct Client {
    stream: TcpStream,
    buffer: BytesMut,
    /// Bytes at the front of `buffer` that the last returned frame
    /// occupied: dropped before the next read.
    consumed: usize,
}

impl Client {
    /// Upgrades `stream` to a WebSocket at `path` (with any query) on `host`.
    pub async fn upgrade(mut stream: TcpStream, host: &str, path: &str) -> Result<Self, Error> {
        let key = generate_key();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buffer = BytesMut::with_capacity(INITIAL_BUFFER);
        let head_len = loop {
            if let Some(end) = memchr::memmem::find(&buffer, b"\r\n\r\n") {
                break end + 4;
            }
            if buffer.len() > MAX_RESPONSE_HEAD {
                return Err(Error::Upgrade("response head too large".into()));
            }
            if stream.read_buf(&mut buffer).await? == 0 {
                return Err(Error::Eof);
            }
        };
        check_upgrade(&buffer[..head_len], &derive_accept_key(key.as_bytes()))?;
        buffer.advance(head_len);
        Ok(Self {
            stream,
            buffer,
            consumed: 0,
        })
    }

    /// Sends `payload` as one masked text frame.
    pub async fn send_text(&mut self, payload: &[u8]) -> Result<(), Error> {
        let frame = client_frame(OP_TEXT, payload, rand::random());
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Sends each payload as a masked text frame of its own, all in one
    /// write (Socket.IO carries one packet per frame).
    pub async fn send_texts<'a>(
        &mut self,
        payloads: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(), Error> {
        let mut frames = Vec::new();
        for payload in payloads {
            append_frame(&mut frames, OP_TEXT, payload, rand::random());
        }
        self.stream.write_all(&frames).await?;
        Ok(())
    }

    /// The next data or close frame. Pings are answered and pongs skipped
    /// on the way. Cancel-safe: a read interrupted by the caller loses
    /// nothing.
    pub async fn next_frame(&mut self) -> Result<Frame<'_>, Error> {
        self.buffer.advance(std::mem::take(&mut self.consumed));
        loop {
            match parse(&self.buffer)? {
                Some(Parsed { opcode, start, end }) => match opcode {
                    OP_PING => {
                        let pong = client_frame(OP_PONG, &self.buffer[start..end], rand::random());
                        self.buffer.advance(end);
                        self.stream.write_all(&pong).await?;
                    }
                    OP_PONG => self.buffer.advance(end),
                    _ => {
                        self.consumed = end;
                        let payload = &self.buffer[start..end];
                        return Ok(match opcode {
                            OP_CLOSE => Frame::Close(payload),
                            _ => Frame::Data(payload),
                        });
                    }
                },
                None => {
                    if self.buffer.capacity() - self.buffer.len() < INITIAL_BUFFER / 2 {
                        // Doubling: a large frame or a backlog takes few reads.
                        self.buffer.reserve(self.buffer.len().max(INITIAL_BUFFER));
                    }
                    if self.stream.read_buf(&mut self.buffer).await? == 0 {
                        return Err(Error::Eof);
                    }
                }
            }
        }
    }
}

/// Checks an upgrade response head: status 101 and the expected accept key.
fn check_upgrade(head: &[u8], accept: &str) -> Result<(), Error> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        return Err(Error::Upgrade(status.to_owned()));
    }
    let accepted = lines
        .filter_map(|line| line.split_once(':'))
        .any(|(name, value)| {
            name.trim().eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept
        });
    if accepted {
        Ok(())
    } else {
        Err(Error::Upgrade(
            "missing or wrong Sec-WebSocket-Accept".into(),
        ))
    }
}

/// Where one complete frame sits in the buffer.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    opcode: u8,
    /// Payload start.
    start: usize,
    /// Payload end: the frame's length.
    end: usize,
}

/// Finds the complete server frame at the front of `bytes`; `None` if more
/// bytes are needed.
fn parse(bytes: &[u8]) -> Result<Option<Parsed>, Error> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    let opcode = first & 0x0F;
    if first & 0x80 == 0 || opcode == OP_CONTINUATION {
        return Err(Error::Frame("fragmented message"));
    }
    if second & 0x80 != 0 {
        return Err(Error::Frame("masked server frame"));
    }
    let (len, start) = match second & 0x7F {
        126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
        127 if bytes.len() >= 10 => {
            let mut be = [0; 8];
            be.copy_from_slice(&bytes[2..10]);
            (
                usize::try_from(u64::from_be_bytes(be)).unwrap_or(usize::MAX),
                10,
            )
        }
        126 | 127 => return Ok(None),
        short => (usize::from(short), 2),
    };
    if len > MAX_FRAME {
        return Err(Error::Frame("frame too large"));
    }
    if !matches!(opcode, OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(Error::Frame("unknown opcode"));
    }
    let end = start + len;
    Ok((bytes.len() >= end).then_some(Parsed { opcode, start, end }))
}

/// A final, masked client frame.
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(payload.len() + 14);
    append_frame(&mut frame, opcode, payload, mask);
    frame
}

/// Appends a final, masked client frame to `frame`.
fn append_frame(frame: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    frame.reserve(payload.len() + 14);
    frame.push(0x80 | opcode);
    match payload.len() {
        len @ 0..=125 => frame.push(0x80 | len as u8),
        len @ 126..=0xFFFF => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(bytes: &[u8]) -> Option<Parsed> {
        parse(bytes).expect("a valid frame")
    }

    #[test]
    fn parses_short_medium_and_long_lengths() {
        let short = [0x81, 3, b'a', b'b', b'c'];
        assert_eq!(
            parsed(&short),
            Some(Parsed {
                opcode: OP_TEXT,
                start: 2,
                end: 5
            })
        );
        let mut medium = vec![0x82, 126, 0x01, 0x00];
        medium.resize(4 + 256, b'x');
        assert_eq!(parsed(&medium).map(|p| p.end), Some(260));
        let mut long = vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.resize(10 + 65_536, b'x');
        assert_eq!(parsed(&long).map(|p| p.start), Some(10));
    }

    #[test]
    fn waits_for_the_rest_of_a_frame() {
        assert_eq!(parsed(&[]), None);
        assert_eq!(parsed(&[0x81]), None);
        assert_eq!(parsed(&[0x81, 126, 0x01]), None);
        assert_eq!(parsed(&[0x81, 5, b'a']), None);
    }

    #[test]
    fn refuses_what_a_server_must_not_send() {
        let huge: &[u8] = &[0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0];
        for (bytes, what) in [
            (&[0x01, 0][..], "not final"),
            (&[0x80, 0], "continuation"),
            (&[0x81, 0x80], "masked"),
            (&[0x83, 0], "reserved opcode"),
            (huge, "over the limit"),
        ] {
            assert!(matches!(parse(bytes), Err(Error::Frame(_))), "{what}");
        }
    }

    #[test]
    fn masks_client_frames() {
        let frame = client_frame(OP_TEXT, b"hi", [1, 2, 3, 4]);
        assert_eq!(frame, [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        let medium = client_frame(OP_BINARY, &[0; 200], [0; 4]);
        assert_eq!(&medium[..4], &[0x82, 0x80 | 126, 0, 200]);
    }

    #[test]
    fn accepts_only_a_101_with_the_right_key() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-accept: abc\r\n\r\n";
        assert!(check_upgrade(ok, "abc").is_ok());
        assert!(check_upgrade(ok, "abd").is_err());
        let refused = b"HTTP/1.1 401 Unauthorized\r\n\r\n";
        assert!(
            matches!(check_upgrade(refused, "abc"), Err(Error::Upgrade(s)) if s.contains("401"))
        );
    }
}
