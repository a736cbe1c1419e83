//! The trace layer: every transaction gets its ingress span before any decision is made,
//! so refusals are traced too.
//!
//! The span's parent is the caller's context: for Submit, the call's metadata (else the
//! message's own carrier); for a SubmitStream message, the message's own carrier (else the
//! stream's metadata), and the message span links to the stream's span — each message is
//! its own trace, the stream is not its parent. W3C and B3 are both understood
//! (`sluice_core::propagation`). The span ends with the transaction's result; a transaction
//! dropped unfinished ends it marked CANCELLED.
//!
//! Each transaction also writes one log line at debug, inside its span (so with a trace it
//! names its `trace_id`): its id, status, decision and audit record, and how long after
//! admission risk and logging replied ([`record_hops`], set by the dispatch layer below).
//! Nothing per transaction is written at info.

use std::cell::Cell;
use std::task::{Context, Poll};
use std::time::Duration;

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
        // `kind: EVENT`: the log filter passes events only, so a plain `enabled!` (a hint) is
        // never on.
        let id = tracing::enabled!(kind: tracing::metadata::Kind::EVENT, tracing::Level::DEBUG)
            .then(|| request.txn.id.clone());
        let ending = SpanEnd(Some((span.clone(), id)));
        let outcome = self.inner.call(request).instrument(span);
        Box::pin(HOPS.scope(Cell::new(None), async move {
            let result = outcome.await;
            ending.finish(result.as_ref(), HOPS.with(Cell::get));
            result
        }))
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

tokio::task_local! {
    /// How long after admission risk and logging replied, for the transaction this task is
    /// serving (unset until its hops reply).
    static HOPS: Cell<Option<(Duration, Duration)>>;
}

/// Notes how long after admission risk and logging replied, for the transaction's log line.
/// Outside the trace layer (a test calling a lower layer) it does nothing.
pub(crate) fn record_hops(risk: Duration, logging: Duration) {
    let _ = HOPS.try_with(|hops| hops.set(Some((risk, logging))));
}

/// Ends the ingress span with the transaction's result, and writes its log line (the id
/// is kept only when debug lines are on); dropped unfinished (the caller went away), with
/// CANCELLED.
struct SpanEnd(Option<(tracing::Span, Option<String>)>);

impl SpanEnd {
    fn finish(mut self, result: Result<&Outcome, &Refusal>, hops: Option<(Duration, Duration)>) {
        if let Some((span, id)) = self.0.take() {
            span.in_scope(|| log_line(id.as_deref(), result, hops));
            end_ingress(&span, result);
        }
    }
}

impl Drop for SpanEnd {
    fn drop(&mut self) {
        if let Some((span, id)) = self.0.take() {
            let cancelled = (
                tonic::Code::Cancelled as i32,
                "cancelled before its outcome",
            );
            span.in_scope(|| {
                tracing::debug!(
                    id = id.as_deref().unwrap_or(""),
                    status = "CANCELLED",
                    "transaction cancelled before its outcome"
                );
            });
            spans::finish(&span, Some(cancelled), "error");
        }
    }
}

/// The transaction's one line at debug: its result and, once admitted, its hops' replies.
fn log_line(
    id: Option<&str>,
    result: Result<&Outcome, &Refusal>,
    hops: Option<(Duration, Duration)>,
) {
    let id = id.unwrap_or("");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (risk_ms, logging_ms) = match hops {
        Some((risk, logging)) => (Some(ms(risk)), Some(ms(logging))),
        None => (None, None),
    };
    match result {
        Ok(o) => {
            let status = o
                .error
                .as_ref()
                .map_or(tonic::Code::Ok, |e| tonic::Code::from_i32(e.code));
            tracing::debug!(
                id,
                status = ?status,
                decision = o.decision().as_str_name(),
                audit_partition = o.audit_partition,
                audit_offset = o.audit_offset,
                replayed = o.replayed,
                notification = o.notification().as_str_name(),
                risk_ms,
                logging_ms,
                "transaction finished"
            );
        }
        Err(refusal) => tracing::debug!(
            id,
            status = ?refusal.code(),
            reason = refusal.reason.label(),
            message = refusal.message(),
            risk_ms,
            logging_ms,
            "transaction {}",
            if refusal.refused() { "refused" } else { "failed" }
        ),
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
