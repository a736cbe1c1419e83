//! The ingress stack, assembled in one place, outermost layer first.

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;

use super::IngressLimits;
use super::admission::InflightLimitLayer;
use super::deadline::DeadlineLayer;
use super::dispatch::Dispatch;
use super::metrics::{IngressMetrics, MetricsLayer};
use super::request::{Api, TxnRequest};
use super::trace::TraceLayer;
use super::validate::ValidateLayer;
use crate::fanout::Fanout;
use sluice_proto::pb::Outcome;
use tonic::Status;

/// What a transaction goes through at ingress: one transaction in, its outcome out.
pub(crate) type IngressService = BoxCloneSyncService<TxnRequest, Outcome, Status>;

/// The ingress stack for `api`. Each layer says why it sits where it does; a new
/// per-transaction policy (an adaptive limit, a per-client rate limit) is one more layer
/// here, with no handler touched.
pub(crate) fn ingress_stack(
    api: Api,
    fanout: Fanout,
    limits: &IngressLimits,
    metrics: &IngressMetrics,
) -> IngressService {
    // Unary calls are refused, never parked, beyond the in-flight limit. SubmitStream's
    // admission gates the read itself, so it lives in the stream reader (`admission.rs`).
    let inflight_limit = (api == Api::Unary).then(|| {
        InflightLimitLayer::new(limits.max_inflight, limits.retry_pushback, metrics.clone())
    });
    let stack = ServiceBuilder::new()
        // Outermost: the span exists before any decision, so a refusal is part of the trace.
        .layer(TraceLayer)
        // Counts every result, refusals below included, with the trace as exemplar; its
        // guard restores the in-flight gauge on every path, cancellation included.
        .layer(MetricsLayer(metrics.clone()))
        // Everything below, queue waits included, is bounded by the deadline.
        .layer(DeadlineLayer {
            default: limits.default_deadline,
        })
        // Cheap: bad input is refused before it takes a permit or queue room.
        .layer(ValidateLayer(metrics.clone()))
        // Refuse with pushback rather than queue.
        .option_layer(inflight_limit)
        .service(Dispatch {
            fanout,
            metrics: metrics.clone(),
            pushback: limits.retry_pushback,
        });
    BoxCloneSyncService::new(stack)
}
