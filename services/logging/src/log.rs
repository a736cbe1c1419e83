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

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::log_limit::RateLimitedLog;
use sluice_core::readiness::Readiness;
use sluice_proto::pb::AuditEntry;
use tokio::sync::{mpsc, oneshot};

use crate::frame::{self, Decoded};
use crate::id_index::IdIndex;
use crate::recovery::{self, Scan, ScanError};
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
/// Zeros written from this buffer, a piece at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

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
}

/// Fields of one record; the log assigns `offset` and `payload_digest`.
pub type NewRecord = AuditEntry;

struct AppendJob {
    record: NewRecord,
    reply: oneshot::Sender<Result<Appended, AuditError>>,
}

/// Where each offset's record sits in the file, shared with readers.
#[derive(Default)]
struct ReadIndex {
    /// File position of the record with offset `i + 1`; [`GAP`] for a quarantined offset.
    positions: Vec<u64>,
    /// Records in the log (gap offsets not counted).
    records: u64,
}

/// Position of an offset whose record `repair` quarantined.
const GAP: u64 = u64::MAX;

#[derive(Clone)]
struct LogMetrics {
    appended: Counter,
    duplicates: Counter,
    conflicts: Counter,
    records: Gauge,
    batch_size: Histogram,
    fsync_seconds: Histogram,
    queue_depth: Gauge,
    queue_capacity: Gauge,
}

impl LogMetrics {
    fn new(registry: &mut Registry) -> Self {
        let m = Self {
            appended: Counter::default(),
            duplicates: Counter::default(),
            conflicts: Counter::default(),
            records: Gauge::default(),
            batch_size: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                1.0, 2.0, 12,
            )),
            fsync_seconds: Histogram::new(sluice_core::metrics::latency_buckets()),
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
        };
        registry.register(
            "audit_appended",
            "Records written and fsync'ed",
            m.appended.clone(),
        );
        registry.register(
            "audit_duplicates",
            "Replays: appends of an id already logged with the same payload (nothing written)",
            m.duplicates.clone(),
        );
        registry.register(
            "audit_conflicts",
            "Appends refused because their id is logged with a different payload",
            m.conflicts.clone(),
        );
        registry.register("audit_records", "Records in the log", m.records.clone());
        registry.register(
            "audit_batch_records",
            "Records per group commit",
            m.batch_size.clone(),
        );
        registry.register(
            "audit_fsync_seconds",
            "Time per write + fdatasync",
            m.fsync_seconds.clone(),
        );
        registry.register(
            "audit_append_queue_depth",
            "Appends waiting for the writer",
            m.queue_depth.clone(),
        );
        registry.register(
            "audit_append_queue_capacity",
            "Capacity of the append queue (--append-queue)",
            m.queue_capacity.clone(),
        );
        m
    }
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
        let (scan, by_id, index) = recover(&mut file, point).map_err(io_err)?;
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
            health: health.clone(),
            write_errors: RateLimitedLog::default(),
            failing: false,
            path: path.clone(),
            file,
            end,
            allocated,
            preallocate: preallocate.min(MAX_PREALLOCATE),
            room_errors: RateLimitedLog::default(),
            #[cfg(test)]
            room_fails: false,
            next_offset: scan.next_offset,
            checkpoint: Some(checkpoint),
            by_id,
            index: index.clone(),
            max_batch: max_batch.max(1),
            metrics: metrics.clone(),
            poisoned: None,
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

    /// Committed records in the log (quarantined offsets not counted).
    pub fn len(&self) -> u64 {
        self.index.read().expect("index lock").records
    }

    /// True when the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The highest offset handed out (0 for an empty log).
    pub fn last_offset(&self) -> u64 {
        self.index.read().expect("index lock").positions.len() as u64
    }

    /// Reads up to `limit` committed records with offsets from `from` (1-based) on, skipping
    /// quarantined offsets.
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let from = from.max(1);
        let (start, count) = {
            let index = self.index.read().expect("index lock");
            let rest = index.positions.get((from - 1) as usize..).unwrap_or(&[]);
            let Some(&start) = rest.iter().find(|&&p| p != GAP) else {
                return Ok(Vec::new());
            };
            let count = rest.iter().filter(|&&p| p != GAP).take(limit).count();
            (start, count)
        };
        let io_err = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io_err)?;
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        let mut reader = BufReader::new(file);
        let mut out = Vec::with_capacity(count);
        let mut frame = Vec::new();
        while out.len() < count {
            let entry = read_frame(&mut reader, &mut frame).map_err(io_err)?;
            if !frame::is_gap(&entry) {
                out.push(entry);
            }
        }
        Ok(out)
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

/// Reads the committed frame at the reader's position (the index says one is there).
fn read_frame(reader: &mut impl io::Read, buf: &mut Vec<u8>) -> io::Result<AuditEntry> {
    buf.resize(frame::HEADER_BYTES, 0);
    reader.read_exact(buf)?;
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    buf.resize(frame::HEADER_BYTES + len.min(MAX_RECORD_BYTES) as usize, 0);
    reader.read_exact(&mut buf[frame::HEADER_BYTES..])?;
    match frame::decode(buf) {
        Decoded::Frame { entry, .. } => Ok(entry),
        Decoded::Bad(reason) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("committed record unreadable: {reason}"),
        )),
        Decoded::End => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// Scans `file` by the recovery point `point`, building the id index and the read index.
fn recover(
    file: &mut File,
    point: Option<RecoveryPoint>,
) -> io::Result<(Scan, IdIndex, ReadIndex)> {
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    let mut by_id = IdIndex::new();
    let mut index = ReadIndex::default();
    let scan = recovery::scan(BufReader::new(&mut *file), len, point, |entry, pos| {
        // Offsets lost to damage (refused below) or quarantined map to GAP.
        index.positions.resize(
            (entry.offset - 1).max(index.positions.len() as u64) as usize,
            GAP,
        );
        if frame::is_gap(entry) {
            index.positions.resize(entry.gap_through as usize, GAP);
        } else {
            index.positions.push(pos);
            index.records += 1;
            by_id.insert(entry.id.clone(), (entry.offset, frame::digest_of(entry)));
        }
    })?;
    Ok((scan, by_id, index))
}

struct Writer {
    path: PathBuf,
    file: File,
    /// File length of committed data.
    end: u64,
    /// The file's length: `end` and the zeros written ahead of it.
    allocated: u64,
    /// Zeros to write ahead at a time; 0 writes none.
    preallocate: u64,
    /// Zeros that could not be written (a disk with less than a chunk free): logged once
    /// an interval, the batch appended without them.
    room_errors: RateLimitedLog,
    /// Tests: writing zeros fails as on a disk with less than a chunk free.
    #[cfg(test)]
    room_fails: bool,
    next_offset: u64,
    /// Told where each commit ended, once durable (`None` in tests of the writer alone).
    checkpoint: Option<Checkpointer>,
    by_id: IdIndex,
    index: Arc<RwLock<ReadIndex>>,
    max_batch: usize,
    metrics: LogMetrics,
    poisoned: Option<String>,
    health: Arc<std::sync::OnceLock<Readiness>>,
    /// One line per interval however fast writes fail (a full disk fails every batch).
    write_errors: RateLimitedLog,
    /// The last write failed.
    failing: bool,
}

impl Writer {
    fn set_failing(&mut self, failing: bool) {
        if self.failing != failing {
            self.failing = failing;
            if let Some(r) = self.health.get() {
                r.set(!failing);
            }
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<AppendJob>) {
        let mut batch = Vec::with_capacity(self.max_batch);
        let mut buf = Vec::with_capacity(64 * 1024);
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.metrics.queue_depth.set(rx.len() as i64);
            self.commit(&mut batch, &mut buf);
        }
        tracing::debug!("audit writer stopped");
    }

    /// Makes sure `len` bytes past `end` are zeros already written: if not, writes zeros up
    /// to the next multiple of `preallocate` past them. They reach the disk with the batch's
    /// `fdatasync`, which commits the new file size once for the whole chunk.
    ///
    /// Zeros that cannot be written (a disk with less than a chunk free) are given back and
    /// the batch appends without room, as with `--preallocate 0`: room ahead must never make
    /// an append fail that would fit. Only a failure to give them back is an error.
    fn make_room(&mut self, len: u64) -> io::Result<()> {
        let needed = self.end + len;
        if self.preallocate == 0 || needed <= self.allocated {
            return Ok(());
        }
        let target = (needed / self.preallocate + 1) * self.preallocate;
        let before = self.allocated;
        if let Err(error) = self.write_zeros(target) {
            self.room_errors.log(|suppressed| {
                tracing::warn!(path = %self.path.display(), %error, suppressed, "cannot set room aside ahead of the audit log's end; appending without it");
            });
            self.file.set_len(before)?;
            self.allocated = before;
        }
        Ok(())
    }

    /// Writes zeros from `allocated` up to `target`.
    fn write_zeros(&mut self, target: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        while self.allocated < target {
            #[cfg(test)]
            if self.room_fails {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = (target - self.allocated).min(ZEROS.len() as u64) as usize;
            self.file.write_all_at(&ZEROS[..n], self.allocated)?;
            self.allocated += n as u64;
        }
        Ok(())
    }

    /// Writes and fsyncs one batch, then answers every job in it.
    fn commit(&mut self, batch: &mut Vec<AppendJob>, buf: &mut Vec<u8>) {
        buf.clear();
        if let Some(reason) = &self.poisoned {
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(AuditError::Poisoned(reason.clone())));
            }
            return;
        }
        let started = Instant::now();
        let first_new = self.next_offset;
        let mut results: Vec<Result<Appended, AuditError>> = Vec::with_capacity(batch.len());
        let mut new_positions = Vec::new();
        let mut new_ids = Vec::new();
        for job in batch.iter_mut() {
            let r = &mut job.record;
            let digest =
                frame::payload_digest(&r.account, r.amount_minor, &r.currency, &r.merchant);
            if let Some(&(offset, logged)) = self.by_id.get(&r.id) {
                results.push(if logged == digest {
                    Ok(Appended {
                        offset,
                        duplicate: true,
                    })
                } else {
                    Err(AuditError::Conflict)
                });
                continue;
            }
            let offset = self.next_offset;
            r.offset = offset;
            r.gap_through = 0;
            r.payload_digest = digest.to_vec();
            let pos = self.end + buf.len() as u64;
            match frame::encode(r, buf) {
                Ok(()) => {
                    self.next_offset += 1;
                    self.by_id.insert(r.id.clone(), (offset, digest));
                    new_ids.push(r.id.clone());
                    new_positions.push(pos);
                    results.push(Ok(Appended {
                        offset,
                        duplicate: false,
                    }));
                }
                Err(e) => results.push(Err(e.into())),
            }
        }
        if !buf.is_empty() {
            let written = self
                .make_room(buf.len() as u64)
                .and_then(|()| self.file.write_all(buf))
                .and_then(|()| self.file.sync_data());
            if let Err(source) = written {
                self.write_errors.log(|suppressed| {
                    tracing::error!(path = %self.path.display(), error = %source, suppressed, "audit write failed; rolling back the batch (not ready until a write succeeds)");
                });
                self.set_failing(true);
                // Roll back the batch: nothing in it was acknowledged.
                for id in &new_ids {
                    self.by_id.remove(id);
                }
                self.next_offset = first_new;
                let rollback = self
                    .file
                    .set_len(self.end)
                    .and_then(|()| self.file.seek(SeekFrom::Start(self.end)).map(|_| ()));
                match rollback {
                    // The room ahead went with it; the next batch sets it aside again.
                    Ok(()) => self.allocated = self.end,
                    Err(e) => self.poisoned = Some(format!("cannot roll back a failed write: {e}")),
                }
                let message = source.to_string();
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(AuditError::Io {
                        path: self.path.clone(),
                        source: io::Error::new(source.kind(), message.clone()),
                    }));
                }
                return;
            }
            self.end += buf.len() as u64;
            // Appended without room (none asked for, or none could be set aside): the zeros
            // ahead, if any, start here.
            self.allocated = self.allocated.max(self.end);
            if self.failing {
                self.set_failing(false);
                self.write_errors.flush(|suppressed| {
                    tracing::info!(path = %self.path.display(), suppressed, "audit writes succeed again");
                });
            }
            if let Some(checkpoint) = &self.checkpoint {
                checkpoint.publish(RecoveryPoint {
                    end: self.end,
                    next_offset: self.next_offset,
                });
            }
            let mut index = self.index.write().expect("index lock");
            index.positions.extend_from_slice(&new_positions);
            index.records += new_positions.len() as u64;
            self.metrics.records.set(index.records as i64);
        }
        self.metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(batch.len() as f64);
        for (job, result) in batch.drain(..).zip(results) {
            let counter = match &result {
                Ok(a) if a.duplicate => Some(&self.metrics.duplicates),
                Ok(_) => Some(&self.metrics.appended),
                Err(AuditError::Conflict) => Some(&self.metrics.conflicts),
                Err(_) => None,
            };
            if let Some(c) = counter {
                c.inc();
            }
            let _ = job.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn record(id: &str) -> NewRecord {
        crate::frame::tests::entry(0, id)
    }

    fn open(dir: &Path) -> AuditLog {
        AuditLog::open(dir, 64, 16, 0, &mut Registry::default()).unwrap()
    }

    #[tokio::test]
    async fn offsets_start_at_one_and_ids_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        assert_eq!(
            log.append(record("a")).await.unwrap(),
            Appended {
                offset: 1,
                duplicate: false
            }
        );
        assert_eq!(
            log.append(record("b")).await.unwrap(),
            Appended {
                offset: 2,
                duplicate: false
            }
        );
        assert_eq!(
            log.append(record("a")).await.unwrap(),
            Appended {
                offset: 1,
                duplicate: true
            }
        );
        assert_eq!(log.len(), 2);
        let read = log.read(1, 10).unwrap();
        assert_eq!(
            read.iter()
                .map(|e| (e.offset, e.id.as_str()))
                .collect::<Vec<_>>(),
            vec![(1, "a"), (2, "b")]
        );
        assert_eq!(log.read(2, 10).unwrap().len(), 1);
        assert!(log.read(3, 10).unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_duplicates_in_one_batch_share_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let mut tasks = Vec::new();
        for i in 0..200 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                log.append(record(&format!("id{}", i % 50))).await.unwrap()
            }));
        }
        let mut by_id: HashMap<u64, usize> = HashMap::new();
        for t in tasks {
            *by_id.entry(t.await.unwrap().offset).or_default() += 1;
        }
        assert_eq!(by_id.len(), 50);
        assert!(by_id.values().all(|&n| n == 4));
        assert_eq!(log.len(), 50);
    }

    #[tokio::test]
    async fn reopen_recovers_index_and_cuts_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            for i in 0..10 {
                log.append(record(&format!("t{i}"))).await.unwrap();
            }
            log.close();
        }
        // A torn tail: half a record's header plus garbage.
        let path = dir.path().join(LOG_FILE);
        let intact = std::fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[42, 0, 0, 0, 1, 2, 3]).unwrap();
        drop(f);

        let log = open(dir.path());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), intact);
        assert_eq!(log.len(), 10);
        assert_eq!(
            log.append(record("t3")).await.unwrap(),
            Appended {
                offset: 4,
                duplicate: true
            }
        );
        assert_eq!(
            log.append(record("new")).await.unwrap(),
            Appended {
                offset: 11,
                duplicate: false
            }
        );
        assert_eq!(log.read(11, 1).unwrap()[0].id, "new");
    }

    fn open_preallocating(dir: &Path, chunk: u64) -> AuditLog {
        AuditLog::open(dir, 64, 16, chunk, &mut Registry::default()).unwrap()
    }

    #[tokio::test]
    async fn appends_overwrite_zeros_set_aside_ahead_and_a_reopen_goes_on_after_the_last_record() {
        const CHUNK: u64 = 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let zero_tail = |bytes: &[u8]| bytes.iter().rev().take_while(|&&b| b == 0).count();
        {
            let log = open_preallocating(dir.path(), CHUNK);
            for i in 0..100 {
                log.append(record(&format!("p{i}"))).await.unwrap();
                // The file is whole chunks, with zeros after the records.
                let len = std::fs::metadata(&path).unwrap().len();
                assert_eq!(len % CHUNK, 0, "after {i}: {len}");
            }
            log.close();
        }
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 4 * CHUNK as usize, "100 records span chunks");
        assert!(zero_tail(&bytes) > 0, "room set aside at the end");
        let scan = recovery::check(dir.path()).unwrap();
        assert_eq!((scan.records, scan.next_offset), (100, 101));
        assert!(scan.damage.is_empty() && scan.torn_tail.is_none());
        assert!(scan.preallocated > 0 && scan.preallocated <= 2 * CHUNK);

        // Reopened, the log goes on after its last record, not after the zeros.
        let log = open_preallocating(dir.path(), CHUNK);
        assert_eq!(log.len(), 100);
        assert_eq!(log.append(record("p7")).await.unwrap().offset, 8);
        for i in 100..200 {
            let a = log.append(record(&format!("p{i}"))).await.unwrap();
            assert_eq!(a.offset, i + 1);
        }
        let all = log.read(1, 1000).unwrap();
        assert_eq!(all.len(), 200);
        assert!(
            all.iter()
                .enumerate()
                .all(|(i, e)| e.offset == i as u64 + 1)
        );
        log.close();
        let scan = recovery::check(dir.path()).unwrap();
        assert_eq!(scan.records, 200);
        assert!(scan.damage.is_empty() && scan.torn_tail.is_none());
        // Without room set aside (--preallocate 0), the same log opens and appends too.
        let log = open(dir.path());
        assert_eq!(log.append(record("p200")).await.unwrap().offset, 201);
    }

    #[tokio::test]
    async fn a_torn_batch_in_the_room_set_aside_is_cut_and_the_room_set_aside_again() {
        const CHUNK: u64 = 4096;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        {
            let log = open_preallocating(dir.path(), CHUNK);
            for i in 0..3 {
                log.append(record(&format!("t{i}"))).await.unwrap();
            }
            log.close();
        }
        // A crash mid-batch: part of a frame landed in the zeros.
        let end = recovery::check(dir.path()).unwrap().valid_end();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[end as usize..end as usize + 6].copy_from_slice(&[42, 0, 0, 0, 9, 9]);
        std::fs::write(&path, &bytes).unwrap();
        assert!(recovery::check(dir.path()).unwrap().torn_tail.is_some());

        let log = open_preallocating(dir.path(), CHUNK);
        assert_eq!(log.len(), 3);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            end,
            "the tail was cut"
        );
        assert_eq!(log.append(record("t3")).await.unwrap().offset, 4);
        assert_eq!(std::fs::metadata(&path).unwrap().len() % CHUNK, 0);
        log.close();
        let scan = recovery::check(dir.path()).unwrap();
        assert_eq!(scan.records, 4);
        assert!(scan.torn_tail.is_none() && scan.preallocated > 0);
    }

    #[tokio::test]
    async fn a_flipped_bit_in_the_last_acknowledged_record_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            for i in 0..3 {
                log.append(record(&format!("t{i}"))).await.unwrap();
            }
            log.close();
        }
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01; // one bit of the third (last, acknowledged) record's payload
        std::fs::write(&path, &bytes).unwrap();
        let refused = AuditLog::open(dir.path(), 64, 16, 0, &mut Registry::default());
        assert!(
            matches!(refused, Err(AuditError::Damaged { offset: 3, .. })),
            "rot in an acknowledged record is not cut as torn"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing changed");
        let scan = recovery::check(dir.path()).unwrap();
        assert_eq!(
            (
                scan.damage.len(),
                scan.damage[0].lost_from,
                scan.damage[0].lost_through
            ),
            (1, 3, 3)
        );
        assert!(scan.torn_tail.is_none());
        recovery::repair(dir.path()).unwrap();
        let log = open(dir.path());
        assert_eq!(log.len(), 2);
        assert_eq!(
            log.read(1, 10)
                .unwrap()
                .iter()
                .map(|e| e.offset)
                .collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            log.append(record("t9")).await.unwrap(),
            Appended {
                offset: 4,
                duplicate: false
            },
            "offset 3 is never handed to another transaction"
        );
    }

    #[tokio::test]
    async fn a_write_torn_past_the_recovery_point_is_cut_silently() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = open(dir.path());
            for i in 0..3 {
                log.append(record(&format!("t{i}"))).await.unwrap();
            }
            log.close();
        }
        // Half of a fourth record: a write the crash tore before its fsync returned.
        let mut half = Vec::new();
        let mut fourth = record("t3");
        fourth.offset = 4;
        crate::frame::encode(&fourth, &mut half).unwrap();
        half.truncate(half.len() / 2);
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.extend_from_slice(&half);
        std::fs::write(&path, &bytes).unwrap();
        let log = open(dir.path());
        assert_eq!(log.len(), 3);
        assert_eq!(
            log.append(record("t3")).await.unwrap(),
            Appended {
                offset: 4,
                duplicate: false
            }
        );
    }

    async fn write_log(dir: &Path, n: usize) -> u64 {
        let log = open(dir);
        for i in 0..n {
            log.append(record(&format!("t{i}"))).await.unwrap();
        }
        log.close();
        std::fs::metadata(dir.join(LOG_FILE)).unwrap().len()
    }

    #[tokio::test]
    async fn mid_file_damage_refuses_to_open_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let len = write_log(dir.path(), 6000).await;
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
        let err = AuditLog::open(dir.path(), 64, 16, 0, &mut Registry::default())
            .err()
            .expect("a damaged log must not open");
        let AuditError::Damaged {
            position, offset, ..
        } = &err
        else {
            panic!("expected Damaged, got {err}");
        };
        assert!(*position <= middle as u64 && *offset > 2900 && *offset < 3100);
        let line = err.to_string();
        assert!(line.contains(&path.display().to_string()) && !line.contains('\n'));
        assert!(
            line.contains(&format!("byte {position}"))
                && line.contains(&format!("offset {offset}"))
        );
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            len,
            "file untouched"
        );
    }

    #[tokio::test]
    async fn repair_then_open_keeps_every_valid_offset() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), 100).await;
        let path = dir.path().join(LOG_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[4096..4096 + 300].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let repaired = crate::recovery::repair(dir.path()).unwrap();
        let d = &repaired.before.damage[0];
        let lost = d.lost_from..=d.lost_through;
        assert!(!lost.is_empty());
        let log = open(dir.path());
        assert_eq!(log.len(), 100 - lost.clone().count() as u64);
        assert_eq!(log.last_offset(), 100);
        let all = log.read(1, 1000).unwrap();
        assert_eq!(all.len() as u64, log.len());
        for e in &all {
            assert!(!lost.contains(&e.offset));
            assert_eq!(e.id, format!("t{}", e.offset - 1), "offset kept");
        }
        // Reading from inside the gap starts at the next record.
        assert_eq!(
            log.read(*lost.start(), 1).unwrap()[0].offset,
            lost.end() + 1
        );
        // A lost id can be appended again, at a new offset; a kept one is a replay.
        let again = log
            .append(record(&format!("t{}", lost.start() - 1)))
            .await
            .unwrap();
        assert_eq!(
            again,
            Appended {
                offset: 101,
                duplicate: false
            }
        );
        assert_eq!(
            log.append(record("t0")).await.unwrap(),
            Appended {
                offset: 1,
                duplicate: true
            }
        );
    }

    /// A writer on the log at `path` through `file`, appending after its last byte as
    /// offset `next_offset`, for tests that swap what its writes meet.
    fn writer_on(path: &Path, file: File, preallocate: u64, next_offset: u64) -> Writer {
        let len = std::fs::metadata(path).unwrap().len();
        Writer {
            path: path.to_path_buf(),
            file,
            end: len,
            allocated: len,
            preallocate,
            room_errors: RateLimitedLog::default(),
            room_fails: false,
            next_offset,
            checkpoint: None,
            by_id: IdIndex::new(),
            index: Arc::default(),
            max_batch: 16,
            metrics: LogMetrics::new(&mut Registry::default()),
            poisoned: None,
            health: Arc::default(),
            write_errors: RateLimitedLog::default(),
            failing: false,
        }
    }

    /// One append for [`Writer::commit`], and where its answer arrives.
    fn job(record: NewRecord) -> (AppendJob, oneshot::Receiver<Result<Appended, AuditError>>) {
        let (reply, done) = oneshot::channel();
        (AppendJob { record, reply }, done)
    }

    #[test]
    fn zeros_that_cannot_be_written_leave_appends_going_without_room() {
        const CHUNK: u64 = 1024;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .unwrap();
        let mut writer = writer_on(&path, file, CHUNK, 1);
        let mut buf = Vec::new();
        let mut append = |writer: &mut Writer, i: u64| {
            let (j, mut done) = job(record(&format!("room-{i}")));
            writer.commit(&mut vec![j], &mut buf);
            let appended = done.try_recv().unwrap().unwrap();
            assert_eq!(appended.offset, i, "append {i}");
        };
        append(&mut writer, 1);
        assert_eq!(
            std::fs::metadata(&path).unwrap().len(),
            CHUNK,
            "a chunk set aside"
        );
        // A disk with less than a chunk free: every append still goes in, past the room.
        writer.room_fails = true;
        for i in 2..=40 {
            append(&mut writer, i);
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(
            len > 2 * CHUNK,
            "{len}: grew past the room by appends alone"
        );
        assert_eq!(len, writer.end, "no zeros after the records");
        assert!(
            writer.room_errors.suppressed() > 0,
            "the room was asked for again and again"
        );
        // Room again: the next append sets a chunk aside after the records, never over them.
        writer.room_fails = false;
        append(&mut writer, 41);
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len.is_multiple_of(CHUNK) && len > writer.end, "{len}");
        drop(writer);
        let scan = recovery::check(dir.path()).unwrap();
        assert_eq!((scan.records, scan.next_offset), (41, 42));
        assert!(scan.damage.is_empty() && scan.torn_tail.is_none());
        assert!(scan.preallocated > 0);
    }

    #[tokio::test]
    async fn failing_writes_mark_the_service_not_ready_until_one_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let readiness = Readiness::default();
        readiness.set(true);
        log.report_health(readiness.clone());
        log.append(record("ok-1")).await.unwrap();
        // Swap the writer's file for a read-only handle: every write fails, as on a full disk.
        let path = dir.path().join(LOG_FILE);
        let mut writer = writer_on(&path, File::open(&path).unwrap(), 0, 2);
        writer.health = log.health.clone();
        let mut buf = Vec::new();
        for i in 0..100 {
            let (j, mut done) = job(record(&format!("fail-{i}")));
            writer.commit(&mut vec![j], &mut buf);
            assert!(matches!(done.try_recv(), Ok(Err(AuditError::Io { .. }))));
            // A read-only handle cannot roll back either; a full disk can.
            writer.poisoned = None;
        }
        assert!(!readiness.is_ready());
        assert_eq!(
            writer.write_errors.suppressed(),
            99,
            "one line for 100 failures"
        );
        writer.file = OpenOptions::new().append(true).open(&path).unwrap();
        let (j, mut done) = job(record("ok-2"));
        writer.commit(&mut vec![j], &mut buf);
        assert!(matches!(done.try_recv(), Ok(Ok(_))));
        assert!(readiness.is_ready(), "ready again once a write succeeds");
    }

    #[tokio::test]
    async fn same_id_other_payload_conflicts_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = open(dir.path());
        let alice = record("x");
        let mut mallory = record("x");
        mallory.account = "mallory".into();
        mallory.amount_minor = 999_999_999_999;
        assert_eq!(log.append(alice.clone()).await.unwrap().offset, 1);
        assert!(matches!(
            log.append(mallory.clone()).await,
            Err(AuditError::Conflict)
        ));
        assert_eq!(
            log.append(alice.clone()).await.unwrap(),
            Appended {
                offset: 1,
                duplicate: true
            }
        );
        assert_eq!(log.len(), 1);
        // In one batch, too.
        let (a, b) = tokio::join!(
            log.append(record("y")),
            log.append({
                let mut r = record("y");
                r.merchant = "other".into();
                r
            })
        );
        assert!(a.is_ok() != b.is_ok());
        log.close();
        // And after a restart, from the digests on disk.
        let log = open(dir.path());
        assert!(matches!(
            log.append(mallory).await,
            Err(AuditError::Conflict)
        ));
        assert_eq!(log.append(alice).await.unwrap().offset, 1);
        assert_eq!(log.read(1, 1).unwrap()[0].payload_digest.len(), 32);
    }
}
