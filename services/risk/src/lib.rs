//! The risk service: scores each transaction with [`rules::RiskRules`] over one long-lived
//! bidirectional stream per gateway worker (`mesh.v1.Risk/Assess`).
//!
//! A configurable CPU cost per assessment (`--cost-us`, busy work) lets load tests make risk
//! the bottleneck; the worker pool (`--workers`) bounds how many assessments run at once, and
//! a full pool stops the service reading its streams.
//!
//! - [`flags`]: the command line as given; [`config`]: what it means, checked.
//! - [`rules`]: the scoring rules, pure and unit-tested.
//! - this module: the gRPC service over the [worker pool](sluice_runtime::pool).

pub mod config;
pub mod flags;
pub mod rules;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_core::server::{Listeners, ServeError};
use sluice_proto::hop::HopReply as _;
use sluice_proto::pb::risk_server::{Risk, RiskServer};
use sluice_proto::pb::{RiskRequest, RiskVerdict};
use sluice_runtime::{ReplyStream, WorkerPool};
use tonic::{Request, Response, Status, Streaming};

pub use crate::config::Config;
pub use crate::flags::Flags;
use crate::rules::{RiskRules, VelocityTracker};

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
            // A panic mid-record leaves at worst one account's count off by one.
            .unwrap_or_else(PoisonError::into_inner)
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
    let pool = WorkerPool::new(config.service.pool, &mut registry, shutdown.clone());
    let scorer = Arc::new(Scorer {
        velocity: Mutex::new(VelocityTracker::new(
            config.rules.velocity_window,
            config.rules.velocity_limit,
            config.max_tracked_accounts,
        )),
        rules: config.rules,
        cost: config.cost,
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
