//! The live pressure map on the gateway's admin port: with logging stalled under load, its
//! snapshot marks logging full (and nothing else), its event stream pushes snapshots, and
//! the page, rendered in headless Chromium, draws the logging hop full.
use std::net::SocketAddr;
use std::time::Duration;

use sluice_proto::pb::Faults;
use sluice_tests::{Mesh, STALL, bin_dir, chromium, eventually, http_get};

/// The JSON body of an admin response.
fn body(response: &str) -> Option<serde_json::Value> {
    serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()
}

fn hop<'a>(snapshot: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    snapshot["services"]
        .as_array()
        .and_then(|s| s.iter().find(|h| h["name"] == name))
        .unwrap_or_else(|| panic!("no {name} in {snapshot}"))
}

/// The first event of `/pressure/events`, parsed.
async fn first_event(admin: SocketAddr) -> serde_json::Value {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /pressure/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut lines = BufReader::new(s).lines();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(data) = line.strip_prefix("data:") {
                return serde_json::from_str(data.trim()).unwrap();
            }
        }
        panic!("the event stream ended")
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an event within 5 s")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_map_marks_a_stalled_logging_full() {
    let mesh = Mesh::start().await;
    let admin = mesh.gateway.admin.unwrap();
    let page = http_get(admin, "/").await.unwrap();
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    assert!(page.contains("Sluice pressure map"), "{page}");
    assert!(
        !page.contains("src=\"http") && !page.contains("href=\"http"),
        "self-contained: nothing loaded from elsewhere"
    );

    let mut load = tokio::process::Command::new(bin_dir().join("sluice-loadgen"))
        .args([
            "run",
            "--target",
            &mesh.gateway.url(),
            "--rate",
            "500",
            "--duration",
            "60s",
            "-q",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the load generator");
    // Flowing first: the map shows replies from logging.
    eventually(
        "logging replies on the map",
        Duration::from_secs(15),
        || async {
            let s = body(&http_get(admin, "/pressure").await?)?;
            (hop(&s, "logging")["rate"].as_f64()? > 0.0).then_some(())
        },
    )
    .await;
    let event = first_event(admin).await;
    assert_eq!(event["services"].as_array().map(Vec::len), Some(3));

    mesh.set_faults(&mesh.logging, STALL).await;
    let stalled = eventually("logging drawn full", Duration::from_secs(15), || async {
        let s = body(&http_get(admin, "/pressure").await?)?;
        (hop(&s, "logging")["full"] == true).then_some(s)
    })
    .await;
    for idle in ["risk", "notification"] {
        assert_eq!(hop(&stalled, idle)["full"], false, "{stalled}");
    }

    if let Some(chromium) = chromium() {
        let dir = std::env::var_os("SLUICE_SCREENSHOT_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let png = dir.join("pressure-map-logging-stalled.png");
        // One snapshot, no event stream: a page with a stream open never finishes loading,
        // so headless Chromium would wait for it for ever.
        let url = format!("http://{admin}/?once");
        let browse = |extra: Vec<String>| {
            let run = tokio::process::Command::new(chromium)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--hide-scrollbars",
                    "--window-size=1020,760",
                    "--virtual-time-budget=3000",
                ])
                .args(extra)
                .arg(&url)
                .kill_on_drop(true)
                .output();
            async move {
                tokio::time::timeout(Duration::from_secs(60), run)
                    .await
                    .expect("chromium finished within 60 s")
            }
        };
        let dom = browse(vec!["--dump-dom".into()]).await.unwrap();
        let dom = String::from_utf8_lossy(&dom.stdout);
        let logging_node = dom
            .split("<g ")
            .find(|g| g.contains("data-hop=\"logging\""))
            .unwrap_or_else(|| panic!("no logging node drawn:\n{dom}"));
        assert!(
            logging_node.contains("class=\"node full"),
            "logging not drawn full: {logging_node}"
        );
        let risk_node = dom
            .split("<g ")
            .find(|g| g.contains("data-hop=\"risk\""))
            .unwrap();
        assert!(!risk_node.contains("full"), "risk drawn full: {risk_node}");
        browse(vec![format!("--screenshot={}", png.display())])
            .await
            .unwrap();
        assert!(png.exists(), "chromium wrote no screenshot");
        eprintln!("screenshot: {}", png.display());
    } else {
        eprintln!(
            "SKIPPED: rendering check (no chromium; Debian's `chromium` package provides it)"
        );
    }

    mesh.set_faults(&mesh.logging, Faults::default()).await;
    load.kill().await.ok();
}
