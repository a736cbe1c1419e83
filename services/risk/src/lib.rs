//! The risk service: scores each transaction with [`rules::RiskRules`] over one long-lived
//! bidirectional stream per gateway worker (`mesh.v1.Risk/Assess`).
//!
//! A configurable CPU cost per assessment (`--cost-us`, busy work) lets load tests make risk
//! the bottleneck; the worker pool (`--workers`) bounds how many assessments run at once, and
//! a full pool stops the service reading its streams.

pub mod rules;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_core::server::{CommonServerArgs, Listeners, ServeError};
use sluice_proto::hop::HopReply as _;
use sluice_proto::pb::risk_server::{Risk, RiskServer};
use sluice_proto::pb::{RiskRequest, RiskVerdict};
use sluice_runtime::pool::PoolConfig;
use sluice_runtime::{ReplyStream, ServiceArgs, WorkerPool};
use tonic::{Request, Response, Status, Streaming};

use crate::rules::{RiskRules, VelocityTracker};

/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50052";
/// Default admin (metrics, health) address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9102";

/// `sluice-risk`: scores payment transactions for the Sluice gateway.
///
/// Rules (defaults): merchant `blocked-merchant` → DECLINE; amount_minor > 1,000,000 →
/// REVIEW; more than 20 transactions for one account within 60 s → REVIEW; otherwise
/// APPROVE. Every flag can also be set through the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-risk", version)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Merchants always declined (comma-separated).
    #[arg(long, env = "SLUICE_BLOCKED_MERCHANTS", value_delimiter = ',', default_value = rules::DEFAULT_BLOCKED_MERCHANT)]
    pub blocked_merchants: Vec<String>,
    /// Amount in minor units above which a transaction goes to REVIEW.
    #[arg(long, env = "SLUICE_REVIEW_AMOUNT_MINOR", default_value_t = rules::DEFAULT_REVIEW_AMOUNT_MINOR)]
    pub review_amount_minor: i64,
    /// Transactions per account within the velocity window that are still fine; one more
    /// goes to REVIEW.
    #[arg(long, env = "SLUICE_VELOCITY_LIMIT", default_value_t = rules::DEFAULT_VELOCITY_LIMIT)]
    pub velocity_limit: usize,
    /// The velocity window, e.g. 60s.
    #[arg(long, env = "SLUICE_VELOCITY_WINDOW", default_value = "60s", value_parser = sluice_core::parse_duration)]
    pub velocity_window: Duration,
    /// Accounts whose recent transactions are remembered (bounds the tracker's memory).
    #[arg(long, env = "SLUICE_MAX_TRACKED_ACCOUNTS", default_value_t = rules::DEFAULT_MAX_TRACKED_ACCOUNTS)]
    pub max_tracked_accounts: usize,
    /// CPU busy work per assessment, in microseconds (0 = none). Makes risk the bottleneck
    /// in load tests.
    #[arg(long, env = "SLUICE_COST_US", default_value_t = 0)]
    pub cost_us: u64,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub server: CommonServerArgs,
}

impl Config {
    /// Defaults, as if no flag were given.
    pub fn defaults() -> Self {
        Self::parse_from(["sluice-risk"])
    }

    fn rules(&self) -> RiskRules {
        RiskRules {
            blocked_merchants: self.blocked_merchants.clone(),
            review_amount_minor: self.review_amount_minor,
            velocity_limit: self.velocity_limit,
            velocity_window: self.velocity_window,
        }
    }
}

struct Scorer {
    rules: RiskRules,
    velocity: Mutex<VelocityTracker>,
    cost: Duration,
}

impl Scorer {
    async fn assess(self: Arc<Self>, request: RiskRequest) -> RiskVerdict {
        let correlation_id = request.correlation_id;
        let Some(txn) = request.transaction else {
            return RiskVerdict::failed(
                correlation_id,
                &Status::invalid_argument("transaction: missing"),
            );
        };
        if !self.cost.is_zero() {
            let cost = self.cost;
            // Simulated CPU work runs on the blocking pool so it cannot starve I/O; the
            // worker pool already bounds how many run at once.
            let _ = tokio::task::spawn_blocking(move || busy_work(cost)).await;
        }
        let recent = self
            .velocity
            .lock()
            .expect("velocity lock poisoned")
            .record(&txn.account, &txn.id, Instant::now());
        let a = self.rules.assess(&txn.merchant, txn.amount_minor, recent);
        RiskVerdict {
            correlation_id,
            decision: a.decision as i32,
            risk_score: a.score,
            reasons: a.reasons,
            error: None,
        }
    }
}

fn busy_work(cost: Duration) {
    let end = Instant::now() + cost;
    while Instant::now() < end {
        std::hint::spin_loop();
    }
}

struct RiskService {
    scorer: Arc<Scorer>,
    pool: WorkerPool,
}

#[tonic::async_trait]
impl Risk for RiskService {
    type AssessStream = ReplyStream<RiskVerdict>;

    async fn assess(
        &self,
        request: Request<Streaming<RiskRequest>>,
    ) -> Result<Response<Self::AssessStream>, Status> {
        let scorer = self.scorer.clone();
        Ok(Response::new(
            self.pool
                .serve(request, move |req| scorer.clone().assess(req)),
        ))
    }
}

/// Serves the risk service on `listeners` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut registry = Registry::with_prefix("sluice_risk");
    let pool = WorkerPool::new(
        PoolConfig {
            workers: config.service.workers,
            reply_queue: config.service.reply_queue,
            stream_workers: config.service.stream_workers,
        },
        &mut registry,
        shutdown.clone(),
    );
    let scorer = Arc::new(Scorer {
        rules: config.rules(),
        velocity: Mutex::new(VelocityTracker::new(
            config.velocity_window,
            config.velocity_limit,
            config.max_tracked_accounts,
        )),
        cost: Duration::from_micros(config.cost_us),
    });
    let service = RiskService {
        scorer,
        pool: pool.clone(),
    };
    let service =
        RiskServer::new(service).max_decoding_message_size(config.server.h2.max_message_size);
    sluice_runtime::run_service(
        listeners,
        &config.server,
        &config.service.admin_token,
        pool,
        registry,
        service,
        shutdown,
    )
    .await
}

#[cfg(test)]
mod cli_tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Config::command().debug_assert();
    }
}
