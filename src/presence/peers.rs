//! What this pod knows of each peer's presence: the last version of its
//! entries applied, whether a stream from it is up (and since when not),
//! and a full state arriving in parts. Pure: the clock comes in as
//! arguments.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::table::Entry;
use crate::hub::SessionId;
use crate::message::NodeId;
use crate::topic::Topic;

/// One owner's entries, as a full state carries them.
pub type Entries = Vec<(Topic, SessionId, Entry)>;

/// Every peer whose presence this pod holds.
#[derive(Debug, Default)]
pub struct Peers {
    peers: HashMap<NodeId, Peer>,
}

#[derive(Debug, Default)]
struct Peer {
    address: String,
    /// The version of its entries last applied.
    version: u64,
    /// Streams from it that are up.
    streams: u32,
    /// When its last stream went down, while none is up.
    down_since: Option<Instant>,
    /// A full state whose last part has not arrived yet.
    partial: Option<(u64, Entries)>,
}

impl Peers {
    /// A stream from `node` (advertising `address`) came up. Returns the
    /// nodes that advertised the same address before: that pod restarted,
    /// and they are gone for good.
    pub fn up(&mut self, node: NodeId, address: &str) -> Vec<NodeId> {
        let replaced: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(other, peer)| **other != node && peer.address == address)
            .map(|(other, _)| *other)
            .collect();
        for old in &replaced {
            self.peers.remove(old);
        }
        let peer = self.peers.entry(node).or_default();
        peer.address = address.to_owned();
        peer.streams += 1;
        peer.down_since = None;
        replaced
    }

    /// A stream from `node` went down at `now`.
    pub fn down(&mut self, node: NodeId, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.streams = peer.streams.saturating_sub(1);
            if peer.streams == 0 {
                peer.down_since = Some(now);
                peer.partial = None;
            }
        }
    }

    /// Forgets `node`: it left the cluster.
    pub fn forget(&mut self, node: NodeId) {
        self.peers.remove(&node);
    }

    /// The peers without a stream for `grace` or longer at `now`,
    /// forgotten.
    pub fn expired(&mut self, now: Instant, grace: Duration) -> Vec<NodeId> {
        let expired: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.down_since.is_some_and(|at| now >= at + grace))
            .map(|(node, _)| *node)
            .collect();
        for node in &expired {
            self.peers.remove(node);
        }
        expired
    }

    /// Whether a delta of `version` from `node` is newer than what was
    /// applied (then it is booked as applied). Nothing is taken from a
    /// peer whose stream is not known to be up: it was forgotten (it left,
    /// or discovery dropped it) and its entries would never expire.
    pub fn accepts(&mut self, node: NodeId, version: u64) -> bool {
        let Some(peer) = self.peers.get_mut(&node) else {
            return false;
        };
        if version <= peer.version {
            return false;
        }
        peer.version = version;
        true
    }

    /// One part of a full state of `node` at `version`: the whole state
    /// once its `last` part arrived, booked as applied.
    pub fn state_part(
        &mut self,
        node: NodeId,
        version: u64,
        first: bool,
        last: bool,
        entries: Entries,
    ) -> Option<Entries> {
        let peer = self.peers.get_mut(&node)?;
        let mut partial = match peer.partial.take() {
            _ if first => (version, Vec::new()),
            Some(partial) if partial.0 == version => partial,
            // A part without its beginning: wait for the next whole state.
            _ => return None,
        };
        partial.1.extend(entries);
        if !last {
            peer.partial = Some(partial);
            return None;
        }
        peer.version = version;
        Some(partial.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(n: u64) -> NodeId {
        format!("{n:x}").parse().expect("hex")
    }

    #[test]
    fn a_peer_expires_only_after_its_streams_stayed_down_for_the_grace() {
        let mut peers = Peers::default();
        let start = Instant::now();
        let grace = Duration::from_secs(3);
        peers.up(node(1), "10.0.0.1:7070");
        peers.up(node(1), "10.0.0.1:7070");
        peers.down(node(1), start);
        assert!(
            peers.expired(start + grace * 2, grace).is_empty(),
            "one stream is still up"
        );
        peers.down(node(1), start);
        assert!(peers.expired(start + grace / 2, grace).is_empty());
        peers.up(node(1), "10.0.0.1:7070");
        assert!(
            peers.expired(start + grace * 2, grace).is_empty(),
            "back within the grace"
        );
        peers.down(node(1), start);
        assert_eq!(peers.expired(start + grace, grace), [node(1)]);
    }

    #[test]
    fn a_new_node_at_a_known_address_replaces_the_old_one() {
        let mut peers = Peers::default();
        assert!(peers.up(node(1), "10.0.0.1:7070").is_empty());
        assert_eq!(peers.up(node(2), "10.0.0.1:7070"), [node(1)]);
    }

    #[test]
    fn deltas_older_than_the_applied_state_are_refused_and_a_forgotten_peers_all() {
        let mut peers = Peers::default();
        assert!(!peers.accepts(node(1), 1), "not up");
        peers.up(node(1), "10.0.0.1:7070");
        let state = peers.state_part(node(1), 5, true, true, Vec::new());
        assert_eq!(state, Some(Vec::new()));
        assert!(!peers.accepts(node(1), 5));
        assert!(peers.accepts(node(1), 6));
        assert!(!peers.accepts(node(1), 6));
        peers.forget(node(1));
        assert!(!peers.accepts(node(1), 7), "forgotten");
    }

    #[test]
    fn a_state_in_parts_is_whole_only_with_its_first_and_last_part() {
        let mut peers = Peers::default();
        peers.up(node(1), "10.0.0.1:7070");
        let entry = |s: u64| {
            (
                Topic::new("t").expect("valid"),
                s,
                Entry {
                    sub: None,
                    info: None,
                },
            )
        };
        assert_eq!(
            peers.state_part(node(1), 3, false, true, vec![entry(1)]),
            None
        );
        assert_eq!(
            peers.state_part(node(1), 4, true, false, vec![entry(1)]),
            None
        );
        let whole = peers.state_part(node(1), 4, false, true, vec![entry(2)]);
        assert_eq!(whole.map(|w| w.len()), Some(2));
    }
}
