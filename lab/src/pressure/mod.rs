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
use std::time::{Duration, Instant};

use clap::Args;
use tokio::task::JoinHandle;

use crate::pressure::backpressure::backpressure;
use crate::pressure::overload::overload;
use crate::procs::{MeshOptions, ProcMesh, bin_dir};
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::spec::{LoadSpec, LoadSpecBuilder, Mode, Pacing};
use sluice_loadgen::report::Report;

mod backpressure;
mod overload;
#[cfg(test)]
mod tests;

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
pub(crate) const CONNECTIONS: usize = 2;
/// In the stall phase transactions are given this long (the gateway's default deadline and
/// the generator's timeout), so none expires during the stall: the bounds, not deadlines, are
/// what is measured. The overload phase keeps the gateway's default deadline (5 s): what a
/// real client would see.
pub(crate) const STALL_DEADLINE: Duration = Duration::from_secs(120);
/// The generator's per-transaction timeout in the overload phase.
pub(crate) const OVERLOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// The generator's own open-loop bound, far above anything the mesh holds, so it never binds:
/// what is measured is the mesh's pushback, not the generator's.
pub(crate) const OPEN_LOOP_OUTSTANDING: usize = 5_000_000;
/// Saturation is measured closed loop with this many transactions outstanding (enough to
/// saturate SubmitStream ingress on one machine), over this long after a warmup.
pub(crate) const SATURATION_CONCURRENCY: usize = 4000;
pub(crate) const SATURATION_RUN: Duration = Duration::from_secs(8);
pub(crate) const SATURATION_WARMUP: Duration = Duration::from_secs(2);
pub(crate) const LEAD_IN: Duration = Duration::from_secs(2);
pub(crate) const RECOVERY_WINDOW: Duration = Duration::from_secs(15);
pub(crate) const MIB: f64 = 1024.0 * 1024.0;
/// Unary saturation is measured closed loop with this many calls outstanding: enough to
/// saturate unary ingress on one machine (bench's default), far under the gateway's static
/// limit, so nothing is refused while measuring.
pub(crate) const UNARY_SATURATION_CONCURRENCY: usize = 256;
/// The overload section's timeline interval: fine enough to time a recovery, long enough
/// for a p99 of its own at half of saturation.
pub(crate) const OVERLOAD_TICK: Duration = Duration::from_millis(500);
/// How late a timeline interval may close (timer lateness) and still count as inside the
/// step it ends in, seconds.
pub(crate) const TICK_SLACK: f64 = 0.05;
/// Load of the steps before and after the peak, as a multiple of saturation.
pub(crate) const BASE_LOAD: f64 = 0.5;
/// The target and "recovered": the accepted p99 within this multiple of the unloaded one.
pub(crate) const P99_TARGET_FACTOR: f64 = 2.0;
/// The target's goodput at the peak, as a share of saturation.
pub(crate) const GOODPUT_TARGET: f64 = 0.9;

/// A SubmitStream run against `target` as every phase drives it.
pub(crate) fn spec(
    target: &str,
    pacing: Pacing,
    duration: Duration,
    prefix: String,
) -> LoadSpecBuilder {
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
pub(crate) async fn start(
    spec: LoadSpec,
) -> anyhow::Result<(JoinHandle<anyhow::Result<Report>>, Instant)> {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let load = tokio::spawn(driver::run_with(spec, Some(started_tx)));
    Ok((load, started_rx.await?))
}

pub(crate) async fn mesh(
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
pub(crate) async fn mesh_with(
    dir: &std::path::Path,
    gateway: Vec<String>,
) -> anyhow::Result<ProcMesh> {
    let options = MeshOptions {
        gateway,
        ..Default::default()
    };
    ProcMesh::start_ready(dir.to_path_buf(), options).await
}

/// OK/s of `mode` closed loop, on a fresh mesh whose gateway has `gateway` flags added.
pub(crate) async fn measure_saturation(
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
