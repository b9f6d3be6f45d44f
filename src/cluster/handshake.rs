//! The peer handshake: each side of a stream says which cluster it belongs
//! to and which protocol versions it speaks, and refuses a mismatch.

use crate::message::NodeId;
use crate::proto::v1::{Hello, PeerFrame, peer_frame};

/// The peer protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 4;

/// The oldest peer protocol version this build still accepts. Raised only
/// when a version has been out for at least one release, so that two
/// adjacent herald versions always work together during a rolling upgrade.
/// (Version 2 numbered every topic's messages, 3 added the proof of the
/// cluster secret and 4 interest-based routing, all before any release: no
/// running pod speaks 1 to 3.)
pub const MIN_PROTOCOL_VERSION: u32 = 4;

/// Why a peer's hello is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The peer belongs to another cluster (another release, or a reused IP).
    #[error("peer belongs to cluster {theirs:?}, this pod to {ours:?}")]
    OtherCluster {
        /// The peer's cluster.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// No protocol version both sides speak.
    #[error(
        "peer speaks protocol {their_min}..={theirs}, this pod {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
    )]
    Version {
        /// The peer's newest version.
        theirs: u32,
        /// The peer's oldest accepted version.
        their_min: u32,
    },
    /// The first frame was not a hello.
    #[error("the first frame was not a hello")]
    NoHello,
    /// The peer did not prove that it holds the cluster secret.
    #[error("the peer did not prove that it holds the cluster secret (--cluster-secret-file)")]
    NoProof,
}

/// This pod's hello, with its challenge `nonce` and (a listener's) `proof`.
pub fn hello(cluster: &str, node: NodeId, address: &str, nonce: Vec<u8>, proof: Vec<u8>) -> Hello {
    Hello {
        cluster: cluster.to_owned(),
        protocol_version: PROTOCOL_VERSION,
        min_protocol_version: MIN_PROTOCOL_VERSION,
        node: node.to_string(),
        address: address.to_owned(),
        nonce,
        proof,
    }
}

/// A hello as the first frame of a stream.
impl From<Hello> for PeerFrame {
    fn from(hello: Hello) -> Self {
        Self {
            kind: Some(peer_frame::Kind::Hello(hello)),
        }
    }
}

/// Checks a peer's hello against this pod's cluster and versions.
pub fn check(theirs: &Hello, cluster: &str) -> Result<(), Refusal> {
    if theirs.cluster != cluster {
        return Err(Refusal::OtherCluster {
            theirs: theirs.cluster.clone(),
            ours: cluster.to_owned(),
        });
    }
    if theirs.protocol_version < MIN_PROTOCOL_VERSION
        || theirs.min_protocol_version > PROTOCOL_VERSION
    {
        return Err(Refusal::Version {
            theirs: theirs.protocol_version,
            their_min: theirs.min_protocol_version,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_cluster_and_version_is_accepted() {
        let h = hello(
            "ns/herald",
            NodeId::random(),
            "10.0.0.1:7070",
            Vec::new(),
            Vec::new(),
        );
        assert_eq!(check(&h, "ns/herald"), Ok(()));
    }

    #[test]
    fn another_cluster_is_refused() {
        let h = hello(
            "other/herald",
            NodeId::random(),
            "10.0.0.1:7070",
            Vec::new(),
            Vec::new(),
        );
        assert!(matches!(
            check(&h, "ns/herald"),
            Err(Refusal::OtherCluster { .. })
        ));
    }

    #[test]
    fn an_adjacent_newer_version_that_still_accepts_ours_is_accepted() {
        let mut h = hello("c", NodeId::random(), "a", Vec::new(), Vec::new());
        h.protocol_version = PROTOCOL_VERSION + 1;
        h.min_protocol_version = PROTOCOL_VERSION;
        assert_eq!(check(&h, "c"), Ok(()));
    }

    #[test]
    fn a_version_without_overlap_is_refused() {
        let mut h = hello("c", NodeId::random(), "a", Vec::new(), Vec::new());
        h.protocol_version = PROTOCOL_VERSION + 2;
        h.min_protocol_version = PROTOCOL_VERSION + 1;
        assert!(matches!(check(&h, "c"), Err(Refusal::Version { .. })));
        h.protocol_version = 0;
        h.min_protocol_version = 0;
        assert!(matches!(check(&h, "c"), Err(Refusal::Version { .. })));
    }
}
