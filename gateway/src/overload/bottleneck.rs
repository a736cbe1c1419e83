//! Bottleneck detection: which hop the slowest transactions spend their time in.
//!
//! Each finished transaction's latency (arrival to outcome) is split by hop: `admission`
//! (waiting for the concurrency limit and downstream queue room), and for each required
//! service the time from admission to its reply — its queue wait, the wait for HTTP/2
//! window, and its round trip (the per-service split of those is in
//! `sluice_gateway_downstream_{queue_wait,roundtrip}_seconds`). Every [`super::level::PERIOD`]
//! the transactions at or above the period's p99 are taken, and each hop's share of their
//! latency averaged. A hop is *named* once its share is over [`SHARE`] for [`PERIODS`]
//! periods in a row while the p99 is over the latency SLO — a healthy mesh always has a
//! largest share (an fsync is slower than a risk rule), but a hop is a bottleneck only when
//! latency is bad. A downstream hop is preferred to `admission`: time waiting at the door
//! is what a slow hop behind it causes. A period in which nothing finished while work was in
//! flight (a stall) has nothing to split: the required hop holding the most requests is
//! its candidate.

use std::time::Duration;

/// Share of p99 latency that makes a hop a bottleneck candidate.
pub const SHARE: f64 = 0.4;
/// Periods in a row a hop must be the candidate before it is named.
pub const PERIODS: usize = 3;
/// Transactions kept per period (a bounded reservoir).
pub const MAX_SAMPLES: usize = 4096;

/// The hops, as labelled in `sluice_gateway_bottleneck{hop}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hop {
    Admission,
    Risk,
    Logging,
}

impl Hop {
    pub const ALL: [Hop; 3] = [Hop::Admission, Hop::Risk, Hop::Logging];

    pub fn label(self) -> &'static str {
        match self {
            Hop::Admission => "admission",
            Hop::Risk => "risk",
            Hop::Logging => "logging",
        }
    }
}

/// One transaction's latency by hop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Split {
    pub total: Duration,
    pub admission: Duration,
    pub risk: Duration,
    pub logging: Duration,
    /// Its audit partition.
    pub partition: u32,
}

impl Split {
    fn of(&self, hop: Hop) -> Duration {
        match hop {
            Hop::Admission => self.admission,
            Hop::Risk => self.risk,
            Hop::Logging => self.logging,
        }
    }
}

/// One period's verdict.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub hop: Hop,
    /// Its mean share of the tail transactions' latency.
    pub share: f64,
}

/// The period's p99 latency and the hop over [`SHARE`] of it, if any.
pub fn candidate(splits: &mut [Split]) -> (Duration, Option<Candidate>) {
    if splits.is_empty() {
        return (Duration::ZERO, None);
    }
    splits.sort_unstable_by_key(|s| s.total);
    let p99_at = ((splits.len() as f64) * 0.99).floor() as usize;
    let tail = &splits[p99_at.min(splits.len() - 1)..];
    let p99 = tail[0].total;
    let share = |hop: Hop| {
        tail.iter()
            .map(|s| s.of(hop).as_secs_f64() / s.total.as_secs_f64().max(1e-9))
            .sum::<f64>()
            / tail.len() as f64
    };
    let best = |hops: &[Hop]| {
        hops.iter()
            .map(|&hop| Candidate {
                hop,
                share: share(hop),
            })
            .filter(|c| c.share > SHARE)
            .max_by(|a, b| a.share.total_cmp(&b.share))
    };
    let pick = best(&[Hop::Risk, Hop::Logging]).or_else(|| best(&[Hop::Admission]));
    (p99, pick)
}

/// A period that finished nothing while work was in flight (a stall): the required hop
/// holding the most requests (queued or sent, unanswered), with all of the latency.
pub fn holding(risk: u64, logging: u64) -> Option<Candidate> {
    let hop = match (risk, logging) {
        (0, 0) => return None,
        (r, l) if r > l => Hop::Risk,
        _ => Hop::Logging,
    };
    Some(Candidate { hop, share: 1.0 })
}

/// The p99 of the time from admission to outcome (the admission wait left out).
pub fn admitted_p99(splits: &[Split]) -> Duration {
    let mut admitted: Vec<Duration> = splits
        .iter()
        .map(|s| s.total.saturating_sub(s.admission))
        .collect();
    if admitted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((admitted.len() as f64) * 0.99).floor() as usize;
    let at = at.min(admitted.len() - 1);
    *admitted.select_nth_unstable(at).1
}

/// Names a hop once it has been the candidate for [`PERIODS`] periods in a row.
#[derive(Debug, Default)]
pub struct Detector {
    streak: Option<(Hop, usize)>,
    named: Option<Candidate>,
}

impl Detector {
    pub fn named(&self) -> Option<Candidate> {
        self.named
    }

    /// One period: its p99 and candidate, and the SLO under which nothing is named.
    /// Returns true when the named hop changed (to another, or to none).
    pub fn observe(&mut self, p99: Duration, candidate: Option<Candidate>, slo: Duration) -> bool {
        let before = self.named.map(|c| c.hop);
        let candidate = candidate.filter(|_| p99 > slo);
        match candidate {
            Some(c) => {
                let streak = match self.streak {
                    Some((hop, n)) if hop == c.hop => n + 1,
                    _ => 1,
                };
                self.streak = Some((c.hop, streak));
                if streak >= PERIODS {
                    self.named = Some(c);
                }
            }
            None => {
                self.streak = None;
                self.named = None;
            }
        }
        self.named.map(|c| c.hop) != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn split(admission: u64, risk: u64, logging: u64) -> Split {
        Split {
            total: MS * (admission + risk.max(logging)) as u32,
            admission: MS * admission as u32,
            risk: MS * risk as u32,
            logging: MS * logging as u32,
            partition: 0,
        }
    }

    #[test]
    fn the_tail_names_the_slow_hop_not_the_wait_it_causes() {
        // Stalled logging: the tail waited at admission and then for logging.
        let mut splits: Vec<Split> = (0..990).map(|_| split(0, 1, 2)).collect();
        splits.extend((0..10).map(|_| split(300, 1, 700)));
        let (p99, c) = candidate(&mut splits);
        assert_eq!(p99, MS * 1000);
        let c = c.expect("a candidate");
        assert_eq!(c.hop, Hop::Logging);
        assert!((c.share - 0.7).abs() < 0.01, "{c:?}");
    }

    #[test]
    fn a_stall_names_the_hop_holding_the_work() {
        assert_eq!(holding(0, 0), None);
        assert_eq!(holding(2, 300).unwrap().hop, Hop::Logging);
        assert_eq!(holding(300, 2).unwrap().hop, Hop::Risk);
    }

    #[test]
    fn slow_risk_is_named_risk() {
        let mut splits: Vec<Split> = (0..100).map(|_| split(0, 60, 2)).collect();
        assert_eq!(candidate(&mut splits).1.unwrap().hop, Hop::Risk);
    }

    #[test]
    fn admission_only_when_no_hop_behind_it_is_slow() {
        let mut splits: Vec<Split> = (0..100).map(|_| split(90, 5, 5)).collect();
        assert_eq!(candidate(&mut splits).1.unwrap().hop, Hop::Admission);
    }

    #[test]
    fn named_after_three_periods_over_the_slo_and_never_at_steady_load() {
        let slo = MS * 50;
        let logging = Some(Candidate {
            hop: Hop::Logging,
            share: 0.8,
        });
        let mut d = Detector::default();
        // Steady load: logging's fsync is the largest share, but p99 is fine.
        for _ in 0..10 {
            assert!(!d.observe(MS * 5, logging, slo));
        }
        assert!(!d.observe(MS * 200, logging, slo));
        assert!(!d.observe(MS * 200, logging, slo));
        assert!(d.observe(MS * 200, logging, slo));
        assert_eq!(d.named().unwrap().hop, Hop::Logging);
        assert!(d.observe(MS * 5, logging, slo), "calm again: nothing named");
        assert_eq!(d.named(), None);
    }
}
