//! A long-lived bidirectional stream client to one downstream service.
//!
//! One [`Downstream`] per service: a bounded queue (`queue`) feeding `streams` long-lived
//! streams over one HTTP/2 connection. Each stream's request body pulls the next envelope
//! from the shared queue only when hyper polls it — which it does only when the h2 stream
//! has send capacity — and only while the stream has fewer than `stream_inflight` requests
//! awaiting replies. So a slow service (its window full) stops the pulls, the queue fills,
//! and whoever enqueues waits or is refused: pressure reaches ingress.
//!
//! Replies are matched to requests by a gateway-assigned correlation id (unique per
//! stream), so two in-flight resubmits of one transaction id cannot be confused. When a
//! stream breaks, every request awaiting a reply on it fails with UNAVAILABLE and the stream
//! is reopened with exponential backoff and jitter. While no stream is live, [`is_live`]
//! is false and callers fail fast instead of queueing.
//!
//! [`is_live`]: Downstream::is_live

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::Rng;
use sluice_core::CancellationToken;
use sluice_core::spans;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// Default capacity of each downstream's queue: requests accepted by ingress and not yet
/// taken by a stream.
pub const DEFAULT_QUEUE: usize = 1024;
/// Default long-lived streams per downstream (all on one HTTP/2 connection).
pub const DEFAULT_STREAMS: usize = 2;
/// Default most requests one stream may have sent and not yet had answered.
pub const DEFAULT_STREAM_INFLIGHT: usize = 512;
/// Default first reconnect delay; doubles per failure up to [`DEFAULT_BACKOFF_MAX`].
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(50);
/// Default longest reconnect delay.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The outbound request stream handed to a generated client. A named type rather than a
/// bare `Pin<Box<dyn Stream>>`, which trips rustc's higher-ranked `Send` inference inside
/// tonic's client futures.
pub struct Outbound<T>(Pin<Box<dyn Stream<Item = T> + Send + 'static>>);

impl<T> Stream for Outbound<T> {
    type Item = T;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.as_mut().poll_next(cx)
    }
}
type OpenFuture<T> = Pin<Box<dyn Future<Output = Result<Streaming<T>, Status>> + Send + 'static>>;

/// How one downstream's streaming RPC looks: its messages, correlation ids and opener.
pub trait Protocol: Send + Sync + 'static {
    type Request: Send + 'static;
    type Reply: Send + 'static;
    /// Label used in logs and metrics (`risk`, `logging`, `notification`).
    const NAME: &'static str;
    /// The gRPC service and method, for spans.
    const SERVICE: &'static str;
    const METHOD: &'static str;
    fn set_correlation(request: &mut Self::Request, id: u64);
    fn correlation(reply: &Self::Reply) -> u64;
    /// Stamps when the message was handed to the stream (Unix µs).
    fn set_sent(request: &mut Self::Request, unix_micros: i64);
    /// The error a reply reports, if any: gRPC code and message.
    fn reply_error(reply: &Self::Reply) -> Option<(i32, &str)>;
    /// Opens the bidirectional stream with `outbound` as its request body, presenting
    /// `auth` (the mesh token's `authorization` value) when given.
    fn open(
        channel: Channel,
        max_message_size: usize,
        outbound: Outbound<Self::Request>,
        stream: &Context,
        auth: Option<&tonic::metadata::AsciiMetadataValue>,
    ) -> OpenFuture<Self::Reply>;
}

/// Where a reply goes.
pub type ReplyTx<P> = oneshot::Sender<Result<<P as Protocol>::Reply, Status>>;

/// One queued request.
pub struct Envelope<P: Protocol> {
    pub request: P::Request,
    /// Dropped unsent (answered DEADLINE_EXCEEDED) when it passes while queued.
    pub deadline: Instant,
    /// `None` for fire-and-forget (best-effort) requests.
    pub reply: Option<ReplyTx<P>>,
    pub enqueued_at: Instant,
    /// The hop's span: records the queue wait, ends when the reply (or failure) arrives.
    pub trace: Context,
    /// A waiting admission's share of the queue, given back when the envelope leaves it.
    _share: Option<OwnedSemaphorePermit>,
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
    /// Queue slots that waiting admissions ([`Downstream::reserve`], SubmitStream) may never
    /// take, so an immediate one ([`Downstream::try_reserve`], unary Submit) finds room
    /// however many streams wait: every freed slot would otherwise go to a waiting reader.
    /// At most a quarter of the queue.
    pub immediate_reserved: usize,
}

/// Default queue slots kept for immediate (unary) admissions.
pub const DEFAULT_IMMEDIATE_RESERVED: usize = 256;

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
        }
    }
}

#[derive(Clone)]
struct Metrics {
    queue_depth: Gauge,
    queue_capacity: Gauge,
    live_streams: Gauge,
    inflight: Gauge,
    reconnects: Counter,
    broken_requests: Counter,
    deadline_drops: Counter,
    queue_wait: Histogram,
    roundtrip: Histogram,
    send_blocked: Counter<f64, std::sync::atomic::AtomicU64>,
}

impl Metrics {
    fn new(registry: &mut Registry) -> Self {
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

struct Shared<P: Protocol> {
    rx: tokio::sync::Mutex<mpsc::Receiver<Envelope<P>>>,
    /// The part of the queue waiting admissions may use: capacity − `immediate_reserved`.
    waiting_share: Arc<Semaphore>,
    live: AtomicUsize,
    next_correlation: AtomicU64,
    config: DownstreamConfig,
    metrics: Metrics,
}

/// Handle to one downstream. Cheap to clone.
pub struct Downstream<P: Protocol> {
    queue: mpsc::Sender<Envelope<P>>,
    shared: Arc<Shared<P>>,
}

impl<P: Protocol> Clone for Downstream<P> {
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

impl<P: Protocol> Downstream<P> {
    /// Starts `config.streams` stream workers over `channel`. They run until `shutdown` is
    /// cancelled, then half-close their streams and finish reading replies.
    pub fn start(
        channel: Channel,
        config: DownstreamConfig,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> (Self, Workers) {
        let metrics =
            Metrics::new(registry.sub_registry_with_label(("downstream".into(), P::NAME.into())));
        metrics.queue_capacity.set(config.queue as i64);
        let (queue, rx) = mpsc::channel(config.queue.max(1));
        let queue_len = config.queue.max(1);
        // At most a quarter of the queue is held back, so a small queue stays usable.
        let reserved = config.immediate_reserved.min(queue_len / 4);
        let waiting_share = (queue_len - reserved).clamp(1, Semaphore::MAX_PERMITS);
        let shared = Arc::new(Shared {
            rx: tokio::sync::Mutex::new(rx),
            waiting_share: Arc::new(Semaphore::new(waiting_share)),
            live: AtomicUsize::new(0),
            next_correlation: AtomicU64::new(1),
            config,
            metrics,
        });
        let mut workers = JoinSet::new();
        for index in 0..shared.config.streams.max(1) {
            workers.spawn(run_stream(
                index,
                channel.clone(),
                shared.clone(),
                shutdown.clone(),
            ));
        }
        (Self { queue, shared }, Workers(workers))
    }

    /// True while at least one stream to the downstream is open.
    pub fn is_live(&self) -> bool {
        self.shared.live.load(Ordering::Relaxed) > 0
    }

    /// Waits for room in the queue, within the share waiting admissions may use.
    pub async fn reserve(&self) -> Result<QueueSlot<'_, P>, Status> {
        let share = self
            .shared
            .waiting_share
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable(format!("{}: shutting down", P::NAME)))?;
        let permit = self
            .queue
            .reserve()
            .await
            .map_err(|_| Status::unavailable(format!("{}: shutting down", P::NAME)))?;
        Ok(QueueSlot {
            permit,
            share: Some(share),
            metrics: &self.shared.metrics,
        })
    }

    /// Takes room in the queue if there is some now (the reserved slots included).
    pub fn try_reserve(&self) -> Result<QueueSlot<'_, P>, Status> {
        match self.queue.try_reserve() {
            Ok(permit) => Ok(QueueSlot {
                permit,
                share: None,
                metrics: &self.shared.metrics,
            }),
            Err(TrySendError::Full(())) => Err(Status::resource_exhausted(format!(
                "{} queue full ({} requests)",
                P::NAME,
                self.shared.config.queue
            ))),
            Err(TrySendError::Closed(())) => {
                Err(Status::unavailable(format!("{}: shutting down", P::NAME)))
            }
        }
    }

    /// Requests queued now.
    pub fn queue_depth(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}

/// Room for one request in a downstream queue.
pub struct QueueSlot<'a, P: Protocol> {
    permit: mpsc::Permit<'a, Envelope<P>>,
    share: Option<OwnedSemaphorePermit>,
    metrics: &'a Metrics,
}

impl<P: Protocol> QueueSlot<'_, P> {
    /// Queues `request`; its reply (or failure) arrives on the returned receiver.
    pub fn send(
        self,
        request: P::Request,
        deadline: Instant,
        trace: Context,
    ) -> oneshot::Receiver<Result<P::Reply, Status>> {
        let (tx, rx) = oneshot::channel();
        self.send_with(request, deadline, Some(tx), trace);
        rx
    }

    /// Queues `request` without waiting for its reply.
    pub fn send_and_forget(self, request: P::Request, deadline: Instant, trace: Context) {
        self.send_with(request, deadline, None, trace);
    }

    fn send_with(
        self,
        request: P::Request,
        deadline: Instant,
        reply: Option<ReplyTx<P>>,
        trace: Context,
    ) {
        self.metrics.queue_depth.inc();
        self.permit.send(Envelope {
            request,
            deadline,
            reply,
            enqueued_at: Instant::now(),
            trace,
            _share: self.share,
        });
    }
}

struct Pending<P: Protocol> {
    closed: bool,
    waiting: HashMap<u64, Waiting<P>>,
}

/// Ends a span when dropped.
struct EndSpan(Context);

impl Drop for EndSpan {
    fn drop(&mut self) {
        self.0.span().end();
    }
}

/// A request sent on a stream, awaiting its reply.
struct Waiting<P: Protocol> {
    reply: Option<ReplyTx<P>>,
    sent_at: Instant,
    trace: Context,
    _slot: OwnedSemaphorePermit,
}

/// Ends a hop span: OK, or failed with the reply's error.
fn end_hop(trace: &Context, error: Option<(i32, &str)>, event: &'static str) {
    match error {
        Some((code, message)) => spans::fail_cx(trace, event, code, message),
        None => spans::ok_cx(trace),
    }
    trace.span().end();
}

/// Answers a request that failed before (or instead of) a reply, ending its span.
fn refuse<P: Protocol>(
    reply: Option<ReplyTx<P>>,
    trace: &Context,
    event: &'static str,
    status: Status,
) {
    end_hop(trace, Some((status.code() as i32, status.message())), event);
    answer::<P>(reply, Err(status));
}

fn answer<P: Protocol>(reply: Option<ReplyTx<P>>, result: Result<P::Reply, Status>) {
    if let Some(reply) = reply {
        // The caller may have given up (deadline); nothing to do then.
        let _ = reply.send(result);
    }
}

/// Full-jitter exponential backoff.
struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }
}

async fn run_stream<P: Protocol>(
    index: usize,
    channel: Channel,
    shared: Arc<Shared<P>>,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff {
        base: shared.config.backoff_base,
        max: shared.config.backoff_max,
        attempt: 0,
    };
    let inflight = Arc::new(Semaphore::new(shared.config.stream_inflight.max(1)));
    let mut was_live = true;
    while !shutdown.is_cancelled() {
        let pending = Arc::new(Mutex::new(Pending::<P> {
            closed: false,
            waiting: HashMap::new(),
        }));
        let stop_sending = shutdown.child_token();
        let outbound = outbound::<P>(
            shared.clone(),
            pending.clone(),
            inflight.clone(),
            stop_sending.clone(),
        );
        // The long-lived stream's own CLIENT span (a trace of its own); message spans are
        // never its children.
        let stream_cx = {
            use opentelemetry::trace::{SpanKind, Tracer};
            let tracer = spans::tracer();
            let span = tracer
                .span_builder(format!("{}/{} stream", P::SERVICE, P::METHOD))
                .with_kind(SpanKind::Client)
                .with_attributes(spans::rpc(P::SERVICE, P::METHOD))
                .start_with_context(&tracer, &Context::new());
            Context::new().with_span(span)
        };
        let opened = P::open(
            channel.clone(),
            shared.config.max_message_size,
            outbound,
            &stream_cx,
            shared.config.auth.as_ref(),
        )
        .await;
        if let Err(status) = &opened {
            spans::fail_cx(
                &stream_cx,
                "open_failed",
                status.code() as i32,
                status.message(),
            );
        }
        let _end_stream_span = EndSpan(stream_cx);
        match opened {
            Ok(mut replies) => {
                shared.live.fetch_add(1, Ordering::Relaxed);
                shared.metrics.live_streams.inc();
                tracing::info!(downstream = P::NAME, stream = index, "stream open");
                backoff.attempt = 0;
                was_live = true;
                loop {
                    match replies.message().await {
                        Ok(Some(reply)) => {
                            let entry = pending
                                .lock()
                                .expect("pending lock")
                                .waiting
                                .remove(&P::correlation(&reply));
                            if let Some(w) = entry {
                                shared.metrics.inflight.dec();
                                shared
                                    .metrics
                                    .roundtrip
                                    .observe(w.sent_at.elapsed().as_secs_f64());
                                end_hop(&w.trace, P::reply_error(&reply), "error");
                                answer::<P>(w.reply, Ok(reply));
                            }
                        }
                        Ok(None) => {
                            tracing::info!(
                                downstream = P::NAME,
                                stream = index,
                                "stream closed by the service"
                            );
                            break;
                        }
                        Err(status) => {
                            tracing::warn!(downstream = P::NAME, stream = index, %status, "stream broke");
                            break;
                        }
                    }
                }
                shared.live.fetch_sub(1, Ordering::Relaxed);
                shared.metrics.live_streams.dec();
            }
            Err(status) => {
                // Log the first failure loudly, repeats quietly: a down service is one event.
                if was_live {
                    tracing::warn!(downstream = P::NAME, stream = index, %status, "cannot open stream; retrying with backoff");
                } else {
                    tracing::debug!(downstream = P::NAME, stream = index, %status, "cannot open stream");
                }
                was_live = false;
            }
        }
        stop_sending.cancel();
        fail_pending(&shared, &pending);
        if shutdown.is_cancelled() {
            break;
        }
        shared.metrics.reconnects.inc();
        if shared.live.load(Ordering::Relaxed) == 0 {
            drain_queue(&shared).await;
        }
        let delay = backoff.next();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    if shared.live.load(Ordering::Relaxed) == 0 {
        drain_queue(&shared).await;
    }
}

/// Fails every request awaiting a reply on a stream that ended, and refuses late arrivals.
fn fail_pending<P: Protocol>(shared: &Shared<P>, pending: &Mutex<Pending<P>>) {
    let waiting = {
        let mut p = pending.lock().expect("pending lock");
        p.closed = true;
        std::mem::take(&mut p.waiting)
    };
    for (_, w) in waiting {
        shared.metrics.inflight.dec();
        shared.metrics.broken_requests.inc();
        let status = Status::unavailable(format!("{} stream broke before replying", P::NAME));
        refuse::<P>(w.reply, &w.trace, "stream_broke", status);
    }
}

/// With no live stream, queued requests would wait for a reconnect that may be long in
/// coming: fail them now.
async fn drain_queue<P: Protocol>(shared: &Shared<P>) {
    let mut rx = shared.rx.lock().await;
    while let Ok(envelope) = rx.try_recv() {
        shared.metrics.queue_depth.dec();
        let status = Status::unavailable(format!("{} has no live stream", P::NAME));
        refuse::<P>(envelope.reply, &envelope.trace, "unavailable", status);
    }
}

/// The request body of one stream: pulls from the shared queue only when polled (the h2
/// stream has room) and while fewer than `stream_inflight` requests await replies.
fn outbound<P: Protocol>(
    shared: Arc<Shared<P>>,
    pending: Arc<Mutex<Pending<P>>>,
    inflight: Arc<Semaphore>,
    stop: CancellationToken,
) -> Outbound<P::Request> {
    Outbound(Box::pin(async_stream::stream! {
        loop {
            let permit = tokio::select! {
                p = inflight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = stop.cancelled() => break,
            };
            let envelope = {
                let mut rx = tokio::select! {
                    rx = shared.rx.lock() => rx,
                    _ = stop.cancelled() => break,
                };
                tokio::select! {
                    e = rx.recv() => e,
                    _ = stop.cancelled() => break,
                }
            };
            let Some(mut envelope) = envelope else { break };
            shared.metrics.queue_depth.dec();
            let queued = envelope.enqueued_at.elapsed();
            shared.metrics.queue_wait.observe(queued.as_secs_f64());
            envelope.trace.span().set_attribute(KeyValue::new("sluice.queue_wait_ms", queued.as_secs_f64() * 1000.0));
            if envelope.deadline <= Instant::now() {
                shared.metrics.deadline_drops.inc();
                let status = Status::deadline_exceeded(format!("deadline passed while queued for {}", P::NAME));
                refuse::<P>(envelope.reply, &envelope.trace, "deadline_drop", status);
                continue;
            }
            let id = shared.next_correlation.fetch_add(1, Ordering::Relaxed);
            P::set_correlation(&mut envelope.request, id);
            P::set_sent(&mut envelope.request, spans::now_unix_micros());
            envelope.trace.span().add_event("sent", vec![]);
            {
                let mut p = pending.lock().expect("pending lock");
                if p.closed {
                    drop(p);
                    let status = Status::unavailable(format!("{} stream broke", P::NAME));
                    refuse::<P>(envelope.reply, &envelope.trace, "stream_broke", status);
                    break;
                }
                p.waiting.insert(
                    id,
                    Waiting { reply: envelope.reply, sent_at: Instant::now(), trace: envelope.trace, _slot: permit },
                );
            }
            shared.metrics.inflight.inc();
            let handed = Instant::now();
            yield envelope.request;
            shared.metrics.send_blocked.inc_by(handed.elapsed().as_secs_f64());
        }
    }))
}
