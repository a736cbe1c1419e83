//! `sluice-loadgen fault`: read or change the faults in force on one service, through the
//! one Control client ([`crate::admin::control`]). This module is only the command's flags:
//! where the token comes from, and which change they ask for.

use std::path::PathBuf;

use clap::Args;
use sluice_proto::pb::Faults;

use crate::admin::control::{Control, FaultChange};

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

    /// The change the flags ask for.
    pub fn change(&self) -> FaultChange {
        FaultChange {
            clear: self.clear,
            stall: match (self.stall, self.unstall) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            },
            delay_ms: self.delay_ms,
            jitter_ms: self.jitter_ms,
            error_rate: self.error_rate,
            workers: self.workers,
        }
    }
}

/// Gets, changes (when asked) and returns the faults in force.
pub async fn run(args: &FaultArgs) -> anyhow::Result<Faults> {
    let mut control = Control::connect(&args.target, args.token()?.as_deref()).await?;
    control.change(&args.change()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        fault: FaultArgs,
    }

    fn parse(args: &[&str]) -> Result<FaultArgs, clap::Error> {
        Cli::try_parse_from(["fault", "--target", "http://x"].iter().chain(args)).map(|c| c.fault)
    }

    #[test]
    fn flags_say_the_change() {
        assert!(
            parse(&[]).unwrap().change().is_empty(),
            "no flag, no change"
        );
        let resume = parse(&["--unstall", "--workers", "3"]).unwrap().change();
        assert_eq!(
            resume,
            FaultChange {
                stall: Some(false),
                workers: Some(3),
                ..Default::default()
            }
        );
        let clear = parse(&["--clear", "--stall", "--error-rate", "0.5"])
            .unwrap()
            .change();
        assert_eq!(
            clear,
            FaultChange {
                clear: true,
                stall: Some(true),
                error_rate: Some(0.5),
                ..Default::default()
            }
        );
        assert!(parse(&["--stall", "--unstall"]).is_err());
    }

    #[test]
    fn token_from_flag_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("admin-token");
        std::fs::write(&file, "from-file\n").unwrap();
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
