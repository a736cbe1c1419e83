use clap::Parser;
use sluice_gateway::{Config, serve};

/// mimalloc, not glibc's malloc: per-message buffers come and go at tens of thousands a
/// second, and glibc spent a sixth of the gateway's CPU managing them (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // A flag the gateway cannot run with stops it here, before anything starts.
    let settings = match Config::parse().settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("sluice-gateway: {e}");
            return std::process::ExitCode::from(sluice_core::flags::EXIT_USAGE);
        }
    };
    let server = settings.server.clone();
    sluice_core::server::main_with(
        "sluice-gateway",
        (settings.listen, Some(settings.admin_listen)),
        &server,
        |listeners, shutdown| serve(listeners, settings, shutdown),
    )
}
