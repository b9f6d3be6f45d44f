//! Carrying one trace across the path of a message: the gRPC caller's
//! context becomes the parent of the `publish` span; the publish span's
//! context travels with the message (see
//! [`TraceContext`]) to each peer through a
//! `peer_send` span, and each pod's `deliver` span hangs under it.
//!
//! Every helper here returns at once when tracing is off.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::message::TraceContext;

static TRACING: AtomicBool = AtomicBool::new(false);

pub(super) fn set_tracing(on: bool) {
    TRACING.store(on, Ordering::Relaxed);
}

/// Whether spans are being exported.
pub fn is_tracing() -> bool {
    TRACING.load(Ordering::Relaxed)
}

struct Carrier<'a>(&'a mut TraceContext);

impl Injector for Carrier<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct ReadCarrier<'a>(&'a TraceContext);

impl Extractor for ReadCarrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

fn inject(span: &Span) -> TraceContext {
    let mut carrier = TraceContext::new();
    let cx = span.context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Carrier(&mut carrier))
    });
    carrier
}

/// Makes `parent` (a caller's or a peer's trace context) the parent of
/// `span`. Does nothing when tracing is off or `parent` holds no context.
pub fn adopt(span: &Span, parent: &TraceContext) {
    if !is_tracing() || parent.is_empty() {
        return;
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&ReadCarrier(parent)));
    // A span that already started keeps its parent; that is not an error
    // worth reporting for a trace.
    let _ = span.set_parent(cx);
}

/// The span of one gRPC publish call, child of the caller's trace context.
/// When tracing is off this is a disabled span, so the publish path pays
/// nothing for it.
pub fn publish_span(caller: &TraceContext, batch: bool) -> Span {
    if !is_tracing() {
        return Span::none();
    }
    let span = tracing::info_span!("publish", batch);
    adopt(&span, caller);
    span
}

/// The current span's context, to travel with a message.
pub fn inject_current() -> Option<TraceContext> {
    is_tracing().then(|| inject(&Span::current()))
}

/// Runs `f` inside a `deliver` span under the current span (or under
/// `parent`, for a message from a peer).
pub fn in_deliver_span<R>(parent: Option<&TraceContext>, f: impl FnOnce() -> R) -> R {
    if !is_tracing() {
        return f();
    }
    let span = tracing::info_span!("deliver");
    if let Some(parent) = parent {
        adopt(&span, parent);
    }
    span.in_scope(f)
}

/// The context of a `peer_send` span under `parent`, marking the hop of a
/// message to the peer at `peer`.
pub fn hop(parent: &TraceContext, peer: &str) -> TraceContext {
    if !is_tracing() {
        return TraceContext::new();
    }
    let span = tracing::info_span!("peer_send", peer);
    adopt(&span, parent);
    inject(&span)
}

/// The trace and span ids of the current span, while tracing.
pub fn current_ids() -> Option<(String, String)> {
    if !is_tracing() {
        return None;
    }
    let cx = Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}
