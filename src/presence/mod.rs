//! Presence: who is in a topic, across the cluster, for the topics that
//! enable it (`--presence-topics`).
//!
//! Each pod owns the entries of its own connections: it learns them from
//! the hub's change feed ([`Watch`]), at once, and hands its peers what
//! changed ([`Delta`]s, each with the next version of its entries) every
//! [`FLUSH_EVERY`]; a peer whose stream comes up gets the whole
//! [`state`](Presence::state) first, which replaces what it held of this
//! pod. Every pod keeps every pod's entries in one [`Table`], so any pod
//! answers `presence` alone. Traffic follows change: a connection costs
//! one entry in one delta when it joins and one when it leaves.
//!
//! ```text
//!   hub feed ──▶ Presence ──flush──▶ deltas ──▶ cluster ──▶ peers' Presence
//!                  │  ▲                                         │
//!                  │  └───── peers' deltas and states ◀─────────┘
//!                  └──flush──▶ join / leave / presence_reset ──▶ listeners
//! ```
//!
//! A peer's entries outlive its streams for a grace (a flap costs no
//! churn); once no stream has come back for the grace, or the peer left
//! the cluster, or it restarted (a new node at the same address), they are
//! dropped and their leaves go out. Events are the table's net changes
//! between flushes ([`events`]).
//!
//! Concurrency: one std `Mutex` around the table, the peers and the
//! listeners; every section under it is short and never waits. The feed
//! calls in from session tasks, the cluster from its stream tasks and its
//! one flush task.

pub mod events;
pub mod peers;
pub mod table;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::TopicPatterns;
use crate::hub::{Change, Hub, Pending, SessionId, Watch};
use crate::message::NodeId;
use crate::topic::Topic;
pub use events::{EntryView, MAX_EVENTS, RESET_QUIET};
pub use peers::Entries;
pub use table::{BadConn, Conn, Entry, Event, Stats, Table};

/// How often changes go to peers and to listeners: the delay a join
/// takes to show on another pod, besides the network.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Largest `info`, in bytes of compact JSON.
pub const MAX_INFO_BYTES: usize = 512;

/// Most entries one `presence` page holds.
pub const MAX_PAGE: usize = 1_000;

/// Entries a `presence` request without `limit` gets.
pub const DEFAULT_PAGE: usize = 100;

/// Bytes of entries one delta carries, about; more go in the next.
const DELTA_BYTES: usize = 256 * 1024;

/// What presence is kept for, and how long a silent peer's entries last.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This pod's node id.
    pub node: NodeId,
    /// The topics that keep presence.
    pub topics: TopicPatterns,
    /// How long a peer's entries outlive its last stream.
    pub grace: Duration,
}

/// A change of this pod's entries, for its peers. Versions rise by one per
/// delta; a peer applies only what is newer than the state it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delta {
    /// The version of this pod's entries after it.
    pub version: u64,
    /// Connections that came into a topic.
    pub joined: Entries,
    /// Connections that left a topic.
    pub left: Vec<(Topic, SessionId)>,
}

/// A handle to this pod's presence. Clones share it.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    table: Table,
    peers: peers::Peers,
    listeners: events::Listeners,
    /// The version of this pod's entries its peers last heard.
    version: u64,
}

impl Presence {
    /// Presence for `settings.topics`.
    pub fn new(settings: Settings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                state: Mutex::default(),
            }),
        }
    }

    /// Whether `topic` keeps presence.
    pub fn covers(&self, topic: &Topic) -> bool {
        self.inner.settings.topics.allows(topic.as_str())
    }

    /// This pod's node id.
    pub fn node(&self) -> NodeId {
        self.inner.settings.node
    }

    // NB: a poisoned lock only means a thread panicked holding it; each
    // change under it leaves the table whole, so presence carries on.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Up to `limit` entries of `topic` after `after`, and the last one's
    /// connection when more follow.
    pub fn page(
        &self,
        topic: &Topic,
        after: Option<Conn>,
        limit: usize,
    ) -> (Vec<(Conn, Entry)>, Option<Conn>) {
        let (page, more) = self.lock().table.page(topic, after, limit);
        let next = more.then(|| page.last().map(|(conn, _)| *conn)).flatten();
        (page, next)
    }

    /// Entries held, this pod's own and its peers', in all topics.
    pub fn entries(&self) -> u64 {
        self.lock().table.len() as u64
    }

    /// How many connections and users `topic` holds, cluster-wide.
    pub fn stats(&self, topic: &Topic) -> Stats {
        self.lock().table.stats(topic)
    }

    /// Sends what changed since the last flush: to listeners on `hub` now,
    /// and returns the deltas for peers. Peers silent past the grace at
    /// `now` are dropped first.
    pub fn flush(&self, hub: &Hub, now: Instant) -> Vec<Delta> {
        let node = self.node();
        let mut pending = Pending::default();
        let deltas = {
            let mut state = self.lock();
            for expired in state.peers.expired(now, self.inner.settings.grace) {
                tracing::info!(peer = %expired, "a peer's presence expired: no stream from it for the grace");
                state.table.drop_owner(expired);
            }
            let changes = state.table.take_changes();
            state.listeners.deliver(node, &changes, now, &mut pending);
            let deltas = own_deltas(node, &changes, state.version);
            if let Some(last) = deltas.last() {
                state.version = last.version;
            }
            deltas
        };
        hub.write_out(pending);
        deltas
    }

    /// This pod's entries now, and the version its peers last heard: what a
    /// peer whose stream just came up is sent. Deltas of a later version
    /// hold nothing it does not (a change it holds already is no change).
    pub fn state(&self) -> (u64, Entries) {
        let state = self.lock();
        (state.version, state.table.owned_by(self.node()))
    }

    /// A delta from peer `from`: applied if newer than what is held.
    pub fn take_delta(&self, from: NodeId, delta: Delta) {
        let mut state = self.lock();
        if !state.peers.accepts(from, delta.version) {
            return;
        }
        for (topic, session, entry) in delta.joined {
            state.table.insert(
                &topic,
                Conn {
                    node: from,
                    session,
                },
                entry,
            );
        }
        for (topic, session) in delta.left {
            state.table.remove(
                &topic,
                Conn {
                    node: from,
                    session,
                },
            );
        }
    }

    /// One part of peer `from`'s full state at `version`; the last part
    /// replaces whatever was held of it.
    pub fn take_state(
        &self,
        from: NodeId,
        version: u64,
        first: bool,
        last: bool,
        entries: Entries,
    ) {
        let mut state = self.lock();
        if let Some(whole) = state.peers.state_part(from, version, first, last, entries) {
            state.table.replace(from, whole);
        }
    }

    /// A stream from peer `node` (at `address`) is up. A node that had the
    /// same address restarted: its entries go now.
    pub fn peer_up(&self, node: NodeId, address: &str) {
        let mut state = self.lock();
        for old in state.peers.up(node, address) {
            tracing::info!(peer = %old, %address, "a restarted peer's old presence dropped");
            state.table.drop_owner(old);
        }
    }

    /// A stream from peer `node` went down; its entries stay for the grace.
    pub fn peer_down(&self, node: NodeId) {
        self.lock().peers.down(node, Instant::now());
    }

    /// Peer `node` left the cluster: its entries go now.
    pub fn peer_gone(&self, node: NodeId) {
        let mut state = self.lock();
        state.peers.forget(node);
        state.table.drop_owner(node);
    }
}

impl Watch for Presence {
    fn changed(&self, change: Change<'_>) {
        match change {
            Change::Subscribed {
                topic,
                session,
                who,
                options,
            } if self.covers(topic) => {
                let conn = Conn {
                    node: self.node(),
                    session: session.id(),
                };
                let entry = Entry {
                    sub: who.sub.clone(),
                    info: who.info.clone(),
                };
                let mut state = self.lock();
                state.table.insert(topic, conn, entry);
                state.listeners.set(topic, session, options.join_leave);
            }
            Change::Unsubscribed { topic, session } if self.covers(topic) => {
                let conn = Conn {
                    node: self.node(),
                    session,
                };
                let mut state = self.lock();
                state.table.remove(topic, conn);
                state.listeners.remove(topic, session);
            }
            Change::Subscribed { .. } | Change::Unsubscribed { .. } | Change::Closed { .. } => {}
        }
    }
}

/// The changes of `node`'s own entries among `changes`, as deltas after
/// `version`, each about [`DELTA_BYTES`] at most.
fn own_deltas(node: NodeId, changes: &[(Topic, Vec<Event>)], version: u64) -> Vec<Delta> {
    let mut deltas = Vec::new();
    let mut delta = Delta {
        version: version + 1,
        joined: Vec::new(),
        left: Vec::new(),
    };
    let mut bytes = 0;
    for (topic, events) in changes {
        for event in events.iter().filter(|e| e.conn().node == node) {
            bytes += topic.as_str().len() + 16;
            match event {
                Event::Join(conn, entry) => {
                    bytes += entry.sub.as_deref().map_or(0, str::len)
                        + entry.info.as_deref().map_or(0, str::len);
                    delta
                        .joined
                        .push((topic.clone(), conn.session, entry.clone()));
                }
                Event::Leave(conn, _) => delta.left.push((topic.clone(), conn.session)),
            }
            if bytes >= DELTA_BYTES {
                let next = delta.version + 1;
                deltas.push(std::mem::replace(
                    &mut delta,
                    Delta {
                        version: next,
                        joined: Vec::new(),
                        left: Vec::new(),
                    },
                ));
                bytes = 0;
            }
        }
    }
    if !delta.joined.is_empty() || !delta.left.is_empty() {
        deltas.push(delta);
    }
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Options;

    fn presence(hub: &Hub) -> Presence {
        let presence = Presence::new(Settings {
            node: NodeId::random(),
            topics: TopicPatterns::parse(&["room:*"]).expect("valid"),
            grace: Duration::from_secs(3),
        });
        hub.watch(Arc::new(presence.clone()));
        presence
    }

    fn room() -> Topic {
        Topic::new("room:1").expect("valid")
    }

    #[test]
    fn own_subscriptions_show_at_once_and_reach_peers_as_one_delta_each_way() {
        let hub = Hub::new();
        let presence = presence(&hub);
        let (mut member, _mailbox) = hub.join(8, 8);
        member.subscribe(room()).expect("under limit");
        member
            .subscribe(Topic::new("news").expect("valid"))
            .expect("under limit");
        assert_eq!(presence.stats(&room()).connections, 1);
        let deltas = presence.flush(&hub, Instant::now());
        assert_eq!(deltas.len(), 1);
        assert_eq!(deltas[0].version, 1);
        assert_eq!(deltas[0].joined.len(), 1, "news keeps no presence");
        assert_eq!(presence.state().0, 1);
        drop(member);
        let deltas = presence.flush(&hub, Instant::now());
        assert_eq!(deltas[0].left, [(room(), deltas[0].left[0].1)]);
        assert!(
            presence.flush(&hub, Instant::now()).is_empty(),
            "nothing changed"
        );
    }

    #[test]
    fn a_listener_hears_a_peers_join_and_the_leave_when_the_peer_expires() {
        let hub = Hub::new();
        let presence = presence(&hub);
        let (mut member, mut mailbox) = hub.join(8, 8);
        member
            .subscribe_with(room(), Options { join_leave: true })
            .expect("under limit");
        presence.flush(&hub, Instant::now());
        let peer = NodeId::random();
        presence.peer_up(peer, "10.0.0.2:7070");
        let entry = Entry {
            sub: Some("42".into()),
            info: None,
        };
        presence.take_state(peer, 7, true, true, vec![(room(), 1, entry.clone())]);
        presence.take_delta(
            peer,
            Delta {
                version: 7,
                joined: vec![(room(), 2, entry.clone())],
                left: Vec::new(),
            },
        );
        let now = Instant::now();
        presence.flush(&hub, now);
        let join = mailbox.try_recv().expect("a join");
        assert!(
            join.frame().as_str().contains(r#""op":"join""#),
            "{:?}",
            join.frame()
        );
        assert!(
            mailbox.try_recv().is_none(),
            "the old delta was not applied"
        );
        assert_eq!(presence.stats(&room()).connections, 2);
        presence.peer_down(peer);
        presence.flush(&hub, now + Duration::from_secs(1));
        assert!(mailbox.try_recv().is_none(), "within the grace");
        presence.flush(&hub, now + Duration::from_secs(4));
        let leave = mailbox.try_recv().expect("a leave");
        assert!(leave.frame().as_str().contains(r#""op":"leave""#));
        assert_eq!(presence.stats(&room()).connections, 1);
    }
}
