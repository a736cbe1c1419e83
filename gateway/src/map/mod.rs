//! The live pressure map, on the gateway's admin port: `/` is the page (embedded in the
//! binary; no CDN, nothing fetched from elsewhere), `/pressure` one snapshot as JSON,
//! `/pressure/events` a snapshot every [`MAP_INTERVAL`] over Server-Sent Events.
//!
//! A snapshot ([`sluice_observe::snapshot`], the type every reader shares) is read from the
//! gateway's own metrics (the text `/metrics` serves), so the map shows exactly what
//! Prometheus would: per hop (each service, and each of its
//! replicas) what the gateway holds for it against its bound, the time its streams waited
//! for HTTP/2 window, its reply rate and round-trip p99; the degradation level and the
//! bottleneck hop; where a transaction's time at the gateway went (the p99 of each stage:
//! accept, admission, mesh, delivery). Rates and p99s are differences between consecutive
//! snapshots. The open maps share one snapshot per half interval (the registry is encoded
//! and parsed once, however many watch); at most [`MAX_VIEWERS`] event streams at once; more
//! are refused 503.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sluice_core::metrics::Metrics;
use sluice_observe::snapshot::{GatewaySamples, Snapshot};
use tokio::sync::Semaphore;

/// How often an open map is sent a snapshot.
pub const MAP_INTERVAL: Duration = Duration::from_millis(250);
/// Most maps open at once (event streams); beyond it, 503.
pub const MAX_VIEWERS: usize = 16;
/// `/pressure` computes rates since the previous `/pressure` if it was at most this long ago.
pub const RATE_HORIZON: Duration = Duration::from_secs(10);

/// The page, embedded.
const PAGE: &str = include_str!("index.html");

#[derive(Clone)]
struct MapState {
    metrics: Metrics,
    viewers: Arc<Semaphore>,
    /// The samples behind the last `/pressure` answer: the next one's rates are since then.
    last: Arc<Mutex<Option<(Instant, GatewaySamples)>>>,
    /// The latest snapshot every open map is sent: encoded, parsed and serialized at most
    /// once per half [`MAP_INTERVAL`], however many maps are open.
    shared: Arc<Mutex<Option<Shared>>>,
}

/// One snapshot the open maps share, and the samples behind it (the next one's rates are
/// since then).
struct Shared {
    at: Instant,
    samples: GatewaySamples,
    json: Arc<str>,
}

impl MapState {
    /// The latest snapshot as JSON: the shared one while it is younger than half an
    /// interval, else a new one, its rates since the previous (within [`RATE_HORIZON`]).
    fn shared_snapshot(&self) -> Arc<str> {
        let now = Instant::now();
        let mut shared = self.shared.lock().expect("map lock");
        if let Some(s) = shared.as_ref()
            && now.duration_since(s.at) < MAP_INTERVAL / 2
        {
            return s.json.clone();
        }
        let samples = GatewaySamples::parse(&self.metrics.encode());
        let previous = shared
            .as_ref()
            .map(|s| (now.duration_since(s.at), &s.samples))
            .filter(|(ago, _)| *ago <= RATE_HORIZON && !ago.is_zero());
        let json: Arc<str> = serde_json::to_string(&Snapshot::of(&samples, previous))
            .unwrap_or_default()
            .into();
        *shared = Some(Shared {
            at: now,
            samples,
            json: json.clone(),
        });
        json
    }
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
            shared: Arc::default(),
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
    let samples = GatewaySamples::parse(&state.metrics.encode());
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
        loop {
            tick.tick().await;
            let data = state.shared_snapshot();
            yield Ok::<_, Infallible>(Event::default().data(&*data));
        }
    };
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_maps_share_one_snapshot_per_half_interval() {
        let state = MapState {
            metrics: Metrics::new(prometheus_client::registry::Registry::default()),
            viewers: Arc::new(Semaphore::new(MAX_VIEWERS)),
            last: Arc::default(),
            shared: Arc::default(),
        };
        let first = state.shared_snapshot();
        let again = state.shared_snapshot();
        assert!(
            Arc::ptr_eq(&first, &again),
            "a second viewer within the interval reuses it"
        );
        let snapshot: Snapshot = serde_json::from_str(&first).expect("the shared type");
        assert!(snapshot.ingress.rate.is_none(), "no previous: no rates");
    }
}
