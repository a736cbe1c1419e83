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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::procs::{MeshOptions, Proc, ProcMesh, bin_dir};
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::spec::{LoadSpec, Mode, Pacing};
use sluice_loadgen::drive::stalls::Stalls;
use sluice_loadgen::report::Report;

/// Default open-loop rate at which the cost per transaction is measured: moderate load,
/// where per-message overheads (wake-ups, syscalls, one frame per message) dominate.
pub const DEFAULT_COST_RATE: f64 = 3000.0;
/// Default directory on a tmpfs for the audit log of the mesh-alone tail runs.
pub const DEFAULT_TMPFS: &str = "/dev/shm";
/// The audit log's fsync histogram (logging's `/metrics`).
const FSYNC_METRIC: &str = "sluice_logging_audit_fsync_seconds";
/// The gateway's own latency, admission to outcome (its `/metrics`), by API: what of the
/// client's latency the mesh spent, apart from the generator and the sockets to it.
const GATEWAY_LATENCY: &str = "sluice_gateway_latency_seconds";

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

/// How each benchmark measures: runs per figure (medians reported), their length and
/// warmup, and where the binaries are. Shared by `bench` and `balance`.
#[derive(Debug, Clone, Args)]
pub struct Measure {
    /// Runs per measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Measured time per run, e.g. 8s.
    #[arg(long, default_value = "8s", value_parser = sluice_core::parse_duration)]
    pub duration: Duration,
    /// Unmeasured warmup per run, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = sluice_core::parse_duration)]
    pub warmup: Duration,
    /// Directory with the sluice-* binaries (default: this executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// The median of `v` (the upper one of an even count); `v` is never empty here.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// CPU time a process has used so far (user + system, every thread), from
/// `/proc/<pid>/stat`; `None` once it is gone.
pub(crate) fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat")), ticks_per_second)
}

/// `sysconf(_SC_CLK_TCK)` through `getconf` (no unsafe code here); Linux's 100 otherwise.
pub(crate) fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The processes whose CPU one run is charged for, by role.
struct Cpu {
    procs: Vec<(&'static str, u32)>,
    ticks: f64,
}

impl Cpu {
    fn of_mesh(mesh: &ProcMesh, ticks: f64) -> Cpu {
        let mut procs = vec![("gateway", mesh.gateway.pid())];
        procs.extend(mesh.risks().map(|p| ("risk", p.pid())));
        procs.push(("notification", mesh.notification.pid()));
        procs.extend(mesh.loggings().map(|p| ("logging", p.pid())));
        Cpu { procs, ticks }
    }

    fn sample(&self) -> BTreeMap<&'static str, f64> {
        let mut out = BTreeMap::new();
        for &(role, pid) in &self.procs {
            *out.entry(role).or_default() += cpu_seconds(pid, self.ticks).unwrap_or(0.0);
        }
        out
    }

    /// Every thread's CPU time so far, by role and thread id (`/proc/<pid>/task/*/stat`).
    fn sample_threads(&self) -> BTreeMap<(&'static str, u32, String), f64> {
        let mut out = BTreeMap::new();
        for &(role, pid) in &self.procs {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let tid = task.file_name().to_string_lossy().to_string();
                let stat = task.path().join("stat");
                if let Some(used) = stat_cpu_seconds(&stat, self.ticks) {
                    out.insert((role, pid, tid), used);
                }
            }
        }
        out
    }

    /// Runs `spec` and charges the CPU used meanwhile to its completed transactions; with
    /// each role's busiest thread and the cores the processes used together.
    async fn run(&self, spec: LoadSpec) -> anyhow::Result<(Report, Cost, Threads)> {
        let before = self.sample();
        let threads_before = self.sample_threads();
        let started = std::time::Instant::now();
        let report = driver::run(spec).await?;
        let wall = started.elapsed().as_secs_f64().max(1e-3);
        let after = self.sample();
        let mut threads = Threads::default();
        for (key, used) in self.sample_threads() {
            let share = (used - threads_before.get(&key).copied().unwrap_or(used)) / wall;
            let busiest = threads.busiest.entry(key.0).or_default();
            *busiest = busiest.max(share);
        }
        threads.cores = after
            .iter()
            .map(|(role, used)| used - before.get(role).copied().unwrap_or(0.0))
            .sum::<f64>()
            / wall;
        let transactions = report.completed.max(1) as f64;
        let per_role = after
            .iter()
            .map(|(role, used)| {
                let us = (used - before.get(role).copied().unwrap_or(0.0)) * 1e6 / transactions;
                (*role, us)
            })
            .collect();
        Ok((report, Cost(per_role), threads))
    }
}

/// During one run: each role's busiest thread (share of a core, 0..=1) and the cores all
/// the processes used together. A busiest thread near 1 is what caps a process that has
/// more cores than it uses.
#[derive(Debug, Clone, Default)]
struct Threads {
    busiest: BTreeMap<&'static str, f64>,
    cores: f64,
}

impl Threads {
    /// The per-role medians of `runs`, as `gateway 98 %, logging 41 %, …; 1.9 cores`.
    fn line(runs: &[Threads]) -> String {
        let Some(first) = runs.first() else {
            return String::new();
        };
        let roles: Vec<String> = first
            .busiest
            .keys()
            .map(|role| {
                let v = runs
                    .iter()
                    .map(|t| t.busiest.get(role).copied().unwrap_or(0.0))
                    .collect();
                format!("{role} {:.0} %", 100.0 * median(v))
            })
            .collect();
        let cores: Vec<f64> = runs.iter().map(|t| t.cores).collect();
        format!(
            "{}; mesh {:.1} cores (runs {})",
            roles.join(", "),
            median(cores.clone()),
            list(&cores, 1)
        )
    }
}

/// User + system CPU seconds in one `stat` file (a process's or a thread's).
fn stat_cpu_seconds(path: &Path, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name and state.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / ticks_per_second)
}

/// CPU µs per transaction, by process role.
#[derive(Debug, Clone, Default)]
struct Cost(BTreeMap<&'static str, f64>);

impl Cost {
    fn total(&self) -> f64 {
        self.0.values().sum()
    }

    /// The per-role medians of `costs`.
    fn median(costs: &[Cost]) -> Cost {
        let mut out = BTreeMap::new();
        if let Some(first) = costs.first() {
            for role in first.0.keys() {
                let v = costs.iter().map(|c| c.0.get(role).copied().unwrap_or(0.0));
                out.insert(*role, median(v.collect()));
            }
        }
        Cost(out)
    }

    fn line(costs: &[Cost]) -> String {
        let m = Cost::median(costs);
        let totals: Vec<f64> = costs.iter().map(Cost::total).collect();
        let parts: Vec<String> = m.0.iter().map(|(r, v)| format!("{r} {v:.0}")).collect();
        format!(
            "{:.0} µs/tx ({}; runs {})",
            median(totals.clone()),
            parts.join(", "),
            list(&totals, 0)
        )
    }
}

fn list(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The `q` quantile (seconds) of the observations a Prometheus histogram gained between two
/// scrapes, interpolated within its bucket as `histogram_quantile` does: the histogram
/// `name`, its series with the label `label` (e.g. `api="stream"`; `""` when it has one).
fn histogram_quantile(
    (name, label): (&str, &str),
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    q: f64,
) -> Option<f64> {
    let prefix = format!("{name}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = after
        .range(prefix.clone()..)
        .take_while(|(k, _)| k.starts_with(&prefix))
        .filter(|(k, _)| k.contains(label))
        .filter_map(|(k, v)| {
            let le = k.split_once("le=\"")?.1.split_once('"')?.0;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v - before.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let share = if count > below {
                (rank - below) / (count - below)
            } else {
                1.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    None
}

/// One open-loop run at half load: the client's latency and the audit log's commit time
/// (write + `fdatasync`, and on a tmpfs everything the writer does per batch) meanwhile.
struct Tail {
    p50: f64,
    p99: f64,
    max: f64,
    rate: f64,
    fsync_p999: f64,
    fsync_max: f64,
    /// p99 of the gateway's own latency (admission to outcome) over the run.
    gateway_p99: f64,
    /// How long the machine kept a ready thread off the CPU meanwhile.
    stalls: Stalls,
    /// The generator's own CPU over the run (this process: driver, pacer, probe), in % of
    /// one core: its share of the two cores the mesh runs on.
    generator_cpu: f64,
}

impl Tail {
    fn line(&self) -> String {
        format!(
            "{:.0}/s p50 {:.2} ms p99 {:.2} ms max {:.1} ms; gateway p99 {:.1} ms; audit commit p99.9 {:.1} ms, max <= {:.1} ms; machine stalls {:.0} ms, longest {:.1} ms; generator cpu {:.0} %",
            self.rate,
            self.p50,
            self.p99,
            self.max,
            self.gateway_p99,
            self.fsync_p999,
            self.fsync_max,
            self.stalls.total_ms,
            self.stalls.longest_ms,
            self.generator_cpu
        )
    }
}

async fn half_load_run(
    args: &BenchArgs,
    ticks: f64,
    mesh: &ProcMesh,
    mode: Mode,
    rate: f64,
    run: usize,
) -> anyhow::Result<Tail> {
    let (logging, gateway) = (mesh.logging.metrics_url()?, mesh.gateway.metrics_url()?);
    let scrape = || async {
        let logging = sluice_loadgen::admin::metrics::samples(&logging).await;
        (
            logging,
            sluice_loadgen::admin::metrics::samples(&gateway).await,
        )
    };
    let before = scrape().await;
    let me = std::process::id();
    let (cpu_before, started) = (cpu_seconds(me, ticks), std::time::Instant::now());
    let r = driver::run(args.spec(&mesh.gateway.url(), mode, Pacing::Open { rate }, run)?).await?;
    let generator_cpu = match (cpu_before, cpu_seconds(me, ticks)) {
        (Some(b), Some(a)) => (a - b) / started.elapsed().as_secs_f64().max(1e-9) * 100.0,
        _ => f64::NAN,
    };
    let after = scrape().await;
    let ms = |series: (&str, &str), before: &Option<_>, after: &Option<_>, q| match (before, after)
    {
        (Some(before), Some(after)) => {
            histogram_quantile(series, before, after, q).map(|s| s * 1e3)
        }
        _ => None,
    };
    let fsync = |q| ms((FSYNC_METRIC, ""), &before.0, &after.0, q);
    let api = format!("api=\"{}\"", mode.name());
    Ok(Tail {
        p50: r.latency_ms.p50,
        p99: r.latency_ms.p99,
        max: r.latency_ms.max,
        rate: r.achieved_rate,
        fsync_p999: fsync(0.999).unwrap_or(f64::NAN),
        fsync_max: fsync(1.0).unwrap_or(f64::NAN),
        gateway_p99: ms((GATEWAY_LATENCY, &api), &before.1, &after.1, 0.99).unwrap_or(f64::NAN),
        stalls: r.stalls.unwrap_or_default(),
        generator_cpu,
    })
}

/// One build under measurement: where its binaries are and what it measured.
struct Build {
    name: &'static str,
    dir: PathBuf,
    cost: Vec<Cost>,
    cost_p99: Vec<f64>,
    cost_p50: Vec<f64>,
    saturation: Vec<f64>,
    saturation_cost: Vec<Cost>,
    saturation_threads: Vec<Threads>,
    saturation_p99: Vec<f64>,
    disk: Vec<Tail>,
    tmpfs: Vec<Tail>,
}

impl Build {
    fn new(name: &'static str, dir: PathBuf) -> Build {
        Build {
            name,
            dir,
            cost: Vec::new(),
            cost_p99: Vec::new(),
            cost_p50: Vec::new(),
            saturation: Vec::new(),
            saturation_cost: Vec::new(),
            saturation_threads: Vec::new(),
            saturation_p99: Vec::new(),
            disk: Vec::new(),
            tmpfs: Vec::new(),
        }
    }

    fn half_load(&self) -> f64 {
        (median(self.saturation.clone()) / 2.0).max(1.0)
    }
}

impl BenchArgs {
    fn spec(
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

    fn concurrency(&self, mode: Mode) -> usize {
        match mode {
            Mode::Stream => self.stream_concurrency,
            Mode::Unary => self.unary_concurrency,
        }
    }

    fn has(&self, section: Section) -> bool {
        self.sections.contains(&section)
    }

    /// Load nobody measures, so connections, streams, allocators and the adaptive limit
    /// settle before the first measured run.
    async fn warm_up(&self, target: &str, mode: Mode) -> anyhow::Result<()> {
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
async fn mesh(
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
                    eprintln!(
                        "  {mode_name} {} saturation run {}: {}; busiest threads {}",
                        b.name,
                        run + 1,
                        run_line(&r, &cost),
                        Threads::line(std::slice::from_ref(&threads))
                    );
                    b.saturation_threads.push(threads);
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

/// A charged run's progress line.
fn run_line(r: &Report, cost: &Cost) -> String {
    format!(
        "{:.0} ok/s, {:.0} µs/tx, p99 {:.2} ms, errors {:?}",
        r.ok_rate,
        cost.total(),
        r.latency_ms.p99,
        r.errors
    )
}

/// The single-hop reference: this generator against `sink` in its own process.
struct SingleHop {
    saturation: Vec<f64>,
    cost: Vec<f64>,
}

async fn single_hop(
    args: &BenchArgs,
    dir: &Path,
    mode: Mode,
    ticks: f64,
) -> anyhow::Result<SingleHop> {
    let dir = dir.to_path_buf();
    let sink = tokio::task::spawn_blocking(move || {
        Proc::spawn(
            &dir,
            "sluice-lab",
            &["sink".to_string(), "--listen".into(), "127.0.0.1:0".into()],
        )
    })
    .await
    .context("starting the sink panicked")??;
    let cpu = Cpu {
        procs: vec![("sink", sink.pid())],
        ticks,
    };
    args.warm_up(&sink.url(), mode).await?;
    let mut single = SingleHop {
        saturation: Vec::new(),
        cost: Vec::new(),
    };
    for run in 0..args.measure.runs {
        let pacing = Pacing::Open {
            rate: args.cost_rate,
        };
        let (_, cost, _) = cpu.run(args.spec(&sink.url(), mode, pacing, run)?).await?;
        single.cost.push(cost.total());
        let pacing = Pacing::Closed {
            concurrency: args.concurrency(mode),
        };
        let r = driver::run(args.spec(&sink.url(), mode, pacing, run)?).await?;
        eprintln!(
            "  {mode:?} single hop run {}: {:.0} µs/tx at {:.0}/s; saturation {:.0} ok/s",
            run + 1,
            cost.total(),
            args.cost_rate,
            r.ok_rate
        );
        single.saturation.push(r.ok_rate);
    }
    Ok(single)
}

/// One mode's figures, one column per build.
fn summary(args: &BenchArgs, mode: &str, builds: &[Build], single: Option<&SingleHop>) -> String {
    let mut s = format!("{mode}\n");
    let row = |s: &mut String, label: &str, cell: &dyn Fn(&Build) -> Option<String>| {
        for b in builds {
            if let Some(c) = cell(b) {
                let who = if builds.len() > 1 { b.name } else { "" };
                s.push_str(&format!("  {label:<28} {who:<5} {c}\n"));
            }
        }
    };
    row(&mut s, &format!("cpu at {:.0}/s", args.cost_rate), &|b| {
        (!b.cost.is_empty()).then(|| Cost::line(&b.cost))
    });
    // A latency's median in ms and its runs (to `digits` places).
    let ms = |runs: &[f64], digits: usize| {
        (!runs.is_empty()).then(|| {
            format!(
                "{:.2} ms (runs {})",
                median(runs.to_vec()),
                list(runs, digits)
            )
        })
    };
    row(&mut s, &format!("p50 at {:.0}/s", args.cost_rate), &|b| {
        ms(&b.cost_p50, 2)
    });
    row(&mut s, &format!("p99 at {:.0}/s", args.cost_rate), &|b| {
        ms(&b.cost_p99, 1)
    });
    row(&mut s, "saturation", &|b| {
        (!b.saturation.is_empty()).then(|| {
            format!(
                "{:.0} tx/s (runs {}); p99 runs {} ms",
                median(b.saturation.clone()),
                list(&b.saturation, 0),
                list(&b.saturation_p99, 0)
            )
        })
    });
    row(&mut s, "cpu at saturation", &|b| {
        (!b.saturation_cost.is_empty()).then(|| Cost::line(&b.saturation_cost))
    });
    row(&mut s, "busiest thread at saturation", &|b| {
        (!b.saturation_threads.is_empty()).then(|| Threads::line(&b.saturation_threads))
    });
    for (label, pick) in [
        (
            "p99 at half load, disk",
            (|b: &Build| &b.disk) as fn(&Build) -> &Vec<Tail>,
        ),
        ("p99 at half load, tmpfs", |b: &Build| &b.tmpfs),
    ] {
        row(&mut s, label, &|b| {
            let tails = pick(b);
            (!tails.is_empty()).then(|| {
                let p99: Vec<f64> = tails.iter().map(|t| t.p99).collect();
                let commit: Vec<f64> = tails.iter().map(|t| t.fsync_p999).collect();
                let gateway: Vec<f64> = tails.iter().map(|t| t.gateway_p99).collect();
                let stalled: Vec<f64> = tails.iter().map(|t| t.stalls.total_ms).collect();
                let longest: Vec<f64> = tails.iter().map(|t| t.stalls.longest_ms).collect();
                let generator: Vec<f64> = tails.iter().map(|t| t.generator_cpu).collect();
                format!(
                    "{:.2} ms at {:.0}/s (runs {}; worst {:.1}); gateway p99 runs {} ms; audit commit p99.9 runs {} ms; machine stalls runs {} ms, longest {} ms; generator cpu runs {} % of a core",
                    median(p99.clone()),
                    b.half_load(),
                    list(&p99, 1),
                    p99.iter().copied().fold(0.0, f64::max),
                    list(&gateway, 1),
                    list(&commit, 1),
                    list(&stalled, 0),
                    list(&longest, 1),
                    list(&generator, 0)
                )
            })
        });
    }
    if let Some(single) = single {
        let sat = median(single.saturation.clone());
        let cost = median(single.cost.clone());
        s.push_str(&format!(
            "  {:<28}       {sat:.0} tx/s, {cost:.0} µs/tx at {:.0}/s (sink, one bare tonic hop)\n",
            "single hop", args.cost_rate
        ));
        for b in builds {
            let mut ratios = Vec::new();
            if !b.saturation.is_empty() {
                ratios.push(format!(
                    "saturation {:.2}×",
                    median(b.saturation.clone()) / sat
                ));
            }
            if !b.cost.is_empty() {
                let mesh: Vec<f64> = b.cost.iter().map(Cost::total).collect();
                ratios.push(format!("cpu {:.1}×", median(mesh) / cost));
            }
            if !ratios.is_empty() {
                let who = if builds.len() > 1 { b.name } else { "" };
                s.push_str(&format!(
                    "  {:<28} {who:<5} {}\n",
                    "mesh / single hop",
                    ratios.join(", ")
                ));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_histogram_quantile_reads_only_what_the_run_added() {
        let before = samples(&[
            ("x_bucket{le=\"0.001\"}", 100.0),
            ("x_bucket{le=\"0.01\"}", 100.0),
            ("x_bucket{le=\"+Inf\"}", 100.0),
        ]);
        // The run added 1000 observations: 990 under 1 ms, 10 between 1 and 10 ms.
        let after = samples(&[
            ("x_bucket{le=\"0.001\"}", 1090.0),
            ("x_bucket{le=\"0.01\"}", 1100.0),
            ("x_bucket{le=\"+Inf\"}", 1100.0),
        ]);
        let p50 = histogram_quantile(("x", ""), &before, &after, 0.5).unwrap();
        assert!((p50 - 0.000_505).abs() < 1e-6, "{p50}");
        let p999 = histogram_quantile(("x", ""), &before, &after, 0.999).unwrap();
        // Rank 999: 9 of the 10 in the 1–10 ms bucket.
        assert!((p999 - 0.0091).abs() < 1e-6, "{p999}");
        assert_eq!(histogram_quantile(("x", ""), &after, &after, 0.5), None);
        assert_eq!(histogram_quantile(("y", ""), &before, &after, 0.5), None);
    }

    #[test]
    fn a_histogram_quantile_reads_only_the_series_asked_for() {
        let before = samples(&[]);
        // As prometheus-client writes them: `le` first. Unary all under 1 ms, stream all
        // between 1 and 10 ms: each API its own p99.
        let after = samples(&[
            ("g_bucket{le=\"0.001\",api=\"stream\"}", 0.0),
            ("g_bucket{le=\"0.01\",api=\"stream\"}", 100.0),
            ("g_bucket{le=\"+Inf\",api=\"stream\"}", 100.0),
            ("g_bucket{le=\"0.001\",api=\"unary\"}", 100.0),
            ("g_bucket{le=\"0.01\",api=\"unary\"}", 100.0),
            ("g_bucket{le=\"+Inf\",api=\"unary\"}", 100.0),
        ]);
        let q = |api: &str| {
            histogram_quantile(("g", &format!("api=\"{api}\"")), &before, &after, 0.99).unwrap()
        };
        assert!(q("stream") > 0.001, "{}", q("stream"));
        assert!(q("unary") <= 0.001, "{}", q("unary"));
    }

    #[test]
    fn cpu_is_read_for_this_process() {
        let used = cpu_seconds(std::process::id(), ticks_per_second());
        assert!(used.is_some_and(|s| s >= 0.0));
        assert_eq!(cpu_seconds(u32::MAX, 100.0), None);
    }

    #[test]
    fn cost_medians_are_per_role() {
        let c = |g: f64, r: f64| Cost(BTreeMap::from([("gateway", g), ("risk", r)]));
        let costs = [c(100.0, 10.0), c(300.0, 30.0), c(200.0, 50.0)];
        let m = Cost::median(&costs);
        assert_eq!(m.0["gateway"], 200.0);
        assert_eq!(m.0["risk"], 30.0);
        assert!(
            Cost::line(&costs).starts_with("250 µs/tx (gateway 200, risk 30; runs 110 330 250)")
        );
    }
}
