//! What a run shares between its senders, its readers and its timeline: the pending map
//! (every sent transaction until its outcome), the current interval, and the recorder.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use opentelemetry::trace::TraceId;
use sluice_core::spans;
use sluice_proto::pb::{Outcome, Priority, Transaction};
use tokio::sync::OwnedSemaphorePermit;
use tonic::metadata::AsciiMetadataValue;

use crate::drive::recorder::Recorder;
use crate::drive::signal::OutcomeSignal;
use crate::drive::throttle::{Throttle, is_refusal};
use crate::report::{Sent, StreamEnd, TimelinePoint};

use super::end_client_span;

/// A transaction sent and waiting for its outcome.
pub(super) struct Pending {
    pub(super) intended: Instant,
    /// Its outstanding slot, freed with the entry.
    pub(super) _slot: OwnedSemaphorePermit,
    /// Its client span, ended (dropped) with the outcome.
    pub(super) span: tracing::Span,
    /// The trace it was sent in, for the report's slowest and failed transactions.
    pub(super) trace_id: Option<TraceId>,
    /// Its priority, for the report's breakdown by priority.
    pub(super) priority: Priority,
    /// The clock it was sent after (`--causal`; 0: none), and its account, whose chain its
    /// outcome's clock extends.
    pub(super) after_hlc: u64,
    pub(super) chained: Option<String>,
}

/// The trace id of the `traceparent` a transaction carries (W3C: `00-<trace id>-<parent
/// id>-<flags>`): the id every hop and the trace backend know its trace by, however the
/// client span was made. None when it carries none: with tracing off the generator's spans
/// are no-ops with invalid contexts, which the propagators do not write. Read straight from
/// the carrier rather than through the propagators, which would parse every format: this
/// runs once per send, tens of thousands of times a second.
pub(super) fn trace_id_sent(txn: &Transaction) -> Option<TraceId> {
    let hex = txn.trace_context.get("traceparent")?.split('-').nth(1)?;
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    TraceId::from_hex(hex)
        .ok()
        .filter(|id| *id != TraceId::INVALID)
}

pub(super) struct Shared {
    pub(super) recorder: Mutex<Recorder>,
    /// Every transaction sent and not yet answered, by id (see the module docs).
    pub(super) pending: Mutex<HashMap<String, Pending>>,
    /// SubmitStreams that ended with an error or with transactions unanswered.
    pub(super) stream_ends: Mutex<Vec<StreamEnd>>,
    pub(super) start: Instant,
    /// Each transaction's deadline (hung = no outcome past it).
    pub(super) timeout: Duration,
    pub(super) outcomes: Option<Arc<OutcomeSignal>>,
    pub(super) interval: Mutex<Interval>,
    pub(super) timeline: Mutex<Vec<TimelinePoint>>,
    pub(super) measure_from: Instant,
    pub(super) sent: AtomicU64,
    /// Sends that went out more than [`LATE`] after their due time.
    pub(super) late: AtomicU64,
    /// Open loop: arrivals the schedule produced before the run's end.
    pub(super) scheduled: AtomicU64,
    /// Sent as [`CLIENT_ID_METADATA`] on every call, when the run names its client.
    pub(super) client_id: Option<AsciiMetadataValue>,
    /// With `--client-throttle`: the client-side throttle every unary call passes.
    pub(super) throttle: Option<Throttle>,
    /// Calls the throttle refused (never sent).
    pub(super) throttled: AtomicU64,
    /// With `--causal`: each account's latest acknowledged clock, which its next
    /// transaction is sent after. One entry per account the traffic uses (a fixed set).
    pub(super) causal: Option<Mutex<HashMap<String, u64>>>,
}

/// What happened during the current second of the timeline.
pub(super) struct Interval {
    pub(super) sent: u64,
    pub(super) done: u64,
    pub(super) ok: u64,
    pub(super) rejected: u64,
    /// Refused by the client's own throttle, not sent.
    pub(super) throttled: u64,
    pub(super) errors: u64,
    pub(super) blocked: Duration,
    /// Set while a send is blocked; the timeline splits a long block across seconds.
    pub(super) blocked_since: Option<Instant>,
    pub(super) latency: Histogram<u64>,
    /// The OK ones' latency alone: under load shedding, fast refusals would hide how long
    /// accepted transactions waited.
    pub(super) ok_latency: Histogram<u64>,
}

impl Default for Interval {
    fn default() -> Self {
        Self {
            sent: 0,
            done: 0,
            ok: 0,
            rejected: 0,
            throttled: 0,
            errors: 0,
            blocked: Duration::ZERO,
            blocked_since: None,
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("valid histogram bounds"),
            ok_latency: Histogram::new_with_bounds(1, 3_600_000_000, 2)
                .expect("valid histogram bounds"),
        }
    }
}

impl Shared {
    pub(super) fn timeline_points(&self) -> std::sync::MutexGuard<'_, Vec<TimelinePoint>> {
        self.timeline.lock().expect("timeline lock")
    }

    /// `txn` was sent: it waits in the pending map for its outcome.
    pub(super) fn begin(
        &self,
        txn: &Transaction,
        intended: Instant,
        slot: OwnedSemaphorePermit,
        span: tracing::Span,
    ) {
        let pending = Pending {
            intended,
            _slot: slot,
            span,
            trace_id: trace_id_sent(txn),
            priority: Priority::try_from(txn.priority).unwrap_or_default(),
            after_hlc: txn.after_hlc,
            chained: self.causal.as_ref().map(|_| txn.account.clone()),
        };
        self.pending_map().insert(txn.id.clone(), pending);
    }

    /// With `--causal`: `txn` is sent after its account's latest acknowledged clock.
    pub(super) fn chain(&self, txn: &mut Transaction) {
        if let Some(last) = &self.causal {
            txn.after_hlc = last
                .lock()
                .expect("causal lock")
                .get(&txn.account)
                .copied()
                .unwrap_or(0);
        }
    }

    /// Which transaction `p` (pending as `id`) is, for the recorder.
    pub(super) fn sent_of<'a>(&self, id: &'a str, p: &Pending) -> Sent<'a> {
        Sent {
            id,
            trace_id: p.trace_id,
            priority: p.priority,
            due: p.intended.saturating_duration_since(self.start),
            after_hlc: p.after_hlc,
        }
    }

    /// `id` could not be sent after all (every stream is gone): it was never counted.
    pub(super) fn forget(&self, id: &str) {
        // The span ends as the entry drops.
        self.pending_map().remove(id);
    }

    /// `id` got its outcome (or call status). False when it was not pending.
    pub(super) fn finish(&self, id: &str, result: Result<&Outcome, &tonic::Status>) -> bool {
        let Some(p) = self.pending_map().remove(id) else {
            return false;
        };
        end_client_span(&p.span, result);
        if let (Some(last), Some(account), Ok(outcome)) = (&self.causal, &p.chained, result)
            && outcome.error.is_none()
            && outcome.hlc != 0
        {
            let mut last = last.lock().expect("causal lock");
            let latest = last.entry(account.clone()).or_default();
            *latest = (*latest).max(outcome.hlc);
        }
        if let (Some(signal), Ok(outcome)) = (&self.outcomes, result) {
            signal.observe(outcome);
        }
        self.record(p.intended, self.sent_of(id, &p), result);
        true
    }

    /// `id` will get no outcome: counts it as NO_OUTCOME (and hung when `hung`). False when
    /// it was not pending (it had its outcome).
    pub(super) fn abandon(&self, id: &str, why: &str, hung: bool) -> bool {
        let Some(p) = self.pending_map().remove(id) else {
            return false;
        };
        spans::fail(&p.span, "no_outcome", tonic::Code::Unknown as i32, why);
        self.interval.lock().expect("interval lock").errors += 1;
        if p.intended >= self.measure_from {
            let sent = self.sent_of(id, &p);
            self.recorder
                .lock()
                .expect("recorder lock")
                .record_no_outcome(sent, why, hung);
        }
        true
    }

    /// The run is over: whatever is still pending gets no outcome; hung when past its
    /// deadline.
    pub(super) fn abandon_rest(&self) {
        let now = Instant::now();
        let left: Vec<(String, bool)> = self
            .pending_map()
            .iter()
            .map(|(id, p)| (id.clone(), now >= p.intended + self.timeout))
            .collect();
        if !left.is_empty() {
            tracing::warn!(
                "{} transaction(s) had no outcome when the run ended",
                left.len()
            );
        }
        for (id, hung) in left {
            self.abandon(&id, "the run ended before its outcome arrived", hung);
        }
    }

    pub(super) fn pending_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().expect("pending lock")
    }

    pub(super) fn record(
        &self,
        intended: Instant,
        sent: Sent<'_>,
        result: Result<&Outcome, &tonic::Status>,
    ) {
        let latency = intended.elapsed();
        {
            let mut i = self.interval.lock().expect("interval lock");
            i.done += 1;
            let _ = i.latency.record((latency.as_micros() as u64).max(1));
            let code = match result {
                Ok(o) => o.error.as_ref().map(|e| tonic::Code::from_i32(e.code)),
                Err(s) => Some(s.code()),
            };
            match code {
                None => {
                    i.ok += 1;
                    let _ = i.ok_latency.record((latency.as_micros() as u64).max(1));
                }
                Some(tonic::Code::ResourceExhausted) => i.rejected += 1,
                Some(_) => i.errors += 1,
            }
        }
        if intended < self.measure_from {
            return; // warmup
        }
        self.recorder
            .lock()
            .expect("recorder lock")
            .record(sent, result, latency);
    }

    /// The client's throttle refused a call: it is never sent.
    pub(super) fn throttled_one(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        self.interval.lock().expect("interval lock").throttled += 1;
    }

    /// Tells the throttle, if any, how a sent call was answered.
    pub(super) fn throttle_answered(&self, result: Result<&Outcome, &tonic::Status>) {
        let Some(throttle) = &self.throttle else {
            return;
        };
        let code = match result {
            Ok(o) => o.error.as_ref().map(|e| tonic::Code::from_i32(e.code)),
            Err(s) => Some(s.code()),
        };
        throttle.answered(Instant::now(), code.is_some_and(is_refusal));
    }

    pub(super) fn sent_one(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        self.interval.lock().expect("interval lock").sent += 1;
    }

    /// A send starts waiting (for stream room or an outstanding slot).
    pub(super) fn block_start(&self) -> Instant {
        let now = Instant::now();
        self.interval.lock().expect("interval lock").blocked_since = Some(now);
        if let Some(signal) = &self.outcomes {
            signal.blocked.send_replace(Some(now));
        }
        now
    }

    /// The send that started waiting at `since` goes out.
    pub(super) fn block_end(&self, since: Instant) {
        let now = Instant::now();
        {
            let mut i = self.interval.lock().expect("interval lock");
            if let Some(from) = i.blocked_since.take() {
                i.blocked += now.duration_since(from);
            }
        }
        self.recorder.lock().expect("recorder lock").blocked += now.duration_since(since);
    }
}
