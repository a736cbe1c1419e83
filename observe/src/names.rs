//! The metric names readers outside a binary use, as the binary serves them (full names,
//! with the binary's prefix; a counter's with its `_total`). A test of the end-to-end suite
//! (`every_metric_name_readers_use_is_served`) starts the mesh and checks each against what
//! the binaries register, so a rename cannot leave a reader behind silently.
//!
//! Labels are written where they are read (e.g. `{downstream="risk"}`): they are part of the
//! question, not of the name.

/// The gateway's (`sluice_gateway_*`).
pub mod gateway {
    /// Every gateway metric name starts with this.
    pub const PREFIX: &str = "sluice_gateway_";
    pub const INFLIGHT: &str = "sluice_gateway_inflight";
    pub const TRANSACTIONS_TOTAL: &str = "sluice_gateway_transactions_total";
    pub const REJECTED_TOTAL: &str = "sluice_gateway_rejected_total";
    pub const LATENCY_SECONDS: &str = "sluice_gateway_latency_seconds";
    pub const STAGE_SECONDS: &str = "sluice_gateway_stage_seconds";
    pub const SUBMIT_STREAMS: &str = "sluice_gateway_submit_streams";
    pub const ADMISSION_BLOCKED_SECONDS_TOTAL: &str =
        "sluice_gateway_admission_blocked_seconds_total";
    pub const CONCURRENCY_LIMIT: &str = "sluice_gateway_concurrency_limit";
    pub const CONCURRENCY_BASELINE_SECONDS: &str = "sluice_gateway_concurrency_baseline_seconds";
    pub const DEGRADATION_LEVEL: &str = "sluice_gateway_degradation_level";
    pub const PARTITION_DEGRADATION_LEVEL: &str = "sluice_gateway_partition_degradation_level";
    pub const BOTTLENECK: &str = "sluice_gateway_bottleneck";
    pub const PRIORITY_DEMOTED_TOTAL: &str = "sluice_gateway_priority_demoted_total";
    pub const CLIENT_BUCKETS_EVICTED_TOTAL: &str = "sluice_gateway_client_buckets_evicted_total";
    pub const NOTIFICATIONS_SHED_TOTAL: &str = "sluice_gateway_notifications_shed_total";
    pub const RISK_RETRIES_TOTAL: &str = "sluice_gateway_risk_retries_total";
    pub const DOWNSTREAM_QUEUE_DEPTH: &str = "sluice_gateway_downstream_queue_depth";
    pub const DOWNSTREAM_QUEUE_CAPACITY: &str = "sluice_gateway_downstream_queue_capacity";
    pub const DOWNSTREAM_INFLIGHT: &str = "sluice_gateway_downstream_inflight";
    pub const DOWNSTREAM_LIVE_STREAMS: &str = "sluice_gateway_downstream_live_streams";
    pub const DOWNSTREAM_LANES: &str = "sluice_gateway_downstream_lanes";
    pub const DOWNSTREAM_RECONNECTS_TOTAL: &str = "sluice_gateway_downstream_reconnects_total";
    pub const DOWNSTREAM_DEADLINE_DROPS_TOTAL: &str =
        "sluice_gateway_downstream_deadline_drops_total";
    pub const DOWNSTREAM_ROUNDTRIP_SECONDS: &str = "sluice_gateway_downstream_roundtrip_seconds";
    pub const DOWNSTREAM_SEND_BLOCKED_SECONDS_TOTAL: &str =
        "sluice_gateway_downstream_send_blocked_seconds_total";
    pub const DOWNSTREAM_REPLICA_OUTSTANDING: &str =
        "sluice_gateway_downstream_replica_outstanding";
    pub const DOWNSTREAM_REPLICA_LIVE_STREAMS: &str =
        "sluice_gateway_downstream_replica_live_streams";
    pub const DOWNSTREAM_REPLICA_REQUESTS_TOTAL: &str =
        "sluice_gateway_downstream_replica_requests_total";
    pub const ADMIN_CONNECTIONS_REJECTED_TOTAL: &str =
        "sluice_gateway_admin_connections_rejected_total";
    pub const OTLP_SPANS_DROPPED_TOTAL: &str = "sluice_gateway_otlp_spans_dropped_total";
    pub const CLOCK_REFUSED_TOTAL: &str = "sluice_gateway_clock_refused_total";
    pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "sluice_gateway_process_resident_memory_bytes";

    /// Every name above, for the check that the gateway serves them.
    pub const ALL: [&str; 32] = [
        INFLIGHT,
        TRANSACTIONS_TOTAL,
        REJECTED_TOTAL,
        LATENCY_SECONDS,
        STAGE_SECONDS,
        SUBMIT_STREAMS,
        ADMISSION_BLOCKED_SECONDS_TOTAL,
        CONCURRENCY_LIMIT,
        CONCURRENCY_BASELINE_SECONDS,
        DEGRADATION_LEVEL,
        PARTITION_DEGRADATION_LEVEL,
        BOTTLENECK,
        PRIORITY_DEMOTED_TOTAL,
        CLIENT_BUCKETS_EVICTED_TOTAL,
        NOTIFICATIONS_SHED_TOTAL,
        RISK_RETRIES_TOTAL,
        DOWNSTREAM_QUEUE_DEPTH,
        DOWNSTREAM_QUEUE_CAPACITY,
        DOWNSTREAM_INFLIGHT,
        DOWNSTREAM_LIVE_STREAMS,
        DOWNSTREAM_LANES,
        DOWNSTREAM_RECONNECTS_TOTAL,
        DOWNSTREAM_DEADLINE_DROPS_TOTAL,
        DOWNSTREAM_ROUNDTRIP_SECONDS,
        DOWNSTREAM_SEND_BLOCKED_SECONDS_TOTAL,
        DOWNSTREAM_REPLICA_OUTSTANDING,
        DOWNSTREAM_REPLICA_LIVE_STREAMS,
        DOWNSTREAM_REPLICA_REQUESTS_TOTAL,
        ADMIN_CONNECTIONS_REJECTED_TOTAL,
        OTLP_SPANS_DROPPED_TOTAL,
        CLOCK_REFUSED_TOTAL,
        PROCESS_RESIDENT_MEMORY_BYTES,
    ];
}

/// A service's (`sluice_risk_*`, `sluice_notification_*`, `sluice_logging_*`): every service
/// runs the same worker pool and listeners, under its own prefix.
pub mod service {
    /// `sluice_<service>_<metric>`, e.g. `service::name("risk", service::WORKER_POOL_BUSY)`.
    pub fn name(service: &str, metric: &str) -> String {
        format!("sluice_{service}_{metric}")
    }

    pub const WORKER_POOL_BUSY: &str = "worker_pool_busy";
    pub const WORKER_POOL_CAPACITY: &str = "worker_pool_capacity";
    pub const WORKER_POOL_PROCESSED_TOTAL: &str = "worker_pool_processed_total";
    pub const DEADLINE_DROPS_TOTAL: &str = "deadline_drops_total";
    pub const CONNECTIONS_OPEN: &str = "connections_open";
    pub const CONNECTIONS_REJECTED_TOTAL: &str = "connections_rejected_total";
    pub const ACCEPT_ERRORS_TOTAL: &str = "accept_errors_total";

    /// Every name above, for the check that each service serves them.
    pub const ALL: [&str; 7] = [
        WORKER_POOL_BUSY,
        WORKER_POOL_CAPACITY,
        WORKER_POOL_PROCESSED_TOTAL,
        DEADLINE_DROPS_TOTAL,
        CONNECTIONS_OPEN,
        CONNECTIONS_REJECTED_TOTAL,
        ACCEPT_ERRORS_TOTAL,
    ];
}

/// The audit log's (`sluice_logging_audit_*`).
pub mod logging {
    pub const AUDIT_FSYNC_SECONDS: &str = "sluice_logging_audit_fsync_seconds";
}
