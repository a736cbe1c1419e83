//! The trace layer: every transaction gets its ingress span before any decision is made,
//! so refusals are traced too.
//!
//! The span's parent is the caller's context: for Submit, the call's metadata (else the
//! message's own carrier); for a SubmitStream message, the message's own carrier (else the
//! stream's metadata), and the message span links to the stream's span — each message is
//! its own trace, the stream is not its parent. W3C and B3 are both understood
//! (`sluice_core::propagation`). The span ends with the transaction's result; a transaction
//! dropped unfinished ends it marked CANCELLED.

use std::task::{Context, Poll};

use super::refusal::Refusal;
use futures::future::BoxFuture;
use opentelemetry::Context as OtelContext;
use sluice_core::{propagation, spans};
use sluice_proto::pb::Outcome;
use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::request::{Origin, TxnRequest};

#[derive(Clone, Copy)]
pub(crate) struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;
    fn layer(&self, inner: S) -> Traced<S> {
        Traced { inner }
    }
}

#[derive(Clone)]
pub(crate) struct Traced<S> {
    inner: S,
}

impl<S> Service<TxnRequest> for Traced<S>
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
        let (span, caller) = ingress_span(&request);
        request.span = span.clone();
        request.caller = caller;
        let ending = SpanEnd(Some(span.clone()));
        let outcome = self.inner.call(request).instrument(span);
        Box::pin(async move {
            let result = outcome.await;
            ending.finish(result.as_ref());
            result
        })
    }
}

/// The ingress span of one transaction — SERVER `mesh.v1.Gateway/Submit` for a unary call,
/// CONSUMER `mesh.v1.Gateway/SubmitStream process` for a stream message — and the context
/// the caller sent (its parent).
fn ingress_span(request: &TxnRequest) -> (tracing::Span, OtelContext) {
    let own = || propagation::extract_map(&request.txn.trace_context);
    let (span, parent, received) = match &request.origin {
        Origin::Unary { metadata } => {
            let mut parent = propagation::extract_metadata(metadata);
            if !propagation::has_span(&parent) {
                parent = own();
            }
            let span = tracing::info_span!(
                parent: None,
                "Submit",
                otel.name = "mesh.v1.Gateway/Submit",
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.service = "mesh.v1.Gateway",
                rpc.method = "Submit",
                sluice.transaction.id = tracing::field::Empty,
                sluice.propagation.received = tracing::field::Empty,
            );
            (span, parent, trace_keys(metadata))
        }
        Origin::Stream { parent, link, .. } => {
            let own = own();
            let parent = if propagation::has_span(&own) {
                own
            } else {
                parent.clone()
            };
            let span = tracing::info_span!(
                parent: None,
                "SubmitStream process",
                otel.name = "mesh.v1.Gateway/SubmitStream process",
                otel.kind = "consumer",
                rpc.system = "grpc",
                rpc.service = "mesh.v1.Gateway",
                rpc.method = "SubmitStream",
                sluice.transaction.id = tracing::field::Empty,
                sluice.propagation.received = tracing::field::Empty,
            );
            span.add_link(link.clone());
            (
                span,
                parent,
                spans::received_formats(request.txn.trace_context.keys()),
            )
        }
    };
    if !request.txn.id.is_empty() {
        span.record("sluice.transaction.id", request.txn.id.as_str());
    }
    if !received.is_empty() {
        span.record("sluice.propagation.received", received.as_str());
    }
    (spans::with_parent(span, parent.clone()), parent)
}

/// Ends the ingress span with the transaction's result; dropped unfinished (the caller went
/// away), with CANCELLED.
struct SpanEnd(Option<tracing::Span>);

impl SpanEnd {
    fn finish(mut self, result: Result<&Outcome, &Refusal>) {
        if let Some(span) = self.0.take() {
            end_ingress(&span, result);
        }
    }
}

impl Drop for SpanEnd {
    fn drop(&mut self) {
        if let Some(span) = self.0.take() {
            let cancelled = (
                tonic::Code::Cancelled as i32,
                "cancelled before its outcome",
            );
            spans::finish(&span, Some(cancelled), "error");
        }
    }
}

/// Marks an ingress span with the transaction's result (an error Outcome counts as failed).
fn end_ingress(span: &tracing::Span, result: Result<&Outcome, &Refusal>) {
    let error = match result {
        Ok(o) => o.error.as_ref().map(|e| (e.code, e.message.as_str())),
        Err(refusal) => Some((refusal.code() as i32, refusal.message())),
    };
    let event = match error.map(|(code, _)| tonic::Code::from_i32(code)) {
        Some(tonic::Code::ResourceExhausted) => "rejected",
        Some(tonic::Code::DeadlineExceeded) => "deadline_exceeded",
        Some(tonic::Code::InvalidArgument) => "invalid_argument",
        _ => "error",
    };
    spans::finish(span, error, event);
}

/// The trace-context headers present in call metadata, sorted, comma-joined.
pub(crate) fn trace_keys(metadata: &tonic::metadata::MetadataMap) -> String {
    let mut keys: Vec<&str> = metadata
        .keys()
        .filter_map(|k| match k {
            tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
            tonic::metadata::KeyRef::Binary(_) => None,
        })
        .filter(|k| matches!(*k, "traceparent" | "tracestate" | "b3") || k.starts_with("x-b3-"))
        .collect();
    keys.sort_unstable();
    keys.join(",")
}

/// The parent context of a SubmitStream's own span: its metadata's.
pub(crate) fn stream_parent(metadata: &tonic::metadata::MetadataMap) -> OtelContext {
    propagation::extract_metadata(metadata)
}
