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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::{Outcome, Transaction};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::report::{Recorder, Report, RunInfo};
use crate::traffic::Traffic;

/// Default most unary calls in flight in open loop.
pub const DEFAULT_MAX_OUTSTANDING: usize = 20_000;
/// Default transactions buffered per stream before a send blocks.
pub const DEFAULT_STREAM_BUFFER: usize = 16;

/// Which gateway API to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `Submit`, one call per transaction.
    Unary,
    /// `SubmitStream`, one long-lived stream per connection.
    Stream,
}

/// How sends are paced.
#[derive(Debug, Clone, Copy)]
pub enum Pacing {
    /// Fixed schedule at `rate` transactions per second.
    Open { rate: f64 },
    /// `concurrency` transactions outstanding at a time.
    Closed { concurrency: usize },
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub target: String,
    pub mode: Mode,
    pub pacing: Pacing,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub invalid_ratio: f64,
    pub max_outstanding: usize,
    pub stream_buffer: usize,
    /// Deadline of each transaction (sent as grpc-timeout on unary calls).
    pub timeout: Duration,
    /// Print a progress line every second on stderr.
    pub progress: bool,
    pub seed: u64,
    /// Prefix of generated transaction ids (unique per run by default).
    pub id_prefix: String,
    /// Wait for the gateway to report ready before sending.
    pub wait_ready: bool,
}

/// How long [`wait_ready`] waits for the gateway to report `mesh.v1.Gateway` SERVING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Waits until the gateway's health service reports `mesh.v1.Gateway` SERVING (its
/// required downstreams have live streams), watching the health stream.
pub async fn wait_ready(channel: Channel) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut health = HealthClient::new(channel);
    let watch = async {
        let mut updates = health
            .watch(HealthCheckRequest {
                service: "mesh.v1.Gateway".into(),
            })
            .await?
            .into_inner();
        while let Some(update) = updates.message().await? {
            if update.status == ServingStatus::Serving as i32 {
                return Ok(());
            }
        }
        anyhow::bail!("the gateway's health stream ended before it was ready")
    };
    tokio::time::timeout(READY_TIMEOUT, watch)
        .await
        .map_err(|_| anyhow::anyhow!("the gateway did not become ready within {READY_TIMEOUT:?}: are risk and logging running and reachable from it?"))?
}

/// Connects `n` channels to the gateway, failing with a message that says what to do.
pub async fn connect(target: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint = Endpoint::from_shared(target.to_string())
        .with_context(|| format!("--target {target:?} is not a URL; expected http://host:port"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true);
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot connect to the gateway at {target}: is it running? (start the mesh, or try `sluice-loadgen demo`)"))?;
        clients.push(channel);
    }
    Ok(clients)
}

struct Shared {
    recorder: Mutex<Recorder>,
    measure_from: Instant,
    sent: AtomicU64,
}

impl Shared {
    fn record(&self, intended: Instant, result: Result<&Outcome, &tonic::Status>) {
        if intended < self.measure_from {
            return; // warmup
        }
        let latency = intended.elapsed();
        self.recorder
            .lock()
            .expect("recorder lock")
            .record(result, latency);
    }
}

/// Runs `spec` and returns its report.
pub async fn run(spec: LoadSpec) -> anyhow::Result<Report> {
    let channels = connect(&spec.target, spec.connections).await?;
    if spec.wait_ready {
        wait_ready(channels[0].clone()).await?;
    }
    let clients: Vec<_> = channels.into_iter().map(GatewayClient::new).collect();
    let start = Instant::now();
    let shared = Arc::new(Shared {
        recorder: Mutex::new(Recorder::default()),
        measure_from: start + spec.warmup,
        sent: AtomicU64::new(0),
    });
    let end = shared.measure_from + spec.duration;
    let progress = spec
        .progress
        .then(|| tokio::spawn(progress_lines(shared.clone(), start)));
    let traffic = Traffic::new(spec.id_prefix.clone(), spec.invalid_ratio, spec.seed);
    match spec.mode {
        Mode::Unary => drive_unary(&spec, clients, traffic, shared.clone(), start, end).await,
        Mode::Stream => drive_stream(&spec, clients, traffic, shared.clone(), start, end).await?,
    }
    if let Some(p) = progress {
        p.abort();
    }
    let measured = end
        .min(Instant::now())
        .saturating_duration_since(shared.measure_from);
    let recorder = shared.recorder.lock().expect("recorder lock");
    let (loop_kind, target_rate) = match spec.pacing {
        Pacing::Open { rate } => ("open", Some(rate)),
        Pacing::Closed { .. } => ("closed", None),
    };
    Ok(recorder.report(RunInfo {
        mode: match spec.mode {
            Mode::Unary => "unary".into(),
            Mode::Stream => "stream".into(),
        },
        loop_kind: loop_kind.into(),
        target_rate,
        measured_seconds: measured.as_secs_f64(),
        sent: shared.sent.load(Ordering::Relaxed),
    }))
}

async fn progress_lines(shared: Arc<Shared>, start: Instant) {
    let mut tick = tokio::time::interval_at(
        (start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    loop {
        tick.tick().await;
        let r = shared.recorder.lock().expect("recorder lock");
        eprintln!(
            "[{:>4.0}s] sent {:>8}  done {:>8}  ok {:>8}  errors {:>6}  p50 {:>7.2} ms  p99 {:>7.2} ms",
            start.elapsed().as_secs_f64(),
            shared.sent.load(Ordering::Relaxed),
            r.count(),
            r.ok,
            r.error_count(),
            r.quantile(0.5).as_secs_f64() * 1000.0,
            r.quantile(0.99).as_secs_f64() * 1000.0,
        );
    }
}

/// The send schedule: yields each transaction's intended send time, or `None` when the
/// run is over. Open loop waits for the due time; closed loop for a free slot.
struct Schedule {
    pacing: Pacing,
    start: Instant,
    end: Instant,
    index: u64,
    slots: Arc<Semaphore>,
}

impl Schedule {
    fn new(pacing: Pacing, start: Instant, end: Instant, open_bound: usize) -> Self {
        let slots = match pacing {
            Pacing::Open { .. } => open_bound,
            Pacing::Closed { concurrency } => concurrency,
        };
        Self {
            pacing,
            start,
            end,
            index: 0,
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// Waits until the next send is due; returns its intended time and its slot.
    async fn next(&mut self) -> Option<(Instant, tokio::sync::OwnedSemaphorePermit)> {
        match self.pacing {
            Pacing::Open { rate } => {
                let due = self.start + Duration::from_secs_f64(self.index as f64 / rate);
                if due >= self.end {
                    return None;
                }
                self.index += 1;
                tokio::time::sleep_until(due.into()).await;
                let slot =
                    tokio::time::timeout_at(self.end.into(), self.slots.clone().acquire_owned())
                        .await
                        .ok()?
                        .ok()?;
                Some((due, slot))
            }
            Pacing::Closed { .. } => {
                let slot =
                    tokio::time::timeout_at(self.end.into(), self.slots.clone().acquire_owned())
                        .await
                        .ok()?
                        .ok()?;
                let now = Instant::now();
                (now < self.end).then_some((now, slot))
            }
        }
    }
}

async fn drive_unary(
    spec: &LoadSpec,
    clients: Vec<GatewayClient<Channel>>,
    mut traffic: Traffic,
    shared: Arc<Shared>,
    start: Instant,
    end: Instant,
) {
    let mut schedule = Schedule::new(spec.pacing, start, end, spec.max_outstanding);
    let mut tasks = JoinSet::new();
    let mut n = 0usize;
    while let Some((intended, slot)) = schedule.next().await {
        while tasks.try_join_next().is_some() {}
        let (txn, _) = traffic.next_transaction();
        let mut client = clients[n % clients.len()].clone();
        n += 1;
        let shared = shared.clone();
        let timeout = spec.timeout;
        shared.sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let mut request = tonic::Request::new(txn);
            request.set_timeout(timeout);
            match client.submit(request).await {
                Ok(response) => shared.record(intended, Ok(response.get_ref())),
                Err(status) => shared.record(intended, Err(&status)),
            }
            drop(slot);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Outstanding stream sends: id → (intended time, slot).
type Outstanding = Arc<Mutex<HashMap<String, (Instant, tokio::sync::OwnedSemaphorePermit)>>>;

async fn drive_stream(
    spec: &LoadSpec,
    clients: Vec<GatewayClient<Channel>>,
    mut traffic: Traffic,
    shared: Arc<Shared>,
    start: Instant,
    end: Instant,
) -> anyhow::Result<()> {
    let mut senders = Vec::new();
    let mut receivers = JoinSet::new();
    for mut client in clients {
        let (tx, rx) = mpsc::channel::<Transaction>(spec.stream_buffer.max(1));
        let mut responses = client
            .submit_stream(ReceiverStream::new(rx))
            .await
            .context("cannot open SubmitStream")?
            .into_inner();
        let outstanding: Outstanding = Arc::default();
        senders.push((tx, outstanding.clone()));
        let shared = shared.clone();
        receivers.spawn(async move {
            loop {
                match responses.message().await {
                    Ok(Some(outcome)) => {
                        let entry = outstanding
                            .lock()
                            .expect("outstanding lock")
                            .remove(&outcome.id);
                        if let Some((intended, _slot)) = entry {
                            shared.record(intended, Ok(&outcome));
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        // The stream broke: everything outstanding on it failed with it.
                        let lost: Vec<_> = outstanding
                            .lock()
                            .expect("outstanding lock")
                            .drain()
                            .collect();
                        for (_, (intended, _slot)) in lost {
                            shared.record(intended, Err(&status));
                        }
                        break;
                    }
                }
            }
        });
    }
    let mut schedule = Schedule::new(spec.pacing, start, end, spec.max_outstanding);
    let mut n = 0usize;
    let mut blocked = Duration::ZERO;
    while let Some((intended, slot)) = schedule.next().await {
        let (txn, _) = traffic.next_transaction();
        let (tx, outstanding) = &senders[n % senders.len()];
        n += 1;
        outstanding
            .lock()
            .expect("outstanding lock")
            .insert(txn.id.clone(), (intended, slot));
        let before = Instant::now();
        // Blocks while the stream's buffer is full: the gateway is pushing back.
        if tx.send(txn).await.is_err() {
            break;
        }
        blocked += before.elapsed();
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
    shared.recorder.lock().expect("recorder lock").blocked = blocked;
    // Half-close every stream; the gateway returns the remaining outcomes, then ends OK.
    drop(senders);
    let drained = tokio::time::timeout(spec.timeout + Duration::from_secs(5), async {
        while receivers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some outcomes never arrived before the drain timeout");
    }
    Ok(())
}
