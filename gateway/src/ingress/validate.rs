//! The validation layer: a transaction that breaks a rule (`sluice_proto::validate`) is
//! refused INVALID_ARGUMENT naming the field, before it takes an in-flight permit or queue
//! room below.

use std::task::{Context, Poll};

use super::refusal::{Reason, Refusal};
use futures::future::{BoxFuture, FutureExt as _};
use sluice_proto::pb::Outcome;
use sluice_proto::validate;
use tower::{Layer, Service};

use super::request::TxnRequest;

#[derive(Clone)]
pub(crate) struct ValidateLayer;

impl<S> Layer<S> for ValidateLayer {
    type Service = Validated<S>;
    fn layer(&self, inner: S) -> Validated<S> {
        Validated { inner }
    }
}

#[derive(Clone)]
pub(crate) struct Validated<S> {
    inner: S,
}

impl<S> Service<TxnRequest> for Validated<S>
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
        if let Err(e) = validate::transaction(&request.txn) {
            request.release_reader();
            let refusal = Refusal::new(Reason::InvalidArgument, e.to_string());
            return futures::future::ready(Err(refusal)).boxed();
        }
        self.inner.call(request).boxed()
    }
}
