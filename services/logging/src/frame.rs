//! One audit record on disk: its frame, its payload digest, and nothing else.
//!
//! ```text
//! u32 LE payload length | u32 LE CRC-32 of payload | payload (protobuf mesh.v1.AuditEntry)
//! ```
//!
//! The frame is the unit of damage detection: a frame is valid when its length is in range,
//! all of its bytes are present, the CRC matches and the payload decodes. Whether a valid
//! frame is in the right place (its offset follows the one before) is the recovery scan's
//! business ([`crate::recovery`]).

use prost::Message;
use sha2::{Digest, Sha256};
use sluice_proto::pb::AuditEntry;

/// Records larger than this are refused when written, and are damage when read.
pub const MAX_RECORD_BYTES: u32 = 64 * 1024;
/// Length + CRC.
pub const HEADER_BYTES: usize = 8;
/// Bytes in a payload digest (SHA-256).
pub const DIGEST_BYTES: usize = 32;

/// A payload digest: what makes two appends of one id the same transaction.
pub type PayloadDigest = [u8; DIGEST_BYTES];

/// SHA-256 over the payload fields (account, amount_minor, currency, merchant), each
/// length-prefixed so no two different payloads share an encoding. SHA-256 rather than a
/// fast 64-bit hash because a collision would hand one client's offset to another.
pub fn payload_digest(
    account: &str,
    amount_minor: i64,
    currency: &str,
    merchant: &str,
) -> PayloadDigest {
    let mut h = Sha256::new();
    for field in [account.as_bytes(), currency.as_bytes(), merchant.as_bytes()] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    h.update(amount_minor.to_le_bytes());
    h.finalize().into()
}

/// The digest a record stores, or (for records written before digests existed) the one
/// its fields give.
pub fn digest_of(entry: &AuditEntry) -> PayloadDigest {
    match <PayloadDigest>::try_from(entry.payload_digest.as_slice()) {
        Ok(d) => d,
        Err(_) => payload_digest(
            &entry.account,
            entry.amount_minor,
            &entry.currency,
            &entry.merchant,
        ),
    }
}

/// True for a gap marker written by repair (offsets `offset..=gap_through` quarantined).
pub fn is_gap(entry: &AuditEntry) -> bool {
    entry.gap_through > 0
}

/// The encoded payload is over [`MAX_RECORD_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("record too large: {0} bytes (max {MAX_RECORD_BYTES})")]
pub struct TooLarge(pub usize);

/// Appends `entry`'s frame to `out`.
pub fn encode(entry: &AuditEntry, out: &mut Vec<u8>) -> Result<(), TooLarge> {
    let len = entry.encoded_len();
    if len > MAX_RECORD_BYTES as usize {
        return Err(TooLarge(len));
    }
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_BYTES]);
    entry.encode(out).expect("Vec grows as needed");
    let crc = crc32fast::hash(&out[start + HEADER_BYTES..]);
    out[start..start + 4].copy_from_slice(&(len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// What is at the start of a byte slice.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// Nothing: the slice is empty.
    End,
    /// A valid frame of `size` bytes.
    Frame { entry: AuditEntry, size: usize },
    /// Not a valid frame, and why.
    Bad(&'static str),
}

/// Decodes the frame at the start of `buf`. Never panics, whatever the bytes.
pub fn decode(buf: &[u8]) -> Decoded {
    if buf.is_empty() {
        return Decoded::End;
    }
    if buf.len() < HEADER_BYTES {
        return Decoded::Bad("short header");
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_BYTES {
        return Decoded::Bad("record length out of range");
    }
    let Some(payload) = buf.get(HEADER_BYTES..HEADER_BYTES + len as usize) else {
        return Decoded::Bad("record runs past the end of the file");
    };
    if crc32fast::hash(payload) != crc {
        return Decoded::Bad("CRC mismatch");
    }
    match AuditEntry::decode(payload) {
        Ok(entry) => Decoded::Frame {
            entry,
            size: HEADER_BYTES + len as usize,
        },
        Err(_) => Decoded::Bad("payload does not decode"),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A record for tests: fixed payload, the given offset and id.
    pub(crate) fn entry(offset: u64, id: &str) -> AuditEntry {
        AuditEntry {
            offset,
            id: id.into(),
            account: "acct".into(),
            amount_minor: 100,
            currency: "EUR".into(),
            merchant: "shop".into(),
            ..Default::default()
        }
    }

    #[test]
    fn digest_separates_fields() {
        // Without length prefixes these two would hash the same bytes.
        assert_ne!(
            payload_digest("ab", 1, "EUR", "c"),
            payload_digest("a", 1, "EUR", "bc")
        );
        assert_eq!(
            payload_digest("a", 1, "EUR", "b"),
            payload_digest("a", 1, "EUR", "b")
        );
        assert_ne!(
            payload_digest("a", 1, "EUR", "b"),
            payload_digest("a", 2, "EUR", "b")
        );
        let mut e = entry(1, "x");
        assert_eq!(digest_of(&e), payload_digest("acct", 100, "EUR", "shop"));
        e.payload_digest = vec![7; 32];
        assert_eq!(digest_of(&e), [7; 32]);
    }

    #[test]
    fn rejects_oversized() {
        let mut e = entry(1, "x");
        e.merchant = "m".repeat(MAX_RECORD_BYTES as usize);
        assert!(encode(&e, &mut Vec::new()).is_err());
    }

    proptest! {
        #[test]
        fn round_trips(offset in 1u64.., id in "[a-z0-9]{1,64}", account in "\\PC{1,64}", amount in any::<i64>()) {
            let mut e = entry(offset, &id);
            e.account = account;
            e.amount_minor = amount;
            let mut buf = Vec::new();
            encode(&e, &mut buf).unwrap();
            prop_assert_eq!(decode(&buf), Decoded::Frame { entry: e, size: buf.len() });
        }

        #[test]
        fn never_panics_and_never_accepts_a_damaged_frame(
            id in "[a-z0-9]{1,64}",
            at in any::<prop::sample::Index>(),
            flip in 1u8..,
        ) {
            let mut buf = Vec::new();
            encode(&entry(1, &id), &mut buf).unwrap();
            let i = at.index(buf.len());
            buf[i] ^= flip;
            // A single damaged byte is always caught: in the header by the length or CRC,
            // in the payload by CRC-32 (which detects every burst up to 32 bits).
            prop_assert!(matches!(decode(&buf), Decoded::Bad(_)));
            // And every truncation is too.
            for cut in 0..buf.len() {
                let _ = decode(&buf[..cut]);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }
    }
}
