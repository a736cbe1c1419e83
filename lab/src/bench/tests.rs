//! The bench's pieces alone: `/proc` parsing, histogram quantiles, the summary.

use std::collections::BTreeMap;

use crate::bench::tail::histogram_quantile;
use crate::cpu::{Cost, cpu_seconds, ticks_per_second};

fn samples(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn a_histogram_quantile_reads_only_what_the_run_added() {
    let before = samples(&[
        ("x_bucket{le=\"0.001\"}", 100.0),
        ("x_bucket{le=\"0.01\"}", 100.0),
        ("x_bucket{le=\"+Inf\"}", 100.0),
    ]);
    // The run added 1000 observations: 990 under 1 ms, 10 between 1 and 10 ms.
    let after = samples(&[
        ("x_bucket{le=\"0.001\"}", 1090.0),
        ("x_bucket{le=\"0.01\"}", 1100.0),
        ("x_bucket{le=\"+Inf\"}", 1100.0),
    ]);
    let p50 = histogram_quantile(("x", ""), &before, &after, 0.5).unwrap();
    assert!((p50 - 0.000_505).abs() < 1e-6, "{p50}");
    let p999 = histogram_quantile(("x", ""), &before, &after, 0.999).unwrap();
    // Rank 999: 9 of the 10 in the 1–10 ms bucket.
    assert!((p999 - 0.0091).abs() < 1e-6, "{p999}");
    assert_eq!(histogram_quantile(("x", ""), &after, &after, 0.5), None);
    assert_eq!(histogram_quantile(("y", ""), &before, &after, 0.5), None);
}

#[test]
fn a_histogram_quantile_reads_only_the_series_asked_for() {
    let before = samples(&[]);
    // As prometheus-client writes them: `le` first. Unary all under 1 ms, stream all
    // between 1 and 10 ms: each API its own p99.
    let after = samples(&[
        ("g_bucket{le=\"0.001\",api=\"stream\"}", 0.0),
        ("g_bucket{le=\"0.01\",api=\"stream\"}", 100.0),
        ("g_bucket{le=\"+Inf\",api=\"stream\"}", 100.0),
        ("g_bucket{le=\"0.001\",api=\"unary\"}", 100.0),
        ("g_bucket{le=\"0.01\",api=\"unary\"}", 100.0),
        ("g_bucket{le=\"+Inf\",api=\"unary\"}", 100.0),
    ]);
    let q = |api: &str| {
        histogram_quantile(("g", &format!("api=\"{api}\"")), &before, &after, 0.99).unwrap()
    };
    assert!(q("stream") > 0.001, "{}", q("stream"));
    assert!(q("unary") <= 0.001, "{}", q("unary"));
}

#[test]
fn cpu_is_read_for_this_process() {
    let used = cpu_seconds(std::process::id(), ticks_per_second());
    assert!(used.is_some_and(|s| s >= 0.0));
    assert_eq!(cpu_seconds(u32::MAX, 100.0), None);
}

#[test]
fn cost_medians_are_per_role() {
    let c = |g: f64, r: f64| Cost(BTreeMap::from([("gateway", g), ("risk", r)]));
    let costs = [c(100.0, 10.0), c(300.0, 30.0), c(200.0, 50.0)];
    let m = Cost::median(&costs);
    assert_eq!(m.0["gateway"], 200.0);
    assert_eq!(m.0["risk"], 30.0);
    assert!(Cost::line(&costs).starts_with("250 µs/tx (gateway 200, risk 30; runs 110 330 250)"));
}
