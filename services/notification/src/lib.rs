//! The notification service: simulates delivering a notice for each transaction (a fixed
//! latency per message, `--latency`) and acknowledges each over one long-lived
//! bidirectional stream per gateway worker (`mesh.v1.Notification/Deliver`).
//!
//! The gateway treats notification as best effort: when this service is slow its queue in
//! the gateway fills and new notices are shed, never holding a transaction back.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_core::server::{CommonServerArgs, Listeners, ServeError};
use sluice_proto::pb::notification_server::{Notification, NotificationServer};
use sluice_proto::pb::{NotificationStatus, NotifyAck, NotifyRequest};
use sluice_runtime::pool::PoolConfig;
use sluice_runtime::{ReplyStream, ServiceArgs, WorkerPool};
use tonic::{Request, Response, Status, Streaming};

/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50053";
/// Default admin (metrics, health) address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9103";

/// `sluice-notification`: simulated best-effort delivery of transaction notices.
///
/// Every flag can also be set through the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-notification", version)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Simulated delivery latency per notice, e.g. 2ms.
    #[arg(long, env = "SLUICE_LATENCY", default_value = "2ms", value_parser = sluice_core::parse_duration)]
    pub latency: Duration,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub server: CommonServerArgs,
}

impl Config {
    /// Defaults, as if no flag were given.
    pub fn defaults() -> Self {
        Self::parse_from(["sluice-notification"])
    }
}

struct NotificationService {
    latency: Duration,
    pool: WorkerPool,
}

async fn deliver(request: NotifyRequest, latency: Duration) -> NotifyAck {
    let correlation_id = request.correlation_id;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    NotifyAck {
        correlation_id,
        status: NotificationStatus::Sent as i32,
        error: None,
    }
}

#[tonic::async_trait]
impl Notification for NotificationService {
    type DeliverStream = ReplyStream<NotifyAck>;

    async fn deliver(
        &self,
        request: Request<Streaming<NotifyRequest>>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        let latency = self.latency;
        Ok(Response::new(
            self.pool.serve(request, move |req| deliver(req, latency)),
        ))
    }
}

/// Serves the notification service on `listeners` until `shutdown` is cancelled.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut registry = Registry::with_prefix("sluice_notification");
    let pool = WorkerPool::new(
        PoolConfig {
            workers: config.service.workers,
            reply_queue: config.service.reply_queue,
            stream_workers: config.service.stream_workers,
        },
        &mut registry,
        shutdown.clone(),
    );
    let service = NotificationService {
        latency: config.latency,
        pool: pool.clone(),
    };
    let service = NotificationServer::new(service)
        .max_decoding_message_size(config.server.h2.max_message_size);
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
