use sluice_core::flags;
use sluice_logging::{Config, Flags, commands, serve};

/// mimalloc, not glibc's malloc: per-message buffers come and go at tens of thousands a
/// second, and glibc spent a sixth of the gateway's CPU managing them (see `Cargo.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let parsed: Flags = match flags::parse() {
        Ok(parsed) => parsed,
        Err(exit) => return exit,
    };
    if let Some(command) = &parsed.command {
        return commands::run(command);
    }
    let config: Config = match flags::validate("sluice-logging", parsed) {
        Ok(config) => config,
        Err(exit) => return exit,
    };
    let server = config.server.clone();
    sluice_core::server::main_with(
        "sluice-logging",
        (config.listen, Some(config.admin_listen)),
        &server,
        |listeners, shutdown| serve(listeners, config, shutdown),
    )
}
