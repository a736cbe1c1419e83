//! What every downstream service shares around its own gRPC service: the worker pool's and
//! Control's flags, and [`run_service`], the one place a service's server is put together.

use std::convert::Infallible;
use std::path::Path;

use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_core::admin_token::{AdminAuth, AdminTokenArgs};
use sluice_core::server::{Listeners, ServeError, ServerSettings};

use crate::pool::{
    DEFAULT_REPLY_QUEUE, DEFAULT_STREAM_WORKERS, DEFAULT_WORKERS, MAX_WORKERS, PoolConfig,
    WorkerPool,
};
use sluice_core::flags::{BadFlag, in_range};

/// Largest `--reply-queue` and `--stream-workers` accepted: far past any useful value, low
/// enough that a typo cannot ask for gigabytes.
pub const MAX_QUEUE: usize = 1 << 20;

/// Flags every downstream service shares, as given: its worker pool and its Control API.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// Messages processed at once across all streams (1 to 10000). When every worker is
    /// busy the service stops reading its inbound streams, which is what pushes back on the
    /// gateway.
    #[arg(long, env = "SLUICE_WORKERS", default_value_t = DEFAULT_WORKERS)]
    pub workers: usize,
    /// Replies each stream may hold that the transport has not yet taken. A stream reads
    /// its next message only with room here, so a peer that stops reading replies stops
    /// being read, holding no worker.
    #[arg(long, env = "SLUICE_REPLY_QUEUE", default_value_t = DEFAULT_REPLY_QUEUE)]
    pub reply_queue: usize,
    /// Most workers one inbound stream may hold at once, so no one stream (a rogue peer's)
    /// can take the whole pool.
    #[arg(long, env = "SLUICE_STREAM_WORKERS", default_value_t = DEFAULT_STREAM_WORKERS)]
    pub stream_workers: usize,
    /// How the Control (fault injection) API authenticates: `--admin-token`,
    /// `--admin-token-file`, a generated token, or `--insecure-no-auth`.
    #[command(flatten)]
    pub admin_token: AdminTokenArgs,
}

/// [`ServiceArgs`], validated.
#[derive(Debug, Clone, Default)]
pub struct ServiceConfig {
    pub pool: PoolConfig,
    /// Settled (a file read, a token generated) when the server starts: [`run_service`].
    pub admin_token: AdminTokenArgs,
}

impl TryFrom<ServiceArgs> for ServiceConfig {
    type Error = BadFlag;

    fn try_from(args: ServiceArgs) -> Result<Self, BadFlag> {
        Ok(Self {
            pool: PoolConfig {
                workers: in_range("workers", args.workers, 1, MAX_WORKERS)?,
                reply_queue: in_range("reply-queue", args.reply_queue, 1, MAX_QUEUE)?,
                stream_workers: in_range("stream-workers", args.stream_workers, 1, MAX_QUEUE)?,
            },
            admin_token: args.admin_token,
        })
    }
}

/// Serves one downstream service until `shutdown`, then drains within the grace period:
///
/// - `service` itself, whose streams `pool` serves;
/// - `mesh.v1.Control` over `pool`, guarded as `admin_token` says (a generated token's file
///   is named in the ready line and removed on exit);
/// - gRPC health: `service` SERVING while the listeners' readiness is set (set here, as
///   serving starts);
/// - the admin endpoints, with `registry`'s metrics.
pub async fn run_service<S>(
    mut listeners: Listeners,
    common: &ServerSettings,
    admin_token: &AdminTokenArgs,
    pool: WorkerPool,
    registry: Registry,
    service: S,
    shutdown: CancellationToken,
) -> Result<(), ServeError>
where
    S: tower::Service<axum::http::Request<tonic::body::Body>, Error = Infallible>
        + tonic::server::NamedService
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
    listeners.set_admin_token_file(auth.token_file().map(Path::to_path_buf));
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
    let result = sluice_core::server::run(
        listeners,
        router,
        sluice_core::metrics::Metrics::new(registry),
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

    use super::*;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        service: ServiceArgs,
    }

    fn config(args: &[&str]) -> Result<ServiceConfig, BadFlag> {
        let mut argv = vec!["test"];
        argv.extend_from_slice(args);
        ServiceConfig::try_from(Flags::parse_from(argv).service)
    }

    #[test]
    fn flag_defaults_are_the_named_constants() {
        assert_eq!(config(&[]).unwrap().pool, PoolConfig::default());
    }

    #[test]
    fn pool_bounds_out_of_range_are_refused_by_name() {
        assert_eq!(config(&["--workers", "0"]).unwrap_err().flag, "workers");
        assert_eq!(config(&["--workers", "10001"]).unwrap_err().flag, "workers");
        assert_eq!(
            config(&["--reply-queue", "0"]).unwrap_err().flag,
            "reply-queue"
        );
        assert_eq!(
            config(&["--stream-workers", "0"]).unwrap_err().flag,
            "stream-workers"
        );
        assert_eq!(config(&["--workers", "8"]).unwrap().pool.workers, 8);
    }
}
