//! Unary mode: one `Submit` per transaction, at most `max_outstanding` in flight.

use std::sync::Arc;
use std::time::Instant;

use sluice_core::propagation;
use sluice_proto::pb::gateway_client::GatewayClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::drive::spec::LoadSpec;
use crate::drive::traffic::Traffic;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::pacer::Schedule;
use super::pending::Shared;
use super::traced;
use super::{DRAIN_GRACE, THROTTLE_SEED, name_client};

pub(super) async fn drive_unary(
    spec: &LoadSpec,
    clients: Vec<GatewayClient<Channel>>,
    mut traffic: Traffic,
    shared: Arc<Shared>,
    start: Instant,
    end: Instant,
) {
    let mut schedule = Schedule::new(&spec.pacing, start, end, spec.max_outstanding, spec.seed);
    let mut tasks = JoinSet::new();
    let mut n = 0usize;
    let mut rng = SmallRng::seed_from_u64(spec.seed ^ THROTTLE_SEED);
    while let Some((intended, slot)) = schedule.next(&shared).await {
        while tasks.try_join_next().is_some() {}
        if let Some(throttle) = &shared.throttle
            && !throttle.admit(Instant::now(), &mut rng)
        {
            // Refused here, before it costs anything: no transaction, no call.
            shared.throttled_one();
            drop(slot);
            continue;
        }
        let (mut txn, span) = traced(traffic.next_transaction().0, "Submit");
        shared.chain(&mut txn);
        let mut client = clients[n % clients.len()].clone();
        n += 1;
        let shared = shared.clone();
        let timeout = spec.timeout;
        let id = txn.id.clone();
        let mut request = tonic::Request::new(txn);
        request.set_timeout(timeout);
        propagation::inject_metadata(&span.context(), request.metadata_mut());
        name_client(&mut request, shared.client_id.as_ref());
        shared.begin(request.get_ref(), intended, slot, span);
        shared.sent_one();
        tasks.spawn(async move {
            match client.submit(request).await {
                Ok(response) => {
                    shared.throttle_answered(Ok(response.get_ref()));
                    shared.finish(&id, Ok(response.get_ref()))
                }
                Err(status) if lost_in_transit(&status) => {
                    shared.abandon(&id, &format!("connection lost: {status}"), false)
                }
                Err(status) => {
                    shared.throttle_answered(Err(&status));
                    shared.finish(&id, Err(&status))
                }
            };
        });
    }
    // The channel enforces each call's grpc-timeout, so this bound only matters if that fails.
    let drained = tokio::time::timeout(spec.timeout + DRAIN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tasks.shutdown().await;
    }
}

/// Whether a unary call's error status was made up by the client's transport because the
/// connection broke mid-call: the gateway may have done the work, but nobody answered, so
/// it is NO_OUTCOME. A status the gateway sent has no source; a deadline the client enforced
/// (`TimeoutExpired`) or a connection that never opened (`ConnectError`) are answers.
pub(super) fn lost_in_transit(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    if source.is_none() {
        return false;
    }
    while let Some(err) = source {
        if err.is::<tonic::TimeoutExpired>() || err.is::<tonic::ConnectError>() {
            return false;
        }
        source = err.source();
    }
    true
}
