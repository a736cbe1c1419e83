//! The reconnect policy of a downstream stream: full-jitter exponential backoff
//! (`--reconnect-base`, doubling per failure to `--reconnect-max`), reset by a stream that
//! opens. Jitter spreads the reconnects of many streams after one service restart.

use std::time::Duration;

use rand::Rng;

/// Full-jitter exponential backoff.
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub(crate) fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: a random point in the upper half of `base · 2^attempt` (capped).
    pub(crate) fn next(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt += 1;
        ceiling.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// A stream opened: start again from `base`.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(50), Duration::from_millis(300));
        let delays: Vec<_> = (0..6).map(|_| b.next()).collect();
        for (d, ceiling) in delays.iter().zip([50, 100, 200, 300, 300, 300]) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(*d <= ceiling && *d >= ceiling / 2, "{d:?} vs {ceiling:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(50));
    }
}
