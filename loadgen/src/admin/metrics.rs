//! Reading a Sluice binary's `/metrics` (Prometheus text) through [`super::http`] and the one
//! exposition reader ([`sluice_core::exposition`]): enough for
//! the load generator's live view, benchmarks and scenarios. A scrape that fails reads as
//! "no samples", never as an error: the run it decorates goes on. [`GatewayPressure`] is the
//! gateway's part of that view: its queues, its degradation level and the hop it names as
//! its bottleneck.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use sluice_observe::names;
use sluice_observe::snapshot::{GatewaySamples, Service, Snapshot};

/// Longest a scrape may take: the live view scrapes once per interval and must not fall
/// behind it.
pub const DEFAULT_SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// The `/metrics` URL of an admin listener at `addr`.
pub fn url(addr: SocketAddr) -> String {
    format!("http://{addr}/metrics")
}

/// Every sample (`name{labels}` → value) from the metrics endpoint at `url`; `None` when it
/// does not answer 200 within [`DEFAULT_SCRAPE_TIMEOUT`].
pub async fn samples(url: &str) -> Option<BTreeMap<String, f64>> {
    let body = match super::http::get(url, DEFAULT_SCRAPE_TIMEOUT).await {
        Ok((status, body)) if status.is_success() => body,
        Ok((status, _)) => {
            tracing::debug!("scrape {url}: {status}");
            return None;
        }
        Err(e) => {
            tracing::debug!("scrape: {e:#}");
            return None;
        }
    };
    Some(parse(&body))
}

/// One sample by its exact `name{labels}`.
pub async fn metric(url: &str, name: &str) -> Option<f64> {
    samples(url).await?.get(name).copied()
}

/// Degradation levels the gateway reports (`sluice_gateway_degradation_level`, 0..=3):
/// 0 is normal service; each level sheds more.
pub const DEGRADATION_LEVELS: usize = 4;

/// The downstreams whose gateway queue depths the live view shows, in its column order.
const QUEUES: [&str; 3] = ["risk", "logging", "notification"];

/// The hop the gateway names as its bottleneck (`sluice_gateway_bottleneck{hop}`): its
/// share of the gateway's p99 latency.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Bottleneck {
    /// `admission`, `risk` or `logging`.
    pub hop: String,
    /// 0..1.
    pub share: f64,
}

/// The gateway's own account of its pressure, from one scrape: what the live view and the
/// timeline show beside the load.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayPressure {
    /// Downstream queue depths: risk, logging, notification.
    pub queues: [f64; 3],
    /// What the gateway holds for each downstream, queued or sent and awaiting its reply:
    /// where a slow hop's pressure shows (a stalled hop's requests are mostly in flight).
    pub held: [f64; 3],
    /// What each downstream may hold: its queue capacity or the gateway's concurrency limit
    /// (or what it has admitted, when the limit just fell below that), whichever is less
    /// (the live view's bars).
    pub bounds: [f64; 3],
    /// 0..=3; `None` from a gateway without overload control.
    pub degradation_level: Option<u8>,
    /// The hop with a non-zero share of p99, if the gateway names one (it names at most
    /// one; should it name more, the largest share).
    pub bottleneck: Option<Bottleneck>,
}

impl GatewayPressure {
    /// Read from one scrape's samples through the gateway's own snapshot
    /// ([`sluice_observe::snapshot`]: what the live map shows): a queue missing reads as 0,
    /// a level or bottleneck missing as `None`.
    pub fn from_samples(samples: &BTreeMap<String, f64>) -> GatewayPressure {
        let scrape = GatewaySamples::of_map(samples);
        let snapshot = Snapshot::of(&scrape, None);
        let hop = |d: &str| snapshot.services.iter().find(|s| s.name == d);
        let each = |f: fn(&Service) -> f64| QUEUES.map(|d| hop(d).map_or(0.0, f));
        GatewayPressure {
            queues: each(|s| s.queued),
            held: each(|s| s.held),
            bounds: each(|s| s.bound),
            degradation_level: scrape
                .has(names::gateway::DEGRADATION_LEVEL)
                .then_some(snapshot.level),
            bottleneck: snapshot
                .bottleneck
                .map(|(hop, share)| Bottleneck { hop, share }),
        }
    }
}

/// The samples of a Prometheus/OpenMetrics text exposition, read by the one reader
/// ([`sluice_core::exposition`]).
fn parse(body: &str) -> BTreeMap<String, f64> {
    sluice_core::exposition::Samples::parse(body).0
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_samples_by_name_and_labels() {
        let body = "# TYPE x gauge\nx{a=\"1\"} 3\nup 1.5\n# EOF\n";
        let s = super::parse(body);
        assert_eq!(s.len(), 2);
        assert_eq!(s["x{a=\"1\"}"], 3.0);
        assert_eq!(s["up"], 1.5);
    }

    #[test]
    fn an_exemplar_is_not_part_of_its_sample() {
        let body =
            "h_bucket{api=\"stream\",le=\"0.01\"} 7 # {trace_id=\"4bf9\"} 0.004 1700000000.1\n";
        let s = super::parse(body);
        assert_eq!(s["h_bucket{api=\"stream\",le=\"0.01\"}"], 7.0);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn the_gateway_names_its_degradation_level_and_bottleneck() {
        use super::{Bottleneck, GatewayPressure, parse};
        let body = "# TYPE sluice_gateway_degradation_level gauge\n\
            sluice_gateway_degradation_level 2\n\
            sluice_gateway_downstream_queue_depth{downstream=\"logging\"} 12\n\
            sluice_gateway_bottleneck{hop=\"admission\"} 0\n\
            sluice_gateway_bottleneck{hop=\"logging\"} 0.71\n\
            sluice_gateway_bottleneck{hop=\"risk\"} 0.0\n";
        let g = GatewayPressure::from_samples(&parse(body));
        assert_eq!(g.queues, [0.0, 12.0, 0.0]);
        assert_eq!(g.degradation_level, Some(2));
        assert_eq!(
            g.bottleneck,
            Some(Bottleneck {
                hop: "logging".into(),
                share: 0.71
            })
        );

        let quiet = "sluice_gateway_degradation_level 0\n\
            sluice_gateway_bottleneck{hop=\"logging\"} 0\n";
        let g = GatewayPressure::from_samples(&parse(quiet));
        assert_eq!((g.degradation_level, g.bottleneck), (Some(0), None));

        // A gateway without overload control: queues only.
        let old = "sluice_gateway_downstream_queue_depth{downstream=\"risk\"} 3\n";
        let g = GatewayPressure::from_samples(&parse(old));
        assert_eq!(g.queues, [3.0, 0.0, 0.0]);
        assert_eq!((g.degradation_level, g.bottleneck), (None, None));

        let odd = "sluice_gateway_degradation_level 7\n\
            sluice_gateway_bottleneck{zone=\"a\",hop=\"risk\"} 0.4\n";
        let g = GatewayPressure::from_samples(&parse(odd));
        assert_eq!(g.degradation_level, Some(3), "clamped to the highest level");
        assert_eq!(g.bottleneck.map(|b| b.hop), Some("risk".to_string()));
    }
}
