//! Where each record sits in the file, and reading records back.
//!
//! The read index maps each offset to its record's file position. It is rebuilt by the scan
//! on open ([`recover`], which rebuilds the writer's id index with it), extended by the
//! writer only after a batch's `fdatasync` (so a reader never sees a record that is not
//! durable), and read under a shared lock by [`AuditLog::read`], which then reads the file
//! through a handle of its own, never the writer's.

use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom};

use sluice_proto::pb::AuditEntry;

use super::{AuditError, AuditLog, MAX_RECORD_BYTES};
use crate::frame::{self, Decoded};
use crate::id_index::IdIndex;
use crate::recovery::{self, Scan};
use crate::recovery_point::RecoveryPoint;

/// Where each offset's record sits in the file, shared with readers.
#[derive(Default)]
pub(super) struct ReadIndex {
    /// File position of the record with offset `i + 1`; [`GAP`] for a quarantined offset.
    positions: Vec<u64>,
    /// Records in the log (gap offsets not counted).
    pub(super) records: u64,
}

/// Position of an offset whose record `repair` quarantined.
const GAP: u64 = u64::MAX;

impl ReadIndex {
    /// Adds the records of a commit, at `positions`, once they are durable.
    pub(super) fn extend(&mut self, positions: &[u64]) {
        self.positions.extend_from_slice(positions);
        self.records += positions.len() as u64;
    }
}

impl AuditLog {
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
pub(super) fn recover(
    file: &mut File,
    point: Option<RecoveryPoint>,
) -> io::Result<(Scan, IdIndex, ReadIndex)> {
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(0))?;
    let mut by_id = IdIndex::new();
    let mut index = ReadIndex::default();
    let scan = recovery::scan(BufReader::new(&mut *file), len, point, |entry, pos| {
        // Offsets lost to damage (`AuditLog::open` refuses it) or quarantined map to GAP.
        index.positions.resize(
            (entry.offset - 1).max(index.positions.len() as u64) as usize,
            GAP,
        );
        if frame::is_gap(entry) {
            index.positions.resize(entry.gap_through as usize, GAP);
        } else {
            index.positions.push(pos);
            index.records += 1;
            by_id.insert(
                entry.id.clone(),
                (entry.offset, frame::digest_of(entry), entry.hlc),
            );
        }
    })?;
    Ok((scan, by_id, index))
}
