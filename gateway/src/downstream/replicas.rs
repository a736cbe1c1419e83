//! Discovery: the replicas of one downstream service, kept current.
//!
//! A service is given as a list of URLs ([`Target`]s). A host that is an address is one
//! replica; a host that is a name is re-resolved every `resolve_interval` and each of its
//! A/AAAA addresses is one replica — Docker's embedded DNS (`--scale risk=3`) and a
//! Kubernetes headless Service answer one address per replica. Each replica gets its own
//! [`Downstream`]: its own queue and long-lived streams. An address that appears is started;
//! one that vanishes is drained (its streams half-close and finish what they sent) and its
//! metrics are dropped. A name that resolves to nothing, or fails to resolve, keeps its last
//! good addresses and logs once: a DNS hiccup must not empty a healthy service.
//!
//! The set is published as an immutable snapshot ([`Members`]) through a `watch` channel:
//! readers take the latest without locking out the discovery task, and the p2c balancer's
//! discovery stream ([`super::balance`]) diffs snapshots, so nothing queues up between them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::CancellationToken;
use sluice_core::log_limit::RateLimitedLog;
use sluice_proto::HopRequest;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tonic::transport::Endpoint;

use super::ring::Ring;
use super::{Downstream, DownstreamConfig, ServiceMetrics, Workers};

/// Default interval between DNS resolutions of a downstream name.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// Most replicas one service may have; addresses beyond it are ignored (and logged).
/// Each replica holds a queue and streams, so a runaway DNS answer must not multiply them.
pub const MAX_REPLICAS: usize = 256;
/// How soon a service with no address at all resolves again (at most the interval): at
/// start the names of containers starting alongside may not exist yet.
const RETRY_EMPTY: Duration = Duration::from_millis(500);

/// One entry of a downstream flag: `http://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As given, for messages.
    pub url: String,
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses `http://host:port` (the port defaults to 80 as in any http URL).
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: tonic::codegen::http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => return Err(format!("scheme {other:?} is not supported")),
            None => return Err("it needs a scheme and a host".into()),
        }
        let host = uri.host().ok_or("it needs a scheme and a host")?;
        // An IPv6 literal comes bracketed.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Self {
            url: url.to_string(),
            host,
            port: uri.port_u16().unwrap_or(80),
        })
    }

    /// Parses a comma-separated list; at least one entry.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, String> {
        let targets = list
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|url| Self::parse(url).map_err(|e| format!("{url:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err("no URL given".into());
        }
        Ok(targets)
    }

    /// Every address the host names now (itself, when it is an address).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

/// How many of the resolved addresses a service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Every address is a replica (stateless services).
    All,
    /// Only the first (lowest) address: one audit-log partition is one process.
    First,
}

/// One replica: its address and its stream client.
pub struct Member<R: HopRequest> {
    pub addr: SocketAddr,
    pub downstream: Downstream<R>,
}

impl<R: HopRequest> Clone for Member<R> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr,
            downstream: self.downstream.clone(),
        }
    }
}

/// The replicas of a service at one moment, in address order, with the hash ring over
/// them (for account affinity).
pub struct Members<R: HopRequest> {
    pub list: Vec<Member<R>>,
    pub(crate) ring: Ring,
}

impl<R: HopRequest> Members<R> {
    fn new(list: Vec<Member<R>>) -> Self {
        let names: Vec<String> = list.iter().map(|m| m.addr.to_string()).collect();
        Self {
            ring: Ring::new(&names),
            list,
        }
    }

    /// True when some replica has a live stream.
    pub fn any_live(&self) -> bool {
        self.list.iter().any(|m| m.downstream.is_live())
    }
}

/// The replicas of one service, as discovery last saw them. Cheap to clone.
pub struct Replicas<R: HopRequest> {
    members: watch::Receiver<Arc<Members<R>>>,
    /// The flag's value, for messages.
    given: Arc<str>,
}

impl<R: HopRequest> Clone for Replicas<R> {
    fn clone(&self) -> Self {
        Self {
            members: self.members.clone(),
            given: self.given.clone(),
        }
    }
}

/// How a target's addresses are found: [`dns`] in the gateway; tests script their own.
pub type Resolver = Arc<
    dyn Fn(Target) -> futures::future::BoxFuture<'static, std::io::Result<Vec<SocketAddr>>>
        + Send
        + Sync,
>;

/// The system resolver (`getaddrinfo` through tokio): what Docker's and Kubernetes' DNS
/// answer.
pub fn dns() -> Resolver {
    Arc::new(|target: Target| Box::pin(async move { target.resolve().await }))
}

/// How each replica's stream client is made.
#[derive(Clone)]
pub struct Setup {
    pub config: DownstreamConfig,
    /// The endpoint (HTTP/2 settings) for one replica's address.
    pub endpoint: Arc<dyn Fn(SocketAddr) -> Endpoint + Send + Sync>,
    pub resolve_interval: Duration,
    pub resolver: Resolver,
}

impl<R: HopRequest> Replicas<R> {
    /// Starts discovery of `targets`; replicas start as they are found. Everything stops
    /// when `shutdown` is cancelled (await the [`Workers`]).
    pub fn start(
        targets: Vec<Target>,
        take: Take,
        setup: &Setup,
        metrics: ServiceMetrics,
        shutdown: CancellationToken,
    ) -> (Self, Workers) {
        let given: Arc<str> = targets
            .iter()
            .map(|t| t.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
            .into();
        let (tx, rx) = watch::channel(Arc::new(Members::new(Vec::new())));
        let discovery = Discovery {
            targets,
            take,
            config: setup.config.clone(),
            endpoint: setup.endpoint.clone(),
            resolver: setup.resolver.clone(),
            interval: setup.resolve_interval,
            metrics,
            shutdown,
            tx,
            running: BTreeMap::new(),
            last_good: BTreeMap::new(),
            draining: JoinSet::new(),
            failures: RateLimitedLog::new(Duration::from_secs(60)),
        };
        let mut workers = JoinSet::new();
        workers.spawn(discovery.run());
        (Self { members: rx, given }, Workers(workers))
    }

    /// The replicas now.
    pub fn snapshot(&self) -> Arc<Members<R>> {
        self.members.borrow().clone()
    }

    /// A receiver of every new snapshot.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Members<R>>> {
        self.members.clone()
    }

    /// True when some replica has a live stream.
    pub fn is_live(&self) -> bool {
        self.members.borrow().any_live()
    }

    /// How many replicas there are now.
    pub fn len(&self) -> usize {
        self.members.borrow().list.len()
    }

    /// True when discovery has found none (yet).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The flag's value (the URLs given), for messages.
    pub fn given(&self) -> &str {
        &self.given
    }
}

/// A running replica.
struct Running<R: HopRequest> {
    member: Member<R>,
    stop: CancellationToken,
    workers: Workers,
}

/// The discovery task's state.
struct Discovery<R: HopRequest> {
    targets: Vec<Target>,
    take: Take,
    config: DownstreamConfig,
    endpoint: Arc<dyn Fn(SocketAddr) -> Endpoint + Send + Sync>,
    resolver: Resolver,
    interval: Duration,
    metrics: ServiceMetrics,
    shutdown: CancellationToken,
    tx: watch::Sender<Arc<Members<R>>>,
    running: BTreeMap<SocketAddr, Running<R>>,
    /// Each target's last non-empty answer, by index.
    last_good: BTreeMap<usize, Vec<SocketAddr>>,
    /// Replicas that left, finishing their in-flight requests.
    draining: JoinSet<()>,
    failures: RateLimitedLog,
}

impl<R: HopRequest> Discovery<R> {
    async fn run(mut self) {
        loop {
            let wanted = self.resolve().await;
            self.apply(wanted);
            while self.draining.try_join_next().is_some() {}
            let wait = if self.running.is_empty() {
                self.interval.min(RETRY_EMPTY)
            } else {
                self.interval
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => break,
            }
        }
        // Every replica's token is a child of `shutdown`: they are all closing.
        for (_, running) in std::mem::take(&mut self.running) {
            self.draining.spawn(running.workers.join());
        }
        while self.draining.join_next().await.is_some() {}
    }

    /// The addresses every target names now (its last good answer where it has none).
    async fn resolve(&mut self) -> BTreeSet<SocketAddr> {
        let mut wanted = BTreeSet::new();
        for (index, target) in self.targets.iter().enumerate() {
            match (self.resolver)(target.clone()).await {
                Ok(addrs) if !addrs.is_empty() => {
                    self.last_good.insert(index, addrs);
                }
                Ok(_) => {
                    self.failures.log(|suppressed| {
                        tracing::warn!(downstream = R::NAME, url = %target.url, suppressed, "name resolves to no address; keeping the last ones");
                    });
                }
                Err(error) => {
                    self.failures.log(|suppressed| {
                        tracing::warn!(downstream = R::NAME, url = %target.url, %error, suppressed, "cannot resolve; keeping the last addresses");
                    });
                }
            }
            if let Some(addrs) = self.last_good.get(&index) {
                match self.take {
                    Take::All => wanted.extend(addrs.iter().copied()),
                    Take::First => wanted.extend(addrs.iter().min().copied()),
                }
            }
        }
        if wanted.len() > MAX_REPLICAS {
            tracing::warn!(
                downstream = R::NAME,
                found = wanted.len(),
                kept = MAX_REPLICAS,
                "more addresses than replicas allowed; using the first"
            );
            wanted = wanted.into_iter().take(MAX_REPLICAS).collect();
        }
        wanted
    }

    /// Starts the replicas that appeared, drains those that vanished, and publishes the
    /// new set when it changed.
    fn apply(&mut self, wanted: BTreeSet<SocketAddr>) {
        let gone: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|a| !wanted.contains(a))
            .copied()
            .collect();
        let new: Vec<SocketAddr> = wanted
            .iter()
            .filter(|a| !self.running.contains_key(a))
            .copied()
            .collect();
        if gone.is_empty() && new.is_empty() {
            return;
        }
        for addr in gone {
            let Some(running) = self.running.remove(&addr) else {
                continue;
            };
            tracing::info!(downstream = R::NAME, replica = %addr, "replica gone; draining it");
            running.stop.cancel();
            running.member.downstream.retire();
            let metrics = self.metrics.clone();
            self.draining.spawn(async move {
                running.workers.join().await;
                metrics.forget(&addr.to_string());
            });
        }
        for addr in new {
            tracing::info!(downstream = R::NAME, replica = %addr, "replica found");
            let stop = self.shutdown.child_token();
            let connect = super::connect_lazy((self.endpoint)(addr));
            let (downstream, workers) = Downstream::start_replica(
                connect,
                self.config.clone(),
                &self.metrics,
                &addr.to_string(),
                stop.clone(),
            );
            self.running.insert(
                addr,
                Running {
                    member: Member { addr, downstream },
                    stop,
                    workers,
                },
            );
        }
        let list = self.running.values().map(|r| r.member.clone()).collect();
        self.tx.send_replace(Arc::new(Members::new(list)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_with_names_addresses_and_lists() {
        let t = Target::parse_list("http://risk:50052, http://10.0.0.7:1,http://[::1]:9").unwrap();
        assert_eq!((t[0].host.as_str(), t[0].port), ("risk", 50052));
        assert_eq!((t[1].host.as_str(), t[1].port), ("10.0.0.7", 1));
        assert_eq!((t[2].host.as_str(), t[2].port), ("::1", 9));
        assert!(Target::parse("risk:50052").is_err());
        assert!(Target::parse("https://risk:1").is_err());
        assert!(Target::parse_list(" , ").is_err());
    }

    #[tokio::test]
    async fn a_name_resolves_to_every_address() {
        let t = Target::parse("http://localhost:7").unwrap();
        let addrs = t.resolve().await.unwrap();
        assert!(!addrs.is_empty());
        assert!(addrs.iter().all(|a| a.port() == 7 && a.ip().is_loopback()));
        let ip = Target::parse("http://127.0.0.2:8").unwrap();
        assert_eq!(
            ip.resolve().await.unwrap(),
            vec!["127.0.0.2:8".parse().unwrap()]
        );
    }
}
