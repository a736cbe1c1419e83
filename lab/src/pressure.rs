//! `sluice-lab pressure`: the backpressure benchmark, bounded vs unbounded, and the
//! overload-control benchmark, static vs adaptive. `--sections` picks them (backpressure by
//! default).
//!
//! **Backpressure** (about 1.5 minutes): against the real binaries (separate processes on
//! loopback), for a gateway with its static bounds (`--concurrency-limit static
//! --degradation off`: the adaptive limit would hold far fewer than they allow) and for the
//! same gateway with `--unbounded-for-comparison`:
//!
//! 1. **Stall at 50 % load.** SubmitStream at half of saturation; logging is stalled for
//!    `--stall-for`, then unstalled. Reported: time from the stall until the generator's sends
//!    block; the most transactions held between client and logging (the gateway's admitted,
//!    unacknowledged count) against the bound computed from the flags; the gateway's memory
//!    growth against the bytes those bounds allow; time from unstall until throughput is back.
//! 2. **10× overload.** SubmitStream offered at ten times saturation (no fault): goodput as a
//!    share of saturation, and the gateway's peak memory.
//!
//! **Overload control** (about 3 minutes): the mesh's own throughput–latency curve is
//! measured closed loop ([`FRONTIER`] outstanding; saturation is its last point) on a gateway
//! with a static limit and no degradation; then, for that gateway, for the adaptive one, and
//! for the adaptive one against a client that throttles itself when refused
//! (`--client-throttle`), a fresh mesh takes one open-loop unary run in steps — 0.5×
//! saturation, 3×, 0.5× again, then logging slowed (a fixed delay through its Control API)
//! at 1×. Per step:
//! goodput (OK/s), the p99 of *accepted* (OK) transactions, what the gateway refused; the
//! time until the accepted p99 is back within 2× of the first step's after the peak; the
//! degradation level and the bottleneck the gateway names; its peak memory. Unary, because
//! that is where a concurrency limit refuses (a SubmitStream is paced instead), so goodput
//! and the latency of what was accepted are two separate figures. The target: at 3×, the
//! adaptive gateway keeps the accepted p99 within 2× of the unloaded one while its goodput
//! stays at 90 % of saturation or more; the curve says whether any limit could, here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use prost::Message;
use sluice_proto::pb::Faults;
use tokio::task::JoinHandle;

use crate::procs::{MeshOptions, ProcMesh, bin_dir};
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::schedule::{ArrivalKind, Arrivals, Segment};
use sluice_loadgen::drive::spec::{DEFAULT_TIMEOUT, LoadSpec, LoadSpecBuilder, Mode, Pacing};
use sluice_loadgen::drive::traffic::Traffic;
use sluice_loadgen::report::{BottleneckSeen, Report, TimelinePoint, bottleneck_named, counts};

/// The benchmarks `pressure` can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Bounded vs unbounded gateway: logging stalled at 50 % load, then 10× overload
    /// (SubmitStream).
    Backpressure,
    /// Static limit without degradation vs adaptive limit: unary steps 0.5× → 3× → 0.5× of
    /// saturation, then logging slowed.
    Overload,
}

#[derive(Debug, Clone, Args)]
pub struct PressureArgs {
    /// Which benchmarks to run, comma-separated: backpressure (about 1.5 minutes),
    /// overload (about 3).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "backpressure"
    )]
    pub sections: Vec<Section>,
    /// Saturation throughput (tx/s) to scale load from; measured first when not given.
    #[arg(long)]
    pub saturation: Option<f64>,
    /// How long logging stays stalled, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = sluice_core::parse_duration)]
    pub stall_for: Duration,
    /// How long the overload phase offers load, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = sluice_core::parse_duration)]
    pub overload_for: Duration,
    /// Overload as a multiple of saturation.
    #[arg(long, default_value_t = 10.0)]
    pub overload_factor: f64,
    /// Skip the unbounded comparison.
    #[arg(long)]
    pub bounded_only: bool,
    /// Overload section: unary saturation throughput (tx/s) to scale its steps from;
    /// measured first when not given.
    #[arg(long)]
    pub unary_saturation: Option<f64>,
    /// Overload section: how long each load step lasts, e.g. 5s (the step after the peak
    /// and the slow-logging step last twice as long: recovery and a limit settling take
    /// time).
    #[arg(long, default_value = "5s", value_parser = sluice_core::parse_duration)]
    pub step_for: Duration,
    /// Overload section: the peak step as a multiple of unary saturation.
    #[arg(long, default_value_t = 3.0)]
    pub peak_factor: f64,
    /// Overload section: the delay injected into every logging append in the last step,
    /// e.g. 20ms.
    #[arg(long, default_value = "20ms", value_parser = sluice_core::parse_duration)]
    pub slow_logging_delay: Duration,
    /// Overload section: the load during the slow-logging step, as a multiple of unary
    /// saturation (1: the load the mesh carried before logging slowed, so the slowdown is
    /// what overloads it).
    #[arg(long, default_value_t = 1.0)]
    pub slow_logging_load: f64,
    /// Directory with the sluice-* binaries (default: this executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// Client connections (one SubmitStream each).
const CONNECTIONS: usize = 2;
/// In the stall phase transactions are given this long (the gateway's default deadline and
/// the generator's timeout), so none expires during the stall: the bounds, not deadlines, are
/// what is measured. The overload phase keeps the gateway's default deadline (5 s): what a
/// real client would see.
const STALL_DEADLINE: Duration = Duration::from_secs(120);
/// The generator's per-transaction timeout in the overload phase.
const OVERLOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The generator's own open-loop bound, far above anything the mesh holds, so it never binds:
/// what is measured is the mesh's pushback, not the generator's.
const OPEN_LOOP_OUTSTANDING: usize = 5_000_000;
/// Saturation is measured closed loop with this many transactions outstanding (enough to
/// saturate SubmitStream ingress on one machine), over this long after a warmup.
const SATURATION_CONCURRENCY: usize = 4000;
const SATURATION_RUN: Duration = Duration::from_secs(8);
const SATURATION_WARMUP: Duration = Duration::from_secs(2);
const SAMPLE_EVERY: Duration = Duration::from_millis(100);
const LEAD_IN: Duration = Duration::from_secs(2);
const RECOVERY_WINDOW: Duration = Duration::from_secs(15);
const MIB: f64 = 1024.0 * 1024.0;
const RISK_BUSY: &str = "sluice_risk_worker_pool_busy";
const RISK_CAPACITY: &str = "sluice_risk_worker_pool_capacity";
const LOGGING_BUSY: &str = "sluice_logging_worker_pool_busy";
const LOGGING_CAPACITY: &str = "sluice_logging_worker_pool_capacity";
/// Unary saturation is measured closed loop with this many calls outstanding: enough to
/// saturate unary ingress on one machine (bench's default), far under the gateway's static
/// limit, so nothing is refused while measuring.
const UNARY_SATURATION_CONCURRENCY: usize = 256;
/// The overload section's timeline interval: fine enough to time a recovery, long enough
/// for a p99 of its own at half of saturation.
const OVERLOAD_TICK: Duration = Duration::from_millis(500);
/// How late a timeline interval may close (timer lateness) and still count as inside the
/// step it ends in, seconds.
const TICK_SLACK: f64 = 0.05;
/// Load of the steps before and after the peak, as a multiple of saturation.
const BASE_LOAD: f64 = 0.5;
/// The target and "recovered": the accepted p99 within this multiple of the unloaded one.
const P99_TARGET_FACTOR: f64 = 2.0;
/// The target's goodput at the peak, as a share of saturation.
const GOODPUT_TARGET: f64 = 0.9;

struct Variant {
    name: &'static str,
    unbounded: bool,
}

#[derive(Default)]
struct Figures {
    time_to_block: Option<f64>,
    held_max: f64,
    stall_growth: f64,
    recovery: Option<f64>,
    drained: Option<f64>,
    overload_sent_rate: f64,
    overload_goodput: f64,
    overload_peak_growth: f64,
    overload_errors: String,
}

/// A SubmitStream run against `target` as every phase drives it.
fn spec(target: &str, pacing: Pacing, duration: Duration, prefix: String) -> LoadSpecBuilder {
    LoadSpec::builder(target)
        .mode(Mode::Stream)
        .pacing(pacing)
        .duration(duration)
        .connections(CONNECTIONS)
        .timeout(STALL_DEADLINE)
        .seed(7)
        .id_prefix(prefix)
}

/// Starts the run `spec` describes; returns it and the instant its timeline starts.
async fn start(spec: LoadSpec) -> anyhow::Result<(JoinHandle<anyhow::Result<Report>>, Instant)> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let load = tokio::spawn(driver::run_with(spec, Some(started_tx)));
    Ok((load, started_rx.await?))
}

/// The highest value of each of `names` at `metrics`, sampled every [`SAMPLE_EVERY`] until
/// `end`, starting from `floor`.
pub(crate) async fn peaks<const N: usize>(
    metrics: &str,
    names: [&str; N],
    end: Instant,
    mut floor: [f64; N],
) -> [f64; N] {
    while Instant::now() < end {
        for (name, peak) in names.iter().zip(floor.iter_mut()) {
            let now = sluice_loadgen::admin::metrics::metric(metrics, name).await;
            *peak = peak.max(now.unwrap_or(0.0));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    floor
}

pub(crate) const RSS: &str = "sluice_gateway_process_resident_memory_bytes";
pub(crate) const HELD: &str = "sluice_gateway_inflight{api=\"stream\"}";

/// Stalls (or releases) a service through its Control API.
pub(crate) async fn set_stall(
    control: &mut sluice_loadgen::admin::control::Control,
    stall: bool,
) -> anyhow::Result<()> {
    control
        .set(Faults {
            stall,
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn mesh(
    dir: &std::path::Path,
    unbounded: bool,
    deadline: Option<Duration>,
) -> anyhow::Result<ProcMesh> {
    // What the *static* bounds buy: the adaptive limit (the overload section's subject)
    // would hold far fewer than they allow.
    let mut gateway: Vec<String> = ["--concurrency-limit", "static", "--degradation", "off"]
        .map(String::from)
        .into();
    if let Some(d) = deadline {
        gateway.extend([
            "--default-deadline".to_string(),
            format!("{}ms", d.as_millis()),
        ]);
    }
    if unbounded {
        gateway.push("--unbounded-for-comparison".into());
    }
    mesh_with(dir, gateway).await
}

/// A fresh mesh whose gateway runs with `gateway` flags added.
async fn mesh_with(dir: &std::path::Path, gateway: Vec<String>) -> anyhow::Result<ProcMesh> {
    let options = MeshOptions {
        gateway,
        ..Default::default()
    };
    ProcMesh::start_ready(dir.to_path_buf(), options).await
}

/// Phase 1: stall logging at half of saturation.
async fn stall_phase(
    dir: &std::path::Path,
    v: &Variant,
    sat: f64,
    args: &PressureArgs,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let mesh = mesh(dir, v.unbounded, Some(STALL_DEADLINE)).await?;
    let metrics = mesh.gateway.metrics_url()?;
    let rate = sat / 2.0;
    let duration = LEAD_IN + args.stall_for + RECOVERY_WINDOW;
    let (load, start) = start(
        spec(
            &mesh.gateway.url(),
            Pacing::Open { rate },
            duration,
            format!("stall-{}", v.name),
        )
        .tick(SAMPLE_EVERY)
        .max_outstanding(OPEN_LOOP_OUTSTANDING)
        .build()?,
    )
    .await?;
    tokio::time::sleep_until((start + LEAD_IN).into()).await;
    let baseline = sluice_loadgen::admin::metrics::metric(&metrics, RSS)
        .await
        .unwrap_or(0.0);
    set_stall(&mut mesh.control(&mesh.logging).await?, true).await?;
    let stall_at = start.elapsed().as_secs_f64();
    let [held, rss] = peaks(
        &metrics,
        [HELD, RSS],
        Instant::now() + args.stall_for,
        [0.0, baseline],
    )
    .await;
    set_stall(&mut mesh.control(&mesh.logging).await?, false).await?;
    let unstall_at = start.elapsed().as_secs_f64();
    let report = load.await??;
    f.held_max = held;
    f.stall_growth = rss - baseline;
    f.time_to_block = report
        .timeline
        .iter()
        .find(|p| p.t > stall_at && p.t <= unstall_at && p.blocked_pct >= 50.0)
        .map(|p| p.t - stall_at);
    // Throughput is back when OK completions reach 90% of the offered rate; the backlog is
    // drained when the generator, which kept its schedule through the stall, is no longer
    // blocked catching up.
    let after: Vec<_> = report
        .timeline
        .iter()
        .filter(|p| p.t > unstall_at)
        .collect();
    f.recovery = after
        .iter()
        .find(|p| p.ok >= 0.9 * rate)
        .map(|p| p.t - unstall_at);
    f.drained = after
        .iter()
        .find(|p| p.blocked_pct < 10.0 && p.ok <= 1.1 * rate)
        .map(|p| p.t - unstall_at);
    Ok(())
}

/// Phase 2: offer `factor` × saturation.
async fn overload_phase(
    dir: &std::path::Path,
    v: &Variant,
    sat: f64,
    args: &PressureArgs,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let mesh = mesh(dir, v.unbounded, None).await?;
    let metrics = mesh.gateway.metrics_url()?;
    let rate = sat * args.overload_factor;
    let (load, start) = start(
        spec(
            &mesh.gateway.url(),
            Pacing::Open { rate },
            args.overload_for,
            format!("over-{}", v.name),
        )
        .max_outstanding(OPEN_LOOP_OUTSTANDING)
        .timeout(OVERLOAD_TIMEOUT)
        .build()?,
    )
    .await?;
    let baseline = sluice_loadgen::admin::metrics::metric(&metrics, RSS)
        .await
        .unwrap_or(0.0);
    let [peak] = peaks(&metrics, [RSS], start + args.overload_for, [baseline]).await;
    let report: Report = load.await??;
    let during: Vec<_> = report
        .timeline
        .iter()
        .filter(|p| p.t <= args.overload_for.as_secs_f64() + 0.01)
        .collect();
    let n = during.len().max(1) as f64;
    f.overload_sent_rate = during.iter().map(|p| p.sent).sum::<f64>() / n;
    f.overload_goodput = during.iter().map(|p| p.ok).sum::<f64>() / n;
    f.overload_peak_growth = peak - baseline;
    f.overload_errors = if report.errors.is_empty() {
        "none".into()
    } else {
        report
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(())
}

/// OK/s of `mode` closed loop, on a fresh mesh whose gateway has `gateway` flags added.
async fn measure_saturation(
    dir: &std::path::Path,
    mode: Mode,
    gateway: Vec<String>,
) -> anyhow::Result<f64> {
    let mesh = mesh_with(dir, gateway).await?;
    let concurrency = match mode {
        Mode::Stream => SATURATION_CONCURRENCY,
        Mode::Unary => UNARY_SATURATION_CONCURRENCY,
    };
    let spec = spec(
        &mesh.gateway.url(),
        Pacing::Closed { concurrency },
        SATURATION_RUN,
        "sat".into(),
    )
    .mode(mode)
    .max_outstanding(concurrency)
    .warmup(SATURATION_WARMUP)
    .build()?;
    Ok(driver::run(spec).await?.ok_rate)
}

/// The closed-loop concurrencies the overload section measures unary goodput and p99 at:
/// what a perfectly chosen static limit would buy, refusing nothing. The last is
/// saturation's ([`UNARY_SATURATION_CONCURRENCY`]).
const FRONTIER: [usize; 4] = [32, 64, 128, UNARY_SATURATION_CONCURRENCY];

/// One point of the throughput–latency curve.
#[derive(Debug, Clone, Copy)]
struct FrontierPoint {
    concurrency: usize,
    goodput: f64,
    p99_ms: f64,
}

/// Unary goodput and p99 closed loop at each of [`FRONTIER`]'s concurrencies, on one mesh
/// with `gateway`'s flags.
async fn measure_frontier(
    dir: &std::path::Path,
    gateway: Vec<String>,
) -> anyhow::Result<Vec<FrontierPoint>> {
    let mesh = mesh_with(dir, gateway).await?;
    let mut points = Vec::with_capacity(FRONTIER.len());
    for concurrency in FRONTIER {
        let spec = spec(
            &mesh.gateway.url(),
            Pacing::Closed { concurrency },
            SATURATION_RUN,
            format!("frontier-{concurrency}"),
        )
        .mode(Mode::Unary)
        .max_outstanding(concurrency)
        .warmup(SATURATION_WARMUP)
        .build()?;
        let report = driver::run(spec).await?;
        points.push(FrontierPoint {
            concurrency,
            goodput: report.ok_rate,
            p99_ms: report.latency_ms.p99,
        });
    }
    Ok(points)
}

/// The fewest outstanding of `frontier` that carry [`GOODPUT_TARGET`] of `sat`: the best
/// accepted p99 any limit could give at that goodput here.
fn frontier_verdict(frontier: &[FrontierPoint], sat: f64, unloaded_p99: f64) -> Option<String> {
    let p = frontier
        .iter()
        .find(|p| p.goodput >= GOODPUT_TARGET * sat)?;
    Some(format!(
        "  {:<28}{}: {} outstanding carry {:.0} % of saturation at p99 {:.1} ms = {:.1} x the unloaded {:.1} ms (closed loop, nothing refused)",
        "best any limit can do here",
        if p.p99_ms <= P99_TARGET_FACTOR * unloaded_p99 {
            "reachable"
        } else {
            "out of reach"
        },
        p.concurrency,
        100.0 * p.goodput / sat.max(1e-9),
        p.p99_ms,
        p.p99_ms / unloaded_p99.max(1e-9),
        unloaded_p99
    ))
}

/// The bound on SubmitStream transactions a default gateway holds between `connections`
/// clients and logging, and the bytes those and its connections' HTTP/2 windows may take.
pub(crate) fn held_bounds(connections: usize) -> (f64, f64) {
    let d = sluice_gateway::Config::defaults();
    let held = (d.downstream_queue + d.streams_per_downstream * d.downstream_stream_inflight)
        .min(connections * d.stream_inflight) as f64;
    let windows = (connections as f64 + 1.0) * f64::from(d.server.h2.connection_window);
    (held, held * message_bytes() + windows)
}

/// Average encoded size of a generated transaction on the logging hop, bytes.
fn message_bytes() -> f64 {
    let mut t = Traffic::new("stall-bounded-1234567", 0.0, 7);
    let n = 1000;
    (0..n)
        .map(|_| t.next_transaction().0.encoded_len() + 16)
        .sum::<usize>() as f64
        / n as f64
}

/// Runs the sections asked for and prints their tables.
pub async fn pressure(args: PressureArgs) -> anyhow::Result<()> {
    let dir = bin_dir(args.bin_dir.as_deref())?;
    anyhow::ensure!(!args.sections.is_empty(), "--sections names no section");
    if args.sections.contains(&Section::Backpressure) {
        backpressure(&dir, &args).await?;
    }
    if args.sections.contains(&Section::Overload) {
        overload(&dir, &args).await?;
    }
    Ok(())
}

/// The backpressure section: bounded vs unbounded.
async fn backpressure(dir: &std::path::Path, args: &PressureArgs) -> anyhow::Result<()> {
    let sat = match args.saturation {
        Some(s) => s,
        None => {
            eprintln!(
                "measuring saturation (closed loop, {SATURATION_CONCURRENCY} outstanding, {SATURATION_RUN:?}) ..."
            );
            measure_saturation(dir, Mode::Stream, Vec::new()).await?
        }
    };
    let mut variants = vec![Variant {
        name: "bounded",
        unbounded: false,
    }];
    if !args.bounded_only {
        variants.push(Variant {
            name: "unbounded",
            unbounded: true,
        });
    }
    let mut figures = Vec::new();
    for v in &variants {
        let mut f = Figures::default();
        eprintln!(
            "{}: stalling logging at 50% load for {:?} ...",
            v.name, args.stall_for
        );
        stall_phase(dir, v, sat, args, &mut f).await?;
        eprintln!(
            "{}: {}x overload for {:?} ...",
            v.name, args.overload_factor, args.overload_for
        );
        overload_phase(dir, v, sat, args, &mut f).await?;
        figures.push(f);
    }

    let (held_bound, bytes_bound) = held_bounds(CONNECTIONS);
    let (d, msg) = (sluice_gateway::Config::defaults(), message_bytes());

    let col = |get: &dyn Fn(&Figures) -> String| {
        figures
            .iter()
            .map(get)
            .map(|s| format!("{s:>26}"))
            .collect::<String>()
    };
    let secs = |v: Option<f64>| v.map_or("never".to_string(), |s| format!("{s:.1} s"));
    println!("\nbackpressure benchmark: release binaries on loopback, saturation {sat:.0} tx/s");
    println!("{}", crate::procs::cpu_split());
    println!(
        "{:<44}{}",
        "",
        variants
            .iter()
            .map(|v| format!("{:>26}", v.name))
            .collect::<String>()
    );
    println!(
        "stall logging for {:?} at 50% load ({:.0} tx/s)",
        args.stall_for,
        sat / 2.0
    );
    println!(
        "{:<44}{}",
        "  client sends block after (during the stall)",
        col(&|f| secs(f.time_to_block))
    );
    println!(
        "{:<44}{}",
        format!("  held client→logging, max (bound {held_bound:.0})"),
        col(&|f| format!("{:.0} tx", f.held_max))
    );
    println!(
        "{:<44}{}",
        format!(
            "  gateway memory growth (bound {:.1} MiB)",
            bytes_bound / MIB
        ),
        col(&|f| format!("{:+.1} MiB", f.stall_growth / MIB))
    );
    println!(
        "{:<44}{}",
        "  throughput back after unstall",
        col(&|f| secs(f.recovery))
    );
    println!(
        "{:<44}{}",
        "  backlog drained after unstall",
        col(&|f| secs(f.drained))
    );
    println!(
        "{}x overload ({:.0} tx/s offered) for {:?}",
        args.overload_factor,
        sat * args.overload_factor,
        args.overload_for
    );
    println!(
        "{:<44}{}",
        "  sent by the generator",
        col(&|f| format!("{:.0} tx/s", f.overload_sent_rate))
    );
    println!(
        "{:<44}{}",
        "  goodput (share of saturation)",
        col(&|f| format!(
            "{:.0} tx/s ({:.0}%)",
            f.overload_goodput,
            100.0 * f.overload_goodput / sat
        ))
    );
    println!(
        "{:<44}{}",
        "  gateway peak memory growth",
        col(&|f| format!("{:+.1} MiB", f.overload_peak_growth / MIB))
    );
    println!("{:<44}{}", "  errors", col(&|f| f.overload_errors.clone()));
    println!(
        "\nheld bound = min(downstream queue {} + {} streams x {} in flight, {} client streams x {} admitted); bytes bound = held x {msg:.0} B + {} HTTP/2 connection windows of {} KiB",
        d.downstream_queue,
        d.streams_per_downstream,
        d.downstream_stream_inflight,
        CONNECTIONS,
        d.stream_inflight,
        CONNECTIONS + 1,
        d.server.h2.connection_window / 1024
    );
    println!(
        "reproduce: cargo run --release -p sluice-lab -- pressure --stall-for {:?} --overload-for {:?}",
        args.stall_for, args.overload_for
    );
    Ok(())
}

/// A gateway configuration the overload section compares.
struct OverloadControl {
    name: &'static str,
    /// For transaction ids.
    slug: &'static str,
    flags: &'static [&'static str],
    /// The generator as a cooperating client: client-side adaptive throttling with this K
    /// (`--client-throttle`); `None` sends every call whatever the gateway answers.
    client_throttle: Option<f64>,
}

/// The limit as it was (static, nothing degraded), then overload control as it ships
/// (adaptive limit, degradation on by default) against a client that sends every call, and
/// against one that throttles itself when refused. Saturation is measured on the first.
const CONTROLS: [OverloadControl; 3] = [
    OverloadControl {
        name: "static, no degradation",
        slug: "static",
        flags: &["--concurrency-limit", "static", "--degradation", "off"],
        client_throttle: None,
    },
    OverloadControl {
        name: "adaptive",
        slug: "adaptive",
        flags: &["--concurrency-limit", "adaptive"],
        client_throttle: None,
    },
    OverloadControl {
        name: "adaptive + client throttle",
        slug: "adaptive-throttled",
        flags: &["--concurrency-limit", "adaptive"],
        client_throttle: Some(CLIENT_THROTTLE_K),
    },
];

/// K of the cooperating client's throttle: the gateway sees about 1.1 calls per one it
/// accepts, so it refuses about one in eleven of what reaches it.
const CLIENT_THROTTLE_K: f64 = 1.1;

/// The measured segments of the overload run, by their index in its profile. Segment 0 is
/// the lead-in: warmup at the base load while connections and the limit settle, not
/// measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// 0.5×: the unloaded figures every other step is compared with.
    Base = 1,
    /// 3× (`--peak-factor`).
    Peak,
    /// 0.5× again, twice as long: how soon accepted latency recovers.
    After,
    /// Logging slowed by `--slow-logging-delay`, at `--slow-logging-load`, twice as long.
    SlowLogging,
}

/// The measured steps, in order.
const STEPS: [Step; 4] = [Step::Base, Step::Peak, Step::After, Step::SlowLogging];

impl Step {
    /// Its load, as a multiple of saturation.
    fn load(self, args: &PressureArgs) -> f64 {
        match self {
            Step::Base | Step::After => BASE_LOAD,
            Step::Peak => args.peak_factor,
            Step::SlowLogging => args.slow_logging_load,
        }
    }

    /// How long it lasts.
    fn length(self, args: &PressureArgs) -> Duration {
        match self {
            Step::Base | Step::Peak => args.step_for,
            Step::After | Step::SlowLogging => args.step_for * 2,
        }
    }

    /// What the step is, for its heading.
    fn purpose(self, delay: Duration) -> String {
        match self {
            Step::Base => "unloaded".into(),
            Step::Peak => "overload".into(),
            Step::After => "after the overload".into(),
            Step::SlowLogging => format!("logging slowed by {delay:?}"),
        }
    }
}

/// The overload run's rate profile: the lead-in, then each [`Step`] at its index.
fn overload_profile(sat: f64, args: &PressureArgs) -> Arrivals {
    let segment = |load: f64, duration: Duration| Segment {
        duration,
        from: sat * load,
        to: sat * load,
    };
    let lead_in = segment(BASE_LOAD, LEAD_IN);
    let steps = STEPS.map(|step| segment(step.load(args), step.length(args)));
    Arrivals {
        kind: ArrivalKind::Constant,
        segments: std::iter::once(lead_in).chain(steps).collect(),
    }
}

/// One step's figures on one gateway.
#[derive(Debug, Clone, Default, PartialEq)]
struct StepResult {
    /// Sent by the generator per second while the step lasted.
    sent: f64,
    /// OK per second while the step lasted.
    goodput: f64,
    /// p99 of the OK transactions due in the step, ms.
    ok_p99: f64,
    /// Share of the transactions due in the step that the gateway refused
    /// (RESOURCE_EXHAUSTED).
    refused: f64,
    /// Share of the calls wanted while the step lasted that the client's own throttle
    /// refused (never sent).
    throttled: f64,
    /// The highest degradation level while the step lasted.
    degradation_max: Option<u8>,
}

/// One gateway's figures.
struct ControlFigures {
    /// Indexed by [`Step`] (index 0: the lead-in).
    steps: Vec<StepResult>,
    /// Seconds from the end of the peak until accepted p99 was back within
    /// [`P99_TARGET_FACTOR`] of the unloaded one.
    recovery: Option<f64>,
    rss_peak: f64,
    rss_growth: f64,
    /// At the peak, the mean time a transaction spent in each gateway stage (ms):
    /// admission, mesh (`sluice_gateway_stage_seconds`). Beside the client's accepted p99,
    /// it says where a queue formed: in front of the gateway (the client's connection, the
    /// socket) when neither stage holds it.
    peak_stages: Option<[f64; 2]>,
    /// Gateway CPU µs per OK call with nothing refused (the unloaded step), and per refusal
    /// at the peak (its CPU less its OK calls at the unloaded cost, over its refusals).
    refusal_cost: Option<[f64; 2]>,
    /// Busiest risk and logging worker pools (of their capacity) before logging was
    /// slowed: whether a pool ever filled, i.e. whether a load-aware pool size would have
    /// had anything to do.
    pools_busy: [f64; 2],
    pools_capacity: [f64; 2],
    /// The bottleneck the gateway named most often while logging was slow.
    bottleneck: Option<BottleneckSeen>,
    errors: String,
}

/// Mean ms per unary transaction in the gateway's admission and mesh stages between two
/// scrapes.
fn stage_means(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> [f64; 2] {
    ["admission", "mesh"].map(|stage| {
        let series = |part: &str| {
            let key =
                format!("sluice_gateway_stage_seconds_{part}{{api=\"unary\",stage=\"{stage}\"}}");
            after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
        };
        let count = series("count");
        if count > 0.0 {
            1000.0 * series("sum") / count
        } else {
            0.0
        }
    })
}

/// Gateway CPU µs per OK unary call over the unloaded step (`base` → `peak` snapshots),
/// and per refusal over the peak (`peak` → `after`): the peak's CPU less its OK calls at
/// the unloaded cost, over the calls it refused. None without refusals.
fn refusal_cost(
    base: &(std::collections::BTreeMap<String, f64>, f64),
    peak: &(std::collections::BTreeMap<String, f64>, f64),
    after: &(std::collections::BTreeMap<String, f64>, f64),
) -> Option<[f64; 2]> {
    let calls = |m: &std::collections::BTreeMap<String, f64>| -> (f64, f64) {
        let all = m
            .iter()
            .filter(|(k, _)| k.starts_with("sluice_gateway_transactions_total{api=\"unary\""))
            .map(|(_, v)| v)
            .sum::<f64>();
        let ok = m
            .get("sluice_gateway_transactions_total{api=\"unary\",result=\"ok\"}")
            .copied()
            .unwrap_or(0.0);
        (all, ok)
    };
    let ((_, b_ok), (p_all, p_ok), (a_all, a_ok)) =
        (calls(&base.0), calls(&peak.0), calls(&after.0));
    let ok_base = p_ok - b_ok;
    let per_ok = 1e6 * (peak.1 - base.1) / ok_base.max(1.0);
    let (ok_peak, refused_peak) = (a_ok - p_ok, (a_all - p_all) - (a_ok - p_ok));
    (refused_peak > 0.0).then(|| {
        let cpu = 1e6 * (after.1 - peak.1);
        [per_ok, ((cpu - ok_peak * per_ok) / refused_peak).max(0.0)]
    })
}

/// The timeline points whose interval (`tick` seconds, ending at `t`) lies within
/// `start..end` seconds of the run.
fn within(timeline: &[TimelinePoint], start: f64, end: f64, tick: f64) -> &[TimelinePoint] {
    let from = timeline.partition_point(|p| p.t - tick < start - TICK_SLACK);
    let to = timeline.partition_point(|p| p.t <= end + TICK_SLACK);
    &timeline[from..to.max(from)]
}

/// Step `i`'s figures: rates from the timeline while it lasted, latency and refusals from
/// the transactions due in it.
fn step_result(report: &Report, profile: &Arrivals, i: usize, tick: f64) -> StepResult {
    let start = profile.segment_start(i);
    let end = start + profile.segments[i].duration.as_secs_f64();
    let points = within(&report.timeline, start, end, tick);
    let n = points.len().max(1) as f64;
    let due = report.steps.get(i).map(|s| &s.figures);
    StepResult {
        sent: points.iter().map(|p| p.sent).sum::<f64>() / n,
        goodput: points.iter().map(|p| p.ok).sum::<f64>() / n,
        ok_p99: due.map_or(0.0, |f| f.ok_p99_ms),
        refused: due.map_or(0.0, |f| {
            f.errors.get("RESOURCE_EXHAUSTED").copied().unwrap_or(0) as f64 / f.sent.max(1) as f64
        }),
        degradation_max: points.iter().filter_map(|p| p.degradation_level).max(),
        throttled: {
            let throttled: f64 = points.iter().map(|p| p.throttled).sum();
            let sent: f64 = points.iter().map(|p| p.sent).sum();
            throttled / (throttled + sent).max(1e-9)
        },
    }
}

/// Seconds from `since` until the end of the first of `points` whose accepted p99 is within
/// [`P99_TARGET_FACTOR`] of `unloaded_p99` (ms).
fn time_to_recover(points: &[TimelinePoint], since: f64, unloaded_p99: f64) -> Option<f64> {
    points
        .iter()
        .find(|p| p.ok > 0.0 && p.ok_p99_ms <= P99_TARGET_FACTOR * unloaded_p99)
        .map(|p| p.t - since)
}

/// Whether the peak met the target (accepted p99 within [`P99_TARGET_FACTOR`] of the base
/// step's, goodput at least [`GOODPUT_TARGET`] of `sat`), with the figures that decide it.
fn verdict(base: &StepResult, peak: &StepResult, sat: f64) -> (bool, String) {
    let p99_ok = base.ok_p99 > 0.0 && peak.ok_p99 <= P99_TARGET_FACTOR * base.ok_p99;
    let share = peak.goodput / sat.max(1e-9);
    let goodput_ok = share >= GOODPUT_TARGET;
    let why = format!(
        "accepted p99 {:.1} ms {} {P99_TARGET_FACTOR} x {:.1} ms unloaded; goodput {:.0} tx/s = {:.0} % of saturation {} {:.0} %",
        peak.ok_p99,
        if p99_ok { "<=" } else { ">" },
        base.ok_p99,
        peak.goodput,
        100.0 * share,
        if goodput_ok { ">=" } else { "<" },
        100.0 * GOODPUT_TARGET
    );
    (p99_ok && goodput_ok, why)
}

/// Slows every logging append by `delay`: the fault layer's fixed delay holds a worker just
/// as slow work would, so logging's capacity drops as a slow disk's would.
async fn set_logging_delay(mesh: &ProcMesh, delay: Duration) -> anyhow::Result<()> {
    let mut control = mesh.control(&mesh.logging).await?;
    control
        .set(Faults {
            delay_ms: u32::try_from(delay.as_millis()).unwrap_or(u32::MAX),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// One gateway through the overload run: a fresh mesh, one unary run over `profile`,
/// logging slowed when its last step starts.
async fn overload_run(
    dir: &std::path::Path,
    control: &OverloadControl,
    profile: &Arc<Arrivals>,
    args: &PressureArgs,
) -> anyhow::Result<ControlFigures> {
    let gateway = control.flags.iter().map(|f| f.to_string()).collect();
    let mesh = mesh_with(dir, gateway).await?;
    let metrics = mesh.gateway.metrics_url()?;
    let total = profile.total();
    let (load, start) = start(
        spec(
            &mesh.gateway.url(),
            Pacing::Shaped(profile.clone()),
            total - LEAD_IN,
            format!("steps-{}", control.slug),
        )
        .mode(Mode::Unary)
        .warmup(LEAD_IN)
        // What a real client gives a transaction: the accepted p99 is what it would see.
        .timeout(DEFAULT_TIMEOUT)
        .tick(OVERLOAD_TICK)
        .max_outstanding(OPEN_LOOP_OUTSTANDING)
        .client_throttle(control.client_throttle)
        // The timeline records the gateway's degradation level and bottleneck.
        .metrics(Some(metrics.clone()))
        .build()?,
    )
    .await?;
    let baseline = sluice_loadgen::admin::metrics::metric(&metrics, RSS)
        .await
        .unwrap_or(0.0);
    let slow_from = profile.segment_start(Step::SlowLogging as usize);
    let slow_at = start + Duration::from_secs_f64(slow_from);
    let (risk_metrics, logging_metrics) = (mesh.risk.metrics_url()?, mesh.logging.metrics_url()?);
    let peak_stages = {
        let at = |step: Step| start + Duration::from_secs_f64(profile.segment_start(step as usize));
        let marks = [at(Step::Base), at(Step::Peak), at(Step::After)];
        let (metrics, pid) = (metrics.clone(), mesh.gateway.pid());
        tokio::spawn(async move {
            let ticks = crate::bench::ticks_per_second();
            let mut snaps = Vec::new();
            for mark in marks {
                tokio::time::sleep_until(mark.into()).await;
                let cpu = crate::bench::cpu_seconds(pid, ticks);
                snaps.push(
                    sluice_loadgen::admin::metrics::samples(&metrics)
                        .await
                        .zip(cpu),
                );
            }
            let [base, peak, after] = [0, 1, 2].map(|i| snaps[i].take());
            let stages = peak
                .as_ref()
                .zip(after.as_ref())
                .map(|((b, _), (a, _))| stage_means(b, a));
            let cost = base
                .zip(peak)
                .zip(after)
                .and_then(|((b, p), a)| refusal_cost(&b, &p, &a));
            (stages, cost)
        })
    };
    let ([rss], [risk_busy, risk_capacity], [logging_busy, logging_capacity]) = tokio::join!(
        peaks(&metrics, [RSS], slow_at, [baseline]),
        peaks(&risk_metrics, [RISK_BUSY, RISK_CAPACITY], slow_at, [0.0; 2]),
        peaks(
            &logging_metrics,
            [LOGGING_BUSY, LOGGING_CAPACITY],
            slow_at,
            [0.0; 2]
        ),
    );
    set_logging_delay(&mesh, args.slow_logging_delay).await?;
    let [rss] = peaks(&metrics, [RSS], start + total, [rss]).await;
    let report = load.await??;
    let (peak_stages, refusal_cost) = peak_stages.await?;

    let tick = OVERLOAD_TICK.as_secs_f64();
    let steps: Vec<StepResult> = (0..profile.segments.len())
        .map(|i| step_result(&report, profile, i, tick))
        .collect();
    let peak_end = profile.segment_start(Step::After as usize);
    let after = within(&report.timeline, peak_end, slow_from, tick);
    let slow_to = slow_from
        + profile.segments[Step::SlowLogging as usize]
            .duration
            .as_secs_f64();
    let slow = within(&report.timeline, slow_from, slow_to, tick);
    Ok(ControlFigures {
        recovery: time_to_recover(after, peak_end, steps[Step::Base as usize].ok_p99),
        steps,
        rss_peak: rss,
        rss_growth: rss - baseline,
        peak_stages,
        refusal_cost,
        pools_busy: [risk_busy, logging_busy],
        pools_capacity: [risk_capacity, logging_capacity],
        bottleneck: bottleneck_named(slow),
        errors: counts(&report.errors),
    })
}

/// The overload-control section: static vs adaptive, one run each.
async fn overload(dir: &std::path::Path, args: &PressureArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.step_for.is_zero(), "--step-for must be more than 0");
    anyhow::ensure!(
        args.peak_factor > 0.0 && args.slow_logging_load > 0.0,
        "--peak-factor and --slow-logging-load must be more than 0"
    );
    let measured_on = &CONTROLS[0];
    let (sat, frontier) = match args.unary_saturation {
        Some(s) => (s, Vec::new()),
        None => {
            eprintln!(
                "measuring unary goodput and p99 closed loop at {FRONTIER:?} outstanding ({SATURATION_RUN:?} each, {}); saturation at {UNARY_SATURATION_CONCURRENCY} ...",
                measured_on.name
            );
            let flags = measured_on.flags.iter().map(|f| f.to_string()).collect();
            let frontier = measure_frontier(dir, flags).await?;
            let sat = frontier.last().map_or(0.0, |p| p.goodput);
            (sat, frontier)
        }
    };
    let profile = Arc::new(overload_profile(sat, args));
    let mut figures = Vec::new();
    for control in &CONTROLS {
        eprintln!(
            "{}: unary {BASE_LOAD}x, {}x, {BASE_LOAD}x of {sat:.0} tx/s, then logging slowed by {:?} at {}x ({:?}) ...",
            control.name,
            args.peak_factor,
            args.slow_logging_delay,
            args.slow_logging_load,
            profile.total()
        );
        figures.push(overload_run(dir, control, &profile, args).await?);
    }

    let col = |get: &dyn Fn(&ControlFigures) -> String| {
        figures
            .iter()
            .map(get)
            .map(|s| format!("{s:>28}"))
            .collect::<String>()
    };
    let row = |label: &str, values: String| println!("{label:<44}{values}");
    println!(
        "\noverload control: unary, release binaries on loopback, saturation {sat:.0} tx/s (closed loop, {})",
        measured_on.name
    );
    println!("{}", crate::procs::cpu_split());
    row(
        "",
        CONTROLS
            .iter()
            .map(|c| format!("{:>28}", c.name))
            .collect::<String>(),
    );
    for step in STEPS {
        let i = step as usize;
        let segment = &profile.segments[i];
        println!(
            "{}x ({:.0} tx/s) for {:?}: {}",
            step.load(args),
            segment.from,
            segment.duration,
            step.purpose(args.slow_logging_delay)
        );
        row(
            "  sent by the generator",
            col(&|f| format!("{:.0} tx/s", f.steps[i].sent)),
        );
        row(
            "  goodput (share of saturation)",
            col(&|f| {
                let goodput = f.steps[i].goodput;
                format!("{goodput:.0} tx/s ({:.0}%)", 100.0 * goodput / sat)
            }),
        );
        row(
            "  accepted p99",
            col(&|f| format!("{:.1} ms", f.steps[i].ok_p99)),
        );
        row(
            "  refused (RESOURCE_EXHAUSTED)",
            col(&|f| format!("{:.1}%", 100.0 * f.steps[i].refused)),
        );
        row(
            "  throttled by the client (not sent)",
            col(&|f| format!("{:.1}%", 100.0 * f.steps[i].throttled)),
        );
        row(
            "  degradation level, max",
            col(&|f| {
                f.steps[i]
                    .degradation_max
                    .map_or("-".to_string(), |l| l.to_string())
            }),
        );
        match step {
            Step::Peak => {
                row(
                    "  at the gateway, mean admission / mesh",
                    col(&|f| {
                        f.peak_stages.map_or("-".to_string(), |[admission, mesh]| {
                            format!("{admission:.1} / {mesh:.1} ms")
                        })
                    }),
                );
                row(
                    "  gateway CPU per OK (unloaded) / refusal",
                    col(&|f| {
                        f.refusal_cost.map_or("-".to_string(), |[ok, refusal]| {
                            format!("{ok:.0} / {refusal:.0} µs")
                        })
                    }),
                );
            }
            Step::After => row(
                &format!("  accepted p99 back within {P99_TARGET_FACTOR}x unloaded after"),
                col(&|f| {
                    f.recovery
                        .map_or("never".to_string(), |s| format!("{s:.1} s"))
                }),
            ),
            Step::SlowLogging => row(
                "  bottleneck named (intervals)",
                col(&|f| match &f.bottleneck {
                    Some(b) if b.intervals > 0 => format!(
                        "{} {:.0}% ({}/{})",
                        b.hop,
                        100.0 * b.share,
                        b.intervals,
                        b.of_intervals
                    ),
                    Some(b) => b.hop.clone(),
                    None => "-".to_string(),
                }),
            ),
            _ => {}
        }
    }
    row(
        "gateway peak memory (growth)",
        col(&|f| format!("{:.1} MiB ({:+.1})", f.rss_peak / MIB, f.rss_growth / MIB)),
    );
    row(
        "busiest workers risk / logging",
        col(&|f| {
            format!(
                "{:.0}/{:.0} / {:.0}/{:.0}",
                f.pools_busy[0], f.pools_capacity[0], f.pools_busy[1], f.pools_capacity[1]
            )
        }),
    );
    for (control, f) in CONTROLS.iter().zip(&figures) {
        println!("errors, {}: {}", control.name, f.errors);
    }
    if !frontier.is_empty() {
        println!(
            "\nthe mesh's own curve, closed loop, {}, nothing refused:",
            measured_on.name
        );
        for p in &frontier {
            println!(
                "  {:>5} outstanding: goodput {:>6.0} tx/s ({:>3.0} % of saturation), p99 {:>6.1} ms",
                p.concurrency,
                p.goodput,
                100.0 * p.goodput / sat.max(1e-9),
                p.p99_ms
            );
        }
    }
    println!(
        "\ntarget: at {}x saturation, accepted p99 within {P99_TARGET_FACTOR}x of unloaded while goodput stays at {:.0} % of saturation or more (adaptive must meet it)",
        args.peak_factor,
        100.0 * GOODPUT_TARGET
    );
    if let Some(line) =
        frontier_verdict(&frontier, sat, figures[0].steps[Step::Base as usize].ok_p99)
    {
        println!("{line}");
    }
    for (control, f) in CONTROLS.iter().zip(&figures) {
        let (met, why) = verdict(
            &f.steps[Step::Base as usize],
            &f.steps[Step::Peak as usize],
            sat,
        );
        println!(
            "  {:<28}{}: {why}",
            control.name,
            if met { "met" } else { "MISSED" }
        );
    }
    println!(
        "reproduce: cargo run --release -p sluice-lab -- pressure --sections overload --unary-saturation {sat:.0} --step-for {:?} --peak-factor {} --slow-logging-delay {:?} --slow-logging-load {}",
        args.step_for, args.peak_factor, args.slow_logging_delay, args.slow_logging_load
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64, ok: f64, ok_p99_ms: f64) -> TimelinePoint {
        TimelinePoint {
            t,
            offered: 0.0,
            sent: ok,
            done: ok,
            ok,
            rejected: 0.0,
            throttled: 0.0,
            errors: 0.0,
            blocked_pct: 0.0,
            p50_ms: 0.0,
            p99_ms: ok_p99_ms,
            ok_p99_ms,
            queues: None,
            held: None,
            held_bounds: None,
            oldest_outstanding_ms: None,
            degradation_level: None,
            bottleneck: None,
        }
    }

    #[test]
    fn steps_take_the_intervals_that_end_inside_them() {
        // Intervals of 0.5 s, each closing a few ms late.
        let timeline: Vec<_> = (1..=8)
            .map(|k| point(0.5 * k as f64 + 0.004, k as f64, 0.0))
            .collect();
        let oks = |start, end| -> Vec<f64> {
            within(&timeline, start, end, 0.5)
                .iter()
                .map(|p| p.ok)
                .collect()
        };
        assert_eq!(oks(0.0, 2.0), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(oks(2.0, 3.0), [5.0, 6.0]);
        assert_eq!(oks(3.0, 9.0), [7.0, 8.0]);
        assert!(oks(5.0, 6.0).is_empty());
    }

    #[test]
    fn recovery_is_the_first_interval_back_within_target() {
        let after = [
            point(10.5, 100.0, 400.0),
            point(11.0, 0.0, 0.0),
            point(11.5, 100.0, 4.5),
            point(12.0, 100.0, 3.0),
        ];
        // Unloaded p99 2.5 ms: 5 ms is within 2x; an interval with no OK is not recovery.
        assert_eq!(time_to_recover(&after, 10.0, 2.5), Some(1.5));
        assert_eq!(time_to_recover(&after[..2], 10.0, 2.5), None);
    }

    #[test]
    fn the_target_needs_both_latency_and_goodput() {
        let step = |goodput, ok_p99| StepResult {
            goodput,
            ok_p99,
            ..Default::default()
        };
        let base = step(500.0, 2.0);
        let (met, why) = verdict(&base, &step(950.0, 3.9), 1000.0);
        assert!(met, "{why}");
        assert!(why.contains("3.9 ms <= 2 x 2.0 ms"), "{why}");
        assert!(!verdict(&base, &step(950.0, 4.1), 1000.0).0, "latency");
        let (met, why) = verdict(&base, &step(850.0, 3.0), 1000.0);
        assert!(!met && why.contains("85 % of saturation < 90 %"), "{why}");
        assert!(
            !verdict(&step(500.0, 0.0), &step(950.0, 0.0), 1000.0).0,
            "no data"
        );
    }

    #[test]
    fn the_overload_profile_is_lead_in_base_peak_after_slow() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            pressure: PressureArgs,
        }
        let args = Cli::try_parse_from(["pressure", "--sections", "overload"])
            .unwrap()
            .pressure;
        assert_eq!(args.sections, [Section::Overload]);
        let profile = overload_profile(1000.0, &args);
        let rates: Vec<f64> = profile.segments.iter().map(|s| s.from).collect();
        assert_eq!(rates, [500.0, 500.0, 3000.0, 500.0, 1000.0]);
        assert_eq!(profile.total(), LEAD_IN + Duration::from_secs(30));
        assert_eq!(
            profile.segment_start(Step::Peak as usize),
            (LEAD_IN + Duration::from_secs(5)).as_secs_f64()
        );
        assert_eq!(STEPS.len() + 1, profile.segments.len());
        for (k, step) in STEPS.iter().enumerate() {
            assert_eq!(*step as usize, k + 1, "{step:?} is segment {}", k + 1);
        }
    }
}
