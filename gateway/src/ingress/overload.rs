//! The overload layer (`crate::overload` holds the mechanisms): per transaction, in order,
//!
//! 0. the priority the transaction may claim (`--priority-policy`: CRITICAL from a client
//!    not granted it is taken as DEFAULT);
//! 1. the degradation level: it is a span attribute; level 1+ skips notification for all
//!    but CRITICAL; level 2+ refuses SHEDDABLE (RESOURCE_EXHAUSTED, reason `degraded`);
//!    level 3 refuses unary writes (UNAVAILABLE with pushback); then its audit partition's
//!    own level, which refuses that partition's SHEDDABLE at 2 and all of its transactions
//!    at 3 (reason `partition_degraded`);
//! 2. the client's token bucket, when `--client-rate` is set: a unary call over its rate is
//!    refused RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms` = the time until its next
//!    token (reason `client_rate`); a stream message waits for the token instead — the
//!    stream is paced, and its client's window fills;
//! 3. the concurrency limit, at the transaction's priority share: unary takes a slot or is
//!    refused (reason `concurrency_limit`); a stream message waits for one, within its
//!    deadline. The slot is held until the outcome, whose latency feeds the adaptive limit;
//!    then the partition's share of the limit (reason `partition_share`), so transactions
//!    stuck on one partition cannot hold every slot.
//!
//! A stream message refused here lets its reader read on (`release_reader`), as every
//! refusal does.

use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use sluice_proto::pb::{Outcome, Priority};
use tower::{Layer, Service};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::refusal::{Reason, Refusal};
use super::request::{Api, CLIENT_ID, TxnRequest};
use crate::overload::Overload;
use crate::overload::limit::LimitPermit;

#[derive(Clone)]
pub(crate) struct OverloadLayer {
    pub(crate) overload: Overload,
    pub(crate) pushback: Duration,
}

impl<S> Layer<S> for OverloadLayer {
    type Service = Overloaded<S>;
    fn layer(&self, inner: S) -> Overloaded<S> {
        Overloaded {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Overloaded<S> {
    inner: S,
    layer: OverloadLayer,
}

impl<S> Service<TxnRequest> for Overloaded<S>
where
    S: Service<TxnRequest, Response = Outcome, Error = Refusal> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Refusal;
    type Future = BoxFuture<'static, Result<Outcome, Refusal>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: TxnRequest) -> Self::Future {
        // The ready inner service goes with this call; a clone stays for the next (the
        // dispatch service below is always ready).
        let inner = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, inner);
        Box::pin(admit(self.layer.clone(), inner, request))
    }
}

async fn admit<S>(
    layer: OverloadLayer,
    mut inner: S,
    mut request: TxnRequest,
) -> Result<Outcome, Refusal>
where
    S: Service<TxnRequest, Response = Outcome, Error = Refusal>,
{
    let api = request.api();
    let claimed = Priority::try_from(request.txn.priority).unwrap_or(Priority::Default);
    let priority = layer.overload.priority(request.client.as_deref(), claimed);
    if priority != claimed {
        request.txn.priority = priority as i32;
        request.span.set_attribute("sluice.priority_demoted", true);
    }
    let refuse = |request: &mut TxnRequest, refusal: Refusal| {
        request.release_reader();
        Err(refusal)
    };
    let level = layer.overload.level();
    request
        .span
        .set_attribute("sluice.degradation_level", i64::from(level));
    request.notify = level < 1 || priority == Priority::Critical;
    if level >= 3 && api == Api::Unary {
        let refusal = Refusal::degraded(
            level,
            "gateway degraded (level 3): writes refused until latency recovers",
        );
        return refuse(&mut request, refusal.pushback(layer.pushback));
    }
    if level >= 2 && priority == Priority::Sheddable {
        let refusal = Refusal::degraded(
            2,
            format!("gateway degraded (level {level}): SHEDDABLE transactions refused"),
        );
        return refuse(&mut request, refusal.pushback(layer.pushback));
    }
    let partition = layer.overload.partition_of(&request.txn.id);
    request.partition = partition;
    let partition_level = layer.overload.partition_level(partition);
    // As the gateway's own level: 3 refuses unary writes, 2 SHEDDABLE. A stream is held by
    // its backpressure instead (the partition's share below makes it wait).
    if (partition_level >= 3 && api == Api::Unary)
        || (partition_level >= 2 && priority == Priority::Sheddable)
    {
        let refusal = Refusal::new(
            Reason::PartitionDegraded,
            format!(
                "audit partition {partition} degraded (level {partition_level}): its {}transactions refused until it recovers; other partitions are served",
                if partition_level >= 3 {
                    "unary "
                } else {
                    "SHEDDABLE "
                }
            ),
        );
        return refuse(&mut request, refusal.pushback(layer.pushback));
    }
    if let Some(clients) = layer.overload.clients() {
        let Some(client) = request.client.clone() else {
            let refusal = Refusal::new(
                Reason::InvalidArgument,
                format!(
                    "{CLIENT_ID}: must be 1-{} visible ASCII characters",
                    crate::overload::clients::MAX_CLIENT_ID
                ),
            );
            return refuse(&mut request, refusal);
        };
        while let Err(wait) = clients.check(&client) {
            if api == Api::Unary {
                let rate = clients.rate();
                let refusal = Refusal::new(
                    Reason::ClientRate,
                    format!(
                        "client {client} over its rate ({}/s, burst {})",
                        rate.rate, rate.burst
                    ),
                )
                // Rounded up: retrying at the pushback finds the token there.
                .pushback(Duration::from_millis(
                    wait.as_nanos().div_ceil(1_000_000) as u64,
                ));
                return refuse(&mut request, refusal);
            }
            if Instant::now() + wait >= request.deadline {
                let refusal = Refusal::new(
                    Reason::Deadline,
                    "deadline passed waiting for the client's rate",
                );
                return refuse(&mut request, refusal);
            }
            tokio::time::sleep(wait).await;
        }
    }
    let limiter = layer.overload.limiter();
    let permit: LimitPermit = match api {
        Api::Unary => match limiter.try_acquire(priority) {
            Some(p) => p,
            None => {
                let refusal = Refusal::new(
                    Reason::ConcurrencyLimit,
                    format!(
                        "gateway at its concurrency limit ({} in flight, {:?} share {})",
                        limiter.inflight(),
                        priority,
                        limiter.ceiling(priority)
                    ),
                );
                return refuse(&mut request, refusal.pushback(layer.pushback));
            }
        },
        Api::Stream => {
            match tokio::time::timeout_at(request.deadline.into(), limiter.acquire(priority)).await
            {
                Ok(p) => p,
                Err(_) => {
                    let refusal = Refusal::new(
                        Reason::Deadline,
                        "deadline passed waiting for the concurrency limit",
                    );
                    return refuse(&mut request, refusal);
                }
            }
        }
    };
    // The partition's share: unary is refused beyond it, a stream message waits (its
    // stream's backpressure), within its deadline.
    let held = loop {
        let freed = layer.overload.partition_freed(partition);
        let mut freed = std::pin::pin!(freed);
        // Registered before the look, so a release in between is not missed.
        freed.as_mut().enable();
        match layer.overload.hold_partition(partition) {
            Ok(held) => break held,
            Err(share) if api == Api::Unary => {
                let refusal = Refusal::new(
                    Reason::PartitionShare,
                    format!(
                        "audit partition {partition} holds its share of the concurrency limit ({share}): its transactions wait on it; retry later"
                    ),
                );
                return refuse(&mut request, refusal.pushback(layer.pushback));
            }
            Err(_) => {
                if tokio::time::timeout_at(request.deadline.into(), freed)
                    .await
                    .is_err()
                {
                    let refusal = Refusal::new(
                        Reason::Deadline,
                        format!(
                            "deadline passed waiting for audit partition {partition}'s share of the limit"
                        ),
                    );
                    return refuse(&mut request, refusal);
                }
            }
        }
    };
    // A unary call's time starts when hyper accepted it (early admission): a runtime that
    // falls behind shows as latency. A stream message's starts once it has a slot: its wait
    // for one is the stream's backpressure working.
    let admitted = match api {
        Api::Unary => request.arrived,
        Api::Stream => Instant::now(),
    };
    let result = inner.call(request).await;
    // Quick refusals below (a full queue, no live stream) say nothing about latency.
    let counts = match &result {
        Ok(_) => true,
        Err(s) => s.code() == tonic::Code::DeadlineExceeded,
    };
    if counts && layer.overload.limit_learns_from(partition) {
        limiter.record(admitted.elapsed());
    }
    if result.is_ok() {
        held.progressed();
    }
    drop(held);
    drop(permit);
    result
}
