//! The risk service's configuration: [`crate::Flags`] checked, in the types the service
//! uses. A value that cannot work is refused here, by flag name, before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use sluice_core::flags::{BadFlag, at_least, in_range};
use sluice_core::server::ServerSettings;
use sluice_runtime::ServiceConfig;

use crate::flags::Flags;
use crate::rules::RiskRules;

/// Largest `--velocity-limit`: each tracked account keeps that many entries, plus one.
pub const MAX_VELOCITY_LIMIT: usize = 10_000;
/// Largest `--max-tracked-accounts`: with [`MAX_VELOCITY_LIMIT`], what the tracker may hold.
pub const MAX_TRACKED_ACCOUNTS: usize = 10_000_000;
/// Largest `--cost-us`: a second of busy CPU per assessment is already far past any deadline.
pub const MAX_COST_US: u64 = 1_000_000;

/// What the risk service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub rules: RiskRules,
    /// Accounts the velocity tracker remembers.
    pub max_tracked_accounts: usize,
    /// Simulated CPU work per assessment (zero: none).
    pub cost: Duration,
    pub service: ServiceConfig,
    pub server: ServerSettings,
}

impl Config {
    /// Defaults, as if no flag were given.
    pub fn defaults() -> Self {
        Self::try_from(Flags::parse_from(["sluice-risk"]))
            .expect("the default flags are valid (tested)")
    }
}

impl TryFrom<Flags> for Config {
    type Error = BadFlag;

    fn try_from(flags: Flags) -> Result<Self, BadFlag> {
        let velocity_window = flags.velocity_window.0;
        if velocity_window.is_zero() {
            return Err(BadFlag::new(
                "velocity-window",
                flags.velocity_window,
                "must be longer than 0, e.g. 60s",
            ));
        }
        let rules = RiskRules {
            blocked_merchants: flags
                .blocked_merchants
                .into_iter()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect(),
            review_amount_minor: at_least("review-amount-minor", flags.review_amount_minor, 1)?,
            velocity_limit: in_range(
                "velocity-limit",
                flags.velocity_limit,
                1,
                MAX_VELOCITY_LIMIT,
            )?,
            velocity_window,
        };
        Ok(Self {
            listen: flags.listen,
            admin_listen: flags.admin_listen,
            rules,
            max_tracked_accounts: in_range(
                "max-tracked-accounts",
                flags.max_tracked_accounts,
                1,
                MAX_TRACKED_ACCOUNTS,
            )?,
            cost: Duration::from_micros(in_range("cost-us", flags.cost_us, 0, MAX_COST_US)?),
            service: flags.service.try_into()?,
            server: flags.server.into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::rules;

    fn config(args: &[&str]) -> Result<Config, BadFlag> {
        let mut argv = vec!["sluice-risk"];
        argv.extend_from_slice(args);
        Config::try_from(Flags::parse_from(argv))
    }

    #[test]
    fn cli_is_well_formed() {
        Flags::command().debug_assert();
    }

    #[test]
    fn defaults_are_valid_and_are_the_named_constants() {
        let c = Config::defaults();
        assert_eq!(c.rules.blocked_merchants, [rules::DEFAULT_BLOCKED_MERCHANT]);
        assert_eq!(
            c.rules.review_amount_minor,
            rules::DEFAULT_REVIEW_AMOUNT_MINOR
        );
        assert_eq!(c.rules.velocity_limit, rules::DEFAULT_VELOCITY_LIMIT);
        assert_eq!(c.rules.velocity_window, rules::DEFAULT_VELOCITY_WINDOW);
        assert_eq!(c.max_tracked_accounts, rules::DEFAULT_MAX_TRACKED_ACCOUNTS);
        assert_eq!(c.cost, Duration::from_micros(crate::flags::DEFAULT_COST_US));
        assert_eq!(c.listen.to_string(), crate::flags::DEFAULT_LISTEN);
    }

    #[test]
    fn values_that_cannot_work_are_refused_by_flag() {
        for (args, flag) in [
            (&["--velocity-window", "0s"][..], "velocity-window"),
            (&["--review-amount-minor", "0"], "review-amount-minor"),
            (&["--velocity-limit", "0"], "velocity-limit"),
            (&["--velocity-limit", "10001"], "velocity-limit"),
            (&["--max-tracked-accounts", "0"], "max-tracked-accounts"),
            (&["--cost-us", "1000001"], "cost-us"),
            (&["--workers", "0"], "workers"),
        ] {
            assert_eq!(config(args).unwrap_err().flag, flag, "{args:?}");
        }
    }

    #[test]
    fn empty_merchants_are_ignored() {
        let c = config(&["--blocked-merchants", "a,, b ,"]).unwrap();
        assert_eq!(c.rules.blocked_merchants, ["a", "b"]);
        assert!(
            config(&["--blocked-merchants", ""])
                .unwrap()
                .rules
                .blocked_merchants
                .is_empty()
        );
    }
}
