//! Span helpers shared by every binary: one tracer, gRPC semantic-convention attributes,
//! and one way to end a span with a gRPC result.
//!
//! Sluice's spans are `tracing` spans bridged to OpenTelemetry by `tracing-opentelemetry`
//! (installed by [`crate::telemetry::init`]): `otel.kind` names the kind, the parent comes
//! from the message's extracted context ([`with_parent`]), links from
//! `OpenTelemetrySpanExt::add_link`, and the span ends when its last handle drops — so a
//! cancelled future still ends its span. A span that must start in the past (a queue wait)
//! is made through the OpenTelemetry API as a child of a `tracing` span's context
//! ([`child_since`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{Span as _, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The tracer every Sluice span comes from.
pub fn tracer() -> BoxedTracer {
    global::tracer("sluice")
}

/// Sets `span`'s OpenTelemetry parent to `parent` (a context extracted from metadata or a
/// message) before the span is first entered, and returns it. A parent without a valid span
/// leaves the span a root.
pub fn with_parent(span: tracing::Span, parent: Context) -> tracing::Span {
    if parent.has_active_span() || parent.span().span_context().is_valid() {
        // Fails only once the span has started; callers set it right after creating it.
        let _ = span.set_parent(parent);
    }
    span
}

/// Marks `span` failed with a gRPC code and message, and records `event` on it.
pub fn fail(span: &tracing::Span, event: &'static str, code: i32, message: &str) {
    span.add_event(
        event,
        vec![
            KeyValue::new("rpc.grpc.status_code", i64::from(code)),
            KeyValue::new("message", message.to_string()),
        ],
    );
    span.set_attribute("rpc.grpc.status_code", i64::from(code));
    span.set_status(Status::error(message.to_string()));
}

/// Marks `span` OK (gRPC code 0).
pub fn ok(span: &tracing::Span) {
    span.set_attribute("rpc.grpc.status_code", 0i64);
}

/// Ends `span` with a result: OK, or failed with `event` and the error's code and message.
pub fn finish(span: &tracing::Span, error: Option<(i32, &str)>, event: &'static str) {
    match error {
        Some((code, message)) => fail(span, event, code, message),
        None => ok(span),
    }
}

/// A span named `name` that started at `since` (a queue wait, measured before the span that
/// contains it existed), a child of `parent`, ended now.
pub fn child_since(parent: &tracing::Span, name: &'static str, since: SystemTime) {
    let tracer = tracer();
    let cx = parent.context();
    let mut span = tracer
        .span_builder(name)
        .with_start_time(since)
        .start_with_context(&tracer, &cx);
    span.end();
}

/// A Unix-microsecond timestamp as a `SystemTime` (None for 0).
pub fn from_unix_micros(micros: i64) -> Option<SystemTime> {
    (micros > 0).then(|| UNIX_EPOCH + Duration::from_micros(micros as u64))
}

/// Now as Unix epoch microseconds.
pub fn now_unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// The sorted trace-context keys a message carried (what a hop received), for a span
/// attribute: shows which propagation formats crossed the hop.
pub fn received_formats<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let mut keys: Vec<&str> = keys.map(String::as_str).collect();
    keys.sort_unstable();
    keys.join(",")
}
