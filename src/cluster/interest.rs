//! Interest-based routing: which topics each pod follows, so that a topic's
//! sequencer sends its messages only to the pods that want them.
//!
//! A pod *follows* a topic while it holds subscribers for it, and for
//! [`LINGER`] after the last one left or a history read (so a resume that
//! comes right after a disconnect finds the log fresh). It tells every peer
//! on its stream to it: the whole set first on every new stream
//! ([`InterestState`] parts), then deltas. A pod that starts following a
//! topic asks every live peer to take the delta in and waits for their
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

#[derive(Debug, Default)]
struct PeersInner {
    /// Peers whose whole set arrived on their current stream, and the set.
    known: HashMap<NodeId, HashSet<Topic>>,
    /// Parts of a whole set still arriving.
    partial: HashMap<NodeId, HashSet<Topic>>,
    /// The same sets, by topic: who follows it.
    followers: HashMap<Topic, Vec<NodeId>>,
}

impl PeersInner {
    fn add(&mut self, node: NodeId, topic: Topic) {
        let Some(set) = self.known.get_mut(&node) else {
            return;
        };
        if set.insert(topic.clone()) {
            self.followers.entry(topic).or_default().push(node);
        }
    }

    fn remove(&mut self, node: NodeId, topic: &Topic) {
        let Some(set) = self.known.get_mut(&node) else {
            return;
        };
        if set.remove(topic)
            && let Some(nodes) = self.followers.get_mut(topic)
        {
            nodes.retain(|n| *n != node);
            if nodes.is_empty() {
                self.followers.remove(topic);
            }
        }
    }

    fn forget(&mut self, node: NodeId) {
        self.partial.remove(&node);
        for topic in self.known.remove(&node).unwrap_or_default() {
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
        inner.known.insert(from, HashSet::new());
        for topic in whole {
            inner.add(from, topic);
        }
    }

    /// `from`'s delta (ignored while its set is unknown: the whole set
    /// that makes it known comes first on the stream).
    pub fn take_delta(&self, from: NodeId, delta: &InterestDelta) -> Vec<Topic> {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        for name in &delta.removed {
            if let Some(topic) = topic(name) {
                inner.remove(from, &topic);
            }
        }
        let added: Vec<Topic> = delta.added.iter().filter_map(|t| topic(t)).collect();
        for topic in &added {
            inner.add(from, topic.clone());
        }
        added
    }

    /// `from`'s stream ended: its set is unknown until a new stream brings
    /// it whole.
    pub fn stream_down(&self, from: NodeId) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        inner.forget(from);
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
    followed: Mutex<HashMap<Topic, Followed>>,
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

/// A round of asking the peers about one topic, under way.
#[derive(Debug)]
pub struct Round(watch::Sender<bool>);

impl Own {
    /// Marks `topic` used now and says whether it is followed already.
    pub fn follow(&self, topic: &Topic) -> Follow {
        let now = Instant::now();
        // Looked at again after the linger: kept while it has subscribers.
        self.idle_from(topic, now);
        let mut followed = self.followed();
        if let Some(entry) = followed.get_mut(topic) {
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
        followed.insert(topic.clone(), entry);
        Follow::Start(Round(tx))
    }

    /// Ends a round about `topic`: `complete` when every peer this pod
    /// knows of answered it.
    pub fn finish(&self, topic: &Topic, round: Round, complete: bool) {
        if let Some(entry) = self.followed().get_mut(topic) {
            entry.complete = complete;
        }
        let _ = round.0.send(true);
    }

    /// The whole set as it travels: one frame or more.
    pub fn state_frames(&self) -> Vec<peer_frame::Kind> {
        let topics: Vec<Topic> = self.followed().keys().cloned().collect();
        let mut parts: Vec<InterestState> = topics
            .chunks(STATE_PART_TOPICS)
            .map(|chunk| InterestState {
                first: false,
                last: false,
                topics: chunk.iter().map(Topic::to_string).collect(),
            })
            .collect();
        if parts.is_empty() {
            parts.push(InterestState::default());
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
    /// followed when this returns.
    pub fn sweep(&self, hub: &Hub, now: Instant) -> Vec<Topic> {
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
            let Some(entry) = followed.get(&topic) else {
                continue;
            };
            if !*entry.ready.borrow() {
                later.push((topic, now));
            } else if now.saturating_duration_since(entry.used) < LINGER {
                later.push((topic, entry.used));
            } else if !hub.has_subscribers(&topic) {
                // With subscribers, the last one's leaving brings it back.
                followed.remove(&topic);
                gone.push(topic);
            }
        }
        drop(followed);
        for (topic, at) in later {
            self.idle_from(&topic, at);
        }
        gone
    }

    /// Marks `topic` as a candidate for the sweep from `at`.
    fn idle_from(&self, topic: &Topic, at: Instant) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.insert(topic.clone(), at);
    }

    fn followed(&self) -> std::sync::MutexGuard<'_, HashMap<Topic, Followed>> {
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
        }
    }

    #[test]
    fn a_peer_gets_every_message_until_its_whole_set_arrives_and_again_after_its_stream_broke() {
        let peers = Peers::default();
        let node = NodeId::random();
        assert!(wants(&peers, node, "a"), "unknown: everything");

        peers.take_state(node, state(true, false, &["a"]));
        assert!(wants(&peers, node, "b"), "still unknown halfway");
        peers.take_state(node, state(false, true, &["c"]));
        assert!(wants(&peers, node, "a") && wants(&peers, node, "c"));
        assert!(!wants(&peers, node, "b"), "known: only what it follows");

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
        };
        assert_eq!(peers.take_delta(one, &delta), [topic("b")]);
        assert!(wants(&peers, one, "b") && !wants(&peers, one, "a"));
        assert!(wants(&peers, two, "a"), "another peer's set is its own");

        peers.take_state(one, state(true, true, &["c"]));
        assert!(wants(&peers, one, "c") && !wants(&peers, one, "b"));
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
        assert!(own.sweep(&hub, start).is_empty(), "used just now");
        assert_eq!(
            own.sweep(&hub, start + LINGER),
            std::slice::from_ref(&quiet)
        );
        assert!(
            matches!(own.follow(&busy), Follow::Ready),
            "has a subscriber"
        );
        assert!(
            matches!(own.follow(&quiet), Follow::Start(_)),
            "followed anew"
        );
    }
}
