//! The HTTP admin listener: `/metrics` (Prometheus text), `/healthz` and `/readyz`, and
//! whatever pages the binary adds (the gateway's pressure map at `/`).
//!
//! Kept off the gRPC port so scraping and health probes never compete with traffic for
//! HTTP/2 streams or flow-control windows.
//!
//! - `/healthz` is liveness: 200 while the process serves (restart it when this fails).
//! - `/readyz` is readiness: 200 only while it is also [ready](crate::readiness) to do its
//!   work (route traffic elsewhere, or wait, when this fails). 503 otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Whether this process is alive and serving (liveness). Set once serving, cleared on
/// shutdown.
#[derive(Clone, Default)]
pub struct Health(Arc<AtomicBool>);

impl Health {
    pub fn set(&self, healthy: bool) {
        self.0.store(healthy, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Metrics,
    health: Health,
    readiness: Readiness,
}

/// Serves `/metrics`, `/healthz`, `/readyz` and the binary's own `routes` on `listener`
/// until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Metrics,
    health: Health,
    readiness: Readiness,
    routes: Option<Router>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(render_metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            metrics,
            health,
            readiness,
        })
        .merge(routes.unwrap_or_default());
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

async fn render_metrics(State(state): State<AdminState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn healthz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if state.health.get() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    }
}

async fn readyz(State(state): State<AdminState>) -> (StatusCode, &'static str) {
    if !state.health.get() {
        (StatusCode::SERVICE_UNAVAILABLE, "not serving\n")
    } else if state.readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
