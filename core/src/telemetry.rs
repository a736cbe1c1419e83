//! `tracing` setup: human-readable logs on stderr, filtered by `RUST_LOG` (default `info`).
//! stdout stays free for the ready line and reports.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber with `RUST_LOG`, defaulting to `info`.
pub fn init_logging() {
    init_logging_with_default("info");
}

/// Installs the global subscriber with `RUST_LOG`, defaulting to `default`.
pub fn init_logging_with_default(default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
