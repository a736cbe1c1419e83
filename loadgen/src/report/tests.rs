//! The recorder and the report together: figures, breakdowns, the timeline's summary.

use super::*;
use crate::admin::metrics::Bottleneck;
use crate::drive::recorder::Recorder;
use crate::drive::schedule::Arrivals;
use sluice_proto::pb::Error as OutcomeError;
use sluice_proto::pb::{Decision, Outcome, Priority};
use std::sync::Arc;
use std::time::Duration;

fn sent(id: &str, trace: Option<u128>) -> Sent<'_> {
    Sent {
        id,
        trace_id: trace.map(TraceId::from),
        priority: Priority::Default,
        due: Duration::ZERO,
        after_hlc: 0,
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
            after_hlc: 0,
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
            after_hlc: 0,
            ..sent(&o.id, None)
        };
        let result = if i < 10 { Ok(&o) } else { Err(&refused) };
        r.record(txn, result, Duration::from_millis(100));
    }
    r.record_no_outcome(
        Sent {
            due: Duration::from_millis(1900),
            after_hlc: 0,
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
