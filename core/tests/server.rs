//! In-process tests of the server plumbing: a tonic server on `127.0.0.1:0` behind the
//! accept loop ([`sluice_core::incoming`]), and the admin listener's `/healthz` and `/readyz`.
//! Every wait is on a signal (EOF on a socket, a metric reaching a value), bounded by a
//! generous timeout.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_core::admin::AdminLimits;
use sluice_core::incoming::{ConnectionMetrics, H2_PREFACE, Incoming, IncomingConfig};
use sluice_core::server::{CommonServerArgs, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Upper bound on any wait below; the conditions themselves come much sooner.
const PATIENCE: Duration = Duration::from_secs(20);

struct TestServer {
    addr: SocketAddr,
    metrics: ConnectionMetrics,
    stop: CancellationToken,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A gRPC health server behind the accept loop.
async fn serve(config: IncomingConfig) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = ConnectionMetrics::register(&mut Registry::default());
    let stop = CancellationToken::new();
    let (_, health) = tonic_health::server::health_reporter();
    let incoming = Incoming::new(listener, config, metrics.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, stop.clone().cancelled_owned()),
    );
    TestServer {
        addr,
        metrics,
        stop,
    }
}

async fn connect(addr: SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
}

async fn health_check(client: &mut HealthClient<tonic::transport::Channel>) {
    let reply = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check answered");
    assert_eq!(reply.into_inner().status, 1, "SERVING");
}

/// Reads until the server closes the connection; returns the bytes it sent first.
async fn until_closed(mut conn: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return got, // EOF or reset: closed either way
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    tokio::time::timeout(PATIENCE, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_the_preface_are_closed_and_real_clients_keep_working() {
    let server = serve(IncomingConfig {
        handshake_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let mut client = connect(server.addr).await;
    health_check(&mut client).await;

    let mut idle = Vec::new();
    for i in 0..100 {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        if i % 2 == 1 {
            // Half the preface, then nothing.
            conn.write_all(&H2_PREFACE[..12]).await.unwrap();
        }
        idle.push(tokio::spawn(until_closed(conn)));
    }
    let closed = tokio::time::timeout(PATIENCE, futures::future::join_all(idle))
        .await
        .expect("every connection without a full preface is closed");
    assert_eq!(closed.len(), 100);
    assert_eq!(server.metrics.handshake_timeouts(), 100);

    // The client's connection is older than the timeout and still serves, on the same
    // connection (nothing reconnected).
    health_check(&mut client).await;
    eventually("the idle connections to be released", || {
        server.metrics.open() == 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preface_sent_byte_by_byte_past_the_deadline_does_not_buy_time() {
    let server = serve(IncomingConfig {
        handshake_timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    })
    .await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = conn.split();
    let drip = async {
        for byte in &H2_PREFACE[..20] {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::future::pending::<()>().await;
    };
    let closed = async {
        let mut buf = [0u8; 256];
        while !matches!(read.read(&mut buf).await, Ok(0) | Err(_)) {}
    };
    tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            _ = drip => {}
            _ = closed => {}
        }
    })
    .await
    .expect("closed although it kept sending");
    assert_eq!(server.metrics.handshake_timeouts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_is_closed_at_once_and_the_cap_frees_up() {
    let server = serve(IncomingConfig {
        handshake_timeout: Some(Duration::from_secs(60)),
        max_connections: 2,
        ..Default::default()
    })
    .await;
    let mut client = connect(server.addr).await;
    health_check(&mut client).await;
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    second.write_all(H2_PREFACE).await.unwrap();
    // Accepted: the server's SETTINGS frame arrives.
    let mut buf = [0u8; 64];
    assert!(second.read(&mut buf).await.unwrap() > 0);

    let third = TcpStream::connect(server.addr).await.unwrap();
    let sent = tokio::time::timeout(PATIENCE, until_closed(third))
        .await
        .expect("closed at once");
    assert!(sent.is_empty(), "closed before any HTTP/2 byte");
    assert_eq!(server.metrics.over_limit(), 1);
    health_check(&mut client).await;

    drop(second);
    eventually("the second connection's permit back", || {
        server.metrics.open() == 1
    })
    .await;
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    fourth.write_all(H2_PREFACE).await.unwrap();
    assert!(fourth.read(&mut buf).await.unwrap() > 0, "accepted again");
    assert_eq!(server.metrics.over_limit(), 1);
}

#[tokio::test]
async fn remote_addr_survives_the_wrapper() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = ConnectionMetrics::register(&mut Registry::default());
    let mut incoming = Incoming::new(listener, IncomingConfig::default(), metrics.clone());
    let client = TcpStream::connect(addr).await.unwrap();
    let conn = incoming.next().await.unwrap().unwrap();
    let info = conn.connect_info();
    assert_eq!(info.remote_addr(), Some(client.local_addr().unwrap()));
    assert_eq!(info.local_addr(), Some(addr));
    assert_eq!(metrics.open(), 1);
    drop(conn);
    assert_eq!(metrics.open(), 0);
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    common: CommonServerArgs,
}

async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_readiness_and_healthz_stays_liveness() {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let listeners = Listeners::bind(any, Some(any)).await.unwrap();
    let admin = listeners.admin_addr().unwrap();
    let grpc = listeners.grpc_addr();
    let readiness = listeners.readiness();
    let common = sluice_core::server::ServerSettings::from(Cli::parse_from(["test"]).common);
    let (reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::transport::Server::builder().add_service(health);
    let stop = CancellationToken::new();
    let server = tokio::spawn({
        let stop = stop.clone();
        async move {
            sluice_core::server::run(
                listeners,
                router,
                sluice_core::metrics::Metrics::new(Registry::default()),
                reporter,
                "mesh.v1.Example",
                stop,
                &common,
            )
            .await
        }
    });
    let mut client = connect(grpc).await;
    let mut updates = client
        .watch(HealthCheckRequest {
            service: "mesh.v1.Example".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut grpc_status = async move |want: i32| {
        tokio::time::timeout(PATIENCE, async {
            while let Some(u) = updates.message().await.unwrap() {
                if u.status == want {
                    return;
                }
            }
        })
        .await
        .expect("gRPC health status");
    };

    grpc_status(2).await; // NOT_SERVING
    assert_eq!(http_status(admin, "/healthz").await, 200);
    assert_eq!(http_status(admin, "/readyz").await, 503);
    readiness.set(true);
    grpc_status(1).await; // SERVING
    assert_eq!(http_status(admin, "/readyz").await, 200);
    readiness.set(false);
    grpc_status(2).await;
    assert_eq!(http_status(admin, "/readyz").await, 503);
    assert_eq!(
        http_status(admin, "/healthz").await,
        200,
        "alive, not ready"
    );

    // The open watch stream would hold the drain for the whole grace period.
    drop(grpc_status);
    drop(client);
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// An admin listener with `limits`, and its connection metrics.
async fn serve_admin(limits: AdminLimits) -> (SocketAddr, ConnectionMetrics, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let metrics = sluice_core::metrics::Metrics::new(Registry::default());
    let connections = metrics.admin_connections().clone();
    let stop = CancellationToken::new();
    // A route that reads a request body, for a client that stops sending one.
    let echo = axum::Router::new().route(
        "/echo",
        axum::routing::post(|body: String| async move { body }),
    );
    tokio::spawn(sluice_core::admin::serve(
        listener,
        limits,
        metrics,
        Default::default(),
        Default::default(),
        Some(echo),
        stop.clone(),
    ));
    (addr, connections, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_capped_and_silent_slow_or_stalled_ones_closed() {
    let header_timeout = Duration::from_millis(400);
    let (addr, metrics, stop) = serve_admin(AdminLimits {
        max_connections: 8,
        header_timeout,
        idle_timeout: Duration::from_millis(600),
    })
    .await;

    // Silent connections and a slowloris that sends a byte of its head every 50 ms: all
    // fill the cap, the ones over it are closed at once, the rest within the header timeout.
    let mut held = Vec::new();
    for _ in 0..7 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    eventually("7 admin connections open", || metrics.open() == 7).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    eventually("8 open", || metrics.open() == 8).await;
    let over: Vec<_> = futures::future::join_all((0..5).map(|_| TcpStream::connect(addr))).await;
    for conn in over {
        let sent = tokio::time::timeout(PATIENCE, until_closed(conn.unwrap()))
            .await
            .expect("over the cap: closed at once");
        assert!(sent.is_empty());
    }
    assert_eq!(metrics.over_limit(), 5);
    let drip = tokio::spawn(async move {
        for b in
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n"
        {
            if slow.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    });
    for conn in held {
        tokio::time::timeout(PATIENCE, until_closed(conn))
            .await
            .expect("a silent admin connection is closed");
    }
    assert!(
        drip.await.unwrap(),
        "the slowloris was cut off before its head was complete"
    );
    eventually("every silent connection closed", || metrics.open() == 0).await;
    assert_eq!(metrics.rejected("header_timeout"), 8);

    // The port still answers, and a keep-alive connection serves several requests.
    assert_eq!(http_status(addr, "/metrics").await, 200);

    // A client that sends a head promising a body, then stalls: the idle timeout closes it.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    tokio::time::timeout(PATIENCE, until_closed(stalled))
        .await
        .expect("a stalled request is closed");
    assert_eq!(metrics.rejected("idle_timeout"), 1);
    assert_eq!(
        http_status(addr, "/healthz").await,
        503,
        "answers (not serving yet)"
    );
    stop.cancel();
}
