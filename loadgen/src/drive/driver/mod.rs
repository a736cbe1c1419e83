//! Drives load at the gateway.
//!
//! **Open loop** (`--rate`): transaction *i* is due at `start + i / rate`, whether or not
//! earlier ones have finished, and its latency is measured from that intended time. A stall
//! in the system under test therefore shows up in the latency of every transaction that
//! should have been sent during it (no coordinated omission). **Closed loop**
//! (`--concurrency`): N transactions outstanding at a time, latency from the actual send.
//!
//! Bounds on the generator itself: open-loop unary keeps at most `max_outstanding` calls in
//! flight (beyond it, sends wait — and the wait counts in latency); stream mode buffers at
//! most `stream_buffer` transactions per stream before a send blocks, and reports the time
//! sends spent blocked (the backpressure the gateway exerts).
//!
//! **Every sent transaction ends with an outcome or counts as `NO_OUTCOME`.** Each one waits
//! in one pending map until its outcome (or call status) removes it. A SubmitStream that ends
//! — OK, with an error status, or because the connection broke — leaves the transactions it
//! took without an outcome: they count as `NO_OUTCOME` and the stream's terminal status goes
//! into the report (`stream_ends`); so does a unary call whose connection broke mid-call. What is still pending when the run gives up waiting is
//! `NO_OUTCOME` too, and `hung` when its deadline has passed. So `sent == completed +
//! NO_OUTCOME`, and a gateway that drops work at shutdown cannot hide it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::{propagation, spans};
use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::{Outcome, Transaction};
use tonic::metadata::AsciiMetadataValue;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::drive::recorder::Recorder;
use crate::drive::spec::{CLIENT_ID_METADATA, LoadSpec, Mode};
use crate::drive::throttle::Throttle;
use crate::drive::traffic::Traffic;
use crate::report::{Report, RunInfo};

mod connect;
mod pacer;
mod pending;
mod stream;
#[cfg(test)]
mod tests;
mod timeline;
mod unary;

pub use connect::{READY_TIMEOUT, connect, wait_ready, wait_ready_at};
use pending::{Interval, Shared};
use stream::drive_stream;
use timeline::timeline;
use unary::drive_unary;

/// After the last send, how much longer than one transaction's deadline the run waits for
/// the remaining outcomes before it counts them as `NO_OUTCOME` (and hung).
pub const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Transactions handed from a connection's queue to its current SubmitStream ahead of the
/// HTTP/2 stream taking them: one, so a stream that ends loses at most one unsent message.
const STREAM_HANDOFF: usize = 1;
/// Backoff between attempts to reopen a SubmitStream that ended (`reopen_streams`):
/// doubling from the first to the second.
const REOPEN_BACKOFF: (Duration, Duration) = (Duration::from_millis(20), Duration::from_secs(1));

/// Mixed into `--seed` for the throttle's draws, so they are not the schedule's.
const THROTTLE_SEED: u64 = 0x7407_7713;

/// A send this much later than its due time counts as late (the generator fell behind).
pub const LATE: Duration = Duration::from_millis(5);

/// Runs `spec` and returns its report.
pub async fn run(spec: LoadSpec) -> anyhow::Result<Report> {
    run_with(spec, None).await
}

/// Runs `spec`, telling `started` the instant its timeline starts (timeline `t` counts from
/// there), and returns its report.
pub async fn run_with(
    spec: LoadSpec,
    started: Option<tokio::sync::oneshot::Sender<Instant>>,
) -> anyhow::Result<Report> {
    spec.validate()?;
    let client_id = match &spec.client_id {
        Some(id) => Some(
            id.parse::<AsciiMetadataValue>()
                .map_err(|_| anyhow::anyhow!("client id {id:?} is not valid metadata"))?,
        ),
        None => None,
    };
    let channels = connect(&spec.target, spec.connections, &spec.h2).await?;
    if spec.wait_ready {
        wait_ready(channels[0].clone()).await?;
    }
    let clients: Vec<_> = channels
        .into_iter()
        .map(|c| GatewayClient::new(c).max_decoding_message_size(spec.h2.max_message_size))
        .collect();
    let start = Instant::now();
    if let Some(started) = started {
        let _ = started.send(start);
    }
    let measure_from = start + spec.warmup;
    let end = measure_from + spec.duration;
    let profile = spec.pacing.arrivals(end.duration_since(start));
    let mut recorder = Recorder::default();
    if spec.priority_mix.is_some() {
        recorder = recorder.with_priorities();
    }
    if let Some(profile) = &profile {
        recorder = recorder.with_steps(profile.clone());
    }
    let shared = Arc::new(Shared {
        recorder: Mutex::new(recorder),
        pending: Mutex::default(),
        stream_ends: Mutex::default(),
        start,
        timeout: spec.timeout,
        outcomes: spec.outcomes.clone(),
        interval: Mutex::new(Interval::default()),
        timeline: Mutex::default(),
        measure_from,
        sent: AtomicU64::new(0),
        late: AtomicU64::new(0),
        scheduled: AtomicU64::new(0),
        client_id,
        throttle: spec.client_throttle.map(|k| Throttle::new(k, start)),
        throttled: AtomicU64::new(0),
        causal: spec.causal.then(Mutex::default),
    });
    let timeline = tokio::spawn(timeline(
        shared.clone(),
        start,
        spec.tick,
        profile.clone(),
        spec.progress,
        spec.metrics.clone(),
        spec.narrator.clone(),
    ));
    let traffic = Traffic::new(spec.id_prefix.clone(), spec.invalid_ratio, spec.seed)
        .with_priorities(spec.priority_mix);
    let probe = super::stalls::StallProbe::start(measure_from, end)
        .map_err(|e| anyhow::anyhow!("cannot start the stall probe thread: {e}"))?;
    match spec.mode {
        Mode::Unary => drive_unary(&spec, clients, traffic, shared.clone(), start, end).await,
        Mode::Stream => drive_stream(&spec, clients, traffic, shared.clone(), start, end).await?,
    }
    let stalls = probe.stop();
    shared.abandon_rest();
    timeline.abort();
    let timeline = std::mem::take(&mut *shared.timeline_points());
    let stream_ends = std::mem::take(&mut *shared.stream_ends.lock().expect("stream ends lock"));
    let measured = end
        .min(Instant::now())
        .saturating_duration_since(shared.measure_from);
    let recorder = shared.recorder.lock().expect("recorder lock");
    let (loop_kind, target_rate) = match &profile {
        Some(p) => (
            "open",
            Some(p.expected(p.total().as_secs_f64()) / p.total().as_secs_f64().max(1e-9)),
        ),
        None => ("closed", None),
    };
    let scheduled = profile
        .as_ref()
        .map(|_| shared.scheduled.load(Ordering::Relaxed));
    Ok(recorder.report(RunInfo {
        mode: spec.mode.name().into(),
        loop_kind: loop_kind.into(),
        target_rate,
        measured_seconds: measured.as_secs_f64(),
        sent: shared.sent.load(Ordering::Relaxed),
        timeline,
        scheduled,
        late: shared.late.load(Ordering::Relaxed),
        throttled: shared.throttled.load(Ordering::Relaxed),
        stream_ends,
        trace_links: spec.trace_links.clone(),
        stalls: Some(stalls),
    }))
}

/// Starts the transaction's root CLIENT span and writes its context into the transaction's
/// own carrier (W3C and B3), so every hop continues this trace.
fn traced(mut txn: Transaction, method: &'static str) -> (Transaction, tracing::Span) {
    let span = tracing::info_span!(
        parent: None,
        "client",
        otel.name = %format_args!("mesh.v1.Gateway/{method}"),
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "mesh.v1.Gateway",
        rpc.method = method,
        sluice.transaction.id = %txn.id,
    );
    propagation::inject_map(&span.context(), &mut txn.trace_context);
    (txn, span)
}

/// Names the run's client to the gateway (its per-client token bucket) on a call that
/// carries transactions: every Submit, every SubmitStream.
fn name_client<T>(request: &mut tonic::Request<T>, client_id: Option<&AsciiMetadataValue>) {
    if let Some(id) = client_id {
        request
            .metadata_mut()
            .insert(CLIENT_ID_METADATA, id.clone());
    }
}

/// Marks the client span with the transaction's result (it ends as it drops).
fn end_client_span(span: &tracing::Span, result: Result<&Outcome, &tonic::Status>) {
    let error = match result {
        Ok(o) => o.error.as_ref().map(|e| (e.code, e.message.as_str())),
        Err(s) => Some((s.code() as i32, s.message())),
    };
    spans::finish(span, error, "error");
}
