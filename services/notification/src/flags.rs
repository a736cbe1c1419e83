//! The notification service's command line, as given. [`crate::Config`] is what it means
//! once checked; nothing past `main` sees these.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use sluice_core::HumanDuration;
use sluice_core::server::CommonServerArgs;
use sluice_runtime::ServiceArgs;

/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50053";
/// Default admin (metrics, health) address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9103";
/// Default simulated delivery latency per notice.
pub const DEFAULT_LATENCY: Duration = Duration::from_millis(2);

/// `sluice-notification`: simulated best-effort delivery of transaction notices.
///
/// Every flag can also be set through the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-notification", version)]
pub struct Flags {
    /// gRPC listen address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Simulated delivery latency per notice, e.g. 2ms (at most 60s).
    #[arg(long, env = "SLUICE_LATENCY", default_value_t = HumanDuration(DEFAULT_LATENCY))]
    pub latency: HumanDuration,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub server: CommonServerArgs,
}
