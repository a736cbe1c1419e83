//! `sluice-lab bench`: what a transaction costs the mesh and how fast it goes, measured
//! against the real binaries running as separate processes on loopback.
//!
//! For each ingress mode and each build (`--bin-dir`, and `--base-bin-dir` when comparing
//! two commits), in the same invocation and run for run alternating the builds so both see
//! the same machine:
//!
//! - **cost**: CPU per transaction of each mesh process (`utime + stime` from `/proc`, the
//!   generator excluded) at a fixed open-loop rate (`--cost-rate`) and at saturation. On a
//!   shared machine it is far steadier than throughput.
//! - **saturation**: closed-loop OK/s at a concurrency that saturates the mesh.
//! - **tail**: the p99 of every open-loop run at half of saturation, with the audit log on
//!   disk (next to that run's `fdatasync` p99.9 from logging's `audit_fsync_seconds`) and on
//!   a tmpfs (`--tmpfs`): the mesh's own tail apart from the disk's. Beside each, how long
//!   the machine stalled meanwhile ([`sluice_loadgen::drive::stalls`]): what no mesh can hide; and
//!   the generator's own CPU, its share of the cores the mesh runs on.
//! - **single hop**: the same generator against `sink`, a bare tonic gateway in its own
//!   process, and the ratios mesh / single hop.
//!
//! Figures vary with the machine and its neighbours: quote medians, with the command.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::bench::summary::{run_line, single_hop, summary};
use crate::bench::tail::{Tail, half_load_run};
use crate::cpu::{Cost, Cpu, Threads, ticks_per_second};
use crate::kit::{Measure, median};
use crate::procs::{MeshOptions, ProcMesh, bin_dir};
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::spec::{LoadSpec, Mode, Pacing};
use sluice_loadgen::report::Report;

mod summary;
mod tail;
#[cfg(test)]
mod tests;

/// Default open-loop rate at which the cost per transaction is measured: moderate load,
/// where per-message overheads (wake-ups, syscalls, one frame per message) dominate.
pub const DEFAULT_COST_RATE: f64 = 3000.0;
/// Default directory on a tmpfs for the audit log of the mesh-alone tail runs.
pub const DEFAULT_TMPFS: &str = "/dev/shm";
/// The audit log's fsync histogram (logging's `/metrics`).
pub(crate) const FSYNC_METRIC: &str = sluice_observe::names::logging::AUDIT_FSYNC_SECONDS;
/// The gateway's own latency, admission to outcome (its `/metrics`), by API: what of the
/// client's latency the mesh spent, apart from the generator and the sockets to it.
pub(crate) const GATEWAY_LATENCY: &str = sluice_observe::names::gateway::LATENCY_SECONDS;

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Ingress modes to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "stream,unary"
    )]
    pub modes: Vec<Mode>,
    /// What to measure: cost (CPU per transaction at --cost-rate), saturation (and its
    /// cost), tail (p99 at half load, on disk and on tmpfs; needs saturation), sink (the
    /// single-hop reference).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cost,saturation,tail,sink"
    )]
    pub sections: Vec<Section>,
    #[command(flatten)]
    pub measure: Measure,
    /// A base build's binaries (e.g. a `git worktree` of the base commit, built with
    /// `cargo build --release`): each figure is measured for both builds, run for run.
    #[arg(long, env = "SLUICE_BENCH_BASE_BIN_DIR")]
    pub base_bin_dir: Option<PathBuf>,
    /// Open-loop rate (tx/s) at which CPU per transaction is measured.
    #[arg(long, default_value_t = DEFAULT_COST_RATE)]
    pub cost_rate: f64,
    /// A directory on a tmpfs: the audit log of the mesh-alone tail runs goes here.
    #[arg(long, default_value = DEFAULT_TMPFS)]
    pub tmpfs: PathBuf,
    /// Closed-loop concurrency that saturates stream ingress.
    #[arg(long, default_value_t = 2000)]
    pub stream_concurrency: usize,
    /// Closed-loop concurrency that saturates unary ingress.
    #[arg(long, default_value_t = 256)]
    pub unary_concurrency: usize,
    /// Client connections to the gateway.
    #[arg(long, default_value_t = sluice_loadgen::drive::spec::DEFAULT_CONNECTIONS)]
    pub connections: usize,
}

/// A part of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    Cost,
    Saturation,
    Tail,
    Sink,
}

/// One build under measurement: where its binaries are and what it measured.
pub(crate) struct Build {
    pub(crate) name: &'static str,
    pub(crate) dir: PathBuf,
    pub(crate) cost: Vec<Cost>,
    pub(crate) cost_p99: Vec<f64>,
    pub(crate) cost_p50: Vec<f64>,
    pub(crate) saturation: Vec<f64>,
    pub(crate) saturation_cost: Vec<Cost>,
    pub(crate) saturation_threads: Vec<Threads>,
    /// Connections the gateway held to each downstream as each saturation run ended.
    pub(crate) saturation_lanes: Vec<Lanes>,
    pub(crate) saturation_p99: Vec<f64>,
    pub(crate) disk: Vec<Tail>,
    pub(crate) tmpfs: Vec<Tail>,
}

impl Build {
    pub(crate) fn new(name: &'static str, dir: PathBuf) -> Build {
        Build {
            name,
            dir,
            cost: Vec::new(),
            cost_p99: Vec::new(),
            cost_p50: Vec::new(),
            saturation: Vec::new(),
            saturation_cost: Vec::new(),
            saturation_threads: Vec::new(),
            saturation_lanes: Vec::new(),
            saturation_p99: Vec::new(),
            disk: Vec::new(),
            tmpfs: Vec::new(),
        }
    }

    pub(crate) fn half_load(&self) -> f64 {
        (median(self.saturation.clone()) / 2.0).max(1.0)
    }
}

impl BenchArgs {
    pub(crate) fn spec(
        &self,
        target: &str,
        mode: Mode,
        pacing: Pacing,
        run: usize,
    ) -> anyhow::Result<LoadSpec> {
        LoadSpec::builder(target)
            .mode(mode)
            .pacing(pacing)
            .duration(self.measure.duration)
            .warmup(Duration::ZERO)
            .connections(self.connections)
            .seed(run as u64 + 1)
            .id_prefix(format!("bench-{}-{run}", std::process::id()))
            // Meshes are ready before the first run (`ProcMesh::start_ready`); the sink
            // serves no health service to ask.
            .wait_ready(false)
            .build()
    }

    pub(crate) fn concurrency(&self, mode: Mode) -> usize {
        match mode {
            Mode::Stream => self.stream_concurrency,
            Mode::Unary => self.unary_concurrency,
        }
    }

    pub(crate) fn has(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }

    /// Load nobody measures, so connections, streams, allocators and the adaptive limit
    /// settle before the first measured run.
    pub(crate) async fn warm_up(&self, target: &str, mode: Mode) -> anyhow::Result<()> {
        if self.measure.warmup.is_zero() {
            return Ok(());
        }
        let spec = LoadSpec::builder(target)
            .mode(mode)
            .pacing(Pacing::Open {
                rate: self.cost_rate,
            })
            .duration(self.measure.warmup)
            .connections(self.connections)
            .id_prefix(format!("bench-{}-warmup", std::process::id()))
            .wait_ready(false)
            .build()?;
        driver::run(spec).await.map(|_| ())
    }
}

/// Starts one build's mesh (audit log under `data_root`, or a temporary directory on
/// disk) and warms it up.
pub(crate) async fn mesh(
    args: &BenchArgs,
    dir: &Path,
    mode: Mode,
    data_root: Option<&Path>,
) -> anyhow::Result<ProcMesh> {
    let options = MeshOptions {
        data_root: data_root.map(Path::to_path_buf),
        ..MeshOptions::default()
    };
    let mesh = ProcMesh::start_ready(dir.to_path_buf(), options).await?;
    args.warm_up(&mesh.gateway.url(), mode).await?;
    Ok(mesh)
}

/// Runs the benchmark and prints its figures.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.measure.runs > 0, "--runs must be at least 1");
    anyhow::ensure!(args.cost_rate > 0.0, "--cost-rate must be above 0");
    if args.has(Section::Tail) {
        anyhow::ensure!(
            args.has(Section::Saturation),
            "--sections tail needs saturation (it runs at half of it)"
        );
        anyhow::ensure!(
            args.tmpfs.is_dir(),
            "--tmpfs {} is not a directory; give a directory on a tmpfs",
            args.tmpfs.display()
        );
    }
    let ticks = ticks_per_second();
    let dir = bin_dir(args.measure.bin_dir.as_deref())?;
    let mut builds = Vec::new();
    if let Some(base) = &args.base_bin_dir {
        builds.push(("base", base.clone()));
    }
    builds.push((if builds.is_empty() { "this" } else { "new" }, dir.clone()));
    let runs = args.measure.runs;
    println!(
        "bench: {runs} run(s) of {:?} per figure, after {:?} of warmup per mesh; medians{}",
        args.measure.duration,
        args.measure.warmup,
        if builds.len() > 1 {
            "; builds alternate run for run"
        } else {
            ""
        }
    );
    println!("bench: {}", crate::procs::cpu_split());
    let mut out = Vec::new();
    for &mode in &args.modes {
        let mode_name = mode.name();
        let mut measured: Vec<Build> = builds
            .iter()
            .map(|(name, dir)| Build::new(name, dir.clone()))
            .collect();
        // The disk meshes: cost, saturation, tail on disk.
        let mut meshes = Vec::new();
        for b in &measured {
            meshes.push(mesh(&args, &b.dir, mode, None).await?);
        }
        if args.has(Section::Cost) {
            let pacing = Pacing::Open {
                rate: args.cost_rate,
            };
            for run in 0..runs {
                for (b, m) in measured.iter_mut().zip(&meshes) {
                    let (r, cost, _) =
                        charged_run(&args, m, mode, pacing.clone(), run, ticks).await?;
                    eprintln!(
                        "  {mode_name} {} cost run {}: {}",
                        b.name,
                        run + 1,
                        run_line(&r, &cost)
                    );
                    b.cost_p99.push(r.latency_ms.p99);
                    b.cost_p50.push(r.latency_ms.p50);
                    b.cost.push(cost);
                }
            }
        }
        if args.has(Section::Saturation) {
            let pacing = Pacing::Closed {
                concurrency: args.concurrency(mode),
            };
            for run in 0..runs {
                for (b, m) in measured.iter_mut().zip(&meshes) {
                    let (r, cost, threads) =
                        charged_run(&args, m, mode, pacing.clone(), run, ticks).await?;
                    let lanes = Lanes::of(m).await;
                    eprintln!(
                        "  {mode_name} {} saturation run {}: {}; busiest threads {}; connections {}",
                        b.name,
                        run + 1,
                        run_line(&r, &cost),
                        Threads::line(std::slice::from_ref(&threads)),
                        Lanes::line(std::slice::from_ref(&lanes))
                    );
                    b.saturation_threads.push(threads);
                    b.saturation_lanes.push(lanes);
                    b.saturation.push(r.ok_rate);
                    b.saturation_p99.push(r.latency_ms.p99);
                    b.saturation_cost.push(cost);
                }
            }
        }
        if args.has(Section::Tail) {
            for run in 0..runs {
                for (b, m) in measured.iter_mut().zip(&meshes) {
                    let tail =
                        half_load_run(&args, ticks, m, mode, b.half_load(), run + 100).await?;
                    eprintln!(
                        "  {mode_name} {} half load on disk run {}: {}",
                        b.name,
                        run + 1,
                        tail.line()
                    );
                    b.disk.push(tail);
                }
            }
        }
        drop(meshes);
        if args.has(Section::Tail) {
            let mut meshes = Vec::new();
            for b in &measured {
                meshes.push(mesh(&args, &b.dir, mode, Some(&args.tmpfs)).await?);
            }
            for run in 0..runs {
                for (b, m) in measured.iter_mut().zip(&meshes) {
                    let tail =
                        half_load_run(&args, ticks, m, mode, b.half_load(), run + 200).await?;
                    eprintln!(
                        "  {mode_name} {} half load on tmpfs run {}: {}",
                        b.name,
                        run + 1,
                        tail.line()
                    );
                    b.tmpfs.push(tail);
                }
            }
        }
        let single = if args.has(Section::Sink) {
            Some(single_hop(&args, &dir, mode, ticks).await?)
        } else {
            None
        };
        out.push(summary(&args, mode_name, &measured, single.as_ref()));
    }
    println!();
    for block in out {
        println!("{block}");
    }
    println!(
        "reproduce: cargo build --release && target/release/sluice-lab bench --runs {} --duration {:?} --warmup {:?}{}",
        runs,
        args.measure.duration,
        args.measure.warmup,
        if args.base_bin_dir.is_some() {
            " --base-bin-dir BASE/target/release"
        } else {
            ""
        }
    );
    Ok(())
}

/// One run against `mesh`, its CPU charged to each of the mesh's processes.
/// The connections the gateway holds to each downstream (all replicas), by service, read
/// through the gateway's own snapshot; none when its `/metrics` has none (a build from
/// before lanes).
#[derive(Debug, Clone, Default)]
pub(crate) struct Lanes(std::collections::BTreeMap<String, f64>);

impl Lanes {
    async fn of(mesh: &ProcMesh) -> Lanes {
        let Ok(url) = mesh.gateway.metrics_url() else {
            return Lanes::default();
        };
        let Some(samples) = sluice_loadgen::admin::metrics::samples(&url).await else {
            return Lanes::default();
        };
        let snapshot = sluice_observe::snapshot::Snapshot::of(
            &sluice_observe::snapshot::GatewaySamples::of_map(&samples),
            None,
        );
        Lanes(
            snapshot
                .services
                .into_iter()
                .filter(|s| s.lanes > 0.0)
                .map(|s| (s.name, s.lanes))
                .collect(),
        )
    }

    /// The most each service had over `runs`, as `logging 1, notification 1, risk 2`.
    pub(crate) fn line(runs: &[Lanes]) -> String {
        let mut most = std::collections::BTreeMap::<&str, f64>::new();
        for (service, v) in runs.iter().flat_map(|r| &r.0) {
            let m = most.entry(service).or_default();
            *m = m.max(*v);
        }
        if most.is_empty() {
            return "n/a".to_string();
        }
        most.iter()
            .map(|(s, v)| format!("{s} {v:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

async fn charged_run(
    args: &BenchArgs,
    mesh: &ProcMesh,
    mode: Mode,
    pacing: Pacing,
    run: usize,
    ticks: f64,
) -> anyhow::Result<(Report, Cost, Threads)> {
    Cpu::of_mesh(mesh, ticks)
        .run(args.spec(&mesh.gateway.url(), mode, pacing, run)?)
        .await
}
