//! The client-facing `mesh.v1.Gateway` service: each transaction goes through one tower
//! stack ([`stack`]) — trace, metrics, deadline, validation, admission, overload control,
//! dispatch — whether it came by Submit or SubmitStream.
//!
//! - **Submit** (unary): the in-flight limit, the overload layer (degradation level, the
//!   client's token bucket, the adaptive concurrency limit at the transaction's priority)
//!   and the downstream queues are checked without waiting; when any is full the call fails
//!   at once with RESOURCE_EXHAUSTED (UNAVAILABLE at degradation level 3) and a
//!   `grpc-retry-pushback-ms` trailer. Unary calls are never parked.
//! - **SubmitStream** ([`stream`]): one task per stream reads the next Transaction only
//!   when the current one has been admitted — under the concurrency limit and to every
//!   required queue (and within its share of `streams_inflight`). While it waits, the
//!   client's HTTP/2 window fills and its sends block. Outcomes return in completion order
//!   through a bounded queue (`outcome_queue`).
//!
//! One concern per file: [`request`] (what travels down the stack), [`metrics`], [`trace`],
//! [`deadline`], [`validate`], [`admission`], [`overload`], [`dispatch`], and [`stack`] which
//! puts them in order.

mod admission;
mod deadline;
mod dispatch;
mod early;
mod metrics;
mod overload;
mod refusal;
mod request;
mod stack;
mod stream;
mod trace;
mod validate;

use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_proto::pb::gateway_server::Gateway;
use sluice_proto::pb::{Outcome, Transaction};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};
use tower::ServiceExt as _;
use tracing::Instrument as _;

use crate::fanout::Fanout;
use crate::overload::Overload;
use admission::{SlotRefused, StreamRoom};
pub use early::EarlyAdmission;
use metrics::IngressMetrics;
use refusal::{Reason, Refusal};
use request::{Api, TxnRequest, call_deadline, client_of};
use stack::{IngressService, ingress_stack};
pub use stream::OutcomeStream;
use stream::StreamReader;

/// Default most unary calls in flight at once.
pub const DEFAULT_MAX_INFLIGHT: usize = 2048;
/// Default most transactions per SubmitStream admitted and awaiting their outcome.
pub const DEFAULT_STREAM_INFLIGHT: usize = 1024;
/// Default most SubmitStream calls open at once, all connections together.
pub const DEFAULT_MAX_STREAMS: usize = 256;
/// Default most SubmitStream calls open at once on one connection: an eighth of
/// [`DEFAULT_MAX_STREAMS`], so one connection cannot hold every slot.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: usize = 32;
/// Default time a SubmitStream may hold its slot sending nothing, with nothing in flight,
/// before it is closed.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default most transactions admitted and awaiting their outcome over every SubmitStream.
pub const DEFAULT_STREAMS_INFLIGHT: usize = 4096;
/// Default outcomes per SubmitStream produced but not yet taken by the transport.
pub const DEFAULT_OUTCOME_QUEUE: usize = 256;
/// Default deadline for work whose client set none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// Default `grpc-retry-pushback-ms` sent with RESOURCE_EXHAUSTED.
pub const DEFAULT_RETRY_PUSHBACK: Duration = Duration::from_millis(100);

/// Ingress bounds.
#[derive(Debug, Clone)]
pub struct IngressLimits {
    pub max_inflight: usize,
    pub stream_inflight: usize,
    pub max_streams: usize,
    pub max_streams_per_connection: usize,
    pub stream_idle_timeout: Duration,
    pub streams_inflight: usize,
    pub outcome_queue: usize,
    pub default_deadline: Duration,
    pub retry_pushback: Duration,
}

impl Default for IngressLimits {
    fn default() -> Self {
        Self {
            max_inflight: DEFAULT_MAX_INFLIGHT,
            stream_inflight: DEFAULT_STREAM_INFLIGHT,
            max_streams: DEFAULT_MAX_STREAMS,
            max_streams_per_connection: DEFAULT_MAX_STREAMS_PER_CONNECTION,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            streams_inflight: DEFAULT_STREAMS_INFLIGHT,
            outcome_queue: DEFAULT_OUTCOME_QUEUE,
            default_deadline: DEFAULT_DEADLINE,
            retry_pushback: DEFAULT_RETRY_PUSHBACK,
        }
    }
}

/// The `mesh.v1.Gateway` implementation.
pub struct Ingress {
    limits: IngressLimits,
    /// The stack unary calls go through (cloned per call).
    unary: IngressService,
    /// The stack stream messages go through (cloned per stream).
    stream: IngressService,
    room: StreamRoom,
    shutdown: CancellationToken,
    metrics: IngressMetrics,
    /// Whether transactions need their client named (per-client rate limits on).
    name_clients: bool,
    /// For whether the priority policy needs a call's client named.
    overload: Overload,
}

impl Ingress {
    pub fn new(
        fanout: Fanout,
        overload: &Overload,
        limits: IngressLimits,
        registry: &mut Registry,
        shutdown: CancellationToken,
    ) -> Self {
        let metrics = IngressMetrics::new(registry);
        Self {
            unary: ingress_stack(Api::Unary, fanout.clone(), overload, &limits, &metrics),
            stream: ingress_stack(Api::Stream, fanout, overload, &limits, &metrics),
            name_clients: overload.clients().is_some(),
            room: StreamRoom::new(
                limits.max_streams,
                limits.max_streams_per_connection,
                limits.streams_inflight,
                limits.stream_inflight,
            ),
            limits,
            shutdown,
            metrics,
            overload: overload.clone(),
        }
    }

    /// The generated `Gateway` service for this ingress, with early admission in front.
    pub fn into_service(
        self,
        max_message_size: usize,
    ) -> EarlyAdmission<sluice_proto::pb::gateway_server::GatewayServer<Ingress>> {
        let (overload, metrics, pushback) = (
            self.overload.clone(),
            self.metrics.clone(),
            self.limits.retry_pushback,
        );
        let server = sluice_proto::pb::gateway_server::GatewayServer::new(self)
            .max_decoding_message_size(max_message_size);
        EarlyAdmission::new(server, overload, metrics, pushback)
    }
}

#[tonic::async_trait]
impl Gateway for Ingress {
    type SubmitStreamStream = OutcomeStream;

    async fn submit(&self, request: Request<Transaction>) -> Result<Response<Outcome>, Status> {
        let peer = request.remote_addr();
        let (metadata, mut extensions, txn) = request.into_parts();
        let needed = self.name_clients || self.overload.needs_client_for(txn.priority);
        let client = needed.then(|| client_of(&metadata, peer)).flatten();
        let mut request = TxnRequest::unary(txn, metadata);
        request.client = client;
        // Accepted by hyper earlier (early admission): its time starts there, and it is no
        // longer pending once this handler has it.
        if let Some(accepted) = extensions.remove::<early::Accepted>() {
            self.metrics.stage(
                Api::Unary,
                metrics::Stage::Accept,
                request.arrived.saturating_duration_since(accepted.at),
            );
            request.arrived = accepted.at;
        }
        self.unary
            .clone()
            .oneshot(request)
            .await
            .map(Response::new)
            .map_err(Refusal::into_status)
    }

    async fn submit_stream(
        &self,
        request: Request<Streaming<Transaction>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let slot = match self.room.open_stream(request.remote_addr()) {
            Ok(slot) => Ok(slot),
            Err(SlotRefused::Gateway(max)) => Err(Refusal::new(
                Reason::StreamLimit,
                format!(
                    "gateway at its SubmitStream limit ({max} open); retry later or use fewer streams"
                ),
            )),
            Err(SlotRefused::Connection(max)) => Err(Refusal::new(
                Reason::ConnectionStreams,
                format!(
                    "this connection has {max} SubmitStreams open, its most (--max-streams-per-connection); send more on the open ones or open another connection"
                ),
            )),
        };
        let slot = match slot {
            Ok(slot) => slot,
            Err(refusal) => {
                self.metrics.reject(Api::Stream, refusal.reason.label());
                return Err(refusal.pushback(self.limits.retry_pushback).into_status());
            }
        };
        let (tx, rx) = mpsc::channel(self.limits.outcome_queue.max(1));
        let now = Instant::now();
        // The call's grpc-timeout, if any, caps every message's deadline.
        let deadline = call_deadline(request.metadata(), now, deadline::no_deadline(now) - now);
        let parent = trace::stream_parent(request.metadata());
        // The stream's own span; each message gets a span in its own trace, linked to it.
        let received = trace::trace_keys(request.metadata());
        let span = tracing::info_span!(
            parent: None,
            "SubmitStream",
            otel.name = "mesh.v1.Gateway/SubmitStream",
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = "mesh.v1.Gateway",
            rpc.method = "SubmitStream",
            sluice.propagation.received = tracing::field::Empty,
        );
        if !received.is_empty() {
            span.record("sluice.propagation.received", received.as_str());
        }
        let span = sluice_core::spans::with_parent(span, parent.clone());
        // Named once per stream: for rate limits, and for any CRITICAL claim it makes.
        let client = client_of(request.metadata(), request.remote_addr());
        let reader = StreamReader {
            client,
            deadline,
            parent,
            span: span.clone(),
            stack: self.stream.clone(),
            room: self.room.clone(),
            shutdown: self.shutdown.clone(),
            metrics: self.metrics.clone(),
            idle_timeout: self.limits.stream_idle_timeout,
            _slot: slot,
        };
        // The reader runs in the stream's span: its log lines carry the stream's trace.
        tokio::spawn(reader.run(request.into_inner(), tx).instrument(span));
        Ok(Response::new(OutcomeStream {
            rx,
            delivery: self.metrics.delivery(),
        }))
    }
}
