//! Generated traffic that looks like payments: many accounts (a few of them busy), mostly
//! ordinary merchants with some blocked ones, mostly small amounts with some large ones,
//! and — when asked — a share of invalid transactions, each broken in one field.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice_proto::pb::Transaction;

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

/// Produces transactions with unique ids `<prefix>-<n>`.
pub struct Traffic {
    prefix: String,
    next: u64,
    invalid_ratio: f64,
    rng: SmallRng,
}

impl Traffic {
    pub fn new(prefix: impl Into<String>, invalid_ratio: f64, seed: u64) -> Self {
        Self {
            prefix: prefix.into(),
            next: 0,
            invalid_ratio,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The next transaction, and whether it was made invalid on purpose.
    pub fn next_transaction(&mut self) -> (Transaction, bool) {
        self.next += 1;
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
}
