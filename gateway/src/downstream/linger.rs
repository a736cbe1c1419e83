//! How long a request that finds its stream's queue empty waits for company.
//!
//! Waiting pays only when company comes: requests that arrive meanwhile share one HTTP/2
//! frame, one write and one wake-up of the service. A fixed timer adds its whole length to
//! every lone request at low load. The adaptive linger ([`Arrivals`]) waits only about one
//! expected arrival gap (an EWMA of the gaps between requests this stream took), and not at
//! all when that gap is longer than the cap (`--downstream-linger`): at low load nothing
//! waits, at high load batches fill (the wait ends once `--downstream-linger-batch` are
//! together), and in between a request waits about as long as its companion takes.

use std::time::{Duration, Instant};

/// How the linger is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LingerMode {
    /// About one expected arrival gap, at most `--downstream-linger`; none when the gap is
    /// longer.
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

    /// How long to hold a request that found the queue empty: one expected gap, if that
    /// is within `cap`; else none.
    pub(crate) fn hold(&self, cap: Duration) -> Duration {
        match self.gap {
            Some(gap) if gap < cap.as_secs_f64() => Duration::from_secs_f64(gap),
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
