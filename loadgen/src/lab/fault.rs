//! `sluice-loadgen fault`: read or change the faults in force on one service through its
//! `mesh.v1.Control` API.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use sluice_proto::pb::control_client::ControlClient;
use sluice_proto::pb::{Faults, GetFaultsRequest};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
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
    /// Admin token (the service's --admin-token). Takes precedence over --admin-token-file,
    /// so it can override a file set in the environment.
    #[arg(
        long,
        alias = "admin-token",
        env = "SLUICE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// File holding the admin token: the service's --admin-token-file, or the
    /// admin_token_file its ready line names when it generated one.
    #[arg(long, env = "SLUICE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
}

impl FaultArgs {
    /// The token to present: `--token`, else the content of `--admin-token-file`.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        match (&self.token, &self.admin_token_file) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(path)) => Ok(Some(sluice_core::admin_token::read_token_file(path)?)),
            (None, None) => Ok(None),
        }
    }

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

/// Adds `authorization: Bearer <token>` to every Control call.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A Control client that presents the admin token on every call.
pub type Control = ControlClient<InterceptedService<Channel, Bearer>>;

/// Connects to a service's Control API, presenting `token` (when given) on every call.
pub async fn control(target: &str, token: Option<&str>) -> anyhow::Result<Control> {
    let bearer = match token {
        Some(token) => Some(
            format!("Bearer {token}")
                .parse()
                .context("the token must be printable ASCII")?,
        ),
        None => None,
    };
    let channel = Channel::from_shared(target.to_string())
        .with_context(|| format!("{target:?} is not a valid URL"))?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {target}: is the service running?"))?;
    Ok(ControlClient::with_interceptor(channel, Bearer(bearer)))
}

/// Gets, changes (when asked) and returns the faults in force.
pub async fn run(args: &FaultArgs) -> anyhow::Result<Faults> {
    let mut client = control(&args.target, args.token()?.as_deref()).await?;
    let current = client
        .get_faults(GetFaultsRequest {})
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
        .set_faults(wanted)
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
            admin_token_file: None,
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

#[cfg(test)]
mod token_tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fault: FaultArgs,
    }

    #[test]
    fn token_from_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin-token");
        std::fs::write(&file, "from-file\n").unwrap();
        let parse = |args: &[&str]| {
            Cli::try_parse_from(["fault", "--target", "http://x"].iter().chain(args))
                .map(|c| c.fault)
        };
        let a = parse(&["--admin-token-file", file.to_str().unwrap()]).unwrap();
        assert_eq!(a.token().unwrap().as_deref(), Some("from-file"));
        let a = parse(&["--token", "t"]).unwrap();
        assert_eq!(a.token().unwrap().as_deref(), Some("t"));
        let a = parse(&["--admin-token", "t"]).unwrap();
        assert_eq!(a.token().unwrap().as_deref(), Some("t"));
        let a = parse(&["--token", "t", "--admin-token-file", "/nonexistent"]).unwrap();
        assert_eq!(a.token().unwrap().as_deref(), Some("t"), "the token wins");
        let a = parse(&["--admin-token-file", "/nonexistent/admin-token"]).unwrap();
        assert!(a.token().is_err());
    }
}
