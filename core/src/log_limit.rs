//! Rate-limited logging for errors that repeat: one line per interval, with a count.
//!
//! An error that repeats as fast as the loop around it (accept failing with EMFILE, every
//! audit write failing on a full disk) must not turn the log into the outage: 62,821 identical
//! ERROR lines in 20 s hide the one line that says what happened and cost the disk and CPU the
//! process is short of. [`RateLimitedLog`] logs the first occurrence at once, then at most one
//! line per interval carrying how many occurrences it did not log since the last line.
//!
//! ```
//! use std::time::Duration;
//! use sluice_core::log_limit::RateLimitedLog;
//!
//! let write_errors = RateLimitedLog::new(Duration::from_secs(10));
//! # let error = "No space left on device";
//! // At every failure (cheap when nothing is due: one lock, one clock read):
//! write_errors.log(|suppressed| tracing::error!(suppressed, %error, "audit write failed"));
//! // At every success: reports the occurrences held back, once a line is due again.
//! write_errors.flush(|suppressed| tracing::info!(suppressed, "audit writes succeed again"));
//! ```
//!
//! Successes and failures together write at most one line per interval: a condition that
//! flaps (a descriptor freed, taken again) cannot spam the log through either door.
//!
//! The closure runs only when a line is due, so building the message costs nothing otherwise.
//! The limiter is `Sync`: share one per kind of error (in an `Arc`, a field or a `static`),
//! from tasks or plain threads alike.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Default interval between two lines about the same repeating error.
pub const DEFAULT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Logs a repeating event at most once per interval, with the number of occurrences not
/// logged since the previous line.
#[derive(Debug)]
pub struct RateLimitedLog {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When the last line was written; `None` before the first occurrence.
    last_line: Option<Instant>,
    /// Occurrences since that line that were not logged.
    suppressed: u64,
}

impl Default for RateLimitedLog {
    fn default() -> Self {
        Self::new(DEFAULT_LOG_INTERVAL)
    }
}

impl RateLimitedLog {
    /// A limiter that writes at most one line per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State::default()),
        }
    }

    /// Records one occurrence. Calls `line(suppressed)` when a line is due — the first
    /// occurrence ever, or the first one at least `interval` after the previous line —
    /// where `suppressed` counts the occurrences not logged since that previous line.
    /// Returns whether it logged.
    pub fn log(&self, line: impl FnOnce(u64)) -> bool {
        self.log_at(Instant::now(), line)
    }

    /// For the path where things work again: calls `line(suppressed)` when occurrences were
    /// held back since the last line and a line is due (at least `interval` after the
    /// previous one), so the tail of a burst gets reported. Call it on every success; it is
    /// as cheap as [`log`](Self::log). Returns whether it logged.
    pub fn flush(&self, line: impl FnOnce(u64)) -> bool {
        self.flush_at(Instant::now(), line)
    }

    /// Occurrences held back since the last line.
    pub fn suppressed(&self) -> u64 {
        self.lock().suppressed
    }

    fn due(&self, state: &State, now: Instant) -> bool {
        state
            .last_line
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval)
    }

    fn flush_at(&self, now: Instant, line: impl FnOnce(u64)) -> bool {
        let suppressed = {
            let mut state = self.lock();
            if state.suppressed == 0 || !self.due(&state, now) {
                return false;
            }
            let suppressed = state.suppressed;
            state.last_line = Some(now);
            state.suppressed = 0;
            suppressed
        };
        line(suppressed);
        true
    }

    fn log_at(&self, now: Instant, line: impl FnOnce(u64)) -> bool {
        let due = {
            let mut state = self.lock();
            if self.due(&state, now) {
                let suppressed = state.suppressed;
                state.last_line = Some(now);
                state.suppressed = 0;
                Some(suppressed)
            } else {
                state.suppressed += 1;
                None
            }
        };
        // Logged outside the lock: a slow subscriber must not serialise the callers.
        match due {
            Some(suppressed) => {
                line(suppressed);
                true
            }
            None => false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is two plain numbers, valid whatever a panicking holder did.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_occurrence_then_one_line_per_interval_with_the_count() {
        let limiter = RateLimitedLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut lines = Vec::new();
        // A burst: 1,000 errors a second for 25 seconds.
        for ms in 0..25_000u64 {
            limiter.log_at(t0 + Duration::from_millis(ms), |n| lines.push((ms, n)));
        }
        assert_eq!(lines, vec![(0, 0), (10_000, 9_999), (20_000, 9_999)]);
        assert_eq!(limiter.suppressed(), 4_999);

        // Success again: the tail is reported once a line is due, then nothing is pending.
        let at = |ms| t0 + Duration::from_millis(ms);
        assert!(!limiter.flush_at(at(25_000), |_| panic!("not due yet")));
        let mut tail = None;
        assert!(limiter.flush_at(at(30_000), |n| tail = Some(n)));
        assert_eq!(tail, Some(4_999));
        assert!(!limiter.flush_at(at(45_000), |_| panic!("nothing held back")));

        // A new incident long after is logged at once.
        let mut again = None;
        assert!(limiter.log_at(at(45_001), |n| again = Some(n)));
        assert_eq!(again, Some(0));
    }

    #[test]
    fn a_flapping_condition_writes_one_line_per_interval_through_both_paths() {
        let limiter = RateLimitedLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut lines = 0;
        // Fail, succeed, fail, succeed... every millisecond for 25 s.
        for ms in 0..25_000u64 {
            let now = t0 + Duration::from_millis(ms);
            if ms % 2 == 0 {
                limiter.log_at(now, |_| lines += 1);
            } else {
                limiter.flush_at(now, |_| lines += 1);
            }
        }
        assert_eq!(lines, 3);
    }

    #[test]
    fn shared_between_threads() {
        let limiter = std::sync::Arc::new(RateLimitedLog::new(Duration::from_secs(3600)));
        let logged = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..1_000 {
                        limiter.log(|_| {
                            logged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        });
                    }
                });
            }
        });
        assert_eq!(logged.into_inner(), 1);
        assert_eq!(limiter.suppressed(), 3_999);
    }
}
