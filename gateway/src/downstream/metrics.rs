//! One downstream's metrics, labelled `downstream="<service>"`: queue depth and capacity,
//! live streams, requests in flight, reconnects, failures, and the time requests spend in
//! the queue, on the wire (window waits) and in round trips.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) queue_depth: Gauge,
    pub(crate) queue_capacity: Gauge,
    pub(crate) live_streams: Gauge,
    pub(crate) inflight: Gauge,
    pub(crate) reconnects: Counter,
    pub(crate) broken_requests: Counter,
    pub(crate) deadline_drops: Counter,
    pub(crate) queue_wait: Histogram,
    pub(crate) roundtrip: Histogram,
    pub(crate) send_blocked: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let m = Self {
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
            live_streams: Gauge::default(),
            inflight: Gauge::default(),
            reconnects: Counter::default(),
            broken_requests: Counter::default(),
            deadline_drops: Counter::default(),
            queue_wait: Histogram::new(sluice_core::metrics::latency_buckets()),
            roundtrip: Histogram::new(sluice_core::metrics::latency_buckets()),
            send_blocked: Counter::default(),
        };
        registry.register(
            "downstream_send_blocked_seconds",
            "Seconds between a stream handing a message to HTTP/2 and being asked for the next: time spent waiting for window (transport backpressure), all streams",
            m.send_blocked.clone(),
        );
        registry.register(
            "downstream_queue_depth",
            "Requests queued for the downstream, not yet taken by a stream",
            m.queue_depth.clone(),
        );
        registry.register(
            "downstream_queue_capacity",
            "Capacity of the downstream queue (--downstream-queue)",
            m.queue_capacity.clone(),
        );
        registry.register(
            "downstream_live_streams",
            "Open streams to the downstream",
            m.live_streams.clone(),
        );
        registry.register(
            "downstream_inflight",
            "Requests sent on a stream and awaiting a reply",
            m.inflight.clone(),
        );
        registry.register(
            "downstream_reconnects",
            "Stream (re)open attempts that failed or streams that broke",
            m.reconnects.clone(),
        );
        registry.register(
            "downstream_broken_requests",
            "Requests failed UNAVAILABLE because their stream broke",
            m.broken_requests.clone(),
        );
        registry.register(
            "downstream_deadline_drops",
            "Requests dropped unsent because their deadline passed in the queue",
            m.deadline_drops.clone(),
        );
        registry.register(
            "downstream_queue_wait_seconds",
            "Time requests spent in the downstream queue",
            m.queue_wait.clone(),
        );
        registry.register(
            "downstream_roundtrip_seconds",
            "Time from send on the stream to the reply",
            m.roundtrip.clone(),
        );
        m
    }
}
