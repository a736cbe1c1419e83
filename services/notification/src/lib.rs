//! The notification service: simulates delivering a notice for each transaction (a fixed
//! latency per message, `--latency`) and acknowledges each over one long-lived
//! bidirectional stream per gateway worker (`mesh.v1.Notification/Deliver`).
//!
//! The gateway treats notification as best effort: when this service is slow its queue in
//! the gateway fills and new notices are shed, never holding a transaction back.
//!
//! - [`flags`]: the command line as given; [`config`]: what it means, checked.
//! - this module: the gRPC service over the [worker pool](sluice_runtime::pool).

pub mod config;
pub mod flags;

use std::time::Duration;

use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_core::server::{Listeners, ServeError};
use sluice_proto::pb::notification_server::{Notification, NotificationServer};
use sluice_proto::pb::{NotificationStatus, NotifyAck, NotifyRequest};
use sluice_runtime::{ReplyStream, WorkerPool};
use tonic::{Request, Response, Status, Streaming};

pub use crate::config::Config;
pub use crate::flags::Flags;

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
    let pool = WorkerPool::new(config.service.pool, &mut registry, shutdown.clone());
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
