//! The Grafana dashboard the compose `metrics` profile provisions (docker/grafana/): every
//! panel reads the provisioned Prometheus datasource, and every metric its PromQL names is
//! one the binaries export (read from the real binaries' `/metrics`).

use std::collections::BTreeSet;
use std::path::Path;

use sluice_tests::{Mesh, http_get, txn};

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every sample name a `/metrics` body can have: gauges as they are, counters with
/// `_total`, histograms with `_bucket`, `_sum` and `_count` — from the `# TYPE` lines, so a
/// family with no series yet counts too.
fn exported(body: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_string());
            }
        }
    }
    names
}

/// Whether the family behind `name` (`sluice_gateway_rejected_total` → `"rejected"`) is
/// registered in the binaries' sources: a labelled family shows in `/metrics` only once it
/// has a series (no notification shed yet, no series), so the scrape alone cannot vouch for
/// it.
fn registered(name: &str) -> bool {
    let Some(family) = [
        "sluice_gateway_",
        "sluice_risk_",
        "sluice_notification_",
        "sluice_logging_",
    ]
    .iter()
    .find_map(|p| name.strip_prefix(p)) else {
        return false;
    };
    let family = ["_total", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| family.strip_suffix(s))
        .unwrap_or(family);
    let quoted = format!("\"{family}\"");
    ["gateway/src", "services", "core/src"].iter().any(|dir| {
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir))
            .iter()
            .any(|f| std::fs::read_to_string(f).is_ok_and(|t| t.contains(&quoted)))
    })
}

/// Every `.rs` file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The `sluice_…` metric names in a PromQL expression.
fn named_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sluice_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        out.push(name);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_reads_the_provisioned_datasource_and_only_exported_metrics() {
    let datasource = repo("docker/grafana/provisioning/datasources/prometheus.yml");
    let uid = datasource
        .lines()
        .find_map(|l| l.trim().strip_prefix("uid:"))
        .map(str::trim)
        .expect("the datasource has a uid");
    let dashboard: serde_json::Value =
        serde_json::from_str(&repo("docker/grafana/dashboards/sluice.json")).unwrap();
    let provider = repo("docker/grafana/provisioning/dashboards/sluice.yml");
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    let compose = repo("docker-compose.yml");
    for mount in [
        "./docker/grafana/provisioning:/etc/grafana/provisioning",
        "./docker/grafana/dashboards:/var/lib/grafana/dashboards",
    ] {
        assert!(compose.contains(mount), "compose mounts {mount}");
    }

    let mesh = Mesh::start().await;
    // A transaction through and one refused, so those paths have series.
    let mut gw = mesh.gateway().await;
    gw.submit(txn("dash-1")).await.unwrap();
    let mut bad = txn("dash-2");
    bad.amount_minor = -1;
    gw.submit(bad)
        .await
        .expect_err("a negative amount is refused");
    let mut names = BTreeSet::new();
    for proc in [&mesh.gateway, &mesh.risk, &mesh.notification, &mesh.logging] {
        let body = http_get(proc.admin.unwrap(), "/metrics").await.unwrap();
        names.extend(exported(&body));
    }
    for scraped in [
        "sluice_gateway_transactions_total",
        "sluice_gateway_rejected_total",
    ] {
        assert!(names.contains(scraped), "{scraped} not in {names:?}");
    }
    assert!(!registered("sluice_gateway_no_such_family_total"));

    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 6, "{} panels", panels.len());
    let mut exprs = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        assert_eq!(panel["datasource"]["uid"], uid, "panel {title}");
        for target in panel["targets"].as_array().expect("targets") {
            assert_eq!(target["datasource"]["uid"], uid, "panel {title}");
            let expr = target["expr"].as_str().expect("expr");
            let named = named_in(expr);
            assert!(!named.is_empty(), "panel {title}: {expr} names no metric");
            for name in named {
                assert!(
                    names.contains(&name) || registered(&name),
                    "panel {title}: {name} (in {expr}) is not exported by any binary"
                );
            }
            exprs += 1;
        }
    }
    // What the issue asks the dashboard to show.
    let all = dashboard.to_string();
    for shown in [
        "downstream_queue_depth",
        "rejected_total",
        "latency_seconds_bucket",
        "process_resident_memory_bytes",
        "degradation_level",
        "bottleneck",
    ] {
        assert!(all.contains(shown), "the dashboard shows {shown}");
    }
    assert!(exprs >= 15, "{exprs} expressions");
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        named_in("histogram_quantile(0.99, sum by (le) (rate(sluice_a_bucket[30s]))) / sluice_b"),
        ["sluice_a_bucket", "sluice_b"]
    );
    let body = "# TYPE sluice_x counter\n# TYPE sluice_h histogram\n# TYPE sluice_g gauge\n";
    let names = exported(body);
    for n in [
        "sluice_x_total",
        "sluice_h_bucket",
        "sluice_h_count",
        "sluice_g",
    ] {
        assert!(names.contains(n), "{n}");
    }
}

/// Every metric name the map, the load generator and the lab read (`sluice_observe::names`)
/// is one the binaries serve — in their `/metrics` (families with series) or registered in
/// their sources (labelled families that have none yet) — so a rename cannot leave a reader
/// behind silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_name_readers_use_is_served() {
    use sluice_observe::names::{gateway, logging, service};
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;
    gw.submit(txn("names-1")).await.unwrap();
    let mut served = BTreeSet::new();
    for proc in [&mesh.gateway, &mesh.risk, &mesh.notification, &mesh.logging] {
        let body = http_get(proc.admin.unwrap(), "/metrics").await.unwrap();
        served.extend(exported(&body));
    }
    let mut read: Vec<String> = gateway::ALL.iter().map(|n| n.to_string()).collect();
    for s in ["risk", "notification", "logging"] {
        read.extend(service::ALL.iter().map(|m| service::name(s, m)));
    }
    read.push(logging::AUDIT_FSYNC_SECONDS.to_string());
    let mut missing = Vec::new();
    for name in &read {
        let as_histogram = format!("{name}_bucket");
        // The admin listener's connection metrics are the gRPC listener's, registered
        // again under an `admin` prefix.
        let unprefixed = name.replacen("_admin_", "_", 1);
        if !(served.contains(name)
            || served.contains(&as_histogram)
            || registered(name)
            || (name.contains("_admin_") && registered(&unprefixed)))
        {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "read but not served: {missing:?}\nserved: {served:?}"
    );
    assert!(gateway::ALL.iter().all(|n| n.starts_with(gateway::PREFIX)));
}
