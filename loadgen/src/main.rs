use std::process::ExitCode;

use clap::Parser;
use sluice_loadgen::cli::{Cli, execute};

#[tokio::main]
async fn main() -> ExitCode {
    sluice_core::telemetry::init_logging_with_default("warn");
    let cli = Cli::parse();
    match execute(cli).await {
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
