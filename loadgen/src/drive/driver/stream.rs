//! Stream mode: long-lived SubmitStreams, one per connection, reopened when they end.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use sluice_core::{propagation, spans};
use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::{Outcome, Transaction};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::drive::spec::LoadSpec;
use crate::drive::traffic::Traffic;
use crate::report::StreamEnd;

use super::pacer::Schedule;
use super::pending::Shared;
use super::traced;
use super::{DRAIN_GRACE, REOPEN_BACKOFF, STREAM_HANDOFF, name_client};

pub(super) async fn drive_stream(
    spec: &LoadSpec,
    clients: Vec<GatewayClient<Channel>>,
    mut traffic: Traffic,
    shared: Arc<Shared>,
    start: Instant,
    end: Instant,
) -> anyhow::Result<()> {
    let mut senders = Vec::new();
    let mut connections = JoinSet::new();
    for (index, mut client) in clients.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<Transaction>(spec.stream_buffer.max(1));
        // The first stream opens here, so a gateway that refuses it fails the run at once.
        let stream = SubmitStream::open(&mut client, shared.client_id.as_ref())
            .await
            .map_err(|status| anyhow::anyhow!("cannot open SubmitStream: {status}"))?;
        senders.push(tx);
        connections.spawn(stream_connection(
            index,
            client,
            stream,
            rx,
            shared.clone(),
            spec.reopen_streams,
        ));
    }
    let mut schedule = Schedule::new(&spec.pacing, start, end, spec.max_outstanding, spec.seed);
    let mut n = 0usize;
    'sending: while let Some((intended, slot)) = schedule.next(&shared).await {
        let (mut txn, span) = traced(traffic.next_transaction().0, "SubmitStream");
        shared.chain(&mut txn);
        let id = txn.id.clone();
        // Pending before it is sent: its outcome may come back before `send` returns.
        shared.begin(&txn, intended, slot, span);
        loop {
            if senders.is_empty() {
                // Every stream ended and none reopens: the run is over.
                shared.forget(&id);
                break 'sending;
            }
            let i = n % senders.len();
            match send(&shared, &senders[i], txn).await {
                Ok(()) => break,
                Err(back) => {
                    // That connection's stream ended for good; try another.
                    senders.swap_remove(i);
                    txn = back;
                }
            }
        }
        n += 1;
        shared.sent_one();
    }
    // Half-close every stream; the gateway returns the remaining outcomes, then ends OK.
    drop(senders);
    let drained = tokio::time::timeout(spec.timeout + DRAIN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        connections.shutdown().await;
    }
    Ok(())
}

/// Sends on a connection's queue; blocks while it is full (the gateway is pushing back).
/// Gives the transaction back when that connection's stream ended for good.
pub(super) async fn send(
    shared: &Shared,
    tx: &mpsc::Sender<Transaction>,
    txn: Transaction,
) -> Result<(), Transaction> {
    match tx.try_send(txn) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(txn)) => {
            let waiting = shared.block_start();
            let sent = tx.send(txn).await;
            shared.block_end(waiting);
            sent.map_err(|e| e.0)
        }
        Err(mpsc::error::TrySendError::Closed(txn)) => Err(txn),
    }
}

/// One open SubmitStream: the sender of its request body, its responses, and its span.
pub(super) struct SubmitStream {
    pub(super) body: mpsc::Sender<Transaction>,
    pub(super) responses: tonic::Streaming<Outcome>,
    pub(super) span: tracing::Span,
}

impl SubmitStream {
    /// Opens one, naming the client (`client_id`) in its metadata when given: the gateway
    /// paces a stream whose client is over its rate rather than refusing its messages.
    pub(super) async fn open(
        client: &mut GatewayClient<Channel>,
        client_id: Option<&AsciiMetadataValue>,
    ) -> Result<SubmitStream, tonic::Status> {
        let (body, body_rx) = mpsc::channel::<Transaction>(STREAM_HANDOFF);
        // The stream's own span, in its metadata; each message carries its own trace.
        let span = tracing::info_span!(
            parent: None,
            "stream",
            otel.name = "mesh.v1.Gateway/SubmitStream stream",
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = "mesh.v1.Gateway",
            rpc.method = "SubmitStream",
        );
        let mut request = tonic::Request::new(ReceiverStream::new(body_rx));
        propagation::inject_metadata(&span.context(), request.metadata_mut());
        name_client(&mut request, client_id);
        match client.submit_stream(request).await {
            Ok(response) => Ok(SubmitStream {
                body,
                responses: response.into_inner(),
                span,
            }),
            Err(status) => {
                spans::fail(&span, "open_failed", status.code() as i32, status.message());
                Err(status)
            }
        }
    }
}

/// One connection's SubmitStream: feeds it from the connection's queue and records its
/// outcomes; when it ends, counts what it took without answering as NO_OUTCOME, and with
/// `reopen`, opens the next one (the queue survives, so nothing waiting in it is lost).
async fn stream_connection(
    index: usize,
    mut client: GatewayClient<Channel>,
    first: SubmitStream,
    mut queue: mpsc::Receiver<Transaction>,
    shared: Arc<Shared>,
    reopen: bool,
) {
    let mut stream = Some(first);
    // Taken from the queue but not yet handed to a stream: carried to the next one.
    let mut holding: Option<Transaction> = None;
    let mut backoff = REOPEN_BACKOFF.0;
    loop {
        let current = match stream.take() {
            Some(s) => s,
            None => match SubmitStream::open(&mut client, shared.client_id.as_ref()).await {
                Ok(s) => s,
                Err(status) => {
                    tracing::debug!("SubmitStream {index}: reopen failed: {status}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(REOPEN_BACKOFF.1);
                    continue;
                }
            },
        };
        let opened = Instant::now();
        let span = current.span.clone();
        let (end, unanswered, queue_done) = pump(&shared, current, &mut queue, &mut holding).await;
        let lost = unanswered
            .iter()
            .filter(|id| shared.abandon(id, "its stream ended first", false))
            .count() as u64;
        match &end {
            Ok(()) => spans::ok(&span),
            Err(s) => spans::fail(&span, "stream_ended", s.code() as i32, s.message()),
        }
        drop(span);
        if end.is_err() || lost > 0 {
            let (code, message) = match &end {
                Ok(()) => ("OK".to_string(), String::new()),
                Err(s) => (crate::report::code_name(s.code()), s.message().to_string()),
            };
            tracing::warn!(
                "SubmitStream {index} ended {code}{}{message}: {lost} transaction(s) without an outcome",
                if message.is_empty() { "" } else { ": " }
            );
            shared
                .stream_ends
                .lock()
                .expect("stream ends lock")
                .push(StreamEnd {
                    t: shared.start.elapsed().as_secs_f64(),
                    stream: index,
                    code,
                    message,
                    without_outcome: lost,
                });
        }
        if (queue_done && holding.is_none()) || !reopen {
            // Dropping the queue fails further sends on it: the driver retires it.
            return;
        }
        if opened.elapsed() > REOPEN_BACKOFF.1 {
            backoff = REOPEN_BACKOFF.0;
        }
    }
}

/// Feeds one stream from `queue` and records its outcomes until it ends. Returns how it
/// ended, the ids it took and never answered, and whether the queue is exhausted (the run
/// sent its last transaction). Responses are read independently of sending, so a full
/// request window never stops outcomes from being read.
async fn pump(
    shared: &Shared,
    stream: SubmitStream,
    queue: &mut mpsc::Receiver<Transaction>,
    holding: &mut Option<Transaction>,
) -> (Result<(), tonic::Status>, HashSet<String>, bool) {
    let SubmitStream {
        body,
        mut responses,
        span: _,
    } = stream;
    let mut body = Some(body);
    let mut handed: HashSet<String> = HashSet::new();
    let mut queue_done = false;
    let end = loop {
        tokio::select! {
            next = responses.next() => match next {
                Some(Ok(outcome)) => {
                    handed.remove(&outcome.id);
                    shared.finish(&outcome.id, Ok(&outcome));
                }
                Some(Err(status)) => break Err(status),
                None => break Ok(()),
            },
            permit = reserve(body.clone()), if holding.is_some() && body.is_some() => match permit {
                Some(permit) => {
                    let txn = holding.take().expect("holding a transaction");
                    handed.insert(txn.id.clone());
                    permit.send(txn);
                }
                // The stream stopped taking messages; its end follows.
                None => body = None,
            },
            txn = queue.recv(), if holding.is_none() && body.is_some() && !queue_done => match txn {
                Some(txn) => *holding = Some(txn),
                None => {
                    // The run sent its last transaction: half-close.
                    queue_done = true;
                    body = None;
                }
            },
        }
    };
    (end, handed, queue_done)
}

/// Room for one message in a stream's body (an owned permit, so the body can be dropped
/// — half-closed — while a reservation is pending).
async fn reserve(
    body: Option<mpsc::Sender<Transaction>>,
) -> Option<mpsc::OwnedPermit<Transaction>> {
    body?.reserve_owned().await.ok()
}
