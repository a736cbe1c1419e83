//! Binding, announcing and running one tonic server with its admin listener.
//!
//! Every server binary does the same dance: bind the gRPC and admin ports, serve through
//! the [accept loop](crate::incoming) (handshake timeout, connection cap, accept backoff),
//! print one ready line on stdout once serving (tests and scripts wait on it, and learn the
//! ports when binding port 0, and where the admin token is), serve until the shutdown token
//! is cancelled, then drain within a grace period.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Router;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::admin::{self, AdminLimits, Health};
use crate::admin_token::AdminTokenError;
use crate::descriptors::{self, ConnectionCaps};
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
    /// Pages the binary serves on its admin port beside `/metrics` (the gateway's map).
    admin_routes: Option<axum::Router>,
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
            admin_routes: None,
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

    /// Serves `routes` on the admin port too, beside `/metrics`, `/healthz` and `/readyz`.
    pub fn set_admin_routes(&mut self, routes: axum::Router) {
        self.admin_routes = Some(routes);
    }

    /// Names `path`, the file holding the Control API's token, in the ready line.
    pub fn set_admin_token_file(&mut self, path: Option<PathBuf>) {
        self.admin_token_file = path;
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
    common: &ServerSettings,
) -> Result<(), ServeError> {
    let health = Health::default();
    let readiness = listeners.readiness();
    let ready_line = listeners
        .announce
        .map(|name| (name, listeners.ready_line(name)));
    let grpc_addr = listeners.grpc_addr();
    let Listeners {
        grpc,
        admin,
        admin_routes,
        ..
    } = listeners;
    let caps = common.connection_caps(admin.is_some())?;
    let admin_task = admin.map(|listener| {
        tokio::spawn(admin::serve(
            listener,
            common.admin_limits(caps.admin),
            metrics.clone(),
            health.clone(),
            readiness.clone(),
            admin_routes,
            shutdown.clone(),
        ))
    });
    health_reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    let mirror = readiness.mirror_into(health_reporter.clone(), ready_service);
    health.set(true);

    let incoming = Incoming::new(
        grpc,
        IncomingConfig {
            max_connections: caps.grpc,
            ..common.incoming()
        },
        metrics.connections().clone(),
    );
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
    /// Most admin (HTTP: /metrics, health, the map) connections open at once. One more is
    /// accepted and closed at once (`admin_connections_rejected_total{reason="max_connections"}`).
    /// Together with --max-connections it stays within RLIMIT_NOFILE less --fd-reserve:
    /// the start lowers both to fit and says so.
    #[arg(long, env = "SLUICE_ADMIN_MAX_CONNECTIONS", default_value_t = crate::admin::DEFAULT_ADMIN_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub admin_max_connections: u64,
    /// Time an admin connection has to send a whole request head, on a new connection and
    /// between keep-alive requests, e.g. 10s; then it is closed
    /// (`admin_connections_rejected_total{reason="header_timeout"}`). Bounds silent and
    /// slowloris connections.
    #[arg(long, env = "SLUICE_ADMIN_HEADER_TIMEOUT", default_value = "10s", value_parser = crate::parse_duration)]
    pub admin_header_timeout: Duration,
    /// Time an admin connection may go with nothing read and nothing written, e.g. 60s;
    /// then it is closed (`reason="idle_timeout"`). Bounds a map viewer that stops reading.
    #[arg(long, env = "SLUICE_ADMIN_IDLE_TIMEOUT", default_value = "60s", value_parser = crate::parse_duration)]
    pub admin_idle_timeout: Duration,
    /// File descriptors kept out of the connection caps for everything else the process
    /// opens (listeners, the audit log, downstream connections, the runtime's own).
    #[arg(long, env = "SLUICE_FD_RESERVE", default_value_t = crate::descriptors::DEFAULT_FD_RESERVE)]
    pub fd_reserve: u64,
    /// Threads that run the server's tasks (1 to 256). Default: one per
    /// CPUS_PER_WORKER_THREAD (4) CPUs this process may use (its affinity and cgroup quota,
    /// `available_parallelism`), at least one: the four mesh processes then share a machine
    /// about evenly. So a 2-core machine keeps one thread per process — each message costs
    /// little work and much waking, and there a second thread bought more wake-ups and
    /// context switches than parallelism (`sluice-lab bench`) — while 12 free cores
    /// give each process 3. The start line says which applies.
    #[arg(long, env = "SLUICE_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=MAX_WORKER_THREADS as i64))]
    pub worker_threads: Option<u16>,
    #[command(flatten)]
    pub h2: crate::h2::H2Settings,
    #[command(flatten)]
    pub telemetry: crate::telemetry::TelemetryArgs,
}

/// Default `--worker-threads`: one thread per this many usable CPUs, at least one.
pub const CPUS_PER_WORKER_THREAD: usize = 4;

/// The default `--worker-threads` for `cpus` usable CPUs.
pub fn auto_worker_threads(cpus: usize) -> usize {
    (cpus / CPUS_PER_WORKER_THREAD).clamp(1, usize::from(MAX_WORKER_THREADS))
}
/// Most `--worker-threads`: far past any useful value on one machine.
pub const MAX_WORKER_THREADS: u16 = 256;

/// [`CommonServerArgs`] as a server runs with them: what [`main_with`] and a service's
/// `serve` take, so nothing past `main` holds the clap struct. (Every value is already
/// checked by its flag's parser: clap refuses a `--worker-threads 0` or a bad duration.)
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub grace_period: Duration,
    pub handshake_timeout: Duration,
    pub max_connections: usize,
    pub admin_max_connections: u64,
    pub admin_header_timeout: Duration,
    pub admin_idle_timeout: Duration,
    pub fd_reserve: u64,
    /// `--worker-threads`, when given.
    pub worker_threads: Option<u16>,
    pub h2: crate::h2::H2Settings,
    pub telemetry: crate::telemetry::TelemetryArgs,
}

impl From<CommonServerArgs> for ServerSettings {
    fn from(a: CommonServerArgs) -> Self {
        Self {
            grace_period: a.grace_period,
            handshake_timeout: a.handshake_timeout,
            max_connections: a.max_connections,
            admin_max_connections: a.admin_max_connections,
            admin_header_timeout: a.admin_header_timeout,
            admin_idle_timeout: a.admin_idle_timeout,
            fd_reserve: a.fd_reserve,
            worker_threads: a.worker_threads,
            h2: a.h2,
            telemetry: a.telemetry,
        }
    }
}

impl ServerSettings {
    /// Every flag at its default, as if none were given.
    pub fn defaults() -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            common: CommonServerArgs,
        }
        <Only as clap::Parser>::parse_from(["sluice"]).common.into()
    }

    /// The runtime's worker threads: `--worker-threads`, else [`auto_worker_threads`] of
    /// the CPUs this process may use; and those CPUs.
    pub fn worker_threads(&self) -> (usize, usize) {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = self
            .worker_threads
            .map_or_else(|| auto_worker_threads(cpus), usize::from);
        (threads, cpus)
    }

    /// The accept loop's limits, as configured (before [`Self::connection_caps`] fits them).
    pub fn incoming(&self) -> IncomingConfig {
        IncomingConfig {
            handshake_timeout: Some(self.handshake_timeout),
            max_connections: self.max_connections,
            max_connections_flag: "--max-connections",
        }
    }

    /// The admin listener's bounds, with the cap `admin` (as fitted).
    pub fn admin_limits(&self, admin: usize) -> AdminLimits {
        AdminLimits {
            max_connections: admin,
            header_timeout: self.admin_header_timeout,
            idle_timeout: self.admin_idle_timeout,
        }
    }

    /// Raises the soft descriptor limit to the hard one, fits the connection caps into it
    /// ([`crate::descriptors`]) and says at start which limit applies.
    pub fn connection_caps(&self, with_admin: bool) -> Result<ConnectionCaps, ServeError> {
        let nofile = descriptors::raise_nofile_limit();
        let admin = if with_admin {
            self.admin_max_connections as usize
        } else {
            0
        };
        let caps = descriptors::fit(self.max_connections, admin, self.fd_reserve, nofile)
            .map_err(|e| ServeError::Config(e.to_string()))?;
        let nofile = nofile.map_or_else(|| "unlimited".to_string(), |n| n.to_string());
        if caps.lowered {
            tracing::warn!(
                max_connections = caps.grpc,
                admin_max_connections = caps.admin,
                asked = %format!("{} + {admin}", self.max_connections),
                rlimit_nofile = %nofile,
                fd_reserve = self.fd_reserve,
                "connection caps lowered to fit RLIMIT_NOFILE less --fd-reserve (raise the limit to keep them)"
            );
        } else {
            tracing::info!(
                max_connections = caps.grpc,
                admin_max_connections = caps.admin,
                rlimit_nofile = %nofile,
                fd_reserve = self.fd_reserve,
                "connection caps"
            );
        }
        Ok(caps)
    }
}

/// Runs a server binary's `main` body: logging, a multi-threaded runtime, span export, the
/// ready line on stdout, shutdown on SIGINT/SIGTERM, span flush, and the exit code (0 clean,
/// 1 failure, 64 bad configuration, 65 damaged data).
pub fn main_with<F, Fut>(
    name: &'static str,
    (grpc, admin): (SocketAddr, Option<SocketAddr>),
    common: &ServerSettings,
    serve: F,
) -> std::process::ExitCode
where
    F: FnOnce(Listeners, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = Result<(), ServeError>>,
{
    let telemetry = &common.telemetry;
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    let (worker_threads, cpus) = common.worker_threads();
    let common_threads_given = common.worker_threads.is_some();
    builder.worker_threads(worker_threads);
    // Sub-millisecond waits end at the first wake-up past them (`piggyback`).
    builder.on_thread_unpark(crate::piggyback::fire_due);
    let runtime = match builder.build() {
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
        tracing::info!(
            worker_threads,
            cpus,
            "runtime: {worker_threads} worker thread(s) for {cpus} usable CPU(s){}",
            if common_threads_given {
                " (--worker-threads)"
            } else {
                ""
            }
        );
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
        let common = super::ServerSettings::defaults();
        assert_eq!(
            common.handshake_timeout,
            crate::incoming::DEFAULT_HANDSHAKE_TIMEOUT
        );
        assert_eq!(
            common.max_connections,
            crate::incoming::DEFAULT_MAX_CONNECTIONS
        );
        assert_eq!(common.grace_period, crate::shutdown::DEFAULT_GRACE_PERIOD);
        let admin = common.admin_limits(common.admin_max_connections as usize);
        assert_eq!(admin, crate::admin::AdminLimits::default());
        assert_eq!(common.fd_reserve, crate::descriptors::DEFAULT_FD_RESERVE);
        assert_eq!(common.worker_threads, None, "sized to the machine");
    }

    #[test]
    fn worker_threads_follow_the_cpus_unless_given() {
        assert_eq!(super::auto_worker_threads(1), 1);
        assert_eq!(super::auto_worker_threads(2), 1, "today's cost on 2 cores");
        assert_eq!(super::auto_worker_threads(8), 2);
        assert_eq!(super::auto_worker_threads(12), 3);
        assert_eq!(super::auto_worker_threads(16), 4);
        assert_eq!(super::auto_worker_threads(100_000), 256);
        let parse = |v: &str| Cli::try_parse_from(["test", "--worker-threads", v]);
        assert_eq!(parse("2").unwrap().common.worker_threads, Some(2));
        let given = super::ServerSettings::from(parse("2").unwrap().common);
        assert_eq!(given.worker_threads().0, 2);
        assert!(parse("0").is_err());
        assert!(parse("257").is_err());
    }
}
