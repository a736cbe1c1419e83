//! The service side of backpressure: a bounded worker pool that reads a stream's next
//! message only when a worker is free.
//!
//! A handler that spawned a task per message would keep reading while work piles up in
//! memory; here a free worker comes first, the read second. When every worker is busy (or
//! the reply queue is full because the peer is not reading replies) nothing reads the
//! inbound stream, hyper stops releasing window, and the sender's writes stop: the pressure
//! crosses the hop as HTTP/2 flow control.
//!
//! The pool owns everything about *reading*: the bounds taken before a read, `stall` (it
//! stops reads, which no layer around the work could do: a layer only ever sees messages
//! already read), shutdown, and messages that do not decode. What happens to a message once
//! it is read — its deadline, injected delay and errors, the work — is the
//! [stack](crate::stack), a tower service called once per message. The pool answers a
//! message whose stack panicked INTERNAL, so one bad message never ends the stream.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::FutureExt as _;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::metrics::GaugeGuard;
use sluice_core::spans;
use sluice_proto::hop::{HopReply, HopRequest};
use sluice_proto::pb::Faults;
use tokio::sync::mpsc::{self, OwnedPermit};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status, Streaming};
use tower::{Service, ServiceExt as _};
use tracing::Instrument as _;

use crate::faults::{FaultLayer, FaultMetrics};
use crate::trace::StreamTrace;

/// Default number of workers: messages processed at once across all streams.
pub const DEFAULT_WORKERS: usize = 64;
/// Default capacity of each stream's reply queue (replies produced but not yet taken by
/// the transport). Room is taken before a read, so when it is full the stream is not read.
pub const DEFAULT_REPLY_QUEUE: usize = 128;
/// Default most workers one stream may hold at once: half the default pool, so one rogue
/// stream can never take more than half. A gateway opens one stream per service (a second
/// gateway, or `--streams-per-downstream 2`, uses the other half); 32 messages in work at
/// once is far more than risk and notification need, and logging's group commit writes
/// them in one fsync.
pub const DEFAULT_STREAM_WORKERS: usize = 32;
/// Largest pool size (`--workers`, `SetFaults`).
pub const MAX_WORKERS: usize = 10_000;

/// The reply half of a stream served by a [`WorkerPool`].
pub type ReplyStream<T> = ReceiverStream<Result<T, Status>>;

/// The pool's bounds. The CLI refuses values out of range ([`crate::ServiceConfig`]); the
/// pool clamps them (at least 1, at most [`MAX_WORKERS`] workers) so no value can wedge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolConfig {
    /// Messages processed at once across all streams ([`DEFAULT_WORKERS`]). Filled by
    /// messages read and not yet answered; when full, no stream is read.
    pub workers: usize,
    /// Replies each stream may hold that the transport has not taken
    /// ([`DEFAULT_REPLY_QUEUE`]). Room is taken before the read: when full, that stream is
    /// not read, and it holds no worker while it waits.
    pub reply_queue: usize,
    /// Most workers one stream may hold ([`DEFAULT_STREAM_WORKERS`]). When a stream holds
    /// that many, it is not read; other streams go on.
    pub stream_workers: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            workers: DEFAULT_WORKERS,
            reply_queue: DEFAULT_REPLY_QUEUE,
            stream_workers: DEFAULT_STREAM_WORKERS,
        }
    }
}

/// A pool of workers shared by every stream of one service, with its faults.
#[derive(Clone)]
pub struct WorkerPool {
    /// One permit per idle worker; a stream takes one before it reads.
    permits: Arc<Semaphore>,
    /// Target size (what `GetFaults` reports); permits converge to it as work finishes.
    size: Arc<AtomicUsize>,
    config: PoolConfig,
    /// The faults in force: `stall` is read here, the rest by the [`FaultLayer`].
    faults: Arc<watch::Sender<Faults>>,
    /// Serialises resizes so concurrent SetFaults calls cannot interleave their arithmetic.
    resize: Arc<Mutex<()>>,
    /// Ends every stream's reading (UNAVAILABLE once in-flight work has replied).
    shutdown: CancellationToken,
    metrics: PoolMetrics,
    fault_metrics: FaultMetrics,
}

#[derive(Clone)]
struct PoolMetrics {
    busy: Gauge,
    capacity: Gauge,
    processed: Counter,
    streams: Gauge,
    stalled: Gauge,
    work_seconds: Histogram,
    panics: Counter,
}

impl PoolMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            busy: Gauge::default(),
            capacity: Gauge::default(),
            processed: Counter::default(),
            streams: Gauge::default(),
            stalled: Gauge::default(),
            work_seconds: Histogram::new(sluice_core::metrics::latency_buckets()),
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
            "stalled",
            "1 while the service is stalled (SetFaults stall): it reads nothing",
            metrics.stalled.clone(),
        );
        registry.register(
            "work_seconds",
            "Time per message from worker start to reply queued",
            metrics.work_seconds.clone(),
        );
        metrics
    }
}

impl WorkerPool {
    /// A pool with `config`'s bounds whose streams end (UNAVAILABLE, after in-flight work
    /// has replied) once `shutdown` is cancelled. Registers `worker_pool_*`, `stalled`,
    /// `work_seconds` and the fault layer's metrics in `registry`.
    pub fn new(config: PoolConfig, registry: &mut Registry, shutdown: CancellationToken) -> Self {
        let config = PoolConfig {
            workers: config.workers.clamp(1, MAX_WORKERS),
            reply_queue: config.reply_queue.max(1),
            stream_workers: config.stream_workers.max(1),
        };
        let metrics = PoolMetrics::register(registry);
        metrics.capacity.set(config.workers as i64);
        let (faults, _) = watch::channel(Faults::default());
        Self {
            permits: Arc::new(Semaphore::new(config.workers)),
            size: Arc::new(AtomicUsize::new(config.workers)),
            config,
            faults: Arc::new(faults),
            resize: Arc::default(),
            shutdown,
            metrics,
            fault_metrics: FaultMetrics::register(registry),
        }
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
            self.config.workers
        } else {
            faults.workers as usize
        };
        {
            // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
            let _guard = self.resize.lock().unwrap_or_else(PoisonError::into_inner);
            let current = self.size.swap(target, Ordering::Relaxed);
            if target > current {
                self.permits.add_permits(target - current);
            } else if target < current {
                let wanted = current - target;
                let forgotten = self.permits.forget_permits(wanted);
                if forgotten < wanted {
                    // The rest are busy: forget them as their work finishes.
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
        self.metrics.stalled.set(i64::from(faults.stall));
        if faults != Faults::default() {
            tracing::warn!(?faults, "faults injected");
        } else {
            tracing::info!("faults cleared");
        }
        self.faults.send_replace(faults);
        self.faults()
    }

    /// The fault layer over this pool's faults (see [`crate::faults`]).
    pub fn fault_layer(&self) -> FaultLayer {
        FaultLayer::new(self.faults.subscribe(), self.fault_metrics.clone())
    }

    /// Serves one bidirectional stream: for each inbound message, once there is room for
    /// its reply, a worker of this stream's share and of the pool (and the service is not
    /// stalled), reads it and runs it through the [message stack](crate::stack::message_stack)
    /// around `work`. After in-flight work has replied, ends the reply stream: OK when the
    /// peer half-closed, with the decode error when a message did not decode, UNAVAILABLE
    /// on shutdown. A message whose work panics is answered INTERNAL; the stream goes on.
    pub fn serve<Req, F, Fut>(
        &self,
        request: Request<Streaming<Req>>,
        work: F,
    ) -> ReplyStream<Req::Reply>
    where
        Req: HopRequest,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Req::Reply> + Send + 'static,
    {
        let (replies, rx) = mpsc::channel(self.config.reply_queue);
        let trace = StreamTrace::open(request.metadata());
        let span = trace.span().clone();
        let reader = StreamReader {
            pool: self.clone(),
            share: Arc::new(Semaphore::new(self.config.stream_workers)),
            inbound: request.into_inner(),
            replies,
            stack: crate::stack::message_stack(work, self.fault_layer()),
            trace,
        };
        // In the stream's span: log lines about the stream name its trace.
        tokio::spawn(reader.run().instrument(span));
        ReceiverStream::new(rx)
    }
}

/// One inbound stream being served.
struct StreamReader<Req: HopRequest, S> {
    pool: WorkerPool,
    /// This stream's share of the pool: `stream_workers` permits.
    share: Arc<Semaphore>,
    inbound: Streaming<Req>,
    replies: mpsc::Sender<Result<Req::Reply, Status>>,
    stack: S,
    trace: StreamTrace<Req>,
}

/// What one message holds from before its read until its reply is queued. Each part is
/// given back when this drops, on every path: replied, cancelled, panicked.
struct Held {
    _worker: OwnedSemaphorePermit,
    _share: OwnedSemaphorePermit,
    _busy: GaugeGuard,
}

impl<Req, S> StreamReader<Req, S>
where
    Req: HopRequest,
    S: Service<Req, Response = Req::Reply, Error = std::convert::Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    async fn run(mut self) {
        let _open = GaugeGuard::hold(&self.pool.metrics.streams);
        let mut in_flight = JoinSet::new();
        let end = self.read_all(&mut in_flight).await;
        // Everything read is answered before the stream ends.
        while in_flight.join_next().await.is_some() {}
        spans::finish(
            self.trace.span(),
            end.as_ref().map(|s| (s.code() as i32, s.message())),
            "stream_ended",
        );
        if let Some(status) = end {
            let _ = self.replies.send(Err(status)).await;
        }
    }

    /// Reads and dispatches messages until the stream ends; returns the status to end it
    /// with (`None`: OK).
    async fn read_all(&mut self, in_flight: &mut JoinSet<()>) -> Option<Status> {
        let shutting_down = || Some(Status::unavailable("shutting down"));
        let shutdown = self.pool.shutdown.clone();
        let mut faults = self.pool.faults.subscribe();
        loop {
            while in_flight.try_join_next().is_some() {}
            // Room for the reply first: a peer that stops reading replies stops here,
            // holding no worker, instead of parking workers on a full reply queue.
            let reply_slot = tokio::select! {
                r = self.replies.clone().reserve_owned() => match r {
                    Ok(slot) => slot,
                    Err(_) => return None, // the peer is gone
                },
                _ = shutdown.cancelled() => return shutting_down(),
            };
            // Then this stream's share of the pool, then a free worker, and only then the
            // read: this ordering is the backpressure.
            let share = tokio::select! {
                p = self.share.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return shutting_down(),
                },
                _ = shutdown.cancelled() => return shutting_down(),
            };
            let worker = tokio::select! {
                p = self.pool.permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return shutting_down(),
                },
                _ = shutdown.cancelled() => return shutting_down(),
            };
            // A stalled service reads nothing at all.
            tokio::select! {
                r = faults.wait_for(|f| !f.stall) => if r.is_err() { return shutting_down() },
                _ = shutdown.cancelled() => return shutting_down(),
            }
            // Stalled while waiting counts too: give the room, share and worker back and
            // wait again (`message()` keeps its decode state in `inbound`: cancel-safe).
            // Biased, the read last: a stall (or shutdown) and a message that arrive
            // together must not let the message through.
            let message = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return shutting_down(),
                r = faults.wait_for(|f| f.stall) => if r.is_err() { return shutting_down() } else { continue },
                m = self.inbound.message() => m,
            };
            let request = match message {
                Ok(Some(request)) => request,
                Ok(None) => return None,
                Err(status) => {
                    tracing::debug!(%status, "inbound message did not decode; ending the stream");
                    return Some(sluice_core::inbound_error(status));
                }
            };
            let held = Held {
                _worker: worker,
                _share: share,
                _busy: GaugeGuard::hold(&self.pool.metrics.busy),
            };
            self.dispatch(request, reply_slot, held, in_flight);
        }
    }

    /// Runs one message through the stack in its own task and `process` span, and queues
    /// the reply in the room reserved for it.
    fn dispatch(
        &self,
        request: Req,
        reply_slot: OwnedPermit<Result<Req::Reply, Status>>,
        held: Held,
        in_flight: &mut JoinSet<()>,
    ) {
        let span = self.trace.message(&request);
        let process = span.clone();
        let stack = self.stack.clone();
        let metrics = self.pool.metrics.clone();
        in_flight.spawn(
            async move {
                let started = Instant::now();
                // Kept before the stack takes the request: a panic must still be answered
                // (the rejection itself is built only then, not for every message).
                let correlation_id = request.correlation_id();
                let reply = match AssertUnwindSafe(stack.oneshot(request))
                    .catch_unwind()
                    .await
                {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(never)) => match never {},
                    Err(_) => {
                        metrics.panics.inc();
                        tracing::error!("work panicked; answered INTERNAL");
                        Req::Reply::failed(
                            correlation_id,
                            &Status::internal("the service failed processing this message"),
                        )
                    }
                };
                let error = reply.error().map(|e| (e.code, e.message.as_str()));
                spans::finish(&process, error, "error");
                metrics
                    .work_seconds
                    .observe(started.elapsed().as_secs_f64());
                // Never waits: the room was reserved before the read.
                reply_slot.send(Ok(reply));
                metrics.processed.inc();
                drop(held);
            }
            .instrument(span),
        );
    }
}

#[cfg(test)]
mod tests;
