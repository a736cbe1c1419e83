//! How long a request that finds its stream's queue empty waits for company.
//!
//! Waiting pays only when company comes: requests that arrive meanwhile share one HTTP/2
//! frame, one write and one wake-up of the service. A fixed timer adds its whole length to
//! every lone request at low load. The adaptive linger ([`Arrivals`]) waits only while
//! company is likely: it keeps an EWMA of the gaps between the requests its stream took,
//! and holds a request for that gap, at most the cap (`--downstream-linger`), when the gap
//! is under twice the cap (company then comes within the cap more often than not: 1 −
//! e^(−cap/gap) ≥ 39 % for Poisson arrivals). Longer gaps mean low load, and nothing waits.
//! At high load the wait ends early, once `--downstream-linger-batch` are together.
//!
//! The wait itself ends at the process's first wake-up past it
//! ([`sluice_core::piggyback`]), not at tokio's millisecond timer, which would turn 250 µs
//! into 1–2 ms.

use std::time::{Duration, Instant};

/// How the linger is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LingerMode {
    /// About one expected arrival gap, at most `--downstream-linger`; none when the gap is
    /// longer than twice that.
    Adaptive,
    /// Always `--downstream-linger` (until the batch is full).
    Fixed,
}

/// The weight of the newest gap in the estimate (an EWMA).
const ALPHA: f64 = 0.125;

/// The gaps between the requests one stream takes.
#[derive(Debug, Default)]
pub(crate) struct Arrivals {
    last: Option<Instant>,
    /// Expected gap, seconds (None until two requests have been seen).
    gap: Option<f64>,
}

impl Arrivals {
    /// One request taken at `now`.
    pub(crate) fn observe(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last).as_secs_f64();
            self.gap = Some(match self.gap {
                Some(g) => g + ALPHA * (gap - g),
                None => gap,
            });
        }
        self.last = Some(now);
    }

    /// How long to hold a request that found the queue empty: one expected gap, at most
    /// `cap`, if the gap is under twice `cap`; else none.
    pub(crate) fn hold(&self, cap: Duration) -> Duration {
        match self.gap {
            Some(gap) if gap < 2.0 * cap.as_secs_f64() => Duration::from_secs_f64(gap).min(cap),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(gap: Duration, n: u32) -> Arrivals {
        let start = Instant::now();
        let mut a = Arrivals::default();
        for i in 0..n {
            a.observe(start + gap * i);
        }
        a
    }

    const CAP: Duration = Duration::from_millis(1);

    #[test]
    fn at_low_load_nothing_waits() {
        assert_eq!(
            Arrivals::default().hold(CAP),
            Duration::ZERO,
            "no estimate yet"
        );
        assert_eq!(
            steady(Duration::from_millis(5), 50).hold(CAP),
            Duration::ZERO
        );
    }

    #[test]
    fn a_gap_past_the_cap_holds_the_cap_until_company_grows_unlikely() {
        assert_eq!(steady(Duration::from_micros(1500), 50).hold(CAP), CAP);
        assert_eq!(
            steady(Duration::from_micros(2500), 50).hold(CAP),
            Duration::ZERO
        );
    }

    #[test]
    fn at_moderate_load_a_request_waits_about_one_gap() {
        let hold = steady(Duration::from_micros(330), 50).hold(CAP);
        assert!(
            (Duration::from_micros(320)..=Duration::from_micros(340)).contains(&hold),
            "{hold:?}"
        );
    }

    #[test]
    fn the_estimate_follows_a_change_of_rate() {
        let start = Instant::now();
        let mut a = Arrivals::default();
        for i in 0..50u32 {
            a.observe(start + Duration::from_micros(100) * i);
        }
        assert!(a.hold(CAP) > Duration::ZERO);
        let later = start + Duration::from_micros(100) * 50;
        for i in 0..50u32 {
            a.observe(later + Duration::from_millis(10) * i);
        }
        assert_eq!(a.hold(CAP), Duration::ZERO, "the load went away");
    }
}
