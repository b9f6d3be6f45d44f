//! The WebSocket gateway: `GET /ws` upgrades into a [`session`] speaking
//! [`protocol`] v1. The gateway joins each session to the hub and never talks
//! to peers or to the gRPC API.

pub mod protocol;
pub mod session;

use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::Response;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::hub::Hub;
use crate::stats;

/// Read buffer per connection. Client requests are small; tungstenite's
/// 128 KiB default would dominate an idle connection's memory.
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Bytes tungstenite gathers before writing to the socket. Zero makes each
/// frame go out at once; coalescing already batches messages into frames.
const WRITE_BUFFER_BYTES: usize = 0;

/// What the gateway needs to run sessions. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    /// The local topic registry sessions join.
    pub hub: Hub,
    /// Messages queued per connection before it counts as slow.
    pub queue_capacity: usize,
    /// Most subscriptions per connection.
    pub max_subscriptions: usize,
    /// Largest client message, in bytes.
    pub max_frame_bytes: usize,
    /// Session timing.
    pub settings: session::Settings,
    /// Where sessions count what they do.
    pub meters: session::Meters,
    /// Sessions run on this tracker so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// Cancelled when the pod shuts down.
    pub shutdown: CancellationToken,
}

/// `GET /ws`: upgrades the connection and runs its session.
pub async fn upgrade(State(gateway): State<Gateway>, upgrade: WebSocketUpgrade) -> Response {
    let limit = gateway.max_frame_bytes;
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            // The tracker token keeps shutdown waiting until this session
            // has sent its close frame.
            let token = gateway.tracker.token();
            stats::add(&gateway.meters.counters.connections_opened, 1);
            let (membership, mailbox) = gateway
                .hub
                .join(gateway.queue_capacity, gateway.max_subscriptions);
            let span = tracing::debug_span!("ws_session");
            async move {
                let end = session::run(
                    socket,
                    membership,
                    mailbox,
                    gateway.settings,
                    gateway.shutdown.clone(),
                    gateway.meters.clone(),
                )
                .await;
                tracing::debug!(?end, "session ended");
                drop(token);
            }
            .instrument(span)
        })
}
