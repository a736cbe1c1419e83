//! Recording results and reporting them: text for people, JSON ([`json`]) for checks, HTML
//! ([`html`]) to look at, and the [`audit`] check of what was acknowledged against the log.
//! Each report names the transactions behind its figures, with their traces ([`exemplars`]).
//!
//! Latency goes into an HDR histogram (microsecond resolution, up to an hour) — exact
//! percentiles at a fixed memory cost, unlike a hand-rolled bucket list. The breakdowns (by
//! priority with a priority mix, by step of a stepped schedule) are a fixed number of
//! tallies, one histogram each, never a list per transaction.

pub mod audit;
pub mod exemplars;
pub mod html;
pub mod json;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use opentelemetry::trace::TraceId;
use serde::Serialize;
use sluice_proto::pb::{Decision, NotificationStatus, Outcome, Priority};

use crate::admin::metrics::{Bottleneck, DEGRADATION_LEVELS};
use crate::drive::schedule::Arrivals;
use crate::drive::stalls::Stalls;
use exemplars::{DEFAULT_FAILED, DEFAULT_SLOWEST, Exemplar, Noted, TopK, TraceLinks};

/// One acknowledged transaction: its id and where its audit record is (partition, offset).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Acked {
    pub id: String,
    pub offset: u64,
    /// Reports written before partitions existed have none: partition 0.
    #[serde(default)]
    pub partition: u32,
}

/// Which transaction a result belongs to: its id, the trace it carried, and what places it
/// in the breakdowns (its priority, when it was due).
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub id: &'a str,
    /// The trace id of the `traceparent` it was sent with, if any.
    pub trace_id: Option<TraceId>,
    /// The priority it was sent with (DEFAULT when the run has no priority mix).
    pub priority: Priority,
    /// Its intended send time, from the start of the run: which step of the schedule it
    /// belongs to.
    pub due: Duration,
}

/// Most schedule segments the report breaks down step by step (each costs one histogram of
/// about 25 KiB); a longer profile (a schedule file of many ramps) is reported whole.
pub const MAX_STEPS: usize = 32;

/// The priorities in the order the report lists them.
pub const PRIORITY_ORDER: [Priority; 3] =
    [Priority::Critical, Priority::Default, Priority::Sheddable];

/// A priority's name in reports: `CRITICAL`, `DEFAULT`, `SHEDDABLE`.
pub fn priority_name(priority: Priority) -> &'static str {
    priority.as_str_name().trim_start_matches("PRIORITY_")
}

fn priority_slot(priority: Priority) -> usize {
    match priority {
        Priority::Critical => 0,
        Priority::Default => 1,
        Priority::Sheddable => 2,
    }
}

/// The results of one share of a run (a priority, a step of the schedule): counts and one
/// HDR histogram of the OK transactions' latency, a fixed size however long the run.
struct Tally {
    ok: u64,
    errors: BTreeMap<String, u64>,
    /// OK transactions only: what an accepted transaction waited. Two significant digits
    /// (1 %) are plenty for a p50 and a p99 and keep each tally near 25 KiB.
    ok_latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            ok: 0,
            errors: BTreeMap::new(),
            ok_latency: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("valid histogram bounds"),
        }
    }

    /// One result: `error` is `None` for OK, else its code name (`NO_OUTCOME` included).
    fn record(&mut self, error: Option<&str>, micros: u64) {
        match error {
            None => {
                self.ok += 1;
                let _ = self.ok_latency.record(micros.max(1));
            }
            Some(code) => *self.errors.entry(code.to_string()).or_default() += 1,
        }
    }

    fn figures(&self) -> ShareFigures {
        let ms = |q: f64| self.ok_latency.value_at_quantile(q) as f64 / 1000.0;
        ShareFigures {
            sent: self.ok + self.errors.values().sum::<u64>(),
            ok: self.ok,
            errors: self.errors.clone(),
            ok_p50_ms: ms(0.5),
            ok_p99_ms: ms(0.99),
        }
    }
}

/// Everything measured during a run.
pub struct Recorder {
    latency: Histogram<u64>,
    pub ok: u64,
    pub decisions: BTreeMap<String, u64>,
    pub notifications: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
    pub acked: Vec<Acked>,
    pub blocked: Duration,
    /// Transactions counted as NO_OUTCOME that were still waiting, past their deadline,
    /// when the run ended.
    pub hung: u64,
    /// The slowest transactions with an outcome (at most [`DEFAULT_SLOWEST`]).
    slowest: TopK<Noted>,
    /// The first transactions that failed (at most [`DEFAULT_FAILED`]).
    failed: Vec<Noted>,
    /// With a priority mix: one tally per priority, in [`PRIORITY_ORDER`].
    by_priority: Option<[Tally; 3]>,
    /// With a stepped schedule: the profile and one tally per segment.
    steps: Option<(Arc<Arrivals>, Vec<Tally>)>,
}

/// The error code of a sent transaction that never got an outcome: its stream ended, its
/// connection broke, or the run ended first. Not a gRPC code: nobody answered.
pub const NO_OUTCOME: &str = "NO_OUTCOME";

/// A SubmitStream that ended with an error status or with transactions unanswered.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamEnd {
    /// Seconds since the run started.
    pub t: f64,
    /// Which of the run's streams (one per connection).
    pub stream: usize,
    /// The terminal status: `OK` or a gRPC code name.
    pub code: String,
    /// The terminal status's message, e.g. `shutting down: 132 messages not read`.
    pub message: String,
    /// Transactions the stream took and never answered (counted as `NO_OUTCOME`).
    pub without_outcome: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("valid histogram bounds"),
            ok: 0,
            decisions: BTreeMap::new(),
            notifications: BTreeMap::new(),
            errors: BTreeMap::new(),
            acked: Vec::new(),
            blocked: Duration::ZERO,
            hung: 0,
            slowest: TopK::new(DEFAULT_SLOWEST),
            failed: Vec::with_capacity(DEFAULT_FAILED),
            by_priority: None,
            steps: None,
        }
    }
}

/// gRPC code name as used in reports, e.g. `UNAVAILABLE`.
pub fn code_name(code: tonic::Code) -> String {
    let debug = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

impl Recorder {
    /// Also breaks results down by priority (the run sends a priority mix).
    pub fn with_priorities(mut self) -> Self {
        self.by_priority = Some([Tally::new(), Tally::new(), Tally::new()]);
        self
    }

    /// Also breaks results down by the segment of `profile` each transaction was due in,
    /// when it has 2 to [`MAX_STEPS`] segments.
    pub fn with_steps(mut self, profile: Arc<Arrivals>) -> Self {
        let n = profile.segments.len();
        if (2..=MAX_STEPS).contains(&n) {
            self.steps = Some((profile, (0..n).map(|_| Tally::new()).collect()));
        }
        self
    }

    /// Counts a result in the breakdowns `txn` belongs to.
    fn tally(&mut self, txn: Sent<'_>, error: Option<&str>, micros: u64) {
        if let Some(by_priority) = &mut self.by_priority {
            by_priority[priority_slot(txn.priority)].record(error, micros);
        }
        if let Some((profile, steps)) = &mut self.steps
            && let Some(i) = profile.segment_at(txn.due.as_secs_f64())
        {
            steps[i].record(error, micros);
        }
    }

    /// Records a finished transaction: an Outcome (which may carry a per-message error) or
    /// a call status.
    pub fn record(
        &mut self,
        txn: Sent<'_>,
        result: Result<&Outcome, &tonic::Status>,
        latency: Duration,
    ) {
        let micros = (latency.as_micros() as u64).max(1);
        let _ = self.latency.record(micros);
        let (code, message) = match result {
            Ok(outcome) => match &outcome.error {
                Some(e) => (tonic::Code::from_i32(e.code), e.message.as_str()),
                None => {
                    self.record_ok(outcome);
                    (tonic::Code::Ok, "")
                }
            },
            Err(status) => (status.code(), status.message()),
        };
        let error = (code != tonic::Code::Ok).then(|| code_name(code));
        self.tally(txn, error.as_deref(), micros);
        let noted = || Noted {
            id: txn.id.to_string(),
            trace_id: txn.trace_id,
            code: code_name(code),
            message: message.to_string(),
            latency: Some(latency),
        };
        // Ranked by the exact latency (the one reported), not the histogram's microseconds:
        // two in the same microsecond would tie and come out in arrival order.
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.slowest.offer(nanos, noted);
        if let Some(error) = error {
            if self.failed.len() < DEFAULT_FAILED {
                self.failed.push(noted());
            }
            *self.errors.entry(error).or_default() += 1;
        }
    }

    fn record_ok(&mut self, outcome: &Outcome) {
        self.ok += 1;
        let decision = Decision::try_from(outcome.decision).unwrap_or_default();
        *self
            .decisions
            .entry(decision.as_str_name().to_string())
            .or_default() += 1;
        let n = NotificationStatus::try_from(outcome.notification).unwrap_or_default();
        *self
            .notifications
            .entry(n.as_str_name().to_string())
            .or_default() += 1;
        self.acked.push(Acked {
            id: outcome.id.clone(),
            offset: outcome.audit_offset,
            partition: outcome.audit_partition,
        });
    }

    /// Records a sent transaction that will get no outcome (no latency: it never finished),
    /// and `why`; `hung` when it was still waiting past its deadline as the run ended.
    pub fn record_no_outcome(&mut self, txn: Sent<'_>, why: &str, hung: bool) {
        *self.errors.entry(NO_OUTCOME.to_string()).or_default() += 1;
        self.tally(txn, Some(NO_OUTCOME), 0);
        if hung {
            self.hung += 1;
        }
        if self.failed.len() < DEFAULT_FAILED {
            self.failed.push(Noted {
                id: txn.id.to_string(),
                trace_id: txn.trace_id,
                code: NO_OUTCOME.to_string(),
                message: why.to_string(),
                latency: None,
            });
        }
    }

    /// Transactions recorded with an outcome.
    pub fn count(&self) -> u64 {
        self.latency.len()
    }

    /// The latency at `q` (0..1) so far.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(q))
    }

    /// Errors recorded so far.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Each priority's figures, in [`PRIORITY_ORDER`] (empty without a priority mix).
    fn priority_figures(&self) -> Vec<PriorityFigures> {
        let Some(tallies) = &self.by_priority else {
            return Vec::new();
        };
        PRIORITY_ORDER
            .iter()
            .zip(tallies)
            .map(|(p, t)| PriorityFigures {
                priority: priority_name(*p).to_string(),
                figures: t.figures(),
            })
            .collect()
    }

    /// Each step's figures, in schedule order (empty unless the schedule has steps).
    fn step_figures(&self) -> Vec<StepFigures> {
        let Some((profile, tallies)) = &self.steps else {
            return Vec::new();
        };
        profile
            .segments
            .iter()
            .zip(tallies)
            .enumerate()
            .map(|(i, (segment, t))| StepFigures {
                start_s: profile.segment_start(i),
                duration_s: segment.duration.as_secs_f64(),
                from_rate: segment.from,
                to_rate: segment.to,
                figures: t.figures(),
            })
            .collect()
    }

    /// The final report.
    pub fn report(&self, run: RunInfo) -> Report {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        let secs = run.measured_seconds.max(1e-9);
        let degradation = degradation(&run.timeline);
        let bottleneck = bottleneck_named(&run.timeline);
        Report {
            schema_version: json::REPORT_SCHEMA_VERSION,
            mode: run.mode,
            loop_kind: run.loop_kind,
            target_rate: run.target_rate,
            achieved_rate: self.count() as f64 / secs,
            ok_rate: self.ok as f64 / secs,
            measured_seconds: run.measured_seconds,
            sent: run.sent,
            completed: self.count(),
            ok: self.ok,
            decisions: self.decisions.clone(),
            notifications: self.notifications.clone(),
            errors: self.errors.clone(),
            latency_ms: LatencyMs {
                p50: ms(0.5),
                p90: ms(0.9),
                p99: ms(0.99),
                p999: ms(0.999),
                max: self.latency.max() as f64 / 1000.0,
                mean: self.latency.mean() / 1000.0,
            },
            blocked_send_seconds: self.blocked.as_secs_f64(),
            scheduled: run.scheduled,
            percentiles: PERCENTILES
                .iter()
                .map(|&q| Percentile {
                    quantile: q,
                    ms: self.latency.value_at_quantile(q) as f64 / 1000.0,
                })
                .collect(),
            late_sends: run.late,
            throttled: run.throttled,
            by_priority: self.priority_figures(),
            steps: self.step_figures(),
            degradation_max: degradation.map(|(max, _)| max),
            degradation_seconds: degradation.map(|(_, seconds)| seconds),
            bottleneck,
            stalls: run.stalls,
            timeline: run.timeline,
            hung: self.hung,
            stream_ends: run.stream_ends,
            slowest: self
                .slowest
                .sorted()
                .into_iter()
                .map(|n| n.exemplar(run.trace_links.as_ref()))
                .collect(),
            failed: self
                .failed
                .iter()
                .map(|n| n.exemplar(run.trace_links.as_ref()))
                .collect(),
            acked: self.acked.clone(),
        }
    }
}

/// Facts about the run that the recorder does not know.
pub struct RunInfo {
    pub mode: String,
    pub loop_kind: String,
    pub target_rate: Option<f64>,
    pub measured_seconds: f64,
    pub sent: u64,
    pub timeline: Vec<TimelinePoint>,
    /// Open loop: sends the schedule asked for while the run was sending.
    pub scheduled: Option<u64>,
    /// Sends that went out more than 5 ms after their due time.
    pub late: u64,
    /// Calls the client's own throttle refused (`--client-throttle`): never sent.
    pub throttled: u64,
    /// SubmitStreams that ended with an error or with transactions unanswered.
    pub stream_ends: Vec<StreamEnd>,
    /// Where trace ids link to, if anywhere.
    pub trace_links: Option<TraceLinks>,
    /// The stall probe's count over the measured time.
    pub stalls: Option<Stalls>,
}

/// What one share of a run (a priority, a step of the schedule) sent and got back.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ShareFigures {
    /// Transactions of this share with a result: `ok` plus every error, `NO_OUTCOME`
    /// included (warmup excluded).
    pub sent: u64,
    pub ok: u64,
    /// Failures by gRPC code name, and `NO_OUTCOME`.
    pub errors: BTreeMap<String, u64>,
    /// Latency of the OK ones only (what an accepted transaction waited), ms.
    pub ok_p50_ms: f64,
    pub ok_p99_ms: f64,
}

impl ShareFigures {
    /// The columns under [`ShareFigures::HEADER`].
    pub const HEADER: &str = "       sent        ok  ok p50 ms  ok p99 ms  errors";

    /// One row under [`ShareFigures::HEADER`], after a label.
    pub fn line(&self) -> String {
        format!(
            "{:>11} {:>9} {:>10.2} {:>10.2}  {}",
            self.sent,
            self.ok,
            self.ok_p50_ms,
            self.ok_p99_ms,
            counts(&self.errors)
        )
    }
}

/// One priority's figures (runs with a priority mix).
#[derive(Debug, Clone, Serialize)]
pub struct PriorityFigures {
    /// `CRITICAL`, `DEFAULT` or `SHEDDABLE`.
    pub priority: String,
    #[serde(flatten)]
    pub figures: ShareFigures,
}

/// One step of a stepped schedule, by the transactions due in it (runs with 2 to
/// [`MAX_STEPS`] segments).
#[derive(Debug, Clone, Serialize)]
pub struct StepFigures {
    /// Seconds from the start of the run (warmup included).
    pub start_s: f64,
    pub duration_s: f64,
    /// The offered rate at its start and end (equal for a step, not for a ramp).
    pub from_rate: f64,
    pub to_rate: f64,
    #[serde(flatten)]
    pub figures: ShareFigures,
}

/// `KEY n, KEY n` (or `-` when empty): errors, decisions and the like in one line.
pub fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        "-".to_string()
    } else {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What `bottleneck` says when the gateway never named one.
pub const NO_BOTTLENECK: &str = "none";

/// The hop the gateway named as its bottleneck most often over a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BottleneckSeen {
    /// `admission`, `risk`, `logging`, or [`NO_BOTTLENECK`].
    pub hop: String,
    /// Its mean share of the gateway's p99 over the intervals that named it (0..1).
    pub share: f64,
    /// Intervals that named it, of the intervals whose scrape succeeded.
    pub intervals: usize,
    pub of_intervals: usize,
}

impl BottleneckSeen {
    /// `logging, 71 % of p99 (named in 9 of 16 intervals)`, or `none (16 intervals)`.
    pub fn describe(&self) -> String {
        if self.intervals == 0 {
            return format!("{} ({} intervals)", self.hop, self.of_intervals);
        }
        format!(
            "{}, {:.0} % of p99 (named in {} of {} intervals)",
            self.hop,
            100.0 * self.share,
            self.intervals,
            self.of_intervals
        )
    }
}

/// The highest degradation level over `timeline` and the seconds spent at each level;
/// `None` when no interval has one (no `--metrics`, or a gateway without overload control).
pub fn degradation(timeline: &[TimelinePoint]) -> Option<(u8, [f64; DEGRADATION_LEVELS])> {
    let mut seconds = [0.0; DEGRADATION_LEVELS];
    let mut max: Option<u8> = None;
    let mut from = 0.0;
    for p in timeline {
        if let Some(level) = p.degradation_level {
            seconds[usize::from(level).min(DEGRADATION_LEVELS - 1)] += p.t - from;
            max = max.max(Some(level));
        }
        from = p.t;
    }
    max.map(|max| (max, seconds))
}

/// The hop the gateway named most often over `timeline` (ties: the larger total share);
/// [`NO_BOTTLENECK`] when it named none; `None` when no scrape succeeded.
pub fn bottleneck_named(timeline: &[TimelinePoint]) -> Option<BottleneckSeen> {
    let scraped = timeline.iter().filter(|p| p.queues.is_some()).count();
    if scraped == 0 {
        return None;
    }
    let mut hops: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for b in timeline.iter().filter_map(|p| p.bottleneck.as_ref()) {
        let (n, total) = hops.entry(b.hop.as_str()).or_default();
        *n += 1;
        *total += b.share;
    }
    let most = hops
        .into_iter()
        .max_by(|(_, a), (_, b)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    Some(match most {
        Some((hop, (n, total))) => BottleneckSeen {
            hop: hop.to_string(),
            share: total / n as f64,
            intervals: n,
            of_intervals: scraped,
        },
        None => BottleneckSeen {
            hop: NO_BOTTLENECK.to_string(),
            share: 0.0,
            intervals: 0,
            of_intervals: scraped,
        },
    })
}

/// One second of the run (rates per second; warmup included).
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the run started (end of this interval).
    pub t: f64,
    /// Transactions due per second by the schedule (closed loop: as sent).
    pub offered: f64,
    /// Transactions actually sent per second.
    pub sent: f64,
    /// Transactions finished per second (any result).
    pub done: f64,
    pub ok: f64,
    /// RESOURCE_EXHAUSTED per second.
    pub rejected: f64,
    /// Calls the client's own throttle refused per second (`--client-throttle`; not sent).
    pub throttled: f64,
    /// Other failures per second.
    pub errors: f64,
    /// Share of the interval the generator's sends were blocked (stream window full, or no
    /// free outstanding slot).
    pub blocked_pct: f64,
    /// p50 latency of transactions finished in this interval, ms.
    pub p50_ms: f64,
    /// p99 latency of transactions finished in this interval, ms.
    pub p99_ms: f64,
    /// p99 latency of the transactions finished OK in this interval (what an accepted
    /// transaction waited, fast refusals left out), ms.
    pub ok_p99_ms: f64,
    /// With `--metrics`: the gateway's downstream queue depths (risk, logging,
    /// notification) at the end of the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<[f64; 3]>,
    /// With `--metrics`: what the gateway holds per downstream (risk, logging,
    /// notification), queued or awaiting a reply, at the end of the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<[f64; 3]>,
    /// With `--metrics`: what each downstream may hold (for the live view's bars).
    #[serde(skip)]
    pub held_bounds: Option<[f64; 3]>,
    /// In an interval in which nothing finished: how long the oldest transaction still
    /// waiting had waited (from its intended send time) at the interval's end, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_outstanding_ms: Option<f64>,
    /// With `--metrics`: the gateway's degradation level (0..=3) at the end of the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degradation_level: Option<u8>,
    /// With `--metrics`: the hop the gateway names as its bottleneck, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<Bottleneck>,
}

impl TimelinePoint {
    pub const HEADER: &str = "     t   offered      sent        ok  rejected    errors  blocked   p50 ms   p99 ms     held risk/log/ntf  deg";

    /// The live view's per-hop line: what the gateway holds for each downstream as a bar
    /// against what it may hold, FULL at 90 %, and the bottleneck it names. None without
    /// `--metrics`.
    pub fn hop_bars(&self) -> Option<String> {
        const WIDTH: usize = 10;
        let (held, bounds) = (self.held?, self.held_bounds?);
        let mut line = String::from("held");
        for ((name, held), bound) in ["risk", "log", "ntf"].iter().zip(held).zip(bounds) {
            let fill = if bound > 0.0 {
                (held / bound).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let cells = (fill * WIDTH as f64).round() as usize;
            let full = if fill >= 0.9 { " FULL" } else { "" };
            line.push_str(&format!(
                "  {name} \u{2595}{}{}\u{258f} {held:.0}/{bound:.0}{full}",
                "\u{2588}".repeat(cells),
                "\u{2591}".repeat(WIDTH - cells)
            ));
        }
        if let Some(b) = &self.bottleneck {
            line.push_str(&format!(
                "  << bottleneck: {} {:.0}%",
                b.hop,
                100.0 * b.share
            ));
        }
        Some(line)
    }

    /// One row under [`TimelinePoint::HEADER`].
    pub fn line(&self) -> String {
        // The gateway's columns, when it was scraped: queues, level ("-" from a gateway
        // without overload control), and the bottleneck when it names one.
        let gateway = self.held.or(self.queues).map_or(String::new(), |q| {
            let level = self
                .degradation_level
                .map_or("-".to_string(), |l| l.to_string());
            let bottleneck = self.bottleneck.as_ref().map_or(String::new(), |b| {
                format!("  bottleneck: {} {:.0}%", b.hop, 100.0 * b.share)
            });
            format!(
                "   {:>5.0}/{:>5.0}/{:>5.0}  {level:>5}{bottleneck}",
                q[0], q[1], q[2]
            )
        });
        format!(
            "{:>5.1}s {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>7.1}% {:>8.2} {:>8.2}{gateway}",
            self.t,
            self.offered,
            self.sent,
            self.ok,
            self.rejected,
            self.errors,
            self.blocked_pct,
            self.p50_ms,
            self.p99_ms
        )
    }
}

/// Quantiles reported in `percentiles`.
pub const PERCENTILES: [f64; 10] = [
    0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 0.99999,
];

/// One point of the latency distribution.
#[derive(Debug, Clone, Serialize)]
pub struct Percentile {
    pub quantile: f64,
    pub ms: f64,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// The run's report; the JSON form (`--json`) has exactly these fields.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// [`json::REPORT_SCHEMA_VERSION`]; bumped on any incompatible change.
    pub schema_version: u32,
    pub mode: String,
    /// `open` (fixed schedule, latency from intended send time) or `closed`.
    pub loop_kind: String,
    pub target_rate: Option<f64>,
    /// Transactions finished per second of measured time (any result).
    pub achieved_rate: f64,
    /// Transactions finished OK per second of measured time.
    pub ok_rate: f64,
    pub measured_seconds: f64,
    pub sent: u64,
    /// Transactions with an outcome (OK or an error status); `sent - completed` of them
    /// count as `NO_OUTCOME` in `errors`.
    pub completed: u64,
    pub ok: u64,
    pub decisions: BTreeMap<String, u64>,
    pub notifications: BTreeMap<String, u64>,
    /// Failures by gRPC code name, and `NO_OUTCOME` for transactions sent and never
    /// answered.
    pub errors: BTreeMap<String, u64>,
    /// `NO_OUTCOME` transactions still waiting, past their deadline, when the run ended.
    pub hung: u64,
    /// SubmitStreams that ended with an error status or with transactions unanswered.
    pub stream_ends: Vec<StreamEnd>,
    pub latency_ms: LatencyMs,
    /// Total time the generator's sends were blocked: waiting for the stream to take them
    /// (stream mode) or for a free outstanding slot (open loop).
    pub blocked_send_seconds: f64,
    /// Open loop: sends the schedule asked for (compare with `sent`).
    pub scheduled: Option<u64>,
    /// Sends more than 5 ms after their due time: the generator (or backpressure) fell behind.
    pub late_sends: u64,
    /// Calls the client's own throttle refused (`--client-throttle`): scheduled, never sent,
    /// in none of the other counts.
    pub throttled: u64,
    /// With `--priority-mix`: per priority (critical, default, sheddable), what was sent and
    /// what came back.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_priority: Vec<PriorityFigures>,
    /// With a stepped schedule (2 to [`MAX_STEPS`] segments): per step, by the transactions
    /// due in it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<StepFigures>,
    /// With `--metrics` and a gateway with overload control: the highest degradation level
    /// seen.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degradation_max: Option<u8>,
    /// With it too: seconds at each degradation level, 0 to 3 (warmup included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degradation_seconds: Option<[f64; DEGRADATION_LEVELS]>,
    /// With `--metrics`: the hop the gateway named as its bottleneck most often.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<BottleneckSeen>,
    /// What the stall probe saw over the measured time: how long the machine kept a
    /// ready thread off the CPU ([`crate::drive::stalls`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalls: Option<Stalls>,
    /// Per-second timeline of the whole run.
    pub timeline: Vec<TimelinePoint>,
    /// The latency distribution at fixed quantiles (50 % … 99.999 %).
    pub percentiles: Vec<Percentile>,
    /// The slowest transactions with an outcome (any result), slowest first, with their
    /// traces: what the tail of `percentiles` is made of.
    pub slowest: Vec<Exemplar>,
    /// The first transactions that failed (`errors`, `NO_OUTCOME` included), in order, with
    /// their codes, messages and traces.
    pub failed: Vec<Exemplar>,
    /// Every acknowledged transaction with its audit offset.
    pub acked: Vec<Acked>,
}

impl Report {
    /// When the generator did not keep its schedule: by how much, and why.
    pub fn generator_verdict(&self) -> Option<String> {
        let scheduled = self.scheduled?;
        let short = scheduled.saturating_sub(self.sent + self.throttled);
        let late_share = self.late_sends as f64 / self.sent.max(1) as f64;
        if short as f64 <= 0.01 * scheduled as f64 && late_share <= 0.01 {
            return None;
        }
        let blocked_share = self.blocked_send_seconds / self.measured_seconds.max(1e-9);
        let why = if blocked_share > 0.1 {
            format!(
                "sends were blocked {:.0}% of the time: the system under test pushed back (its latency above includes the wait)",
                100.0 * blocked_share
            )
        } else {
            "the generator itself could not go faster (CPU): use a release build, more --connections, or several generators".to_string()
        };
        Some(format!(
            "fell behind: sent {} of {} scheduled ({:.1}%), {:.1}% of sends more than 5 ms late; {why}",
            self.sent,
            scheduled,
            100.0 * self.sent as f64 / scheduled.max(1) as f64,
            100.0 * late_share
        ))
    }

    /// Each distinct terminal status once: `UNAVAILABLE: shutting down: 132 messages not
    /// read (stream 0 at 12.3 s; 132 without an outcome)`, repeats folded into a count.
    pub fn stream_end_lines(&self) -> Vec<String> {
        let mut groups: Vec<(&StreamEnd, usize, u64)> = Vec::new();
        for e in &self.stream_ends {
            match groups
                .iter_mut()
                .find(|(g, _, _)| g.code == e.code && g.message == e.message)
            {
                Some((_, n, lost)) => {
                    *n += 1;
                    *lost += e.without_outcome;
                }
                None => groups.push((e, 1, e.without_outcome)),
            }
        }
        groups
            .into_iter()
            .map(|(e, n, lost)| {
                let status = if e.message.is_empty() {
                    e.code.clone()
                } else {
                    format!("{}: {}", e.code, e.message)
                };
                let when = if n == 1 {
                    format!("stream {} at {:.1} s", e.stream, e.t)
                } else {
                    format!("{n} streams, first at {:.1} s", e.t)
                };
                format!("{status} ({when}; {lost} without an outcome)")
            })
            .collect()
    }

    /// The human-readable summary.
    pub fn text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "mode {} ({} loop), {:.1} s measured",
            self.mode, self.loop_kind, self.measured_seconds
        );
        match self.target_rate {
            Some(target) => {
                let _ = writeln!(
                    s,
                    "rate       target {target:.0}/s, achieved {:.0}/s ({:.1}%), ok {:.0}/s",
                    self.achieved_rate,
                    100.0 * self.achieved_rate / target.max(1e-9),
                    self.ok_rate
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "rate       achieved {:.0}/s, ok {:.0}/s",
                    self.achieved_rate, self.ok_rate
                );
            }
        }
        let _ = writeln!(
            s,
            "sent       {}  completed {}  ok {}",
            self.sent, self.completed, self.ok
        );
        let _ = writeln!(s, "decisions  {}", counts(&self.decisions));
        let _ = writeln!(s, "notify     {}", counts(&self.notifications));
        let _ = writeln!(s, "errors     {}", counts(&self.errors));
        if self.throttled > 0 {
            let _ = writeln!(
                s,
                "throttled  {} refused by this client before sending (--client-throttle): the gateway was refusing calls",
                self.throttled
            );
        }
        if self.hung > 0 {
            let _ = writeln!(
                s,
                "hung       {} sent and still waiting past their deadline when the run ended",
                self.hung
            );
        }
        for line in self.stream_end_lines() {
            let _ = writeln!(s, "stream end {line}");
        }
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "latency ms p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        let _ = writeln!(
            s,
            "blocked    {:.2} s of sends waited (backpressure)",
            self.blocked_send_seconds
        );
        if let Some(verdict) = self.generator_verdict() {
            let _ = writeln!(s, "generator  {verdict}");
        }
        if let Some(stalls) = &self.stalls {
            let _ = writeln!(s, "machine    {}", stalls.line());
        }
        if let (Some(max), Some(seconds)) = (self.degradation_max, self.degradation_seconds) {
            let at = seconds.map(|v| format!("{v:.1}")).join("/");
            let _ = writeln!(
                s,
                "degraded   max level {max}; seconds at level 0/1/2/3: {at}"
            );
        }
        if let Some(b) = &self.bottleneck {
            let _ = writeln!(s, "bottleneck {}", b.describe());
        }
        if !self.by_priority.is_empty() {
            let _ = writeln!(s, "by priority{}", ShareFigures::HEADER);
            for p in &self.by_priority {
                let _ = writeln!(s, "{:<11}{}", p.priority, p.figures.line());
            }
        }
        if !self.steps.is_empty() {
            let _ = writeln!(
                s,
                "by step (transactions due in it)\n  from      rate/s{}",
                ShareFigures::HEADER
            );
            for step in &self.steps {
                let rate = if step.from_rate == step.to_rate {
                    format!("{:.0}", step.from_rate)
                } else {
                    format!("{:.0}-{:.0}", step.from_rate, step.to_rate)
                };
                let _ = writeln!(
                    s,
                    "{:>5.1}s {rate:>11}{}",
                    step.start_s,
                    step.figures.line()
                );
            }
        }
        if !self.timeline.is_empty() {
            let _ = writeln!(s, "timeline (per second)\n{}", TimelinePoint::HEADER);
            for p in &self.timeline {
                let _ = writeln!(s, "{}", p.line());
            }
        }
        // Last, so they are what a terminal still shows: where to look next.
        let traced = |list: &[Exemplar]| {
            if list.iter().any(|e| e.trace_id.is_some()) {
                ", trace"
            } else {
                ""
            }
        };
        if !self.slowest.is_empty() {
            let _ = writeln!(
                s,
                "slowest    {} by latency: ms, result, id{}",
                self.slowest.len(),
                traced(&self.slowest)
            );
            for e in &self.slowest {
                let _ = writeln!(s, "{}", e.line());
            }
        }
        if !self.failed.is_empty() {
            let _ = writeln!(
                s,
                "failed     first {} of {}: ms, code, id{}, message",
                self.failed.len(),
                self.errors.values().sum::<u64>(),
                traced(&self.failed)
            );
            for e in &self.failed {
                let _ = writeln!(s, "{}", e.line());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::pb::Error as OutcomeError;

    fn sent(id: &str, trace: Option<u128>) -> Sent<'_> {
        Sent {
            id,
            trace_id: trace.map(TraceId::from),
            priority: Priority::Default,
            due: Duration::ZERO,
        }
    }

    fn run_info(sent: u64, trace_links: Option<TraceLinks>) -> RunInfo {
        RunInfo {
            mode: "unary".into(),
            loop_kind: "open".into(),
            target_rate: Some(sent as f64),
            measured_seconds: 1.0,
            sent,
            timeline: Vec::new(),
            scheduled: Some(sent),
            late: 0,
            throttled: 0,
            stream_ends: Vec::new(),
            trace_links,
            stalls: None,
        }
    }

    #[test]
    fn records_outcomes_errors_and_percentiles() {
        let mut r = Recorder::default();
        for i in 1..=100u64 {
            let o = Outcome {
                id: format!("t{i}"),
                decision: Decision::Approve as i32,
                audit_offset: i,
                ..Default::default()
            };
            r.record(sent(&o.id, None), Ok(&o), Duration::from_millis(i));
        }
        r.record(
            sent("t101", None),
            Err(&tonic::Status::unavailable("down")),
            Duration::from_millis(1),
        );
        let rep = r.report(run_info(101, None));
        assert_eq!(rep.ok, 100);
        assert_eq!(rep.errors["UNAVAILABLE"], 1);
        assert_eq!(rep.decisions["APPROVE"], 100);
        assert!(
            (rep.latency_ms.p50 - 50.0).abs() < 1.0,
            "{}",
            rep.latency_ms.p50
        );
        assert_eq!(rep.acked.len(), 100);
        let text = rep.text();
        assert!(text.contains("UNAVAILABLE 1"));
        assert!(
            text.contains("slowest    10 by latency: ms, result, id\n"),
            "{text}"
        );
        assert!(text.contains("failed     first 1 of 1"), "{text}");
    }

    #[test]
    fn the_json_report_names_the_slowest_and_failed_transactions_with_their_traces() {
        let mut r = Recorder::default();
        // 1000 OK transactions, 1..=1000 ms; every 100th in a trace.
        for i in 1..=1000u64 {
            let o = Outcome {
                id: format!("ok-{i}"),
                ..Default::default()
            };
            let trace = (i % 100 == 0).then_some(u128::from(i));
            r.record(sent(&o.id, trace), Ok(&o), Duration::from_millis(i));
        }
        // 15 failures: a per-message error, a call status, and transactions never answered.
        for i in 0..5u128 {
            let refused = Outcome {
                id: format!("refused-{i}"),
                error: Some(OutcomeError {
                    code: tonic::Code::ResourceExhausted as i32,
                    message: "queue full".into(),
                }),
                ..Default::default()
            };
            r.record(
                sent(&refused.id, Some(0xf00 + i)),
                Ok(&refused),
                Duration::from_millis(2),
            );
            let late = tonic::Status::deadline_exceeded("deadline passed in the queue");
            r.record(
                sent(&format!("late-{i}"), None),
                Err(&late),
                Duration::from_secs(5),
            );
            r.record_no_outcome(
                sent(&format!("lost-{i}"), None),
                "its stream ended first",
                false,
            );
        }
        let links = TraceLinks::parse("http://jaeger:16686").unwrap();
        let rep = r.report(run_info(1015, Some(links)));
        let json: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&rep).unwrap()).unwrap();
        assert_eq!(json["schema_version"], json::REPORT_SCHEMA_VERSION);

        let slowest = json["slowest"].as_array().unwrap();
        assert_eq!(slowest.len(), exemplars::DEFAULT_SLOWEST);
        // The five 5 s deadlines first (in the order they came), then 1000 ms, 999 ms, ...
        let ids: Vec<&str> = slowest.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "late-0", "late-1", "late-2", "late-3", "late-4", "ok-1000", "ok-999", "ok-998",
                "ok-997", "ok-996"
            ]
        );
        assert_eq!(slowest[0]["code"], "DEADLINE_EXCEEDED");
        assert_eq!(slowest[0]["latency_ms"], 5000.0);
        assert!(slowest[0].get("trace_id").is_none(), "sent in no trace");
        let traced = &slowest[5];
        assert_eq!(traced["code"], "OK");
        assert_eq!(traced["message"], "");
        assert_eq!(traced["trace_id"], format!("{:032x}", 1000));
        assert_eq!(
            traced["trace_url"],
            format!("http://jaeger:16686/trace/{:032x}", 1000)
        );

        let failed = json["failed"].as_array().unwrap();
        assert_eq!(
            failed.len(),
            exemplars::DEFAULT_FAILED,
            "the first ten of 15"
        );
        assert_eq!(
            (failed[0]["id"].as_str(), failed[0]["code"].as_str()),
            (Some("refused-0"), Some("RESOURCE_EXHAUSTED"))
        );
        assert_eq!(failed[0]["message"], "queue full");
        assert_eq!(failed[0]["trace_id"], format!("{:032x}", 0xf00));
        assert_eq!(failed[1]["code"], "DEADLINE_EXCEEDED");
        assert_eq!(failed[2]["code"], NO_OUTCOME);
        assert_eq!(failed[2]["message"], "its stream ended first");
        assert!(failed[2]["latency_ms"].is_null(), "it never finished");

        let text = rep.text();
        assert!(text.contains("failed     first 10 of 15: ms, code, id, trace, message"));
        assert!(
            text.contains(&format!(
                "RESOURCE_EXHAUSTED refused-0                 http://jaeger:16686/trace/{:032x}  queue full",
                0xf00
            )),
            "{text}"
        );
    }

    #[test]
    fn priorities_and_steps_each_get_their_figures() {
        use crate::drive::schedule::{ArrivalKind, parse_steps};
        let profile = Arc::new(Arrivals {
            kind: ArrivalKind::Constant,
            segments: parse_steps("100@1s,300@1s").unwrap(),
        });
        let mut r = Recorder::default().with_priorities().with_steps(profile);
        let refused = tonic::Status::resource_exhausted("over the limit");
        // Step 1: 10 OK critical at 1..=10 ms; step 2: 10 OK sheddable at 100 ms, 5 refused.
        for i in 1..=10u64 {
            let o = Outcome {
                id: format!("c{i}"),
                ..Default::default()
            };
            let txn = Sent {
                priority: Priority::Critical,
                due: Duration::from_millis(100 * i - 50),
                ..sent(&o.id, None)
            };
            r.record(txn, Ok(&o), Duration::from_millis(i));
        }
        for i in 0..15u64 {
            let o = Outcome {
                id: format!("s{i}"),
                ..Default::default()
            };
            let txn = Sent {
                priority: Priority::Sheddable,
                due: Duration::from_millis(1500),
                ..sent(&o.id, None)
            };
            let result = if i < 10 { Ok(&o) } else { Err(&refused) };
            r.record(txn, result, Duration::from_millis(100));
        }
        r.record_no_outcome(
            Sent {
                due: Duration::from_millis(1900),
                ..sent("lost", None)
            },
            "its stream ended first",
            false,
        );
        let rep = r.report(run_info(26, None));

        let names: Vec<&str> = rep
            .by_priority
            .iter()
            .map(|p| p.priority.as_str())
            .collect();
        assert_eq!(names, ["CRITICAL", "DEFAULT", "SHEDDABLE"]);
        let critical = &rep.by_priority[0].figures;
        assert_eq!((critical.sent, critical.ok), (10, 10));
        assert!((critical.ok_p99_ms - 10.0).abs() < 0.2, "{critical:?}");
        let default = &rep.by_priority[1].figures;
        assert_eq!((default.sent, default.ok), (1, 0));
        assert_eq!(default.errors[NO_OUTCOME], 1);
        let sheddable = &rep.by_priority[2].figures;
        assert_eq!((sheddable.sent, sheddable.ok), (15, 10));
        assert_eq!(sheddable.errors["RESOURCE_EXHAUSTED"], 5);
        assert!(
            (sheddable.ok_p50_ms - 100.0).abs() < 1.0,
            "only OK ones count: {sheddable:?}"
        );

        assert_eq!(rep.steps.len(), 2);
        assert_eq!((rep.steps[0].start_s, rep.steps[0].from_rate), (0.0, 100.0));
        assert_eq!((rep.steps[1].start_s, rep.steps[1].to_rate), (1.0, 300.0));
        assert_eq!(rep.steps[0].figures.sent, 10);
        assert_eq!(rep.steps[1].figures.sent, 16);
        assert_eq!(rep.steps[1].figures.ok, 10);

        let text = rep.text();
        assert!(text.contains("by priority"), "{text}");
        assert!(text.contains("SHEDDABLE"), "{text}");
        assert!(text.contains("RESOURCE_EXHAUSTED 5"), "{text}");
        assert!(text.contains("by step"), "{text}");
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["by_priority"][2]["priority"], "SHEDDABLE");
        assert_eq!(json["by_priority"][2]["ok"], 10);
        assert_eq!(json["steps"][1]["errors"]["RESOURCE_EXHAUSTED"], 5);

        // Without a mix or steps, neither section exists, in the text or the JSON.
        let plain = Recorder::default().report(run_info(0, None));
        assert!(!plain.text().contains("by priority"));
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("by_priority").is_none() && json.get("steps").is_none());
        assert!(json.get("degradation_max").is_none() && json.get("bottleneck").is_none());
    }

    #[test]
    fn the_live_view_draws_each_hop_against_its_bound_and_marks_a_full_one() {
        let mut p = point(1.0, Some(3), Some(("logging", 0.97)));
        assert_eq!(p.hop_bars(), None, "nothing without --metrics");
        p.held = Some([0.0, 183.0, 5.0]);
        p.held_bounds = Some([1024.0, 183.0, 1024.0]);
        let bars = p.hop_bars().unwrap();
        assert!(bars.contains("log \u{2595}\u{2588}\u{2588}\u{2588}\u{2588}\u{2588}\u{2588}\u{2588}\u{2588}\u{2588}\u{2588}\u{258f} 183/183 FULL"), "{bars}");
        assert!(bars.contains("risk \u{2595}\u{2591}"), "{bars}");
        assert!(!bars.contains("ntf \u{2595}\u{2588}"), "{bars}");
        assert!(bars.ends_with("<< bottleneck: logging 97%"), "{bars}");
    }

    fn point(t: f64, level: Option<u8>, bottleneck: Option<(&str, f64)>) -> TimelinePoint {
        TimelinePoint {
            t,
            offered: 0.0,
            sent: 0.0,
            done: 0.0,
            ok: 0.0,
            rejected: 0.0,
            throttled: 0.0,
            errors: 0.0,
            blocked_pct: 0.0,
            p50_ms: 0.0,
            p99_ms: 0.0,
            ok_p99_ms: 0.0,
            queues: Some([0.0; 3]),
            held: Some([0.0; 3]),
            held_bounds: None,
            oldest_outstanding_ms: None,
            degradation_level: level,
            bottleneck: bottleneck.map(|(hop, share)| Bottleneck {
                hop: hop.into(),
                share,
            }),
        }
    }

    #[test]
    fn the_gateway_pressure_over_a_run_is_summed_up() {
        let timeline = [
            point(1.0, Some(0), None),
            point(2.0, Some(1), Some(("logging", 0.6))),
            point(3.0, Some(2), Some(("logging", 0.8))),
            point(4.0, Some(2), Some(("risk", 0.9))),
            point(5.5, Some(0), None),
        ];
        let (max, seconds) = degradation(&timeline).unwrap();
        assert_eq!(max, 2);
        assert_eq!(seconds, [2.5, 1.0, 2.0, 0.0]);
        let b = bottleneck_named(&timeline).unwrap();
        assert_eq!(
            (b.hop.as_str(), b.intervals, b.of_intervals),
            ("logging", 2, 5)
        );
        assert!((b.share - 0.7).abs() < 1e-9);
        assert_eq!(
            b.describe(),
            "logging, 70 % of p99 (named in 2 of 5 intervals)"
        );
        let line = timeline[2].line();
        assert!(
            line.ends_with("      2  bottleneck: logging 80%"),
            "{line:?}"
        );

        let quiet = [point(1.0, Some(0), None), point(2.0, Some(0), None)];
        assert_eq!(degradation(&quiet), Some((0, [2.0, 0.0, 0.0, 0.0])));
        let none = bottleneck_named(&quiet).unwrap();
        assert_eq!(none.hop, NO_BOTTLENECK);
        assert_eq!(none.describe(), "none (2 intervals)");

        // A gateway without overload control: no level, no section.
        let old = [point(1.0, None, None)];
        assert_eq!(degradation(&old), None);
        assert!(old[0].line().ends_with("      -"), "{:?}", old[0].line());
        // No --metrics: nothing at all.
        let unscraped = TimelinePoint {
            queues: None,
            held: None,
            held_bounds: None,
            oldest_outstanding_ms: None,
            ..point(1.0, None, None)
        };
        assert_eq!(bottleneck_named(std::slice::from_ref(&unscraped)), None);
        assert!(!unscraped.line().contains('/'));

        let mut r = Recorder::default();
        r.record(
            sent("a", None),
            Ok(&Outcome::default()),
            Duration::from_millis(1),
        );
        let mut info = run_info(1, None);
        info.timeline = timeline.to_vec();
        let rep = r.report(info);
        assert_eq!(rep.degradation_max, Some(2));
        let text = rep.text();
        assert!(
            text.contains("degraded   max level 2; seconds at level 0/1/2/3: 2.5/1.0/2.0/0.0"),
            "{text}"
        );
        assert!(
            text.contains("bottleneck logging, 70 % of p99 (named in 2 of 5 intervals)"),
            "{text}"
        );
        let json = serde_json::to_value(&rep).unwrap();
        assert_eq!(json["degradation_max"], 2);
        assert_eq!(json["bottleneck"]["hop"], "logging");
        assert_eq!(json["timeline"][2]["bottleneck"]["hop"], "logging");
        assert_eq!(json["timeline"][2]["degradation_level"], 2);
    }

    #[test]
    fn code_names() {
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
    }
}
