//! Reading an audit log back: the scan that rebuilds the index on start, and the operator's
//! `check` and `repair`.
//!
//! The scan walks the file frame by frame, expecting offsets 1, 2, 3, … (a gap marker left
//! by `repair` skips the offsets it names). At the first frame that is not valid or not in
//! sequence it looks for the next valid, in-sequence frame further on:
//!
//! - **none**: the damage runs to the end of the file. Only the last write can be torn by a
//!   crash, and a record is acknowledged only after its write was fsync'ed — but rot in the
//!   last acknowledged record looks the same. The [recovery point](crate::recovery_point)
//!   tells them apart: if the damage starts at an offset the point says was durable, it is
//!   damage like any other (its region runs to the end of the file; its lost offsets run
//!   through the point's last). Only damage starting past the point is a *torn tail*, never
//!   acknowledged, which opening the log cuts. Without a point (a log from before they
//!   existed) a tail is cut as before, but nothing claims it was never acknowledged.
//!   A log that simply ends before its recovery point has lost acknowledged records too.
//! - **one**: valid records follow the damage, so it is not a torn write — a flipped bit,
//!   a zeroed page, an overwritten record. Records after it were acknowledged and the ones
//!   inside it may have been. Opening refuses ([`crate::log::AuditError::Damaged`]: exit
//!   code 65); `sluice-logging check` reports the regions; `sluice-logging repair` moves each
//!   one to a quarantine file beside the log and writes a gap marker in its place, so every
//!   valid record keeps its offset and no offset is ever handed out twice.
//!
//! Zeros that run from the last record to the end of the file are neither: they are room the
//! writer set aside ahead of its appends ([`crate::log`]: `--preallocate`), counted in
//! [`Scan::preallocated`]. A crash inside them can only have left a batch that was never
//! acknowledged (it is acknowledged after its `fdatasync`), so all-zero is free space and
//! anything else there is a torn tail as before.
//!
//! The scan reads through a sliding window (`window`), so memory stays bounded by the largest
//! record, not the file.

mod window;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sluice_proto::pb::AuditEntry;

use self::window::Window;
use crate::frame::{self, Decoded};
use crate::recovery_point::{self, Loaded, RecoveryPoint};

/// The log file's name under the data directory.
pub const LOG_FILE: &str = "audit.log";
/// Quarantine files are named `audit.log.quarantine.<start>-<end>` (byte positions in the
/// log before the repair).
pub const QUARANTINE_PREFIX: &str = "audit.log.quarantine";

/// A damaged region followed by valid records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte positions `start..end` in the file.
    pub start: u64,
    pub end: u64,
    /// Offsets whose records were in the region: `lost_from..=lost_through` (empty when
    /// `lost_through < lost_from`: bytes were damaged but no offset is missing).
    pub lost_from: u64,
    pub lost_through: u64,
    /// What was wrong with the first frame of the region.
    pub reason: &'static str,
    /// Valid records follow the region; otherwise it runs to the end of the file, below
    /// the recovery point (rot in acknowledged records, or records missing).
    pub records_follow: bool,
}

/// Damage that runs to the end of the file, past the recovery point: a torn last write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub start: u64,
    pub len: u64,
    /// The offset the next record gets.
    pub offset: u64,
    pub reason: &'static str,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// File length.
    pub len: u64,
    /// Valid records (gap markers not counted).
    pub records: u64,
    /// Offsets covered by gap markers.
    pub gap_offsets: u64,
    /// The next offset to hand out.
    pub next_offset: u64,
    pub damage: Vec<Damage>,
    pub torn_tail: Option<TornTail>,
    /// Zero bytes from the last record to the end of the file: room set aside for appends.
    pub preallocated: u64,
    /// The recovery point the scan went by (`None`: none known, so a torn tail cannot be
    /// proven never acknowledged).
    pub recovery_point: Option<RecoveryPoint>,
}

impl Scan {
    /// Where valid data ends: the start of a torn tail, else of the room set aside, else
    /// the file length.
    pub fn valid_end(&self) -> u64 {
        self.torn_tail
            .as_ref()
            .map_or(self.len - self.preallocated, |t| t.start)
    }
}

/// True when `entry` may sit where offset `expected` is due.
fn in_sequence(entry: &AuditEntry, expected: u64) -> bool {
    entry.offset == expected
        && if frame::is_gap(entry) {
            entry.gap_through >= entry.offset
        } else {
            !entry.id.is_empty()
        }
}

/// The offset due after `entry`.
fn next_after(entry: &AuditEntry) -> u64 {
    if frame::is_gap(entry) {
        entry.gap_through + 1
    } else {
        entry.offset + 1
    }
}

/// Scans a log of `len` bytes from `src`, calling `on_entry(entry, position)` for every valid
/// record and gap marker in order; records below `point` were durable, so bad bytes where
/// they are due are damage, never a torn tail. Reads only; never panics on any content.
pub fn scan(
    src: impl Read,
    len: u64,
    point: Option<RecoveryPoint>,
    mut on_entry: impl FnMut(&AuditEntry, u64),
) -> io::Result<Scan> {
    let mut window = Window::new(src);
    let mut out = Scan {
        len,
        next_offset: 1,
        recovery_point: point,
        ..Scan::default()
    };
    let durable_through = point.map_or(0, |p| p.durable_through());
    // Damage from `pos` to the end of the file, owning offsets up to the recovery point's.
    let below_point = |out: &mut Scan, pos: u64, reason: &'static str| {
        out.damage.push(Damage {
            start: pos,
            end: len,
            lost_from: out.next_offset,
            lost_through: durable_through,
            reason,
            records_follow: false,
        });
        out.next_offset = durable_through + 1;
    };
    let mut pos = 0u64;
    loop {
        let reason = match window.frame_at(pos)? {
            Decoded::End if out.next_offset <= durable_through => {
                below_point(
                    &mut out,
                    pos,
                    "the log ends before its recovery point: durable records are missing",
                );
                break;
            }
            Decoded::End => break,
            Decoded::Frame { entry, size } if in_sequence(&entry, out.next_offset) => {
                on_entry(&entry, pos);
                if frame::is_gap(&entry) {
                    out.gap_offsets += entry.gap_through - entry.offset + 1;
                } else {
                    out.records += 1;
                }
                out.next_offset = next_after(&entry);
                pos += size as u64;
                continue;
            }
            Decoded::Frame { .. } => "record offset out of sequence",
            Decoded::Bad(reason) => reason,
        };
        match resync(&mut window, pos, len, out.next_offset)? {
            Resync::Zeros | Resync::Nothing if out.next_offset <= durable_through => {
                below_point(&mut out, pos, reason);
                break;
            }
            Resync::Zeros => {
                out.preallocated = len - pos;
                break;
            }
            Resync::Nothing => {
                out.torn_tail = Some(TornTail {
                    start: pos,
                    len: len.saturating_sub(pos),
                    offset: out.next_offset,
                    reason,
                });
                break;
            }
            Resync::At(next, offset) => {
                out.damage.push(Damage {
                    start: pos,
                    end: next,
                    lost_from: out.next_offset,
                    lost_through: offset - 1,
                    reason,
                    records_follow: true,
                });
                out.next_offset = offset;
                pos = next;
            }
        }
    }
    Ok(out)
}

/// What follows a frame that is not valid where it sits.
enum Resync {
    /// A valid frame at this position, with this offset: the bytes before it are damage.
    At(u64, u64),
    /// Only zeros to the end of the file: room set aside for appends.
    Zeros,
    /// No valid frame to the end of the file, and not only zeros: a torn tail.
    Nothing,
}

/// Looks past the invalid frame at `at` for the first valid frame whose offset is at least
/// `expected`, noting whether every byte on the way is zero.
fn resync(window: &mut Window<impl Read>, at: u64, len: u64, expected: u64) -> io::Result<Resync> {
    let mut zeros = true;
    for pos in at..len {
        if zeros && window.bytes(pos, 1)?.first().is_some_and(|&b| b != 0) {
            zeros = false;
        }
        if pos > at
            && let Decoded::Frame { entry, .. } = window.frame_at(pos)?
            && entry.offset >= expected
            && in_sequence(&entry, entry.offset)
        {
            return Ok(Resync::At(pos, entry.offset));
        }
    }
    Ok(if zeros {
        Resync::Zeros
    } else {
        Resync::Nothing
    })
}

/// The recovery point file holds no valid point: the start refuses, as for damage.
#[derive(Debug, thiserror::Error)]
#[error(
    "{path}: unreadable (neither slot holds a valid recovery point), so a bad last record cannot be told from a torn write; nothing was changed. `sluice-logging repair --data-dir {dir}` quarantines anything past the last valid record and writes a new one"
)]
pub struct PointUnreadable {
    pub path: PathBuf,
    pub dir: PathBuf,
}

/// Failures reading a data directory: I/O, naming the file that failed, or an unreadable
/// recovery point.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    PointUnreadable(#[from] PointUnreadable),
}

impl ScanError {
    fn io(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ScanError {
        let path = path.to_path_buf();
        move |source| ScanError::Io { what, path, source }
    }
}

/// The recovery point under `dir`: `Ok(None)` when there is none (a new log, or one from
/// before recovery points).
pub fn recovery_point(dir: &Path) -> Result<Option<RecoveryPoint>, ScanError> {
    let path = dir.join(recovery_point::RECOVERY_POINT_FILE);
    match recovery_point::load(dir).map_err(ScanError::io("read", &path))? {
        Loaded::Absent => Ok(None),
        Loaded::At(p) => Ok(Some(p)),
        Loaded::Unreadable => Err(PointUnreadable {
            path,
            dir: dir.to_path_buf(),
        }
        .into()),
    }
}

/// Scans the log under `dir` without changing anything (`sluice-logging check`).
pub fn check(dir: &Path) -> Result<Scan, ScanError> {
    check_with(dir, recovery_point(dir)?)
}

fn check_with(dir: &Path, point: Option<RecoveryPoint>) -> Result<Scan, ScanError> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path).map_err(ScanError::io("read", &path))?;
    let len = file.metadata().map_err(ScanError::io("read", &path))?.len();
    scan(io::BufReader::new(file), len, point, |_, _| {}).map_err(ScanError::io("read", &path))
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub before: Scan,
    /// Quarantine files written, one per damaged region (and one for a torn tail).
    pub quarantined: Vec<PathBuf>,
    /// The recovery point was unreadable and has been written anew.
    pub new_recovery_point: bool,
}

/// Rewrites the log under `dir` without its damage (`sluice-logging repair`): valid records
/// are copied byte for byte, each damaged region goes to a quarantine file and a gap marker
/// takes its offsets, a torn tail is quarantined and cut. The new log is fsync'ed and
/// renamed over the old one, and the directory fsync'ed, so a crash leaves one or the other.
/// Then the recovery point is set to the repaired log's end. An unreadable recovery point
/// proves nothing: the repair then quarantines whatever follows the last valid record.
pub fn repair(dir: &Path) -> Result<Repaired, ScanError> {
    let path = dir.join(LOG_FILE);
    let (point, point_unreadable) = match recovery_point(dir) {
        Ok(point) => (point, false),
        Err(ScanError::PointUnreadable(_)) => (None, true),
        Err(e) => return Err(e),
    };
    let before = check_with(dir, point)?;
    let next_point = |len: u64| RecoveryPoint {
        end: len,
        next_offset: before.next_offset,
    };
    if before.damage.is_empty() && before.torn_tail.is_none() {
        if point_unreadable {
            recovery_point::store(dir, next_point(before.valid_end())).map_err(ScanError::io(
                "write",
                &dir.join(recovery_point::RECOVERY_POINT_FILE),
            ))?;
        }
        return Ok(Repaired {
            before,
            quarantined: Vec::new(),
            new_recovery_point: point_unreadable,
        });
    }
    let bytes = std::fs::read(&path).map_err(ScanError::io("read", &path))?;
    let mut quarantined = Vec::new();
    let mut quarantine = |start: u64, end: u64| -> Result<(), ScanError> {
        let q = dir.join(format!("{QUARANTINE_PREFIX}.{start}-{end}"));
        let write = || -> io::Result<()> {
            let mut f = File::create(&q)?;
            f.write_all(&bytes[start as usize..end as usize])?;
            f.sync_all()
        };
        write().map_err(ScanError::io("write the quarantine file", &q))?;
        quarantined.push(q);
        Ok(())
    };
    let mut out = Vec::with_capacity(bytes.len());
    let mut copied = 0u64;
    for d in &before.damage {
        out.extend_from_slice(&bytes[copied as usize..d.start as usize]);
        quarantine(d.start, d.end)?;
        if d.lost_through >= d.lost_from {
            let gap = AuditEntry {
                offset: d.lost_from,
                gap_through: d.lost_through,
                ..Default::default()
            };
            frame::encode(&gap, &mut out).expect("a gap marker is small");
        }
        copied = d.end;
    }
    let valid_end = before.valid_end();
    out.extend_from_slice(&bytes[copied as usize..valid_end.max(copied) as usize]);
    if let Some(t) = &before.torn_tail {
        quarantine(t.start, before.len)?;
    }
    let tmp = dir.join(format!("{LOG_FILE}.repair-tmp"));
    let write = || -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()
    };
    write().map_err(ScanError::io("write", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(ScanError::io("replace", &path))?;
    sync_dir(dir).map_err(ScanError::io("sync", dir))?;
    // Offsets are never renumbered, so the old point stays true until this one lands.
    recovery_point::store(dir, next_point(out.len() as u64)).map_err(ScanError::io(
        "write",
        &dir.join(recovery_point::RECOVERY_POINT_FILE),
    ))?;
    Ok(Repaired {
        before,
        quarantined,
        new_recovery_point: point_unreadable,
    })
}

/// fsyncs a directory, so a file created or renamed in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests;
