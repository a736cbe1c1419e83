//! Errors and shutdown end a SubmitStream visibly, and no path leaks the gateway's
//! accounting (in-flight gauges, transaction counts).
use std::time::Duration;

use prost::Message;
use sluice_proto::pb::Faults;
use sluice_tests::{Mesh, STALL, eventually, metric, open_submit_stream, submit_stream_raw, txn};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

fn encoded(id: &str) -> Vec<u8> {
    txn(id).encode_to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_does_not_decode_ends_the_stream_with_its_error() {
    let mesh = Mesh::start().await;
    // 70 KB: over the 64 KiB message limit.
    let mut big = txn("big");
    big.merchant = "m".repeat(70_000);
    for (bad, code) in [
        (big.encode_to_vec(), Code::ResourceExhausted),
        (vec![0xff, 0xff, 0xff, 0xff], Code::Internal),
    ] {
        let (outcomes, status) = submit_stream_raw(
            mesh.gateway_channel().await,
            vec![
                encoded("before-1"),
                bad,
                encoded("after-1"),
                encoded("after-2"),
            ],
        )
        .await;
        let status = status.expect("the stream must not end OK");
        assert_eq!(status.code(), code, "{status:?}");
        assert_eq!(outcomes.len(), 1, "{outcomes:?}");
        assert_eq!(outcomes[0].id, "before-1");
        assert!(outcomes[0].error.is_none());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_unavailable_counting_unread_messages() {
    let mesh = Mesh::start().await;
    let gw = mesh.gateway().await;
    let (tx, mut stream) = open_submit_stream(&gw, 64).await;
    let feeder = tokio::spawn(async move {
        let mut n = 0u64;
        while tx.send(txn(&format!("shut-{n}"))).await.is_ok() {
            n += 1;
        }
    });
    let mut outcomes = 0;
    while outcomes < 200 {
        stream.message().await.expect("outcome").expect("open");
        outcomes += 1;
    }
    mesh.gateway.sigterm().expect("sigterm");
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => {} // admitted before the shutdown: answered
            Ok(None) => panic!("the stream ended OK after a shutdown"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    let message = end.message();
    let _unread: u64 = message
        .strip_prefix("shutting down: ")
        .and_then(|r| r.strip_suffix(" messages not read"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected message: {message}"));
    feeder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_and_broken_streams_leak_no_accounting() {
    let mesh = Mesh::start().await;
    let admin = mesh.gateway.admin.expect("gateway admin");
    let gw = mesh.gateway().await;
    mesh.set_faults(&mesh.logging, STALL).await;
    // 50 unary calls and a stream with 20 admitted, all stuck behind the stalled log.
    let mut calls = Vec::new();
    for i in 0..50 {
        let mut gw = gw.clone();
        calls.push(tokio::spawn(async move {
            gw.submit(txn(&format!("cancel-{i}"))).await
        }));
    }
    let (tx, rx) = mpsc::channel(64);
    for i in 0..20 {
        tx.send(txn(&format!("broken-{i}"))).await.unwrap();
    }
    let stream = gw
        .clone()
        .submit_stream(ReceiverStream::new(rx))
        .await
        .expect("stream");
    eventually(
        "50 unary and 20 stream transactions in flight",
        Duration::from_secs(20),
        || async { (inflight(admin).await? == (50.0, 20.0)).then_some(()) },
    )
    .await;
    // Cancel everything: the client goes away mid-call.
    for c in &calls {
        c.abort();
    }
    drop(stream);
    drop(tx);
    eventually(
        "in-flight back to zero",
        Duration::from_secs(20),
        || async { (inflight(admin).await? == (0.0, 0.0)).then_some(()) },
    )
    .await;
    let cancelled = metric(
        admin,
        "sluice_gateway_transactions_total{api=\"unary\",result=\"cancelled\"}",
    )
    .await
    .unwrap_or(0.0);
    assert_eq!(cancelled, 50.0, "every cancelled call is counted");
    mesh.set_faults(&mesh.logging, Faults::default()).await;
}

/// The gateway's in-flight gauges: (unary, stream).
async fn inflight(admin: std::net::SocketAddr) -> Option<(f64, f64)> {
    let unary = metric(admin, "sluice_gateway_inflight{api=\"unary\"}").await?;
    let stream = metric(admin, "sluice_gateway_inflight{api=\"stream\"}").await?;
    Some((unary, stream))
}
