//! The service side of backpressure: a bounded worker pool that reads a stream's next
//! message only when a worker is free.
//!
//! A handler that spawned a task per message would keep reading while work piles up in
//! memory; here a free worker permit comes first, the read second. When every worker is
//! busy (or the reply queue is full because the peer is not reading replies) nothing reads
//! the inbound stream, hyper stops releasing window, and the sender's writes stop: the
//! pressure crosses the hop as HTTP/2 flow control.

use std::future::Future;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

/// Default number of workers: messages processed at once across all streams.
pub const DEFAULT_WORKERS: usize = 64;
/// Default capacity of each stream's reply queue (replies produced but not yet taken by
/// the transport). When full, workers wait, so a peer that stops reading replies stops
/// the reading of its requests too.
pub const DEFAULT_REPLY_QUEUE: usize = 128;

/// The reply half of a stream served by a [`WorkerPool`].
pub type ReplyStream<T> = ReceiverStream<Result<T, Status>>;

/// A pool of `size` workers shared by every stream of one service.
#[derive(Clone)]
pub struct WorkerPool {
    permits: Arc<Semaphore>,
    size: usize,
    reply_queue: usize,
    metrics: PoolMetrics,
}

#[derive(Clone, Default)]
struct PoolMetrics {
    busy: Gauge,
    capacity: Gauge,
    processed: Counter,
    streams: Gauge,
}

impl WorkerPool {
    /// A pool of `size` workers whose streams each buffer at most `reply_queue` replies.
    /// Registers `worker_pool_*` metrics in `registry`.
    pub fn new(size: usize, reply_queue: usize, registry: &mut Registry) -> Self {
        let metrics = PoolMetrics::default();
        registry.register(
            "worker_pool_busy",
            "Workers processing a message",
            metrics.busy.clone(),
        );
        registry.register(
            "worker_pool_capacity",
            "Workers in the pool (--workers)",
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
        metrics.capacity.set(size as i64);
        Self {
            permits: Arc::new(Semaphore::new(size.max(1))),
            size: size.max(1),
            reply_queue: reply_queue.max(1),
            metrics,
        }
    }

    /// Workers in the pool.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Serves one bidirectional stream: for each inbound message, once a worker is free,
    /// runs `work` and queues its reply. Ends the reply stream (OK) when the peer
    /// half-closes or `shutdown` is cancelled, after in-flight work has replied.
    pub fn serve<Req, Resp, F, Fut>(
        &self,
        mut inbound: Streaming<Req>,
        shutdown: CancellationToken,
        work: F,
    ) -> ReplyStream<Resp>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: Fn(Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Resp> + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(self.reply_queue);
        let pool = self.clone();
        tokio::spawn(async move {
            pool.metrics.streams.inc();
            let mut in_flight = JoinSet::new();
            loop {
                while in_flight.try_join_next().is_some() {}
                // A free worker first, the read second: this ordering is the backpressure.
                let permit = tokio::select! {
                    p = pool.permits.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = shutdown.cancelled() => break,
                };
                let message = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.cancelled() => break,
                };
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(status) => {
                        tracing::debug!(%status, "inbound stream ended with an error");
                        break;
                    }
                };
                let tx = tx.clone();
                let fut = work(request);
                let metrics = pool.metrics.clone();
                metrics.busy.inc();
                in_flight.spawn(async move {
                    let reply = fut.await;
                    // A closed reply queue means the peer is gone; the work is dropped.
                    let _ = tx.send(Ok(reply)).await;
                    metrics.processed.inc();
                    metrics.busy.dec();
                    drop(permit);
                });
            }
            while in_flight.join_next().await.is_some() {}
            pool.metrics.streams.dec();
        });
        ReceiverStream::new(rx)
    }
}
