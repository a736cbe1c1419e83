//! `sluice-loadgen fault`: read or change the faults in force on one service through its
//! `mesh.v1.Control` API.

use anyhow::Context;
use clap::Args;
use sluice_proto::pb::control_client::ControlClient;
use sluice_proto::pb::{Faults, GetFaultsRequest};
use tonic::transport::Channel;

#[derive(Debug, Clone, Args)]
pub struct FaultArgs {
    /// The service's gRPC URL (risk, notification or logging).
    #[arg(long, env = "SLUICE_FAULT_TARGET")]
    pub target: String,
    /// Extra delay per message, ms (0-60000).
    #[arg(long)]
    pub delay_ms: Option<u32>,
    /// Random extra delay on top, ms (0-60000).
    #[arg(long)]
    pub jitter_ms: Option<u32>,
    /// Share of messages answered with an injected error (0-1).
    #[arg(long)]
    pub error_rate: Option<f64>,
    /// Stop reading inbound streams entirely.
    #[arg(long, conflicts_with = "unstall")]
    pub stall: bool,
    /// Resume reading inbound streams.
    #[arg(long)]
    pub unstall: bool,
    /// Worker pool size (0 = the size the service started with).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Clear every fault first (the other flags then apply on top).
    #[arg(long)]
    pub clear: bool,
    /// Admin token (the service's --admin-token).
    #[arg(long, env = "SLUICE_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl FaultArgs {
    fn changes(&self) -> bool {
        self.clear
            || self.stall
            || self.unstall
            || self.delay_ms.is_some()
            || self.jitter_ms.is_some()
            || self.error_rate.is_some()
            || self.workers.is_some()
    }

    /// `current` with this command's changes applied.
    pub fn apply(&self, current: Faults) -> Faults {
        let mut f = if self.clear {
            Faults::default()
        } else {
            current
        };
        if let Some(v) = self.delay_ms {
            f.delay_ms = v;
        }
        if let Some(v) = self.jitter_ms {
            f.jitter_ms = v;
        }
        if let Some(v) = self.error_rate {
            f.error_rate = v;
        }
        if self.stall {
            f.stall = true;
        }
        if self.unstall {
            f.stall = false;
        }
        if let Some(v) = self.workers {
            f.workers = v;
        }
        f
    }
}

fn authorized<T>(message: T, token: &Option<String>) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .context("the token must be printable ASCII")?,
        );
    }
    Ok(request)
}

/// Connects to a service's Control API.
pub async fn control(target: &str) -> anyhow::Result<ControlClient<Channel>> {
    ControlClient::connect(target.to_string())
        .await
        .with_context(|| format!("cannot connect to {target}: is the service running?"))
}

/// Gets, changes (when asked) and returns the faults in force.
pub async fn run(args: &FaultArgs) -> anyhow::Result<Faults> {
    let mut client = control(&args.target).await?;
    let current = client
        .get_faults(authorized(GetFaultsRequest {}, &args.token)?)
        .await
        .map_err(|s| anyhow::anyhow!("GetFaults: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    if !args.changes() {
        return Ok(current);
    }
    // `workers` as read back is the resolved size; keep "unchanged" unless asked.
    let base = Faults {
        workers: 0,
        ..current
    };
    let wanted = args.apply(base);
    let now = client
        .set_faults(authorized(wanted, &args.token)?)
        .await
        .map_err(|s| anyhow::anyhow!("SetFaults: {} ({:?})", s.message(), s.code()))?
        .into_inner();
    Ok(now)
}

/// One line describing `f`.
pub fn describe(f: &Faults) -> String {
    format!(
        "delay_ms={} jitter_ms={} error_rate={} stall={} workers={}",
        f.delay_ms, f.jitter_ms, f.error_rate, f.stall, f.workers
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> FaultArgs {
        FaultArgs {
            target: String::new(),
            delay_ms: None,
            jitter_ms: None,
            error_rate: None,
            stall: false,
            unstall: false,
            workers: None,
            clear: false,
            token: None,
        }
    }

    #[test]
    fn applies_changes_on_top_of_current() {
        let current = Faults {
            delay_ms: 5,
            stall: true,
            ..Default::default()
        };
        let a = FaultArgs {
            unstall: true,
            workers: Some(3),
            ..args()
        };
        assert_eq!(
            a.apply(current),
            Faults {
                delay_ms: 5,
                stall: false,
                workers: 3,
                ..Default::default()
            }
        );
        let c = FaultArgs {
            clear: true,
            error_rate: Some(0.5),
            ..args()
        };
        assert_eq!(
            c.apply(current),
            Faults {
                error_rate: 0.5,
                ..Default::default()
            }
        );
        assert!(!args().changes());
    }
}
