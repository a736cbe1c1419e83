//! One GET on a Sluice binary's admin port (`/metrics`, `/healthz`, `/readyz`): the only way
//! the load generator speaks HTTP/1.1.
//!
//! Through hyper-util's client rather than a hand-written request on a raw socket: chunked
//! bodies, keep-alive, status lines and headers are then hyper's problem, and tonic already
//! compiles it in, so it costs no new dependency. Each call is bounded twice: in time
//! (the caller's timeout, covering connect, headers and body) and in size
//! ([`DEFAULT_MAX_BODY`]), so a wedged or hostile admin port cannot stall a run or fill its
//! memory.

use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Longest an admin GET may take when the caller has no reason to choose: connect, headers
/// and the whole body.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest body read from an admin endpoint; a longer one fails the GET. `/metrics` of a
/// Sluice binary is a few tens of KiB.
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

/// `url` as an admin URL (`http://host:port/path`), or an error that says what is expected:
/// for flags, checked before a run rather than at its first scrape.
pub fn parse_url(url: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL; expected http://HOST:PORT/PATH"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http") && uri.host().is_some(),
        "{url:?}: expected http://HOST:PORT/PATH (admin ports speak plain HTTP)"
    );
    Ok(uri)
}

/// GETs `url` (`http://host:port/path`) and returns its status and body, failing when it
/// does not answer within `timeout`.
pub async fn get(url: &str, timeout: Duration) -> anyhow::Result<(StatusCode, String)> {
    let uri = parse_url(url)?;
    // No pooled connections: calls are seconds apart and may outlive the runtime that made
    // the previous one (tests), so a kept-alive socket would buy nothing and could be stale.
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http();
    let exchange = async {
        let response = client.get(uri).await.context("no answer")?;
        let status = response.status();
        let body = Limited::new(response.into_body(), DEFAULT_MAX_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
            .to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("GET {url}: no answer within {timeout:?}"))?
        .with_context(|| format!("GET {url}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::CancellationToken;
    use sluice_core::admin::{Health, serve};
    use sluice_core::metrics::Metrics;
    use sluice_core::readiness::Readiness;

    /// A real admin listener on port 0, alive and not ready; returns its base URL.
    async fn admin() -> (String, Readiness, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let health = Health::default();
        health.set(true);
        let readiness = Readiness::default();
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            Default::default(),
            Metrics::new(Default::default()),
            health,
            readiness.clone(),
            None,
            stop.clone(),
        ));
        (base, readiness, stop)
    }

    #[tokio::test]
    async fn gets_status_and_body_from_an_admin_listener() {
        let (base, readiness, stop) = admin().await;
        let (status, body) = get(&format!("{base}/healthz"), DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
        let (status, _) = get(&format!("{base}/readyz"), DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        readiness.set(true);
        let (status, _) = get(&format!("{base}/readyz"), DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        let (status, body) = get(&format!("{base}/metrics"), DEFAULT_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.ends_with("# EOF\n"), "{body}");
        stop.cancel();
    }

    #[tokio::test]
    async fn a_silent_port_times_out_and_a_bad_url_says_what_is_expected() {
        // Accepts connections (the kernel's backlog) and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/healthz", silent.local_addr().unwrap());
        let err = get(&url, Duration::from_millis(100)).await.unwrap_err();
        assert!(err.to_string().contains("no answer within"), "{err:#}");
        for bad in [
            "127.0.0.1:9101/healthz",
            "https://127.0.0.1:9101/",
            "not a url",
        ] {
            let err = get(bad, DEFAULT_TIMEOUT).await.unwrap_err();
            assert!(
                err.to_string().contains("expected http://"),
                "{bad}: {err:#}"
            );
        }
    }
}
