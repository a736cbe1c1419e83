//! Faults: logging SIGKILLed and restarted under load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_tests::{Mesh, txn};
use tokio::sync::watch;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

const WORKERS: usize = 8;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_killed_mid_load_loses_no_acknowledged_record() {
    let mut mesh = Mesh::start().await;
    let gw = mesh.gateway().await;
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let errors: Arc<Mutex<HashMap<Code, usize>>> = Arc::default();
    let (count_tx, mut count_rx) = watch::channel(0usize);
    let count_tx = Arc::new(count_tx);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (mut gw, stop, acked, errors, count_tx) = (
            gw.clone(),
            stop.clone(),
            acked.clone(),
            errors.clone(),
            count_tx.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let id = format!("kill-{w}-{n}");
                let mut request = tonic::Request::new(txn(&id));
                request.set_timeout(CALL_TIMEOUT);
                let started = Instant::now();
                match gw.submit(request).await {
                    Ok(o) => {
                        let mut a = acked.lock().unwrap();
                        a.push((id, o.into_inner().audit_offset));
                        count_tx.send_replace(a.len());
                    }
                    Err(status) => {
                        // Never hangs: every call ends within its deadline (plus slack).
                        assert!(
                            started.elapsed() < CALL_TIMEOUT + Duration::from_secs(2),
                            "call hung: {status:?}"
                        );
                        *errors.lock().unwrap().entry(status.code()).or_default() += 1;
                        // Pace retries during the outage.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        }));
    }

    count_rx.wait_for(|n| *n >= 300).await.unwrap();
    mesh.logging.sigkill();
    mesh.wait_gateway(ServingStatus::NotServing).await;

    // While logging is down, requests fail fast with UNAVAILABLE instead of waiting.
    let mut probe = gw.clone();
    let mut request = tonic::Request::new(txn("during-outage"));
    request.set_timeout(Duration::from_secs(30));
    let started = Instant::now();
    let status = probe.submit(request).await.expect_err("logging is down");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}: not failing fast",
        started.elapsed()
    );

    let before_restart = acked.lock().unwrap().len();
    mesh.restart_logging();
    mesh.wait_gateway(ServingStatus::Serving).await;
    count_rx
        .wait_for(|n| *n >= before_restart + 300)
        .await
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }

    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.get(&Code::Unavailable).copied().unwrap_or(0) > 0,
        "the outage was seen: {errors:?}"
    );
    for code in errors.keys() {
        assert!(
            matches!(code, Code::Unavailable | Code::DeadlineExceeded),
            "unexpected error {code:?}: {errors:?}"
        );
    }
    let logged: HashMap<String, u64> = mesh
        .audit_entries()
        .await
        .into_iter()
        .map(|e| (e.id, e.offset))
        .collect();
    let acked = acked.lock().unwrap();
    for (id, offset) in acked.iter() {
        assert_eq!(
            logged.get(id),
            Some(offset),
            "acknowledged {id} at {offset} missing or moved"
        );
    }
    assert!(acked.len() >= 600);
}
