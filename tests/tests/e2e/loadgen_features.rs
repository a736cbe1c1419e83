//! The load generator's schedules and the lab's scenarios, against the real binaries.

use std::path::Path;
use std::process::Output;

use sluice_tests::{Mesh, bin_dir, loadgen_json};

/// Runs `sluice-lab` (the scenarios).
async fn lab(args: &[&str]) -> Output {
    tokio::process::Command::new(bin_dir().join("sluice-lab"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run sluice-lab")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_its_schedule_within_one_percent() {
    let mesh = Mesh::start().await;
    for arrivals in ["constant", "poisson"] {
        let (_, r) = loadgen_json(&[
            "run",
            "--target",
            &mesh.gateway.url(),
            "--mode",
            "stream",
            "--rate",
            "400",
            "--duration",
            "4s",
            "--arrivals",
            arrivals,
        ])
        .await;
        let (scheduled, sent) = (
            r["scheduled"].as_f64().unwrap(),
            r["sent"].as_f64().unwrap(),
        );
        assert!(
            (sent - scheduled).abs() <= 0.01 * scheduled,
            "{arrivals}: sent {sent} of {scheduled}"
        );
        let target = if arrivals == "constant" {
            400.0
        } else {
            scheduled / 4.0
        };
        let achieved = r["achieved_rate"].as_f64().unwrap();
        assert!(
            (achieved - target).abs() <= 0.01 * target,
            "{arrivals}: achieved {achieved}/s, target {target}/s"
        );
        assert!(r["errors"].as_object().unwrap().is_empty());
    }
    // Steps: the run lasts their sum and the schedule follows them.
    let (_, r) = loadgen_json(&[
        "run",
        "--target",
        &mesh.gateway.url(),
        "--steps",
        "100@2s,400@2s",
    ])
    .await;
    let scheduled = r["scheduled"].as_f64().unwrap();
    assert!((scheduled - 1000.0).abs() <= 10.0, "{scheduled}");
    assert!((r["sent"].as_f64().unwrap() - scheduled).abs() <= 10.0);
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_pass_fail_and_show_coordinated_omission() {
    let dir = tempfile::tempdir().unwrap();
    let bins = bin_dir().to_str().unwrap().to_string();
    // A 200 ms stall of logging in the middle of each phase. Open loop measures from the
    // intended send time, so every transaction due during the stall shows it; closed loop
    // with one outstanding sends nothing during the stall, so only one sample shows it.
    let co = write(
        dir.path(),
        "co.toml",
        r#"
name = "coordinated-omission"
[[phase]]
name = "open"
rate = 300
duration = "4s"
faults = [{ at = "2s", service = "logging", stall = true }, { at = "2200ms", service = "logging", clear = true }]
[[phase]]
name = "closed"
concurrency = 1
duration = "4s"
faults = [{ at = "2s", service = "logging", stall = true }, { at = "2200ms", service = "logging", clear = true }]
[[expect]]
phase = "open"
p99_ms_above = 120.0
[[expect]]
phase = "closed"
p99_ms_below = 100.0
[[expect]]
no_missing_audit_records = true
"#,
    );
    let out = lab(&["scenario", &co, "--bin-dir", &bins]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("all 3 expectation(s) met"),
        "{}",
        text(&out)
    );

    let failing = write(
        dir.path(),
        "fail.toml",
        r#"
name = "impossible"
[[phase]]
name = "quick"
rate = 100
duration = "1s"
[[expect]]
phase = "quick"
p99_ms_below = 0.001
[[expect]]
phase = "quick"
ok_rate_above = 50.0
"#,
    );
    let out = lab(&["scenario", &failing, "--bin-dir", &bins]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("FAIL  quick: p99 below 0.001 ms"), "{t}");
    assert!(t.contains("PASS  quick: OK rate above 50/s"), "{t}");
    assert!(t.contains("1 expectation(s) FAILED"), "{t}");

    let bad = write(
        dir.path(),
        "bad.toml",
        "name = \"x\"\n[[phase]]\nname = \"p\"\nrate = 1\n",
    );
    let out = lab(&["scenario", &bad, "--check"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("`duration` is required"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_scenarios_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let stems: Vec<_> = names
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    for want in [
        "stall-logging",
        "slow-risk",
        "notification-outage",
        "overload-10x",
        "recovery",
    ] {
        assert!(
            stems.iter().any(|s| s == want),
            "scenarios/{want}.toml missing"
        );
    }
    for p in names {
        let out = lab(&["scenario", "--check", p.to_str().unwrap()]).await;
        assert!(out.status.success(), "{}: {}", p.display(), text(&out));
    }
}

/// Counts the pixels of a PNG that are clearly colored (not white, grey or black): the
/// chart lines.
fn colored_pixels(png_path: &Path) -> usize {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_path).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    buf[..info.buffer_size()]
        .chunks(channels)
        .filter(|px| {
            let (r, g, b) = (px[0] as i32, px[1] as i32, px[2] as i32);
            (r - g).abs().max((g - b).abs()).max((r - b).abs()) > 60
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_renders_its_charts_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let bins = bin_dir().to_str().unwrap().to_string();
    let file = write(
        dir.path(),
        "html.toml",
        r#"
name = "html"
[[phase]]
name = "before"
rate = 200
duration = "2s"
[[phase]]
name = "slow"
rate = 200
duration = "2s"
faults = [{ at = "0s", service = "risk", delay_ms = 30 }]
"#,
    );
    let html = dir.path().join("report.html");
    let out = lab(&[
        "scenario",
        &file,
        "--bin-dir",
        &bins,
        "--html",
        html.to_str().unwrap(),
    ])
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let page = std::fs::read_to_string(&html).unwrap();
    for id in ["throughput", "latency", "percentiles"] {
        assert!(
            page.contains(&format!("<svg id=\"{id}\"")),
            "chart {id} missing"
        );
    }
    assert!(
        page.matches("class=\"series\"").count() >= 8,
        "every series drawn"
    );
    assert!(
        page.contains("class=\"mark\"") && page.contains("risk delay_ms=30"),
        "fault switch marked"
    );
    assert!(
        !page.contains("src=\"http"),
        "self-contained: nothing loaded from the network"
    );

    let Some(chromium) = sluice_tests::chromium() else {
        eprintln!(
            "SKIPPED: rendering check (no chromium; Debian's `chromium` package provides it)"
        );
        return;
    };
    let png = dir.path().join("report.png");
    let shot = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=960,1000",
        ])
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .await
        .unwrap();
    assert!(
        png.exists(),
        "chromium wrote no screenshot: {}",
        String::from_utf8_lossy(&shot.stderr)
    );
    let colored = colored_pixels(&png);
    assert!(
        colored > 2000,
        "the charts did not render: only {colored} colored pixels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_report_follows_its_documented_schema() {
    let mesh = Mesh::start().await;
    let admin = format!("http://{}/metrics", mesh.gateway.admin.unwrap());
    let (_, r) = loadgen_json(&[
        "run",
        "--target",
        &mesh.gateway.url(),
        "--rate",
        "100",
        "--duration",
        "2s",
        "--metrics",
        &admin,
    ])
    .await;
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report-schema.md"),
    )
    .unwrap();
    type Check = fn(&serde_json::Value) -> bool;
    let fields: [(&str, Check); 29] = [
        ("schema_version", |v| v.as_u64() == Some(2)),
        ("mode", |v| v.is_string()),
        ("loop_kind", |v| v.is_string()),
        ("target_rate", |v| v.is_number() || v.is_null()),
        ("achieved_rate", |v| v.is_number()),
        ("ok_rate", |v| v.is_number()),
        ("measured_seconds", |v| v.is_number()),
        ("sent", |v| v.is_u64()),
        ("completed", |v| v.is_u64()),
        ("ok", |v| v.is_u64()),
        ("decisions", |v| v.is_object()),
        ("notifications", |v| v.is_object()),
        ("errors", |v| v.is_object()),
        ("hung", |v| v.as_u64() == Some(0)),
        ("stream_ends", |v| {
            v.as_array().is_some_and(|a| a.is_empty())
        }),
        ("latency_ms", |v| {
            ["p50", "p90", "p99", "p999", "max", "mean"]
                .iter()
                .all(|k| v[k].is_number())
        }),
        ("blocked_send_seconds", |v| v.is_number()),
        ("scheduled", |v| v.is_u64() || v.is_null()),
        ("late_sends", |v| v.is_u64()),
        ("throttled", |v| v.as_u64() == Some(0)),
        // With --metrics: the gateway's degradation level and bottleneck; at 100/s, calm.
        ("degradation_max", |v| v.as_u64() == Some(0)),
        ("degradation_seconds", |v| {
            v.as_array()
                .is_some_and(|a| a.len() == 4 && a.iter().all(|s| s.is_number()))
        }),
        ("bottleneck", |v| {
            v["hop"] == "none" && v["intervals"] == 0 && v["of_intervals"].as_u64() > Some(0)
        }),
        ("stalls", |v| {
            ["count", "long"].iter().all(|k| v[k].is_u64())
                && ["total_ms", "longest_ms"]
                    .iter()
                    .all(|k| v[k].as_f64().is_some_and(|x| x >= 0.0))
                && v["watched_s"].as_f64().is_some_and(|s| s > 0.0)
        }),
        ("timeline", |v| {
            v.as_array().is_some_and(|a| {
                !a.is_empty()
                    && a.iter().all(|p| {
                        [
                            "t",
                            "offered",
                            "sent",
                            "done",
                            "ok",
                            "rejected",
                            "throttled",
                            "errors",
                            "blocked_pct",
                            "p50_ms",
                            "p99_ms",
                            "ok_p99_ms",
                        ]
                        .iter()
                        .all(|k| p[k].is_number())
                            && p["queues"].as_array().is_some_and(|q| q.len() == 3)
                            && p["degradation_level"] == 0
                    })
            })
        }),
        ("percentiles", |v| {
            v.as_array().is_some_and(|a| {
                a.len() == 10
                    && a.iter()
                        .all(|p| p["quantile"].is_number() && p["ms"].is_number())
            })
        }),
        ("slowest", |v| {
            v.as_array().is_some_and(|a| {
                a.len() == 10
                    && a.iter().all(|x| {
                        x["id"].is_string()
                            && x["code"].is_string()
                            && x["message"].is_string()
                            && x["latency_ms"].is_number()
                            // No OTLP endpoint: the generator sends no traces.
                            && x.get("trace_id").is_none()
                    })
            })
        }),
        ("failed", |v| v.as_array().is_some_and(|a| a.is_empty())),
        ("acked", |v| {
            v.as_array().is_some_and(|a| {
                a.iter()
                    .all(|x| x["id"].is_string() && x["offset"].is_u64())
            })
        }),
    ];
    let keys: Vec<&String> = r.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), fields.len(), "unexpected fields: {keys:?}");
    for (name, valid) in fields {
        assert!(valid(&r[name]), "{name} has the wrong shape: {}", r[name]);
        assert!(
            doc.contains(&format!("`{name}`")),
            "{name} is not documented in docs/report-schema.md"
        );
    }
}
