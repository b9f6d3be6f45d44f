//! `--discovery dns`: the A/AAAA records of a name (usually the headless
//! Service), resolved again every interval. For clusters where pods may not
//! read the Kubernetes API.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Discovery, FailureLog, PeerSet, PeerSetSender, publish};
use crate::stats::Counters;

/// Peers from DNS.
#[derive(Debug, Clone)]
pub struct Dns {
    /// The name to resolve.
    pub name: String,
    /// The peer port (records carry no port).
    pub port: u16,
    /// How often to resolve.
    pub interval: Duration,
    /// This pod's IP, left out.
    pub self_ip: Option<IpAddr>,
    /// Where failures are counted.
    pub counters: Arc<Counters>,
}

impl Discovery for Dns {
    async fn run(self, peers: PeerSetSender, shutdown: CancellationToken) {
        let mut failures = FailureLog::new(self.counters.clone());
        loop {
            match tokio::net::lookup_host((self.name.as_str(), self.port)).await {
                Ok(addrs) => {
                    let set: PeerSet = addrs
                        .filter(|a| Some(a.ip()) != self.self_ip)
                        .map(|a| a.to_string())
                        .collect();
                    failures.recovered("dns");
                    if publish(&peers, set.clone()) {
                        tracing::debug!(name = %self.name, peers = set.len(), "dns peers changed");
                    }
                }
                Err(e) => failures.failed("dns", format!("resolving {}: {e}", self.name)),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}
