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
//! The scan reads through a sliding window, so memory stays bounded by the largest record,
//! not the file.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sluice_proto::pb::AuditEntry;

use crate::frame::{self, Decoded, HEADER_BYTES, MAX_RECORD_BYTES};
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

/// Bytes of a file, read forward through a window that holds at most about one chunk plus
/// one record.
struct Window<R> {
    src: R,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    start: u64,
    eof: bool,
}

const CHUNK: usize = 1 << 20;

impl<R: Read> Window<R> {
    fn new(src: R) -> Self {
        Self {
            src,
            buf: Vec::with_capacity(CHUNK),
            start: 0,
            eof: false,
        }
    }

    /// Up to `n` bytes from `pos` (fewer only at the end of the file). `pos` never moves
    /// backwards between calls by more than what is still buffered.
    fn bytes(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        debug_assert!(pos >= self.start);
        // Drop what lies before `pos` once it is a chunk's worth.
        let skip = (pos - self.start) as usize;
        if skip >= CHUNK && skip <= self.buf.len() {
            self.buf.drain(..skip);
            self.start = pos;
        }
        let from = (pos - self.start) as usize;
        while self.buf.len() < from + n && !self.eof {
            let have = self.buf.len();
            let want = (from + n - have).max(CHUNK);
            self.buf.resize(have + want, 0);
            let got = read_full(&mut self.src, &mut self.buf[have..])?;
            self.buf.truncate(have + got);
            if got < want {
                self.eof = true;
            }
        }
        let end = (from + n).min(self.buf.len());
        Ok(&self.buf[from.min(end)..end])
    }

    fn frame_at(&mut self, pos: u64) -> io::Result<Decoded> {
        let header = self.bytes(pos, HEADER_BYTES)?;
        if header.len() < HEADER_BYTES {
            return Ok(frame::decode(header));
        }
        let len = u32::from_le_bytes(header[0..4].try_into().expect("4 bytes"));
        let size = HEADER_BYTES + len.min(MAX_RECORD_BYTES + 1) as usize;
        Ok(frame::decode(self.bytes(pos, size)?))
    }
}

fn read_full(src: &mut impl Read, mut buf: &mut [u8]) -> io::Result<usize> {
    let mut total = 0;
    while !buf.is_empty() {
        match src.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                total += n;
                buf = &mut buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
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
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(offset: u64) -> AuditEntry {
        AuditEntry {
            offset,
            id: format!("tx-{offset}"),
            account: "acct".into(),
            amount_minor: 100 + offset as i64,
            currency: "EUR".into(),
            merchant: "shop".into(),
            ..Default::default()
        }
    }

    /// A log of `n` records and each record's start position.
    fn log(n: u64) -> (Vec<u8>, Vec<u64>) {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for o in 1..=n {
            starts.push(buf.len() as u64);
            frame::encode(&entry(o), &mut buf).unwrap();
        }
        (buf, starts)
    }

    fn scan_bytes(bytes: &[u8]) -> (Scan, Vec<u64>) {
        let mut seen = Vec::new();
        let s = scan(bytes, bytes.len() as u64, None, |e, _| seen.push(e.offset)).unwrap();
        (s, seen)
    }

    #[test]
    fn clean_log() {
        let (bytes, _) = log(100);
        let (s, seen) = scan_bytes(&bytes);
        assert_eq!((s.records, s.next_offset), (100, 101));
        assert!(s.damage.is_empty() && s.torn_tail.is_none());
        assert_eq!(seen, (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_tail_is_only_the_end() {
        let (mut bytes, starts) = log(10);
        bytes.truncate(starts[9] as usize + 5);
        let (s, _) = scan_bytes(&bytes);
        assert_eq!(s.records, 9);
        assert!(s.damage.is_empty());
        let t = s.torn_tail.unwrap();
        assert_eq!((t.start, t.offset), (starts[9], 10));
    }

    #[test]
    fn zeros_to_the_end_are_room_set_aside_not_damage() {
        let (mut bytes, _) = log(100);
        let records = bytes.len() as u64;
        bytes.resize(bytes.len() + 256 * 1024, 0);
        let (s, seen) = scan_bytes(&bytes);
        assert_eq!((s.records, s.next_offset), (100, 101));
        assert!(s.damage.is_empty() && s.torn_tail.is_none(), "{s:?}");
        assert_eq!(s.preallocated, 256 * 1024);
        assert_eq!(s.valid_end(), records);
        assert_eq!(seen, (1..=100).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_write_into_the_room_set_aside_is_a_torn_tail() {
        // The last batch got half of its bytes into the zeros before the crash.
        let (mut bytes, starts) = log(10);
        let torn = starts[9] as usize + 5;
        bytes.truncate(torn);
        bytes.resize(torn + 4096, 0);
        let (s, _) = scan_bytes(&bytes);
        assert_eq!(s.records, 9);
        assert_eq!(s.preallocated, 0);
        assert_eq!(s.valid_end(), starts[9]);
        let t = s.torn_tail.unwrap();
        assert_eq!((t.start, t.offset, t.len), (starts[9], 10, 4096 + 5));
    }

    #[test]
    fn zeros_followed_by_records_are_damage_even_with_room_after_them() {
        // A zeroed page mid-file is not room set aside: records follow it.
        let (mut bytes, starts) = log(500);
        let (from, to) = (starts[100] as usize, starts[120] as usize);
        bytes[from..to].fill(0);
        bytes.resize(bytes.len() + 4096, 0);
        let (s, _) = scan_bytes(&bytes);
        assert_eq!(s.damage.len(), 1, "{s:?}");
        assert_eq!(
            (s.damage[0].start, s.damage[0].end),
            (starts[100], starts[120])
        );
        assert_eq!((s.records, s.preallocated), (480, 4096));
        assert!(s.torn_tail.is_none());
    }

    #[test]
    fn a_flipped_byte_mid_file_is_damage_not_a_tail() {
        let (mut bytes, starts) = log(6000);
        bytes[starts[3000] as usize + 12] ^= 0x01;
        let (s, seen) = scan_bytes(&bytes);
        assert!(s.torn_tail.is_none());
        assert_eq!(
            s.damage,
            vec![Damage {
                start: starts[3000],
                end: starts[3001],
                lost_from: 3001,
                lost_through: 3001,
                reason: "CRC mismatch",
                records_follow: true,
            }]
        );
        assert_eq!(s.records, 5999);
        assert_eq!(s.next_offset, 6001);
        assert!(!seen.contains(&3001) && seen.contains(&3002));
    }

    #[test]
    fn a_zeroed_page_and_a_damaged_first_record() {
        let (mut bytes, starts) = log(500);
        bytes[8192..12288].fill(0);
        bytes[3] ^= 0xff;
        let (s, _) = scan_bytes(&bytes);
        assert_eq!(s.damage.len(), 2);
        assert_eq!((s.damage[0].start, s.damage[0].lost_from), (0, 1));
        let first_after = starts.iter().position(|&p| p >= 12288).unwrap() as u64 + 1;
        assert_eq!(s.damage[1].lost_through, first_after - 1);
        assert!(s.torn_tail.is_none());
    }

    /// The point after record `n` of a log whose records start at `starts`.
    fn point_after(n: u64, bytes: &[u8], starts: &[u64]) -> RecoveryPoint {
        RecoveryPoint {
            end: starts
                .get(n as usize)
                .copied()
                .unwrap_or(bytes.len() as u64),
            next_offset: n + 1,
        }
    }

    fn scan_by(bytes: &[u8], point: RecoveryPoint) -> Scan {
        scan(bytes, bytes.len() as u64, Some(point), |_, _| {}).unwrap()
    }

    #[test]
    fn a_flipped_bit_in_the_last_durable_record_is_damage_not_a_torn_tail() {
        let (mut bytes, starts) = log(10);
        let point = point_after(10, &bytes, &starts);
        bytes[starts[9] as usize + 12] ^= 0x01;
        // Without a point it looks torn, and is cut: what the recovery point is for.
        assert!(scan_bytes(&bytes).0.torn_tail.is_some());
        let s = scan_by(&bytes, point);
        assert!(s.torn_tail.is_none(), "{s:?}");
        assert_eq!(
            s.damage,
            vec![Damage {
                start: starts[9],
                end: bytes.len() as u64,
                lost_from: 10,
                lost_through: 10,
                reason: "CRC mismatch",
                records_follow: false,
            }]
        );
        assert_eq!(
            (s.records, s.next_offset),
            (9, 11),
            "offset 10 is never reused"
        );
        // The same rot with room set aside after it, and with half a batch torn after it.
        let mut roomy = bytes.clone();
        roomy.resize(bytes.len() + 4096, 0);
        assert_eq!(scan_by(&roomy, point).damage.len(), 1);
        let mut torn_after = bytes.clone();
        torn_after.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
        let s = scan_by(&torn_after, point);
        assert_eq!(
            (s.damage.len(), s.damage[0].end),
            (1, torn_after.len() as u64)
        );
    }

    #[test]
    fn a_write_torn_past_the_recovery_point_is_still_a_torn_tail() {
        let (mut bytes, starts) = log(10);
        let point = point_after(9, &bytes, &starts);
        bytes.truncate(starts[9] as usize + 5);
        let s = scan_by(&bytes, point);
        assert!(s.damage.is_empty(), "{s:?}");
        let t = s.torn_tail.unwrap();
        assert_eq!((t.start, t.offset), (starts[9], 10));
        // Room set aside past the point is room.
        let (mut roomy, starts) = log(10);
        roomy.resize(roomy.len() + 4096, 0);
        let s = scan_by(&roomy, point_after(10, &roomy, &starts));
        assert!(s.damage.is_empty() && s.torn_tail.is_none());
        assert_eq!(s.preallocated, 4096);
    }

    #[test]
    fn a_log_that_ends_before_its_recovery_point_has_lost_durable_records() {
        let (bytes, starts) = log(10);
        let point = point_after(10, &bytes, &starts);
        let cut = &bytes[..starts[7] as usize];
        let s = scan_by(cut, point);
        assert_eq!(s.damage.len(), 1, "{s:?}");
        let d = &s.damage[0];
        assert_eq!(
            (d.start, d.end, d.lost_from, d.lost_through),
            (starts[7], starts[7], 8, 10)
        );
        assert!(!d.records_follow);
        assert_eq!(s.next_offset, 11);
    }

    #[test]
    fn repair_quarantines_a_rotten_last_record_behind_a_gap_marker() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = log(10);
        let point = point_after(10, &bytes, &starts);
        bytes[starts[9] as usize + 12] ^= 0x01;
        std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
        recovery_point::store(dir.path(), point).unwrap();
        let before = check(dir.path()).unwrap();
        assert_eq!(before.damage.len(), 1);
        let r = repair(dir.path()).unwrap();
        assert_eq!(r.quarantined.len(), 1);
        assert_eq!(
            std::fs::read(&r.quarantined[0]).unwrap(),
            &bytes[starts[9] as usize..]
        );
        let after = check(dir.path()).unwrap();
        assert!(
            after.damage.is_empty() && after.torn_tail.is_none(),
            "{after:?}"
        );
        assert_eq!(
            (after.records, after.gap_offsets, after.next_offset),
            (9, 1, 11)
        );
        assert_eq!(
            recovery_point(dir.path()).unwrap().map(|p| p.next_offset),
            Some(11)
        );
    }

    #[test]
    fn an_unreadable_recovery_point_refuses_and_repair_writes_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let (bytes, _) = log(5);
        std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
        std::fs::write(
            dir.path().join(recovery_point::RECOVERY_POINT_FILE),
            [1u8; 64],
        )
        .unwrap();
        assert!(matches!(
            check(dir.path()),
            Err(ScanError::PointUnreadable(_))
        ));
        let r = repair(dir.path()).unwrap();
        assert!(r.new_recovery_point && r.quarantined.is_empty());
        assert_eq!(
            recovery_point(dir.path()).unwrap().map(|p| p.next_offset),
            Some(6)
        );
    }

    #[test]
    fn repair_names_the_path_it_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = log(10);
        bytes[starts[4] as usize + 12] ^= 0x01;
        std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
        // Where the quarantine file would go, a directory already stands.
        let blocked = dir
            .path()
            .join(format!("{QUARANTINE_PREFIX}.{}-{}", starts[4], starts[5]));
        std::fs::create_dir(&blocked).unwrap();
        let e = repair(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains(&blocked.display().to_string()) && e.contains("quarantine"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(dir.path().join(LOG_FILE)).unwrap(),
            bytes,
            "unchanged"
        );
    }

    #[test]
    fn repair_keeps_offsets_and_quarantines() {
        let dir = tempfile::tempdir().unwrap();
        let (mut bytes, starts) = log(50);
        let damaged = starts[20] as usize..starts[23] as usize;
        bytes[damaged.start + 9..damaged.end - 2].fill(0xaa);
        bytes.extend_from_slice(&[1, 2, 3]); // and a torn tail
        std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
        let r = repair(dir.path()).unwrap();
        assert_eq!(r.before.damage.len(), 1);
        assert_eq!(r.quarantined.len(), 2);
        let q = std::fs::read(&r.quarantined[0]).unwrap();
        assert_eq!(
            q,
            bytes[r.before.damage[0].start as usize..r.before.damage[0].end as usize]
        );
        let after = check(dir.path()).unwrap();
        assert!(after.damage.is_empty() && after.torn_tail.is_none());
        let d = &r.before.damage[0];
        assert_eq!((d.lost_from, d.lost_through), (21, 23));
        let lost = d.lost_through - d.lost_from + 1;
        assert_eq!(after.records, 50 - lost);
        assert_eq!(after.gap_offsets, lost);
        assert_eq!(after.next_offset, 51, "offsets are never reused");
        // Repairing a clean log changes nothing.
        assert!(repair(dir.path()).unwrap().quarantined.is_empty());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever is done to the bytes, the scan never panics, every record it reports is
        /// one that was written, and every record before the first damaged byte and after
        /// the last one is found: damage never swallows a record it did not touch.
        #[test]
        fn arbitrary_corruption(
            n in 1u64..60,
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 1usize..300), 1..4),
            truncate in any::<Option<prop::sample::Index>>(),
        ) {
            let (mut bytes, starts) = log(n);
            let original = bytes.clone();
            let mut lo = usize::MAX;
            let mut hi = 0;
            for (at, value, span) in &edits {
                let i = at.index(bytes.len());
                let end = (i + span).min(bytes.len());
                for b in &mut bytes[i..end] { *b = b.wrapping_add(*value | 1); }
                lo = lo.min(i);
                hi = hi.max(end);
            }
            if let Some(t) = truncate {
                let cut = t.index(bytes.len() + 1);
                bytes.truncate(cut);
                hi = usize::MAX;
                lo = lo.min(cut);
            }
            let mut seen = Vec::new();
            let s = scan(bytes.as_slice(), bytes.len() as u64, None, |e, _| seen.push(e.clone())).unwrap();
            for e in &seen {
                prop_assert_eq!(e, &entry(e.offset));
            }
            for (i, &start) in starts.iter().enumerate() {
                let end = starts.get(i + 1).map_or(original.len(), |&p| p as usize);
                let untouched = end <= lo || (start as usize >= hi && end <= bytes.len());
                if untouched {
                    prop_assert!(seen.iter().any(|e| e.offset == i as u64 + 1), "record {} lost", i + 1);
                }
            }
            // Nothing reported twice, in order.
            prop_assert!(seen.windows(2).all(|w| w[0].offset < w[1].offset));
            prop_assert!(s.next_offset > seen.last().map_or(0, |e| e.offset));
        }

        /// With a recovery point, whatever is done to the bytes: nothing at or below the
        /// point is ever cut as a torn tail, and no offset up to it is handed out again.
        #[test]
        fn nothing_durable_is_ever_cut_as_torn(
            n in 1u64..40,
            durable in any::<prop::sample::Index>(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 1usize..100), 0..3),
            truncate in any::<Option<prop::sample::Index>>(),
        ) {
            let (mut bytes, starts) = log(n);
            let point = point_after(durable.index(n as usize + 1) as u64, &bytes, &starts);
            for (at, value, span) in &edits {
                let i = at.index(bytes.len());
                let end = (i + span).min(bytes.len());
                for b in &mut bytes[i..end] { *b = b.wrapping_add(*value | 1); }
            }
            if let Some(t) = truncate {
                bytes.truncate(t.index(bytes.len() + 1));
            }
            let s = scan_by(&bytes, point);
            if let Some(t) = &s.torn_tail {
                prop_assert!(t.offset > point.durable_through(), "{t:?} cut below {point:?}");
            }
            prop_assert!(s.next_offset > point.durable_through());
        }
    }
}
