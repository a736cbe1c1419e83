//! `sluice-lab scenario FILE`: phases of load, faults switched at given times through the
//! Control API, and expectations checked at the end — against the real binaries, started as
//! separate processes on loopback. Exits non-zero when an expectation fails, naming it.
//!
//! ```toml
//! name = "stall-logging"
//! description = "What the scenario shows."
//!
//! [mesh]                                   # extra flags per binary (optional)
//! gateway = ["--default-deadline", "60s"]
//!
//! [[phase]]
//! name = "stalled"
//! mode = "stream"                          # or "unary" (default "stream")
//! rate = 2000                              # or concurrency = 64, or steps = "1000@5s,..."
//! duration = "10s"
//! faults = [{ at = "0s", service = "logging", stall = true }]
//!
//! [[expect]]
//! phase = "stalled"                        # per-phase expectations name their phase
//! p99_ms_below = 50.0                      # or p99_ms_above, rejected_share_below/above, recover_within,
//!                                          # blocked_share_above, ok_rate_above
//! [[expect]]
//! no_missing_audit_records = true          # whole-run expectations
//! [[expect]]
//! gateway_memory_mib_below = 100.0
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;
use serde::Deserialize;
use sluice_proto::pb::Faults;

use crate::procs::{MeshOptions, ProcMesh, bin_dir};
use sluice_loadgen::admin::control::FaultChange;
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::schedule::{ArrivalKind, Arrivals};
use sluice_loadgen::drive::spec::{LoadSpec, Mode, Pacing};
use sluice_loadgen::report::exemplars::TraceLinkArgs;
use sluice_loadgen::report::{Acked, Report};

#[derive(Debug, Clone, Args)]
pub struct ScenarioArgs {
    /// The scenario file (TOML). Shipped ones are in scenarios/.
    pub file: PathBuf,
    /// Only parse and check the file; run nothing.
    #[arg(long)]
    pub check: bool,
    /// Directory with the sluice-* binaries (default: this executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Write every phase's report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report: the whole run's timeline with every fault switch
    /// and phase start marked, and each phase's latency distribution.
    #[arg(long)]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub traces: TraceLinkArgs,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub mesh: MeshFlags,
    pub phase: Vec<Phase>,
    #[serde(default)]
    pub expect: Vec<Expect>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshFlags {
    #[serde(default)]
    pub gateway: Vec<String>,
    #[serde(default)]
    pub risk: Vec<String>,
    #[serde(default)]
    pub notification: Vec<String>,
    #[serde(default)]
    pub logging: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub name: String,
    #[serde(default = "default_mode")]
    pub mode: String,
    pub rate: Option<f64>,
    pub concurrency: Option<usize>,
    pub steps: Option<String>,
    #[serde(default)]
    pub arrivals: ArrivalKind,
    pub duration: Option<String>,
    #[serde(default = "default_connections")]
    pub connections: usize,
    /// Per-transaction deadline, e.g. "5s".
    pub timeout: Option<String>,
    #[serde(default)]
    pub faults: Vec<FaultAction>,
}

fn default_mode() -> String {
    "stream".into()
}
fn default_connections() -> usize {
    sluice_loadgen::drive::spec::DEFAULT_CONNECTIONS
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultAction {
    /// Offset from the phase start, e.g. "2s".
    #[serde(default = "zero")]
    pub at: String,
    /// risk, notification or logging.
    pub service: String,
    #[serde(default)]
    pub clear: bool,
    pub stall: Option<bool>,
    pub delay_ms: Option<u32>,
    pub jitter_ms: Option<u32>,
    pub error_rate: Option<f64>,
    pub workers: Option<u32>,
}

fn zero() -> String {
    "0s".into()
}

impl FaultAction {
    /// The change this switch makes, on top of the faults in force.
    fn change(&self) -> FaultChange {
        FaultChange {
            clear: self.clear,
            stall: self.stall,
            delay_ms: self.delay_ms,
            jitter_ms: self.jitter_ms,
            error_rate: self.error_rate,
            workers: self.workers,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub phase: Option<String>,
    pub p99_ms_below: Option<f64>,
    pub p99_ms_above: Option<f64>,
    pub ok_rate_above: Option<f64>,
    pub rejected_share_below: Option<f64>,
    pub rejected_share_above: Option<f64>,
    pub blocked_share_above: Option<f64>,
    /// OK completions reach 90% of the offered rate within this long after the phase starts.
    pub recover_within: Option<String>,
    pub gateway_memory_mib_below: Option<f64>,
    pub no_missing_audit_records: Option<bool>,
}

fn duration(s: &str, what: &str) -> anyhow::Result<Duration> {
    sluice_core::parse_duration(s).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let s: Scenario = toml::from_str(&text)
            .with_context(|| format!("{} is not a scenario file", path.display()))?;
        s.check().with_context(|| format!("{}", path.display()))?;
        Ok(s)
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(
            !self.phase.is_empty(),
            "a scenario needs at least one [[phase]]"
        );
        for p in &self.phase {
            p.pacing().with_context(|| format!("phase {:?}", p.name))?;
            ensure!(
                matches!(p.mode.as_str(), "stream" | "unary"),
                "phase {:?}: mode must be stream or unary",
                p.name
            );
            for f in &p.faults {
                duration(&f.at, "fault `at`")?;
                ensure!(
                    matches!(f.service.as_str(), "risk" | "notification" | "logging"),
                    "phase {:?}: fault service must be risk, notification or logging, not {:?}",
                    p.name,
                    f.service
                );
            }
        }
        for (i, e) in self.expect.iter().enumerate() {
            if let Some(phase) = &e.phase {
                ensure!(
                    self.phase.iter().any(|p| &p.name == phase),
                    "expect #{}: no phase named {phase:?}",
                    i + 1
                );
            }
            if let Some(r) = &e.recover_within {
                duration(r, "recover_within")?;
            }
            let per_phase = e.p99_ms_below.is_some()
                || e.p99_ms_above.is_some()
                || e.ok_rate_above.is_some()
                || e.rejected_share_below.is_some()
                || e.rejected_share_above.is_some()
                || e.blocked_share_above.is_some()
                || e.recover_within.is_some();
            ensure!(
                !per_phase || e.phase.is_some(),
                "expect #{}: per-phase expectations need `phase`",
                i + 1
            );
        }
        Ok(())
    }
}

impl Phase {
    fn pacing(&self) -> anyhow::Result<(Pacing, Duration)> {
        match (self.rate, self.concurrency, &self.steps) {
            (Some(rate), None, None) => {
                ensure!(rate > 0.0, "rate must be positive");
                let d = duration(
                    self.duration
                        .as_deref()
                        .context("`duration` is required with `rate`")?,
                    "duration",
                )?;
                Ok((Pacing::at_rate(rate, self.arrivals, d), d))
            }
            (None, Some(c), None) => {
                ensure!(c > 0, "concurrency must be at least 1");
                let d = duration(
                    self.duration
                        .as_deref()
                        .context("`duration` is required with `concurrency`")?,
                    "duration",
                )?;
                Ok((Pacing::Closed { concurrency: c }, d))
            }
            (None, None, Some(steps)) => {
                let a = Arrivals {
                    kind: self.arrivals,
                    segments: sluice_loadgen::drive::schedule::parse_steps(steps)?,
                };
                let d = a.total();
                Ok((Pacing::Shaped(Arc::new(a)), d))
            }
            _ => bail!("give exactly one of `rate`, `concurrency` or `steps`"),
        }
    }
}

/// What one phase produced.
struct PhaseResult {
    report: Report,
    peak_rss: f64,
}

async fn apply(mesh: &ProcMesh, action: &FaultAction) -> anyhow::Result<Faults> {
    let service = match action.service.as_str() {
        "risk" => &mesh.risk,
        "notification" => &mesh.notification,
        _ => &mesh.logging,
    };
    mesh.control(service).await?.change(&action.change()).await
}

/// Runs the scenario; `Ok(false)` when an expectation failed.
pub async fn run(args: ScenarioArgs) -> anyhow::Result<bool> {
    let scenario = Scenario::load(&args.file)?;
    if args.check {
        println!(
            "{}: ok ({} phases, {} expectations)",
            args.file.display(),
            scenario.phase.len(),
            scenario.expect.len()
        );
        return Ok(true);
    }
    let dir = bin_dir(args.bin_dir.as_deref())?;
    println!("scenario {}: {}", scenario.name, scenario.description);
    let m = &scenario.mesh;
    let options = MeshOptions {
        gateway: m.gateway.clone(),
        risk: m.risk.clone(),
        notification: m.notification.clone(),
        logging: m.logging.clone(),
        ..MeshOptions::default()
    };
    let mesh = ProcMesh::start_ready(dir, options).await?;
    let gateway_metrics = mesh.gateway.metrics_url()?;

    // Phases follow each other on a fixed timeline, and so do faults: a phase starts at its
    // nominal time even while the one before still drains (as load from real clients would).
    let mut plans = Vec::new();
    let mut offset = Duration::ZERO;
    let mut actions: Vec<(Duration, FaultAction)> = Vec::new();
    for (i, phase) in scenario.phase.iter().enumerate() {
        let (pacing, length) = phase.pacing()?;
        for f in &phase.faults {
            actions.push((offset + duration(&f.at, "at")?, f.clone()));
        }
        let mut spec = LoadSpec::builder(mesh.gateway.url())
            .mode(if phase.mode == "unary" {
                Mode::Unary
            } else {
                Mode::Stream
            })
            .pacing(pacing)
            .duration(length)
            .connections(phase.connections)
            .seed(i as u64 + 1)
            .id_prefix(format!(
                "{}-{}-{}",
                scenario.name,
                phase.name,
                std::process::id()
            ))
            // Phases start on the timeline; the mesh was ready before the first.
            .wait_ready(false)
            // The gateway's side of the timeline: what it holds per hop, level, bottleneck
            // (the HTML report's per-hop chart).
            .metrics(mesh.gateway.metrics_url().ok())
            .trace_links(args.traces.jaeger_url.clone());
        if let Some(timeout) = &phase.timeout {
            spec = spec.timeout(duration(timeout, "timeout")?);
        }
        let spec = spec
            .build()
            .with_context(|| format!("phase {:?}", phase.name))?;
        plans.push((phase.name.clone(), offset, length, spec));
        offset += length;
    }
    actions.sort_by_key(|(at, _)| *at);
    let started = Instant::now();
    let loads: Vec<_> = plans
        .iter()
        .map(|(_, at, _, spec)| {
            let (at, spec) = (*at, spec.clone());
            tokio::spawn(async move {
                tokio::time::sleep_until((started + at).into()).await;
                driver::run(spec).await
            })
        })
        .collect();
    let mut marks: Vec<sluice_loadgen::report::html::Mark> = plans
        .iter()
        .map(|(name, at, _, _)| sluice_loadgen::report::html::Mark {
            t: at.as_secs_f64(),
            label: format!("phase {name}"),
        })
        .collect();
    let mut pending = actions.into_iter().peekable();
    let mut peaks = vec![0f64; plans.len()];
    while loads.iter().any(|l| !l.is_finished()) || pending.peek().is_some() {
        while let Some((_, action)) = pending.next_if(|(at, _)| started.elapsed() >= *at) {
            let now = apply(&mesh, &action).await?;
            marks.push(sluice_loadgen::report::html::Mark {
                t: started.elapsed().as_secs_f64(),
                label: format!(
                    "{} {}",
                    action.service,
                    if action.clear {
                        "clear".to_string()
                    } else {
                        sluice_loadgen::admin::control::describe(&now)
                    }
                ),
            });
            println!(
                "  [{:>5.1}s] {} faults: {}",
                started.elapsed().as_secs_f64(),
                action.service,
                sluice_loadgen::admin::control::describe(&now)
            );
        }
        let elapsed = started.elapsed();
        let current = plans
            .iter()
            .rposition(|(_, at, _, _)| elapsed >= *at)
            .unwrap_or(0);
        let rss = sluice_loadgen::admin::metrics::metric(
            &gateway_metrics,
            sluice_observe::names::gateway::PROCESS_RESIDENT_MEMORY_BYTES,
        )
        .await
        .unwrap_or(0.0);
        peaks[current] = peaks[current].max(rss);
        // Sample every 100 ms, but never oversleep the next fault switch.
        let next_fault = pending
            .peek()
            .map(|(at, _)| (started + *at).saturating_duration_since(Instant::now()));
        tokio::time::sleep(next_fault.map_or(Duration::from_millis(100), |d| {
            d.min(Duration::from_millis(100))
        }))
        .await;
    }
    let mut results: BTreeMap<String, PhaseResult> = BTreeMap::new();
    let mut acked: Vec<Acked> = Vec::new();
    for ((name, _, _, _), (load, peak)) in plans.iter().zip(loads.into_iter().zip(peaks)) {
        let report = load.await??;
        let r = &report;
        println!(
            "  phase {:<12} {:>6.0} ok/s  p99 {:>8.2} ms  rejected {:>5.1}%  blocked {:>5.1}%  errors {:?}",
            name,
            r.ok_rate,
            r.latency_ms.p99,
            100.0 * rejected_share(r),
            100.0 * r.blocked_send_seconds / r.measured_seconds.max(1e-9),
            r.errors
        );
        acked.extend(report.acked.iter().cloned());
        results.insert(
            name.clone(),
            PhaseResult {
                report,
                peak_rss: peak,
            },
        );
    }
    let audit = sluice_loadgen::report::audit::check(&mesh.logging_urls(), &acked).await?;
    drop(mesh);

    let mut failed = 0;
    for (i, e) in scenario.expect.iter().enumerate() {
        for (what, ok, measured) in evaluate(e, &results, &audit)? {
            let verdict = if ok { "PASS" } else { "FAIL" };
            if !ok {
                failed += 1;
            }
            println!(
                "  expect #{:<2} {verdict}  {what} (measured {measured})",
                i + 1
            );
        }
    }
    if let Some(path) = &args.json {
        let phases: BTreeMap<_, _> = results
            .iter()
            .map(|(k, v)| (k.clone(), &v.report))
            .collect();
        let doc =
            serde_json::json!({ "scenario": scenario.name, "phases": phases, "audit": audit });
        std::fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.html {
        // One timeline for the whole run: each phase's points shifted to its start.
        let mut timeline = Vec::new();
        let mut summary = String::new();
        for (name, at, _, _) in &plans {
            let r = &results[name].report;
            timeline.extend(r.timeline.iter().cloned().map(|mut p| {
                p.t += at.as_secs_f64();
                p
            }));
            summary.push_str(&format!("phase {name}\n{}\n", r.text()));
        }
        timeline.sort_by(|a, b| a.t.total_cmp(&b.t));
        let dists: Vec<(&str, &[sluice_loadgen::report::Percentile])> = plans
            .iter()
            .map(|(name, _, _, _)| (name.as_str(), results[name].report.percentiles.as_slice()))
            .collect();
        let reports: Vec<(&str, &Report)> = plans
            .iter()
            .map(|(name, _, _, _)| (name.as_str(), &results[name].report))
            .collect();
        let page = sluice_loadgen::report::html::render_many(
            &format!("scenario {}", scenario.name),
            &summary,
            &dists,
            &timeline,
            &marks,
            &reports,
        );
        std::fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))?;
        println!("HTML report written to {}", path.display());
    }
    if failed > 0 {
        println!("scenario {}: {failed} expectation(s) FAILED", scenario.name);
    } else {
        println!(
            "scenario {}: all {} expectation(s) met",
            scenario.name,
            scenario.expect.len()
        );
    }
    Ok(failed == 0)
}

fn rejected_share(r: &Report) -> f64 {
    r.errors.get("RESOURCE_EXHAUSTED").copied().unwrap_or(0) as f64 / r.completed.max(1) as f64
}

/// Checks one expectation: (description, met, measured value) per condition in it.
fn evaluate(
    e: &Expect,
    results: &BTreeMap<String, PhaseResult>,
    audit: &sluice_loadgen::report::audit::AuditCheck,
) -> anyhow::Result<Vec<(String, bool, String)>> {
    let mut out = Vec::new();
    let phase = e.phase.as_ref().map(|p| (p, &results[p]));
    if let Some(max) = e.gateway_memory_mib_below {
        let peak = match phase {
            Some((_, r)) => r.peak_rss,
            None => results.values().map(|r| r.peak_rss).fold(0.0, f64::max),
        } / (1024.0 * 1024.0);
        out.push((
            format!("gateway memory below {max} MiB"),
            peak < max,
            format!("{peak:.1} MiB"),
        ));
    }
    if e.no_missing_audit_records == Some(true) {
        let missing = audit.missing.len() + audit.wrong_offset.len();
        out.push((
            "no acknowledged record missing from the audit log".into(),
            missing == 0,
            format!("{missing} of {} missing", audit.acknowledged),
        ));
    }
    if let Some((name, r)) = phase {
        let rep = &r.report;
        if let Some(max) = e.p99_ms_below {
            out.push((
                format!("{name}: p99 below {max} ms"),
                rep.latency_ms.p99 < max,
                format!("{:.2} ms", rep.latency_ms.p99),
            ));
        }
        if let Some(min) = e.p99_ms_above {
            out.push((
                format!("{name}: p99 above {min} ms"),
                rep.latency_ms.p99 > min,
                format!("{:.2} ms", rep.latency_ms.p99),
            ));
        }
        if let Some(min) = e.ok_rate_above {
            out.push((
                format!("{name}: OK rate above {min}/s"),
                rep.ok_rate > min,
                format!("{:.0}/s", rep.ok_rate),
            ));
        }
        let share = rejected_share(rep);
        if let Some(max) = e.rejected_share_below {
            out.push((
                format!("{name}: rejected share below {max}"),
                share < max,
                format!("{share:.3}"),
            ));
        }
        if let Some(min) = e.rejected_share_above {
            out.push((
                format!("{name}: rejected share above {min}"),
                share > min,
                format!("{share:.3}"),
            ));
        }
        if let Some(min) = e.blocked_share_above {
            let blocked = rep.blocked_send_seconds / rep.measured_seconds.max(1e-9);
            out.push((
                format!("{name}: sends blocked more than {min} of the time"),
                blocked > min,
                format!("{blocked:.3}"),
            ));
        }
        if let Some(within) = &e.recover_within {
            let limit = duration(within, "recover_within")?.as_secs_f64();
            let at = rep
                .timeline
                .iter()
                .find(|p| p.offered > 0.0 && p.ok >= 0.9 * p.offered)
                .map(|p| p.t);
            let shown = at.map_or("never".to_string(), |t| format!("{t:.0} s"));
            out.push((
                format!("{name}: OK rate back to 90% of offered within {within}"),
                at.is_some_and(|t| t <= limit),
                shown,
            ));
        }
    }
    Ok(out)
}
