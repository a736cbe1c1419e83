//! The Sluice gateway: `mesh.v1.Gateway` ingress ([`ingress`], one tower stack per
//! transaction) → fan-out of each transaction ([`fanout`]) → one long-lived stream client per
//! downstream service ([`downstream`], a tower service whose readiness is queue room).
//! `sluice_proto::validate` holds the ingress rules; [`hlc`] stamps each transaction's place
//! in one causal order; [`map`] is the live pressure map on the admin port. See ARCHITECTURE.md for every bound on the path.

pub mod config;
pub mod downstream;
pub mod fanout;
pub mod hlc;
pub mod ingress;
pub mod map;
pub mod overload;

use std::time::Duration;

use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_core::server::{Listeners, ServeError};
use sluice_proto::pb::gateway_server::GatewayServer;

use crate::downstream::replicas::{Setup, Take};
use crate::downstream::{Partitions, Replicas, Route, ServiceMetrics, Workers};
use crate::fanout::Fanout;
use crate::ingress::Ingress;
use crate::overload::Overload;

pub use config::{Config, Settings};

/// Serves the gateway until `shutdown` is cancelled: stops accepting, lets in-flight
/// transactions finish (within the grace period), then closes the downstream streams.
pub async fn serve(
    mut listeners: Listeners,
    settings: Settings,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut registry = Registry::with_prefix("sluice_gateway");
    let downstream_shutdown = CancellationToken::new();
    // Lazy: the gateway starts even when a downstream is not up yet; streams reconnect,
    // and discovery keeps looking for names that do not resolve yet.
    let setup = Setup {
        config: settings.downstream.clone(),
        endpoint: {
            let settings = settings.clone();
            std::sync::Arc::new(move |addr| settings.endpoint(addr))
        },
        resolve_interval: settings.resolve_interval,
        resolver: crate::downstream::replicas::dns(),
    };
    tracing::info!(
        lanes_max = settings.downstream.lanes_max,
        "downstream: up to {} connection(s) per replica, more opened only while requests wait for a sender (--downstream-lanes-max)",
        settings.downstream.lanes_max
    );
    // Notification's streams differ only in their linger.
    let notification_setup = Setup {
        config: settings.notification_downstream.clone(),
        ..setup.clone()
    };
    let mut started = Started {
        shutdown: &downstream_shutdown,
        workers: Vec::new(),
    };
    let risk_metrics = ServiceMetrics::new("risk", &mut registry);
    let risk = started.replicas(
        &setup,
        settings.risk.clone(),
        Take::All,
        risk_metrics.clone(),
    );
    let notification = started.replicas(
        &notification_setup,
        settings.notification.clone(),
        Take::All,
        ServiceMetrics::new("notification", &mut registry),
    );
    // One partition per URL; all partitions' metrics under downstream="logging", each
    // replica label the partition's address.
    let logging_metrics = ServiceMetrics::new("logging", &mut registry);
    // What overload control reads of the required hops (risk, logging): queue fill and
    // requests outstanding.
    let hops: overload::HopLoads = {
        let required = [risk_metrics.clone(), logging_metrics.clone()];
        Box::new(move || required.each_ref().map(ServiceMetrics::load))
    };
    let logging = Partitions::new(
        settings
            .logging
            .iter()
            .map(|t| {
                started.replicas(
                    &setup,
                    vec![t.clone()],
                    Take::First,
                    logging_metrics.clone(),
                )
            })
            .collect(),
    );
    let workers = started.workers;
    let risk = Route::new(risk, settings.risk_routing);
    let notification = Route::new(notification, settings.notification_routing);
    let clock = std::sync::Arc::new(match settings.clock_behind {
        None => hlc::Hlc::new(settings.max_clock_offset),
        Some(behind) => hlc::Hlc::behind(settings.max_clock_offset, behind),
    });
    let fanout = Fanout::new(risk, logging, notification, clock, &mut registry);
    if settings.unbounded_for_comparison {
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
    let overload = Overload::new(
        settings.overload.clone(),
        &mut registry,
        hops,
        settings.logging.len(),
    );
    tokio::spawn(overload.clone().run(shutdown.clone()));
    let ingress = Ingress::new(
        fanout,
        &overload,
        settings.limits,
        &mut registry,
        shutdown.clone(),
    );
    let router = settings
        .server
        .h2
        .server()
        .add_service(health)
        .add_service(ingress.into_service(settings.server.h2.max_message_size));
    let metrics = sluice_core::metrics::Metrics::new(registry);
    listeners.set_admin_routes(map::routes(metrics.clone()));
    let result = sluice_core::server::run(
        listeners,
        router,
        metrics,
        reporter,
        <GatewayServer<Ingress> as tonic::server::NamedService>::NAME,
        shutdown,
        &settings.server,
    )
    .await;
    // Ingress has drained: half-close the downstream streams and collect their last replies.
    downstream_shutdown.cancel();
    sluice_core::shutdown::drain(
        "downstream streams",
        settings.server.grace_period.min(Duration::from_secs(5)),
        async {
            futures::future::join_all(workers.into_iter().map(Workers::join)).await;
        },
    )
    .await;
    result
}

/// Starts discovery for each downstream and keeps their workers, to be joined at shutdown.
struct Started<'a> {
    shutdown: &'a CancellationToken,
    workers: Vec<Workers>,
}

impl Started<'_> {
    fn replicas<R: sluice_proto::HopRequest>(
        &mut self,
        setup: &Setup,
        targets: Vec<crate::downstream::Target>,
        take: Take,
        metrics: ServiceMetrics,
    ) -> Replicas<R> {
        let (replicas, workers) =
            Replicas::start(targets, take, setup, metrics, self.shutdown.clone());
        self.workers.push(workers);
        replicas
    }
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
        // One live audit partition is enough: a partition that is down fails only its own
        // transactions, and taking the gateway out of rotation would fail everyone's.
        let now = fanout.risk.is_live() && fanout.logging.any_live();
        if ready != Some(now) {
            readiness.set(now);
            if now {
                tracing::info!("ready: risk and logging streams are live");
            } else if ready.is_none() {
                tracing::info!("waiting for live risk and logging streams");
            } else {
                tracing::warn!(
                    risk = fanout.risk.is_live(),
                    logging = ?fanout.logging.live(),
                    "not ready: a required downstream has no live stream"
                );
            }
            ready = Some(now);
        }
    }
    readiness.set(false);
}
