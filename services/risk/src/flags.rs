//! The risk service's command line, as given. [`crate::Config`] is what it means once
//! checked; nothing past `main` sees these.

use std::net::SocketAddr;

use clap::Parser;
use sluice_core::HumanDuration;
use sluice_core::server::CommonServerArgs;
use sluice_runtime::ServiceArgs;

use crate::rules;

/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";
/// Default admin (metrics, health) address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9102";
/// Default CPU busy work per assessment, in microseconds: none.
pub const DEFAULT_COST_US: u64 = 0;

/// `sluice-risk`: scores payment transactions for the Sluice gateway.
///
/// Rules (defaults): merchant `blocked-merchant` → DECLINE; amount_minor > 1,000,000 →
/// REVIEW; more than 20 transactions for one account within 60 s → REVIEW; otherwise
/// APPROVE. Every flag can also be set through the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-risk", version)]
pub struct Flags {
    /// gRPC listen address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Merchants always declined (comma-separated; empty entries are ignored).
    #[arg(long, env = "SLUICE_BLOCKED_MERCHANTS", value_delimiter = ',', default_value = rules::DEFAULT_BLOCKED_MERCHANT)]
    pub blocked_merchants: Vec<String>,
    /// Amount in minor units above which a transaction goes to REVIEW (at least 1).
    #[arg(long, env = "SLUICE_REVIEW_AMOUNT_MINOR", default_value_t = rules::DEFAULT_REVIEW_AMOUNT_MINOR)]
    pub review_amount_minor: i64,
    /// Transactions per account within the velocity window that are still fine; one more
    /// goes to REVIEW (1 to 10000: each tracked account keeps this many entries, plus one).
    #[arg(long, env = "SLUICE_VELOCITY_LIMIT", default_value_t = rules::DEFAULT_VELOCITY_LIMIT)]
    pub velocity_limit: usize,
    /// The velocity window, e.g. 60s.
    #[arg(long, env = "SLUICE_VELOCITY_WINDOW", default_value_t = HumanDuration(rules::DEFAULT_VELOCITY_WINDOW))]
    pub velocity_window: HumanDuration,
    /// Accounts whose recent transactions are remembered (1 to 10,000,000; bounds the
    /// tracker's memory).
    #[arg(long, env = "SLUICE_MAX_TRACKED_ACCOUNTS", default_value_t = rules::DEFAULT_MAX_TRACKED_ACCOUNTS)]
    pub max_tracked_accounts: usize,
    /// CPU busy work per assessment, in microseconds (0 = none, at most 1,000,000). Makes
    /// risk the bottleneck in load tests.
    #[arg(long, env = "SLUICE_COST_US", default_value_t = DEFAULT_COST_US)]
    pub cost_us: u64,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub server: CommonServerArgs,
}
