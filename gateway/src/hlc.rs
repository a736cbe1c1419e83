//! The gateway's hybrid logical clock (HLC): one causal order across audit partitions and
//! gateways, as CockroachDB and MongoDB keep theirs.
//!
//! A clock is one `u64`: wall-clock Unix milliseconds in the high 48 bits, a logical counter
//! in the low 16 (`hlc = (unix_ms << 16) | logical`). Each transaction is stamped once, at
//! admission, with [`Hlc::stamp`]: the next clock is the largest of the last one plus one,
//! the wall clock, and the client's `after_hlc` plus one ("this happens after that"). So the
//! clock is strictly increasing per gateway; when the wall clock steps back the logical
//! part carries it; when the logical part would overflow (65,536 stamps in one millisecond)
//! the addition carries into the physical part — the clock then runs ahead of the wall
//! clock by what that load needs, and the wall clock catches up.
//!
//! A received clock is refused ([`Hlc::check`]) when it is past this clock and further
//! ahead of the wall clock than the maximum offset (CockroachDB's rule): a client cannot
//! drag the clock into the future, not even step by step (the bound is the wall clock, not
//! this clock, which an accepted clock moves). One at or below this clock is always
//! accepted, so the gateway never refuses its own earlier outcomes — after its wall clock
//! stepped back, or after a burst ran its logical part into the next milliseconds.
//!
//! The clock lives in the process: a restarted gateway starts from its wall clock. A
//! client's chain still holds across the restart (its `after_hlc` moves the new clock past
//! it); the gateway's own stamps are increasing within one run.
//!
//! One word, one compare-and-swap: no lock on the data path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Default `--max-clock-offset`.
pub const DEFAULT_MAX_CLOCK_OFFSET: Duration = Duration::from_millis(500);
/// Largest `--max-clock-offset`: past it the bound bounds nothing.
pub const MAX_MAX_CLOCK_OFFSET: Duration = Duration::from_secs(3600);

/// Bits of the logical counter.
const LOGICAL_BITS: u32 = 16;

/// The wall-clock Unix milliseconds of a clock (its physical part).
pub fn physical_ms(hlc: u64) -> u64 {
    hlc >> LOGICAL_BITS
}

/// The clock of wall-clock Unix milliseconds `ms`, logical part 0.
pub fn of_ms(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}

/// The next clock after `last`, with the wall clock at `wall_ms` and a received clock
/// `after` (0: none): strictly greater than `last` and than `after`, and at least the wall
/// clock.
pub fn next(last: u64, wall_ms: u64, after: u64) -> u64 {
    last.saturating_add(1)
        .max(of_ms(wall_ms))
        .max(after.saturating_add(1))
}

/// Where a clock reads the wall from: the system clock, or a test's.
type Wall = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A received clock too far ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "after_hlc {after} is {ahead_ms} ms ahead of this gateway's clock, more than the {max_ms} ms it accepts (--max-clock-offset); send an Outcome.hlc you received"
)]
pub struct TooFarAhead {
    pub after: u64,
    pub ahead_ms: u64,
    pub max_ms: u64,
}

/// One gateway's clock. Cheap to share (`Arc`).
pub struct Hlc {
    last: AtomicU64,
    max_offset_ms: u64,
    wall: Wall,
}

impl std::fmt::Debug for Hlc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hlc")
            .field("last", &self.last.load(Ordering::Relaxed))
            .field("max_offset_ms", &self.max_offset_ms)
            .finish()
    }
}

/// Wall-clock Unix milliseconds (0 before 1970).
fn system_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hlc {
    /// A clock on the system's wall clock, refusing received clocks more than `max_offset`
    /// ahead.
    pub fn new(max_offset: Duration) -> Self {
        Self::with_wall(max_offset, Arc::new(system_ms))
    }

    /// A clock whose wall reads `behind` less than the system's: a gateway on a machine
    /// whose clock is slow (the end-to-end tests' hook, `--test-clock-behind`).
    pub fn behind(max_offset: Duration, behind: Duration) -> Self {
        let behind = behind.as_millis() as u64;
        Self::with_wall(
            max_offset,
            Arc::new(move || system_ms().saturating_sub(behind)),
        )
    }

    /// A clock reading the wall from `wall` (Unix ms): tests step it back and forth.
    pub fn with_wall(max_offset: Duration, wall: Wall) -> Self {
        Self {
            last: AtomicU64::new(0),
            max_offset_ms: max_offset.as_millis() as u64,
            wall,
        }
    }

    /// Refuses `after` (0: none) when it is past this clock and more than the maximum
    /// offset ahead of the wall clock (whole milliseconds: up to 1 ms more passes).
    pub fn check(&self, after: u64) -> Result<(), TooFarAhead> {
        if after <= self.last.load(Ordering::Relaxed) {
            return Ok(());
        }
        let ahead_ms = physical_ms(after).saturating_sub((self.wall)());
        if ahead_ms > self.max_offset_ms {
            return Err(TooFarAhead {
                after,
                ahead_ms,
                max_ms: self.max_offset_ms,
            });
        }
        Ok(())
    }

    /// Stamps one transaction: the next clock after this one's last and after `after` (0:
    /// none). Call [`Self::check`] first.
    pub fn stamp(&self, after: u64) -> u64 {
        let wall = (self.wall)();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = next(last, wall, after);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(now) => last = now,
            }
        }
    }

    /// Moves this clock to at least `seen` (a clock read back from elsewhere: a replay's
    /// stored one, stamped by any gateway), so this gateway accepts it back as `after_hlc`
    /// and stamps what comes next after it.
    pub fn witness(&self, seen: u64) {
        self.last.fetch_max(seen, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::*;

    /// A wall clock a test sets.
    fn settable(start_ms: u64) -> (Arc<Mutex<u64>>, Wall) {
        let now = Arc::new(Mutex::new(start_ms));
        let read = now.clone();
        (now, Arc::new(move || *read.lock().unwrap()))
    }

    #[test]
    fn follows_the_wall_clock_and_counts_within_a_millisecond() {
        let (_, wall) = settable(1_000);
        let clock = Hlc::with_wall(DEFAULT_MAX_CLOCK_OFFSET, wall);
        let a = clock.stamp(0);
        let b = clock.stamp(0);
        assert_eq!((physical_ms(a), a & 0xFFFF), (1_000, 0));
        assert_eq!((physical_ms(b), b & 0xFFFF), (1_000, 1));
    }

    #[test]
    fn a_wall_clock_stepping_back_two_seconds_keeps_the_clock_increasing() {
        let (now, wall) = settable(1_700_000_000_000);
        let clock = Hlc::with_wall(DEFAULT_MAX_CLOCK_OFFSET, wall);
        let before = clock.stamp(0);
        *now.lock().unwrap() -= 2_000;
        let mut last = before;
        for _ in 0..1000 {
            let next = clock.stamp(0);
            assert!(next > last);
            last = next;
        }
        assert_eq!(
            physical_ms(last),
            physical_ms(before),
            "the logical part carries it"
        );
        // Its own earlier clock is never refused, though the wall is now 2 s behind it.
        assert_eq!(clock.check(before), Ok(()));
        *now.lock().unwrap() += 3_000;
        assert_eq!(
            physical_ms(clock.stamp(0)),
            1_700_000_001_000,
            "back on the wall"
        );
    }

    #[test]
    fn the_logical_part_overflowing_advances_the_physical_part() {
        let (_, wall) = settable(5);
        let clock = Hlc::with_wall(DEFAULT_MAX_CLOCK_OFFSET, wall);
        let mut last = 0;
        for _ in 0..=u16::MAX as u32 + 1 {
            last = clock.stamp(0);
        }
        assert_eq!((physical_ms(last), last & 0xFFFF), (6, 0));
    }

    #[test]
    fn a_received_clock_is_passed_unless_too_far_ahead_of_the_wall() {
        let (_, wall) = settable(10_000);
        let clock = Hlc::with_wall(Duration::from_millis(500), wall);
        let ahead = of_ms(10_400) + 7;
        assert_eq!(clock.check(ahead), Ok(()));
        assert!(clock.stamp(ahead) > ahead);
        let far = of_ms(10_501);
        let err = clock.check(far).unwrap_err();
        assert_eq!(err.max_ms, 500);
        assert!(err.to_string().contains("--max-clock-offset"), "{err}");
        // No creeping: an accepted clock moves this one, but the bound stays the wall's.
        let mut step = ahead;
        for _ in 0..10 {
            step = clock.stamp(step) + of_ms(400);
            if clock.check(step).is_err() {
                break;
            }
        }
        assert!(
            clock.check(step).is_err(),
            "stepping 400 ms at a time stops at the bound"
        );
        // A clock at or below this one is always its own past: accepted.
        clock.witness(of_ms(20_000));
        assert_eq!(clock.check(of_ms(20_000)), Ok(()));
        assert!(clock.check(of_ms(20_000) + 1).is_err());
    }

    #[test]
    fn stamps_from_many_threads_are_all_distinct() {
        let clock = Arc::new(Hlc::new(DEFAULT_MAX_CLOCK_OFFSET));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let clock = clock.clone();
                std::thread::spawn(move || (0..10_000).map(|_| clock.stamp(0)).collect::<Vec<_>>())
            })
            .collect();
        let mut all: Vec<u64> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    proptest! {
        /// Monotonic under any sequence of wall readings and received clocks.
        #[test]
        fn strictly_increasing_and_after_every_received_clock(
            steps in proptest::collection::vec((0u64..1u64 << 40, prop::option::of(0u64..1u64 << 56)), 1..200)
        ) {
            let mut last = 0;
            for (wall, after) in steps {
                let after = after.unwrap_or(0);
                let n = next(last, wall, after);
                prop_assert!(n > last);
                prop_assert!(n > after);
                prop_assert!(n >= of_ms(wall));
                last = n;
            }
        }
    }
}
