//! Interest-based routing: which topics each pod follows, so that a topic's
//! sequencer sends its messages only to the pods that want them.
//!
//! A pod *follows* a topic while it holds subscribers for it, and for
//! [`LINGER`] after the last one left or a history read (so a resume that
//! comes right after a disconnect finds the log fresh). It tells every peer
//! on its stream to it: the whole set first on every new stream
//! ([`InterestState`] parts), then deltas. A pod that starts following a
//! topic asks every connected peer to take the delta in and waits for their
//! acks before its subscribe is answered (see `mesh`): from then on any
//! pod that numbers the topic sends it the messages.
//!
//! What a pod knows of its peers' interest lives in [`Peers`]; a peer whose
//! whole set has not arrived on its current stream (it just connected, or
//! its stream broke) is *unknown*, and gets every message until it is
//! known again: losing interest state costs bytes, never messages.
//!
//! What this pod follows lives in [`Own`]. The hub's change feed
//! ([`Watch`]) tells it when a topic loses a subscriber; a sweep then
//! stops following topics left without subscribers for [`LINGER`].

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::hub::{Change, Hub, Watch};
use crate::message::NodeId;
use crate::proto::v1::{InterestDelta, InterestState, peer_frame};
use crate::topic::Topic;

/// How long a topic stays followed after its last subscriber left or its
/// last read: longer than a reconnect's resume takes (including the wait
/// for messages still on their way, `ws::requests::AHEAD_PATIENCE`).
pub const LINGER: Duration = Duration::from_secs(10);

/// Topics one [`InterestState`] part carries, at most.
const STATE_PART_TOPICS: usize = 4096;

/// A topic a peer named, if valid.
fn topic(name: &str) -> Option<Topic> {
    Topic::new(name).ok()
}

/// What this pod knows of the topics its peers follow. Read on every
/// message this pod numbers; written when a peer's frames arrive.
#[derive(Debug, Default)]
pub struct Peers {
    inner: RwLock<PeersInner>,
}

/// The sets, by peer and by topic.
#[derive(Debug, Default)]
struct PeersInner {
    /// Peers whose whole set arrived on their current stream, and the set:
    /// each topic with the version of the change that added it.
    known: HashMap<NodeId, HashMap<Topic, u64>>,
    /// The version of each known peer's whole set.
    versions: HashMap<NodeId, u64>,
    /// Parts of a whole set still arriving.
    partial: HashMap<NodeId, HashSet<Topic>>,
    /// The same sets, by topic: who follows it.
    followers: HashMap<Topic, Vec<NodeId>>,
    /// Streams up from each peer (a new one may come up before the old one
    /// is seen to end).
    streams: HashMap<NodeId, u32>,
}

impl PeersInner {
    /// Adds `topic` to known peer `node`'s set, by the change `version`.
    fn add(&mut self, node: NodeId, topic: Topic, version: u64) {
        let Some(set) = self.known.get_mut(&node) else {
            return;
        };
        if set.insert(topic.clone(), version).is_none() {
            self.followers.entry(topic).or_default().push(node);
        }
    }

    /// Removes `topic` from known peer `node`'s set by the change
    /// `version`, unless it is older than the whole set or than the change
    /// that added the topic (changes are queued by concurrent tasks, and a
    /// whole set is written ahead of the changes still queued).
    fn remove(&mut self, node: NodeId, topic: &Topic, version: u64) {
        let whole = self.versions.get(&node).copied().unwrap_or(u64::MAX);
        let Some(set) = self.known.get_mut(&node) else {
            return;
        };
        if version < whole || set.get(topic).is_none_or(|added| version <= *added) {
            return;
        }
        if set.remove(topic).is_some()
            && let Some(nodes) = self.followers.get_mut(topic)
        {
            nodes.retain(|n| *n != node);
            if nodes.is_empty() {
                self.followers.remove(topic);
            }
        }
    }

    /// Makes `node`'s set unknown.
    fn forget(&mut self, node: NodeId) {
        self.partial.remove(&node);
        self.versions.remove(&node);
        for topic in self.known.remove(&node).unwrap_or_default().into_keys() {
            if let Some(nodes) = self.followers.get_mut(&topic) {
                nodes.retain(|n| *n != node);
                if nodes.is_empty() {
                    self.followers.remove(&topic);
                }
            }
        }
    }
}

impl Peers {
    /// Runs `relay` with a test of who gets a message of `topic`: a peer
    /// that follows it, or whose interest is unknown.
    pub fn route<R>(&self, topic: &Topic, relay: impl FnOnce(&dyn Fn(NodeId) -> bool) -> R) -> R {
        let inner = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let followers: &[NodeId] = inner.followers.get(topic).map_or(&[], Vec::as_slice);
        relay(&|node| followers.contains(&node) || !inner.known.contains_key(&node))
    }

    /// A part of `from`'s whole set; the last part makes it known.
    pub fn take_state(&self, from: NodeId, state: InterestState) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if state.first {
            inner.partial.insert(from, HashSet::new());
        }
        let Some(partial) = inner.partial.get_mut(&from) else {
            tracing::debug!(peer = %from, "ignoring an interest state part without its first");
            return;
        };
        partial.extend(state.topics.iter().filter_map(|t| topic(t)));
        if !state.last {
            return;
        }
        let whole = inner.partial.remove(&from).unwrap_or_default();
        inner.forget(from);
        inner.known.insert(from, HashMap::new());
        inner.versions.insert(from, state.version);
        for topic in whole {
            inner.add(from, topic, state.version);
        }
    }

    /// `from`'s delta (ignored while its set is unknown: the whole set
    /// that makes it known comes first on the stream). An addition always
    /// applies (at worst the peer gets a topic it no longer follows until
    /// the removal behind it arrives); a removal only if no newer change
    /// added the topic. Returns the topics it adds.
    pub fn take_delta(&self, from: NodeId, delta: &InterestDelta) -> Vec<Topic> {
        let added: Vec<Topic> = delta.added.iter().filter_map(|t| topic(t)).collect();
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for name in &delta.removed {
            if let Some(topic) = topic(name) {
                inner.remove(from, &topic, delta.version);
            }
        }
        for topic in &added {
            inner.add(from, topic.clone(), delta.version);
        }
        added
    }

    /// A stream from `from` came up.
    pub fn stream_up(&self, from: NodeId) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        *inner.streams.entry(from).or_default() += 1;
    }

    /// A stream from `from` ended: once none is left, its set is unknown
    /// until a new stream brings it whole.
    pub fn stream_down(&self, from: NodeId) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let left = inner.streams.get_mut(&from).map_or(0, |n| {
            *n = n.saturating_sub(1);
            *n
        });
        if left == 0 {
            inner.streams.remove(&from);
            inner.forget(from);
        }
    }
}

/// One topic this pod follows.
#[derive(Debug)]
struct Followed {
    /// True once the peers were asked and answered (or the wait ended).
    ready: watch::Receiver<bool>,
    /// Every peer this pod knows of answered the last round: the log is as
    /// fresh as the group's. Otherwise the next use asks again.
    complete: bool,
    /// The last subscribe or read that needed it.
    used: Instant,
}

/// What this pod follows, and the topics the hub says lost a subscriber.
#[derive(Debug, Default)]
pub struct Own {
    followed: Mutex<Followings>,
    /// Topics that lost a subscriber, and when: candidates for the sweep.
    idle: Mutex<HashMap<Topic, Instant>>,
}

/// What [`Own::follow`] found.
pub enum Follow {
    /// Followed and acknowledged: nothing to wait for.
    Ready,
    /// Being added by another request: wait for this to turn true.
    Wait(watch::Receiver<bool>),
    /// Newly followed, or its last round did not reach every peer: the
    /// caller asks the peers, then [`finish`](Own::finish)es the round.
    Start(Round),
}

/// The topics this pod follows, at a version that rises with each change
/// (peers ignore a delta older than the set they hold).
#[derive(Debug, Default)]
struct Followings {
    topics: HashMap<Topic, Followed>,
    version: u64,
}

/// A round of asking the peers about one topic, under way. Dropped
/// unfinished, it lets waiters go and leaves the topic to be asked about
/// again.
#[derive(Debug)]
pub struct Round {
    ready: watch::Sender<bool>,
    version: u64,
}

impl Round {
    /// A receiver that turns true when the round ends.
    pub fn waiter(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The version of this pod's set with the topic added: the delta's.
    pub fn version(&self) -> u64 {
        self.version
    }
}

impl Drop for Round {
    fn drop(&mut self) {
        let _ = self.ready.send(true);
    }
}

impl Own {
    /// Marks `topic` used now and says whether it is followed already.
    pub fn follow(&self, topic: &Topic) -> Follow {
        let now = Instant::now();
        // Looked at again after the linger: kept while it has subscribers.
        self.idle_from(topic, now);
        let mut followed = self.followed();
        if let Some(entry) = followed.topics.get_mut(topic) {
            entry.used = now;
            if !*entry.ready.borrow() {
                return Follow::Wait(entry.ready.clone());
            }
            if entry.complete {
                return Follow::Ready;
            }
        }
        let (tx, ready) = watch::channel(false);
        let entry = Followed {
            ready,
            complete: false,
            used: now,
        };
        followed.topics.insert(topic.clone(), entry);
        followed.version += 1;
        Follow::Start(Round {
            ready: tx,
            version: followed.version,
        })
    }

    /// Ends a round about `topic`: `complete` when every peer this pod
    /// knows of answered it.
    pub fn finish(&self, topic: &Topic, round: Round, complete: bool) {
        if let Some(entry) = self.followed().topics.get_mut(topic) {
            entry.complete = complete;
        }
        drop(round);
    }

    /// The whole set as it travels: one frame or more.
    pub fn state_frames(&self) -> Vec<peer_frame::Kind> {
        let (topics, version) = {
            let followed = self.followed();
            let topics: Vec<Topic> = followed.topics.keys().cloned().collect();
            (topics, followed.version)
        };
        let mut parts: Vec<InterestState> = topics
            .chunks(STATE_PART_TOPICS)
            .map(|chunk| InterestState {
                first: false,
                last: false,
                topics: chunk.iter().map(Topic::to_string).collect(),
                version,
            })
            .collect();
        if parts.is_empty() {
            parts.push(InterestState {
                version,
                ..InterestState::default()
            });
        }
        parts[0].first = true;
        if let Some(last) = parts.last_mut() {
            last.last = true;
        }
        parts
            .into_iter()
            .map(peer_frame::Kind::InterestState)
            .collect()
    }

    /// Topics to stop following: followed, unused since before `now -
    /// LINGER`, and without subscribers on `hub`. They are no longer
    /// followed when this returns; the version of the set without them
    /// comes with them.
    pub fn sweep(&self, hub: &Hub, now: Instant) -> (Vec<Topic>, u64) {
        let due: Vec<Topic> = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let due: Vec<Topic> = idle
                .iter()
                .filter(|(_, at)| now.saturating_duration_since(**at) >= LINGER)
                .map(|(t, _)| t.clone())
                .collect();
            for topic in &due {
                idle.remove(topic);
            }
            due
        };
        let mut followed = self.followed();
        let mut later = Vec::new();
        let mut gone = Vec::new();
        for topic in due {
            let Some(entry) = followed.topics.get(&topic) else {
                continue;
            };
            if !*entry.ready.borrow() {
                later.push((topic, now));
            } else if now.saturating_duration_since(entry.used) < LINGER {
                later.push((topic, entry.used));
            } else if !hub.has_subscribers(&topic) {
                // With subscribers, the last one's leaving brings it back.
                followed.topics.remove(&topic);
                gone.push(topic);
            }
        }
        if !gone.is_empty() {
            followed.version += 1;
        }
        let version = followed.version;
        drop(followed);
        for (topic, at) in later {
            self.idle_from(&topic, at);
        }
        (gone, version)
    }

    /// Marks `topic` as a candidate for the sweep from `at`.
    fn idle_from(&self, topic: &Topic, at: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.insert(topic.clone(), at);
    }

    /// The set, locked.
    fn followed(&self) -> std::sync::MutexGuard<'_, Followings> {
        self.followed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The hub's change feed: a topic that lost a subscriber is looked at again
/// after [`LINGER`].
impl Watch for Own {
    fn changed(&self, change: Change<'_>) {
        if let Change::Unsubscribed { topic, .. } = change {
            self.idle_from(topic, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Topic {
        Topic::new(name).expect("valid")
    }

    fn wants(peers: &Peers, node: NodeId, name: &str) -> bool {
        peers.route(&topic(name), |wants| wants(node))
    }

    fn state(first: bool, last: bool, topics: &[&str]) -> InterestState {
        InterestState {
            first,
            last,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            version: 1,
        }
    }

    #[test]
    fn a_peer_gets_every_message_until_its_whole_set_arrives_and_again_after_its_stream_broke() {
        let peers = Peers::default();
        let node = NodeId::random();
        peers.stream_up(node);
        assert!(wants(&peers, node, "a"), "unknown: everything");

        peers.take_state(node, state(true, false, &["a"]));
        assert!(wants(&peers, node, "b"), "still unknown halfway");
        peers.take_state(node, state(false, true, &["c"]));
        assert!(wants(&peers, node, "a") && wants(&peers, node, "c"));
        assert!(!wants(&peers, node, "b"), "known: only what it follows");

        // A new stream came up before the old one was seen to end.
        peers.stream_up(node);
        peers.stream_down(node);
        assert!(!wants(&peers, node, "b"), "still known");
        peers.stream_down(node);
        assert!(wants(&peers, node, "b"), "unknown again");
    }

    #[test]
    fn deltas_add_and_remove_topics_and_a_new_state_replaces_the_old() {
        let peers = Peers::default();
        let (one, two) = (NodeId::random(), NodeId::random());
        peers.take_state(one, state(true, true, &[]));
        peers.take_state(two, state(true, true, &["a"]));
        let delta = InterestDelta {
            added: vec!["b".into(), "not a topic!".into()],
            removed: vec!["a".into()],
            ask: 0,
            version: 2,
        };
        assert_eq!(peers.take_delta(one, &delta), [topic("b")]);
        assert!(wants(&peers, one, "b") && !wants(&peers, one, "a"));
        assert!(wants(&peers, two, "a"), "another peer's set is its own");

        peers.take_state(one, state(true, true, &["c"]));
        assert!(wants(&peers, one, "c") && !wants(&peers, one, "b"));
    }

    #[test]
    fn additions_queued_out_of_order_by_concurrent_rounds_all_apply() {
        let peers = Peers::default();
        let node = NodeId::random();
        peers.take_state(node, state(true, true, &[]));
        for (name, version) in [("y", 8), ("x", 7)] {
            let delta = InterestDelta {
                added: vec![name.into()],
                ask: version,
                version,
                ..InterestDelta::default()
            };
            peers.take_delta(node, &delta);
        }
        assert!(wants(&peers, node, "x") && wants(&peers, node, "y"));
        // A removal older than the addition it arrives behind is ignored.
        let stale = InterestDelta {
            removed: vec!["x".into()],
            version: 6,
            ..InterestDelta::default()
        };
        peers.take_delta(node, &stale);
        assert!(wants(&peers, node, "x"));
    }

    #[test]
    fn a_delta_written_before_the_whole_set_it_arrives_behind_changes_nothing() {
        let peers = Peers::default();
        let node = NodeId::random();
        // The set at version 5 holds "x"; the removal of "x" at version 4
        // was still queued when the set was written ahead of it.
        peers.take_state(
            node,
            InterestState {
                version: 5,
                ..state(true, true, &["x"])
            },
        );
        let stale = InterestDelta {
            removed: vec!["x".into()],
            version: 4,
            ..InterestDelta::default()
        };
        peers.take_delta(node, &stale);
        assert!(wants(&peers, node, "x"), "the older removal is ignored");
        let newer = InterestDelta {
            version: 6,
            ..stale
        };
        peers.take_delta(node, &newer);
        assert!(!wants(&peers, node, "x"));
    }

    #[test]
    fn this_pod_stops_following_a_topic_only_when_unused_for_the_linger_and_without_subscribers() {
        let own = Own::default();
        let hub = Hub::new();
        let (quiet, busy) = (topic("quiet"), topic("busy"));
        for t in [&quiet, &busy] {
            let Follow::Start(round) = own.follow(t) else {
                panic!("a new topic starts being followed");
            };
            own.finish(t, round, true);
        }
        assert!(matches!(own.follow(&quiet), Follow::Ready));
        let (mut member, _mailbox) = hub.join(1, 1);
        member.subscribe(busy.clone()).expect("under limit");

        let start = Instant::now();
        assert!(own.sweep(&hub, start).0.is_empty(), "used just now");
        let (gone, _) = own.sweep(&hub, start + LINGER);
        assert_eq!(gone, std::slice::from_ref(&quiet));
        assert!(
            matches!(own.follow(&busy), Follow::Ready),
            "has a subscriber"
        );
        assert!(
            matches!(own.follow(&quiet), Follow::Start(_)),
            "followed anew"
        );
    }

    #[test]
    fn a_round_dropped_unfinished_lets_waiters_go_and_the_next_use_asks_again() {
        let own = Own::default();
        let room = topic("room");
        let Follow::Start(round) = own.follow(&room) else {
            panic!("a new topic starts a round");
        };
        let Follow::Wait(waiter) = own.follow(&room) else {
            panic!("a second use waits for the round");
        };
        drop(round);
        assert!(*waiter.borrow(), "the waiter is let go");
        assert!(matches!(own.follow(&room), Follow::Start(_)), "asked again");
    }
}
