//! The writer thread: the one owner of the file, and its group commit.
//!
//! It takes everything waiting on the append queue (up to `max_batch`) and commits it as
//! one batch, in named steps: [`Writer::stage`] encodes the new records, [`Writer::write`]
//! writes them with one `write` and one `fdatasync`, then either [`Writer::committed`]
//! publishes them (the recovery point, the read index) or [`Writer::roll_back`] undoes the
//! batch; [`Writer::answer`] replies last. No job is answered before its batch's
//! `fdatasync` returned, so an acknowledged record is durable.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use sluice_core::log_limit::RateLimitedLog;
use sluice_core::readiness::Readiness;
use tokio::sync::mpsc;

use super::metrics::LogMetrics;
use super::read::ReadIndex;
use super::room::Room;
use super::{AppendJob, Appended, AuditError};
use crate::frame;
use crate::id_index::IdIndex;
use crate::recovery_point::{Checkpointer, RecoveryPoint};

/// The file's one owner, on the `audit-writer` thread; its state lives only here.
pub(super) struct Writer {
    pub(super) path: PathBuf,
    pub(super) file: File,
    /// File length of committed data.
    pub(super) end: u64,
    /// Zeros written ahead of `end`.
    pub(super) room: Room,
    /// The offset the next new record gets.
    pub(super) next_offset: u64,
    /// Told where each commit ended, once durable (`None` in tests of the writer alone).
    pub(super) checkpoint: Option<Checkpointer>,
    /// Offset and payload digest of every id in the log: replays and conflicts.
    pub(super) by_id: IdIndex,
    pub(super) index: Arc<RwLock<ReadIndex>>,
    pub(super) max_batch: usize,
    pub(super) metrics: LogMetrics,
    /// Set when a failed write could not be rolled back: the file's end is no longer known,
    /// so every later batch is refused until a restart recovers the file.
    pub(super) poisoned: Option<String>,
    pub(super) health: Health,
}

/// Whether writes succeed, as the service's readiness tells it.
pub(super) struct Health {
    /// Set by `AuditLog::report_health`; until then failures are only logged.
    pub(super) readiness: Arc<OnceLock<Readiness>>,
    /// One line per interval however fast writes fail (a full disk fails every batch).
    pub(super) errors: RateLimitedLog,
    /// The last write failed.
    failing: bool,
}

impl Health {
    pub(super) fn new(readiness: Arc<OnceLock<Readiness>>) -> Self {
        Self {
            readiness,
            errors: RateLimitedLog::default(),
            failing: false,
        }
    }

    fn set_failing(&mut self, failing: bool) {
        if self.failing != failing {
            self.failing = failing;
            if let Some(r) = self.readiness.get() {
                r.set(!failing);
            }
        }
    }

    /// A batch's write failed: logged (one line an interval), and not ready.
    fn failed(&mut self, path: &Path, source: &io::Error) {
        self.errors.log(|suppressed| {
            tracing::error!(path = %path.display(), error = %source, suppressed, "audit write failed; rolling back the batch (not ready until a write succeeds)");
        });
        self.set_failing(true);
    }

    /// A batch's write succeeded: ready again if writes were failing.
    fn succeeded(&mut self, path: &Path) {
        if self.failing {
            self.set_failing(false);
            self.errors.flush(|suppressed| {
                tracing::info!(path = %path.display(), suppressed, "audit writes succeed again");
            });
        }
    }
}

/// A batch encoded into the write buffer and not written yet: each job's answer, and what a
/// failed write must undo and a successful one publish.
struct Staged {
    /// Offset of the batch's first new record: where `next_offset` goes back to on failure.
    first_new: u64,
    /// One per job, in the batch's order.
    results: Vec<Result<Appended, AuditError>>,
    /// Ids of the new records, already in the id index.
    ids: Vec<String>,
    /// File position of each new record.
    positions: Vec<u64>,
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<AppendJob>) {
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

    /// Writes and fsyncs one batch, then answers every job in it.
    pub(super) fn commit(&mut self, batch: &mut Vec<AppendJob>, buf: &mut Vec<u8>) {
        buf.clear();
        if let Some(reason) = &self.poisoned {
            for job in batch.drain(..) {
                let _ = job.reply.send(Err(AuditError::Poisoned(reason.clone())));
            }
            return;
        }
        let started = Instant::now();
        let staged = self.stage(batch, buf);
        if !buf.is_empty() {
            if let Err(source) = self.write(buf) {
                self.roll_back(&staged, source, batch);
                return;
            }
            self.committed(buf.len() as u64, &staged.positions);
        }
        self.metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(batch.len() as f64);
        self.answer(batch, staged.results);
    }

    /// Encodes the batch's new records into `buf`, each with the next offset and its
    /// payload's digest, and takes their ids into the id index at once, so a later job of
    /// the same batch with the same id is a replay (answered only after this batch's fsync)
    /// or a conflict. A replay or conflict writes nothing.
    fn stage(&mut self, batch: &mut [AppendJob], buf: &mut Vec<u8>) -> Staged {
        let mut staged = Staged {
            first_new: self.next_offset,
            results: Vec::with_capacity(batch.len()),
            ids: Vec::new(),
            positions: Vec::new(),
        };
        for job in batch.iter_mut() {
            let r = &mut job.record;
            let digest =
                frame::payload_digest(&r.account, r.amount_minor, &r.currency, &r.merchant);
            if let Some(&(offset, logged, hlc)) = self.by_id.get(&r.id) {
                staged.results.push(if logged == digest {
                    Ok(Appended {
                        offset,
                        duplicate: true,
                        hlc,
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
                    self.by_id.insert(r.id.clone(), (offset, digest, r.hlc));
                    staged.ids.push(r.id.clone());
                    staged.positions.push(pos);
                    staged.results.push(Ok(Appended {
                        offset,
                        duplicate: false,
                        hlc: r.hlc,
                    }));
                }
                Err(e) => staged.results.push(Err(e.into())),
            }
        }
        staged
    }

    /// Writes `buf` at the end, into room set aside first, and `fdatasync`s it.
    fn write(&mut self, buf: &[u8]) -> io::Result<()> {
        self.room
            .make(&self.file, &self.path, self.end, buf.len() as u64)
            .and_then(|()| self.file.write_all(buf))
            .and_then(|()| self.file.sync_data())
    }

    /// The batch's `len` bytes are durable: the end moves past them, the recovery point and
    /// the readers learn of them, and the service is ready again if writes were failing.
    fn committed(&mut self, len: u64, positions: &[u64]) {
        self.end += len;
        self.room.committed(self.end);
        self.health.succeeded(&self.path);
        if let Some(checkpoint) = &self.checkpoint {
            checkpoint.publish(RecoveryPoint {
                end: self.end,
                next_offset: self.next_offset,
            });
        }
        let mut index = self.index.write().expect("index lock");
        index.extend(positions);
        self.metrics.records.set(index.records as i64);
    }

    /// Undoes a batch whose write or `fdatasync` failed: nothing in it was acknowledged, so
    /// its ids and offsets are given back and the file is cut to the last commit, and every
    /// job is answered with the error. A cut that fails poisons the writer.
    fn roll_back(&mut self, staged: &Staged, source: io::Error, batch: &mut Vec<AppendJob>) {
        self.health.failed(&self.path, &source);
        for id in &staged.ids {
            self.by_id.remove(id);
        }
        self.next_offset = staged.first_new;
        let rollback = self
            .file
            .set_len(self.end)
            .and_then(|()| self.file.seek(SeekFrom::Start(self.end)).map(|_| ()));
        match rollback {
            Ok(()) => self.room.cut(self.end),
            Err(e) => self.poisoned = Some(format!("cannot roll back a failed write: {e}")),
        }
        let message = source.to_string();
        for job in batch.drain(..) {
            let _ = job.reply.send(Err(AuditError::Io {
                path: self.path.clone(),
                source: io::Error::new(source.kind(), message.clone()),
            }));
        }
    }

    /// Sends each job its result, counting new records, replays and conflicts.
    fn answer(&self, batch: &mut Vec<AppendJob>, results: Vec<Result<Appended, AuditError>>) {
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
