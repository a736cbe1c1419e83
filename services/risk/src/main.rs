use sluice_risk::{Config, Flags, serve};

/// mimalloc, not glibc's malloc: per-message buffers come and go at tens of thousands a
/// second, and glibc spent a sixth of the gateway's CPU managing them (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config: Config = match sluice_core::flags::config::<Flags, _>("sluice-risk") {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let server = config.server.clone();
    sluice_core::server::main_with(
        "sluice-risk",
        (config.listen, Some(config.admin_listen)),
        &server,
        |listeners, shutdown| serve(listeners, config, shutdown),
    )
}
