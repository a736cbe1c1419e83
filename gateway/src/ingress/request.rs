//! What travels down the ingress stack: one transaction and what the layers learn about it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry::trace::SpanContext;
use sluice_proto::pb::Transaction;
use tokio::sync::oneshot;
use tonic::metadata::MetadataMap;

/// The `api` label: `unary` (Submit) or `stream` (SubmitStream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Api {
    Unary,
    Stream,
}

impl Api {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Api::Unary => "unary",
            Api::Stream => "stream",
        }
    }
}

/// Where a transaction came from: what its trace context and deadline are taken from.
pub(crate) enum Origin {
    /// A Submit call: its metadata (trace context, `grpc-timeout`).
    Unary { metadata: MetadataMap },
    /// One SubmitStream message: the stream's metadata context (parent of messages that
    /// carry none), the stream span to link to, and the stream's own deadline.
    Stream {
        parent: Context,
        link: SpanContext,
        deadline: Instant,
    },
}

/// One transaction on its way through the ingress stack.
pub(crate) struct TxnRequest {
    pub(crate) txn: Transaction,
    pub(crate) origin: Origin,
    /// When ingress read it.
    pub(crate) arrived: Instant,
    /// Set by the deadline layer.
    pub(crate) deadline: Instant,
    /// The ingress span, set by the trace layer; the hop spans go under it.
    pub(crate) span: tracing::Span,
    /// The context the caller sent (set by the trace layer): what the hops carry on when
    /// spans are off.
    pub(crate) caller: Context,
    /// SubmitStream only: told (or dropped) once the transaction is admitted to every
    /// required queue or refused, so the reader may read the next message.
    pub(crate) admitted: Option<oneshot::Sender<()>>,
    /// Who sent it, for per-client rate limits and the priority policy (set only when one
    /// of them needs it): the `x-client-id` metadata, else the peer's IP; None when
    /// `x-client-id` is unusable or the client was not needed.
    pub(crate) client: Option<Arc<str>>,
    /// Whether to notify (false at degradation level 1+ for all but CRITICAL).
    pub(crate) notify: bool,
    /// Its audit partition (set by the overload layer).
    pub(crate) partition: u32,
}

/// The metadata key naming the client for per-client rate limits.
pub(crate) const CLIENT_ID: &str = "x-client-id";

/// The client a call's metadata and peer name: `x-client-id` (1–64 visible ASCII
/// characters), else the peer's IP address, else `unknown`. None: `x-client-id` is present
/// but unusable.
pub(crate) fn client_of(
    metadata: &MetadataMap,
    peer: Option<std::net::SocketAddr>,
) -> Option<Arc<str>> {
    match metadata.get(CLIENT_ID) {
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| {
                (1..=crate::overload::clients::MAX_CLIENT_ID).contains(&s.len())
                    && s.bytes().all(|b| b.is_ascii_graphic())
            })
            .map(Arc::from),
        None => Some(peer.map_or_else(|| Arc::from("unknown"), |p| Arc::from(p.ip().to_string()))),
    }
}

impl TxnRequest {
    pub(crate) fn unary(txn: Transaction, metadata: MetadataMap) -> Self {
        let arrived = Instant::now();
        Self {
            txn,
            origin: Origin::Unary { metadata },
            arrived,
            deadline: arrived,
            span: tracing::Span::none(),
            caller: Context::new(),
            admitted: None,
            client: None,
            notify: true,
            partition: 0,
        }
    }

    pub(crate) fn stream_message(
        txn: Transaction,
        parent: Context,
        link: SpanContext,
        stream_deadline: Instant,
        admitted: oneshot::Sender<()>,
    ) -> Self {
        let arrived = Instant::now();
        Self {
            txn,
            origin: Origin::Stream {
                parent,
                link,
                deadline: stream_deadline,
            },
            arrived,
            deadline: arrived,
            span: tracing::Span::none(),
            caller: Context::new(),
            admitted: Some(admitted),
            client: None,
            notify: true,
            partition: 0,
        }
    }

    pub(crate) fn api(&self) -> Api {
        match self.origin {
            Origin::Unary { .. } => Api::Unary,
            Origin::Stream { .. } => Api::Stream,
        }
    }

    /// Lets a SubmitStream reader read on (admitted or refused).
    pub(crate) fn release_reader(&mut self) {
        if let Some(admitted) = self.admitted.take() {
            let _ = admitted.send(());
        }
    }
}

/// Headroom taken off a client's `grpc-timeout`. tonic's server enforces the same timeout
/// from the moment the request arrives and answers CANCELLED when it fires; finishing a
/// little earlier lets the gateway answer DEADLINE_EXCEEDED, as gRPC specifies. 50 ms, not
/// less: on a loaded 2-core host the time between tonic starting its timer and this handler
/// reading the clock reached 10 ms.
const DEADLINE_HEADROOM: Duration = Duration::from_millis(50);

/// The deadline a call's metadata asks for: its `grpc-timeout` (less
/// [`DEADLINE_HEADROOM`]) from `now`, or `default`.
pub(crate) fn call_deadline(metadata: &MetadataMap, now: Instant, default: Duration) -> Instant {
    let timeout = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(sluice_core::deadline::parse_grpc_timeout)
        .map_or(default, |t| t.saturating_sub(DEADLINE_HEADROOM));
    now + timeout
}
