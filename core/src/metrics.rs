//! The Prometheus registry each binary exposes on `/metrics`, and process metrics.
//!
//! prometheus-client is the Prometheus project's own Rust client: typed metric families,
//! label sets as structs, and OpenMetrics text output.

use std::sync::Arc;

use crate::incoming::ConnectionMetrics;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Holds one unit of a gauge (in flight, busy, open streams) and gives it back on drop, on
/// every path: completion, error, a cancelled future, a panic. `inc(); work.await; dec()`
/// leaks the count when the future is dropped mid-await.
#[must_use = "the gauge is decremented when the guard drops"]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    /// Increments `gauge` until the guard drops.
    pub fn hold(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

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
    admin_connections: ConnectionMetrics,
}

impl Metrics {
    /// Freezes `registry`, adding process metrics (`process_resident_memory_bytes`) and
    /// the gRPC and admin listeners' connection metrics (`connections_*`,
    /// `accept_errors_total`, `admin_connections_*`, `admin_accept_errors_total`).
    pub fn new(mut registry: Registry) -> Self {
        let connections = ConnectionMetrics::register(&mut registry);
        let admin_connections =
            ConnectionMetrics::register_for(registry.sub_registry_with_prefix("admin"), "admin");
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
            admin_connections,
        }
    }

    /// The gRPC listener's connection metrics.
    pub fn connections(&self) -> &ConnectionMetrics {
        &self.connections
    }

    /// The admin listener's connection metrics (`admin_connections_*`).
    pub fn admin_connections(&self) -> &ConnectionMetrics {
        &self.admin_connections
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauge_guard_gives_back_on_drop_even_when_cancelled() {
        let g: Gauge = Gauge::default();
        let held = GaugeGuard::hold(&g);
        assert_eq!(g.get(), 1);
        let fut = async move {
            let _inner = held;
            std::future::pending::<()>().await
        };
        drop(fut);
        assert_eq!(g.get(), 0);
    }
}
