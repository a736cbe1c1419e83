//! The report as text, for people: `Report::text` and the verdicts it prints.

use super::exemplars::Exemplar;
use super::{Report, ShareFigures, StreamEnd, TimelinePoint, counts};

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
