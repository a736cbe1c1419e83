//! The deadline layer: fixes each transaction's absolute deadline and bounds everything
//! below it by that deadline, so no outcome is ever late and nothing waits past it.
//!
//! Submit: the call's `grpc-timeout` (less a small headroom, so the gateway answers
//! DEADLINE_EXCEEDED before tonic's own timer answers CANCELLED) or `--default-deadline`.
//! SubmitStream message: `--default-deadline` from its arrival, capped by the stream's own
//! `grpc-timeout`. The deadline rides on to every hop as Unix milliseconds.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::refusal::Refusal;
use futures::future::BoxFuture;
use sluice_proto::pb::Outcome;
use tower::{Layer, Service};

use super::request::{Origin, TxnRequest, call_deadline};

#[derive(Clone, Copy)]
pub(crate) struct DeadlineLayer {
    pub(crate) default: Duration,
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadlined<S>;
    fn layer(&self, inner: S) -> Deadlined<S> {
        Deadlined {
            inner,
            default: self.default,
        }
    }
}

#[derive(Clone)]
pub(crate) struct Deadlined<S> {
    inner: S,
    default: Duration,
}

impl<S> Service<TxnRequest> for Deadlined<S>
where
    S: Service<TxnRequest, Response = Outcome, Error = Refusal>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Refusal;
    type Future = BoxFuture<'static, Result<Outcome, Refusal>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: TxnRequest) -> Self::Future {
        let deadline = match &request.origin {
            Origin::Unary { metadata } => call_deadline(metadata, request.arrived, self.default),
            Origin::Stream { deadline, .. } => (request.arrived + self.default).min(*deadline),
        };
        request.deadline = deadline;
        let outcome = self.inner.call(request);
        Box::pin(async move {
            tokio::time::timeout_at(deadline.into(), outcome)
                .await
                .unwrap_or_else(|_| {
                    Err(Refusal::deadline_failed(
                        "deadline passed waiting for risk and logging",
                    ))
                })
        })
    }
}

/// A deadline far enough away to mean "none" (a stream without `grpc-timeout`).
pub(crate) fn no_deadline(now: Instant) -> Instant {
    now + Duration::from_secs(365 * 24 * 3600)
}
