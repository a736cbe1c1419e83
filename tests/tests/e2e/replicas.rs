//! Replicas: several risk processes behind one gateway (account affinity, p2c around a slow
//! replica, a replica killed under load) and a partitioned audit log (a partition down
//! fails only its own transactions; nothing acknowledged is lost).

use sluice_core::exposition::Samples;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_lab::loadgen::report::Acked;
use sluice_proto::pb::{Decision, Faults, Transaction};
use sluice_tests::{Mesh, MeshOptions, eventually, http_get, metric, txn};
use tonic::Code;

const CALL_TIMEOUT: Duration = Duration::from_secs(5);

fn options(risk_replicas: usize, partitions: usize, gateway: &[&str]) -> MeshOptions {
    MeshOptions {
        risk_replicas,
        logging_partitions: partitions,
        gateway: gateway.iter().map(|s| s.to_string()).collect(),
        ..MeshOptions::default()
    }
}

/// Streams the gateway opens to each replica (its default).
const PER_REPLICA: f64 = sluice_gateway::downstream::DEFAULT_STREAMS as f64;

/// Waits until the gateway's live streams to `downstream` (all replicas) satisfy `ok`.
async fn wait_live_streams_until(
    mesh: &Mesh,
    downstream: &str,
    what: &str,
    ok: impl Fn(f64) -> bool,
) {
    let admin = mesh.gateway.admin.expect("gateway admin");
    let name = format!("sluice_gateway_downstream_live_streams{{downstream=\"{downstream}\"}}");
    eventually(
        &format!("{what} live {downstream} streams"),
        Duration::from_secs(20),
        || async { ok(metric(admin, &name).await?).then_some(()) },
    )
    .await;
}

/// Waits until the gateway has at least `streams` live streams to `downstream`.
async fn wait_live_streams(mesh: &Mesh, downstream: &str, streams: f64) {
    wait_live_streams_until(mesh, downstream, &format!("{streams}"), |n| n >= streams).await;
}

/// Waits until the gateway has at most `streams` live streams to `downstream`.
async fn wait_live_streams_at_most(mesh: &Mesh, downstream: &str, streams: f64) {
    let what = format!("at most {streams}");
    wait_live_streams_until(mesh, downstream, &what, |n| n <= streams).await;
}

/// Requests the gateway has routed to each risk replica, by the replica's address.
async fn risk_requests(gateway_admin: SocketAddr, replicas: &[SocketAddr]) -> Vec<f64> {
    let body = http_get(gateway_admin, "/metrics").await.expect("metrics");
    replicas
        .iter()
        .map(|addr| {
            let series = format!(
                "sluice_gateway_downstream_replica_requests_total{{downstream=\"risk\",replica=\"{addr}\"}}"
            );
            Samples::parse(&body).get(&series).unwrap_or(0.0)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_meets_one_risk_replica_so_the_21st_is_review() {
    let mesh = Mesh::start_with(options(3, 1, &[])).await;
    // Every replica connected first: an account's home must be there from the start.
    wait_live_streams(&mesh, "risk", 3.0 * PER_REPLICA).await;
    let mut gw = mesh.gateway().await;
    let mut decisions = Vec::new();
    for n in 1..=21 {
        let t = Transaction {
            account: "acct-velocity".into(),
            ..txn(&format!("velocity-{n}"))
        };
        decisions.push(gw.submit(t).await.expect("submit").into_inner());
    }
    for (n, o) in decisions.iter().take(20).enumerate() {
        assert_eq!(o.decision, Decision::Approve as i32, "txn {}: {o:?}", n + 1);
    }
    let last = &decisions[20];
    assert_eq!(last.decision, Decision::Review as i32, "{last:?}");
    assert!(
        last.reasons.iter().any(|r| r == "account_velocity"),
        "{last:?}"
    );
    // Other accounts still spread over every replica.
    for n in 0..60 {
        gw.submit(txn(&format!("spread-{n}")))
            .await
            .expect("submit");
    }
    let addrs: Vec<SocketAddr> = mesh.risks().map(|p| p.grpc).collect();
    let per = risk_requests(mesh.gateway.admin.unwrap(), &addrs).await;
    assert!(per.iter().all(|&n| n > 0.0), "every replica used: {per:?}");
}

/// Closed-loop unary load from `workers` tasks until `stop`; counts outcomes and errors.
type Errors = Arc<Mutex<Vec<tonic::Status>>>;

fn drive(
    gw: sluice_proto::pb::gateway_client::GatewayClient<tonic::transport::Channel>,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicUsize>, Errors, Vec<tokio::task::JoinHandle<()>>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let errors: Arc<Mutex<Vec<tonic::Status>>> = Arc::default();
    let tasks = (0..workers)
        .map(|w| {
            let (mut gw, stop, ok, errors) = (gw.clone(), stop.clone(), ok.clone(), errors.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut request = tonic::Request::new(txn(&format!("load-{w}-{n}")));
                    request.set_timeout(CALL_TIMEOUT);
                    match gw.submit(request).await {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(status) => errors.lock().unwrap().push(status),
                    }
                }
            })
        })
        .collect();
    (ok, errors, tasks)
}

/// Waits until `ok` has grown by `n`.
async fn wait_more(ok: &AtomicUsize, n: usize, what: &str) {
    let target = ok.load(Ordering::Relaxed) + n;
    eventually(what, Duration::from_secs(30), || async {
        (ok.load(Ordering::Relaxed) >= target).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p2c_routes_around_a_slow_risk_replica_within_two_seconds() {
    let mesh = Mesh::start_with(options(3, 1, &["--risk-routing", "balance"])).await;
    wait_live_streams(&mesh, "risk", 3.0 * PER_REPLICA).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors, tasks) = drive(mesh.gateway().await, 16, stop.clone());
    wait_more(&ok, 500, "load under way").await;
    let slow = &mesh.more_risk[1];
    mesh.set_faults(
        slow,
        Faults {
            delay_ms: 50,
            ..Default::default()
        },
    )
    .await;
    // The bound: within 2 s of slowing down, the slow replica gets ≤ 10 %.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let addrs: Vec<SocketAddr> = mesh.risks().map(|p| p.grpc).collect();
    let admin = mesh.gateway.admin.unwrap();
    let before = risk_requests(admin, &addrs).await;
    wait_more(&ok, 2000, "2000 more outcomes").await;
    let after = risk_requests(admin, &addrs).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let total: f64 = delta.iter().sum();
    let share = delta[2] / total;
    eprintln!(
        "slow replica share {:.1} % of {total} ({delta:?})",
        share * 100.0
    );
    assert!(
        share <= 0.10,
        "slow replica took {:.1} % ({delta:?})",
        share * 100.0
    );
    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_risk_replica_costs_the_client_no_error() {
    let mut mesh = Mesh::start_with(options(3, 1, &[])).await;
    wait_live_streams(&mesh, "risk", 3.0 * PER_REPLICA).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, errors, tasks) = drive(mesh.gateway().await, 16, stop.clone());
    wait_more(&ok, 500, "load under way").await;
    let retried_before = metric(
        mesh.gateway.admin.unwrap(),
        "sluice_gateway_risk_retries_total",
    )
    .await
    .unwrap_or(0.0);
    // A risk reply takes a millisecond: at a random instant the replica may hold nothing.
    // Stalled, it keeps what it is sent unanswered, so the kill is sure to cost requests.
    let victim = mesh.more_risk[0].grpc;
    mesh.set_faults(
        &mesh.more_risk[0],
        Faults {
            stall: true,
            ..Default::default()
        },
    )
    .await;
    let admin = mesh.gateway.admin.unwrap();
    let held = format!(
        "sluice_gateway_downstream_replica_outstanding{{downstream=\"risk\",replica=\"{victim}\"}}"
    );
    eventually(
        "requests held by the stalled replica",
        Duration::from_secs(10),
        || async {
            let body = http_get(admin, "/metrics").await?;
            let n = Samples::parse(&body).get(&held)?;
            (n >= 1.0).then_some(())
        },
    )
    .await;
    mesh.more_risk[0].sigkill();
    // The gateway notices (its streams to the replica break) and traffic goes on.
    wait_live_streams_at_most(&mesh, "risk", 2.0 * PER_REPLICA).await;
    wait_more(&ok, 1000, "1000 outcomes after the kill").await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let errors = std::mem::take(&mut *errors.lock().unwrap());
    assert!(
        errors.is_empty(),
        "{} errors: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    let retried = metric(
        mesh.gateway.admin.unwrap(),
        "sluice_gateway_risk_retries_total",
    )
    .await
    .unwrap_or(0.0);
    // Not vacuous: requests were held by the replica when it died, and the gateway sent
    // them elsewhere.
    assert!(
        retried > retried_before,
        "no request was retried: nothing was in flight on the killed replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_audit_partition_fails_only_its_own_transactions() {
    let mut mesh = Mesh::start_with(options(1, 2, &[])).await;
    wait_live_streams(&mesh, "logging", 2.0 * PER_REPLICA).await;
    let mut gw = mesh.gateway().await;
    let mut acked = Vec::new();
    for n in 0..40 {
        let id = format!("part-a-{n}");
        let o = gw.submit(txn(&id)).await.expect("submit").into_inner();
        assert_eq!(
            o.audit_partition,
            sluice_proto::partition::of(&id, 2),
            "{id}"
        );
        acked.push(Acked {
            id,
            offset: o.audit_offset,
            partition: o.audit_partition,
            hlc: 0,
            after_hlc: 0,
        });
    }
    assert!(acked.iter().any(|a| a.partition == 1) && acked.iter().any(|a| a.partition == 0));

    mesh.more_logging[0].sigkill();
    wait_live_streams_at_most(&mesh, "logging", 2.0).await;
    let mut failed = Vec::new();
    for n in 0..40 {
        let id = format!("part-b-{n}");
        let mut request = tonic::Request::new(txn(&id));
        request.set_timeout(CALL_TIMEOUT);
        let started = Instant::now();
        match gw.submit(request).await {
            Ok(o) => {
                let o = o.into_inner();
                assert_eq!(
                    o.audit_partition, 0,
                    "{id} acknowledged by partition 1 while it is down"
                );
                acked.push(Acked {
                    id,
                    offset: o.audit_offset,
                    partition: 0,
                    hlc: 0,
                    after_hlc: 0,
                });
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert_eq!(sluice_proto::partition::of(&id, 2), 1, "{id}: {status:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(1),
                    "slow failure: {:?}",
                    started.elapsed()
                );
                failed.push(id);
            }
        }
    }
    assert!(!failed.is_empty(), "some ids belong to partition 1");

    mesh.more_logging[0].respawn().expect("restart partition 1");
    wait_live_streams(&mesh, "logging", 2.0 * PER_REPLICA).await;
    for id in failed {
        let o = gw.submit(txn(&id)).await.expect("resubmit").into_inner();
        assert_eq!(o.audit_partition, 1);
        acked.push(Acked {
            id,
            offset: o.audit_offset,
            partition: 1,
            hlc: 0,
            after_hlc: 0,
        });
    }
    let check = sluice_lab::loadgen::report::audit::check(&mesh.logging_urls(), &acked)
        .await
        .expect("read both partitions");
    assert!(check.passed(), "{check:?}");
    assert_eq!(check.records_in_log, acked.len());
}
