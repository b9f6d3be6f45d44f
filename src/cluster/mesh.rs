//! The broadcast group as this pod sees it: one [`Link`] per peer, the
//! relay of local messages to all of them, and delivery of what peers send.
//!
//! Concurrency: the publish path reads the current links through an
//! `ArcSwap`, without a lock, and only offers to bounded queues, so a slow or
//! dead peer never blocks publishing or the other peers. Membership changes
//! come from one task (`follow`) and swap in a new list.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::dedup::Dedup;
use super::link::{self, Link, Transport};
use super::{PeerSet, handshake};
use crate::hub::Hub;
use crate::message::{Message, MessageId, NodeId, TraceContext};
use crate::proto::v1::{Envelope, Hello};
use crate::publish::{Relay, validate};
use crate::stats::Counters;
use crate::telemetry::trace;
use crate::tls::PeerTls;

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
    /// Mutual TLS towards peers, when the peer port uses it.
    pub tls: Option<PeerTls>,
}

impl MeshSettings {
    /// This pod's hello.
    pub fn hello(&self) -> Hello {
        handshake::hello(&self.cluster, self.node, &self.address)
    }
}

/// What this pod knows of one peer, for `herald peers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address.
    pub address: String,
    /// Whether the outgoing stream is up.
    pub connected: bool,
    /// Messages dropped because its queue was full.
    pub dropped: u64,
    /// Times its stream has been established.
    pub connects: u64,
    /// The last stream error, if any.
    pub last_error: Option<String>,
    /// How the stream travels, while it is up.
    pub transport: Option<Transport>,
}

/// A handle to this pod's side of the broadcast group. Clones share it.
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    settings: MeshSettings,
    hub: Hub,
    /// The links the publish path relays to.
    links: ArcSwap<Vec<Arc<Link>>>,
    /// The same links by address; written only by `follow`.
    by_address: Mutex<BTreeMap<String, Arc<Link>>>,
    dedup: Mutex<Dedup>,
    discovered: AtomicBool,
    settled: AtomicBool,
    started: Instant,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    counters: Arc<Counters>,
}

impl Mesh {
    /// A mesh with no peers yet. Link tasks run on `tracker` and stop with
    /// `shutdown`; drops and reconnects are counted into `counters`.
    pub fn new(
        settings: MeshSettings,
        hub: Hub,
        tracker: TaskTracker,
        shutdown: CancellationToken,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                hub,
                links: ArcSwap::default(),
                by_address: Mutex::default(),
                dedup: Mutex::default(),
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

    /// Follows the peer sets published by discovery until shutdown.
    pub async fn follow(self, mut peers: watch::Receiver<Option<PeerSet>>) {
        loop {
            let current = peers.borrow_and_update().clone();
            if let Some(set) = current {
                self.apply(&set);
            }
            tokio::select! {
                () = self.inner.shutdown.cancelled() => return,
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
        let connected = inner.discovered.load(Ordering::Acquire)
            && links.iter().all(|l| l.is_self() || l.is_connected());
        let timed_out = inner.started.elapsed() >= inner.settings.ready_timeout;
        if timed_out && !connected {
            let missing: Vec<_> = links
                .iter()
                .filter(|l| !l.is_self() && !l.is_connected())
                .map(|l| l.address().to_owned())
                .collect();
            tracing::warn!(
                ?missing,
                "ready without streams to every peer: the wait for them timed out"
            );
        }
        if connected || timed_out {
            inner.settled.store(true, Ordering::Release);
        }
        connected || timed_out
    }

    /// Delivers messages received from a peer, in order, to this pod's
    /// subscribers. Untraced messages that arrived together are delivered
    /// together (a session gets them in one frame); a traced one is
    /// delivered on its own, in a span under the publisher's trace. Invalid
    /// envelopes are logged and skipped; a message seen before is skipped
    /// silently.
    pub fn receive(&self, envelopes: impl IntoIterator<Item = Envelope>) {
        let mut together = Vec::new();
        for envelope in envelopes {
            let Some(message) = self.accept(&envelope) else {
                continue;
            };
            if envelope.trace_context.is_empty() {
                together.push(message);
                continue;
            }
            self.deliver(&together, None);
            together.clear();
            self.deliver(&[message], Some(&envelope.trace_context));
        }
        self.deliver(&together, None);
    }

    /// Parses a peer's envelope into a message not seen before.
    fn accept(&self, envelope: &Envelope) -> Option<Arc<Message>> {
        let inner = &self.inner;
        let parsed = envelope
            .id
            .parse::<MessageId>()
            .map_err(|e| format!("bad id {:?}: {e}", envelope.id))
            .and_then(|id| {
                let origin = envelope
                    .origin
                    .parse::<NodeId>()
                    .map_err(|e| format!("bad origin {:?}: {e}", envelope.origin))?;
                let (topic, data) = validate(
                    &envelope.topic,
                    &envelope.data,
                    inner.settings.max_message_bytes,
                )
                .map_err(|e| e.to_string())?;
                Ok(Message::new(id, topic, data, origin))
            });
        let message = match parsed {
            Ok(message) => message,
            Err(reason) => {
                tracing::warn!(%reason, "dropping an invalid message from a peer");
                return None;
            }
        };
        let first = inner
            .dedup
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first_sighting(message.id());
        first.then(|| Arc::new(message))
    }

    fn deliver(&self, messages: &[Arc<Message>], parent: Option<&TraceContext>) {
        let [first, ..] = messages else {
            return;
        };
        trace::in_deliver_span(parent, || {
            let delivery = self.inner.hub.deliver_all(messages);
            tracing::debug!(id = %first.id(), topic = %first.topic(), messages = messages.len(), queued = delivery.queued, "delivered a message from a peer");
        });
    }
}

impl Relay for Mesh {
    fn relay(&self, message: &Arc<Message>) {
        for link in self.inner.links.load().iter() {
            link.offer(message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::IdGenerator;
    use crate::topic::Topic;

    fn mesh(hub: &Hub) -> Mesh {
        let settings = MeshSettings {
            cluster: "test".into(),
            node: NodeId::random(),
            address: "127.0.0.1:7070".into(),
            peer_queue: 8,
            max_message_bytes: 64,
            ready_timeout: Duration::from_secs(1),
            tls: None,
        };
        let counters = Arc::new(Counters::default());
        Mesh::new(
            settings,
            hub.clone(),
            TaskTracker::new(),
            CancellationToken::new(),
            counters,
        )
    }

    fn envelope(id: MessageId, topic: &str, data: &'static [u8]) -> Envelope {
        Envelope {
            id: id.to_string(),
            topic: topic.into(),
            data: bytes::Bytes::from_static(data),
            origin: NodeId::random().to_string(),
            trace_context: Default::default(),
        }
    }

    /// A session of `hub` subscribed to topic `t`.
    fn subscribed(hub: &Hub) -> (crate::hub::Membership, crate::hub::Mailbox) {
        let (mut member, mailbox) = hub.join(8, 8);
        member
            .subscribe(Topic::new("t").expect("valid"))
            .expect("under limit");
        (member, mailbox)
    }

    #[test]
    fn a_message_from_a_peer_is_delivered_once_even_if_it_arrives_twice() {
        let hub = Hub::new();
        let mesh = mesh(&hub);
        let (_member, mut mailbox) = subscribed(&hub);
        let id = IdGenerator::new(NodeId::random()).next_id();
        mesh.receive([envelope(id, "t", b"{\"k\": 1}")]);
        mesh.receive([envelope(id, "t", b"{\"k\": 1}")]);
        let delivered = mailbox.try_recv().expect("delivered");
        assert_eq!(delivered.id(), id);
        assert_eq!(&delivered.data()[..], br#"{"k":1}"#);
        assert!(
            mailbox.try_recv().is_none(),
            "the duplicate was not delivered"
        );
    }

    #[test]
    fn envelopes_received_together_are_delivered_in_order_traced_or_not() {
        let hub = Hub::new();
        let mesh = mesh(&hub);
        let (_member, mut mailbox) = subscribed(&hub);
        let ids = IdGenerator::new(NodeId::random());
        let mut traced = envelope(ids.next_id(), "t", b"2");
        traced.trace_context = [(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]
        .into();
        mesh.receive([
            envelope(ids.next_id(), "t", b"1"),
            traced,
            envelope(ids.next_id(), "t", b"3"),
        ]);
        let data: Vec<_> = std::iter::from_fn(|| mailbox.try_recv())
            .map(|m| m.data().clone())
            .collect();
        assert_eq!(data, [&b"1"[..], b"2", b"3"]);
    }

    #[test]
    fn invalid_envelopes_from_a_peer_are_dropped_without_harm() {
        let hub = Hub::new();
        let mesh = mesh(&hub);
        let (_member, mut mailbox) = subscribed(&hub);
        let ids = IdGenerator::new(NodeId::random());
        let mut bad_id = envelope(ids.next_id(), "t", b"1");
        bad_id.id = "not-a-ulid".into();
        let mut bad_origin = envelope(ids.next_id(), "t", b"1");
        bad_origin.origin = "??".into();
        for bad in [
            bad_id,
            bad_origin,
            envelope(ids.next_id(), "bad topic", b"1"),
            envelope(ids.next_id(), "t", b"{not json"),
            envelope(ids.next_id(), "t", &[b'1'; 65]),
        ] {
            mesh.receive([bad]);
        }
        assert!(mailbox.try_recv().is_none());
        mesh.receive([envelope(ids.next_id(), "t", b"2")]);
        assert!(
            mailbox.try_recv().is_some(),
            "the mesh still delivers after bad input"
        );
    }
}
