//! The notification service's configuration: [`crate::Flags`] checked. A value that cannot
//! work is refused here, by flag name, before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use sluice_core::flags::BadFlag;
use sluice_core::server::ServerSettings;
use sluice_runtime::ServiceConfig;

use crate::flags::Flags;

/// Longest `--latency`: a minute per notice is already far past any deadline.
pub const MAX_LATENCY: Duration = Duration::from_secs(60);

/// What the notification service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Simulated delivery latency per notice (zero: none).
    pub latency: Duration,
    pub service: ServiceConfig,
    pub server: ServerSettings,
}

impl Config {
    /// Defaults, as if no flag were given.
    pub fn defaults() -> Self {
        Self::try_from(Flags::parse_from(["sluice-notification"]))
            .expect("the default flags are valid (tested)")
    }
}

impl TryFrom<Flags> for Config {
    type Error = BadFlag;

    fn try_from(flags: Flags) -> Result<Self, BadFlag> {
        let latency = flags.latency.0;
        if latency > MAX_LATENCY {
            return Err(BadFlag::new(
                "latency",
                flags.latency,
                format!(
                    "must be at most {}",
                    sluice_core::HumanDuration(MAX_LATENCY)
                ),
            ));
        }
        Ok(Self {
            listen: flags.listen,
            admin_listen: flags.admin_listen,
            latency,
            service: flags.service.try_into()?,
            server: flags.server.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Flags::command().debug_assert();
    }

    #[test]
    fn defaults_are_valid_and_are_the_named_constants() {
        let c = Config::defaults();
        assert_eq!(c.latency, crate::flags::DEFAULT_LATENCY);
        assert_eq!(c.listen.to_string(), crate::flags::DEFAULT_LISTEN);
    }

    #[test]
    fn values_that_cannot_work_are_refused_by_flag() {
        let refused = |args: &[&str]| {
            let mut argv = vec!["sluice-notification"];
            argv.extend_from_slice(args);
            Config::try_from(Flags::parse_from(argv)).unwrap_err().flag
        };
        assert_eq!(refused(&["--latency", "61s"]), "latency");
        assert_eq!(refused(&["--stream-workers", "0"]), "stream-workers");
    }
}
