//! The pool fed `Streaming`s built from bytes, as a peer would send them: every bound it
//! takes before a read, stall, shutdown, panics and messages that do not decode.
//!
//! Tests that must show something does *not* happen (a read with every worker busy) run on
//! a paused clock and wait with [`until_idle`], which returns exactly when nothing else can
//! run — a signal, not a guess at how long "long enough" is.

use std::time::Duration;

use futures::StreamExt as _;
use http_body::Frame;
use prost::Message as _;
use sluice_proto::pb::{RiskRequest, RiskVerdict};
use tokio::sync::mpsc::error::TrySendError;
use tonic::Code;
use tonic::codec::Codec as _;
use tonic::codegen::Bytes;

use super::*;

/// Returns once every other task on this paused-clock runtime waits on something: tokio
/// moves a paused clock forward only when nothing else can run, so this long sleep ends
/// exactly then.
async fn until_idle() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

fn pool(workers: usize, reply_queue: usize, stream_workers: usize) -> WorkerPool {
    pool_until(
        workers,
        reply_queue,
        stream_workers,
        CancellationToken::new(),
    )
}

fn pool_until(
    workers: usize,
    reply_queue: usize,
    stream_workers: usize,
    shutdown: CancellationToken,
) -> WorkerPool {
    let config = PoolConfig {
        workers,
        reply_queue,
        stream_workers,
    };
    WorkerPool::new(config, &mut Registry::default(), shutdown)
}

/// One gRPC message on the wire: uncompressed flag, length, payload.
fn framed(payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(5 + payload.len());
    frame.push(0);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    frame.into()
}

fn streaming<B>(body: B) -> Request<Streaming<RiskRequest>>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    let decoder = tonic_prost::ProstCodec::<RiskVerdict, RiskRequest>::default().decoder();
    Request::new(Streaming::new_request(decoder, body, None, Some(64 * 1024)))
}

/// An inbound stream whose messages were all sent, then half-closed.
fn inbound(payloads: &[Vec<u8>]) -> Request<Streaming<RiskRequest>> {
    let body: Vec<u8> = payloads.iter().flat_map(|p| framed(p)).collect();
    streaming(http_body_util::Full::new(Bytes::from(body)))
}

/// An inbound stream the test sends on, one message per DATA frame. The channel holds one
/// message: a second send waits until the pool has read the first, as a sender's writes
/// wait for HTTP/2 window. Dropping the sender half-closes the stream.
fn open_inbound() -> (mpsc::Sender<Vec<u8>>, Request<Streaming<RiskRequest>>) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1);
    let frames = ReceiverStream::new(rx).map(|p| Ok::<_, Status>(Frame::data(framed(&p))));
    (tx, streaming(http_body_util::StreamBody::new(frames)))
}

fn request(id: u64) -> Vec<u8> {
    RiskRequest {
        correlation_id: id,
        ..Default::default()
    }
    .encode_to_vec()
}

fn approve(r: &RiskRequest) -> RiskVerdict {
    RiskVerdict {
        correlation_id: r.correlation_id,
        ..Default::default()
    }
}

/// Room for the ids of started work: more messages than any test here sends, so a report is
/// never lost (a lost one would fail the test that waits for it, not pass it).
const STARTED_REPORTS: usize = 256;

/// Work that reports each message it starts on `started`, then waits for a pass from
/// `passes` before it answers.
async fn gated(r: RiskRequest, passes: Arc<Semaphore>, started: mpsc::Sender<u64>) -> RiskVerdict {
    let _ = started.try_send(r.correlation_id);
    if let Ok(pass) = passes.acquire().await {
        pass.forget();
    }
    approve(&r)
}

/// A gate with no passes yet, and the receiver of the ids of messages whose work started.
fn gate() -> (Arc<Semaphore>, mpsc::Sender<u64>, mpsc::Receiver<u64>) {
    let (tx, rx) = mpsc::channel(STARTED_REPORTS);
    (Arc::new(Semaphore::new(0)), tx, rx)
}

async fn replies(pool: &WorkerPool, payloads: &[Vec<u8>]) -> (Vec<RiskVerdict>, Option<Status>) {
    let mut stream = pool.serve(inbound(payloads), |r: RiskRequest| async move {
        assert_ne!(r.correlation_id, 2, "work for message 2 panics");
        approve(&r)
    });
    let mut out = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(v) => out.push(v),
            Err(status) => return (out, Some(status)),
        }
    }
    out.sort_by_key(|v| v.correlation_id);
    (out, None)
}

#[tokio::test(start_paused = true)]
async fn a_message_is_read_only_once_a_worker_is_free() {
    let pool = pool(2, 16, 32);
    let (passes, tx, mut started) = gate();
    let gate_passes = passes.clone();
    let (sender, stream) = open_inbound();
    let _replies = pool.serve(stream, move |r| gated(r, gate_passes.clone(), tx.clone()));
    for id in 1..=2 {
        sender.send(request(id)).await.unwrap();
        assert_eq!(started.recv().await, Some(id));
    }
    until_idle().await;
    // Both workers busy: the next message fills the channel, and the one after finds it
    // full because nothing reads — the sender is held back, as HTTP/2 window holds it.
    sender
        .try_send(request(3))
        .expect("room for one unread message");
    until_idle().await;
    assert!(matches!(
        sender.try_send(request(4)),
        Err(TrySendError::Full(_))
    ));
    assert!(started.try_recv().is_err(), "read with every worker busy");
    assert_eq!(pool.permits.available_permits(), 0);
    assert_eq!(pool.metrics.busy.get(), 2);

    passes.add_permits(1);
    assert_eq!(
        started.recv().await,
        Some(3),
        "a free worker reads the next"
    );
    until_idle().await;
    assert!(started.try_recv().is_err(), "and only the next");
}

#[tokio::test(start_paused = true)]
async fn one_stream_holds_at_most_its_share_of_workers() {
    let pool = pool(8, 64, 3);
    let many: Vec<_> = (10..30).map(request).collect();
    let _first = pool.serve(inbound(&many), |_: RiskRequest| {
        std::future::pending::<RiskVerdict>()
    });
    until_idle().await;
    assert_eq!(pool.metrics.busy.get(), 3);
    assert_eq!(
        pool.permits.available_permits(),
        5,
        "the rest stay free for others"
    );
    let _second = pool.serve(inbound(&many), |_: RiskRequest| {
        std::future::pending::<RiskVerdict>()
    });
    until_idle().await;
    assert_eq!(pool.metrics.busy.get(), 6, "another stream gets its share");
    assert_eq!(pool.metrics.streams.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_reads_no_replies_holds_no_worker() {
    let pool = pool(8, 4, 32);
    let many: Vec<_> = (10..60).map(request).collect();
    // Replies never taken: the reply queue fills, and then nothing more is read.
    let _replies = pool.serve(inbound(&many), |r: RiskRequest| async move { approve(&r) });
    until_idle().await;
    assert_eq!(pool.permits.available_permits(), 8, "every worker free");
    assert_eq!(pool.metrics.busy.get(), 0);
    assert_eq!(
        pool.metrics.processed.get(),
        4,
        "read no further than the reply room"
    );
}

#[tokio::test]
async fn a_panicking_message_is_answered_internal_and_the_stream_goes_on() {
    let pool = pool(4, 16, 32);
    let (got, end) = replies(&pool, &[request(1), request(2), request(3)]).await;
    assert!(end.is_none(), "the stream goes on and ends OK: {end:?}");
    assert_eq!(got.len(), 3);
    assert!(got[0].error.is_none() && got[2].error.is_none());
    let e = got[1].error.as_ref().expect("message 2 failed");
    assert_eq!(e.code, Code::Internal as i32);
    assert_eq!(got[1].correlation_id, 2, "the reply names its request");
    assert_eq!(pool.metrics.panics.get(), 1);
    assert_eq!(pool.metrics.busy.get(), 0, "busy gauge given back");
    assert_eq!(pool.permits.available_permits(), 4, "worker given back");
    assert_eq!(pool.metrics.streams.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_service_reads_nothing_not_even_a_read_already_waiting() {
    let pool = pool(4, 16, 32);
    let (passes, tx, mut started) = gate();
    passes.add_permits(Semaphore::MAX_PERMITS);
    let (sender, stream) = open_inbound();
    let mut replies = pool.serve(stream, move |r| gated(r, passes.clone(), tx.clone()));
    // The stream waits in a read when the stall comes.
    until_idle().await;
    pool.set_faults(Faults {
        stall: true,
        ..Default::default()
    });
    sender.send(request(1)).await.unwrap();
    until_idle().await;
    assert!(started.try_recv().is_err(), "read while stalled");
    assert_eq!(pool.metrics.stalled.get(), 1);

    pool.set_faults(Faults::default());
    assert_eq!(started.recv().await, Some(1));
    let reply = replies.next().await.expect("a reply").expect("OK");
    assert_eq!(reply.correlation_id, 1);
    assert_eq!(pool.metrics.stalled.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_answers_work_in_flight_then_ends_the_stream_unavailable() {
    let shutdown = CancellationToken::new();
    let pool = pool_until(4, 16, 32, shutdown.clone());
    let (passes, tx, mut started) = gate();
    let gate_passes = passes.clone();
    let (sender, stream) = open_inbound();
    let mut replies = pool.serve(stream, move |r| gated(r, gate_passes.clone(), tx.clone()));
    sender.send(request(1)).await.unwrap();
    assert_eq!(started.recv().await, Some(1));
    shutdown.cancel();
    until_idle().await;
    // Work in flight is not cut short, and the stream does not end before it answers.
    assert_eq!(pool.metrics.busy.get(), 1);
    passes.add_permits(1);
    let first = replies.next().await.expect("a reply").expect("OK");
    assert_eq!(first.correlation_id, 1);
    let end = replies.next().await.expect("an end").expect_err("not OK");
    assert_eq!(end.code(), Code::Unavailable);
    assert!(replies.next().await.is_none());
    assert_eq!(pool.metrics.streams.get(), 0);
}

#[tokio::test]
async fn a_message_that_does_not_decode_ends_the_stream_with_its_error() {
    let pool = pool(4, 16, 32);
    let (got, end) = replies(&pool, &[request(1), vec![0xff, 0xff, 0xff]]).await;
    assert_eq!(got.len(), 1, "everything read before it is answered");
    assert_eq!(end.expect("not OK").code(), Code::Internal);
    let (got, end) = replies(&pool, &[request(1), vec![0; 70_000]]).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        end.expect("not OK").code(),
        Code::ResourceExhausted,
        "over the size limit: RESOURCE_EXHAUSTED, as gRPC specifies"
    );
}

#[tokio::test]
async fn faults_reach_the_messages_through_the_layer() {
    let pool = pool(4, 16, 32);
    pool.set_faults(Faults {
        error_rate: 1.0,
        ..Default::default()
    });
    let (got, end) = replies(&pool, &[request(1), request(3)]).await;
    assert!(end.is_none());
    for reply in &got {
        let e = reply.error.as_ref().expect("an injected error");
        assert_eq!(e.code, Code::Unavailable as i32);
    }
    assert_eq!(pool.fault_metrics.injected_errors(), 2);
    assert_eq!(pool.metrics.processed.get(), 2);
}

#[tokio::test]
async fn resizing_the_pool_converges_as_work_finishes() {
    let pool = pool(4, 16, 32);
    assert_eq!(
        pool.set_faults(Faults {
            workers: 2,
            ..Default::default()
        })
        .workers,
        2
    );
    assert_eq!(pool.permits.available_permits(), 2);
    assert_eq!(
        pool.set_faults(Faults::default()).workers,
        4,
        "0 = configured"
    );
    assert_eq!(pool.permits.available_permits(), 4);
}
