//! Reading an audit log back: the scan that rebuilds the index on start, and the operator's
//! `check` and `repair`.
//!
//! The scan walks the file frame by frame, expecting offsets 1, 2, 3, … (a gap marker left
//! by `repair` skips the offsets it names). At the first frame that is not valid or not in
//! sequence it looks for the next valid, in-sequence frame further on:
//!
//! - **none**: the damage runs to the end of the file. Only the last write can be torn by a
//!   crash, and a record is acknowledged only after its write was fsync'ed, so nothing cut
//!   here was ever acknowledged: a *torn tail*, which opening the log cuts.
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
}

/// Damage that runs to the end of the file: a torn last write.
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
/// record and gap marker in order. Reads only; never panics on any content.
pub fn scan(
    src: impl Read,
    len: u64,
    mut on_entry: impl FnMut(&AuditEntry, u64),
) -> io::Result<Scan> {
    let mut window = Window::new(src);
    let mut out = Scan {
        len,
        next_offset: 1,
        ..Scan::default()
    };
    let mut pos = 0u64;
    loop {
        let reason = match window.frame_at(pos)? {
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

/// Scans the log under `dir` without changing anything (`sluice-logging check`).
pub fn check(dir: &Path) -> io::Result<Scan> {
    let path = dir.join(LOG_FILE);
    let file = File::open(&path)?;
    let len = file.metadata()?.len();
    scan(io::BufReader::new(file), len, |_, _| {})
}

/// What a repair did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repaired {
    pub before: Scan,
    /// Quarantine files written, one per damaged region (and one for a torn tail).
    pub quarantined: Vec<PathBuf>,
}

/// Rewrites the log under `dir` without its damage (`sluice-logging repair`): valid records
/// are copied byte for byte, each damaged region goes to a quarantine file and a gap marker
/// takes its offsets, a torn tail is quarantined and cut. The new log is fsync'ed and
/// renamed over the old one, and the directory fsync'ed, so a crash leaves one or the other.
pub fn repair(dir: &Path) -> io::Result<Repaired> {
    let path = dir.join(LOG_FILE);
    let before = check(dir)?;
    if before.damage.is_empty() && before.torn_tail.is_none() {
        return Ok(Repaired {
            before,
            quarantined: Vec::new(),
        });
    }
    let bytes = std::fs::read(&path)?;
    let mut quarantined = Vec::new();
    let mut quarantine = |start: u64, end: u64| -> io::Result<()> {
        let q = dir.join(format!("{QUARANTINE_PREFIX}.{start}-{end}"));
        let mut f = File::create(&q)?;
        f.write_all(&bytes[start as usize..end as usize])?;
        f.sync_all()?;
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
    out.extend_from_slice(&bytes[copied as usize..valid_end as usize]);
    if let Some(t) = &before.torn_tail {
        quarantine(t.start, before.len)?;
    }
    let tmp = dir.join(format!("{LOG_FILE}.repair-tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok(Repaired {
        before,
        quarantined,
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
        let s = scan(bytes, bytes.len() as u64, |e, _| seen.push(e.offset)).unwrap();
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
                reason: "CRC mismatch"
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
            let s = scan(bytes.as_slice(), bytes.len() as u64, |e, _| seen.push(e.clone())).unwrap();
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
    }
}
