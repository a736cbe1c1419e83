//! Generated traffic that looks like payments: many accounts (a few of them busy), mostly
//! ordinary merchants with some blocked ones, mostly small amounts with some large ones,
//! and — when asked — a share of invalid transactions, each broken in one field, and a
//! [`PriorityMix`] of critical, default and sheddable ones.

use std::fmt;
use std::str::FromStr;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_proto::pb::{Priority, Transaction};

/// Accounts the generator draws from.
pub const ACCOUNTS: u32 = 10_000;
/// Share of transactions sent to the blocked merchant.
pub const BLOCKED_SHARE: f64 = 0.02;
/// Share of transactions with an amount above the default review threshold.
pub const LARGE_SHARE: f64 = 0.03;
const MERCHANTS: &[&str] = &[
    "coffee-corner",
    "book-barn",
    "grocer-42",
    "rail-tickets",
    "cloud-hosting",
    "pharmacy",
];
const CURRENCIES: &[&str] = &["EUR", "USD", "GBP", "CHF"];

/// Shares of the priorities the gateway sheds by, in percent (`--priority-mix C:D:S`):
/// critical, default, sheddable; they add up to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorityMix {
    pub critical: u8,
    pub default: u8,
    pub sheddable: u8,
}

impl PriorityMix {
    /// The priority of transaction `n` of a run seeded with `seed`. A hash of the two, not a
    /// draw from the traffic's generator: the same run gets the same priorities every time,
    /// and giving a mix changes no other field of any transaction.
    pub fn pick(&self, seed: u64, n: u64) -> Priority {
        let percent = splitmix64(splitmix64(seed) ^ n) % 100;
        if percent < u64::from(self.critical) {
            Priority::Critical
        } else if percent < u64::from(self.critical) + u64::from(self.default) {
            Priority::Default
        } else {
            Priority::Sheddable
        }
    }
}

impl FromStr for PriorityMix {
    type Err = String;

    /// `C:D:S`, whole percents adding up to 100, e.g. `10:80:10`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shares: Vec<&str> = s.split(':').map(str::trim).collect();
        let [c, d, sh] = shares[..] else {
            return Err(format!(
                "{s:?} should be three percents CRITICAL:DEFAULT:SHEDDABLE, e.g. 10:80:10"
            ));
        };
        let percent = |v: &str| {
            v.parse::<u8>()
                .ok()
                .filter(|p| *p <= 100)
                .ok_or_else(|| format!("{v:?} is not a whole percent (0-100) in {s:?}"))
        };
        let mix = PriorityMix {
            critical: percent(c)?,
            default: percent(d)?,
            sheddable: percent(sh)?,
        };
        let sum = u32::from(mix.critical) + u32::from(mix.default) + u32::from(mix.sheddable);
        if sum != 100 {
            return Err(format!("the shares in {s:?} add up to {sum}, not 100"));
        }
        Ok(mix)
    }
}

impl fmt::Display for PriorityMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.critical, self.default, self.sheddable)
    }
}

/// SplitMix64's finalizer: every bit of the input moves every bit of the output, so
/// consecutive sequence numbers land on unrelated percents.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Produces transactions with unique ids `<prefix>-<n>`.
pub struct Traffic {
    prefix: String,
    next: u64,
    invalid_ratio: f64,
    seed: u64,
    rng: SmallRng,
    /// Without a mix every transaction leaves its priority unset (DEFAULT).
    priorities: Option<PriorityMix>,
}

impl Traffic {
    pub fn new(prefix: impl Into<String>, invalid_ratio: f64, seed: u64) -> Self {
        Self {
            prefix: prefix.into(),
            next: 0,
            invalid_ratio,
            seed,
            rng: SmallRng::seed_from_u64(seed),
            priorities: None,
        }
    }

    /// Gives each transaction a priority drawn from `mix` (see [`PriorityMix::pick`]).
    pub fn with_priorities(mut self, mix: Option<PriorityMix>) -> Self {
        self.priorities = mix;
        self
    }

    /// The next transaction, and whether it was made invalid on purpose.
    pub fn next_transaction(&mut self) -> (Transaction, bool) {
        self.next += 1;
        let priority = self
            .priorities
            .map_or(Priority::Default, |mix| mix.pick(self.seed, self.next));
        let rng = &mut self.rng;
        // A tenth of the traffic comes from 50 busy accounts, so velocity rules fire.
        let account = if rng.random_bool(0.1) {
            format!("acct-busy-{}", rng.random_range(0..50))
        } else {
            format!("acct-{}", rng.random_range(0..ACCOUNTS))
        };
        let merchant = if rng.random_bool(BLOCKED_SHARE) {
            "blocked-merchant".to_string()
        } else {
            MERCHANTS[rng.random_range(0..MERCHANTS.len())].to_string()
        };
        let amount_minor = if rng.random_bool(LARGE_SHARE) {
            rng.random_range(1_000_001..50_000_000)
        } else {
            rng.random_range(100..200_000)
        };
        let mut txn = Transaction {
            id: format!("{}-{}", self.prefix, self.next),
            account,
            amount_minor,
            currency: CURRENCIES[rng.random_range(0..CURRENCIES.len())].to_string(),
            merchant,
            trace_context: Default::default(),
            priority: priority as i32,
            after_hlc: 0,
        };
        let invalid = self.invalid_ratio > 0.0 && rng.random_bool(self.invalid_ratio.min(1.0));
        if invalid {
            match rng.random_range(0..4) {
                0 => txn.account.clear(),
                1 => txn.amount_minor = 0,
                2 => txn.currency = "euro".into(),
                _ => txn.merchant.clear(),
            }
        }
        (txn, invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_shares_roughly_hold() {
        let mut t = Traffic::new("run", 0.1, 7);
        let mut ids = std::collections::HashSet::new();
        let (mut invalid, mut blocked) = (0, 0);
        for _ in 0..10_000 {
            let (txn, bad) = t.next_transaction();
            assert!(ids.insert(txn.id.clone()));
            invalid += bad as u32;
            blocked += (txn.merchant == "blocked-merchant") as u32;
        }
        assert!((800..1200).contains(&invalid), "invalid {invalid}");
        assert!((100..300).contains(&blocked), "blocked {blocked}");
    }

    #[test]
    fn priority_mixes_parse_or_say_what_is_wrong() {
        let mix: PriorityMix = "10:80:10".parse().unwrap();
        assert_eq!(
            mix,
            PriorityMix {
                critical: 10,
                default: 80,
                sheddable: 10
            }
        );
        assert_eq!(mix.to_string(), "10:80:10");
        assert!(" 0 : 100 : 0 ".parse::<PriorityMix>().is_ok());
        let err = |s: &str| s.parse::<PriorityMix>().unwrap_err();
        assert!(err("10:80").contains("three percents"), "{}", err("10:80"));
        assert!(err("10:80:10:0").contains("three percents"));
        assert!(
            err("10:80:20").contains("add up to 110"),
            "{}",
            err("10:80:20")
        );
        assert!(err("x:80:20").contains("not a whole percent"));
        assert!(err("-10:100:10").contains("not a whole percent"));
        assert!(err("101:0:0").contains("not a whole percent"));
        assert!(err("").contains("three percents"));
    }

    #[test]
    fn priorities_follow_the_mix_and_the_seed_alone() {
        let mix: PriorityMix = "10:70:20".parse().unwrap();
        let draw = |seed| {
            let mut t = Traffic::new("run", 0.0, seed).with_priorities(Some(mix));
            (0..10_000)
                .map(|_| t.next_transaction().0.priority)
                .collect::<Vec<_>>()
        };
        let run = draw(7);
        assert_eq!(run, draw(7), "same seed, same priorities");
        assert_ne!(run, draw(8));
        let share = |p: Priority| run.iter().filter(|v| **v == p as i32).count();
        assert!((800..1200).contains(&share(Priority::Critical)));
        assert!((6700..7300).contains(&share(Priority::Default)));
        assert!((1700..2300).contains(&share(Priority::Sheddable)));

        // A mix changes nothing else, and no mix leaves the priority unset.
        let mut plain = Traffic::new("run", 0.1, 7);
        let mut mixed = Traffic::new("run", 0.1, 7).with_priorities(Some(mix));
        for _ in 0..100 {
            let (a, bad_a) = plain.next_transaction();
            let (mut b, bad_b) = mixed.next_transaction();
            assert_eq!(a.priority, Priority::Default as i32);
            b.priority = a.priority;
            assert_eq!((a, bad_a), (b, bad_b));
        }
        let all = |s: &str, p: Priority| {
            let mut t = Traffic::new("run", 0.0, 1).with_priorities(Some(s.parse().unwrap()));
            (0..1000).all(|_| t.next_transaction().0.priority == p as i32)
        };
        assert!(all("100:0:0", Priority::Critical));
        assert!(all("0:100:0", Priority::Default));
        assert!(all("0:0:100", Priority::Sheddable));
    }
}
