//! One outgoing stream to one peer, kept up for as long as the peer is in
//! the peer set: connect, handshake, send what the queue holds; on any
//! failure, back off (capped, jittered) and connect again. The stream is a
//! peer-wire connection ([`wire`]).
//!
//! The queue carries [`Item`]s in order: numbered messages, drafts
//! forwarded to the peer as their topic's sequencer, and the handover of a
//! leaving pod. It outlives each stream, so what was queued while a peer
//! was briefly away is sent when it returns, up to the queue's bound;
//! beyond it messages are dropped for that peer, counted and logged (the
//! peer sees the hole in the topic's offsets and tells its subscribers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::mesh::Mesh;
use super::secret::{self, Role};
use super::{handshake, wire};
use crate::broadcast::PeerInfo;
use crate::message::{Draft, Epoch, Message, NodeId, Position};
use crate::proto::v1::{
    Envelope, Forward, Head, Heads, Hello, PeerFrame, Proof, SyncRequest, peer_frame,
};
use crate::stats::{self, Counters};
use crate::telemetry::trace;
use crate::topic::Topic;

/// How long connecting and the handshake may take.
/// Most bytes kept of what a peer sends on an outgoing stream: a refusal.
const MAX_HEARD: usize = 4096;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How often a pod that has not synced its history asks a peer again.
const SYNC_ASK_EVERY: Duration = Duration::from_secs(1);

/// Most bytes of queued messages put in one write on the peer wire.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// One thing queued for a peer, in the order it is sent.
#[derive(Debug, Clone)]
pub enum Item {
    /// A message numbered here.
    Message(Arc<Message>),
    /// A draft for the peer to number (or forward on), forwarded `hops`
    /// times before.
    Forward(Draft, u32),
    /// A frame of the cluster's own: a handover, a topic's history, a
    /// sync's answer, presence and interest changes, an interest ack.
    Control(peer_frame::Kind),
}

/// One peer: its queue and what is known of its stream.
#[derive(Debug)]
pub struct Link {
    address: String,
    queue: mpsc::Sender<Item>,
    stop: CancellationToken,
    /// Cuts a backoff short: the peer was just heard from.
    wake: tokio::sync::Notify,
    connected: AtomicBool,
    /// The peer's node id, from its last hello.
    node: Mutex<Option<NodeId>>,
    is_self: AtomicBool,
    dropped: AtomicU64,
    /// The last position of each topic whose messages were dropped for the
    /// peer (queue full, or written into a stream that broke) since it was
    /// last told.
    lost: Mutex<HashMap<Topic, Position>>,
    connects: AtomicU64,
    last_error: Mutex<Option<String>>,
    counters: Arc<Counters>,
    /// A presence delta was dropped for the peer: it gets the whole state
    /// again on the stream's next tick.
    presence_stale: AtomicBool,
    /// An interest delta was dropped for the peer: likewise.
    interest_stale: AtomicBool,
}

type Queue = mpsc::Receiver<Item>;

impl Link {
    /// A link to `address` with a queue of `capacity` messages, counting
    /// drops and reconnects into `counters`.
    pub fn new(address: String, capacity: usize, counters: Arc<Counters>) -> (Arc<Self>, Queue) {
        let (queue, rx) = mpsc::channel(capacity.max(1));
        let link = Arc::new(Self {
            address,
            queue,
            stop: CancellationToken::new(),
            wake: tokio::sync::Notify::new(),
            connected: AtomicBool::new(false),
            node: Mutex::new(None),
            is_self: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            lost: Mutex::default(),
            connects: AtomicU64::new(0),
            last_error: Mutex::new(None),
            counters,
            presence_stale: AtomicBool::new(false),
            interest_stale: AtomicBool::new(false),
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

    /// The peer's node id, once a stream to it came up.
    pub fn node(&self) -> Option<NodeId> {
        *self.node.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this address turned out to be this pod itself.
    pub fn is_self(&self) -> bool {
        self.is_self.load(Ordering::Acquire)
    }

    /// Queues `message` for the peer without waiting; drops it (counted,
    /// logged at powers of two) when the queue is full.
    pub fn offer(&self, message: &Arc<Message>) {
        if !self.offer_item(Item::Message(Arc::clone(message))) && !self.is_self() {
            self.lose(message);
        }
    }

    /// Books `message` as never to reach the peer.
    fn lose(&self, message: &Message) {
        let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        lost.insert(message.topic().clone(), message.position());
    }

    /// Queues `draft` for the peer to number; false if the queue is full
    /// or the peer is this pod.
    pub fn forward(&self, draft: Draft, hops: u32) -> bool {
        self.offer_item(Item::Forward(draft, hops))
    }

    /// Queues a frame of the cluster's own without waiting; false if the
    /// queue is full.
    pub fn offer_control(&self, kind: peer_frame::Kind) -> bool {
        self.offer_item(Item::Control(kind))
    }

    /// Queues a frame of the cluster's own behind everything queued
    /// before it, waiting for room for up to `timeout`; false if there was
    /// none.
    pub async fn send_control(&self, kind: peer_frame::Kind, timeout: Duration) -> bool {
        if self.is_self() {
            return true;
        }
        let sent = self.queue.send_timeout(Item::Control(kind), timeout);
        sent.await.is_ok()
    }

    fn offer_item(&self, item: Item) -> bool {
        if self.is_self() {
            return false;
        }
        let sent = self.queue.try_send(item);
        if let Err(mpsc::error::TrySendError::Full(_)) = sent {
            stats::add(&self.counters.peer_queue_drops, 1);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(peer = %self.address, dropped, "peer queue full: dropping messages for this peer");
            }
            return false;
        }
        sent.is_ok()
    }

    /// Has the stream send this pod's whole presence state again soon (a
    /// delta was dropped for the peer).
    pub fn resend_presence(&self) {
        self.presence_stale.store(true, Ordering::Release);
    }

    /// Has the stream send this pod's whole interest set again soon (a
    /// delta was dropped for the peer).
    pub fn resend_interest(&self) {
        self.interest_stale.store(true, Ordering::Release);
    }

    /// Connects again now if the link is waiting out a backoff: the peer
    /// just dialled this pod, so it is up.
    pub fn wake(&self) {
        if !self.is_connected() {
            self.wake.notify_one();
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
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            transport: "wire",
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
}

impl From<wire::DialError> for LinkError {
    fn from(error: wire::DialError) -> Self {
        match error {
            wire::DialError::NoWire(why) => Self::Connect(why.to_owned()),
            wire::DialError::Refused(why) => Self::Refused(why),
            wire::DialError::Wire(e) => Self::Connect(e.to_string()),
        }
    }
}

/// Keeps the link's stream up until the link is stopped or the pod shuts
/// down.
pub async fn run(link: Arc<Link>, queue: Queue, mesh: Mesh, shutdown: CancellationToken) {
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let ended = tokio::select! {
            () = link.stop.cancelled() => return,
            () = shutdown.cancelled() => return,
            ended = stream_wire(&link, &queue, &mesh, &mut backoff) => ended,
        };
        link.connected.store(false, Ordering::Release);
        if let LinkError::ItsMe = ended {
            link.is_self.store(true, Ordering::Release);
            tracing::debug!(peer = %link.address, "peer address is this pod; not streaming to it");
            return;
        }
        link.record_error(&ended);
        tokio::select! {
            () = link.stop.cancelled() => return,
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
            () = link.wake.notified() => {}
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
    let challenge = secret::nonce();
    let hello = PeerFrame::from(settings.hello(challenge.clone(), Vec::new()));
    let dialled = wire::dial(&link.address, settings.tls.as_ref(), &hello);
    let (mut stream, theirs) = match tokio::time::timeout(CONNECT_TIMEOUT, dialled).await {
        Err(_) => return LinkError::Connect("handshake timed out".into()),
        Ok(Err(e)) => return e.into(),
        Ok(Ok(pair)) => pair,
    };
    let node = match accept_hello(&theirs, &settings.cluster, settings.node) {
        Ok(node) => node,
        Err(e) => return e,
    };
    if !settings.proven(Role::Listener, &challenge, &theirs.nonce, &theirs.proof) {
        stats::add(&link.counters.peer_auth_failures, 1);
        return LinkError::Refused(handshake::Refusal::NoProof.to_string());
    }
    // Ours, first on the stream: the peer takes nothing before it.
    let proof = PeerFrame {
        kind: Some(peer_frame::Kind::Proof(Proof {
            mac: settings.prove(Role::Dialer, &theirs.nonce, &challenge),
        })),
    };
    if let Err(e) = wire::send(&mut stream, &proof).await {
        return LinkError::Stream(e.to_string());
    }
    // NB: the previous stream may still hold the queue for a moment after
    // it broke; this waits for it to be given back.
    let mut queue = queue.clone().lock_owned().await;
    up(link, backoff, node);
    let mut out = BytesMut::new();
    // Messages in the write under way: lost if the stream breaks in it.
    let mut writing: Vec<Arc<Message>> = Vec::new();
    let mut probe = [0u8; 64];
    // What the peer sent on the stream (only a refusal is expected).
    let mut heard = BytesMut::new();
    // Now and then: a pod that has not synced asks (again) for what its
    // peers keep.
    let mut sync_check = tokio::time::interval(SYNC_ASK_EVERY);
    // The peer replaces what it holds of this pod's presence with this
    // first, before any delta queued (older ones it ignores).
    link.presence_stale.store(false, Ordering::Release);
    if let Err(e) = send_presence_state(&mut stream, link, mesh, &mut out).await {
        return e;
    }
    // Likewise what this pod follows: until it arrives the peer sends this
    // pod every message.
    link.interest_stale.store(false, Ordering::Release);
    if let Err(e) = send_frames(&mut stream, link, mesh.interest_state(), &mut out).await {
        return e;
    }
    // What was lost on a stream before this one is told first.
    if let Err(e) = tell_lost(&mut stream, link, &mut queue, &mut out, &mut writing).await {
        return e;
    }
    loop {
        tokio::select! {
            _ = sync_check.tick() => {
                if link.presence_stale.swap(false, Ordering::AcqRel)
                    && let Err(e) = send_presence_state(&mut stream, link, mesh, &mut out).await
                {
                    return e;
                }
                if link.interest_stale.swap(false, Ordering::AcqRel)
                    && let Err(e) = send_frames(&mut stream, link, mesh.interest_state(), &mut out).await
                {
                    return e;
                }
                if mesh.asks_for_sync() {
                    let ask = PeerFrame {
                        kind: Some(peer_frame::Kind::SyncRequest(SyncRequest {})),
                    };
                    wire::encode(&ask, &mut out);
                    if let Err(e) = stream.write_all(&out).await {
                        return LinkError::Stream(e.to_string());
                    }
                    stats::add(&link.counters.peer_bytes_sent, out.len() as u64);
                    out.clear();
                }
            }
            read = stream.read(&mut probe) => match read {
                // The peer sends nothing after its hello but a refusal
                // (of this pod's proof); the connection ends when it goes.
                Ok(0) => {
                    return match wire::refusal_in(&mut heard) {
                        Some(reason) => LinkError::Refused(reason),
                        None => LinkError::Stream("closed by the peer".into()),
                    };
                }
                Ok(n) => {
                    if heard.len() < MAX_HEARD {
                        heard.extend_from_slice(&probe[..n]);
                    }
                }
                Err(e) => return LinkError::Stream(e.to_string()),
            },
            item = queue.recv() => {
                let Some(item) = item else {
                    return LinkError::Stream("queue closed".into());
                };
                encode(item, &link.address, &mut out, &mut writing);
                // Whatever else is queued goes in the same write.
                while out.len() < WRITE_BATCH_BYTES {
                    let Ok(item) = queue.try_recv() else { break };
                    encode(item, &link.address, &mut out, &mut writing);
                }
                if let Err(e) = send(&mut stream, link, &mut out, &mut writing).await {
                    return e;
                }
                if let Err(e) = tell_lost(&mut stream, link, &mut queue, &mut out, &mut writing).await {
                    return e;
                }
            }
        }
    }
}

/// Writes this pod's whole presence state to the stream, now.
async fn send_presence_state<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    link: &Link,
    mesh: &Mesh,
    out: &mut BytesMut,
) -> Result<(), LinkError> {
    let frames = super::presence::state_frames(mesh.presence());
    send_frames(stream, link, frames, out).await
}

/// Writes `frames` to the stream, now, ahead of anything queued.
async fn send_frames<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    link: &Link,
    frames: Vec<peer_frame::Kind>,
    out: &mut BytesMut,
) -> Result<(), LinkError> {
    for kind in frames {
        wire::encode(&PeerFrame { kind: Some(kind) }, out);
        if let Err(e) = stream.write_all(out).await {
            return Err(LinkError::Stream(e.to_string()));
        }
        stats::add(&link.counters.peer_bytes_sent, out.len() as u64);
        out.clear();
    }
    Ok(())
}

/// Writes `out`; if the stream breaks, the messages in it (`writing`) are
/// booked as lost for the peer.
async fn send<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    link: &Link,
    out: &mut BytesMut,
    writing: &mut Vec<Arc<Message>>,
) -> Result<(), LinkError> {
    if let Err(e) = stream.write_all(out).await {
        lose_all(link, writing);
        return Err(LinkError::Stream(e.to_string()));
    }
    stats::add(&link.counters.peer_bytes_sent, out.len() as u64);
    out.clear();
    writing.clear();
    Ok(())
}

/// Tells the peer where topics stand whose messages were lost for it, once
/// nothing is queued before (see [`lost_heads`]).
async fn tell_lost<W: AsyncWrite + Unpin + ?Sized>(
    stream: &mut W,
    link: &Link,
    queue: &mut Queue,
    out: &mut BytesMut,
    writing: &mut Vec<Arc<Message>>,
) -> Result<(), LinkError> {
    let Some(heads) = lost_heads(link, queue, out, writing) else {
        return Ok(());
    };
    send(stream, link, out, writing).await?;
    if heads > 0 {
        tracing::debug!(peer = %link.address, topics = heads, "told a peer where topics stand after losing messages for it");
    }
    Ok(())
}

/// Encodes `item` into `out`, noting a message in `writing`.
fn encode(item: Item, peer: &str, out: &mut BytesMut, writing: &mut Vec<Arc<Message>>) {
    if let Item::Message(message) = &item {
        writing.push(Arc::clone(message));
    }
    wire::encode(&frame(item, peer), out);
}

/// The messages of a write that failed will not reach the peer.
fn lose_all(link: &Link, writing: &mut Vec<Arc<Message>>) {
    for message in writing.drain(..) {
        link.lose(&message);
    }
}

/// After messages were lost for the peer: once nothing is queued, the last
/// lost position of each of their topics goes into `out` (everything the
/// peer gets of those topics up to it was written before). An item found
/// queued instead goes into `out`, and the heads wait for the next turn.
/// Returns how many heads, when there is something to write.
fn lost_heads(
    link: &Link,
    queue: &mut Queue,
    out: &mut BytesMut,
    writing: &mut Vec<Arc<Message>>,
) -> Option<usize> {
    let lost: Vec<(Topic, Position)> = {
        let mut lost = link.lost.lock().unwrap_or_else(|p| p.into_inner());
        if lost.is_empty() {
            return None;
        }
        lost.drain().collect()
    };
    match queue.try_recv() {
        Err(mpsc::error::TryRecvError::Empty) => {
            let heads: Vec<Head> = lost
                .iter()
                .map(|(topic, at)| Head {
                    topic: topic.to_string(),
                    epoch: at.epoch.map_or(0, Epoch::as_u64),
                    offset: at.offset,
                })
                .collect();
            let count = heads.len();
            let frame = PeerFrame {
                kind: Some(peer_frame::Kind::Heads(Heads { heads })),
            };
            wire::encode(&frame, out);
            Some(count)
        }
        Ok(item) => {
            let mut again = link.lost.lock().unwrap_or_else(|p| p.into_inner());
            for (topic, at) in lost {
                // A loss booked meanwhile is later.
                again.entry(topic).or_insert(at);
            }
            drop(again);
            encode(item, &link.address, out, writing);
            Some(0)
        }
        Err(mpsc::error::TryRecvError::Disconnected) => None,
    }
}

/// Checks the peer's hello (not this pod itself, same cluster, a protocol
/// version in common) and returns its node id.
fn accept_hello(theirs: &Hello, cluster: &str, node: NodeId) -> Result<NodeId, LinkError> {
    let Ok(their_node) = theirs.node.parse::<NodeId>() else {
        return Err(LinkError::Refused(format!("bad node id {:?}", theirs.node)));
    };
    if their_node == node {
        return Err(LinkError::ItsMe);
    }
    handshake::check(theirs, cluster).map_err(|refusal| LinkError::Refused(refusal.to_string()))?;
    Ok(their_node)
}

/// Books a stream that came up to `node`.
fn up(link: &Link, backoff: &mut Backoff, node: NodeId) {
    *link.node.lock().unwrap_or_else(|p| p.into_inner()) = Some(node);
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
        tracing::info!(peer = %link.address, %node, "peer stream up again");
    } else {
        tracing::info!(peer = %link.address, %node, "peer stream up");
    }
}

/// The frame that carries `item` to `peer`.
fn frame(item: Item, peer: &str) -> PeerFrame {
    let kind = match item {
        Item::Message(message) => peer_frame::Kind::Envelope(envelope(&message, peer)),
        Item::Forward(draft, hops) => peer_frame::Kind::Forward(Forward {
            draft: Some(draft_envelope(&draft, peer)),
            hops,
        }),
        Item::Control(kind) => kind,
    };
    PeerFrame { kind: Some(kind) }
}

/// A numbered message as it travels.
pub fn envelope(message: &Message, peer: &str) -> Envelope {
    let stamp = message.stamp();
    Envelope {
        offset: stamp.offset,
        epoch: stamp.epoch.as_u64(),
        sequencer: stamp.sequencer.to_string(),
        ..envelope_of(
            message.id(),
            message.topic().as_str(),
            message.data(),
            message.origin(),
            message.key(),
            message.trace(),
            peer,
        )
    }
}

fn draft_envelope(draft: &Draft, peer: &str) -> Envelope {
    envelope_of(
        draft.id,
        draft.topic.as_str(),
        &draft.data,
        draft.origin,
        draft.key.as_ref(),
        draft.trace.as_deref(),
        peer,
    )
}

fn envelope_of(
    id: crate::message::MessageId,
    topic: &str,
    data: &bytes::Bytes,
    origin: NodeId,
    key: Option<&Arc<str>>,
    trace: Option<&crate::message::TraceContext>,
    peer: &str,
) -> Envelope {
    Envelope {
        id: id.to_string(),
        topic: topic.to_owned(),
        data: data.clone(),
        origin: origin.to_string(),
        trace_context: trace
            .map(|parent| trace::hop(parent, peer))
            .unwrap_or_default(),
        idempotency_key: key.map(|k| k.to_string()).unwrap_or_default(),
        ..Envelope::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;
    use tokio::net::TcpListener;
    use tokio_util::task::TaskTracker;

    fn mesh() -> Mesh {
        let node = NodeId::random();
        let settings = crate::cluster::MeshSettings {
            cluster: "test".into(),
            node,
            address: "127.0.0.1:7070".into(),
            peer_queue: 1024,
            max_message_bytes: 1 << 20,
            ready_timeout: Duration::from_secs(1),
            routing: crate::config::PeerRouting::Interest,
            tls: None,
            secret: None,
        };
        let local = crate::local::Local::new(
            Hub::new(),
            crate::history::History::new(Default::default()),
            node,
        );
        let presence = crate::presence::Presence::new(crate::presence::Settings {
            node,
            topics: crate::auth::TopicPatterns::none(),
            grace: crate::cluster::presence::GRACE,
        });
        Mesh::new(
            settings,
            local,
            presence,
            TaskTracker::new(),
            CancellationToken::new(),
            Arc::new(Counters::default()),
        )
    }

    /// Messages of `size` bytes each, numbered from 0.
    fn messages(count: usize, size: usize) -> Vec<Arc<Message>> {
        (0..count)
            .map(|i| {
                let mut data = format!("{i:08}").into_bytes();
                data.resize(size, b'x');
                crate::message::sample("t", i as u64 + 1, &String::from_utf8_lossy(&data))
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
        let answer = PeerFrame::from(handshake::hello(
            "test",
            NodeId::random(),
            "127.0.0.1:7071",
            Vec::new(),
            Vec::new(),
        ));
        wire::answer(&mut peer, &answer).await.expect("answers");
        wire::read_proof(&mut peer, &mut buf)
            .await
            .expect("a proof first");
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
            // Its presence state comes first on every stream (empty here).
            let state = wire::read_frame(&mut peer, &mut buf, 1 << 20)
                .await
                .expect("reads")
                .expect("not closed");
            assert!(
                matches!(state.kind, Some(peer_frame::Kind::PresenceState(ref s)) if s.first && s.last),
                "{state:?}"
            );
            // Then what it follows (nothing yet).
            let interest = wire::read_frame(&mut peer, &mut buf, 1 << 20)
                .await
                .expect("reads")
                .expect("not closed");
            assert!(
                matches!(interest.kind, Some(peer_frame::Kind::InterestState(ref s)) if s.first && s.last && s.topics.is_empty()),
                "{interest:?}"
            );
            // A pod that has not synced asks its first peer to.
            let ask = wire::read_frame(&mut peer, &mut buf, 1 << 20)
                .await
                .expect("reads")
                .expect("not closed");
            assert!(
                matches!(ask.kind, Some(peer_frame::Kind::SyncRequest(_))),
                "{ask:?}"
            );
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
