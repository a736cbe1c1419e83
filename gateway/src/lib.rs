//! The Sluice gateway: `mesh.v1.Gateway` ingress ([`ingress`], one tower stack per
//! transaction) → fan-out of each transaction ([`fanout`]) → one long-lived stream client per
//! downstream service ([`downstream`], a tower service whose readiness is queue room).
//! `sluice_proto::validate` holds the ingress rules. See ARCHITECTURE.md for every bound on the path.

pub mod downstream;
pub mod fanout;
pub mod ingress;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_core::server::{CommonServerArgs, Listeners, ServeError};
use sluice_proto::pb::gateway_server::GatewayServer;
use tonic::transport::{Channel, Endpoint};

use crate::downstream::{Downstream, DownstreamConfig};
use crate::fanout::Fanout;
use crate::ingress::{Ingress, IngressLimits};

/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default admin (metrics, health) address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9101";
/// Default risk service URL.
pub const DEFAULT_RISK_URL: &str = "http://127.0.0.1:50052";
/// Default notification service URL.
pub const DEFAULT_NOTIFICATION_URL: &str = "http://127.0.0.1:50053";
/// Default logging service URL.
pub const DEFAULT_LOGGING_URL: &str = "http://127.0.0.1:50054";

/// `sluice-gateway`: accepts transactions over gRPC (Submit, SubmitStream) and fans each one
/// out to risk, notification and logging over long-lived bidirectional streams.
///
/// An outcome waits for the risk verdict and the audit ack (both required); notification is
/// best effort (QUEUED, or SHED when its queue is full). Every flag can also be set through
/// the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-gateway", version)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Risk service URL (http://host:port).
    #[arg(long, env = "SLUICE_RISK", default_value = DEFAULT_RISK_URL)]
    pub risk: String,
    /// Notification service URL (http://host:port).
    #[arg(long, env = "SLUICE_NOTIFICATION", default_value = DEFAULT_NOTIFICATION_URL)]
    pub notification: String,
    /// Logging (audit) service URL (http://host:port).
    #[arg(long, env = "SLUICE_LOGGING", default_value = DEFAULT_LOGGING_URL)]
    pub logging: String,
    /// Token presented to the downstream services when streams open (`authorization:
    /// Bearer`); the logging service requires it for Append when started with the same
    /// flag. Unset = none sent.
    #[arg(long, env = "SLUICE_MESH_TOKEN", hide_env_values = true)]
    pub mesh_token: Option<String>,
    /// Long-lived streams per downstream, all on one HTTP/2 connection.
    #[arg(long, env = "SLUICE_STREAMS_PER_DOWNSTREAM", default_value_t = downstream::DEFAULT_STREAMS)]
    pub streams_per_downstream: usize,
    /// Capacity of each downstream's queue: transactions admitted and not yet taken by a
    /// stream. Full risk/logging queues hold SubmitStream readers and refuse unary calls;
    /// a full notification queue sheds notices.
    #[arg(long, env = "SLUICE_DOWNSTREAM_QUEUE", default_value_t = downstream::DEFAULT_QUEUE)]
    pub downstream_queue: usize,
    /// Slots of each downstream queue that only unary Submit calls may take (at most a
    /// quarter of the queue): however many SubmitStream readers wait for room, unary calls
    /// still find some.
    #[arg(long, env = "SLUICE_UNARY_RESERVED", default_value_t = downstream::DEFAULT_IMMEDIATE_RESERVED)]
    pub unary_reserved: usize,
    /// Most requests one downstream stream may have sent and not had answered.
    #[arg(long, env = "SLUICE_DOWNSTREAM_STREAM_INFLIGHT", default_value_t = downstream::DEFAULT_STREAM_INFLIGHT)]
    pub downstream_stream_inflight: usize,
    /// Most unary Submit calls in flight; beyond it, RESOURCE_EXHAUSTED with pushback.
    #[arg(long, env = "SLUICE_MAX_INFLIGHT", default_value_t = ingress::DEFAULT_MAX_INFLIGHT)]
    pub max_inflight: usize,
    /// Most transactions per SubmitStream admitted and awaiting their outcome.
    #[arg(long, env = "SLUICE_STREAM_INFLIGHT", default_value_t = ingress::DEFAULT_STREAM_INFLIGHT)]
    pub stream_inflight: usize,
    /// Most SubmitStream calls open at once, over every connection; beyond it a new stream
    /// is refused RESOURCE_EXHAUSTED with pushback.
    #[arg(long, env = "SLUICE_MAX_STREAMS", default_value_t = ingress::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Most transactions admitted and awaiting their outcome over all SubmitStreams
    /// together. When reached, streams stop reading (in turn, first come first served)
    /// until outcomes free room.
    #[arg(long, env = "SLUICE_STREAMS_INFLIGHT", default_value_t = ingress::DEFAULT_STREAMS_INFLIGHT)]
    pub streams_inflight: usize,
    /// Outcomes per SubmitStream produced but not yet taken by the transport.
    #[arg(long, env = "SLUICE_OUTCOME_QUEUE", default_value_t = ingress::DEFAULT_OUTCOME_QUEUE)]
    pub outcome_queue: usize,
    /// Deadline for transactions whose call carries no grpc-timeout (and for each
    /// SubmitStream message), e.g. 5s.
    #[arg(long, env = "SLUICE_DEFAULT_DEADLINE", default_value = "5s", value_parser = sluice_core::parse_duration)]
    pub default_deadline: Duration,
    /// `grpc-retry-pushback-ms` sent with RESOURCE_EXHAUSTED, e.g. 100ms.
    #[arg(long, env = "SLUICE_RETRY_PUSHBACK", default_value = "100ms", value_parser = sluice_core::parse_duration)]
    pub retry_pushback: Duration,
    /// First reconnect delay of a broken downstream stream; doubles per failure (with jitter).
    #[arg(long, env = "SLUICE_RECONNECT_BASE", default_value = "50ms", value_parser = sluice_core::parse_duration)]
    pub reconnect_base: Duration,
    /// Longest reconnect delay.
    #[arg(long, env = "SLUICE_RECONNECT_MAX", default_value = "2s", value_parser = sluice_core::parse_duration)]
    pub reconnect_max: Duration,
    /// BENCHMARK COMPARISON ONLY: make the downstream queues and the per-stream ingress
    /// limit effectively unbounded, to measure what the bounds buy. Memory then grows with
    /// load whenever a downstream is slow. Never use it otherwise.
    #[arg(long, env = "SLUICE_UNBOUNDED_FOR_COMPARISON", default_value_t = false)]
    pub unbounded_for_comparison: bool,
    #[command(flatten)]
    pub downstream_windows: sluice_core::h2::DownstreamWindows,
    #[command(flatten)]
    pub server: CommonServerArgs,
}

/// What "unbounded" means for `--unbounded-for-comparison`: more than memory can hold.
const UNBOUNDED: usize = 1 << 40;

impl Config {
    /// Defaults, as if no flag were given.
    pub fn defaults() -> Self {
        Self::parse_from(["sluice-gateway"])
    }

    fn downstream(&self) -> Result<DownstreamConfig, ServeError> {
        let auth = sluice_core::auth::bearer(self.mesh_token.as_deref())
            .map_err(|e| ServeError::Other(format!("--mesh-token: {e}")))?;
        Ok(DownstreamConfig {
            queue: if self.unbounded_for_comparison {
                UNBOUNDED
            } else {
                self.downstream_queue
            },
            streams: self.streams_per_downstream,
            stream_inflight: self.downstream_stream_inflight,
            backoff_base: self.reconnect_base,
            backoff_max: self.reconnect_max,
            max_message_size: self.server.h2.max_message_size,
            auth,
            immediate_reserved: if self.unbounded_for_comparison {
                0
            } else {
                self.unary_reserved
            },
        })
    }

    fn limits(&self) -> IngressLimits {
        IngressLimits {
            max_inflight: self.max_inflight,
            stream_inflight: if self.unbounded_for_comparison {
                UNBOUNDED
            } else {
                self.stream_inflight
            },
            max_streams: self.max_streams,
            streams_inflight: if self.unbounded_for_comparison {
                UNBOUNDED
            } else {
                self.streams_inflight
            },
            outcome_queue: self.outcome_queue,
            default_deadline: self.default_deadline,
            retry_pushback: self.retry_pushback,
        }
    }

    fn channel(&self, name: &str, url: &str) -> Result<Channel, ServeError> {
        let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| {
            ServeError::Other(format!(
                "--{name} {url:?} is not a valid URL ({e}); expected http://host:port"
            ))
        })?;
        // Lazy: the gateway starts even when a downstream is not up yet; streams reconnect.
        let w = &self.downstream_windows;
        Ok(self
            .server
            .h2
            .with_windows(
                w.stream_window,
                w.connection_window,
                w.adaptive_window,
                endpoint,
            )
            .connect_lazy())
    }
}

/// Serves the gateway until `shutdown` is cancelled: stops accepting, lets in-flight
/// transactions finish (within the grace period), then closes the downstream streams.
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut registry = Registry::with_prefix("sluice_gateway");
    let downstream_shutdown = CancellationToken::new();
    let dc = config.downstream()?;
    let (risk, risk_workers) = Downstream::start(
        config.channel("risk", &config.risk)?,
        dc.clone(),
        &mut registry,
        downstream_shutdown.clone(),
    );
    let (logging, logging_workers) = Downstream::start(
        config.channel("logging", &config.logging)?,
        dc.clone(),
        &mut registry,
        downstream_shutdown.clone(),
    );
    let (notification, notification_workers) = Downstream::start(
        config.channel("notification", &config.notification)?,
        dc,
        &mut registry,
        downstream_shutdown.clone(),
    );
    let fanout = Fanout::new(risk, logging, notification, &mut registry);
    if config.unbounded_for_comparison {
        tracing::warn!(
            "--unbounded-for-comparison: downstream queues and stream limits are unbounded; memory will grow under pressure"
        );
    }
    let (reporter, health) = tonic_health::server::health_reporter();
    // Known (as NOT_SERVING) from the first moment, so health watchers never see NOT_FOUND.
    reporter.set_not_serving::<GatewayServer<Ingress>>().await;
    tokio::spawn(report_readiness(
        fanout.clone(),
        listeners.readiness(),
        shutdown.clone(),
    ));
    let ingress = Ingress::new(fanout, config.limits(), &mut registry, shutdown.clone());
    let router = config.server.h2.server().add_service(health).add_service(
        GatewayServer::new(ingress).max_decoding_message_size(config.server.h2.max_message_size),
    );
    let result = sluice_core::server::run(
        listeners,
        router,
        sluice_core::metrics::Metrics::new(registry),
        reporter,
        <GatewayServer<Ingress> as tonic::server::NamedService>::NAME,
        shutdown,
        &config.server,
    )
    .await;
    // Ingress has drained: half-close the downstream streams and collect their last replies.
    downstream_shutdown.cancel();
    sluice_core::shutdown::drain(
        "downstream streams",
        config.server.grace_period.min(Duration::from_secs(5)),
        async {
            tokio::join!(
                risk_workers.join(),
                logging_workers.join(),
                notification_workers.join()
            );
        },
    )
    .await;
    result
}

/// How often the gateway re-checks whether its required downstreams have live streams.
const READINESS_INTERVAL: Duration = Duration::from_millis(100);

/// Keeps the gateway ready — `/readyz` 200 and the gRPC health status of `mesh.v1.Gateway`
/// SERVING, which the server mirrors from it — exactly while risk and logging (the required
/// downstreams) each have a live stream. The overall status ("") and `/healthz` stay
/// SERVING while the process runs: it is alive even when it cannot take traffic.
async fn report_readiness(
    fanout: Fanout,
    readiness: sluice_core::readiness::Readiness,
    shutdown: CancellationToken,
) {
    let mut ready = None;
    let mut tick = tokio::time::interval(READINESS_INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => break,
        }
        let now = fanout.risk.is_live() && fanout.logging.is_live();
        if ready != Some(now) {
            readiness.set(now);
            if now {
                tracing::info!("ready: risk and logging streams are live");
            } else if ready.is_none() {
                tracing::info!("waiting for live risk and logging streams");
            } else {
                tracing::warn!(
                    risk = fanout.risk.is_live(),
                    logging = fanout.logging.is_live(),
                    "not ready: a required downstream has no live stream"
                );
            }
            ready = Some(now);
        }
    }
    readiness.set(false);
}

#[cfg(test)]
mod cli_tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Config::command().debug_assert();
    }
}
