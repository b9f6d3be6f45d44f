//! Re-reading a mounted file when its contents change, shared by the JWT
//! [`Verifier`](super::Verifier), the [`ApiTokens`](super::ApiTokens), the
//! cluster secret and the TLS certificates (whose certificate, key and CA
//! files are watched as one whole).
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
        Self::of_all(&[contents])
    }

    /// The fingerprint of several files' contents together, in order.
    pub(crate) fn of_all(contents: &[&[u8]]) -> Self {
        // NB: `DefaultHasher::new()` uses fixed keys, so fingerprints are
        // stable within the process, which is all that is compared.
        let mut hasher = DefaultHasher::new();
        contents.hash(&mut hasher);
        Self {
            len: contents.iter().map(|c| c.len()).sum(),
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
    current: Fingerprint,
    interval: Duration,
    shutdown: CancellationToken,
    mut apply: F,
) where
    F: FnMut(&[u8]) -> Result<String, String>,
{
    watch_files(vec![path], what, current, interval, shutdown, |contents| {
        apply(contents[0])
    })
    .await;
}

/// As [`watch_file`], for files that change together (a certificate and
/// its key): a change to any of them hands all of them, read in the same
/// poll and in the order of `paths`, to `apply`. `current` is their
/// [`Fingerprint::of_all`]. Files that do not make a whole yet (one
/// rewritten, the other not) are one warning, then taken when they do.
pub(crate) async fn watch_files<F>(
    paths: Vec<PathBuf>,
    what: &'static str,
    mut current: Fingerprint,
    interval: Duration,
    shutdown: CancellationToken,
    mut apply: F,
) where
    F: FnMut(&[&[u8]]) -> Result<String, String>,
{
    let shown = paths
        .iter()
        .map(|path| path.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick completes at once; the caller just loaded the files.
    ticker.tick().await;
    let mut last_failure: Option<Failure> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let contents = match read_all(&paths).await {
            Ok(contents) => contents,
            Err((path, e)) => {
                let failure = Some(Failure::Read(e.kind()));
                if last_failure != failure {
                    tracing::warn!(path = %path.display(), error = %e, "cannot re-read {what}; keeping the current ones");
                    last_failure = failure;
                }
                continue;
            }
        };
        let contents: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
        let fingerprint = Fingerprint::of_all(&contents);
        if fingerprint == current {
            last_failure = None;
            continue;
        }
        if last_failure == Some(Failure::Invalid(fingerprint)) {
            continue;
        }
        match apply(&contents) {
            Ok(summary) => {
                tracing::info!(path = %shown, "reloaded {what}: {summary}");
                current = fingerprint;
                last_failure = None;
            }
            Err(reason) => {
                tracing::warn!(path = %shown, %reason, "{what} changed but is invalid; keeping the current ones");
                last_failure = Some(Failure::Invalid(fingerprint));
            }
        }
    }
}

/// Every one of `paths`, read; the first that cannot be, and why.
async fn read_all(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, (&PathBuf, io::Error)> {
    let mut contents = Vec::with_capacity(paths.len());
    for path in paths {
        contents.push(tokio::fs::read(path).await.map_err(|e| (path, e))?);
    }
    Ok(contents)
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A certificate's and a key's contents, as handed over.
    type Pair = (Vec<u8>, Vec<u8>);

    #[tokio::test]
    async fn files_watched_together_are_handed_over_together_when_either_changes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("cert"), dir.path().join("key"));
        std::fs::write(&cert, "a").expect("written");
        std::fs::write(&key, "1").expect("written");
        let seen: Arc<Mutex<Vec<Pair>>> = Arc::default();
        let stop = CancellationToken::new();
        let watching = tokio::spawn(watch_files(
            vec![cert.clone(), key.clone()],
            "test files",
            Fingerprint::of_all(&[b"a", b"1"]),
            Duration::from_millis(10),
            stop.clone(),
            {
                let seen = seen.clone();
                move |contents| {
                    let pair = (contents[0].to_vec(), contents[1].to_vec());
                    seen.lock().expect("lock").push(pair);
                    Ok(String::new())
                }
            },
        ));
        let last = || seen.lock().expect("lock").last().cloned();
        let pair =
            |cert: &str, key: &str| Some((cert.as_bytes().to_vec(), key.as_bytes().to_vec()));
        std::fs::write(&key, "2").expect("written");
        wait_until(|| last() == pair("a", "2")).await;
        std::fs::write(&cert, "b").expect("written");
        wait_until(|| last() == pair("b", "2")).await;
        stop.cancel();
        watching.await.expect("the watcher stops");
    }
}
