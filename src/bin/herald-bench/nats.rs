//! Enough of the NATS client protocol to measure a NATS cluster with the
//! same users, payloads and meters as herald: subscribe over NATS's
//! WebSocket listener, publish over its TCP port.
//!
//! NATS is what the issue compares herald with; measuring it with this
//! generator puts both servers under exactly the same load on the same
//! machine. Server operations arrive as a byte stream whose WebSocket
//! frames need not end where an operation does, so [`Reader`] keeps an
//! incomplete operation until the rest arrives.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The CONNECT a bench client sends: no `+OK` per operation, and a
/// publisher does not receive its own messages.
pub const CONNECT: &str =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false,\"protocol\":1}\r\n";

/// The largest operation kept while waiting for its end.
const MAX_OPERATION: usize = 1024 * 1024;

/// Why a NATS exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket failed or closed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
    /// The server sent `-ERR`.
    #[error("server error: {0}")]
    Server(String),
    /// The server sent something this client cannot parse.
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// One server operation.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// A delivered message's payload.
    Msg(&'a [u8]),
    /// The server checks the client is alive: answer `PONG`.
    Ping,
    /// The answer to the client's `PING`.
    Pong,
    /// INFO, +OK: nothing to do.
    Other,
}

/// Splits the server's byte stream into operations.
#[derive(Default)]
pub struct Reader {
    /// An operation cut by the end of the bytes fed so far.
    partial: Vec<u8>,
}

impl Reader {
    /// Feeds the next bytes from the server, calling `each` for every
    /// operation they complete, in order.
    pub fn feed(&mut self, bytes: &[u8], mut each: impl FnMut(Op<'_>)) -> Result<(), Error> {
        if self.partial.is_empty() {
            let used = split(bytes, &mut each)?;
            self.keep(&bytes[used..])
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(bytes);
            let used = split(&joined, &mut each)?;
            joined.drain(..used);
            self.partial = joined;
            self.keep(&[])
        }
    }

    fn keep(&mut self, rest: &[u8]) -> Result<(), Error> {
        self.partial.extend_from_slice(rest);
        if self.partial.len() > MAX_OPERATION {
            return Err(Error::Protocol("operation too large"));
        }
        Ok(())
    }
}

/// Calls `each` for every complete operation at the front of `bytes`;
/// returns how many bytes they took.
fn split(bytes: &[u8], each: &mut impl FnMut(Op<'_>)) -> Result<usize, Error> {
    let mut at = 0;
    while let Some(eol) = memchr::memmem::find(&bytes[at..], b"\r\n") {
        let line = &bytes[at..at + eol];
        let body = at + eol + 2;
        if let Some(args) = line.strip_prefix(b"MSG ") {
            let size = args
                .rsplit(|&b| b == b' ')
                .next()
                .and_then(|n| std::str::from_utf8(n).ok()?.parse::<usize>().ok())
                .ok_or(Error::Protocol("MSG without a size"))?;
            if bytes.len() < body + size + 2 {
                break;
            }
            if &bytes[body + size..body + size + 2] != b"\r\n" {
                return Err(Error::Protocol("MSG size does not match its payload"));
            }
            each(Op::Msg(&bytes[body..body + size]));
            at = body + size + 2;
            continue;
        }
        if let Some(reason) = line.strip_prefix(b"-ERR") {
            return Err(Error::Server(
                String::from_utf8_lossy(reason).trim().to_owned(),
            ));
        }
        each(match line {
            b"PING" => Op::Ping,
            b"PONG" => Op::Pong,
            _ => Op::Other,
        });
        at = body;
    }
    Ok(at)
}

/// `SUB` for `subject`, then a `PING` whose `PONG` confirms it.
pub fn subscribe(subject: &str) -> String {
    format!("{CONNECT}SUB {subject} 1\r\nPING\r\n")
}

/// Appends one `PUB` of `payload` to `subject`.
pub fn publish(out: &mut Vec<u8>, subject: &str, payload: &[u8]) {
    out.extend_from_slice(format!("PUB {subject} {}\r\n", payload.len()).as_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// A publisher's TCP connection.
pub struct Publisher {
    stream: TcpStream,
    /// What the server sends back, read by the same parser as users use.
    reader: Reader,
}

impl Publisher {
    /// Connects to `addr` (`host:port`) and waits for the server to confirm.
    pub async fn connect(addr: &str) -> Result<Self, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut publisher = Self {
            stream,
            reader: Reader::default(),
        };
        publisher.write(CONNECT.as_bytes()).await?;
        publisher.flush().await?;
        Ok(publisher)
    }

    /// Writes publish operations made by [`publish`].
    pub async fn write(&mut self, operations: &[u8]) -> Result<(), Error> {
        Ok(self.stream.write_all(operations).await?)
    }

    /// Waits until the server has processed everything written so far (a
    /// `PING` answered by `PONG`); fails on `-ERR`.
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.write(b"PING\r\n").await?;
        let mut bytes = [0; 4096];
        loop {
            let read = self.stream.read(&mut bytes).await?;
            if read == 0 {
                return Err(Error::Io(io::ErrorKind::UnexpectedEof.into()));
            }
            let (mut pong, mut pings) = (false, 0);
            self.reader.feed(&bytes[..read], |op| match op {
                Op::Pong => pong = true,
                Op::Ping => pings += 1,
                Op::Msg(_) | Op::Other => {}
            })?;
            for _ in 0..pings {
                self.write(b"PONG\r\n").await?;
            }
            if pong {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(reader: &mut Reader, bytes: &[u8]) -> Vec<String> {
        let mut seen = Vec::new();
        reader
            .feed(bytes, |op| {
                seen.push(match op {
                    Op::Msg(payload) => String::from_utf8_lossy(payload).into_owned(),
                    other => format!("{other:?}"),
                })
            })
            .expect("valid operations");
        seen
    }

    #[test]
    fn reads_messages_pings_and_info() {
        let mut reader = Reader::default();
        let bytes =
            b"INFO {\"x\":1}\r\nMSG a.b 1 5\r\nhello\r\nPING\r\nMSG a 1 r.x 2\r\nhi\r\nPONG\r\n";
        assert_eq!(
            ops(&mut reader, bytes),
            ["Other", "hello", "Ping", "hi", "Pong"]
        );
    }

    #[test]
    fn an_operation_cut_between_frames_completes_with_the_next() {
        let mut reader = Reader::default();
        let whole = b"MSG s 1 12\r\nhello\r\nworld\r\nMSG s 1 1\r\nx\r\n";
        for cut in 1..whole.len() {
            let mut got = ops(&mut reader, &whole[..cut]);
            got.extend(ops(&mut reader, &whole[cut..]));
            assert_eq!(got, ["hello\r\nworld", "x"], "cut at {cut}");
        }
    }

    #[test]
    fn a_size_that_does_not_match_is_an_error() {
        let mut reader = Reader::default();
        let result = reader.feed(b"MSG s 1 3\r\nhello\r\n", |_| {});
        assert!(matches!(result, Err(Error::Protocol(_))));
    }

    #[test]
    fn a_server_error_is_an_error() {
        let mut reader = Reader::default();
        let result = reader.feed(b"-ERR 'Authorization Violation'\r\n", |_| {});
        assert!(matches!(result, Err(Error::Server(reason)) if reason.contains("Authorization")));
    }

    #[test]
    fn publish_frames_the_payload() {
        let mut out = Vec::new();
        publish(&mut out, "t.u1", b"{}");
        assert_eq!(out, b"PUB t.u1 2\r\n{}\r\n");
        assert!(subscribe("t").ends_with("SUB t 1\r\nPING\r\n"));
    }
}
