//! The whole mesh in this process, on loopback: real listeners, real HTTP/2 connections and
//! streams, a real audit log on disk. This is what `sluice-lab demo` drives; each
//! service is the same library its own binary runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use sluice_core::CancellationToken;
use sluice_core::server::{Listeners, ServeError};
use tokio::task::JoinHandle;

const LOOPBACK_ANY: &str = "127.0.0.1:0";

/// A running local mesh.
pub struct LocalMesh {
    pub gateway_url: String,
    pub logging_url: String,
    pub gateway_admin: SocketAddr,
    pub data_dir: PathBuf,
    /// The bearer token every service's Control (fault injection) API takes.
    pub control_token: String,
    gateway_stop: CancellationToken,
    services_stop: CancellationToken,
    gateway: JoinHandle<Result<(), ServeError>>,
    services: Vec<JoinHandle<Result<(), ServeError>>>,
    _temp: Option<tempfile::TempDir>,
}

async fn bind() -> anyhow::Result<Listeners> {
    let any: SocketAddr = LOOPBACK_ANY.parse().expect("valid address");
    Ok(Listeners::bind(any, Some(any)).await?)
}

fn url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

impl LocalMesh {
    /// Starts risk, notification, logging and the gateway. The audit log goes under
    /// `data_dir`, or a temporary directory removed on drop.
    pub async fn start(data_dir: Option<PathBuf>, grace: Duration) -> anyhow::Result<Self> {
        Self::start_with(data_dir, grace, None).await
    }

    /// As [`LocalMesh::start`], with the gateway's default transaction deadline set to
    /// `deadline` when given.
    pub async fn start_with(
        data_dir: Option<PathBuf>,
        grace: Duration,
        deadline: Option<Duration>,
    ) -> anyhow::Result<Self> {
        let (data_dir, temp) = match data_dir {
            Some(dir) => (dir, None),
            None => {
                let temp = tempfile::tempdir()
                    .context("cannot create a temporary directory for the audit log")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        let services_stop = CancellationToken::new();
        let gateway_stop = CancellationToken::new();
        let control_token = sluice_core::admin_token::generate()?;
        let control = sluice_core::admin_token::AdminTokenArgs {
            admin_token: Some(control_token.clone()),
            ..Default::default()
        };

        let risk_l = bind().await?;
        let mut risk = sluice_risk::Config::defaults();
        risk.server.grace_period = grace;
        risk.service.admin_token = control.clone();
        let risk_url = url(risk_l.grpc_addr());

        let notification_l = bind().await?;
        let mut notification = sluice_notification::Config::defaults();
        notification.server.grace_period = grace;
        notification.service.admin_token = control.clone();
        let notification_url = url(notification_l.grpc_addr());

        let logging_l = bind().await?;
        let mut logging = sluice_logging::Config::defaults();
        logging.server.grace_period = grace;
        logging.service.admin_token = control;
        logging.data_dir = data_dir.clone();
        let logging_url = url(logging_l.grpc_addr());

        let gateway_l = bind().await?;
        let gateway_admin = gateway_l.admin_addr().expect("admin bound");
        let mut gateway = sluice_gateway::Config::defaults();
        gateway.server.grace_period = grace;
        if let Some(deadline) = deadline {
            gateway.default_deadline = sluice_core::HumanDuration(deadline);
        }
        gateway.risk = risk_url;
        gateway.notification = notification_url;
        gateway.logging = logging_url.clone();
        let gateway_url = url(gateway_l.grpc_addr());

        let services = vec![
            tokio::spawn(sluice_risk::serve(risk_l, risk, services_stop.clone())),
            tokio::spawn(sluice_notification::serve(
                notification_l,
                notification,
                services_stop.clone(),
            )),
            tokio::spawn(sluice_logging::serve(
                logging_l,
                logging,
                services_stop.clone(),
            )),
        ];
        let gateway = tokio::spawn(sluice_gateway::serve(
            gateway_l,
            gateway.settings()?,
            gateway_stop.clone(),
        ));
        Ok(Self {
            gateway_url,
            logging_url,
            gateway_admin,
            data_dir,
            control_token,
            gateway_stop,
            services_stop,
            gateway,
            services,
            _temp: temp,
        })
    }

    /// Stops the gateway (draining in-flight transactions), then the services.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.gateway_stop.cancel();
        self.gateway.await.context("gateway task panicked")??;
        self.services_stop.cancel();
        for s in self.services {
            s.await.context("service task panicked")??;
        }
        Ok(())
    }
}
