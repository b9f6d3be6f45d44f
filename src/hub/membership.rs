//! One session's subscriptions, bounded, and left when the session ends.

use std::collections::HashSet;

use super::{Hub, Outgoing, Pending, Sender};
use crate::topic::Topic;

/// A session's subscriptions. Dropping it unsubscribes from every topic, so
/// a session that ends for any reason leaves nothing behind in the hub.
pub struct Membership {
    hub: Hub,
    sender: Sender,
    topics: HashSet<Topic>,
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
    pub(super) fn new(hub: Hub, sender: Sender, limit: usize) -> Self {
        Self {
            hub,
            sender,
            topics: HashSet::new(),
            limit,
        }
    }

    /// Subscribes to `topic`. `Ok(false)` if already subscribed (idempotent).
    pub fn subscribe(&mut self, topic: Topic) -> Result<bool, TooManySubscriptions> {
        if self.topics.contains(&topic) {
            return Ok(false);
        }
        if self.topics.len() >= self.limit {
            return Err(TooManySubscriptions { limit: self.limit });
        }
        self.hub.insert(&topic, &self.sender);
        self.topics.insert(topic);
        Ok(true)
    }

    /// Unsubscribes from `topic`. False if it was not subscribed.
    pub fn unsubscribe(&mut self, topic: &Topic) -> bool {
        self.topics.remove(topic) && self.hub.remove(topic, self.sender.id())
    }

    /// Queues the session's own frames (replies, a replay), in order after
    /// whatever is queued for it; the writes are left in `pending`.
    pub fn push(&self, items: impl IntoIterator<Item = Outgoing>, pending: &mut Pending) {
        pending.record_own(&self.sender, self.sender.push(items));
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
        for topic in self.topics.drain() {
            self.hub.remove(&topic, self.sender.id());
        }
    }
}
