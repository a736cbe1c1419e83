//! The HTTP admin listener: `/metrics` (Prometheus text), `/healthz` and `/readyz`, and
//! whatever pages the binary adds (the gateway's pressure map at `/`).
//!
//! Kept off the gRPC port so scraping and health probes never compete with traffic for
//! HTTP/2 streams or flow-control windows. Bounded on its own ([`AdminLimits`]): a connection
//! cap, a header-read timeout and an idle timeout, so silent, slowloris or never-reading
//! clients of the admin port cannot hold descriptors the gRPC port needs.
//!
//! - `/healthz` is liveness: 200 while the process serves (restart it when this fails).
//! - `/readyz` is readiness: 200 only while it is also [ready](crate::readiness) to do its
//!   work (route traffic elsewhere, or wait, when this fails). 503 otherwise.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use futures::StreamExt as _;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::incoming::{Connection, ConnectionMetrics, Incoming, IncomingConfig};
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

/// Default most admin connections open at once (`--admin-max-connections`): scrapers,
/// probes and a few people watching the map; one more is accepted and closed at once.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 256;
/// Default time an admin connection has to send a whole request head, from the moment the
/// server waits for one (`--admin-header-timeout`): on a new connection and between
/// keep-alive requests alike, so it is also how long an idle keep-alive connection stays.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time an admin connection may go with nothing read and nothing written
/// (`--admin-idle-timeout`): a map viewer that stops reading its event stream, a body sent
/// a byte a minute.
pub const DEFAULT_ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long open admin connections get to finish after shutdown (an event stream never
/// does on its own).
const ADMIN_DRAIN: Duration = Duration::from_secs(1);

/// Bounds of the admin listener. The gRPC ports' HTTP/2-preface check does not apply to
/// HTTP/1, so a silent or slow (slowloris) connection is bounded by hyper's header-read
/// timeout instead, and a connection that stalls mid-request or mid-response by the idle
/// timeout; the cap bounds how many descriptors all of them together hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            header_timeout: DEFAULT_ADMIN_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_ADMIN_IDLE_TIMEOUT,
        }
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and the binary's own `routes` on `listener`
/// until `shutdown` is cancelled, within `limits`. Connections are counted in `metrics`'s
/// admin connection metrics (`admin_connections_*`).
pub async fn serve(
    listener: TcpListener,
    limits: AdminLimits,
    metrics: Metrics,
    health: Health,
    readiness: Readiness,
    routes: Option<Router>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let connections = metrics.admin_connections().clone();
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
    let mut incoming = Incoming::new(
        listener,
        IncomingConfig {
            handshake_timeout: None,
            max_connections: limits.max_connections,
            max_connections_flag: "--admin-max-connections",
        },
        connections.clone(),
    );
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    loop {
        let conn = tokio::select! {
            Some(Ok(conn)) = incoming.next() => conn,
            () = shutdown.cancelled() => return Ok(()),
        };
        let io = TokioIo::new(Idle::new(conn, limits.idle_timeout, connections.clone()));
        let served = http.serve_connection(io, TowerToHyperService::new(app.clone()));
        let (shutdown, connections) = (shutdown.clone(), connections.clone());
        tokio::spawn(async move {
            tokio::pin!(served);
            let result = tokio::select! {
                r = &mut served => r,
                () = shutdown.cancelled() => {
                    served.as_mut().graceful_shutdown();
                    tokio::time::timeout(ADMIN_DRAIN, &mut served).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                if e.is_timeout() {
                    connections.count_rejected("header_timeout");
                }
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

/// An admin connection that fails its pending read or write once nothing has moved either
/// way for the idle timeout; hyper then drops the connection (and its descriptor).
struct Idle {
    inner: Connection,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    metrics: ConnectionMetrics,
}

impl Idle {
    fn new(inner: Connection, timeout: Duration, metrics: ConnectionMetrics) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            metrics,
        }
    }

    /// Bytes moved: the connection is alive for another `timeout`.
    fn progressed(&mut self) {
        let next = tokio::time::Instant::now() + self.timeout;
        self.deadline.as_mut().reset(next);
    }

    /// The operation is pending: fail it if the connection has been idle too long.
    fn expired<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.metrics.count_rejected("idle_timeout");
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("admin connection idle for {:?}", self.timeout),
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Idle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.expired(cx),
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.expired(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.expired(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
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
