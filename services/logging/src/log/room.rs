//! Room ahead of the end: zeros written past the last record, a chunk at a time
//! (`--preallocate`), so a batch overwrites them and its `fdatasync` flushes data alone
//! instead of also committing a new file size (the numbers are in [`super`]'s docs).
//!
//! Room is only ever a speed-up: zeros that cannot be written leave the batch appending
//! without them, and recovery reads zeros that run to the end of the file as room, not
//! damage ([`crate::recovery`]).

use std::fs::File;
use std::io;
use std::path::Path;

use sluice_core::log_limit::RateLimitedLog;

/// Zeros written from this buffer, a piece at a time.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The zeros written ahead of the log's committed end.
pub(super) struct Room {
    /// The file's length: the committed end and the zeros written ahead of it.
    allocated: u64,
    /// Zeros to write ahead at a time; 0 writes none.
    preallocate: u64,
    /// Zeros that could not be written (a disk with less than a chunk free): logged once
    /// an interval, the batch appended without them.
    pub(super) errors: RateLimitedLog,
    /// Tests: writing zeros fails as on a disk with less than a chunk free.
    #[cfg(test)]
    pub(super) fails: bool,
}

impl Room {
    /// Room for a file `allocated` bytes long, set aside `preallocate` bytes at a time.
    pub(super) fn new(allocated: u64, preallocate: u64) -> Self {
        Self {
            allocated,
            preallocate,
            errors: RateLimitedLog::default(),
            #[cfg(test)]
            fails: false,
        }
    }

    /// Makes sure `len` bytes past `end` are zeros already written: if not, writes zeros up
    /// to the next multiple of `preallocate` past them. They reach the disk with the batch's
    /// `fdatasync`, which commits the new file size once for the whole chunk.
    ///
    /// Zeros that cannot be written (a disk with less than a chunk free) are given back and
    /// the batch appends without room, as with `--preallocate 0`: room ahead must never make
    /// an append fail that would fit. Only a failure to give them back is an error.
    pub(super) fn make(&mut self, file: &File, path: &Path, end: u64, len: u64) -> io::Result<()> {
        let needed = end + len;
        if self.preallocate == 0 || needed <= self.allocated {
            return Ok(());
        }
        let target = (needed / self.preallocate + 1) * self.preallocate;
        let before = self.allocated;
        if let Err(error) = self.write_zeros(file, target) {
            self.errors.log(|suppressed| {
                tracing::warn!(path = %path.display(), %error, suppressed, "cannot set room aside ahead of the audit log's end; appending without it");
            });
            file.set_len(before)?;
            self.allocated = before;
        }
        Ok(())
    }

    /// Writes zeros from `allocated` up to `target`.
    fn write_zeros(&mut self, file: &File, target: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        while self.allocated < target {
            #[cfg(test)]
            if self.fails {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            let n = (target - self.allocated).min(ZEROS.len() as u64) as usize;
            file.write_all_at(&ZEROS[..n], self.allocated)?;
            self.allocated += n as u64;
        }
        Ok(())
    }

    /// A batch was committed up to `end`. Appended without room (none asked for, or none
    /// could be set aside), the file now ends there, and the zeros ahead, if any, start there.
    pub(super) fn committed(&mut self, end: u64) {
        self.allocated = self.allocated.max(end);
    }

    /// A failed batch was rolled back by cutting the file at `end`: the room ahead went with
    /// it, and the next batch sets it aside again.
    pub(super) fn cut(&mut self, end: u64) {
        self.allocated = end;
    }
}
