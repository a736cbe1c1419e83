//! The stall probe: how long the machine kept a ready thread from running during a run.
//!
//! A thread sleeps [`PROBE_INTERVAL`] again and again and notes each wake-up that comes
//! [`STALL_THRESHOLD`] or more late (the idea of jHiccup). Nothing it does waits on the
//! mesh, so a late wake-up is time the machine gave no CPU to a thread that was ready:
//! other processes on the same cores, or the hypervisor not running the virtual CPU. Every
//! thread of the mesh and of the generator sees the same stalls, and a request in flight
//! across one waits for it, so a run's tail cannot be shorter than its longest stall. The
//! report prints them beside the latency; `bench` beside every tail run.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

/// How long the probe sleeps between wake-ups: short enough to catch a stall of a
/// millisecond, long enough to cost nothing (2,000 wake-ups a second).
pub const PROBE_INTERVAL: Duration = Duration::from_micros(500);
/// A wake-up this late or later counts as a stall. Below it, a sleep's usual lateness
/// (timer slack, a context switch) is not the machine stalling.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(1);
/// A stall this long or longer is also counted apart: what a p99 target of a few
/// milliseconds cannot absorb.
pub const LONG_STALL: Duration = Duration::from_millis(5);

/// The stalls the probe saw over the measured part of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Stalls {
    /// Wake-ups [`STALL_THRESHOLD`] or more late.
    pub count: u64,
    /// Of them, [`LONG_STALL`] or more late.
    pub long: u64,
    /// Their lateness added up, in milliseconds.
    pub total_ms: f64,
    /// The latest wake-up, in milliseconds late.
    pub longest_ms: f64,
    /// Seconds the probe watched.
    pub watched_s: f64,
}

impl Stalls {
    /// Counts one wake-up `late` past its due time.
    fn note(&mut self, late: Duration) {
        if late < STALL_THRESHOLD {
            return;
        }
        let ms = late.as_secs_f64() * 1e3;
        self.count += 1;
        self.long += u64::from(late >= LONG_STALL);
        self.total_ms += ms;
        self.longest_ms = self.longest_ms.max(ms);
    }

    /// One line for a report.
    pub fn line(&self) -> String {
        let share = self.total_ms / 1e3 / self.watched_s.max(1e-9) * 100.0;
        format!(
            "{} stalls >= {} ms ({} >= {} ms), {:.0} ms in all ({share:.2} % of the run), longest {:.1} ms: a thread that sleeps {} µs woke that late",
            self.count,
            STALL_THRESHOLD.as_millis(),
            self.long,
            LONG_STALL.as_millis(),
            self.total_ms,
            self.longest_ms,
            PROBE_INTERVAL.as_micros()
        )
    }
}

/// A running probe; [`StallProbe::stop`] ends it and returns what it saw. Dropped without
/// `stop` (a run that failed), it still ends its thread.
pub struct StallProbe {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Stalls>>,
}

impl Drop for StallProbe {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl StallProbe {
    /// Starts the probe thread; it counts stalls that end between `from` and `until`.
    pub fn start(from: Instant, until: Instant) -> std::io::Result<StallProbe> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("loadgen-stalls".into())
            .spawn(move || watch(&flag, from, until, || std::thread::sleep(PROBE_INTERVAL)))?;
        Ok(StallProbe {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the probe (within one [`PROBE_INTERVAL`]) and returns its count.
    pub fn stop(mut self) -> Stalls {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

/// The probe's loop; `sleep` sleeps [`PROBE_INTERVAL`] (a test passes its own).
fn watch(stop: &AtomicBool, from: Instant, until: Instant, mut sleep: impl FnMut()) -> Stalls {
    let mut stalls = Stalls::default();
    let mut last = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        sleep();
        let now = Instant::now();
        if now > from && now <= until {
            stalls.note(now.duration_since(last).saturating_sub(PROBE_INTERVAL));
        }
        last = now;
    }
    stalls.watched_s = until
        .min(Instant::now())
        .saturating_duration_since(from)
        .as_secs_f64();
    stalls
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_wake_ups_past_the_threshold_count() {
        let mut s = Stalls::default();
        s.note(Duration::from_micros(900));
        assert_eq!(s.count, 0);
        s.note(Duration::from_millis(2));
        s.note(Duration::from_millis(7));
        assert_eq!((s.count, s.long), (2, 1));
        assert!((s.total_ms - 9.0).abs() < 1e-9);
        assert!((s.longest_ms - 7.0).abs() < 1e-9);
    }

    #[test]
    fn a_probe_dropped_without_stop_tells_its_thread_to_end() {
        let now = Instant::now();
        let probe = StallProbe::start(now, now + Duration::from_secs(60)).unwrap();
        let stop = probe.stop.clone();
        drop(probe);
        assert!(stop.load(Ordering::Relaxed), "the thread was told to end");
    }

    #[test]
    fn a_wake_up_held_back_counts_once_and_only_inside_the_window() {
        let stop = AtomicBool::new(false);
        let from = Instant::now();
        let mut calls = 0;
        // Wake-ups come at once, except the third, held back 6 ms: a stall the probe
        // must see as one long stall. Other stalls the machine adds only raise the counts.
        let stalls = watch(&stop, from, from + Duration::from_secs(60), || {
            calls += 1;
            if calls == 3 {
                std::thread::sleep(Duration::from_millis(6));
            }
            if calls == 5 {
                stop.store(true, Ordering::Relaxed);
            }
        });
        assert!(stalls.count >= 1 && stalls.long >= 1, "{stalls:?}");
        assert!(stalls.longest_ms >= 5.5, "{stalls:?}");
        assert!(
            stalls.watched_s > 0.0 && stalls.watched_s < 60.0,
            "{stalls:?}"
        );

        // A window that ended before the probe started counts nothing.
        let stop = AtomicBool::new(false);
        let past = Instant::now();
        let mut calls = 0;
        let none = watch(&stop, past - Duration::from_secs(2), past, || {
            calls += 1;
            std::thread::sleep(Duration::from_millis(6));
            if calls == 2 {
                stop.store(true, Ordering::Relaxed);
            }
        });
        assert_eq!((none.count, none.watched_s), (0, 2.0), "{none:?}");
    }
}
