//! The stack one message goes through once the [pool](crate::pool) has read it, built in
//! one place so its order can be read (and argued with) at a glance.
//!
//! The pool calls it once per message, inside the message's `process` span, and owns what
//! surrounds it: the bounds taken before the read, the reply queue, panics.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::FutureExt as _;
use futures::future::Map;
use sluice_proto::hop::HopRequest;
use tower::{Service, ServiceBuilder};
use tracing::Instrument as _;
use tracing::instrument::Instrumented;

use crate::faults::{FaultLayer, InjectFaults};

/// The stack around a service's `work`, outermost first.
pub fn message_stack<F>(work: F, faults: FaultLayer) -> InjectFaults<Work<F>> {
    ServiceBuilder::new()
        // Outermost: the deadline, the injected delay (and the deadline again) and the
        // injected errors all decide whether the work runs at all, so they wrap it. Inside
        // the pool's bounds: an injected delay holds a worker, exactly as slow work would.
        .layer(faults)
        // Innermost: the work itself, in its own `work` span, so a trace tells time spent
        // working from time spent in an injected delay.
        .service(Work::new(work))
}

/// A service's work (`Fn(Req) -> impl Future<Output = Req::Reply>`) as a tower service.
/// Never fails: the work answers every request, failures included, with a reply.
pub struct Work<F>(Arc<F>);

impl<F> Work<F> {
    /// Wraps `work`.
    pub fn new(work: F) -> Self {
        Self(Arc::new(work))
    }
}

impl<F> Clone for Work<F> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

/// `Ok` as a function pointer, so [`Work`]'s future has a name.
type AlwaysOk<T> = fn(T) -> Result<T, Infallible>;

impl<Req, F, Fut> Service<Req> for Work<F>
where
    Req: HopRequest,
    F: Fn(Req) -> Fut,
    Fut: Future<Output = Req::Reply>,
{
    type Response = Req::Reply;
    type Error = Infallible;
    type Future = Instrumented<Map<Fut, AlwaysOk<Req::Reply>>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        // A child of the current span: the message's `process` span, which the pool has
        // entered around the whole stack.
        let span = tracing::info_span!("work");
        (self.0)(request)
            .map(Ok as AlwaysOk<Req::Reply>)
            .instrument(span)
    }
}
