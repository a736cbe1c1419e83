//! The gateway's flags, and the settings they become once checked.
//!
//! [`Config`] is the command line as clap parses it (every default a `DEFAULT_*` constant);
//! [`Config::settings`] checks it and builds what the gateway runs with ([`Settings`]), or
//! says which flag is wrong (a [`BadFlag`], exit code 64, as every server's). Nothing past
//! `main` sees clap: [`crate::serve`] takes the [`Settings`].

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use sluice_core::HumanDuration;
use sluice_core::flags::BadFlag;
use sluice_core::server::{CommonServerArgs, ServerSettings};
use tonic::transport::Endpoint;

use crate::downstream::route::DEFAULT_AFFINITY_EPSILON;
use crate::downstream::{self, Balancer, DownstreamConfig, Routing, Target};
use crate::ingress::{self, IngressLimits};
use crate::overload::clients::ClientRate;
use crate::overload::priority::PriorityPolicy;
use crate::overload::{self, Degradation, LimitMode, OverloadConfig};

/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50051";
/// Default admin (metrics, health) address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9101";
/// Default risk service URL.
pub const DEFAULT_RISK_URL: &str = "http://127.0.0.1:50052";
/// Default notification service URL.
pub const DEFAULT_NOTIFICATION_URL: &str = "http://127.0.0.1:50053";
/// Default logging service URL.
pub const DEFAULT_LOGGING_URL: &str = "http://127.0.0.1:50054";

/// `sluice-gateway`: accepts transactions over gRPC (Submit, SubmitStream) and fans each one
/// out to risk, notification and logging over long-lived bidirectional streams.
///
/// An outcome waits for the risk verdict and the audit ack (both required); notification is
/// best effort (QUEUED, or SHED when its queue is full). Every flag can also be set through
/// the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(name = "sluice-gateway", version)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Risk service replicas: comma-separated http://host:port URLs. A host name is
    /// re-resolved every --resolve-interval and each of its addresses is one replica (a
    /// Docker service scaled with --scale, a Kubernetes headless Service).
    #[arg(long, env = "SLUICE_RISK", default_value = DEFAULT_RISK_URL)]
    pub risk: String,
    /// Notification service replicas, as --risk.
    #[arg(long, env = "SLUICE_NOTIFICATION", default_value = DEFAULT_NOTIFICATION_URL)]
    pub notification: String,
    /// Audit-log partitions, one URL each, in partition order: entry K must be the logging
    /// process started with --partition K (and --partitions = the number of entries). A
    /// transaction's partition is a fixed hash of its id, so keep the count fixed.
    #[arg(long, env = "SLUICE_LOGGING", default_value = DEFAULT_LOGGING_URL)]
    pub logging: String,
    /// Furthest a client's `after_hlc` may be ahead of this gateway's wall clock, e.g.
    /// 500ms (at most 1h); beyond it (and past this gateway's own clock, whose outcomes are
    /// always accepted back) the transaction is refused INVALID_ARGUMENT
    /// (`clock_refused_total`), so no client drags the clock into the future. Keep it above
    /// the gateways' wall-clock skew.
    #[arg(long, env = "SLUICE_MAX_CLOCK_OFFSET", default_value_t = HumanDuration(crate::hlc::DEFAULT_MAX_CLOCK_OFFSET))]
    pub max_clock_offset: HumanDuration,
    /// Tests only: run the hybrid logical clock this far behind the system's wall clock, as
    /// a gateway on a slow machine would.
    #[arg(long, env = "SLUICE_TEST_CLOCK_BEHIND", hide = true)]
    pub test_clock_behind: Option<HumanDuration>,
    /// How often downstream host names are resolved again, e.g. 5s.
    #[arg(long, env = "SLUICE_RESOLVE_INTERVAL", default_value_t = HumanDuration(downstream::replicas::DEFAULT_RESOLVE_INTERVAL))]
    pub resolve_interval: HumanDuration,
    /// How the replicas of a stateless service share requests: p2c (power of two choices
    /// by load: each replica's round-trip estimate × its requests queued and in flight) or
    /// round-robin (blind to load; for comparison). Applies to notification, and to risk
    /// with --risk-routing balance.
    #[arg(long, env = "SLUICE_BALANCE", value_enum, default_value_t = Balancer::P2c)]
    pub balance: Balancer,
    /// How risk requests pick a replica: account (consistent hashing with bounded loads,
    /// so one account's transactions meet one replica's velocity counter while no replica
    /// takes more than (1 + --risk-affinity-epsilon) × the average, and a replica far slower
    /// than the others is skipped) or balance (--balance).
    #[arg(long, env = "SLUICE_RISK_ROUTING", value_enum, default_value_t = RiskRouting::Account)]
    pub risk_routing: RiskRouting,
    /// The ε of --risk-routing account: how far above the average load a replica may go
    /// before an account's requests spill to the next replica.
    #[arg(long, env = "SLUICE_RISK_AFFINITY_EPSILON", default_value_t = DEFAULT_AFFINITY_EPSILON)]
    pub risk_affinity_epsilon: f64,
    /// Token presented to the downstream services when streams open (`authorization:
    /// Bearer`); the logging service requires it for Append when given the same token.
    /// Unset = none sent.
    #[command(flatten)]
    pub mesh: sluice_core::auth::MeshTokenArgs,
    /// Long-lived streams per downstream, all on one HTTP/2 connection.
    #[arg(long, env = "SLUICE_STREAMS_PER_DOWNSTREAM", default_value_t = downstream::DEFAULT_STREAMS)]
    pub streams_per_downstream: usize,
    /// Most HTTP/2 connections ("lanes") to one downstream replica (1 to 64). One
    /// connection is written by one thread at a time; while requests keep waiting for its
    /// sender (not for the service), the gateway opens another, one stream each, and closes
    /// it after --downstream-lane-idle with nothing queued. Default: the gateway's worker
    /// threads (one below 8 CPUs, where nothing changes).
    #[arg(long, env = "SLUICE_DOWNSTREAM_LANES_MAX", value_parser = clap::value_parser!(u16).range(1..=downstream::MAX_LANES as i64))]
    pub downstream_lanes_max: Option<u16>,
    /// How long an extra connection to a replica stays open while each time it asks for
    /// work the queue is empty, e.g. 10s (at least 100ms).
    #[arg(long, env = "SLUICE_DOWNSTREAM_LANE_IDLE", default_value_t = HumanDuration(downstream::DEFAULT_LANE_IDLE))]
    pub downstream_lane_idle: HumanDuration,
    /// Capacity of each downstream's queue: transactions admitted and not yet taken by a
    /// stream. Full risk/logging queues hold SubmitStream readers and refuse unary calls;
    /// a full notification queue sheds notices.
    #[arg(long, env = "SLUICE_DOWNSTREAM_QUEUE", default_value_t = downstream::DEFAULT_QUEUE)]
    pub downstream_queue: usize,
    /// Slots of each downstream queue that only unary Submit calls may take (at most a
    /// quarter of the queue): however many SubmitStream readers wait for room, unary calls
    /// still find some.
    #[arg(long, env = "SLUICE_UNARY_RESERVED", default_value_t = downstream::DEFAULT_IMMEDIATE_RESERVED)]
    pub unary_reserved: usize,
    /// Most requests one downstream stream may have sent and not had answered.
    #[arg(long, env = "SLUICE_DOWNSTREAM_STREAM_INFLIGHT", default_value_t = downstream::DEFAULT_STREAM_INFLIGHT)]
    pub downstream_stream_inflight: usize,
    /// The longest a risk or logging stream that finds its queue empty holds the next
    /// request before sending it, so requests arriving meanwhile share one HTTP/2 frame, one
    /// write and one wake-up of the service, e.g. 250us; 0 sends each at once. A stream
    /// whose queue is not empty sends without waiting, so this adds at most one linger to a
    /// transaction's latency. The wait ends at the process's first wake-up past it, not on
    /// tokio's millisecond timer.
    #[arg(long, env = "SLUICE_DOWNSTREAM_LINGER", default_value_t = HumanDuration(downstream::DEFAULT_LINGER))]
    pub downstream_linger: HumanDuration,
    /// The same for notification streams, always fixed. No transaction waits for its notice,
    /// so here a linger costs no one latency and saves the service a wake-up per notice.
    #[arg(long, env = "SLUICE_NOTIFICATION_LINGER", default_value_t = HumanDuration(downstream::DEFAULT_NOTIFICATION_LINGER))]
    pub notification_linger: HumanDuration,
    /// adaptive: a request that finds the queue empty waits about one expected arrival gap
    /// (an average of the gaps between requests), at most --downstream-linger, and not at
    /// all when that gap is over twice --downstream-linger — at low load nothing waits;
    /// fixed: always --downstream-linger.
    #[arg(long, env = "SLUICE_DOWNSTREAM_LINGER_MODE", value_enum, default_value_t = downstream::DEFAULT_LINGER_MODE)]
    pub downstream_linger_mode: downstream::linger::LingerMode,
    /// Most requests a downstream stream's linger gathers: with this many together they
    /// go at once.
    #[arg(long, env = "SLUICE_DOWNSTREAM_LINGER_BATCH", default_value_t = downstream::DEFAULT_LINGER_BATCH, value_parser = clap::value_parser!(u16).range(1..=downstream::MAX_LINGER_BATCH as i64))]
    pub downstream_linger_batch: u16,
    /// Most unary Submit calls in flight; beyond it, RESOURCE_EXHAUSTED with pushback.
    #[arg(long, env = "SLUICE_MAX_INFLIGHT", default_value_t = ingress::DEFAULT_MAX_INFLIGHT)]
    pub max_inflight: usize,
    /// Most transactions per SubmitStream admitted and awaiting their outcome.
    #[arg(long, env = "SLUICE_STREAM_INFLIGHT", default_value_t = ingress::DEFAULT_STREAM_INFLIGHT)]
    pub stream_inflight: usize,
    /// Most SubmitStream calls open at once, over every connection; beyond it a new stream
    /// is refused RESOURCE_EXHAUSTED with pushback.
    #[arg(long, env = "SLUICE_MAX_STREAMS", default_value_t = ingress::DEFAULT_MAX_STREAMS)]
    pub max_streams: usize,
    /// Most SubmitStream calls open at once on one connection (its share of
    /// --max-streams); beyond it a new stream on that connection is refused
    /// RESOURCE_EXHAUSTED with pushback.
    #[arg(long, env = "SLUICE_MAX_STREAMS_PER_CONNECTION", default_value_t = ingress::DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: usize,
    /// How long a SubmitStream may hold its slot while its client sends nothing and nothing
    /// of it is in flight; then it ends UNAVAILABLE and the slot is free, e.g. 30s (0: never).
    #[arg(long, env = "SLUICE_STREAM_IDLE_TIMEOUT", default_value_t = HumanDuration(ingress::DEFAULT_STREAM_IDLE_TIMEOUT))]
    pub stream_idle_timeout: HumanDuration,
    /// Most transactions admitted and awaiting their outcome over all SubmitStreams
    /// together. When reached, streams stop reading (in turn, first come first served)
    /// until outcomes free room.
    #[arg(long, env = "SLUICE_STREAMS_INFLIGHT", default_value_t = ingress::DEFAULT_STREAMS_INFLIGHT)]
    pub streams_inflight: usize,
    /// Outcomes per SubmitStream produced but not yet taken by the transport.
    #[arg(long, env = "SLUICE_OUTCOME_QUEUE", default_value_t = ingress::DEFAULT_OUTCOME_QUEUE)]
    pub outcome_queue: usize,
    /// Deadline for transactions whose call carries no grpc-timeout (and for each
    /// SubmitStream message), e.g. 5s.
    #[arg(long, env = "SLUICE_DEFAULT_DEADLINE", default_value_t = HumanDuration(ingress::DEFAULT_DEADLINE))]
    pub default_deadline: HumanDuration,
    /// `grpc-retry-pushback-ms` sent with RESOURCE_EXHAUSTED, e.g. 100ms.
    #[arg(long, env = "SLUICE_RETRY_PUSHBACK", default_value_t = HumanDuration(ingress::DEFAULT_RETRY_PUSHBACK))]
    pub retry_pushback: HumanDuration,
    /// First reconnect delay of a broken downstream stream; doubles per failure (with jitter).
    #[arg(long, env = "SLUICE_RECONNECT_BASE", default_value_t = HumanDuration(downstream::DEFAULT_BACKOFF_BASE))]
    pub reconnect_base: HumanDuration,
    /// Longest reconnect delay.
    #[arg(long, env = "SLUICE_RECONNECT_MAX", default_value_t = HumanDuration(downstream::DEFAULT_BACKOFF_MAX))]
    pub reconnect_max: HumanDuration,
    /// How the concurrency limit (transactions admitted and unanswered, both APIs) is set:
    /// adaptive follows the latency of admitted transactions against its measured baseline
    /// and stays between --concurrency-min and --concurrency-max; static holds it at
    /// --concurrency-max (for comparison). Beyond the limit unary calls are refused
    /// RESOURCE_EXHAUSTED with pushback and stream readers wait. --max-inflight and
    /// --streams-inflight stay hard ceilings either way.
    #[arg(long, env = "SLUICE_CONCURRENCY_LIMIT", value_enum, default_value_t = LimitMode::Adaptive)]
    pub concurrency_limit: LimitMode,
    /// Lowest the adaptive concurrency limit goes.
    #[arg(long, env = "SLUICE_CONCURRENCY_MIN", default_value_t = overload::limit::DEFAULT_MIN_LIMIT)]
    pub concurrency_min: usize,
    /// Highest the adaptive concurrency limit goes; the static limit.
    #[arg(long, env = "SLUICE_CONCURRENCY_MAX", default_value_t = overload::limit::DEFAULT_MAX_LIMIT)]
    pub concurrency_max: usize,
    /// Per-client rate limit, transactions a second per client (the x-client-id metadata,
    /// else the peer's IP). Over it, unary calls are refused RESOURCE_EXHAUSTED with
    /// grpc-retry-pushback-ms = the time until the client's next token, and stream messages
    /// wait for it. Unset = off.
    #[arg(long, env = "SLUICE_CLIENT_RATE")]
    pub client_rate: Option<f64>,
    /// Tokens a client may save up for a burst (with --client-rate). Default: one second's.
    #[arg(long, env = "SLUICE_CLIENT_BURST")]
    pub client_burst: Option<u32>,
    /// Which clients may claim CRITICAL priority: comma-separated CLIENT=critical (a client
    /// is its x-client-id, else its IP address; `*=critical` trusts every client). Any other
    /// client's CRITICAL transactions are taken as DEFAULT. Both the priority and
    /// x-client-id are unauthenticated unless the deployment authenticates them in front
    /// of the gateway. Empty = no grants.
    #[arg(long, env = "SLUICE_PRIORITY_POLICY", default_value = "")]
    pub priority_policy: String,
    /// The latency objective degradation levels and bottleneck naming are measured against
    /// (p99, arrival to outcome), e.g. 50ms.
    #[arg(long, env = "SLUICE_LATENCY_SLO", default_value_t = HumanDuration(overload::level::DEFAULT_LATENCY_SLO))]
    pub latency_slo: HumanDuration,
    /// Degradation levels, recomputed every second with hysteresis: 1 skips notification
    /// for all but CRITICAL; 2 also refuses SHEDDABLE and halves the limit's ceiling; 3 also
    /// refuses unary writes UNAVAILABLE. off = always level 0.
    #[arg(long, env = "SLUICE_DEGRADATION", value_enum, default_value_t = Degradation::On)]
    pub degradation: Degradation,
    /// BENCHMARK COMPARISON ONLY: make the downstream queues and the per-stream ingress
    /// limit effectively unbounded (and the concurrency limit static and unbounded,
    /// degradation off), to measure what the bounds buy. Memory then grows with
    /// load whenever a downstream is slow. Never use it otherwise.
    #[arg(long, env = "SLUICE_UNBOUNDED_FOR_COMPARISON", default_value_t = false)]
    pub unbounded_for_comparison: bool,
    #[command(flatten)]
    pub downstream_windows: sluice_core::h2::DownstreamWindows,
    #[command(flatten)]
    pub server: CommonServerArgs,
}

/// How risk requests pick a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RiskRouting {
    /// By account: consistent hashing with bounded loads.
    Account,
    /// As --balance says.
    Balance,
}

/// Least `--downstream-lane-idle`: shorter, an extra connection would close between two
/// bursts of one load.
const MIN_LANE_IDLE: Duration = Duration::from_millis(100);

/// What "unbounded" means for `--unbounded-for-comparison`: more than memory can hold.
const UNBOUNDED: usize = 1 << 40;

impl Config {
    /// Defaults, as if no flag were given.
    pub fn defaults() -> Self {
        Self::parse_from(["sluice-gateway"])
    }

    /// Checks the flags and turns them into the settings the gateway runs with.
    pub fn settings(&self) -> Result<Settings, BadFlag> {
        let token = self
            .mesh
            .resolve()
            .map_err(|e| BadFlag::new("mesh-token/--mesh-token-file", "", e.to_string()))?;
        let auth = sluice_core::auth::bearer(token.as_deref())
            .map_err(|e| BadFlag::new("mesh-token/--mesh-token-file", "", e.to_string()))?;
        let unbounded = self.unbounded_for_comparison;
        let downstream = DownstreamConfig {
            queue: if unbounded {
                UNBOUNDED
            } else {
                self.downstream_queue
            },
            streams: self.streams_per_downstream,
            stream_inflight: self.downstream_stream_inflight,
            backoff_base: self.reconnect_base.0,
            backoff_max: self.reconnect_max.0,
            max_message_size: self.server.h2.max_message_size,
            auth,
            immediate_reserved: if unbounded { 0 } else { self.unary_reserved },
            linger: self.downstream_linger.0,
            linger_mode: self.downstream_linger_mode,
            linger_batch: usize::from(self.downstream_linger_batch),
            lanes_max: self.lanes_max(),
            lane_grow_after: downstream::DEFAULT_LANE_GROW_AFTER,
            lane_idle: self.downstream_lane_idle.0,
        };
        let limits = IngressLimits {
            max_inflight: self.max_inflight,
            stream_inflight: if unbounded {
                UNBOUNDED
            } else {
                self.stream_inflight
            },
            max_streams: self.max_streams,
            max_streams_per_connection: self.max_streams_per_connection,
            // 0 = never: a sleep this long never fires in a process's life.
            stream_idle_timeout: match self.stream_idle_timeout.0 {
                Duration::ZERO => Duration::from_secs(100 * 365 * 24 * 3600),
                t => t,
            },
            streams_inflight: if unbounded {
                UNBOUNDED
            } else {
                self.streams_inflight
            },
            outcome_queue: self.outcome_queue,
            default_deadline: self.default_deadline.0,
            retry_pushback: self.retry_pushback.0,
        };
        let epsilon = self.risk_affinity_epsilon;
        if !(epsilon > 0.0 && epsilon <= MAX_AFFINITY_EPSILON) {
            return Err(BadFlag::new(
                "risk-affinity-epsilon",
                epsilon.to_string(),
                format!("must be above 0 and at most {MAX_AFFINITY_EPSILON}"),
            ));
        }
        if self.max_clock_offset.0 > crate::hlc::MAX_MAX_CLOCK_OFFSET {
            return Err(BadFlag::new(
                "max-clock-offset",
                self.max_clock_offset,
                "must be at most 1h",
            ));
        }
        if self.downstream_lane_idle.0 < MIN_LANE_IDLE {
            return Err(BadFlag::new(
                "downstream-lane-idle",
                self.downstream_lane_idle,
                "must be at least 100ms",
            ));
        }
        let overload = self.overload()?;
        let logging = targets("logging", &self.logging)?;
        if logging.len() > MAX_PARTITIONS {
            return Err(BadFlag::new(
                "logging",
                self.logging.clone(),
                format!("at most {MAX_PARTITIONS} partitions"),
            ));
        }
        Ok(Settings {
            listen: self.listen,
            admin_listen: self.admin_listen,
            unbounded_for_comparison: unbounded,
            server: self.server.clone().into(),
            risk: targets("risk", &self.risk)?,
            notification: targets("notification", &self.notification)?,
            logging,
            risk_routing: match self.risk_routing {
                RiskRouting::Account => Routing::Affinity { epsilon },
                RiskRouting::Balance => Routing::Balance(self.balance),
            },
            notification_routing: Routing::Balance(self.balance),
            resolve_interval: self.resolve_interval.0.max(MIN_RESOLVE_INTERVAL),
            max_clock_offset: self.max_clock_offset.0,
            clock_behind: self.test_clock_behind.map(|d| d.0),
            h2: self.server.h2.clone(),
            windows: self.downstream_windows.clone(),
            notification_downstream: DownstreamConfig {
                linger: self.notification_linger.0,
                linger_mode: downstream::linger::LingerMode::Fixed,
                ..downstream.clone()
            },
            downstream,
            limits,
            overload,
        })
    }

    /// `--downstream-lanes-max`, else the gateway's worker threads: a lane is one
    /// connection task, which uses at most one thread.
    fn lanes_max(&self) -> usize {
        match self.downstream_lanes_max {
            Some(n) => usize::from(n),
            None => sluice_core::server::ServerSettings::from(self.server.clone())
                .worker_threads()
                .0
                .min(usize::from(downstream::MAX_LANES)),
        }
    }

    fn overload(&self) -> Result<OverloadConfig, BadFlag> {
        let value = |flag, value: String, rule: &str| BadFlag::new(flag, value, rule);
        if self.concurrency_max == 0 {
            return Err(value("concurrency-max", "0".into(), "must be at least 1"));
        }
        let adaptive = self.concurrency_limit == LimitMode::Adaptive;
        if adaptive && (self.concurrency_min == 0 || self.concurrency_min > self.concurrency_max) {
            return Err(value(
                "concurrency-min",
                self.concurrency_min.to_string(),
                "must be at least 1 and at most --concurrency-max",
            ));
        }
        let client_rate = match self.client_rate {
            None => None,
            Some(rate) if rate.is_finite() && rate > 0.0 && rate <= MAX_CLIENT_RATE => {
                let burst = self.client_burst.unwrap_or(rate.ceil() as u32).max(1);
                Some(ClientRate { rate, burst })
            }
            Some(rate) => {
                return Err(value(
                    "client-rate",
                    rate.to_string(),
                    "must be above 0 and at most 1000000 per second",
                ));
            }
        };
        if self.client_burst == Some(0) {
            return Err(value("client-burst", "0".into(), "must be at least 1"));
        }
        if self.latency_slo.0.is_zero() {
            return Err(value("latency-slo", "0".into(), "must be above 0"));
        }
        let priority_policy = PriorityPolicy::parse(&self.priority_policy)
            .map_err(|rule| value("priority-policy", self.priority_policy.clone(), &rule))?;
        if self.unbounded_for_comparison {
            // Unbounded means unbounded: no limit that moves either.
            return Ok(OverloadConfig {
                mode: LimitMode::Static,
                min_limit: 1,
                max_limit: UNBOUNDED,
                client_rate,
                latency_slo: self.latency_slo.0,
                degradation: Degradation::Off,
                priority_policy,
            });
        }
        Ok(OverloadConfig {
            mode: self.concurrency_limit,
            min_limit: self.concurrency_min,
            max_limit: self.concurrency_max,
            client_rate,
            latency_slo: self.latency_slo.0,
            degradation: self.degradation,
            priority_policy,
        })
    }
}

/// Largest --client-rate.
const MAX_CLIENT_RATE: f64 = 1_000_000.0;

/// Largest --risk-affinity-epsilon (past it affinity never spills: plain consistent hashing).
const MAX_AFFINITY_EPSILON: f64 = 100.0;
/// Most audit-log partitions (the logging service's own limit).
const MAX_PARTITIONS: usize = 1024;
/// Shortest --resolve-interval: DNS servers are shared.
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);

/// The URLs of a downstream flag, or the error naming it.
fn targets(flag: &'static str, list: &str) -> Result<Vec<Target>, BadFlag> {
    Target::parse_list(list).map_err(|reason| {
        BadFlag::new(
            flag,
            format!("{list:?}"),
            format!("not a usable URL ({reason}); expected http://host:port"),
        )
    })
}

/// The gateway's settings, checked: what [`crate::serve`] runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `--unbounded-for-comparison`: every bound off (benchmarks only).
    pub unbounded_for_comparison: bool,
    pub server: ServerSettings,
    pub risk: Vec<Target>,
    pub notification: Vec<Target>,
    /// One per partition, in order.
    pub logging: Vec<Target>,
    pub risk_routing: Routing,
    pub notification_routing: Routing,
    pub resolve_interval: Duration,
    /// `--max-clock-offset`.
    pub max_clock_offset: Duration,
    /// `--test-clock-behind`.
    pub clock_behind: Option<Duration>,
    h2: sluice_core::h2::H2Settings,
    windows: sluice_core::h2::DownstreamWindows,
    /// Risk's and logging's stream clients.
    pub downstream: DownstreamConfig,
    /// Notification's: the same but for its linger (`--notification-linger`).
    pub notification_downstream: DownstreamConfig,
    pub limits: IngressLimits,
    pub overload: OverloadConfig,
}

impl Settings {
    /// The endpoint of one downstream replica: the gateway's HTTP/2 windows and keepalive.
    pub fn endpoint(&self, addr: SocketAddr) -> Endpoint {
        let w = &self.windows;
        self.h2.with_windows(
            w.stream_window,
            w.connection_window,
            w.adaptive_window,
            Endpoint::from(
                tonic::codegen::http::Uri::try_from(format!("http://{addr}"))
                    .expect("a socket address makes a valid URI"),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }

    #[test]
    fn defaults_come_from_the_constants() {
        let c = Config::defaults();
        assert_eq!(c.default_deadline.0, ingress::DEFAULT_DEADLINE);
        assert_eq!(c.reconnect_max.0, downstream::DEFAULT_BACKOFF_MAX);
        assert!(c.settings().is_ok());
    }

    #[test]
    fn a_bad_url_names_its_flag() {
        let c = Config::parse_from(["sluice-gateway", "--risk", "risk:50052"]);
        let e = c.settings().expect_err("no scheme").to_string();
        assert!(e.starts_with("--risk \"risk:50052\""), "{e}");
        let c = Config::parse_from(["sluice-gateway", "--logging", "http://a:1,b:2"]);
        let e = c.settings().expect_err("second entry").to_string();
        assert!(e.starts_with("--logging") && e.contains("\"b:2\""), "{e}");
        let c = Config::parse_from(["sluice-gateway", "--risk-affinity-epsilon", "0"]);
        let e = c.settings().expect_err("epsilon").to_string();
        assert!(e.starts_with("--risk-affinity-epsilon 0"), "{e}");
        let c = Config::parse_from(["sluice-gateway", "--client-rate=-1"]);
        let e = c.settings().expect_err("rate").to_string();
        assert!(e.starts_with("--client-rate -1"), "{e}");
        let c = Config::parse_from(["sluice-gateway", "--concurrency-min", "9000"]);
        let e = c.settings().expect_err("min over max").to_string();
        assert!(e.starts_with("--concurrency-min 9000"), "{e}");
    }

    #[test]
    fn lanes_default_to_the_worker_threads_and_idle_has_a_floor() {
        let c = Config::parse_from(["sluice-gateway", "--worker-threads", "3"]);
        assert_eq!(c.settings().unwrap().downstream.lanes_max, 3);
        let c = Config::parse_from(["sluice-gateway", "--downstream-lanes-max", "1"]);
        assert_eq!(c.settings().unwrap().downstream.lanes_max, 1);
        assert!(Config::try_parse_from(["sluice-gateway", "--downstream-lanes-max", "0"]).is_err());
        let c = Config::parse_from(["sluice-gateway", "--downstream-lane-idle", "10ms"]);
        let e = c.settings().expect_err("idle under the floor").to_string();
        assert!(e.starts_with("--downstream-lane-idle 10ms"), "{e}");
    }

    #[test]
    fn downstream_lists_become_replicas_and_partitions() {
        let c = Config::parse_from([
            "sluice-gateway",
            "--risk",
            "http://risk:50052",
            "--logging",
            "http://logging-0:50054,http://logging-1:50054",
            "--risk-routing",
            "balance",
            "--balance",
            "round-robin",
        ]);
        let s = c.settings().unwrap();
        assert_eq!(s.logging.len(), 2);
        assert_eq!(s.logging[1].host, "logging-1");
        assert_eq!(s.risk_routing, Routing::Balance(Balancer::RoundRobin));
        let e = s.endpoint("10.1.2.3:50052".parse().unwrap());
        assert_eq!(e.uri().to_string(), "http://10.1.2.3:50052/");
    }
}
