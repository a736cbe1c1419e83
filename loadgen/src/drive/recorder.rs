//! The recorder: on the driver's hot path, every outcome goes into an HDR histogram and a
//! fixed number of tallies (by priority with a priority mix, by step of a stepped schedule),
//! never a list per transaction; at the end of a run it becomes a [`Report`].

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use sluice_proto::pb::{Decision, NotificationStatus, Outcome, Priority};

use crate::drive::schedule::Arrivals;
use crate::report::exemplars::{DEFAULT_FAILED, DEFAULT_SLOWEST, Noted, TopK};
use crate::report::{
    Acked, LatencyMs, MAX_STEPS, NO_OUTCOME, PERCENTILES, PRIORITY_ORDER, Percentile,
    PriorityFigures, Report, RunInfo, Sent, ShareFigures, StepFigures, bottleneck_named, code_name,
    degradation, priority_name,
};

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
                    self.record_ok(outcome, txn.after_hlc);
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

    fn record_ok(&mut self, outcome: &Outcome, after_hlc: u64) {
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
            hlc: outcome.hlc,
            after_hlc,
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
            schema_version: crate::report::json::REPORT_SCHEMA_VERSION,
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
