//! The Prometheus registry each binary exposes on `/metrics`, and process metrics.
//!
//! prometheus-client is the Prometheus project's own Rust client: typed metric families,
//! label sets as structs, and OpenMetrics text output.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::incoming::ConnectionMetrics;

/// Histogram buckets for latencies in seconds: 100 µs to ~13 s.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 18)
}

/// A registry shared read-only once every metric is registered.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    resident_memory: Gauge,
    connections: ConnectionMetrics,
}

impl Metrics {
    /// Freezes `registry`, adding process metrics (`process_resident_memory_bytes`) and
    /// the gRPC listener's connection metrics (`connections_*`, `accept_errors_total`).
    pub fn new(mut registry: Registry) -> Self {
        let connections = ConnectionMetrics::register(&mut registry);
        let resident_memory = Gauge::default();
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size of this process",
            resident_memory.clone(),
        );
        registry.register(
            "otlp_spans_dropped",
            "Spans not exported: reason=queue_full (export queue full), export_failed (backend down or slow)",
            crate::telemetry::dropped_spans().clone(),
        );
        Self {
            registry: Arc::new(registry),
            resident_memory,
            connections,
        }
    }

    /// The gRPC listener's connection metrics.
    pub fn connections(&self) -> &ConnectionMetrics {
        &self.connections
    }

    /// The registry in Prometheus text format, process metrics refreshed.
    pub fn encode(&self) -> String {
        if let Some(rss) = resident_memory_bytes() {
            self.resident_memory.set(rss as i64);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// This process's resident set size, from `/proc/self/statm` (Linux only).
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
