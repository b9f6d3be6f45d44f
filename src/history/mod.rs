//! Per-topic history on this pod, with no store: every pod receives every
//! message, so every pod keeps each topic's recent run itself and can
//! answer a resume (`subscribe` with `since`) or a `history` request for
//! any topic, whichever pod the user held before.
//!
//! [`History`] is a sharded map of topic → [`Log`] (the pure part: head,
//! sequencer, kept run). It bounds what is kept by count and age per
//! topic and by bytes per pod, and knows the topics whose history is off.
//! It knows no hub and no peers: callers run their own step (numbering a
//! message, offering it to subscribers, answering a resume) under the
//! topic's lock through [`History::with`], which is what makes a topic's
//! order the same in its log, in every subscriber's queue and in every
//! resume.
//!
//! Concurrency: [`SHARDS`] std mutexes, each over its topics' logs and a
//! queue of what they kept in arrival order. A step holds one shard's lock
//! for one topic and never waits under it.

mod log;

pub use log::{BadPosition, Fit, Log, Need, Since};

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::auth::TopicPatterns;
use crate::message::Message;
use crate::topic::Topic;

/// Shards of the topic map: as many as the hub has, for the same reason
/// (two topics rarely meet on one lock).
pub const SHARDS: usize = 64;

/// What history keeps.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Most messages kept per topic.
    pub max_messages: usize,
    /// Longest a message is kept.
    pub max_age: Duration,
    /// Most bytes of kept messages on this pod, over all topics.
    pub max_bytes: usize,
    /// Most topics whose head this pod remembers; beyond it, the topics
    /// idle the longest with nothing kept are forgotten.
    pub max_topics: usize,
    /// Topics that keep no history (their offsets still count).
    pub off: TopicPatterns,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_messages: 1_000,
            max_age: Duration::from_secs(300),
            max_bytes: 256 << 20,
            max_topics: 1_000_000,
            off: TopicPatterns::none(),
        }
    }
}

/// Counters of what history holds and dropped; read by metrics.
#[derive(Debug, Default)]
pub struct HistoryStats {
    bytes: AtomicUsize,
    messages: AtomicUsize,
    topics: AtomicUsize,
    evicted: AtomicU64,
}

impl HistoryStats {
    /// Bytes of kept messages.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Messages kept.
    pub fn messages(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    /// Topics whose head is known.
    pub fn topics(&self) -> usize {
        self.topics.load(Ordering::Relaxed)
    }

    /// Messages dropped before their age for the count or byte bounds, or
    /// at their age, since start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }
}

/// A handle to this pod's history. Clones share it.
#[derive(Clone)]
pub struct History {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    limits: Limits,
    stats: HistoryStats,
}

#[derive(Default)]
struct Shard {
    logs: HashMap<Topic, Log>,
    /// What the shard's logs kept, oldest first: which message the byte
    /// bound evicts next. Entries already gone from their log are skipped.
    kept: VecDeque<(Topic, u64)>,
}

/// One topic's log under its shard's lock, for the step a caller runs.
pub struct Entry<'a> {
    log: &'a mut Log,
    keep: bool,
    max_kept: usize,
    kept: &'a mut VecDeque<(Topic, u64)>,
    added: usize,
}

impl Entry<'_> {
    /// The topic's log, to read.
    pub fn log(&self) -> &Log {
        self.log
    }

    /// Adds `message` to the log (keeping it unless history is off for its
    /// topic) and says how it fitted.
    pub fn add(&mut self, message: &Arc<Message>) -> Fit {
        let fit = self
            .log
            .add(message, self.keep, self.max_kept, Instant::now());
        if fit != Fit::Seen && self.keep && self.max_kept > 0 {
            self.kept
                .push_back((message.topic().clone(), message.stamp().offset));
            self.added += 1;
        }
        fit
    }

    /// Takes what a peer keeps of the topic (see [`Log::restore`]).
    pub fn restore(
        &mut self,
        head: crate::message::Position,
        sequencer: crate::message::NodeId,
        kept: &[Arc<Message>],
    ) {
        let keep = if self.keep { self.max_kept } else { 0 };
        let added = self.log.restore(head, sequencer, kept, keep);
        self.note_older(&added);
    }

    /// Starts the log over from what another pod keeps (see
    /// [`Log::replace`]).
    pub fn replace(
        &mut self,
        head: crate::message::Position,
        sequencer: crate::message::NodeId,
        kept: &[Arc<Message>],
    ) {
        let keep = if self.keep { self.max_kept } else { 0 };
        let added = self.log.replace(head, sequencer, kept, keep);
        self.note_older(&added);
    }

    /// Books messages a restore added: older than anything the shard kept
    /// since, so first to be evicted.
    fn note_older(&mut self, added: &[Arc<Message>]) {
        self.added += added.len();
        for message in added.iter().rev() {
            self.kept
                .push_front((message.topic().clone(), message.stamp().offset));
        }
    }

    /// Drops the run because messages up to `head` were lost on the way
    /// (see [`Log::skip_to`]).
    pub fn skip_to(&mut self, head: crate::message::Position) -> Option<crate::message::Position> {
        self.log.skip_to(head)
    }

    /// The log, to change in ways that keep no new message (a handover).
    pub fn log_mut(&mut self) -> &mut Log {
        self.log
    }
}

impl History {
    /// An empty history bounded by `limits`.
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                limits,
                stats: HistoryStats::default(),
            }),
        }
    }

    /// The bounds in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// What history holds.
    pub fn stats(&self) -> &HistoryStats {
        &self.inner.stats
    }

    /// Runs `step` on `topic`'s log (made if new) under its lock, then
    /// applies the bounds to what it kept.
    pub fn with<R>(&self, topic: &Topic, step: impl FnOnce(&mut Entry<'_>) -> R) -> R {
        let inner = &*self.inner;
        let mut shard = self.lock(topic);
        let Shard { logs, kept } = &mut *shard;
        let fresh = !logs.contains_key(topic);
        let log = logs.entry(topic.clone()).or_default();
        let before = (log.bytes(), log.len());
        let mut entry = Entry {
            log,
            keep: !inner.limits.off.allows(topic.as_str()),
            max_kept: inner.limits.max_messages,
            kept,
            added: 0,
        };
        let result = step(&mut entry);
        let (log, added) = (entry.log, entry.added);
        if fresh {
            inner.stats.topics.fetch_add(1, Ordering::Relaxed);
        }
        log.expire(Instant::now(), inner.limits.max_age);
        let evicted = (before.1 + added).saturating_sub(log.len());
        self.account(before, (log.bytes(), log.len()), evicted as u64);
        if inner.stats.bytes() > inner.limits.max_bytes {
            self.evict_oldest(&mut shard);
        }
        result
    }

    /// Reads `topic`'s log without making one: `None` for a topic this pod
    /// knows nothing of.
    pub fn read<R>(&self, topic: &Topic, read: impl FnOnce(&Log) -> R) -> Option<R> {
        self.lock(topic).logs.get(topic).map(read)
    }

    /// Whether this pod's log of `topic` answers `need` as fully as the
    /// group could (see [`Log::answers`]); false for a topic it has no log
    /// of.
    pub fn answers(&self, topic: &Topic, need: Need) -> bool {
        let limits = &self.inner.limits;
        let keeps = !limits.off.allows(topic.as_str());
        self.read(topic, |log| {
            log.answers(topic, need, keeps, limits.max_messages)
        })
        .unwrap_or(false)
    }

    /// The topics `node` numbers, and their heads: what a leaving
    /// sequencer hands on.
    pub fn sequenced_by(
        &self,
        node: crate::message::NodeId,
    ) -> Vec<(Topic, crate::message::Position)> {
        self.heads_where(|log| log.sequencer() == Some(node) && log.head().epoch.is_some())
    }

    /// Every topic this pod holds a log of (one it only has subscribers
    /// for has a head of nothing yet), and its head: what a pod that missed
    /// messages checks against the group's.
    pub fn heads(&self) -> Vec<(Topic, crate::message::Position)> {
        self.heads_where(|_| true)
    }

    fn heads_where(&self, keep: impl Fn(&Log) -> bool) -> Vec<(Topic, crate::message::Position)> {
        let mut heads = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            heads.extend(
                shard
                    .logs
                    .iter()
                    .filter(|(_, log)| keep(log))
                    .map(|(topic, log)| (topic.clone(), log.head())),
            );
        }
        heads
    }

    /// Every topic's head and sequencer, where both are known: what a pod
    /// that just started is sent.
    pub fn sequencers(&self) -> Vec<(Topic, crate::message::Position, crate::message::NodeId)> {
        let mut out = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(shard.logs.iter().filter_map(|(topic, log)| {
                log.head().epoch?;
                Some((topic.clone(), log.head(), log.sequencer()?))
            }));
        }
        out
    }

    /// Drops messages past their age everywhere, and forgets the idlest
    /// topics with nothing kept while more than the topic bound are known.
    /// Run now and then (see `app`).
    pub fn sweep(&self) {
        let inner = &*self.inner;
        let now = Instant::now();
        let over = inner.stats.topics().saturating_sub(inner.limits.max_topics);
        let per_shard = over.div_ceil(SHARDS);
        for shard in inner.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            for log in shard.logs.values_mut() {
                let before = (log.bytes(), log.len());
                let expired = log.expire(now, inner.limits.max_age);
                self.account(before, (log.bytes(), log.len()), expired as u64);
            }
            let Shard { logs, kept } = &mut *shard;
            kept.retain(|(topic, offset)| shard_holds(logs, topic, *offset));
            if per_shard > 0 {
                let mut idle: Vec<(Instant, Topic)> = shard
                    .logs
                    .iter()
                    .filter(|(_, log)| log.is_empty())
                    .map(|(topic, log)| (log.touched().unwrap_or(now), topic.clone()))
                    .collect();
                idle.sort();
                for (_, topic) in idle.into_iter().take(per_shard) {
                    shard.logs.remove(&topic);
                    inner.stats.topics.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn account(&self, before: (usize, usize), after: (usize, usize), evicted: u64) {
        let stats = &self.inner.stats;
        if after.0 >= before.0 {
            stats.bytes.fetch_add(after.0 - before.0, Ordering::Relaxed);
        } else {
            stats.bytes.fetch_sub(before.0 - after.0, Ordering::Relaxed);
        }
        if after.1 >= before.1 {
            stats
                .messages
                .fetch_add(after.1 - before.1, Ordering::Relaxed);
        } else {
            let gone = before.1 - after.1;
            stats.messages.fetch_sub(gone, Ordering::Relaxed);
        }
        stats.evicted.fetch_add(evicted, Ordering::Relaxed);
    }

    /// Evicts the shard's oldest kept messages until the pod is within its
    /// byte bound (or the shard keeps nothing).
    fn evict_oldest(&self, shard: &mut Shard) {
        let inner = &*self.inner;
        while inner.stats.bytes() > inner.limits.max_bytes {
            let Some((topic, offset)) = shard.kept.pop_front() else {
                return;
            };
            let Some(log) = shard.logs.get_mut(&topic) else {
                continue;
            };
            let before = (log.bytes(), log.len());
            if log.evict(offset) {
                self.account(before, (log.bytes(), log.len()), 1);
            }
        }
    }

    fn lock(&self, topic: &Topic) -> MutexGuard<'_, Shard> {
        let hash = self.inner.hasher.hash_one(topic);
        // NB: a poisoned shard only means a step panicked; each log is
        // still whole (its changes are single queue operations).
        self.inner.shards[hash as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

fn shard_holds(logs: &HashMap<Topic, Log>, topic: &Topic, offset: u64) -> bool {
    logs.get(topic)
        .and_then(Log::first_kept)
        .is_some_and(|first| first <= offset)
}
