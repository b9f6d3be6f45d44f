//! A session's bounded inbox and the slow-client policy.
//!
//! Each session owns one [`Mailbox`] of shared messages (an `Arc` each, so
//! queueing one for a thousand sessions copies nothing); the hub holds the matching [`Sender`]
//! in every topic the session subscribes to. Delivery never waits: when a
//! mailbox is full, the session is behind by a whole queue and is marked
//! *slow*: the message is dropped for it, its session is told to close (the
//! WebSocket gateway uses close code 1013, "try again later") and the hub
//! counts one slow-client disconnect. Its other subscribers are not delayed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::message::Message;
use tokio_util::sync::CancellationToken;

/// Identifies one session within a hub.
pub type SessionId = u64;

/// The hub's end of a mailbox. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Sender {
    id: SessionId,
    tx: mpsc::Sender<Arc<Message>>,
    slow: CancellationToken,
}

/// What happened to one offered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the session.
    Queued,
    /// The queue was full: the session has just been marked slow.
    MarkedSlow,
    /// The session is already slow or gone; the frame was dropped.
    Dropped,
}

impl Sender {
    /// The session this mailbox belongs to.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Offers `message` without waiting, applying the slow-client policy.
    pub fn offer(&self, message: &Arc<Message>) -> Offer {
        match self.tx.try_send(message.clone()) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) if !self.slow.is_cancelled() => {
                self.slow.cancel();
                Offer::MarkedSlow
            }
            Err(_) => Offer::Dropped,
        }
    }
}

/// The session's end of a mailbox: frames to write, and the signal that the
/// session fell behind.
#[derive(Debug)]
pub struct Mailbox {
    rx: mpsc::Receiver<Arc<Message>>,
    slow: CancellationToken,
}

impl Mailbox {
    /// Waits for the next frame. `None` once the session is marked slow
    /// (stop writing and close) or every sender is gone. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Arc<Message>> {
        tokio::select! {
            biased;
            () = self.slow.cancelled() => None,
            frame = self.rx.recv() => frame,
        }
    }

    /// Takes a frame that is already queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Arc<Message>> {
        self.rx.try_recv().ok()
    }

    /// Resolves once the session has been marked slow. Cancel-safe.
    pub async fn slow(&self) {
        self.slow.cancelled().await;
    }

    /// Whether the session has been marked slow.
    pub fn is_slow(&self) -> bool {
        self.slow.is_cancelled()
    }
}

/// Makes a mailbox holding at most `capacity` frames for session `id`.
pub(super) fn channel(id: SessionId, capacity: usize) -> (Sender, Mailbox) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let slow = CancellationToken::new();
    (
        Sender {
            id,
            tx,
            slow: slow.clone(),
        },
        Mailbox { rx, slow },
    )
}

/// Hands out session ids unique within one hub.
#[derive(Debug, Default)]
pub(super) struct SessionIds(AtomicU64);

impl SessionIds {
    pub(super) fn next(&self) -> SessionId {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::message::{IdGenerator, NodeId};
    use crate::topic::Topic;

    fn message() -> Arc<Message> {
        let node = NodeId::random();
        let topic = Topic::new("t").expect("valid topic");
        let id = IdGenerator::new(node).next_id();
        Arc::new(Message::new(id, topic, Bytes::from_static(b"{}"), node))
    }

    #[tokio::test]
    async fn a_full_mailbox_marks_the_session_slow_once_and_drops_the_rest() {
        let (tx, mut mailbox) = channel(7, 2);
        let frame = message();
        assert_eq!(tx.offer(&frame), Offer::Queued);
        assert_eq!(tx.offer(&frame), Offer::Queued);
        assert!(!mailbox.is_slow());
        assert_eq!(tx.offer(&frame), Offer::MarkedSlow);
        assert_eq!(tx.offer(&frame), Offer::Dropped);
        assert!(mailbox.is_slow());
        mailbox.slow().await;
        assert!(
            mailbox.recv().await.is_none(),
            "a slow session stops receiving"
        );
        assert!(mailbox.try_recv().is_some_and(|m| Arc::ptr_eq(&m, &frame)));
    }

    #[test]
    fn offering_to_a_closed_mailbox_drops_quietly() {
        let (tx, mailbox) = channel(1, 4);
        drop(mailbox);
        assert_eq!(tx.offer(&message()), Offer::Dropped);
    }
}
