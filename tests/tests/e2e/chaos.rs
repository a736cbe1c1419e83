//! `sluice-lab chaos`, short: every process killed once and frozen for a second under
//! stream and unary load. Nothing acknowledged may be missing from the audit log and nothing
//! may hang; every event must be recovered from.

use sluice_tests::bin_dir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kills_and_stops_lose_no_acknowledged_record_and_hang_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("chaos.json");
    let bins = bin_dir().to_str().unwrap().to_string();
    let out = tokio::process::Command::new(bin_dir().join("sluice-lab"))
        .args([
            "chaos",
            "--kills",
            "1",
            "--stop-for",
            "1s",
            "--settle",
            "1500ms",
            "--stream-rate",
            "200",
            "--unary-rate",
            "50",
            // As every end-to-end mesh: reconnects capped at 200 ms.
            "--gateway-flag=--reconnect-max=200ms",
            "--bin-dir",
            &bins,
            "--json",
            json.to_str().unwrap(),
        ])
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run sluice-lab chaos");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("chaos: PASS"), "{text}");

    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["passed"], true);
    assert_eq!(r["hung"], 0, "{text}");
    for list in ["missing", "wrong_offset", "duplicated"] {
        assert_eq!(
            r["audit"][list].as_array().map(Vec::len),
            Some(0),
            "{list}: {text}"
        );
    }
    let acknowledged = r["acknowledged"].as_u64().unwrap();
    assert!(acknowledged > 1000, "{text}");
    assert_eq!(r["audit"]["acknowledged"], acknowledged);
    // Every sent transaction has an outcome or is counted as NO_OUTCOME.
    for load in ["stream", "unary"] {
        let l = &r[load];
        let no_outcome = l["errors"]["NO_OUTCOME"].as_u64().unwrap_or(0);
        assert_eq!(
            l["completed"].as_u64().unwrap() + no_outcome,
            l["sent"].as_u64().unwrap(),
            "{load}: {text}"
        );
    }
    let events = r["events"].as_array().unwrap();
    assert_eq!(events.len(), 8, "a kill and a stop of each of 4 processes");
    for e in events {
        assert!(
            e["ready_after_s"].is_number() && e["first_ok_after_s"].is_number(),
            "not recovered within --settle: {e}\n{text}"
        );
    }
}
