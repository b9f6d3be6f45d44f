//! Writing claimed sessions out: at once (split over tasks when there are
//! many), or, for sessions the write delay holds back, as soon as it lets
//! them go.
//!
//! Held sessions wait in one queue ordered by the instant they may write,
//! served by one task per hub on one timer: a write delay costs a heap
//! entry per held frame, not a task wake-up and a timer per session. The
//! task starts with the first held session and ends with the hub.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::Notify;

use super::mailbox::Sender;
use super::pacing::Pacing;

/// Most claimed sessions one task writes out. Beyond that, the writes are
/// split over tasks, so every runtime worker takes part in a big fan-out.
pub const WRITES_PER_TASK: usize = 64;

/// Writes claimed sessions out, now or when their write delay has passed.
pub(super) struct Flusher {
    /// The hub's write delay, told how late each batch of writes starts.
    pacing: Arc<Pacing>,
    held: Mutex<BinaryHeap<Held>>,
    /// Woken when a session is held, and when the hub goes away.
    changed: Notify,
    started: AtomicBool,
    closed: AtomicBool,
}

/// A claimed session and when it may write.
struct Held {
    until: Instant,
    sender: Sender,
}

// The heap is a max-heap: the earliest instant compares greatest.
impl Ord for Held {
    fn cmp(&self, other: &Self) -> Ordering {
        other.until.cmp(&self.until)
    }
}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        self.until == other.until
    }
}

impl Eq for Held {}

impl Flusher {
    /// A flusher reporting to `pacing`.
    pub(super) fn new(pacing: Arc<Pacing>) -> Self {
        Self {
            pacing,
            held: Mutex::default(),
            changed: Notify::new(),
            started: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        }
    }

    // NB: a poisoned lock only means a thread panicked while holding it;
    // every change under it is one heap operation.
    fn lock(&self) -> MutexGuard<'_, BinaryHeap<Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the claimed sessions out: the first [`WRITES_PER_TASK`] here,
    /// the rest in tasks of that many each (inline when there is no
    /// runtime).
    pub(super) fn write_out(self: &Arc<Self>, mut claimed: Vec<Sender>) {
        if claimed.len() > WRITES_PER_TASK
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let mut rest = claimed.split_off(WRITES_PER_TASK);
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(WRITES_PER_TASK));
                let chunk = std::mem::replace(&mut rest, tail);
                let flusher = Arc::clone(self);
                runtime.spawn(async move { flusher.write(&chunk) });
            }
        }
        self.write(&claimed);
    }

    fn write(self: &Arc<Self>, claimed: &[Sender]) {
        let pacing = &self.pacing;
        // How long this work waited to start is the pod's lateness: the
        // first write of a batch, not the ones after it, which wait for
        // its own earlier writes.
        if pacing.follows_lateness()
            && let Some((ready, held)) = claimed.first().and_then(Sender::ready_since)
        {
            pacing.record(ready.elapsed(), held);
        }
        let mut batch = Vec::new();
        let held = claimed
            .iter()
            .filter_map(|sender| {
                let until = sender.write_claimed(&mut batch)?;
                Some((until, sender.clone()))
            })
            .collect();
        self.hold(held);
    }

    /// Writes each claimed session out once its instant has come. Without
    /// a runtime (no timer to wait on) they are written at once.
    pub(super) fn hold(self: &Arc<Self>, held: Vec<(Instant, Sender)>) {
        if held.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            let mut batch = Vec::new();
            for (_, sender) in held {
                while sender.write_claimed(&mut batch).is_some() {}
            }
            return;
        };
        let sooner = {
            let mut queue = self.lock();
            let first = queue.peek().map(|h| h.until);
            queue.extend(
                held.into_iter()
                    .map(|(until, sender)| Held { until, sender }),
            );
            first.is_none_or(|first| queue.peek().is_some_and(|h| h.until < first))
        };
        if !self.started.swap(true, AtomicOrdering::AcqRel) {
            runtime.spawn(Arc::clone(self).run());
        }
        // The task sleeps until the first instant it knows: wake it only if
        // that changed.
        if sooner {
            self.changed.notify_one();
        }
    }

    /// The hub is gone: the task ends.
    pub(super) fn close(&self) {
        self.closed.store(true, AtomicOrdering::Release);
        self.changed.notify_one();
    }

    async fn run(self: Arc<Self>) {
        while !self.closed.load(AtomicOrdering::Acquire) {
            let now = Instant::now();
            let (due, next) = {
                let mut held = self.lock();
                let mut due = Vec::new();
                while held.peek().is_some_and(|h| h.until <= now) {
                    due.extend(held.pop().map(|h| h.sender));
                }
                (due, held.peek().map(|h| h.until))
            };
            if !due.is_empty() {
                self.write_out(due);
                continue;
            }
            match next {
                // A session held meanwhile may be due sooner: wake for it.
                Some(until) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(until.into()) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}
