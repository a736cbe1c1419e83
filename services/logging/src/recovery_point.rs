//! The recovery point: how far the log is known to have been durable, kept beside it so a
//! restart can tell a torn write from rot in an acknowledged record (Kafka's
//! recovery-point checkpoint).
//!
//! On disk a torn last write and a flipped bit in the last record look alike: a bad frame
//! with nothing valid after it. What tells them apart is whether the record was ever
//! durable. Every group commit ends with an `fdatasync`; only then are its records
//! acknowledged, and only then is the commit's end published here. So every offset below
//! [`RecoveryPoint::next_offset`] was durable — and may have been acknowledged: a bad frame
//! there is damage (the start refuses, `repair` quarantines it behind a gap marker, its
//! offset is never handed out again). Only a bad frame at or past it may be cut as torn.
//!
//! # Cheap enough to keep up
//!
//! The point is written by a thread of its own, not the audit writer: the writer publishes
//! `(end, next_offset)` after each commit and goes on; the checkpoint thread writes the
//! latest one into a fixed 64-byte file (two 32-byte slots, alternately, each with a
//! sequence number and a CRC: a torn slot write leaves the other slot good) and
//! `fdatasync`s it — no size change, so no journal commit — then waits at least
//! [`DEFAULT_INTERVAL`] before the next. The point therefore lags the log by at most one
//! interval plus one sync, and never runs ahead of it: a published point is already durable.
//! The lag only matters if the machine dies within it *and* a record acknowledged in it
//! rots later; a clean stop writes the last point before the writer exits.
//!
//! Decisions use the offset, not the byte position: `repair` moves records (a gap marker
//! replaces a damaged region), but never renumbers them, so a point written before a repair
//! stays true after it. The position is kept for reports.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The recovery point's file name, beside `audit.log`.
pub const RECOVERY_POINT_FILE: &str = "audit.log.recovery-point";
/// Least time between two checkpoint syncs: bounds their rate (and their competition with
/// the log's own syncs) at a few hundred a second, however fast commits come.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(5);
/// Bytes per slot: magic, CRC, sequence, end, next offset.
const SLOT_BYTES: usize = 32;
const MAGIC: &[u8; 4] = b"SRP1";

/// Offsets below `next_offset` (bytes below `end`) were durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPoint {
    /// Byte position where the last durable commit ended (for reports).
    pub end: u64,
    /// The offset after the last durable record.
    pub next_offset: u64,
}

impl RecoveryPoint {
    /// An empty log's point.
    pub const START: RecoveryPoint = RecoveryPoint {
        end: 0,
        next_offset: 1,
    };

    /// The highest offset known durable (0: none).
    pub fn durable_through(&self) -> u64 {
        self.next_offset.saturating_sub(1)
    }
}

/// What the recovery point file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// No file: a new log, or one written before recovery points existed.
    Absent,
    At(RecoveryPoint),
    /// The file is there, but neither slot holds a valid point.
    Unreadable,
}

fn encode_slot(seq: u64, point: RecoveryPoint) -> [u8; SLOT_BYTES] {
    let mut slot = [0u8; SLOT_BYTES];
    slot[0..4].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&seq.to_le_bytes());
    slot[16..24].copy_from_slice(&point.end.to_le_bytes());
    slot[24..32].copy_from_slice(&point.next_offset.to_le_bytes());
    let crc = crc32fast::hash(&slot[8..]);
    slot[4..8].copy_from_slice(&crc.to_le_bytes());
    slot
}

fn decode_slot(slot: &[u8]) -> Option<(u64, RecoveryPoint)> {
    if slot.len() < SLOT_BYTES || &slot[0..4] != MAGIC {
        return None;
    }
    let word = |at: usize| u64::from_le_bytes(slot[at..at + 8].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(slot[4..8].try_into().expect("4 bytes"));
    if crc != crc32fast::hash(&slot[8..SLOT_BYTES]) || word(24) == 0 {
        return None;
    }
    Some((
        word(8),
        RecoveryPoint {
            end: word(16),
            next_offset: word(24),
        },
    ))
}

/// The newest valid slot of the file's bytes.
fn decode(bytes: &[u8]) -> Option<(u64, RecoveryPoint)> {
    bytes
        .chunks(SLOT_BYTES)
        .take(2)
        .filter_map(decode_slot)
        .max_by_key(|&(seq, _)| seq)
}

/// Reads the recovery point under `dir`.
pub fn load(dir: &Path) -> io::Result<Loaded> {
    match std::fs::read(dir.join(RECOVERY_POINT_FILE)) {
        Ok(bytes) => Ok(decode(&bytes).map_or(Loaded::Unreadable, |(_, p)| Loaded::At(p))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Loaded::Absent),
        Err(e) => Err(e),
    }
}

/// Writes `point` as the whole file under `dir` (a new temporary file, synced, renamed over
/// the old, the directory synced): for `repair` and a log's first open, not the data path.
pub fn store(dir: &Path, point: RecoveryPoint) -> io::Result<()> {
    let tmp = dir.join(format!("{RECOVERY_POINT_FILE}.tmp"));
    let mut bytes = [0u8; 2 * SLOT_BYTES];
    bytes[..SLOT_BYTES].copy_from_slice(&encode_slot(1, point));
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all_at(&bytes, 0)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join(RECOVERY_POINT_FILE))?;
    crate::recovery::sync_dir(dir)
}

struct Shared {
    latest: RecoveryPoint,
    stop: bool,
}

/// The checkpoint thread: [`Checkpointer::publish`] hands it each commit's point, it keeps
/// the file at the latest one (at most one sync per [`DEFAULT_INTERVAL`]).
pub struct Checkpointer {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Stores `point` (durable on return) and starts the thread that keeps the file under
    /// `dir` current.
    pub fn start(dir: &Path, point: RecoveryPoint, interval: Duration) -> io::Result<Self> {
        store(dir, point)?;
        let path = dir.join(RECOVERY_POINT_FILE);
        let file = OpenOptions::new().write(true).open(&path)?;
        let shared = Arc::new((
            Mutex::new(Shared {
                latest: point,
                stop: false,
            }),
            Condvar::new(),
        ));
        let writer = SlotWriter {
            path,
            file,
            seq: 1,
            written: point,
            errors: sluice_core::log_limit::RateLimitedLog::default(),
        };
        let thread = std::thread::Builder::new()
            .name("audit-checkpoint".into())
            .spawn({
                let shared = shared.clone();
                move || writer.run(&shared, interval)
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// A commit ending at `point` is durable.
    pub fn publish(&self, point: RecoveryPoint) {
        let (lock, wake) = &*self.shared;
        lock.lock().expect("checkpoint lock").latest = point;
        wake.notify_one();
    }

    /// Writes the latest point and stops the thread.
    pub fn close(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let (lock, wake) = &*self.shared;
        lock.lock().expect("checkpoint lock").stop = true;
        wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

struct SlotWriter {
    path: PathBuf,
    file: File,
    seq: u64,
    written: RecoveryPoint,
    errors: sluice_core::log_limit::RateLimitedLog,
}

impl SlotWriter {
    fn run(mut self, shared: &(Mutex<Shared>, Condvar), interval: Duration) {
        let (lock, wake) = shared;
        loop {
            let (point, stop) = {
                let mut s = lock.lock().expect("checkpoint lock");
                while s.latest == self.written && !s.stop {
                    s = wake.wait(s).expect("checkpoint lock");
                }
                (s.latest, s.stop)
            };
            if point != self.written {
                self.write(point);
            }
            if stop {
                return;
            }
            std::thread::sleep(interval);
        }
    }

    /// Writes `point` into the slot not holding the newest one, and syncs it. A failure
    /// leaves the older point in force (still true, only further behind) and is logged.
    fn write(&mut self, point: RecoveryPoint) {
        let seq = self.seq + 1;
        let at = (seq % 2) * SLOT_BYTES as u64;
        let written = self
            .file
            .write_all_at(&encode_slot(seq, point), at)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.seq = seq;
                self.written = point;
            }
            Err(error) => {
                self.written = point; // retried with the next commit's point
                self.errors.log(|suppressed| {
                    tracing::warn!(path = %self.path.display(), %error, suppressed, "cannot write the audit log's recovery point; the last one written stays in force");
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(next_offset: u64) -> RecoveryPoint {
        RecoveryPoint {
            end: next_offset * 100,
            next_offset,
        }
    }

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_slot_leaves_the_other() {
        let mut bytes = [0u8; 2 * SLOT_BYTES];
        bytes[..SLOT_BYTES].copy_from_slice(&encode_slot(4, point(40)));
        bytes[SLOT_BYTES..].copy_from_slice(&encode_slot(5, point(50)));
        assert_eq!(decode(&bytes), Some((5, point(50))));
        bytes[SLOT_BYTES + 20] ^= 1;
        assert_eq!(
            decode(&bytes),
            Some((4, point(40))),
            "a bad slot is skipped"
        );
        bytes[3] ^= 1;
        assert_eq!(decode(&bytes), None);
        assert_eq!(decode(&[]), None);
    }

    #[test]
    fn absent_stored_published_and_closed() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Absent);
        let cp = Checkpointer::start(dir.path(), point(1), Duration::ZERO).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::At(point(1)));
        for n in 2..=50 {
            cp.publish(point(n));
        }
        cp.close();
        assert_eq!(load(dir.path()).unwrap(), Loaded::At(point(50)));
        assert_eq!(
            std::fs::metadata(dir.path().join(RECOVERY_POINT_FILE))
                .unwrap()
                .len(),
            2 * SLOT_BYTES as u64,
            "a fixed size: a sync never commits a new length"
        );
        std::fs::write(dir.path().join(RECOVERY_POINT_FILE), [7u8; 64]).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Loaded::Unreadable);
    }
}
