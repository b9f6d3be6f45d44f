//! The HTTP routers: the public one (`GET /ws`, `GET /herald.js`, the demo) and the admin one (probes
//! and metrics). Both share the HTTP port unless `--admin-addr` moves the
//! admin router to its own listener, so an Ingress for `/ws` never exposes
//! metrics. [`serve`] runs a router on its listener, with the limits on
//! connections that have not sent a request yet.

pub mod serve;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::assets;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::ws::{self, Gateway};

/// `GET /ws` and the browser files of [`assets`] (`/herald.js`; with
/// `demo`, `/demo` and `/`).
pub fn public(gateway: Gateway, demo: bool) -> Router {
    Router::new()
        .route("/ws", get(ws::upgrade))
        .with_state(gateway)
        .merge(assets::router(demo))
}

/// `GET /healthz`, `GET /readyz`, `GET /metrics`.
pub fn admin(health: Health, metrics: Metrics) -> Router {
    let probes = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    Router::new()
        .route("/metrics", get(render_metrics))
        .with_state(metrics)
        .merge(probes)
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn render_metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
}
