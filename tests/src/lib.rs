//! Test support: spawn the real Sluice binaries on ephemeral ports and wait on signals.
//!
//! Every binary prints `<name> ready grpc=<addr> admin=<addr>` on stdout once it listens;
//! [`Proc::spawn`] waits for that line, so tests never sleep to "give it time". Binaries are
//! built once per test run (`cargo build --bins`) from the same target directory as the
//! tests, so `cargo test --workspace` alone is enough.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::logging_client::LoggingClient;
use sluice_proto::pb::{AuditEntry, ReadRequest, Transaction};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a binary may take to print its ready line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's binaries, built on first use.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build --bins");
        assert!(status.success(), "cargo build --workspace --bins failed");
        // The test executable lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("current exe");
        exe.parent()
            .and_then(Path::parent)
            .expect("target profile dir")
            .to_path_buf()
    })
}

/// A running binary, killed on drop. Its stderr goes to a log file, printed on failure.
pub struct Proc {
    pub name: String,
    pub grpc: SocketAddr,
    pub admin: Option<SocketAddr>,
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
}

impl Proc {
    /// Spawns `bin` with `args` (plus `RUST_LOG=info` unless set) and waits for its ready
    /// line.
    pub fn spawn(bin: &str, args: &[String]) -> Proc {
        let log_dir = tempfile::tempdir().expect("log dir");
        let log = log_dir.path().join(format!("{bin}.log"));
        let mut child = Command::new(bin_dir().join(bin))
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {bin}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if line.contains(" ready grpc=") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "{bin} printed no ready line; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|v| v.parse().ok())
        };
        Proc {
            name: bin.to_string(),
            grpc: field("grpc=").expect("grpc address in ready line"),
            admin: field("admin="),
            child,
            log,
            _log_dir: log_dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through `kill`, so the tests need no unsafe code).
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -TERM {} failed", self.pid());
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<_> = log.lines().rev().take(40).collect();
            eprintln!("---- last log lines of {} ----", self.name);
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

const ANY: &str = "127.0.0.1:0";

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Extra flags per binary.
#[derive(Default, Clone)]
pub struct MeshOptions {
    pub gateway: Vec<String>,
    pub risk: Vec<String>,
    pub notification: Vec<String>,
    pub logging: Vec<String>,
}

/// The four server binaries, started in dependency order.
pub struct Mesh {
    pub risk: Proc,
    pub notification: Proc,
    pub logging: Proc,
    pub gateway: Proc,
    pub data_dir: tempfile::TempDir,
    options: MeshOptions,
}

impl Mesh {
    /// Starts the mesh with default settings (a short grace period) and waits until the
    /// gateway is ready.
    pub async fn start() -> Mesh {
        Self::start_with(MeshOptions::default()).await
    }

    pub async fn start_with(options: MeshOptions) -> Mesh {
        let data_dir = tempfile::tempdir().expect("data dir");
        let common = [
            "--listen",
            ANY,
            "--admin-listen",
            ANY,
            "--grace-period",
            "5s",
        ];
        let with = |extra: &[String]| {
            let mut a = args(&common);
            a.extend(extra.iter().cloned());
            a
        };
        let risk = Proc::spawn("sluice-risk", &with(&options.risk));
        let notification = Proc::spawn("sluice-notification", &with(&options.notification));
        let mut logging_args = with(&options.logging);
        logging_args.extend(args(&[
            "--data-dir",
            data_dir.path().to_str().expect("utf-8 path"),
        ]));
        let logging = Proc::spawn("sluice-logging", &logging_args);
        let mut gateway_args = with(&options.gateway);
        gateway_args.extend(args(&[
            "--risk",
            &risk.url(),
            "--notification",
            &notification.url(),
            "--logging",
            &logging.url(),
            "--reconnect-max",
            "200ms",
        ]));
        let gateway = Proc::spawn("sluice-gateway", &gateway_args);
        let mesh = Mesh {
            risk,
            notification,
            logging,
            gateway,
            data_dir,
            options,
        };
        mesh.wait_gateway(ServingStatus::Serving).await;
        mesh
    }

    pub async fn gateway_channel(&self) -> Channel {
        Channel::from_shared(self.gateway.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to gateway")
    }

    pub async fn gateway(&self) -> GatewayClient<Channel> {
        GatewayClient::new(self.gateway_channel().await)
    }

    /// Waits (on the gateway's health stream) until `mesh.v1.Gateway` reports `status`.
    pub async fn wait_gateway(&self, status: ServingStatus) {
        let mut health = HealthClient::new(self.gateway_channel().await);
        let watch = async {
            let mut updates = health
                .watch(HealthCheckRequest {
                    service: "mesh.v1.Gateway".into(),
                })
                .await
                .expect("health watch")
                .into_inner();
            while let Some(update) = updates.message().await.expect("health update") {
                if update.status == status as i32 {
                    return;
                }
            }
            panic!("health stream ended");
        };
        tokio::time::timeout(Duration::from_secs(30), watch)
            .await
            .unwrap_or_else(|_| panic!("gateway never reported {status:?}"));
    }

    /// Restarts logging on its previous address and data directory.
    pub fn restart_logging(&mut self) {
        let mut a = args(&[
            "--listen",
            &self.logging.grpc.to_string(),
            "--admin-listen",
            ANY,
            "--grace-period",
            "5s",
        ]);
        a.extend(self.options.logging.iter().cloned());
        a.extend(args(&[
            "--data-dir",
            self.data_dir.path().to_str().expect("utf-8 path"),
        ]));
        self.logging = Proc::spawn("sluice-logging", &a);
    }

    /// Every record in the audit log, through `Logging/Read`.
    pub async fn audit_entries(&self) -> Vec<AuditEntry> {
        let mut client = LoggingClient::connect(self.logging.url())
            .await
            .expect("connect to logging");
        let mut stream = client
            .read(ReadRequest {
                from_offset: 1,
                limit: 0,
            })
            .await
            .expect("read")
            .into_inner();
        let mut out = Vec::new();
        while let Some(e) = stream.message().await.expect("read entry") {
            out.push(e);
        }
        out
    }
}

/// A valid transaction with the given id, for an account of its own.
pub fn txn(id: &str) -> Transaction {
    Transaction {
        id: id.into(),
        account: format!("acct-{id}"),
        amount_minor: 1_500,
        currency: "EUR".into(),
        merchant: "coffee-corner".into(),
        trace_context: Default::default(),
    }
}

/// Scrapes one metric value (first sample whose line starts with `prefix`) from `/metrics`.
pub async fn metric(admin: SocketAddr, prefix: &str) -> Option<f64> {
    let body = http_get(admin, "/metrics").await?;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A minimal HTTP/1.1 GET, enough for the admin endpoints.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    Some(buf)
}
