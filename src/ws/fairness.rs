//! Limits that keep one client from spending what others need: a
//! connection rate per client address, checked before the pod-wide one,
//! and a number of connections per user.
//!
//! A client's address is its socket's peer address, or, when that peer is
//! one of `--trusted-proxies`, the last address a proxy appended to
//! `--client-ip-header` (e.g. `X-Forwarded-For`): the address the last
//! trusted hop saw, which a client cannot forge past its own proxy.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;

use crate::limit::TokenBucket;

/// Most client addresses whose buckets are kept; past it, those idle for
/// [`IDLE`] are forgotten (their bucket is full again anyway).
const MAX_TRACKED: usize = 100_000;

/// How long an address's bucket is kept after its last connection.
const IDLE: Duration = Duration::from_secs(10);

/// An address or a network, as `--trusted-proxies` takes them: `10.0.0.7`,
/// `10.0.0.0/8`, `fd00::/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    base: IpAddr,
    prefix: u8,
}

/// `--trusted-proxies` holds something that is not an address or a network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not an IP address or a network like 10.0.0.0/8")]
pub struct BadNetwork(pub String);

impl std::str::FromStr for Network {
    type Err = BadNetwork;

    fn from_str(text: &str) -> Result<Self, BadNetwork> {
        let bad = || BadNetwork(text.to_owned());
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let base: IpAddr = address.trim().parse().map_err(|_| bad())?;
        let max = if base.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(bad)?,
        };
        Ok(Self { base, prefix })
    }
}

impl Network {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        };
        let ((base, width), (candidate, other)) = (bits(self.base), bits(ip));
        if width != other {
            return false;
        }
        let host_bits = u32::from(width - self.prefix);
        base.checked_shr(host_bits) == candidate.checked_shr(host_bits)
    }
}

/// Where a client's address comes from.
#[derive(Debug, Clone, Default)]
pub struct ClientAddress {
    /// The header trusted proxies put the client's address in.
    pub header: Option<String>,
    /// The proxies whose header is believed.
    pub trusted: Vec<Network>,
}

impl ClientAddress {
    /// The address a request comes from, as far as this pod can tell.
    pub fn of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let Some(name) = &self.header else {
            return peer;
        };
        if !self.trusted.iter().any(|n| n.contains(peer)) {
            return peer;
        }
        // The last value of the last header is what the nearest proxy saw.
        headers
            .get_all(name.as_str())
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|address| address.trim().parse::<IpAddr>().ok())
            .next_back()
            .unwrap_or(peer)
    }
}

/// A connection-rate bucket per client address.
#[derive(Debug)]
pub struct AddressRates {
    rate: u32,
    buckets: Mutex<HashMap<IpAddr, (TokenBucket, Instant)>>,
}

impl AddressRates {
    /// `rate` new connections per second per address, in bursts of twice
    /// as many; 0 turns the limit off.
    pub fn new(rate: u32) -> Self {
        Self {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one connection from `ip`'s bucket at `now`.
    pub fn try_take(&self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        let mut buckets = lock(&self.buckets);
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(&ip) {
            buckets.retain(|_, (_, seen)| now.saturating_duration_since(*seen) < IDLE);
        }
        let burst = self.rate.saturating_mul(2);
        let (bucket, seen) = buckets
            .entry(ip)
            .or_insert_with(|| (TokenBucket::new(self.rate, burst, now), now));
        *seen = now;
        bucket.try_take(now)
    }
}

/// Connections open per user (`sub`).
#[derive(Debug, Clone)]
pub struct UserConnections {
    max: usize,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

/// One user's connection, counted while it lives.
#[derive(Debug)]
pub struct UserSlot {
    sub: String,
    open: Arc<Mutex<HashMap<String, usize>>>,
}

impl UserConnections {
    /// At most `max` connections per user; 0 turns the limit off.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Arc::default(),
        }
    }

    /// Counts one more connection of `sub`, or `None` if it holds `max`.
    pub fn enter(&self, sub: &str) -> Option<UserSlot> {
        let mut open = lock(&self.open);
        let count = open.entry(sub.to_owned()).or_insert(0);
        if self.max > 0 && *count >= self.max {
            if *count == 0 {
                open.remove(sub);
            }
            return None;
        }
        *count += 1;
        Some(UserSlot {
            sub: sub.to_owned(),
            open: self.open.clone(),
        })
    }

    /// The most connections one user may hold (0: no limit).
    pub fn max(&self) -> usize {
        self.max
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.sub) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.sub);
            }
        }
    }
}

// NB: a poisoned lock only means a thread panicked holding it; each change
// under these is one map operation, so the map is still whole.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn networks_hold_the_addresses_their_prefix_covers() {
        let net: Network = "10.1.0.0/16".parse().expect("valid");
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(!net.contains(ip("::ffff:10.1.0.1")), "another family");
        let one: Network = "127.0.0.1".parse().expect("valid");
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: Network = "0.0.0.0/0".parse().expect("valid");
        assert!(all.contains(ip("203.0.113.9")));
        let v6: Network = "fd00::/8".parse().expect("valid");
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["10.0.0.0/33", "ten", "10.0.0.0/x", ""] {
            assert!(bad.parse::<Network>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_header_counts_only_when_a_trusted_proxy_sent_it() {
        let address = ClientAddress {
            header: Some("x-forwarded-for".into()),
            trusted: vec!["10.0.0.0/8".parse().expect("valid")],
        };
        let mut headers = HeaderMap::new();
        let forged_then_real = HeaderValue::from_static("1.1.1.1, 203.0.113.9");
        headers.insert("x-forwarded-for", forged_then_real);
        assert_eq!(address.of(ip("10.0.0.5"), &headers), ip("203.0.113.9"));
        assert_eq!(
            address.of(ip("198.51.100.1"), &headers),
            ip("198.51.100.1"),
            "an untrusted peer's header is ignored"
        );
        assert_eq!(
            address.of(ip("10.0.0.5"), &HeaderMap::new()),
            ip("10.0.0.5")
        );
    }

    #[test]
    fn one_address_spending_its_rate_leaves_the_others_theirs() {
        let rates = AddressRates::new(2);
        let now = Instant::now();
        let taken = (0..10)
            .filter(|_| rates.try_take(ip("192.0.2.1"), now))
            .count();
        assert_eq!(taken, 4, "a burst of twice the rate");
        assert!(rates.try_take(ip("192.0.2.2"), now));
        assert!(rates.try_take(ip("192.0.2.1"), now + Duration::from_secs(1)));
        assert!(AddressRates::new(0).try_take(ip("192.0.2.1"), now), "off");
    }

    #[test]
    fn a_user_holds_at_most_max_connections_and_a_closed_one_frees_its_slot() {
        let users = UserConnections::new(2);
        let a = users.enter("42").expect("first");
        let _b = users.enter("42").expect("second");
        assert!(users.enter("42").is_none());
        assert!(users.enter("7").is_some(), "another user");
        drop(a);
        assert!(users.enter("42").is_some());
        assert!(UserConnections::new(0).enter("42").is_some(), "off");
    }
}
