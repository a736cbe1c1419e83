//! `sluice-lab balance`: one slow risk replica of three, and how each routing policy
//! copes — p2c (load-aware), round-robin (blind), account (consistent hashing with bounded
//! loads, risk's default).
//!
//! For each policy a fresh mesh runs three risk replicas; the third is slowed by `--delay`
//! through Control, then `runs` open-loop runs at `--rate` measure goodput (OK/s), p50/p99,
//! and the slow replica's share of risk requests (from the gateway's per-replica counters).
//! A first set of runs with no replica slowed gives the all-healthy p99 to compare with.
//! Medians of the runs; quote them with the command.

use std::time::Duration;

use clap::Args;
use sluice_proto::pb::Faults;

use crate::kit::{Measure, median};
use crate::procs::{MeshOptions, ProcMesh, bin_dir};
use sluice_loadgen::admin::metrics;
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::spec::{LoadSpec, Mode, Pacing};

#[derive(Debug, Clone, Args)]
pub struct BalanceArgs {
    /// Routing policies to compare (the gateway's risk routing).
    #[arg(long, value_delimiter = ',', default_value = "p2c,round-robin,account")]
    pub policies: Vec<String>,
    /// Delay injected on the slow replica.
    #[arg(long, default_value = "50ms", value_parser = sluice_core::parse_duration)]
    pub delay: Duration,
    /// Offered load, transactions per second (open loop).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// Ingress mode.
    #[arg(long, value_enum, default_value = "stream")]
    pub mode: Mode,
    /// Runs per policy (medians reported), their length and warmup (the balancer's 2 s to
    /// react fall in the warmup), where the binaries are.
    #[command(flatten)]
    pub measure: Measure,
}

/// The gateway flags for a policy.
fn gateway_flags(policy: &str) -> anyhow::Result<Vec<String>> {
    let flags: &[&str] = match policy {
        "p2c" => &["--risk-routing", "balance", "--balance", "p2c"],
        "round-robin" => &["--risk-routing", "balance", "--balance", "round-robin"],
        "account" => &["--risk-routing", "account"],
        other => anyhow::bail!("--policies: unknown policy {other:?} (p2c, round-robin, account)"),
    };
    Ok(flags.iter().map(|s| s.to_string()).collect())
}

/// Risk requests routed to each replica so far.
async fn per_replica(mesh: &ProcMesh) -> anyhow::Result<Vec<f64>> {
    let url = mesh.gateway.metrics_url()?;
    let samples = metrics::samples(&url)
        .await
        .ok_or_else(|| anyhow::anyhow!("cannot scrape the gateway's metrics"))?;
    Ok(mesh
        .risks()
        .map(|p| {
            let key = format!(
                "{}{{downstream=\"risk\",replica=\"{}\"}}",
                sluice_observe::names::gateway::DOWNSTREAM_REPLICA_REQUESTS_TOTAL,
                p.grpc
            );
            samples.get(&key).copied().unwrap_or(0.0)
        })
        .collect())
}

/// One policy's medians.
struct Figures {
    ok_rate: f64,
    p50: f64,
    p99: f64,
    slow_share: f64,
}

async fn measure(args: &BalanceArgs, mesh: &ProcMesh, label: &str) -> anyhow::Result<Figures> {
    let (mut ok, mut p50, mut p99, mut share) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.measure.runs {
        let before = per_replica(mesh).await?;
        let spec = LoadSpec::builder(mesh.gateway.url())
            .mode(args.mode)
            .pacing(Pacing::Open { rate: args.rate })
            .duration(args.measure.duration)
            .warmup(args.measure.warmup)
            .seed(run as u64 + 1)
            .id_prefix(format!(
                "balance-{}-{}-{run}",
                std::process::id(),
                label.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
            ))
            .build()?;
        let r = driver::run(spec).await?;
        let after = per_replica(mesh).await?;
        let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: f64 = delta.iter().sum();
        let slow_share = if total > 0.0 { delta[2] / total } else { 0.0 };
        eprintln!(
            "  {label} run {}: {:.0} ok/s, p50 {:.2} ms, p99 {:.2} ms, slow replica {:.1} % {}{:?}",
            run + 1,
            r.ok_rate,
            r.latency_ms.p50,
            r.latency_ms.p99,
            slow_share * 100.0,
            if r.errors.is_empty() { "" } else { "errors " },
            if r.errors.is_empty() {
                None
            } else {
                Some(&r.errors)
            },
        );
        ok.push(r.ok_rate);
        p50.push(r.latency_ms.p50);
        p99.push(r.latency_ms.p99);
        share.push(slow_share);
    }
    Ok(Figures {
        ok_rate: median(ok),
        p50: median(p50),
        p99: median(p99),
        slow_share: median(share),
    })
}

/// Runs the comparison and prints its table.
pub async fn balance(args: BalanceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.measure.runs > 0, "--runs must be at least 1");
    let dir = bin_dir(args.measure.bin_dir.as_deref())?;
    println!(
        "balance: 3 risk replicas, one slowed by {:?}; {} {:?} run(s) of {:?} (+{:?} warmup) at {:.0}/s per policy; medians",
        args.delay,
        args.measure.runs,
        args.mode,
        args.measure.duration,
        args.measure.warmup,
        args.rate
    );
    let mut rows = Vec::new();
    for (i, policy) in args.policies.iter().enumerate() {
        let options = MeshOptions {
            gateway: gateway_flags(policy)?,
            risk_replicas: 3,
            ..MeshOptions::default()
        };
        let mesh = ProcMesh::start_ready(dir.clone(), options).await?;
        if i == 0 {
            let healthy = measure(&args, &mesh, &format!("{policy} all healthy")).await?;
            rows.push((format!("{policy}, all healthy"), healthy));
        }
        let slow = mesh.more_risk.get(1).expect("three risk replicas");
        mesh.control(slow)
            .await?
            .set(Faults {
                delay_ms: args.delay.as_millis() as u32,
                ..Default::default()
            })
            .await?;
        let figures = measure(&args, &mesh, policy).await?;
        rows.push((format!("{policy}, one slow"), figures));
    }
    println!();
    println!(
        "| policy | goodput (ok/s) | p50 ms | p99 ms | slow replica's share |\n|---|---|---|---|---|"
    );
    for (label, f) in &rows {
        println!(
            "| {label} | {:.0} | {:.2} | {:.2} | {:.1} % |",
            f.ok_rate,
            f.p50,
            f.p99,
            f.slow_share * 100.0
        );
    }
    println!(
        "\nreproduce: cargo run --release -p sluice-lab -- balance --runs {} --duration {:?} --rate {} --delay {:?} --mode {}",
        args.measure.runs,
        args.measure.duration,
        args.rate,
        args.delay,
        format!("{:?}", args.mode).to_lowercase()
    );
    Ok(())
}
