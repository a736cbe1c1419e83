//! Connections that never speak, and a process out of file descriptors, against a real
//! binary: silent or half-preface sockets are closed after `--handshake-timeout` while real
//! clients keep working; EMFILE makes the accept loop back off (no spin) and log once.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_tests::{Proc, bin_dir, eventually, http_get, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn risk(extra: &[&str]) -> Proc {
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--insecure-no-auth",
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Proc::spawn(bin_dir(), "sluice-risk", &args).expect("start sluice-risk")
}

async fn health(addr: SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
}

async fn serving(client: &mut HealthClient<tonic::transport::Channel>) {
    let status = client
        .check(HealthCheckRequest {
            service: "mesh.v1.Risk".into(),
        })
        .await
        .expect("health check answered")
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
}

/// Reads until the server closes the connection (EOF or reset).
async fn until_closed(mut conn: TcpStream) {
    let mut buf = [0u8; 512];
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_preface_connections_are_closed_after_the_handshake_timeout() {
    let risk = risk(&["--handshake-timeout", "1s"]);
    let admin = risk.admin.unwrap();
    let mut client = health(risk.grpc).await;
    serving(&mut client).await;

    let mut idle = Vec::new();
    for i in 0..200 {
        let mut conn = TcpStream::connect(risk.grpc).await.expect("connect");
        if i % 2 == 1 {
            conn.write_all(&PREFACE[..12])
                .await
                .expect("half the preface");
        }
        idle.push(tokio::spawn(until_closed(conn)));
    }
    // While they wait, a real client is served.
    serving(&mut client).await;
    tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(idle))
        .await
        .expect("every connection without a full preface was closed");

    // The client's connection outlived the timeout, on the same connection.
    serving(&mut client).await;
    let rejected = metric(
        admin,
        "sluice_risk_connections_rejected_total{reason=\"handshake_timeout\"}",
    )
    .await;
    assert_eq!(rejected, Some(200.0));
    eventually(
        "idle connections released",
        Duration::from_secs(30),
        || async { (metric(admin, "sluice_risk_connections_open").await? == 1.0).then_some(()) },
    )
    .await;
}

/// CPU seconds (user + system) the process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name and state.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list fds")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_accept_loop_backs_off_and_logs_once() {
    if std::process::Command::new("prlimit")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let risk = risk(&[]);
    let pid = risk.pid();
    let mut client = health(risk.grpc).await;
    serving(&mut client).await;

    // Leave room for a few more descriptors only (soft limit: the hard one may not be
    // raised back without privileges), then open many more connections.
    let limit = open_fds(pid) + 4;
    let set_soft_limit = |n: usize| {
        let status = std::process::Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={n}:")])
            .status()
            .expect("run prlimit");
        assert!(status.success(), "prlimit --nofile={n}:");
    };
    set_soft_limit(limit);
    let mut flood = Vec::new();
    for _ in 0..40 {
        // The kernel completes these handshakes in the listen backlog; the process cannot
        // accept them all.
        flood.push(TcpStream::connect(risk.grpc).await.expect("connect"));
    }
    eventually(
        "the accept error in the log",
        Duration::from_secs(30),
        || {
            let seen = risk.log().contains("cannot accept connections");
            async move { seen.then_some(()) }
        },
    )
    .await;

    // A measurement window, not a synchronisation: a spinning accept loop burns a core.
    let before = cpu_seconds(pid);
    let window = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = (cpu_seconds(pid) - before) / window.elapsed().as_secs_f64();
    assert!(
        used < 0.25,
        "accept loop used {:.0}% of a core",
        used * 100.0
    );

    // Descriptors back: the server accepts again and serves.
    drop(flood);
    set_soft_limit(1024);
    serving(&mut health(risk.grpc).await).await;
    let log = risk.log();
    let lines = log.matches("cannot accept connections").count();
    assert!(
        lines <= 2,
        "{lines} lines about accept errors (one per interval expected):\n{log}"
    );
    let errors = metric(risk.admin.unwrap(), "sluice_risk_accept_errors_total")
        .await
        .unwrap();
    assert!(errors >= 1.0, "{errors}");
}

/// Where `prlimit` (util-linux) is, if anywhere on PATH.
fn prlimit_dir() -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).find(|d| d.join("prlimit").is_file())
}

/// Opens `n` admin connections, half silent and half a slowloris sending its request head a
/// byte every 500 ms, each held until the server closes it or `hold` passes. Returns how
/// long each took to be closed (`None`: still open after `hold`).
async fn admin_flood(addr: SocketAddr, n: usize, hold: Duration) -> Vec<Option<Duration>> {
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let conn = TcpStream::connect(addr)
            .await
            .expect("connect to the admin port");
        conns.push(tokio::spawn(async move {
            let start = std::time::Instant::now();
            let (mut read, mut write) = conn.into_split();
            let drip = async move {
                if i % 2 == 1 {
                    for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " {
                        if write.write_all(&[*b]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                std::future::pending::<()>().await
            };
            let closed = async move {
                let mut buf = [0u8; 512];
                while let Ok(n) = read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            tokio::select! {
                () = closed => Some(start.elapsed()),
                () = drip => None,
                () = tokio::time::sleep(hold) => None,
            }
        }));
    }
    futures::future::join_all(conns)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

/// Issue 23's attack: a gateway with 1,024 descriptors, and 1,100 silent or slowloris
/// connections to its admin port, twice, over 40 s. The admin cap (fitted into the limit)
/// and the header timeout keep descriptors for gRPC: new gRPC clients are served throughout,
/// every attacking connection is closed (over the cap at once, the rest at the header
/// timeout), and /metrics answers once they are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_admin_connections_cannot_take_the_descriptors_grpc_clients_need() {
    use sluice_tests::{Mesh, txn};
    const HOLD: Duration = Duration::from_secs(40);
    let header_timeout = sluice_core::admin::DEFAULT_ADMIN_HEADER_TIMEOUT;
    let Some(prlimit) = prlimit_dir() else {
        eprintln!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    };
    let mesh = Mesh::start().await;
    let gateway_bin = bin_dir().join("sluice-gateway");
    let args: Vec<String> = [
        "--nofile=1024:1024",
        gateway_bin.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--risk",
        &mesh.risk.url(),
        "--notification",
        &mesh.notification.url(),
        "--logging",
        &mesh.logging_urls(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let gateway =
        Proc::spawn(&prlimit, "prlimit", &args).expect("start the gateway at 1,024 descriptors");
    let admin = gateway.admin.unwrap();
    let log = gateway.log();
    assert!(
        log.contains("connection caps lowered") && log.contains("admin_max_connections=224"),
        "the start says which limit applies:\n{log}"
    );
    let url = gateway.url();
    let submit_on_a_new_connection = move |i: u64| {
        let url = url.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect_timeout(Duration::from_secs(5))
                .connect()
                .await
                .ok()?;
            let mut r = tonic::Request::new(txn(&format!("fd-{i}")));
            r.set_timeout(Duration::from_secs(5));
            sluice_proto::pb::gateway_client::GatewayClient::new(channel)
                .submit(r)
                .await
                .ok()
        }
    };
    eventually("the gateway serves", Duration::from_secs(30), || {
        submit_on_a_new_connection(0)
    })
    .await;

    // New gRPC clients, 20 a second, for the whole attack.
    let stop = tokio_util::sync::CancellationToken::new();
    let clients = tokio::spawn({
        let (stop, submit) = (stop.clone(), submit_on_a_new_connection.clone());
        async move {
            let mut calls = tokio::task::JoinSet::new();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let mut i = 0;
            while !stop.is_cancelled() {
                tick.tick().await;
                i += 1;
                calls.spawn(submit(i));
            }
            let ok = calls
                .join_all()
                .await
                .iter()
                .filter(|r| r.is_some())
                .count();
            (ok, i as usize)
        }
    });
    let attack_started = std::time::Instant::now();
    for wave in 0..2 {
        let closed = admin_flood(admin, 1_100, HOLD).await;
        let open = closed.iter().filter(|c| c.is_none()).count();
        assert_eq!(
            open, 0,
            "wave {wave}: {open} admin connections still open after {HOLD:?}"
        );
        let slowest = closed.iter().flatten().max().unwrap();
        assert!(
            *slowest < header_timeout * 2,
            "wave {wave}: a connection was held {slowest:?}; header timeout {header_timeout:?}"
        );
        let metrics = http_get(admin, "/metrics").await;
        assert!(
            metrics
                .as_deref()
                .is_some_and(|m| m.starts_with("HTTP/1.1 200")),
            "wave {wave}: /metrics does not answer: {metrics:?}"
        );
    }
    let rest = HOLD.saturating_sub(attack_started.elapsed());
    tokio::time::sleep(rest).await; // the attack's length, not a synchronisation
    stop.cancel();
    let (ok, total) = clients.await.unwrap();
    let over_cap = metric(
        admin,
        "sluice_gateway_admin_connections_rejected_total{reason=\"max_connections\"}",
    )
    .await
    .unwrap();
    let timed_out = metric(
        admin,
        "sluice_gateway_admin_connections_rejected_total{reason=\"header_timeout\"}",
    )
    .await
    .unwrap();
    eprintln!(
        "new gRPC clients {ok}/{total} OK; admin connections over the cap {over_cap}, closed at the header timeout {timed_out}"
    );
    assert!(total >= 200, "{total} gRPC clients");
    assert!(ok * 100 >= total * 99, "new gRPC clients {ok}/{total} OK");
    assert!(over_cap >= 2.0 * (1_100.0 - 224.0), "{over_cap}");
    assert!(timed_out >= 2.0 * 224.0 - 2.0, "{timed_out}");
}
