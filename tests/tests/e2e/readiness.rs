//! `/readyz` is readiness, `/healthz` liveness: a gateway without logging is alive and not
//! ready, and its `/readyz` agrees with its gRPC health for `mesh.v1.Gateway`.

use std::net::SocketAddr;

use sluice_tests::{Mesh, http_get};
use tonic_health::pb::health_check_response::ServingStatus;

async fn status(admin: SocketAddr, path: &str) -> u16 {
    let reply = http_get(admin, path).await.expect("admin endpoint answers");
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("an HTTP status line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_is_not_ready_while_logging_is_down_but_stays_alive() {
    let mut mesh = Mesh::start().await;
    let gateway = mesh.gateway.admin.unwrap();
    assert_eq!(status(gateway, "/readyz").await, 200);
    assert_eq!(status(gateway, "/healthz").await, 200);
    for service in [&mesh.risk, &mesh.notification, &mesh.logging] {
        assert_eq!(status(service.admin.unwrap(), "/readyz").await, 200);
    }

    mesh.logging.sigkill();
    // gRPC health is mirrored from the same flag /readyz reads: once it says NOT_SERVING,
    // /readyz already does.
    mesh.wait_gateway(ServingStatus::NotServing).await;
    assert_eq!(status(gateway, "/readyz").await, 503);
    assert_eq!(status(gateway, "/healthz").await, 200, "alive");

    mesh.restart_logging();
    mesh.wait_gateway(ServingStatus::Serving).await;
    assert_eq!(status(gateway, "/readyz").await, 200);
}
