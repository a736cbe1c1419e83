//! The logging service: the durable audit log ([`log::AuditLog`]) behind
//! `mesh.v1.Logging/Append` (one long-lived bidirectional stream per gateway worker; each
//! append acknowledged only after fsync) and `mesh.v1.Logging/Read` (stored records, in
//! offset order).

pub mod frame;
pub mod log;
pub mod recovery;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use prometheus_client::registry::Registry;
use sluice_core::auth::RequireBearer;
use sluice_core::server::{CommonServerArgs, Listeners, ServeError};
use sluice_core::{CancellationToken, deadline};
use sluice_proto::pb::logging_server::{Logging, LoggingServer};
use sluice_proto::pb::{self, AppendAck, AppendRequest, AuditEntry, ReadRequest, Transaction};
use sluice_runtime::pool::PoolConfig;
use sluice_runtime::{ReplyStream, ServiceArgs, WorkerPool};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::log::{AuditError, AuditLog};

/// Default gRPC address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:50054";
/// Default admin (metrics, health) address.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9104";
/// Default data directory.
pub const DEFAULT_DATA_DIR: &str = "data/logging";
/// Records read from disk per step of a `Read` stream; also its send queue's capacity.
pub const DEFAULT_READ_CHUNK: usize = 256;

/// `sluice-logging`: the durable audit log of the Sluice mesh.
///
/// Appends are written to `<data-dir>/audit.log` and acknowledged only after fsync; many
/// appends share one fsync (group commit). Appending an id already in the log with the same
/// payload writes nothing and returns the original offset; with a different payload it is
/// refused (ALREADY_EXISTS). On start the log rebuilds its index and cuts a torn tail (the
/// last write, never acknowledged); any other damage stops the start with exit code 65 —
/// see `check` and `repair`. Every flag can also be set through the environment variable
/// shown.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "sluice-logging",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Config {
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
    /// Token that Append and Read require (`authorization: Bearer <token>`); the gateway
    /// and `sluice-loadgen verify` send theirs with the same flag. Unset = no check.
    #[arg(long, env = "SLUICE_MESH_TOKEN", hide_env_values = true)]
    pub mesh_token: Option<String>,
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
    /// keep their offsets, quarantined offsets are never handed out again. Stop the service
    /// first.
    Repair {
        /// Directory holding the audit log.
        #[arg(long, env = "SLUICE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
    },
}

/// Runs `check` or `repair`, printing a report on stdout; returns the exit code.
pub fn run_command(command: &Command) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (dir, repairing) = match command {
        Command::Check { data_dir } => (data_dir, false),
        Command::Repair { data_dir } => (data_dir, true),
    };
    let path = dir.join(log::LOG_FILE);
    let scanned = if repairing {
        recovery::repair(dir).map(|r| (r.before, Some(r.quarantined)))
    } else {
        recovery::check(dir).map(|s| (s, None))
    };
    let (scan, quarantined) = match scanned {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-logging: cannot read {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    println!("{}: {} bytes", path.display(), scan.len);
    println!(
        "records: {} (offsets 1-{}{})",
        scan.records,
        scan.next_offset - 1,
        if scan.gap_offsets > 0 {
            format!(", {} quarantined earlier", scan.gap_offsets)
        } else {
            String::new()
        }
    );
    for d in &scan.damage {
        let lost = if d.lost_through >= d.lost_from {
            format!("offsets {}-{}", d.lost_from, d.lost_through)
        } else {
            "no offset".to_string()
        };
        println!(
            "DAMAGED bytes {}-{} ({} bytes, {}; first frame: {}); valid records follow",
            d.start,
            d.end,
            d.end - d.start,
            lost,
            d.reason
        );
    }
    if let Some(t) = &scan.torn_tail {
        println!(
            "torn tail: bytes {}-{} ({} bytes: {}), the last write, never acknowledged",
            t.start, scan.len, t.len, t.reason
        );
    }
    match quarantined {
        Some(files) if files.is_empty() => println!("nothing to repair"),
        Some(files) => {
            for f in &files {
                println!("quarantined: {}", f.display());
            }
            println!(
                "repaired: the log now holds {} records; the next record gets offset {}",
                scan.records, scan.next_offset
            );
        }
        None if !scan.damage.is_empty() => {
            println!(
                "verdict: DAMAGED — the service will not start; run `sluice-logging repair --data-dir {}`",
                dir.display()
            );
            return ExitCode::from(sluice_core::server::EXIT_DATA_DAMAGED);
        }
        None if scan.torn_tail.is_some() => {
            println!("verdict: OK — the torn tail is cut on the next start")
        }
        None => println!("verdict: OK"),
    }
    ExitCode::SUCCESS
}

impl Config {
    /// Defaults, as if no flag were given.
    pub fn defaults() -> Self {
        Self::parse_from(["sluice-logging"])
    }
}

struct LoggingService {
    log: AuditLog,
    pool: WorkerPool,
    shutdown: CancellationToken,
}

fn error(code: tonic::Code, message: impl Into<String>) -> Option<pb::Error> {
    Some(pb::Error {
        code: code as i32,
        message: message.into(),
    })
}

/// The trace id the transaction's own trace context carries (W3C or B3, through the
/// propagators), or empty when it carries none.
fn trace_id(txn: &Transaction) -> String {
    use opentelemetry::trace::TraceContextExt;
    let cx = sluice_core::propagation::extract_map(&txn.trace_context);
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        sc.trace_id().to_string()
    } else {
        String::new()
    }
}

async fn append(log: AuditLog, request: AppendRequest) -> AppendAck {
    let correlation_id = request.correlation_id;
    let refuse = |code, message: &str| AppendAck {
        correlation_id,
        error: error(code, message),
        ..Default::default()
    };
    let Some(txn) = request.transaction else {
        return refuse(tonic::Code::InvalidArgument, "transaction: missing");
    };
    // The gateway's own rules: a peer that skips the gateway stores nothing it would refuse.
    if let Err(invalid) = sluice_proto::validate::transaction(&txn) {
        return refuse(tonic::Code::InvalidArgument, &invalid.to_string());
    }
    let record = AuditEntry {
        offset: 0,
        trace_id: trace_id(&txn),
        id: txn.id,
        account: txn.account,
        amount_minor: txn.amount_minor,
        currency: txn.currency,
        merchant: txn.merchant,
        appended_unix_ms: deadline::now_unix_ms(),
        ..Default::default()
    };
    match log.append(record).await {
        Ok(a) => AppendAck {
            correlation_id,
            offset: a.offset,
            duplicate: a.duplicate,
            error: None,
        },
        Err(e @ AuditError::TooLarge(_)) => refuse(tonic::Code::InvalidArgument, &e.to_string()),
        Err(e @ AuditError::Conflict) => refuse(tonic::Code::AlreadyExists, &e.to_string()),
        Err(e) => refuse(tonic::Code::Unavailable, &e.to_string()),
    }
}

#[tonic::async_trait]
impl Logging for LoggingService {
    type AppendStream = ReplyStream<AppendAck>;
    type ReadStream = ReplyStream<AuditEntry>;

    async fn append(
        &self,
        request: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStream>, Status> {
        let log = self.log.clone();
        Ok(Response::new(
            self.pool
                .serve(request, move |req| append(log.clone(), req)),
        ))
    }

    async fn read(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let ReadRequest { from_offset, limit } = request.into_inner();
        let log = self.log.clone();
        let end = log.last_offset();
        let from = from_offset.max(1);
        let last = if limit == 0 {
            end
        } else {
            end.min(from.saturating_add(limit) - 1)
        };
        let (tx, rx) = mpsc::channel(DEFAULT_READ_CHUNK);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut next = from;
            while next <= last && !shutdown.is_cancelled() {
                let chunk = (last - next + 1).min(DEFAULT_READ_CHUNK as u64) as usize;
                let reader = log.clone();
                let entries =
                    match tokio::task::spawn_blocking(move || reader.read(next, chunk)).await {
                        Ok(Ok(entries)) if !entries.is_empty() => entries,
                        Ok(Ok(_)) => break,
                        Ok(Err(e)) => {
                            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                            return;
                        }
                    };
                // Quarantined offsets are skipped, so count from the last offset read.
                next = entries.last().map_or(last, |e| e.offset) + 1;
                for entry in entries {
                    if tx.send(Ok(entry)).await.is_err() {
                        return; // reader gone
                    }
                }
            }
        });
        Ok(Response::new(ReplyStream::new(rx)))
    }
}

/// Serves the logging service on `listeners` until `shutdown` is cancelled, then drains and
/// closes the audit log (everything queued is written and fsync'ed first).
pub async fn serve(
    listeners: Listeners,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let mut registry = Registry::with_prefix("sluice_logging");
    let log = AuditLog::open(
        &config.data_dir,
        config.append_queue,
        config.max_batch,
        &mut registry,
    )
    .map_err(|e| match e {
        AuditError::Damaged { .. } => ServeError::DataDamaged(e.to_string()),
        e => ServeError::Other(format!("{e} (check --data-dir)")),
    })?;
    tracing::info!(path = %config.data_dir.display(), records = log.len(), "audit log open");
    log.report_health(listeners.readiness());
    let pool = WorkerPool::new(
        PoolConfig {
            workers: config.service.workers,
            reply_queue: config.service.reply_queue,
            stream_workers: config.service.stream_workers,
        },
        &mut registry,
        shutdown.clone(),
    );
    let service = LoggingService {
        log: log.clone(),
        pool: pool.clone(),
        shutdown: shutdown.clone(),
    };
    let service = tonic::service::interceptor::InterceptedService::new(
        LoggingServer::new(service).max_decoding_message_size(config.server.h2.max_message_size),
        RequireBearer::new(config.mesh_token.clone(), "the service's --mesh-token"),
    );
    let result = sluice_runtime::run_service(
        listeners,
        &config.server,
        // A generated Control token goes beside the audit log.
        &config
            .service
            .admin_token
            .clone()
            .generate_in(&config.data_dir),
        pool,
        registry,
        service,
        shutdown,
    )
    .await;
    // The router (and every clone of the log it held) is gone once `run` returns.
    // Bounded: a stream task that outlived the grace period may still hold a handle.
    let closed = tokio::task::spawn_blocking(move || log.close());
    if tokio::time::timeout(std::time::Duration::from_secs(5), closed)
        .await
        .is_err()
    {
        tracing::warn!("audit writer still busy at exit; queued appends were never acknowledged");
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_from_w3c_or_b3() {
        sluice_core::propagation::install();
        let mut txn = Transaction::default();
        assert_eq!(trace_id(&txn), "");
        txn.trace_context.insert(
            "b3".into(),
            "0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1".into(),
        );
        assert_eq!(trace_id(&txn), "0af7651916cd43dd8448eb211c80319c");
        txn.trace_context.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        assert_eq!(trace_id(&txn), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}

#[cfg(test)]
mod cli_tests {
    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        super::Config::command().debug_assert();
    }
}
