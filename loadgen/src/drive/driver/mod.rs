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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;
use opentelemetry::trace::TraceId;
use sluice_core::{propagation, spans};
use sluice_proto::pb::NotificationStatus;
use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::{Outcome, Priority, Transaction};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, Endpoint};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::admin::metrics::GatewayPressure;
use crate::drive::schedule::Arrivals;
use crate::drive::spec::{CLIENT_ID_METADATA, LoadSpec, Mode, Pacing};
use crate::drive::throttle::{Throttle, is_refusal};
use crate::drive::traffic::Traffic;
use crate::report::{Recorder, Report, RunInfo, Sent, StreamEnd, TimelinePoint};
use rand::SeedableRng;
use rand::rngs::SmallRng;

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

/// The arrival times of the latest outcomes, published as they come: a caller waits for
/// "the first OK since T" on these without polling.
#[derive(Debug)]
pub struct OutcomeSignal {
    /// The latest OK outcome.
    pub ok: watch::Sender<Option<Instant>>,
    /// The latest OK outcome whose notification was QUEUED (notification was reachable).
    pub notified: watch::Sender<Option<Instant>>,
    /// When the latest blocked send started waiting (the gateway's backpressure reaching
    /// this client).
    pub blocked: watch::Sender<Option<Instant>>,
}

impl Default for OutcomeSignal {
    fn default() -> Self {
        Self {
            ok: watch::Sender::new(None),
            notified: watch::Sender::new(None),
            blocked: watch::Sender::new(None),
        }
    }
}

/// Set when a line was printed under the live view, so its next redraw starts below the
/// line instead of over it.
static PRINTED_UNDER_LIVE_VIEW: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Prints `line` on stderr between the live view's redraws (a story's narration), so the
/// view neither overwrites it nor is torn by it.
pub fn narrate(line: &str) {
    eprintln!("{line}");
    PRINTED_UNDER_LIVE_VIEW.store(true, Ordering::Relaxed);
}

impl OutcomeSignal {
    fn observe(&self, outcome: &Outcome) {
        if outcome.error.is_some() {
            return;
        }
        let now = Some(Instant::now());
        self.ok.send_replace(now);
        if outcome.notification == NotificationStatus::Queued as i32 {
            self.notified.send_replace(now);
        }
    }
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

/// Connects to every gateway `target` names and waits, as [`wait_ready`], until each is
/// ready.
pub async fn wait_ready_at(target: &str) -> anyhow::Result<()> {
    let n = gateway_addresses(target).await?.len();
    for channel in connect(target, n, &Default::default()).await? {
        wait_ready(channel).await?;
    }
    Ok(())
}

/// Connects `n` channels to the gateway, failing with a message that says what to do.
///
/// `target` may list several gateways (comma-separated URLs) and a host may be a DNS name
/// with several addresses (a scaled compose service, a Kubernetes headless Service): the
/// connections go round the addresses in turn, so every gateway gets its share.
pub async fn connect(
    target: &str,
    n: usize,
    h2: &sluice_core::h2::H2Settings,
) -> anyhow::Result<Vec<Channel>> {
    let mut addresses = gateway_addresses(target).await?;
    let mut clients = Vec::with_capacity(n);
    let mut last_error = None;
    while clients.len() < n.max(1) && !addresses.is_empty() {
        let i = clients.len() % addresses.len();
        let endpoint = h2.endpoint(Endpoint::from_shared(addresses[i].clone()).with_context(
            || format!("--target {target:?} is not a URL; expected http://host:port"),
        )?);
        match endpoint.connect().await {
            Ok(channel) => clients.push(channel),
            // A name may also resolve to an address nothing listens on (localhost's ::1):
            // use the others.
            Err(e) => last_error = Some((addresses.remove(i), e)),
        }
    }
    if let (true, Some((url, e))) = (addresses.is_empty(), last_error) {
        return Err(anyhow::Error::new(e)).with_context(|| format!("cannot connect to the gateway at {url} (from --target {target}): is it running? (start the mesh, or try `sluice-loadgen demo`)"));
    }
    Ok(clients)
}

/// Every gateway address `target` names, as URLs: each comma-separated URL, its host
/// resolved (a literal address stays as given).
async fn gateway_addresses(target: &str) -> anyhow::Result<Vec<String>> {
    let mut urls = Vec::new();
    for given in target.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let uri: tonic::codegen::http::Uri = given.parse().with_context(|| {
            format!("--target {given:?} is not a URL; expected http://host:port")
        })?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            anyhow::bail!("--target {given:?} is not a URL; expected http://host:port");
        };
        let port = uri.port_u16().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_ok() {
            urls.push(given.to_string());
            continue;
        }
        let mut addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .with_context(|| format!("cannot resolve the gateway host in --target {given}"))?
            .collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            anyhow::bail!("--target {given}: {bare} resolves to no address");
        }
        urls.extend(addrs.into_iter().map(|a| format!("{scheme}://{a}")));
    }
    anyhow::ensure!(
        !urls.is_empty(),
        "--target is empty; expected http://host:port"
    );
    Ok(urls)
}

/// A transaction sent and waiting for its outcome.
struct Pending {
    intended: Instant,
    /// Its outstanding slot, freed with the entry.
    _slot: OwnedSemaphorePermit,
    /// Its client span, ended (dropped) with the outcome.
    span: tracing::Span,
    /// The trace it was sent in, for the report's slowest and failed transactions.
    trace_id: Option<TraceId>,
    /// Its priority, for the report's breakdown by priority.
    priority: Priority,
}

/// The trace id of the `traceparent` a transaction carries (W3C: `00-<trace id>-<parent
/// id>-<flags>`): the id every hop and the trace backend know its trace by, however the
/// client span was made. None when it carries none: with tracing off the generator's spans
/// are no-ops with invalid contexts, which the propagators do not write. Read straight from
/// the carrier rather than through the propagators, which would parse every format: this
/// runs once per send, tens of thousands of times a second.
fn trace_id_sent(txn: &Transaction) -> Option<TraceId> {
    let hex = txn.trace_context.get("traceparent")?.split('-').nth(1)?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    TraceId::from_hex(hex)
        .ok()
        .filter(|id| *id != TraceId::INVALID)
}

struct Shared {
    recorder: Mutex<Recorder>,
    /// Every transaction sent and not yet answered, by id (see the module docs).
    pending: Mutex<HashMap<String, Pending>>,
    /// SubmitStreams that ended with an error or with transactions unanswered.
    stream_ends: Mutex<Vec<StreamEnd>>,
    start: Instant,
    /// Each transaction's deadline (hung = no outcome past it).
    timeout: Duration,
    outcomes: Option<Arc<OutcomeSignal>>,
    interval: Mutex<Interval>,
    timeline: Mutex<Vec<TimelinePoint>>,
    measure_from: Instant,
    sent: AtomicU64,
    /// Sends that went out more than [`LATE`] after their due time.
    late: AtomicU64,
    /// Open loop: arrivals the schedule produced before the run's end.
    scheduled: AtomicU64,
    /// Sent as [`CLIENT_ID_METADATA`] on every call, when the run names its client.
    client_id: Option<AsciiMetadataValue>,
    /// With `--client-throttle`: the client-side throttle every unary call passes.
    throttle: Option<Throttle>,
    /// Calls the throttle refused (never sent).
    throttled: AtomicU64,
}

/// What happened during the current second of the timeline.
struct Interval {
    sent: u64,
    done: u64,
    ok: u64,
    rejected: u64,
    /// Refused by the client's own throttle, not sent.
    throttled: u64,
    errors: u64,
    blocked: Duration,
    /// Set while a send is blocked; the timeline splits a long block across seconds.
    blocked_since: Option<Instant>,
    latency: Histogram<u64>,
    /// The OK ones' latency alone: under load shedding, fast refusals would hide how long
    /// accepted transactions waited.
    ok_latency: Histogram<u64>,
}

impl Default for Interval {
    fn default() -> Self {
        Self {
            sent: 0,
            done: 0,
            ok: 0,
            rejected: 0,
            throttled: 0,
            errors: 0,
            blocked: Duration::ZERO,
            blocked_since: None,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("valid histogram bounds"),
            ok_latency: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("valid histogram bounds"),
        }
    }
}

impl Shared {
    fn timeline_points(&self) -> std::sync::MutexGuard<'_, Vec<TimelinePoint>> {
        self.timeline.lock().expect("timeline lock")
    }

    /// `txn` was sent: it waits in the pending map for its outcome.
    fn begin(
        &self,
        txn: &Transaction,
        intended: Instant,
        slot: OwnedSemaphorePermit,
        span: tracing::Span,
    ) {
        let pending = Pending {
            intended,
            _slot: slot,
            span,
            trace_id: trace_id_sent(txn),
            priority: Priority::try_from(txn.priority).unwrap_or_default(),
        };
        self.pending_map().insert(txn.id.clone(), pending);
    }

    /// Which transaction `p` (pending as `id`) is, for the recorder.
    fn sent_of<'a>(&self, id: &'a str, p: &Pending) -> Sent<'a> {
        Sent {
            id,
            trace_id: p.trace_id,
            priority: p.priority,
            due: p.intended.saturating_duration_since(self.start),
        }
    }

    /// `id` could not be sent after all (every stream is gone): it was never counted.
    fn forget(&self, id: &str) {
        // The span ends as the entry drops.
        self.pending_map().remove(id);
    }

    /// `id` got its outcome (or call status). False when it was not pending.
    fn finish(&self, id: &str, result: Result<&Outcome, &tonic::Status>) -> bool {
        let Some(p) = self.pending_map().remove(id) else {
            return false;
        };
        end_client_span(&p.span, result);
        if let (Some(signal), Ok(outcome)) = (&self.outcomes, result) {
            signal.observe(outcome);
        }
        self.record(p.intended, self.sent_of(id, &p), result);
        true
    }

    /// `id` will get no outcome: counts it as NO_OUTCOME (and hung when `hung`). False when
    /// it was not pending (it had its outcome).
    fn abandon(&self, id: &str, why: &str, hung: bool) -> bool {
        let Some(p) = self.pending_map().remove(id) else {
            return false;
        };
        spans::fail(&p.span, "no_outcome", tonic::Code::Unknown as i32, why);
        self.interval.lock().expect("interval lock").errors += 1;
        if p.intended >= self.measure_from {
            let sent = self.sent_of(id, &p);
            self.recorder
                .lock()
                .expect("recorder lock")
                .record_no_outcome(sent, why, hung);
        }
        true
    }

    /// The run is over: whatever is still pending gets no outcome; hung when past its
    /// deadline.
    fn abandon_rest(&self) {
        let now = Instant::now();
        let left: Vec<(String, bool)> = self
            .pending_map()
            .iter()
            .map(|(id, p)| (id.clone(), now >= p.intended + self.timeout))
            .collect();
        if !left.is_empty() {
            tracing::warn!(
                "{} transaction(s) had no outcome when the run ended",
                left.len()
            );
        }
        for (id, hung) in left {
            self.abandon(&id, "the run ended before its outcome arrived", hung);
        }
    }

    fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().expect("pending lock")
    }

    fn record(&self, intended: Instant, sent: Sent<'_>, result: Result<&Outcome, &tonic::Status>) {
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
                None => {
                    i.ok += 1;
                    let _ = i.ok_latency.record((latency.as_micros() as u64).max(1));
                }
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
            .record(sent, result, latency);
    }

    /// The client's throttle refused a call: it is never sent.
    fn throttled_one(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.interval.lock().expect("interval lock").throttled += 1;
    }

    /// Tells the throttle, if any, how a sent call was answered.
    fn throttle_answered(&self, result: Result<&Outcome, &tonic::Status>) {
        let Some(throttle) = &self.throttle else {
            return;
        };
        let code = match result {
            Ok(o) => o.error.as_ref().map(|e| tonic::Code::from_i32(e.code)),
            Err(s) => Some(s.code()),
        };
        throttle.answered(Instant::now(), code.is_some_and(is_refusal));
    }

    fn sent_one(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.interval.lock().expect("interval lock").sent += 1;
    }

    /// A send starts waiting (for stream room or an outstanding slot).
    fn block_start(&self) -> Instant {
        let now = Instant::now();
        self.interval.lock().expect("interval lock").blocked_since = Some(now);
        if let Some(signal) = &self.outcomes {
            signal.blocked.send_replace(Some(now));
        }
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
    });
    let timeline = tokio::spawn(timeline(
        shared.clone(),
        start,
        spec.tick,
        profile.clone(),
        spec.progress,
        spec.metrics.clone(),
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

/// Every `every`: closes the current interval into a timeline point, printing it when asked.
async fn timeline(
    shared: Arc<Shared>,
    start: Instant,
    every: Duration,
    offered: Option<Arc<Arrivals>>,
    print: bool,
    metrics: Option<String>,
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
        let gateway = match &metrics {
            Some(url) => crate::admin::metrics::samples(url)
                .await
                .map(|m| GatewayPressure::from_samples(&m)),
            None => None,
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
            throttled: i.throttled as f64 / span,
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
            ok_p99_ms: if i.ok_latency.is_empty() {
                0.0
            } else {
                i.ok_latency.value_at_quantile(0.99) as f64 / 1000.0
            },
            queues: gateway.as_ref().map(|g| g.queues),
            held: gateway.as_ref().map(|g| g.held),
            held_bounds: gateway.as_ref().map(|g| g.bounds),
            // Only when nothing finished (a stall): then the pending map is what the
            // backpressure bounds, and the scan is cheap.
            oldest_outstanding_ms: (i.done == 0)
                .then(|| {
                    shared
                        .pending_map()
                        .values()
                        .map(|p| p.intended)
                        .min()
                        .map(|oldest| 1000.0 * now.duration_since(oldest).as_secs_f64())
                })
                .flatten(),
            degradation_level: gateway.as_ref().and_then(|g| g.degradation_level),
            bottleneck: gateway.and_then(|g| g.bottleneck),
        };
        if print {
            live.show(&point);
        }
        shared.timeline_points().push(point);
    }
}

/// Most due times the pacer thread may hand over that the senders have not taken: when it
/// is full the thread waits, the sends fall behind their due times, and the latency (counted
/// from the due time) shows it.
const PACER_QUEUE: usize = 1024;

/// What the pacer thread hands the senders.
enum Tick {
    /// An arrival, due at this instant (not before it).
    Due(Instant),
    /// The run ended with this many arrivals scheduled that the generator, behind, never
    /// sent.
    Unsent(u64),
}

/// Open loop's clock: a thread of its own that sleeps until each arrival is due and then
/// hands its due time over. tokio's timer counts in whole milliseconds — a sleep ends at
/// the first tick after its deadline, 0–2 ms late — and as latency is counted from the due
/// time, that slop would be charged to the system under test (a bare hop measured 1.1 ms
/// p50 and 3.4 ms p99 at 1,000/s that way, against 0.07 ms one at a time). A thread's sleep
/// ends within tens of microseconds.
fn pacer(
    (arrivals, mut rng): (Arc<Arrivals>, SmallRng),
    (start, end): (Instant, Instant),
) -> mpsc::Receiver<Tick> {
    let (tx, rx) = mpsc::channel(PACER_QUEUE);
    let spawned = std::thread::Builder::new()
        .name("loadgen-pacer".into())
        .spawn(move || {
            let horizon = end.duration_since(start).as_secs_f64();
            // The first arrival is at 0.
            let mut at = 0.0;
            loop {
                let due = start + Duration::from_secs_f64(at);
                if due >= end {
                    return;
                }
                // A generator that fell behind stops at the end too: what it could not send
                // shows as sent < scheduled, not as a run that overstays its duration.
                let now = Instant::now();
                if now >= end {
                    let mut unsent = 1;
                    while let Some(n) = arrivals.next_after(at, &mut rng).filter(|n| *n < horizon) {
                        unsent += 1;
                        at = n;
                    }
                    let _ = tx.blocking_send(Tick::Unsent(unsent));
                    return;
                }
                if due > now {
                    std::thread::sleep(due - now);
                }
                if tx.blocking_send(Tick::Due(due)).is_err() {
                    return; // the run is over
                }
                match arrivals.next_after(at, &mut rng) {
                    Some(next) => at = next,
                    None => return,
                }
            }
        });
    if let Err(e) = spawned {
        // Without its thread the schedule ends at once (the channel closes): the run
        // reports nothing sent rather than a schedule it did not keep.
        tracing::error!("cannot start the pacer thread: {e}");
    }
    rx
}

/// The send schedule: yields each transaction's intended send time, or `None` when the
/// run is over. Open loop waits for the due time ([`pacer`]); closed loop for a free slot.
struct Schedule {
    /// Open loop: the due times from the pacer thread; closed loop: `None`.
    pacer: Option<mpsc::Receiver<Tick>>,
    end: Instant,
    slots: Arc<Semaphore>,
}

impl Schedule {
    fn new(pacing: &Pacing, start: Instant, end: Instant, open_bound: usize, seed: u64) -> Self {
        let slots = match pacing {
            Pacing::Closed { concurrency } => *concurrency,
            _ => open_bound,
        };
        let pacer = pacing.arrivals(end.duration_since(start)).map(|arrivals| {
            let rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
            pacer((arrivals, rng), (start, end))
        });
        Self {
            pacer,
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
        match &mut self.pacer {
            Some(pacer) => {
                let due = match pacer.recv().await? {
                    Tick::Due(due) => due,
                    Tick::Unsent(n) => {
                        shared.scheduled.fetch_add(n, Ordering::Relaxed);
                        return None;
                    }
                };
                shared.scheduled.fetch_add(1, Ordering::Relaxed);
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
        let (txn, span) = traced(traffic.next_transaction().0, "Submit");
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
fn lost_in_transit(status: &tonic::Status) -> bool {
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

async fn drive_stream(
    spec: &LoadSpec,
    clients: Vec<GatewayClient<Channel>>,
    mut traffic: Traffic,
    shared: Arc<Shared>,
    start: Instant,
    end: Instant,
) -> anyhow::Result<()> {
    let mut senders = Vec::new();
    let mut connections = JoinSet::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Transaction>(spec.stream_buffer.max(1));
        // The first stream opens here, so a gateway that refuses it fails the run at once.
        let stream = SubmitStream::open(&mut client, shared.client_id.as_ref())
            .await
            .map_err(|status| anyhow::anyhow!("cannot open SubmitStream: {status}"))?;
        senders.push(tx);
        connections.spawn(stream_connection(
            index,
            client,
            stream,
            rx,
            shared.clone(),
            spec.reopen_streams,
        ));
    }
    let mut schedule = Schedule::new(&spec.pacing, start, end, spec.max_outstanding, spec.seed);
    let mut n = 0usize;
    'sending: while let Some((intended, slot)) = schedule.next(&shared).await {
        let (mut txn, span) = traced(traffic.next_transaction().0, "SubmitStream");
        let id = txn.id.clone();
        // Pending before it is sent: its outcome may come back before `send` returns.
        shared.begin(&txn, intended, slot, span);
        loop {
            if senders.is_empty() {
                // Every stream ended and none reopens: the run is over.
                shared.forget(&id);
                break 'sending;
            }
            let i = n % senders.len();
            match send(&shared, &senders[i], txn).await {
                Ok(()) => break,
                Err(back) => {
                    // That connection's stream ended for good; try another.
                    senders.swap_remove(i);
                    txn = back;
                }
            }
        }
        n += 1;
        shared.sent_one();
    }
    // Half-close every stream; the gateway returns the remaining outcomes, then ends OK.
    drop(senders);
    let drained = tokio::time::timeout(spec.timeout + DRAIN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
    Ok(())
}

/// Sends on a connection's queue; blocks while it is full (the gateway is pushing back).
/// Gives the transaction back when that connection's stream ended for good.
async fn send(
    shared: &Shared,
    tx: &mpsc::Sender<Transaction>,
    txn: Transaction,
) -> Result<(), Transaction> {
    match tx.try_send(txn) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(txn)) => {
            let waiting = shared.block_start();
            let sent = tx.send(txn).await;
            shared.block_end(waiting);
            sent.map_err(|e| e.0)
        }
        Err(mpsc::error::TrySendError::Closed(txn)) => Err(txn),
    }
}

/// One open SubmitStream: the sender of its request body, its responses, and its span.
struct SubmitStream {
    body: mpsc::Sender<Transaction>,
    responses: tonic::Streaming<Outcome>,
    span: tracing::Span,
}

impl SubmitStream {
    /// Opens one, naming the client (`client_id`) in its metadata when given: the gateway
    /// paces a stream whose client is over its rate rather than refusing its messages.
    async fn open(
        client: &mut GatewayClient<Channel>,
        client_id: Option<&AsciiMetadataValue>,
    ) -> Result<SubmitStream, tonic::Status> {
        let (body, body_rx) = mpsc::channel::<Transaction>(STREAM_HANDOFF);
        // The stream's own span, in its metadata; each message carries its own trace.
        let span = tracing::info_span!(
            parent: None,
            "stream",
            otel.name = "mesh.v1.Gateway/SubmitStream stream",
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = "mesh.v1.Gateway",
            rpc.method = "SubmitStream",
        );
        let mut request = tonic::Request::new(ReceiverStream::new(body_rx));
        propagation::inject_metadata(&span.context(), request.metadata_mut());
        name_client(&mut request, client_id);
        match client.submit_stream(request).await {
            Ok(response) => Ok(SubmitStream {
                body,
                responses: response.into_inner(),
                span,
            }),
            Err(status) => {
                spans::fail(&span, "open_failed", status.code() as i32, status.message());
                Err(status)
            }
        }
    }
}

/// One connection's SubmitStream: feeds it from the connection's queue and records its
/// outcomes; when it ends, counts what it took without answering as NO_OUTCOME, and with
/// `reopen`, opens the next one (the queue survives, so nothing waiting in it is lost).
async fn stream_connection(
    index: usize,
    mut client: GatewayClient<Channel>,
    first: SubmitStream,
    mut queue: mpsc::Receiver<Transaction>,
    shared: Arc<Shared>,
    reopen: bool,
) {
    let mut stream = Some(first);
    // Taken from the queue but not yet handed to a stream: carried to the next one.
    let mut holding: Option<Transaction> = None;
    let mut backoff = REOPEN_BACKOFF.0;
    loop {
        let current = match stream.take() {
            Some(s) => s,
            None => match SubmitStream::open(&mut client, shared.client_id.as_ref()).await {
                Ok(s) => s,
                Err(status) => {
                    tracing::debug!("SubmitStream {index}: reopen failed: {status}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(REOPEN_BACKOFF.1);
                    continue;
                }
            },
        };
        let opened = Instant::now();
        let span = current.span.clone();
        let (end, unanswered, queue_done) = pump(&shared, current, &mut queue, &mut holding).await;
        let lost = unanswered
            .iter()
            .filter(|id| shared.abandon(id, "its stream ended first", false))
            .count() as u64;
        match &end {
            Ok(()) => spans::ok(&span),
            Err(s) => spans::fail(&span, "stream_ended", s.code() as i32, s.message()),
        }
        drop(span);
        if end.is_err() || lost > 0 {
            let (code, message) = match &end {
                Ok(()) => ("OK".to_string(), String::new()),
                Err(s) => (crate::report::code_name(s.code()), s.message().to_string()),
            };
            tracing::warn!(
                "SubmitStream {index} ended {code}{}{message}: {lost} transaction(s) without an outcome",
                if message.is_empty() { "" } else { ": " }
            );
            shared
                .stream_ends
                .lock()
                .expect("stream ends lock")
                .push(StreamEnd {
                    t: shared.start.elapsed().as_secs_f64(),
                    stream: index,
                    code,
                    message,
                    without_outcome: lost,
                });
        }
        if (queue_done && holding.is_none()) || !reopen {
            // Dropping the queue fails further sends on it: the driver retires it.
            return;
        }
        if opened.elapsed() > REOPEN_BACKOFF.1 {
            backoff = REOPEN_BACKOFF.0;
        }
    }
}

/// Feeds one stream from `queue` and records its outcomes until it ends. Returns how it
/// ended, the ids it took and never answered, and whether the queue is exhausted (the run
/// sent its last transaction). Responses are read independently of sending, so a full
/// request window never stops outcomes from being read.
async fn pump(
    shared: &Shared,
    stream: SubmitStream,
    queue: &mut mpsc::Receiver<Transaction>,
    holding: &mut Option<Transaction>,
) -> (Result<(), tonic::Status>, HashSet<String>, bool) {
    let SubmitStream {
        body,
        mut responses,
        span: _,
    } = stream;
    let mut body = Some(body);
    let mut handed: HashSet<String> = HashSet::new();
    let mut queue_done = false;
    let end = loop {
        tokio::select! {
            next = responses.next() => match next {
                Some(Ok(outcome)) => {
                    handed.remove(&outcome.id);
                    shared.finish(&outcome.id, Ok(&outcome));
                }
                Some(Err(status)) => break Err(status),
                None => break Ok(()),
            },
            permit = reserve(body.clone()), if holding.is_some() && body.is_some() => match permit {
                Some(permit) => {
                    let txn = holding.take().expect("holding a transaction");
                    handed.insert(txn.id.clone());
                    permit.send(txn);
                }
                // The stream stopped taking messages; its end follows.
                None => body = None,
            },
            txn = queue.recv(), if holding.is_none() && body.is_some() && !queue_done => match txn {
                Some(txn) => *holding = Some(txn),
                None => {
                    // The run sent its last transaction: half-close.
                    queue_done = true;
                    body = None;
                }
            },
        }
    };
    (end, handed, queue_done)
}

/// Room for one message in a stream's body (an owned permit, so the body can be dropped
/// — half-closed — while a reservation is pending).
async fn reserve(
    body: Option<mpsc::Sender<Transaction>>,
) -> Option<mpsc::OwnedPermit<Transaction>> {
    body?.reserve_owned().await.ok()
}

/// Progress on stderr: on a terminal, a block redrawn in place (the latest second, and a
/// sparkline of OK/s over the last minute); otherwise one plain line per interval.
struct LiveView {
    tty: bool,
    drawn: bool,
    /// Lines the last drawing took.
    lines: usize,
    ok_history: std::collections::VecDeque<f64>,
}

impl LiveView {
    const HISTORY: usize = 60;

    fn new() -> Self {
        use std::io::IsTerminal;
        Self {
            tty: std::io::stderr().is_terminal(),
            drawn: false,
            lines: 0,
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
        let narrated = PRINTED_UNDER_LIVE_VIEW.swap(false, Ordering::Relaxed);
        let hops = p.hop_bars();
        if self.drawn && !narrated {
            // Up over the last drawing, clear to the end of the screen.
            eprint!("\x1b[{}F\x1b[J", self.lines);
        }
        eprintln!("{}", TimelinePoint::HEADER);
        eprintln!("{}", p.line());
        eprintln!(
            "ok/s (last {} intervals, max {max:.0}) {spark}",
            self.ok_history.len()
        );
        self.lines = 3;
        if let Some(hops) = hops {
            eprintln!("{hops}");
            self.lines += 1;
        }
        self.drawn = true;
    }
}

#[cfg(test)]
mod tests {
    use super::{gateway_addresses, lost_in_transit, trace_id_sent};

    #[tokio::test]
    async fn the_pacer_hands_every_arrival_over_never_before_it_is_due() {
        use super::{Tick, pacer};
        use crate::drive::schedule::{ArrivalKind, Arrivals};
        use rand::SeedableRng as _;
        use std::time::{Duration, Instant};
        // 2,000/s for 200 ms: 400 arrivals, 0.5 ms apart.
        let run = Duration::from_millis(200);
        let arrivals = Arrivals::constant(ArrivalKind::Constant, 2000.0, run);
        let start = Instant::now();
        let mut ticks = pacer(
            (
                std::sync::Arc::new(arrivals),
                rand::rngs::SmallRng::seed_from_u64(1),
            ),
            (start, start + run),
        );
        let (mut dues, mut unsent) = (Vec::new(), 0);
        while let Some(tick) = ticks.recv().await {
            match tick {
                Tick::Due(due) => {
                    assert!(Instant::now() >= due, "handed over before it was due");
                    dues.push(due);
                }
                // A thread woken past the end (a loaded machine) counts the rest unsent.
                Tick::Unsent(n) => unsent += n,
            }
        }
        assert_eq!(
            dues.len() as u64 + unsent,
            400,
            "every arrival accounted for"
        );
        assert!(dues.windows(2).all(|w| w[0] < w[1]), "due times in order");
        assert_eq!(dues[0], start, "the first arrival is at the start");
    }

    #[tokio::test]
    async fn several_gateways_and_names_become_every_address() {
        let urls = gateway_addresses("http://127.0.0.1:7, http://localhost:8")
            .await
            .unwrap();
        assert_eq!(urls[0], "http://127.0.0.1:7");
        assert!(urls.len() >= 2, "{urls:?}");
        assert!(urls[1..].iter().all(|u| u.ends_with(":8")), "{urls:?}");
        assert!(gateway_addresses("gateway:1").await.is_err());
        assert!(gateway_addresses(" , ").await.is_err());
    }
    use opentelemetry::trace::TraceId;
    use sluice_proto::pb::Transaction;
    use tonic::Status;

    #[test]
    fn the_trace_id_is_the_one_in_the_traceparent_sent() {
        let with = |traceparent: &str| Transaction {
            trace_context: [("traceparent".to_string(), traceparent.to_string())].into(),
            ..Default::default()
        };
        assert_eq!(
            trace_id_sent(&with(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            )),
            Some(TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736))
        );
        assert_eq!(trace_id_sent(&Transaction::default()), None, "tracing off");
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(trace_id_sent(&with(bad)), None, "{bad}");
        }
    }

    #[test]
    fn only_a_connection_broken_mid_call_is_lost_in_transit() {
        assert!(!lost_in_transit(&Status::unavailable("shutting down")));
        let deadline = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert!(!lost_in_transit(&deadline), "{deadline:?}");
        let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        ))));
        assert!(!lost_in_transit(&refused), "{refused:?}");
        let reset = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(lost_in_transit(&reset), "{reset:?}");
    }
}
