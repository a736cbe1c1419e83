//! Recording results and reporting them: text for people, JSON ([`json`]) for checks, HTML
//! ([`html`]) to look at, and the [`audit`] check of what was acknowledged against the log.
//! Each report names the transactions behind its figures, with their traces ([`exemplars`]).
//!
//! Latency goes into an HDR histogram (microsecond resolution, up to an hour) — exact
//! percentiles at a fixed memory cost, unlike a hand-rolled bucket list.

pub mod audit;
pub mod exemplars;
pub mod html;
pub mod json;

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use opentelemetry::trace::TraceId;
use serde::Serialize;
use sluice_proto::pb::{Decision, NotificationStatus, Outcome};

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

/// Which transaction a result belongs to: its id and the trace it carried.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub id: &'a str,
    /// The trace id of the `traceparent` it was sent with, if any.
    pub trace_id: Option<TraceId>,
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
        let noted = || Noted {
            id: txn.id.to_string(),
            trace_id: txn.trace_id,
            code: code_name(code),
            message: message.to_string(),
            latency: Some(latency),
        };
        self.slowest.offer(micros, noted);
        if code != tonic::Code::Ok {
            if self.failed.len() < DEFAULT_FAILED {
                self.failed.push(noted());
            }
            *self.errors.entry(code_name(code)).or_default() += 1;
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

    /// The final report.
    pub fn report(&self, run: RunInfo) -> Report {
        let ms = |q: f64| self.latency.value_at_quantile(q) as f64 / 1000.0;
        let secs = run.measured_seconds.max(1e-9);
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
    /// SubmitStreams that ended with an error or with transactions unanswered.
    pub stream_ends: Vec<StreamEnd>,
    /// Where trace ids link to, if anywhere.
    pub trace_links: Option<TraceLinks>,
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
    /// Other failures per second.
    pub errors: f64,
    /// Share of the interval the generator's sends were blocked (stream window full, or no
    /// free outstanding slot).
    pub blocked_pct: f64,
    /// p50 latency of transactions finished in this interval, ms.
    pub p50_ms: f64,
    /// p99 latency of transactions finished in this interval, ms.
    pub p99_ms: f64,
    /// With `--metrics`: the gateway's downstream queue depths (risk, logging,
    /// notification) at the end of the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<[f64; 3]>,
}

impl TimelinePoint {
    pub const HEADER: &str = "     t   offered      sent        ok  rejected    errors  blocked   p50 ms   p99 ms   queues risk/log/ntf";

    /// One row under [`TimelinePoint::HEADER`].
    pub fn line(&self) -> String {
        let queues = self.queues.map_or(String::new(), |q| {
            format!("   {:>5.0}/{:>5.0}/{:>5.0}", q[0], q[1], q[2])
        });
        format!(
            "{:>5.0}s {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>7.1}% {:>8.2} {:>8.2}{queues}",
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
        let short = scheduled.saturating_sub(self.sent);
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
        let join = |m: &BTreeMap<String, u64>| {
            if m.is_empty() {
                "-".to_string()
            } else {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        let _ = writeln!(s, "decisions  {}", join(&self.decisions));
        let _ = writeln!(s, "notify     {}", join(&self.notifications));
        let _ = writeln!(s, "errors     {}", join(&self.errors));
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
            stream_ends: Vec::new(),
            trace_links,
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
    fn code_names() {
        assert_eq!(
            code_name(tonic::Code::ResourceExhausted),
            "RESOURCE_EXHAUSTED"
        );
        assert_eq!(code_name(tonic::Code::InvalidArgument), "INVALID_ARGUMENT");
    }
}
