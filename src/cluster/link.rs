//! One outgoing stream to one peer, kept up for as long as the peer is in
//! the peer set: connect, handshake, send what the queue holds; on any
//! failure, back off (capped, jittered) and connect again. The stream is a
//! peer-wire connection ([`wire`]), or a gRPC stream to a pod of an
//! earlier release that does not speak the wire.
//!
//! The queue outlives each stream, so messages published while a peer is
//! briefly away are sent when it returns, up to the queue's bound; beyond it
//! they are dropped for that peer, counted and logged.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{StreamExt, stream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use super::backoff::Backoff;
use super::mesh::{Mesh, PeerInfo};
use super::{handshake, wire};
use crate::message::{Message, NodeId};
use crate::proto::v1::peer_client::PeerClient;
use crate::proto::v1::{Envelope, Hello, PeerFrame, peer_frame};
use crate::stats::{self, Counters};
use crate::telemetry::trace;

/// How long connecting and the handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 keepalive on peer streams: a peer that vanished without closing
/// (SIGKILL, a partition) is noticed within interval + timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most bytes of queued messages put in one write on the peer wire.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// How a link's stream travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// The peer wire ([`wire`]).
    Wire,
    /// The gRPC `Peer` service, to a pod of an earlier release.
    Grpc,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Wire => "wire",
            Self::Grpc => "grpc",
        })
    }
}

/// One peer: its queue and what is known of its stream.
#[derive(Debug)]
pub struct Link {
    address: String,
    queue: mpsc::Sender<Arc<Message>>,
    stop: CancellationToken,
    connected: AtomicBool,
    /// Whether the stream, while up, is a gRPC one.
    grpc: AtomicBool,
    is_self: AtomicBool,
    dropped: AtomicU64,
    connects: AtomicU64,
    last_error: Mutex<Option<String>>,
    counters: Arc<Counters>,
}

type Queue = mpsc::Receiver<Arc<Message>>;

impl Link {
    /// A link to `address` with a queue of `capacity` messages, counting
    /// drops and reconnects into `counters`.
    pub fn new(address: String, capacity: usize, counters: Arc<Counters>) -> (Arc<Self>, Queue) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let link = Arc::new(Self {
            address,
            queue,
            stop: CancellationToken::new(),
            connected: AtomicBool::new(false),
            grpc: AtomicBool::new(false),
            is_self: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            counters,
        });
        (link, rx)
    }

    /// The peer's address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Whether the stream is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether nothing is queued for the peer.
    pub fn is_idle(&self) -> bool {
        self.queue.capacity() == self.queue.max_capacity()
    }

    /// Whether this address turned out to be this pod itself.
    pub fn is_self(&self) -> bool {
        self.is_self.load(Ordering::Acquire)
    }

    /// Queues `message` for the peer without waiting; drops it (counted,
    /// logged at powers of two) when the queue is full.
    pub fn offer(&self, message: &Arc<Message>) {
        if self.is_self() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.queue.try_send(message.clone()) {
            stats::add(&self.counters.peer_queue_drops, 1);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(peer = %self.address, dropped, "peer queue full: dropping messages for this peer");
            }
        }
    }

    /// Ends the link: the peer left the set.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// What operators see of this link.
    pub fn info(&self) -> PeerInfo {
        PeerInfo {
            address: self.address.clone(),
            connected: self.is_connected(),
            dropped: self.dropped.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            transport: self.is_connected().then(|| {
                if self.grpc.load(Ordering::Acquire) {
                    Transport::Grpc
                } else {
                    Transport::Wire
                }
            }),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }

    fn record_error(&self, error: &LinkError) {
        let text = error.to_string();
        let mut last = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if last.as_deref() != Some(text.as_str()) {
            if matches!(error, LinkError::Refused(_)) {
                tracing::warn!(peer = %self.address, error = %text, "peer refused the handshake");
            } else {
                tracing::info!(peer = %self.address, error = %text, "peer stream down; reconnecting with backoff");
            }
        }
        *last = Some(text);
    }
}

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("stream: {0}")]
    Stream(String),
    #[error("the address is this pod itself")]
    ItsMe,
    #[error("no peer wire: {0}")]
    NoWire(&'static str),
}

impl From<wire::DialError> for LinkError {
    fn from(error: wire::DialError) -> Self {
        match error {
            wire::DialError::NoWire(why) => Self::NoWire(why),
            wire::DialError::Refused(why) => Self::Refused(why),
            wire::DialError::Wire(e) => Self::Connect(e.to_string()),
        }
    }
}

/// Keeps the link's stream up until the link is stopped or the pod shuts
/// down. Each connection tries the peer wire first; a peer that does not
/// answer its preface (an earlier release) gets a gRPC stream instead, and
/// the wire again after that stream ends, in case it was upgraded.
pub async fn run(link: Arc<Link>, queue: Queue, mesh: Mesh, shutdown: CancellationToken) {
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut wire = true;
    loop {
        let attempt = async {
            if wire {
                stream_wire(&link, &queue, &mesh, &mut backoff).await
            } else {
                stream_grpc(&link, &queue, &mesh, &mut backoff).await
            }
        };
        let ended = tokio::select! {
            () = link.stop.cancelled() => return,
            () = shutdown.cancelled() => return,
            ended = attempt => ended,
        };
        link.connected.store(false, Ordering::Release);
        match ended {
            LinkError::ItsMe => {
                link.is_self.store(true, Ordering::Release);
                tracing::debug!(peer = %link.address, "peer address is this pod; not streaming to it");
                return;
            }
            LinkError::NoWire(why) if wire => {
                tracing::debug!(peer = %link.address, %why, "peer does not speak the peer wire; using gRPC");
                wire = false;
                continue;
            }
            _ => wire = true,
        }
        link.record_error(&ended);
        tokio::select! {
            () = link.stop.cancelled() => return,
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// One peer-wire connection's life: connect, exchange prefaces and hellos,
/// then write what the queue holds until the connection breaks.
async fn stream_wire(
    link: &Link,
    queue: &Arc<tokio::sync::Mutex<Queue>>,
    mesh: &Mesh,
    backoff: &mut Backoff,
) -> LinkError {
    let settings = mesh.settings();
    let hello = PeerFrame::from(settings.hello());
    let dialled = wire::dial(&link.address, settings.tls.as_ref(), &hello);
    let (mut stream, theirs) = match tokio::time::timeout(CONNECT_TIMEOUT, dialled).await {
        Err(_) => return LinkError::Connect("handshake timed out".into()),
        Ok(Err(e)) => return e.into(),
        Ok(Ok(pair)) => pair,
    };
    if let Err(e) = accept_hello(&theirs, &settings.cluster, settings.node) {
        return e;
    }
    // NB: the previous stream may still hold the queue for a moment after
    // it broke; this waits for it to be given back.
    let mut queue = queue.clone().lock_owned().await;
    up(link, backoff, Transport::Wire);
    let mut out = BytesMut::new();
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            read = stream.read(&mut probe) => match read {
                // The peer sends nothing after its hello; the connection
                // ends when it goes.
                Ok(0) => return LinkError::Stream("closed by the peer".into()),
                Ok(_) => {}
                Err(e) => return LinkError::Stream(e.to_string()),
            },
            message = queue.recv() => {
                let Some(message) = message else {
                    return LinkError::Stream("queue closed".into());
                };
                wire::encode(&envelope(&message, &link.address), &mut out);
                // Whatever else is queued goes in the same write.
                while out.len() < WRITE_BATCH_BYTES {
                    let Ok(message) = queue.try_recv() else { break };
                    wire::encode(&envelope(&message, &link.address), &mut out);
                }
                if let Err(e) = stream.write_all(&out).await {
                    return LinkError::Stream(e.to_string());
                }
                out.clear();
            }
        }
    }
}

/// One gRPC stream's life: connect, handshake, then send until it breaks.
async fn stream_grpc(
    link: &Link,
    queue: &Arc<tokio::sync::Mutex<Queue>>,
    mesh: &Mesh,
    backoff: &mut Backoff,
) -> LinkError {
    let settings = mesh.settings();
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let endpoint =
        Endpoint::from_shared(format!("{scheme}://{}", link.address)).and_then(|endpoint| {
            match &settings.tls {
                Some(tls) => endpoint.tls_config(tls.grpc.clone()),
                None => Ok(endpoint),
            }
        });
    let endpoint = match endpoint {
        Ok(endpoint) => endpoint,
        Err(e) => return LinkError::Connect(error_chain(&e)),
    };
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect()
        .await;
    let channel = match channel {
        Ok(channel) => channel,
        Err(e) => return LinkError::Connect(error_chain(&e)),
    };
    // NB: the previous stream's body may still hold the queue for a moment
    // after it broke; this waits for it to be dropped.
    let queue = queue.clone().lock_owned().await;
    let first = PeerFrame::from(settings.hello());
    let peer = link.address.clone();
    let envelopes = stream::unfold(queue, move |mut queue| {
        let peer = peer.clone();
        async move {
            let message = queue.recv().await?;
            Some((envelope(&message, &peer), queue))
        }
    });
    let outbound = stream::once(async { first }).chain(envelopes);
    let mut client = PeerClient::new(channel);
    let handshake = async {
        let mut inbound = client.broadcast(outbound).await?.into_inner();
        let reply = inbound.message().await?;
        Ok::<_, tonic::Status>((inbound, reply))
    };
    let (mut inbound, reply) = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Err(_) => return LinkError::Connect("handshake timed out".into()),
        Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
            return LinkError::Refused(status.message().to_owned());
        }
        Ok(Err(status)) => return LinkError::Connect(status.to_string()),
        Ok(Ok(pair)) => pair,
    };
    let Some(PeerFrame {
        kind: Some(peer_frame::Kind::Hello(theirs)),
    }) = reply
    else {
        return LinkError::Refused(handshake::Refusal::NoHello.to_string());
    };
    if let Err(e) = accept_hello(&theirs, &settings.cluster, settings.node) {
        return e;
    }
    up(link, backoff, Transport::Grpc);
    // The peer sends nothing after its hello; the stream ends when it goes.
    loop {
        match inbound.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return LinkError::Stream("closed by the peer".into()),
            Err(status) => return LinkError::Stream(status.message().to_owned()),
        }
    }
}

/// Checks the peer's hello: not this pod itself, same cluster, a protocol
/// version in common.
fn accept_hello(theirs: &Hello, cluster: &str, node: NodeId) -> Result<(), LinkError> {
    if theirs.node.parse::<NodeId>().ok() == Some(node) {
        return Err(LinkError::ItsMe);
    }
    handshake::check(theirs, cluster).map_err(|refusal| LinkError::Refused(refusal.to_string()))
}

/// Books a stream that came up.
fn up(link: &Link, backoff: &mut Backoff, transport: Transport) {
    link.grpc
        .store(transport == Transport::Grpc, Ordering::Release);
    link.connected.store(true, Ordering::Release);
    if link.connects.fetch_add(1, Ordering::Relaxed) > 0 {
        stats::add(&link.counters.peer_reconnects, 1);
    }
    backoff.reset();
    let was_down = link
        .last_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .is_some();
    if was_down {
        tracing::info!(peer = %link.address, %transport, "peer stream up again");
    } else {
        tracing::info!(peer = %link.address, %transport, "peer stream up");
    }
}

fn envelope(message: &Message, peer: &str) -> PeerFrame {
    let trace_context = message
        .trace()
        .map(|parent| trace::hop(parent, peer))
        .unwrap_or_default();
    PeerFrame {
        kind: Some(peer_frame::Kind::Envelope(Envelope {
            id: message.id().to_string(),
            topic: message.topic().to_string(),
            data: message.data().clone(),
            origin: message.origin().to_string(),
            trace_context,
        })),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use crate::message::IdGenerator;
    use crate::topic::Topic;
    use bytes::Bytes;
    use tokio::net::TcpListener;
    use tokio_util::task::TaskTracker;

    fn mesh() -> Mesh {
        let settings = crate::cluster::MeshSettings {
            cluster: "test".into(),
            node: NodeId::random(),
            address: "127.0.0.1:7070".into(),
            peer_queue: 1024,
            max_message_bytes: 1 << 20,
            ready_timeout: Duration::from_secs(1),
            tls: None,
        };
        Mesh::new(
            settings,
            Hub::new(),
            TaskTracker::new(),
            CancellationToken::new(),
            Arc::new(Counters::default()),
        )
    }

    /// Messages of `size` bytes each, numbered from 0.
    fn messages(count: usize, size: usize) -> Vec<Arc<Message>> {
        let ids = IdGenerator::new(NodeId::random());
        let topic = Topic::new("t").expect("valid");
        (0..count)
            .map(|i| {
                let mut data = format!("{i:08}").into_bytes();
                data.resize(size, b'x');
                let message = Message::new(
                    ids.next_id(),
                    topic.clone(),
                    Bytes::from(data),
                    NodeId::random(),
                );
                Arc::new(message)
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_queued_behind_a_full_socket_arrive_whole_and_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let address = listener.local_addr().expect("bound").to_string();
        let counters = Arc::new(Counters::default());
        let (link, queue) = Link::new(address, 1024, counters.clone());
        let shutdown = CancellationToken::new();
        tokio::spawn(run(link.clone(), queue, mesh(), shutdown.clone()));

        let (mut peer, _) = listener.accept().await.expect("accepts");
        let mut buf = BytesMut::new();
        wire::read_hello(&mut peer, &mut buf).await.expect("hello");
        let answer = PeerFrame::from(handshake::hello("test", NodeId::random(), "127.0.0.1:7071"));
        wire::answer(&mut peer, &answer).await.expect("answers");
        while !link.is_connected() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }

        // The peer reads nothing until half the messages are offered: the
        // socket fills and the rest queue. Then it reads while the other
        // half is offered, so the queue drains and fills by turns.
        let sent = messages(400, 60 * 1024);
        let (start, started) = tokio::sync::oneshot::channel();
        let expected = sent.clone();
        let reader = tokio::spawn(async move {
            started.await.expect("started");
            for message in &expected {
                let frame = wire::read_frame(&mut peer, &mut buf, 1 << 20)
                    .await
                    .expect("reads")
                    .expect("not closed");
                let Some(peer_frame::Kind::Envelope(envelope)) = frame.kind else {
                    panic!("an envelope");
                };
                assert_eq!(envelope.id, message.id().to_string(), "in order");
                assert_eq!(envelope.data, message.data(), "whole");
            }
        });
        let (first, second) = sent.split_at(200);
        for message in first {
            link.offer(message);
        }
        assert!(!link.is_idle(), "12 MB do not fit in the socket at once");
        start.send(()).expect("reader waits");
        for chunk in second.chunks(10) {
            for message in chunk {
                link.offer(message);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        reader.await.expect("every message read in order");
        while !link.is_idle() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(counters.peer_queue_drops.load(Ordering::Relaxed), 0);
        shutdown.cancel();
    }
}
