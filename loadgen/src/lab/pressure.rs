//! `sluice-loadgen pressure`: the backpressure benchmark, bounded vs unbounded.
//!
//! Against the real binaries (separate processes on loopback), for the default bounded
//! gateway and for the same gateway with `--unbounded-for-comparison`:
//!
//! 1. **Stall at 50 % load.** SubmitStream at half of saturation; logging is stalled for
//!    `--stall-for`, then unstalled. Reported: time from the stall until the generator's sends
//!    block; the most transactions held between client and logging (the gateway's admitted,
//!    unacknowledged count) against the bound computed from the flags; the gateway's memory
//!    growth against the bytes those bounds allow; time from unstall until throughput is back.
//! 2. **10× overload.** SubmitStream offered at ten times saturation (no fault): goodput as a
//!    share of saturation, and the gateway's peak memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use prost::Message;
use sluice_proto::pb::Faults;
use tokio::task::JoinHandle;

use crate::drive::driver;
use crate::drive::spec::{LoadSpec, LoadSpecBuilder, Mode, Pacing};
use crate::drive::traffic::Traffic;
use crate::lab::procs::{MeshOptions, ProcMesh, bin_dir};
use crate::report::Report;

#[derive(Debug, Clone, Args)]
pub struct PressureArgs {
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
async fn peaks<const N: usize>(
    metrics: &str,
    names: [&str; N],
    end: Instant,
    mut floor: [f64; N],
) -> [f64; N] {
    while Instant::now() < end {
        for (name, peak) in names.iter().zip(floor.iter_mut()) {
            let now = crate::admin::metrics::metric(metrics, name).await;
            *peak = peak.max(now.unwrap_or(0.0));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    floor
}

const RSS: &str = "sluice_gateway_process_resident_memory_bytes";
const HELD: &str = "sluice_gateway_inflight{api=\"stream\"}";

async fn set_stall(mesh: &ProcMesh, stall: bool) -> anyhow::Result<()> {
    let mut control = mesh.control(&mesh.logging).await?;
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
    let mut gateway = Vec::new();
    if let Some(d) = deadline {
        gateway.extend([
            "--default-deadline".to_string(),
            format!("{}ms", d.as_millis()),
        ]);
    }
    if unbounded {
        gateway.push("--unbounded-for-comparison".into());
    }
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
    let baseline = crate::admin::metrics::metric(&metrics, RSS)
        .await
        .unwrap_or(0.0);
    set_stall(&mesh, true).await?;
    let stall_at = start.elapsed().as_secs_f64();
    let [held, rss] = peaks(
        &metrics,
        [HELD, RSS],
        Instant::now() + args.stall_for,
        [0.0, baseline],
    )
    .await;
    set_stall(&mesh, false).await?;
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
    let baseline = crate::admin::metrics::metric(&metrics, RSS)
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

async fn measure_saturation(dir: &std::path::Path) -> anyhow::Result<f64> {
    let mesh = mesh(dir, false, None).await?;
    let spec = spec(
        &mesh.gateway.url(),
        Pacing::Closed {
            concurrency: SATURATION_CONCURRENCY,
        },
        SATURATION_RUN,
        "sat".into(),
    )
    .max_outstanding(SATURATION_CONCURRENCY)
    .warmup(SATURATION_WARMUP)
    .build()?;
    Ok(driver::run(spec).await?.ok_rate)
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

/// Runs the benchmark and prints its table.
pub async fn pressure(args: PressureArgs) -> anyhow::Result<()> {
    let dir = bin_dir(args.bin_dir.as_deref())?;
    let sat = match args.saturation {
        Some(s) => s,
        None => {
            eprintln!(
                "measuring saturation (closed loop, {SATURATION_CONCURRENCY} outstanding, {SATURATION_RUN:?}) ..."
            );
            measure_saturation(&dir).await?
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
        stall_phase(&dir, v, sat, &args, &mut f).await?;
        eprintln!(
            "{}: {}x overload for {:?} ...",
            v.name, args.overload_factor, args.overload_for
        );
        overload_phase(&dir, v, sat, &args, &mut f).await?;
        figures.push(f);
    }

    // The bound on transactions held between client and logging, from the gateway defaults.
    let d = sluice_gateway::Config::defaults();
    let held_bound = (d.downstream_queue + d.streams_per_downstream * d.downstream_stream_inflight)
        .min(CONNECTIONS * d.stream_inflight) as f64;
    let msg = message_bytes();
    let windows = (CONNECTIONS as f64 + 1.0) * f64::from(d.server.h2.connection_window);
    let bytes_bound = held_bound * msg + windows;

    let col = |get: &dyn Fn(&Figures) -> String| {
        figures
            .iter()
            .map(get)
            .map(|s| format!("{s:>26}"))
            .collect::<String>()
    };
    let secs = |v: Option<f64>| v.map_or("never".to_string(), |s| format!("{s:.1} s"));
    println!("\nbackpressure benchmark: release binaries on loopback, saturation {sat:.0} tx/s");
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
        "reproduce: cargo run --release -p sluice-loadgen -- pressure --stall-for {:?} --overload-for {:?}",
        args.stall_for, args.overload_for
    );
    Ok(())
}
