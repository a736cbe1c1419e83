//! Binding, announcing and running one tonic server with its admin listener.
//!
//! Every server binary does the same dance: bind the gRPC and admin ports, serve through
//! the [accept loop](crate::incoming) (handshake timeout, connection cap, accept backoff),
//! print one ready line on stdout once serving (tests and scripts wait on it, and learn the
//! ports when binding port 0, and where the admin token is), serve until the shutdown token
//! is cancelled, then drain within a grace period.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, Health};
use crate::admin_token::{AdminAuth, AdminTokenArgs, AdminTokenError};
use crate::incoming::{Incoming, IncomingConfig};
use crate::metrics::Metrics;
use crate::readiness::Readiness;

/// Errors that stop a server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "cannot bind {addr}: {source} (is another process using the port? pick another with --listen/--admin-listen)"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Bad configuration (exit code 64).
    #[error(transparent)]
    AdminToken(#[from] AdminTokenError),
    #[error("{0}")]
    Other(String),
    /// A flag the server cannot run with (exit code 64).
    #[error("{0}")]
    Config(String),
    /// Stored data is damaged and serving could lose or misreport it: exit code 65
    /// (EX_DATAERR), so supervisors and operators can tell it from a crash.
    #[error("{0}")]
    DataDamaged(String),
}

/// Exit code for [`ServeError::DataDamaged`] (sysexits' EX_DATAERR).
pub const EXIT_DATA_DAMAGED: u8 = 65;

/// The bound sockets of one server, and what its ready line and admin listener report.
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
    /// The binary's name when it announces itself on stdout (binaries do; an in-process
    /// mesh does not).
    announce: Option<&'static str>,
    /// Where a client finds the Control API's token; appended to the ready line.
    admin_token_file: Option<PathBuf>,
    readiness: Readiness,
}

impl Listeners {
    /// Binds the gRPC listener and, when given, the admin listener.
    pub async fn bind(grpc: SocketAddr, admin: Option<SocketAddr>) -> Result<Self, ServeError> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Bind { addr, source })
        };
        let grpc = bind(grpc).await?;
        let admin = match admin {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        Ok(Self {
            grpc,
            admin,
            announce: None,
            admin_token_file: None,
            readiness: Readiness::default(),
        })
    }

    /// Prints the ready line as `name` on stdout once the server serves.
    pub fn announce_as(mut self, name: &'static str) -> Self {
        self.announce = Some(name);
        self
    }

    /// This server's readiness (`/readyz` and the gRPC health of its main service). Take it
    /// before serving to report readiness from the service's own code: the gateway while its
    /// required downstreams are live, logging while its disk takes writes.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The admin address actually bound, if any.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin
            .as_ref()
            .map(|l| l.local_addr().expect("bound listener has an address"))
    }

    /// The ready line: `<name> ready grpc=<addr> admin=<addr|none>`, then
    /// ` admin_token_file=<path>` when the Control token is in a file. New fields go at the
    /// end, so parsers of the older line keep working.
    pub fn ready_line(&self, name: &str) -> String {
        let admin = self
            .admin_addr()
            .map_or_else(|| "none".to_string(), |a| a.to_string());
        let mut line = format!("{name} ready grpc={} admin={admin}", self.grpc_addr());
        if let Some(path) = &self.admin_token_file {
            line.push_str(&format!(" admin_token_file={}", path.display()));
        }
        line
    }
}

/// Serves `router` (which must include `health_reporter`'s service) and the admin endpoints
/// until `shutdown` is cancelled, then lets in-flight streams finish for up to the grace
/// period. The listeners' [`Readiness`] drives `/readyz` and the gRPC health status of
/// `ready_service`; the overall status ("") and `/healthz` say the process is alive.
pub async fn run(
    listeners: Listeners,
    router: Router,
    metrics: Metrics,
    health_reporter: HealthReporter,
    ready_service: &'static str,
    shutdown: CancellationToken,
    common: &CommonServerArgs,
) -> Result<(), ServeError> {
    let health = Health::default();
    let readiness = listeners.readiness();
    let ready_line = listeners
        .announce
        .map(|name| (name, listeners.ready_line(name)));
    let grpc_addr = listeners.grpc_addr();
    let Listeners { grpc, admin, .. } = listeners;
    let admin_task = admin.map(|listener| {
        tokio::spawn(admin::serve(
            listener,
            metrics.clone(),
            health.clone(),
            readiness.clone(),
            shutdown.clone(),
        ))
    });
    health_reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let mirror = readiness.mirror_into(health_reporter.clone(), ready_service);
    health.set(true);

    let incoming = Incoming::new(grpc, common.incoming(), metrics.connections().clone());
    let server = router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    if let Some((name, line)) = ready_line {
        println!("{line}");
        tracing::info!(grpc = %grpc_addr, "{name} serving");
    }
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            health.set(false);
            readiness.set(false);
            mirror.abort();
            return result.map_err(ServeError::from);
        }
        _ = shutdown.cancelled() => {}
    }
    health.set(false);
    readiness.set(false);
    mirror.abort();
    health_reporter
        .set_service_status(ready_service, ServingStatus::NotServing)
        .await;
    health_reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let mut result = Ok(());
    crate::shutdown::drain("gRPC streams", common.grace_period, async {
        result = (&mut server).await.map_err(ServeError::from);
    })
    .await;
    if let Some(task) = admin_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
    }
    result
}

/// Flags every server binary shares.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonServerArgs {
    /// Time in-flight work gets to finish after SIGINT/SIGTERM before the process exits
    /// anyway, e.g. 10s.
    #[arg(long, env = "SLUICE_GRACE_PERIOD", default_value = "10s", value_parser = crate::parse_duration)]
    pub grace_period: Duration,
    /// Time a new connection has to send the whole 24-byte HTTP/2 client preface before it
    /// is closed (counted in `connections_rejected_total{reason="handshake_timeout"}`), e.g.
    /// 10s. Bounds how long a connection that never speaks holds a file descriptor.
    #[arg(long, env = "SLUICE_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = crate::parse_duration)]
    pub handshake_timeout: Duration,
    /// Most gRPC connections open at once. One more is accepted and closed at once
    /// (counted in `connections_rejected_total{reason="max_connections"}`), so a flood
    /// cannot take every file descriptor.
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = crate::incoming::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    #[command(flatten)]
    pub h2: crate::h2::H2Settings,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
}

impl CommonServerArgs {
    /// The accept loop's limits.
    pub fn incoming(&self) -> IncomingConfig {
        IncomingConfig {
            handshake_timeout: self.handshake_timeout,
            max_connections: self.max_connections,
        }
    }
}

/// Flags every downstream service shares: its worker pool and its Control API.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Messages processed at once across all streams. When every worker is busy the service
    /// stops reading its inbound streams, which is what pushes back on the gateway.
    #[arg(long, env = "SLUICE_WORKERS", default_value_t = crate::worker_pool::DEFAULT_WORKERS)]
    pub workers: usize,
    /// Replies each stream may hold that the transport has not yet taken. A stream reads
    /// its next message only with room here, so a peer that stops reading replies stops
    /// being read, holding no worker.
    #[arg(long, env = "SLUICE_REPLY_QUEUE", default_value_t = crate::worker_pool::DEFAULT_REPLY_QUEUE)]
    pub reply_queue: usize,
    /// Most workers one inbound stream may hold at once, so no one stream (a rogue peer's)
    /// can take the whole pool.
    #[arg(long, env = "SLUICE_STREAM_WORKERS", default_value_t = crate::worker_pool::DEFAULT_STREAM_WORKERS)]
    pub stream_workers: usize,
    /// How the Control (fault injection) API authenticates: `--admin-token`,
    /// `--admin-token-file`, a generated token, or `--insecure-no-auth`.
    #[command(flatten)]
    pub admin_token: AdminTokenArgs,
}

/// Runs a server binary's `main` body: logging, a multi-threaded runtime, span export, the
/// ready line on stdout, shutdown on SIGINT/SIGTERM, span flush, and the exit code (0 clean,
/// 1 failure, 64 bad configuration, 65 damaged data).
pub fn main_with<F, Fut>(
    name: &'static str,
    grpc: SocketAddr,
    admin: Option<SocketAddr>,
    telemetry: &crate::telemetry::TelemetryArgs,
    serve: F,
) -> std::process::ExitCode
where
    F: FnOnce(Listeners, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), ServeError>>,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let tracing = match crate::telemetry::init(name, telemetry, "info") {
            Ok(t) => t,
            Err(e) => return Err(Exit::Config(e)),
        };
        let served = async {
            let listeners = Listeners::bind(grpc, admin).await?.announce_as(name);
            let shutdown = crate::shutdown::token_from(crate::shutdown::signal());
            serve(listeners, shutdown).await
        }
        .await;
        // Flush spans while the runtime (which the exporter needs) still runs.
        let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
        served.map_err(Exit::Serve)
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => {
            tracing::info!("{name} stopped");
            std::process::ExitCode::SUCCESS
        }
        Err(Exit::Config(e)) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::from(64)
        }
        Err(Exit::Serve(e @ ServeError::DataDamaged(_))) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::from(EXIT_DATA_DAMAGED)
        }
        Err(Exit::Serve(e @ (ServeError::AdminToken(_) | ServeError::Config(_)))) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::from(64)
        }
        Err(Exit::Serve(e)) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

enum Exit {
    Config(String),
    Serve(ServeError),
}

/// Serves one downstream service: gRPC health (`service` SERVING while the listeners'
/// [`Readiness`] is set — it is set here as serving starts), the Control API over `pool`
/// (guarded as `admin_token` says; a generated token's file is named in the ready line and
/// removed on exit), `service` itself, and the admin endpoints, until `shutdown`; then drains
/// within the grace period. The one place the three services' servers are put together.
pub async fn run_service<S>(
    mut listeners: Listeners,
    common: &CommonServerArgs,
    admin_token: AdminTokenArgs,
    pool: crate::worker_pool::WorkerPool,
    registry: prometheus_client::registry::Registry,
    service: S,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    S: tower_service::Service<
            axum::http::Request<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Response: axum::response::IntoResponse,
    S::Future: Send + 'static,
{
    let service_name = S::NAME.rsplit('.').next().unwrap_or(S::NAME).to_lowercase();
    // Kept until the server stops: dropping it removes a generated token's file.
    let auth = admin_token.resolve(&service_name)?;
    listeners.admin_token_file = auth.token_file().map(Path::to_path_buf);
    if let AdminAuth::Disabled = auth {
        tracing::warn!(
            grpc = %listeners.grpc_addr(),
            "--insecure-no-auth: anyone who reaches this port can stall the service through Control"
        );
    }
    let control = crate::control::server(pool, &auth);
    let (reporter, health) = tonic_health::server::health_reporter();
    listeners.readiness().set(true);
    let router = common
        .h2
        .server()
        .add_service(health)
        .add_service(control)
        .add_service(service);
    let result = run(
        listeners,
        router,
        crate::metrics::Metrics::new(registry),
        reporter,
        S::NAME,
        shutdown,
        common,
    )
    .await;
    drop(auth);
    result
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: super::CommonServerArgs,
    }

    #[test]
    fn flag_defaults_are_the_named_constants() {
        let common = Cli::parse_from(["test"]).common;
        assert_eq!(
            common.handshake_timeout,
            crate::incoming::DEFAULT_HANDSHAKE_TIMEOUT
        );
        assert_eq!(
            common.max_connections,
            crate::incoming::DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(common.grace_period, crate::shutdown::DEFAULT_GRACE_PERIOD);
    }
}
