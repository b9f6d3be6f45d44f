//! A session's bounded queue, who writes it out, and the slow-client policy.
//!
//! Each session owns one [`Mailbox`] of shared messages (an `Arc` each, so
//! queueing one for a thousand sessions copies nothing); the hub holds the
//! matching [`Sender`] in every topic the session subscribes to.
//!
//! Who writes: a session joined with a [`Wire`] (the gateway's socket) is
//! written to by the thread that delivers to it. A message offered to an
//! idle session is *claimed* by that thread, which writes it straight to the
//! wire once it has offered the message to every subscriber: no task
//! wake-up, no copy. While it writes, messages offered by other threads
//! queue behind the claim and leave together in one frame, so a busy pod
//! writes fewer, larger frames. With a write delay, a session that wrote
//! less than the delay ago is claimed too, but *deferred*: the hub writes it
//! out when the delay has passed, with everything queued meanwhile, on one
//! timer for all sessions. The session's own task takes its turn only
//! when the wire cannot take a frame now (the client's socket buffer is
//! full), or when the session has no wire at all; it then writes, waiting
//! as it must, and hands the turn back once the queue is empty.
//!
//! The queue holds [`Outgoing`] items: published messages, and the
//! session's own frames (replies, `gap` events) that must keep their place
//! among them. Frames the session puts in its own queue ([`Sender::push`])
//! do not count against its capacity: a resume's replay or a burst of
//! replies never makes a session slow by itself.
//!
//! Delivery never waits. When a queue is full, a published message is not
//! queued: the session is *behind* on its topic, from the position before
//! that message, and neither the topic's next messages nor its events are
//! queued for it ([`Offer::Behind`]). Whenever its queue drains to half,
//! the session is woken ([`Mailbox::catch_up_due`]) to read the next half
//! queue from the topic's history (see `crate::local`), until it is live
//! again. Only a frame of the session's own that finds the queue full
//! marks it *slow*: it is told to close (the WebSocket gateway uses close
//! code 1013, "try again later") and the hub counts one slow-client
//! disconnect. Other subscribers are never delayed.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::pacing::Pacing;
use crate::message::{Message, Position};
use crate::topic::Topic;

/// Identifies one session within a hub.
pub type SessionId = u64;

/// Most bytes of queued messages written out as one frame.
pub const COALESCE_BYTES: usize = 64 * 1024;

/// One item of a session's queue.
#[derive(Debug, Clone)]
pub enum Outgoing {
    /// A published message, shared with every subscriber.
    Message(Arc<Message>),
    /// A frame of the session's own (a reply, an event), and when it was
    /// made.
    Text(Utf8Bytes, Instant),
}

impl Outgoing {
    /// A frame of the session's own, made now.
    pub fn text(frame: impl Into<Utf8Bytes>) -> Self {
        Self::Text(frame.into(), Instant::now())
    }

    /// The protocol v1 JSON object, without a newline.
    pub fn frame(&self) -> &Utf8Bytes {
        match self {
            Self::Message(message) => message.frame(),
            Self::Text(frame, _) => frame,
        }
    }

    /// When it became ready to send.
    pub fn received(&self) -> Instant {
        match self {
            Self::Message(message) => message.received(),
            Self::Text(_, at) => *at,
        }
    }

    /// The published message, if it is one.
    pub fn message(&self) -> Option<&Arc<Message>> {
        match self {
            Self::Message(message) => Some(message),
            Self::Text(..) => None,
        }
    }
}

impl From<String> for Outgoing {
    fn from(frame: String) -> Self {
        Self::text(frame)
    }
}

/// Where a session's messages are written: the transport side of a
/// session, given by the gateway at [`Hub::join_wired`](super::Hub::join_wired).
pub trait Wire: Send + Sync {
    /// Writes `batch`, in order, as one frame if the transport takes it now,
    /// without waiting.
    fn write_now(&self, batch: &[Outgoing]) -> Written;
}

/// What a [`Wire`] did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// All of it is out (or the connection is closing and it was dropped).
    All,
    /// Part of it is out; the wire keeps the rest and sends it before
    /// anything else once the session flushes.
    Partly,
    /// Nothing was taken: the transport cannot take more now.
    Busy,
}

/// The hub's end of a mailbox. Cheap to clone.
#[derive(Clone)]
pub struct Sender {
    shared: Arc<Shared>,
}

/// What happened to one offered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued for the session, which (or whoever writes for it) will send
    /// it.
    Queued,
    /// Queued and claimed: the caller must [`Sender::write_claimed`].
    Claimed,
    /// Queued and claimed, but the write delay holds the session until the
    /// given instant: the caller must [`Sender::write_claimed`] then.
    Deferred(Instant),
    /// The queue was full: the session has just been marked slow.
    MarkedSlow,
    /// The session is behind on the message's topic: not queued; the
    /// session reads it from history.
    Behind,
    /// The session is already slow or gone; the message was dropped.
    Dropped,
}

/// The session's end of a mailbox: its turns to write, and the signal
/// that the session fell behind.
pub struct Mailbox {
    shared: Arc<Shared>,
}

struct Shared {
    id: SessionId,
    capacity: usize,
    pacing: Arc<Pacing>,
    wire: Option<Arc<dyn Wire>>,
    state: Mutex<State>,
    /// Woken when the turn passes to the session, or more is queued in it.
    turn: Notify,
    /// Woken when a session behind on a topic has room to catch up again:
    /// its queue has drained to half its capacity.
    room: Notify,
    slow: CancellationToken,
}

struct State {
    /// What is queued, each with whether the session pushed it itself.
    queue: VecDeque<(Outgoing, bool)>,
    /// Items the session pushed itself still queued: room beyond the
    /// capacity.
    allowance: usize,
    /// The session has ended: nothing more is queued.
    gone: bool,
    /// The session fell behind (the token below is cancelled too; this
    /// copy is cheaper to check on every offer).
    slow: bool,
    writer: Writer,
    /// With a write delay: no message is written before this.
    hold_until: Option<Instant>,
    /// Topics the session is behind on, and the last position of each it
    /// has queued.
    behind: HashMap<Topic, Position>,
}

/// Who writes the queue out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// Nobody: the queue is empty.
    Idle,
    /// A delivering thread that claimed the session.
    Delivery,
    /// The session's own task.
    Session,
}

impl Shared {
    // NB: a poisoned lock only means a thread panicked while holding it;
    // every change under it is a single queue or field operation, so the
    // state is still consistent and delivery carries on.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts the write delay after a write.
    fn hold_after_write(&self, state: &mut State) {
        let delay = self.pacing.delay();
        if !delay.is_zero() {
            state.hold_until = Some(Instant::now() + delay);
        }
    }
}

impl State {
    /// Moves queued messages into `batch`, up to [`COALESCE_BYTES`] (and at
    /// least one).
    fn take(&mut self, batch: &mut Vec<Outgoing>, shared: &Shared) {
        let mut size = 0;
        while size < COALESCE_BYTES {
            let Some(next) = self.pop(shared) else {
                break;
            };
            size += next.frame().len() + 1;
            batch.push(next);
        }
    }

    /// Takes the first queued item. A session behind on a topic is woken
    /// to catch up once this leaves its queue half empty.
    fn pop(&mut self, shared: &Shared) -> Option<Outgoing> {
        let (item, own) = self.queue.pop_front()?;
        if own {
            self.allowance -= 1;
        }
        if !self.behind.is_empty() && self.queue.len() == low_water(shared.capacity) {
            shared.room.notify_one();
        }
        Some(item)
    }

    /// Whether the session is behind on a topic and has room to catch up.
    fn can_catch_up(&self, capacity: usize) -> bool {
        !self.behind.is_empty()
            && !self.slow
            && !self.gone
            && self.queue.len() <= low_water(capacity)
    }

    /// Queues `item` (`own`: pushed by the session itself); says who writes
    /// it, as [`Sender::offer`] does.
    fn queue(&mut self, item: Outgoing, own: bool, shared: &Shared) -> Offer {
        self.allowance += usize::from(own);
        self.queue.push_back((item, own));
        match self.writer {
            Writer::Delivery => Offer::Queued,
            Writer::Idle if shared.wire.is_some() => {
                self.writer = Writer::Delivery;
                match self.hold_until {
                    Some(until) if Instant::now() < until => Offer::Deferred(until),
                    _ => Offer::Claimed,
                }
            }
            Writer::Idle | Writer::Session => {
                self.writer = Writer::Session;
                shared.turn.notify_one();
                Offer::Queued
            }
        }
    }
}

impl Sender {
    /// The session this mailbox belongs to.
    pub fn id(&self) -> SessionId {
        self.shared.id
    }

    /// Offers a published message, or a frame of no topic, without
    /// waiting, applying the slow-client policy. On [`Offer::Claimed`] the
    /// caller must write the session out with
    /// [`write_claimed`](Self::write_claimed), after offering to the rest.
    pub fn offer(&self, item: &Outgoing) -> Offer {
        self.offer_on(item.message().map(|m| m.topic()), item)
    }

    /// Offers an item of `topic` (its message, or an event such as `gap`),
    /// as [`offer`](Self::offer) does. A session behind on the topic gets
    /// neither: its catch-up reads the messages from history and finds a
    /// break there itself, in its place.
    pub fn offer_in(&self, topic: &Topic, item: &Outgoing) -> Offer {
        self.offer_on(Some(topic), item)
    }

    fn offer_on(&self, topic: Option<&Topic>, item: &Outgoing) -> Offer {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.gone || state.slow {
            return Offer::Dropped;
        }
        // NB: the emptiness check first keeps a hash of the topic off the
        // path of every session that is not behind.
        if !state.behind.is_empty()
            && let Some(topic) = topic
            && state.behind.contains_key(topic)
        {
            return Offer::Behind;
        }
        if state.queue.len() >= shared.capacity + state.allowance {
            if let Some(message) = item.message() {
                let stamp = message.stamp();
                let before = Position::at(stamp.epoch, stamp.offset.saturating_sub(1));
                state.behind.insert(message.topic().clone(), before);
                return Offer::Behind;
            }
            state.slow = true;
            shared.slow.cancel();
            return Offer::MarkedSlow;
        }
        state.queue(item.clone(), false, shared)
    }

    /// Offers a frame of `topic` only if it fits: with room in the queue
    /// and the session not behind on the topic it is queued (`Some`, saying
    /// who writes it, as [`offer`](Self::offer) does); otherwise nothing is
    /// queued and nothing is marked (`None`), and the caller keeps what it
    /// owes the session for later.
    pub fn offer_spare(&self, topic: &Topic, item: &Outgoing) -> Option<Offer> {
        let shared = &*self.shared;
        let mut state = shared.lock();
        let full = state.queue.len() >= shared.capacity + state.allowance;
        if state.gone || state.slow || full || state.behind.contains_key(topic) {
            return None;
        }
        Some(state.queue(item.clone(), false, shared))
    }

    /// The topics the session is behind on, with where it stands on each,
    /// when it has room to catch up now (its queue is half empty).
    pub fn catching_up(&self) -> Vec<(Topic, Position)> {
        let state = self.shared.lock();
        if !state.can_catch_up(self.shared.capacity) {
            return Vec::new();
        }
        state.behind.iter().map(|(t, p)| (t.clone(), *p)).collect()
    }

    /// Most messages one catch-up step queues for one topic.
    pub fn catch_up_room(&self) -> usize {
        (self.shared.capacity - low_water(self.shared.capacity)).max(1)
    }

    /// Queues `items`, read from `topic`'s history after where the session
    /// stood; it now stands at `at`, or (`done`) is live on the topic
    /// again. Says who writes them, as [`offer`](Self::offer) does.
    pub fn caught_up(
        &self,
        topic: &Topic,
        items: Vec<Outgoing>,
        at: Position,
        done: bool,
    ) -> Offer {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.gone || state.slow {
            return Offer::Dropped;
        }
        if done {
            state.behind.remove(topic);
        } else {
            state.behind.insert(topic.clone(), at);
        }
        let mut offer = Offer::Queued;
        for item in items {
            let this = state.queue(item, false, shared);
            if this != Offer::Queued {
                offer = this;
            }
        }
        offer
    }

    /// The session left `topic`: it is no longer behind on it.
    pub fn forget(&self, topic: &Topic) {
        self.shared.lock().behind.remove(topic);
    }

    /// Queues the session's own `items` (replies, a resume's replay, events)
    /// past the capacity, in order. Says who writes them, as
    /// [`offer`](Self::offer) does; [`Offer::Dropped`] once the session is
    /// slow or gone.
    pub fn push(&self, items: impl IntoIterator<Item = Outgoing>) -> Offer {
        let shared = &*self.shared;
        let mut state = shared.lock();
        if state.gone || state.slow {
            return Offer::Dropped;
        }
        let mut offer = Offer::Queued;
        for item in items {
            let this = state.queue(item, true, shared);
            if this != Offer::Queued {
                offer = this;
            }
        }
        offer
    }

    /// Since when the first queued message could have been written: its
    /// arrival, or the instant the write delay lets the session go if that
    /// is later (then `true`: the write was held). `None` with nothing
    /// queued.
    pub(super) fn ready_since(&self) -> Option<(Instant, bool)> {
        let state = self.shared.lock();
        let arrived = state.queue.front()?.0.received();
        Some(match state.hold_until {
            Some(until) if until > arrived => (until, true),
            _ => (arrived, false),
        })
    }

    /// Writes a claimed session's queue to its wire, in frames of up to
    /// [`COALESCE_BYTES`], until the queue is empty, then gives the claim
    /// up. If the wire is busy, the turn passes to the session, which waits
    /// for its socket. If more was queued during the write and the write
    /// delay now holds the session, it stays claimed and the instant it may
    /// write again is returned: call again then. `batch` is scratch space,
    /// left empty.
    pub fn write_claimed(&self, batch: &mut Vec<Outgoing>) -> Option<Instant> {
        let shared = &*self.shared;
        let Some(wire) = &shared.wire else {
            return None;
        };
        loop {
            {
                let mut state = shared.lock();
                debug_assert_eq!(state.writer, Writer::Delivery);
                state.take(batch, shared);
                if batch.is_empty() {
                    state.writer = Writer::Idle;
                    return None;
                }
            }
            let written = wire.write_now(batch);
            let mut state = shared.lock();
            match written {
                Written::All => {
                    shared.hold_after_write(&mut state);
                    batch.clear();
                    if let Some(until) = state.hold_until.filter(|_| !state.queue.is_empty()) {
                        // More arrived during the write: it waits out the
                        // delay, still claimed.
                        return Some(until);
                    }
                }
                Written::Partly => {
                    shared.hold_after_write(&mut state);
                    batch.clear();
                    state.writer = Writer::Session;
                    break;
                }
                Written::Busy => {
                    // Back in front, counted as live messages (the
                    // allowance errs towards less room, for a client
                    // whose socket is full anyway).
                    for message in batch.drain(..).rev() {
                        state.queue.push_front((message, false));
                    }
                    state.writer = Writer::Session;
                    break;
                }
            }
        }
        shared.turn.notify_one();
        None
    }
}

impl Mailbox {
    /// Waits for the session's turn to write: something is queued for it,
    /// or its wire holds the rest of a frame. Returns false once the
    /// session is marked slow (stop writing and close). Cancel-safe.
    pub async fn turn(&self) -> bool {
        loop {
            let notified = self.shared.turn.notified();
            if self.is_slow() {
                return false;
            }
            if self.shared.lock().writer == Writer::Session {
                return true;
            }
            tokio::select! {
                biased;
                () = self.shared.slow.cancelled() => return false,
                () = notified => {}
            }
        }
    }

    /// Waits for the next message. `None` once the session is marked slow.
    /// For sessions without a wire, which write everything themselves.
    /// Cancel-safe.
    pub async fn recv(&mut self) -> Option<Outgoing> {
        loop {
            if !self.turn().await {
                return None;
            }
            if let Some(message) = self.try_recv() {
                return Some(message);
            }
            self.release();
        }
    }

    /// Takes a message that is already queued, on the session's turn,
    /// without waiting.
    pub fn try_recv(&mut self) -> Option<Outgoing> {
        let mut state = self.shared.lock();
        match state.writer {
            Writer::Session => state.pop(&self.shared),
            Writer::Idle | Writer::Delivery => None,
        }
    }

    /// On the session's turn, moves queued messages into `batch`, up to
    /// [`COALESCE_BYTES`].
    pub fn take(&mut self, batch: &mut Vec<Outgoing>) {
        let mut state = self.shared.lock();
        if state.writer == Writer::Session {
            state.take(batch, &self.shared);
        }
    }

    /// When the write delay lets the next frame go, if it holds it now.
    pub fn held_until(&self) -> Option<Instant> {
        self.shared
            .lock()
            .hold_until
            .filter(|t| *t > Instant::now())
    }

    /// Records that the session has written a frame (the write delay starts
    /// again) and ends its turn if nothing more is queued. Returns whether
    /// the turn ended.
    pub fn written(&mut self) -> bool {
        let mut state = self.shared.lock();
        self.shared.hold_after_write(&mut state);
        drop(state);
        self.release()
    }

    /// Ends the session's turn if nothing is queued: the next message
    /// offered is written by whoever delivers it. Returns whether it ended.
    pub fn release(&mut self) -> bool {
        let mut state = self.shared.lock();
        let idle = state.queue.is_empty();
        if idle && state.writer == Writer::Session {
            state.writer = Writer::Idle;
        }
        idle
    }

    /// Resolves once the session has been marked slow. Cancel-safe.
    pub async fn slow(&self) {
        self.shared.slow.cancelled().await;
    }

    /// Whether the session is behind on some topic (and catches up from
    /// history).
    pub fn is_behind(&self) -> bool {
        !self.shared.lock().behind.is_empty()
    }

    /// Whether messages wait for the session: some are queued, or it is
    /// behind on a topic.
    pub fn is_backed_up(&self) -> bool {
        let state = self.shared.lock();
        !state.queue.is_empty() || !state.behind.is_empty()
    }

    /// Resolves when the session, behind on a topic, has room for its next
    /// step of catching up: at once if it has, else when its queue drains
    /// to half its capacity. Costs nothing while it waits. Cancel-safe.
    pub async fn catch_up_due(&self) {
        loop {
            let room = self.shared.room.notified();
            if self.shared.lock().can_catch_up(self.shared.capacity) {
                return;
            }
            room.await;
        }
    }

    /// Whether the session has been marked slow.
    pub fn is_slow(&self) -> bool {
        self.shared.slow.is_cancelled()
    }
}

impl Drop for Mailbox {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.gone = true;
        state.queue.clear();
        state.allowance = 0;
    }
}

/// How full a queue may be for its session to take a step of catching up:
/// half its capacity, so each step reads a batch worth the wake-up.
fn low_water(capacity: usize) -> usize {
    capacity / 2
}

/// Makes a mailbox holding at most `capacity` messages for session `id`,
/// written to `wire` (if any) as `pacing` lets it.
pub(super) fn channel(
    id: SessionId,
    capacity: usize,
    wire: Option<Arc<dyn Wire>>,
    pacing: Arc<Pacing>,
) -> (Sender, Mailbox) {
    let shared = Arc::new(Shared {
        id,
        capacity: capacity.max(1),
        pacing,
        wire,
        state: Mutex::new(State {
            queue: VecDeque::new(),
            allowance: 0,
            gone: false,
            slow: false,
            writer: Writer::Idle,
            hold_until: None,
            behind: HashMap::new(),
        }),
        turn: Notify::new(),
        room: Notify::new(),
        slow: CancellationToken::new(),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Mailbox { shared },
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
    use std::time::Duration;

    use super::*;
    use crate::hub::WriteDelay;
    use crate::message::sample;

    fn message() -> Outgoing {
        Outgoing::Message(sample("t", 1, "{}"))
    }

    /// Whether two items are the same message (or frame).
    fn same(a: &Outgoing, b: &Outgoing) -> bool {
        match (a, b) {
            (Outgoing::Message(a), Outgoing::Message(b)) => Arc::ptr_eq(a, b),
            (Outgoing::Text(a, _), Outgoing::Text(b, _)) => a == b,
            _ => false,
        }
    }

    /// A wire that records each frame's batch, and takes only as many
    /// frames as it is allowed to.
    #[derive(Default)]
    struct Recorder {
        frames: Mutex<Vec<Vec<Outgoing>>>,
        room: Mutex<Option<usize>>,
        partly: Mutex<bool>,
    }

    impl Wire for Recorder {
        fn write_now(&self, batch: &[Outgoing]) -> Written {
            let mut room = self.room.lock().expect("lock");
            if *room == Some(0) {
                return Written::Busy;
            }
            if let Some(left) = room.as_mut() {
                *left -= 1;
            }
            self.frames.lock().expect("lock").push(batch.to_vec());
            if *self.partly.lock().expect("lock") {
                Written::Partly
            } else {
                Written::All
            }
        }
    }

    fn wired(capacity: usize, delay: Duration) -> (Arc<Recorder>, Sender, Mailbox) {
        let wire = Arc::new(Recorder::default());
        let pacing = Arc::new(Pacing::new(WriteDelay::Fixed(delay)));
        let (tx, rx) = channel(1, capacity, Some(wire.clone()), pacing);
        (wire, tx, rx)
    }

    fn frames(wire: &Recorder) -> Vec<usize> {
        let frames = wire.frames.lock().expect("lock");
        frames.iter().map(Vec::len).collect()
    }

    #[test]
    fn a_full_mailbox_puts_the_session_behind_on_the_topic_and_skips_its_next_messages() {
        let (tx, mailbox) = channel(7, 2, None, Arc::default());
        let [a, b, c, d] = [1, 2, 3, 4].map(|o| Outgoing::Message(sample("t", o, "{}")));
        assert_eq!(tx.offer(&a), Offer::Queued);
        assert_eq!(tx.offer(&b), Offer::Queued);
        assert_eq!(tx.offer(&c), Offer::Behind);
        assert_eq!(
            tx.offer(&d),
            Offer::Behind,
            "later ones are read from history too"
        );
        let topic = Topic::new("t").expect("valid");
        let gap = Outgoing::text("{}");
        assert_eq!(
            tx.offer_in(&topic, &gap),
            Offer::Behind,
            "and so are the topic's events"
        );
        assert!(mailbox.is_behind() && !mailbox.is_slow());
        assert!(tx.catching_up().is_empty(), "no room yet");
        drop(mailbox);
    }

    #[tokio::test]
    async fn a_session_behind_is_woken_to_catch_up_once_its_queue_drains_to_half() {
        let (tx, mut mailbox) = channel(7, 4, None, Arc::default());
        for offset in 1..=5 {
            tx.offer(&Outgoing::Message(sample("t", offset, "{}")));
        }
        let waiting = tokio::time::timeout(Duration::from_millis(50), mailbox.catch_up_due());
        assert!(waiting.await.is_err(), "a full queue has no room");
        mailbox.try_recv().expect("queued");
        assert!(tx.catching_up().is_empty(), "3 of 4 still queued");
        mailbox.try_recv().expect("queued");
        let due = tokio::time::timeout(Duration::from_secs(5), mailbox.catch_up_due());
        due.await.expect("woken at half");
        let behind = tx.catching_up();
        let topic = Topic::new("t").expect("valid");
        assert_eq!(
            behind,
            [(topic, Position::at(behind[0].1.epoch.expect("epoch"), 4))]
        );
        assert_eq!(tx.catch_up_room(), 2);
    }

    #[tokio::test]
    async fn a_caught_up_session_is_live_again_with_the_history_in_its_place() {
        let (tx, mut mailbox) = channel(7, 2, None, Arc::default());
        let topic = Topic::new("t").expect("valid");
        for offset in 1..=3 {
            tx.offer(&Outgoing::Message(sample("t", offset, "{}")));
        }
        while mailbox.try_recv().is_some() {}
        mailbox.release();
        let behind = tx.catching_up();
        assert_eq!(behind.len(), 1);
        let read = Outgoing::Message(sample("t", 3, "{}"));
        tx.caught_up(&topic, vec![read], behind[0].1, true);
        assert!(!mailbox.is_behind());
        let live = Outgoing::Message(sample("t", 4, "{}"));
        assert_ne!(tx.offer(&live), Offer::Behind);
        let offsets: Vec<_> = std::iter::from_fn(|| mailbox.try_recv())
            .map(|m| m.message().map(|m| m.stamp().offset))
            .collect();
        assert_eq!(offsets, [Some(3), Some(4)]);
    }

    #[tokio::test]
    async fn a_full_mailbox_marks_the_session_slow_once_a_frame_of_its_own_finds_no_room() {
        let (tx, mut mailbox) = channel(7, 2, None, Arc::default());
        let frame = Outgoing::text("{}");
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
        assert!(mailbox.try_recv().is_some_and(|m| same(&m, &frame)));
    }

    #[tokio::test]
    async fn without_a_wire_every_message_is_the_sessions_to_write() {
        let (tx, mut mailbox) = channel(1, 8, None, Arc::default());
        let (a, b) = (message(), message());
        assert_eq!(tx.offer(&a), Offer::Queued);
        assert!(mailbox.recv().await.is_some_and(|m| same(&m, &a)));
        assert!(mailbox.release(), "nothing else queued");
        assert_eq!(tx.offer(&b), Offer::Queued);
        assert!(mailbox.recv().await.is_some_and(|m| same(&m, &b)));
    }

    #[test]
    fn an_idle_wired_session_is_claimed_and_written_by_the_deliverer() {
        let (wire, tx, mailbox) = wired(8, Duration::ZERO);
        assert_eq!(tx.offer(&message()), Offer::Claimed);
        let mut batch = Vec::new();
        tx.write_claimed(&mut batch);
        assert!(batch.is_empty());
        assert_eq!(frames(&wire), [1]);
        assert_eq!(tx.offer(&message()), Offer::Claimed, "idle again");
        drop(mailbox);
    }

    #[test]
    fn messages_offered_while_claimed_leave_with_the_claim_in_one_frame() {
        let (wire, tx, _mailbox) = wired(8, Duration::ZERO);
        let first = message();
        assert_eq!(tx.offer(&first), Offer::Claimed);
        assert_eq!(tx.offer(&message()), Offer::Queued);
        assert_eq!(tx.offer(&message()), Offer::Queued);
        tx.write_claimed(&mut Vec::new());
        assert_eq!(frames(&wire), [3]);
        assert!(same(&wire.frames.lock().expect("lock")[0][0], &first));
    }

    #[tokio::test]
    async fn a_busy_wire_hands_the_turn_to_the_session_with_nothing_lost() {
        let (wire, tx, mut mailbox) = wired(8, Duration::ZERO);
        *wire.room.lock().expect("lock") = Some(0);
        let (a, b) = (message(), message());
        assert_eq!(tx.offer(&a), Offer::Claimed);
        tx.write_claimed(&mut Vec::new());
        assert_eq!(tx.offer(&b), Offer::Queued, "the session's turn now");
        assert!(mailbox.turn().await);
        let mut batch = Vec::new();
        mailbox.take(&mut batch);
        assert_eq!(batch.len(), 2);
        assert!(same(&batch[0], &a) && same(&batch[1], &b));
        assert!(mailbox.written(), "turn ends when the queue is empty");
        assert_eq!(tx.offer(&message()), Offer::Claimed);
    }

    #[tokio::test]
    async fn a_partly_written_frame_hands_the_turn_to_the_session_to_flush() {
        let (wire, tx, mailbox) = wired(8, Duration::ZERO);
        *wire.partly.lock().expect("lock") = true;
        assert_eq!(tx.offer(&message()), Offer::Claimed);
        tx.write_claimed(&mut Vec::new());
        assert_eq!(frames(&wire), [1]);
        assert!(mailbox.turn().await);
    }

    #[test]
    fn with_a_write_delay_messages_soon_after_a_write_are_deferred_together() {
        let (wire, tx, _mailbox) = wired(8, Duration::from_secs(60));
        assert_eq!(tx.offer(&message()), Offer::Claimed);
        assert_eq!(tx.write_claimed(&mut Vec::new()), None);
        let Offer::Deferred(until) = tx.offer(&message()) else {
            panic!("a message right after a write is deferred");
        };
        assert!(until > Instant::now() + Duration::from_secs(59));
        assert_eq!(
            tx.offer(&message()),
            Offer::Queued,
            "joins the deferred claim"
        );
        assert_eq!(frames(&wire), [1], "nothing more written yet");
        assert_eq!(
            tx.write_claimed(&mut Vec::new()),
            None,
            "the queue is empty after"
        );
        assert_eq!(frames(&wire), [1, 2]);
    }

    #[tokio::test]
    async fn the_sessions_own_frames_pass_the_capacity_but_count_until_written() {
        let (tx, mailbox) = channel(1, 2, None, Arc::default());
        let replay: Vec<_> = (0..5).map(|_| message()).collect();
        assert_eq!(tx.push(replay), Offer::Queued);
        let text = || Outgoing::text("{}");
        assert_eq!(tx.offer(&text()), Offer::Queued, "room beside the replay");
        assert_eq!(tx.offer(&text()), Offer::Queued);
        assert_eq!(
            tx.offer(&text()),
            Offer::MarkedSlow,
            "the capacity still holds"
        );
        assert!(mailbox.is_slow());
    }

    #[test]
    fn offering_to_a_closed_mailbox_drops_quietly() {
        let (tx, mailbox) = channel(1, 4, None, Arc::default());
        drop(mailbox);
        assert_eq!(tx.offer(&message()), Offer::Dropped);
    }
}
