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

use anyhow::Context as _;
use hdrhistogram::Histogram;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use sluice_core::{propagation, spans};
use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::{Outcome, Transaction};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::report::{Recorder, Report, RunInfo, TimelinePoint};
use crate::schedule::{ArrivalKind, Arrivals};
use crate::traffic::Traffic;
use rand::SeedableRng;
use rand::rngs::SmallRng;

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
#[derive(Debug, Clone)]
pub enum Pacing {
    /// Fixed schedule at `rate` transactions per second.
    Open { rate: f64 },
    /// Open loop over a rate profile (steps, ramps; constant or Poisson arrivals). The run
    /// lasts the profile's length.
    Shaped(Arc<Arrivals>),
    /// `concurrency` transactions outstanding at a time.
    Closed { concurrency: usize },
}

impl Pacing {
    /// The open-loop arrival profile over `duration`, if open loop.
    fn arrivals(&self, duration: Duration) -> Option<Arc<Arrivals>> {
        match self {
            Pacing::Open { rate } => Some(Arc::new(Arrivals::constant(
                ArrivalKind::Constant,
                *rate,
                duration,
            ))),
            Pacing::Shaped(a) => Some(a.clone()),
            Pacing::Closed { .. } => None,
        }
    }
}

/// A send this much later than its due time counts as late (the generator fell behind).
pub const LATE: Duration = Duration::from_millis(5);

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
    /// HTTP/2 settings of the generator's connections (its receive windows bound the
    /// outcomes the gateway may send ahead of the generator reading them).
    pub h2: sluice_core::h2::H2Settings,
    /// Length of one timeline interval (1 s for people; finer for benchmarks).
    pub tick: Duration,
    /// The gateway's admin address, to show its queue depths in the timeline.
    pub metrics: Option<std::net::SocketAddr>,
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
pub async fn connect(
    target: &str,
    n: usize,
    h2: &sluice_core::h2::H2Settings,
) -> anyhow::Result<Vec<Channel>> {
    let endpoint =
        h2.endpoint(Endpoint::from_shared(target.to_string()).with_context(|| {
            format!("--target {target:?} is not a URL; expected http://host:port")
        })?);
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
    interval: Mutex<Interval>,
    timeline: Mutex<Vec<TimelinePoint>>,
    measure_from: Instant,
    sent: AtomicU64,
    /// Sends that went out more than [`LATE`] after their due time.
    late: AtomicU64,
    /// Open loop: arrivals the schedule produced before the run's end.
    scheduled: AtomicU64,
}

/// What happened during the current second of the timeline.
struct Interval {
    sent: u64,
    done: u64,
    ok: u64,
    rejected: u64,
    errors: u64,
    blocked: Duration,
    /// Set while a send is blocked; the timeline splits a long block across seconds.
    blocked_since: Option<Instant>,
    latency: Histogram<u64>,
}

impl Default for Interval {
    fn default() -> Self {
        Self {
            sent: 0,
            done: 0,
            ok: 0,
            rejected: 0,
            errors: 0,
            blocked: Duration::ZERO,
            blocked_since: None,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("valid histogram bounds"),
        }
    }
}

impl Shared {
    fn timeline_points(&self) -> std::sync::MutexGuard<'_, Vec<TimelinePoint>> {
        self.timeline.lock().expect("timeline lock")
    }

    fn record(&self, intended: Instant, result: Result<&Outcome, &tonic::Status>) {
        let latency = intended.elapsed();
        {
            let mut i = self.interval.lock().expect("interval lock");
            i.done += 1;
            let _ = i.latency.record((latency.as_micros() as u64).max(1));
            let code = match result {
                Ok(o) => o.error.as_ref().map(|e| tonic::Code::from_i32(e.code)),
                Err(s) => Some(s.code()),
            };
            match code {
                None => i.ok += 1,
                Some(tonic::Code::ResourceExhausted) => i.rejected += 1,
                Some(_) => i.errors += 1,
            }
        }
        if intended < self.measure_from {
            return; // warmup
        }
        self.recorder
            .lock()
            .expect("recorder lock")
            .record(result, latency);
    }

    fn sent_one(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.interval.lock().expect("interval lock").sent += 1;
    }

    /// A send starts waiting (for stream room or an outstanding slot).
    fn block_start(&self) -> Instant {
        let now = Instant::now();
        self.interval.lock().expect("interval lock").blocked_since = Some(now);
        now
    }

    /// The send that started waiting at `since` goes out.
    fn block_end(&self, since: Instant) {
        let now = Instant::now();
        {
            let mut i = self.interval.lock().expect("interval lock");
            if let Some(from) = i.blocked_since.take() {
                i.blocked += now.duration_since(from);
            }
        }
        self.recorder.lock().expect("recorder lock").blocked += now.duration_since(since);
    }
}

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
    let shared = Arc::new(Shared {
        recorder: Mutex::new(Recorder::default()),
        interval: Mutex::new(Interval::default()),
        timeline: Mutex::default(),
        measure_from: start + spec.warmup,
        sent: AtomicU64::new(0),
        late: AtomicU64::new(0),
        scheduled: AtomicU64::new(0),
    });
    let end = shared.measure_from + spec.duration;
    let profile = spec.pacing.arrivals(end.duration_since(start));
    let timeline = tokio::spawn(timeline(
        shared.clone(),
        start,
        spec.tick,
        profile.clone(),
        spec.progress,
        spec.metrics,
    ));
    let traffic = Traffic::new(spec.id_prefix.clone(), spec.invalid_ratio, spec.seed);
    match spec.mode {
        Mode::Unary => drive_unary(&spec, clients, traffic, shared.clone(), start, end).await,
        Mode::Stream => drive_stream(&spec, clients, traffic, shared.clone(), start, end).await?,
    }
    timeline.abort();
    let timeline = std::mem::take(&mut *shared.timeline_points());
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
        mode: match spec.mode {
            Mode::Unary => "unary".into(),
            Mode::Stream => "stream".into(),
        },
        loop_kind: loop_kind.into(),
        target_rate,
        measured_seconds: measured.as_secs_f64(),
        sent: shared.sent.load(Ordering::Relaxed),
        timeline,
        scheduled,
        late: shared.late.load(Ordering::Relaxed),
    }))
}

/// Every `every`: closes the current interval into a timeline point, printing it when asked.
async fn timeline(
    shared: Arc<Shared>,
    start: Instant,
    every: Duration,
    offered: Option<Arc<Arrivals>>,
    print: bool,
    metrics: Option<std::net::SocketAddr>,
) {
    let mut live = LiveView::new();
    let mut tick = tokio::time::interval_at((start + every).into(), every);
    let mut last = start;
    if print && !live.tty {
        eprintln!("{}", TimelinePoint::HEADER);
    }
    loop {
        tick.tick().await;
        let now = Instant::now();
        let span = now.duration_since(last).as_secs_f64().max(1e-9);
        last = now;
        let i = {
            let mut current = shared.interval.lock().expect("interval lock");
            let mut closed = std::mem::take(&mut *current);
            // A block still going on: this second's share closes here, the rest carries on.
            if let Some(from) = closed.blocked_since.take() {
                closed.blocked += now.duration_since(from);
                current.blocked_since = Some(now);
            }
            closed
        };
        let point = TimelinePoint {
            t: now.duration_since(start).as_secs_f64(),
            offered: offered.as_ref().map_or(i.sent as f64 / span, |a| {
                (a.expected(now.duration_since(start).as_secs_f64())
                    - a.expected(now.duration_since(start).as_secs_f64() - span))
                    / span
            }),
            sent: i.sent as f64 / span,
            done: i.done as f64 / span,
            ok: i.ok as f64 / span,
            rejected: i.rejected as f64 / span,
            errors: i.errors as f64 / span,
            blocked_pct: 100.0 * i.blocked.as_secs_f64() / span,
            p50_ms: if i.latency.is_empty() {
                0.0
            } else {
                i.latency.value_at_quantile(0.5) as f64 / 1000.0
            },
            p99_ms: if i.latency.is_empty() {
                0.0
            } else {
                i.latency.value_at_quantile(0.99) as f64 / 1000.0
            },
            queues: match metrics {
                Some(addr) => crate::scrape::samples(addr).await.map(|m| {
                    ["risk", "logging", "notification"].map(|d| {
                        m.get(&format!(
                            "sluice_gateway_downstream_queue_depth{{downstream=\"{d}\"}}"
                        ))
                        .copied()
                        .unwrap_or(0.0)
                    })
                }),
                None => None,
            },
        };
        if print {
            live.show(&point);
        }
        shared.timeline_points().push(point);
    }
}

/// The send schedule: yields each transaction's intended send time, or `None` when the
/// run is over. Open loop waits for the due time; closed loop for a free slot.
struct Schedule {
    /// Open loop: the profile and the offset (s) of the last arrival; closed loop: `None`.
    arrivals: Option<(Arc<Arrivals>, f64, SmallRng)>,
    start: Instant,
    end: Instant,
    slots: Arc<Semaphore>,
}

impl Schedule {
    fn new(pacing: &Pacing, start: Instant, end: Instant, open_bound: usize, seed: u64) -> Self {
        let slots = match pacing {
            Pacing::Closed { concurrency } => *concurrency,
            _ => open_bound,
        };
        let arrivals = pacing
            .arrivals(end.duration_since(start))
            .map(|a| (a, -1.0, SmallRng::seed_from_u64(seed ^ 0x5eed)));
        Self {
            arrivals,
            start,
            end,
            slots: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// Waits until the next send is due; returns its intended time and its slot. In open
    /// loop, time spent waiting for a slot past the due time counts as blocked.
    async fn next(
        &mut self,
        shared: &Shared,
    ) -> Option<(Instant, tokio::sync::OwnedSemaphorePermit)> {
        match &mut self.arrivals {
            Some((arrivals, t, rng)) => {
                // The first arrival is at 0.
                let next = if *t < 0.0 {
                    0.0
                } else {
                    arrivals.next_after(*t, rng)?
                };
                *t = next;
                let due = self.start + Duration::from_secs_f64(next);
                if due >= self.end {
                    return None;
                }
                shared.scheduled.fetch_add(1, Ordering::Relaxed);
                // A generator that fell behind stops at the end too: what it could not send
                // shows as sent < scheduled, not as a run that overstays its duration.
                if Instant::now() >= self.end {
                    let horizon = self.end.duration_since(self.start).as_secs_f64();
                    let mut at = next;
                    while let Some(n) = arrivals.next_after(at, rng).filter(|n| *n < horizon) {
                        shared.scheduled.fetch_add(1, Ordering::Relaxed);
                        at = n;
                    }
                    return None;
                }
                tokio::time::sleep_until(due.into()).await;
                if due.elapsed() > LATE {
                    shared.late.fetch_add(1, Ordering::Relaxed);
                }
                let slot = match self.slots.clone().try_acquire_owned() {
                    Ok(slot) => slot,
                    Err(_) => {
                        let waiting = shared.block_start();
                        let slot = tokio::time::timeout_at(
                            self.end.into(),
                            self.slots.clone().acquire_owned(),
                        )
                        .await;
                        shared.block_end(waiting);
                        slot.ok()?.ok()?
                    }
                };
                Some((due, slot))
            }
            None => {
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
    let mut schedule = Schedule::new(&spec.pacing, start, end, spec.max_outstanding, spec.seed);
    let mut tasks = JoinSet::new();
    let mut n = 0usize;
    while let Some((intended, slot)) = schedule.next(&shared).await {
        while tasks.try_join_next().is_some() {}
        let (txn, _) = traffic.next_transaction();
        let mut client = clients[n % clients.len()].clone();
        n += 1;
        let shared = shared.clone();
        let timeout = spec.timeout;
        shared.sent_one();
        tasks.spawn(async move {
            let (txn, cx) = traced(txn, "Submit");
            let mut request = tonic::Request::new(txn);
            request.set_timeout(timeout);
            propagation::inject_metadata(&cx, request.metadata_mut());
            match client.submit(request).await {
                Ok(response) => {
                    end_client_span(&cx, Ok(response.get_ref()));
                    shared.record(intended, Ok(response.get_ref()));
                }
                Err(status) => {
                    end_client_span(&cx, Err(&status));
                    shared.record(intended, Err(&status));
                }
            }
            drop(slot);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Outstanding stream sends: id → (intended time, slot, client span).
type Outstanding =
    Arc<Mutex<HashMap<String, (Instant, tokio::sync::OwnedSemaphorePermit, Context)>>>;

/// Starts the transaction's root CLIENT span and writes its context into the transaction's
/// own carrier (W3C and B3), so every hop continues this trace.
fn traced(mut txn: Transaction, method: &'static str) -> (Transaction, Context) {
    let tracer = spans::tracer();
    let mut attributes = spans::rpc("mesh.v1.Gateway", method);
    attributes.push(KeyValue::new("sluice.transaction.id", txn.id.clone()));
    let span = tracer
        .span_builder(format!("mesh.v1.Gateway/{method}"))
        .with_kind(SpanKind::Client)
        .with_attributes(attributes)
        .start_with_context(&tracer, &Context::new());
    let cx = Context::new().with_span(span);
    propagation::inject_map(&cx, &mut txn.trace_context);
    (txn, cx)
}

fn end_client_span(cx: &Context, result: Result<&Outcome, &tonic::Status>) {
    let error = match result {
        Ok(o) => o.error.as_ref().map(|e| (e.code, e.message.as_str())),
        Err(s) => Some((s.code() as i32, s.message())),
    };
    match error {
        Some((code, message)) => spans::fail(cx, "error", code, message),
        None => spans::ok(cx),
    }
    cx.span().end();
}

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
        // The stream's own span, in its metadata; each message carries its own trace.
        let tracer = spans::tracer();
        let stream_span = tracer
            .span_builder("mesh.v1.Gateway/SubmitStream stream")
            .with_kind(SpanKind::Client)
            .with_attributes(spans::rpc("mesh.v1.Gateway", "SubmitStream"))
            .start_with_context(&tracer, &Context::new());
        let stream_cx = Context::new().with_span(stream_span);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        propagation::inject_metadata(&stream_cx, request.metadata_mut());
        let mut responses = client
            .submit_stream(request)
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
                        if let Some((intended, _slot, cx)) = entry {
                            end_client_span(&cx, Ok(&outcome));
                            shared.record(intended, Ok(&outcome));
                        }
                    }
                    Ok(None) => {
                        stream_cx.span().end();
                        break;
                    }
                    Err(status) => {
                        spans::fail(
                            &stream_cx,
                            "stream_broke",
                            status.code() as i32,
                            status.message(),
                        );
                        stream_cx.span().end();
                        // The stream broke: everything outstanding on it failed with it.
                        let lost: Vec<_> = outstanding
                            .lock()
                            .expect("outstanding lock")
                            .drain()
                            .collect();
                        for (_, (intended, _slot, cx)) in lost {
                            end_client_span(&cx, Err(&status));
                            shared.record(intended, Err(&status));
                        }
                        break;
                    }
                }
            }
        });
    }
    let mut schedule = Schedule::new(&spec.pacing, start, end, spec.max_outstanding, spec.seed);
    let mut n = 0usize;
    while let Some((intended, slot)) = schedule.next(&shared).await {
        let (txn, cx) = traced(traffic.next_transaction().0, "SubmitStream");
        let (tx, outstanding) = &senders[n % senders.len()];
        n += 1;
        outstanding
            .lock()
            .expect("outstanding lock")
            .insert(txn.id.clone(), (intended, slot, cx));
        // Blocks while the stream's buffer is full: the gateway is pushing back.
        match tx.try_send(txn) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(txn)) => {
                let waiting = shared.block_start();
                let sent = tx.send(txn).await;
                shared.block_end(waiting);
                if sent.is_err() {
                    break;
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
        shared.sent_one();
    }
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

/// Progress on stderr: on a terminal, a block redrawn in place (the latest second, and a
/// sparkline of OK/s over the last minute); otherwise one plain line per interval.
struct LiveView {
    tty: bool,
    drawn: bool,
    ok_history: std::collections::VecDeque<f64>,
}

impl LiveView {
    const HISTORY: usize = 60;

    fn new() -> Self {
        use std::io::IsTerminal;
        Self {
            tty: std::io::stderr().is_terminal(),
            drawn: false,
            ok_history: Default::default(),
        }
    }

    fn show(&mut self, p: &TimelinePoint) {
        if !self.tty {
            eprintln!("{}", p.line());
            return;
        }
        if self.ok_history.len() == Self::HISTORY {
            self.ok_history.pop_front();
        }
        self.ok_history.push_back(p.ok);
        let max = self.ok_history.iter().copied().fold(1.0, f64::max);
        const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
        let spark: String = self
            .ok_history
            .iter()
            .map(|v| BARS[((v / max) * 7.0).round() as usize])
            .collect();
        if self.drawn {
            // Up three lines, clear to the end of the screen.
            eprint!("\x1b[3F\x1b[J");
        }
        eprintln!("{}", TimelinePoint::HEADER);
        eprintln!("{}", p.line());
        eprintln!(
            "ok/s (last {}s, max {max:.0}) {spark}",
            self.ok_history.len()
        );
        self.drawn = true;
    }
}
