//! The tail at half load: the client's p50/p99 beside the audit log's commit time, on disk
//! and on a tmpfs.

use std::collections::BTreeMap;

use crate::bench::{BenchArgs, FSYNC_METRIC, GATEWAY_LATENCY};
use crate::cpu::cpu_seconds;
use crate::procs::ProcMesh;
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::spec::{Mode, Pacing};
use sluice_loadgen::drive::stalls::Stalls;

/// The `q` quantile (seconds) of the observations a Prometheus histogram gained between two
/// scrapes, by the one rule ([`sluice_core::exposition::Buckets::quantile`], Prometheus's
/// `histogram_quantile`): the histogram `name`, its series with the label `label` (e.g.
/// `api="stream"`; `""` when it has one).
pub(crate) fn histogram_quantile(
    (name, label): (&str, &str),
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    q: f64,
) -> Option<f64> {
    use sluice_core::exposition::Samples;
    let buckets = |s: &BTreeMap<String, f64>| Samples(s.clone()).buckets(name, label);
    buckets(after).since(&buckets(before)).quantile(q)
}

/// One open-loop run at half load: the client's latency and the audit log's commit time
/// (write + `fdatasync`, and on a tmpfs everything the writer does per batch) meanwhile.
pub(crate) struct Tail {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
    pub(crate) rate: f64,
    pub(crate) fsync_p999: f64,
    pub(crate) fsync_max: f64,
    /// p99 of the gateway's own latency (admission to outcome) over the run.
    pub(crate) gateway_p99: f64,
    /// How long the machine kept a ready thread off the CPU meanwhile.
    pub(crate) stalls: Stalls,
    /// The generator's own CPU over the run (this process: driver, pacer, probe), in % of
    /// one core: its share of the two cores the mesh runs on.
    pub(crate) generator_cpu: f64,
}

impl Tail {
    pub(crate) fn line(&self) -> String {
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

pub(crate) async fn half_load_run(
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
