//! `sluice-loadgen bench`: saturation throughput and latency at half of it, measured against
//! the real binaries running as separate processes on loopback.
//!
//! For each ingress mode: `runs` closed-loop runs at a concurrency high enough to saturate
//! the mesh give the saturation throughput (median of OK/s); then `runs` open-loop runs at
//! half that rate give p50/p99 (medians). Figures vary with the machine and its neighbours:
//! quote medians, with the command.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::drive::driver;
use crate::drive::spec::{LoadSpec, Mode, Pacing};
use crate::lab::procs::{MeshOptions, ProcMesh, bin_dir};

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
    #[command(flatten)]
    pub measure: Measure,
    /// Closed-loop concurrency that saturates stream ingress.
    #[arg(long, default_value_t = 2000)]
    pub stream_concurrency: usize,
    /// Closed-loop concurrency that saturates unary ingress.
    #[arg(long, default_value_t = 256)]
    pub unary_concurrency: usize,
    /// Client connections to the gateway.
    #[arg(long, default_value_t = crate::drive::spec::DEFAULT_CONNECTIONS)]
    pub connections: usize,
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

fn spec(
    args: &BenchArgs,
    target: &str,
    mode: Mode,
    pacing: Pacing,
    run: usize,
) -> anyhow::Result<LoadSpec> {
    LoadSpec::builder(target)
        .mode(mode)
        .pacing(pacing)
        .duration(args.measure.duration)
        .warmup(args.measure.warmup)
        .connections(args.connections)
        .seed(run as u64 + 1)
        .id_prefix(format!("bench-{}-{run}", std::process::id()))
        .build()
}

/// Runs the benchmark and prints its figures.
pub async fn bench(args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.measure.runs > 0, "--runs must be at least 1");
    let dir = bin_dir(args.measure.bin_dir.as_deref())?;
    println!(
        "bench: {} run(s) of {:?} (+{:?} warmup) per figure; medians",
        args.measure.runs, args.measure.duration, args.measure.warmup
    );
    let mut lines = Vec::new();
    for &mode in &args.modes {
        let mesh = ProcMesh::start_ready(dir.clone(), MeshOptions::default()).await?;
        let target = mesh.gateway.url();
        let concurrency = match mode {
            Mode::Stream => args.stream_concurrency,
            Mode::Unary => args.unary_concurrency,
        };
        let mut saturation = Vec::new();
        for run in 0..args.measure.runs {
            let r = driver::run(spec(
                &args,
                &target,
                mode,
                Pacing::Closed { concurrency },
                run,
            )?)
            .await?;
            eprintln!(
                "  {mode:?} saturation run {}: {:.0} ok/s (p99 {:.1} ms, errors {:?})",
                run + 1,
                r.ok_rate,
                r.latency_ms.p99,
                r.errors
            );
            saturation.push(r.ok_rate);
        }
        let sat = median(saturation.clone());
        let half = (sat / 2.0).max(1.0);
        let (mut p50, mut p99, mut achieved) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.measure.runs {
            let r = driver::run(spec(
                &args,
                &target,
                mode,
                Pacing::Open { rate: half },
                run + 100,
            )?)
            .await?;
            eprintln!(
                "  {mode:?} half-load run {}: {:.0}/s p50 {:.2} ms p99 {:.2} ms",
                run + 1,
                r.achieved_rate,
                r.latency_ms.p50,
                r.latency_ms.p99
            );
            p50.push(r.latency_ms.p50);
            p99.push(r.latency_ms.p99);
            achieved.push(r.ok_rate);
        }
        lines.push(format!(
            "{:<7} saturation {:>7.0} tx/s (runs: {})   at {:.0} tx/s: p50 {:.2} ms, p99 {:.2} ms (achieved {:.0}/s)",
            format!("{mode:?}").to_lowercase(),
            sat,
            saturation.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", "),
            half,
            median(p50),
            median(p99),
            median(achieved),
        ));
        drop(mesh);
    }
    println!();
    for l in lines {
        println!("{l}");
    }
    println!(
        "\nreproduce: cargo run --release -p sluice-loadgen -- bench --runs {} --duration {:?}",
        args.measure.runs, args.measure.duration
    );
    Ok(())
}
