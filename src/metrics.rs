//! Metrics through OpenTelemetry: a Prometheus exposition for `GET
//! /metrics`, and OTLP export as well when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set. One meter provider per pod.
//!
//! The hot paths only bump atomics ([`Counters`], the hub's stats); the
//! instruments here are observable ones that read those atomics at scrape
//! time, so metrics add no work per message. The one exception is the
//! delivery latency histogram, recorded once per frame written.
//!
//! Every name starts with `herald_` and carries its unit; labels are few and
//! fixed (`reason`, `result`, `listener`), never a topic or a user.

use std::sync::Arc;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Histogram, Meter, MeterProvider as _};
use opentelemetry_sdk::metrics::SdkMeterProvider;

use crate::broadcast::Broadcast;
use crate::history::History;
use crate::hub::Hub;
use crate::stats::{Counters, read};

/// Bucket bounds of the delivery latency histogram, in seconds: fine below
/// a millisecond, where a healthy pod lives, coarse up to ten seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 10.0,
];

/// Why metrics could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The Prometheus exporter could not be built.
    #[error("Prometheus exporter: {0}")]
    Prometheus(#[from] opentelemetry_sdk::error::OTelSdkError),
    /// The OTLP metric exporter could not be built.
    #[error("OTLP metric exporter: {0}")]
    Otlp(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// What the observable instruments read.
#[derive(Clone)]
pub struct Sources {
    /// The topic registry.
    pub hub: Hub,
    /// Per-topic history.
    pub history: History,
    /// The broadcast backend.
    pub broadcast: Arc<dyn Broadcast>,
    /// The event counters.
    pub counters: Arc<Counters>,
}

/// A pod's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    provider: SdkMeterProvider,
    registry: prometheus::Registry,
    /// Time from a message's arrival on this pod (publish or from a peer) to
    /// its frame being written to a client, recorded once per frame.
    pub delivery_latency: Histogram<f64>,
}

impl Metrics {
    /// Builds the pod's meter provider and its instruments over `sources`.
    pub fn new(sources: Sources) -> Result<Self, MetricsError> {
        let registry = prometheus::Registry::new();
        let prometheus = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .without_target_info()
            .without_units()
            .without_counter_suffixes()
            .scope_info_enabled(false)
            .build()?;
        let mut builder = SdkMeterProvider::builder().with_reader(prometheus);
        let otlp = [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
        ]
        .iter()
        .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()));
        if otlp {
            let exporter = opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .build()?;
            builder = builder.with_periodic_exporter(exporter);
        }
        let provider = builder.build();
        let meter = provider.meter("herald");
        register(&meter, sources);
        let delivery_latency = meter
            .f64_histogram("herald_delivery_latency_seconds")
            .with_description(
                "Time from a message's arrival on this pod to its frame being written to a client.",
            )
            .with_unit("s")
            .with_boundaries(LATENCY_BUCKETS.to_vec())
            .build();
        Ok(Self {
            provider,
            registry,
            delivery_latency,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let encoder = prometheus::TextEncoder::new();
        encoder
            .encode_to_string(&self.registry.gather())
            .unwrap_or_else(|e| format!("# error encoding metrics: {e}\n"))
    }

    /// Flushes OTLP export, if any, and stops the provider.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(error = %e, "stopping metrics");
        }
    }
}

fn register(meter: &Meter, sources: Sources) {
    let counter = |name: &'static str, help: &'static str, read: fn(&Sources) -> u64| {
        let sources = sources.clone();
        meter
            .u64_observable_counter(name)
            .with_description(help)
            .with_callback(move |o| o.observe(read(&sources), &[]))
            .build();
    };
    let gauge = |name: &'static str, help: &'static str, read: fn(&Sources) -> u64| {
        let sources = sources.clone();
        meter
            .u64_observable_gauge(name)
            .with_description(help)
            .with_callback(move |o| o.observe(read(&sources), &[]))
            .build();
    };

    gauge(
        "herald_connections_open",
        "WebSocket connections open now.",
        |s| s.counters.connections_open(),
    );
    let refused = sources.clone();
    meter
        .u64_observable_counter("herald_refusals_total")
        .with_description("Requests refused at the edge (limits, auth, drain), by reason.")
        .with_callback(move |o| {
            for (reason, n) in refused.counters.refused.by_reason() {
                o.observe(n, &[KeyValue::new("reason", reason)]);
            }
        })
        .build();
    let handshakes = sources.clone();
    meter
        .u64_observable_gauge("herald_handshakes_pending")
        .with_description(
            "Connections accepted on an HTTP listener whose first request's headers are not in yet, by listener.",
        )
        .with_callback(move |o| {
            for (listener, n) in handshakes.counters.handshakes.by_listener() {
                o.observe(n, &[KeyValue::new("listener", listener)]);
            }
        })
        .build();
    let tokens = sources.clone();
    meter
        .u64_observable_counter("herald_token_refusals_total")
        .with_description(
            "User tokens refused (at the upgrade or a refresh), by why: expired, bad_signature, wrong_audience, ...",
        )
        .with_callback(move |o| {
            for (reason, n) in tokens.counters.token_refusals() {
                o.observe(n, &[KeyValue::new("reason", reason)]);
            }
        })
        .build();
    counter(
        "herald_connections_opened_total",
        "WebSocket connections accepted.",
        |s| read(&s.counters.connections_opened),
    );
    let closed = sources.clone();
    meter
        .u64_observable_counter("herald_connections_closed_total")
        .with_description("WebSocket connections closed, by reason.")
        .with_callback(move |o| {
            for (reason, n) in closed.counters.connections_closed.by_reason() {
                o.observe(n, &[KeyValue::new("reason", reason)]);
            }
        })
        .build();
    gauge(
        "herald_subscriptions",
        "Topic subscriptions held by connections on this pod.",
        |s| s.hub.stats().subscriptions(),
    );
    gauge(
        "herald_topics",
        "Topics with at least one subscriber on this pod.",
        |s| s.hub.stats().topics(),
    );
    gauge(
        "herald_presence_entries",
        "Presence entries this pod holds (one per connection per presence topic), its own and its peers'.",
        |s| s.broadcast.presence().entries(),
    );
    gauge(
        "herald_history_bytes",
        "Bytes of messages this pod keeps for resumes and history.",
        |s| s.history.stats().bytes() as u64,
    );
    gauge(
        "herald_history_messages",
        "Messages this pod keeps for resumes and history.",
        |s| s.history.stats().messages() as u64,
    );
    gauge(
        "herald_history_topics",
        "Topics whose position this pod knows.",
        |s| s.history.stats().topics() as u64,
    );
    counter(
        "herald_history_evicted_total",
        "Kept messages dropped: for the count, byte or age bound, or because a hole or a new epoch broke their run.",
        |s| s.history.stats().evicted(),
    );
    let pacing = sources.clone();
    meter
        .f64_observable_gauge("herald_write_delay_seconds")
        .with_description(
            "How long a busy connection waits between two writes now (fixed, or following load with --write-delay=auto).",
        )
        .with_unit("s")
        .with_callback(move |o| o.observe(pacing.hub.pacing().delay().as_secs_f64(), &[]))
        .build();
    let published = sources.clone();
    meter
        .u64_observable_counter("herald_messages_published_total")
        .with_description("Messages published on this pod, by result.")
        .with_callback(move |o| {
            let c = &published.counters;
            o.observe(read(&c.published), &[KeyValue::new("result", "accepted")]);
            o.observe(
                read(&c.publish_refused),
                &[KeyValue::new("result", "refused")],
            );
        })
        .build();
    counter(
        "herald_messages_delivered_total",
        "Messages queued for a connection on this pod (one per subscriber).",
        |s| s.hub.stats().delivered(),
    );
    counter(
        "herald_messages_behind_total",
        "Messages not queued live for a connection behind on their topic: it reads them from history as it catches up.",
        |s| s.hub.stats().behind(),
    );
    let dropped = sources.clone();
    meter
        .u64_observable_counter("herald_messages_dropped_total")
        .with_description(
            "Messages dropped, by reason: a slow client's or a peer's queue was full.",
        )
        .with_callback(move |o| {
            o.observe(
                dropped.hub.stats().dropped(),
                &[KeyValue::new("reason", "slow_client")],
            );
            o.observe(
                read(&dropped.counters.peer_queue_drops),
                &[KeyValue::new("reason", "peer_queue_full")],
            );
        })
        .build();
    counter(
        "herald_bytes_out_total",
        "Bytes of WebSocket frames written to clients.",
        |s| read(&s.counters.bytes_out),
    );
    gauge(
        "herald_peers_known",
        "Peers this pod has discovered.",
        |s| s.broadcast.peers().len() as u64,
    );
    gauge(
        "herald_peers_connected",
        "Peers this pod holds an outgoing stream to.",
        |s| s.broadcast.peers().iter().filter(|p| p.connected).count() as u64,
    );
    counter(
        "herald_discovery_errors_total",
        "Failures reading the peer discovery source.",
        |s| read(&s.counters.discovery_errors),
    );
    counter(
        "herald_peer_auth_failures_total",
        "Peer handshakes refused because the peer did not prove the cluster secret (either side).",
        |s| read(&s.counters.peer_auth_failures),
    );
    counter(
        "herald_peer_reconnects_total",
        "Peer streams re-established after a break.",
        |s| read(&s.counters.peer_reconnects),
    );
    counter(
        "herald_redis_refused_total",
        "Publishes refused because Redis could not take them: its queue was full, or it was unreachable or failed (--broadcast redis).",
        |s| read(&s.counters.redis_refused),
    );
    counter(
        "herald_peer_messages_skipped_total",
        "Messages this pod numbered and did not send to a peer, because the peer does not follow their topic (--peer-routing interest).",
        |s| read(&s.counters.peer_skipped),
    );
    counter(
        "herald_peer_bytes_sent_total",
        "Bytes of peer-wire frames written to other pods after the handshake.",
        |s| read(&s.counters.peer_bytes_sent),
    );
}
