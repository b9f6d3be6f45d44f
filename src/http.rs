//! The HTTP router on `--http-addr`: the WebSocket endpoint and the probes.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::health::Health;
use crate::ws::{self, Gateway};

/// `GET /ws`, `GET /healthz`, `GET /readyz`.
pub fn router(gateway: Gateway, health: Health) -> Router {
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    Router::new()
        .route("/ws", get(ws::upgrade))
        .with_state(gateway)
        .merge(probes)
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
