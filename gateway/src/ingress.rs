//! The client-facing `mesh.v1.Gateway` service: validation, admission and outcomes.
//!
//! - **Submit** (unary): an in-flight limit (`max_inflight`) and the downstream queues are
//!   checked without waiting; when either is full the call fails at once with
//!   RESOURCE_EXHAUSTED and a `grpc-retry-pushback-ms` trailer. Unary calls are never parked.
//! - **SubmitStream**: one task per stream reads the next Transaction only when the current
//!   one has been admitted to every required queue (and fewer than `stream_inflight`
//!   outcomes are pending). While it waits, the client's HTTP/2 window fills and its sends
//!   block. Outcomes return in completion order through a bounded queue (`outcome_queue`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::metrics::GaugeGuard;
use sluice_core::{CancellationToken, propagation, spans};
use sluice_proto::pb::gateway_server::Gateway;
use sluice_proto::pb::{Outcome, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::fanout::{Admission, Fanout, error_outcome};
use sluice_proto::validate;

/// Default most unary calls in flight at once.
pub const DEFAULT_MAX_INFLIGHT: usize = 2048;
/// Default most transactions per SubmitStream admitted and awaiting their outcome.
pub const DEFAULT_STREAM_INFLIGHT: usize = 1024;
/// Default most SubmitStream calls open at once, all connections together.
pub const DEFAULT_MAX_STREAMS: usize = 256;
/// Default most transactions admitted and awaiting their outcome over every SubmitStream.
pub const DEFAULT_STREAMS_INFLIGHT: usize = 4096;
/// Default outcomes per SubmitStream produced but not yet taken by the transport.
pub const DEFAULT_OUTCOME_QUEUE: usize = 256;
/// Default deadline for work whose client set none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// Default `grpc-retry-pushback-ms` sent with RESOURCE_EXHAUSTED.
pub const DEFAULT_RETRY_PUSHBACK: Duration = Duration::from_millis(100);

/// Ingress bounds.
#[derive(Debug, Clone)]
pub struct IngressLimits {
    pub max_inflight: usize,
    pub stream_inflight: usize,
    pub max_streams: usize,
    pub streams_inflight: usize,
    pub outcome_queue: usize,
    pub default_deadline: Duration,
    pub retry_pushback: Duration,
}

impl Default for IngressLimits {
    fn default() -> Self {
        Self {
            max_inflight: DEFAULT_MAX_INFLIGHT,
            stream_inflight: DEFAULT_STREAM_INFLIGHT,
            max_streams: DEFAULT_MAX_STREAMS,
            streams_inflight: DEFAULT_STREAMS_INFLIGHT,
            outcome_queue: DEFAULT_OUTCOME_QUEUE,
            default_deadline: DEFAULT_DEADLINE,
            retry_pushback: DEFAULT_RETRY_PUSHBACK,
        }
    }
}

/// The `api` label: `unary` (Submit) or `stream` (SubmitStream).
type Api = &'static str;
const UNARY: Api = "unary";
const STREAM: Api = "stream";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    api: Api,
    /// `ok` or the gRPC code, e.g. `resource_exhausted`.
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: Api,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    api: Api,
    /// `inflight_limit`, `stream_limit`, `queue_full`, `unavailable`, `invalid_argument`,
    /// `deadline`, `already_exists`.
    reason: &'static str,
}

/// The rejection reason of a status returned at admission.
fn reject_reason(status: &Status) -> &'static str {
    match status.code() {
        tonic::Code::ResourceExhausted => "queue_full",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::InvalidArgument => "invalid_argument",
        tonic::Code::DeadlineExceeded => "deadline",
        tonic::Code::AlreadyExists => "already_exists",
        _ => "other",
    }
}

#[derive(Clone)]
struct IngressMetrics {
    transactions: Family<ResultLabels, Counter>,
    inflight: Family<ApiLabels, Gauge>,
    latency: Family<ApiLabels, Histogram>,
    admission_wait: Histogram,
    blocked_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    rejected: Family<RejectLabels, Counter>,
    streams: Gauge,
}

impl IngressMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = Self {
            transactions: Family::default(),
            inflight: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(sluice_core::metrics::latency_buckets())
            }),
            admission_wait: Histogram::new(sluice_core::metrics::latency_buckets()),
            blocked_seconds: Counter::default(),
            rejected: Family::default(),
            streams: Gauge::default(),
        };
        registry.register(
            "admission_blocked_seconds",
            "Seconds SubmitStream readers spent blocked waiting for downstream queue room, all streams",
            m.blocked_seconds.clone(),
        );
        registry.register(
            "rejected",
            "Transactions refused at admission, by API and reason",
            m.rejected.clone(),
        );
        registry.register(
            "transactions",
            "Transactions finished, by API and result",
            m.transactions.clone(),
        );
        registry.register(
            "inflight",
            "Transactions admitted and awaiting their outcome",
            m.inflight.clone(),
        );
        registry.register(
            "latency_seconds",
            "Time from admission to outcome",
            m.latency.clone(),
        );
        registry.register(
            "admission_wait_seconds",
            "Time SubmitStream readers waited for downstream queue room (backpressure)",
            m.admission_wait.clone(),
        );
        registry.register(
            "submit_streams",
            "Open SubmitStream calls",
            m.streams.clone(),
        );
        m
    }

    fn reject(&self, api: Api, reason: &'static str) {
        self.rejected
            .get_or_create(&RejectLabels { api, reason })
            .inc();
    }

    fn finish(&self, api: Api, result: Result<&Outcome, &Status>, started: Instant) {
        let result = match result {
            Ok(o) => match &o.error {
                None => "ok".to_string(),
                Some(e) => code_label(tonic::Code::from_i32(e.code)),
            },
            Err(s) => code_label(s.code()),
        };
        self.latency
            .get_or_create(&ApiLabels { api })
            .observe(started.elapsed().as_secs_f64());
        self.transactions
            .get_or_create(&ResultLabels { api, result })
            .inc();
    }
}

fn code_label(code: tonic::Code) -> String {
    let debug = format!("{code:?}");
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The `mesh.v1.Gateway` implementation.
pub struct Ingress {
    fanout: Fanout,
    limits: IngressLimits,
    unary_permits: Arc<Semaphore>,
    /// One per open SubmitStream (`max_streams`).
    stream_permits: Arc<Semaphore>,
    /// One per admitted, unanswered SubmitStream transaction (`streams_inflight`).
    stream_txn_permits: Arc<Semaphore>,
    shutdown: CancellationToken,
    metrics: IngressMetrics,
}

impl Ingress {
    pub fn new(
        fanout: Fanout,
        limits: IngressLimits,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            fanout,
            unary_permits: Arc::new(Semaphore::new(limits.max_inflight.max(1))),
            stream_permits: Arc::new(Semaphore::new(
                limits.max_streams.clamp(1, Semaphore::MAX_PERMITS),
            )),
            stream_txn_permits: Arc::new(Semaphore::new(
                limits.streams_inflight.clamp(1, Semaphore::MAX_PERMITS),
            )),
            limits,
            shutdown,
            metrics: IngressMetrics::new(registry),
        }
    }

    fn exhausted(&self, message: impl Into<String>) -> Status {
        let mut status = Status::resource_exhausted(message);
        let pushback = self.limits.retry_pushback.as_millis().to_string();
        if let Ok(value) = pushback.parse() {
            status
                .metadata_mut()
                .insert("grpc-retry-pushback-ms", value);
        }
        status
    }

    async fn submit_one(
        &self,
        txn: Transaction,
        deadline: Instant,
        cx: &Context,
    ) -> Result<Outcome, Status> {
        let Ok(_permit) = self.unary_permits.try_acquire() else {
            self.metrics.reject(UNARY, "inflight_limit");
            return Err(self.exhausted(format!(
                "gateway at its in-flight limit ({})",
                self.limits.max_inflight
            )));
        };
        if let Err(e) = validate::transaction(&txn) {
            self.metrics.reject(UNARY, "invalid_argument");
            return Err(Status::invalid_argument(e.to_string()));
        }
        let dispatched = match self
            .fanout
            .dispatch(txn, deadline, Admission::Immediate, cx)
            .await
        {
            Ok(d) => d,
            Err(status) => {
                self.metrics.reject(UNARY, reject_reason(&status));
                return Err(if status.code() == tonic::Code::ResourceExhausted {
                    self.exhausted(status.message())
                } else {
                    status
                });
            }
        };
        dispatched.outcome().await
    }
}

/// Headroom taken off a client's `grpc-timeout`. tonic's server enforces the same timeout
/// from the moment the request arrives and answers CANCELLED when it fires; finishing a
/// little earlier lets the gateway answer DEADLINE_EXCEEDED, as gRPC specifies. 50 ms, not
/// less: on a loaded 2-core host the time between tonic starting its timer and this handler
/// reading the clock reached 10 ms.
const DEADLINE_HEADROOM: Duration = Duration::from_millis(50);

/// The deadline of a call: its `grpc-timeout` (less [`DEADLINE_HEADROOM`]), or the default.
fn call_deadline<T>(request: &Request<T>, default: Duration) -> Instant {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(sluice_core::deadline::parse_grpc_timeout)
        .map_or(default, |t| t.saturating_sub(DEADLINE_HEADROOM));
    Instant::now() + timeout
}

#[tonic::async_trait]
impl Gateway for Ingress {
    type SubmitStreamStream = ReceiverStream<Result<Outcome, Status>>;

    async fn submit(&self, request: Request<Transaction>) -> Result<Response<Outcome>, Status> {
        let started = Instant::now();
        let deadline = call_deadline(&request, self.limits.default_deadline);
        // The client's context from metadata, else from the message's own carrier.
        let mut parent = propagation::extract_metadata(request.metadata());
        if !propagation::has_span(&parent) {
            parent = propagation::extract_map(&request.get_ref().trace_context);
        }
        let formats = trace_keys(request.metadata());
        let cx = ingress_span(
            &parent,
            "Submit",
            SpanKind::Server,
            &request.get_ref().id,
            formats,
            None,
        );
        // Held across the await: a client that cancels still gets counted and its span
        // ended, and the in-flight gauge comes back.
        let mut tracked = Tracked::new(&self.metrics, UNARY, started, cx.clone());
        tracked.admitted();
        let result = self.submit_one(request.into_inner(), deadline, &cx).await;
        tracked.finish(result.as_ref());
        result.map(Response::new)
    }

    async fn submit_stream(
        &self,
        request: Request<Streaming<Transaction>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let Ok(open) = self.stream_permits.clone().try_acquire_owned() else {
            self.metrics.reject(STREAM, "stream_limit");
            return Err(self.exhausted(format!(
                "gateway at its SubmitStream limit ({} open); retry later or use fewer streams",
                self.limits.max_streams
            )));
        };
        let (tx, rx) = mpsc::channel(self.limits.outcome_queue.max(1));
        // The call's grpc-timeout, if any, caps every message's deadline.
        let deadline = call_deadline(&request, Duration::from_secs(365 * 24 * 3600));
        // The stream's own span; each message gets a span in its own trace, linked to it.
        let parent = propagation::extract_metadata(request.metadata());
        let stream_cx = ingress_span(
            &parent,
            "SubmitStream",
            SpanKind::Server,
            "",
            trace_keys(request.metadata()),
            None,
        );
        let reader = StreamReader {
            deadline,
            parent,
            stream_cx,
            fanout: self.fanout.clone(),
            limits: self.limits.clone(),
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
            txn_permits: self.stream_txn_permits.clone(),
            open_streams: self.stream_permits.clone(),
            _open: open,
        };
        tokio::spawn(reader.run(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

struct StreamReader {
    /// The stream's own deadline (from grpc-timeout), capping each message's.
    deadline: Instant,
    /// The stream's metadata context: parent of messages that carry none of their own.
    parent: Context,
    /// The stream's span (messages link to it).
    stream_cx: Context,
    fanout: Fanout,
    limits: IngressLimits,
    shutdown: CancellationToken,
    metrics: IngressMetrics,
    /// Shared by every stream: a transaction is read only with one in hand.
    txn_permits: Arc<Semaphore>,
    /// Every stream's place under `max_streams` (for the fair share).
    open_streams: Arc<Semaphore>,
    /// This stream's place under `max_streams`.
    _open: OwnedSemaphorePermit,
}

/// The fewest transactions a stream may always have admitted, however many streams share
/// `streams_inflight`.
const MIN_STREAM_SHARE: usize = 16;

impl StreamReader {
    /// Most transactions this stream may have admitted now: its own limit, and its fair
    /// share of `streams_inflight` among the streams open now — so a few streams whose
    /// clients stop reading outcomes cannot hold all the room.
    fn share(&self) -> usize {
        let open = self
            .limits
            .max_streams
            .saturating_sub(self.open_streams.available_permits())
            .max(1);
        (self.limits.streams_inflight / open)
            .max(MIN_STREAM_SHARE)
            .min(self.limits.stream_inflight)
    }
}

/// How long a SubmitStream that is shut down keeps reading (without processing) to count
/// the messages it will never answer, for the UNAVAILABLE status that ends it.
const UNREAD_COUNT_WINDOW: Duration = Duration::from_millis(100);

/// Why a SubmitStream stopped reading.
enum Stop {
    /// Still reading.
    Reading,
    /// The client half-closed: end OK once everything admitted is answered.
    HalfClosed,
    /// A message could not be decoded (malformed, over the size limit): end with its status.
    Broken(Status),
    /// The gateway is shutting down: end UNAVAILABLE, saying how many were not read.
    ShuttingDown,
}

impl StreamReader {
    async fn run(
        self,
        mut inbound: Streaming<Transaction>,
        tx: mpsc::Sender<Result<Outcome, Status>>,
    ) {
        let _open = GaugeGuard::hold(&self.metrics.streams);
        let mut pending: FuturesUnordered<BoxFuture<'static, Outcome>> = FuturesUnordered::new();
        let mut stop = Stop::Reading;
        let mut client_gone = false;
        // A permit under `streams_inflight`, taken before the read it allows.
        let mut room: Option<OwnedSemaphorePermit> = None;
        loop {
            let reading = matches!(stop, Stop::Reading);
            let may_read = reading && pending.len() < self.share();
            tokio::select! {
                // Outcomes first: they free room for the next read.
                biased;
                Some(outcome) = pending.next(), if !pending.is_empty() => {
                    if tx.send(Ok(outcome)).await.is_err() {
                        client_gone = true;
                        break; // client gone; dropping `pending` counts the rest cancelled
                    }
                }
                _ = self.shutdown.cancelled(), if reading => stop = Stop::ShuttingDown,
                // FIFO: streams waiting for room get it in turn.
                permit = self.txn_permits.clone().acquire_owned(), if may_read && room.is_none() => {
                    room = permit.ok();
                }
                message = inbound.message(), if may_read && room.is_some() => {
                    match message {
                        Ok(Some(txn)) => {
                            let started = Instant::now();
                            let room = room.take().expect("read only with room");
                            match self.admit(txn, started, room).await {
                                Ok(fut) => pending.push(fut),
                                Err(outcome) => {
                                    if tx.send(Ok(outcome)).await.is_err() {
                                        client_gone = true;
                                        break;
                                    }
                                }
                            }
                        }
                        Ok(None) => stop = Stop::HalfClosed,
                        Err(status) => {
                            tracing::debug!(%status, "SubmitStream message did not decode; ending the stream");
                            stop = Stop::Broken(sluice_core::inbound_error(status));
                        }
                    }
                }
                else => break,
            }
        }
        drop(pending);
        let end = match stop {
            _ if client_gone => None,
            Stop::Reading | Stop::HalfClosed => None,
            Stop::Broken(status) => Some(status),
            Stop::ShuttingDown => {
                let unread = count_unread(&mut inbound).await;
                Some(Status::unavailable(format!(
                    "shutting down: {unread} messages not read"
                )))
            }
        };
        match &end {
            None => spans::ok_cx(&self.stream_cx),
            Some(status) => spans::fail_cx(
                &self.stream_cx,
                "stream_ended",
                status.code() as i32,
                status.message(),
            ),
        }
        if let Some(status) = end {
            let _ = tx.send(Err(status)).await;
        }
        self.stream_cx.span().end();
    }

    /// Validates and admits one transaction, waiting for queue room. On failure, the error
    /// Outcome to send back at once.
    async fn admit(
        &self,
        txn: Transaction,
        started: Instant,
        room: OwnedSemaphorePermit,
    ) -> Result<BoxFuture<'static, Outcome>, Outcome> {
        // The message's own context, else the stream's metadata context.
        let own = propagation::extract_map(&txn.trace_context);
        let parent = if propagation::has_span(&own) {
            own
        } else {
            self.parent.clone()
        };
        let link = self.stream_cx.span().span_context().clone();
        let formats = spans::received_formats(txn.trace_context.keys());
        let cx = ingress_span(
            &parent,
            "SubmitStream",
            SpanKind::Consumer,
            &txn.id,
            formats,
            Some(link),
        );
        let mut tracked = Tracked::new(&self.metrics, STREAM, started, cx.clone());
        let fail = |tracked: Tracked, id: String, status: Status| {
            self.metrics.reject(STREAM, reject_reason(&status));
            let outcome = error_outcome(id, &status);
            tracked.finish(Ok(&outcome));
            outcome
        };
        if let Err(e) = validate::transaction(&txn) {
            return Err(fail(
                tracked,
                txn.id,
                Status::invalid_argument(e.to_string()),
            ));
        }
        let id = txn.id.clone();
        let deadline = self.deadline.min(started + self.limits.default_deadline);
        let dispatched = self
            .fanout
            .dispatch(txn, deadline, Admission::Wait, &cx)
            .await;
        let waited = started.elapsed().as_secs_f64();
        self.metrics.admission_wait.observe(waited);
        self.metrics.blocked_seconds.inc_by(waited);
        cx.span()
            .set_attribute(KeyValue::new("sluice.admission_wait_ms", waited * 1000.0));
        match dispatched {
            Ok(d) => {
                tracked.admitted();
                Ok(Box::pin(async move {
                    let id = d.id().to_string();
                    let outcome = d.outcome().await.unwrap_or_else(|s| error_outcome(id, &s));
                    tracked.finish(Ok(&outcome));
                    drop(room);
                    outcome
                }))
            }
            Err(status) => Err(fail(tracked, id, status)),
        }
    }
}

/// Reads (and drops) what a shut-down stream's client has already sent, for at most
/// [`UNREAD_COUNT_WINDOW`], and returns how many messages that was.
async fn count_unread(inbound: &mut Streaming<Transaction>) -> usize {
    let until = tokio::time::Instant::now() + UNREAD_COUNT_WINDOW;
    let mut unread = 0;
    while let Ok(Ok(Some(_))) = tokio::time::timeout_at(until, inbound.message()).await {
        unread += 1;
    }
    unread
}

/// One transaction's accounting from arrival to outcome: the in-flight gauge (once
/// admitted), the `transactions` and `latency_seconds` metrics, and the ingress span.
/// [`Tracked::finish`] records the result; dropped unfinished — the client cancelled, its
/// stream broke, a task panicked — it records CANCELLED. No path leaks the gauge, misses
/// the count or leaves the span open.
struct Tracked {
    api: Api,
    started: Instant,
    cx: Context,
    metrics: IngressMetrics,
    inflight: Option<GaugeGuard>,
    finished: bool,
}

impl Tracked {
    fn new(metrics: &IngressMetrics, api: Api, started: Instant, cx: Context) -> Self {
        Self {
            api,
            started,
            cx,
            metrics: metrics.clone(),
            inflight: None,
            finished: false,
        }
    }

    /// Counts the transaction in `inflight` until it finishes.
    fn admitted(&mut self) {
        let gauge = self
            .metrics
            .inflight
            .get_or_create(&ApiLabels { api: self.api });
        self.inflight = Some(GaugeGuard::hold(&gauge));
    }

    fn finish(mut self, result: Result<&Outcome, &Status>) {
        self.finished = true;
        end_ingress(&self.cx, result);
        self.metrics.finish(self.api, result, self.started);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.finished {
            let status = Status::cancelled("cancelled before its outcome");
            end_ingress(&self.cx, Err(&status));
            self.metrics.finish(self.api, Err(&status), self.started);
        }
    }
}

/// The gateway's span for a unary call (SERVER), a stream (SERVER, `id` empty) or one stream
/// message (CONSUMER, linked to the stream's span).
fn ingress_span(
    parent: &Context,
    method: &'static str,
    kind: SpanKind,
    id: &str,
    received: String,
    link: Option<opentelemetry::trace::SpanContext>,
) -> Context {
    let tracer = spans::tracer();
    let name = match kind {
        SpanKind::Consumer => format!("mesh.v1.Gateway/{method} process"),
        _ => format!("mesh.v1.Gateway/{method}"),
    };
    let mut attributes = spans::rpc("mesh.v1.Gateway", method);
    if !id.is_empty() {
        attributes.push(KeyValue::new("sluice.transaction.id", id.to_string()));
    }
    if !received.is_empty() {
        attributes.push(KeyValue::new("sluice.propagation.received", received));
    }
    let mut builder = tracer
        .span_builder(name)
        .with_kind(kind)
        .with_attributes(attributes);
    if let Some(link) = link {
        builder = builder.with_links(vec![Link::with_context(link)]);
    }
    parent.with_span(builder.start_with_context(&tracer, parent))
}

/// Ends an ingress span with the transaction's result (an error Outcome counts as failed).
fn end_ingress(cx: &Context, result: Result<&Outcome, &Status>) {
    let error = match result {
        Ok(o) => o.error.as_ref().map(|e| (e.code, e.message.as_str())),
        Err(s) => Some((s.code() as i32, s.message())),
    };
    match error {
        Some((code, message)) => {
            let event = match tonic::Code::from_i32(code) {
                tonic::Code::ResourceExhausted => "rejected",
                tonic::Code::DeadlineExceeded => "deadline_exceeded",
                tonic::Code::InvalidArgument => "invalid_argument",
                _ => "error",
            };
            spans::fail_cx(cx, event, code, message);
        }
        None => spans::ok_cx(cx),
    }
    cx.span().end();
}

/// The trace-context headers present in call metadata, sorted, comma-joined.
fn trace_keys(metadata: &tonic::metadata::MetadataMap) -> String {
    let mut keys: Vec<&str> = metadata
        .keys()
        .filter_map(|k| match k {
            tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
            tonic::metadata::KeyRef::Binary(_) => None,
        })
        .filter(|k| matches!(*k, "traceparent" | "tracestate" | "b3") || k.starts_with("x-b3-"))
        .collect();
    keys.sort_unstable();
    keys.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_snake_case() {
        assert_eq!(
            code_label(tonic::Code::ResourceExhausted),
            "resource_exhausted"
        );
        assert_eq!(code_label(tonic::Code::Unavailable), "unavailable");
    }
}
