//! Backpressure across every hop, proven against the real binaries. Bounds in assertions are
//! computed from the flags each test passes, not magic numbers.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_proto::pb::{Faults, Transaction};
use sluice_tests::{Mesh, MeshOptions, eventually, loadgen_json, metric, metric_reaches, txn};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// The gateway's flags, with the adaptive concurrency limit and degradation off: these
/// tests prove the static bounds underneath (queues, windows, in-flight ceilings), which an
/// adaptive limit would keep from ever filling. `overload.rs` tests the adaptive layer.
fn strings(list: &[&str]) -> Vec<String> {
    ["--concurrency-limit", "static", "--degradation", "off"]
        .iter()
        .chain(list)
        .map(|s| s.to_string())
        .collect()
}

use sluice_tests::{CLEAR, STALL};
const MIB: f64 = 1024.0 * 1024.0;

/// Per-second timeline points of a report whose `t` lies in `[from, to]`.
fn points(report: &Value, from: f64, to: f64) -> Vec<&Value> {
    report["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|p| (from..=to).contains(&p["t"].as_f64().unwrap()))
        .collect()
}

fn sum(points: &[&Value], key: &str) -> f64 {
    points.iter().map(|p| p[key].as_f64().unwrap()).sum()
}

/// Every acknowledged id in `report` is in the audit log at its offset.
async fn assert_acked_logged(mesh: &Mesh, report: &Value) -> usize {
    let logged: HashMap<String, u64> = mesh
        .audit_entries()
        .await
        .into_iter()
        .map(|e| (e.id, e.offset))
        .collect();
    let acked = report["acked"].as_array().unwrap();
    for a in acked {
        let id = a["id"].as_str().unwrap();
        assert_eq!(
            logged.get(id).copied(),
            a["offset"].as_u64(),
            "acknowledged {id} missing or moved"
        );
    }
    acked.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_logging_blocks_stream_clients_with_flat_memory_and_loses_nothing() {
    const QUEUE: f64 = 256.0;
    const STREAMS: f64 = 2.0;
    const STREAM_INFLIGHT: f64 = 64.0;
    const INGRESS_INFLIGHT: f64 = 512.0;
    const CLIENTS: f64 = 2.0;
    const STALL_FOR: Duration = Duration::from_secs(20);
    let mesh = Mesh::start_with(MeshOptions {
        gateway: strings(&[
            "--unary-reserved",
            "0", // streams alone: the whole queue is theirs
            "--downstream-queue",
            "256",
            "--streams-per-downstream",
            "2",
            "--downstream-stream-inflight",
            "64",
            "--stream-inflight",
            "512",
            "--default-deadline",
            "120s",
        ]),
        ..Default::default()
    })
    .await;
    let admin = mesh.gateway.admin.unwrap();
    let target = mesh.gateway.url();
    // Admitted but unacknowledged transactions wait in logging's queue or on its streams.
    let bound = (QUEUE + STREAMS * STREAM_INFLIGHT).min(CLIENTS * INGRESS_INFLIGHT);

    loadgen_json(&[
        "run",
        "--target",
        &target,
        "--mode",
        "stream",
        "--rate",
        "1000",
        "--duration",
        "1s",
    ])
    .await;
    let baseline = metric(admin, "sluice_gateway_process_resident_memory_bytes")
        .await
        .unwrap();

    mesh.set_faults(&mesh.logging, STALL).await;
    let load = {
        let target = target.clone();
        tokio::spawn(async move {
            loadgen_json(&[
                "run",
                "--target",
                &target,
                "--mode",
                "stream",
                "--rate",
                "20000",
                "--duration",
                "30s",
                "--connections",
                "2",
                "--timeout",
                "120s",
                "--id-prefix",
                "bp-stream",
            ])
            .await
        })
    };
    let (mut max_inflight, mut max_rss) = (0f64, 0f64);
    let stall_end = Instant::now() + STALL_FOR;
    while Instant::now() < stall_end {
        if let Some(v) = metric(admin, "sluice_gateway_inflight{api=\"stream\"}").await {
            max_inflight = max_inflight.max(v);
        }
        if let Some(v) = metric(admin, "sluice_gateway_process_resident_memory_bytes").await {
            max_rss = max_rss.max(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    mesh.set_faults(&mesh.logging, CLEAR).await;
    let (_, report) = load.await.unwrap();

    assert!(
        max_inflight <= bound,
        "accepted-but-unacknowledged {max_inflight} exceeded the bound {bound}"
    );
    assert!(
        max_inflight >= 0.9 * bound,
        "the bound was never reached ({max_inflight} of {bound}): not under pressure"
    );
    let growth = (max_rss - baseline) / MIB;
    assert!(
        growth < 48.0,
        "gateway memory grew {growth:.1} MiB over its {:.1} MiB baseline",
        baseline / MIB
    );

    let stalled = points(&report, 3.0, 18.0);
    assert!(stalled.len() >= 10, "{report}");
    assert_eq!(
        sum(&stalled, "ok"),
        0.0,
        "nothing completes while logging is stalled"
    );
    let blocked = sum(&stalled, "blocked_pct") / stalled.len() as f64;
    assert!(
        blocked > 90.0,
        "the client's sends were blocked only {blocked:.1}% of the stall"
    );
    let after = points(&report, 23.0, 31.0);
    let best = after
        .iter()
        .map(|p| p["ok"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        best >= 500.0,
        "throughput did not return after unstall: {after:?}"
    );

    assert!(
        report["errors"].as_object().unwrap().is_empty(),
        "every accepted transaction completed: {}",
        report["errors"]
    );
    assert_eq!(report["completed"], report["sent"]);
    assert!(assert_acked_logged(&mesh, &report).await > 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_logging_refuses_unary_fast_with_pushback_and_loses_nothing() {
    const QUEUE: u64 = 64;
    const STREAMS: u64 = 2;
    const STREAM_INFLIGHT: u64 = 16;
    const CALLS: usize = 400;
    let mesh = Mesh::start_with(MeshOptions {
        gateway: strings(&[
            "--unary-reserved",
            "0", // streams alone: the whole queue is theirs
            "--downstream-queue",
            "64",
            "--streams-per-downstream",
            "2",
            "--downstream-stream-inflight",
            "16",
            "--max-inflight",
            "4096",
            "--default-deadline",
            "120s",
            "--retry-pushback",
            "250ms",
        ]),
        ..Default::default()
    })
    .await;
    let admin = mesh.gateway.admin.unwrap();
    let bound = QUEUE + STREAMS * STREAM_INFLIGHT;
    mesh.set_faults(&mesh.logging, STALL).await;

    let gw = mesh.gateway().await;
    let (tx, mut rx) = mpsc::channel(CALLS);
    let send = |calls: std::ops::Range<usize>| {
        for i in calls {
            let (mut gw, tx) = (gw.clone(), tx.clone());
            tokio::spawn(async move {
                let id = format!("bp-unary-{i}");
                let mut request = tonic::Request::new(txn(&id));
                request.set_timeout(Duration::from_secs(120));
                let started = Instant::now();
                let result = gw
                    .submit(request)
                    .await
                    .map(|r| r.into_inner().audit_offset);
                let _ = tx.send((id, result, started.elapsed())).await;
            });
        }
    };
    // First as many calls as logging's streams carry: they leave the queue for the streams
    // (and stay there, unread). Only then the burst, which meets a queue the streams no
    // longer pull from: it fills and the rest are refused, whatever the order in which the
    // gateway's tasks run.
    let on_streams = (STREAMS * STREAM_INFLIGHT) as usize;
    send(0..on_streams);
    eventually(
        "logging's streams carry their in-flight bound",
        Duration::from_secs(60),
        || async move {
            let sent = metric(
                admin,
                "sluice_gateway_downstream_inflight{downstream=\"logging\"}",
            )
            .await?;
            (sent as usize == on_streams).then_some(())
        },
    )
    .await;
    send(on_streams..CALLS);
    drop(tx);
    // The refused come back at once; the admitted wait for logging. Wait until every call is
    // either back or counted in flight at the gateway.
    let mut refused = Vec::new();
    let inflight = eventually(
        "every call refused or admitted",
        Duration::from_secs(60),
        || {
            while let Ok(r) = rx.try_recv() {
                refused.push(r);
            }
            let returned = refused.len();
            async move {
                let inflight =
                    metric(admin, "sluice_gateway_inflight{api=\"unary\"}").await? as usize;
                (inflight > 0 && inflight + returned == CALLS).then_some(inflight)
            }
        },
    )
    .await;
    assert_eq!(
        inflight as u64, bound,
        "admitted: the queue and the streams' in-flight, exactly"
    );
    for (id, result, elapsed) in &refused {
        let status = result
            .as_ref()
            .expect_err("nothing completes while logging is stalled");
        assert_eq!(status.code(), Code::ResourceExhausted, "{id}: {status:?}");
        assert_eq!(
            status
                .metadata()
                .get("grpc-retry-pushback-ms")
                .map(|v| v.to_str().unwrap()),
            Some("250")
        );
        assert!(
            *elapsed < Duration::from_secs(2),
            "{id} was refused only after {elapsed:?}"
        );
    }

    mesh.set_faults(&mesh.logging, CLEAR).await;
    let mut admitted = HashMap::new();
    while let Some((id, result, _)) = rx.recv().await {
        admitted.insert(id, result.expect("admitted calls complete after unstall"));
    }
    assert_eq!(admitted.len(), inflight);
    let logged: HashMap<String, u64> = mesh
        .audit_entries()
        .await
        .into_iter()
        .map(|e| (e.id, e.offset))
        .collect();
    for (id, offset) in &admitted {
        assert_eq!(logged.get(id), Some(offset), "{id}");
    }
    let refused_ids: HashSet<_> = refused.iter().map(|(id, _, _)| id.clone()).collect();
    assert!(
        logged.keys().all(|id| !refused_ids.contains(id)),
        "a refused transaction was logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowed_risk_sets_the_pace_with_queues_at_their_bounds() {
    const DELAY_MS: u32 = 20;
    const WORKERS: u32 = 4;
    const QUEUE: f64 = 64.0;
    const STREAMS: f64 = 2.0;
    const STREAM_INFLIGHT: f64 = 16.0;
    let capacity = f64::from(WORKERS) * 1000.0 / f64::from(DELAY_MS); // 200/s
    let mesh = Mesh::start_with(MeshOptions {
        gateway: strings(&[
            "--unary-reserved",
            "0", // streams alone: the whole queue is theirs
            "--downstream-queue",
            "64",
            "--streams-per-downstream",
            "2",
            "--downstream-stream-inflight",
            "16",
        ]),
        ..Default::default()
    })
    .await;
    let admin = mesh.gateway.admin.unwrap();
    mesh.set_faults(
        &mesh.risk,
        Faults {
            delay_ms: DELAY_MS,
            workers: WORKERS,
            ..CLEAR
        },
    )
    .await;
    let load = {
        let target = mesh.gateway.url();
        tokio::spawn(async move {
            loadgen_json(&[
                "run",
                "--target",
                &target,
                "--mode",
                "stream",
                "--rate",
                "1000",
                "--duration",
                "8s",
            ])
            .await
        })
    };
    let depth = eventually(
        "risk queue at its bound",
        Duration::from_secs(6),
        || async {
            let d = metric(
                admin,
                "sluice_gateway_downstream_queue_depth{downstream=\"risk\"}",
            )
            .await?;
            (d >= QUEUE - 2.0).then_some(d)
        },
    )
    .await;
    assert!(depth <= QUEUE);
    let (_, report) = load.await.unwrap();
    let steady = points(&report, 3.0, 8.0);
    let rate = sum(&steady, "ok") / steady.len() as f64;
    assert!(
        (0.75 * capacity..=1.1 * capacity).contains(&rate),
        "throughput {rate:.0}/s should settle at risk's capacity {capacity:.0}/s"
    );
    // Latency inside the gateway is bounded by what the bounds let wait ahead of a
    // transaction, divided by risk's capacity.
    let sum_s = metric(admin, "sluice_gateway_latency_seconds_sum{api=\"stream\"}")
        .await
        .unwrap();
    let count = metric(
        admin,
        "sluice_gateway_latency_seconds_count{api=\"stream\"}",
    )
    .await
    .unwrap();
    let ahead = QUEUE + STREAMS * STREAM_INFLIGHT + f64::from(WORKERS);
    let worst = ahead / capacity;
    assert!(
        sum_s / count <= worst + 0.25,
        "mean gateway latency {:.3}s above the bound {worst:.3}s",
        sum_s / count
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_notification_sheds_and_transactions_keep_flowing() {
    let mesh = Mesh::start_with(MeshOptions {
        gateway: strings(&[
            "--unary-reserved",
            "0", // streams alone: the whole queue is theirs
            "--downstream-queue",
            "64",
            "--downstream-stream-inflight",
            "16",
        ]),
        ..Default::default()
    })
    .await;
    mesh.set_faults(&mesh.notification, STALL).await;
    let (_, report) = loadgen_json(&[
        "run",
        "--target",
        &mesh.gateway.url(),
        "--mode",
        "stream",
        "--rate",
        "500",
        "--duration",
        "4s",
    ])
    .await;
    assert!(
        report["errors"].as_object().unwrap().is_empty(),
        "{}",
        report["errors"]
    );
    let steady = points(&report, 2.0, 4.0);
    let rate = sum(&steady, "ok") / steady.len() as f64;
    assert!(
        rate >= 450.0,
        "transactions slowed to {rate:.0}/s with notification stalled"
    );
    let shed = report["notifications"]["SHED"].as_u64().unwrap_or(0);
    assert!(
        shed > 1000,
        "notifications SHED: {}",
        report["notifications"]
    );
    let counted = metric(
        mesh.gateway.admin.unwrap(),
        "sluice_gateway_notifications_shed_total{reason=\"queue_full\"}",
    )
    .await
    .unwrap();
    assert!(counted >= shed as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_messages_to_a_stalled_reader_do_not_reset_connections() {
    // Default bounds and windows: the real configuration is what must stay inside h2's
    // small-frame budget. Only the deadline is long, so nothing expires during the stall.
    let mesh = Mesh::start_with(MeshOptions {
        gateway: strings(&["--default-deadline", "120s"]),
        ..Default::default()
    })
    .await;
    let admin = mesh.gateway.admin.unwrap();
    mesh.set_faults(&mesh.logging, STALL).await;
    let gw = mesh.gateway().await;
    let tiny = |i: usize| Transaction {
        id: format!("t{i}"),
        account: "a".into(),
        amount_minor: 1,
        currency: "EUR".into(),
        merchant: "m".into(),
        trace_context: Default::default(),
        priority: 0,
        after_hlc: 0,
    };
    // One message per DATA frame: sent one at a time, paced so the encoder never batches.
    const SENT: usize = 6000;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel(1);
    let mut outcomes = gw
        .clone()
        .submit_stream(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let sender = {
        let progress = progress.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(500));
            for i in 0..SENT {
                tick.tick().await;
                // Blocks once the gateway stops reading and the window is full; that is the point.
                if tx.send(tiny(i)).await.is_err() {
                    return i;
                }
                progress.store(i + 1, std::sync::atomic::Ordering::Relaxed);
            }
            SENT
        })
    };
    // The gateway admits `--stream-inflight` (1024) and stops reading; every further tiny
    // message stays unread in its HTTP/2 buffers. 2,000 of them charge ~460 KB against h2's
    // small-frame budget: 18 times its 25,600-byte floor.
    const STREAM_INFLIGHT: f64 = 1024.0;
    eventually(
        "gateway holds 2,000 unread tiny frames",
        Duration::from_secs(30),
        || {
            let sent = progress.load(std::sync::atomic::Ordering::Relaxed) as f64;
            async move {
                let admitted = metric(admin, "sluice_gateway_inflight{api=\"stream\"}").await?;
                (admitted >= STREAM_INFLIGHT && sent >= STREAM_INFLIGHT + 2000.0).then_some(())
            }
        },
    )
    .await;
    // And logging, stalled, has a full stream's worth of admitted messages unread on its
    // streams (the rest wait in the gateway's queue).
    let on_streams = (sluice_gateway::downstream::DEFAULT_STREAMS
        * sluice_gateway::downstream::DEFAULT_STREAM_INFLIGHT) as f64;
    let unread = metric(
        admin,
        "sluice_gateway_downstream_inflight{downstream=\"logging\"}",
    )
    .await
    .unwrap();
    assert!(unread >= on_streams - 24.0, "{unread} of {on_streams}");
    mesh.set_faults(&mesh.logging, CLEAR).await;
    let sent = sender.await.unwrap();
    assert_eq!(sent, SENT, "the client's stream was reset");
    let mut ok = 0;
    while let Some(o) = outcomes.message().await.expect("ingress stream survives") {
        assert!(o.error.is_none(), "{:?}", o.error);
        ok += 1;
    }
    assert_eq!(ok, SENT);
    let reconnects = metric(
        admin,
        "sluice_gateway_downstream_reconnects_total{downstream=\"logging\"}",
    )
    .await
    .unwrap();
    assert_eq!(reconnects, 0.0, "a logging connection was reset");
    assert!(
        !mesh.gateway.log().contains("stream broke"),
        "{}",
        mesh.gateway.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_deadlines_drop_queued_work_at_each_hop() {
    let mesh = Mesh::start_with(MeshOptions {
        gateway: strings(&[
            "--streams-per-downstream",
            "1",
            "--downstream-stream-inflight",
            "1",
        ]),
        ..Default::default()
    })
    .await;
    let admin = mesh.gateway.admin.unwrap();
    let logging_admin = mesh.logging.admin.unwrap();
    let mut gw = mesh.gateway().await;
    let call = |id: &str, timeout_ms: u64| {
        let mut r = tonic::Request::new(txn(id));
        r.set_timeout(Duration::from_millis(timeout_ms));
        r
    };

    // The service hop: work delayed past its deadline is dropped, not done.
    mesh.set_faults(
        &mesh.logging,
        Faults {
            delay_ms: 600,
            ..CLEAR
        },
    )
    .await;
    let status = gw.submit(call("late-at-logging", 200)).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
    eventually(
        "logging drops the expired append",
        Duration::from_secs(10),
        || async {
            (metric(logging_admin, "sluice_logging_deadline_drops_total").await? >= 1.0)
                .then_some(())
        },
    )
    .await;

    // The gateway hop: with logging stalled and one message in flight, the rest queue in the
    // gateway, expire there, and are dropped unsent.
    mesh.set_faults(&mesh.logging, STALL).await;
    let mut calls = Vec::new();
    for i in 0..10 {
        let mut gw = gw.clone();
        let r = call(&format!("late-in-queue-{i}"), 300);
        calls.push(tokio::spawn(async move { gw.submit(r).await }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap().unwrap_err().code(), Code::DeadlineExceeded);
    }
    mesh.set_faults(&mesh.logging, CLEAR).await;
    metric_reaches(
        admin,
        "queued requests dropped at the gateway",
        (
            "sluice_gateway_downstream_deadline_drops_total{downstream=\"logging\"}",
            9.0,
        ),
        Duration::from_secs(10),
    )
    .await;
    // A fresh transaction goes through, and none of the expired ones was ever logged.
    gw.submit(call("on-time", 5000)).await.expect("on time");
    let ids: HashSet<String> = mesh
        .audit_entries()
        .await
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(ids.contains("on-time"));
    assert!(ids.iter().all(|id| !id.starts_with("late-")), "{ids:?}");
}
