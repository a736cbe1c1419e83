use std::process::ExitCode;

use clap::Parser;
use sluice_lab::cli::{Cli, execute};

/// mimalloc, as every Sluice binary: the in-process demo mesh serves thousands of
/// transactions a second, and glibc's malloc spent a sixth of the gateway's CPU on their
/// buffers (see the workspace's `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let tracing = match sluice_core::telemetry::init("sluice-lab", &cli.telemetry, "warn") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice-lab: {e}");
            return ExitCode::from(64);
        }
    };
    // On a runtime worker, as the load generator does: the driver and the tasks it wakes
    // share a thread instead of waking each other across two.
    let result = match tokio::spawn(execute(cli)).await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    // Flush the client spans while the runtime still runs.
    let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("sluice-lab: a check failed (see above)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("sluice-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
