//! The overload section's verdicts and step figures, from made-up timelines.
use std::time::Duration;

use sluice_loadgen::report::TimelinePoint;

use crate::pressure::overload::{
    STEPS, Step, StepResult, overload_profile, time_to_recover, verdict, within,
};
use crate::pressure::{LEAD_IN, PressureArgs, Section};

fn point(t: f64, ok: f64, ok_p99_ms: f64) -> TimelinePoint {
    TimelinePoint {
        t,
        offered: 0.0,
        sent: ok,
        done: ok,
        ok,
        rejected: 0.0,
        throttled: 0.0,
        errors: 0.0,
        blocked_pct: 0.0,
        p50_ms: 0.0,
        p99_ms: ok_p99_ms,
        ok_p99_ms,
        queues: None,
        held: None,
        held_bounds: None,
        oldest_outstanding_ms: None,
        degradation_level: None,
        bottleneck: None,
    }
}

#[test]
fn steps_take_the_intervals_that_end_inside_them() {
    // Intervals of 0.5 s, each closing a few ms late.
    let timeline: Vec<_> = (1..=8)
        .map(|k| point(0.5 * k as f64 + 0.004, k as f64, 0.0))
        .collect();
    let oks = |start, end| -> Vec<f64> {
        within(&timeline, start, end, 0.5)
            .iter()
            .map(|p| p.ok)
            .collect()
    };
    assert_eq!(oks(0.0, 2.0), [1.0, 2.0, 3.0, 4.0]);
    assert_eq!(oks(2.0, 3.0), [5.0, 6.0]);
    assert_eq!(oks(3.0, 9.0), [7.0, 8.0]);
    assert!(oks(5.0, 6.0).is_empty());
}

#[test]
fn recovery_is_the_first_interval_back_within_target() {
    let after = [
        point(10.5, 100.0, 400.0),
        point(11.0, 0.0, 0.0),
        point(11.5, 100.0, 4.5),
        point(12.0, 100.0, 3.0),
    ];
    // Unloaded p99 2.5 ms: 5 ms is within 2x; an interval with no OK is not recovery.
    assert_eq!(time_to_recover(&after, 10.0, 2.5), Some(1.5));
    assert_eq!(time_to_recover(&after[..2], 10.0, 2.5), None);
}

#[test]
fn the_target_needs_both_latency_and_goodput() {
    let step = |goodput, ok_p99| StepResult {
        goodput,
        ok_p99,
        ..Default::default()
    };
    let base = step(500.0, 2.0);
    let (met, why) = verdict(&base, &step(950.0, 3.9), 1000.0);
    assert!(met, "{why}");
    assert!(why.contains("3.9 ms <= 2 x 2.0 ms"), "{why}");
    assert!(!verdict(&base, &step(950.0, 4.1), 1000.0).0, "latency");
    let (met, why) = verdict(&base, &step(850.0, 3.0), 1000.0);
    assert!(!met && why.contains("85 % of saturation < 90 %"), "{why}");
    assert!(
        !verdict(&step(500.0, 0.0), &step(950.0, 0.0), 1000.0).0,
        "no data"
    );
}

#[test]
fn the_overload_profile_is_lead_in_base_peak_after_slow() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        pressure: PressureArgs,
    }
    let args = Cli::try_parse_from(["pressure", "--sections", "overload"])
        .unwrap()
        .pressure;
    assert_eq!(args.sections, [Section::Overload]);
    let profile = overload_profile(1000.0, &args);
    let rates: Vec<f64> = profile.segments.iter().map(|s| s.from).collect();
    assert_eq!(rates, [500.0, 500.0, 3000.0, 500.0, 1000.0]);
    assert_eq!(profile.total(), LEAD_IN + Duration::from_secs(30));
    assert_eq!(
        profile.segment_start(Step::Peak as usize),
        (LEAD_IN + Duration::from_secs(5)).as_secs_f64()
    );
    assert_eq!(STEPS.len() + 1, profile.segments.len());
    for (k, step) in STEPS.iter().enumerate() {
        assert_eq!(*step as usize, k + 1, "{step:?} is segment {}", k + 1);
    }
}
