//! One transaction to three downstreams, joined by correlation.
//!
//! [`Fanout::dispatch`] admits a transaction: it takes room in the risk and logging queues
//! (both required) — waiting for their services to be ready, or refusing at once, per
//! [`Admission`] — and offers the notice to notification's queue without ever waiting (full
//! means SHED). [`Dispatched::outcome`] then waits for the risk verdict and the audit ack,
//! never past the deadline.
//!
//! Splitting admission from completion is what lets SubmitStream read the next message
//! only once the current one is admitted: the queues' bounds become the client's
//! backpressure.
//!
//! Each service may have several replicas: risk and notification go where their [`Route`]
//! says (load, or the account), the audit record to its id's partition ([`Partitions`]). A
//! risk request whose replica's stream breaks before it answers is sent once more, to
//! another replica: assessing is idempotent per transaction, so the client sees no error.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sluice_core::spans;
use sluice_proto::pb::{
    self, AppendAck, AppendRequest, NotificationStatus, NotifyRequest, Outcome, RiskRequest,
    RiskVerdict, Transaction,
};
use sluice_proto::{Body, Encoded, HopRequest};
use tonic::Status;

use crate::hlc::Hlc;
use tower::Service;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

pub use crate::downstream::Admission;
use crate::downstream::{HopCall, Partitions, ReplyFuture, Route};

/// The hop span (PRODUCER `<service>/<method> send`) of request type `R`, under `parent`
/// (the ingress span): it covers the wait for queue room, the time in the queue (and so for
/// HTTP/2 window), the send and the reply, and ends when the reply or failure arrives.
fn hop<R: HopRequest>(parent: &tracing::Span) -> tracing::Span {
    tracing::info_span!(
        parent: parent,
        "send",
        otel.name = %format_args!("{}/{} send", R::SERVICE, R::METHOD),
        otel.kind = "producer",
        rpc.system = "grpc",
        rpc.service = R::SERVICE,
        rpc.method = R::METHOD,
    )
}

/// The hop's trace context (every format), which replaces the caller's in its request.
/// With spans off (no export), the hop span has no context: the caller's own context
/// (`parent`) goes on instead, so a client's trace still reaches every hop and the audit
/// record.
fn context_of(hop: &tracing::Span, parent: &opentelemetry::Context) -> HashMap<String, String> {
    use opentelemetry::trace::TraceContextExt as _;
    let mut context = HashMap::new();
    let cx = hop.context();
    let cx = if cx.span().span_context().is_valid() {
        &cx
    } else {
        parent
    };
    sluice_core::propagation::inject_map(cx, &mut context);
    context
}

/// Hop `R`'s request for the transaction `body`, carrying the hop span's context.
fn hop_request<R: HopRequest>(
    body: &Body,
    hop: &tracing::Span,
    parent: &opentelemetry::Context,
    deadline_unix_ms: i64,
) -> Encoded<R> {
    Encoded::new(body, &context_of(hop, parent), deadline_unix_ms)
}

/// Why a notice was not queued.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ShedLabels {
    /// `queue_full` (load shedding), `unavailable` (no live notification stream) or
    /// `degraded` (skipped at degradation level 1 and above).
    reason: &'static str,
}

/// The three downstreams.
#[derive(Clone)]
pub struct Fanout {
    pub risk: Route<RiskRequest>,
    pub logging: Partitions<AppendRequest>,
    pub notification: Route<NotifyRequest>,
    shed: Family<ShedLabels, Counter>,
    risk_retries: Counter,
    /// Stamps each transaction at admission ([`crate::hlc`]).
    clock: Arc<Hlc>,
    /// Transactions refused for an `after_hlc` too far ahead.
    clock_refused: Counter,
}

/// Most replicas one risk request is sent to (the first included).
pub const RISK_ATTEMPTS: usize = 3;

/// The risk verdict to come: from the one replica there is, or with retries on others.
enum RiskReply {
    Once(ReplyFuture<RiskRequest>),
    Retrying(Pin<Box<dyn Future<Output = Result<RiskVerdict, Status>> + Send>>),
}

impl Future for RiskReply {
    type Output = Result<RiskVerdict, Status>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            RiskReply::Once(f) => Pin::new(f).poll(cx),
            RiskReply::Retrying(f) => f.as_mut().poll(cx),
        }
    }
}

/// A transaction admitted to every queue, its replies still to come.
pub struct Dispatched {
    id: String,
    /// When it was queued everywhere: the hop times in [`Replied`] start here.
    admitted: Instant,
    deadline: Instant,
    risk: RiskReply,
    audit: ReplyFuture<AppendRequest>,
    audit_partition: u32,
    notification: NotificationStatus,
    /// The gateway's clock: a replay's stored clock (any gateway's) moves it.
    clock: Arc<Hlc>,
}

impl Fanout {
    pub fn new(
        risk: Route<RiskRequest>,
        logging: Partitions<AppendRequest>,
        notification: Route<NotifyRequest>,
        clock: Arc<Hlc>,
        registry: &mut Registry,
    ) -> Self {
        let shed = Family::<ShedLabels, Counter>::default();
        registry.register(
            "notifications_shed",
            "Notices not queued: reason=queue_full (best-effort shedding) or unavailable",
            shed.clone(),
        );
        let risk_retries = Counter::default();
        registry.register(
            "risk_retries",
            "Risk requests sent to a second replica because the first one's stream broke before it answered",
            risk_retries.clone(),
        );
        let clock_refused = Counter::default();
        registry.register(
            "clock_refused",
            "Transactions refused INVALID_ARGUMENT because their after_hlc was further ahead of this gateway's clock than --max-clock-offset",
            clock_refused.clone(),
        );
        Self {
            risk,
            logging,
            notification,
            shed,
            risk_retries,
            clock,
            clock_refused,
        }
    }

    /// Admits `txn` (already validated) to the downstream queues; `parent` is the ingress
    /// span the hop spans go under, `caller` the context the client sent. `notify` false
    /// skips the notification (degradation: non-core work first).
    pub async fn dispatch(
        &self,
        mut txn: Transaction,
        deadline: Instant,
        admission: Admission,
        (parent, caller): (&tracing::Span, &opentelemetry::Context),
        notify: bool,
    ) -> Result<Dispatched, Status> {
        if let Err(ahead) = self.clock.check(txn.after_hlc) {
            self.clock_refused.inc();
            return Err(Status::invalid_argument(ahead.to_string()));
        }
        let (risk_hop, audit_hop) = (hop::<RiskRequest>(parent), hop::<AppendRequest>(parent));
        // Readiness is queue room: Wait parks here (the backpressure), Immediate never does.
        let waiting = Instant::now();
        let both = async {
            let risk = self.risk.ready(admission, &txn.account).await?;
            let logging = self.logging.ready(admission, &txn.id).await?;
            Ok::<_, Status>((risk, logging))
        };
        let room = tokio::time::timeout_at(deadline.into(), both)
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(
                    "deadline passed waiting for queue room",
                ))
            });
        let waited_ms = waiting.elapsed().as_secs_f64() * 1000.0;
        for span in [&risk_hop, &audit_hop] {
            span.set_attribute("sluice.admission_wait_ms", waited_ms);
        }
        let (mut risk, (audit_partition, mut logging)) = match room {
            Ok(services) => services,
            Err(status) => {
                let event = if status.code() == tonic::Code::ResourceExhausted {
                    "rejected"
                } else {
                    "not_admitted"
                };
                for span in [&risk_hop, &audit_hop] {
                    spans::fail(span, event, status.code() as i32, status.message());
                }
                return Err(status);
            }
        };
        let deadline_unix_ms = sluice_core::deadline::to_unix_ms(deadline);
        // Admitted: its place in the causal order, once, before it fans out.
        let hlc = self.clock.stamp(txn.after_hlc);
        // Encoded once; each hop adds only its own trace context.
        let body = Body::new(&mut txn);
        let notification = if notify {
            self.notify((&txn, &body), deadline, deadline_unix_ms, parent, caller)
                .await
        } else {
            self.shed
                .get_or_create(&ShedLabels { reason: "degraded" })
                .inc();
            NotificationStatus::Shed
        };
        let request = hop_request::<RiskRequest>(&body, &risk_hop, caller, deadline_unix_ms);
        // Retrying needs another replica and a copy of the request; with one, neither.
        let risk = if self.risk.has_choice() {
            let first_cx = {
                use opentelemetry::trace::TraceContextExt as _;
                risk_hop.context().span().span_context().clone()
            };
            let first = risk.call(HopCall {
                request: request.clone(),
                deadline,
                span: risk_hop,
            });
            let first = (first, first_cx);
            self.risk_with_retry(first, request, &txn.account, (admission, deadline), parent)
        } else {
            RiskReply::Once(risk.call(HopCall {
                request,
                deadline,
                span: risk_hop,
            }))
        };
        let mut append = hop_request::<AppendRequest>(&body, &audit_hop, caller, deadline_unix_ms);
        append.set_hlc(hlc);
        let audit = logging.call(HopCall {
            request: append,
            deadline,
            span: audit_hop,
        });
        Ok(Dispatched {
            id: txn.id,
            admitted: Instant::now(),
            deadline,
            risk,
            audit,
            audit_partition,
            notification,
            clock: self.clock.clone(),
        })
    }

    /// The verdict of `first`; if its replica's stream broke before answering (or it had
    /// none live by the time the request left the queue), `request` again through the
    /// route, which no longer offers a replica it knows is down — up to
    /// [`RISK_ATTEMPTS`] in all, since a replica's second stream may not have noticed yet
    /// that their connection is gone. Never past the deadline (the caller's).
    fn risk_with_retry(
        &self,
        (first, first_cx): (ReplyFuture<RiskRequest>, opentelemetry::trace::SpanContext),
        request: Encoded<RiskRequest>,
        account: &str,
        (admission, deadline): (Admission, Instant),
        parent: &tracing::Span,
    ) -> RiskReply {
        let (route, retries, parent) =
            (self.risk.clone(), self.risk_retries.clone(), parent.clone());
        let account = account.to_string();
        RiskReply::Retrying(Box::pin(async move {
            use opentelemetry::trace::TraceContextExt as _;
            let mut result = first.await;
            // Each attempt's span links to the one it retries.
            let mut previous = first_cx;
            for _ in 1..RISK_ATTEMPTS {
                match &result {
                    Err(status) if status.code() == tonic::Code::Unavailable && route.is_live() => {
                        retries.inc();
                        let span = hop::<RiskRequest>(&parent);
                        span.set_attribute("sluice.retry_of", status.message().to_string());
                        if previous.is_valid() {
                            span.add_link(previous);
                        }
                        previous = span.context().span().span_context().clone();
                        let mut again = route.ready(admission, &account).await?;
                        result = again
                            .call(HopCall {
                                request: request.clone(),
                                deadline,
                                span,
                            })
                            .await;
                    }
                    _ => break,
                }
            }
            result
        }))
    }

    /// Offers the notice without waiting: QUEUED, SHED (queue full) or FAILED (no live
    /// stream). Its reply is not awaited.
    async fn notify(
        &self,
        (txn, body): (&Transaction, &Body),
        deadline: Instant,
        deadline_unix_ms: i64,
        parent: &tracing::Span,
        caller: &opentelemetry::Context,
    ) -> NotificationStatus {
        let span = hop::<NotifyRequest>(parent);
        match self
            .notification
            .ready(Admission::Immediate, &txn.account)
            .await
        {
            Ok(mut notification) => {
                let request = hop_request::<NotifyRequest>(body, &span, caller, deadline_unix_ms);
                // Best effort: the reply future is dropped; the hop span ends on the reply.
                drop(notification.call(HopCall {
                    request,
                    deadline,
                    span,
                }));
                NotificationStatus::Queued
            }
            Err(status) => {
                let (reason, result) = if status.code() == tonic::Code::ResourceExhausted {
                    ("queue_full", NotificationStatus::Shed)
                } else {
                    ("unavailable", NotificationStatus::Failed)
                };
                self.shed.get_or_create(&ShedLabels { reason }).inc();
                spans::fail(&span, "shed", status.code() as i32, status.message());
                result
            }
        }
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

impl Dispatched {
    /// The transaction's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the risk verdict and the audit ack (never past the deadline).
    pub async fn outcome(self) -> Result<Outcome, Status> {
        self.timed_outcome().await.0
    }

    /// [`Self::outcome`], and how long after admission each reply came (a reply that
    /// never came counts until now).
    pub async fn timed_outcome(self) -> (Result<Outcome, Status>, Replied) {
        let admitted = self.admitted;
        let (mut risk_at, mut audit_at) = (None, None);
        let both = async {
            tokio::join!(
                async {
                    let r = self.risk.await;
                    risk_at = Some(admitted.elapsed());
                    r
                },
                async {
                    let a = self.audit.await;
                    audit_at = Some(admitted.elapsed());
                    a
                }
            )
        };
        let joined = tokio::time::timeout_at(self.deadline.into(), both).await;
        let now = admitted.elapsed();
        let replied = Replied {
            admitted,
            risk: risk_at.unwrap_or(now),
            logging: audit_at.unwrap_or(now),
        };
        let result = match joined {
            Err(_) => Err(Status::deadline_exceeded(
                "deadline passed waiting for risk and logging",
            )),
            Ok((risk, audit)) => {
                let outcome = Self::join(
                    self.id,
                    self.notification,
                    self.audit_partition,
                    risk,
                    audit,
                );
                // A replay answers with the clock its record was stamped with, perhaps by
                // another gateway: this one moves to it, so it accepts that clock back as
                // an `after_hlc` and what it stamps next comes after.
                if let Ok(o) = &outcome
                    && o.replayed
                {
                    self.clock.witness(o.hlc);
                }
                outcome
            }
        };
        (result, replied)
    }

    fn join(
        id: String,
        notification: NotificationStatus,
        audit_partition: u32,
        risk: Result<RiskVerdict, Status>,
        audit: Result<AppendAck, Status>,
    ) -> Result<Outcome, Status> {
        let (verdict, ack): (RiskVerdict, AppendAck) = (risk?, audit?);
        reply_status("logging", ack.error.as_ref())?;
        reply_status("risk", verdict.error.as_ref())?;
        Ok(Outcome {
            id,
            decision: verdict.decision,
            risk_score: verdict.risk_score,
            reasons: verdict.reasons,
            notification: notification as i32,
            audit_offset: ack.offset,
            audit_partition,
            replayed: ack.duplicate,
            // The record's: this stamp, or the original's for a replay.
            hlc: ack.hlc,
            error: None,
        })
    }
}

/// When a dispatched transaction's replies came, from its admission.
#[derive(Debug, Clone, Copy)]
pub struct Replied {
    pub admitted: Instant,
    pub risk: std::time::Duration,
    pub logging: std::time::Duration,
}

/// An Outcome reporting `status` for transaction `id` (SubmitStream's per-message errors).
pub fn error_outcome(id: String, status: &Status) -> Outcome {
    Outcome {
        id,
        error: Some(pb::Error::from_status(status)),
        ..Default::default()
    }
}
