//! The risk rules: pure, deterministic and unit-tested.
//!
//! Evaluated in this order, the strongest verdict wins:
//!
//! | rule | default | decision | score | reason |
//! |---|---|---|---|---|
//! | merchant on the block list | `blocked-merchant` | DECLINE | 1.0 | `merchant_blocked` |
//! | `amount_minor` above the review threshold | 1,000,000 | REVIEW | 0.6 | `amount_over_review_threshold` |
//! | more than N transactions for one account in the window | 20 in 60 s | REVIEW | 0.7 | `account_velocity` |
//! | otherwise | | APPROVE | 0.5 × amount / threshold | `within_limits` |
//!
//! A REVIEW with both reasons scores 0.8.

use std::collections::VecDeque;

use lru::LruCache;
use std::time::{Duration, Instant};

use sluice_proto::pb::Decision;

/// Default merchant that is always declined.
pub const DEFAULT_BLOCKED_MERCHANT: &str = "blocked-merchant";
/// Default amount (minor units) above which a transaction goes to review.
pub const DEFAULT_REVIEW_AMOUNT_MINOR: i64 = 1_000_000;
/// Default number of transactions per account within the window that is still fine.
pub const DEFAULT_VELOCITY_LIMIT: usize = 20;
/// Default velocity window.
pub const DEFAULT_VELOCITY_WINDOW: Duration = Duration::from_secs(60);
/// Default number of accounts whose recent transactions are tracked. Bounds the velocity
/// tracker's memory; when full, a new account takes the place of the least recently active
/// one if that one's entries have all expired, else it is scored without history (its
/// velocity rule cannot fire until room frees up).
pub const DEFAULT_MAX_TRACKED_ACCOUNTS: usize = 100_000;

/// The configurable rule set.
#[derive(Debug, Clone)]
pub struct RiskRules {
    pub blocked_merchants: Vec<String>,
    pub review_amount_minor: i64,
    pub velocity_limit: usize,
    pub velocity_window: Duration,
}

impl Default for RiskRules {
    fn default() -> Self {
        Self {
            blocked_merchants: vec![DEFAULT_BLOCKED_MERCHANT.to_string()],
            review_amount_minor: DEFAULT_REVIEW_AMOUNT_MINOR,
            velocity_limit: DEFAULT_VELOCITY_LIMIT,
            velocity_window: DEFAULT_VELOCITY_WINDOW,
        }
    }
}

/// A verdict and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Assessment {
    pub decision: Decision,
    pub score: f64,
    pub reasons: Vec<String>,
}

impl RiskRules {
    /// Scores one transaction, given how many transactions (this one included) its account
    /// made within the velocity window.
    pub fn assess(
        &self,
        merchant: &str,
        amount_minor: i64,
        recent_for_account: usize,
    ) -> Assessment {
        if self.blocked_merchants.iter().any(|m| m == merchant) {
            return Assessment {
                decision: Decision::Decline,
                score: 1.0,
                reasons: vec!["merchant_blocked".into()],
            };
        }
        let mut reasons = Vec::new();
        if amount_minor > self.review_amount_minor {
            reasons.push("amount_over_review_threshold".to_string());
        }
        if recent_for_account > self.velocity_limit {
            reasons.push("account_velocity".to_string());
        }
        match reasons.len() {
            0 => Assessment {
                decision: Decision::Approve,
                score: 0.5
                    * (amount_minor.max(0) as f64 / self.review_amount_minor.max(1) as f64)
                        .min(1.0),
                reasons: vec!["within_limits".into()],
            },
            1 if reasons[0] == "amount_over_review_threshold" => Assessment {
                decision: Decision::Review,
                score: 0.6,
                reasons,
            },
            1 => Assessment {
                decision: Decision::Review,
                score: 0.7,
                reasons,
            },
            _ => Assessment {
                decision: Decision::Review,
                score: 0.8,
                reasons,
            },
        }
    }
}

/// Recent transactions per account (time and id hash), bounded in accounts and in entries
/// per account. Accounts are kept least recently active first (the `lru` crate), so making
/// room for a new one costs O(1) whatever the table holds: a flood of fresh accounts into a
/// full table (every one still inside the window) must not turn each request into a scan
/// of every account — that made risk answer ~35 requests a second under a hostile client.
///
/// A replay — the same id again, as a client retrying after a lost reply sends it — is not
/// counted twice: its id is still among the account's entries while it matters. (Entries
/// beyond `limit + 1` are dropped, but then the account is over the limit either way.)
#[derive(Debug)]
pub struct VelocityTracker {
    window: Duration,
    max_accounts: usize,
    /// At most `limit + 1` entries per account are kept: enough to tell "over the limit".
    keep_per_account: usize,
    recent: LruCache<String, VecDeque<(Instant, u64)>>,
}

/// A stable 64-bit hash of a transaction id (SipHash with fixed keys; ids within one
/// account's few entries do not collide in practice).
fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl VelocityTracker {
    pub fn new(window: Duration, limit: usize, max_accounts: usize) -> Self {
        Self {
            window,
            max_accounts,
            keep_per_account: limit + 1,
            recent: LruCache::unbounded(),
        }
    }

    /// Records transaction `id` for `account` at `now` (unless that id is already recorded
    /// for the account) and returns how many fall within the window, this one included
    /// (capped at limit + 1).
    pub fn record(&mut self, account: &str, id: &str, now: Instant) -> usize {
        let window = self.window;
        if !self.recent.contains(account) && self.recent.len() >= self.max_accounts.max(1) {
            // The least recently active account: if even its entries are live, all are.
            let expired = self.recent.peek_lru().is_some_and(|(_, times)| {
                times
                    .back()
                    .is_none_or(|(t, _)| now.duration_since(*t) >= window)
            });
            if !expired {
                return 1;
            }
            self.recent.pop_lru();
        }
        let times = self
            .recent
            .get_or_insert_mut(account.to_string(), VecDeque::new);
        while times
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) >= window)
        {
            times.pop_front();
        }
        let id = id_hash(id);
        if times.iter().any(|&(_, seen)| seen == id) {
            return times.len();
        }
        times.push_back((now, id));
        if times.len() > self.keep_per_account {
            times.pop_front();
        }
        times.len()
    }

    /// Accounts currently tracked.
    pub fn accounts(&self) -> usize {
        self.recent.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_merchant_declines() {
        let a = RiskRules::default().assess("blocked-merchant", 100, 1);
        assert_eq!(a.decision, Decision::Decline);
        assert_eq!(a.score, 1.0);
        assert_eq!(a.reasons, vec!["merchant_blocked"]);
    }

    #[test]
    fn large_amount_reviews() {
        let rules = RiskRules::default();
        assert_eq!(
            rules.assess("shop", 1_000_000, 1).decision,
            Decision::Approve
        );
        let a = rules.assess("shop", 1_000_001, 1);
        assert_eq!(a.decision, Decision::Review);
        assert_eq!(a.reasons, vec!["amount_over_review_threshold"]);
    }

    #[test]
    fn velocity_reviews_and_both_reasons_score_higher() {
        let rules = RiskRules::default();
        assert_eq!(rules.assess("shop", 10, 20).decision, Decision::Approve);
        let a = rules.assess("shop", 10, 21);
        assert_eq!((a.decision, a.score), (Decision::Review, 0.7));
        let both = rules.assess("shop", 2_000_000, 21);
        assert_eq!(both.score, 0.8);
        assert_eq!(both.reasons.len(), 2);
    }

    #[test]
    fn approve_score_grows_with_amount() {
        let rules = RiskRules::default();
        let small = rules.assess("shop", 1_000, 1).score;
        let big = rules.assess("shop", 900_000, 1).score;
        assert!(small < big && big < 0.5);
    }

    #[test]
    fn tracker_counts_within_window_only() {
        let mut t = VelocityTracker::new(Duration::from_secs(60), 20, 10);
        let t0 = Instant::now();
        for i in 0..21 {
            assert_eq!(
                t.record("a", &format!("t{i}"), t0 + Duration::from_millis(i)),
                i as usize + 1
            );
        }
        assert_eq!(
            t.record("a", "t21", t0 + Duration::from_secs(1)),
            21,
            "capped at limit + 1"
        );
        assert_eq!(
            t.record("a", "t22", t0 + Duration::from_secs(120)),
            1,
            "old entries expire"
        );
    }

    #[test]
    fn a_replayed_id_is_not_counted_again() {
        let mut t = VelocityTracker::new(Duration::from_secs(60), 20, 10);
        let t0 = Instant::now();
        for i in 0..20 {
            t.record("a", &format!("t{i}"), t0);
        }
        for _ in 0..5 {
            assert_eq!(t.record("a", "t3", t0), 20, "replays stay at 20");
        }
        assert_eq!(t.record("b", "t3", t0), 1, "ids are per account");
        assert_eq!(t.record("a", "t20", t0), 21);
    }

    #[test]
    fn tracker_is_bounded_in_accounts() {
        let mut t = VelocityTracker::new(Duration::from_secs(60), 20, 2);
        let t0 = Instant::now();
        t.record("a", "1", t0);
        t.record("b", "2", t0);
        assert_eq!(t.record("c", "3", t0), 1);
        assert_eq!(t.accounts(), 2);
        // Once a's entries expire, the least recently active account makes room.
        t.record("b", "5", t0 + Duration::from_secs(30));
        assert_eq!(t.record("c", "4", t0 + Duration::from_secs(61)), 1);
        assert_eq!(t.accounts(), 2);
        assert_eq!(
            t.record("b", "6", t0 + Duration::from_secs(61)),
            2,
            "b's history kept"
        );
        assert_eq!(
            t.record("c", "7", t0 + Duration::from_secs(61)),
            2,
            "c tracked now"
        );
    }
}
