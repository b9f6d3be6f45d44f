//! What this pod holds of every topic, kept in one order: its history and
//! its subscribers' queues change together, under the topic's lock in
//! [`History`], so that a message's place in the log, in every local
//! subscriber's queue and in every resume is the same.
//!
//! ```text
//!   sequence (this pod numbers the topic) ─┐
//!                                          ├─▶ history log ─▶ hub offers ─▶ sessions
//!   accept (numbered by another pod) ──────┘        ▲
//!   subscribe (with or without since) ──────────────┘ reply + replay, then live
//! ```
//!
//! [`Local`] knows no transport: it takes drafts and numbered messages and
//! hands back receipts; the publish path decides which pod numbers a topic
//! and the cluster carries messages between pods.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::oneshot;

use crate::history::{BadPosition, Entry, Fit, History, Need, Since};
use crate::hub::{Hub, Membership, Options, Outgoing, Pending, TooManySubscriptions};
use crate::message::{Draft, Message, MessageId, NodeId, Position, Stamp, gap_frame};
use crate::topic::Topic;

/// How long a publisher's idempotency key is remembered.
pub const KEY_WINDOW: Duration = Duration::from_secs(300);

/// Most idempotency keys remembered at once; the oldest go first.
pub const MAX_KEYS: usize = 100_000;

/// Where a published message landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    /// Its id.
    pub id: MessageId,
    /// Its place in the topic.
    pub stamp: Stamp,
}

/// How a subscribe went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resume {
    /// The topic's head as the reply gives it.
    pub head: Position,
    /// With `since`: whether every message after it followed (true) or
    /// none did because some are no longer kept (false).
    pub recovered: Option<bool>,
}

/// Why a subscribe was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// `since` is a position the topic can never have.
    #[error(transparent)]
    Position(#[from] BadPosition),
    /// The session holds as many topics as it may.
    #[error(transparent)]
    Limit(#[from] TooManySubscriptions),
}

/// What `history` answers.
#[derive(Debug, Clone)]
pub struct Page {
    /// The topic's head.
    pub head: Position,
    /// Kept messages, oldest first.
    pub messages: Vec<Arc<Message>>,
    /// With `since`: whether the messages start right after it.
    pub recovered: Option<bool>,
}

/// Where this pod's history of a topic can be completed from before a
/// subscribe or a history read answers from it: a pod that knows nothing of
/// a topic, or whose log does not reach back far enough (it started after
/// the messages asked for), reads it from there first. The broadcast
/// backends implement it.
pub trait Recall: Send + Sync {
    /// Brings what this pod holds of `topic` up to what the group holds,
    /// as far as `need` asks, within a bounded wait; never fails (the
    /// answer is then given from what this pod holds).
    fn recall<'a>(&'a self, topic: &'a Topic, need: Need) -> BoxFuture<'a, ()>;
}

/// A handle to this pod's ordered topics. Clones share it.
#[derive(Clone)]
pub struct Local {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    history: History,
    node: NodeId,
    /// Publishes forwarded to another pod, waiting for their message to
    /// come back numbered.
    waiting: Mutex<HashMap<MessageId, oneshot::Sender<Receipt>>>,
    keys: Mutex<Keys>,
}

/// Idempotency keys seen recently, per topic.
#[derive(Default)]
struct Keys {
    seen: HashMap<(Topic, Arc<str>), Receipt>,
    order: VecDeque<(Instant, Topic, Arc<str>)>,
}

impl Keys {
    /// Forgets keys past the window, and the oldest beyond the bound.
    fn trim(&mut self) {
        let now = Instant::now();
        while let Some((at, ..)) = self.order.front()
            && (now.duration_since(*at) > KEY_WINDOW || self.order.len() > MAX_KEYS)
        {
            if let Some((_, topic, key)) = self.order.pop_front() {
                self.seen.remove(&(topic, key));
            }
        }
    }

    fn get(&mut self, topic: &Topic, key: &Arc<str>) -> Option<Receipt> {
        self.trim();
        self.seen.get(&(topic.clone(), key.clone())).copied()
    }

    fn insert(&mut self, message: &Message) {
        self.trim();
        if let Some(key) = message.key() {
            let receipt = Receipt {
                id: message.id(),
                stamp: message.stamp(),
            };
            let slot = (message.topic().clone(), key.clone());
            if self.seen.insert(slot, receipt).is_none() {
                self.order
                    .push_back((Instant::now(), message.topic().clone(), key.clone()));
            }
        }
    }
}

impl Local {
    /// This pod (`node`)'s topics over `hub` and `history`.
    pub fn new(hub: Hub, history: History, node: NodeId) -> Self {
        Self {
            inner: Arc::new(Inner {
                hub,
                history,
                node,
                waiting: Mutex::default(),
                keys: Mutex::default(),
            }),
        }
    }

    /// This pod's node id.
    pub fn node(&self) -> NodeId {
        self.inner.node
    }

    /// The hub.
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// The history.
    pub fn history(&self) -> &History {
        &self.inner.history
    }

    /// Numbers `drafts` as their topics' sequencer, keeps them, hands each
    /// to `relay` (under the topic's lock, so every peer's queue holds a
    /// topic in order) and delivers them here. A draft whose idempotency
    /// key was seen gets the earlier receipt and is not published again. A
    /// draft of a topic this pod has just handed on comes back (`Err`): it
    /// goes to the successor.
    pub fn sequence(
        &self,
        drafts: Vec<Draft>,
        relay: &dyn Fn(&Arc<Message>),
    ) -> Vec<Result<Receipt, Draft>> {
        let me = self.inner.node;
        let mut pending = Pending::default();
        let receipts = drafts
            .into_iter()
            .map(|draft| {
                let topic = draft.topic.clone();
                self.inner.history.with(&topic, |entry| {
                    if let Some(key) = &draft.key
                        && let Some(earlier) = self.keys().get(&topic, key)
                    {
                        return Ok(earlier);
                    }
                    let Some((epoch, offset)) = entry.log().next_stamp(&topic, me) else {
                        return Err(draft);
                    };
                    if offset == 1 && entry.log().head().epoch.is_some() {
                        let log = entry.log();
                        tracing::info!(%topic, before = ?log.head(), sequencer = ?log.sequencer(), "numbering a topic in a new epoch");
                    }
                    let stamp = Stamp {
                        epoch,
                        offset,
                        sequencer: me,
                    };
                    let message = Arc::new(Message::new(draft, stamp));
                    relay(&message);
                    self.keep_and_offer(entry, &message, &mut pending);
                    Ok(Receipt {
                        id: message.id(),
                        stamp,
                    })
                })
            })
            .collect::<Vec<_>>();
        self.inner.hub.write_out(pending);
        // A draft of this pod's that came back to be numbered here (its
        // route changed on the way): its publish is waiting for it.
        let numbered: Vec<Receipt> = receipts
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .copied()
            .collect();
        self.answer(&numbered);
        receipts
    }

    /// Answers the publish of draft `draft` of this pod, whose key another
    /// pod found already used, with the first message's receipt.
    pub fn answer_repeat(&self, draft: MessageId, receipt: Receipt) {
        if let Some(waiter) = self.waiting().remove(&draft) {
            let _ = waiter.send(receipt);
        }
    }

    /// Answers the publishes of this pod waiting for these receipts.
    pub fn answer(&self, receipts: &[Receipt]) {
        let mut waiting = self.waiting();
        if waiting.is_empty() {
            return;
        }
        for receipt in receipts {
            if let Some(waiter) = waiting.remove(&receipt.id) {
                let _ = waiter.send(*receipt);
            }
        }
    }

    /// Takes messages another pod numbered: keeps and delivers each that
    /// is new here, in order. A message after a hole, or of a new epoch,
    /// is preceded by a `gap` event to the topic's subscribers. Publishes
    /// of this pod waiting for one of them (new here or not) are answered.
    pub fn accept(&self, messages: impl IntoIterator<Item = Arc<Message>>) {
        let mut pending = Pending::default();
        let mut arrived = Vec::new();
        for message in messages {
            self.inner.history.with(message.topic(), |entry| {
                self.keep_and_offer(entry, &message, &mut pending)
            });
            // A duplicate answers its publish too: its first copy may have
            // come in a restore, which answers nobody.
            arrived.push(Receipt {
                id: message.id(),
                stamp: message.stamp(),
            });
        }
        self.inner.hub.write_out(pending);
        self.answer(&arrived);
    }

    /// Adds `message` to its log and offers it to the topic's subscribers
    /// (after a `gap` event if it does not follow the head). A duplicate is
    /// dropped.
    fn keep_and_offer(&self, entry: &mut Entry<'_>, message: &Arc<Message>, pending: &mut Pending) {
        let hub = &self.inner.hub;
        match entry.add(message) {
            Fit::Seen => return,
            Fit::Next => {}
            Fit::Hole { after } | Fit::Epoch { after } => {
                tracing::debug!(topic = %message.topic(), ?after, at = ?message.position(), "a gap in a topic's order");
                let before = Position::at(message.stamp().epoch, message.stamp().offset - 1);
                hub.offer_event(message.topic(), gap_frame(message.topic(), before), pending);
            }
        }
        self.keys().insert(message);
        hub.offer(message, pending);
    }

    /// Catches a session up on the topics it is behind on, one step: up to
    /// its catch-up room of messages per topic from history, in their
    /// place; once it reaches the head it is live on the topic again. A
    /// position the history no longer covers gets a `gap` to the head.
    pub fn catch_up(&self, membership: &Membership) {
        let mut pending = Pending::default();
        let room = membership.catch_up_room();
        for (topic, at) in membership.behind() {
            self.inner.history.with(&topic, |entry| {
                let log = entry.log();
                // One more than the room says whether this step reaches the head.
                match log.since_at_most(&topic, at, room + 1) {
                    Ok(Since::Recovered(mut messages)) => {
                        let done = messages.len() <= room;
                        messages.truncate(room);
                        let at = messages.last().map_or(at, |m| m.position());
                        let items = messages.into_iter().map(Outgoing::Message).collect();
                        membership.catch_up(&topic, items, at, done, &mut pending);
                    }
                    // The history no longer holds what follows `at` (the
                    // session read slower than the history keeps, or the
                    // topic broke meanwhile): a `gap` to the head, counted
                    // as dropped, and live from there.
                    Ok(Since::Lost) | Err(_) => {
                        let head = log.head();
                        if head.epoch == at.epoch {
                            pending.missed(head.offset.saturating_sub(at.offset));
                        }
                        let gap = vec![Outgoing::text(gap_frame(&topic, head))];
                        membership.catch_up(&topic, gap, head, true, &mut pending);
                    }
                }
            });
        }
        self.inner.hub.write_out(pending);
    }

    /// Subscribes `membership` to `topic` (with `options`) and queues, in this order, what
    /// `frames` makes of the outcome (the reply), then the replay when
    /// `since` is recovered; live messages follow. Nothing is subscribed
    /// when it fails.
    pub fn subscribe(
        &self,
        membership: &mut Membership,
        topic: Topic,
        since: Option<Position>,
        options: Options,
        frames: impl FnOnce(&Resume) -> Outgoing,
    ) -> Result<Resume, SubscribeError> {
        let mut pending = Pending::default();
        let resume = self.inner.history.with(&topic.clone(), |entry| {
            let log = entry.log();
            let head = log.head();
            let replay = since.map(|since| log.since(&topic, since)).transpose()?;
            let fresh = membership.subscribe_with(topic, options)?;
            let (recovered, replay) = match replay {
                // Already subscribed: where it stands, and nothing again.
                _ if !fresh => (None, Vec::new()),
                None => (None, Vec::new()),
                Some(Since::Recovered(replay)) => (Some(true), replay),
                Some(Since::Lost) => (Some(false), Vec::new()),
            };
            let resume = Resume { head, recovered };
            let reply = frames(&resume);
            let items = std::iter::once(reply).chain(replay.into_iter().map(Outgoing::Message));
            membership.push(items, &mut pending);
            Ok::<_, SubscribeError>(resume)
        });
        self.inner.hub.write_out(pending);
        resume
    }

    /// The kept messages of `topic`: the last `limit`, or with `since` the
    /// first `limit` after it.
    pub fn page(
        &self,
        topic: &Topic,
        since: Option<Position>,
        limit: usize,
    ) -> Result<Page, BadPosition> {
        let page = self.inner.history.read(topic, |log| {
            let head = log.head();
            match since {
                None => Ok(Page {
                    head,
                    messages: log.last(limit),
                    recovered: None,
                }),
                Some(since) => Ok(match log.since_at_most(topic, since, limit)? {
                    Since::Recovered(messages) => Page {
                        head,
                        messages,
                        recovered: Some(true),
                    },
                    Since::Lost => Page {
                        head,
                        messages: Vec::new(),
                        recovered: Some(false),
                    },
                }),
            }
        });
        page.unwrap_or_else(|| {
            let empty = crate::history::Log::default();
            let recovered = since.map(|since| empty.since(topic, since)).transpose()?;
            Ok(Page {
                head: Position::default(),
                messages: Vec::new(),
                recovered: recovered.map(|since| matches!(since, Since::Recovered(_))),
            })
        })
    }

    /// The pod that numbers `topic`, as far as this pod knows.
    pub fn sequencer_of(&self, topic: &Topic) -> Option<NodeId> {
        self.inner
            .history
            .read(topic, |log| log.sequencer())
            .flatten()
    }

    /// Records that a leaving sequencer handed `topic` at `head` to
    /// `successor`.
    pub fn hand_over(&self, topic: &Topic, head: Position, successor: NodeId) {
        let me = self.inner.node;
        let mut pending = Pending::default();
        self.inner.history.with(topic, |entry| {
            if entry.log_mut().hand_over(head, successor, me).is_some() {
                let hub = &self.inner.hub;
                hub.offer_event(topic, gap_frame(topic, head), &mut pending);
            }
        });
        self.inner.hub.write_out(pending);
    }

    /// Hands `topic`, which this pod numbers, to `successor` and returns
    /// its head, read under the same lock as the change: a publish this pod
    /// numbered is in the head, and one that reaches [`sequence`](Self::sequence)
    /// after it comes back to go to the successor.
    pub fn hand_on(&self, topic: &Topic, successor: NodeId) -> Position {
        self.inner
            .history
            .with(topic, |entry| entry.log_mut().hand_on(successor))
    }

    /// Messages of `topic` up to `head` were lost on the way to this pod:
    /// the topic's subscribers get a `gap` saying so, and resumes no longer
    /// cross it.
    pub fn skip_to(&self, topic: &Topic, head: Position) {
        let mut pending = Pending::default();
        self.inner.history.with(topic, |entry| {
            if let Some(before) = entry.skip_to(head) {
                tracing::debug!(%topic, ?before, ?head, "messages lost on the way here");
                let hub = &self.inner.hub;
                hub.offer_event(topic, gap_frame(topic, head), &mut pending);
            }
        });
        self.inner.hub.write_out(pending);
    }

    /// Takes what a peer keeps of `topic` into its log, without
    /// delivering any of it (it is history: the live messages reach
    /// subscribers on their own), except a `gap` to subscribers when the
    /// log knew nothing before. Their idempotency keys are remembered.
    pub fn restore(&self, topic: &Topic, head: Position, sequencer: NodeId, kept: &[Arc<Message>]) {
        let mut pending = Pending::default();
        self.inner.history.with(topic, |entry| {
            let knew = entry.log().head();
            entry.restore(head, sequencer, kept);
            // Users who subscribed while this pod knew nothing of the
            // topic stood at "nothing yet": they get the topic from its
            // first message when all of it came, else are told where it
            // stands (unless nothing was numbered yet: they missed nothing).
            let log = entry.log();
            let now_at = log.head();
            if knew.epoch.is_none() && now_at != knew && now_at.offset > 0 {
                let hub = &self.inner.hub;
                if log.first_kept() == Some(1) && log.len() as u64 == now_at.offset {
                    for message in log.last(log.len()) {
                        hub.offer(&message, &mut pending);
                    }
                } else {
                    hub.offer_event(topic, gap_frame(topic, now_at), &mut pending);
                }
            }
        });
        self.inner.hub.write_out(pending);
        let mut keys = self.keys();
        for message in kept {
            keys.insert(message);
        }
    }

    /// Brings this pod's log of `topic`, which may have fallen behind (this
    /// pod did not follow the topic), up to what another pod keeps of it:
    /// its `head`, `sequencer` and newest messages `kept`. Messages newer
    /// than the log are added and offered to its subscribers in their
    /// place, and older ones that join the log fill it in; a log they
    /// cannot be joined to starts over from them, and its subscribers (if
    /// any) get a `gap` to the new head.
    pub fn refresh(&self, topic: &Topic, head: Position, sequencer: NodeId, kept: &[Arc<Message>]) {
        let mut pending = Pending::default();
        self.inner.history.with(topic, |entry| {
            let at = entry.log().head();
            let same = at.epoch.is_some() && at.epoch == head.epoch;
            let joins = kept
                .first()
                .is_some_and(|m| m.stamp().offset <= at.offset + 1);
            if same && (at.offset >= head.offset || joins) {
                for message in kept.iter().filter(|m| m.stamp().offset > at.offset) {
                    self.keep_and_offer(entry, message, &mut pending);
                }
                entry.restore(head, sequencer, kept);
            } else {
                entry.replace(head, sequencer, kept);
                if head != at && head.offset > 0 {
                    let hub = &self.inner.hub;
                    hub.offer_event(topic, gap_frame(topic, head), &mut pending);
                }
            }
        });
        self.inner.hub.write_out(pending);
        let mut keys = self.keys();
        for message in kept {
            keys.insert(message);
        }
    }

    /// The receipt of an earlier publish to `topic` with `key`, if seen
    /// within the key window.
    pub fn receipt_for(&self, topic: &Topic, key: &Arc<str>) -> Option<Receipt> {
        self.keys().get(topic, key)
    }

    /// Waits for message `id`, forwarded to another pod, to come back
    /// numbered. Register before forwarding.
    pub fn expect(&self, id: MessageId) -> oneshot::Receiver<Receipt> {
        let (tx, rx) = oneshot::channel();
        self.waiting().insert(id, tx);
        rx
    }

    /// Stops waiting for `id` (it timed out).
    pub fn forget(&self, id: MessageId) {
        self.waiting().remove(&id);
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<MessageId, oneshot::Sender<Receipt>>> {
        self.inner.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keys(&self) -> MutexGuard<'_, Keys> {
        self.inner.keys.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Epoch;

    /// What `mailbox` holds now, as text frames.
    fn frames(mailbox: &mut crate::hub::Mailbox) -> Vec<String> {
        std::iter::from_fn(|| mailbox.try_recv())
            .map(|item| item.frame().to_string())
            .collect()
    }

    /// A session of `local`'s hub subscribed to `topics` (without
    /// `since`), its replies read.
    fn session(local: &Local, topics: &[&Topic]) -> (Membership, crate::hub::Mailbox) {
        let (mut membership, mut mailbox) = local.inner.hub.join(16, 16);
        for topic in topics {
            let subscribed = local.subscribe(
                &mut membership,
                (*topic).clone(),
                None,
                Options::default(),
                |_| Outgoing::text("subscribed"),
            );
            assert!(subscribed.is_ok());
        }
        assert_eq!(frames(&mut mailbox), vec!["subscribed"; topics.len()]);
        (membership, mailbox)
    }

    #[test]
    fn a_subscriber_who_stood_at_nothing_yet_hears_of_a_gap_only_if_something_was_numbered() {
        let node = NodeId::random();
        let local = Local::new(Hub::new(), History::new(Default::default()), node);
        let (fresh, used) = (
            Topic::new("room:fresh").expect("topic"),
            Topic::new("room:used").expect("topic"),
        );
        let (_membership, mut mailbox) = session(&local, &[&fresh, &used]);

        // A peer says where each topic stands: one has numbered nothing yet.
        local.restore(&fresh, Position::at(Epoch::new_for(&fresh), 0), node, &[]);
        assert_eq!(
            frames(&mut mailbox),
            Vec::<String>::new(),
            "nothing was missed"
        );
        let epoch = Epoch::new_for(&used);
        local.restore(&used, Position::at(epoch, 5), node, &[]);
        assert_eq!(
            frames(&mut mailbox),
            [gap_frame(&used, Position::at(epoch, 5))]
        );
    }

    #[test]
    fn subscribers_at_nothing_yet_get_a_restored_topic_from_its_first_message_and_once() {
        let node = NodeId::random();
        let local = Local::new(Hub::new(), History::new(Default::default()), node);
        let topic = Topic::new("room:1").expect("topic");
        let (_membership, mut mailbox) = session(&local, &[&topic]);

        let kept: Vec<_> = (1..=3)
            .map(|n| crate::message::sample("room:1", n, &n.to_string()))
            .collect();
        local.restore(&topic, kept[2].position(), node, &kept);
        let whole: Vec<String> = kept.iter().map(|m| m.frame().to_string()).collect();
        assert_eq!(frames(&mut mailbox), whole, "the messages, not a gap");

        // The last one arriving live too is not delivered again, and a
        // publish waiting for it is answered.
        let mut waiting = local.expect(kept[2].id());
        local.accept(vec![kept[2].clone()]);
        assert_eq!(frames(&mut mailbox), Vec::<String>::new());
        assert_eq!(waiting.try_recv().map(|r| r.id), Ok(kept[2].id()));
    }

    #[test]
    fn a_log_that_fell_behind_is_brought_up_to_a_fresher_one_and_one_that_cannot_join_starts_over()
    {
        let node = NodeId::random();
        let local = Local::new(Hub::new(), History::new(Default::default()), node);
        let topic = Topic::new("room:1").expect("topic");
        let all: Vec<_> = (1..=6)
            .map(|n| crate::message::sample("room:1", n, &n.to_string()))
            .collect();
        local.accept(all[..3].to_vec());
        let (_membership, mut mailbox) = session(&local, &[&topic]);
        let texts = |messages: &[Arc<Message>]| -> Vec<String> {
            messages.iter().map(|m| m.frame().to_string()).collect()
        };
        let kept = || -> Vec<u64> {
            local
                .history()
                .read(&topic, |log| log.last(100))
                .unwrap_or_default()
                .iter()
                .map(|m| m.stamp().offset)
                .collect()
        };

        // Newer messages that join the log: added and delivered in place.
        local.refresh(&topic, all[5].position(), node, &all[2..]);
        assert_eq!(frames(&mut mailbox), texts(&all[3..]));
        assert_eq!(kept(), [1, 2, 3, 4, 5, 6]);

        // A log at the head whose run was cut: older messages fill it in,
        // nothing is delivered again.
        let cut = Topic::new("room:2").expect("topic");
        let other: Vec<_> = (1..=4)
            .map(|n| crate::message::sample("room:2", n, &n.to_string()))
            .collect();
        local.accept([other[0].clone(), other[3].clone()]);
        local.refresh(&cut, other[3].position(), node, &other);
        let offsets: Vec<u64> = local
            .history()
            .read(&cut, |log| log.last(100))
            .unwrap_or_default()
            .iter()
            .map(|m| m.stamp().offset)
            .collect();
        assert_eq!(offsets, [1, 2, 3, 4]);

        // Another epoch: the log starts over, and subscribers hear of a gap.
        let epoch = Epoch::new_for(&topic);
        let head = Position::at(epoch, 9);
        local.refresh(&topic, head, node, &[]);
        assert_eq!(frames(&mut mailbox), [gap_frame(&topic, head)]);
        assert_eq!(local.history().read(&topic, |log| log.head()), Some(head));
        assert!(kept().is_empty());
    }
}
