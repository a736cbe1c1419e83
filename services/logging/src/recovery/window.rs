//! The scan's reader: bytes of the log read forward through a sliding window, so memory
//! stays bounded by about one chunk plus the largest record, never by the file.

use std::io::{self, Read};

use crate::frame::{self, Decoded, HEADER_BYTES, MAX_RECORD_BYTES};

/// Bytes of a file, read forward through a window that holds at most about one chunk plus
/// one record.
pub(super) struct Window<R> {
    src: R,
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    start: u64,
    eof: bool,
}

/// Bytes read at a time; what lies before the position is dropped once it is this much.
const CHUNK: usize = 1 << 20;

impl<R: Read> Window<R> {
    pub(super) fn new(src: R) -> Self {
        Self {
            src,
            buf: Vec::with_capacity(CHUNK),
            start: 0,
            eof: false,
        }
    }

    /// Up to `n` bytes from `pos` (fewer only at the end of the file). `pos` never moves
    /// backwards between calls by more than what is still buffered.
    pub(super) fn bytes(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
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

    pub(super) fn frame_at(&mut self, pos: u64) -> io::Result<Decoded> {
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
