//! The audit log's metrics: what the writer counts and times, registered once on open. The
//! names are part of the dashboards and the benchmarks (`audit_fsync_seconds`), so they do
//! not change.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every metric the log reports; clones share the same series.
#[derive(Clone)]
pub(super) struct LogMetrics {
    pub(super) appended: Counter,
    pub(super) duplicates: Counter,
    pub(super) conflicts: Counter,
    pub(super) records: Gauge,
    pub(super) batch_size: Histogram,
    pub(super) fsync_seconds: Histogram,
    pub(super) queue_depth: Gauge,
    pub(super) queue_capacity: Gauge,
}

impl LogMetrics {
    pub(super) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            appended: Counter::default(),
            duplicates: Counter::default(),
            conflicts: Counter::default(),
            records: Gauge::default(),
            batch_size: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1.0, 2.0, 12,
            )),
            fsync_seconds: Histogram::new(sluice_core::metrics::latency_buckets()),
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
        };
        registry.register(
            "audit_appended",
            "Records written and fsync'ed",
            m.appended.clone(),
        );
        registry.register(
            "audit_duplicates",
            "Replays: appends of an id already logged with the same payload (nothing written)",
            m.duplicates.clone(),
        );
        registry.register(
            "audit_conflicts",
            "Appends refused because their id is logged with a different payload",
            m.conflicts.clone(),
        );
        registry.register("audit_records", "Records in the log", m.records.clone());
        registry.register(
            "audit_batch_records",
            "Records per group commit",
            m.batch_size.clone(),
        );
        registry.register(
            "audit_fsync_seconds",
            "Time per write + fdatasync",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "audit_append_queue_depth",
            "Appends waiting for the writer",
            m.queue_depth.clone(),
        );
        registry.register(
            "audit_append_queue_capacity",
            "Capacity of the append queue (--append-queue)",
            m.queue_capacity.clone(),
        );
        m
    }
}
