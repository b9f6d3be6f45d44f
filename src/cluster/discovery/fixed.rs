//! A fixed peer list: `--discovery static` with `--peers`, and the
//! single-pod `--discovery none` (an empty list).

use tokio_util::sync::CancellationToken;

use super::{Discovery, PeerSet, PeerSetSender, publish};

/// A peer list that never changes.
#[derive(Debug, Clone)]
pub struct Fixed {
    peers: PeerSet,
}

/// A `--peers` entry that is not `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("peer {0:?} is not host:port")]
pub struct BadPeer(pub String);

impl Fixed {
    /// The peers in `list`, minus any of `own` (this pod's own addresses, so
    /// that one list can be given to every pod).
    pub fn new(list: &[String], own: &[String]) -> Result<Self, BadPeer> {
        let mut peers = PeerSet::new();
        for entry in list {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let valid = entry
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(BadPeer(entry.to_owned()));
            }
            if !own.iter().any(|o| o == entry) {
                peers.insert(entry.to_owned());
            }
        }
        Ok(Self { peers })
    }

    /// No peers: a single pod.
    pub fn alone() -> Self {
        Self {
            peers: PeerSet::new(),
        }
    }
}

impl Discovery for Fixed {
    async fn run(self, peers: PeerSetSender, shutdown: CancellationToken) {
        publish(&peers, self.peers);
        shutdown.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn own_addresses_are_left_out_so_every_pod_gets_the_same_list() {
        let fixed = Fixed::new(
            &list(&["127.0.0.1:7070", "127.0.0.2:7070", "herald-2.svc:7070"]),
            &list(&["127.0.0.1:7070"]),
        )
        .expect("valid list");
        assert_eq!(
            fixed.peers,
            list(&["127.0.0.2:7070", "herald-2.svc:7070"])
                .into_iter()
                .collect()
        );
    }

    #[test]
    fn entries_without_a_port_are_refused() {
        assert_eq!(
            Fixed::new(&list(&["10.0.0.1"]), &[]).map(|_| ()),
            Err(BadPeer("10.0.0.1".into()))
        );
        assert!(Fixed::new(&list(&[":7070"]), &[]).is_err());
        assert!(Fixed::new(&list(&["a:port"]), &[]).is_err());
    }

    #[tokio::test]
    async fn publishes_its_list_once() {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        Fixed::new(&list(&["a:1"]), &[])
            .expect("valid")
            .run(tx, shutdown)
            .await;
        assert_eq!(*rx.borrow(), Some(list(&["a:1"]).into_iter().collect()));
    }
}
