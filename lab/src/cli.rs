//! The command line: which experiment each command runs, with what. Nothing here measures or
//! reports; it only turns flags into calls and their results into output and an exit status.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use sluice_loadgen::cli::LoadArgs;
use sluice_loadgen::drive::spec;

use crate::demo::DEFAULT_DEMO_RATE;

/// `sluice-lab`: starts a Sluice mesh and runs experiments on it.
///
/// `demo` starts the whole mesh in this process on loopback and tells its story: no Docker,
/// no other processes. The other commands start the real binaries (from this executable's
/// directory, or --bin-dir) as processes on loopback. To drive a mesh that is already
/// running, use `sluice-loadgen run`. Every flag can also be set through the environment
/// variable shown.
#[derive(Debug, Parser)]
#[command(name = "sluice-lab", version)]
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
    /// Start the whole mesh in this process and tell its story in about 40 s: steady load,
    /// logging stalled (the pressure reaches the client), logging back (throughput returns),
    /// 10x overload (refused with pushback); then a verdict per claim with its measured
    /// figure, every acknowledgement checked against the audit log. --steady: one steady run
    /// and its report instead.
    Demo(DemoArgs),
    /// Measure saturation throughput and latency at half load against the real binaries
    /// (started from this executable's directory as separate processes).
    Bench(crate::bench::BenchArgs),
    /// Compare the gateway's routing policies (p2c, round-robin, account affinity) with one
    /// of three risk replicas slowed: goodput, p50/p99, the slow replica's share.
    Balance(crate::balance::BalanceArgs),
    /// The backpressure benchmark: stall logging at 50% load and overload the mesh 10x, with
    /// the default bounds and with the gateway's bounds removed; with `--sections overload`,
    /// overload control: unary steps 0.5x, 3x, 0.5x of saturation, then logging slowed, with
    /// a static limit, the adaptive one, and the adaptive one against a client that throttles
    /// itself; and the mesh's own throughput-latency curve. Against the real binaries.
    Pressure(crate::pressure::PressureArgs),
    /// Run a scenario file: phases of load, faults at given times, expectations checked at
    /// the end (exit 2 when one fails). Starts the real binaries on loopback.
    Scenario(crate::scenario::ScenarioArgs),
    /// Kill (SIGKILL + restart) and freeze (SIGSTOP/SIGCONT) each process of the mesh under
    /// stream and unary load; report recovery times and check that no acknowledged record is
    /// missing and nothing hung (exit 2 otherwise). Starts the real binaries on loopback.
    Chaos(crate::chaos::ChaosArgs),
    /// A trivial gateway that answers at once: for measuring the generator's own ceiling
    /// (and comparing with h2load).
    Sink(crate::sink::SinkArgs),
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the audit log goes (default: a temporary directory, removed afterwards).
    #[arg(long, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Instead of the story, drive the mesh at one steady rate (--rate, --duration, --mode,
    /// ...), print the report and check the audit log.
    #[arg(long)]
    pub steady: bool,
    /// The story: how long each of its four phases lasts (steady, logging stalled, logging
    /// back, 10x overload), e.g. 9s.
    #[arg(long, env = "SLUICE_DEMO_PHASE", default_value = "9s", value_parser = sluice_core::parse_duration)]
    pub phase: Duration,
    #[command(flatten)]
    pub load: LoadArgs,
}

/// Runs a parsed command. `Ok(false)` means it ran but a check failed.
pub async fn execute(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Demo(args) if !args.steady => {
            let spec = args
                .load
                .spec(spec::DEFAULT_TARGET.into(), DEFAULT_DEMO_RATE)?;
            let story = crate::demo::story(args.data_dir, spec, args.phase).await?;
            println!();
            print!("{}", story.text());
            args.load.write_reports("sluice-lab demo", &story.report)?;
            Ok(story.passed())
        }
        Command::Demo(args) => {
            // The demo drives its own mesh's gateway, whatever the spec's target.
            let spec = args
                .load
                .spec(spec::DEFAULT_TARGET.into(), DEFAULT_DEMO_RATE)?;
            let (report, check) = crate::demo::run(args.data_dir, spec).await?;
            println!();
            print!("{}", report.text());
            args.load.write_reports("sluice-lab demo", &report)?;
            println!(
                "audit      {} acknowledged, {} records in the log, {} missing, {} at a wrong offset",
                check.acknowledged,
                check.records_in_log,
                check.missing.len(),
                check.wrong_offset.len()
            );
            Ok(check.passed() && report.ok > 0)
        }
        Command::Bench(args) => crate::bench::bench(args).await.map(|()| true),
        Command::Balance(args) => crate::balance::balance(args).await.map(|()| true),
        Command::Pressure(args) => crate::pressure::pressure(args).await.map(|()| true),
        Command::Scenario(args) => crate::scenario::run(args).await,
        Command::Chaos(args) => crate::chaos::run(args).await,
        Command::Sink(args) => crate::sink::run(args).await.map(|()| true),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
