//! SIGTERM under load: each binary drains and exits 0 within its grace period.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_tests::{Mesh, Proc, ProcMesh, open_submit_stream, txn};
use tokio::sync::watch;

/// The mesh's grace period (see `Mesh::start`) plus slack for a loaded machine.
const EXIT_WITHIN: Duration = Duration::from_secs(5 + 3);

async fn sigterm_under_load(pick: fn(&mut ProcMesh) -> &mut Proc) {
    let mut mesh = Mesh::start().await;
    let gw = mesh.gateway().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, mut done_rx) = watch::channel(0usize);
    let done_tx = Arc::new(done_tx);

    // A SubmitStream kept busy, plus unary callers.
    let (tx, mut stream) = open_submit_stream(&gw, 64).await;
    let feeder = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                if tx.send(txn(&format!("term-s-{n}"))).await.is_err() {
                    break;
                }
            }
        })
    };
    let reader = {
        let done_tx = done_tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {
                done_tx.send_modify(|n| *n += 1);
            }
        })
    };
    let mut callers = Vec::new();
    for w in 0..4 {
        let (mut gw, stop, done_tx) = (gw.clone(), stop.clone(), done_tx.clone());
        callers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let mut r = tonic::Request::new(txn(&format!("term-u-{w}-{n}")));
                r.set_timeout(Duration::from_secs(5));
                if gw.submit(r).await.is_ok() {
                    done_tx.send_modify(|n| *n += 1);
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    done_rx.wait_for(|n| *n >= 500).await.unwrap();

    let target = pick(&mut mesh);
    target.sigterm().expect("sigterm");
    let name = target.name.clone();
    let status = tokio::task::block_in_place(|| target.wait_exit(EXIT_WITHIN));
    stop.store(true, Ordering::Relaxed);
    let status =
        status.unwrap_or_else(|| panic!("{name} did not exit within {EXIT_WITHIN:?} of SIGTERM"));
    assert!(status.success(), "{name} exited with {status}");
    assert!(
        target.log().contains("stopped"),
        "{name} logged a clean stop"
    );
    feeder.abort();
    reader.abort();
    for c in callers {
        c.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_exits_zero_on_sigterm_under_load() {
    sigterm_under_load(|m| &mut m.gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_exits_zero_on_sigterm_under_load() {
    sigterm_under_load(|m| &mut m.risk).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_exits_zero_on_sigterm_under_load() {
    sigterm_under_load(|m| &mut m.notification).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_exits_zero_on_sigterm_under_load() {
    sigterm_under_load(|m| &mut m.logging).await;
}
