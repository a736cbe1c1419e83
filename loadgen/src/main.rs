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
    let result = execute(cli).await;
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
