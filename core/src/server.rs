//! Binding, announcing and running one tonic server with its admin listener.
//!
//! Every server binary does the same dance: bind the gRPC and admin ports, print one ready
//! line on stdout (tests and scripts wait on it, and learn the ports when binding port 0),
//! serve until the shutdown token is cancelled, then drain within a grace period.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, Health};
use crate::metrics::Metrics;

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
    #[error("{0}")]
    Other(String),
    /// Stored data is damaged and serving could lose or misreport it: exit code 65
    /// (EX_DATAERR), so supervisors and operators can tell it from a crash.
    #[error("{0}")]
    DataDamaged(String),
}

/// Exit code for [`ServeError::DataDamaged`] (sysexits' EX_DATAERR).
pub const EXIT_DATA_DAMAGED: u8 = 65;

/// The bound sockets of one server.
pub struct Listeners {
    pub grpc: TcpListener,
    pub admin: Option<TcpListener>,
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
        Ok(Self { grpc, admin })
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

    /// The ready line: `<name> ready grpc=<addr> admin=<addr|none>`.
    pub fn ready_line(&self, name: &str) -> String {
        let admin = self
            .admin_addr()
            .map_or_else(|| "none".to_string(), |a| a.to_string());
        format!("{name} ready grpc={} admin={admin}", self.grpc_addr())
    }
}

/// Serves `router` (which must include `health_reporter`'s service) and the admin endpoints
/// until `shutdown` is cancelled, then lets in-flight streams finish for up to `grace`.
pub async fn run(
    listeners: Listeners,
    router: Router,
    metrics: Metrics,
    health_reporter: HealthReporter,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), ServeError> {
    let health = Health::default();
    let admin_task = listeners.admin.map(|listener| {
        tokio::spawn(admin::serve(
            listener,
            metrics,
            health.clone(),
            shutdown.clone(),
        ))
    });
    health_reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    health.set(true);

    let incoming = TcpListenerStream::new(listeners.grpc);
    let server = router.serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => {
            health.set(false);
            return result.map_err(ServeError::from);
        }
        _ = shutdown.cancelled() => {}
    }
    health.set(false);
    health_reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let mut result = Ok(());
    crate::shutdown::drain("gRPC streams", grace, async {
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
    #[command(flatten)]
    pub h2: crate::h2::H2Settings,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
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
    /// Bearer token required by the Control (fault injection) API; unset = no token needed.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
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
    crate::telemetry::init_logging();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let tracing = match crate::telemetry::init_tracing(name, telemetry) {
            Ok(t) => t,
            Err(e) => return Err(Exit::Config(e)),
        };
        let served = async {
            let listeners = Listeners::bind(grpc, admin).await?;
            println!("{}", listeners.ready_line(name));
            tracing::info!(grpc = %listeners.grpc_addr(), admin = ?listeners.admin_addr(), "{name} serving");
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

/// Serves one downstream service: gRPC health (`service` SERVING), the Control API over
/// `pool` (guarded by `admin_token`), `service` itself, and the admin endpoints, until
/// `shutdown`; then drains within the grace period. The one place the three services'
/// servers are put together.
pub async fn run_service<S>(
    listeners: Listeners,
    common: &CommonServerArgs,
    admin_token: Option<String>,
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
    let control = crate::control::server(pool, admin_token);
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter.set_serving::<S>().await;
    let router = common
        .h2
        .server()
        .add_service(health)
        .add_service(control)
        .add_service(service);
    run(
        listeners,
        router,
        crate::metrics::Metrics::new(registry),
        reporter,
        shutdown,
        common.grace_period,
    )
    .await
}
