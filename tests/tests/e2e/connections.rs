//! Connections that never speak, and a process out of file descriptors, against a real
//! binary: silent or half-preface sockets are closed after `--handshake-timeout` while real
//! clients keep working; EMFILE makes the accept loop back off (no spin) and log once.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_tests::{Proc, bin_dir, eventually, metric};
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
