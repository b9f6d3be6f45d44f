//! The cluster's shared secret (`--cluster-secret-file`), and the proofs of
//! it that pods exchange in the peer handshake.
//!
//! Each side of a stream sends a fresh random nonce in its hello and proves
//! that it holds the secret with an HMAC-SHA256 over the *other* side's
//! nonce, its own nonce, its role and the cluster name. The secret never
//! crosses the wire, and a proof is good for one stream only: a recorded
//! one answers a nonce that will not be asked again.
//!
//! The file holds one secret per line (blank lines and `#` comments are
//! ignored). A pod proves with the first and accepts a proof made with any,
//! so a secret rotates without a split: add the new one as a second line on
//! every pod, then move it first, then remove the old one. The file is
//! re-read when it changes; an unreadable or empty new version keeps the
//! secrets in force (and says so in the log).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;

use crate::auth::AuthError;
use crate::auth::reload::{self, Fingerprint};

/// Bytes of a handshake nonce.
pub const NONCE_BYTES: usize = 32;

/// Secrets shorter than this are accepted with a warning: they can be
/// guessed offline from a recorded handshake.
const MIN_SAFE_SECRET_BYTES: usize = 16;

/// Which side of a stream a proof comes from: the two sides' proofs differ
/// even over the same nonces, so one cannot be reflected back as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The pod that dialled.
    Dialer,
    /// The pod that accepted.
    Listener,
}

/// The cluster's secrets, reloaded from their file. Cloning is cheap; every
/// clone sees a reload.
#[derive(Clone)]
pub struct ClusterSecret {
    path: PathBuf,
    secrets: Arc<ArcSwap<Vec<Vec<u8>>>>,
    loaded: Fingerprint,
}

impl ClusterSecret {
    /// Reads the secret file; fails when it cannot be read or holds no
    /// secret.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let contents = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let secrets = parse(&contents).map_err(|reason| AuthError::Invalid {
            path: path.to_owned(),
            reason,
        })?;
        tracing::info!(path = %path.display(), secrets = secrets.len(), "cluster secret loaded: peers must prove it");
        Ok(Self {
            path: path.to_owned(),
            secrets: Arc::new(ArcSwap::from_pointee(secrets)),
            loaded: Fingerprint::of(&contents),
        })
    }

    /// This side's proof over the peer's `challenge` and its own `nonce`.
    pub fn prove(&self, role: Role, cluster: &str, challenge: &[u8], nonce: &[u8]) -> Vec<u8> {
        let secrets = self.secrets.load();
        let Some(first) = secrets.first() else {
            return Vec::new();
        };
        mac(first, role, cluster, challenge, nonce)
            .finalize()
            .into_bytes()
            .to_vec()
    }

    /// Whether `proof` is the peer's (of `role`) over this side's
    /// `challenge` and its `nonce`, with any of the current secrets. Takes
    /// the same time whatever the proof holds.
    pub fn verify(
        &self,
        role: Role,
        cluster: &str,
        challenge: &[u8],
        nonce: &[u8],
        proof: &[u8],
    ) -> bool {
        if challenge.len() != NONCE_BYTES || nonce.len() != NONCE_BYTES {
            return false;
        }
        let mut good = false;
        for secret in self.secrets.load().iter() {
            good |= mac(secret, role, cluster, challenge, nonce)
                .verify_slice(proof)
                .is_ok();
        }
        good
    }

    /// Re-reads the file whenever its contents change, until `shutdown`.
    /// Spawn it on the server's task tracker.
    pub fn watch(
        self,
        shutdown: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let secrets = self.secrets;
        reload::watch_file(
            self.path,
            "cluster secret",
            self.loaded,
            reload::POLL_INTERVAL,
            shutdown,
            move |contents| {
                let parsed = parse(contents)?;
                let summary = format!("{} secrets", parsed.len());
                secrets.store(Arc::new(parsed));
                Ok(summary)
            },
        )
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSecret")
            .field("path", &self.path)
            .field("secrets", &self.secrets.load().len())
            .finish()
    }
}

/// A fresh random nonce for a hello.
pub fn nonce() -> Vec<u8> {
    rand::random::<[u8; NONCE_BYTES]>().to_vec()
}

fn mac(secret: &[u8], role: Role, cluster: &str, challenge: &[u8], nonce: &[u8]) -> Hmac<Sha256> {
    // NB: HMAC takes a key of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable!());
    mac.update(b"herald-peer-proof\0");
    mac.update(match role {
        Role::Dialer => b"D",
        Role::Listener => b"L",
    });
    mac.update(&(cluster.len() as u64).to_be_bytes());
    mac.update(cluster.as_bytes());
    mac.update(challenge);
    mac.update(nonce);
    mac
}

/// The secrets of a file, one per line; errors never quote a line.
fn parse(contents: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let text = std::str::from_utf8(contents).map_err(|_| "is not UTF-8 text".to_owned())?;
    let secrets: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.as_bytes().to_vec())
        .collect();
    if secrets.is_empty() {
        return Err("holds no secret".to_owned());
    }
    if secrets.iter().any(|s| s.len() < MIN_SAFE_SECRET_BYTES) {
        tracing::warn!(
            "a cluster secret is shorter than {MIN_SAFE_SECRET_BYTES} bytes; use a long random one"
        );
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn secret(contents: &str) -> (tempfile::NamedTempFile, ClusterSecret) {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(contents.as_bytes()).expect("write");
        let secret = ClusterSecret::load(file.path()).expect("loads");
        (file, secret)
    }

    #[test]
    fn a_proof_holds_only_for_its_nonces_its_role_and_its_cluster() {
        let (_file, ours) = secret("0123456789abcdef0123456789abcdef\n");
        let (challenge, nonce) = (nonce(), nonce());
        let proof = ours.prove(Role::Listener, "ns/herald", &challenge, &nonce);
        assert!(ours.verify(Role::Listener, "ns/herald", &challenge, &nonce, &proof));
        let other = super::nonce();
        assert!(
            !ours.verify(Role::Listener, "ns/herald", &other, &nonce, &proof),
            "a replay to a new challenge"
        );
        assert!(
            !ours.verify(Role::Dialer, "ns/herald", &challenge, &nonce, &proof),
            "reflected"
        );
        assert!(!ours.verify(Role::Listener, "ns/other", &challenge, &nonce, &proof));
        assert!(!ours.verify(Role::Listener, "ns/herald", &challenge, &nonce, &[]));
    }

    #[test]
    fn a_pod_with_another_secret_cannot_prove_and_rotation_accepts_both() {
        let (_a, old) = secret("old-secret-0123456789abcdef\n");
        let (_b, new) = secret("new-secret-0123456789abcdef\n");
        let (_c, rotating) = secret("new-secret-0123456789abcdef\nold-secret-0123456789abcdef\n");
        let (challenge, nonce) = (nonce(), nonce());
        let by_old = old.prove(Role::Dialer, "c", &challenge, &nonce);
        let by_new = new.prove(Role::Dialer, "c", &challenge, &nonce);
        assert!(!new.verify(Role::Dialer, "c", &challenge, &nonce, &by_old));
        assert!(rotating.verify(Role::Dialer, "c", &challenge, &nonce, &by_old));
        assert!(rotating.verify(Role::Dialer, "c", &challenge, &nonce, &by_new));
        assert_eq!(
            rotating.prove(Role::Dialer, "c", &challenge, &nonce),
            by_new,
            "proves with the first"
        );
    }

    #[test]
    fn a_file_without_a_secret_is_refused_without_quoting_it() {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(b"# only a comment\n\n").expect("write");
        let refused = ClusterSecret::load(file.path()).expect_err("no secret");
        assert!(refused.to_string().contains("holds no secret"), "{refused}");
    }
}
