//! The audit log: append-only, fsync'ed before acknowledgement, idempotent by transaction id.
//!
//! # On disk
//!
//! One file, `audit.log`, under the data directory: a sequence of frames
//! ([`crate::frame`]: length, CRC-32, protobuf `AuditEntry`). Offsets start at 1 and
//! increase by 1; each record stores its own offset, so recovery can check the sequence.
//! A gap marker (written only by `sluice-logging repair`) stands for offsets whose records
//! were quarantined. Each record also stores a SHA-256 digest of its payload.
//!
//! # Writing: group commit
//!
//! One writer thread owns the file. Appends arrive on a bounded queue (`append_queue`); the
//! writer takes everything waiting (up to `max_batch`), writes it with one `write`, calls
//! `fdatasync` once, and only then acknowledges every record in the batch. While one fsync
//! runs, the next batch gathers, so many records share one fsync under load and a lone record
//! is not held waiting for company.
//!
//! # Room ahead of the end
//!
//! An append that grows the file changes its size, so its `fdatasync` must also commit the
//! inode through the filesystem's journal. The writer therefore keeps zeros written ahead
//! of the end (`--preallocate`, [`DEFAULT_PREALLOCATE`] at a time): a batch overwrites
//! them, and its `fdatasync` flushes data alone; the size changes once per chunk. Zeros
//! written, not `fallocate`d: a write into an allocated-but-unwritten extent is a metadata
//! change too. On this project's ext4 VM, 12.8 KB appends each followed by `fdatasync`
//! committed 2,100–2,900 times a second into a growing file and 5,000 times into one kept
//! 256 KiB ahead. Recovery reads zeros that run to the end of the file as that room, not
//! as damage ([`crate::recovery`]).
//!
//! # Idempotency
//!
//! The writer keeps an index from transaction id to offset and payload digest. The same id
//! with the same payload is a replay: nothing is written, and the reply carries the original
//! offset — sent only once that original is durable (when it sits in the same batch, after
//! the batch's fsync). The same id with a different payload is refused
//! ([`AuditError::Conflict`]) and nothing is written. The index lives in memory and grows
//! with the log (about 130 bytes per record), in shards that each grow on their own
//! ([`crate::id_index`]); it is rebuilt from the file on start.
//!
//! # Recovery
//!
//! On open the file is scanned ([`crate::recovery`]) by the recovery point
//! ([`crate::recovery_point`]: how far the log was durable, published after each commit's
//! fsync). A torn tail (damage that runs to the end of the file past the point: the last
//! write, never acknowledged) is cut; a bad record at or below it is damage. Damage followed by valid
//! records refuses the open with [`AuditError::Damaged`]: those records were acknowledged,
//! and no automatic step may drop them or reuse their offsets. Before serving, the file is
//! `fdatasync`'ed (records written but not synced before a crash become durable before any
//! reply can mention them) and the directory is fsync'ed (a new file's entry survives).
//!
//! # Layout
//!
//! This module is the handle ([`AuditLog`]: open, append, close) and its errors; `writer`
//! is the writer thread and its group commit, `room` the zeros written ahead, `read` the
//! read index and reads, `metrics` what is measured.

mod metrics;
mod read;
mod room;
mod writer;

use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use prometheus_client::registry::Registry;
use sluice_core::readiness::Readiness;
use sluice_proto::pb::AuditEntry;
use tokio::sync::{mpsc, oneshot};

use self::metrics::LogMetrics;
use self::read::ReadIndex;
use self::room::Room;
use self::writer::{Health, Writer};
use crate::frame;
use crate::recovery::{self, ScanError};
use crate::recovery_point::{self, Checkpointer, RecoveryPoint};

pub use crate::frame::MAX_RECORD_BYTES;
pub use crate::recovery::LOG_FILE;

/// Default capacity of the append queue: appends waiting for the writer thread. When full,
/// appending workers wait, the worker pool fills, and the service stops reading its streams.
pub const DEFAULT_APPEND_QUEUE: usize = 4096;
/// Default most records written and fsync'ed together.
pub const DEFAULT_MAX_BATCH: usize = 1024;
/// Default bytes of zeros written ahead of the log's end at a time (`--preallocate`): a
/// chunk's write and flush ride with one batch's, so a larger one lengthens that batch's
/// commit (4 MiB chunks put 15 ms into the commit p99.9 on this project's VM).
pub const DEFAULT_PREALLOCATE: u64 = 256 * 1024;
/// Most `--preallocate`: recovery reads the zeros once per start, byte by byte.
pub const MAX_PREALLOCATE: u64 = 64 * 1024 * 1024;

/// Audit log failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("audit log is closed")]
    Closed,
    #[error("audit log failed earlier and refuses writes until restarted: {0}")]
    Poisoned(String),
    /// The recovery point cannot be read: a bad last record cannot be told from a torn
    /// write, so the log will not open.
    #[error(transparent)]
    PointUnreadable(#[from] recovery::PointUnreadable),
    #[error(transparent)]
    TooLarge(#[from] frame::TooLarge),
    /// The id is in the log with a different payload.
    #[error("id: already used for a different transaction")]
    Conflict,
    /// Damage followed by valid records: the log will not open.
    #[error(
        "{path}: damaged at byte {position} (record offset {offset}: {reason}; {regions} damaged region(s) in all); nothing was changed. See them with `sluice-logging check --data-dir {dir}`, quarantine them with `sluice-logging repair --data-dir {dir}`"
    )]
    Damaged {
        path: PathBuf,
        dir: PathBuf,
        position: u64,
        offset: u64,
        reason: &'static str,
        regions: usize,
    },
}

/// The status a caller sees for an audit failure; the one place the audit log's errors
/// become gRPC codes.
impl From<AuditError> for tonic::Status {
    fn from(e: AuditError) -> Self {
        let code = match &e {
            // The record itself is at fault: retrying it cannot help.
            AuditError::TooLarge(_) => tonic::Code::InvalidArgument,
            AuditError::Conflict => tonic::Code::AlreadyExists,
            // The disk or the writer: another replica, or this one later, may take it.
            AuditError::Io { .. } | AuditError::Closed | AuditError::Poisoned(_) => {
                tonic::Code::Unavailable
            }
            AuditError::Damaged { .. } | AuditError::PointUnreadable(_) => tonic::Code::DataLoss,
        };
        tonic::Status::new(code, e.to_string())
    }
}

/// What an append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub offset: u64,
    /// True when the id was already in the log with the same payload and nothing was written.
    pub duplicate: bool,
    /// The record's clock: this append's, or the original's for a replay.
    pub hlc: u64,
}

/// Fields of one record; the log assigns `offset` and `payload_digest`.
pub type NewRecord = AuditEntry;

struct AppendJob {
    record: NewRecord,
    reply: oneshot::Sender<Result<Appended, AuditError>>,
}

/// Handle to the audit log. Cheap to clone; the writer thread stops when every handle is
/// dropped, after writing what is queued.
#[derive(Clone)]
pub struct AuditLog {
    path: PathBuf,
    jobs: mpsc::Sender<AppendJob>,
    index: Arc<RwLock<ReadIndex>>,
    metrics: LogMetrics,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
    health: Arc<std::sync::OnceLock<Readiness>>,
}

impl AuditLog {
    /// Opens (creating if needed) the log under `dir`: scans it, cuts a torn tail, refuses
    /// damage ([`AuditError::Damaged`]), makes everything on disk durable, and starts the
    /// writer thread.
    pub fn open(
        dir: &Path,
        append_queue: usize,
        max_batch: usize,
        preallocate: u64,
        registry: &mut Registry,
    ) -> Result<Self, AuditError> {
        let path = dir.join(LOG_FILE);
        let io_err = |source| AuditError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        let point = match recovery::recovery_point(dir) {
            Ok(point) => point,
            Err(ScanError::PointUnreadable(e)) => return Err(e.into()),
            Err(ScanError::Io { path, source, .. }) => return Err(AuditError::Io { path, source }),
        };
        let (scan, by_id, index) = read::recover(&mut file, point).map_err(io_err)?;
        if point.is_none() && scan.len > 0 {
            tracing::warn!(
                path = %path.display(),
                "no recovery point beside this audit log (written by an earlier version): a bad last record cannot be told from a torn write this once; one is kept from now on"
            );
        }
        if let Some(first) = scan.damage.first() {
            return Err(AuditError::Damaged {
                path,
                dir: dir.to_path_buf(),
                position: first.start,
                offset: first.lost_from,
                reason: first.reason,
                regions: scan.damage.len(),
            });
        }
        let mut allocated = scan.len;
        if let Some(tail) = &scan.torn_tail {
            file.set_len(tail.start).map_err(io_err)?;
            allocated = tail.start;
            tracing::warn!(
                path = %path.display(),
                records = scan.records,
                cut_bytes = tail.len,
                at = tail.start,
                reason = tail.reason,
                recovery_point = point.map(|p| p.next_offset),
                "cut a torn tail off the audit log (the last write, past the recovery point: never acknowledged)"
            );
        }
        // Whatever reached the file before a crash becomes durable before any reply can
        // mention it; the directory entry too, or a fresh log could vanish.
        file.sync_all().map_err(io_err)?;
        recovery::sync_dir(dir).map_err(|source| AuditError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let end = scan.valid_end();
        file.seek(SeekFrom::Start(end)).map_err(io_err)?;
        // Everything up to `end` is durable now: the point moves there before any append.
        let checkpoint = Checkpointer::start(
            dir,
            RecoveryPoint {
                end,
                next_offset: scan.next_offset,
            },
            recovery_point::DEFAULT_INTERVAL,
        )
        .map_err(|source| AuditError::Io {
            path: dir.join(recovery_point::RECOVERY_POINT_FILE),
            source,
        })?;
        let metrics = LogMetrics::new(registry);
        metrics.records.set(index.records as i64);
        metrics.queue_capacity.set(append_queue as i64);
        let index = Arc::new(RwLock::new(index));
        let (jobs, rx) = mpsc::channel(append_queue.max(1));
        let health = Arc::new(std::sync::OnceLock::new());
        let writer = Writer {
            path: path.clone(),
            file,
            end,
            room: Room::new(allocated, preallocate.min(MAX_PREALLOCATE)),
            next_offset: scan.next_offset,
            checkpoint: Some(checkpoint),
            by_id,
            index: index.clone(),
            max_batch: max_batch.max(1),
            metrics: metrics.clone(),
            poisoned: None,
            health: Health::new(health.clone()),
        };
        let handle = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err)?;
        Ok(Self {
            path,
            jobs,
            index,
            metrics,
            writer: Arc::new(std::sync::Mutex::new(Some(handle))),
            health,
        })
    }

    /// From now on, a failing write (a full disk, an I/O error) marks `readiness` not ready
    /// until a write succeeds again: the service stays alive (`/healthz`) but says it cannot
    /// take appends (`/readyz`, gRPC health), so the gateway and orchestrators route around it.
    pub fn report_health(&self, readiness: Readiness) {
        let _ = self.health.set(readiness);
    }

    /// Appends `record` (its `offset` and `payload_digest` are set here) and resolves once
    /// it is durable.
    pub async fn append(&self, record: NewRecord) -> Result<Appended, AuditError> {
        let (reply, done) = oneshot::channel();
        self.metrics
            .queue_depth
            .set((self.jobs.max_capacity() - self.jobs.capacity()) as i64 + 1);
        self.jobs
            .send(AppendJob { record, reply })
            .await
            .map_err(|_| AuditError::Closed)?;
        done.await.map_err(|_| AuditError::Closed)?
    }

    /// Stops accepting appends and waits for the writer to finish what is queued. Other
    /// clones must be dropped first for the writer to see the end of its queue.
    pub fn close(self) {
        let handle = self.writer.lock().expect("writer lock").take();
        drop(self.jobs);
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests;
