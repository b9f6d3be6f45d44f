//! Logs and traces for the whole process, set up by one [`init`].
//!
//! - Logs: `tracing` events on standard error, text or JSON lines
//!   (`--log-format`), filtered by `RUST_LOG` or `--log-level`. JSON lines
//!   carry the trace and span ids of the span they were logged in, when
//!   tracing is on.
//! - Traces: exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the standard `OTEL_*`
//!   variables honoured by the SDK (service name, resource attributes, batch
//!   settings). Sampling is parent-based: a traced caller decides, otherwise
//!   `--trace-sample-ratio` of new traces are kept. When no endpoint is set,
//!   no tracing layer is installed and the per-message trace helpers in
//!   [`trace`] return at once, so tracing costs next to nothing.
//!
//! Metrics are per pod (see [`metrics`](crate::metrics)), not set up here.

mod json;
pub mod trace;

use std::io::IsTerminal;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, TelemetryArgs};
use crate::message::NodeId;

pub use trace::is_tracing;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}: {source}")]
    Filter {
        /// The filter given.
        filter: String,
        /// Why it is invalid.
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built.
    #[error("OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global subscriber was already installed.
    #[error("logging is already set up: {0}")]
    AlreadySet(#[from] tracing_subscriber::util::TryInitError),
}

/// Keeps the trace pipeline alive; [`Telemetry::shutdown`] flushes it.
#[must_use = "dropping the guard loses spans not yet exported"]
pub struct Telemetry {
    tracer: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer
            && let Err(e) = tracer.shutdown()
        {
            tracing::warn!(error = %e, "flushing traces at exit failed");
        }
    }
}

/// Whether the environment asks for OTLP export.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
}

/// Added to every log filter that does not name kube_runtime itself.
const QUIET_WATCHER: &str = "kube_runtime::watcher=error";

/// Installs logging and, when configured, trace export, for node `node`.
/// Must run inside the tokio runtime (the OTLP exporter uses it).
pub fn init(args: &TelemetryArgs, node: NodeId) -> Result<Telemetry, TelemetryError> {
    let TelemetryArgs {
        log_format,
        log_level,
        trace_sample_ratio,
    } = args;
    let filter = match std::env::var("RUST_LOG") {
        Ok(filter) if !filter.is_empty() => filter,
        _ => log_level.clone(),
    };
    // NB: kube's watcher warns at every retry of a 403; discovery logs each
    // distinct failure once itself (cluster::discovery::kubernetes).
    let filter = if filter.contains("kube_runtime") {
        filter
    } else {
        format!("{filter},{QUIET_WATCHER}")
    };
    let env_filter =
        EnvFilter::try_new(&filter).map_err(|source| TelemetryError::Filter { filter, source })?;

    let tracer = if otlp_configured() {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        let mut resource = Resource::builder()
            .with_attribute(KeyValue::new("service.instance.id", node.to_string()));
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("herald");
        }
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(*trace_sample_ratio)));
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(sampler)
                .with_resource(resource.build())
                .build(),
        )
    } else {
        None
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let otel_layer = tracer
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("herald")));
    trace::set_tracing(tracer.is_some());

    // Colours only for a person at a terminal, never in files or collectors.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry()
        .with(env_filter)
        .with(otel_layer);
    match log_format {
        LogFormat::Text => registry.with(fmt).try_init()?,
        LogFormat::Json => registry
            .with(fmt.event_format(json::JsonLines))
            .try_init()?,
    }
    Ok(Telemetry { tracer })
}
