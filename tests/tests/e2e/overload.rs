//! Overload control end to end, against the real binaries: the adaptive limit follows a
//! slow hop, per-client token buckets push back by their refill time, priorities are shed in
//! order, degradation levels and the bottleneck follow a slow logging and a slow risk, and a
//! client that throttles itself keeps its goodput with a fraction of the refusals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::{Faults, NotificationStatus, Outcome, Priority};
use sluice_tests::{Mesh, MeshOptions, eventually, loadgen_json, metric, txn};
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

use sluice_tests::CLEAR;

fn delay(ms: u32) -> Faults {
    Faults {
        delay_ms: ms,
        ..CLEAR
    }
}

fn with_gateway(flags: &[&str]) -> MeshOptions {
    MeshOptions {
        gateway: flags.iter().map(|f| f.to_string()).collect(),
        ..MeshOptions::default()
    }
}

async fn gauge(admin: SocketAddr, name: &str) -> f64 {
    metric(admin, name)
        .await
        .unwrap_or_else(|| panic!("{name} is exported"))
}

/// Closed-loop unary load from `workers` callers until `stop`; `priority` for each.
fn closed_loop(
    gw: &GatewayClient<Channel>,
    workers: usize,
    prefix: &str,
    priority: Priority,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Vec<Outcome>>> {
    (0..workers)
        .map(|w| {
            let (mut gw, stop, prefix) = (gw.clone(), stop.clone(), prefix.to_string());
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let mut t = txn(&format!("{prefix}-{w}-{n}"));
                    t.priority = priority as i32;
                    let mut request = tonic::Request::new(t);
                    request.set_timeout(Duration::from_secs(10));
                    match gw.submit(request).await {
                        Ok(o) => outcomes.push(o.into_inner()),
                        // Refused (the limit moved under us): the caller's pushback.
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                outcomes
            })
        })
        .collect()
}

/// Waits (30 s at most) until the gateway has answered `n` unary transactions OK.
async fn ok_outcomes(admin: SocketAddr, n: f64, what: &str) {
    eventually(what, Duration::from_secs(30), || async {
        let ok = metric(
            admin,
            "sluice_gateway_transactions_total{api=\"unary\",result=\"ok\"}",
        )
        .await?;
        (ok >= n).then_some(())
    })
    .await;
}

async fn stop_all(stop: &AtomicBool, workers: Vec<JoinHandle<Vec<Outcome>>>) -> Vec<Outcome> {
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.expect("worker"));
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowing_logging_lowers_the_limit_within_two_seconds_and_recovery_raises_it() {
    // The limit between 8 and 64 (it starts at 64), so 80 callers keep it in use.
    let mesh = Mesh::start_with(with_gateway(&[
        "--degradation",
        "off",
        "--concurrency-min",
        "8",
        "--concurrency-max",
        "64",
    ]))
    .await;
    let admin = mesh.gateway.admin.unwrap();
    let gw = mesh.gateway().await;
    let stop = Arc::new(AtomicBool::new(false));
    // More callers than the limit admits: it is in use, so latency moves it.
    let workers = closed_loop(&gw, 80, "limit", Priority::Default, &stop);
    const LIMIT: &str = "sluice_gateway_concurrency_limit ";
    ok_outcomes(admin, 500.0, "load").await;
    let before = gauge(admin, LIMIT).await;
    assert!(before >= 32.0, "{before}");
    mesh.set_faults(&mesh.logging, delay(100)).await;
    let slowed_at = Instant::now();
    let slowed = eventually("the limit to fall", Duration::from_secs(5), || async {
        let l = gauge(admin, LIMIT).await;
        (l <= before / 2.0).then_some(l)
    })
    .await;
    let took = slowed_at.elapsed();
    assert!(
        took <= Duration::from_secs(2),
        "the limit took {took:?} to fall from {before} to {slowed}"
    );
    let low = eventually(
        "the limit near its floor",
        Duration::from_secs(10),
        || async {
            let l = gauge(admin, LIMIT).await;
            (l <= 16.0).then_some(l)
        },
    )
    .await;
    mesh.set_faults(&mesh.logging, CLEAR).await;
    // 80 callers want more than the low limit lets in: it grows again.
    eventually(
        "the limit to rise again",
        Duration::from_secs(20),
        || async { (gauge(admin, LIMIT).await >= low * 2.0).then_some(()) },
    )
    .await;
    let baseline = gauge(admin, "sluice_gateway_concurrency_baseline_seconds ").await;
    assert!(
        baseline > 0.0 && baseline < 0.05,
        "the baseline is the fast latency, not the slowed one: {baseline}"
    );
    let outcomes = stop_all(&stop, workers).await;
    assert!(!outcomes.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_rate_gets_pushback_equal_to_the_refill_time() {
    let mesh = Mesh::start_with(with_gateway(&[
        "--client-rate",
        "10",
        "--client-burst",
        "2",
    ]))
    .await;
    let mut gw = mesh.gateway().await;
    let as_client = |id: &str, client: &str| {
        let mut r = tonic::Request::new(txn(id));
        r.metadata_mut()
            .insert("x-client-id", client.parse().unwrap());
        r
    };
    let first = Instant::now();
    gw.submit(as_client("rate-1", "alice"))
        .await
        .expect("burst 1");
    gw.submit(as_client("rate-2", "alice"))
        .await
        .expect("burst 2");
    let refused = gw
        .submit(as_client("rate-3", "alice"))
        .await
        .expect_err("over the rate");
    let elapsed = first.elapsed();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("alice"), "{refused:?}");
    let pushback: u64 = refused
        .metadata()
        .get("grpc-retry-pushback-ms")
        .expect("pushback")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One token per 100 ms; the first was taken `elapsed` ago: the next is due in
    // 100 ms - elapsed (±10 %).
    let due = 100u64.saturating_sub(elapsed.as_millis() as u64);
    assert!(
        pushback <= 110 && pushback + 10 >= due,
        "pushback {pushback} ms, next token due in {due} ms"
    );
    // Another client has a bucket of its own.
    gw.submit(as_client("rate-bob", "bob")).await.expect("bob");
    // Retrying after the pushback finds the token.
    tokio::time::sleep(Duration::from_millis(pushback)).await;
    gw.submit(as_client("rate-3", "alice"))
        .await
        .expect("a token after the pushback");
    let bad = gw
        .submit(as_client("rate-4", &"x".repeat(65)))
        .await
        .expect_err("too long");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("x-client-id"), "{bad:?}");
    let admin = mesh.gateway.admin.unwrap();
    let limited = gauge(
        admin,
        "sluice_gateway_rejected_total{api=\"unary\",reason=\"client_rate\"}",
    )
    .await;
    assert_eq!(limited, 1.0);
}

/// A client that throttles itself (`--client-throttle`) once refused sends the gateway
/// about K calls per one it accepts: the same goodput with a fraction of the refusals. The
/// gateway refuses by a client token bucket here (200/s), so what it accepts is the same
/// in both runs whatever the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_client_keeps_its_goodput_with_a_fraction_of_the_refusals() {
    const RATE: f64 = 200.0;
    let mesh = Mesh::start_with(with_gateway(&[
        "--client-rate",
        "200",
        "--client-burst",
        "20",
    ]))
    .await;
    let target = mesh.gateway.url();
    let run = |throttle: Option<&'static str>| {
        let target = target.clone();
        async move {
            let mut args = vec![
                "run",
                "--target",
                &target,
                "--mode",
                "unary",
                "--rate",
                "1000",
                "--duration",
                "3s",
                "--client-id",
                "eager",
            ];
            if let Some(k) = throttle {
                args.extend(["--client-throttle", k]);
            }
            loadgen_json(&args).await.1
        }
    };
    let plain = run(None).await;
    let throttled = run(Some("1.1")).await;
    let refused = |r: &serde_json::Value| r["errors"]["RESOURCE_EXHAUSTED"].as_u64().unwrap_or(0);
    let (ok_plain, ok_throttled) = (
        plain["ok"].as_u64().unwrap(),
        throttled["ok"].as_u64().unwrap(),
    );
    // The bucket's 200/s over 3 s (and its burst), whoever asks.
    for ok in [ok_plain, ok_throttled] {
        assert!(
            (0.8 * 3.0 * RATE..=1.2 * 3.0 * RATE + 20.0).contains(&(ok as f64)),
            "ok {ok}: plain {plain:#}\nthrottled {throttled:#}"
        );
    }
    assert_eq!(plain["throttled"], 0);
    let kept_back = throttled["throttled"].as_u64().unwrap();
    assert!(kept_back > 1000, "the client held back only {kept_back}");
    assert!(
        refused(&throttled) * 3 < refused(&plain),
        "refusals: {} throttled vs {} plain",
        refused(&throttled),
        refused(&plain)
    );
    // Every scheduled call is sent or held back, but for the few a generator that fell
    // behind at the very end could not send (counted as scheduled, not sent).
    let accounted = throttled["sent"].as_u64().unwrap() + kept_back;
    let scheduled = throttled["scheduled"].as_u64().unwrap();
    assert!(
        accounted <= scheduled && accounted * 100 >= scheduled * 99,
        "{accounted} sent or held back of {scheduled} scheduled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_is_refused_before_default_and_critical_is_never_starved() {
    // A static limit of 20: SHEDDABLE may fill 15, DEFAULT 18, CRITICAL all 20. Every
    // client here may claim CRITICAL.
    let mesh = Mesh::start_with(with_gateway(&[
        "--concurrency-limit",
        "static",
        "--concurrency-max",
        "20",
        "--priority-policy",
        "*=critical",
    ]))
    .await;
    let admin = mesh.gateway.admin.unwrap();
    // Each transaction holds its slot for 5 s.
    mesh.set_faults(&mesh.logging, delay(5_000)).await;
    let gw = mesh.gateway().await;
    let submit = |id: String, priority: Priority| {
        let mut gw = gw.clone();
        async move {
            let mut t = txn(&id);
            t.priority = priority as i32;
            let mut r = tonic::Request::new(t);
            r.set_timeout(Duration::from_secs(20));
            gw.submit(r).await
        }
    };
    let hold = |n: usize, from: usize, priority: Priority| {
        (from..from + n)
            .map(|i| tokio::spawn(submit(format!("held-{i}"), priority)))
            .collect::<Vec<_>>()
    };
    let inflight = |n: f64| async move {
        eventually(
            "transactions in flight",
            Duration::from_secs(10),
            || async {
                (metric(admin, "sluice_gateway_inflight{api=\"unary\"}").await? >= n).then_some(())
            },
        )
        .await
    };
    let mut held = hold(15, 0, Priority::Default);
    inflight(15.0).await;
    let shed = submit("shed-1".into(), Priority::Sheddable)
        .await
        .expect_err("SHEDDABLE is over its share at 15");
    assert_eq!(shed.code(), Code::ResourceExhausted);
    assert!(shed.message().contains("concurrency limit"), "{shed:?}");
    held.extend(hold(3, 15, Priority::Default));
    inflight(18.0).await;
    let default = submit("default-1".into(), Priority::Default)
        .await
        .expect_err("DEFAULT is over its share at 18");
    assert_eq!(default.code(), Code::ResourceExhausted);
    // CRITICAL still finds room, and so does the next one.
    let critical = hold(2, 100, Priority::Critical);
    inflight(20.0).await;
    mesh.set_faults(&mesh.logging, CLEAR).await;
    for c in critical {
        c.await.unwrap().expect("CRITICAL admitted");
    }
    for h in held {
        h.await.unwrap().expect("held DEFAULT completes");
    }
    let refused = |reason: &'static str| async move {
        metric(
            admin,
            &format!("sluice_gateway_rejected_total{{api=\"unary\",reason=\"{reason}\"}}"),
        )
        .await
    };
    assert_eq!(refused("concurrency_limit").await, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_and_the_bottleneck_follow_a_slow_hop_and_leave_when_it_recovers() {
    // CRITICAL callers are granted it: their notices are never skipped.
    let mesh = Mesh::start_with(with_gateway(&["--priority-policy", "*=critical"])).await;
    let admin = mesh.gateway.admin.unwrap();
    let gw = mesh.gateway().await;
    let stop = Arc::new(AtomicBool::new(false));
    let default = closed_loop(&gw, 12, "deg", Priority::Default, &stop);
    let critical = closed_loop(&gw, 2, "deg-crit", Priority::Critical, &stop);
    const LEVEL: &str = "sluice_gateway_degradation_level ";
    let named = |hop: &'static str| async move {
        metric(
            admin,
            &format!("sluice_gateway_bottleneck{{hop=\"{hop}\"}}"),
        )
        .await
    };
    // Steady load for a few periods: nothing is degraded, no hop is named.
    ok_outcomes(admin, 2_000.0, "steady load").await;
    assert_eq!(gauge(admin, LEVEL).await, 0.0);
    for hop in ["admission", "risk", "logging"] {
        assert_eq!(named(hop).await, Some(0.0), "{hop} named at steady load");
    }

    // Logging 120 ms slow: p99 over the 50 ms SLO → level 1 after 3 periods, and logging
    // named; non-critical notices are skipped, CRITICAL ones still go.
    mesh.set_faults(&mesh.logging, delay(120)).await;
    let slowed = Instant::now();
    eventually("level 1", Duration::from_secs(10), || async {
        (gauge(admin, LEVEL).await >= 1.0).then_some(())
    })
    .await;
    // Three periods must ask for it; the one before the fault may have (a slow fsync).
    assert!(
        slowed.elapsed() >= Duration::from_secs(1),
        "entered after {:?}: hysteresis needs 3 periods",
        slowed.elapsed()
    );
    let share = eventually("logging named", Duration::from_secs(10), || async {
        named("logging").await.filter(|s| *s > 0.4)
    })
    .await;
    assert!(share > 0.4 && share <= 1.0, "{share}");
    eventually("notices skipped", Duration::from_secs(10), || async {
        (metric(
            admin,
            "sluice_gateway_notifications_shed_total{reason=\"degraded\"}",
        )
        .await?
            > 0.0)
            .then_some(())
    })
    .await;

    // Now risk is the slow one.
    mesh.set_faults(&mesh.logging, CLEAR).await;
    mesh.set_faults(&mesh.risk, delay(120)).await;
    eventually("risk named", Duration::from_secs(15), || async {
        named("risk").await.filter(|s| *s > 0.4)
    })
    .await;
    assert_eq!(named("logging").await, Some(0.0), "one hop at a time");

    // Recovered: the level leaves after 5 calm periods, the bottleneck with the latency.
    mesh.set_faults(&mesh.risk, CLEAR).await;
    let calm = Instant::now();
    eventually("level 0 again", Duration::from_secs(20), || async {
        (gauge(admin, LEVEL).await == 0.0).then_some(())
    })
    .await;
    assert!(
        calm.elapsed() >= Duration::from_secs(4),
        "left after {:?}: hysteresis needs 5 calm periods",
        calm.elapsed()
    );
    assert_eq!(named("risk").await, Some(0.0));
    let default = stop_all(&stop, default).await;
    let critical = stop_all(&stop, critical).await;
    let shed = |outcomes: &[Outcome]| {
        outcomes
            .iter()
            .filter(|o| o.notification == NotificationStatus::Shed as i32)
            .count()
    };
    assert!(
        shed(&default) > 0,
        "DEFAULT notices were skipped while degraded"
    );
    assert_eq!(shed(&critical), 0, "CRITICAL notices are never skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_logging_is_named_the_bottleneck() {
    let mesh = Mesh::start().await;
    let admin = mesh.gateway.admin.unwrap();
    let gw = mesh.gateway().await;
    let stop = Arc::new(AtomicBool::new(false));
    let workers = closed_loop(&gw, 8, "stall", Priority::Default, &stop);
    ok_outcomes(admin, 200.0, "load").await;
    // Nothing finishes: there is no latency to split, and the hop holding the work is named.
    mesh.set_faults(
        &mesh.logging,
        Faults {
            stall: true,
            ..CLEAR
        },
    )
    .await;
    eventually("logging named", Duration::from_secs(10), || async {
        metric(admin, "sluice_gateway_bottleneck{hop=\"logging\"}")
            .await
            .filter(|s| *s > 0.4)
    })
    .await;
    assert_eq!(
        metric(admin, "sluice_gateway_bottleneck{hop=\"risk\"}").await,
        Some(0.0)
    );
    mesh.set_faults(&mesh.logging, CLEAR).await;
    stop_all(&stop, workers).await;
}
