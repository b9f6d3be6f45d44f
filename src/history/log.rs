//! One topic's log on this pod: where the topic stands (its head), which pod
//! numbers it, and the run of recent messages kept for resumes and the
//! `history` op. Pure: no locks, no clock of its own, no I/O.
//!
//! The kept messages are always one unbroken run of offsets that ends at
//! the head: a message that does not follow the head (a hole, a new epoch)
//! drops the run before it is kept, so "the run holds offset N" always
//! means "this pod holds everything from N to the head".

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::message::{Epoch, Message, NodeId, Position};
use crate::topic::Topic;

/// How a message fitted the log it was added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// The next offset of the head's epoch, or the topic's first message.
    Next,
    /// An offset this log already passed: a duplicate, not kept.
    Seen,
    /// A later offset of the same epoch: the messages between the head
    /// and it are missing here. The run before it was dropped.
    Hole {
        /// The head before the hole.
        after: Position,
    },
    /// Another epoch than the head's. The run before it was dropped.
    Epoch {
        /// The head before.
        after: Position,
    },
}

/// What an answer needs of a topic's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Where the topic stands (a subscribe without `since`).
    Head,
    /// Every message after a position (a resume, or a read with `since`).
    Since(Position),
    /// Its newest messages, up to so many (a read without `since`).
    Last(usize),
}

/// What a log can say about the messages after a position.
#[derive(Debug, Clone)]
pub enum Since {
    /// Every message after the position, oldest first (perhaps none).
    Recovered(Vec<Arc<Message>>),
    /// Some of them are no longer kept, or the position is from an epoch
    /// that is gone: nothing is replayed.
    Lost,
}

/// A position this log can never answer for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPosition {
    /// An offset past the head of the same epoch.
    #[error("offset {offset} is past the topic's last offset {head} in epoch {epoch}")]
    Future {
        /// The offset asked for.
        offset: u64,
        /// The head's offset.
        head: u64,
        /// The epoch.
        epoch: Epoch,
    },
    /// An epoch of another topic.
    #[error("epoch {0} is not one of this topic's")]
    OtherTopic(Epoch),
    /// An offset without an epoch (only 0, "nothing yet", has none).
    #[error("offset {0} needs the epoch it belongs to")]
    NoEpoch(u64),
}

/// One topic as this pod knows it.
#[derive(Debug, Default)]
pub struct Log {
    head: Position,
    sequencer: Option<NodeId>,
    /// A leaving sequencer handed the head to this pod: it may go on
    /// numbering the epoch.
    handed: bool,
    /// This pod handed the topic on: it numbers no more of it.
    handed_away: bool,
    run: VecDeque<Arc<Message>>,
    bytes: usize,
    touched: Option<Instant>,
}

impl Log {
    /// Where the topic stands: its epoch and last offset.
    pub fn head(&self) -> Position {
        self.head
    }

    /// The pod that numbered the last message, or was handed the topic.
    pub fn sequencer(&self) -> Option<NodeId> {
        self.sequencer
    }

    /// Bytes of kept messages.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages kept.
    pub fn len(&self) -> usize {
        self.run.len()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.run.is_empty()
    }

    /// When a message was last added.
    pub fn touched(&self) -> Option<Instant> {
        self.touched
    }

    /// The offset the oldest kept message has, if any.
    pub fn first_kept(&self) -> Option<u64> {
        self.run.front().map(|m| m.stamp().offset)
    }

    /// The position `me` numbers the next message at, as the topic's
    /// sequencer: the head's epoch goes on when `me` numbered the head or
    /// was handed it; otherwise (a sequencer that vanished, or nothing
    /// known) a new epoch starts at 1. `None` once `me` handed the topic
    /// on: the draft goes to the successor.
    pub fn next_stamp(&self, topic: &Topic, me: NodeId) -> Option<(Epoch, u64)> {
        if self.handed_away {
            return None;
        }
        Some(match self.head.epoch {
            Some(epoch) if self.sequencer == Some(me) || self.handed => {
                (epoch, self.head.offset + 1)
            }
            _ => loop {
                // A new epoch is never the one the log holds (29 random
                // bits: a repeat is rare, but it would be a fork).
                let epoch = Epoch::new_for(topic);
                if Some(epoch) != self.head.epoch {
                    break (epoch, 1);
                }
            },
        })
    }

    /// Records that a leaving sequencer handed `head` on to `successor`;
    /// `me` is this pod. Only a head of the log's own epoch (or of a log
    /// that knew nothing) that it has not passed is taken. Returns the head
    /// before when the handed one is later (messages up to it were lost on
    /// the way here: its subscribers must be told).
    pub fn hand_over(&mut self, head: Position, successor: NodeId, me: NodeId) -> Option<Position> {
        if self.head.epoch.is_some()
            && (self.head.epoch != head.epoch || self.head.offset > head.offset)
        {
            return None;
        }
        let before = self.head;
        let moved = self.head != head;
        if moved {
            self.drop_run();
            self.head = head;
        }
        self.sequencer = Some(successor);
        self.handed = successor == me;
        (moved && before.epoch.is_some()).then_some(before)
    }

    /// Hands this pod's topic on to `successor`: the head stays, the
    /// successor numbers what follows. Returns the head handed.
    pub fn hand_on(&mut self, successor: NodeId) -> Position {
        self.sequencer = Some(successor);
        self.handed = false;
        self.handed_away = true;
        self.head
    }

    /// Adds `message` (keeping it if `keep`, up to `max_kept` messages) and
    /// says how it fitted.
    pub fn add(
        &mut self,
        message: &Arc<Message>,
        keep: bool,
        max_kept: usize,
        now: Instant,
    ) -> Fit {
        let stamp = message.stamp();
        let fit = match self.head.epoch {
            // A first message past offset 1: what came before it never
            // reached this log.
            None if stamp.offset > 1 => Fit::Hole { after: self.head },
            None => Fit::Next,
            Some(epoch) if epoch == stamp.epoch => {
                if stamp.offset <= self.head.offset {
                    return Fit::Seen;
                }
                if stamp.offset == self.head.offset + 1 {
                    Fit::Next
                } else {
                    Fit::Hole { after: self.head }
                }
            }
            // An epoch of which nothing was numbered (a sequencer chosen
            // while a group formed, then replaced) gives way to a new one
            // from its start: nothing was lost, so nobody is told of a gap.
            Some(_) if self.head.offset == 0 && stamp.offset == 1 => Fit::Next,
            Some(_) => Fit::Epoch { after: self.head },
        };
        if fit != Fit::Next {
            self.drop_run();
        }
        self.head = message.position();
        self.sequencer = Some(stamp.sequencer);
        self.handed = false;
        self.handed_away = false;
        self.touched = Some(now);
        if keep && max_kept > 0 {
            self.bytes += message.footprint();
            self.run.push_back(Arc::clone(message));
            while self.run.len() > max_kept {
                self.pop_oldest();
            }
        }
        fit
    }

    /// Moves the head on to `head` without its messages (they were lost on
    /// the way here; `head` may be of a new epoch): the run is dropped.
    /// Returns the head before, if it moved.
    pub fn skip_to(&mut self, head: Position) -> Option<Position> {
        if head.epoch.is_none()
            || (self.head.epoch == head.epoch && head.offset <= self.head.offset)
        {
            return None;
        }
        let before = self.head;
        self.drop_run();
        self.head = head;
        Some(before)
    }

    /// Takes what a peer keeps of this topic (`head`, its `sequencer`, and
    /// `kept`, the newest messages ending at the head) into a log that
    /// knew nothing of it, or that holds the same epoch: then only the
    /// messages older than its run (and joining it) are added. Returns
    /// the messages added, oldest first.
    pub fn restore(
        &mut self,
        head: Position,
        sequencer: NodeId,
        kept: &[Arc<Message>],
        max_kept: usize,
    ) -> Vec<Arc<Message>> {
        let whole = kept.last().is_some_and(|m| m.position() == head)
            && kept.windows(2).all(|w| {
                w[0].stamp().epoch == w[1].stamp().epoch
                    && w[0].stamp().offset + 1 == w[1].stamp().offset
            });
        if self.head.epoch.is_none() {
            self.head = head;
            self.sequencer = Some(sequencer);
            self.handed = false;
            if !whole {
                return Vec::new();
            }
        } else if self.head.epoch != head.epoch || !whole {
            return Vec::new();
        }
        // The run, if any, starts at `first`; what is added must end right
        // before it (or at the head, for an empty run).
        let first = self.first_kept().unwrap_or(self.head.offset + 1);
        let older: Vec<_> = kept
            .iter()
            .filter(|m| m.stamp().offset < first)
            .cloned()
            .collect();
        if older.last().is_none_or(|m| m.stamp().offset + 1 != first) {
            return Vec::new();
        }
        let room = max_kept.saturating_sub(self.run.len());
        let skip = older.len().saturating_sub(room);
        let added: Vec<_> = older.into_iter().skip(skip).collect();
        for message in added.iter().rev() {
            self.bytes += message.footprint();
            self.run.push_front(Arc::clone(message));
        }
        added
    }

    /// Forgets everything of the topic, then takes what another pod keeps
    /// of it as [`restore`](Self::restore) does for a log that knew
    /// nothing: a log that fell behind (this pod stopped following the
    /// topic) starts over from a fresher one. Returns the messages kept.
    pub fn replace(
        &mut self,
        head: Position,
        sequencer: NodeId,
        kept: &[Arc<Message>],
        max_kept: usize,
    ) -> Vec<Arc<Message>> {
        self.drop_run();
        *self = Self {
            touched: self.touched,
            ..Self::default()
        };
        self.restore(head, sequencer, kept, max_kept)
    }

    /// The newest kept messages, oldest first, up to about `max_bytes` of
    /// them.
    pub fn newest(&self, max_bytes: usize) -> Vec<Arc<Message>> {
        let mut bytes = 0;
        let mut newest: Vec<_> = self
            .run
            .iter()
            .rev()
            .take_while(|message| {
                bytes += message.footprint();
                bytes <= max_bytes
            })
            .cloned()
            .collect();
        newest.reverse();
        newest
    }

    /// Drops kept messages that arrived before `now - max_age`. Returns
    /// how many.
    pub fn expire(&mut self, now: Instant, max_age: Duration) -> usize {
        let mut dropped = 0;
        while self
            .run
            .front()
            .is_some_and(|m| now.saturating_duration_since(m.received()) > max_age)
        {
            self.pop_oldest();
            dropped += 1;
        }
        dropped
    }

    /// Drops the oldest kept message if it has `offset`. Returns whether
    /// it did.
    pub fn evict(&mut self, offset: u64) -> bool {
        if self.first_kept() != Some(offset) {
            return false;
        }
        self.pop_oldest();
        true
    }

    /// Whether this log of `topic` answers `need` as fully as the group
    /// could: it knows the head and, when it `keeps` messages (up to
    /// `max_kept`), holds what is asked for. A log that started after the
    /// topic's first message (this pod started later) may not.
    pub fn answers(&self, topic: &Topic, need: Need, keeps: bool, max_kept: usize) -> bool {
        match need {
            _ if self.head.epoch.is_none() => false,
            Need::Head => true,
            // Nothing more could be kept here.
            _ if !keeps => true,
            Need::Since(since) => !matches!(self.since_at_most(topic, since, 0), Ok(Since::Lost)),
            Need::Last(count) => {
                self.first_kept() == Some(1) || self.run.len() >= count.min(max_kept)
            }
        }
    }

    /// The messages after `since` in `topic` (this log's), or why they
    /// cannot be given.
    pub fn since(&self, topic: &Topic, since: Position) -> Result<Since, BadPosition> {
        self.since_at_most(topic, since, usize::MAX)
    }

    /// The first `limit` messages after `since`, as [`since`](Self::since)
    /// gives them.
    pub fn since_at_most(
        &self,
        topic: &Topic,
        since: Position,
        limit: usize,
    ) -> Result<Since, BadPosition> {
        if let Some(epoch) = since.epoch
            && !epoch.belongs_to(topic)
        {
            return Err(BadPosition::OtherTopic(epoch));
        }
        let Some(epoch) = since.epoch else {
            if since.offset != 0 {
                return Err(BadPosition::NoEpoch(since.offset));
            }
            // "From the start": only if the run still holds offset 1.
            return Ok(match (self.head.offset, self.first_kept()) {
                (0, _) => Since::Recovered(Vec::new()),
                (_, Some(1)) => Since::Recovered(self.run.iter().take(limit).cloned().collect()),
                _ => Since::Lost,
            });
        };
        if self.head.epoch != Some(epoch) {
            return Ok(Since::Lost);
        }
        if since.offset > self.head.offset {
            return Err(BadPosition::Future {
                offset: since.offset,
                head: self.head.offset,
                epoch,
            });
        }
        if since.offset == self.head.offset {
            return Ok(Since::Recovered(Vec::new()));
        }
        match self.first_kept() {
            Some(first) if first <= since.offset + 1 => {
                let skip = (since.offset + 1 - first) as usize;
                Ok(Since::Recovered(
                    self.run.iter().skip(skip).take(limit).cloned().collect(),
                ))
            }
            _ => Ok(Since::Lost),
        }
    }

    /// The last `limit` kept messages, oldest first.
    pub fn last(&self, limit: usize) -> Vec<Arc<Message>> {
        let skip = self.run.len().saturating_sub(limit);
        self.run.iter().skip(skip).cloned().collect()
    }

    fn pop_oldest(&mut self) {
        if let Some(message) = self.run.pop_front() {
            self.bytes -= message.footprint();
        }
    }

    fn drop_run(&mut self) {
        self.run.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Draft, IdGenerator, Message, Stamp};

    const NODE: u64 = 5;

    fn topic() -> Topic {
        Topic::new("t").expect("valid")
    }

    fn new_epoch() -> Epoch {
        Epoch::new_for(&topic())
    }

    fn message(epoch: Epoch, offset: u64) -> Arc<Message> {
        let node: NodeId = format!("{NODE:x}").parse().expect("node id");
        let id = IdGenerator::new(node).next_id();
        let draft = Draft::new(id, topic(), bytes::Bytes::from_static(b"1"), node);
        Arc::new(Message::new(
            draft,
            Stamp {
                epoch,
                offset,
                sequencer: node,
            },
        ))
    }

    fn offsets(since: Since) -> Option<Vec<u64>> {
        match since {
            Since::Recovered(messages) => Some(messages.iter().map(|m| m.stamp().offset).collect()),
            Since::Lost => None,
        }
    }

    fn filled(epoch: Epoch, upto: u64, max_kept: usize) -> Log {
        let mut log = Log::default();
        for offset in 1..=upto {
            log.add(&message(epoch, offset), true, max_kept, Instant::now());
        }
        log
    }

    #[test]
    fn a_log_that_started_mid_topic_answers_only_for_what_it_holds() {
        let (topic, epoch) = (topic(), new_epoch());
        let mut late = Log::default();
        for offset in 6..=7 {
            late.add(&message(epoch, offset), true, 100, Instant::now());
        }
        let answers = |log: &Log, need, keeps| log.answers(&topic, need, keeps, 100);
        assert!(answers(&late, Need::Head, true));
        assert!(answers(&late, Need::Last(2), true));
        assert!(!answers(&late, Need::Last(10), true), "1 to 5 are missing");
        assert!(
            answers(&late, Need::Last(10), false),
            "history off: nothing to gain"
        );
        assert!(!answers(&late, Need::Since(Position::at(epoch, 3)), true));
        assert!(answers(&late, Need::Since(Position::at(epoch, 6)), true));
        // A log from the topic's start answers any count.
        assert!(answers(&filled(epoch, 3, 100), Need::Last(10), true));
        assert!(!answers(&Log::default(), Need::Head, true), "knows nothing");
    }

    #[test]
    fn messages_in_order_are_kept_up_to_the_count_and_give_the_head() {
        let epoch = new_epoch();
        let log = filled(epoch, 10, 4);
        assert_eq!(log.head(), Position::at(epoch, 10));
        assert_eq!(log.len(), 4);
        assert_eq!(log.first_kept(), Some(7));
    }

    #[test]
    fn a_position_still_kept_gets_exactly_the_messages_after_it() {
        let epoch = new_epoch();
        let log = filled(epoch, 10, 4);
        let since = |offset| {
            offsets(
                log.since(&topic(), Position::at(epoch, offset))
                    .expect("valid"),
            )
        };
        assert_eq!(since(6), Some(vec![7, 8, 9, 10]));
        assert_eq!(since(8), Some(vec![9, 10]));
        assert_eq!(since(10), Some(vec![]));
        assert_eq!(since(5), None, "offset 6 is no longer kept");
    }

    #[test]
    fn a_position_from_another_epoch_is_lost_and_a_future_one_is_an_error() {
        let epoch = new_epoch();
        let log = filled(epoch, 3, 10);
        let other = new_epoch();
        assert!(matches!(
            log.since(&topic(), Position::at(other, 2)),
            Ok(Since::Lost)
        ));
        assert!(matches!(
            log.since(&topic(), Position::at(epoch, 4)),
            Err(BadPosition::Future {
                offset: 4,
                head: 3,
                ..
            })
        ));
        assert!(matches!(
            log.since(
                &topic(),
                Position {
                    epoch: None,
                    offset: 2
                }
            ),
            Err(BadPosition::NoEpoch(2))
        ));
    }

    #[test]
    fn from_the_start_is_recovered_only_while_offset_one_is_kept() {
        let epoch = new_epoch();
        let start = Position::default();
        assert_eq!(
            offsets(Log::default().since(&topic(), start).expect("valid")),
            Some(vec![])
        );
        assert_eq!(
            offsets(filled(epoch, 3, 10).since(&topic(), start).expect("valid")),
            Some(vec![1, 2, 3])
        );
        assert_eq!(
            offsets(filled(epoch, 3, 2).since(&topic(), start).expect("valid")),
            None
        );
    }

    #[test]
    fn an_epoch_of_another_topic_is_an_error() {
        let log = filled(new_epoch(), 3, 10);
        let theirs = Epoch::new_for(&Topic::new("other").expect("valid"));
        assert!(matches!(
            log.since(&topic(), Position::at(theirs, 1)),
            Err(BadPosition::OtherTopic(_))
        ));
    }

    #[test]
    fn a_duplicate_is_seen_and_not_kept_twice() {
        let epoch = new_epoch();
        let mut log = filled(epoch, 3, 10);
        assert_eq!(
            log.add(&message(epoch, 2), true, 10, Instant::now()),
            Fit::Seen
        );
        assert_eq!(log.len(), 3);
        assert_eq!(log.head().offset, 3);
    }

    #[test]
    fn a_hole_drops_the_run_so_no_resume_crosses_it() {
        let epoch = new_epoch();
        let mut log = filled(epoch, 3, 10);
        assert_eq!(
            log.add(&message(epoch, 6), true, 10, Instant::now()),
            Fit::Hole {
                after: Position::at(epoch, 3)
            }
        );
        assert_eq!(log.head(), Position::at(epoch, 6));
        assert_eq!(
            offsets(log.since(&topic(), Position::at(epoch, 2)).expect("valid")),
            None
        );
        assert_eq!(
            offsets(log.since(&topic(), Position::at(epoch, 5)).expect("valid")),
            Some(vec![6])
        );
    }

    #[test]
    fn a_new_epoch_after_one_that_numbered_nothing_follows_on_without_a_gap() {
        let (empty, new) = (new_epoch(), new_epoch());
        let mut log = Log::default();
        log.restore(Position::at(empty, 0), NodeId::random(), &[], 10);
        assert_eq!(
            log.add(&message(new, 1), true, 10, Instant::now()),
            Fit::Next
        );
        assert_eq!(log.head(), Position::at(new, 1));
        // Past its first message the new epoch is a hole as ever.
        let mut log = Log::default();
        log.restore(Position::at(empty, 0), NodeId::random(), &[], 10);
        assert_eq!(
            log.add(&message(new, 2), true, 10, Instant::now()),
            Fit::Epoch {
                after: Position::at(empty, 0)
            }
        );
    }

    #[test]
    fn a_new_epoch_replaces_the_run() {
        let old = new_epoch();
        let new = new_epoch();
        let mut log = filled(old, 3, 10);
        assert_eq!(
            log.add(&message(new, 1), true, 10, Instant::now()),
            Fit::Epoch {
                after: Position::at(old, 3)
            }
        );
        assert_eq!(log.len(), 1);
        assert!(matches!(
            log.since(&topic(), Position::at(old, 3)),
            Ok(Since::Lost)
        ));
    }

    #[test]
    fn the_sequencer_goes_on_with_its_epoch_and_anyone_else_starts_a_new_one() {
        let epoch = new_epoch();
        let log = filled(epoch, 3, 10);
        let numbering: NodeId = format!("{NODE:x}").parse().expect("node id");
        assert_eq!(
            log.next_stamp(&topic(), numbering).expect("not handed on"),
            (epoch, 4)
        );
        let (other, offset) = log
            .next_stamp(&topic(), NodeId::random())
            .expect("not handed on");
        assert_ne!(other, epoch);
        assert_eq!(offset, 1);
    }

    #[test]
    fn a_handed_over_head_lets_its_successor_go_on_with_the_epoch() {
        let epoch = new_epoch();
        let mut log = filled(epoch, 3, 10);
        let me = NodeId::random();
        log.hand_over(Position::at(epoch, 3), me, me);
        assert_eq!(log.next_stamp(&topic(), me), Some((epoch, 4)));
        assert_eq!(log.len(), 3, "the run up to the handed head stays");

        let mut behind = filled(epoch, 2, 10);
        behind.hand_over(Position::at(epoch, 3), me, me);
        assert_eq!(behind.next_stamp(&topic(), me), Some((epoch, 4)));
        assert!(
            behind.is_empty(),
            "a run that misses the handed head is dropped"
        );
    }

    #[test]
    fn a_topic_handed_on_is_numbered_no_more_here() {
        let epoch = new_epoch();
        let mut log = filled(epoch, 3, 10);
        let numbering: NodeId = format!("{NODE:x}").parse().expect("node id");
        let successor = NodeId::random();
        assert_eq!(log.hand_on(successor), Position::at(epoch, 3));
        assert_eq!(log.next_stamp(&topic(), numbering), None);
        assert_eq!(log.sequencer(), Some(successor));
    }

    #[test]
    fn unkept_messages_still_move_the_head() {
        let epoch = new_epoch();
        let mut log = Log::default();
        log.add(&message(epoch, 1), false, 10, Instant::now());
        assert_eq!(log.head(), Position::at(epoch, 1));
        assert!(log.is_empty());
        assert!(matches!(
            log.since(&topic(), Position::at(epoch, 0)),
            Ok(Since::Lost)
        ));
        assert_eq!(
            offsets(log.since(&topic(), Position::at(epoch, 1)).expect("valid")),
            Some(vec![])
        );
    }

    #[test]
    fn a_restore_fills_an_empty_log_or_joins_the_run_from_before() {
        let epoch = new_epoch();
        let node = NodeId::random();
        let theirs: Vec<_> = (1..=6).map(|o| message(epoch, o)).collect();
        let mut empty = Log::default();
        assert_eq!(
            empty
                .restore(Position::at(epoch, 6), node, &theirs, 10)
                .len(),
            6
        );
        assert_eq!(empty.sequencer(), Some(node));
        assert_eq!(
            offsets(
                empty
                    .since(&topic(), Position::at(epoch, 0))
                    .expect("valid")
            ),
            Some((1..=6).collect())
        );

        // Live messages 5 and 6 arrived first: 1 to 4 join before them.
        let mut live = Log::default();
        live.add(&theirs[4], true, 10, Instant::now());
        live.add(&theirs[5], true, 10, Instant::now());
        assert_eq!(
            live.restore(Position::at(epoch, 6), node, &theirs, 10)
                .len(),
            4
        );
        assert_eq!(live.len(), 6);
        assert_eq!(
            offsets(live.since(&topic(), Position::at(epoch, 2)).expect("valid")),
            Some(vec![3, 4, 5, 6])
        );

        // Nothing that does not join the run, or of another epoch.
        let mut ahead = Log::default();
        ahead.add(&message(epoch, 9), true, 10, Instant::now());
        assert!(
            ahead
                .restore(Position::at(epoch, 6), node, &theirs, 10)
                .is_empty()
        );
        let mut other = filled(new_epoch(), 2, 10);
        assert!(
            other
                .restore(Position::at(epoch, 6), node, &theirs, 10)
                .is_empty()
        );
        let holey = [theirs[0].clone(), theirs[2].clone()];
        assert!(
            Log::default()
                .restore(Position::at(epoch, 3), node, &holey, 10)
                .is_empty()
        );
    }

    #[test]
    fn skipping_to_a_head_of_a_new_epoch_moves_to_it() {
        let (old, new) = (new_epoch(), new_epoch());
        let mut log = filled(old, 3, 10);
        assert_eq!(
            log.skip_to(Position::at(new, 2)),
            Some(Position::at(old, 3))
        );
        assert_eq!(
            log.add(&message(new, 3), true, 10, Instant::now()),
            Fit::Next
        );
    }

    #[test]
    fn a_first_message_past_offset_one_is_a_hole() {
        let mut log = Log::default();
        assert_eq!(
            log.add(&message(new_epoch(), 5), true, 10, Instant::now()),
            Fit::Hole {
                after: Position::default()
            }
        );
    }

    #[test]
    fn skipping_to_a_later_head_drops_the_run_and_nothing_else_moves_it() {
        let epoch = new_epoch();
        let mut log = filled(epoch, 3, 10);
        assert_eq!(log.skip_to(Position::at(epoch, 3)), None);
        assert_eq!(log.skip_to(Position::default()), None);
        assert_eq!(
            log.skip_to(Position::at(epoch, 7)),
            Some(Position::at(epoch, 3))
        );
        assert_eq!(log.head(), Position::at(epoch, 7));
        assert!(log.is_empty());
        assert_eq!(
            log.add(&message(epoch, 8), true, 10, Instant::now()),
            Fit::Next
        );
    }

    #[test]
    fn old_messages_expire_and_bytes_follow() {
        let epoch = new_epoch();
        let mut log = filled(epoch, 3, 10);
        assert!(log.bytes() > 0);
        let later = Instant::now() + Duration::from_secs(10);
        assert_eq!(log.expire(later, Duration::from_secs(1)), 3);
        assert_eq!(log.bytes(), 0);
        assert_eq!(log.head().offset, 3, "the head stays known");
    }
}
