//! Overload control that tunes itself. The mechanisms are pure and tested on their own;
//! [`Overload`] is the state the ingress layer (`ingress/overload.rs`) consults per
//! transaction, and [`Overload::run`] the controller that moves it:
//!
//! - [`limit`]: the adaptive concurrency limit (every 250 ms) and the priority shares of it;
//! - [`clients`]: per-client token buckets;
//! - [`level`]: degradation levels (every second), with hysteresis;
//! - [`bottleneck`]: which hop the slowest transactions wait on (every second);
//! - [`partition`]: each audit partition's own level and share of the limit, so one that
//!   stalls is charged for what it holds;
//! - [`priority`]: which clients may claim CRITICAL (`--priority-policy`).
//!
//! **Clocks.** Every control reads the mesh's own time on the gateway's monotonic clock
//! (`Instant`): a transaction's latency runs from admission (or arrival, for the bottleneck's
//! admission share) to the moment its outcome is *ready* — never the time the outcome then
//! waits for the client to read it (`ingress/stream.rs` collects outcomes whether or not the
//! client reads).
//!
//! Every bound here is a named constant in its module; ARCHITECTURE.md lists them.

pub mod bottleneck;
pub mod clients;
pub mod level;
pub mod limit;
pub mod partition;
pub mod priority;

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;

use bottleneck::{Detector, Hop, Split};
use clients::{ClientRate, Clients};
use level::{Levels, Signals};
use limit::{Gradient, Limiter};
use partition::Health;
use priority::PriorityPolicy;
use sluice_proto::pb::Priority;

/// How the concurrency limit is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LimitMode {
    /// Follows the latency of admitted transactions (see `overload::limit`).
    Adaptive,
    /// Fixed at --concurrency-max (for comparison).
    Static,
}

/// Whether degradation levels act.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Degradation {
    On,
    Off,
}

/// Overload settings (checked flags).
#[derive(Debug, Clone)]
pub struct OverloadConfig {
    pub mode: LimitMode,
    pub min_limit: usize,
    pub max_limit: usize,
    pub client_rate: Option<ClientRate>,
    pub latency_slo: Duration,
    pub degradation: Degradation,
    pub priority_policy: PriorityPolicy,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            mode: LimitMode::Adaptive,
            min_limit: limit::DEFAULT_MIN_LIMIT,
            max_limit: limit::DEFAULT_MAX_LIMIT,
            client_rate: None,
            latency_slo: level::DEFAULT_LATENCY_SLO,
            degradation: Degradation::On,
            priority_policy: PriorityPolicy::default(),
        }
    }
}

/// One required hop's load now.
#[derive(Debug, Clone, Copy, Default)]
pub struct HopLoad {
    /// Its queue's fill, 0..=1.
    pub fill: f64,
    /// Requests queued for it or sent and unanswered.
    pub outstanding: u64,
}

/// The required hops' loads now: risk, logging.
pub type HopLoads = Box<dyn Fn() -> [HopLoad; 2] + Send + Sync>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HopLabels {
    hop: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    partition: u32,
}

/// What one audit partition holds now, kept by [`PartitionHold`]s.
#[derive(Default)]
struct PartLoad {
    /// Transactions of this partition holding a concurrency-limit slot.
    inflight: AtomicUsize,
    /// When `inflight` last rose from 0 (ns after `Inner::epoch`).
    busy_since: AtomicU64,
    /// When one of its transactions last finished OK (ns after `Inner::epoch`): progress.
    last_done: AtomicU64,
    /// Its own degradation level ([`partition`]).
    level: AtomicU8,
    /// Told when one of its places is given back (stream messages wait on it).
    freed: tokio::sync::Notify,
}

/// One transaction's place in its partition's [`PartLoad`], given back on drop.
pub struct PartitionHold {
    overload: Overload,
    partition: u32,
}

impl PartitionHold {
    /// Its transaction finished OK: the partition made progress. (A quick refusal or a
    /// deadline is not progress: a stalled partition refuses or times out everything.)
    pub fn progressed(&self) {
        let inner = &self.overload.inner;
        let part = &inner.parts[self.partition as usize];
        part.last_done
            .store(inner.nanos(Instant::now()), Ordering::Release);
    }
}

impl Drop for PartitionHold {
    fn drop(&mut self) {
        let part = &self.overload.inner.parts[self.partition as usize];
        part.inflight.fetch_sub(1, Ordering::AcqRel);
        part.freed.notify_one();
    }
}

/// The overload state shared by ingress and the controller.
#[derive(Clone)]
pub struct Overload {
    inner: Arc<Inner>,
}

struct Inner {
    config: OverloadConfig,
    limiter: Arc<Limiter>,
    level: AtomicU8,
    clients: Option<Clients>,
    /// This period's finished transactions, split by hop (a bounded reservoir).
    splits: Mutex<Vec<Split>>,
    seen: AtomicU64,
    hops: HopLoads,
    limit_gauge: Gauge,
    baseline_gauge: Gauge<f64, std::sync::atomic::AtomicU64>,
    level_gauge: Gauge,
    bottleneck: Family<HopLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// One per audit partition, in order.
    parts: Box<[PartLoad]>,
    part_level_gauge: Family<PartitionLabels, Gauge>,
    /// The zero of the partitions' timestamps.
    epoch: Instant,
    demoted: Counter,
}

impl Inner {
    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }
}

/// Periods between trims of the client buckets (and re-choosing the named clients).
const CLIENT_TRIM_PERIODS: u64 = 10;

impl Overload {
    /// `partitions`: how many audit partitions transactions are spread over (at least 1).
    pub fn new(
        config: OverloadConfig,
        registry: &mut Registry,
        hops: HopLoads,
        partitions: usize,
    ) -> Self {
        let initial = match config.mode {
            LimitMode::Adaptive => limit::INITIAL_LIMIT.clamp(config.min_limit, config.max_limit),
            LimitMode::Static => config.max_limit,
        };
        let inner = Inner {
            limiter: Limiter::new(initial),
            level: AtomicU8::new(0),
            clients: config.client_rate.map(|r| Clients::new(r, registry)),
            splits: Mutex::new(Vec::new()),
            seen: AtomicU64::new(0),
            hops,
            limit_gauge: Gauge::default(),
            baseline_gauge: Gauge::default(),
            level_gauge: Gauge::default(),
            bottleneck: Family::default(),
            parts: (0..partitions.max(1))
                .map(|_| PartLoad::default())
                .collect(),
            part_level_gauge: Family::default(),
            epoch: Instant::now(),
            demoted: Counter::default(),
            config,
        };
        registry.register(
            "partition_degradation_level",
            "Each audit partition's own degradation level (from its own transactions' latency): 2 refuses its SHEDDABLE transactions, 3 all of its transactions",
            inner.part_level_gauge.clone(),
        );
        registry.register(
            "priority_demoted",
            "CRITICAL claims taken as DEFAULT: the client is not granted CRITICAL by --priority-policy",
            inner.demoted.clone(),
        );
        for p in 0..inner.parts.len() as u32 {
            let _ = inner
                .part_level_gauge
                .get_or_create(&PartitionLabels { partition: p });
        }
        registry.register(
            "concurrency_limit",
            "Most transactions admitted and unanswered, both APIs together (adaptive: follows latency against its baseline)",
            inner.limit_gauge.clone(),
        );
        registry.register(
            "concurrency_baseline_seconds",
            "The adaptive limit's baseline: the lowest interval median latency of the last 10 s",
            inner.baseline_gauge.clone(),
        );
        registry.register(
            "degradation_level",
            "0 normal; 1 notification skipped but for CRITICAL; 2 SHEDDABLE refused, limit ceiling halved; 3 unary writes refused",
            inner.level_gauge.clone(),
        );
        registry.register(
            "bottleneck",
            "The hop named the bottleneck: its share of p99 latency (0 for every other hop)",
            inner.bottleneck.clone(),
        );
        inner.limit_gauge.set(initial as i64);
        for hop in Hop::ALL {
            let _ = inner
                .bottleneck
                .get_or_create(&HopLabels { hop: hop.label() });
        }
        Self {
            inner: Arc::new(inner),
        }
    }

    pub fn config(&self) -> &OverloadConfig {
        &self.inner.config
    }

    pub fn limiter(&self) -> &Arc<Limiter> {
        &self.inner.limiter
    }

    pub fn clients(&self) -> Option<&Clients> {
        self.inner.clients.as_ref()
    }

    /// The degradation level now (0 when degradation is off).
    pub fn level(&self) -> u8 {
        self.inner.level.load(Ordering::Acquire)
    }

    /// How many audit partitions there are.
    pub fn partitions(&self) -> u32 {
        self.inner.parts.len() as u32
    }

    /// Transaction `id`'s audit partition (the logging route's rule).
    pub fn partition_of(&self, id: &str) -> u32 {
        sluice_proto::partition::of(id, self.partitions())
    }

    /// Partition `partition`'s own degradation level (0 when degradation is off).
    pub fn partition_level(&self, partition: u32) -> u8 {
        self.inner.parts[partition as usize]
            .level
            .load(Ordering::Acquire)
    }

    /// A place for one transaction of `partition` within its share of the limit
    /// ([`partition::share_cap`]), or that share when it is full.
    pub fn hold_partition(&self, partition: u32) -> Result<PartitionHold, usize> {
        let inner = &self.inner;
        let part = &inner.parts[partition as usize];
        let cap = partition::share_cap(inner.limiter.limit(), inner.parts.len());
        let before = part
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < cap).then_some(n + 1)
            })
            .map_err(|_| cap)?;
        if before == 0 {
            part.busy_since
                .store(inner.nanos(Instant::now()), Ordering::Release);
        }
        Ok(PartitionHold {
            overload: self.clone(),
            partition,
        })
    }

    /// Resolves when one of `partition`'s places is given back.
    pub fn partition_freed(&self, partition: u32) -> tokio::sync::futures::Notified<'_> {
        self.inner.parts[partition as usize].freed.notified()
    }

    /// Whether the adaptive limit learns from `partition`'s latency: not while the
    /// partition is singled out (its own level above the gateway's).
    pub fn limit_learns_from(&self, partition: u32) -> bool {
        self.partition_level(partition) <= self.level()
    }

    /// The priority `client`'s `claimed` one is taken as under `--priority-policy`;
    /// a demotion is counted.
    pub fn priority(&self, client: Option<&str>, claimed: Priority) -> Priority {
        let allowed = self.inner.config.priority_policy.allowed(client, claimed);
        if allowed != claimed {
            self.inner.demoted.inc();
        }
        allowed
    }

    /// True when the priority policy needs the client named to decide `claimed`.
    pub fn needs_client_for(&self, claimed: i32) -> bool {
        claimed == Priority::Critical as i32 && !self.inner.config.priority_policy.trusts_everyone()
    }

    /// Records one finished transaction's latency split.
    pub fn finished(&self, split: Split) {
        let seen = self.inner.seen.fetch_add(1, Ordering::Relaxed) as usize;
        let mut splits = self.inner.splits.lock().expect("splits lock");
        if splits.len() < bottleneck::MAX_SAMPLES {
            splits.push(split);
        } else {
            splits[seen % bottleneck::MAX_SAMPLES] = split;
        }
    }

    /// The controller: the limit every [`limit::LIMIT_INTERVAL`], the level, the bottleneck
    /// and the client buckets every [`level::PERIOD`]. Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let inner = &self.inner;
        let mut gradient = Gradient::new(
            inner.limiter.limit(),
            inner.config.min_limit,
            inner.config.max_limit,
        )
        .with_buffer(inner.config.latency_slo / limit::SLO_BUFFER_DIVISOR);
        let mut levels = Levels::default();
        let mut health: Vec<Health> = (0..inner.parts.len()).map(|_| Health::default()).collect();
        let mut detector = Detector::default();
        let mut tick = tokio::time::interval(limit::LIMIT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ticks_per_period =
            (level::PERIOD.as_millis() / limit::LIMIT_INTERVAL.as_millis()).max(1) as u64;
        let mut interval_start = Instant::now();
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let now = Instant::now();
            ticks += 1;
            let sample = inner.limiter.take_sample(now, interval_start);
            interval_start = now;
            if inner.config.mode == LimitMode::Adaptive {
                let ceiling = if self.level() >= 2 {
                    inner.config.max_limit / 2
                } else {
                    inner.config.max_limit
                };
                let limit = gradient.update(now, sample, inner.limiter.inflight(), ceiling);
                inner.limiter.set_limit(limit);
                inner.limit_gauge.set(limit as i64);
                if let Some(b) = gradient.baseline() {
                    inner.baseline_gauge.set(b.as_secs_f64());
                }
            }
            if !ticks.is_multiple_of(ticks_per_period) {
                continue;
            }
            self.period(now, &mut levels, &mut health, &mut detector);
            if let Some(clients) = &inner.clients
                && ticks.is_multiple_of(ticks_per_period * CLIENT_TRIM_PERIODS)
            {
                clients.trim();
            }
        }
    }

    /// Each partition's latency signal this period (None: idle), its level moved.
    fn partition_health(
        &self,
        now: Instant,
        splits: &[Split],
        health: &mut [Health],
    ) -> Vec<Option<Duration>> {
        let inner = &self.inner;
        let mut by_part: Vec<Vec<Split>> = vec![Vec::new(); inner.parts.len()];
        for split in splits {
            if let Some(part) = by_part.get_mut(split.partition as usize) {
                part.push(*split);
            }
        }
        let at = inner.nanos(now);
        let mut signals = Vec::with_capacity(inner.parts.len());
        for (p, ((load, health), done)) in inner.parts.iter().zip(health).zip(by_part).enumerate() {
            let p99 = (!done.is_empty()).then(|| bottleneck::admitted_p99(&done));
            let stalled = (load.inflight.load(Ordering::Acquire) > 0).then(|| {
                let since = load
                    .busy_since
                    .load(Ordering::Acquire)
                    .max(load.last_done.load(Ordering::Acquire));
                Duration::from_nanos(at.saturating_sub(since))
            });
            let (latency, changed) = health.observe(p99, stalled, inner.config.latency_slo);
            signals.push(latency);
            if inner.config.degradation == Degradation::On
                && let Some(level) = changed
            {
                let before = load.level.swap(level, Ordering::AcqRel);
                inner
                    .part_level_gauge
                    .get_or_create(&PartitionLabels {
                        partition: p as u32,
                    })
                    .set(i64::from(level));
                tracing::warn!(
                    partition = p,
                    from = before,
                    to = level,
                    latency_ms = latency.unwrap_or_default().as_secs_f64() * 1000.0,
                    "audit partition {p}: degradation level {before} → {level}"
                );
            }
        }
        signals
    }

    /// One period: the level and the bottleneck from what finished in it.
    fn period(
        &self,
        now: Instant,
        levels: &mut Levels,
        health: &mut [Health],
        detector: &mut Detector,
    ) {
        let inner = &self.inner;
        let mut splits = std::mem::take(&mut *inner.splits.lock().expect("splits lock"));
        let (p99, candidate) = bottleneck::candidate(&mut splits);
        let [risk, logging] = (inner.hops)();
        // Nothing finished while work is in flight: the stall is the latency.
        let stalled = (splits.is_empty() && inner.limiter.inflight() > 0).then(|| {
            inner
                .limiter
                .since_last_completion(now)
                .unwrap_or(level::PERIOD)
        });
        let latency = stalled.unwrap_or(p99);
        // The level looks at what the mesh does with admitted work: time waiting to be
        // admitted is a SubmitStream's backpressure doing its job (it says so in the
        // bottleneck), and must not get polite unary callers refused.
        let mut admitted = stalled.unwrap_or_else(|| bottleneck::admitted_p99(&splits));
        if inner.parts.len() > 1 {
            // Each partition by its own transactions; the gateway by the healthiest.
            let partitions = self.partition_health(now, &splits, health);
            admitted = partition::gateway_latency(&partitions).unwrap_or_default();
        }
        // A stall finishes nothing to split: the hop holding the work is the candidate.
        let candidate = match stalled {
            Some(_) => bottleneck::holding(risk.outstanding, logging.outstanding),
            None => candidate,
        };
        let slo = inner.config.latency_slo;
        if inner.config.degradation == Degradation::On {
            let signals = Signals {
                latency: admitted,
                queue_fill: risk.fill.max(logging.fill),
            };
            if let Some(level) = levels.observe(level::asked(signals, slo)) {
                let before = inner.level.swap(level, Ordering::AcqRel);
                inner.level_gauge.set(level as i64);
                tracing::warn!(
                    from = before,
                    to = level,
                    p99_ms = signals.latency.as_secs_f64() * 1000.0,
                    queue_fill = signals.queue_fill,
                    "degradation level {before} → {level}"
                );
            }
        }
        if detector.observe(latency, candidate, slo) {
            match detector.named() {
                Some(c) => tracing::warn!(
                    hop = c.hop.label(),
                    share = c.share,
                    "bottleneck: {}, {:.0} % of p99 ({:.1} ms)",
                    c.hop.label(),
                    c.share * 100.0,
                    latency.as_secs_f64() * 1000.0
                ),
                None => tracing::info!("bottleneck cleared"),
            }
        }
        let named = detector.named();
        for hop in Hop::ALL {
            let share = named.filter(|c| c.hop == hop).map_or(0.0, |c| c.share);
            inner
                .bottleneck
                .get_or_create(&HopLabels { hop: hop.label() })
                .set(share);
        }
    }
}
