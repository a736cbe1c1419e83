//! Span helpers shared by every binary: one tracer, gRPC semantic-convention attributes,
//! and one way to mark a span failed.
//!
//! Sluice uses the OpenTelemetry API directly (not through `tracing`) for its trace spans:
//! it needs explicit span kinds, explicit parents taken from each message, links to
//! long-lived stream spans, and start times in the past (queue waits).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry::{Context, KeyValue};

/// The tracer every Sluice span comes from.
pub fn tracer() -> BoxedTracer {
    global::tracer("sluice")
}

/// `rpc.*` attributes for a gRPC method, e.g. `("mesh.v1.Risk", "Assess")`.
pub fn rpc(service: &'static str, method: &'static str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service),
        KeyValue::new("rpc.method", method),
    ]
}

/// Marks the span in `cx` failed with a gRPC code and message, and records an event.
pub fn fail(cx: &Context, event: &'static str, code: i32, message: &str) {
    let span = cx.span();
    span.add_event(
        event,
        vec![
            KeyValue::new("rpc.grpc.status_code", i64::from(code)),
            KeyValue::new("message", message.to_string()),
        ],
    );
    span.set_attribute(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    span.set_status(Status::error(message.to_string()));
}

/// Marks the span in `cx` OK (gRPC code 0).
pub fn ok(cx: &Context) {
    cx.span()
        .set_attribute(KeyValue::new("rpc.grpc.status_code", 0i64));
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
