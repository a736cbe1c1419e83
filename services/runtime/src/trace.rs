//! The spans of a served stream, as OpenTelemetry's messaging conventions lay out a
//! long-lived stream that carries many independent messages:
//!
//! - `"{service}/{method} stream"`, kind SERVER, `sluice.stream = true`: the stream itself,
//!   a child of the context in the stream's metadata (the gateway's stream client). It lives
//!   as long as the stream; messages are never put under it, or one trace would swallow
//!   every transaction the stream ever carried.
//! - `"{service}/{method} process"`, kind CONSUMER, one per message: a child of the context
//!   the *message* carries (its transaction's trace), linked to the stream span, with
//!   `sluice.propagation.received` naming the propagation keys the message arrived with.
//! - `"queue wait"` under it, from the sender's hand-off (`sent_unix_micros`) to the read;
//!   `"work"` under it too, around the work (made by the [stack](crate::stack)).
//!
//! They are `tracing` spans (targets `sluice_runtime::…`, which the telemetry layer sends to
//! OpenTelemetry): each ends when its last handle drops, so a cancelled stream or message
//! still ends its spans.

use std::marker::PhantomData;

use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use sluice_core::{propagation, spans};
use sluice_proto::hop::HopRequest;
use tonic::metadata::MetadataMap;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// The spans of one inbound stream of `Req`.
pub struct StreamTrace<Req> {
    span: Span,
    /// The stream span's context, which every message's span links to.
    link: SpanContext,
    /// `"{service}/{method} process"`, formatted once per stream.
    process_name: String,
    _messages: PhantomData<fn(&Req)>,
}

impl<Req: HopRequest> StreamTrace<Req> {
    /// Opens the stream's span, a child of the context in the stream's `metadata`.
    pub fn open(metadata: &MetadataMap) -> Self {
        let span = tracing::info_span!(
            parent: None,
            "stream",
            otel.name = %format_args!("{}/{} stream", Req::SERVICE, Req::METHOD),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = Req::SERVICE,
            rpc.method = Req::METHOD,
            sluice.stream = true,
        );
        let span = spans::with_parent(span, propagation::extract_metadata(metadata));
        let link = span.context().span().span_context().clone();
        Self {
            span,
            link,
            process_name: format!("{}/{} process", Req::SERVICE, Req::METHOD),
            _messages: PhantomData,
        }
    }

    /// The stream's span.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The `process` span of one message just read, with its `queue wait` child already
    /// ended.
    pub fn message(&self, request: &Req) -> Span {
        let carried = request.trace_context();
        let received = carried.map(|map| spans::received_formats(map.keys()));
        let span = tracing::info_span!(
            parent: None,
            "process",
            otel.name = %self.process_name,
            otel.kind = "consumer",
            rpc.system = "grpc",
            rpc.service = Req::SERVICE,
            rpc.method = Req::METHOD,
            sluice.propagation.received = received.as_deref(),
        );
        // The parent first: the span starts (and its parent is fixed) once anything reads
        // its context, as `child_since` does.
        let parent = carried.map(propagation::extract_map).unwrap_or_default();
        let span = spans::with_parent(span, parent);
        span.add_link(self.link.clone());
        if let Some(sent) = spans::from_unix_micros(request.sent_unix_micros()) {
            spans::child_since(&span, "queue wait", sent);
        }
        span
    }
}
