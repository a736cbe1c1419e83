//! The logging service's command line, as given: serve (the default) or an operator command
//! on a data directory. [`crate::Config`] is what the serving flags mean once checked.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use sluice_core::auth::MeshTokenArgs;
use sluice_core::server::CommonServerArgs;
use sluice_runtime::ServiceArgs;

use crate::log;

/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50054";
/// Default admin (metrics, health) address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9104";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "data/logging";

/// `sluice-logging`: the durable audit log of the Sluice mesh.
///
/// Appends are written to `<data-dir>/audit.log` and acknowledged only after fsync; many
/// appends share one fsync (group commit). Appending an id already in the log with the same
/// payload writes nothing and returns the original offset; with a different payload it is
/// refused (ALREADY_EXISTS). On start the log rebuilds its index and cuts a torn tail (the
/// last write, past the recovery point kept in `audit.log.recovery-point`: never
/// acknowledged); any other damage, a bad last record the recovery point says was durable
/// included, stops the start with exit code 65 — see `check` and `repair`. Every flag can also be set through the environment variable
/// shown.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sluice-logging",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Flags {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// gRPC listen address.
    #[arg(long, env = "SLUICE_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Admin HTTP listen address (/metrics, /healthz).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = DEFAULT_ADMIN_LISTEN)]
    pub admin_listen: SocketAddr,
    /// Directory holding the audit log (created if missing).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Appends waiting for the writer thread. When full, appending workers wait.
    #[arg(long, env = "SLUICE_APPEND_QUEUE", default_value_t = log::DEFAULT_APPEND_QUEUE)]
    pub append_queue: usize,
    /// Most records written and fsync'ed together (group commit).
    #[arg(long, env = "SLUICE_MAX_BATCH", default_value_t = log::DEFAULT_MAX_BATCH)]
    pub max_batch: usize,
    /// Bytes of zeros the writer keeps written ahead of the log's end, set aside a chunk
    /// this size at a time (0 to 67108864; 0: none). An append into them does not change
    /// the file's size, so its fdatasync flushes data without a journal commit. Where a chunk
    /// cannot be written (a nearly full disk), appends go on without one.
    #[arg(long, env = "SLUICE_PREALLOCATE", default_value_t = log::DEFAULT_PREALLOCATE)]
    pub preallocate: u64,
    /// This process's audit-log partition, 0-based: a number, or `auto` for the ordinal at
    /// the end of the host name (a Kubernetes StatefulSet pod `logging-1` is partition 1).
    /// It appends only the transactions whose id hashes to it and refuses the rest
    /// (FAILED_PRECONDITION), so a misordered gateway `--logging` list cannot scatter records.
    #[arg(long, env = "SLUICE_PARTITION", default_value = "0")]
    pub partition: String,
    /// How many partitions the audit log has (the gateway's `--logging` list has one URL
    /// per partition, in order). Fixed for the life of the log: an id's partition is a hash
    /// of the id over this count.
    #[arg(long, env = "SLUICE_PARTITIONS", default_value_t = 1)]
    pub partitions: u32,
    /// The token Append and Read require (`authorization: Bearer <token>`); the gateway and
    /// `sluice-loadgen verify` present theirs with the same flags. Without one the audit log
    /// is open to whoever reaches the port, so it serves only on a loopback address unless
    /// --allow-open-audit-log says otherwise.
    #[command(flatten)]
    pub mesh: MeshTokenArgs,
    /// Serve Append and Read without a mesh token on a non-loopback address: anyone who
    /// reaches the port can append records and read every account. Without this flag (or a
    /// token) a logging bound beyond loopback refuses to start.
    #[arg(long, env = "SLUICE_ALLOW_OPEN_AUDIT_LOG", default_value_t = false)]
    pub allow_open_audit_log: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub server: CommonServerArgs,
}

/// Operator commands on a data directory, run instead of the server.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Scans the audit log and reports what it finds; changes nothing. Exit code 0 when the
    /// log would open (clean, or only a torn tail, which a start cuts), 65 when it is damaged.
    Check {
        /// Directory holding the audit log.
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
    /// Moves every damaged region (and a torn tail) to a quarantine file beside the log
    /// (`audit.log.quarantine.<start>-<end>`) and rewrites the log without it: valid records
    /// keep their offsets, quarantined offsets are never handed out again; then writes the
    /// recovery point anew. Stop the service first.
    Repair {
        /// Directory holding the audit log.
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}
