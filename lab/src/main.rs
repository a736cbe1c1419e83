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
    let telemetry = cli.telemetry.clone();
    sluice_lab::loadgen::cli::main_with("sluice-lab", &telemetry, execute(cli)).await
}
