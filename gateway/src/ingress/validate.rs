//! The validation layer: a transaction that breaks a rule (`sluice_proto::validate`) is
//! refused INVALID_ARGUMENT naming the field, before it takes an in-flight permit or queue
//! room below.

use std::task::{Context, Poll};

use futures::future::{BoxFuture, FutureExt as _};
use sluice_proto::pb::Outcome;
use sluice_proto::validate;
use tonic::Status;
use tower::{Layer, Service};

use super::metrics::IngressMetrics;
use super::request::TxnRequest;

#[derive(Clone)]
pub(crate) struct ValidateLayer(pub(crate) IngressMetrics);

impl<S> Layer<S> for ValidateLayer {
    type Service = Validated<S>;
    fn layer(&self, inner: S) -> Validated<S> {
        Validated {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Validated<S> {
    inner: S,
    metrics: IngressMetrics,
}

impl<S> Service<TxnRequest> for Validated<S>
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

    fn call(&mut self, mut request: TxnRequest) -> Self::Future {
        if let Err(e) = validate::transaction(&request.txn) {
            self.metrics.reject(request.api(), "invalid_argument");
            request.release_reader();
            return futures::future::ready(Err(Status::invalid_argument(e.to_string()))).boxed();
        }
        self.inner.call(request).boxed()
    }
}
