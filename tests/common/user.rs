//! A WebSocket user: a real tokio-tungstenite client speaking protocol v1.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::PATIENCE;

/// The client socket type.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One connected user.
pub struct User {
    socket: Socket,
    inbox: VecDeque<String>,
    /// How many text frames arrived (several objects may share one).
    pub frames: usize,
}

/// What ended a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code.
    Close(u16),
    /// The connection ended without a close frame.
    Dropped,
}

impl User {
    /// Connects to `url` (a pod's `/ws`).
    pub async fn connect(url: &str) -> Self {
        let (socket, _) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("WebSocket handshake");
        Self {
            socket,
            inbox: VecDeque::new(),
            frames: 0,
        }
    }

    /// Connects with extra request headers (`Authorization`, `Origin`,
    /// `Sec-WebSocket-Protocol`); a refused upgrade gives its HTTP status
    /// and body. The selected subprotocol, if any, comes with the user.
    pub async fn try_connect(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Self, Option<String>), (u16, String)> {
        Self::try_connect_from(None, url, headers).await
    }

    /// As [`try_connect`](Self::try_connect), from the local address
    /// `source` (another 127.0.0.x: another client address) when given.
    pub async fn try_connect_from(
        source: Option<std::net::IpAddr>,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<(Self, Option<String>), (u16, String)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request().expect("valid URL");
        for (name, value) in headers {
            let name: tokio_tungstenite::tungstenite::http::HeaderName =
                name.parse().expect("header name");
            request
                .headers_mut()
                .insert(name, value.parse().expect("header value"));
        }
        let connecting = async {
            let Some(source) = source else {
                return tokio_tungstenite::connect_async(request).await;
            };
            let uri = request.uri();
            let target = format!(
                "{}:{}",
                uri.host().expect("host"),
                uri.port_u16().expect("port")
            );
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket
                .bind((source, 0).into())
                .expect("bind the source address");
            let stream = socket
                .connect(target.parse().expect("an address"))
                .await
                .expect("connects");
            let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
            tokio_tungstenite::client_async(request, stream).await
        };
        let connected = tokio::time::timeout(PATIENCE, connecting)
            .await
            .expect("connect in time");
        match connected {
            Ok((socket, response)) => {
                let protocol = response
                    .headers()
                    .get("sec-websocket-protocol")
                    .map(|v| v.to_str().expect("ascii").to_owned());
                Ok((Self::from_socket(socket), protocol))
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                Err((response.status().as_u16(), body.into_owned()))
            }
            Err(e) => panic!("connection failed: {e}"),
        }
    }

    /// Wraps a socket connected some other way.
    pub fn from_socket(socket: Socket) -> Self {
        Self {
            socket,
            inbox: VecDeque::new(),
            frames: 0,
        }
    }

    /// Sends one raw WebSocket message.
    pub async fn send(&mut self, message: Message) {
        self.socket.send(message).await.expect("send");
    }

    /// Sends a JSON request as a text frame.
    pub async fn send_json(&mut self, request: Value) {
        self.send(Message::text(request.to_string())).await;
    }

    /// The next JSON object from the server.
    pub async fn next(&mut self) -> Value {
        let line = self.next_raw().await;
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("server sent bad JSON {line:?}: {e}"))
    }

    /// The next JSON object from the server, as the exact text sent.
    pub async fn next_raw(&mut self) -> String {
        match tokio::time::timeout(PATIENCE, self.next_inner()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("connection ended while waiting for a frame"),
            Err(_) => panic!("no frame within {PATIENCE:?}"),
        }
    }

    async fn next_inner(&mut self) -> Option<String> {
        loop {
            if let Some(value) = self.inbox.pop_front() {
                return Some(value);
            }
            match self.socket.next().await? {
                Ok(Message::Text(text)) => {
                    self.frames += 1;
                    self.inbox.extend(text.split('\n').map(str::to_owned));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Sends `request` and returns the next object (its reply).
    pub async fn request(&mut self, request: Value) -> Value {
        self.send_json(request).await;
        self.next().await
    }

    /// Subscribes to `topic`, checks the reply and returns it (it says
    /// where the topic stands: `epoch`, `offset`).
    pub async fn subscribe(&mut self, topic: &str) -> Value {
        let reply = self
            .request(json!({"op": "subscribe", "topic": topic, "ref": topic}))
            .await;
        assert_eq!(reply["op"], "reply", "{reply}");
        assert_eq!(reply["ref"], topic, "{reply}");
        assert_eq!(reply["ok"], true, "{reply}");
        assert!(
            reply["epoch"].is_string() && reply["offset"].is_u64(),
            "{reply}"
        );
        assert!(reply.get("recovered").is_none(), "{reply}");
        reply
    }

    /// Subscribes to `topic` after `since` (`{"epoch":..,"offset":..}`)
    /// and returns the reply, which says whether it `recovered`.
    pub async fn resume(&mut self, topic: &str, since: Value) -> Value {
        self.request(json!({"op": "subscribe", "topic": topic, "ref": topic, "since": since}))
            .await
    }

    /// Unsubscribes from `topic` and checks the reply.
    pub async fn unsubscribe(&mut self, topic: &str) {
        let reply = self
            .request(json!({"op": "unsubscribe", "topic": topic, "ref": "u"}))
            .await;
        assert_eq!(reply, json!({"op": "reply", "ref": "u", "ok": true}));
    }

    /// The next message frame, checked to be on `topic`; returns its data.
    pub async fn message(&mut self, topic: &str) -> Value {
        self.frame(topic).await["data"].clone()
    }

    /// The data of the next message on `topic`, past any `gap` of it: where
    /// a topic's sequencer changes (a pod killed or restarted, a group
    /// still forming), subscribers are told that a new numbering begins.
    pub async fn message_past_gaps(&mut self, topic: &str) -> Value {
        loop {
            let frame = self.next().await;
            if frame["op"] == "gap" && frame["topic"] == topic {
                continue;
            }
            assert_eq!(frame["op"], "message", "expected a message, got {frame}");
            assert_eq!(frame["topic"], topic, "message on the wrong topic: {frame}");
            return frame["data"].clone();
        }
    }

    /// The next message frame, checked to be on `topic`, whole.
    pub async fn frame(&mut self, topic: &str) -> Value {
        let frame = self.next().await;
        assert_eq!(frame["op"], "message", "expected a message, got {frame}");
        assert_eq!(frame["topic"], topic, "message on the wrong topic: {frame}");
        assert!(
            frame["id"].as_str().is_some_and(|id| id.len() == 26),
            "{frame}"
        );
        assert!(frame["offset"].as_u64().is_some_and(|o| o > 0), "{frame}");
        assert!(
            frame["epoch"].as_str().is_some_and(|e| e.len() == 10),
            "{frame}"
        );
        frame
    }

    /// Asserts that nothing arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) {
        if let Some(value) = self.inbox.pop_front() {
            panic!("expected silence, got {value}");
        }
        if let Ok(Some(value)) = tokio::time::timeout(quiet, self.next_inner()).await {
            panic!("expected silence, got {value}");
        }
    }

    /// Reads until the connection ends and says how. Messages on the way are
    /// counted and discarded.
    pub async fn ending(&mut self) -> Ending {
        let read = async {
            loop {
                match self.socket.next().await {
                    Some(Ok(Message::Close(frame))) => {
                        return Ending::Close(frame.map_or(1005, |f: CloseFrame| f.code.into()));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ending::Dropped,
                }
            }
        };
        tokio::time::timeout(PATIENCE, read)
            .await
            .expect("connection ends in time")
    }

    /// Whether the connection still answers a ping request.
    pub async fn still_usable(&mut self) {
        let reply = self.request(json!({"op": "ping", "ref": "alive"})).await;
        assert_eq!(reply, json!({"op": "pong", "ref": "alive"}));
    }
}
