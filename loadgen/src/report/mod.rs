//! Reporting what a run recorded ([`crate::drive::recorder`]): text for people, JSON
//! ([`json`]) for checks, HTML ([`html`]) to look at, and the [`audit`] check of what was
//! acknowledged against the log.
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
pub mod live;
#[cfg(test)]
mod tests;
mod text;
mod timeline;

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::trace::TraceId;
use serde::Serialize;
use sluice_proto::pb::Priority;

use crate::admin::metrics::DEGRADATION_LEVELS;
use crate::drive::stalls::Stalls;
use exemplars::{Exemplar, TraceLinks};

pub use timeline::{BottleneckSeen, NO_BOTTLENECK, TimelinePoint, bottleneck_named, degradation};

/// One acknowledged transaction: its id and where its audit record is (partition, offset).
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Acked {
    pub id: String,
    pub offset: u64,
    /// Reports written before partitions existed have none: partition 0.
    #[serde(default)]
    pub partition: u32,
    /// The clock its outcome carried (`Outcome.hlc`); 0 from a gateway without clocks.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hlc: u64,
    /// The clock it was sent after (`--causal`); 0: none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub after_hlc: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
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
    /// The clock it was sent after (`--causal`; 0: none).
    pub after_hlc: u64,
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
