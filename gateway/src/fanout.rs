//! One transaction to three downstreams, joined by correlation.
//!
//! [`Fanout::dispatch`] admits a transaction: it takes room in the risk and logging queues
//! (both required) — waiting for it, or refusing at once, per [`Admission`] — and offers the
//! notice to notification's queue without ever waiting (full means SHED). [`Dispatched::outcome`]
//! then waits for the risk verdict and the audit ack, never past the deadline.
//!
//! Splitting admission from completion is what lets SubmitStream read the next message
//! only once the current one is admitted: the queues' bounds become the client's
//! backpressure.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use sluice_core::spans;
use sluice_proto::pb::logging_client::LoggingClient;
use sluice_proto::pb::notification_client::NotificationClient;
use sluice_proto::pb::risk_client::RiskClient;
use sluice_proto::pb::{
    self, AppendAck, AppendRequest, NotificationStatus, NotifyAck, NotifyRequest, Outcome,
    RiskRequest, RiskVerdict, Transaction,
};
use tokio::sync::oneshot;
use tonic::Status;
use tonic::transport::Channel;

use crate::downstream::{Downstream, Outbound, Protocol};

/// The risk service's `Assess` stream.
pub struct RiskProtocol;
/// The logging service's `Append` stream.
pub struct LoggingProtocol;
/// The notification service's `Deliver` stream.
pub struct NotificationProtocol;

macro_rules! protocol {
    ($proto:ty, $name:literal, $service:literal, $rpc:literal, $req:ty, $reply:ty, $client:ident, $method:ident) => {
        impl Protocol for $proto {
            type Request = $req;
            type Reply = $reply;
            const NAME: &'static str = $name;
            const SERVICE: &'static str = $service;
            const METHOD: &'static str = $rpc;
            fn set_correlation(request: &mut $req, id: u64) {
                request.correlation_id = id;
            }
            fn correlation(reply: &$reply) -> u64 {
                reply.correlation_id
            }
            fn set_sent(request: &mut $req, unix_micros: i64) {
                request.sent_unix_micros = unix_micros;
            }
            fn reply_error(reply: &$reply) -> Option<(i32, &str)> {
                reply.error.as_ref().map(|e| (e.code, e.message.as_str()))
            }
            fn open(
                channel: Channel,
                max_message_size: usize,
                outbound: Outbound<$req>,
                stream: &Context,
                auth: Option<&tonic::metadata::AsciiMetadataValue>,
            ) -> std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = Result<tonic::Streaming<$reply>, Status>>
                        + Send,
                >,
            > {
                // The stream's own context rides in its metadata, sent once at open.
                let mut request = tonic::Request::new(outbound);
                sluice_core::propagation::inject_metadata(stream, request.metadata_mut());
                sluice_core::auth::insert(request.metadata_mut(), auth);
                Box::pin(async move {
                    let mut client =
                        $client::new(channel).max_decoding_message_size(max_message_size);
                    Ok(client.$method(request).await?.into_inner())
                })
            }
        }
    };
}

protocol!(
    RiskProtocol,
    "risk",
    "mesh.v1.Risk",
    "Assess",
    RiskRequest,
    RiskVerdict,
    RiskClient,
    assess
);
protocol!(
    LoggingProtocol,
    "logging",
    "mesh.v1.Logging",
    "Append",
    AppendRequest,
    AppendAck,
    LoggingClient,
    append
);
protocol!(
    NotificationProtocol,
    "notification",
    "mesh.v1.Notification",
    "Deliver",
    NotifyRequest,
    NotifyAck,
    NotificationClient,
    deliver
);

/// A hop span (PRODUCER `<service>/<method> send`) under the ingress span in `parent`.
fn hop(parent: &Context, service: &'static str, method: &'static str) -> Context {
    let tracer = spans::tracer();
    let span = tracer
        .span_builder(format!("{service}/{method} send"))
        .with_kind(SpanKind::Producer)
        .with_attributes(spans::rpc(service, method))
        .start_with_context(&tracer, parent);
    parent.with_span(span)
}

/// `txn` with its trace context replaced by the hop's (every format, nothing stale).
fn carrying(txn: &Transaction, hop: &Context) -> Transaction {
    let mut t = txn.clone();
    t.trace_context.clear();
    sluice_core::propagation::inject_map(hop, &mut t.trace_context);
    t
}

/// How ingress waits for queue room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Wait for room, up to the deadline (SubmitStream: this wait is the backpressure).
    Wait,
    /// Refuse with RESOURCE_EXHAUSTED when a required queue is full (unary Submit).
    Immediate,
}

/// Why a notice was not queued.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    /// `queue_full` (load shedding) or `unavailable` (no live notification stream).
    reason: &'static str,
}

/// The three downstreams.
#[derive(Clone)]
pub struct Fanout {
    pub risk: Downstream<RiskProtocol>,
    pub logging: Downstream<LoggingProtocol>,
    pub notification: Downstream<NotificationProtocol>,
    shed: Family<ShedLabels, Counter>,
}

/// A transaction admitted to every queue, its replies still to come.
pub struct Dispatched {
    id: String,
    deadline: Instant,
    risk: oneshot::Receiver<Result<RiskVerdict, Status>>,
    audit: oneshot::Receiver<Result<AppendAck, Status>>,
    notification: NotificationStatus,
}

impl Fanout {
    pub fn new(
        risk: Downstream<RiskProtocol>,
        logging: Downstream<LoggingProtocol>,
        notification: Downstream<NotificationProtocol>,
        registry: &mut Registry,
    ) -> Self {
        let shed = Family::<ShedLabels, Counter>::default();
        registry.register(
            "notifications_shed",
            "Notices not queued: reason=queue_full (best-effort shedding) or unavailable",
            shed.clone(),
        );
        Self {
            risk,
            logging,
            notification,
            shed,
        }
    }

    fn count_shed(&self, reason: &'static str) {
        self.shed.get_or_create(&ShedLabels { reason }).inc();
    }

    /// Admits `txn` (already validated) to the downstream queues.
    pub async fn dispatch(
        &self,
        txn: Transaction,
        deadline: Instant,
        admission: Admission,
        parent: &Context,
    ) -> Result<Dispatched, Status> {
        for (live, name) in [
            (self.risk.is_live(), "risk"),
            (self.logging.is_live(), "logging"),
        ] {
            if !live {
                return Err(Status::unavailable(format!(
                    "{name} has no live stream; retry later"
                )));
            }
        }
        // One PRODUCER span per hop, covering the wait for queue room, the time in the
        // queue (and so for HTTP/2 window), the send and the reply.
        let risk_hop = hop(parent, "mesh.v1.Risk", "Assess");
        let audit_hop = hop(parent, "mesh.v1.Logging", "Append");
        let waiting = Instant::now();
        let slots = match admission {
            Admission::Immediate => self
                .risk
                .try_reserve()
                .and_then(|r| Ok((r, self.logging.try_reserve()?))),
            Admission::Wait => {
                let both = async {
                    Ok::<_, Status>((self.risk.reserve().await?, self.logging.reserve().await?))
                };
                tokio::time::timeout_at(deadline.into(), both)
                    .await
                    .unwrap_or_else(|_| {
                        Err(Status::deadline_exceeded(
                            "deadline passed waiting for queue room",
                        ))
                    })
            }
        };
        let waited_ms = waiting.elapsed().as_secs_f64() * 1000.0;
        for cx in [&risk_hop, &audit_hop] {
            cx.span()
                .set_attribute(KeyValue::new("sluice.admission_wait_ms", waited_ms));
        }
        let (risk_slot, audit_slot) = match slots {
            Ok(slots) => slots,
            Err(status) => {
                let event = if status.code() == tonic::Code::ResourceExhausted {
                    "rejected"
                } else {
                    "not_admitted"
                };
                for cx in [&risk_hop, &audit_hop] {
                    spans::fail_cx(cx, event, status.code() as i32, status.message());
                    cx.span().end();
                }
                return Err(status);
            }
        };
        let deadline_unix_ms = sluice_core::deadline::to_unix_ms(deadline);
        let notify_hop = hop(parent, "mesh.v1.Notification", "Deliver");
        let notification = if !self.notification.is_live() {
            self.count_shed("unavailable");
            spans::fail_cx(
                &notify_hop,
                "shed",
                tonic::Code::Unavailable as i32,
                "notification has no live stream",
            );
            notify_hop.span().end();
            NotificationStatus::Failed
        } else {
            match self.notification.try_reserve() {
                Ok(slot) => {
                    let request = NotifyRequest {
                        transaction: Some(carrying(&txn, &notify_hop)),
                        deadline_unix_ms,
                        ..Default::default()
                    };
                    slot.send_and_forget(request, deadline, notify_hop);
                    NotificationStatus::Queued
                }
                Err(_) => {
                    self.count_shed("queue_full");
                    spans::fail_cx(
                        &notify_hop,
                        "shed",
                        tonic::Code::ResourceExhausted as i32,
                        "notification queue full",
                    );
                    notify_hop.span().end();
                    NotificationStatus::Shed
                }
            }
        };
        let id = txn.id.clone();
        let risk_request = RiskRequest {
            transaction: Some(carrying(&txn, &risk_hop)),
            deadline_unix_ms,
            ..Default::default()
        };
        let risk = risk_slot.send(risk_request, deadline, risk_hop);
        let audit_request = AppendRequest {
            transaction: Some(carrying(&txn, &audit_hop)),
            deadline_unix_ms,
            ..Default::default()
        };
        let audit = audit_slot.send(audit_request, deadline, audit_hop);
        Ok(Dispatched {
            id,
            deadline,
            risk,
            audit,
            notification,
        })
    }
}

/// A downstream's per-message error as the client's status. Errors about the client's own
/// transaction (INVALID_ARGUMENT, ALREADY_EXISTS) name the field and pass through as they
/// are; the rest say which service failed.
fn reply_status(name: &str, error: Option<&pb::Error>) -> Result<(), Status> {
    match error {
        None => Ok(()),
        Some(e) => {
            let code = tonic::Code::from_i32(e.code);
            let message = match code {
                tonic::Code::InvalidArgument | tonic::Code::AlreadyExists => e.message.clone(),
                _ => format!("{name}: {}", e.message),
            };
            Err(Status::new(code, message))
        }
    }
}

fn received<T>(
    name: &str,
    r: Result<Result<T, Status>, oneshot::error::RecvError>,
) -> Result<T, Status> {
    r.map_err(|_| Status::unavailable(format!("{name} request dropped")))?
}

impl Dispatched {
    /// The transaction's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the risk verdict and the audit ack (never past the deadline).
    pub async fn outcome(self) -> Result<Outcome, Status> {
        let both = async { tokio::join!(self.risk, self.audit) };
        let (risk, audit) = tokio::time::timeout_at(self.deadline.into(), both)
            .await
            .map_err(|_| {
                Status::deadline_exceeded("deadline passed waiting for risk and logging")
            })?;
        let verdict = received("risk", risk)?;
        let ack = received("logging", audit)?;
        reply_status("logging", ack.error.as_ref())?;
        reply_status("risk", verdict.error.as_ref())?;
        Ok(Outcome {
            id: self.id,
            decision: verdict.decision,
            risk_score: verdict.risk_score,
            reasons: verdict.reasons,
            notification: self.notification as i32,
            audit_offset: ack.offset,
            replayed: ack.duplicate,
            error: None,
        })
    }
}

/// An Outcome reporting `status` for transaction `id` (SubmitStream's per-message errors).
pub fn error_outcome(id: String, status: &Status) -> Outcome {
    Outcome {
        id,
        error: Some(pb::Error::from_status(status)),
        ..Default::default()
    }
}
