//! Admission: how many transactions ingress takes on at once.
//!
//! - **Unary** ([`InflightLimitLayer`]): at most `--max-inflight` Submit calls between
//!   admission and outcome; beyond it the call is refused at once RESOURCE_EXHAUSTED with
//!   `grpc-retry-pushback-ms`. tower's `ConcurrencyLimit` does not fit: it parks callers in
//!   `poll_ready` (a `LoadShed` in front would refuse, but as a bare `Overloaded` without the
//!   reason or the pushback trailer). This layer refuses in `call`, holding its permit in the
//!   response future, so the permit is given back when the outcome is (or the call dropped).
//! - **SubmitStream** ([`StreamRoom`]): the permit must come *before the read* — a message
//!   read is a message held — so it cannot be a layer under the read: the reader takes a
//!   permit from `--streams-inflight` (shared by all streams, first come first served) while
//!   it holds fewer than its fair share, and only then reads.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt as _};
use sluice_proto::pb::Outcome;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tower::{Layer, Service};

use super::metrics::IngressMetrics;
use super::request::TxnRequest;

/// `status` with a `grpc-retry-pushback-ms` trailer: the standard way to tell a gRPC
/// client when to retry.
pub(crate) fn with_pushback(mut status: Status, pushback: Duration) -> Status {
    if let Ok(value) = pushback.as_millis().to_string().parse() {
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", value);
    }
    status
}

/// RESOURCE_EXHAUSTED with pushback.
pub(crate) fn exhausted(message: impl Into<String>, pushback: Duration) -> Status {
    with_pushback(Status::resource_exhausted(message), pushback)
}

/// The unary in-flight limit. See the module docs.
#[derive(Clone)]
pub(crate) struct InflightLimitLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    pushback: Duration,
    metrics: IngressMetrics,
}

impl InflightLimitLayer {
    pub(crate) fn new(limit: usize, pushback: Duration, metrics: IngressMetrics) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.clamp(1, Semaphore::MAX_PERMITS))),
            limit,
            pushback,
            metrics,
        }
    }
}

impl<S> Layer<S> for InflightLimitLayer {
    type Service = InflightLimit<S>;
    fn layer(&self, inner: S) -> InflightLimit<S> {
        InflightLimit {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct InflightLimit<S> {
    inner: S,
    limit: InflightLimitLayer,
}

impl<S> Service<TxnRequest> for InflightLimit<S>
where
    S: Service<TxnRequest, Response = Outcome, Error = Status>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Outcome, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: TxnRequest) -> Self::Future {
        let Ok(permit) = self.limit.permits.clone().try_acquire_owned() else {
            self.limit.metrics.reject(request.api(), "inflight_limit");
            let status = exhausted(
                format!("gateway at its in-flight limit ({})", self.limit.limit),
                self.limit.pushback,
            );
            return futures::future::ready(Err(status)).boxed();
        };
        let outcome = self.inner.call(request);
        async move {
            let result = outcome.await;
            drop(permit);
            result
        }
        .boxed()
    }
}

/// The fewest transactions a stream may always have admitted, however many streams share
/// `streams_inflight`.
pub(crate) const MIN_STREAM_SHARE: usize = 16;

/// SubmitStream admission, shared by every stream: `--streams-inflight` permits and the
/// open-stream count that sets each stream's fair share.
#[derive(Clone)]
pub(crate) struct StreamRoom {
    /// One per admitted, unanswered SubmitStream transaction (`streams_inflight`).
    permits: Arc<Semaphore>,
    /// One per open SubmitStream (`max_streams`).
    open: Arc<Semaphore>,
    max_streams: usize,
    streams_inflight: usize,
    stream_inflight: usize,
}

impl StreamRoom {
    pub(crate) fn new(max_streams: usize, streams_inflight: usize, stream_inflight: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(
                streams_inflight.clamp(1, Semaphore::MAX_PERMITS),
            )),
            open: Arc::new(Semaphore::new(max_streams.clamp(1, Semaphore::MAX_PERMITS))),
            max_streams,
            streams_inflight,
            stream_inflight,
        }
    }

    /// A place for one more open stream, if there is one.
    pub(crate) fn open_stream(&self) -> Option<OwnedSemaphorePermit> {
        self.open.clone().try_acquire_owned().ok()
    }

    /// Most transactions one stream may have admitted now: its own limit, and its fair
    /// share of `streams_inflight` among the streams open now — so a few streams whose
    /// clients stop reading outcomes cannot hold all the room.
    pub(crate) fn share(&self) -> usize {
        let open = self
            .max_streams
            .saturating_sub(self.open.available_permits())
            .max(1);
        (self.streams_inflight / open)
            .max(MIN_STREAM_SHARE)
            .min(self.stream_inflight)
    }

    /// Waits for a permit for one more transaction (FIFO among streams).
    pub(crate) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }
}
