//! Reading a Sluice binary's `/metrics` (Prometheus text) through [`super::http`]: enough for
//! the load generator's live view, benchmarks and scenarios. A scrape that fails reads as
//! "no samples", never as an error: the run it decorates goes on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

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

/// The samples of a Prometheus/OpenMetrics text exposition (comments skipped).
fn parse(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
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
}
