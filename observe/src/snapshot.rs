//! The gateway's pressure snapshot: what `/pressure` serves and the live map draws, computed
//! from the gateway's own metrics. One computation for every reader — the map, the load
//! generator's live view and timeline, the lab — so "what a hop holds against its bound"
//! means one thing everywhere.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_core::exposition::{self, Buckets};

use crate::names::gateway;

/// A hop at least this full (of its bound) is drawn full.
pub const FULL: f64 = 0.9;

/// Stream readers waiting to be admitted for more than this share of the time (summed over
/// streams): the gateway is letting in no more, and what it holds is all a hop may get.
const DOOR_SHUT: f64 = 0.5;

/// The services in the map's order.
const SERVICES: [&str; 3] = ["risk", "notification", "logging"];

/// One scrape of the gateway's metrics: `name{labels}` → value, its own series only (read
/// by the one exposition reader, [`exposition::Samples`]).
#[derive(Debug, Clone, Default)]
pub struct GatewaySamples(exposition::Samples);

impl GatewaySamples {
    pub fn parse(text: &str) -> Self {
        Self::of_scrape(exposition::Samples::parse(text))
    }

    /// The gateway's series of a scrape (its own `/metrics`, or one read by a client).
    pub fn of_scrape(mut samples: exposition::Samples) -> Self {
        samples.0.retain(|k, _| k.starts_with(gateway::PREFIX));
        GatewaySamples(samples)
    }

    /// The gateway's series of a scrape a client holds (`name{labels}` → value), copied.
    pub fn of_map(samples: &std::collections::BTreeMap<String, f64>) -> Self {
        let gateway = samples
            .range(gateway::PREFIX.to_string()..)
            .take_while(|(k, _)| k.starts_with(gateway::PREFIX))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        GatewaySamples(exposition::Samples(gateway))
    }

    /// Whether the scrape has the series `key` at all.
    pub fn has(&self, key: &str) -> bool {
        self.0.get(key).is_some()
    }

    fn get(&self, key: &str) -> f64 {
        self.0.get(key).unwrap_or(0.0)
    }

    /// `name{downstream="service"}`.
    fn of(&self, name: &str, service: &str) -> f64 {
        self.get(&format!("{name}{{downstream=\"{service}\"}}"))
    }

    /// The sum of every series of `name` (any labels).
    fn sum(&self, name: &str) -> f64 {
        self.0.sum(name)
    }

    /// Each replica of `service`: its address and the value of `name` for it.
    fn replicas(&self, name: &str, service: &str) -> Vec<(String, f64)> {
        let labels = format!("downstream=\"{service}\",replica=\"");
        self.0
            .series(name)
            .filter_map(|(l, v)| {
                let addr = l.strip_prefix(&labels)?.strip_suffix('"')?;
                Some((addr.to_string(), v))
            })
            .collect()
    }

    /// A histogram's buckets for the series whose labels contain `labels` (e.g.
    /// `downstream="risk"`; empty for all, summed).
    fn buckets(&self, name: &str, labels: &str) -> Buckets {
        self.0.buckets(name, labels)
    }
}

/// The p99 (ms) of what a histogram recorded between `before` and `now`, interpolated within
/// its bucket as Prometheus's `histogram_quantile` does. None when nothing was recorded.
fn p99_between(now: &Buckets, before: &Buckets) -> Option<f64> {
    now.since(before).quantile(0.99).map(|s| 1000.0 * s)
}

/// What the map draws, at one instant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Degradation level 0–3.
    pub level: u8,
    /// The adaptive concurrency limit (static: its ceiling).
    pub limit: f64,
    /// The hop the gateway names its bottleneck, with its share of p99.
    pub bottleneck: Option<(String, f64)>,
    /// The gateway's process memory, MiB.
    pub memory_mib: f64,
    pub ingress: Ingress,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ingress {
    /// Transactions admitted and unanswered, both APIs.
    pub inflight: f64,
    /// Transactions answered per second (since the last snapshot).
    pub rate: Option<f64>,
    /// Refusals per second.
    pub refused_rate: Option<f64>,
    /// p99 latency of the transactions answered since the last snapshot, ms.
    pub p99_ms: Option<f64>,
    /// Share of the time stream readers waited to be admitted (the client being held).
    pub blocked: Option<f64>,
    /// p99 of each stage at the gateway since the last snapshot, ms, both APIs
    /// (`stage_seconds`: accept, admission, mesh, delivery): where the time went.
    pub stages_p99_ms: BTreeMap<String, Option<f64>>,
}

/// A degradation level as the gateway reports it (0..=3), whole; 0 when unreadable.
fn level(value: f64) -> u8 {
    if value.is_finite() {
        value.round().clamp(0.0, 3.0) as u8
    } else {
        0
    }
}

/// The gateway stages the map shows, in request order.
pub const STAGES: [&str; 4] = ["accept", "admission", "mesh", "delivery"];

/// A stage's histogram buckets (`le` → cumulative count), both APIs summed.
fn stage_buckets(s: &GatewaySamples, stage: &str) -> Buckets {
    s.buckets(gateway::STAGE_SECONDS, &format!("stage=\"{stage}\""))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// Requests held for it: queued, or sent and awaiting a reply.
    pub held: f64,
    /// What it may hold now: its queues, or what the gateway lets in — its concurrency
    /// limit (or what it holds, when the limit just fell below that), or, while clients
    /// wait at the door, what it holds — whichever is less.
    pub bound: f64,
    pub queued: f64,
    pub queue_capacity: f64,
    pub inflight: f64,
    pub live_streams: f64,
    /// HTTP/2 connections to it, all replicas: one each, more while a sender cannot keep up
    /// (0 from a gateway without lanes).
    #[serde(default)]
    pub lanes: f64,
    /// held / bound.
    pub fill: f64,
    pub full: bool,
    /// Requests answered per second.
    pub rate: Option<f64>,
    /// Share of the time its streams waited for HTTP/2 window (summed over streams).
    pub window_blocked: Option<f64>,
    /// Round-trip p99 since the last snapshot, ms.
    pub p99_ms: Option<f64>,
    pub replicas: Vec<Replica>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    pub addr: String,
    pub outstanding: f64,
    pub live_streams: f64,
    pub rate: Option<f64>,
}

impl Snapshot {
    /// The snapshot of `s`; with `previous` (how long ago, and its samples), rates and p99s.
    pub fn of(s: &GatewaySamples, previous: Option<(Duration, &GatewaySamples)>) -> Self {
        let per_second = |now: f64, before: f64, dt: Duration| {
            ((now - before) / dt.as_secs_f64().max(1e-3)).max(0.0)
        };
        let rate = |name: &str| previous.map(|(dt, p)| per_second(s.sum(name), p.sum(name), dt));
        let limit = s.get(gateway::CONCURRENCY_LIMIT);
        let ingress_inflight = s.sum(gateway::INFLIGHT);
        let blocked = rate(gateway::ADMISSION_BLOCKED_SECONDS_TOTAL);
        let door_shut = blocked.is_some_and(|b| b > DOOR_SHUT);
        // The gateway names at most one hop; should it name more, the largest share.
        let bottleneck =
            s.0.series(gateway::BOTTLENECK)
                .filter(|(_, share)| *share > 0.0)
                .filter_map(|(labels, share)| {
                    Some((exposition::label(labels, "hop")?.to_string(), share))
                })
                .max_by(|a, b| a.1.total_cmp(&b.1));
        let services = SERVICES
            .iter()
            .map(|&name| {
                let queued = s.of(gateway::DOWNSTREAM_QUEUE_DEPTH, name);
                let queue_capacity = s.of(gateway::DOWNSTREAM_QUEUE_CAPACITY, name);
                let inflight = s.of(gateway::DOWNSTREAM_INFLIGHT, name);
                let held = queued + inflight;
                // A limit that just fell below what was admitted before: what is held is
                // what it lets in, until those finish.
                let admits = if door_shut {
                    ingress_inflight
                } else if limit > 0.0 {
                    limit.max(ingress_inflight)
                } else {
                    f64::INFINITY
                };
                let bound = queue_capacity.min(admits).max(1.0);
                let fill = (held / bound).min(1.0);
                let replicas = s
                    .replicas(gateway::DOWNSTREAM_REPLICA_OUTSTANDING, name)
                    .into_iter()
                    .map(|(addr, outstanding)| {
                        let key = format!(
                            "{}{{downstream=\"{name}\",replica=\"{addr}\"}}",
                            gateway::DOWNSTREAM_REPLICA_REQUESTS_TOTAL
                        );
                        let streams = format!(
                            "{}{{downstream=\"{name}\",replica=\"{addr}\"}}",
                            gateway::DOWNSTREAM_REPLICA_LIVE_STREAMS
                        );
                        Replica {
                            rate: previous.map(|(dt, p)| per_second(s.get(&key), p.get(&key), dt)),
                            live_streams: s.get(&streams),
                            addr,
                            outstanding,
                        }
                    })
                    .collect();
                let labels = format!("downstream=\"{name}\"");
                Service {
                    name: name.to_string(),
                    held,
                    bound,
                    queued,
                    queue_capacity,
                    inflight,
                    live_streams: s.of(gateway::DOWNSTREAM_LIVE_STREAMS, name),
                    lanes: s.of(gateway::DOWNSTREAM_LANES, name),
                    fill,
                    full: fill >= FULL,
                    rate: previous.map(|(dt, p)| {
                        let key = format!(
                            "{}_count{{{labels}}}",
                            gateway::DOWNSTREAM_ROUNDTRIP_SECONDS
                        );
                        per_second(s.get(&key), p.get(&key), dt)
                    }),
                    window_blocked: previous.map(|(dt, p)| {
                        let key = format!(
                            "{}{{{labels}}}",
                            gateway::DOWNSTREAM_SEND_BLOCKED_SECONDS_TOTAL
                        );
                        per_second(s.get(&key), p.get(&key), dt)
                    }),
                    p99_ms: previous.and_then(|(_, p)| {
                        p99_between(
                            &s.buckets(gateway::DOWNSTREAM_ROUNDTRIP_SECONDS, &labels),
                            &p.buckets(gateway::DOWNSTREAM_ROUNDTRIP_SECONDS, &labels),
                        )
                    }),
                    replicas,
                }
            })
            .collect();
        Snapshot {
            level: level(s.get(gateway::DEGRADATION_LEVEL)),
            limit,
            bottleneck,
            memory_mib: s.get(gateway::PROCESS_RESIDENT_MEMORY_BYTES) / (1024.0 * 1024.0),
            ingress: Ingress {
                inflight: ingress_inflight,
                rate: rate(gateway::TRANSACTIONS_TOTAL),
                refused_rate: rate(gateway::REJECTED_TOTAL),
                p99_ms: previous.and_then(|(_, p)| {
                    p99_between(
                        &s.buckets(gateway::LATENCY_SECONDS, ""),
                        &p.buckets(gateway::LATENCY_SECONDS, ""),
                    )
                }),
                blocked,
                stages_p99_ms: STAGES
                    .iter()
                    .map(|&stage| {
                        let p99 = previous.and_then(|(_, p)| {
                            p99_between(&stage_buckets(s, stage), &stage_buckets(p, stage))
                        });
                        (stage.to_string(), p99)
                    })
                    .collect(),
            },
            services,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE sluice_gateway_concurrency_limit gauge
sluice_gateway_concurrency_limit 200
sluice_gateway_degradation_level 3
sluice_gateway_bottleneck{hop=\"admission\"} 0.0
sluice_gateway_bottleneck{hop=\"logging\"} 0.8
sluice_gateway_downstream_queue_depth{downstream=\"logging\"} 20
sluice_gateway_downstream_queue_capacity{downstream=\"logging\"} 1024
sluice_gateway_downstream_inflight{downstream=\"logging\"} 180
sluice_gateway_downstream_queue_capacity{downstream=\"risk\"} 1024
sluice_gateway_downstream_replica_outstanding{downstream=\"risk\",replica=\"10.0.0.1:50052\"} 3
sluice_gateway_downstream_replica_outstanding{downstream=\"risk\",replica=\"10.0.0.2:50052\"} 4
sluice_gateway_downstream_replica_requests_total{downstream=\"risk\",replica=\"10.0.0.1:50052\"} 100
sluice_gateway_transactions_total{api=\"unary\",result=\"ok\"} 10
sluice_gateway_transactions_total{api=\"stream\",result=\"ok\"} 30
sluice_gateway_latency_seconds_bucket{api=\"stream\",le=\"0.001\"} 0
sluice_gateway_latency_seconds_bucket{api=\"stream\",le=\"0.01\"} 30
sluice_gateway_latency_seconds_bucket{api=\"stream\",le=\"+Inf\"} 40
";

    #[test]
    fn stage_p99s_read_series_with_le_first_and_values_before_exemplars() {
        let before = GatewaySamples::parse("");
        let now = GatewaySamples::parse(
            "sluice_gateway_stage_seconds_bucket{le=\"0.001\",api=\"unary\",stage=\"mesh\"} 50
sluice_gateway_stage_seconds_bucket{le=\"0.01\",api=\"unary\",stage=\"mesh\"} 100
sluice_gateway_stage_seconds_bucket{le=\"+Inf\",api=\"unary\",stage=\"mesh\"} 100
sluice_gateway_stage_seconds_bucket{le=\"0.001\",api=\"stream\",stage=\"mesh\"} 0
sluice_gateway_stage_seconds_bucket{le=\"+Inf\",api=\"stream\",stage=\"mesh\"} 0
sluice_gateway_latency_seconds_bucket{le=\"0.01\",api=\"unary\"} 7 # {trace_id=\"ab\"} 0.004 1700000000.000
sluice_gateway_latency_seconds_bucket{le=\"+Inf\",api=\"unary\"} 7
",
        );
        let snap = Snapshot::of(&now, Some((Duration::from_secs(1), &before)));
        // histogram_quantile's rule: rank 99 of 100 is 49/50 of the way into (1, 10] ms.
        let mesh = snap.ingress.stages_p99_ms["mesh"].unwrap();
        assert!((mesh - 9.82).abs() < 1e-9, "{mesh}");
        assert_eq!(
            snap.ingress.stages_p99_ms["accept"], None,
            "nothing recorded"
        );
        // Rank 6.93 of 7, in the first bucket: from 0 to 10 ms. An exemplar's time taken
        // as the value would read 1.7e12.
        let p99 = snap.ingress.p99_ms.unwrap();
        assert!(
            (p99 - 9.9).abs() < 1e-9,
            "the value, not the exemplar's time: {p99}"
        );
    }

    #[test]
    fn a_stalled_hop_holding_the_whole_limit_is_full_and_named() {
        let s = GatewaySamples::parse(TEXT);
        let snap = Snapshot::of(&s, None);
        assert_eq!(snap.level, 3);
        assert_eq!(snap.bottleneck, Some(("logging".to_string(), 0.8)));
        let logging = snap.services.iter().find(|h| h.name == "logging").unwrap();
        assert_eq!((logging.held, logging.bound), (200.0, 200.0));
        assert!(logging.full);
        let risk = snap.services.iter().find(|h| h.name == "risk").unwrap();
        assert!(!risk.full);
        let addrs: Vec<_> = risk.replicas.iter().map(|r| r.addr.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1:50052", "10.0.0.2:50052"]);
        assert!(
            snap.ingress.rate.is_none(),
            "no rate without a previous snapshot"
        );
    }

    /// A stream-only gateway fills no more than its streams' share of the limit: once its
    /// readers wait at the door, the hop holding what it let in is full.
    #[test]
    fn with_clients_waiting_at_the_door_the_hop_holding_everything_is_full() {
        let held = "sluice_gateway_concurrency_limit 256\n\
             sluice_gateway_inflight{api=\"stream\"} 150\n\
             sluice_gateway_downstream_queue_capacity{downstream=\"logging\"} 1024\n\
             sluice_gateway_downstream_inflight{downstream=\"logging\"} 150\n";
        let before = GatewaySamples::parse(&format!(
            "{held}sluice_gateway_admission_blocked_seconds_total 0\n"
        ));
        let calm = Snapshot::of(&before, None);
        let logging = |s: &Snapshot| {
            s.services
                .iter()
                .find(|h| h.name == "logging")
                .unwrap()
                .full
        };
        assert!(!logging(&calm), "150 of a limit of 256");
        let waiting = GatewaySamples::parse(&format!(
            "{held}sluice_gateway_admission_blocked_seconds_total 2\n"
        ));
        let shut = Snapshot::of(&waiting, Some((Duration::from_secs(1), &before)));
        assert_eq!(shut.ingress.blocked, Some(2.0));
        assert!(logging(&shut));
    }

    #[test]
    fn rates_and_p99_come_from_the_difference_between_snapshots() {
        let before = GatewaySamples::parse(
            "sluice_gateway_transactions_total{api=\"stream\",result=\"ok\"} 0\n\
             sluice_gateway_latency_seconds_bucket{api=\"stream\",le=\"0.001\"} 0\n\
             sluice_gateway_latency_seconds_bucket{api=\"stream\",le=\"0.01\"} 0\n\
             sluice_gateway_latency_seconds_bucket{api=\"stream\",le=\"+Inf\"} 0\n",
        );
        let now = GatewaySamples::parse(TEXT);
        let snap = Snapshot::of(&now, Some((Duration::from_secs(2), &before)));
        assert_eq!(snap.ingress.rate, Some(20.0));
        // 40 recorded, 30 under 10 ms: the 99th percentile is past the last finite bound.
        assert_eq!(snap.ingress.p99_ms, Some(10.0));
    }
}
