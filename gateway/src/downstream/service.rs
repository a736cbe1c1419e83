//! A downstream as a `tower::Service<HopCall<R>>`: ready when its queue has room for one
//! more request, failed (UNAVAILABLE) while it has no live stream.
//!
//! Two ways to be ready, one per [`Admission`]:
//! - **Wait** (SubmitStream): `poll_ready` first takes a permit from the share of the queue
//!   waiting callers may use, then reserves a slot (`PollSender`), and stays pending until
//!   both are had — the caller parks, its client's window fills: backpressure.
//! - **Immediate** (unary Submit): `poll_ready` takes a slot only if one is free now,
//!   reserved slots included, and otherwise fails RESOURCE_EXHAUSTED — it never parks, as
//!   tower's `LoadShed` would refuse, but with the reason kept.
//!
//! The reservation is held by this service value until `call`, so clone it per request
//! (tower's usual contract); dropping it unused gives the slot back.
//!
//! A balancer's replica service ([`DownstreamService::balanced`]) always waits for room,
//! from the waiting share or from the whole queue, and never fails for want of a live
//! stream: the balancer checks liveness itself (see `balance.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use sluice_proto::HopRequest;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::{PollSemaphore, PollSender};
use tonic::Status;

use super::{Admission, Envelope, HopCall, Outstanding, Shared};

/// A tower service over one downstream. See the module docs.
pub struct DownstreamService<R: HopRequest> {
    shared: Arc<Shared<R>>,
    room: Room<R>,
    /// Fail UNAVAILABLE in `poll_ready` while no stream is live (not for balancers).
    check_live: bool,
}

enum Room<R: HopRequest> {
    Wait {
        sender: PollSender<Envelope<R>>,
        /// The waiting share to take a permit from first; `None`: any slot will do.
        share: Option<PollSemaphore>,
        /// This caller's permit from the waiting share, once had.
        permit: Option<OwnedSemaphorePermit>,
    },
    Immediate {
        queue: mpsc::Sender<Envelope<R>>,
        slot: Option<mpsc::OwnedPermit<Envelope<R>>>,
    },
}

impl<R: HopRequest> DownstreamService<R> {
    pub(super) fn new(
        queue: mpsc::Sender<Envelope<R>>,
        shared: Arc<Shared<R>>,
        admission: Admission,
    ) -> Self {
        let room = match admission {
            Admission::Wait => Room::Wait {
                sender: PollSender::new(queue),
                share: Some(PollSemaphore::new(shared.waiting_share.clone())),
                permit: None,
            },
            Admission::Immediate => Room::Immediate { queue, slot: None },
        };
        Self {
            shared,
            room,
            check_live: true,
        }
    }

    /// A replica service for a balancer: waits for room (immediate callers' from the whole
    /// queue) and leaves liveness to the balancer.
    pub(super) fn balanced(
        queue: mpsc::Sender<Envelope<R>>,
        shared: Arc<Shared<R>>,
        admission: Admission,
    ) -> Self {
        let share = match admission {
            Admission::Wait => Some(PollSemaphore::new(shared.waiting_share.clone())),
            Admission::Immediate => None,
        };
        Self {
            shared,
            room: Room::Wait {
                sender: PollSender::new(queue),
                share,
                permit: None,
            },
            check_live: false,
        }
    }

    /// Requests queued or in flight on this replica.
    pub(super) fn outstanding(&self) -> usize {
        self.shared
            .outstanding
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Its round-trip estimate, seconds (peak-EWMA).
    pub(super) fn rtt_estimate(&self) -> f64 {
        self.shared.rtt.estimate()
    }

    /// True while the replica has a live stream.
    pub(super) fn is_live(&self) -> bool {
        self.shared.live.load(std::sync::atomic::Ordering::Relaxed) > 0
    }

    fn shutting_down() -> Status {
        Status::unavailable(format!("{}: shutting down", R::NAME))
    }
}

impl<R: HopRequest> std::fmt::Debug for DownstreamService<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let admission = match self.room {
            Room::Wait { .. } => Admission::Wait,
            Room::Immediate { .. } => Admission::Immediate,
        };
        f.debug_struct("DownstreamService")
            .field("downstream", &R::NAME)
            .field("admission", &admission)
            .finish()
    }
}

impl<R: HopRequest> Clone for DownstreamService<R> {
    /// A clone with no reservation of its own.
    fn clone(&self) -> Self {
        let room = match &self.room {
            Room::Wait { sender, share, .. } => Room::Wait {
                sender: sender.clone(),
                share: share.clone(),
                permit: None,
            },
            Room::Immediate { queue, .. } => Room::Immediate {
                queue: queue.clone(),
                slot: None,
            },
        };
        Self {
            shared: self.shared.clone(),
            room,
            check_live: self.check_live,
        }
    }
}

impl<R: HopRequest> tower::Service<HopCall<R>> for DownstreamService<R> {
    type Response = R::Reply;
    type Error = Status;
    type Future = ReplyFuture<R>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        if self.check_live && !self.is_live() {
            return Poll::Ready(Err(Status::unavailable(format!(
                "{} has no live stream; retry later",
                R::NAME
            ))));
        }
        match &mut self.room {
            Room::Wait {
                sender,
                share,
                permit,
            } => {
                if let Some(share) = share
                    && permit.is_none()
                {
                    match ready!(share.poll_acquire(cx)) {
                        Some(p) => *permit = Some(p),
                        None => return Poll::Ready(Err(Self::shutting_down())),
                    }
                }
                Poll::Ready(ready!(sender.poll_reserve(cx)).map_err(|_| Self::shutting_down()))
            }
            Room::Immediate { queue, slot } => {
                if slot.is_some() {
                    return Poll::Ready(Ok(()));
                }
                match queue.clone().try_reserve_owned() {
                    Ok(p) => {
                        *slot = Some(p);
                        Poll::Ready(Ok(()))
                    }
                    Err(TrySendError::Full(_)) => {
                        Poll::Ready(Err(Status::resource_exhausted(format!(
                            "{} queue full ({} requests)",
                            R::NAME,
                            self.shared.config.queue
                        ))))
                    }
                    Err(TrySendError::Closed(_)) => Poll::Ready(Err(Self::shutting_down())),
                }
            }
        }
    }

    /// Queues the request in the slot `poll_ready` reserved; the future is its reply (or
    /// failure). Dropping the future does not withdraw the request.
    fn call(&mut self, call: HopCall<R>) -> ReplyFuture<R> {
        let (tx, rx) = oneshot::channel();
        let outstanding = &self.shared.outstanding;
        let envelope = |share| Envelope {
            call,
            reply: tx,
            enqueued_at: Instant::now(),
            _share: share,
            outstanding: Outstanding::new(outstanding, &self.shared.replica.outstanding),
        };
        let sent = match &mut self.room {
            Room::Wait { sender, permit, .. } => sender.send_item(envelope(permit.take())).is_ok(),
            Room::Immediate { slot, .. } => match slot.take() {
                Some(slot) => {
                    slot.send(envelope(None));
                    true
                }
                None => false,
            },
        };
        if sent {
            self.shared.metrics.queue_depth.inc();
            self.shared.replica.requests.inc();
            ReplyFuture::Waiting(rx)
        } else {
            ReplyFuture::Failed(Some(Status::internal(format!(
                "{}: called without readiness",
                R::NAME
            ))))
        }
    }
}

/// The reply to one [`HopCall`].
pub enum ReplyFuture<R: HopRequest> {
    Waiting(oneshot::Receiver<Result<R::Reply, Status>>),
    Failed(Option<Status>),
}

impl<R: HopRequest> Future for ReplyFuture<R> {
    type Output = Result<R::Reply, Status>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            ReplyFuture::Waiting(rx) => Poll::Ready(match ready!(Pin::new(rx).poll(cx)) {
                Ok(result) => result,
                Err(_) => Err(Status::unavailable(format!("{} request dropped", R::NAME))),
            }),
            ReplyFuture::Failed(status) => Poll::Ready(Err(status
                .take()
                .unwrap_or_else(|| Status::internal("reply polled after completion")))),
        }
    }
}
