use clap::Parser;
use sluice_logging::{Config, serve};

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Some(command) = &config.command {
        return sluice_logging::run_command(command);
    }
    let telemetry = config.server.telemetry.clone();
    sluice_core::server::main_with(
        "sluice-logging",
        config.listen,
        Some(config.admin_listen),
        &telemetry,
        |listeners, shutdown| serve(listeners, config, shutdown),
    )
}
