//! A downstream service's metrics. Those labelled only `downstream="<service>"` sum over the
//! service's replicas: queue depth and capacity, live streams, requests in flight,
//! reconnects, failures, and the time requests spend in the queue, on the wire (window
//! waits) and in round trips. Those with `replica="<address>"` too are each replica's own:
//! requests routed to it, its load (queued + in flight) and its live streams — where the
//! balancer sent what, and why.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The service-wide metrics, shared by every replica's streams.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) queue_depth: Gauge,
    pub(crate) queue_capacity: Gauge,
    pub(crate) live_streams: Gauge,
    pub(crate) lanes: Gauge,
    pub(crate) inflight: Gauge,
    pub(crate) reconnects: Counter,
    pub(crate) broken_requests: Counter,
    pub(crate) deadline_drops: Counter,
    pub(crate) queue_wait: Histogram,
    pub(crate) roundtrip: Histogram,
    pub(crate) send_blocked: Counter<f64, std::sync::atomic::AtomicU64>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

/// One replica's own metrics.
#[derive(Clone)]
pub(crate) struct ReplicaMetrics {
    /// The replica's address (its label value).
    pub(crate) name: String,
    pub(crate) requests: Counter,
    pub(crate) outstanding: Gauge,
    pub(crate) live_streams: Gauge,
}

/// Everything one downstream service registers: the service-wide metrics and the
/// per-replica families. Cheap to clone.
#[derive(Clone)]
pub struct ServiceMetrics {
    pub(crate) service: Metrics,
    requests: Family<ReplicaLabels, Counter>,
    outstanding: Family<ReplicaLabels, Gauge>,
    live_streams: Family<ReplicaLabels, Gauge>,
}

impl ServiceMetrics {
    /// Registers the metrics of service `name` (`downstream="<name>"`) in `registry`.
    pub fn new(name: &'static str, registry: &mut Registry) -> Self {
        let registry = registry.sub_registry_with_label(("downstream".into(), name.into()));
        let m = Self {
            service: Metrics::new(registry),
            requests: Family::default(),
            outstanding: Family::default(),
            live_streams: Family::default(),
        };
        registry.register(
            "downstream_replica_requests",
            "Requests routed to each replica",
            m.requests.clone(),
        );
        registry.register(
            "downstream_replica_outstanding",
            "Requests queued for or awaiting a reply from each replica: the load the balancers compare",
            m.outstanding.clone(),
        );
        registry.register(
            "downstream_replica_live_streams",
            "Open streams to each replica",
            m.live_streams.clone(),
        );
        m
    }

    /// How full the service's queues are, all replicas together (0..=1).
    pub fn fill(&self) -> f64 {
        let capacity = self.service.queue_capacity.get();
        if capacity <= 0 {
            return 0.0;
        }
        (self.service.queue_depth.get() as f64 / capacity as f64).clamp(0.0, 1.0)
    }

    /// The service's queue fill and requests outstanding (queued or sent, unanswered).
    pub fn load(&self) -> crate::overload::HopLoad {
        crate::overload::HopLoad {
            fill: self.fill(),
            outstanding: (self.service.queue_depth.get() + self.service.inflight.get()).max(0)
                as u64,
        }
    }

    /// Replica `name`'s metrics (created on first use).
    pub(crate) fn replica(&self, name: &str) -> ReplicaMetrics {
        let labels = ReplicaLabels {
            replica: name.to_string(),
        };
        ReplicaMetrics {
            name: name.to_string(),
            requests: self.requests.get_or_create(&labels).clone(),
            outstanding: self.outstanding.get_or_create(&labels).clone(),
            live_streams: self.live_streams.get_or_create(&labels).clone(),
        }
    }

    /// Drops replica `name`'s series: it is gone (drained), and label sets must not pile up
    /// as replicas come and go.
    pub(crate) fn forget(&self, name: &str) {
        let labels = ReplicaLabels {
            replica: name.to_string(),
        };
        self.requests.remove(&labels);
        self.outstanding.remove(&labels);
        self.live_streams.remove(&labels);
    }
}

impl Metrics {
    fn new(registry: &mut Registry) -> Self {
        let m = Self {
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
            live_streams: Gauge::default(),
            lanes: Gauge::default(),
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
            "Requests queued for the downstream, not yet taken by a stream (all replicas)",
            m.queue_depth.clone(),
        );
        registry.register(
            "downstream_queue_capacity",
            "Capacity of the downstream queues (--downstream-queue per replica, summed)",
            m.queue_capacity.clone(),
        );
        registry.register(
            "downstream_live_streams",
            "Open streams to the downstream (all replicas)",
            m.live_streams.clone(),
        );
        registry.register(
            "downstream_lanes",
            "Connections open to the downstream (all replicas): one per replica, more while one connection's sender cannot keep up with its queue (--downstream-lanes-max)",
            m.lanes.clone(),
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
