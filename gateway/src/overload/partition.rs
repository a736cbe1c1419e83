//! Audit partitions, each charged for what it holds. One partition that stalls or slows
//! must cost its own transactions, never a healthy partition's:
//!
//! - **Its own level.** Each partition has a degradation level of its own ([`Health`]),
//!   moved by the same rules and hysteresis as the gateway's ([`super::level`]) from the
//!   latency of *its* transactions (admission to outcome; a stall counts the time since
//!   it last finished one). As the gateway's own level does, its level 2 refuses its
//!   SHEDDABLE transactions and 3 its unary writes (UNAVAILABLE with pushback); a stream
//!   is held by its backpressure instead — refusing its messages would turn a pause into
//!   errors.
//! - **Its share of the limit.** A partition may hold at most [`share_cap`] of the
//!   concurrency limit, so transactions stuck on one partition until their deadline cannot
//!   take every slot: beyond it a unary call is refused, a stream message waits.
//! - **The gateway's level** reads the *healthiest* partition's latency: the mesh as a whole
//!   is unhealthy only when every partition is (a slow risk, a busy gateway slow them all).
//!   With one partition this is the gateway's latency, as before.
//! - **The adaptive limit** does not learn from a partition singled out (its level above
//!   the gateway's): its slowness is charged to it, not to the limit everyone shares.

use std::time::Duration;

use super::level::{self, Levels, Signals};

/// The most of the limit one partition may hold when there are several: twice its even
/// share, room for skew, and never more than this.
pub const MAX_PARTITION_SHARE: f64 = 0.75;

/// The most transactions partition traffic may hold of `limit`, with `partitions` in all:
/// all of it with one partition; else twice the even share, at most
/// [`MAX_PARTITION_SHARE`], and at least one.
pub fn share_cap(limit: usize, partitions: usize) -> usize {
    if partitions <= 1 {
        return limit;
    }
    let share = (2.0 / partitions as f64).min(MAX_PARTITION_SHARE);
    ((limit as f64 * share).floor() as usize).max(1)
}

/// One partition's health, kept by the controller.
#[derive(Debug, Default)]
pub struct Health {
    levels: Levels,
}

impl Health {
    pub fn level(&self) -> u8 {
        self.levels.level()
    }

    /// One period: `p99` is its finished transactions' admission-to-outcome p99 (None:
    /// none finished); `stalled` how long it has held work without finishing any (None:
    /// it holds none). Returns its latency signal (None: idle) and its new level when that
    /// changed.
    pub fn observe(
        &mut self,
        p99: Option<Duration>,
        stalled: Option<Duration>,
        slo: Duration,
    ) -> (Option<Duration>, Option<u8>) {
        let latency = p99.or(stalled);
        let asked = level::asked(
            Signals {
                latency: latency.unwrap_or_default(),
                queue_fill: 0.0,
            },
            slo,
        );
        (latency, self.levels.observe(asked))
    }
}

/// The gateway's latency signal from the partitions' (None: idle): the healthiest
/// partition's.
pub fn gateway_latency(partitions: &[Option<Duration>]) -> Option<Duration> {
    partitions.iter().flatten().min().copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLO: Duration = Duration::from_millis(50);

    #[test]
    fn one_partition_may_hold_the_whole_limit_several_only_their_share() {
        assert_eq!(share_cap(100, 1), 100);
        assert_eq!(share_cap(100, 2), 75);
        assert_eq!(share_cap(100, 4), 50);
        assert_eq!(share_cap(100, 8), 25);
        assert_eq!(share_cap(1, 8), 1);
    }

    #[test]
    fn a_stalled_partition_climbs_to_level_3_alone() {
        let (mut stalled, mut healthy) = (Health::default(), Health::default());
        let mut lat = Vec::new();
        for period in 1..=6u64 {
            let (a, _) = stalled.observe(None, Some(Duration::from_secs(period)), SLO);
            let (b, _) = healthy.observe(Some(Duration::from_millis(3)), None, SLO);
            lat = vec![a, b];
        }
        assert_eq!(stalled.level(), 3, "nothing finished for seconds");
        assert_eq!(healthy.level(), 0);
        assert_eq!(
            gateway_latency(&lat),
            Some(Duration::from_millis(3)),
            "the gateway reads the healthy partition"
        );
        assert_eq!(gateway_latency(&[None, None]), None, "idle");
    }

    #[test]
    fn an_idle_partition_stays_at_level_0() {
        let mut idle = Health::default();
        for _ in 0..10 {
            let (latency, changed) = idle.observe(None, None, SLO);
            assert_eq!((latency, changed), (None, None));
        }
        assert_eq!(idle.level(), 0);
    }
}
