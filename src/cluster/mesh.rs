//! The broadcast group as this pod sees it: one [`Link`] per peer, the
//! relay of local messages to all of them, the choice of which pod numbers
//! a topic, and the handling of what peers send.
//!
//! Ordering (docs/continuity.md): every topic has one sequencer at a time.
//! A topic keeps the sequencer that numbered its last message for as long
//! as that pod is live (its stream is up and it has not left); a topic
//! without a live sequencer goes to the live pod that rendezvous hashing
//! ranks first for it. Drafts are forwarded to the sequencer, which numbers
//! them and relays them to everyone, the forwarding pod included. A pod
//! that drains hands each topic it numbers, at its last offset, to one
//! successor all pods agree on, so a rolling restart never starts a new
//! epoch; a sequencer that vanishes is replaced by one that starts a new
//! epoch, so a position issued by the old one is never reused.
//!
//! Concurrency: the publish path reads the current links through an
//! `ArcSwap`, without a lock, and only offers to bounded queues, so a slow or
//! dead peer never blocks publishing or the other peers. Membership changes
//! come from one task (`follow`) and swap in a new list.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::interest::{self, Follow};
use super::link::{self, Link};
use super::secret::{ClusterSecret, Role};
use super::{PeerSet, handshake};
use crate::broadcast::intake::{Intake, MAX_OFFSET, valid_offset};
use crate::broadcast::{Broadcast, Identity, PeerInfo};
use crate::config::PeerRouting;
use crate::history::Need;
use crate::hub::Hub;
use crate::local::Local;
use crate::local::Recall;
use crate::message::{Draft, Epoch, Message, MessageId, NodeId, Position, Stamp};
use crate::presence::Presence;
use crate::proto::v1::{
    Envelope, Head, Heads, Hello, InterestAck, InterestDelta, Leaving, PeerFrame, Receipt,
    Snapshot, peer_frame,
};
use crate::publish::{Relay, Route};
use crate::stats::Counters;
use crate::telemetry::trace;
use crate::tls::PeerTls;
use crate::topic::Topic;

/// How many times a draft is forwarded before a pod numbers it itself
/// (views of who is live differ for a moment while membership changes).
pub const MAX_HOPS: u32 = 2;

/// How long a forwarded draft that has used its hops waits, and how many
/// times, for this pod's view of who numbers its topic to settle.
const SETTLE_WAIT: Duration = Duration::from_millis(20);
/// See [`SETTLE_WAIT`].
const SETTLE_TRIES: u32 = 10;

/// Most topics one handover frame carries.
const HEADS_PER_FRAME: usize = 1_000;

/// Most bytes of one topic's newest messages sent to a pod that starts
/// following it, or to its successor on a drain (the rest stays on the
/// pods that have it).
pub const SNAPSHOT_BYTES: usize = 1 << 20;

/// How long a pod answering a sync waits for its stream to the asking pod,
/// and for room in that stream's queue.
const SYNC_PATIENCE: Duration = Duration::from_secs(5);

/// Longest a round of asking the connected peers to send this pod a topic
/// takes; past it, the subscribe or read is answered from what this pod
/// holds, and the next one asks again. A peer that did not answer in time
/// has a broken stream (its messages for this pod are lost, and told as a
/// `gap`) or a queue from this pod that stayed full (see
/// docs/continuity.md).
const FOLLOW_PATIENCE: Duration = Duration::from_secs(2);

/// How often topics left alone are let go.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A delta this pod waits to hear acknowledged.
struct Ask {
    /// Peers that have not answered yet.
    waiting: HashSet<NodeId>,
    /// What those that answered keep of the topic, and who sent it.
    snapshots: Vec<(NodeId, Snapshot)>,
    /// A peer asked will not answer.
    unheard: bool,
    /// Woken when the last peer answered.
    done: Arc<tokio::sync::Notify>,
}

impl Ask {
    /// `node` answered.
    fn answered(&mut self, node: NodeId) {
        if self.waiting.remove(&node) && self.waiting.is_empty() {
            self.done.notify_one();
        }
    }

    /// `node` will not answer.
    fn unheard(&mut self, node: NodeId) {
        if self.waiting.contains(&node) {
            self.unheard = true;
            self.answered(node);
        }
    }
}

/// How this pod presents itself to its peers.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    /// The cluster identity: pods join only peers with the same one.
    pub cluster: String,
    /// This process's node id.
    pub node: NodeId,
    /// The peer address this pod advertises in its hello.
    pub address: String,
    /// Messages queued per peer before new ones are dropped for it.
    pub peer_queue: usize,
    /// Largest `data` accepted from a peer, as for local publishes.
    pub max_message_bytes: usize,
    /// Longest wait for streams to all peers before reporting ready anyway.
    pub ready_timeout: Duration,
    /// Which peers a topic's messages go to.
    pub routing: PeerRouting,
    /// Mutual TLS towards peers, when the peer port uses it.
    pub tls: Option<PeerTls>,
    /// The secret peers prove in the handshake; `None` accepts any peer
    /// of the cluster.
    pub secret: Option<ClusterSecret>,
}

impl MeshSettings {
    /// This pod's hello with `nonce`, and `proof` (a listener's).
    pub fn hello(&self, nonce: Vec<u8>, proof: Vec<u8>) -> Hello {
        handshake::hello(&self.cluster, self.node, &self.address, nonce, proof)
    }

    /// This side's proof over the peer's `challenge` and its own `nonce`
    /// (empty without a secret).
    pub fn prove(&self, role: Role, challenge: &[u8], nonce: &[u8]) -> Vec<u8> {
        self.secret.as_ref().map_or_else(Vec::new, |secret| {
            secret.prove(role, &self.cluster, challenge, nonce)
        })
    }

    /// Whether the peer (of `role`) proved the secret over this side's
    /// `challenge` and its `nonce`; always without a secret.
    pub fn proven(&self, role: Role, challenge: &[u8], nonce: &[u8], proof: &[u8]) -> bool {
        self.secret
            .as_ref()
            .is_none_or(|secret| secret.verify(role, &self.cluster, challenge, nonce, proof))
    }
}

/// A handle to this pod's side of the broadcast group. Clones share it.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    settings: MeshSettings,
    local: Local,
    intake: Intake,
    presence: Presence,
    /// The links the publish path relays to.
    links: ArcSwap<Vec<Arc<Link>>>,
    /// The same links by address; written only by `follow`.
    by_address: Mutex<BTreeMap<String, Arc<Link>>>,
    /// Pods that handed their topics on and are going.
    left: Mutex<HashSet<NodeId>>,
    /// This pod handed its topics on: it numbers nothing more while
    /// another pod is live.
    leaving: AtomicBool,
    /// The topics each peer follows.
    interest: interest::Peers,
    /// The topics this pod follows.
    own: Arc<interest::Own>,
    /// Deltas this pod waits to hear acknowledged, by number.
    asks: Mutex<HashMap<u64, Ask>>,
    /// The last number given to a delta that asks.
    next_ask: AtomicU64,
    /// This pod is queueing its handover: forwards wait in `held`.
    handing: AtomicBool,
    held: Mutex<Option<Vec<(NodeId, Draft, u32)>>>,
    /// When this pod last asked a peer for what it keeps.
    sync_asked: Mutex<Option<Instant>>,
    /// This pod has what a peer keeps (or found no peer to ask): until
    /// then it numbers no topic it knows nothing of while a peer is live.
    synced: AtomicBool,
    discovered: AtomicBool,
    settled: AtomicBool,
    started: Instant,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    counters: Arc<Counters>,
}

impl Mesh {
    /// A mesh with no peers yet, ordering and delivering through `local`
    /// and sharing `presence` with its peers. Link tasks run on `tracker`
    /// and stop with `shutdown`; drops and reconnects are counted into
    /// `counters`.
    pub fn new(
        settings: MeshSettings,
        local: Local,
        presence: Presence,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        counters: Arc<Counters>,
    ) -> Self {
        let own = Arc::new(interest::Own::default());
        local.hub().watch(own.clone());
        Self {
            inner: Arc::new(Inner {
                intake: Intake::new(local.clone(), settings.max_message_bytes),
                settings,
                local,
                presence,
                interest: interest::Peers::default(),
                own,
                asks: Mutex::default(),
                next_ask: AtomicU64::new(0),
                handing: AtomicBool::new(false),
                held: Mutex::default(),
                links: ArcSwap::default(),
                by_address: Mutex::default(),
                left: Mutex::default(),
                leaving: AtomicBool::new(false),
                sync_asked: Mutex::new(None),
                synced: AtomicBool::new(false),
                discovered: AtomicBool::new(false),
                settled: AtomicBool::new(false),
                started: Instant::now(),
                tracker,
                shutdown,
                counters,
            }),
        }
    }

    /// The settings this mesh runs with.
    pub fn settings(&self) -> &MeshSettings {
        &self.inner.settings
    }

    /// The pod's counters.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// This pod's presence.
    pub fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// The local hub.
    pub fn hub(&self) -> &Hub {
        self.inner.local.hub()
    }

    /// Queues a presence frame for every peer without waiting; a peer
    /// whose queue is full gets the whole state again instead.
    pub fn broadcast_presence(&self, kind: &peer_frame::Kind) {
        for link in self.inner.links.load().iter() {
            if !link.is_self() && !link.offer_control(kind.clone()) {
                link.resend_presence();
            }
        }
    }

    /// A stream from peer `from` (advertising `address`) proved itself:
    /// its presence entries are live again.
    pub fn stream_up(&self, from: NodeId, address: &str) {
        self.inner.presence.peer_up(from, address);
        self.inner.interest.stream_up(from);
    }

    /// A stream from peer `from` ended: its presence entries last for the
    /// grace unless one comes back, what it follows is unknown (it gets
    /// every message) until a new stream brings it, and this pod's
    /// questions to it go unanswered.
    pub fn stream_down(&self, from: NodeId) {
        self.inner.presence.peer_down(from);
        self.inner.interest.stream_down(from);
        let mut asks = self.inner.asks.lock().unwrap_or_else(|p| p.into_inner());
        for ask in asks.values_mut() {
            ask.unheard(from);
        }
    }

    /// Follows the peer sets published by discovery until shutdown.
    /// Stops following topics left alone for [`interest::LINGER`] now and
    /// then, meanwhile.
    pub async fn follow(self, mut peers: watch::Receiver<Option<PeerSet>>) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            let current = peers.borrow_and_update().clone();
            if let Some(set) = current {
                self.apply(&set);
            }
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
                _ = sweep.tick() => {
                    self.unfollow_idle();
                    continue;
                }
                changed = peers.changed() => if changed.is_err() {
                    // The source has stopped; keep the peers it last gave.
                    self.inner.shutdown.cancelled().await;
                    return;
                },
            }
        }
    }

    /// Makes the links match `peers`: opens links to new peers and closes
    /// links to peers that left.
    pub fn apply(&self, peers: &PeerSet) {
        let inner = &self.inner;
        let mut by_address = inner.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let leaving: Vec<String> = by_address
            .keys()
            .filter(|a| !peers.contains(*a))
            .cloned()
            .collect();
        for address in leaving {
            if let Some(link) = by_address.remove(&address) {
                link.stop();
                if let Some(node) = link.node() {
                    inner.presence.peer_gone(node);
                }
                tracing::info!(peer = %address, group_size = peers.len() + 1, "peer left");
            }
        }
        let joining: Vec<String> = peers
            .iter()
            .filter(|a| !by_address.contains_key(*a))
            .cloned()
            .collect();
        for address in joining {
            let (link, queue) = Link::new(
                address.clone(),
                inner.settings.peer_queue,
                inner.counters.clone(),
            );
            let span = tracing::info_span!("peer_link", peer = %address);
            inner.tracker.spawn(
                link::run(link.clone(), queue, self.clone(), inner.shutdown.clone())
                    .instrument(span),
            );
            by_address.insert(address.clone(), link);
            tracing::info!(peer = %address, group_size = peers.len() + 1, "peer joined");
        }
        inner
            .links
            .store(Arc::new(by_address.values().cloned().collect()));
        inner.discovered.store(true, Ordering::Release);
    }

    /// Waits until every peer queue is empty, or `timeout` passes: what was
    /// published before a stop still reaches the peers.
    pub async fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let links = self.inner.links.load();
            if links
                .iter()
                .all(|l| l.is_self() || !l.is_connected() || l.is_idle())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!(?timeout, "stopping with messages still queued for peers");
    }

    /// Every peer known, for operators.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.inner
            .links
            .load()
            .iter()
            .filter(|l| !l.is_self())
            .map(|l| l.info())
            .collect()
    }

    /// Whether this pod is ready as far as the cluster goes: peers have been
    /// discovered and a stream to each is up, or [`MeshSettings::ready_timeout`]
    /// has passed since start. Once true it stays true: a peer dying later
    /// must not take healthy pods out of service.
    pub fn is_settled(&self) -> bool {
        let inner = &self.inner;
        if inner.settled.load(Ordering::Acquire) {
            return true;
        }
        let links = inner.links.load();
        let alone = links.iter().all(|l| l.is_self());
        let discovered = inner.discovered.load(Ordering::Acquire);
        let connected = discovered
            && links.iter().all(|l| l.is_self() || l.is_connected())
            && (alone || inner.synced.load(Ordering::Acquire));
        let timed_out = inner.started.elapsed() >= inner.settings.ready_timeout;
        if timed_out && !discovered {
            tracing::warn!(
                "ready although peer discovery has not succeeded yet: the wait timed out; \
                 the pod serves alone until discovery finds its peers"
            );
        } else if timed_out && !connected {
            let missing: Vec<_> = links
                .iter()
                .filter(|l| !l.is_self() && !l.is_connected())
                .map(|l| l.address().to_owned())
                .collect();
            tracing::warn!(
                ?missing,
                synced = inner.synced.load(Ordering::Acquire),
                "ready without streams to every peer or without a peer's history: the wait timed out"
            );
        }
        if connected || timed_out {
            inner.settled.store(true, Ordering::Release);
        }
        connected || timed_out
    }

    /// Hands every topic this pod numbers on to its successor among the
    /// live peers, on every stream after what is queued there, and stops
    /// numbering: publishes that reach this pod from now on are forwarded.
    /// Waits up to `timeout` per stream for room in its queue.
    pub async fn leave(&self, timeout: Duration) {
        let inner = &self.inner;
        inner.leaving.store(true, Ordering::Release);
        let successors = self.live_peers();
        if successors.is_empty() {
            return;
        }
        // Every draft this pod forwards waits until the handover is queued
        // (see `release_held`).
        *inner.held.lock().unwrap_or_else(|p| p.into_inner()) = Some(Vec::new());
        inner.handing.store(true, Ordering::Release);
        let me = inner.settings.node;
        let handed: Vec<(Topic, Position, NodeId)> = inner
            .local
            .history()
            .sequenced_by(me)
            .into_iter()
            .map(|(topic, _)| {
                let successor = first_ranked(&topic, &successors).unwrap_or(me);
                let head = inner.local.hand_on(&topic, successor);
                (topic, head, successor)
            })
            .collect();
        let heads: Vec<(Topic, Position)> = handed
            .iter()
            .map(|(topic, head, _)| (topic.clone(), *head))
            .collect();
        let successors: Vec<String> = successors.iter().map(NodeId::to_string).collect();
        let frames: Vec<Leaving> = heads
            .chunks(HEADS_PER_FRAME)
            .map(|chunk| Leaving {
                successors: successors.clone(),
                heads: chunk
                    .iter()
                    .map(|(topic, head)| Head {
                        topic: topic.to_string(),
                        epoch: head.epoch.map_or(0, Epoch::as_u64),
                        offset: head.offset,
                    })
                    .collect(),
            })
            .collect();
        let frames = if frames.is_empty() {
            vec![Leaving {
                successors,
                heads: Vec::new(),
            }]
        } else {
            frames
        };
        for link in self.inner.links.load().iter() {
            for frame in &frames {
                let kind = peer_frame::Kind::Leaving(frame.clone());
                if !link.send_control(kind, timeout).await {
                    tracing::warn!(peer = %link.address(), "the handover did not fit in the peer's queue in time");
                    break;
                }
            }
        }
        self.release_held();
        // The history follows the handover: a forward that reaches a
        // successor before the handover would bounce back here.
        self.hand_history(&handed, timeout).await;
        tracing::info!(
            topics = heads.len(),
            "handed this pod's topics to their successors"
        );
    }

    /// Forwards the drafts held while the handover was being queued: behind
    /// it, so that a successor numbers them rather than sending them back
    /// here as to the topic's sequencer.
    fn release_held(&self) {
        let inner = &self.inner;
        let mut held = inner.held.lock().unwrap_or_else(|p| p.into_inner());
        inner.handing.store(false, Ordering::Release);
        for (to, draft, hops) in held.take().unwrap_or_default() {
            let links = inner.links.load();
            let link = links
                .iter()
                .find(|l| l.is_connected() && l.node() == Some(to));
            if !link.is_some_and(|link| link.forward(draft, hops)) {
                tracing::debug!(peer = %to, "a held draft found no room: its publish times out as unconfirmed");
            }
        }
    }

    /// Sends each successor what this pod keeps of the topics it took
    /// over, right behind the handover: the topic's history outlives a
    /// rolling restart even where no other pod followed it.
    async fn hand_history(&self, handed: &[(Topic, Position, NodeId)], timeout: Duration) {
        let me = self.inner.settings.node;
        let links = self.inner.links.load();
        for (topic, head, successor) in handed {
            let Some(link) = links.iter().find(|l| l.node() == Some(*successor)) else {
                continue;
            };
            let kept = self
                .inner
                .local
                .history()
                .read(topic, |log| log.newest(SNAPSHOT_BYTES))
                .unwrap_or_default();
            let frame = snapshot_frame(topic, *head, me, &kept, link.address());
            if !link
                .send_control(peer_frame::Kind::Snapshot(frame), timeout)
                .await
            {
                tracing::warn!(peer = %link.address(), "a topic's history did not fit in its successor's queue in time");
            }
        }
    }

    /// Peers with a stream up that have not left.
    fn live_peers(&self) -> Vec<NodeId> {
        let left = self.inner.left.lock().unwrap_or_else(|p| p.into_inner());
        self.inner
            .links
            .load()
            .iter()
            .filter(|l| l.is_connected())
            .filter_map(|l| l.node())
            .filter(|node| !left.contains(node))
            .collect()
    }

    /// Handles frames received from the peer `from`, in order. Numbered
    /// messages that arrived together are delivered together (a session
    /// gets them in one frame); a traced one is delivered on its own, in a
    /// span under the publisher's trace. Invalid frames are logged and
    /// skipped.
    pub fn receive(&self, from: NodeId, frames: impl IntoIterator<Item = PeerFrame>) {
        // Envelopes in a row are delivered together, before whatever
        // frame follows them.
        let mut batch = self.inner.intake.batch();
        for frame in frames {
            let kind = match frame.kind {
                Some(peer_frame::Kind::Envelope(envelope)) => {
                    batch.push(&envelope);
                    continue;
                }
                other => other,
            };
            batch.flush();
            match kind {
                Some(peer_frame::Kind::Forward(forward)) => {
                    self.take_forward(forward.draft.as_ref(), forward.hops);
                }
                Some(peer_frame::Kind::Leaving(leaving)) => self.take_leaving(from, &leaving),
                Some(peer_frame::Kind::SyncRequest(_)) => {
                    let span = tracing::info_span!("sync", peer = %from);
                    let answering = self.clone().answer_sync(from).instrument(span);
                    self.inner.tracker.spawn(answering);
                }
                Some(peer_frame::Kind::Receipt(receipt)) => self.take_receipt(&receipt),
                Some(peer_frame::Kind::Heads(heads)) => self.take_heads(&heads),
                Some(peer_frame::Kind::Snapshot(snapshot)) => self.take_snapshot(&snapshot),
                Some(peer_frame::Kind::PresenceDelta(delta)) => {
                    super::presence::take_delta(&self.inner.presence, from, delta);
                }
                Some(peer_frame::Kind::PresenceState(state)) => {
                    super::presence::take_state(&self.inner.presence, from, state);
                }
                Some(peer_frame::Kind::InterestState(state)) => {
                    self.inner.interest.take_state(from, state);
                }
                Some(peer_frame::Kind::InterestDelta(delta)) => self.take_interest(from, &delta),
                Some(peer_frame::Kind::InterestAck(ack)) => self.take_ack(from, ack),
                Some(_) | None => tracing::debug!("ignoring an unexpected frame from a peer"),
            }
        }
        batch.flush();
    }

    /// A draft forwarded here: numbered here, or forwarded on to the pod
    /// this one believes numbers its topic.
    fn take_forward(&self, draft: Option<&Envelope>, hops: u32) {
        let Some(draft) = draft.map(|d| self.inner.intake.forwarded(d)) else {
            return;
        };
        match draft {
            Ok(draft) => self.place_forward(draft, hops, 0),
            Err(reason) => tracing::warn!(%reason, "dropping an invalid forward from a peer"),
        }
    }

    /// Numbers a forwarded draft here, or forwards it on. A draft that has
    /// used its hops while this pod still believes another pod numbers its
    /// topic waits a moment (`tries` times) for the views to settle (the
    /// handover that moved the topic here is usually right behind it)
    /// before this pod numbers it itself, in a new epoch.
    fn place_forward(&self, draft: Draft, hops: u32, tries: u32) {
        match self.route(&draft.topic) {
            Route::To(node)
                if hops < MAX_HOPS && self.send_forward(node, draft.clone(), hops + 1) =>
            {
                return;
            }
            Route::To(_) if tries < SETTLE_TRIES => {
                let mesh = self.clone();
                self.inner.tracker.spawn(async move {
                    tokio::time::sleep(SETTLE_WAIT).await;
                    mesh.place_forward(draft, hops, tries + 1);
                });
                return;
            }
            Route::Unavailable => {
                // Not synced and no peer live yet: the forwarding pod's
                // publish times out as unconfirmed and is retried.
                tracing::debug!(topic = %draft.topic, "not numbering a forwarded draft before syncing");
                return;
            }
            _ => {}
        }
        let parent = draft.trace.clone();
        let (id, origin) = (draft.id, draft.origin);
        let receipts = trace::in_deliver_span(parent.as_deref(), || {
            let topic = draft.topic.clone();
            let relay = |message: &Arc<Message>| self.relay(message);
            let receipts = self.inner.local.sequence(vec![draft], &relay);
            tracing::debug!(%id, %topic, "numbered and delivered a message forwarded from a peer");
            receipts
        });
        let first = match receipts.into_iter().next() {
            Some(Ok(first)) => first,
            // Handed on meanwhile: to the successor.
            Some(Err(draft)) => {
                if let Route::To(node) = self.route(&draft.topic) {
                    self.send_forward(node, draft, hops + 1);
                }
                return;
            }
            None => return,
        };
        // The key was used before: the forwarding pod hears where the first
        // one landed (it may never get that message again).
        if first.id != id {
            let receipt = Receipt {
                draft: id.to_string(),
                id: first.id.to_string(),
                epoch: first.stamp.epoch.as_u64(),
                offset: first.stamp.offset,
                sequencer: first.stamp.sequencer.to_string(),
            };
            let links = self.inner.links.load();
            if let Some(link) = links.iter().find(|l| l.node() == Some(origin)) {
                link.offer_control(peer_frame::Kind::Receipt(receipt));
            }
        }
    }

    /// Where a draft of this pod's with a used key landed the first time.
    fn take_receipt(&self, receipt: &Receipt) {
        let parsed = (|| {
            let draft = receipt.draft.parse::<MessageId>().ok()?;
            let stamp = Stamp {
                epoch: Epoch::from_u64(receipt.epoch)?,
                offset: valid_offset(receipt.offset)?,
                sequencer: receipt.sequencer.parse().ok()?,
            };
            let id = receipt.id.parse().ok()?;
            Some((draft, crate::local::Receipt { id, stamp }))
        })();
        match parsed {
            Some((draft, first)) => self.inner.local.answer_repeat(draft, first),
            None => tracing::warn!("dropping an invalid receipt from a peer"),
        }
    }

    /// A peer at `address` just dialled this pod: if the link to it is
    /// backing off, it connects again now.
    pub fn heard_from(&self, address: &str) {
        if let Some(link) = self
            .inner
            .links
            .load()
            .iter()
            .find(|l| l.address() == address)
        {
            link.wake();
        }
    }

    /// Heads of topics whose messages the peer dropped for this pod: any
    /// offset up to them not received is lost here.
    fn take_heads(&self, heads: &Heads) {
        for head in &heads.heads {
            let (Ok(topic), Some(epoch)) = (Topic::new(&head.topic), Epoch::from_u64(head.epoch))
            else {
                continue;
            };
            self.inner
                .local
                .skip_to(&topic, Position::at(epoch, head.offset));
        }
    }

    /// Whether a stream should carry a sync request now: this pod has not
    /// synced, and has not asked in the last [`SYNC_PATIENCE`] twice over
    /// (the peer asked may not have had a stream back yet).
    pub fn asks_for_sync(&self) -> bool {
        let inner = &self.inner;
        if inner.synced.load(Ordering::Acquire) {
            return false;
        }
        let mut asked = inner.sync_asked.lock().unwrap_or_else(|p| p.into_inner());
        if asked.is_some_and(|at| at.elapsed() < 2 * SYNC_PATIENCE) {
            return false;
        }
        *asked = Some(Instant::now());
        true
    }

    /// Sends the pod `to` every topic's head and sequencer, on the stream
    /// to it, then the end of the answer.
    async fn answer_sync(self, to: NodeId) {
        let deadline = Instant::now() + SYNC_PATIENCE;
        let link = loop {
            let found = self
                .inner
                .links
                .load()
                .iter()
                .find(|l| l.node() == Some(to) && l.is_connected())
                .cloned();
            if let Some(link) = found {
                break link;
            }
            if Instant::now() > deadline {
                tracing::info!(peer = %to, "no stream to a pod that asked for a sync");
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Where each topic stands and who numbers it: a pod that just
        // started follows nothing yet, and reads a topic's messages from
        // its sequencer when it starts following it.
        let topics = self.inner.local.history().sequencers();
        let count = topics.len();
        for (topic, head, sequencer) in topics {
            let frame = snapshot_frame(&topic, head, sequencer, &[], link.address());
            let kind = peer_frame::Kind::Snapshot(frame);
            if !link.send_control(kind, SYNC_PATIENCE).await {
                return;
            }
        }
        let done = peer_frame::Kind::Snapshot(Snapshot {
            done: true,
            ..Snapshot::default()
        });
        if link.send_control(done, SYNC_PATIENCE).await {
            tracing::info!(peer = %to, topics = count, "sent every topic's head and sequencer to a pod that just started");
        }
    }

    /// One topic of a peer's answer to this pod's sync, or its end.
    fn take_snapshot(&self, snapshot: &Snapshot) {
        if snapshot.done {
            self.inner.synced.store(true, Ordering::Release);
            tracing::info!("synced what a peer keeps of every topic");
            return;
        }
        let Some((topic, head, sequencer, kept)) = self.parse_snapshot(snapshot) else {
            return;
        };
        self.inner.local.restore(&topic, head, sequencer, &kept);
    }

    /// A peer leaves: it numbers nothing more, and each topic it numbered
    /// goes to its successor.
    fn take_leaving(&self, from: NodeId, leaving: &Leaving) {
        self.inner
            .left
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(from);
        let successors: Vec<NodeId> = leaving
            .successors
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        for head in &leaving.heads {
            let (Ok(topic), Some(epoch), true) = (
                Topic::new(&head.topic),
                Epoch::from_u64(head.epoch),
                head.offset <= MAX_OFFSET,
            ) else {
                continue;
            };
            if let Some(successor) = first_ranked(&topic, &successors) {
                let position = Position::at(epoch, head.offset);
                self.inner.local.hand_over(&topic, position, successor);
            }
        }
        // Its users were closed (and their leaves sent) before this frame.
        self.inner.presence.peer_gone(from);
        tracing::info!(peer = %from, topics = leaving.heads.len(), "a peer is leaving and handed its topics on");
    }

    fn send_forward(&self, to: NodeId, draft: Draft, hops: u32) -> bool {
        if self.inner.handing.load(Ordering::Acquire) {
            let mut held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(held) = held.as_mut() {
                held.push((to, draft, hops));
                return true;
            }
        }
        self.inner
            .links
            .load()
            .iter()
            .find(|l| l.is_connected() && l.node() == Some(to))
            .is_some_and(|link| link.forward(draft, hops))
    }
}

/// Interest-based routing (see [`interest`]): what this pod follows, told
/// to its peers; what they follow, taken from them.
impl Mesh {
    /// This pod's whole interest set as it travels, first on every stream.
    pub fn interest_state(&self) -> Vec<peer_frame::Kind> {
        self.inner.own.state_frames()
    }

    /// Makes this pod follow `topic`: once every live peer acknowledged it,
    /// whoever numbers the topic sends it here, and this pod's log of it is
    /// brought up to the freshest one they keep. Returns at once when the
    /// topic is followed already.
    ///
    /// The round runs on its own task, so a request that goes away
    /// meanwhile (its user closed) does not cut it short.
    async fn follow_topic(&self, topic: &Topic) {
        let mut ready = match self.inner.own.follow(topic) {
            Follow::Ready => return,
            Follow::Wait(ready) => ready,
            Follow::Start(round) => {
                let ready = round.waiter();
                let (mesh, topic) = (self.clone(), topic.clone());
                self.inner.tracker.spawn(async move {
                    let complete = mesh.ask_to_follow(&topic, round.version()).await;
                    mesh.inner.own.finish(&topic, round, complete);
                });
                ready
            }
        };
        let _ = tokio::time::timeout(2 * FOLLOW_PATIENCE, ready.wait_for(|r| *r)).await;
    }

    /// Tells every connected peer that this pod follows `topic`, waits for
    /// their acks (up to [`FOLLOW_PATIENCE`]) and refreshes the log from
    /// what they sent. Returns whether every peer this pod knows of
    /// answered (else the next subscribe or read asks again: a peer not
    /// reached yet may hold what this pod lacks).
    async fn ask_to_follow(&self, topic: &Topic, version: u64) -> bool {
        let inner = &self.inner;
        let deadline = Instant::now() + FOLLOW_PATIENCE;
        let ask = inner.next_ask.fetch_add(1, Ordering::Relaxed) + 1;
        let known = inner.links.load();
        let links: Vec<Arc<Link>> = known
            .iter()
            .filter(|l| !l.is_self() && l.is_connected() && l.node().is_some())
            .cloned()
            .collect();
        let mut complete = links.len() == known.iter().filter(|l| !l.is_self()).count();
        let done = Arc::new(tokio::sync::Notify::new());
        let waiting: HashSet<NodeId> = links.iter().filter_map(|l| l.node()).collect();
        self.asks().insert(
            ask,
            Ask {
                waiting,
                snapshots: Vec::new(),
                unheard: false,
                done: done.clone(),
            },
        );
        let delta = peer_frame::Kind::InterestDelta(InterestDelta {
            added: vec![topic.to_string()],
            removed: Vec::new(),
            ask,
            version,
        });
        for link in &links {
            let left = deadline.saturating_duration_since(Instant::now());
            if !link.offer_control(delta.clone()) && !link.send_control(delta.clone(), left).await {
                link.resend_interest();
                if let (Some(node), Some(ask)) = (link.node(), self.asks().get_mut(&ask)) {
                    ask.unheard(node);
                }
            }
        }
        loop {
            let answered = {
                let mut asks = self.asks();
                let Some(pending) = asks.get_mut(&ask) else {
                    break;
                };
                // A peer whose stream from here broke took the delta in
                // or gets the whole set on the next stream.
                for link in &links {
                    if let (false, Some(node)) = (link.is_connected(), link.node()) {
                        pending.unheard(node);
                    }
                }
                pending.waiting.is_empty()
            };
            if answered {
                break;
            }
            if Instant::now() >= deadline {
                tracing::warn!(%topic, ask, "peers did not acknowledge that this pod follows a topic in time");
                complete = false;
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(50), done.notified()).await;
        }
        let Some(answer) = self.asks().remove(&ask) else {
            return false;
        };
        self.take_snapshots(topic, answer.snapshots);
        complete && !answer.unheard
    }

    /// Brings this pod's log of `topic` up to the freshest of what peers
    /// sent: the topic's sequencer's, else (it is gone) the copy whose
    /// newest message is newest; then older messages of the others fill
    /// it in.
    fn take_snapshots(&self, topic: &Topic, snapshots: Vec<(NodeId, Snapshot)>) {
        let mut parsed: Vec<(bool, Position, NodeId, Vec<Arc<Message>>)> = snapshots
            .into_iter()
            .filter_map(|(from, snapshot)| {
                let (named, head, sequencer, kept) = self.parse_snapshot(&snapshot)?;
                (named == *topic).then_some((sequencer == from, head, sequencer, kept))
            })
            .collect();
        parsed.sort_by_key(|(numbers, _, _, kept)| (*numbers, kept.last().map(|m| m.id())));
        let Some((numbers, head, sequencer, kept)) = parsed.pop() else {
            return;
        };
        let local = &self.inner.local;
        // A copy from a pod that does not number the topic is taken only
        // if it is newer than what this pod holds.
        let newer = numbers
            || local
                .history()
                .read(topic, |log| log.last(1).first().map(|m| m.id()))
                .flatten()
                .is_none_or(|mine| kept.last().is_some_and(|m| m.id() > mine));
        if !newer {
            return;
        }
        local.refresh(topic, head, sequencer, &kept);
        for (_, head, sequencer, kept) in parsed {
            local.restore(topic, head, sequencer, &kept);
        }
    }

    /// A peer's delta; one that asks is answered on the stream to it,
    /// under the added topic's lock, after every message of it queued
    /// there before and with what this pod keeps of it when it numbers
    /// the topic or is its copy.
    fn take_interest(&self, from: NodeId, delta: &InterestDelta) {
        let inner = &self.inner;
        let added = inner.interest.take_delta(from, delta);
        if delta.ask == 0 {
            return;
        }
        let Some(link) = inner
            .links
            .load()
            .iter()
            .find(|l| l.node() == Some(from))
            .cloned()
        else {
            return;
        };
        let me = inner.settings.node;
        let live = self.live_peers();
        let mut ack = InterestAck {
            ask: delta.ask,
            snapshots: Vec::new(),
        };
        // An ask adds one topic (the ack must fit in one frame); one that
        // adds more is acknowledged without history.
        let [topic] = added.as_slice() else {
            link.offer_control(peer_frame::Kind::InterestAck(ack));
            return;
        };
        inner.local.history().with(topic, |entry| {
            ack.snapshots
                .extend(copy_for(entry.log(), topic, me, &live, link.address()));
            if !link.offer_control(peer_frame::Kind::InterestAck(ack)) {
                tracing::debug!(peer = %from, "no room to acknowledge a peer's interest");
            }
        });
    }

    /// A peer's answer to this pod's delta.
    fn take_ack(&self, from: NodeId, ack: InterestAck) {
        let mut asks = self.asks();
        let Some(pending) = asks.get_mut(&ack.ask) else {
            return;
        };
        pending
            .snapshots
            .extend(ack.snapshots.into_iter().map(|s| (from, s)));
        pending.answered(from);
    }

    /// Stops following topics left alone, and tells every peer.
    fn unfollow_idle(&self) {
        let inner = &self.inner;
        let (gone, version) = inner.own.sweep(inner.local.hub(), Instant::now());
        if gone.is_empty() {
            return;
        }
        tracing::debug!(topics = gone.len(), "no longer following topics left alone");
        let delta = peer_frame::Kind::InterestDelta(InterestDelta {
            added: Vec::new(),
            removed: gone.iter().map(Topic::to_string).collect(),
            ask: 0,
            version,
        });
        for link in inner.links.load().iter() {
            if !link.is_self() && !link.offer_control(delta.clone()) {
                link.resend_interest();
            }
        }
    }

    /// The live peer rendezvous hashing ranks first for `topic`, this pod
    /// aside: the one that keeps a copy of every message of a topic this
    /// pod numbers, and takes it over if this pod goes.
    fn backup_of(&self, links: &[Arc<Link>], topic: &Topic) -> Option<NodeId> {
        let left = self.inner.left.lock().unwrap_or_else(|p| p.into_inner());
        links
            .iter()
            .filter(|l| l.is_connected())
            .filter_map(|l| l.node())
            .filter(|node| !left.contains(node))
            .max_by_key(|node| rank(topic, *node))
    }

    /// Reads a snapshot from a peer; `None` (logged) if it is invalid.
    fn parse_snapshot(
        &self,
        snapshot: &Snapshot,
    ) -> Option<(Topic, Position, NodeId, Vec<Arc<Message>>)> {
        let head = snapshot.head.as_ref()?;
        let (Ok(topic), Some(epoch), Ok(sequencer), true) = (
            Topic::new(&head.topic),
            Epoch::from_u64(head.epoch),
            snapshot.sequencer.parse::<NodeId>(),
            head.offset <= MAX_OFFSET,
        ) else {
            tracing::warn!(topic = %head.topic, "dropping an invalid snapshot from a peer");
            return None;
        };
        let kept: Vec<_> = snapshot
            .kept
            .iter()
            .filter_map(|envelope| self.inner.intake.numbered(envelope))
            .filter(|message| *message.topic() == topic)
            .collect();
        Some((topic, Position::at(epoch, head.offset), sequencer, kept))
    }

    /// The deltas waiting for answers, locked.
    fn asks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Ask>> {
        self.inner.asks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What this pod sends of `log` (of `topic`) to a peer that starts
/// following it: everything it keeps (up to [`SNAPSHOT_BYTES`]) when this
/// pod (`me`) numbers the topic, or holds a copy while its sequencer is
/// not among the `live` peers, or is the copy the sequencer keeps (the
/// live pod ranked first for the topic, the sequencer aside).
fn copy_for(
    log: &crate::history::Log,
    topic: &Topic,
    me: NodeId,
    live: &[NodeId],
    peer: &str,
) -> Option<Snapshot> {
    let sequencer = log.sequencer()?;
    log.head().epoch?;
    let numbers = sequencer == me;
    let copy = !log.is_empty() && {
        let others: Vec<NodeId> = live
            .iter()
            .copied()
            .chain(std::iter::once(me))
            .filter(|n| *n != sequencer)
            .collect();
        !live.contains(&sequencer) || first_ranked(topic, &others) == Some(me)
    };
    (numbers || copy).then(|| {
        snapshot_frame(
            topic,
            log.head(),
            sequencer,
            &log.newest(SNAPSHOT_BYTES),
            peer,
        )
    })
}

/// One topic as it travels to `peer`.
fn snapshot_frame(
    topic: &Topic,
    head: Position,
    sequencer: NodeId,
    kept: &[Arc<Message>],
    peer: &str,
) -> Snapshot {
    Snapshot {
        head: Some(Head {
            topic: topic.to_string(),
            epoch: head.epoch.map_or(0, Epoch::as_u64),
            offset: head.offset,
        }),
        sequencer: sequencer.to_string(),
        kept: kept.iter().map(|m| link::envelope(m, peer)).collect(),
        done: false,
    }
}

/// The node rendezvous hashing ranks first for `topic` among `nodes`.
pub fn first_ranked(topic: &Topic, nodes: &[NodeId]) -> Option<NodeId> {
    nodes.iter().copied().max_by_key(|node| rank(topic, *node))
}

/// A node's rendezvous score for a topic: FNV-1a over both, then a
/// finaliser, the same on every pod and every build.
fn rank(topic: &Topic, node: NodeId) -> u64 {
    let mut hash = crate::topic::fnv1a(topic.stable_hash(), &node.as_u64().to_be_bytes());
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^ (hash >> 33)
}

impl Broadcast for Mesh {
    fn identity(&self) -> Identity {
        Identity {
            cluster: self.inner.settings.cluster.clone(),
            address: self.inner.settings.address.clone(),
        }
    }

    fn is_settled(&self) -> bool {
        Mesh::is_settled(self)
    }

    fn peers(&self) -> Vec<PeerInfo> {
        Mesh::peers(self)
    }

    fn presence(&self) -> &Presence {
        Mesh::presence(self)
    }

    fn broadcast_presence(&self, kind: &peer_frame::Kind) {
        Mesh::broadcast_presence(self, kind);
    }

    fn leave(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(Mesh::leave(self, timeout))
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(Mesh::flush(self, timeout))
    }
}

/// A pod holds a fresh log only of the topics it follows: a subscribe or a
/// read of any topic makes it follow the topic first (see
/// [`follow_topic`](Mesh::follow_topic)), whatever the answer needs.
impl Recall for Mesh {
    fn recall<'a>(&'a self, topic: &'a Topic, _need: Need) -> BoxFuture<'a, ()> {
        Box::pin(self.follow_topic(topic))
    }
}

impl Relay for Mesh {
    /// Offers `message` to the peers that get it: with interest routing,
    /// those that follow its topic or whose interest is unknown, the pod
    /// it was published on (its publish waits for it), and the topic's
    /// backup; a topic's first message of an epoch goes to every pod, so
    /// that all know who numbers it.
    fn relay(&self, message: &Arc<Message>) {
        let inner = &self.inner;
        let links = inner.links.load();
        if inner.settings.routing == PeerRouting::All || message.stamp().offset == 1 {
            for link in links.iter() {
                link.offer(message);
            }
            return;
        }
        let topic = message.topic();
        let origin = message.origin();
        // Worked out only if some peer would not get the message.
        let mut backup = None;
        let skipped = inner.interest.route(topic, |wants| {
            let mut skipped = 0;
            for link in links.iter() {
                match link.node() {
                    Some(node)
                        if node != origin
                            && !wants(node)
                            && *backup.get_or_insert_with(|| self.backup_of(&links, topic))
                                != Some(node) =>
                    {
                        skipped += 1;
                    }
                    _ => link.offer(message),
                }
            }
            skipped
        });
        if skipped > 0 {
            crate::stats::add(&inner.counters.peer_skipped, skipped);
        }
    }

    fn route(&self, topic: &Topic) -> Route {
        let inner = &self.inner;
        let me = inner.settings.node;
        let leaving = inner.leaving.load(Ordering::Acquire);
        let live = self.live_peers();
        match inner.local.sequencer_of(topic) {
            Some(node) if node == me && !leaving => return Route::Here,
            Some(node) if live.contains(&node) => return Route::To(node),
            _ => {}
        }
        // A pod that has not synced yet may not know the topic exists:
        // it leaves new ones to its peers, and with none live yet it
        // numbers nothing (until the wait for peers has timed out: then it
        // may be alone for good).
        let synced = inner.synced.load(Ordering::Acquire)
            || inner.started.elapsed() >= inner.settings.ready_timeout;
        let alone = inner.links.load().iter().all(|l| l.is_self());
        if !synced && !alone && live.is_empty() {
            return Route::Unavailable;
        }
        let mut candidates = live;
        if (!leaving && synced) || candidates.is_empty() {
            candidates.push(me);
        }
        match first_ranked(topic, &candidates) {
            Some(node) if node != me => Route::To(node),
            _ => Route::Here,
        }
    }

    fn forward(&self, to: NodeId, draft: Draft) -> bool {
        self.send_forward(to, draft, 0)
    }

    /// The mesh has no shared store: it never routes a topic there.
    fn submit(&self, _draft: Draft) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::History;
    use crate::hub::{Hub, Mailbox, Membership, Outgoing};
    use crate::message::IdGenerator;

    fn mesh() -> Mesh {
        let node = NodeId::random();
        let settings = MeshSettings {
            cluster: "test".into(),
            node,
            address: "127.0.0.1:7070".into(),
            peer_queue: 8,
            max_message_bytes: 64,
            ready_timeout: Duration::from_secs(1),
            routing: crate::config::PeerRouting::Interest,
            tls: None,
            secret: None,
        };
        let local = Local::new(Hub::new(), History::new(Default::default()), node);
        let counters = Arc::new(Counters::default());
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
            counters,
        )
    }

    fn topic() -> Topic {
        Topic::new("t").expect("valid")
    }

    struct Peer {
        node: NodeId,
        epoch: Epoch,
        ids: IdGenerator,
    }

    impl Peer {
        fn new() -> Self {
            let node = NodeId::random();
            Self {
                node,
                epoch: Epoch::new_for(&topic()),
                ids: IdGenerator::new(node),
            }
        }

        /// The envelope of message `offset` of topic `t`, numbered by this
        /// peer.
        fn envelope(&self, offset: u64, data: &'static [u8]) -> Envelope {
            Envelope {
                id: self.ids.next_id().to_string(),
                topic: "t".into(),
                data: bytes::Bytes::from_static(data),
                origin: self.node.to_string(),
                offset,
                epoch: self.epoch.as_u64(),
                sequencer: self.node.to_string(),
                ..Envelope::default()
            }
        }
    }

    fn frame(envelope: Envelope) -> PeerFrame {
        PeerFrame {
            kind: Some(peer_frame::Kind::Envelope(envelope)),
        }
    }

    /// A session of `mesh`'s hub subscribed to topic `t`.
    fn subscribed(mesh: &Mesh) -> (Membership, Mailbox) {
        let (mut member, mailbox) = mesh.inner.local.hub().join(64, 8);
        member.subscribe(topic()).expect("under limit");
        (member, mailbox)
    }

    fn frames(mailbox: &mut Mailbox) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| mailbox.try_recv())
            .map(|item: Outgoing| serde_json::from_str(item.frame().as_str()).expect("JSON"))
            .collect()
    }

    #[test]
    fn a_message_from_a_peer_is_delivered_once_even_if_it_arrives_twice() {
        let mesh = mesh();
        let (_member, mut mailbox) = subscribed(&mesh);
        let peer = Peer::new();
        let first = peer.envelope(1, b"{\"k\": 1}");
        mesh.receive(peer.node, [frame(first.clone())]);
        mesh.receive(peer.node, [frame(first.clone())]);
        let got = frames(&mut mailbox);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["id"], first.id);
        assert_eq!(got[0]["offset"], 1);
        assert_eq!(got[0]["data"], serde_json::json!({"k": 1}));
    }

    #[test]
    fn frames_received_together_are_delivered_in_order_traced_or_not() {
        let mesh = mesh();
        let (_member, mut mailbox) = subscribed(&mesh);
        let peer = Peer::new();
        let mut traced = peer.envelope(2, b"2");
        traced.trace_context = [(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]
        .into();
        mesh.receive(
            peer.node,
            [
                frame(peer.envelope(1, b"1")),
                frame(traced),
                frame(peer.envelope(3, b"3")),
            ],
        );
        let data: Vec<_> = frames(&mut mailbox)
            .iter()
            .map(|f| f["data"].clone())
            .collect();
        assert_eq!(data, [1, 2, 3]);
    }

    #[test]
    fn a_hole_in_a_peers_offsets_reaches_subscribers_as_a_gap_before_the_next_message() {
        let mesh = mesh();
        let (_member, mut mailbox) = subscribed(&mesh);
        let peer = Peer::new();
        mesh.receive(peer.node, [frame(peer.envelope(1, b"1"))]);
        mesh.receive(peer.node, [frame(peer.envelope(4, b"4"))]);
        let got = frames(&mut mailbox);
        let ops: Vec<_> = got
            .iter()
            .map(|f| (f["op"].clone(), f["offset"].clone()))
            .collect();
        assert_eq!(
            ops,
            [
                ("message".into(), 1.into()),
                ("gap".into(), 3.into()),
                ("message".into(), 4.into())
            ]
        );
        assert_eq!(got[1]["epoch"], peer.epoch.to_string());
    }

    #[test]
    fn invalid_envelopes_from_a_peer_are_dropped_without_harm() {
        let mesh = mesh();
        let (_member, mut mailbox) = subscribed(&mesh);
        let peer = Peer::new();
        let bad = |change: fn(&mut Envelope)| {
            let mut envelope = peer.envelope(1, b"1");
            change(&mut envelope);
            frame(envelope)
        };
        for bad in [
            bad(|e| e.id = "not-a-ulid".into()),
            bad(|e| e.origin = "??".into()),
            bad(|e| e.topic = "bad topic".into()),
            bad(|e| e.data = bytes::Bytes::from_static(b"{not json")),
            bad(|e| e.data = bytes::Bytes::from(vec![b'1'; 65])),
            bad(|e| e.epoch = 0),
            bad(|e| e.offset = 0),
            bad(|e| e.sequencer = "nobody".into()),
            PeerFrame { kind: None },
        ] {
            mesh.receive(peer.node, [bad]);
        }
        assert!(mailbox.try_recv().is_none());
        mesh.receive(peer.node, [frame(peer.envelope(1, b"2"))]);
        assert_eq!(
            frames(&mut mailbox).len(),
            1,
            "the mesh still delivers after bad input"
        );
    }

    #[test]
    fn a_pod_alone_numbers_a_forwarded_draft_itself_and_delivers_it() {
        let mesh = mesh();
        let (_member, mut mailbox) = subscribed(&mesh);
        let peer = Peer::new();
        let mut draft = peer.envelope(0, b"7");
        draft.epoch = 0;
        draft.sequencer = String::new();
        let forward = PeerFrame {
            kind: Some(peer_frame::Kind::Forward(crate::proto::v1::Forward {
                draft: Some(draft),
                hops: 0,
            })),
        };
        mesh.receive(peer.node, [forward]);
        let got = frames(&mut mailbox);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["offset"], 1);
        assert_eq!(
            mesh.inner.local.sequencer_of(&topic()),
            Some(mesh.settings().node)
        );
    }

    #[test]
    fn a_leaving_peer_hands_its_topics_to_the_successor_every_pod_agrees_on() {
        let mesh = mesh();
        let me = mesh.settings().node;
        let peer = Peer::new();
        mesh.receive(
            peer.node,
            [frame(peer.envelope(1, b"1")), frame(peer.envelope(2, b"2"))],
        );
        let others = [NodeId::random(), NodeId::random()];
        let successors = [me, others[0], others[1]];
        let leaving = Leaving {
            successors: successors.iter().map(NodeId::to_string).collect(),
            heads: vec![Head {
                topic: "t".into(),
                epoch: peer.epoch.as_u64(),
                offset: 2,
            }],
        };
        mesh.receive(
            peer.node,
            [PeerFrame {
                kind: Some(peer_frame::Kind::Leaving(leaving)),
            }],
        );
        let successor = first_ranked(&topic(), &successors).expect("one");
        assert_eq!(mesh.inner.local.sequencer_of(&topic()), Some(successor));
        assert!(mesh.inner.left.lock().expect("lock").contains(&peer.node));
        if successor == me {
            let receipts = mesh.inner.local.sequence(
                vec![Draft::new(
                    IdGenerator::new(me).next_id(),
                    topic(),
                    bytes::Bytes::from_static(b"3"),
                    me,
                )],
                &|_| {},
            );
            let receipt = receipts[0].as_ref().expect("numbered here");
            assert_eq!(receipt.stamp.epoch, peer.epoch, "the epoch goes on");
            assert_eq!(receipt.stamp.offset, 3);
        }
    }

    #[test]
    fn rendezvous_ranks_are_stable_and_spread_topics_over_nodes() {
        let nodes: Vec<NodeId> = (1..=4)
            .map(|n: u64| format!("{n:x}").parse().expect("id"))
            .collect();
        let mut per_node = std::collections::HashMap::new();
        for i in 0..1000 {
            let topic = Topic::new(&format!("room:{i}")).expect("valid");
            let first = first_ranked(&topic, &nodes).expect("one");
            let mut reversed = nodes.clone();
            reversed.reverse();
            assert_eq!(
                first_ranked(&topic, &reversed),
                Some(first),
                "order does not matter"
            );
            *per_node.entry(first).or_insert(0) += 1;
        }
        assert_eq!(per_node.len(), 4);
        assert!(per_node.values().all(|n| *n > 150), "{per_node:?}");
        // A fixed answer: every build of every pod computes the same.
        let topic = Topic::new("room:1").expect("valid");
        assert_eq!(rank(&topic, nodes[0]), rank(&topic, nodes[0]));
    }
}
