//! `sluice-lab chaos`: kill and freeze every process of the mesh under load, then prove
//! that nothing acknowledged was lost and nothing hung.
//!
//! It starts the real binaries on loopback (as `scenario` does), drives SubmitStream and
//! unary load together for the whole run, and on a timeline, for each target in turn:
//! SIGKILLs it and restarts it on the same addresses (logging on the same data directory)
//! `--kills` times, then SIGSTOPs it for `--stop-for` and SIGCONTs it. After each restart or
//! SIGCONT it measures recovery: until the gateway reports ready again (its health stream)
//! and until the first OK outcome (for notification, which is best effort, the first outcome
//! whose notice was QUEUED). At the end it reads the audit log back and checks every
//! acknowledged outcome against it.
//!
//! The timeline is fixed, not driven by recoveries: open-loop load needs its length up front,
//! and a recovery slower than `--settle` is a finding to report ("not within"), not a reason
//! to stretch the run. Streams that end (a killed gateway) are reopened, and everything sent
//! without an outcome is counted (`NO_OUTCOME`); what still waits past its deadline at the
//! end is **hung**. Exit 2 when an acknowledged record is missing or anything hung.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::procs::{MeshOptions, Proc, ProcMesh, bin_dir};
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::signal::OutcomeSignal;
use sluice_loadgen::drive::spec::{LoadSpec, Mode, Pacing};
use sluice_loadgen::report::audit::AuditCheck;
use sluice_loadgen::report::exemplars::TraceLinkArgs;
use sluice_loadgen::report::{NO_OUTCOME, Report};

/// Version of the `chaos --json` document (docs/report-schema.md).
pub const CHAOS_SCHEMA_VERSION: u32 = 1;
/// How often the gateway health watcher retries while the gateway is down.
const HEALTH_RETRY: Duration = Duration::from_millis(50);

/// Kill and freeze each process of the mesh under stream and unary load; check that no
/// acknowledged transaction is missing from the audit log and none hung.
///
/// For each target in turn: SIGKILL and restart it (same addresses; logging keeps its data
/// directory) --kills times, --settle apart; then SIGSTOP it for --stop-for and SIGCONT.
/// Recovery after each event: time until the gateway reports ready, and until the first OK
/// outcome (notification: the first with a QUEUED notice). Exit 2 when an acknowledged record
/// is missing from the log or a transaction hung (no outcome, past its deadline, at the end).
#[derive(Debug, Clone, Args)]
pub struct ChaosArgs {
    /// SIGKILL and restart each target this many times.
    #[arg(long, default_value_t = 3)]
    pub kills: u32,
    /// SIGSTOP each target for this long, then SIGCONT (0s: no stops).
    #[arg(long, default_value = "5s", value_parser = sluice_core::parse_duration)]
    pub stop_for: Duration,
    /// Steady load before the first event and after each one. A recovery slower than this is
    /// reported as not recovered.
    #[arg(long, default_value = "4s", value_parser = sluice_core::parse_duration)]
    pub settle: Duration,
    /// How long a killed process stays down before it is restarted.
    #[arg(long, default_value = "0s", value_parser = sluice_core::parse_duration)]
    pub down_for: Duration,
    /// The processes to disrupt, in this order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "risk,notification,logging,gateway"
    )]
    pub targets: Vec<Target>,
    /// SubmitStream load, transactions per second (open loop).
    #[arg(long, default_value_t = 400.0)]
    pub stream_rate: f64,
    /// Unary Submit load, transactions per second (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub unary_rate: f64,
    /// Deadline of each transaction.
    #[arg(long, default_value = "5s", value_parser = sluice_core::parse_duration)]
    pub timeout: Duration,
    /// Connections per load (stream mode: one SubmitStream each, reopened when it ends).
    #[arg(long, default_value_t = sluice_loadgen::drive::spec::DEFAULT_CONNECTIONS)]
    pub connections: usize,
    /// An extra flag for the gateway, e.g. --gateway-flag=--reconnect-max=500ms (repeatable).
    /// The gateway runs with --degradation off unless this says otherwise.
    #[arg(long, allow_hyphen_values = true)]
    pub gateway_flag: Vec<String>,
    /// Directory with the sluice-* binaries (default: this executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Write the result as JSON (events, audit check, both load reports) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub traces: TraceLinkArgs,
}

/// A process of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    Risk,
    Notification,
    Logging,
    Gateway,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Risk => "risk",
            Target::Notification => "notification",
            Target::Logging => "logging",
            Target::Gateway => "gateway",
        }
    }

    fn proc(self, mesh: &mut ProcMesh) -> &mut Proc {
        match self {
            Target::Risk => &mut mesh.risk,
            Target::Notification => &mut mesh.notification,
            Target::Logging => &mut mesh.logging,
            Target::Gateway => &mut mesh.gateway,
        }
    }
}

/// What happens to a target at one point of the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// SIGKILL, then restart.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Stop,
}

/// One disruption and how the mesh recovered from it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Seconds since the load started.
    pub t: f64,
    pub target: Target,
    pub action: Action,
    /// Kill: which of the `--kills` (1-based); stop: 1.
    pub n: u32,
    /// Kill: SIGKILL until the restarted process printed its ready line; stop: SIGSTOP until
    /// SIGCONT. Seconds.
    pub down_s: f64,
    /// From restart / SIGCONT until the gateway reported ready (0 when its health never left
    /// SERVING; null: not within `--settle`).
    pub ready_after_s: Option<f64>,
    /// Whether the gateway's health left SERVING after the event (it samples readiness
    /// every 100 ms, so an outage shorter than that may not show).
    pub gateway_unready: bool,
    /// From restart / SIGCONT until the first OK outcome (notification: with a QUEUED
    /// notice); null: not within `--settle`.
    pub first_ok_after_s: Option<f64>,
}

/// The `chaos --json` document.
#[derive(Debug, Serialize)]
pub struct ChaosReport {
    pub schema_version: u32,
    /// The command line that produced it.
    pub command: String,
    pub events: Vec<Event>,
    /// OK outcomes with an audit offset, over both loads.
    pub acknowledged: usize,
    /// The audit log compared with them: `missing`, `wrong_offset`, `duplicated` (ids).
    pub audit: AuditCheck,
    /// Transactions with no outcome, still waiting past their deadline, at the end.
    pub hung: u64,
    /// Errors by code over both loads, `NO_OUTCOME` included.
    pub errors: BTreeMap<String, u64>,
    /// No acknowledged record missing (or at a wrong offset, or duplicated), nothing hung.
    pub passed: bool,
    pub stream: Report,
    pub unary: Report,
}

/// The gateway's readiness as its health stream reports it, and since when.
#[derive(Debug, Clone, Copy)]
struct Health {
    serving: bool,
    since: Instant,
}

/// Records a readiness change (and only a change: `since` keeps the transition's time).
fn set_serving(health: &watch::Sender<Health>, serving: bool) {
    health.send_if_modified(|h| {
        let changed = h.serving != serving;
        if changed {
            *h = Health {
                serving,
                since: Instant::now(),
            };
        }
        changed
    });
}

/// Publishes whether the gateway reports `mesh.v1.Gateway` SERVING, following it across
/// restarts: a broken health stream means "not ready" until a new one says otherwise.
async fn watch_gateway(url: String, health: Arc<watch::Sender<Health>>) {
    loop {
        let watched = async {
            let channel = Endpoint::from_shared(url.clone())?
                .connect_timeout(Duration::from_secs(1))
                .connect()
                .await?;
            let mut updates = HealthClient::new(channel)
                .watch(HealthCheckRequest {
                    service: "mesh.v1.Gateway".into(),
                })
                .await?
                .into_inner();
            while let Some(update) = updates.message().await? {
                set_serving(&health, update.status == ServingStatus::Serving as i32);
            }
            anyhow::Ok(())
        };
        let _ = watched.await;
        set_serving(&health, false);
        tokio::time::sleep(HEALTH_RETRY).await;
    }
}

/// Waits (at most `within`) for the gateway to be ready and for an OK outcome at or after
/// `from`; returns both delays from `from`, and whether the gateway's health left SERVING
/// after `disrupted` (it samples readiness periodically, so a short outage may not show).
async fn recovery(
    disrupted: Instant,
    from: Instant,
    within: Duration,
    mut health: watch::Receiver<Health>,
    mut ok: watch::Receiver<Option<Instant>>,
) -> (Option<f64>, Option<f64>, bool) {
    let ready = async {
        let h = *health.wait_for(|h| h.serving).await.ok()?;
        let dipped = h.since > disrupted;
        let after = if dipped {
            h.since.saturating_duration_since(from).as_secs_f64()
        } else {
            0.0
        };
        Some((after, dipped))
    };
    let first_ok = async {
        let at = *ok.wait_for(|t| t.is_some_and(|t| t >= from)).await.ok()?;
        at.map(|t| t.duration_since(from).as_secs_f64())
    };
    let (ready, first_ok) = tokio::join!(
        tokio::time::timeout(within, ready),
        tokio::time::timeout(within, first_ok)
    );
    let (ready, dipped) = match ready.ok().flatten() {
        Some((after, dipped)) => (Some(after), dipped),
        None => (None, true),
    };
    (ready, first_ok.ok().flatten(), dipped)
}

fn secs(v: Option<f64>) -> String {
    v.map_or("not within settle".to_string(), |s| format!("{s:.2} s"))
}

/// Runs the chaos; `Ok(false)` when an acknowledged record is missing or something hung.
pub async fn run(args: ChaosArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(!args.targets.is_empty(), "--targets: name at least one");
    anyhow::ensure!(
        args.stream_rate > 0.0 && args.unary_rate > 0.0,
        "--stream-rate and --unary-rate must be positive"
    );
    anyhow::ensure!(!args.settle.is_zero(), "--settle must be more than 0");
    let dir = bin_dir(args.bin_dir.as_deref())?;
    let command = std::env::args().collect::<Vec<_>>().join(" ");

    // The timeline: a settle first, then each target's kills and stop, a settle after each.
    let mut plan: Vec<(Duration, Target, Action, u32)> = Vec::new();
    let mut at = args.settle;
    for &target in &args.targets {
        for n in 1..=args.kills {
            plan.push((at, target, Action::Kill, n));
            at += args.down_for + args.settle;
        }
        if !args.stop_for.is_zero() {
            plan.push((at, target, Action::Stop, 1));
            at += args.stop_for + args.settle;
        }
    }
    let length = at;
    println!(
        "chaos: {} kill(s) and a {:?} stop of each of {}; {}/s SubmitStream + {}/s unary for {:.0} s",
        args.kills,
        args.stop_for,
        args.targets
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.stream_rate,
        args.unary_rate,
        length.as_secs_f64()
    );

    // Degradation off: chaos times each process's recovery, and a degradation level
    // entered because the last process was stopped would keep notices skipped (and unary
    // writes refused) for its 5 calm seconds, timing the hysteresis instead.
    let mut gateway = args.gateway_flag.clone();
    if !gateway.iter().any(|f| f.starts_with("--degradation")) {
        gateway.extend(["--degradation".to_string(), "off".to_string()]);
    }
    let options = MeshOptions {
        gateway,
        ..Default::default()
    };
    let mut mesh = ProcMesh::start_ready(dir, options).await?;
    let gateway_url = mesh.gateway.url();
    let health = Arc::new(watch::Sender::new(Health {
        serving: false,
        since: Instant::now(),
    }));
    let watcher = tokio::spawn(watch_gateway(gateway_url.clone(), health.clone()));

    let outcomes = Arc::new(OutcomeSignal::default());
    let spec = |mode: Mode, rate: f64| {
        LoadSpec::builder(gateway_url.clone())
            .mode(mode)
            .pacing(Pacing::Open { rate })
            .duration(length)
            .connections(args.connections)
            .timeout(args.timeout)
            .seed(mode as u64 + 1)
            .id_prefix(format!("chaos-{}-{mode:?}", std::process::id()).to_lowercase())
            // Waited for once above; the loads start together.
            .wait_ready(false)
            .reopen_streams(true)
            .outcomes(outcomes.clone())
            .trace_links(args.traces.jaeger_url.clone())
            .build()
    };
    let (stream_spec, unary_spec) = (
        spec(Mode::Stream, args.stream_rate)?,
        spec(Mode::Unary, args.unary_rate)?,
    );
    let started = Instant::now();
    let stream_load = tokio::spawn(driver::run(stream_spec));
    let unary_load = tokio::spawn(driver::run(unary_spec));

    let mut events = Vec::new();
    for (at, target, action, n) in plan {
        tokio::time::sleep_until((started + at).into()).await;
        let t = started.elapsed().as_secs_f64();
        let name = target.name();
        let disrupted = Instant::now();
        let (down, from) = match action {
            Action::Kill => {
                let proc = target.proc(&mut mesh);
                let killed = Instant::now();
                tokio::task::block_in_place(|| proc.sigkill());
                if target == Target::Gateway {
                    set_serving(&health, false);
                }
                tokio::time::sleep(args.down_for).await;
                tokio::task::block_in_place(|| proc.respawn())
                    .with_context(|| format!("cannot restart {name}"))?;
                (killed.elapsed(), Instant::now())
            }
            Action::Stop => {
                let proc = target.proc(&mut mesh);
                proc.signal("STOP")?;
                println!("  [{t:>6.1}s] SIGSTOP {name} for {:?}", args.stop_for);
                let stopped = Instant::now();
                tokio::time::sleep(args.stop_for).await;
                target.proc(&mut mesh).signal("CONT")?;
                (stopped.elapsed(), Instant::now())
            }
        };
        let ok = match target {
            Target::Notification => outcomes.notified.subscribe(),
            _ => outcomes.ok.subscribe(),
        };
        let (ready, first_ok, dipped) =
            recovery(disrupted, from, args.settle, health.subscribe(), ok).await;
        let what = match action {
            Action::Kill => format!(
                "SIGKILL {name} ({n}/{}), back in {:.0} ms",
                args.kills,
                down.as_secs_f64() * 1000.0
            ),
            Action::Stop => format!("SIGCONT {name}"),
        };
        let ok_what = if target == Target::Notification {
            "first QUEUED"
        } else {
            "first OK"
        };
        println!(
            "  [{:>6.1}s] {what}: gateway ready after {}{}, {ok_what} after {}",
            started.elapsed().as_secs_f64(),
            secs(ready),
            if dipped {
                ""
            } else {
                " (its health never left SERVING)"
            },
            secs(first_ok)
        );
        events.push(Event {
            t,
            target,
            action,
            n,
            down_s: down.as_secs_f64(),
            ready_after_s: ready,
            gateway_unready: dipped,
            first_ok_after_s: first_ok,
        });
    }

    let stream = stream_load.await.context("stream load panicked")??;
    let unary = unary_load.await.context("unary load panicked")??;
    watcher.abort();
    let acked: Vec<_> = stream
        .acked
        .iter()
        .chain(unary.acked.iter())
        .cloned()
        .collect();
    let audit = sluice_loadgen::report::audit::check(&mesh.logging_urls(), &acked).await?;
    drop(mesh);

    let mut errors = BTreeMap::new();
    for r in [&stream, &unary] {
        for (code, n) in &r.errors {
            *errors.entry(code.clone()).or_default() += n;
        }
    }
    let hung = stream.hung + unary.hung;
    let passed = audit.passed() && hung == 0;
    let report = ChaosReport {
        schema_version: CHAOS_SCHEMA_VERSION,
        command,
        events,
        acknowledged: acked.len(),
        audit,
        hung,
        errors,
        passed,
        stream,
        unary,
    };
    print!("{}", report.text());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(passed)
}

impl ChaosReport {
    /// The final table.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "\nrecovery (from restart / SIGCONT)");
        let _ = writeln!(
            s,
            "  {:<14} {:<5} {:>3} {:>7} {:>7} {:>13} {:>8} {:>11}",
            "target", "event", "n", "at s", "down s", "health dipped", "ready s", "first OK s"
        );
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
        for e in &self.events {
            let _ = writeln!(
                s,
                "  {:<14} {:<5} {:>3} {:>7.1} {:>7.2} {:>13} {:>8} {:>11}",
                e.target.name(),
                match e.action {
                    Action::Kill => "kill",
                    Action::Stop => "stop",
                },
                e.n,
                e.t,
                e.down_s,
                if e.gateway_unready { "yes" } else { "no" },
                opt(e.ready_after_s),
                opt(e.first_ok_after_s)
            );
        }
        let _ = writeln!(
            s,
            "  (- = not within --settle; notification's first OK is its first QUEUED notice; the\n   gateway samples its readiness every 100 ms, so a shorter outage may not dip its health)"
        );
        let _ = writeln!(
            s,
            "\n  {:<8} {:>9} {:>9} {:>11} {:>6}  errors",
            "load", "sent", "ok", "no outcome", "hung"
        );
        for (name, r) in [("stream", &self.stream), ("unary", &self.unary)] {
            let _ = writeln!(
                s,
                "  {:<8} {:>9} {:>9} {:>11} {:>6}  {}",
                name,
                r.sent,
                r.ok,
                r.errors.get(NO_OUTCOME).copied().unwrap_or(0),
                r.hung,
                join(&r.errors)
            );
        }
        for line in self.stream.stream_end_lines() {
            let _ = writeln!(s, "  stream end {line}");
        }
        let a = &self.audit;
        let _ = writeln!(
            s,
            "\nacknowledged {}   in the log {}   missing {}   wrong offset {}   duplicated {}   hung {}",
            self.acknowledged,
            a.records_in_log,
            a.missing.len(),
            a.wrong_offset.len(),
            a.duplicated.len(),
            self.hung
        );
        for id in a.missing.iter().take(10) {
            let _ = writeln!(s, "  missing: {id}");
        }
        let _ = writeln!(
            s,
            "chaos: {}",
            if self.passed {
                "PASS (no acknowledged record lost, nothing hung)"
            } else {
                "FAIL"
            }
        );
        s
    }
}

fn join(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}
