//! Re-reading a mounted file when its contents change, shared by the JWT
//! [`Verifier`](super::Verifier) and the [`ApiTokens`](super::ApiTokens).
//!
//! Kubernetes updates a mounted Secret by writing a new directory and
//! swapping a `..data` symlink, so a file's mtime (often the epoch, or the
//! symlink's) says little. Key files are small, so every poll reads the whole
//! file and compares a fingerprint of its contents. A change is handed to the
//! owner's `apply`: when it succeeds the new contents become current and one
//! info line is logged; when it fails (a half-written or wrong file) the old
//! keys stay in force and one warning is logged per distinct bad content or
//! read error, not one per poll.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// How often a watched file is read. Within the 1–2 s a rotation should
/// take to show; reading a few kilobytes this often costs nothing.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// The length and a hash of a file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    len: usize,
    hash: u64,
}

impl Fingerprint {
    /// The fingerprint of `contents`.
    pub(crate) fn of(contents: &[u8]) -> Self {
        // NB: `DefaultHasher::new()` uses fixed keys, so fingerprints are
        // stable within the process, which is all that is compared.
        let mut hasher = DefaultHasher::new();
        contents.hash(&mut hasher);
        Self {
            len: contents.len(),
            hash: hasher.finish(),
        }
    }
}

/// The last failure reported, so it is logged once rather than every poll.
#[derive(PartialEq)]
enum Failure {
    Read(io::ErrorKind),
    Invalid(Fingerprint),
}

/// Polls `path` every `interval` until `shutdown`, calling `apply` with the
/// new contents whenever they differ from `current`. `apply` returns a short
/// summary for the info line, or why the contents are unusable.
pub(crate) async fn watch_file<F>(
    path: PathBuf,
    what: &'static str,
    mut current: Fingerprint,
    interval: Duration,
    shutdown: CancellationToken,
    mut apply: F,
) where
    F: FnMut(&[u8]) -> Result<String, String>,
{
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the caller just loaded the file.
    ticker.tick().await;
    let mut last_failure: Option<Failure> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let contents = match tokio::fs::read(&path).await {
            Ok(contents) => contents,
            Err(e) => {
                let failure = Some(Failure::Read(e.kind()));
                if last_failure != failure {
                    tracing::warn!(path = %path.display(), error = %e, "cannot re-read {what}; keeping the current ones");
                    last_failure = failure;
                }
                continue;
            }
        };
        let fingerprint = Fingerprint::of(&contents);
        if fingerprint == current {
            last_failure = None;
            continue;
        }
        if last_failure == Some(Failure::Invalid(fingerprint)) {
            continue;
        }
        match apply(&contents) {
            Ok(summary) => {
                tracing::info!(path = %path.display(), "reloaded {what}: {summary}");
                current = fingerprint;
                last_failure = None;
            }
            Err(reason) => {
                tracing::warn!(path = %path.display(), %reason, "{what} changed but is invalid; keeping the current ones");
                last_failure = Some(Failure::Invalid(fingerprint));
            }
        }
    }
}

/// Waits (up to 5 s) until `condition` holds: for tests that rewrite a
/// watched file and expect the owner to pick it up.
#[cfg(test)]
pub(crate) async fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for a reload"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
