//! One long-lived stream to a downstream service, and the loop that keeps it open.
//!
//! The stream's request body ([`outbound`]) pulls the next envelope from the downstream's
//! shared queue only when hyper polls it — which it does only when the h2 stream has send
//! capacity — and only while fewer than `stream_inflight` requests await replies. Each
//! request gets a correlation id (unique per gateway process) and waits in [`Pending`] for
//! the reply with that id. When the stream breaks, every request still waiting fails
//! UNAVAILABLE and the stream reopens after a [`Backoff`] delay — on the replica's first
//! lane; an extra lane ([`super::lanes`]) just closes.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::Stream;
use sluice_core::{CancellationToken, spans};
use sluice_proto::{Encoded, HopCodec, HopReply, HopRequest};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{GrpcMethod, Status, Streaming};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::backoff::Backoff;
use super::lanes::{Lane, Verdict};
use super::linger::{Arrivals, LingerMode};
use super::{Envelope, Outstanding, ReplyTx, Shared};

/// The outbound request stream handed to tonic. A named type rather than a bare
/// `Pin<Box<dyn Stream>>`, which trips rustc's higher-ranked `Send` inference inside tonic's
/// client futures.
pub(crate) struct Outbound<T>(Pin<Box<dyn Stream<Item = T> + Send + 'static>>);

impl<T> Stream for Outbound<T> {
    type Item = T;
    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.0.as_mut().poll_next(cx)
    }
}

/// Requests sent on one stream and awaiting replies, by correlation id.
struct Pending<R: HopRequest> {
    /// Set when the stream ended: late sends are refused instead of waiting forever.
    closed: bool,
    waiting: HashMap<u64, Waiting<R>>,
}

/// A request sent on a stream, awaiting its reply.
struct Waiting<R: HopRequest> {
    reply: ReplyTx<R>,
    sent_at: Instant,
    /// The hop's span: ends (dropped) when the reply or the failure arrives.
    span: tracing::Span,
    /// This request's place under `stream_inflight`.
    _slot: OwnedSemaphorePermit,
    /// Its count in the replica's load, until the reply.
    _outstanding: Outstanding,
}

/// Answers a request that failed before (or instead of) a reply, ending its span.
pub(super) fn refuse<R: HopRequest>(
    reply: ReplyTx<R>,
    span: &tracing::Span,
    event: &'static str,
    status: Status,
) {
    spans::fail(span, event, status.code() as i32, status.message());
    // The caller may have given up (deadline); nothing to do then.
    let _ = reply.send(Err(status));
}

/// Opens the bidirectional stream `R::PATH` with `outbound` as its request body: the
/// stream span's context and the mesh token ride in its metadata, sent once at open.
async fn open<R: HopRequest>(
    channel: Channel,
    shared: &Shared<R>,
    outbound: Outbound<Encoded<R>>,
    stream_span: &tracing::Span,
) -> Result<Streaming<R::Reply>, Status> {
    let mut request = tonic::Request::new(outbound);
    sluice_core::propagation::inject_metadata(&stream_span.context(), request.metadata_mut());
    sluice_core::auth::insert(request.metadata_mut(), shared.config.auth.as_ref());
    request
        .extensions_mut()
        .insert(GrpcMethod::new(R::SERVICE, R::METHOD));
    let mut grpc =
        tonic::client::Grpc::new(channel).max_decoding_message_size(shared.config.max_message_size);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("{}: connection not ready: {e}", R::NAME)))?;
    let codec = HopCodec::<R>::default();
    let path = PathAndQuery::from_static(R::PATH);
    Ok(grpc.streaming(request, path, codec).await?.into_inner())
}

/// Keeps stream `index` of the replica's first lane open until `shutdown`: opens it,
/// routes replies to their requests, and after a break fails what was waiting and reopens
/// with backoff. With no stream of the downstream live, queued requests fail at once rather
/// than wait for a reconnect. Stream 0 ends last: after every extra lane.
pub(super) async fn run<R: HopRequest>(
    index: usize,
    channel: Channel,
    shared: Arc<Shared<R>>,
    shutdown: CancellationToken,
) {
    run_lane(index, false, channel, &shared, &shutdown).await;
    if index == 0 {
        shared.lanes.extras_ended().await;
        shared.metrics.lanes.dec();
    }
}

/// Opens an extra lane to the replica if one may open now ([`super::lanes`]).
fn grow<R: HopRequest>(shared: &Arc<Shared<R>>) {
    let Some((index, channel)) = shared.lanes.claim(shared.config.lanes_max) else {
        return;
    };
    shared.metrics.lanes.inc();
    tracing::info!(downstream = R::NAME, replica = %shared.replica.name, stream = index, lanes = shared.lanes.open(), "requests keep waiting for the sender: opening another connection");
    let shared = shared.clone();
    tokio::spawn(async move {
        let shutdown = shared.lanes.shutdown.clone();
        run_lane(index, true, channel, &shared, &shutdown).await;
        shared.metrics.lanes.dec();
        shared.lanes.closed();
    });
}

/// One lane's stream: the first lane's reconnects, an extra lane's ends once.
async fn run_lane<R: HopRequest>(
    index: usize,
    extra: bool,
    channel: Channel,
    shared: &Arc<Shared<R>>,
    shutdown: &CancellationToken,
) {
    let mut backoff = Backoff::new(shared.config.backoff_base, shared.config.backoff_max);
    let inflight = Arc::new(Semaphore::new(shared.config.stream_inflight.max(1)));
    let mut was_live = true;
    while !shutdown.is_cancelled() {
        let pending = Arc::new(Mutex::new(Pending::<R> {
            closed: false,
            waiting: HashMap::new(),
        }));
        let stop_sending = shutdown.child_token();
        let lane = Lane::new(extra);
        let retired = lane.retired.clone();
        let outbound = outbound::<R>(
            shared.clone(),
            pending.clone(),
            (inflight.clone(), lane),
            stop_sending.clone(),
        );
        // The long-lived stream's own CLIENT span, a trace of its own: message spans are
        // never its children.
        let stream_span = tracing::info_span!(
            parent: None,
            "stream",
            otel.name = %format_args!("{}/{} stream", R::SERVICE, R::METHOD),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = R::SERVICE,
            rpc.method = R::METHOD,
        );
        match open(channel.clone(), shared, outbound, &stream_span).await {
            Ok(replies) => {
                backoff.reset();
                was_live = true;
                shared.live.fetch_add(1, Ordering::Relaxed);
                shared.live_changed.notify_waiters();
                shared.metrics.live_streams.inc();
                shared.replica.live_streams.inc();
                tracing::info!(downstream = R::NAME, replica = %shared.replica.name, stream = index, "stream open");
                read_replies(index, replies, shared, &pending).await;
                shared.live.fetch_sub(1, Ordering::Relaxed);
                shared.live_changed.notify_waiters();
                shared.metrics.live_streams.dec();
                shared.replica.live_streams.dec();
            }
            Err(status) => {
                spans::fail(
                    &stream_span,
                    "open_failed",
                    status.code() as i32,
                    status.message(),
                );
                // The first failure loudly, repeats quietly: a down service is one event. An
                // extra lane does not retry; the first lane's own failure says it loudly.
                if extra {
                    shared.lanes.failed();
                    tracing::debug!(downstream = R::NAME, replica = %shared.replica.name, stream = index, %status, "cannot open another connection");
                } else if was_live {
                    tracing::warn!(downstream = R::NAME, replica = %shared.replica.name, stream = index, %status, "cannot open stream; retrying with backoff");
                } else {
                    tracing::debug!(downstream = R::NAME, replica = %shared.replica.name, stream = index, %status, "cannot open stream");
                }
                was_live = false;
            }
        }
        drop(stream_span);
        stop_sending.cancel();
        fail_pending(shared, &pending);
        if shutdown.is_cancelled() {
            break;
        }
        if extra {
            // An extra lane ends here, idle or broken; with no stream live now (the first
            // lane reconnecting), what is queued fails at once as it would for the first.
            if retired.load(Ordering::Relaxed) {
                tracing::info!(downstream = R::NAME, replica = %shared.replica.name, stream = index, lanes = shared.lanes.open() - 1, "queue idle for a while: connection closed");
            }
            break;
        }
        shared.metrics.reconnects.inc();
        if shared.live.load(Ordering::Relaxed) == 0 {
            drain_queue(shared).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next()) => {}
            _ = shutdown.cancelled() => {}
        }
    }
    if shared.live.load(Ordering::Relaxed) == 0 {
        drain_queue(shared).await;
    }
}

/// Routes each reply to the request with its correlation id, until the stream ends.
async fn read_replies<R: HopRequest>(
    index: usize,
    mut replies: Streaming<R::Reply>,
    shared: &Shared<R>,
    pending: &Mutex<Pending<R>>,
) {
    loop {
        match replies.message().await {
            Ok(Some(reply)) => {
                let entry = pending
                    .lock()
                    .expect("pending lock")
                    .waiting
                    .remove(&reply.correlation_id());
                if let Some(w) = entry {
                    shared.metrics.inflight.dec();
                    let rtt = w.sent_at.elapsed();
                    shared.rtt.observe(rtt);
                    shared.metrics.roundtrip.observe(rtt.as_secs_f64());
                    let error = reply.error().map(|e| (e.code, e.message.as_str()));
                    spans::finish(&w.span, error, "error");
                    let _ = w.reply.send(Ok(reply));
                }
            }
            Ok(None) => {
                tracing::info!(
                    downstream = R::NAME,
                    replica = %shared.replica.name,
                    stream = index,
                    "stream closed by the service"
                );
                return;
            }
            Err(status) => {
                tracing::warn!(downstream = R::NAME, replica = %shared.replica.name, stream = index, %status, "stream broke");
                return;
            }
        }
    }
}

/// Fails every request awaiting a reply on a stream that ended, and refuses late arrivals.
fn fail_pending<R: HopRequest>(shared: &Shared<R>, pending: &Mutex<Pending<R>>) {
    let waiting = {
        let mut p = pending.lock().expect("pending lock");
        p.closed = true;
        std::mem::take(&mut p.waiting)
    };
    for (_, w) in waiting {
        shared.metrics.inflight.dec();
        shared.metrics.broken_requests.inc();
        let status = Status::unavailable(format!("{} stream broke before replying", R::NAME));
        refuse::<R>(w.reply, &w.span, "stream_broke", status);
    }
}

/// With no live stream, queued requests would wait for a reconnect that may be long in
/// coming: fail them now.
async fn drain_queue<R: HopRequest>(shared: &Shared<R>) {
    let mut rx = shared.rx.lock().await;
    while let Ok(envelope) = rx.try_recv() {
        shared.metrics.queue_depth.dec();
        let status = Status::unavailable(format!("{} has no live stream", R::NAME));
        refuse::<R>(envelope.reply, &envelope.call.span, "unavailable", status);
    }
}

/// A request taken from the queue with its place under `stream_inflight`, not yet sent.
type Taken<R> = (OwnedSemaphorePermit, Envelope<R>);

/// Takes the next requests into `batch` (empty on entry); false when the stream is to end.
///
/// A queue that is not empty gives one request at once: the encoder asks again before it
/// flushes, so everything already queued shares a frame anyway. An empty queue means the
/// next request starts a batch: it is held until its linger has passed or `linger_batch`
/// requests are together, so that those arriving meanwhile share its frame, its write and
/// the service's wake-up instead of each paying for its own. The linger is `linger`, or
/// with the adaptive mode about one expected arrival gap within it (`linger.rs`).
///
/// With more than one lane allowed, each take that finds the queue not empty tells the
/// `lane` (which keeps an extra lane open), whether a batch's worth waited while the service
/// keeps up (which may open another lane), and takes up to `linger_batch` at once, so the
/// lanes pass the queue's lock once per batch rather than per request. An extra lane whose
/// takes found the queue empty for `lane_idle` ends here (false).
async fn take_batch<R: HopRequest>(
    shared: &Arc<Shared<R>>,
    (inflight, lane): (&Arc<Semaphore>, &mut Lane),
    stop: &CancellationToken,
    (batch, arrivals): (&mut VecDeque<Taken<R>>, &mut Arrivals),
) -> bool {
    let most = shared.config.linger_batch.max(1);
    let idle_at = lane.idle_at(shared.config.lane_idle);
    // An extra lane's wait for work ends at its idle time: a tokio timer, registered only on
    // an extra lane's takes, and firing only when the lock is not to be had (biased).
    let idle = async move {
        match idle_at {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(idle);
    let permit = tokio::select! {
        p = inflight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return false },
        _ = stop.cancelled() => return false,
    };
    let mut rx = tokio::select! {
        biased;
        _ = stop.cancelled() => return false,
        rx = shared.rx.lock() => rx,
        _ = &mut idle => { lane.retire(); return false }
    };
    match rx.try_recv() {
        Ok(envelope) => {
            let now = Instant::now();
            arrivals.observe(now);
            batch.push_back((permit, envelope));
            // With one lane allowed (below 8 CPUs by default) nothing here applies.
            if shared.config.lanes_max > 1 {
                lane.busy(now);
                // A backlog is a whole batch already waiting while the service keeps up
                // (under half of `stream_inflight` unanswered): a linger's batching leaves a
                // few behind as it sends, and a slow service frees room only as it answers,
                // so each take finds the queue full — another connection helps neither.
                let answering = inflight.available_permits() >= shared.config.stream_inflight / 2;
                if 1 + rx.len() < most || !answering {
                    lane.drained();
                } else if lane.backlog(shared.config.lane_grow_after) == Verdict::Grow {
                    grow(shared);
                }
                while batch.len() < most {
                    let Ok(permit) = inflight.clone().try_acquire_owned() else {
                        break;
                    };
                    let Ok(envelope) = rx.try_recv() else { break };
                    batch.push_back((permit, envelope));
                }
            }
            return true;
        }
        Err(mpsc::error::TryRecvError::Disconnected) => return false,
        Err(mpsc::error::TryRecvError::Empty) => lane.drained(),
    }
    // An extra lane past its idle time ends here: the queue is empty, so `recv` is pending
    // and the timer, polled next, is already due.
    let first = tokio::select! {
        biased;
        _ = stop.cancelled() => return false,
        e = rx.recv() => e,
        _ = &mut idle => { lane.retire(); return false }
    };
    let Some(first) = first else { return false };
    arrivals.observe(Instant::now());
    batch.push_back((permit, first));
    let linger = match shared.config.linger_mode {
        LingerMode::Fixed => shared.config.linger,
        LingerMode::Adaptive => arrivals.hold(shared.config.linger),
    };
    if linger.is_zero() {
        return true;
    }
    // The first wake-up of the process past the linger ends it (`piggyback`); tokio's
    // millisecond timer, which would round 300 µs up to 1-2 ms, only if none comes.
    let at = Instant::now() + linger;
    let until = async move {
        tokio::select! {
            _ = sluice_core::piggyback::Due::at(at) => {}
            _ = tokio::time::sleep_until(at.into()) => {}
        }
    };
    tokio::pin!(until);
    while batch.len() < most {
        let permit = tokio::select! {
            biased;
            _ = stop.cancelled() => return false,
            _ = &mut until => break,
            p = inflight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return false },
        };
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return false,
            _ = &mut until => break,
            e = rx.recv() => e,
        };
        match next {
            Some(envelope) => {
                arrivals.observe(Instant::now());
                batch.push_back((permit, envelope));
            }
            None => break,
        }
    }
    true
}

/// The request body of one stream: pulls from the shared queue only when polled (the h2
/// stream has room) and while fewer than `stream_inflight` requests await replies; a
/// request that finds the queue empty lingers for company ([`take_batch`]).
fn outbound<R: HopRequest>(
    shared: Arc<Shared<R>>,
    pending: Arc<Mutex<Pending<R>>>,
    (inflight, mut lane): (Arc<Semaphore>, Lane),
    stop: CancellationToken,
) -> Outbound<Encoded<R>> {
    Outbound(Box::pin(async_stream::stream! {
        let mut held = Held { batch: VecDeque::with_capacity(shared.config.linger_batch.max(1)), shared: shared.clone() };
        let mut arrivals = Arrivals::default();
        loop {
            if held.batch.is_empty() && !take_batch(&shared, (&inflight, &mut lane), &stop, (&mut held.batch, &mut arrivals)).await {
                break;
            }
            let Some((permit, envelope)) = held.batch.pop_front() else { break };
            let Envelope { call, reply, enqueued_at, outstanding, .. } = envelope;
            let (mut request, span) = (call.request, call.span);
            shared.metrics.queue_depth.dec();
            let queued = enqueued_at.elapsed();
            shared.metrics.queue_wait.observe(queued.as_secs_f64());
            span.set_attribute("sluice.queue_wait_ms", queued.as_secs_f64() * 1000.0);
            if call.deadline <= Instant::now() {
                shared.metrics.deadline_drops.inc();
                let status = Status::deadline_exceeded(format!("deadline passed while queued for {}", R::NAME));
                refuse::<R>(reply, &span, "deadline_drop", status);
                continue;
            }
            let id = shared.next_correlation.fetch_add(1, Ordering::Relaxed);
            request.set_correlation_id(id);
            request.set_sent_unix_micros(spans::now_unix_micros());
            span.add_event("sent", vec![]);
            {
                let mut p = pending.lock().expect("pending lock");
                if p.closed {
                    drop(p);
                    let status = Status::unavailable(format!("{} stream broke", R::NAME));
                    refuse::<R>(reply, &span, "stream_broke", status);
                    break;
                }
                p.waiting.insert(id, Waiting { reply, sent_at: Instant::now(), span, _slot: permit, _outstanding: outstanding });
            }
            shared.metrics.inflight.inc();
            let handed = Instant::now();
            yield request;
            shared.metrics.send_blocked.inc_by(handed.elapsed().as_secs_f64());
        }
    }))
}

/// Requests a stream took from the queue and has not sent yet. Dropped with the stream's
/// body — at its end, or when hyper drops a body paused between two sends (a reset) — it
/// answers each UNAVAILABLE now rather than leave it to a dropped reply channel, and takes
/// it off the queue depth.
struct Held<R: HopRequest> {
    batch: VecDeque<Taken<R>>,
    shared: Arc<Shared<R>>,
}

impl<R: HopRequest> Drop for Held<R> {
    fn drop(&mut self) {
        for (_, envelope) in self.batch.drain(..) {
            self.shared.metrics.queue_depth.dec();
            let status = Status::unavailable(format!("{} stream closed", R::NAME));
            refuse::<R>(envelope.reply, &envelope.call.span, "stream_broke", status);
        }
    }
}
