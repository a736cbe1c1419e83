//! Degradation levels, recomputed every [`PERIOD`] from measured signals, with hysteresis.
//!
//! | level | when (any of, for [`ENTER_AFTER`] periods in a row) | what the gateway does |
//! |---|---|---|
//! | 0 | — | normal |
//! | 1 | latency p99 (admission to outcome) ≥ SLO, or a required downstream queue ≥ 50 % full | notification skipped for all but CRITICAL (non-core work first) |
//! | 2 | p99 ≥ 4 × SLO, or a queue ≥ 90 % full | also: SHEDDABLE refused at ingress; the adaptive limit's ceiling halved |
//! | 3 | p99 ≥ 8 × SLO | also: new unary writes refused UNAVAILABLE with pushback |
//!
//! Latency is admission to outcome of the period's transactions — not the wait to be
//! admitted, which for a SubmitStream is backpressure doing its job (the bottleneck names
//! it); a period in which nothing finished while work was in flight counts the time since
//! the last completion. A level is entered once [`ENTER_AFTER`] periods in a row asked for it or more
//! (the lowest of them is entered), and left once [`LEAVE_AFTER`] periods in a row asked for
//! less (the highest of them is kept): a single spike never changes the level, and a level
//! never flaps between two adjacent ones each second.
//!
//! Level 3 refuses unary writes only: a SubmitStream is already held by backpressure (its
//! reader waits, the client's window fills), and refusing its messages would turn a pause
//! into errors. Audit reads (the logging service's `Read`) and health never pass through
//! the gateway's write path and keep answering.

use std::collections::VecDeque;
use std::time::Duration;

/// How often the level is recomputed.
pub const PERIOD: Duration = Duration::from_secs(1);
/// Periods in a row that must ask for a higher level before it is entered.
pub const ENTER_AFTER: usize = 3;
/// Calm periods in a row before a level is left.
pub const LEAVE_AFTER: usize = 5;
/// Default `--latency-slo`.
pub const DEFAULT_LATENCY_SLO: Duration = Duration::from_millis(50);
/// The highest level.
pub const MAX_LEVEL: u8 = 3;

/// One period's signals.
#[derive(Debug, Clone, Copy, Default)]
pub struct Signals {
    /// p99 latency, admission to outcome (or the stall's length).
    pub latency: Duration,
    /// The fullest required downstream queue, 0..=1.
    pub queue_fill: f64,
}

/// The level one period's signals ask for.
pub fn asked(signals: Signals, slo: Duration) -> u8 {
    let over = signals.latency.as_secs_f64() / slo.as_secs_f64().max(1e-6);
    if over >= 8.0 {
        3
    } else if over >= 4.0 || signals.queue_fill >= 0.9 {
        2
    } else if over >= 1.0 || signals.queue_fill >= 0.5 {
        1
    } else {
        0
    }
}

/// The level and its hysteresis.
#[derive(Debug, Default)]
pub struct Levels {
    level: u8,
    /// The levels the last periods asked for, newest last (at most [`LEAVE_AFTER`]).
    recent: VecDeque<u8>,
}

impl Levels {
    pub fn level(&self) -> u8 {
        self.level
    }

    /// One period asked for `asked`; returns the new level when it changed.
    pub fn observe(&mut self, asked: u8) -> Option<u8> {
        let asked = asked.min(MAX_LEVEL);
        if self.recent.len() == LEAVE_AFTER {
            self.recent.pop_front();
        }
        self.recent.push_back(asked);
        let last = |n: usize| self.recent.iter().rev().take(n);
        let before = self.level;
        if self.recent.len() >= ENTER_AFTER && last(ENTER_AFTER).all(|&a| a > self.level) {
            self.level = last(ENTER_AFTER).copied().min().expect("ENTER_AFTER > 0");
        } else if self.recent.len() >= LEAVE_AFTER && last(LEAVE_AFTER).all(|&a| a < self.level) {
            self.level = last(LEAVE_AFTER).copied().max().expect("LEAVE_AFTER > 0");
        }
        (self.level != before).then(|| {
            self.recent.clear();
            self.level
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(levels: &mut Levels, asked: &[u8]) -> Vec<u8> {
        asked
            .iter()
            .map(|&a| {
                levels.observe(a);
                levels.level()
            })
            .collect()
    }

    #[test]
    fn signals_map_to_levels() {
        let slo = DEFAULT_LATENCY_SLO;
        let at = |ms, fill| {
            asked(
                Signals {
                    latency: Duration::from_millis(ms),
                    queue_fill: fill,
                },
                slo,
            )
        };
        assert_eq!(at(5, 0.0), 0);
        assert_eq!(at(60, 0.0), 1);
        assert_eq!(at(5, 0.6), 1);
        assert_eq!(at(250, 0.0), 2);
        assert_eq!(at(5, 0.95), 2);
        assert_eq!(at(500, 1.0), 3);
    }

    #[test]
    fn a_level_is_entered_after_three_periods_and_left_after_five_calm_ones() {
        let mut l = Levels::default();
        assert_eq!(run(&mut l, &[2, 2, 2]), [0, 0, 2]);
        assert_eq!(run(&mut l, &[0, 0, 0, 0]), [2, 2, 2, 2]);
        assert_eq!(run(&mut l, &[0]), [0]);
    }

    #[test]
    fn a_single_spike_never_changes_the_level() {
        let mut l = Levels::default();
        assert_eq!(run(&mut l, &[3, 0, 0, 3, 0, 3, 3, 0]), [0; 8]);
        assert_eq!(run(&mut l, &[1, 1, 1]), [0, 0, 1]);
        // One calm period in a run of busy ones does not let the level go.
        assert_eq!(run(&mut l, &[0, 0, 1, 0, 0, 0, 0]), [1; 7]);
    }

    #[test]
    fn entering_takes_the_lowest_asked_and_leaving_the_highest() {
        let mut l = Levels::default();
        assert_eq!(run(&mut l, &[3, 2, 3]), [0, 0, 2]);
        assert_eq!(run(&mut l, &[3, 3, 3]), [2, 2, 3]);
        assert_eq!(run(&mut l, &[1, 0, 1, 0, 0]), [3, 3, 3, 3, 1]);
    }
}
