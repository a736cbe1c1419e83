use clap::Parser;
use sluice_gateway::{Config, serve};

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = config.server.telemetry.clone();
    sluice_core::server::main_with(
        "sluice-gateway",
        config.listen,
        Some(config.admin_listen),
        &telemetry,
        |listeners, shutdown| serve(listeners, config, shutdown),
    )
}
