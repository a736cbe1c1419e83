//! Finding and reaching the gateway: every address behind `--target`, one HTTP/2 connection
//! each, and waiting until the gateway reports ready.

use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Channel, Endpoint};

/// How long [`wait_ready`] waits for the gateway to report `mesh.v1.Gateway` SERVING.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Waits until the gateway's health service reports `mesh.v1.Gateway` SERVING (its
/// required downstreams have live streams), watching the health stream.
pub async fn wait_ready(channel: Channel) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut health = HealthClient::new(channel);
    let watch = async {
        let mut updates = health
            .watch(HealthCheckRequest {
                service: "mesh.v1.Gateway".into(),
            })
            .await?
            .into_inner();
        while let Some(update) = updates.message().await? {
            if update.status == ServingStatus::Serving as i32 {
                return Ok(());
            }
        }
        anyhow::bail!("the gateway's health stream ended before it was ready")
    };
    tokio::time::timeout(READY_TIMEOUT, watch)
        .await
        .map_err(|_| anyhow::anyhow!("the gateway did not become ready within {READY_TIMEOUT:?}: are risk and logging running and reachable from it?"))?
}

/// Connects to every gateway `target` names and waits, as [`wait_ready`], until each is
/// ready.
pub async fn wait_ready_at(target: &str) -> anyhow::Result<()> {
    let n = gateway_addresses(target).await?.len();
    for channel in connect(target, n, &Default::default()).await? {
        wait_ready(channel).await?;
    }
    Ok(())
}

/// Connects `n` channels to the gateway, failing with a message that says what to do.
///
/// `target` may list several gateways (comma-separated URLs) and a host may be a DNS name
/// with several addresses (a scaled compose service, a Kubernetes headless Service): the
/// connections go round the addresses in turn, so every gateway gets its share.
pub async fn connect(
    target: &str,
    n: usize,
    h2: &sluice_core::h2::H2Settings,
) -> anyhow::Result<Vec<Channel>> {
    let mut addresses = gateway_addresses(target).await?;
    let mut clients = Vec::with_capacity(n);
    let mut last_error = None;
    while clients.len() < n.max(1) && !addresses.is_empty() {
        let i = clients.len() % addresses.len();
        let endpoint = h2.endpoint(Endpoint::from_shared(addresses[i].clone()).with_context(
            || format!("--target {target:?} is not a URL; expected http://host:port"),
        )?);
        match endpoint.connect().await {
            Ok(channel) => clients.push(channel),
            // A name may also resolve to an address nothing listens on (localhost's ::1):
            // use the others.
            Err(e) => last_error = Some((addresses.remove(i), e)),
        }
    }
    if let (true, Some((url, e))) = (addresses.is_empty(), last_error) {
        return Err(anyhow::Error::new(e)).with_context(|| format!("cannot connect to the gateway at {url} (from --target {target}): is it running? (start the mesh, or try `sluice-lab demo`)"));
    }
    Ok(clients)
}

/// Every gateway address `target` names, as URLs: each comma-separated URL, its host
/// resolved (a literal address stays as given).
pub(super) async fn gateway_addresses(target: &str) -> anyhow::Result<Vec<String>> {
    let mut urls = Vec::new();
    for given in target.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let uri: tonic::codegen::http::Uri = given.parse().with_context(|| {
            format!("--target {given:?} is not a URL; expected http://host:port")
        })?;
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            anyhow::bail!("--target {given:?} is not a URL; expected http://host:port");
        };
        let port = uri.port_u16().unwrap_or(80);
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if bare.parse::<std::net::IpAddr>().is_ok() {
            urls.push(given.to_string());
            continue;
        }
        let mut addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((bare, port))
            .await
            .with_context(|| format!("cannot resolve the gateway host in --target {given}"))?
            .collect();
        addrs.sort();
        addrs.dedup();
        if addrs.is_empty() {
            anyhow::bail!("--target {given}: {bare} resolves to no address");
        }
        urls.extend(addrs.into_iter().map(|a| format!("{scheme}://{a}")));
    }
    anyhow::ensure!(
        !urls.is_empty(),
        "--target is empty; expected http://host:port"
    );
    Ok(urls)
}
