//! A replica's round-trip estimate: peak-EWMA, as Finagle, Linkerd and `tower::load::PeakEwma`
//! compute it.
//!
//! The estimate jumps to any round trip above it at once (a replica that turns slow is seen
//! slow on its first slow reply) and otherwise follows the round trips as an exponentially
//! weighted average; when read, it decays towards zero with the time since the last reply,
//! so a replica shunned for being slow is tried again after a while and rejoins if it has
//! recovered. tower's `PeakEwma` wrapper measures from `call` to the response future's
//! completion; best-effort notices never await theirs, so the estimate is kept here, fed by
//! the stream that reads every reply.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How fast the estimate forgets: after this long without a reply it has decayed to 1/e.
pub(crate) const DEFAULT_RTT_DECAY: Duration = Duration::from_secs(5);
/// The estimate of a replica that has not answered yet: low, so a new replica is tried.
pub(crate) const DEFAULT_RTT: Duration = Duration::from_millis(1);

pub(crate) struct PeakEwma {
    /// (estimate in seconds, when it was last updated)
    state: Mutex<(f64, Instant)>,
    decay: f64,
}

impl PeakEwma {
    pub(crate) fn new(initial: Duration, decay: Duration) -> Self {
        Self {
            state: Mutex::new((initial.as_secs_f64(), Instant::now())),
            decay: decay.as_secs_f64().max(1e-3),
        }
    }

    fn decayed(&self, estimate: f64, since: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(since).as_secs_f64();
        estimate * (-elapsed / self.decay).exp()
    }

    /// Takes one round trip into the estimate.
    pub(crate) fn observe(&self, rtt: Duration) {
        let now = Instant::now();
        let rtt = rtt.as_secs_f64();
        let mut state = self.state.lock().expect("rtt lock");
        let (estimate, since) = *state;
        let next = if rtt > estimate {
            rtt
        } else {
            // The older the estimate, the less it weighs.
            let weight = (-now.saturating_duration_since(since).as_secs_f64() / self.decay).exp();
            estimate * weight + rtt * (1.0 - weight)
        };
        *state = (next, now);
    }

    /// The estimate now, in seconds.
    pub(crate) fn estimate(&self) -> f64 {
        let (estimate, since) = *self.state.lock().expect("rtt lock");
        self.decayed(estimate, since, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slow_reply_is_seen_at_once_and_fast_ones_bring_it_down() {
        let e = PeakEwma::new(Duration::from_millis(1), Duration::from_millis(50));
        e.observe(Duration::from_millis(50));
        assert!(e.estimate() > 0.02, "{}", e.estimate());
        // Decays towards zero with time, so a shunned replica is tried again.
        std::thread::sleep(Duration::from_millis(200));
        assert!(e.estimate() < 0.005, "{}", e.estimate());
        e.observe(Duration::from_millis(1));
        assert!(e.estimate() < 0.005);
    }
}
