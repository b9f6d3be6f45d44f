//! Enough of Socket.IO (protocol 5 on Engine.IO 4, WebSocket transport
//! only) to measure Socket.IO with its Redis adapter with the same users,
//! payloads and meters as herald: the reference server is
//! bench/socketio/server.js.
//!
//! ```text
//!   server: 0{"sid":…}            Engine.IO open
//!   client: 40                    connect to the namespace "/"
//!   server: 40{"sid":…}           connected
//!   client: 421["subscribe","t"]  an event with ack id 1: join room "t"
//!   server: 431["ok"]             its ack
//!   server: 42["message",{…}]     a message in the room: the bench document as is
//!   server: 2   client: 3         Engine.IO ping and pong
//! ```
//!
//! Engine.IO's WebSocket transport carries one packet per frame, so a frame
//! is parsed whole; [`parse`] looks only at a frame's head and hands the
//! event's payload to [`scan::document`](crate::scan::document) unparsed.
//! The publisher emits `publish` events ({topic, data}) on one connection to
//! one node, and a `flush` event whose ack says the node emitted every one
//! before it: the node handles a connection's packets in order.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use crate::client::{self, Client, Frame};

/// The Engine.IO pong a client answers each ping with.
pub const PONG: &[u8] = b"3";

/// The ack id of a user's `subscribe`.
const SUBSCRIBE_ACK: u64 = 1;

/// The head of a delivered message's packet (an event without an ack id).
const MESSAGE: &[u8] = br#"42["message","#;

/// Why a Socket.IO exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The WebSocket failed or closed.
    #[error("websocket: {0}")]
    Socket(#[from] client::Error),
    /// The server refused the namespace, or closed it or the session.
    #[error("refused: {0}")]
    Refused(String),
    /// The server sent something this client cannot parse.
    #[error("protocol: {0}")]
    Protocol(&'static str),
}

/// One Engine.IO packet, as one frame carries it.
#[derive(Debug, PartialEq, Eq)]
pub enum Packet<'a> {
    /// Engine.IO open: the session's parameters (not needed here).
    Open,
    /// Socket.IO connect: the namespace accepted the client.
    Connected,
    /// A `message` event's payload (followed by the event array's `]`).
    Message(&'a [u8]),
    /// The ack of the client's event with this id.
    Ack(u64),
    /// Engine.IO ping: answer [`PONG`].
    Ping,
    /// Another event, a pong, a noop: nothing to do.
    Other,
}

/// Reads one frame's packet; a close, a disconnect or a refused connect is
/// an error.
pub fn parse(frame: &[u8]) -> Result<Packet<'_>, Error> {
    if let Some(payload) = frame.strip_prefix(MESSAGE) {
        return Ok(Packet::Message(payload));
    }
    Ok(match frame {
        [b'0', ..] => Packet::Open,
        [b'2', ..] => Packet::Ping,
        [b'1', ..] | [b'4', b'1', ..] => return Err(Error::Refused("closed".into())),
        [b'4', b'4', rest @ ..] => {
            return Err(Error::Refused(String::from_utf8_lossy(rest).into_owned()));
        }
        [b'4', b'0', ..] => Packet::Connected,
        [b'4', b'3', rest @ ..] => {
            let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
            std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|id| id.parse().ok())
                .map(Packet::Ack)
                .ok_or(Error::Protocol("an ack without an id"))?
        }
        _ => Packet::Other,
    })
}

/// An event packet: `42<ack id>["<name>",<args>]`, the ack id only if given.
fn event(name: &str, ack: Option<u64>, args: &[&[u8]]) -> Vec<u8> {
    let mut out = b"42".to_vec();
    if let Some(id) = ack {
        out.extend_from_slice(id.to_string().as_bytes());
    }
    out.extend_from_slice(format!(r#"["{name}""#).as_bytes());
    for arg in args {
        out.push(b',');
        out.extend_from_slice(arg);
    }
    out.push(b']');
    out
}

/// The `publish` event of bench document `data` (JSON) to `topic`.
pub fn publish(topic: &str, data: &[u8]) -> Vec<u8> {
    let head = format!(r#"{{"topic":{},"data":"#, json_string(topic));
    let mut message = Vec::with_capacity(head.len() + data.len() + 1);
    message.extend_from_slice(head.as_bytes());
    message.extend_from_slice(data);
    message.push(b'}');
    event("publish", None, &[&message])
}

fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

/// Opens the Engine.IO session on an upgraded `client` and connects to the
/// namespace `/`, answering pings on the way.
async fn connect(client: &mut Client) -> Result<(), Error> {
    wait(client, |packet| *packet == Packet::Open).await?;
    client.send_text(b"40").await?;
    wait(client, |packet| *packet == Packet::Connected).await
}

/// Reads packets until `done` holds for one; answers pings, ignores
/// anything else.
async fn wait(client: &mut Client, done: impl Fn(&Packet<'_>) -> bool) -> Result<(), Error> {
    loop {
        let Frame::Data(frame) = client.next_frame().await? else {
            return Err(Error::Refused("the server closed the WebSocket".into()));
        };
        let packet = parse(frame)?;
        if done(&packet) {
            return Ok(());
        }
        if packet == Packet::Ping {
            client.send_text(PONG).await?;
        }
    }
}

/// Connects an upgraded user's `client` and joins room `topic`; returns
/// once the node acknowledged the join.
pub async fn subscribe(client: &mut Client, topic: &str) -> Result<(), Error> {
    connect(client).await?;
    let topic = json_string(topic);
    client
        .send_text(&event(
            "subscribe",
            Some(SUBSCRIBE_ACK),
            &[topic.as_bytes()],
        ))
        .await?;
    wait(client, |packet| *packet == Packet::Ack(SUBSCRIBE_ACK)).await
}

/// A publisher's connection to one node.
pub struct Publisher {
    client: Client,
    /// The id of the next `flush`'s ack.
    next_ack: u64,
}

impl Publisher {
    /// Connects to the node at `url` (`ws://host:port/socket.io/?EIO=4&transport=websocket`).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow::anyhow!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr: SocketAddr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{authority} has no address"))?;
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut client = Client::upgrade(stream, authority, path).await?;
        connect(&mut client).await?;
        Ok(Self {
            client,
            next_ack: 1,
        })
    }

    /// Sends events made by [`publish`], one frame each, in one write.
    pub async fn write(&mut self, events: &[Vec<u8>]) -> Result<(), Error> {
        Ok(self
            .client
            .send_texts(events.iter().map(Vec::as_slice))
            .await?)
    }

    /// Waits until the node has emitted every event written so far: a
    /// `flush` event and its ack.
    pub async fn flush(&mut self) -> Result<(), Error> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.client
            .send_text(&event("flush", Some(id), &[]))
            .await?;
        wait(&mut self.client, |packet| *packet == Packet::Ack(id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan;

    #[test]
    fn reads_the_handshake_acks_pings_and_messages() {
        assert_eq!(
            parse(br#"0{"sid":"x","pingInterval":25000}"#).ok(),
            Some(Packet::Open)
        );
        assert_eq!(parse(br#"40{"sid":"y"}"#).ok(), Some(Packet::Connected));
        assert_eq!(parse(br#"431["ok"]"#).ok(), Some(Packet::Ack(1)));
        assert_eq!(parse(b"4317[]").ok(), Some(Packet::Ack(17)));
        assert_eq!(parse(b"2").ok(), Some(Packet::Ping));
        assert_eq!(parse(br#"42["other",1]"#).ok(), Some(Packet::Other));
        let doc = scan::payload(123, 7, 64);
        let mut frame = MESSAGE.to_vec();
        frame.extend_from_slice(&doc);
        frame.push(b']');
        let Ok(Packet::Message(payload)) = parse(&frame) else {
            panic!("a message");
        };
        assert_eq!(
            scan::document(payload),
            Some(scan::Seen {
                sent_nanos: 123,
                seq: 7
            })
        );
    }

    #[test]
    fn a_refused_connect_or_a_close_is_an_error() {
        assert!(matches!(
            parse(br#"44{"message":"Invalid namespace"}"#),
            Err(Error::Refused(reason)) if reason.contains("Invalid namespace")
        ));
        assert!(matches!(parse(b"41"), Err(Error::Refused(_))));
        assert!(matches!(parse(b"1"), Err(Error::Refused(_))));
        assert!(matches!(parse(b"43x"), Err(Error::Protocol(_))));
    }

    #[test]
    fn events_frame_their_arguments() {
        assert_eq!(event("flush", Some(3), &[]), br#"423["flush"]"#);
        assert_eq!(
            event("subscribe", Some(1), &[br#""t""#]),
            br#"421["subscribe","t"]"#
        );
        let published = publish("bench.1.u2", br#"{"t":1,"s":2}"#);
        assert_eq!(
            published,
            br#"42["publish",{"topic":"bench.1.u2","data":{"t":1,"s":2}}]"#
        );
        let value: serde_json::Value =
            serde_json::from_slice(&published[2..]).expect("the event is JSON");
        assert_eq!(value[1]["data"]["s"], 2);
    }
}
