use clap::Parser;
use sluice_gateway::{Config, serve};

/// mimalloc, not glibc's malloc: per-message buffers come and go at tens of thousands a
/// second, and glibc spent a sixth of the gateway's CPU managing them (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    // A flag the gateway cannot run with stops it here, before anything starts.
    if let Err(e) = config.settings() {
        eprintln!("sluice-gateway: {e}");
        return std::process::ExitCode::from(64);
    }
    let server = config.server.clone();
    sluice_core::server::main_with(
        "sluice-gateway",
        (config.listen, Some(config.admin_listen)),
        &server,
        |listeners, shutdown| serve(listeners, config, shutdown),
    )
}
