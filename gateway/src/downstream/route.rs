//! Which replica takes a request.
//!
//! - [`Route`] for the stateless services (risk, notification): power-of-two-choices over
//!   load (`tower::balance`, see `balance.rs`), round-robin (for comparison), or — for risk,
//!   whose velocity rule keeps per-account state — consistent hashing with bounded loads by
//!   account (`ring.rs`).
//! - [`Partitions`] for the audit log: a transaction id's partition is fixed
//!   ([`sluice_proto::partition::of`]); a partition that is down fails its own transactions
//!   at once (UNAVAILABLE) and no one else's.
//!
//! Every policy hands back the chosen replica's [`DownstreamService`] ready, that is with a
//! queue slot reserved: admission stays what it was with one replica — a waiting caller
//! waits for room, an immediate one is refused when there is none.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_proto::HopRequest;
use tonic::Status;
use tower::ServiceExt as _;

use super::balance::P2c;
use super::replicas::Replicas;
use super::{Admission, DownstreamService};

/// Default ε of the bounded-load ring: no replica takes more than 1.25× the average.
pub const DEFAULT_AFFINITY_EPSILON: f64 = 0.25;
/// Account affinity skips a replica whose round-trip estimate is more than this many times
/// the fastest live replica's...
pub const OUTLIER_FACTOR: f64 = 4.0;
/// ...and above this. Below it round trips are all fast enough not to matter, and a
/// scheduling hiccup of a few milliseconds on a busy machine must not move an account (its
/// velocity would be counted in two places).
pub const OUTLIER_FLOOR: std::time::Duration = std::time::Duration::from_millis(20);

/// How a stateless service's replicas share requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balancer {
    /// Power of two choices by load (round trip × requests queued and in flight), through
    /// tower::balance.
    P2c,
    /// In turn, blind to load: the comparison.
    RoundRobin,
}

/// How a service picks a replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Routing {
    Balance(Balancer),
    /// By the request's key (the account), consistent hashing with bounded loads.
    Affinity {
        epsilon: f64,
    },
}

enum Policy<R: HopRequest> {
    P2c(Box<P2c<R>>),
    RoundRobin(AtomicUsize),
    Affinity { epsilon: f64 },
}

/// A stateless service's replicas and how requests are spread over them. Cheap to clone.
pub struct Route<R: HopRequest> {
    replicas: Replicas<R>,
    policy: Arc<Policy<R>>,
}

impl<R: HopRequest> Clone for Route<R> {
    fn clone(&self) -> Self {
        Self {
            replicas: self.replicas.clone(),
            policy: self.policy.clone(),
        }
    }
}

impl<R: HopRequest> Route<R> {
    pub fn new(replicas: Replicas<R>, routing: Routing) -> Self {
        let policy = match routing {
            Routing::Balance(Balancer::P2c) => Policy::P2c(Box::new(P2c::new(&replicas))),
            Routing::Balance(Balancer::RoundRobin) => Policy::RoundRobin(AtomicUsize::new(0)),
            Routing::Affinity { epsilon } => Policy::Affinity { epsilon },
        };
        Self {
            replicas,
            policy: Arc::new(policy),
        }
    }

    /// True when some replica has a live stream.
    pub fn is_live(&self) -> bool {
        self.replicas.is_live()
    }

    /// True when there are several replicas to choose from.
    pub fn has_choice(&self) -> bool {
        self.replicas.len() > 1
    }

    /// A replica's service, ready (a queue slot reserved) for one request; `key` is what
    /// affinity routes by. UNAVAILABLE at once when no replica has a live stream.
    pub async fn ready(
        &self,
        admission: Admission,
        key: &str,
    ) -> Result<DownstreamService<R>, Status> {
        let members = self.replicas.snapshot();
        // One replica (the common case): nothing to choose, and no balancing to pay for.
        if let [only] = members.list.as_slice() {
            return only.downstream.service(admission).ready_oneshot().await;
        }
        if !members.any_live() {
            return Err(Status::unavailable(format!(
                "{} has no live replica ({} known, from {}); retry later",
                R::NAME,
                members.list.len(),
                self.replicas.given()
            )));
        }
        match &*self.policy {
            Policy::P2c(p2c) => p2c.ready(admission).await,
            Policy::RoundRobin(next) => {
                let live: Vec<_> = members
                    .list
                    .iter()
                    .filter(|m| m.downstream.is_live())
                    .collect();
                let member = live[next.fetch_add(1, Ordering::Relaxed) % live.len()];
                member.downstream.service(admission).ready_oneshot().await
            }
            Policy::Affinity { epsilon } => {
                // Outlier ejection by round trip: the ring counts requests, and a replica
                // turned slow still takes the accounts homed on it while it is under the
                // cap — about 2 % of traffic for one 50 ms replica of three, which puts 50 ms
                // into the p99. Far slower than the fastest, it counts as away: its accounts
                // go to the next replica on the ring (consistently, so their velocity is
                // counted there) until its estimate decays and a request finds it recovered.
                let rtt = |i: usize| members.list[i].downstream.rtt_estimate();
                let live = |i: usize| members.list[i].downstream.is_live();
                let fastest = (0..members.list.len())
                    .filter(|&i| live(i))
                    .map(rtt)
                    .fold(f64::INFINITY, f64::min);
                let slow_above = (OUTLIER_FACTOR * fastest).max(OUTLIER_FLOOR.as_secs_f64());
                let load = |i: usize| {
                    (live(i) && rtt(i) <= slow_above)
                        .then(|| members.list[i].downstream.outstanding())
                };
                let i = members.ring.pick(key, *epsilon, load).ok_or_else(|| {
                    Status::unavailable(format!("{} has no live replica", R::NAME))
                })?;
                members.list[i]
                    .downstream
                    .service(admission)
                    .ready_oneshot()
                    .await
            }
        }
    }
}

/// The audit log's partitions, in order: entry `k` serves partition `k`. Cheap to clone.
pub struct Partitions<R: HopRequest> {
    parts: Arc<[Replicas<R>]>,
}

impl<R: HopRequest> Clone for Partitions<R> {
    fn clone(&self) -> Self {
        Self {
            parts: self.parts.clone(),
        }
    }
}

impl<R: HopRequest> Partitions<R> {
    pub fn new(parts: Vec<Replicas<R>>) -> Self {
        Self {
            parts: parts.into(),
        }
    }

    /// How many partitions there are.
    pub fn count(&self) -> u32 {
        self.parts.len() as u32
    }

    /// Which partitions have a live stream, in order.
    pub fn live(&self) -> Vec<bool> {
        self.parts.iter().map(Replicas::is_live).collect()
    }

    /// True when some partition has a live stream.
    pub fn any_live(&self) -> bool {
        self.parts.iter().any(Replicas::is_live)
    }

    /// Transaction `id`'s partition and its service, ready for one request; UNAVAILABLE at
    /// once when that partition has no live stream.
    pub async fn ready(
        &self,
        admission: Admission,
        id: &str,
    ) -> Result<(u32, DownstreamService<R>), Status> {
        let partition = sluice_proto::partition::of(id, self.count());
        let part = &self.parts[partition as usize];
        let members = part.snapshot();
        let Some(member) = members.list.first() else {
            return Err(Status::unavailable(format!(
                "{} partition {partition} ({}) has no address yet; retry later",
                R::NAME,
                part.given()
            )));
        };
        let service = member.downstream.service(admission).ready_oneshot().await;
        service
            .map(|s| (partition, s))
            .map_err(|e| Status::new(e.code(), format!("partition {partition}: {}", e.message())))
    }
}
