//! One SubmitStream: a reader task that reads the next transaction only once the current
//! one is admitted to every required queue, and only with room under `--streams-inflight`
//! within its fair share. While it waits it does not read, so the client's HTTP/2 window
//! fills and its sends block. Outcomes go back in completion order through a bounded queue
//! (`--outcome-queue`).
//!
//! The mesh's clock stops when an outcome is *ready*, not when the client takes it: the
//! reader collects finished transactions whether or not the client is reading, so their
//! concurrency-limit slots come back and their latency (what the adaptive limit, the
//! degradation level and the bottleneck read) is the mesh's own. An outcome waiting for
//! the client's window keeps its `--streams-inflight` room — charged to this stream's
//! share, so a client that never reads holds only its own share and stops being read.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use opentelemetry::Context;
use opentelemetry::trace::SpanContext;
use sluice_core::metrics::GaugeGuard;
use sluice_core::{CancellationToken, spans};
use sluice_proto::pb::{Outcome, Transaction};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tonic::{Status, Streaming};
use tower::{Service as _, ServiceExt as _};

use super::admission::{StreamRoom, StreamSlot};
use super::metrics::IngressMetrics;
use super::refusal::{Reason, Refusal};
use super::request::TxnRequest;
use super::stack::IngressService;
use crate::fanout::error_outcome;

/// How long a SubmitStream that is shut down keeps reading (without processing) to count
/// the messages it will never answer, for the UNAVAILABLE status that ends it.
const UNREAD_COUNT_WINDOW: Duration = Duration::from_millis(100);

/// Why a SubmitStream stopped reading.
enum Stop {
    /// Still reading.
    Reading,
    /// The client half-closed: end OK once everything admitted is answered.
    HalfClosed,
    /// A message could not be decoded (malformed, over the size limit): end with its status.
    Broken(Status),
    /// The gateway is shutting down: end UNAVAILABLE, saying how many were not read.
    ShuttingDown,
    /// Nothing sent and nothing in flight for `--stream-idle-timeout`: end UNAVAILABLE,
    /// freeing the slot.
    Idle,
}

pub(crate) struct StreamReader {
    /// The stream's client, for per-client rate limits (None: not named, or unusable).
    pub(crate) client: Option<std::sync::Arc<str>>,
    /// The stream's own deadline (from grpc-timeout), capping each message's.
    pub(crate) deadline: Instant,
    /// The stream's metadata context: parent of messages that carry none of their own.
    pub(crate) parent: Context,
    /// The stream's span (messages link to it); ends when the reader does.
    pub(crate) span: tracing::Span,
    pub(crate) stack: IngressService,
    pub(crate) room: StreamRoom,
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: IngressMetrics,
    /// Ends the stream when it holds its slot and sends nothing for this long.
    pub(crate) idle_timeout: Duration,
    /// This stream's place under `--max-streams` and `--max-streams-per-connection`.
    pub(crate) _slot: StreamSlot,
}

impl StreamReader {
    pub(crate) async fn run(
        mut self,
        mut inbound: Streaming<Transaction>,
        tx: mpsc::Sender<Timed>,
    ) {
        let _open = GaugeGuard::hold(&self.metrics.streams);
        let link = {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            opentelemetry::trace::TraceContextExt::span(&self.span.context())
                .span_context()
                .clone()
        };
        let mut pending: FuturesUnordered<BoxFuture<'static, Answered>> = FuturesUnordered::new();
        // Outcomes ready and not yet taken by the outcome queue (the client is slow to read),
        // each still holding its room; with `pending`, at most this stream's share.
        let mut ready: VecDeque<(Instant, Answered)> = VecDeque::new();
        let mut stop = Stop::Reading;
        let mut client_gone = false;
        // A permit under `streams_inflight`, taken before the read it allows.
        let mut room: Option<OwnedSemaphorePermit> = None;
        // The transaction being admitted: nothing more is read until it is (or is refused).
        let mut admitting: Option<oneshot::Receiver<()>> = None;
        // Restarted by every message read and every outcome handed over.
        let idle = tokio::time::sleep(self.idle_timeout);
        tokio::pin!(idle);
        loop {
            let reading = matches!(stop, Stop::Reading);
            let held = pending.len() + ready.len();
            let may_read = reading && admitting.is_none() && held < self.room.share();
            // Waiting on the client alone: nothing of its in flight, room to read.
            let quiet = may_read && room.is_some() && held == 0;
            tokio::select! {
                // Outcomes first: collected the moment they are ready, whatever the client
                // does, then handed to the outcome queue as it has room.
                biased;
                Some(answered) = pending.next(), if !pending.is_empty() => {
                    ready.push_back((Instant::now(), answered));
                }
                slot = tx.reserve(), if !ready.is_empty() => match slot {
                    Ok(slot) => {
                        let (at, (outcome, _room)) = ready.pop_front().expect("guarded");
                        slot.send((at, Ok(outcome)));
                        idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
                    }
                    Err(_) => {
                        client_gone = true;
                        break; // client gone; dropping `pending` counts the rest cancelled
                    }
                },
                _ = async { admitting.as_mut().expect("guarded").await }, if admitting.is_some() => {
                    admitting = None;
                }
                _ = self.shutdown.cancelled(), if reading => stop = Stop::ShuttingDown,
                _ = &mut idle, if quiet => stop = Stop::Idle,
                // FIFO: streams waiting for room get it in turn.
                permit = self.room.permit(), if may_read && room.is_none() => room = permit,
                message = inbound.message(), if may_read && room.is_some() => match message {
                    Ok(Some(txn)) => {
                        idle.as_mut().reset(tokio::time::Instant::now() + self.idle_timeout);
                        let permit = room.take().expect("read only with room");
                        let (admitted, rx) = oneshot::channel();
                        admitting = Some(rx);
                        let outcome = self.submit(txn, &link, admitted, permit).await;
                        pending.push(outcome);
                    }
                    Ok(None) => stop = Stop::HalfClosed,
                    Err(status) => {
                        tracing::debug!(%status, "SubmitStream message did not decode; ending the stream");
                        stop = Stop::Broken(sluice_core::inbound_error(status));
                    }
                },
                else => break,
            }
        }
        drop(pending);
        let end = match stop {
            _ if client_gone => None,
            Stop::Reading | Stop::HalfClosed => None,
            Stop::Broken(status) => Some(status),
            Stop::Idle => {
                let refusal = Refusal::new(
                    Reason::StreamIdle,
                    format!(
                        "SubmitStream sent nothing for {:?} with nothing in flight: closed to free its slot; open a new one when there is work (--stream-idle-timeout)",
                        self.idle_timeout
                    ),
                );
                self.metrics
                    .reject(super::request::Api::Stream, refusal.reason.label());
                Some(refusal.into_status())
            }
            Stop::ShuttingDown => {
                let unread = count_unread(&mut inbound).await;
                Some(Status::unavailable(format!(
                    "shutting down: {unread} messages not read"
                )))
            }
        };
        match &end {
            None => spans::ok(&self.span),
            Some(status) => spans::fail(
                &self.span,
                "stream_ended",
                status.code() as i32,
                status.message(),
            ),
        }
        if let Some(status) = end {
            let _ = tx.send((Instant::now(), Err(status))).await;
        }
    }

    /// Sends one transaction down the ingress stack; its outcome (an error Outcome when it
    /// failed) once done, with `room`, held until the outcome is queued for the client.
    async fn submit(
        &mut self,
        txn: Transaction,
        link: &SpanContext,
        admitted: oneshot::Sender<()>,
        room: OwnedSemaphorePermit,
    ) -> BoxFuture<'static, Answered> {
        let id = txn.id.clone();
        let mut request = TxnRequest::stream_message(
            txn,
            self.parent.clone(),
            link.clone(),
            self.deadline,
            admitted,
        );
        request.client = self.client.clone();
        // The stack is always ready (admission waits inside `call`, traced): this is at
        // most a poll.
        let outcome = match self.stack.ready().await {
            Ok(stack) => stack.call(request),
            Err(status) => Box::pin(futures::future::ready(Err(status))),
        };
        Box::pin(async move {
            let outcome = outcome
                .await
                .unwrap_or_else(|refusal| error_outcome(id, &refusal.into_status()));
            (outcome, room)
        })
    }
}

/// A transaction's outcome and the `--streams-inflight` room it holds until the outcome
/// queue takes it.
type Answered = (Outcome, OwnedSemaphorePermit);

/// What the outcome queue holds: when the outcome was ready, and the outcome (or the
/// stream's ending status).
pub(crate) type Timed = (Instant, Result<Outcome, Status>);

/// The SubmitStream response body: the outcome queue, observing each outcome's `delivery`
/// stage (ready → taken by the transport, which takes it when the client's window has room).
pub struct OutcomeStream {
    pub(crate) rx: mpsc::Receiver<Timed>,
    pub(crate) delivery: prometheus_client::metrics::histogram::Histogram,
}

impl futures::Stream for OutcomeStream {
    type Item = Result<Outcome, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|timed| {
            timed.map(|(ready, outcome)| {
                self.delivery.observe(ready.elapsed().as_secs_f64());
                outcome
            })
        })
    }
}

/// Reads (and drops) what a shut-down stream's client has already sent, for at most
/// [`UNREAD_COUNT_WINDOW`], and returns how many messages that was.
async fn count_unread(inbound: &mut Streaming<Transaction>) -> usize {
    let until = tokio::time::Instant::now() + UNREAD_COUNT_WINDOW;
    let mut unread = 0;
    while let Ok(Ok(Some(_))) = tokio::time::timeout_at(until, inbound.message()).await {
        unread += 1;
    }
    unread
}
