//! `sluice-lab demo`: the whole mesh in this process ([`super::mesh`]), and the story
//! the project exists to tell, measured — with nothing but this binary.
//!
//! **The story** (default; four phases of `--phase` (9 s) and 2 s of calm, about 40 s):
//!
//! 1. *steady*: SubmitStream at `--rate` (2,000/s);
//! 2. *logging stalled* through its Control API: the gateway's logging queue fills, risk and
//!    notification go idle, and the client's sends block;
//! 3. *logging back*: throughput returns and the backlog drains;
//! 4. *10× overload*: unary calls at ten times the rate on top: refused with pushback,
//!    memory flat.
//!
//! Then a verdict per claim with its measured figure: how soon the pressure reached the
//! client, memory against the gateway's bound, every acknowledged transaction in the audit
//! log, how soon throughput came back, what the overload was told; and the transactions that
//! waited longest, with their traces. Exit 1 when a claim fails.
//!
//! **`--steady`**: one run at one rate, the report, the audit check — what `demo` was
//! before the story.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::kit::{HELD, RSS, held_bounds, peaks, set_stall};
use crate::mesh::LocalMesh;
use sluice_loadgen::admin::control::Control;
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::signal::OutcomeSignal;
use sluice_loadgen::drive::spec::{LoadSpec, Mode, Pacing};
use sluice_loadgen::report::Report;
use sluice_loadgen::report::audit::{self, AuditCheck};
use sluice_loadgen::report::live::Narrator;

/// The demo's open-loop rate unless told otherwise: enough to show the mesh working, little
/// enough for one machine running both the mesh and the generator.
pub const DEFAULT_DEMO_RATE: f64 = 2000.0;
/// How long each phase of the story lasts unless told otherwise.
pub const DEFAULT_PHASE: Duration = Duration::from_secs(9);
/// How long the in-process servers may take to drain when the demo stops them.
const GRACE: Duration = Duration::from_secs(5);
/// The story's last few seconds: steady again, so the overload's end is in the timeline.
const CALM: Duration = Duration::from_secs(2);
/// The overload phase's unary rate, as a multiple of `--rate`.
const OVERLOAD_FACTOR: f64 = 10.0;
/// The overload phase's client throttles itself once refused (`--client-throttle`) with the
/// SRE book's K: the gateway still refuses about half of what reaches it, but is not buried
/// under refusals (in this one process, the generator's CPU and memory are the mesh's too).
const OVERLOAD_THROTTLE: f64 = 2.0;
/// Every story transaction's deadline (the gateway's default and the generator's), far past
/// a stall: the bounds, not deadlines, are what holds the stalled transactions.
const STORY_DEADLINE: Duration = Duration::from_secs(60);
/// The story's timeline interval: fine enough to time the recovery.
const STORY_TICK: Duration = Duration::from_millis(500);
/// Growth of the demo process's memory, beyond the gateway's own bound, that still counts as
/// flat: the generator's side (its outstanding calls under overload, about 23 MiB measured)
/// and the allocator keeping freed pages. An unbounded gateway grows by hundreds of MiB in
/// the same stall (`pressure`).
const MEMORY_SLACK: f64 = 64.0 * MIB;
/// The number of waited-longest transactions shown.
const SHOWN_SLOWEST: usize = 3;
const MIB: f64 = 1024.0 * 1024.0;

/// Starts the mesh (audit log under `data_dir`, or a temporary directory), drives it as
/// `spec` says — against the mesh's gateway, whatever its target, and showing the gateway's
/// queue depths unless it names other metrics — checks the audit log, and stops the mesh.
pub async fn run(
    data_dir: Option<PathBuf>,
    mut spec: LoadSpec,
) -> anyhow::Result<(Report, AuditCheck)> {
    eprintln!("starting risk, notification, logging and the gateway on loopback ...");
    let mesh = LocalMesh::start(data_dir, GRACE).await?;
    eprintln!(
        "mesh up: gateway {} (metrics http://{}/metrics, pressure map http://{}/), audit log in {}",
        mesh.gateway_url,
        mesh.gateway_admin,
        mesh.gateway_admin,
        mesh.data_dir.display()
    );
    spec.target = mesh.gateway_url.clone();
    spec.metrics = spec
        .metrics
        .or_else(|| Some(sluice_loadgen::admin::metrics::url(mesh.gateway_admin)));
    eprintln!(
        "driving {} ingress for {:?} ({}) ...",
        format!("{:?}", spec.mode).to_lowercase(),
        spec.duration,
        spec.pacing.describe()
    );
    let result = async {
        let report = driver::run(spec).await?;
        let check = audit::check(&mesh.logging_url, &report.acked).await?;
        anyhow::Ok((report, check))
    }
    .await;
    eprintln!("shutting down ...");
    mesh.stop().await?;
    result
}

/// One claim of the story and what was measured for it.
pub struct Claim {
    pub held: bool,
    pub text: String,
}

/// What the story measured.
pub struct Story {
    /// The SubmitStream run through all four phases.
    pub report: Report,
    pub claims: Vec<Claim>,
    /// The transactions that waited longest, as lines.
    pub slowest: Vec<String>,
}

impl Story {
    /// True when every claim held.
    pub fn passed(&self) -> bool {
        self.claims.iter().all(|c| c.held)
    }

    /// The verdict, one line per claim, then the transactions that waited longest.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::from("the story, measured:\n");
        for c in &self.claims {
            let mark = if c.held { "held  " } else { "FAILED" };
            let _ = writeln!(s, "  {mark} {}", c.text);
        }
        if !self.slowest.is_empty() {
            let _ = writeln!(s, "waited longest:");
            for line in &self.slowest {
                let _ = writeln!(s, "  {line}");
            }
        }
        s
    }
}

/// Sleeps until `at`, then prints the phase's narration at its time in the run.
async fn phase(narrator: &Narrator, start: Instant, at: Duration, line: &str) {
    tokio::time::sleep_until((start + at).into()).await;
    narrator.say(&format!("\n[{:>4.1} s] {line}", at.as_secs_f64()));
}

/// Runs the story: the mesh in this process, driven through its four phases (`phase` long
/// each) at `spec`'s open-loop rate (or [`DEFAULT_DEMO_RATE`]), measured, and stopped.
pub async fn story(
    data_dir: Option<PathBuf>,
    spec: LoadSpec,
    phase_for: Duration,
) -> anyhow::Result<Story> {
    anyhow::ensure!(
        phase_for >= Duration::from_secs(1),
        "--phase must be at least 1s"
    );
    let rate = match spec.pacing {
        Pacing::Open { rate } => rate,
        _ => DEFAULT_DEMO_RATE,
    };
    eprintln!("starting risk, notification, logging and the gateway on loopback ...");
    let mesh = LocalMesh::start_with(data_dir, GRACE, Some(STORY_DEADLINE)).await?;
    let metrics = sluice_loadgen::admin::metrics::url(mesh.gateway_admin);
    eprintln!(
        "mesh up: gateway {} (metrics {metrics}), audit log in {}\npressure map: open http://{}/ in a browser to watch the hops live",
        mesh.gateway_url,
        mesh.data_dir.display(),
        mesh.gateway_admin
    );
    let result = drive_story(&mesh, &metrics, spec, rate, phase_for).await;
    eprintln!("shutting down ...");
    mesh.stop().await?;
    result
}

async fn drive_story(
    mesh: &LocalMesh,
    metrics: &str,
    spec: LoadSpec,
    rate: f64,
    phase_for: Duration,
) -> anyhow::Result<Story> {
    let mut control = Control::connect(&mesh.logging_url, Some(&mesh.control_token)).await?;
    let signal = Arc::new(OutcomeSignal::default());
    let narrator = Narrator::default();
    let total = phase_for * 4 + CALM;
    let stream_spec = LoadSpec::builder(mesh.gateway_url.clone())
        .mode(Mode::Stream)
        .pacing(Pacing::Open { rate })
        .duration(total)
        .connections(spec.connections)
        .timeout(STORY_DEADLINE)
        .tick(STORY_TICK)
        .metrics(Some(metrics.to_string()))
        .outcomes(signal.clone())
        .progress(spec.progress)
        .narrator(narrator.clone())
        .seed(spec.seed)
        .id_prefix(format!("{}-stream", spec.id_prefix))
        .trace_links(spec.trace_links.clone())
        .build()?;
    let overload_rate = rate * OVERLOAD_FACTOR;
    let overload_spec = LoadSpec::builder(mesh.gateway_url.clone())
        .mode(Mode::Unary)
        .pacing(Pacing::Open {
            rate: overload_rate,
        })
        .duration(phase_for)
        .connections(spec.connections)
        .seed(spec.seed ^ 1)
        .client_throttle(Some(OVERLOAD_THROTTLE))
        .id_prefix(format!("{}-unary", spec.id_prefix))
        .build()?;

    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let load = tokio::spawn(driver::run_with(stream_spec, Some(started_tx)));
    let start = started_rx.await?;
    let secs = |d: Duration| d.as_secs_f64();
    narrator.say(&format!(
        "\n[ 0.0 s] steady: {rate:.0} transactions/s over SubmitStream; each one is scored by risk, appended (fsync) to the audit log and notified"
    ));

    // 2. Logging stalled.
    let stall_at = phase_for;
    phase(
        &narrator,
        start,
        stall_at,
        "logging stalled: watch what the gateway holds for logging (held, log) climb while risk and notification go idle, then the client's sends block",
    )
    .await;
    let rss_before = sluice_loadgen::admin::metrics::metric(metrics, RSS)
        .await
        .unwrap_or(0.0);
    let stalled = Instant::now();
    set_stall(&mut control, true).await?;
    let mut blocked = signal.blocked.subscribe();
    let first_block = tokio::time::timeout(phase_for, async {
        blocked
            .wait_for(|b| b.is_some_and(|b| b > stalled))
            .await
            .ok()
            .and_then(|b| *b)
    });
    let (first_block, [held, rss_stalled]) = tokio::join!(
        first_block,
        peaks(
            metrics,
            [HELD.as_str(), RSS],
            start + stall_at + phase_for,
            [0.0, rss_before]
        )
    );
    let to_block = first_block
        .ok()
        .flatten()
        .map(|b| b.duration_since(stalled));

    // 3. Logging back.
    let unstall_at = stall_at + phase_for;
    phase(
        &narrator,
        start,
        unstall_at,
        "logging back: throughput returns and the backlog drains",
    )
    .await;
    set_stall(&mut control, false).await?;

    // 4. Overload.
    let overload_at = unstall_at + phase_for;
    phase(
        &narrator,
        start,
        overload_at,
        &format!(
            "10x overload: unary calls at {overload_rate:.0}/s on top; the gateway refuses what it cannot take, with pushback, and the client backs off (--client-throttle {OVERLOAD_THROTTLE})"
        ),
    )
    .await;
    let rss_calm = sluice_loadgen::admin::metrics::metric(metrics, RSS)
        .await
        .unwrap_or(0.0);
    let overload = tokio::spawn(driver::run(overload_spec));
    let [rss_overload] = peaks(metrics, [RSS], start + overload_at + phase_for, [rss_calm]).await;
    phase(
        &narrator,
        start,
        overload_at + phase_for,
        "calm again: steady load",
    )
    .await;
    let overload = overload.await??;
    let report = load.await??;

    let mut acked = report.acked.clone();
    acked.extend(overload.acked.iter().cloned());
    let check = audit::check(&mesh.logging_url, &acked).await?;

    // Throughput is back when OK completions reach 90 % of the rate again; the backlog is
    // drained when the generator, which kept its schedule through the stall, is no longer
    // blocked catching up.
    let after: Vec<_> = report
        .timeline
        .iter()
        .filter(|p| p.t > secs(unstall_at) && p.t <= secs(overload_at))
        .collect();
    let back = after
        .iter()
        .find(|p| p.ok >= 0.9 * rate)
        .map(|p| p.t - secs(unstall_at));
    let drained = after
        .iter()
        .find(|p| p.blocked_pct < 10.0 && p.ok <= 1.1 * rate)
        .map(|p| p.t - secs(unstall_at));

    let (held_bound, bytes_bound) = held_bounds(spec.connections);
    let stall_growth = rss_stalled - rss_before;
    let overload_growth = rss_overload - rss_calm;
    let flat = |growth: f64| growth <= bytes_bound + MEMORY_SLACK;
    let refused = |r: &Report, code: &str| r.errors.get(code).copied().unwrap_or(0);
    let pushed_back = refused(&overload, "RESOURCE_EXHAUSTED") + refused(&overload, "UNAVAILABLE");
    let mut claims = vec![
        Claim {
            held: to_block.is_some(),
            text: match to_block {
                Some(d) => format!(
                    "pressure reached the client {:.0} ms after logging stalled: its sends blocked (the gateway held at most {held:.0} transactions; its bound {held_bound:.0})",
                    d.as_secs_f64() * 1000.0
                ),
                None => format!(
                    "pressure did not reach the client within {phase_for:?} of the stall (the gateway held at most {held:.0} transactions; its bound {held_bound:.0})"
                ),
            },
        },
        Claim {
            held: flat(stall_growth) && flat(overload_growth),
            text: format!(
                "memory stayed flat: {:+.1} MiB while logging was stalled, {:+.1} MiB under overload (mesh and generator, this one process; the gateway's bound {:.1} MiB + {:.0} MiB for the generator's side)",
                stall_growth / MIB,
                overload_growth / MIB,
                bytes_bound / MIB,
                MEMORY_SLACK / MIB
            ),
        },
        Claim {
            held: check.passed() && check.acknowledged > 0,
            text: format!(
                "nothing acknowledged was lost: {} acknowledged, {} missing from the audit log, {} at a wrong offset",
                check.acknowledged,
                check.missing.len(),
                check.wrong_offset.len()
            ),
        },
        Claim {
            held: back.is_some(),
            text: match (back, drained) {
                (Some(b), Some(d)) => format!(
                    "throughput back {b:.1} s after logging returned; the backlog drained in {d:.1} s"
                ),
                (Some(b), None) => format!(
                    "throughput back {b:.1} s after logging returned; the backlog was still draining when the overload began"
                ),
                _ => {
                    format!("throughput did not come back within {phase_for:?} of logging's return")
                }
            },
        },
        Claim {
            held: pushed_back > 0 && overload.ok > 0,
            text: format!(
                "10x overload ({:.0} unary calls/s wanted): {} refused by the gateway with pushback, {} held back by the client, {:.0}/s accepted, the stream kept {:.0}/s",
                overload_rate,
                pushed_back,
                overload.throttled,
                overload.ok_rate,
                stream_ok_rate(&report, secs(overload_at), secs(overload_at + phase_for)),
            ),
        },
    ];
    if report.ok == 0 {
        claims.push(Claim {
            held: false,
            text: "no transaction finished OK".into(),
        });
    }
    let slowest = report
        .slowest
        .iter()
        .take(SHOWN_SLOWEST)
        .map(|e| {
            let trace = match (&e.trace_id, &e.trace_url) {
                (_, Some(url)) => url.clone(),
                (Some(id), None) => format!("trace {id} (add --jaeger-url for a link)"),
                (None, None) => {
                    "no trace (give an OTLP endpoint, e.g. --otlp-endpoint http://127.0.0.1:4317 before `demo`, and --jaeger-url)".into()
                }
            };
            format!(
                "{:>9.1} ms  {}  {trace}",
                e.latency_ms.unwrap_or(0.0),
                e.id
            )
        })
        .collect();
    Ok(Story {
        report,
        claims,
        slowest,
    })
}

/// The stream's OK rate over `from..to` seconds of its run.
fn stream_ok_rate(report: &Report, from: f64, to: f64) -> f64 {
    let points: Vec<_> = report
        .timeline
        .iter()
        .filter(|p| p.t > from && p.t <= to)
        .collect();
    points.iter().map(|p| p.ok).sum::<f64>() / points.len().max(1) as f64
}
