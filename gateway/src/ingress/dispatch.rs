//! The innermost ingress service: admits a transaction to the downstream queues through the
//! fan-out — waiting for room (SubmitStream: the backpressure) or refusing at once (unary) —
//! then awaits its outcome.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use sluice_proto::pb::Outcome;
use tonic::Status;
use tower::Service;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::admission::exhausted;
use super::metrics::{IngressMetrics, reject_reason};
use super::request::{Api, TxnRequest};
use crate::fanout::{Admission, Dispatched, Fanout};
use crate::overload::Overload;
use crate::overload::bottleneck::Split;
use sluice_core::metrics::GaugeGuard;

#[derive(Clone)]
pub(crate) struct Dispatch {
    pub(crate) fanout: Fanout,
    pub(crate) metrics: IngressMetrics,
    /// Told each finished transaction's latency by hop (bottleneck, degradation).
    pub(crate) overload: Overload,
    /// `grpc-retry-pushback-ms` for a unary call refused because a queue is full.
    pub(crate) pushback: std::time::Duration,
}

impl Service<TxnRequest> for Dispatch {
    type Response = Outcome;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Outcome, Status>>;

    /// Always ready: queue room is waited for (or refused) per transaction in `call`, where
    /// the wait is traced and bounded by the transaction's deadline.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TxnRequest) -> Self::Future {
        // Two phases, two allocations: admission (large: the fan-out's state, waiting for
        // queue room) is boxed on its own and freed once the transaction is queued, so what
        // a pending transaction holds until its outcome is only its replies and a guard.
        let (arrived, partition) = (request.arrived, request.partition);
        let overload = self.overload.clone();
        let admission = Box::pin(admit(self.clone(), request));
        Box::pin(async move {
            // A statement of its own, so the admission box is dropped before the next await.
            let admitted = admission.await;
            let (dispatched, _inflight) = admitted?;
            let (outcome, replied) = dispatched.timed_outcome().await;
            overload.finished(Split {
                total: arrived.elapsed(),
                admission: replied.admitted.saturating_duration_since(arrived),
                risk: replied.risk,
                logging: replied.logging,
                partition,
            });
            outcome
        })
    }
}

/// Admits one transaction; on success its replies to come and its place in `inflight`.
async fn admit(
    this: Dispatch,
    mut request: TxnRequest,
) -> Result<(Dispatched, GaugeGuard), Status> {
    let api = request.api();
    let admission = match api {
        Api::Unary => Admission::Immediate,
        Api::Stream => Admission::Wait,
    };
    let txn = std::mem::take(&mut request.txn);
    let dispatched = this
        .fanout
        .dispatch(
            txn,
            request.deadline,
            admission,
            (&request.span, &request.caller),
            request.notify,
        )
        .await;
    if api == Api::Stream {
        let waited = request.arrived.elapsed().as_secs_f64();
        this.metrics.admission_wait.observe(waited);
        this.metrics.blocked_seconds.inc_by(waited);
        request
            .span
            .set_attribute("sluice.admission_wait_ms", waited * 1000.0);
    }
    request.release_reader();
    match dispatched {
        Ok(d) => Ok((d, this.metrics.admitted(api))),
        Err(status) => {
            this.metrics.reject(api, reject_reason(&status));
            Err(
                if api == Api::Unary && status.code() == tonic::Code::ResourceExhausted {
                    exhausted(status.message(), this.pushback)
                } else {
                    status
                },
            )
        }
    }
}
