//! The logging service: the durable audit log ([`log::AuditLog`]) behind
//! `mesh.v1.Logging/Append` (one long-lived bidirectional stream per gateway worker; each
//! append acknowledged only after fsync) and `mesh.v1.Logging/Read` (stored records, in
//! offset order).
//!
//! - [`flags`]: the command line as given; [`config`]: what serving it means, checked;
//!   [`commands`]: `check` and `repair`, run instead of the server.
//! - [`frame`] → [`recovery`] → [`log`]: one record on disk, the scan on open, the log;
//!   [`recovery_point`]: how far the log was durable, so rot is not cut as a torn write.
//! - this module: the gRPC service, Append over the [worker pool](sluice_runtime::pool).

pub mod commands;
pub mod config;
pub mod flags;
pub mod frame;
#[doc(hidden)]
pub mod fuzz_check;
mod id_index;
pub mod log;
pub mod recovery;
pub mod recovery_point;

use prometheus_client::registry::Registry;
use sluice_core::auth::RequireBearer;
use sluice_core::server::{Listeners, ServeError};
use sluice_core::{CancellationToken, deadline};
use sluice_proto::hop::HopReply as _;
use sluice_proto::pb::logging_server::{Logging, LoggingServer};
use sluice_proto::pb::{AppendAck, AppendRequest, AuditEntry, ReadRequest, Transaction};
use sluice_proto::validate;
use sluice_runtime::{ReplyStream, WorkerPool};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

pub use crate::config::{Config, Partition};
pub use crate::flags::Flags;
use crate::log::{Appended, AuditError, AuditLog};

/// Records read from disk per step of a `Read` stream; also its send queue's capacity. A
/// reader that does not keep up holds at most this many records here.
pub const DEFAULT_READ_CHUNK: usize = 256;

struct LoggingService {
    log: AuditLog,
    partition: Partition,
    pool: WorkerPool,
    /// Ends `Read` streams (Append streams end through the pool).
    shutdown: CancellationToken,
}

/// Why an append stored nothing.
#[derive(Debug, thiserror::Error)]
enum Refused {
    #[error("transaction: missing")]
    Missing,
    /// The gateway's own rules: a peer that skips the gateway stores nothing it would refuse.
    #[error(transparent)]
    Invalid(#[from] validate::Invalid),
    #[error(
        "transaction {id:?} belongs to audit partition {belongs} of {count}; this is partition {this} (list the gateway's --logging URLs in partition order)"
    )]
    WrongPartition {
        id: String,
        belongs: u32,
        this: u32,
        count: u32,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl From<Refused> for Status {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Audit(e) => e.into(),
            Refused::Missing | Refused::Invalid(_) => Status::invalid_argument(refused.to_string()),
            Refused::WrongPartition { .. } => Status::failed_precondition(refused.to_string()),
        }
    }
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

/// One Append message: the work the pool runs.
async fn append(log: AuditLog, partition: Partition, request: AppendRequest) -> AppendAck {
    let correlation_id = request.correlation_id;
    match store(&log, partition, request.transaction, request.hlc).await {
        Ok(appended) => AppendAck {
            correlation_id,
            offset: appended.offset,
            duplicate: appended.duplicate,
            hlc: appended.hlc,
            error: None,
        },
        Err(refused) => AppendAck::failed(correlation_id, &refused.into()),
    }
}

async fn store(
    log: &AuditLog,
    partition: Partition,
    txn: Option<Transaction>,
    hlc: u64,
) -> Result<Appended, Refused> {
    let txn = txn.ok_or(Refused::Missing)?;
    validate::transaction(&txn)?;
    if !partition.owns(&txn.id) {
        return Err(Refused::WrongPartition {
            belongs: sluice_proto::partition::of(&txn.id, partition.count),
            id: txn.id,
            this: partition.index,
            count: partition.count,
        });
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
        hlc,
        ..Default::default()
    };
    Ok(log.append(record).await?)
}

#[tonic::async_trait]
impl Logging for LoggingService {
    type AppendStream = ReplyStream<AppendAck>;
    type ReadStream = ReplyStream<AuditEntry>;

    async fn append(
        &self,
        request: Request<Streaming<AppendRequest>>,
    ) -> Result<Response<Self::AppendStream>, Status> {
        let (log, partition) = (self.log.clone(), self.partition);
        Ok(Response::new(self.pool.serve(request, move |req| {
            append(log.clone(), partition, req)
        })))
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
                            let _ = tx.send(Err(e.into())).await;
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

/// The file in a data directory naming the partition its log belongs to.
const PARTITION_FILE: &str = "partition";

/// Marks `dir` as holding `partition`, or refuses a directory written as another one:
/// offsets count within a partition, so serving one partition's log as another's would
/// misreport every record in it.
fn claim_data_dir(dir: &std::path::Path, partition: Partition) -> Result<(), String> {
    let path = dir.join(PARTITION_FILE);
    let this = format!("{}/{}", partition.index, partition.count);
    match std::fs::read_to_string(&path) {
        Ok(found) if found.trim() == this => Ok(()),
        Ok(found) => Err(format!(
            "--data-dir {} holds audit partition {} (index/count), but this process is {this}: give each partition its own data directory, and keep --partitions fixed",
            dir.display(),
            found.trim()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::write(&path, format!("{this}\n"))
                .map_err(|e| format!("cannot write {}: {e} (check --data-dir)", path.display()))
        }
        Err(e) => Err(format!(
            "cannot read {}: {e} (check --data-dir)",
            path.display()
        )),
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
        config.preallocate,
        &mut registry,
    )
    .map_err(|e| match e {
        AuditError::Damaged { .. } | AuditError::PointUnreadable(_) => {
            ServeError::DataDamaged(e.to_string())
        }
        e => ServeError::Other(format!("{e} (check --data-dir)")),
    })?;
    let partition = config.partition;
    claim_data_dir(&config.data_dir, partition).map_err(ServeError::Config)?;
    tracing::info!(
        path = %config.data_dir.display(),
        records = log.len(),
        partition = partition.index,
        partitions = partition.count,
        "audit log open"
    );
    log.report_health(listeners.readiness());
    let pool = WorkerPool::new(config.service.pool, &mut registry, shutdown.clone());
    let service = LoggingService {
        log: log.clone(),
        partition,
        pool: pool.clone(),
        shutdown: shutdown.clone(),
    };
    let service = tonic::service::interceptor::InterceptedService::new(
        LoggingServer::new(service).max_decoding_message_size(config.server.h2.max_message_size),
        RequireBearer::new(
            config.mesh_token.clone(),
            "the service's --mesh-token or --mesh-token-file",
        ),
    );
    // A generated Control token goes beside the audit log.
    let admin_token = config
        .service
        .admin_token
        .clone()
        .generate_in(&config.data_dir);
    let result = sluice_runtime::run_service(
        listeners,
        &config.server,
        &admin_token,
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

    #[test]
    fn refusals_become_the_status_a_client_can_act_on() {
        let code = |r: Refused| Status::from(r).code();
        assert_eq!(code(Refused::Missing), tonic::Code::InvalidArgument);
        let invalid = validate::transaction(&Transaction::default()).unwrap_err();
        assert_eq!(code(invalid.into()), tonic::Code::InvalidArgument);
        assert_eq!(
            code(AuditError::Conflict.into()),
            tonic::Code::AlreadyExists
        );
        assert_eq!(code(AuditError::Closed.into()), tonic::Code::Unavailable);
        let too_large = AuditError::TooLarge(frame::TooLarge(70_000));
        assert_eq!(code(too_large.into()), tonic::Code::InvalidArgument);
    }
}
