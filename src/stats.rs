//! Counters the hot paths keep as plain atomics: one relaxed add where
//! something happens, read by [`metrics`](crate::metrics) only when scraped.
//! Any part may hold the shared [`Counters`]; none depends on how they are
//! exported.

use std::sync::atomic::{AtomicU64, Ordering};

/// Why connections closed, one counter per reason.
#[derive(Debug, Default)]
pub struct ClosedBy {
    /// The client closed, or its socket failed.
    pub client: AtomicU64,
    /// A client message over the size limit (close code 1009).
    pub too_big: AtomicU64,
    /// The client fell behind (close code 1013).
    pub slow: AtomicU64,
    /// The pod shut down (close code 1012).
    pub shutdown: AtomicU64,
    /// The client stayed silent through two heartbeats.
    pub heartbeat_timeout: AtomicU64,
    /// Its token expired without a `refresh` (close code 4001).
    pub token_expired: AtomicU64,
    /// It broke the WebSocket protocol (close codes 1002 and 1007).
    pub protocol_error: AtomicU64,
}

/// Requests refused at the edge, one counter per reason.
#[derive(Debug, Default)]
pub struct Refusals {
    /// Upgrades without a valid token (HTTP 401).
    pub unauthorized: AtomicU64,
    /// Upgrades from an origin not allowed (HTTP 403).
    pub origin: AtomicU64,
    /// Upgrades past `--max-connections` (HTTP 503).
    pub max_connections: AtomicU64,
    /// Upgrades past `--max-connection-rate` (HTTP 429).
    pub connection_rate: AtomicU64,
    /// Upgrades past `--max-connection-rate-per-ip` (HTTP 429).
    pub connection_rate_ip: AtomicU64,
    /// Upgrades of a user holding `--max-connections-per-user` (HTTP 429).
    pub user_connections: AtomicU64,
    /// Upgrades while draining (HTTP 503).
    pub draining: AtomicU64,
    /// Subscribes and publishes the token does not allow (`forbidden`).
    pub forbidden: AtomicU64,
    /// Client publishes past `--client-publish-rate` (`rate_limited`).
    pub rate_limited: AtomicU64,
    /// Subscribes past `--max-subscriptions` (`too_many_subscriptions`).
    pub too_many_subscriptions: AtomicU64,
    /// gRPC calls without a valid API token (`UNAUTHENTICATED`).
    pub api_unauthenticated: AtomicU64,
    /// `refresh` requests with a token that is not valid or for another
    /// user (`invalid_token`).
    pub invalid_token: AtomicU64,
    /// Connections closed at once because `--max-pending-handshakes` were
    /// still in their handshake.
    pub handshakes: AtomicU64,
    /// Connections closed because their first request's headers took
    /// longer than `--header-read-timeout`.
    pub header_timeout: AtomicU64,
}

impl Refusals {
    /// Every reason with its label and count.
    pub fn by_reason(&self) -> [(&'static str, u64); 14] {
        [
            ("unauthorized", read(&self.unauthorized)),
            ("origin", read(&self.origin)),
            ("max_connections", read(&self.max_connections)),
            ("connection_rate", read(&self.connection_rate)),
            ("connection_rate_ip", read(&self.connection_rate_ip)),
            ("user_connections", read(&self.user_connections)),
            ("draining", read(&self.draining)),
            ("forbidden", read(&self.forbidden)),
            ("rate_limited", read(&self.rate_limited)),
            ("too_many_subscriptions", read(&self.too_many_subscriptions)),
            ("api_unauthenticated", read(&self.api_unauthenticated)),
            ("invalid_token", read(&self.invalid_token)),
            ("handshakes", read(&self.handshakes)),
            ("header_timeout", read(&self.header_timeout)),
        ]
    }
}

/// Connections on an HTTP listener still in their handshake: accepted, the
/// head of their first request not yet read. Gauges, unlike the rest of
/// [`Counters`].
#[derive(Debug, Default)]
pub struct Handshakes {
    /// On the HTTP port.
    pub http: AtomicU64,
    /// On the admin port (`--admin-addr`).
    pub admin: AtomicU64,
}

impl Handshakes {
    /// Every listener with its label and count.
    pub fn by_listener(&self) -> [(&'static str, u64); 2] {
        [("http", read(&self.http)), ("admin", read(&self.admin))]
    }
}

/// The pod's event counters. Monotonic (but for [`Handshakes`]); shared
/// behind an `Arc`.
#[derive(Debug, Default)]
pub struct Counters {
    /// WebSocket connections accepted.
    pub connections_opened: AtomicU64,
    /// WebSocket connections closed, by reason.
    pub connections_closed: ClosedBy,
    /// Bytes of WebSocket frames written to clients.
    pub bytes_out: AtomicU64,
    /// Messages accepted by the publish path on this pod.
    pub published: AtomicU64,
    /// Publishes refused as invalid.
    pub publish_refused: AtomicU64,
    /// Messages dropped for a peer because its queue was full.
    pub peer_queue_drops: AtomicU64,
    /// Messages not sent to a peer because it does not follow their topic.
    pub peer_skipped: AtomicU64,
    /// Peer streams re-established after a break.
    pub peer_reconnects: AtomicU64,
    /// Publishes refused because Redis could not take them (its queue was
    /// full, or it was unreachable or failed).
    pub redis_refused: AtomicU64,
    /// Bytes of peer-wire frames written to other pods (after the
    /// handshake): what the cluster's traffic costs this pod.
    pub peer_bytes_sent: AtomicU64,
    /// Peer handshakes refused (either side) because the peer did not
    /// prove the cluster secret.
    pub peer_auth_failures: AtomicU64,
    /// Failures reading the discovery source.
    pub discovery_errors: AtomicU64,
    /// Requests refused at the edge, by reason.
    pub refused: Refusals,
    /// Connections in their handshake now, by listener.
    pub handshakes: Handshakes,
    /// User tokens refused, by why (a fixed, small set of labels).
    pub token_refusals: std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Counters {
    /// Counts a user token refused for `reason` (a [`TokenError`] label).
    ///
    /// [`TokenError`]: crate::auth::TokenError
    pub fn token_refused(&self, reason: &'static str) {
        let mut counts = self
            .token_refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counts.entry(reason).or_insert(0) += 1;
    }

    /// The user tokens refused so far, by reason.
    pub fn token_refusals(&self) -> Vec<(&'static str, u64)> {
        let counts = self
            .token_refusals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.iter().map(|(r, n)| (*r, *n)).collect()
    }

    /// WebSocket connections open now.
    pub fn connections_open(&self) -> u64 {
        read(&self.connections_opened).saturating_sub(self.connections_closed.total())
    }
}

/// Adds `n` to `counter`.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Reads `counter`.
pub fn read(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl ClosedBy {
    /// Every reason with its label and count.
    pub fn by_reason(&self) -> [(&'static str, u64); 7] {
        [
            ("client", read(&self.client)),
            ("too_big", read(&self.too_big)),
            ("slow", read(&self.slow)),
            ("shutdown", read(&self.shutdown)),
            ("heartbeat_timeout", read(&self.heartbeat_timeout)),
            ("token_expired", read(&self.token_expired)),
            ("protocol_error", read(&self.protocol_error)),
        ]
    }

    /// All closed connections.
    pub fn total(&self) -> u64 {
        self.by_reason().iter().map(|(_, n)| n).sum()
    }
}
