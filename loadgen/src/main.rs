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
    let telemetry = cli.telemetry.clone();
    sluice_loadgen::cli::main_with("sluice-loadgen", &telemetry, execute(cli)).await
}
