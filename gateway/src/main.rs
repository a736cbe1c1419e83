use clap::Parser;
use sluice_gateway::{Config, serve};

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    // A flag the gateway cannot run with stops it here, before anything starts.
    if let Err(e) = config.settings() {
        eprintln!("sluice-gateway: {e}");
        return std::process::ExitCode::from(64);
    }
    let telemetry = config.server.telemetry.clone();
    sluice_core::server::main_with(
        "sluice-gateway",
        config.listen,
        Some(config.admin_listen),
        &telemetry,
        |listeners, shutdown| serve(listeners, config, shutdown),
    )
}
