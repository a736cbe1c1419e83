//! Reading a Sluice binary's `/metrics` (Prometheus text) over plain HTTP/1.1: enough for the
//! load generator's live view, benchmarks and scenarios, without an HTTP client dependency.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Longest a scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// Every sample (`name{labels}` → value) from `/metrics` at `addr`.
pub async fn samples(addr: SocketAddr) -> Option<BTreeMap<String, f64>> {
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).await.ok()?;
        Some(body)
    };
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, fetch).await.ok()??;
    Some(
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
            .collect(),
    )
}

/// One sample by its exact `name{labels}`.
pub async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    samples(addr).await?.get(name).copied()
}

/// `host:port` from a `--metrics` URL such as `http://127.0.0.1:9101/metrics`.
pub fn admin_addr(url: &str) -> anyhow::Result<SocketAddr> {
    use anyhow::Context;
    let rest = url.strip_prefix("http://").unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    host.parse()
        .or_else(|_| {
            std::net::ToSocketAddrs::to_socket_addrs(host)
                .map_err(anyhow::Error::from)
                .and_then(|mut a| a.next().context("no address"))
        })
        .with_context(|| format!("--metrics {url:?}: expected http://HOST:PORT/metrics"))
}
