//! Power-of-two-choices over a service's replicas, through `tower::balance::p2c`.
//!
//! tower's `Balance` keeps every replica's service in a ready cache, picks two ready ones at
//! random and takes the less loaded. What it needs from us:
//!
//! - **A `Discover` stream** of replicas coming and going: [`MemberDiscover`] diffs the
//!   discovery snapshots (never a queue of changes: the latest set is all that matters).
//! - **A replica service per replica** ([`Picker`]) whose readiness means "this replica can
//!   take a request now": a live stream and room in its queue. Readiness waits (with a
//!   waker) rather than failing: tower evicts a replica whose `poll_ready` fails, for good,
//!   and a replica that is down now may be back in a second. A full or dead replica is
//!   simply not among the ready ones, so p2c routes around it — slow shows up as load, full
//!   or dead as absence.
//! - **A load** ([`tower::load::Load`]): the replica's peak-EWMA round trip × (its
//!   outstanding requests, queued plus in flight, + 1) — Linkerd's cost. Outstanding alone
//!   lets a slow replica win every tie at zero (about 2 % of traffic for one 50 ms replica
//!   of three at 2,000/s, enough to put 50 ms into the p99); weighted by its round trip it
//!   loses until its estimate decays, then gets one probe. The estimate is kept by the
//!   replica's streams (see `rtt.rs`): best-effort notices never await their replies, so
//!   tower's `PeakEwma` wrapper would never see them complete.
//!
//! `Balance::call` on a picker hands out the replica's own [`DownstreamService`] holding
//! the queue slot the picker reserved, so the choice and the slot are one step and no
//! other caller can take the slot in between. Two balancers run per service, one per
//! [`Admission`]: a waiting caller (SubmitStream) holds its balancer while it waits for
//! room, and an immediate one (unary) must never queue behind it.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use sluice_proto::HopRequest;
use tokio::sync::{Mutex, Notify, watch};
use tokio_stream::wrappers::WatchStream;
use tonic::Status;
use tower::Service;
use tower::balance::p2c::Balance;
use tower::discover::Change;

use super::Admission;
use super::replicas::{Members, Replicas};
use super::service::DownstreamService;

/// One replica as the balancer sees it. See the module docs.
pub(crate) struct Picker<R: HopRequest> {
    service: DownstreamService<R>,
    live: Arc<Notify>,
    /// Registered for the next liveness change while the replica has no live stream.
    waiting: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
}

impl<R: HopRequest> Service<()> for Picker<R> {
    type Response = DownstreamService<R>;
    type Error = Status;
    type Future = std::future::Ready<Result<DownstreamService<R>, Status>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        while !self.service.is_live() {
            let waiting = self
                .waiting
                .get_or_insert_with(|| Box::pin(self.live.clone().notified_owned()));
            // Registered before the second look, so a change in between is not missed.
            waiting.as_mut().enable();
            if self.service.is_live() {
                break;
            }
            std::task::ready!(waiting.as_mut().poll(cx));
            self.waiting = None;
        }
        self.waiting = None;
        self.service.poll_ready(cx)
    }

    /// Hands out the service holding the reserved slot; the picker keeps a fresh one.
    fn call(&mut self, _: ()) -> Self::Future {
        let fresh = self.service.clone();
        std::future::ready(Ok(std::mem::replace(&mut self.service, fresh)))
    }
}

impl<R: HopRequest> tower::load::Load for Picker<R> {
    type Metric = f64;

    fn load(&self) -> f64 {
        self.service.rtt_estimate() * (self.service.outstanding() + 1) as f64
    }
}

/// The discovery snapshots as tower `Change`s.
pub(crate) struct MemberDiscover<R: HopRequest> {
    snapshots: WatchStream<Arc<Members<R>>>,
    admission: Admission,
    known: BTreeMap<SocketAddr, ()>,
    /// The rest of the last diff: at most one change per replica (bounded by
    /// `MAX_REPLICAS` twice over).
    changes: VecDeque<Change<SocketAddr, Picker<R>>>,
}

impl<R: HopRequest> MemberDiscover<R> {
    fn new(members: watch::Receiver<Arc<Members<R>>>, admission: Admission) -> Self {
        Self {
            snapshots: WatchStream::new(members),
            admission,
            known: BTreeMap::new(),
            changes: VecDeque::new(),
        }
    }

    fn diff(&mut self, members: &Members<R>) {
        let now: BTreeMap<SocketAddr, ()> = members.list.iter().map(|m| (m.addr, ())).collect();
        for addr in self.known.keys().filter(|a| !now.contains_key(a)) {
            self.changes.push_back(Change::Remove(*addr));
        }
        for m in members
            .list
            .iter()
            .filter(|m| !self.known.contains_key(&m.addr))
        {
            let picker = Picker {
                service: m.downstream.balanced_service(self.admission),
                live: m.downstream.live_signal(),
                waiting: None,
            };
            self.changes.push_back(Change::Insert(m.addr, picker));
        }
        self.known = now;
    }
}

impl<R: HopRequest> Stream for MemberDiscover<R> {
    type Item = Result<Change<SocketAddr, Picker<R>>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(change) = self.changes.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            match std::task::ready!(Pin::new(&mut self.snapshots).poll_next(cx)) {
                Some(members) => self.diff(&members),
                // Discovery ended (shutdown): keep the replicas we have.
                None => return Poll::Pending,
            }
        }
    }
}

type P2cBalance<R> = Balance<MemberDiscover<R>, ()>;

/// p2c for one service: a balancer per admission. See the module docs.
pub(crate) struct P2c<R: HopRequest> {
    wait: Mutex<P2cBalance<R>>,
    immediate: Mutex<P2cBalance<R>>,
}

impl<R: HopRequest> P2c<R> {
    pub(crate) fn new(replicas: &Replicas<R>) -> Self {
        let balance = |admission| {
            Mutex::new(Balance::new(MemberDiscover::new(
                replicas.subscribe(),
                admission,
            )))
        };
        Self {
            wait: balance(Admission::Wait),
            immediate: balance(Admission::Immediate),
        }
    }

    /// A replica's service with a queue slot reserved: the less loaded of two ready
    /// replicas. Waiting callers wait for some replica to have room; an immediate caller
    /// is refused RESOURCE_EXHAUSTED when none has room now.
    pub(crate) async fn ready(&self, admission: Admission) -> Result<DownstreamService<R>, Status> {
        let balancer_failed = |e: tower::BoxError| Status::unavailable(format!("{}: {e}", R::NAME));
        match admission {
            Admission::Wait => {
                let mut balance = self.wait.lock().await;
                futures::future::poll_fn(|cx| balance.poll_ready(cx))
                    .await
                    .map_err(balancer_failed)?;
                balance.call(()).await.map_err(balancer_failed)
            }
            Admission::Immediate => {
                let mut balance = self.immediate.lock().await;
                let ready =
                    futures::future::poll_fn(|cx| Poll::Ready(balance.poll_ready(cx))).await;
                match ready {
                    Poll::Ready(Ok(())) => balance.call(()).await.map_err(balancer_failed),
                    Poll::Ready(Err(e)) => Err(balancer_failed(e)),
                    Poll::Pending => Err(Status::resource_exhausted(format!(
                        "every {} replica's queue is full",
                        R::NAME
                    ))),
                }
            }
        }
    }
}
