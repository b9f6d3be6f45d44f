//! The local topic registry: which sessions on this pod listen to which
//! topic, and the fan-out of one message to all of them.
//!
//! The hub knows no peers and no protocol: the WebSocket gateway joins
//! sessions to it, each with a [`Wire`] to write frames to; the publish path
//! and the cluster hand it messages.
//!
//! Concurrency: topics are spread over [`SHARDS`] shards, each a std
//! `RwLock<HashMap>`. Delivery takes one shard's read lock and only does
//! non-blocking queue offers under it, so publishes to any topics run in
//! parallel; subscribe and unsubscribe take the write lock of one shard for
//! one map operation. The sessions a delivery claimed are written to after
//! the lock is released, without waiting for any socket, split over tasks
//! of [`WRITES_PER_TASK`] when there are many; those the write delay holds
//! back are written by the hub's one flusher task when it lets them go.
//! How long the delay is — fixed, or following how late batches of writes
//! start — is the hub's [`Pacing`].
//!
//! Whatever follows who is subscribed where (presence) [`watch`](Hub::watch)es
//! the hub's change [`feed`](Change).

mod feed;
mod flusher;
mod mailbox;
mod membership;
mod pacing;

pub use feed::{Change, Options, Watch, Who};
pub use flusher::WRITES_PER_TASK;
pub use mailbox::{COALESCE_BYTES, Mailbox, Offer, Outgoing, Sender, SessionId, Wire, Written};
pub use membership::{Membership, TooManySubscriptions};
pub use pacing::{AUTO_MAX, BadWriteDelay, Pacing, WriteDelay};

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::message::Message;
use crate::topic::Topic;
use flusher::Flusher;

/// Number of registry shards. A power of two well above the core count keeps
/// two publishes to different topics from meeting on one lock.
pub const SHARDS: usize = 64;

type Subscribers = HashMap<SessionId, Sender>;

/// A handle to the registry. Clones share it.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[RwLock<HashMap<Topic, Subscribers>>]>,
    hasher: RandomState,
    sessions: mailbox::SessionIds,
    stats: HubStats,
    flusher: Arc<Flusher>,
    pacing: Arc<Pacing>,
    /// Who follows the change feed; swapped whole when one is added.
    watchers: ArcSwap<Vec<Arc<dyn Watch>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flusher.close();
    }
}

/// Counters the hub keeps on its hot path; read by metrics at scrape time.
#[derive(Debug, Default)]
pub struct HubStats {
    delivered: AtomicU64,
    dropped: AtomicU64,
    slow_disconnects: AtomicU64,
    behind: AtomicU64,
    subscriptions: AtomicU64,
    topics: AtomicU64,
}

impl HubStats {
    /// Frames queued to sessions since start.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Messages not queued for a session because it was behind (its queue
    /// full, or already marked slow) since start.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages not queued for a session behind on their topic, to be read
    /// from history as it catches up, since start.
    pub fn behind(&self) -> u64 {
        self.behind.load(Ordering::Relaxed)
    }

    /// Sessions marked slow (queue full) since start.
    pub fn slow_disconnects(&self) -> u64 {
        self.slow_disconnects.load(Ordering::Relaxed)
    }

    /// Current (topic, session) subscriptions.
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Current topics with at least one subscriber.
    pub fn topics(&self) -> u64 {
        self.topics.load(Ordering::Relaxed)
    }
}

/// The outcome of delivering one message on this pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Sessions the frame was queued for.
    pub queued: usize,
    /// Sessions that fell behind with this message and will be closed.
    pub marked_slow: usize,
    /// Sessions that were already behind and missed this message.
    pub dropped: usize,
    /// Sessions behind on the topic, which read this message from history
    /// when they catch up.
    pub behind: usize,
}

/// Offers made but not yet written out: the sessions claimed or deferred,
/// and what the offers came to. Hand it to [`Hub::write_out`].
#[derive(Default)]
pub struct Pending {
    claimed: Vec<Sender>,
    held: Vec<(Instant, Sender)>,
    delivery: Delivery,
}

impl Pending {
    /// Books a write the session's own frames need (they are not counted
    /// as delivered messages).
    pub fn record_own(&mut self, sender: &Sender, offer: Offer) {
        match offer {
            Offer::Claimed => self.claimed.push(sender.clone()),
            Offer::Deferred(until) => self.held.push((until, sender.clone())),
            Offer::Queued | Offer::MarkedSlow | Offer::Dropped | Offer::Behind => {}
        }
    }

    /// Books `count` messages a session behind on their topic will never
    /// get (it was told with a `gap`): counted as dropped.
    pub fn missed(&mut self, count: u64) {
        self.delivery.dropped += usize::try_from(count).unwrap_or(usize::MAX);
    }

    /// Books what one offer to `sender` did.
    pub fn record(&mut self, sender: &Sender, offer: Offer) {
        let delivery = &mut self.delivery;
        match offer {
            Offer::Queued => delivery.queued += 1,
            Offer::Claimed => {
                delivery.queued += 1;
                self.claimed.push(sender.clone());
            }
            Offer::Deferred(until) => {
                delivery.queued += 1;
                self.held.push((until, sender.clone()));
            }
            Offer::MarkedSlow => delivery.marked_slow += 1,
            Offer::Dropped => delivery.dropped += 1,
            Offer::Behind => delivery.behind += 1,
        }
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty registry whose sessions write without delay.
    pub fn new() -> Self {
        Self::with_write_delay(WriteDelay::default())
    }

    /// An empty registry whose wired sessions are paced by `write_delay`.
    pub fn with_write_delay(write_delay: WriteDelay) -> Self {
        let shards = (0..SHARDS).map(|_| RwLock::default()).collect();
        let pacing = Arc::new(Pacing::new(write_delay));
        Self {
            inner: Arc::new(Inner {
                shards,
                hasher: RandomState::new(),
                sessions: mailbox::SessionIds::default(),
                stats: HubStats::default(),
                flusher: Arc::new(Flusher::new(Arc::clone(&pacing))),
                pacing,
                watchers: ArcSwap::default(),
            }),
        }
    }

    /// Opens a session that writes its messages itself: its membership
    /// (what it subscribes to, at most `max_subscriptions` topics) and its
    /// mailbox of `queue_capacity` messages.
    pub fn join(&self, queue_capacity: usize, max_subscriptions: usize) -> (Membership, Mailbox) {
        self.open(None, Who::default(), queue_capacity, max_subscriptions)
    }

    /// Opens a session of `who` whose messages delivering threads write
    /// straight to `wire` while it keeps up (see [`mailbox`](Mailbox)), as
    /// the hub's [`pacing`](Self::pacing) lets them.
    pub fn join_wired(
        &self,
        wire: Arc<dyn Wire>,
        who: Who,
        queue_capacity: usize,
        max_subscriptions: usize,
    ) -> (Membership, Mailbox) {
        self.open(Some(wire), who, queue_capacity, max_subscriptions)
    }

    /// Adds `watcher` to the change feed: it is told every change made
    /// from now on.
    pub fn watch(&self, watcher: Arc<dyn Watch>) {
        self.inner.watchers.rcu(|watchers| {
            let mut watchers = Vec::clone(watchers);
            watchers.push(Arc::clone(&watcher));
            watchers
        });
    }

    /// Tells the change feed.
    fn tell(&self, change: Change<'_>) {
        let watchers = self.inner.watchers.load();
        for watcher in watchers.iter() {
            watcher.changed(change);
        }
    }

    /// The write delay of this hub's wired sessions, and what it is now.
    pub fn pacing(&self) -> &Pacing {
        &self.inner.pacing
    }

    fn open(
        &self,
        wire: Option<Arc<dyn Wire>>,
        who: Who,
        queue_capacity: usize,
        max_subscriptions: usize,
    ) -> (Membership, Mailbox) {
        let id = self.inner.sessions.next();
        let pacing = Arc::clone(&self.inner.pacing);
        let (sender, mailbox) = mailbox::channel(id, queue_capacity, wire, pacing);
        (
            Membership::new(self.clone(), sender, who, max_subscriptions),
            mailbox,
        )
    }

    /// Queues `message` for every local subscriber of its topic, then
    /// writes it to the sessions that were idle (see [`mailbox`](Mailbox)
    /// for who writes, and the slow-client policy). Never waits for a
    /// socket.
    pub fn deliver(&self, message: &Arc<Message>) -> Delivery {
        self.deliver_all(std::slice::from_ref(message))
    }

    /// Delivers `messages` in order, like [`deliver`](Self::deliver), but
    /// queues them all before writing: a session that several of them are
    /// for receives them in one frame.
    pub fn deliver_all(&self, messages: &[Arc<Message>]) -> Delivery {
        let mut pending = Pending::default();
        for message in messages {
            self.offer(message, &mut pending);
        }
        self.write_out(pending)
    }

    /// Queues `message` for every local subscriber of its topic, leaving
    /// the writes in `pending` for [`write_out`](Self::write_out): callers
    /// that must queue under a lock of their own (a topic's order) write
    /// after releasing it.
    pub fn offer(&self, message: &Arc<Message>, pending: &mut Pending) {
        self.offer_item(
            message.topic(),
            &Outgoing::Message(Arc::clone(message)),
            pending,
        );
    }

    /// Queues a frame of the topic's own (an event) for every local
    /// subscriber of `topic`, in its place among the topic's messages.
    pub fn offer_event(&self, topic: &Topic, frame: impl Into<Outgoing>, pending: &mut Pending) {
        self.offer_item(topic, &frame.into(), pending);
    }

    fn offer_item(&self, topic: &Topic, item: &Outgoing, pending: &mut Pending) {
        let shard = self.read(topic);
        let Some(subscribers) = shard.get(topic) else {
            return;
        };
        for sender in subscribers.values() {
            pending.record(sender, sender.offer_in(topic, item));
        }
    }

    /// Writes out the sessions `pending` claimed, holds the deferred ones,
    /// and counts what was delivered.
    pub fn write_out(&self, pending: Pending) -> Delivery {
        let Pending {
            claimed,
            held,
            delivery,
        } = pending;
        self.inner.flusher.write_out(claimed);
        self.inner.flusher.hold(held);
        let stats = &self.inner.stats;
        stats
            .delivered
            .fetch_add(delivery.queued as u64, Ordering::Relaxed);
        if delivery.behind > 0 {
            stats
                .behind
                .fetch_add(delivery.behind as u64, Ordering::Relaxed);
        }
        if delivery.marked_slow + delivery.dropped > 0 {
            stats
                .slow_disconnects
                .fetch_add(delivery.marked_slow as u64, Ordering::Relaxed);
            stats.dropped.fetch_add(
                (delivery.marked_slow + delivery.dropped) as u64,
                Ordering::Relaxed,
            );
        }
        delivery
    }

    /// The hub's counters.
    pub fn stats(&self) -> &HubStats {
        &self.inner.stats
    }

    /// Adds `sender` to `topic`. Returns false if it was there already.
    fn insert(&self, topic: &Topic, sender: &Sender) -> bool {
        let mut shard = self.write(topic);
        let subscribers = shard.entry(topic.clone()).or_insert_with(|| {
            self.inner.stats.topics.fetch_add(1, Ordering::Relaxed);
            HashMap::new()
        });
        let added = subscribers.insert(sender.id(), sender.clone()).is_none();
        if added {
            self.inner
                .stats
                .subscriptions
                .fetch_add(1, Ordering::Relaxed);
        }
        added
    }

    /// Removes session `id` from `topic`. Returns false if it was not there.
    fn remove(&self, topic: &Topic, id: SessionId) -> bool {
        let mut shard = self.write(topic);
        let Some(subscribers) = shard.get_mut(topic) else {
            return false;
        };
        let removed = subscribers.remove(&id).is_some();
        if removed {
            self.inner
                .stats
                .subscriptions
                .fetch_sub(1, Ordering::Relaxed);
        }
        if subscribers.is_empty() {
            shard.remove(topic);
            self.inner.stats.topics.fetch_sub(1, Ordering::Relaxed);
        }
        removed
    }

    /// Whether any session on this pod is subscribed to `topic`.
    pub fn has_subscribers(&self, topic: &Topic) -> bool {
        self.read(topic).contains_key(topic)
    }

    fn shard(&self, topic: &Topic) -> &RwLock<HashMap<Topic, Subscribers>> {
        let hash = self.inner.hasher.hash_one(topic);
        &self.inner.shards[hash as usize % SHARDS]
    }

    // NB: a poisoned shard only means another thread panicked while holding
    // it; the map itself is still consistent (every write is one map call),
    // so delivery carries on rather than taking the pod down.
    fn read(&self, topic: &Topic) -> RwLockReadGuard<'_, HashMap<Topic, Subscribers>> {
        self.shard(topic)
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self, topic: &Topic) -> RwLockWriteGuard<'_, HashMap<Topic, Subscribers>> {
        self.shard(topic)
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::message::sample;

    /// Stands for the id generator tests used to pass around.
    struct Ids;

    fn message(_: &Ids, topic: &str, data: &'static str) -> Arc<Message> {
        sample(topic, 1, data)
    }

    fn is(item: Option<Outgoing>, message: &Arc<Message>) -> bool {
        item.as_ref()
            .and_then(Outgoing::message)
            .is_some_and(|m| Arc::ptr_eq(m, message))
    }

    fn topic(name: &str) -> Topic {
        Topic::new(name).expect("valid topic")
    }

    #[tokio::test]
    async fn delivers_to_every_subscriber_of_the_topic_and_no_other() {
        let hub = Hub::new();
        let ids = Ids;
        let (mut a, mut a_box) = hub.join(8, 10);
        let (mut b, mut b_box) = hub.join(8, 10);
        let (mut c, mut c_box) = hub.join(8, 10);
        a.subscribe(topic("room:1")).expect("under limit");
        b.subscribe(topic("room:1")).expect("under limit");
        c.subscribe(topic("room:2")).expect("under limit");

        let msg = message(&ids, "room:1", "1");
        assert_eq!(
            hub.deliver(&msg),
            Delivery {
                queued: 2,
                marked_slow: 0,
                dropped: 0,
                behind: 0,
            }
        );
        assert!(is(a_box.try_recv(), &msg));
        assert!(is(b_box.try_recv(), &msg));
        assert!(c_box.try_recv().is_none());
        assert_eq!(hub.stats().delivered(), 2);
    }

    #[test]
    fn subscribing_twice_is_idempotent_and_counts_once() {
        let hub = Hub::new();
        let (mut a, _mailbox) = hub.join(8, 10);
        assert_eq!(a.subscribe(topic("t")), Ok(true));
        assert_eq!(a.subscribe(topic("t")), Ok(false));
        assert_eq!(hub.stats().subscriptions(), 1);
        assert_eq!(hub.stats().topics(), 1);
    }

    #[test]
    fn unsubscribe_stops_delivery_and_forgets_empty_topics() {
        let hub = Hub::new();
        let ids = Ids;
        let (mut a, mut a_box) = hub.join(8, 10);
        a.subscribe(topic("t")).expect("under limit");
        assert!(a.unsubscribe(&topic("t")));
        assert!(!a.unsubscribe(&topic("t")));
        assert_eq!(hub.deliver(&message(&ids, "t", "1")).queued, 0);
        assert!(a_box.try_recv().is_none());
        assert_eq!(hub.stats().topics(), 0);
        assert_eq!(hub.stats().subscriptions(), 0);
    }

    #[test]
    fn dropping_a_membership_leaves_all_its_topics() {
        let hub = Hub::new();
        let (mut a, _mailbox) = hub.join(8, 10);
        for name in ["a", "b", "c"] {
            a.subscribe(topic(name)).expect("under limit");
        }
        assert_eq!(hub.stats().subscriptions(), 3);
        drop(a);
        assert_eq!(hub.stats().subscriptions(), 0);
        assert_eq!(hub.stats().topics(), 0);
    }

    #[test]
    fn a_membership_stops_at_its_subscription_limit() {
        let hub = Hub::new();
        let (mut a, _mailbox) = hub.join(8, 2);
        a.subscribe(topic("a")).expect("under limit");
        a.subscribe(topic("b")).expect("under limit");
        assert_eq!(a.subscribe(topic("b")), Ok(false));
        assert_eq!(
            a.subscribe(topic("c")),
            Err(TooManySubscriptions { limit: 2 })
        );
        assert_eq!(a.len(), 2);
    }

    /// A wire that records how many messages each frame carried.
    #[derive(Default)]
    struct Frames(std::sync::Mutex<Vec<usize>>);

    impl Wire for Frames {
        fn write_now(&self, batch: &[Outgoing]) -> Written {
            self.0.lock().expect("lock").push(batch.len());
            Written::All
        }
    }

    #[test]
    fn messages_delivered_together_reach_a_wired_session_in_one_frame() {
        let hub = Hub::new();
        let ids = Ids;
        let wire = Arc::new(Frames::default());
        let (mut a, _mailbox) = hub.join_wired(wire.clone(), Who::default(), 8, 10);
        a.subscribe(topic("x")).expect("under limit");
        a.subscribe(topic("y")).expect("under limit");

        hub.deliver(&message(&ids, "x", "1"));
        let together = [message(&ids, "x", "2"), message(&ids, "y", "3")];
        assert_eq!(hub.deliver_all(&together).queued, 2);
        assert_eq!(*wire.0.lock().expect("lock"), [1, 2]);
    }

    #[tokio::test]
    async fn auto_pacing_follows_how_late_deliveries_start() {
        let hub = Hub::with_write_delay(WriteDelay::Auto {
            max: Duration::from_secs(60),
        });
        let ids = Ids;
        let wire = Arc::new(Frames::default());
        let (mut a, _mailbox) = hub.join_wired(wire.clone(), Who::default(), 8, 10);
        a.subscribe(topic("x")).expect("under limit");
        assert_eq!(hub.pacing().delay(), Duration::ZERO);

        // A message that waited before its delivery started: the pod is
        // behind, and busy sessions are held.
        let waited = message(&ids, "x", "1");
        std::thread::sleep(Duration::from_millis(5));
        let mut deliveries = 0;
        while hub.pacing().delay().is_zero() {
            hub.deliver(&waited);
            deliveries += 1;
            assert!(deliveries < 100, "no delay after {deliveries} late ones");
        }

        // Held writes that go out when the delay lets them: it has caught
        // up, and the delay falls back to nothing.
        let mut deliveries = 0;
        while !hub.pacing().delay().is_zero() {
            hub.deliver(&message(&ids, "x", "2"));
            tokio::time::sleep(Duration::from_millis(2)).await;
            deliveries += 1;
            assert!(deliveries < 2_000, "still held after {deliveries}");
        }
    }

    #[test]
    fn a_session_behind_its_queue_does_not_stop_the_others() {
        let hub = Hub::new();
        let (mut slow, slow_box) = hub.join(1, 10);
        let (mut fast, mut fast_box) = hub.join(16, 10);
        slow.subscribe(topic("t")).expect("under limit");
        fast.subscribe(topic("t")).expect("under limit");

        let deliveries: Vec<_> = (1..=3)
            .map(|offset| hub.deliver(&sample("t", offset, "1")))
            .collect();
        let one = Delivery {
            queued: 1,
            marked_slow: 0,
            dropped: 0,
            behind: 1,
        };
        assert_eq!(deliveries[0].queued, 2);
        assert_eq!(
            deliveries[1..],
            [one, one],
            "the slow one reads them from history"
        );
        assert!(slow_box.is_behind() && !slow_box.is_slow());
        assert_eq!(hub.stats().behind(), 2);
        assert_eq!(hub.stats().slow_disconnects(), 0);
        let mut fast_frames = 0;
        while fast_box.try_recv().is_some() {
            fast_frames += 1;
        }
        assert_eq!(fast_frames, 3);
    }
}
