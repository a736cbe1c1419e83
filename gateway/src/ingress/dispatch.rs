//! The innermost ingress service: admits a transaction to the downstream queues through the
//! fan-out — waiting for room (SubmitStream: the backpressure) or refusing at once (unary) —
//! then awaits its outcome.

use std::task::{Context, Poll};

use futures::future::BoxFuture;
use sluice_proto::pb::Outcome;
use tower::Service;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::metrics::{IngressMetrics, Stage};
use super::refusal::Refusal;
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
    type Error = Refusal;
    type Future = BoxFuture<'static, Result<Outcome, Refusal>>;

    /// Always ready: queue room is waited for (or refused) per transaction in `call`, where
    /// the wait is traced and bounded by the transaction's deadline.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: TxnRequest) -> Self::Future {
        // Two phases, two allocations: admission (large: the fan-out's state, waiting for
        // queue room) is boxed on its own and freed once the transaction is queued, so what
        // a pending transaction holds until its outcome is only its replies and a guard.
        let (arrived, partition, api) = (request.arrived, request.partition, request.api());
        let (overload, metrics) = (self.overload.clone(), self.metrics.clone());
        let admission = Box::pin(admit(self.clone(), request));
        Box::pin(async move {
            // A statement of its own, so the admission box is dropped before the next await.
            let admitted = admission.await;
            let (dispatched, _inflight) = admitted?;
            let (outcome, replied) = dispatched.timed_outcome().await;
            let (total, admission) = (
                arrived.elapsed(),
                replied.admitted.saturating_duration_since(arrived),
            );
            super::trace::record_hops(replied.risk, replied.logging);
            metrics.stage(api, Stage::Admission, admission);
            metrics.stage(api, Stage::Mesh, total.saturating_sub(admission));
            overload.finished(Split {
                total,
                admission,
                risk: replied.risk,
                logging: replied.logging,
                partition,
            });
            outcome.map_err(Refusal::failed)
        })
    }
}

/// Admits one transaction; on success its replies to come and its place in `inflight`.
async fn admit(
    this: Dispatch,
    mut request: TxnRequest,
) -> Result<(Dispatched, GaugeGuard), Refusal> {
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
            let full = status.code() == tonic::Code::ResourceExhausted;
            let refusal = Refusal::at_admission(status);
            Err(if api == Api::Unary && full {
                refusal.pushback(this.pushback)
            } else {
                refusal
            })
        }
    }
}
