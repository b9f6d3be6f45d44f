//! The WebSocket gateway: `GET /ws` upgrades into a [`session`] speaking
//! [`protocol`] v1. The gateway joins each session to the hub and never talks
//! to peers or to the gRPC API.
//!
//! Before a connection is upgraded, in this order (each refusal is an HTTP
//! error with a JSON body `{"error":{"code":..,"message":..}}`, no socket is
//! opened, and `herald_refusals_total{reason}` goes up):
//! 1. the pod is draining → 503 `draining`;
//! 2. the `Origin` is not in `--allowed-origins` → 403 `forbidden`;
//! 3. `--max-connections` are open → 503 `too_many_connections`;
//! 4. more than `--max-connection-rate` new connections this second → 429
//!    `rate_limited`;
//! 5. with `--auth jwt`, the token (header, `?token=` or subprotocol) is
//!    missing or invalid → 401 `unauthorized` with the reason.

pub mod fairness;
pub mod protocol;
pub mod requests;
pub mod session;
pub mod socket;

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::{self, Identity, Verifier};
use crate::hub::Who;
use crate::limit::{TokenBucket, jitter};
use crate::local::{Local, Recall};
use crate::presence::Presence;
use crate::publish::Publisher;
use crate::stats;

/// Read buffer per connection. Client requests are small; tungstenite's
/// 128 KiB default would dominate an idle connection's memory. NB:
/// tungstenite zero-fills this much before every read attempt, and the
/// session polls the socket on every wake-up, so a small buffer is also
/// cheaper on CPU (a 4 KiB buffer cost a third of a pod's instructions under
/// fan-out load); larger client messages simply take more reads.
const READ_BUFFER_BYTES: usize = 512;

/// Bytes tungstenite gathers before writing to the socket. Zero makes each
/// frame go out at once; coalescing already batches messages into frames.
const WRITE_BUFFER_BYTES: usize = 0;

/// Limits checked at the upgrade and per connection.
pub struct EdgeLimits {
    /// Most connections this pod holds.
    pub max_connections: u64,
    /// New connections per second, pod-wide.
    pub connection_rate: Mutex<TokenBucket>,
    /// Client publishes per second, per connection.
    pub client_publish_rate: u32,
    /// Allowed browser origins; empty allows any.
    pub allowed_origins: Vec<String>,
    /// New connections per second, per client address.
    pub address_rates: fairness::AddressRates,
    /// Where a client's address comes from.
    pub client_address: fairness::ClientAddress,
    /// Connections per user.
    pub user_connections: fairness::UserConnections,
}

/// What the gateway needs to run sessions. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    /// The pod's ordered topics; sessions join its hub.
    pub local: Local,
    /// Who is in which topic, for the `presence` ops.
    pub presence: Presence,
    /// Where a topic this pod knows nothing of is read from before a
    /// subscribe or `history` answers (the broadcast backend).
    pub recall: Arc<dyn Recall>,
    /// Messages queued per connection before it counts as slow.
    pub queue_capacity: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Largest client message, in bytes.
    pub max_frame_bytes: usize,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Where sessions count what they do.
    pub meters: session::Meters,
    /// Token checks; `None` with `--auth none`.
    pub verifier: Option<Verifier>,
    /// The publish path, when client publish is enabled.
    pub publisher: Option<Publisher>,
    /// Connection and publish limits.
    pub limits: Arc<EdgeLimits>,
    /// Sessions run on this tracker so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when the pod starts draining.
    pub drain: CancellationToken,
    /// Sessions close at random moments within this window of the drain.
    pub drain_window: Duration,
}

/// An upgrade refused before any socket was opened.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    /// For a refusal because of load, how many seconds the client should
    /// wait before it tries again: drawn at random from a range that fits
    /// the cause, so that the users refused together (a killed pod's users
    /// all reconnecting at once) come back spread out rather than together.
    fn retry_after(&self) -> Option<u64> {
        let (low, high) = match (self.status, self.code) {
            // Another pod answers a draining pod's users.
            (StatusCode::SERVICE_UNAVAILABLE, "draining") => (1, 3),
            // A full pod stays full for a while.
            (StatusCode::SERVICE_UNAVAILABLE, _) => (5, 30),
            // A rate bucket refills within a second or two.
            (StatusCode::TOO_MANY_REQUESTS, _) => (1, 5),
            _ => return None,
        };
        Some(rand::random_range(low..=high))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let retry_after = self.retry_after();
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(seconds) = retry_after {
            error["retry_after"] = seconds.into();
        }
        let mut response =
            (self.status, Json(serde_json::json!({ "error": error }))).into_response();
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(seconds));
        }
        response
    }
}

/// Counts a refusal in `counter` and makes it.
fn refuse<T>(
    counter: &std::sync::atomic::AtomicU64,
    status: StatusCode,
    code: &'static str,
    message: String,
) -> Result<T, Refusal> {
    stats::add(counter, 1);
    Err(Refusal {
        status,
        code,
        message,
    })
}

/// What an admitted upgrade carries into its session.
struct Admitted {
    /// The user, when auth is on.
    identity: Option<Identity>,
    /// The user's connection slot, held while the session lives.
    slot: Option<fairness::UserSlot>,
}

impl Gateway {
    /// The checks before an upgrade, cheapest and most specific first: the
    /// client address's own rate comes before the token check, and the
    /// pod-wide rate after it, so neither a flood from one address nor
    /// one of bad tokens spends what other users' reconnects need.
    async fn admit(
        &self,
        peer: Option<IpAddr>,
        headers: &HeaderMap,
        uri: &Uri,
    ) -> Result<Admitted, Refusal> {
        let refused = &self.meters.counters.refused;
        if self.drain.is_cancelled() {
            let message = "this pod is shutting down; connect again to reach another".into();
            return refuse(
                &refused.draining,
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                message,
            );
        }
        let limits = &self.limits;
        if !limits.allowed_origins.is_empty()
            && let Some(origin) = headers.get(header::ORIGIN)
            && !limits
                .allowed_origins
                .iter()
                .any(|allowed| origin.as_bytes() == allowed.as_bytes())
        {
            let message = format!(
                "origin {:?} is not allowed",
                String::from_utf8_lossy(origin.as_bytes())
            );
            return refuse(&refused.origin, StatusCode::FORBIDDEN, "forbidden", message);
        }
        if self.meters.counters.connections_open() >= limits.max_connections {
            let message = format!(
                "this pod holds its limit of {} connections",
                limits.max_connections
            );
            return refuse(
                &refused.max_connections,
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_connections",
                message,
            );
        }
        let now = Instant::now();
        if let Some(peer) = peer {
            let client = limits.client_address.of(peer, headers);
            if !limits.address_rates.try_take(client, now) {
                let message = format!(
                    "too many new connections from {client} right now; retry after a short random delay"
                );
                return refuse(
                    &refused.connection_rate_ip,
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    message,
                );
            }
        }
        let identity = self.identity(headers, uri).await?;
        let admitted = limits
            .connection_rate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .try_take(now);
        if !admitted {
            let message =
                "too many new connections right now; retry after a short random delay".into();
            return refuse(
                &refused.connection_rate,
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                message,
            );
        }
        let slot = match &identity {
            None => None,
            Some(identity) => match limits.user_connections.enter(&identity.sub) {
                Some(slot) => Some(slot),
                None => {
                    let message = format!(
                        "this user already holds {} connections to this pod, the most allowed",
                        limits.user_connections.max()
                    );
                    return refuse(
                        &refused.user_connections,
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_connections",
                        message,
                    );
                }
            },
        };
        Ok(Admitted { identity, slot })
    }

    /// The user of an upgrade's token, when auth is on.
    async fn identity(&self, headers: &HeaderMap, uri: &Uri) -> Result<Option<Identity>, Refusal> {
        let refused = &self.meters.counters.refused;
        let Some(verifier) = &self.verifier else {
            return Ok(None);
        };
        let Some(token) = auth::extract::token_from_upgrade(headers, uri.query()) else {
            let message = "a token is required: send Authorization: Bearer <jwt>, ?token=<jwt>, \
                           or the subprotocols herald.v1 and bearer.<jwt>"
                .into();
            return refuse(
                &refused.unauthorized,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                message,
            );
        };
        match verifier.authenticate(&token.value).await {
            Ok(identity) => Ok(Some(identity)),
            Err(e) => {
                tracing::debug!(
                    source = token.source.as_str(),
                    reason = e.reason(),
                    "refused a token"
                );
                self.meters.counters.token_refused(e.reason());
                refuse(
                    &refused.unauthorized,
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    e.to_string(),
                )
            }
        }
    }
}

/// `GET /ws`: checks the request, upgrades it and runs its session.
pub async fn upgrade(
    State(gateway): State<Gateway>,
    ConnectInfo(connection): ConnectInfo<socket::Connection>,
    headers: HeaderMap,
    uri: Uri,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // A request that is no WebSocket upgrade (a header missing, another
    // version) gets the same JSON error body as every other refusal.
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return Refusal {
                status: rejection.status(),
                code: "invalid_upgrade",
                message: rejection.body_text(),
            }
            .into_response();
        }
    };
    let Admitted { identity, slot } =
        match gateway.admit(connection.0.peer_ip(), &headers, &uri).await {
            Ok(admitted) => admitted,
            Err(refusal) => return refusal.into_response(),
        };
    let limit = gateway.max_frame_bytes;
    let mut upgrade = upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(limit)
        .max_frame_size(limit);
    // Browsers send their token as a subprotocol; answering with herald's
    // own protocol (never the token) completes their handshake.
    if auth::extract::offers_subprotocol(&headers) {
        upgrade = upgrade.protocols([auth::extract::SUBPROTOCOL]);
    }
    upgrade.on_upgrade(move |socket| {
        // The tracker token keeps shutdown waiting until this session has
        // sent its close frame.
        let token = gateway.tracker.token();
        let counters = gateway.meters.counters.clone();
        stats::add(&counters.connections_opened, 1);
        let outlet = Arc::new(socket::Outlet::new(connection.0, gateway.meters.clone()));
        let who = identity.as_ref().map_or_else(Who::default, |identity| Who {
            sub: Some(identity.sub.as_str().into()),
            info: identity.info.clone(),
        });
        let (membership, mailbox) = gateway.local.hub().join_wired(
            outlet.clone(),
            who,
            gateway.queue_capacity,
            gateway.max_subscriptions,
        );
        let publishing = gateway
            .publisher
            .clone()
            .map(|publisher| requests::Publishing {
                publisher,
                limit: TokenBucket::new(
                    gateway.limits.client_publish_rate,
                    gateway.limits.client_publish_rate,
                    Instant::now(),
                ),
            });
        let requests = requests::Requests {
            membership,
            local: gateway.local.clone(),
            presence: gateway.presence.clone(),
            recall: gateway.recall.clone(),
            identity,
            verifier: gateway.verifier.clone(),
            publishing,
            counters,
        };
        let settings = session::Settings {
            heartbeat_interval: gateway.heartbeat_interval,
            drain_delay: jitter(gateway.drain_window),
        };
        let span = tracing::debug_span!("ws_session");
        async move {
            let end = session::run(
                socket,
                outlet,
                requests,
                mailbox,
                settings,
                gateway.drain.clone(),
            )
            .await;
            tracing::debug!(?end, "session ended");
            drop(slot);
            drop(token);
        }
        .instrument(span)
    })
}
