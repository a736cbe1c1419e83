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
    ($proto:ty, $name:literal, $req:ty, $reply:ty, $client:ident, $method:ident) => {
        impl Protocol for $proto {
            type Request = $req;
            type Reply = $reply;
            const NAME: &'static str = $name;
            fn set_correlation(request: &mut $req, id: u64) {
                request.correlation_id = id;
            }
            fn correlation(reply: &$reply) -> u64 {
                reply.correlation_id
            }
            fn open(
                channel: Channel,
                max_message_size: usize,
                outbound: Outbound<$req>,
            ) -> std::pin::Pin<
                Box<
                    dyn std::future::Future<Output = Result<tonic::Streaming<$reply>, Status>>
                        + Send,
                >,
            > {
                Box::pin(async move {
                    let mut client =
                        $client::new(channel).max_decoding_message_size(max_message_size);
                    Ok(client.$method(outbound).await?.into_inner())
                })
            }
        }
    };
}

protocol!(
    RiskProtocol,
    "risk",
    RiskRequest,
    RiskVerdict,
    RiskClient,
    assess
);
protocol!(
    LoggingProtocol,
    "logging",
    AppendRequest,
    AppendAck,
    LoggingClient,
    append
);
protocol!(
    NotificationProtocol,
    "notification",
    NotifyRequest,
    NotifyAck,
    NotificationClient,
    deliver
);

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
        let (risk_slot, audit_slot) = match admission {
            Admission::Immediate => (self.risk.try_reserve()?, self.logging.try_reserve()?),
            Admission::Wait => {
                let both = async {
                    Ok::<_, Status>((self.risk.reserve().await?, self.logging.reserve().await?))
                };
                tokio::time::timeout_at(deadline.into(), both)
                    .await
                    .map_err(|_| {
                        Status::deadline_exceeded("deadline passed waiting for queue room")
                    })??
            }
        };
        let deadline_unix_ms = sluice_core::deadline::to_unix_ms(deadline);
        let notification = if !self.notification.is_live() {
            self.count_shed("unavailable");
            NotificationStatus::Failed
        } else {
            match self.notification.try_reserve() {
                Ok(slot) => {
                    slot.send_and_forget(
                        NotifyRequest {
                            correlation_id: 0,
                            transaction: Some(txn.clone()),
                            deadline_unix_ms,
                        },
                        deadline,
                    );
                    NotificationStatus::Queued
                }
                Err(_) => {
                    self.count_shed("queue_full");
                    NotificationStatus::Shed
                }
            }
        };
        let id = txn.id.clone();
        let risk = risk_slot.send(
            RiskRequest {
                correlation_id: 0,
                transaction: Some(txn.clone()),
                deadline_unix_ms,
            },
            deadline,
        );
        let audit = audit_slot.send(
            AppendRequest {
                correlation_id: 0,
                transaction: Some(txn),
                deadline_unix_ms,
            },
            deadline,
        );
        Ok(Dispatched {
            id,
            deadline,
            risk,
            audit,
            notification,
        })
    }
}

fn reply_status(name: &str, error: Option<&pb::Error>) -> Result<(), Status> {
    match error {
        None => Ok(()),
        Some(e) => Err(Status::new(
            tonic::Code::from_i32(e.code),
            format!("{name}: {}", e.message),
        )),
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
            error: None,
        })
    }
}

/// An Outcome reporting `status` for transaction `id` (SubmitStream's per-message errors).
pub fn error_outcome(id: String, status: &Status) -> Outcome {
    Outcome {
        id,
        error: Some(pb::Error {
            code: status.code() as i32,
            message: status.message().to_string(),
        }),
        ..Default::default()
    }
}
