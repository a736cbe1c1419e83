//! Early admission: the cheapest refusal the gateway can make, and the queue no other limit
//! sees.
//!
//! hyper accepts an HTTP/2 stream and calls the service at once, in the connection's task;
//! the handler (decoding the body, the ingress stack) runs later, in a task of its own, once
//! the runtime gets to it. Under overload those accepted-but-not-started calls are a queue
//! — in the runtime's run queue, behind every other task — that the concurrency limit never
//! counted: it counted from the handler. This layer sits right there, around the generated
//! `Gateway` service, and for unary `Submit`:
//!
//! - counts a call as *pending* from the moment hyper accepts it until its handler starts;
//!   the concurrency limit then covers pending and admitted calls together;
//! - refuses a call at once when pending + admitted already fill the limit: a trailers-only
//!   RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`, before its body is read or decoded
//!   and before any task is spawned for it (reason `concurrency_limit`, counted as ever);
//! - stamps the accept time on the request, so the call's latency — what the adaptive limit
//!   reads — starts there: a gateway whose runtime falls behind sees it as latency and
//!   lowers its limit.
//!
//! SubmitStream is left alone: its messages are admitted one by one by its reader.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{Either, Ready};
use tonic::codegen::http;
use tonic::server::NamedService;
use tower::Service;

use super::metrics::IngressMetrics;
use super::refusal::{Reason, Refusal};
use super::request::Api;
use crate::overload::Overload;

/// The unary method this layer admits.
const SUBMIT: &str = "/mesh.v1.Gateway/Submit";

/// When hyper accepted the call, and its place among the pending ones (given back when
/// the handler takes it, or when the call is dropped before it starts).
#[derive(Clone)]
pub(crate) struct Accepted {
    pub(crate) at: Instant,
    _pending: Arc<Pending>,
}

struct Pending(Arc<AtomicUsize>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The generated `Gateway` service with early admission in front. See the module docs.
#[derive(Clone)]
pub struct EarlyAdmission<S> {
    inner: S,
    overload: Overload,
    metrics: IngressMetrics,
    pushback: Duration,
    pending: Arc<AtomicUsize>,
}

impl<S> EarlyAdmission<S> {
    pub(crate) fn new(
        inner: S,
        overload: Overload,
        metrics: IngressMetrics,
        pushback: Duration,
    ) -> Self {
        Self {
            inner,
            overload,
            metrics,
            pushback,
            pending: Arc::default(),
        }
    }
}

impl<S: NamedService> NamedService for EarlyAdmission<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for EarlyAdmission<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if request.uri().path() != SUBMIT {
            return Either::Right(self.inner.call(request));
        }
        let limiter = self.overload.limiter();
        let limit = limiter.limit();
        let pending = self.pending.fetch_add(1, Ordering::AcqRel);
        let held = Arc::new(Pending(self.pending.clone()));
        if pending + limiter.inflight() >= limit {
            drop(held);
            let refusal = Refusal::new(
                Reason::ConcurrencyLimit,
                format!(
                    "gateway at its concurrency limit ({limit} admitted or waiting to start); refused before reading the call"
                ),
            )
            .pushback(self.pushback);
            self.metrics.refused_early(Api::Unary, &refusal);
            return Either::Left(futures::future::ready(Ok(refusal
                .into_status()
                .into_http())));
        }
        request.extensions_mut().insert(Accepted {
            at: Instant::now(),
            _pending: held,
        });
        Either::Right(self.inner.call(request))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use prometheus_client::registry::Registry;
    use tower::ServiceExt as _;

    use super::*;
    use crate::overload::{HopLoad, OverloadConfig};

    fn overload(limit: usize) -> Overload {
        let overload = Overload::new(
            OverloadConfig::default(),
            &mut Registry::default(),
            Box::new(|| [HopLoad::default(); 2]),
            1,
        );
        overload.limiter().set_limit(limit);
        overload
    }

    fn submit() -> http::Request<()> {
        http::Request::builder().uri(SUBMIT).body(()).unwrap()
    }

    #[tokio::test]
    async fn calls_accepted_and_not_started_count_against_the_limit_and_the_next_is_refused_unread()
    {
        let reached = Arc::new(AtomicUsize::new(0));
        let inner = {
            let reached = reached.clone();
            tower::service_fn(move |r: http::Request<()>| {
                reached.fetch_add(1, Ordering::Relaxed);
                // The handler has not started: it holds the call's `Accepted`.
                let accepted = r.extensions().get::<Accepted>().cloned();
                async move {
                    drop(accepted);
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        tonic::body::Body::empty(),
                    ))
                }
            })
        };
        let metrics = IngressMetrics::new(&mut Registry::default());
        let mut early =
            EarlyAdmission::new(inner, overload(2), metrics, Duration::from_millis(100));
        // Two accepted, their handlers not yet run: the limit of 2 is full.
        let first = early.ready().await.unwrap().call(submit());
        let second = early.ready().await.unwrap().call(submit());
        let refused = early.ready().await.unwrap().call(submit()).await.unwrap();
        assert_eq!(
            reached.load(Ordering::Relaxed),
            2,
            "the third never reached the service"
        );
        let headers = refused.headers();
        assert_eq!(
            headers.get("grpc-status").unwrap(),
            "8",
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(headers.get("grpc-retry-pushback-ms").unwrap(), "100");
        // Once their handlers have run, there is room again.
        first.await.unwrap();
        second.await.unwrap();
        assert_eq!(early.pending.load(Ordering::Relaxed), 0);
        early.ready().await.unwrap().call(submit()).await.unwrap();
        assert_eq!(reached.load(Ordering::Relaxed), 3);
    }

    #[tokio::test]
    async fn other_methods_pass_untouched() {
        let inner = tower::service_fn(|r: http::Request<()>| async move {
            assert!(r.extensions().get::<Accepted>().is_none());
            Ok::<_, std::convert::Infallible>(http::Response::new(tonic::body::Body::empty()))
        });
        let metrics = IngressMetrics::new(&mut Registry::default());
        let mut early =
            EarlyAdmission::new(inner, overload(1), metrics, Duration::from_millis(100));
        let stream = http::Request::builder()
            .uri("/mesh.v1.Gateway/SubmitStream")
            .body(())
            .unwrap();
        let response = early.ready().await.unwrap().call(stream).await.unwrap();
        assert!(response.headers().get("grpc-status").is_none());
    }
}
