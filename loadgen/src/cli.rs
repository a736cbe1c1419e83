//! The command line: flags, what they mean as a [`LoadSpec`] (or an experiment's arguments),
//! and which library call each command makes. Nothing here measures or reports; it only
//! turns flags into calls and their results into output and an exit status.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::drive::driver;
use crate::drive::schedule::{ArrivalKind, Arrivals};
use crate::drive::spec::{self, LoadSpec, Mode, Pacing};
use crate::drive::traffic::PriorityMix;
use crate::report::Report;
use crate::report::exemplars::TraceLinkArgs;

/// `sluice-loadgen`: drives a running Sluice gateway and reports what it saw.
///
/// `run` drives a gateway that is already running; `verify` checks its acknowledgements
/// against the audit log. To start a mesh and run experiments on it (the demo, bench,
/// pressure, chaos, scenarios) use `sluice-lab`. Every flag can also be set through the
/// environment variable shown.
#[derive(Debug, Parser)]
#[command(name = "sluice-loadgen", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub telemetry: sluice_core::telemetry::TelemetryArgs,
}

#[derive(Debug, Subcommand)]
// Parsed once per process; boxing the load flags would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Drive a running gateway and print a report.
    Run(RunArgs),
    /// Check a report's acknowledged ids against the audit log (via Logging/Read): each at
    /// its partition and offset, with its outcome's clock, and (with --causal) after the
    /// clock it was sent after.
    Verify(VerifyArgs),
    /// Print the audit log's one history: every partition merged by the gateways' hybrid
    /// logical clocks (ties by partition, then offset); optionally one account's, or since
    /// a time.
    History(HistoryArgs),
    /// Show or change the faults in force on a service (risk, notification or logging)
    /// through its Control API; prints the faults now in force.
    Fault(crate::admin::fault::FaultArgs),
    /// Exit 0 when an admin endpoint answers 200 (container healthchecks: the images have
    /// no shell or curl).
    Health(HealthArgs),
    /// Write a fresh random Control API token to a file (mode 0600): compose's one-shot init
    /// service, whose images have no shell to do it with.
    GenToken(GenTokenArgs),
}

#[derive(Debug, Args)]
pub struct GenTokenArgs {
    /// The file to write, e.g. /secrets/admin-token.
    #[arg(long)]
    pub out: PathBuf,
    /// Keep a token already in the file (services running with it keep working) instead of
    /// replacing it.
    #[arg(long)]
    pub keep_existing: bool,
}

/// Writes a new token to `args.out`, unless asked to keep a usable one already there.
/// Returns whether it wrote one.
pub fn gen_token(args: &GenTokenArgs) -> anyhow::Result<bool> {
    use sluice_core::admin_token::{generate, read_token_file, write_token_file};
    if args.keep_existing && read_token_file(&args.out).is_ok() {
        return Ok(false);
    }
    write_token_file(&args.out, &generate()?)?;
    Ok(true)
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// The URL to probe: /readyz (ready for traffic) or /healthz (alive), e.g.
    /// http://127.0.0.1:9101/readyz. Anything but 200 is a failure.
    #[arg(default_value = "http://127.0.0.1:9101/healthz")]
    pub url: String,
    /// Give up after this long, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = sluice_core::parse_duration)]
    pub timeout: Duration,
}

/// Load shape shared by `run` and the lab's `demo`.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Which API to drive: unary Submit or SubmitStream.
    #[arg(long, env = "SLUICE_LOAD_MODE", value_enum, default_value_t = Mode::Stream)]
    pub mode: Mode,
    /// Open loop: transactions per second on a fixed schedule (latency from the intended
    /// send time). Default: 1000/s for `run`, 2000/s for `demo`, unless --concurrency or a
    /// profile (--steps, --ramp, --schedule-file) is given.
    #[arg(long, env = "SLUICE_LOAD_RATE", conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Open loop: how arrivals are spaced: constant (evenly) or poisson (random gaps with the
    /// same mean).
    #[arg(long, env = "SLUICE_LOAD_ARRIVALS", value_enum, default_value_t = ArrivalKind::Constant)]
    pub arrivals: ArrivalKind,
    /// Open loop in steps: RATE@DURATION,... e.g. 1000@5s,5000@5s (the run lasts their sum).
    #[arg(long, env = "SLUICE_LOAD_STEPS", conflicts_with_all = ["rate", "concurrency", "ramp", "schedule_file"])]
    pub steps: Option<String>,
    /// Open loop ramps: FROM-TO@DURATION,... e.g. 100-5000@20s (the run lasts their sum).
    #[arg(long, env = "SLUICE_LOAD_RAMP", conflicts_with_all = ["rate", "concurrency", "schedule_file"])]
    pub ramp: Option<String>,
    /// Open loop from a schedule file (TOML: `arrivals`, `[[segment]]` with `rate` or
    /// `from`/`to`, and `duration`).
    #[arg(long, env = "SLUICE_LOAD_SCHEDULE_FILE", conflicts_with_all = ["rate", "concurrency"])]
    pub schedule_file: Option<PathBuf>,
    /// Closed loop: transactions outstanding at a time.
    #[arg(long, env = "SLUICE_LOAD_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// How long to measure, e.g. 10s.
    #[arg(long, env = "SLUICE_LOAD_DURATION", default_value = "10s", value_parser = sluice_core::parse_duration)]
    pub duration: Duration,
    /// Load sent before measuring starts (not counted), e.g. 1s.
    #[arg(long, env = "SLUICE_LOAD_WARMUP", default_value = "0s", value_parser = sluice_core::parse_duration)]
    pub warmup: Duration,
    /// HTTP/2 connections to the gateway (stream mode: one SubmitStream each).
    #[arg(long, env = "SLUICE_LOAD_CONNECTIONS", default_value_t = spec::DEFAULT_CONNECTIONS)]
    pub connections: usize,
    /// Share of deliberately invalid transactions (0..1).
    #[arg(long, env = "SLUICE_LOAD_INVALID_RATIO", default_value_t = 0.0)]
    pub invalid_ratio: f64,
    /// Deadline of each transaction, e.g. 5s.
    #[arg(long, env = "SLUICE_LOAD_TIMEOUT", default_value = "5s", value_parser = sluice_core::parse_duration)]
    pub timeout: Duration,
    /// Most transactions outstanding in open loop; beyond it sends wait (and the wait
    /// counts in latency).
    #[arg(long, env = "SLUICE_LOAD_MAX_OUTSTANDING", default_value_t = spec::DEFAULT_MAX_OUTSTANDING)]
    pub max_outstanding: usize,
    /// Stream mode: transactions buffered per stream before a send blocks.
    #[arg(long, env = "SLUICE_LOAD_STREAM_BUFFER", default_value_t = spec::DEFAULT_STREAM_BUFFER)]
    pub stream_buffer: usize,
    /// Seed of the traffic generator.
    #[arg(long, env = "SLUICE_LOAD_SEED", default_value_t = spec::DEFAULT_SEED)]
    pub seed: u64,
    /// Prefix of transaction ids (default: a random one, so runs never collide).
    #[arg(long, env = "SLUICE_LOAD_ID_PREFIX")]
    pub id_prefix: Option<String>,
    /// Write the report as JSON to this file, including every acknowledged id and offset.
    #[arg(long, env = "SLUICE_LOAD_JSON")]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report (inline SVG charts) to this file.
    #[arg(long, env = "SLUICE_LOAD_HTML")]
    pub html: Option<PathBuf>,
    /// The gateway's metrics URL (e.g. http://127.0.0.1:9101/metrics): show its queue
    /// depths, degradation level and the hop it names as its bottleneck in the live view and
    /// the timeline; the report adds the highest level, the time at each, and the bottleneck
    /// named most often.
    #[arg(long, env = "SLUICE_LOAD_METRICS")]
    pub metrics: Option<String>,
    /// Name this run to the gateway's per-client rate limit: sent as `x-client-id` metadata
    /// on every Submit and SubmitStream (1-64 visible ASCII characters). Without it the
    /// gateway counts the run by its IP address.
    #[arg(long, env = "SLUICE_CLIENT_ID", value_parser = parse_client_id)]
    pub client_id: Option<String>,
    /// Give transactions priorities, in percent CRITICAL:DEFAULT:SHEDDABLE adding up to 100,
    /// e.g. 10:80:10; each transaction's priority follows from --seed and its sequence
    /// number, so a run repeats exactly. The report then breaks results down by priority.
    /// Without it every priority is left unset (DEFAULT).
    #[arg(long, env = "SLUICE_LOAD_PRIORITY_MIX", value_name = "C:D:S")]
    pub priority_mix: Option<PriorityMix>,
    /// Unary mode: behave as a cooperating client under overload (client-side adaptive
    /// throttling, Google SRE book): when the gateway refuses calls (RESOURCE_EXHAUSTED,
    /// UNAVAILABLE), refuse some before sending, so the gateway sees about K calls per one
    /// it accepts (over the last 250 ms). 2 is the book's default; 1.1 wastes least. Calls
    /// refused here are reported as `throttled`, never sent. Off by default: every call is
    /// sent.
    #[arg(long, env = "SLUICE_LOAD_CLIENT_THROTTLE", value_name = "K")]
    pub client_throttle: Option<f64>,
    /// Send each account's transactions after its latest acknowledged one: each carries
    /// `after_hlc` = the `hlc` of that account's latest OK outcome, so the gateways' hybrid
    /// logical clocks order each account's history as this client saw it, across audit
    /// partitions and gateways. `verify` checks the chains (report with --json).
    #[arg(long, env = "SLUICE_LOAD_CAUSAL")]
    pub causal: bool,
    #[command(flatten)]
    pub traces: TraceLinkArgs,
    #[command(flatten)]
    pub h2: sluice_core::h2::H2Settings,
    /// Start sending at once instead of waiting for the gateway to report ready.
    #[arg(long)]
    pub no_wait_ready: bool,
    /// No progress lines.
    #[arg(long, short)]
    pub quiet: bool,
}

impl LoadArgs {
    /// Writes the JSON and HTML reports the flags ask for.
    pub fn write_reports(&self, title: &str, report: &Report) -> anyhow::Result<()> {
        if let Some(path) = &self.json {
            crate::report::json::write(path, report)?;
            eprintln!("report written to {}", path.display());
        }
        if let Some(path) = &self.html {
            crate::report::html::write(path, title, report, &[])?;
            eprintln!("HTML report written to {}", path.display());
        }
        Ok(())
    }

    /// The run these flags describe, against `target`; `rate` when neither a rate, a
    /// profile nor a concurrency is given.
    pub fn spec(&self, target: String, rate: f64) -> anyhow::Result<LoadSpec> {
        let shaped = |segments| Arrivals {
            kind: self.arrivals,
            segments,
        };
        let profile = match (&self.steps, &self.ramp, &self.schedule_file) {
            (Some(steps), _, _) => Some(shaped(crate::drive::schedule::parse_steps(steps)?)),
            (None, Some(ramp), _) => Some(shaped(crate::drive::schedule::parse_ramp(ramp)?)),
            (None, None, Some(file)) => Some(crate::drive::schedule::load_file(file)?),
            _ => None,
        };
        let (pacing, duration, warmup) = match (profile, self.rate, self.concurrency) {
            // A profile sets its own length; warmup does not apply.
            (Some(p), _, _) => {
                let length = p.total();
                (Pacing::Shaped(Arc::new(p)), length, Duration::ZERO)
            }
            (None, _, Some(concurrency)) => {
                (Pacing::Closed { concurrency }, self.duration, self.warmup)
            }
            (None, given, None) => {
                let rate = given.unwrap_or(rate);
                let pacing = Pacing::at_rate(rate, self.arrivals, self.warmup + self.duration);
                (pacing, self.duration, self.warmup)
            }
        };
        if let Some(url) = &self.metrics {
            crate::admin::http::parse_url(url).context("--metrics")?;
        }
        let mut spec = LoadSpec::builder(target)
            .mode(self.mode)
            .pacing(pacing)
            .duration(duration)
            .warmup(warmup)
            .connections(self.connections)
            .invalid_ratio(self.invalid_ratio)
            .max_outstanding(self.max_outstanding)
            .stream_buffer(self.stream_buffer)
            .timeout(self.timeout)
            .progress(!self.quiet)
            .seed(self.seed)
            .wait_ready(!self.no_wait_ready)
            .h2(self.h2.clone())
            .metrics(self.metrics.clone())
            .client_id(self.client_id.clone())
            .priority_mix(self.priority_mix)
            .client_throttle(self.client_throttle)
            .causal(self.causal)
            .trace_links(self.traces.jaeger_url.clone());
        if let Some(prefix) = &self.id_prefix {
            spec = spec.id_prefix(prefix);
        }
        spec.build().context("these flags do not describe a run")
    }
}

/// `--client-id`, checked as the gateway will check it.
fn parse_client_id(id: &str) -> Result<String, String> {
    spec::check_client_id(id)?;
    Ok(id.to_string())
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Gateway URL; several gateways comma-separated, or a host name with one address per
    /// gateway (a scaled service): the connections are spread over every address.
    #[arg(long, env = "SLUICE_TARGET", default_value = spec::DEFAULT_TARGET)]
    pub target: String,
    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Logging service URL; with a partitioned audit log, every partition's, comma-separated
    /// in partition order (as the gateway's --logging).
    #[arg(long, env = "SLUICE_LOGGING", default_value = "http://127.0.0.1:50054")]
    pub logging: String,
    /// A report written by `run --json`.
    #[arg(long)]
    pub report: PathBuf,
    /// The mesh token, when the logging service requires one for Read (the same
    /// --mesh-token or --mesh-token-file it was given).
    #[command(flatten)]
    pub mesh: sluice_core::auth::MeshTokenArgs,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Logging service URLs, every partition's, comma-separated in partition order (as the
    /// gateway's --logging).
    #[arg(long, env = "SLUICE_LOGGING", default_value = "http://127.0.0.1:50054")]
    pub logging: String,
    /// Only this account's records.
    #[arg(long)]
    pub account: Option<String>,
    /// Only records stamped this recently, e.g. 10m (by their clock's wall-clock part).
    #[arg(long, value_parser = sluice_core::parse_duration)]
    pub since: Option<Duration>,
    /// The mesh token, when the logging service requires one for Read.
    #[command(flatten)]
    pub mesh: sluice_core::auth::MeshTokenArgs,
}

/// One line of `history`: clock (wall-clock time and logical count), where the record is,
/// and what it says.
pub fn history_line(r: &crate::report::audit::Located) -> String {
    let e = &r.entry;
    let ms = e.hlc >> 16;
    // Before year 10000 as a time; a clock past it (nothing a gateway stamps) as a number.
    let at = if ms < 253_402_300_800_000 {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    } else {
        format!("{ms} ms")
    };
    format!(
        "{at} +{:<5} p{}/{:<8} {:<16} {:>12} {} {:<20} {}",
        e.hlc & 0xFFFF,
        r.partition,
        e.offset,
        e.account,
        e.amount_minor,
        e.currency,
        e.merchant,
        e.id
    )
}

/// A client binary's `main` after parsing (`sluice-loadgen`, `sluice-lab`): logging and
/// span export as `telemetry` says, `command` on a runtime worker — not the thread
/// `block_on` polls, so the driver and the tasks it wakes (stream readers, the pacer's
/// hand-off) share a thread instead of waking each other across two (at 22,000/s open
/// loop: the generator's CPU 56-62 % -> 49-53 % of a core, three runs each) — then the
/// spans flushed, and the exit code: 0, 2 when a check failed, 1 on an error, 64 when
/// telemetry cannot start.
pub async fn main_with<F>(
    name: &'static str,
    telemetry: &sluice_core::telemetry::TelemetryArgs,
    command: F,
) -> std::process::ExitCode
where
    F: std::future::Future<Output = anyhow::Result<bool>> + Send + 'static,
{
    use std::process::ExitCode;
    let tracing = match sluice_core::telemetry::init(name, telemetry, "warn") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(64);
        }
    };
    let result = match tokio::spawn(command).await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    // Flush the client spans while the runtime still runs.
    let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("{name}: a check failed (see above)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a parsed command. `Ok(false)` means it ran but a check failed.
pub async fn execute(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Run(args) => {
            let spec = args.load.spec(args.target, spec::DEFAULT_RATE)?;
            let report = driver::run(spec).await?;
            print!("{}", report.text());
            args.load.write_reports("sluice-loadgen run", &report)?;
            Ok(true)
        }
        Command::GenToken(args) => {
            let wrote = gen_token(&args)?;
            println!(
                "{} {}",
                args.out.display(),
                if wrote { "written" } else { "kept" }
            );
            Ok(true)
        }
        Command::Health(args) => {
            crate::admin::http::parse_url(&args.url)?;
            match crate::admin::http::get(&args.url, args.timeout).await {
                Ok((status, _)) if status == hyper::StatusCode::OK => {
                    println!("{} healthy", args.url);
                    Ok(true)
                }
                Ok((status, body)) => {
                    let body = body.trim();
                    let sep = if body.is_empty() { "" } else { ": " };
                    println!("{} unhealthy: {status}{sep}{body}", args.url);
                    Ok(false)
                }
                Err(e) => {
                    println!("{} unhealthy: {e:#}", args.url);
                    Ok(false)
                }
            }
        }
        Command::Fault(args) => {
            let now = crate::admin::fault::run(&args).await?;
            println!("{} {}", args.target, crate::admin::control::describe(&now));
            Ok(true)
        }
        Command::History(args) => {
            let token = args.mesh.resolve()?;
            let all = crate::report::audit::history(&args.logging, token.as_deref()).await?;
            let since_ms = args.since.map(|d| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                now.saturating_sub(d).as_millis() as u64
            });
            let mut shown = 0;
            for r in all.iter().filter(|r| {
                args.account.as_ref().is_none_or(|a| &r.entry.account == a)
                    && since_ms.is_none_or(|from| r.entry.hlc >> 16 >= from)
            }) {
                println!("{}", history_line(r));
                shown += 1;
            }
            eprintln!(
                "{shown} of {} records, merged by (hlc, partition, offset)",
                all.len()
            );
            Ok(true)
        }
        Command::Verify(args) => {
            let acked = crate::report::json::read_acked(&args.report)?;
            let token = args.mesh.resolve()?;
            let check =
                crate::report::audit::check_with_token(&args.logging, token.as_deref(), &acked)
                    .await?;
            println!("{}", serde_json::to_string_pretty(&check)?);
            Ok(check.passed())
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }

    #[test]
    fn flag_defaults_are_the_library_defaults() {
        use super::{Cli, Command, spec};
        use clap::Parser;
        let Command::Run(args) = Cli::try_parse_from(["sluice-loadgen", "run"])
            .unwrap()
            .command
        else {
            panic!("not run");
        };
        let flags = args.load.spec(args.target, spec::DEFAULT_RATE).unwrap();
        let library = spec::LoadSpec::default();
        assert_eq!(flags.target, library.target);
        assert_eq!(flags.mode, library.mode);
        assert!(matches!(flags.pacing, spec::Pacing::Open { rate } if rate == spec::DEFAULT_RATE));
        assert_eq!(
            (flags.duration, flags.warmup, flags.timeout, flags.tick),
            (
                library.duration,
                library.warmup,
                library.timeout,
                library.tick
            )
        );
        assert_eq!(
            (
                flags.connections,
                flags.max_outstanding,
                flags.stream_buffer
            ),
            (
                library.connections,
                library.max_outstanding,
                library.stream_buffer
            )
        );
        assert_eq!(flags.invalid_ratio, library.invalid_ratio);
        assert_eq!(flags.seed, library.seed);
        assert_eq!(flags.wait_ready, library.wait_ready);
        assert_eq!(flags.client_id, library.client_id);
        assert_eq!(flags.priority_mix, library.priority_mix);
        assert_eq!(flags.client_throttle, library.client_throttle);
    }

    #[test]
    fn client_id_and_priority_mix_flags_are_checked_naming_the_flag() {
        use super::{Cli, Command, spec};
        use crate::drive::traffic::PriorityMix;
        use clap::Parser;
        let run = |extra: &[&str]| {
            let args = ["sluice-loadgen", "run"].iter().chain(extra);
            Cli::try_parse_from(args).map(|cli| match cli.command {
                Command::Run(args) => args,
                _ => panic!("not run"),
            })
        };
        let args = run(&["--client-id", "tenant-a", "--priority-mix", "10:80:10"]).unwrap();
        let spec = args.load.spec(args.target, spec::DEFAULT_RATE).unwrap();
        assert_eq!(spec.client_id.as_deref(), Some("tenant-a"));
        assert_eq!(
            spec.priority_mix,
            Some(PriorityMix {
                critical: 10,
                default: 80,
                sheddable: 10
            })
        );
        let args = run(&["--mode", "unary", "--client-throttle", "1.1"]).unwrap();
        let spec = args.load.spec(args.target, spec::DEFAULT_RATE).unwrap();
        assert_eq!(spec.client_throttle, Some(1.1));
        let args = run(&["--client-throttle", "0.5"]).unwrap();
        let err = args.load.spec(args.target, spec::DEFAULT_RATE).unwrap_err();
        assert!(format!("{err:#}").contains("client throttle K"), "{err:#}");
        for bad in ["10:80", "10:80:20", "a:b:c"] {
            let err = run(&["--priority-mix", bad]).unwrap_err().to_string();
            assert!(err.contains("--priority-mix"), "{err}");
        }
        let long = "x".repeat(65);
        for bad in ["", "has space", long.as_str()] {
            let err = run(&["--client-id", bad]).unwrap_err().to_string();
            assert!(err.contains("--client-id"), "{err}");
        }
    }

    #[test]
    fn gen_token_writes_a_private_random_token_and_can_keep_it() {
        use super::{GenTokenArgs, gen_token};
        use sluice_core::admin_token::read_token_file;
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("admin-token");
        let args = |keep_existing| GenTokenArgs {
            out: out.clone(),
            keep_existing,
        };
        assert!(gen_token(&args(true)).unwrap(), "nothing to keep yet");
        let first = read_token_file(&out).unwrap();
        assert!(first.len() >= 32 && first.bytes().all(|b| b.is_ascii_hexdigit()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(!gen_token(&args(true)).unwrap());
        assert_eq!(read_token_file(&out).unwrap(), first);
        assert!(gen_token(&args(false)).unwrap());
        assert_ne!(read_token_file(&out).unwrap(), first);
    }
}
