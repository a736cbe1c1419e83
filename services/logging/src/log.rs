//! The audit log: append-only, fsync'ed before acknowledgement, idempotent by transaction id.
//!
//! # On disk
//!
//! One file, `audit.log`, under the data directory. Each record is
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 of payload | payload (protobuf mesh.v1.AuditEntry)
//! ```
//!
//! Offsets start at 1 and increase by 1; a record's offset is also stored in its payload, so
//! recovery can check the sequence.
//!
//! # Writing: group commit
//!
//! One writer thread owns the file. Appends arrive on a bounded queue (`append_queue`); the
//! writer takes everything waiting (up to `max_batch`), writes it with one `write`, calls
//! `fdatasync` once, and only then acknowledges every record in the batch. While one fsync
//! runs, the next batch gathers, so many records share one fsync under load and a lone record
//! is not held waiting for company.
//!
//! # Idempotency
//!
//! The writer keeps an index from transaction id to offset. A repeated id writes nothing
//! and gets the original offset — acknowledged only once that original is durable (when it
//! sits in the same batch, after the batch's fsync). The index lives in memory and grows with
//! the log (about 100 bytes per record); it is rebuilt from the file on start.
//!
//! # Recovery
//!
//! On open the file is read from the start. The first record that is short, fails its CRC,
//! does not decode, or breaks the offset sequence marks a torn tail: the file is truncated
//! there and fsync'ed. Only acknowledged records are guaranteed, and an acknowledged record
//! was fully fsync'ed, so everything cut was never acknowledged.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;
use sluice_proto::pb::AuditEntry;
use tokio::sync::{mpsc, oneshot};

/// Default capacity of the append queue: appends waiting for the writer thread. When full,
/// appending workers wait, the worker pool fills, and the service stops reading its streams.
pub const DEFAULT_APPEND_QUEUE: usize = 4096;
/// Default most records written and fsync'ed together.
pub const DEFAULT_MAX_BATCH: usize = 1024;
/// The file name under the data directory.
pub const LOG_FILE: &str = "audit.log";
/// Records larger than this are refused (and, on recovery, mark a torn tail).
pub const MAX_RECORD_BYTES: u32 = 64 * 1024;
const HEADER_BYTES: u64 = 8;

/// Audit log failures.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("audit log is closed")]
    Closed,
    #[error("audit log failed earlier and refuses writes until restarted: {0}")]
    Poisoned(String),
    #[error("record too large: {0} bytes (max {MAX_RECORD_BYTES})")]
    TooLarge(usize),
}

/// What an append returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub offset: u64,
    /// True when the id was already in the log and nothing was written.
    pub duplicate: bool,
}

/// Fields of one record; the log assigns `offset`.
pub type NewRecord = AuditEntry;

struct AppendJob {
    record: NewRecord,
    reply: oneshot::Sender<Result<Appended, AuditError>>,
}

/// Committed-record positions, shared with readers.
#[derive(Default)]
struct ReadIndex {
    /// File position of the record with offset `i + 1`.
    positions: Vec<u64>,
}

#[derive(Clone)]
struct LogMetrics {
    appended: Counter,
    duplicates: Counter,
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
            "Appends of an id already logged (nothing written)",
            m.duplicates.clone(),
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
}

impl AuditLog {
    /// Opens (creating if needed) the log under `dir`, recovering its index and cutting a
    /// torn tail, and starts the writer thread.
    pub fn open(
        dir: &Path,
        append_queue: usize,
        max_batch: usize,
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
        let recovered = recover(&mut file).map_err(io_err)?;
        if recovered.cut_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                kept = recovered.positions.len(),
                cut_bytes = recovered.cut_bytes,
                "cut a torn tail off the audit log (records never acknowledged)"
            );
        }
        // The directory entry must be durable too, or a fresh log could vanish on crash.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        let metrics = LogMetrics::new(registry);
        metrics.records.set(recovered.positions.len() as i64);
        metrics.queue_capacity.set(append_queue as i64);
        let index = Arc::new(RwLock::new(ReadIndex {
            positions: recovered.positions,
        }));
        let (jobs, rx) = mpsc::channel(append_queue.max(1));
        let writer = Writer {
            path: path.clone(),
            file,
            end: recovered.end,
            next_offset: recovered.next_offset,
            by_id: recovered.by_id,
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
        })
    }

    /// Appends `record` (its `offset` is ignored) and resolves once it is durable.
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

    /// Committed records in the log.
    pub fn len(&self) -> u64 {
        self.index.read().expect("index lock").positions.len() as u64
    }

    /// True when the log holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads up to `limit` committed records starting at offset `from` (1-based).
    pub fn read(&self, from: u64, limit: usize) -> Result<Vec<AuditEntry>, AuditError> {
        let from = from.max(1);
        let start = {
            let index = self.index.read().expect("index lock");
            match index.positions.get((from - 1) as usize) {
                Some(&pos) => pos,
                None => return Ok(Vec::new()),
            }
        };
        let count = {
            let index = self.index.read().expect("index lock");
            (index.positions.len() as u64 - (from - 1)).min(limit as u64) as usize
        };
        let io_err = |source| AuditError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io_err)?;
        file.seek(SeekFrom::Start(start)).map_err(io_err)?;
        let mut reader = BufReader::new(file);
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            match read_record(&mut reader).map_err(io_err)? {
                Some((entry, _)) => out.push(entry),
                None => break,
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

struct Recovered {
    positions: Vec<u64>,
    by_id: HashMap<String, u64>,
    next_offset: u64,
    end: u64,
    cut_bytes: u64,
}

fn recover(file: &mut File) -> io::Result<Recovered> {
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::with_capacity(1 << 20, &mut *file);
    let mut positions = Vec::new();
    let mut by_id = HashMap::new();
    let mut pos = 0u64;
    loop {
        let record = match read_record(&mut reader) {
            Ok(Some(r)) => r,
            Ok(None) => break,
            // A short or corrupt record is a torn tail.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData
                ) =>
            {
                break;
            }
            Err(e) => return Err(e),
        };
        let (entry, size) = record;
        if entry.offset != positions.len() as u64 + 1 {
            break;
        }
        positions.push(pos);
        by_id.insert(entry.id, entry.offset);
        pos += size;
    }
    drop(reader);
    let cut_bytes = len - pos;
    if cut_bytes > 0 {
        file.set_len(pos)?;
        file.sync_all()?;
    }
    file.seek(SeekFrom::Start(pos))?;
    Ok(Recovered {
        next_offset: positions.len() as u64 + 1,
        positions,
        by_id,
        end: pos,
        cut_bytes,
    })
}

/// Reads one record; `Ok(None)` at a clean end of file.
fn read_record(reader: &mut impl Read) -> io::Result<Option<(AuditEntry, u64)>> {
    let mut header = [0u8; HEADER_BYTES as usize];
    let mut got = 0;
    while got < header.len() {
        let n = reader.read(&mut header[got..])?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(header[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record length out of range",
        ));
    }
    let mut payload = vec![0u8; len as usize];
    reader.read_exact(&mut payload)?;
    if crc32fast::hash(&payload) != crc {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "record CRC mismatch",
        ));
    }
    let entry = AuditEntry::decode(payload.as_slice())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    Ok(Some((entry, HEADER_BYTES + len as u64)))
}

fn encode_record(entry: &AuditEntry, out: &mut Vec<u8>) -> Result<(), AuditError> {
    let len = entry.encoded_len();
    if len > MAX_RECORD_BYTES as usize {
        return Err(AuditError::TooLarge(len));
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES as usize]);
    entry.encode(out).expect("Vec has room");
    let crc = crc32fast::hash(&out[start + HEADER_BYTES as usize..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

struct Writer {
    path: PathBuf,
    file: File,
    /// File length of committed data.
    end: u64,
    next_offset: u64,
    by_id: HashMap<String, u64>,
    index: Arc<RwLock<ReadIndex>>,
    max_batch: usize,
    metrics: LogMetrics,
    poisoned: Option<String>,
}

impl Writer {
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
            if let Some(&offset) = self.by_id.get(&job.record.id) {
                results.push(Ok(Appended {
                    offset,
                    duplicate: true,
                }));
                continue;
            }
            let offset = self.next_offset;
            job.record.offset = offset;
            let pos = self.end + buf.len() as u64;
            match encode_record(&job.record, buf) {
                Ok(()) => {
                    self.next_offset += 1;
                    self.by_id.insert(job.record.id.clone(), offset);
                    new_ids.push(job.record.id.clone());
                    new_positions.push(pos);
                    results.push(Ok(Appended {
                        offset,
                        duplicate: false,
                    }));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        if !buf.is_empty() {
            let written = self
                .file
                .write_all(buf)
                .and_then(|()| self.file.sync_data());
            if let Err(source) = written {
                tracing::error!(path = %self.path.display(), error = %source, "audit write failed; rolling back the batch");
                // Roll back the batch: nothing in it was acknowledged.
                for id in &new_ids {
                    self.by_id.remove(id);
                }
                self.next_offset = first_new;
                let rollback = self
                    .file
                    .set_len(self.end)
                    .and_then(|()| self.file.seek(SeekFrom::Start(self.end)).map(|_| ()));
                if let Err(e) = rollback {
                    self.poisoned = Some(format!("cannot roll back a failed write: {e}"));
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
            let mut index = self.index.write().expect("index lock");
            index.positions.extend_from_slice(&new_positions);
            self.metrics.records.set(index.positions.len() as i64);
        }
        self.metrics
            .fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.metrics.batch_size.observe(batch.len() as f64);
        for (job, result) in batch.drain(..).zip(results) {
            if let Ok(a) = &result {
                let counter = if a.duplicate {
                    &self.metrics.duplicates
                } else {
                    &self.metrics.appended
                };
                counter.inc();
            }
            let _ = job.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> NewRecord {
        AuditEntry {
            id: id.into(),
            account: "acct".into(),
            amount_minor: 100,
            currency: "EUR".into(),
            merchant: "shop".into(),
            ..Default::default()
        }
    }

    fn open(dir: &Path) -> AuditLog {
        AuditLog::open(dir, 64, 16, &mut Registry::default()).unwrap()
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

    #[tokio::test]
    async fn corrupt_record_marks_the_tail() {
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
        bytes[last] ^= 0xff; // flip a byte of the third record's payload
        std::fs::write(&path, &bytes).unwrap();
        let log = open(dir.path());
        assert_eq!(log.len(), 2);
        assert_eq!(
            log.append(record("t2")).await.unwrap(),
            Appended {
                offset: 3,
                duplicate: false
            }
        );
    }
}
