//! The hub's change feed: who subscribed to which topic, who left it, which
//! session closed. Features that follow the registry (presence now,
//! interest-based routing later) [`watch`](super::Hub::watch) it instead of
//! reaching into the transports.
//!
//! Changes are told synchronously, on the thread that made them, after the
//! registry changed and before the call that made them returns, in the
//! order one session made them. A watcher must be quick and must not call
//! back into the hub's subscribe path (it may offer frames). With no
//! watcher the feed costs one atomic load per change.

use std::sync::Arc;

use super::{Sender, SessionId};
use crate::topic::Topic;

/// Whom a session belongs to, as the gateway authenticated it: told with
/// each of its subscriptions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    /// The user (`sub`); `None` without authentication.
    pub sub: Option<Arc<str>>,
    /// A small JSON value about the user from their token, compact.
    pub info: Option<Arc<str>>,
}

/// How a session subscribes to a topic, beyond receiving its messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    /// The session wants `join`/`leave` events of the topic's presence.
    pub join_leave: bool,
}

/// One change of the registry.
#[derive(Clone, Copy)]
pub enum Change<'a> {
    /// `session` subscribed to `topic`, or subscribed again with other
    /// `options`.
    Subscribed {
        /// The topic.
        topic: &'a Topic,
        /// The session's end of its mailbox, to send it frames of the topic.
        session: &'a Sender,
        /// Whom the session belongs to.
        who: &'a Who,
        /// How it subscribed.
        options: Options,
    },
    /// `session` left `topic`.
    Unsubscribed {
        /// The topic.
        topic: &'a Topic,
        /// The session.
        session: SessionId,
    },
    /// `session` ended; its `Unsubscribed` changes were told before.
    Closed {
        /// The session.
        session: SessionId,
    },
}

/// Something that follows the registry's changes.
pub trait Watch: Send + Sync {
    /// Takes one change. Called on the thread that made it.
    fn changed(&self, change: Change<'_>);
}
