//! The adaptive concurrency limit: how many transactions the gateway has admitted and not
//! yet answered, over both APIs, and how that number follows the slowest hop.
//!
//! - [`Gradient`] is the algorithm, pure and clocked by its caller: every
//!   [`LIMIT_INTERVAL`] it compares the interval's median latency of admitted transactions
//!   with a *baseline* — the lowest interval median of the last [`BASELINE_WINDOW`], so an
//!   old baseline ages out and is measured again (the re-probe) — and moves the limit by
//!   the gradient `target / sample`, clamped to `[0.5, 1]`, where `target` is the baseline
//!   with room for jitter ([`TOLERANCE`], and at least half the latency SLO above
//!   it, [`SLO_BUFFER_DIVISOR`]). Netflix's
//!   Gradient2 and Envoy's adaptive concurrency filter work the same way. Below the target
//!   the limit grows by √limit per interval, but only while the gateway uses at least half of
//!   it (an idle gateway learns nothing about its capacity); above it the limit shrinks
//!   geometrically. A stall that completes nothing counts as the time since the last
//!   completion, so the limit falls even when no transaction finishes.
//! - [`Limiter`] applies it: a counter and a limit, shared by every ingress stack. Each
//!   priority may fill its own share of the limit ([`share`]): SHEDDABLE is refused (or kept
//!   waiting) first, then DEFAULT; the last tenth is CRITICAL's alone. Unary calls take a
//!   slot or are refused; stream messages wait for one (the backpressure), in three FIFO
//!   queues woken highest priority first.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_proto::pb::Priority;
use tokio::sync::Notify;

/// How often the limit is recomputed.
pub const LIMIT_INTERVAL: Duration = Duration::from_millis(250);
/// How far back the baseline (the lowest interval median) looks.
pub const BASELINE_WINDOW: Duration = Duration::from_secs(10);
/// Latency the limit tolerates above the baseline before it shrinks: ×2 …
pub const TOLERANCE: f64 = 2.0;
/// … and at least this much (an fsync's jitter at a 1 ms baseline).
pub const MIN_BUFFER: Duration = Duration::from_millis(2);
/// The gateway's buffer is its latency SLO divided by this: latency well inside the SLO is
/// not worth refusing work over. On a shared 2-core box the median at half load is 4× the
/// quietest median (the CPU, not a queue), which a ×2 tolerance alone would treat as
/// overload and pin the limit at its floor.
pub const SLO_BUFFER_DIVISOR: u32 = 2;
/// The most an interval's gradient may shrink the limit by (Gradient2's clamp).
const MIN_GRADIENT: f64 = 0.5;
/// Latencies kept per interval for its median; beyond it, later ones overwrite earlier.
pub const MAX_SAMPLES: usize = 1024;

/// Default lowest the adaptive limit goes.
pub const DEFAULT_MIN_LIMIT: usize = 32;
/// Default highest the adaptive limit goes (and the static limit).
pub const DEFAULT_MAX_LIMIT: usize = 8192;
/// Where the adaptive limit starts: room for a burst on a cold gateway; a slow hop brings
/// it down within a second or two.
pub const INITIAL_LIMIT: usize = 256;
/// The part of each priority's share that SubmitStream messages may fill. The rest is for
/// unary calls: they are refused rather than wait, so without it every freed slot would go
/// to a waiting stream (what `--unary-reserved` does for the downstream queues).
pub const STREAM_SHARE: f64 = 0.75;
/// The fewest slots of each priority's share kept for unary calls, however low the limit.
pub const MIN_UNARY_ROOM: usize = 16;

/// How much of the limit a priority may fill. CRITICAL keeps the last tenth to itself;
/// SHEDDABLE stops at three quarters, so it is refused first.
pub fn share(priority: Priority) -> f64 {
    match priority {
        Priority::Critical => 1.0,
        Priority::Default => 0.9,
        Priority::Sheddable => 0.75,
    }
}

/// The three wait queues, highest priority first.
const ORDER: [Priority; 3] = [Priority::Critical, Priority::Default, Priority::Sheddable];

fn index(priority: Priority) -> usize {
    match priority {
        Priority::Critical => 0,
        Priority::Default => 1,
        Priority::Sheddable => 2,
    }
}

/// The gradient algorithm. See the module docs.
#[derive(Debug)]
pub struct Gradient {
    limit: f64,
    min: f64,
    max: f64,
    /// (when, interval median) over the last [`BASELINE_WINDOW`], oldest first.
    medians: VecDeque<(Instant, Duration)>,
    /// Least latency tolerated above the baseline.
    buffer: Duration,
}

impl Gradient {
    pub fn new(initial: usize, min: usize, max: usize) -> Self {
        let (min, max) = (min.max(1) as f64, max.max(min.max(1)) as f64);
        Self {
            limit: (initial as f64).clamp(min, max),
            min,
            max,
            medians: VecDeque::new(),
            buffer: MIN_BUFFER,
        }
    }

    /// Tolerates at least `buffer` above the baseline (never less than [`MIN_BUFFER`]).
    pub fn with_buffer(mut self, buffer: Duration) -> Self {
        self.buffer = buffer.max(MIN_BUFFER);
        self
    }

    pub fn limit(&self) -> usize {
        self.limit.round() as usize
    }

    /// The lowest interval median of the window, once there is one.
    pub fn baseline(&self) -> Option<Duration> {
        self.medians.iter().map(|(_, d)| *d).min()
    }

    /// One interval: `sample` is its median latency (None: nothing finished and nothing
    /// was in flight — an idle interval, which changes nothing), `inflight` the admitted
    /// transactions now. `ceiling` caps the limit below `max` (degradation level 2).
    pub fn update(
        &mut self,
        now: Instant,
        sample: Option<Duration>,
        inflight: usize,
        ceiling: usize,
    ) -> usize {
        if let Some(sample) = sample {
            while self
                .medians
                .front()
                .is_some_and(|(t, _)| now.duration_since(*t) > BASELINE_WINDOW)
            {
                self.medians.pop_front();
            }
            // Bounded by the window: one entry per interval.
            if self.medians.len() * (LIMIT_INTERVAL.as_millis() as usize)
                < BASELINE_WINDOW.as_millis() as usize * 2
            {
                self.medians.push_back((now, sample));
            }
            let baseline = self.baseline().unwrap_or(sample);
            let target = (baseline.mul_f64(TOLERANCE)).max(baseline + self.buffer);
            let gradient =
                (target.as_secs_f64() / sample.as_secs_f64().max(1e-6)).clamp(MIN_GRADIENT, 1.0);
            // The limit moves only while it is in use: below half of it, latency is not
            // the limit's doing (a busy CPU, a few slow calls), and lowering it would only
            // refuse callers it is not holding up.
            let in_use = inflight as f64 >= self.limit / 2.0;
            if gradient < 1.0 && in_use {
                // At most ×0.71 per interval, so a stall brings a limit of 256 to the
                // floor in about two seconds, and one slow interval costs little.
                self.limit *= gradient.sqrt();
            } else if gradient >= 1.0 && in_use {
                self.limit += self.limit.sqrt().max(1.0);
            }
        }
        let ceiling = (ceiling as f64).clamp(self.min, self.max);
        self.limit = self.limit.clamp(self.min, ceiling);
        self.limit()
    }
}

/// Latencies of one interval, a bounded reservoir.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    seen: usize,
    last_completion: Option<Instant>,
}

/// The shared limit. See the module docs.
pub struct Limiter {
    inflight: AtomicUsize,
    limit: AtomicUsize,
    waiting: [AtomicUsize; 3],
    wake: [Notify; 3],
    samples: Mutex<Samples>,
}

impl Limiter {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            inflight: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit.max(1)),
            waiting: Default::default(),
            wake: Default::default(),
            samples: Mutex::new(Samples::default()),
        })
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    /// Most transactions in flight (all priorities') under which a unary call of
    /// `priority` is admitted.
    pub fn ceiling(&self, priority: Priority) -> usize {
        ((self.limit() as f64 * share(priority)).floor() as usize).max(1)
    }

    /// The same for a SubmitStream message: [`STREAM_SHARE`] of it, and at least
    /// [`MIN_UNARY_ROOM`] below it.
    pub fn stream_ceiling(&self, priority: Priority) -> usize {
        let unary = self.ceiling(priority);
        let room = ((unary as f64 * (1.0 - STREAM_SHARE)).ceil() as usize).max(MIN_UNARY_ROOM);
        unary.saturating_sub(room).max(1)
    }

    /// Sets the limit; wakes waiters a higher limit lets in.
    pub fn set_limit(&self, limit: usize) {
        let before = self.limit.swap(limit.max(1), Ordering::AcqRel);
        for _ in before..limit.min(before + 64) {
            self.wake_next();
        }
    }

    /// A slot now for a unary call, or None when `priority`'s share is full.
    pub fn try_acquire(self: &Arc<Self>, priority: Priority) -> Option<LimitPermit> {
        self.take_under(self.ceiling(priority))
    }

    fn take_under(self: &Arc<Self>, ceiling: usize) -> Option<LimitPermit> {
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < ceiling).then_some(n + 1)
            })
            .ok()
            .map(|_| LimitPermit {
                limiter: self.clone(),
            })
    }

    /// Waits for a slot for a SubmitStream message, FIFO within `priority`; higher
    /// priorities are woken first.
    pub async fn acquire(self: &Arc<Self>, priority: Priority) -> LimitPermit {
        let i = index(priority);
        loop {
            if let Some(permit) = self.take_under(self.stream_ceiling(priority)) {
                return permit;
            }
            let mut notified = pin!(self.wake[i].notified());
            // Registered before the second look, so a release in between is not missed.
            notified.as_mut().enable();
            let _waiting = Waiting::count(&self.waiting[i]);
            if let Some(permit) = self.take_under(self.stream_ceiling(priority)) {
                return permit;
            }
            notified.await;
        }
    }

    /// Wakes one waiter of the highest priority that has one and room under its share.
    fn wake_next(&self) {
        let inflight = self.inflight();
        for priority in ORDER {
            let i = index(priority);
            if self.waiting[i].load(Ordering::Acquire) > 0
                && inflight < self.stream_ceiling(priority)
            {
                self.wake[i].notify_one();
                return;
            }
        }
    }

    /// Records one admitted transaction's latency (admission to outcome).
    pub fn record(&self, latency: Duration) {
        let mut s = self.samples.lock().expect("samples lock");
        if s.latencies.len() < MAX_SAMPLES {
            s.latencies.push(latency);
        } else {
            let slot = s.seen % MAX_SAMPLES;
            s.latencies[slot] = latency;
        }
        s.seen += 1;
        s.last_completion = Some(Instant::now());
    }

    /// How long since a transaction last finished (None: none has yet).
    pub fn since_last_completion(&self, now: Instant) -> Option<Duration> {
        let s = self.samples.lock().expect("samples lock");
        s.last_completion.map(|t| now.saturating_duration_since(t))
    }

    /// The interval's latency sample, and starts the next interval: the median of what
    /// finished; with nothing finished but work in flight, the time since the last
    /// completion (a stall); with neither, None.
    pub fn take_sample(&self, now: Instant, interval_start: Instant) -> Option<Duration> {
        let mut s = self.samples.lock().expect("samples lock");
        let median = if s.latencies.is_empty() {
            None
        } else {
            let mid = s.latencies.len() / 2;
            Some(*s.latencies.select_nth_unstable(mid).1)
        };
        s.latencies.clear();
        s.seen = 0;
        let since = now.duration_since(s.last_completion.unwrap_or(interval_start));
        drop(s);
        match median {
            Some(m) => Some(m),
            None if self.inflight() > 0 => Some(since),
            None => None,
        }
    }
}

/// Counts a waiter while it waits (cancellation included).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One admitted transaction's slot; given back on drop.
pub struct LimitPermit {
    limiter: Arc<Limiter>,
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        self.limiter.inflight.fetch_sub(1, Ordering::AcqRel);
        self.limiter.wake_next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn steps(g: &mut Gradient, from: Instant, n: u32, sample: Duration, inflight: usize) {
        for k in 0..n {
            g.update(
                from + LIMIT_INTERVAL * k,
                Some(sample),
                inflight,
                usize::MAX,
            );
        }
    }

    #[test]
    fn the_limit_grows_while_latency_holds_and_the_gateway_uses_it() {
        let mut g = Gradient::new(64, 8, 4096);
        let t = Instant::now();
        steps(&mut g, t, 8, 2 * MS, 4096);
        assert!(g.limit() > 128, "{}", g.limit());
    }

    #[test]
    fn an_idle_gateway_does_not_raise_its_limit() {
        let mut g = Gradient::new(64, 8, 4096);
        steps(&mut g, Instant::now(), 20, 2 * MS, 3);
        assert_eq!(g.limit(), 64);
    }

    #[test]
    fn slow_latency_lowers_the_limit_within_two_seconds_and_recovery_raises_it() {
        let mut g = Gradient::new(256, 8, 4096);
        let t = Instant::now();
        steps(&mut g, t, 4, 2 * MS, 256);
        let before = g.limit();
        // Logging slowed: 50 ms against a 2 ms baseline, for 2 s (8 intervals).
        steps(&mut g, t + LIMIT_INTERVAL * 4, 8, 50 * MS, before);
        let slowed = g.limit();
        assert!(slowed * 4 <= before, "{before} → {slowed}");
        assert_eq!(
            g.baseline(),
            Some(2 * MS),
            "the slow samples do not move the baseline"
        );
        // Demand is still there: the gateway would use whatever it is given.
        steps(&mut g, t + LIMIT_INTERVAL * 12, 12, 2 * MS, 4096);
        assert!(g.limit() > slowed * 3, "{slowed} → {}", g.limit());
    }

    #[test]
    fn latency_the_limit_is_not_holding_up_does_not_move_it() {
        let mut g = Gradient::new(256, 8, 4096);
        let t = Instant::now();
        steps(&mut g, t, 4, 2 * MS, 256);
        let before = g.limit();
        // Slow, but with a tenth of the limit in use: the limit is not the cause.
        steps(&mut g, t + LIMIT_INTERVAL * 4, 8, 50 * MS, before / 10);
        assert_eq!(g.limit(), before);
    }

    #[test]
    fn latency_well_inside_the_slo_is_not_overload() {
        // Baseline 2 ms, SLO 50 ms: 10 ms medians (a busy CPU) keep the limit growing.
        let mut g =
            Gradient::new(32, 8, 4096).with_buffer(Duration::from_millis(50) / SLO_BUFFER_DIVISOR);
        let t = Instant::now();
        g.update(t, Some(2 * MS), 32, usize::MAX);
        steps(&mut g, t + LIMIT_INTERVAL, 8, 10 * MS, 4096);
        assert!(g.limit() > 64, "{}", g.limit());
        steps(&mut g, t + LIMIT_INTERVAL * 9, 4, 60 * MS, 4096);
        assert!(g.limit() < 64, "past the buffer it shrinks: {}", g.limit());
    }

    #[test]
    fn jitter_within_the_tolerance_changes_nothing() {
        let mut g = Gradient::new(100, 8, 4096);
        let t = Instant::now();
        g.update(t, Some(MS), 10, usize::MAX);
        g.update(t + LIMIT_INTERVAL, Some(3 * MS), 10, usize::MAX);
        assert_eq!(g.limit(), 100);
    }

    #[test]
    fn the_baseline_ages_out_and_is_measured_again() {
        let mut g = Gradient::new(64, 8, 4096);
        let t = Instant::now();
        g.update(t, Some(MS), 0, usize::MAX);
        g.update(t + BASELINE_WINDOW + MS, Some(5 * MS), 0, usize::MAX);
        assert_eq!(g.baseline(), Some(5 * MS));
    }

    #[test]
    fn the_ceiling_and_the_floor_hold() {
        let mut g = Gradient::new(64, 8, 4096);
        let t = Instant::now();
        assert_eq!(g.update(t, Some(MS), 64, 32), 32);
        for k in 1..40 {
            g.update(
                t + LIMIT_INTERVAL * k,
                Some(Duration::from_secs(1)),
                64,
                4096,
            );
        }
        assert_eq!(g.limit(), 8);
    }

    #[tokio::test]
    async fn sheddable_is_refused_before_default_and_critical_keeps_its_share() {
        let limiter = Limiter::new(20);
        let mut held = Vec::new();
        while let Some(p) = limiter.try_acquire(Priority::Sheddable) {
            held.push(p);
        }
        assert_eq!(held.len(), 15, "three quarters of 20");
        while let Some(p) = limiter.try_acquire(Priority::Default) {
            held.push(p);
        }
        assert_eq!(held.len(), 18, "nine tenths of 20");
        while let Some(p) = limiter.try_acquire(Priority::Critical) {
            held.push(p);
        }
        assert_eq!(held.len(), 20);
        held.pop();
        assert!(limiter.try_acquire(Priority::Default).is_none());
        assert!(limiter.try_acquire(Priority::Critical).is_some());
    }

    #[tokio::test]
    async fn a_release_wakes_the_highest_priority_waiter_first() {
        // Stream ceilings at 100: CRITICAL 75, SHEDDABLE 56 (a quarter of 75 kept).
        let limiter = Limiter::new(100);
        assert_eq!(limiter.stream_ceiling(Priority::Critical), 75);
        assert_eq!(limiter.stream_ceiling(Priority::Sheddable), 56);
        let mut held: Vec<_> = (0..100)
            .map(|_| limiter.try_acquire(Priority::Critical).unwrap())
            .collect();
        // One message per waiter, two waiters.
        const WAITERS: usize = 2;
        let (order_tx, mut order) = tokio::sync::mpsc::channel(WAITERS);
        let mut waiters = Vec::new();
        for (priority, name) in [
            (Priority::Sheddable, "sheddable"),
            (Priority::Critical, "critical"),
        ] {
            let (limiter, tx) = (limiter.clone(), order_tx.clone());
            waiters.push(tokio::spawn(async move {
                let permit = limiter.acquire(priority).await;
                tx.send(name).await.unwrap();
                permit
            }));
        }
        // Both are waiting once the counters say so (they register before awaiting).
        while limiter
            .waiting
            .iter()
            .map(|w| w.load(Ordering::Acquire))
            .sum::<usize>()
            < 2
        {
            tokio::task::yield_now().await;
        }
        held.truncate(74);
        assert_eq!(order.recv().await, Some("critical"));
        // SHEDDABLE waits until in-flight is under its share: 75 in flight, then 55.
        held.truncate(54);
        assert_eq!(order.recv().await, Some("sheddable"));
        for w in waiters {
            drop(w.await.unwrap());
        }
    }

    #[test]
    fn unary_calls_keep_room_however_low_the_limit() {
        let limiter = Limiter::new(32);
        assert_eq!(limiter.ceiling(Priority::Default), 28);
        assert_eq!(limiter.stream_ceiling(Priority::Default), 12);
        let limiter = Limiter::new(8);
        assert_eq!(limiter.stream_ceiling(Priority::Default), 1);
    }

    #[test]
    fn a_stall_is_a_sample_even_with_nothing_finished() {
        let limiter = Limiter::new(10);
        let t = Instant::now();
        assert_eq!(limiter.take_sample(t, t), None, "idle");
        let _p = limiter.try_acquire(Priority::Default).unwrap();
        let later = t + Duration::from_secs(1);
        assert_eq!(limiter.take_sample(later, t), Some(Duration::from_secs(1)));
        limiter.record(3 * MS);
        limiter.record(MS);
        limiter.record(2 * MS);
        assert_eq!(limiter.take_sample(later, t), Some(2 * MS));
    }
}
