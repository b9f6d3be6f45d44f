//! Liveness and readiness as the HTTP probes report them.
//!
//! Alive means the process serves HTTP at all. Ready means: every listener
//! is serving, the cluster has settled (streams to all discovered peers, or
//! the bounded wait passed), user tokens can be checked (an identity
//! provider's first key set has arrived), and the pod is not draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::Verifier;
use crate::broadcast::Broadcast;

/// A handle to the pod's readiness. Clones share it.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    serving: AtomicBool,
    draining: AtomicBool,
    broadcast: Arc<dyn Broadcast>,
    verifier: Option<Verifier>,
}

impl Health {
    /// Not ready until [`Health::set_serving`]; the cluster's part comes from
    /// `broadcast`, the tokens' part from `verifier` (none: no tokens to check).
    pub fn new(broadcast: Arc<dyn Broadcast>, verifier: Option<Verifier>) -> Self {
        Self {
            inner: Arc::new(Inner {
                serving: AtomicBool::new(false),
                draining: AtomicBool::new(false),
                broadcast,
                verifier,
            }),
        }
    }

    /// Every listener is up.
    pub fn set_serving(&self) {
        self.inner.serving.store(true, Ordering::Release);
    }

    /// The pod is shutting down: fail readiness so no new users come.
    pub fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Release);
    }

    /// Whether the pod should take new users.
    pub fn is_ready(&self) -> bool {
        let inner = &self.inner;
        inner.serving.load(Ordering::Acquire)
            && !inner.draining.load(Ordering::Acquire)
            && inner.broadcast.is_settled()
            && inner.verifier.as_ref().is_none_or(Verifier::has_keys)
    }
}
