//! The service side of backpressure: a bounded worker pool that reads a stream's next
//! message only when a worker is free — plus the fault injection that lets a test or a demo
//! make a service slow, flaky or stalled on purpose.
//!
//! A handler that spawned a task per message would keep reading while work piles up in
//! memory; here a free worker permit comes first, the read second. When every worker is
//! busy (or the reply queue is full because the peer is not reading replies) nothing reads
//! the inbound stream, hyper stops releasing window, and the sender's writes stop: the
//! pressure crosses the hop as HTTP/2 flow control.
//!
//! Every message is checked against its own deadline before work starts (and again after an
//! injected delay): work whose deadline has passed is answered DEADLINE_EXCEEDED, not done.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use opentelemetry::trace::{FutureExt as _, Link, Span as _, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rand::Rng;
use sluice_proto::pb::Faults;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};

use crate::metrics::GaugeGuard;
use crate::spans;

/// Default number of workers: messages processed at once across all streams.
pub const DEFAULT_WORKERS: usize = 64;
/// Default capacity of each stream's reply queue (replies produced but not yet taken by
/// the transport). When full, workers wait, so a peer that stops reading replies stops
/// the reading of its requests too.
pub const DEFAULT_REPLY_QUEUE: usize = 128;
/// Default most workers one stream may hold at once. The gateway opens two streams per
/// service, so half the default pool each lets it use the whole pool while one rogue
/// stream can never take more than half.
pub const DEFAULT_STREAM_WORKERS: usize = 32;
/// Largest pool size `SetFaults` accepts.
pub const MAX_WORKERS: usize = 10_000;

/// The reply half of a stream served by a [`WorkerPool`].
pub type ReplyStream<T> = ReceiverStream<Result<T, Status>>;

/// What the pool needs to know about one service's messages.
pub struct Messages<Req, Resp> {
    /// The gRPC service and method, for span names and attributes.
    pub service: &'static str,
    pub method: &'static str,
    /// Absolute deadline, Unix ms (0 = none).
    pub deadline_unix_ms: fn(&Req) -> i64,
    /// The reply that reports `status` for this request (correlation id kept).
    pub reject: fn(&Req, Status) -> Resp,
    /// The message's own trace context (each message belongs to its own trace).
    pub trace_context: fn(&Req) -> Option<&HashMap<String, String>>,
    /// When the sender handed the message to the stream, Unix µs (0 = unknown).
    pub sent_unix_micros: fn(&Req) -> i64,
    /// The error a reply reports, if any: gRPC code and message.
    pub reply_error: fn(&Resp) -> Option<(i32, &str)>,
}

impl<Req, Resp> Clone for Messages<Req, Resp> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<Req, Resp> Copy for Messages<Req, Resp> {}

/// A pool of workers shared by every stream of one service, with its faults.
#[derive(Clone)]
pub struct WorkerPool {
    permits: Arc<Semaphore>,
    /// Target size (what `GetFaults` reports); permits converge to it as work finishes.
    size: Arc<AtomicUsize>,
    configured: usize,
    reply_queue: usize,
    /// Most workers one stream may hold ([`DEFAULT_STREAM_WORKERS`]).
    stream_workers: usize,
    faults: Arc<watch::Sender<Faults>>,
    /// Serialises resizes so concurrent SetFaults calls cannot interleave their arithmetic.
    resize: Arc<Mutex<()>>,
    metrics: PoolMetrics,
}

#[derive(Clone)]
struct PoolMetrics {
    busy: Gauge,
    capacity: Gauge,
    processed: Counter,
    streams: Gauge,
    deadline_drops: Counter,
    injected_errors: Counter,
    stalled: Gauge,
    work_seconds: Histogram,
    panics: Counter,
}

impl WorkerPool {
    /// A pool of `size` workers whose streams each buffer at most `reply_queue` replies.
    /// Registers `worker_pool_*` metrics in `registry`.
    pub fn new(size: usize, reply_queue: usize, registry: &mut Registry) -> Self {
        let size = size.clamp(1, MAX_WORKERS);
        let metrics = PoolMetrics {
            busy: Gauge::default(),
            capacity: Gauge::default(),
            processed: Counter::default(),
            streams: Gauge::default(),
            deadline_drops: Counter::default(),
            injected_errors: Counter::default(),
            stalled: Gauge::default(),
            work_seconds: Histogram::new(crate::metrics::latency_buckets()),
            panics: Counter::default(),
        };
        registry.register(
            "worker_pool_panics",
            "Messages whose work panicked (answered INTERNAL; the stream goes on)",
            metrics.panics.clone(),
        );
        registry.register(
            "worker_pool_busy",
            "Workers processing a message (in flight at this hop)",
            metrics.busy.clone(),
        );
        registry.register(
            "worker_pool_capacity",
            "Workers in the pool (--workers, or SetFaults)",
            metrics.capacity.clone(),
        );
        registry.register(
            "worker_pool_processed",
            "Messages processed",
            metrics.processed.clone(),
        );
        registry.register(
            "worker_pool_streams",
            "Inbound streams being served",
            metrics.streams.clone(),
        );
        registry.register(
            "deadline_drops",
            "Messages dropped undone because their deadline had passed",
            metrics.deadline_drops.clone(),
        );
        registry.register(
            "injected_errors",
            "Messages answered with an injected error (SetFaults error_rate)",
            metrics.injected_errors.clone(),
        );
        registry.register(
            "stalled",
            "1 while the service is stalled (SetFaults stall): it reads nothing",
            metrics.stalled.clone(),
        );
        registry.register(
            "work_seconds",
            "Time per message from worker start to reply queued",
            metrics.work_seconds.clone(),
        );
        metrics.capacity.set(size as i64);
        let (faults, _) = watch::channel(Faults::default());
        Self {
            permits: Arc::new(Semaphore::new(size)),
            size: Arc::new(AtomicUsize::new(size)),
            configured: size,
            reply_queue: reply_queue.max(1),
            stream_workers: DEFAULT_STREAM_WORKERS,
            faults: Arc::new(faults),
            resize: Arc::default(),
            metrics,
        }
    }

    /// Caps the workers one stream may hold at once (at least 1), so no single stream —
    /// a rogue peer's, say — can take the whole pool.
    pub fn with_stream_workers(mut self, stream_workers: usize) -> Self {
        self.stream_workers = stream_workers.max(1);
        self
    }

    /// Workers in the pool now.
    pub fn size(&self) -> usize {
        self.size.load(Ordering::Relaxed)
    }

    /// The faults in force, `workers` resolved to the pool's size.
    pub fn faults(&self) -> Faults {
        let mut f = *self.faults.borrow();
        f.workers = self.size() as u32;
        f
    }

    /// Replaces the faults in force (already validated). `workers = 0` restores the
    /// configured size. Shrinking takes effect as busy workers finish.
    pub fn set_faults(&self, faults: Faults) -> Faults {
        let target = if faults.workers == 0 {
            self.configured
        } else {
            faults.workers as usize
        };
        {
            let _guard = self.resize.lock().expect("resize lock");
            let current = self.size.swap(target, Ordering::Relaxed);
            if target > current {
                self.permits.add_permits(target - current);
            } else if target < current {
                let wanted = current - target;
                let forgotten = self.permits.forget_permits(wanted);
                if forgotten < wanted {
                    let permits = self.permits.clone();
                    tokio::spawn(async move {
                        if let Ok(p) = permits
                            .acquire_many_owned((wanted - forgotten) as u32)
                            .await
                        {
                            p.forget();
                        }
                    });
                }
            }
        }
        self.metrics.capacity.set(target as i64);
        self.metrics.stalled.set(faults.stall as i64);
        if faults != Faults::default() {
            tracing::warn!(?faults, "faults injected");
        } else {
            tracing::info!("faults cleared");
        }
        self.faults.send_replace(faults);
        self.faults()
    }

    /// Serves one bidirectional stream: for each inbound message, once a worker is free
    /// (and the service is not stalled), runs `work` and queues its reply. After in-flight
    /// work has replied, ends the reply stream: OK when the peer half-closed, with the
    /// decode error when a message did not decode, UNAVAILABLE when `shutdown` was
    /// cancelled. Work that panics is answered INTERNAL; the stream goes on.
    pub fn serve<Req, Resp, F, Fut>(
        &self,
        request: Request<Streaming<Req>>,
        shutdown: CancellationToken,
        messages: Messages<Req, Resp>,
        work: F,
    ) -> ReplyStream<Resp>
    where
        Req: Send + Sync + 'static,
        Resp: Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Resp> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(self.reply_queue);
        let pool = self.clone();
        let work = Arc::new(work);
        // The long-lived stream's own span: message spans link to it, never under it.
        let tracer = spans::tracer();
        let mut attributes = spans::rpc(messages.service, messages.method);
        attributes.push(KeyValue::new("sluice.stream", true));
        let stream_span = tracer
            .span_builder(format!("{}/{} stream", messages.service, messages.method))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(
                &tracer,
                &crate::propagation::extract_metadata(request.metadata()),
            );
        let stream_link = stream_span.span_context().clone();
        let stream_cx = Context::new().with_span(stream_span);
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            let _open = GaugeGuard::hold(&pool.metrics.streams);
            let mut faults = pool.faults.subscribe();
            let mut in_flight = JoinSet::new();
            let shutting_down = || Some(Status::unavailable("shutting down"));
            let stream_permits = Arc::new(Semaphore::new(pool.stream_workers));
            let end: Option<Status> = loop {
                while in_flight.try_join_next().is_some() {}
                // Room for the reply first: a peer that stops reading replies stops here,
                // holding no worker, instead of parking workers on a full reply queue.
                let reply_slot = tokio::select! {
                    r = tx.clone().reserve_owned() => match r {
                        Ok(slot) => slot,
                        Err(_) => break None, // the peer is gone
                    },
                    _ = shutdown.cancelled() => break shutting_down(),
                };
                // Then this stream's share of the pool, then a free worker, and only then
                // the read: this ordering is the backpressure.
                let stream_permit = tokio::select! {
                    p = stream_permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break shutting_down(),
                    },
                    _ = shutdown.cancelled() => break shutting_down(),
                };
                let permit = tokio::select! {
                    p = pool.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break shutting_down(),
                    },
                    _ = shutdown.cancelled() => break shutting_down(),
                };
                // A stalled service reads nothing at all.
                tokio::select! {
                    r = faults.wait_for(|f| !f.stall) => if r.is_err() { break shutting_down() },
                    _ = shutdown.cancelled() => break shutting_down(),
                }
                // Stalled while waiting counts too: put the permit back and wait again
                // (`message()` keeps its decode state in `inbound`, so it is cancel-safe).
                let message = tokio::select! {
                    m = inbound.message() => m,
                    r = faults.wait_for(|f| f.stall) => if r.is_err() { break shutting_down() } else { continue },
                    _ = shutdown.cancelled() => break shutting_down(),
                };
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => break None,
                    Err(status) => {
                        tracing::debug!(%status, "inbound message did not decode; ending the stream");
                        break Some(crate::inbound_error(status));
                    }
                };
                let (work, metrics) = (work.clone(), pool.metrics.clone());
                let injected = *pool.faults.borrow();
                let cx = message_span(&request, messages, &stream_link);
                let busy = GaugeGuard::hold(&metrics.busy);
                in_flight.spawn(async move {
                    let started = Instant::now();
                    // Built before the work takes the request: a panic must still be answered.
                    let if_panicked = (messages.reject)(
                        &request,
                        Status::internal("the service failed processing this message"),
                    );
                    let reply =
                        match apply_faults(&injected, &request, messages, &metrics, &cx).await {
                            Ok(()) => {
                                let tracer = spans::tracer();
                                let work_cx = cx.with_span(tracer.start_with_context("work", &cx));
                                let done = AssertUnwindSafe(async { work(request).await })
                                    .catch_unwind()
                                    .with_context(work_cx.clone())
                                    .await;
                                work_cx.span().end();
                                done.unwrap_or_else(|_| {
                                    metrics.panics.inc();
                                    tracing::error!("work panicked; answered INTERNAL");
                                    if_panicked
                                })
                            }
                            Err(reply) => reply,
                        };
                    match (messages.reply_error)(&reply) {
                        Some((code, message)) => spans::fail_cx(&cx, "error", code, message),
                        None => spans::ok_cx(&cx),
                    }
                    cx.span().end();
                    metrics
                        .work_seconds
                        .observe(started.elapsed().as_secs_f64());
                    // Never waits: the slot was reserved before the read.
                    reply_slot.send(Ok(reply));
                    metrics.processed.inc();
                    drop(busy);
                    drop(permit);
                    drop(stream_permit);
                });
            };
            while in_flight.join_next().await.is_some() {}
            if let Some(status) = end {
                let _ = tx.send(Err(status)).await;
            }
            stream_cx.span().end();
        });
        ReceiverStream::new(rx)
    }
}

/// The span of one message: a CONSUMER "process" span whose parent is the message's own
/// trace context, linked to the stream's span, with a "queue wait" child covering the time
/// from the sender's hand-off to now.
fn message_span<Req, Resp>(
    request: &Req,
    messages: Messages<Req, Resp>,
    stream: &opentelemetry::trace::SpanContext,
) -> Context {
    let tracer = spans::tracer();
    let carried = (messages.trace_context)(request);
    let parent = carried
        .map(crate::propagation::extract_map)
        .unwrap_or_default();
    let mut attributes = spans::rpc(messages.service, messages.method);
    if let Some(map) = carried {
        attributes.push(KeyValue::new(
            "sluice.propagation.received",
            spans::received_formats(map.keys()),
        ));
    }
    let span = tracer
        .span_builder(format!("{}/{} process", messages.service, messages.method))
        .with_kind(SpanKind::Consumer)
        .with_links(vec![Link::with_context(stream.clone())])
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    if let Some(sent) = spans::from_unix_micros((messages.sent_unix_micros)(request)) {
        let mut wait = tracer
            .span_builder("queue wait")
            .with_start_time(sent)
            .start_with_context(&tracer, &cx);
        opentelemetry::trace::Span::end(&mut wait);
    }
    cx
}

/// Deadline check, injected delay and injected errors, in that order (and the deadline
/// again after a delay). `Err` carries the reply to send instead of doing the work.
async fn apply_faults<Req, Resp>(
    faults: &Faults,
    request: &Req,
    messages: Messages<Req, Resp>,
    metrics: &PoolMetrics,
    cx: &Context,
) -> Result<(), Resp> {
    let expired = |request: &Req| {
        if crate::deadline::expired((messages.deadline_unix_ms)(request)) {
            metrics.deadline_drops.inc();
            cx.span().add_event("deadline_drop", vec![]);
            Err((messages.reject)(
                request,
                Status::deadline_exceeded("deadline passed before the work started"),
            ))
        } else {
            Ok(())
        }
    };
    expired(request)?;
    if faults.delay_ms > 0 || faults.jitter_ms > 0 {
        let jitter = if faults.jitter_ms > 0 {
            rand::rng().random_range(0..=faults.jitter_ms)
        } else {
            0
        };
        tokio::time::sleep(Duration::from_millis(
            u64::from(faults.delay_ms) + u64::from(jitter),
        ))
        .await;
        expired(request)?;
    }
    if faults.error_rate > 0.0 && rand::rng().random_bool(faults.error_rate.min(1.0)) {
        metrics.injected_errors.inc();
        cx.span().add_event("injected_error", vec![]);
        return Err((messages.reject)(
            request,
            Status::unavailable("injected fault (SetFaults error_rate)"),
        ));
    }
    Ok(())
}

/// The [`Messages`] of a downstream stream whose requests carry `transaction`,
/// `deadline_unix_ms` and `sent_unix_micros` and whose replies carry `error` (every mesh.v1
/// downstream RPC): one definition instead of one copy per service.
#[macro_export]
macro_rules! downstream_messages {
    ($service:literal, $method:literal, $req:ty, $reply:ty, $reject:expr) => {
        $crate::worker_pool::Messages::<$req, $reply> {
            service: $service,
            method: $method,
            deadline_unix_ms: |r| r.deadline_unix_ms,
            reject: $reject,
            trace_context: |r| r.transaction.as_ref().map(|t| &t.trace_context),
            sent_unix_micros: |r| r.sent_unix_micros,
            reply_error: |r| r.error.as_ref().map(|e| (e.code, e.message.as_str())),
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use prost::Message;
    use sluice_proto::pb::{self, RiskRequest, RiskVerdict};
    use tonic::codec::Codec;

    fn reject(r: &RiskRequest, status: Status) -> RiskVerdict {
        RiskVerdict {
            correlation_id: r.correlation_id,
            error: Some(pb::Error::from_status(&status)),
            ..Default::default()
        }
    }

    const MESSAGES: Messages<RiskRequest, RiskVerdict> =
        crate::downstream_messages!("mesh.v1.Risk", "Assess", RiskRequest, RiskVerdict, reject);

    /// An inbound stream, as a peer would send it, from raw gRPC message payloads.
    fn inbound(payloads: &[Vec<u8>]) -> Request<Streaming<RiskRequest>> {
        let mut body = Vec::new();
        for p in payloads {
            body.push(0);
            body.extend_from_slice(&(p.len() as u32).to_be_bytes());
            body.extend_from_slice(p);
        }
        let decoder = tonic_prost::ProstCodec::<RiskVerdict, RiskRequest>::default().decoder();
        let body = http_body_util::Full::new(tonic::codegen::Bytes::from(body));
        Request::new(Streaming::new_request(decoder, body, None, Some(64 * 1024)))
    }

    fn request(id: u64) -> Vec<u8> {
        RiskRequest {
            correlation_id: id,
            ..Default::default()
        }
        .encode_to_vec()
    }

    async fn replies(
        pool: &WorkerPool,
        payloads: &[Vec<u8>],
    ) -> (Vec<RiskVerdict>, Option<Status>) {
        let mut stream = pool.serve(
            inbound(payloads),
            CancellationToken::new(),
            MESSAGES,
            |r: RiskRequest| async move {
                assert_ne!(r.correlation_id, 2, "work for message 2 panics");
                RiskVerdict {
                    correlation_id: r.correlation_id,
                    ..Default::default()
                }
            },
        );
        let mut out = Vec::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(v) => out.push(v),
                Err(status) => return (out, Some(status)),
            }
        }
        out.sort_by_key(|v| v.correlation_id);
        (out, None)
    }

    #[tokio::test]
    async fn a_panicking_work_item_is_answered_internal_and_counted() {
        let pool = WorkerPool::new(4, 16, &mut Registry::default());
        let (got, end) = replies(&pool, &[request(1), request(2), request(3)]).await;
        assert!(end.is_none(), "the stream goes on and ends OK: {end:?}");
        assert_eq!(got.len(), 3);
        assert!(got[0].error.is_none() && got[2].error.is_none());
        let e = got[1].error.as_ref().expect("message 2 failed");
        assert_eq!(e.code, tonic::Code::Internal as i32);
        assert_eq!(pool.metrics.panics.get(), 1);
        assert_eq!(pool.metrics.busy.get(), 0, "busy gauge given back");
        assert_eq!(pool.permits.available_permits(), 4, "permit given back");
        assert_eq!(pool.metrics.streams.get(), 0);
    }

    #[tokio::test]
    async fn a_peer_that_reads_no_replies_holds_no_worker() {
        let pool = WorkerPool::new(8, 4, &mut Registry::default());
        let many: Vec<_> = (10..60).map(request).collect();
        // Replies never taken: the reply queue fills, and then nothing more is read.
        let stream = pool.serve(
            inbound(&many),
            CancellationToken::new(),
            MESSAGES,
            |r: RiskRequest| async move {
                RiskVerdict {
                    correlation_id: r.correlation_id,
                    ..Default::default()
                }
            },
        );
        let queued = stream.into_inner();
        while queued.len() < 4 {
            tokio::task::yield_now().await;
        }
        while pool.metrics.busy.get() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.permits.available_permits(), 8, "every worker free");
        assert_eq!(
            pool.metrics.processed.get(),
            4,
            "read no further than the reply room"
        );
    }

    #[tokio::test]
    async fn one_stream_holds_at_most_its_share_of_workers() {
        let pool = WorkerPool::new(8, 64, &mut Registry::default()).with_stream_workers(3);
        let many: Vec<_> = (10..30).map(request).collect();
        let _replies = pool.serve(
            inbound(&many),
            CancellationToken::new(),
            MESSAGES,
            |_: RiskRequest| std::future::pending::<RiskVerdict>(),
        );
        while pool.metrics.busy.get() < 3 {
            tokio::task::yield_now().await;
        }
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
        assert_eq!(pool.metrics.busy.get(), 3);
        assert_eq!(
            pool.permits.available_permits(),
            5,
            "the rest stay free for others"
        );
    }

    #[tokio::test]
    async fn a_message_that_does_not_decode_ends_the_stream_with_its_error() {
        let pool = WorkerPool::new(4, 16, &mut Registry::default());
        let (got, end) = replies(&pool, &[request(1), vec![0xff, 0xff, 0xff]]).await;
        assert_eq!(got.len(), 1, "everything read before it is answered");
        assert_eq!(end.expect("not OK").code(), tonic::Code::Internal);
        let (got, end) = replies(&pool, &[request(1), vec![0; 70_000]]).await;
        assert_eq!(got.len(), 1);
        assert_eq!(end.expect("not OK").code(), tonic::Code::ResourceExhausted);
    }
}
