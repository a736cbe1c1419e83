//! The live pressure map, on the gateway's admin port: `/` is the page (embedded in the
//! binary; no CDN, nothing fetched from elsewhere), `/pressure` one snapshot as JSON,
//! `/pressure/events` a snapshot every [`MAP_INTERVAL`] over Server-Sent Events.
//!
//! A snapshot is read from the gateway's own metrics (the text `/metrics` serves), so the
//! map shows exactly what Prometheus would: per hop (each service, and each of its
//! replicas) what the gateway holds for it against its bound, the time its streams waited
//! for HTTP/2 window, its reply rate and round-trip p99; the degradation level and the
//! bottleneck hop; where a transaction's time at the gateway went (the p99 of each stage:
//! accept, admission, mesh, delivery). Rates and p99s are differences between one connection's consecutive
//! snapshots. At most [`MAX_VIEWERS`] event streams at once; more are refused 503.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use sluice_core::exposition::{self, Buckets};
use sluice_core::metrics::Metrics;
use tokio::sync::Semaphore;

/// How often an open map is sent a snapshot.
pub const MAP_INTERVAL: Duration = Duration::from_millis(250);
/// Most maps open at once (event streams); beyond it, 503.
pub const MAX_VIEWERS: usize = 16;
/// A hop at least this full (of its bound) is drawn full.
pub const FULL: f64 = 0.9;
/// `/pressure` computes rates since the previous `/pressure` if it was at most this long ago.
pub const RATE_HORIZON: Duration = Duration::from_secs(10);
/// Stream readers waiting to be admitted for more than this share of the time (summed over
/// streams): the gateway is letting in no more, and what it holds is all a hop may get.
const DOOR_SHUT: f64 = 0.5;

/// The services in the map's order.
const SERVICES: [&str; 3] = ["risk", "notification", "logging"];

/// The page, embedded.
const PAGE: &str = include_str!("index.html");

#[derive(Clone)]
struct MapState {
    metrics: Metrics,
    viewers: Arc<Semaphore>,
    /// The samples behind the last `/pressure` answer: the next one's rates are since then.
    last: Arc<Mutex<Option<(Instant, Samples)>>>,
}

/// The map's routes, to be served beside `/metrics`.
pub fn routes(metrics: Metrics) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/pressure", get(snapshot))
        .route("/pressure/events", get(events))
        .with_state(MapState {
            metrics,
            viewers: Arc::new(Semaphore::new(MAX_VIEWERS)),
            last: Arc::default(),
        })
}

async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
}

/// One snapshot; its rates are since the previous `/pressure` (when within
/// [`RATE_HORIZON`]), so a poller gets them too.
async fn snapshot(State(state): State<MapState>) -> impl IntoResponse {
    let now = Instant::now();
    let samples = Samples::parse(&state.metrics.encode());
    let mut last = state.last.lock().expect("map lock");
    let previous = last
        .as_ref()
        .map(|(at, p)| (now.duration_since(*at), p))
        .filter(|(ago, _)| *ago <= RATE_HORIZON && !ago.is_zero());
    let snapshot = Snapshot::of(&samples, previous);
    *last = Some((now, samples));
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        serde_json::to_string(&snapshot).unwrap_or_default(),
    )
}

async fn events(State(state): State<MapState>) -> Response {
    let Ok(viewer) = state.viewers.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_VIEWERS} maps are open already; close one and reload\n"),
        )
            .into_response();
    };
    let stream = async_stream::stream! {
        // Held as long as the stream: one of MAX_VIEWERS.
        let _viewer = viewer;
        let mut tick = tokio::time::interval(MAP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut previous: Option<(Instant, Samples)> = None;
        loop {
            tick.tick().await;
            let now = Instant::now();
            let samples = Samples::parse(&state.metrics.encode());
            let snapshot = Snapshot::of(
                &samples,
                previous.as_ref().map(|(at, p)| (now.duration_since(*at), p)),
            );
            let data = serde_json::to_string(&snapshot).unwrap_or_default();
            previous = Some((now, samples));
            yield Ok::<_, Infallible>(Event::default().data(data));
        }
    };
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// One scrape of the gateway's metrics: `name{labels}` → value, `sluice_gateway_` dropped
/// (read by the one exposition reader, [`exposition::Samples`]).
#[derive(Debug, Default)]
struct Samples(exposition::Samples);

impl Samples {
    fn parse(text: &str) -> Self {
        Samples(exposition::Samples::parse_prefixed(text, "sluice_gateway_"))
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
#[derive(Debug, Serialize)]
struct Snapshot {
    /// Degradation level 0–3.
    level: u8,
    /// The adaptive concurrency limit (static: its ceiling).
    limit: f64,
    /// The hop the gateway names its bottleneck, with its share of p99.
    bottleneck: Option<(String, f64)>,
    /// The gateway's process memory, MiB.
    memory_mib: f64,
    ingress: Ingress,
    services: Vec<Service>,
}

#[derive(Debug, Serialize)]
struct Ingress {
    /// Transactions admitted and unanswered, both APIs.
    inflight: f64,
    /// Transactions answered per second (since the last snapshot).
    rate: Option<f64>,
    /// Refusals per second.
    refused_rate: Option<f64>,
    /// p99 latency of the transactions answered since the last snapshot, ms.
    p99_ms: Option<f64>,
    /// Share of the time stream readers waited to be admitted (the client being held).
    blocked: Option<f64>,
    /// p99 of each stage at the gateway since the last snapshot, ms, both APIs
    /// (`stage_seconds`: accept, admission, mesh, delivery): where the time went.
    stages_p99_ms: BTreeMap<&'static str, Option<f64>>,
}

/// The gateway stages the map shows, in request order.
const STAGES: [&str; 4] = ["accept", "admission", "mesh", "delivery"];

/// A stage's histogram buckets (`le` → cumulative count), both APIs summed.
fn stage_buckets(s: &Samples, stage: &str) -> Buckets {
    s.buckets("stage_seconds", &format!("stage=\"{stage}\""))
}

#[derive(Debug, Serialize)]
struct Service {
    name: &'static str,
    /// Requests held for it: queued, or sent and awaiting a reply.
    held: f64,
    /// What it may hold now: its queues, or what the gateway lets in — its concurrency
    /// limit (or what it holds, when the limit just fell below that), or, while clients
    /// wait at the door, what it holds — whichever is less.
    bound: f64,
    queued: f64,
    queue_capacity: f64,
    inflight: f64,
    live_streams: f64,
    /// held / bound.
    fill: f64,
    full: bool,
    /// Requests answered per second.
    rate: Option<f64>,
    /// Share of the time its streams waited for HTTP/2 window (summed over streams).
    window_blocked: Option<f64>,
    /// Round-trip p99 since the last snapshot, ms.
    p99_ms: Option<f64>,
    replicas: Vec<Replica>,
}

#[derive(Debug, Serialize)]
struct Replica {
    addr: String,
    outstanding: f64,
    live_streams: f64,
    rate: Option<f64>,
}

impl Snapshot {
    /// The snapshot of `s`; with `previous` (how long ago, and its samples), rates and p99s.
    fn of(s: &Samples, previous: Option<(Duration, &Samples)>) -> Self {
        let per_second = |now: f64, before: f64, dt: Duration| {
            ((now - before) / dt.as_secs_f64().max(1e-3)).max(0.0)
        };
        let rate = |name: &str| previous.map(|(dt, p)| per_second(s.sum(name), p.sum(name), dt));
        let limit = s.get("concurrency_limit");
        let ingress_inflight = s.sum("inflight");
        let blocked = rate("admission_blocked_seconds_total");
        let door_shut = blocked.is_some_and(|b| b > DOOR_SHUT);
        let bottleneck = ["admission", "risk", "logging"]
            .iter()
            .map(|hop| {
                (
                    hop.to_string(),
                    s.get(&format!("bottleneck{{hop=\"{hop}\"}}")),
                )
            })
            .filter(|(_, share)| *share > 0.0)
            .max_by(|a, b| a.1.total_cmp(&b.1));
        let services = SERVICES
            .iter()
            .map(|&name| {
                let queued = s.of("downstream_queue_depth", name);
                let queue_capacity = s.of("downstream_queue_capacity", name);
                let inflight = s.of("downstream_inflight", name);
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
                    .replicas("downstream_replica_outstanding", name)
                    .into_iter()
                    .map(|(addr, outstanding)| {
                        let key = format!(
                            "downstream_replica_requests_total{{downstream=\"{name}\",replica=\"{addr}\"}}"
                        );
                        let streams = format!(
                            "downstream_replica_live_streams{{downstream=\"{name}\",replica=\"{addr}\"}}"
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
                    name,
                    held,
                    bound,
                    queued,
                    queue_capacity,
                    inflight,
                    live_streams: s.of("downstream_live_streams", name),
                    fill,
                    full: fill >= FULL,
                    rate: previous.map(|(dt, p)| {
                        let key = format!("downstream_roundtrip_seconds_count{{{labels}}}");
                        per_second(s.get(&key), p.get(&key), dt)
                    }),
                    window_blocked: previous.map(|(dt, p)| {
                        let key = format!("downstream_send_blocked_seconds_total{{{labels}}}");
                        per_second(s.get(&key), p.get(&key), dt)
                    }),
                    p99_ms: previous.and_then(|(_, p)| {
                        p99_between(
                            &s.buckets("downstream_roundtrip_seconds", &labels),
                            &p.buckets("downstream_roundtrip_seconds", &labels),
                        )
                    }),
                    replicas,
                }
            })
            .collect();
        Snapshot {
            level: s.get("degradation_level").clamp(0.0, 3.0) as u8,
            limit,
            bottleneck,
            memory_mib: s.get("process_resident_memory_bytes") / (1024.0 * 1024.0),
            ingress: Ingress {
                inflight: ingress_inflight,
                rate: rate("transactions_total"),
                refused_rate: rate("rejected_total"),
                p99_ms: previous.and_then(|(_, p)| {
                    p99_between(
                        &s.buckets("latency_seconds", ""),
                        &p.buckets("latency_seconds", ""),
                    )
                }),
                blocked,
                stages_p99_ms: STAGES
                    .iter()
                    .map(|&stage| {
                        let p99 = previous.and_then(|(_, p)| {
                            p99_between(&stage_buckets(s, stage), &stage_buckets(p, stage))
                        });
                        (stage, p99)
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
        let before = Samples::parse("");
        let now = Samples::parse(
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
        let s = Samples::parse(TEXT);
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
        let before = Samples::parse(&format!(
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
        let waiting = Samples::parse(&format!(
            "{held}sluice_gateway_admission_blocked_seconds_total 2\n"
        ));
        let shut = Snapshot::of(&waiting, Some((Duration::from_secs(1), &before)));
        assert_eq!(shut.ingress.blocked, Some(2.0));
        assert!(logging(&shut));
    }

    #[test]
    fn rates_and_p99_come_from_the_difference_between_snapshots() {
        let before = Samples::parse(
            "sluice_gateway_transactions_total{api=\"stream\",result=\"ok\"} 0\n\
             sluice_gateway_latency_seconds_bucket{api=\"stream\",le=\"0.001\"} 0\n\
             sluice_gateway_latency_seconds_bucket{api=\"stream\",le=\"0.01\"} 0\n\
             sluice_gateway_latency_seconds_bucket{api=\"stream\",le=\"+Inf\"} 0\n",
        );
        let now = Samples::parse(TEXT);
        let snap = Snapshot::of(&now, Some((Duration::from_secs(2), &before)));
        assert_eq!(snap.ingress.rate, Some(20.0));
        // 40 recorded, 30 under 10 ms: the 99th percentile is past the last finite bound.
        assert_eq!(snap.ingress.p99_ms, Some(10.0));
    }
}
