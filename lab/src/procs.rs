//! The mesh as separate processes: the real binaries, spawned from one directory on
//! loopback ports chosen by the OS. Used by `sluice-lab bench` and by the end-to-end
//! tests.
//!
//! Every server binary prints `<name> ready grpc=<addr> admin=<addr>` on stdout once it
//! listens (followed by ` admin_token_file=<path>` when its Control token is in a file);
//! [`Proc::spawn`] waits for that line, so nothing here sleeps to "give it time".
//!
//! [`ProcMesh`] gives every service the same random `--admin-token` and keeps it
//! ([`ProcMesh::admin_token`]), so demos, scenarios and tests can inject faults.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use sluice_loadgen::admin::control::Control;

/// How long a binary may take to print its ready line.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Grace period given to every spawned server.
pub const GRACE_PERIOD: &str = "5s";
const ANY: &str = "127.0.0.1:0";

/// The directory with the sluice-* binaries: `given` (a `--bin-dir` flag), else the running
/// executable's, where cargo puts the sibling binaries.
pub fn bin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = given {
        return Ok(dir.to_path_buf());
    }
    let exe = std::env::current_exe().context("cannot locate this executable")?;
    Ok(exe
        .parent()
        .context("executable has no directory")?
        .to_path_buf())
}

/// The environment variable naming the CPUs every mesh process the lab starts is pinned to
/// (a `taskset -c` list, e.g. `4-15`), so the generator can run on CPUs of its own
/// (`taskset -c 0-3 sluice-lab bench …`; `bench/multicore.sh` does both).
pub const MESH_CPUS_ENV: &str = "SLUICE_LAB_MESH_CPUS";

/// The CPUs mesh processes are pinned to, if [`MESH_CPUS_ENV`] names any.
pub fn mesh_cpus() -> Option<String> {
    std::env::var(MESH_CPUS_ENV)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Where the generator and the mesh run, for the header of every figure: the generator's
/// own CPUs (its affinity) and the mesh's ([`MESH_CPUS_ENV`], else the same CPUs).
pub fn cpu_split() -> String {
    let own = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    match mesh_cpus() {
        Some(mesh) => format!(
            "generator on CPUs {own}, mesh on CPUs {mesh} ({cores} usable by the generator)"
        ),
        None => format!(
            "generator and mesh share CPUs {own} (unpinned; {MESH_CPUS_ENV} pins the mesh apart)"
        ),
    }
}

/// A running binary, killed on drop. Its stderr goes to a log file.
pub struct Proc {
    pub name: String,
    pub grpc: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The file holding the Control token, when the ready line names one.
    pub admin_token_file: Option<PathBuf>,
    child: Child,
    log: PathBuf,
    _log_dir: tempfile::TempDir,
    /// How it was started, for [`Proc::respawn`].
    bin_dir: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Proc {
    /// Spawns `dir/bin` with `args` and waits for its ready line.
    pub fn spawn(dir: &Path, bin: &str, args: &[String]) -> anyhow::Result<Proc> {
        Self::spawn_with_env(dir, bin, args, &[])
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        dir: &Path,
        bin: &str,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Proc> {
        let log_dir = tempfile::tempdir()?;
        let log = log_dir.path().join(format!("{bin}.log"));
        let path = dir.join(bin);
        // Pinned apart from the generator when asked (`taskset` execs the binary: same pid).
        let mut command = match mesh_cpus() {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        let mut child = command
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it with `cargo build --bins`)",
                    path.display()
                )
            })?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Keeps draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains(" ready grpc=") {
                    let _ = tx.send(line);
                }
            }
        });
        let Ok(line) = rx.recv_timeout(STARTUP_TIMEOUT) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{bin} printed no ready line; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let field = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key));
        let addr = |key: &str| field(key).and_then(|v| v.parse::<SocketAddr>().ok());
        Ok(Proc {
            name: bin.to_string(),
            grpc: addr("grpc=").context("no grpc address in the ready line")?,
            admin: addr("admin="),
            admin_token_file: field("admin_token_file=").map(PathBuf::from),
            child,
            log,
            _log_dir: log_dir,
            bin_dir: dir.to_path_buf(),
            args: args.to_vec(),
            env: env.to_vec(),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// The `/metrics` URL of its admin listener (every server binary has one).
    pub fn metrics_url(&self) -> anyhow::Result<String> {
        let admin = self
            .admin
            .with_context(|| format!("{} named no admin address", self.name))?;
        Ok(sluice_loadgen::admin::metrics::url(admin))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through `kill(1)`: no unsafe code needed).
    pub fn sigterm(&self) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(ok.success(), "kill -TERM {} failed", self.pid());
        Ok(())
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
            if let Ok(Some(status)) = self.child.try_wait() {
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

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Extra flags per binary.
#[derive(Debug, Default, Clone)]
pub struct MeshOptions {
    pub gateway: Vec<String>,
    pub risk: Vec<String>,
    pub notification: Vec<String>,
    pub logging: Vec<String>,
    /// Environment for every binary (e.g. `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub env: Vec<(String, String)>,
    /// Risk replicas (0 or 1: one).
    pub risk_replicas: usize,
    /// Audit-log partitions, one logging process each (0 or 1: one).
    pub logging_partitions: usize,
    /// Where the audit log's temporary data directory is made (e.g. a tmpfs); default the
    /// system's temporary directory.
    pub data_root: Option<PathBuf>,
}

/// The four server binaries, started in dependency order.
pub struct ProcMesh {
    /// Risk replica 0.
    pub risk: Proc,
    /// Risk replicas 1.. (with [`MeshOptions::risk_replicas`]).
    pub more_risk: Vec<Proc>,
    pub notification: Proc,
    /// Audit partition 0, whose data directory is `data_dir`.
    pub logging: Proc,
    /// Partitions 1.. (with [`MeshOptions::logging_partitions`]), partition K's data in
    /// `data_dir/partition-K`.
    pub more_logging: Vec<Proc>,
    pub gateway: Proc,
    pub data_dir: tempfile::TempDir,
    /// The Control API token every service was started with.
    pub admin_token: String,
    bin_dir: PathBuf,
    options: MeshOptions,
}

impl ProcMesh {
    /// Starts risk, notification, logging (audit log in a fresh temporary directory) and the
    /// gateway from `bin_dir`. Does not wait for the gateway to be ready.
    pub fn start(bin_dir: &Path, options: MeshOptions) -> anyhow::Result<ProcMesh> {
        let data_dir = match &options.data_root {
            Some(root) => tempfile::tempdir_in(root)
                .with_context(|| format!("cannot make a data directory in {}", root.display()))?,
            None => tempfile::tempdir()?,
        };
        let admin_token = sluice_core::admin_token::generate()?;
        let with = |extra: &[String]| {
            let mut a = strings(&[
                "--listen",
                ANY,
                "--admin-listen",
                ANY,
                "--grace-period",
                GRACE_PERIOD,
            ]);
            a.extend(extra.iter().cloned());
            a
        };
        let service = |extra: &[String]| {
            let mut a = with(extra);
            a.extend(["--admin-token".to_string(), admin_token.clone()]);
            a
        };
        let risks = (0..options.risk_replicas.max(1))
            .map(|_| {
                Proc::spawn_with_env(
                    bin_dir,
                    "sluice-risk",
                    &service(&options.risk),
                    &options.env,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let notification = Proc::spawn_with_env(
            bin_dir,
            "sluice-notification",
            &service(&options.notification),
            &options.env,
        )?;
        let partitions = options.logging_partitions.max(1);
        let loggings = (0..partitions)
            .map(|k| {
                let dir = partition_dir(data_dir.path(), k);
                let mut args = service(&options.logging);
                args.extend(strings(&[
                    "--data-dir",
                    dir.to_str().context("non-UTF-8 temp path")?,
                    "--partition",
                    &k.to_string(),
                    "--partitions",
                    &partitions.to_string(),
                ]));
                Proc::spawn_with_env(bin_dir, "sluice-logging", &args, &options.env)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let urls = |procs: &[Proc]| procs.iter().map(Proc::url).collect::<Vec<_>>().join(",");
        let mut gateway_args = with(&options.gateway);
        gateway_args.extend(strings(&[
            "--risk",
            &urls(&risks),
            "--notification",
            &notification.url(),
            "--logging",
            &urls(&loggings),
        ]));
        let gateway = Proc::spawn_with_env(bin_dir, "sluice-gateway", &gateway_args, &options.env)?;
        let (mut risks, mut loggings) = (risks.into_iter(), loggings.into_iter());
        Ok(ProcMesh {
            risk: risks.next().context("one risk replica")?,
            more_risk: risks.collect(),
            notification,
            logging: loggings.next().context("one audit partition")?,
            more_logging: loggings.collect(),
            gateway,
            data_dir,
            admin_token,
            bin_dir: bin_dir.to_path_buf(),
            options,
        })
    }

    /// [`ProcMesh::start`] off the runtime's threads (it blocks on ready lines), then waits
    /// on the gateway's health stream until it is ready: where every experiment begins.
    pub async fn start_ready(bin_dir: PathBuf, options: MeshOptions) -> anyhow::Result<ProcMesh> {
        let mesh = tokio::task::spawn_blocking(move || ProcMesh::start(&bin_dir, options))
            .await
            .context("starting the mesh panicked")??;
        sluice_loadgen::drive::driver::wait_ready_at(&mesh.gateway.url()).await?;
        Ok(mesh)
    }

    /// Every risk replica, replica 0 first.
    pub fn risks(&self) -> impl Iterator<Item = &Proc> {
        std::iter::once(&self.risk).chain(&self.more_risk)
    }

    /// Every audit partition's logging process, in partition order.
    pub fn loggings(&self) -> impl Iterator<Item = &Proc> {
        std::iter::once(&self.logging).chain(&self.more_logging)
    }

    /// Another gateway over the same services and audit partitions, with the first one's
    /// flags and `extra`, on ports of its own. Does not wait for it to be ready.
    pub fn another_gateway(&self, extra: &[&str]) -> anyhow::Result<Proc> {
        let mut args = self.gateway.args.clone();
        args.extend(extra.iter().map(|a| a.to_string()));
        pin_flag(&mut args, "--listen", ANY);
        pin_flag(&mut args, "--admin-listen", ANY);
        Proc::spawn_with_env(&self.bin_dir, "sluice-gateway", &args, &self.options.env)
    }

    /// The logging URLs, in partition order, comma-separated (as `--logging` takes them).
    pub fn logging_urls(&self) -> String {
        self.loggings().map(Proc::url).collect::<Vec<_>>().join(",")
    }

    /// A Control client for `service` (one of this mesh's services), with the mesh's token.
    pub async fn control(&self, service: &Proc) -> anyhow::Result<Control> {
        Control::connect(&service.url(), Some(&self.admin_token)).await
    }

    /// Restarts logging (partition 0) on its previous address and data directory.
    pub fn restart_logging(&mut self) -> anyhow::Result<()> {
        let mut a = strings(&[
            "--listen",
            &self.logging.grpc.to_string(),
            "--admin-listen",
            ANY,
            "--grace-period",
            GRACE_PERIOD,
            "--admin-token",
            &self.admin_token,
        ]);
        a.extend(self.options.logging.iter().cloned());
        a.extend(strings(&[
            "--data-dir",
            self.data_dir
                .path()
                .to_str()
                .context("non-UTF-8 temp path")?,
            "--partitions",
            &self.options.logging_partitions.max(1).to_string(),
        ]));
        self.logging =
            Proc::spawn_with_env(&self.bin_dir, "sluice-logging", &a, &self.options.env)?;
        Ok(())
    }
}

/// Partition `k`'s data directory under the mesh's: partition 0 uses it directly (as a
/// mesh of one partition always has).
fn partition_dir(root: &Path, k: usize) -> PathBuf {
    if k == 0 {
        root.to_path_buf()
    } else {
        root.join(format!("partition-{k}"))
    }
}

/// Process control for chaos runs: signals, and a restart where clients expect it.
impl Proc {
    /// Sends `signal` (a `kill -s` name such as `STOP` or `CONT`) through `kill(1)`.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(ok.success(), "kill -s {signal} {} failed", self.pid());
        Ok(())
    }

    /// Starts the binary again (after killing what is left of it) with the same flags and
    /// environment, on the same gRPC and admin addresses, so its clients reconnect to it;
    /// waits for its ready line. Flags such as logging's `--data-dir` carry over.
    pub fn respawn(&mut self) -> anyhow::Result<()> {
        self.sigkill();
        let mut args = self.args.clone();
        pin_flag(&mut args, "--listen", &self.grpc.to_string());
        if let Some(admin) = self.admin {
            pin_flag(&mut args, "--admin-listen", &admin.to_string());
        }
        *self = Proc::spawn_with_env(&self.bin_dir, &self.name, &args, &self.env)?;
        Ok(())
    }
}

/// Sets `flag`'s value in `args` (`--flag VALUE` or `--flag=VALUE`), adding it if absent.
fn pin_flag(args: &mut Vec<String>, flag: &str, value: &str) {
    let inline = format!("{flag}=");
    if let Some(i) = args.iter().position(|a| a == flag) {
        if let Some(v) = args.get_mut(i + 1) {
            *v = value.to_string();
            return;
        }
    } else if let Some(a) = args.iter_mut().find(|a| a.starts_with(&inline)) {
        *a = format!("{inline}{value}");
        return;
    }
    args.extend([flag.to_string(), value.to_string()]);
}
