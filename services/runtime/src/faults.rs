//! Fault injection as a tower layer around a service's work, so a test or a demo can make
//! a service slow or flaky on purpose, exactly where real slowness would be.
//!
//! [`InjectFaults`] reads the faults in force (set through `mesh.v1.Control`, held in the
//! pool's watch channel) when a message arrives, then applies, in this order:
//!
//! 1. **the message's deadline**: work whose deadline has passed is answered
//!    DEADLINE_EXCEEDED and never done — first, so an expired message costs nothing more;
//! 2. **the injected delay** (`delay_ms` plus up to `jitter_ms`), holding the worker as slow
//!    work would, **then the deadline again**: a delay that outlasts the deadline must not
//!    be followed by the work;
//! 3. **the injected error rate**: that share of messages is answered UNAVAILABLE instead
//!    of being worked on — after the delay, so a flaky service is slow too.
//!
//! Only then does the inner service, the work, run. `stall` is not here: it stops the
//! *reading* of streams, and a layer only sees messages that were already read — it lives in
//! the [pool](crate::pool).
//!
//! Every refusal is a reply (the request's own `reject`), not a service error: a refused
//! message ends neither the stream nor the others on it.

use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry::KeyValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use rand::Rng as _;
use sluice_core::deadline;
use sluice_proto::hop::HopRequest;
use sluice_proto::pb::Faults;
use tokio::sync::watch;
use tonic::Status;
use tower::{Layer, Service, ServiceExt as _};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// What the fault layer counts.
#[derive(Clone)]
pub struct FaultMetrics {
    deadline_drops: Counter,
    injected_errors: Counter,
}

impl FaultMetrics {
    /// Registers `deadline_drops` and `injected_errors` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            deadline_drops: Counter::default(),
            injected_errors: Counter::default(),
        };
        registry.register(
            "deadline_drops",
            "Messages dropped undone because their deadline had passed",
            metrics.deadline_drops.clone(),
        );
        registry.register(
            "injected_errors",
            "Messages answered with an injected error (SetFaults error_rate)",
            metrics.injected_errors.clone(),
        );
        metrics
    }

    /// Messages answered DEADLINE_EXCEEDED so far.
    pub fn deadline_drops(&self) -> u64 {
        self.deadline_drops.get()
    }

    /// Messages answered with an injected error so far.
    pub fn injected_errors(&self) -> u64 {
        self.injected_errors.get()
    }

    /// `Err` with the DEADLINE_EXCEEDED reply when `request`'s deadline has passed.
    fn check_deadline<Req: HopRequest>(&self, request: &Req, when: &str) -> Result<(), Req::Reply> {
        if !deadline::expired(request.deadline_unix_ms()) {
            return Ok(());
        }
        self.deadline_drops.inc();
        tracing::Span::current().add_event("deadline_drop", Vec::<KeyValue>::new());
        Err(request.reject(&Status::deadline_exceeded(format!(
            "deadline passed {when}"
        ))))
    }
}

/// Wraps a service's work in [`InjectFaults`].
#[derive(Clone)]
pub struct FaultLayer {
    faults: watch::Receiver<Faults>,
    metrics: FaultMetrics,
}

impl FaultLayer {
    /// Faults read from `faults` as each message arrives, counted in `metrics`.
    pub fn new(faults: watch::Receiver<Faults>, metrics: FaultMetrics) -> Self {
        Self { faults, metrics }
    }
}

impl<S> Layer<S> for FaultLayer {
    type Service = InjectFaults<S>;

    fn layer(&self, inner: S) -> InjectFaults<S> {
        InjectFaults {
            inner,
            faults: self.faults.clone(),
            metrics: self.metrics.clone(),
        }
    }
}

/// The deadline checks and injected faults around the work `S` (see the module docs).
#[derive(Clone)]
pub struct InjectFaults<S> {
    inner: S,
    faults: watch::Receiver<Faults>,
    metrics: FaultMetrics,
}

impl<Req, S> Service<Req> for InjectFaults<S>
where
    Req: HopRequest,
    S: Service<Req, Response = Req::Reply, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Req::Reply;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Req::Reply, Infallible>>;

    /// Always ready: the inner service is driven to readiness inside the call, after the
    /// faults, so a message sleeping through an injected delay holds no inner capacity.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let faults = *self.faults.borrow();
        let metrics = self.metrics.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            if let Err(reply) = metrics.check_deadline(&request, "before the work started") {
                return Ok(reply);
            }
            let delay = delay(&faults);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
                if let Err(reply) = metrics.check_deadline(&request, "during the injected delay") {
                    return Ok(reply);
                }
            }
            if faults.error_rate > 0.0 && rand::rng().random_bool(faults.error_rate.min(1.0)) {
                metrics.injected_errors.inc();
                tracing::Span::current().add_event("injected_error", Vec::<KeyValue>::new());
                return Ok(request.reject(&Status::unavailable(
                    "injected fault (SetFaults error_rate)",
                )));
            }
            inner.oneshot(request).await
        })
    }
}

/// This message's injected delay: `delay_ms` plus a uniform share of `jitter_ms`.
fn delay(faults: &Faults) -> Duration {
    let jitter = if faults.jitter_ms > 0 {
        rand::rng().random_range(0..=faults.jitter_ms)
    } else {
        0
    };
    Duration::from_millis(u64::from(faults.delay_ms) + u64::from(jitter))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use sluice_proto::hop::HopReply as _;
    use sluice_proto::pb::{RiskRequest, RiskVerdict, Transaction};
    use tonic::Code;

    use super::*;

    /// The fault layer over a work that counts its calls and approves.
    fn faulty(
        faults: Faults,
    ) -> (
        impl Service<RiskRequest, Response = RiskVerdict, Error = Infallible> + Clone,
        FaultMetrics,
        Arc<AtomicUsize>,
    ) {
        let metrics = FaultMetrics::register(&mut Registry::default());
        let (_, rx) = watch::channel(faults);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let work = tower::service_fn(move |r: RiskRequest| {
            counted.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, Infallible>(RiskVerdict {
                correlation_id: r.correlation_id,
                ..Default::default()
            }))
        });
        let layer = FaultLayer::new(rx, metrics.clone());
        (layer.layer(work), metrics, calls)
    }

    fn due_in(millis: i64) -> RiskRequest {
        let mut r = RiskRequest::new(Transaction::default(), deadline::now_unix_ms() + millis);
        r.correlation_id = 7;
        r
    }

    fn code(reply: &RiskVerdict) -> Option<Code> {
        reply.error().map(|e| Code::from(e.code))
    }

    #[tokio::test]
    async fn an_expired_message_is_answered_deadline_exceeded_and_not_worked_on() {
        let (svc, metrics, calls) = faulty(Faults::default());
        let reply = svc.oneshot(due_in(-1)).await.unwrap();
        assert_eq!(code(&reply), Some(Code::DeadlineExceeded));
        assert_eq!(reply.correlation_id, 7, "the reply names its request");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(metrics.deadline_drops(), 1);
    }

    #[tokio::test]
    async fn a_delay_that_outlasts_the_deadline_is_followed_by_the_check_not_the_work() {
        let (svc, metrics, calls) = faulty(Faults {
            delay_ms: 1_000,
            ..Default::default()
        });
        let reply = svc.oneshot(due_in(500)).await.unwrap();
        assert_eq!(code(&reply), Some(Code::DeadlineExceeded));
        let message = &reply.error().unwrap().message;
        assert!(message.contains("during the injected delay"), "{message}");
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(metrics.deadline_drops(), 1);
    }

    #[tokio::test]
    async fn a_delay_within_the_deadline_is_followed_by_the_work() {
        let (svc, _, calls) = faulty(Faults {
            delay_ms: 1,
            jitter_ms: 1,
            ..Default::default()
        });
        let reply = svc.oneshot(due_in(60_000)).await.unwrap();
        assert_eq!(code(&reply), None);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn error_rate_one_answers_every_message_unavailable() {
        let (svc, metrics, calls) = faulty(Faults {
            error_rate: 1.0,
            ..Default::default()
        });
        for _ in 0..10 {
            let reply = svc.clone().oneshot(due_in(60_000)).await.unwrap();
            assert_eq!(code(&reply), Some(Code::Unavailable));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(metrics.injected_errors(), 10);
    }

    #[tokio::test]
    async fn error_rate_zero_passes_every_message_to_the_work() {
        let (svc, metrics, calls) = faulty(Faults::default());
        for _ in 0..10 {
            let reply = svc.clone().oneshot(due_in(60_000)).await.unwrap();
            assert_eq!(code(&reply), None);
            assert_eq!(reply.correlation_id, 7);
        }
        // No deadline (0) is not an expired one.
        let mut no_deadline = due_in(0);
        no_deadline.deadline_unix_ms = 0;
        assert_eq!(code(&svc.oneshot(no_deadline).await.unwrap()), None);
        assert_eq!(calls.load(Ordering::SeqCst), 11);
        assert_eq!(
            (metrics.injected_errors(), metrics.deadline_drops()),
            (0, 0)
        );
    }

    #[tokio::test]
    async fn the_faults_in_force_when_a_message_arrives_apply_to_it() {
        let metrics = FaultMetrics::register(&mut Registry::default());
        let (tx, rx) = watch::channel(Faults::default());
        let work = tower::service_fn(|r: RiskRequest| {
            std::future::ready(Ok::<_, Infallible>(RiskVerdict {
                correlation_id: r.correlation_id,
                ..Default::default()
            }))
        });
        let svc = FaultLayer::new(rx, metrics).layer(work);
        assert_eq!(
            code(&svc.clone().oneshot(due_in(60_000)).await.unwrap()),
            None
        );
        tx.send_replace(Faults {
            error_rate: 1.0,
            ..Default::default()
        });
        assert_eq!(
            code(&svc.oneshot(due_in(60_000)).await.unwrap()),
            Some(Code::Unavailable)
        );
    }
}
