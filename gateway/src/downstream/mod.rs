//! Long-lived bidirectional stream clients, one [`Downstream`] per service, each a tower
//! [`Service`](tower::Service) whose readiness is queue room.
//!
//! A downstream is a bounded queue (`queue`) feeding `streams` long-lived streams over one
//! HTTP/2 connection ([`stream`]). A stream pulls the next envelope only when the h2 stream
//! has send capacity, so a slow service (its window full) stops the pulls, the queue fills,
//! and [`DownstreamService::poll_ready`] stays pending: backpressure *is* tower readiness.
//! Whoever calls waits for readiness (SubmitStream) or refuses when not ready (unary), and a
//! `tower::balance` can sit over several replicas' services.
//!
//! A service may run as several replicas: [`replicas`] finds them (a list of URLs, DNS names
//! re-resolved) and gives each its own [`Downstream`]; [`route`] picks one per request.
//!
//! - [`service`]: the `Service<HopCall<R>>` and its readiness (queue room, live streams).
//! - [`stream`]: one stream: request body, correlation of replies, reconnect loop.
//! - [`lanes`]: more connections to a replica while one connection's sender cannot keep up.
//! - [`backoff`]: the reconnect policy.
//! - [`metrics`]: per-downstream and per-replica metrics.
//! - [`replicas`]: discovery: the replicas of one service, kept current.
//! - [`route`]: which replica takes a request (p2c, round-robin, account affinity, partition).

mod backoff;
mod balance;
pub mod lanes;
pub mod linger;
mod metrics;
pub mod replicas;
mod ring;
pub mod route;
mod rtt;
mod service;
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_proto::HopRequest;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tonic::Status;
use tonic::transport::Endpoint;

pub use lanes::Connect;
pub use metrics::ServiceMetrics;
pub use replicas::{Replicas, Target};
pub use route::{Balancer, Partitions, Route, Routing};
pub use service::{DownstreamService, ReplyFuture};

/// Default capacity of each downstream's queue: requests accepted by ingress and not yet
/// taken by a stream.
pub const DEFAULT_QUEUE: usize = 1024;
/// Default long-lived streams per downstream (all on one HTTP/2 connection). One: a
/// second stream on the same connection split each downstream's messages in two, so fewer
/// of them shared a frame and a wake-up; with one, `sluice-lab bench` measured stream
/// saturation 25,400 tx/s instead of 19,300 and a lower p99 at half load (4.7 ms instead of
/// 7.1 on disk) at a higher rate.
pub const DEFAULT_STREAMS: usize = 1;
/// Default most requests one stream may have sent and not yet had answered.
pub const DEFAULT_STREAM_INFLIGHT: usize = 512;
/// Default first reconnect delay; doubles per failure up to [`DEFAULT_BACKOFF_MAX`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Default longest reconnect delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Default queue slots kept for immediate (unary) admissions.
pub const DEFAULT_IMMEDIATE_RESERVED: usize = 256;
/// Default linger cap of the required hops (risk, logging): 250 µs. Any wait here is the
/// transaction's latency, so it is short, adaptive (below) and measured by the process's
/// own wake-ups rather than tokio's millisecond timer (`linger.rs`). ARCHITECTURE.md has
/// the frontier this was chosen from.
pub const DEFAULT_LINGER: Duration = Duration::from_micros(250);
/// Default linger of notification, the hop no transaction waits for: a notice waits 1 ms
/// for company at no one's cost, and shares its frame, its write and the service's wake-up
/// with the notices that come meanwhile. Always fixed.
pub const DEFAULT_NOTIFICATION_LINGER: Duration = Duration::from_millis(1);
/// Default linger mode: adaptive — about one arrival gap within the cap while company is
/// likely, nothing at low load.
pub const DEFAULT_LINGER_MODE: linger::LingerMode = linger::LingerMode::Adaptive;
/// Default most requests a linger waits for: with this many together the batch goes at
/// once, so at high rates a linger ends long before its time.
pub const DEFAULT_LINGER_BATCH: u16 = 8;
/// Largest `--downstream-linger-batch`.
pub const MAX_LINGER_BATCH: u16 = 4096;
/// Default takes in a row that must find requests already queued before a lane opens
/// another ([`lanes`]): a run this long means the queue never emptied for a few hundred
/// sends, not a burst.
pub const DEFAULT_LANE_GROW_AFTER: usize = 256;
/// Default time an extra lane stays open without finding a backlog.
pub const DEFAULT_LANE_IDLE: Duration = Duration::from_secs(10);
/// Largest `--downstream-lanes-max`.
pub const MAX_LANES: u16 = 64;

/// One request for a downstream: the message, its absolute deadline, and the hop's span
/// (which records the queue wait and ends when the reply or the failure arrives).
pub struct HopCall<R> {
    /// Encoded once per transaction ([`sluice_proto::Encoded`]): the hops share its body.
    pub request: sluice_proto::Encoded<R>,
    /// Dropped unsent (answered DEADLINE_EXCEEDED) when it passes while queued.
    pub deadline: Instant,
    pub span: tracing::Span,
}

/// Where a reply goes.
pub(crate) type ReplyTx<R> = oneshot::Sender<Result<<R as HopRequest>::Reply, Status>>;

/// One queued request.
pub(crate) struct Envelope<R: HopRequest> {
    call: HopCall<R>,
    /// Dropped by callers that do not want the reply (best-effort notices).
    reply: ReplyTx<R>,
    enqueued_at: Instant,
    /// A waiting admission's share of the queue, given back when the envelope leaves it.
    _share: Option<OwnedSemaphorePermit>,
    /// Counts the request against its replica's load until its reply (or failure).
    outstanding: Outstanding,
}

/// One request queued or in flight on a replica: the load estimate the balancers compare.
/// Counted on creation, uncounted when dropped — with the reply, a failure, or a deadline
/// drop — so no path can leak a count.
pub(crate) struct Outstanding {
    count: Arc<AtomicUsize>,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Outstanding {
    fn new(count: &Arc<AtomicUsize>, gauge: &prometheus_client::metrics::gauge::Gauge) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        gauge.inc();
        Self {
            count: count.clone(),
            gauge: gauge.clone(),
        }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// Bounds and timings of one downstream.
#[derive(Debug, Clone)]
pub struct DownstreamConfig {
    pub queue: usize,
    pub streams: usize,
    pub stream_inflight: usize,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub max_message_size: usize,
    /// `authorization` sent when each stream opens (the mesh token), if any.
    pub auth: Option<tonic::metadata::AsciiMetadataValue>,
    /// Queue slots that waiting callers ([`Admission::Wait`], SubmitStream) may never take,
    /// so an immediate one ([`Admission::Immediate`], unary Submit) finds room however many
    /// streams wait: every freed slot would otherwise go to a waiting reader. At most a
    /// quarter of the queue.
    pub immediate_reserved: usize,
    /// How long a stream that found its queue empty holds the next request before sending
    /// it ([`DEFAULT_LINGER`]); a queue that is not empty is never held.
    pub linger: Duration,
    /// Whether the linger follows the arrival gap or is always `linger`
    /// ([`DEFAULT_LINGER_MODE`]).
    pub linger_mode: linger::LingerMode,
    /// Most requests a linger gathers before sending ([`DEFAULT_LINGER_BATCH`]).
    pub linger_batch: usize,
    /// Most connections (lanes) to one replica ([`lanes`]); 1 keeps one connection.
    pub lanes_max: usize,
    /// Takes in a row that find a backlog before a lane opens another
    /// ([`DEFAULT_LANE_GROW_AFTER`]).
    pub lane_grow_after: usize,
    /// How long an extra lane stays without finding a backlog ([`DEFAULT_LANE_IDLE`]).
    pub lane_idle: Duration,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            queue: DEFAULT_QUEUE,
            streams: DEFAULT_STREAMS,
            stream_inflight: DEFAULT_STREAM_INFLIGHT,
            backoff_base: DEFAULT_BACKOFF_BASE,
            backoff_max: DEFAULT_BACKOFF_MAX,
            max_message_size: sluice_core::h2::DEFAULT_MAX_MESSAGE_SIZE,
            auth: None,
            immediate_reserved: DEFAULT_IMMEDIATE_RESERVED,
            linger: DEFAULT_LINGER,
            linger_mode: DEFAULT_LINGER_MODE,
            linger_batch: usize::from(DEFAULT_LINGER_BATCH),
            lanes_max: 1,
            lane_grow_after: DEFAULT_LANE_GROW_AFTER,
            lane_idle: DEFAULT_LANE_IDLE,
        }
    }
}

/// How a caller waits for queue room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Wait for room within the share waiting callers may use (SubmitStream: this wait is
    /// the backpressure).
    Wait,
    /// Take room only if there is some now, reserved slots included (unary Submit).
    Immediate,
}

/// What every stream and service handle of one downstream shares.
pub(crate) struct Shared<R: HopRequest> {
    rx: tokio::sync::Mutex<mpsc::Receiver<Envelope<R>>>,
    /// The part of the queue waiting admissions may use: capacity − `immediate_reserved`.
    waiting_share: Arc<Semaphore>,
    live: AtomicUsize,
    /// Told whenever `live` changes, so a balancer waiting on a dead replica looks again.
    live_changed: Arc<tokio::sync::Notify>,
    /// Requests queued or in flight: this replica's load.
    outstanding: Arc<AtomicUsize>,
    /// Its round-trip estimate (p2c weighs load by it).
    rtt: rtt::PeakEwma,
    next_correlation: AtomicU64,
    config: DownstreamConfig,
    /// The service's metrics, shared by all its replicas (sums over them).
    metrics: metrics::Metrics,
    /// This replica's own.
    replica: metrics::ReplicaMetrics,
    /// Its connections.
    lanes: lanes::Lanes,
}

/// Handle to one downstream. Cheap to clone; [`Downstream::service`] gives a tower
/// service over it.
pub struct Downstream<R: HopRequest> {
    queue: mpsc::Sender<Envelope<R>>,
    shared: Arc<Shared<R>>,
}

impl<R: HopRequest> Clone for Downstream<R> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
            shared: self.shared.clone(),
        }
    }
}

/// The stream workers of a downstream; await [`Workers::join`] after cancelling their token.
pub struct Workers(JoinSet<()>);

impl Workers {
    /// Waits for every stream to finish its in-flight requests and close.
    pub async fn join(mut self) {
        while self.0.join_next().await.is_some() {}
    }
}

impl<R: HopRequest> Downstream<R> {
    /// Starts `config.streams` stream workers over a connection from `connect`, a service
    /// of one replica with metrics of its own in `registry`. They run until `shutdown` is
    /// cancelled, then half-close their streams and finish reading replies.
    pub fn start(
        connect: Connect,
        config: DownstreamConfig,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> (Self, Workers) {
        let metrics = ServiceMetrics::new(R::NAME, registry);
        Self::start_replica(connect, config, &metrics, "0", shutdown)
    }

    /// [`Downstream::start`] for one replica of a service: its metrics add to `metrics` and
    /// carry `replica="<replica>"` where they are its own.
    pub fn start_replica(
        connect: Connect,
        config: DownstreamConfig,
        metrics: &ServiceMetrics,
        replica: &str,
        shutdown: CancellationToken,
    ) -> (Self, Workers) {
        let queue_len = config.queue.max(1);
        let (metrics, replica) = (metrics.service.clone(), metrics.replica(replica));
        metrics.queue_capacity.inc_by(queue_len as i64);
        let (queue, rx) = mpsc::channel(queue_len);
        // At most a quarter of the queue is held back, so a small queue stays usable.
        let reserved = config.immediate_reserved.min(queue_len / 4);
        let waiting_share = (queue_len - reserved).clamp(1, Semaphore::MAX_PERMITS);
        let lanes = lanes::Lanes::new(connect, shutdown.clone(), config.streams.max(1));
        metrics.lanes.inc();
        let channel = lanes.first();
        let shared = Arc::new(Shared {
            rx: tokio::sync::Mutex::new(rx),
            waiting_share: Arc::new(Semaphore::new(waiting_share)),
            live: AtomicUsize::new(0),
            live_changed: Arc::new(tokio::sync::Notify::new()),
            outstanding: Arc::new(AtomicUsize::new(0)),
            rtt: rtt::PeakEwma::new(rtt::DEFAULT_RTT, rtt::DEFAULT_RTT_DECAY),
            next_correlation: AtomicU64::new(1),
            config,
            metrics,
            replica,
            lanes,
        });
        let mut workers = JoinSet::new();
        for index in 0..shared.config.streams.max(1) {
            workers.spawn(stream::run(
                index,
                channel.clone(),
                shared.clone(),
                shutdown.clone(),
            ));
        }
        (Self { queue, shared }, Workers(workers))
    }

    /// Connections (lanes) open to the replica now, the first included.
    pub fn lanes(&self) -> usize {
        self.shared.lanes.open()
    }

    /// True while at least one stream to the downstream is open.
    pub fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::Relaxed) > 0
    }

    /// Requests queued now.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Requests queued or awaiting a reply: the load the balancers compare.
    pub fn outstanding(&self) -> usize {
        self.shared.outstanding.load(Ordering::Relaxed)
    }

    /// Its round-trip estimate, seconds (peak-EWMA, decaying while it gets no replies).
    pub fn rtt_estimate(&self) -> f64 {
        self.shared.rtt.estimate()
    }

    /// Gives back this replica's share of the service's queue capacity (it is leaving).
    pub(crate) fn retire(&self) {
        let capacity = self.queue.max_capacity() as i64;
        self.shared.metrics.queue_capacity.dec_by(capacity);
    }

    /// A tower service over this downstream whose readiness is room in its queue, taken
    /// as `admission` says.
    pub fn service(&self, admission: Admission) -> DownstreamService<R> {
        DownstreamService::new(self.queue.clone(), self.shared.clone(), admission)
    }

    /// The service a balancer holds for this replica: it waits for room however `admission`
    /// says (an immediate caller's balancer waits for any slot, reserved ones included) and
    /// leaves liveness to the balancer, which must never see an error from a replica that
    /// is only down for now — tower's balancers evict such a replica for good.
    pub(crate) fn balanced_service(&self, admission: Admission) -> DownstreamService<R> {
        DownstreamService::balanced(self.queue.clone(), self.shared.clone(), admission)
    }

    /// True while this replica has a live stream; `notify` is told when that changes.
    pub(crate) fn live_signal(&self) -> Arc<tokio::sync::Notify> {
        self.shared.live_changed.clone()
    }
}

/// A [`Connect`] that opens a lazy connection to `endpoint` each time.
pub fn connect_lazy(endpoint: Endpoint) -> Connect {
    Arc::new(move || endpoint.connect_lazy())
}
