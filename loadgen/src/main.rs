use std::process::ExitCode;

use clap::Parser;
use sluice_loadgen::cli::{Cli, execute};

/// mimalloc, not glibc's malloc: per-message buffers come and go at tens of thousands a
/// second, and glibc spent a sixth of the gateway's CPU managing them (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let tracing = match sluice_core::telemetry::init("sluice-loadgen", &cli.telemetry, "warn") {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice-loadgen: {e}");
            return ExitCode::from(64);
        }
    };
    // On a runtime worker, not the main thread that `block_on` polls: the driver and the
    // tasks it wakes (stream readers, the pacer's hand-off) then share a thread instead of
    // waking each other across two (at 22,000/s open loop: the generator's CPU 56-62 % ->
    // 49-53 % of a core, three runs each).
    let result = match tokio::spawn(execute(cli)).await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("{e}")),
    };
    // Flush the client spans while the runtime still runs.
    let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("sluice-loadgen: a check failed (see above)");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("sluice-loadgen: {e:#}");
            ExitCode::FAILURE
        }
    }
}
