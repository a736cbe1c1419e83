//! Readiness: whether this process should be sent traffic now, as opposed to whether it is
//! alive.
//!
//! A process can be alive and not ready: the gateway with no live stream to logging, logging
//! with a full disk. Orchestrators need the difference — restart the first kind of failure,
//! route around the second — so the admin listener answers `/healthz` (liveness: the process
//! serves) and `/readyz` (this flag), and compose gates on `/readyz`.
//!
//! One [`Readiness`] per server is the single source of truth: the server mirrors it into the
//! gRPC health status of its main service (`mesh.v1.Gateway`, `mesh.v1.Logging`, ...), so
//! `/readyz` and gRPC health cannot disagree. Setting it is synchronous and cheap, so plain
//! threads (the audit writer) can call it as well as tasks.

use std::sync::Arc;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// A shared ready flag; clones share it. Starts not ready.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<watch::Sender<bool>>);

impl Default for Readiness {
    fn default() -> Self {
        Self(Arc::new(watch::Sender::new(false)))
    }
}

impl Readiness {
    /// Marks the process ready or not. Returns whether that changed anything.
    pub fn set(&self, ready: bool) -> bool {
        self.0
            .send_if_modified(|now| std::mem::replace(now, ready) != ready)
    }

    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// A receiver that sees every change of readiness (for mirrors and tests).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }

    /// Keeps `service`'s gRPC health status equal to this flag (SERVING / NOT_SERVING) until
    /// the returned task is aborted.
    pub(crate) fn mirror_into(
        &self,
        reporter: HealthReporter,
        service: &'static str,
    ) -> tokio::task::JoinHandle<()> {
        let mut changes = self.subscribe();
        tokio::spawn(async move {
            loop {
                let status = if *changes.borrow_and_update() {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                reporter.set_service_status(service, status).await;
                if changes.changed().await.is_err() {
                    return;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mirrors_into_grpc_health() {
        use tonic_health::pb::health_server::Health;
        use tonic_health::pb::{HealthCheckRequest, health_check_response};

        let (reporter, _) = tonic_health::server::health_reporter();
        let health = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        // Known from the start (as a server registers its services), so a watch finds it.
        reporter
            .set_service_status("mesh.v1.Example", ServingStatus::Unknown)
            .await;
        let readiness = Readiness::default();
        let mirror = readiness.mirror_into(reporter, "mesh.v1.Example");
        let mut updates = health
            .watch(tonic::Request::new(HealthCheckRequest {
                service: "mesh.v1.Example".into(),
            }))
            .await
            .unwrap()
            .into_inner();
        let mut wait_for = async |want: health_check_response::ServingStatus| {
            use futures::StreamExt;
            let seen = async {
                while let Some(update) = updates.next().await {
                    if update.unwrap().status == want as i32 {
                        return;
                    }
                }
            };
            tokio::time::timeout(std::time::Duration::from_secs(5), seen)
                .await
                .expect("gRPC health follows readiness");
        };

        assert!(!readiness.is_ready());
        wait_for(health_check_response::ServingStatus::NotServing).await;
        assert!(readiness.set(true));
        assert!(!readiness.clone().set(true), "no change");
        assert!(readiness.is_ready());
        wait_for(health_check_response::ServingStatus::Serving).await;
        readiness.set(false);
        wait_for(health_check_response::ServingStatus::NotServing).await;
        mirror.abort();
    }
}
