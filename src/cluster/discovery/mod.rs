//! Where peers come from. A [`Discovery`] source runs until shutdown and
//! publishes each new [`PeerSet`] through a `watch` channel; the mesh
//! follows that channel. `None` in the channel means "not discovered yet".
//!
//! Sources, chosen by `--discovery`: [`kubernetes`] (a watch on Endpoints or
//! EndpointSlices), [`dns`] (A/AAAA records re-resolved on an interval),
//! [`fixed`] (`--peers`, and the single-pod `none`). Each keeps the last
//! known set when its input fails, and retries with capped backoff.

pub mod dns;
pub mod fixed;
pub mod index;
pub mod kubernetes;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use index::PeerSet;

use crate::stats::{self, Counters};

/// The sender a source publishes peer sets into.
pub type PeerSetSender = watch::Sender<Option<PeerSet>>;

/// A source of peer sets.
pub trait Discovery: Send + 'static {
    /// Runs until `shutdown`, publishing every change of the peer set into
    /// `peers`. Never fails: errors are logged and retried, and the last
    /// known set stays in place meanwhile.
    fn run(
        self,
        peers: PeerSetSender,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send;
}

/// Publishes `set` unless it equals what is already there. Returns whether
/// it changed.
fn publish(peers: &PeerSetSender, set: PeerSet) -> bool {
    peers.send_if_modified(|current| {
        if current.as_ref() == Some(&set) {
            false
        } else {
            *current = Some(set);
            true
        }
    })
}

/// Logs a failing input once per distinct failure, and its recovery, so a
/// source that retries every few seconds does not flood the log. Every
/// failure is counted.
#[derive(Debug)]
struct FailureLog {
    current: Option<String>,
    counters: Arc<Counters>,
}

impl FailureLog {
    fn new(counters: Arc<Counters>) -> Self {
        Self {
            current: None,
            counters,
        }
    }

    fn failed(&mut self, source: &'static str, line: String) {
        stats::add(&self.counters.discovery_errors, 1);
        if self.current.as_deref() != Some(line.as_str()) {
            tracing::warn!(source, error = %line, "peer discovery failing; keeping the last known peers and retrying");
            self.current = Some(line);
        }
    }

    fn recovered(&mut self, source: &'static str) {
        if self.current.take().is_some() {
            tracing::info!(source, "peer discovery recovered");
        }
    }
}
