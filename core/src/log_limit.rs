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
//! // Once the condition is over, report what the last interval swallowed (if anything):
//! write_errors.flush(|suppressed| tracing::info!(suppressed, "audit writes succeed again"));
//! ```
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

    /// Writes `line(suppressed)` now if occurrences were held back since the last line (so
    /// the tail of a burst is not lost), and starts afresh: the next occurrence is logged at
    /// once. Returns whether it logged.
    pub fn flush(&self, line: impl FnOnce(u64)) -> bool {
        let suppressed = {
            let mut state = self.lock();
            let suppressed = state.suppressed;
            *state = State::default();
            suppressed
        };
        if suppressed > 0 {
            line(suppressed);
        }
        suppressed > 0
    }

    fn log_at(&self, now: Instant, line: impl FnOnce(u64)) -> bool {
        let due = {
            let mut state = self.lock();
            let due = state
                .last_line
                .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
            if due {
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

        // The tail of the burst is reported once, then the limiter starts afresh.
        let mut tail = None;
        assert!(limiter.flush(|n| tail = Some(n)));
        assert_eq!(tail, Some(4_999));
        assert!(!limiter.flush(|_| panic!("nothing held back")));
        let mut again = None;
        assert!(limiter.log_at(t0 + Duration::from_millis(25_001), |n| again = Some(n)));
        assert_eq!(again, Some(0));
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
        let mut suppressed = 0;
        limiter.flush(|n| suppressed = n);
        assert_eq!(suppressed, 3_999);
    }
}
