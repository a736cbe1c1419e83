//! The load generator and the lab end to end: `sluice-lab demo` (the story and `--steady`)
//! and `bench`, and `sluice-loadgen run --json` + `verify`.

use std::process::Command;

use sluice_tests::{Mesh, bin_dir};

fn loadgen(args: &[&str]) -> std::process::Output {
    binary("sluice-loadgen", args)
}

fn lab(args: &[&str]) -> std::process::Output {
    binary("sluice-lab", args)
}

fn binary(name: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin_dir().join(name))
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("run {name}: {e}"))
}

/// The story, its phases short: every claim holds, each with its figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_tells_the_story_and_every_claim_holds() {
    let out =
        tokio::task::block_in_place(|| lab(&["demo", "--phase", "4s", "--rate", "1000", "-q"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stdout}\n{stderr}");
    assert!(!stdout.contains("FAILED"), "{stdout}");
    for claim in [
        "held   pressure reached the client ",
        "held   memory stayed flat: ",
        "held   nothing acknowledged was lost: ",
        "held   throughput back ",
        "refused by the gateway with pushback",
    ] {
        assert!(stdout.contains(claim), "no {claim:?} in:\n{stdout}");
    }
    assert!(stdout.contains("0 missing from the audit log"), "{stdout}");
    assert!(stdout.contains("waited longest:"), "{stdout}");
    // Each phase is narrated as it starts.
    for phase in [
        "steady:",
        "logging stalled:",
        "logging back:",
        "10x overload:",
    ] {
        assert!(stderr.contains(phase), "no {phase:?} narrated:\n{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_the_mesh_and_checks_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let out = tokio::task::block_in_place(|| {
        lab(&[
            "demo",
            "--steady",
            "--duration",
            "2s",
            "--rate",
            "300",
            "--invalid-ratio",
            "0.05",
            "--json",
            json.to_str().unwrap(),
        ])
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("0 missing, 0 at a wrong offset"),
        "{stdout}"
    );
    assert!(
        stdout.contains("INVALID_ARGUMENT"),
        "invalid share shows as errors: {stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["ok"].as_u64().unwrap() > 0);
    assert_eq!(
        report["acked"].as_array().unwrap().len() as u64,
        report["ok"].as_u64().unwrap()
    );
    for key in ["p50", "p90", "p99", "p999", "max"] {
        assert!(
            report["latency_ms"][key].as_f64().is_some(),
            "latency_ms.{key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_json_that_verify_checks_against_the_log() {
    let mesh = Mesh::start().await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("run.json");
    for mode in ["unary", "stream"] {
        let out = tokio::task::block_in_place(|| {
            loadgen(&[
                "run",
                "--target",
                &mesh.gateway.url(),
                "--mode",
                mode,
                "--rate",
                "200",
                "--duration",
                "1s",
                "-q",
                "--json",
                json.to_str().unwrap(),
            ])
        });
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        assert_eq!(report["mode"], mode);
        assert!(report["ok"].as_u64().unwrap() >= 150, "{report}");
        let verify = tokio::task::block_in_place(|| {
            loadgen(&[
                "verify",
                "--logging",
                &mesh.logging.url(),
                "--report",
                json.to_str().unwrap(),
            ])
        });
        let text = String::from_utf8_lossy(&verify.stdout);
        assert!(verify.status.success(), "verify failed: {text}");
        assert!(text.contains("\"missing\": []"), "{text}");
    }
    let bad = tokio::task::block_in_place(|| loadgen(&["run", "--rate", "-3"]));
    assert!(!bad.status.success());
}

/// `bench` against a base build (here the same binaries): every figure for both builds,
/// CPU per transaction charged to each mesh process, the tail on disk and on a tmpfs beside
/// the audit commit time, and the single-hop reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_prints_the_cost_per_process_the_tail_and_the_single_hop_ratio() {
    let tmpfs = tempfile::tempdir().unwrap();
    let base = bin_dir().to_str().unwrap().to_string();
    let out = tokio::task::block_in_place(|| {
        lab(&[
            "bench",
            "--modes",
            "stream",
            "--runs",
            "1",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--cost-rate",
            "300",
            "--stream-concurrency",
            "64",
            "--tmpfs",
            tmpfs.path().to_str().unwrap(),
            "--base-bin-dir",
            &base,
        ])
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bench failed: {stdout}\n{stderr}");
    // Each build's CPU per transaction, split by process, every process charged something.
    for build in ["base", "new"] {
        let line = stdout
            .lines()
            .find(|l| l.contains("cpu at 300/s") && l.contains(build))
            .unwrap_or_else(|| panic!("no cost line for {build}:\n{stdout}"));
        for role in ["gateway", "risk", "notification", "logging"] {
            let used: f64 = line
                .split(&format!("{role} "))
                .nth(1)
                .and_then(|rest| rest.split([',', ';']).next())
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {role} figure in {line:?}"));
            assert!(used > 0.0, "{role} charged nothing: {line}");
        }
    }
    for figure in [
        "saturation",
        "cpu at saturation",
        "p99 at half load, disk",
        "p99 at half load, tmpfs",
        "audit commit p99.9 runs",
        "machine stalls runs",
        "generator cpu runs",
        "single hop",
        "mesh / single hop",
    ] {
        assert!(stdout.contains(figure), "no {figure:?} in:\n{stdout}");
    }
    // Every half-load run read the gateway's own p99 from its histogram (numbers, not NaN:
    // the series was found).
    let half_load: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("p99 at half load"))
        .collect();
    assert!(!half_load.is_empty(), "no half-load rows in:\n{stdout}");
    // The figures listed after `label` up to `unit`, one per run (`None` unless every one
    // is a number: NaN would mean the figure was never read).
    let runs = |line: &str, label: &str, unit: &str| -> Option<Vec<f64>> {
        let (_, rest) = line.split_once(label)?;
        let (runs, _) = rest.split_once(unit)?;
        runs.split(' ').map(|v| v.parse::<f64>().ok()).collect()
    };
    for line in half_load {
        // The gateway's own p99, from its histogram: the series was found.
        assert!(
            runs(line, "gateway p99 runs ", " ms").is_some_and(|v| v.iter().all(|&v| v > 0.0)),
            "no gateway p99 in {line:?}"
        );
        // The stall probe's total and the generator's own CPU (from /proc), every run.
        for (label, unit) in [
            ("machine stalls runs ", " ms"),
            ("longest ", " ms"),
            ("generator cpu runs ", " %"),
        ] {
            assert!(
                runs(line, label, unit).is_some_and(|v| v.iter().all(|&v| v >= 0.0)),
                "no {label:?} figures in {line:?}"
            );
        }
    }
}
