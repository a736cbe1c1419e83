//! The ingress stack, assembled in one place, outermost layer first.

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::IngressLimits;
use super::admission::InflightLimitLayer;
use super::deadline::DeadlineLayer;
use super::dispatch::Dispatch;
use super::metrics::{IngressMetrics, MetricsLayer};
use super::overload::OverloadLayer;
use super::refusal::Refusal;
use super::request::{Api, TxnRequest};
use super::trace::TraceLayer;
use super::validate::ValidateLayer;
use crate::fanout::Fanout;
use crate::overload::Overload;
use sluice_proto::pb::Outcome;

/// What a transaction goes through at ingress: one transaction in, its outcome (or why
/// not) out.
pub(crate) type IngressService = BoxCloneSyncService<TxnRequest, Outcome, Refusal>;

/// The ingress stack for `api`. Each layer says why it sits where it does; a new
/// per-transaction policy (an adaptive limit, a per-client rate limit) is one more layer
/// here, with no handler touched.
pub(crate) fn ingress_stack(
    api: Api,
    fanout: Fanout,
    overload: &Overload,
    limits: &IngressLimits,
    metrics: &IngressMetrics,
) -> IngressService {
    // Unary calls are refused, never parked, beyond the in-flight limit. SubmitStream's
    // admission gates the read itself, so it lives in the stream reader (`admission.rs`).
    let inflight_limit = (api == Api::Unary)
        .then(|| InflightLimitLayer::new(limits.max_inflight, limits.retry_pushback));
    let stack = ServiceBuilder::new()
        // Outermost: the span exists before any decision, so a refusal is part of the trace.
        .layer(TraceLayer)
        // Counts every result, and every refusal below by the reason its layer gave, with
        // the trace as exemplar; its guard counts a dropped call as cancelled.
        .layer(MetricsLayer(metrics.clone()))
        // Everything below, queue waits included, is bounded by the deadline.
        .layer(DeadlineLayer {
            default: limits.default_deadline,
        })
        // Cheap: bad input is refused before it takes a permit or queue room.
        .layer(ValidateLayer)
        // Refuse with pushback rather than queue: the hard ceiling first.
        .option_layer(inflight_limit)
        // The limits that move: degradation level, the client's rate, the concurrency
        // limit at the transaction's priority (a stream waits for it; unary is refused).
        .layer(OverloadLayer {
            overload: overload.clone(),
            pushback: limits.retry_pushback,
        })
        .service(Dispatch {
            fanout,
            metrics: metrics.clone(),
            overload: overload.clone(),
            pushback: limits.retry_pushback,
        });
    BoxCloneSyncService::new(stack)
}

/// Each ingress layer in process, over a stub inner service.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use sluice_proto::pb::{Outcome, Transaction};
    use tokio::sync::{Notify, oneshot};
    use tonic::metadata::MetadataMap;
    use tower::{Layer, Service, ServiceExt, service_fn};

    use super::super::admission::InflightLimitLayer;
    use super::super::deadline::DeadlineLayer;
    use super::super::refusal::Refusal;
    use super::super::request::TxnRequest;
    use super::super::validate::ValidateLayer;

    fn txn(id: &str) -> Transaction {
        Transaction {
            id: id.into(),
            account: "acct".into(),
            amount_minor: 100,
            currency: "EUR".into(),
            merchant: "shop".into(),
            trace_context: Default::default(),
            priority: 0,
            after_hlc: 0,
        }
    }

    fn unary(txn: Transaction) -> TxnRequest {
        TxnRequest::unary(txn, MetadataMap::new())
    }

    fn ok(request: &TxnRequest) -> Outcome {
        Outcome {
            id: request.txn.id.clone(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn the_inflight_limit_refuses_with_pushback_and_frees_on_completion() {
        let release = Arc::new(Notify::new());
        let inner = {
            let release = release.clone();
            service_fn(move |r: TxnRequest| {
                let release = release.clone();
                async move {
                    release.notified().await;
                    Ok::<_, Refusal>(ok(&r))
                }
            })
        };
        let mut svc = InflightLimitLayer::new(1, Duration::from_millis(250)).layer(inner);
        let first = svc.ready().await.unwrap().call(unary(txn("a")));
        let refused = svc
            .ready()
            .await
            .unwrap()
            .call(unary(txn("b")))
            .await
            .expect_err("over the limit");
        assert_eq!(refused.reason, super::super::refusal::Reason::InflightLimit);
        let refused = refused.into_status();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            refused.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "250"
        );
        let waiting = tokio::spawn(first);
        release.notify_one();
        waiting.await.unwrap().expect("the first completes");
        let third = svc.ready().await.unwrap().call(unary(txn("c")));
        release.notify_one();
        third.await.expect("the permit came back");
    }

    #[tokio::test]
    async fn the_deadline_layer_sets_and_enforces_the_deadline() {
        let seen = Arc::new(std::sync::Mutex::new(None));
        let inner = {
            let seen = seen.clone();
            service_fn(move |r: TxnRequest| {
                *seen.lock().unwrap() = Some((r.arrived, r.deadline));
                std::future::pending::<Result<Outcome, Refusal>>()
            })
        };
        let mut svc = DeadlineLayer {
            default: Duration::from_secs(5),
        }
        .layer(inner);
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "80m".parse().unwrap());
        let status = svc
            .ready()
            .await
            .unwrap()
            .call(TxnRequest::unary(txn("a"), metadata))
            .await
            .expect_err("never answered");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        let (arrived, deadline) = seen.lock().unwrap().expect("inner called");
        assert_eq!(
            deadline - arrived,
            Duration::from_millis(30),
            "grpc-timeout less the headroom"
        );
        assert!(Instant::now() >= deadline);
    }

    #[tokio::test]
    async fn validation_refuses_bad_input_before_the_inner_service() {
        let calls = Arc::new(AtomicUsize::new(0));
        let inner = {
            let calls = calls.clone();
            service_fn(move |r: TxnRequest| {
                calls.fetch_add(1, Ordering::Relaxed);
                std::future::ready(Ok::<_, Refusal>(ok(&r)))
            })
        };
        let mut svc = ValidateLayer.layer(inner);
        let mut bad = txn("a");
        bad.currency = "euro".into();
        let (admitted, told) = oneshot::channel();
        let mut request = unary(bad);
        request.admitted = Some(admitted);
        let status = svc
            .ready()
            .await
            .unwrap()
            .call(request)
            .await
            .expect_err("invalid");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("currency"), "{status:?}");
        assert_eq!(
            calls.load(Ordering::Relaxed),
            0,
            "never reached the inner service"
        );
        told.await.expect("a stream reader may read on");
        svc.ready()
            .await
            .unwrap()
            .call(unary(txn("b")))
            .await
            .unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }
}
