//! One session's subscriptions, bounded, and left when the session ends.
//! Every change is told to the hub's change feed.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Change, Hub, Options, Outgoing, Pending, Sender, Who};
use crate::message::Position;
use crate::topic::Topic;

/// A session's subscriptions. Dropping it unsubscribes from every topic, so
/// a session that ends for any reason leaves nothing behind in the hub.
pub struct Membership {
    hub: Hub,
    sender: Sender,
    who: Arc<Who>,
    topics: HashMap<Topic, Options>,
    limit: usize,
}

/// The session already holds as many subscriptions as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this connection already holds {limit} subscriptions, the most allowed")]
pub struct TooManySubscriptions {
    /// The limit that was hit.
    pub limit: usize,
}

impl Membership {
    pub(super) fn new(hub: Hub, sender: Sender, who: Who, limit: usize) -> Self {
        Self {
            hub,
            sender,
            who: Arc::new(who),
            topics: HashMap::new(),
            limit,
        }
    }

    /// Subscribes to `topic`. `Ok(false)` if already subscribed (idempotent).
    pub fn subscribe(&mut self, topic: Topic) -> Result<bool, TooManySubscriptions> {
        self.subscribe_with(topic, Options::default())
    }

    /// Subscribes to `topic` with `options`. `Ok(false)` if already
    /// subscribed; with other options than before, they replace them.
    pub fn subscribe_with(
        &mut self,
        topic: Topic,
        options: Options,
    ) -> Result<bool, TooManySubscriptions> {
        if let Some(held) = self.topics.get_mut(&topic) {
            if *held != options {
                *held = options;
                self.tell_subscribed(&topic, options);
            }
            return Ok(false);
        }
        if self.topics.len() >= self.limit {
            return Err(TooManySubscriptions { limit: self.limit });
        }
        self.hub.insert(&topic, &self.sender);
        self.tell_subscribed(&topic, options);
        self.topics.insert(topic, options);
        Ok(true)
    }

    fn tell_subscribed(&self, topic: &Topic, options: Options) {
        self.hub.tell(Change::Subscribed {
            topic,
            session: &self.sender,
            who: &self.who,
            options,
        });
    }

    /// Unsubscribes from `topic`. False if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &Topic) -> bool {
        let left = self.topics.remove(topic).is_some() && self.hub.remove(topic, self.sender.id());
        // After leaving the hub: no offer can put it behind again.
        self.sender.forget(topic);
        if left {
            self.tell_unsubscribed(topic);
        }
        left
    }

    fn tell_unsubscribed(&self, topic: &Topic) {
        self.hub.tell(Change::Unsubscribed {
            topic,
            session: self.sender.id(),
        });
    }

    /// The hub's end of the session's mailbox.
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The topics the session is behind on and has room to catch up on
    /// now, with where it stands on each.
    pub fn behind(&self) -> Vec<(Topic, Position)> {
        let mut behind = self.sender.catching_up();
        behind.retain(|(topic, _)| {
            let held = self.topics.contains_key(topic);
            if !held {
                self.sender.forget(topic);
            }
            held
        });
        behind
    }

    /// Most messages one catch-up step may queue for one topic.
    pub fn catch_up_room(&self) -> usize {
        self.sender.catch_up_room()
    }

    /// Queues `items` read from `topic`'s history; the session now stands
    /// at `at`, or (`done`) is live on the topic again.
    pub fn catch_up(
        &self,
        topic: &Topic,
        items: Vec<Outgoing>,
        at: Position,
        done: bool,
        pending: &mut Pending,
    ) {
        pending.record_own(&self.sender, self.sender.caught_up(topic, items, at, done));
    }

    /// Queues the session's own frames (replies, a replay), in order after
    /// whatever is queued for it; the writes are left in `pending`.
    pub fn push(&self, items: impl IntoIterator<Item = Outgoing>, pending: &mut Pending) {
        pending.record_own(&self.sender, self.sender.push(items));
    }

    /// The topics subscribed.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.topics.keys()
    }

    /// The number of topics subscribed.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// Whether no topic is subscribed.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let topics: Vec<Topic> = self.topics.drain().map(|(topic, _)| topic).collect();
        for topic in &topics {
            self.hub.remove(topic, self.sender.id());
            self.tell_unsubscribed(topic);
        }
        self.hub.tell(Change::Closed {
            session: self.sender.id(),
        });
    }
}
