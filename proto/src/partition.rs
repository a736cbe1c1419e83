//! Which audit-log partition a transaction belongs to: a stable hash of its id over the
//! partition count.
//!
//! The gateway routes each Append by it and each logging partition refuses ids that are not
//! its own, so a misordered `--logging` list fails loudly instead of scattering records.
//! The hash must never change: an id has to land on the same partition after every restart,
//! or a resubmit would be written twice (idempotency is per partition). FNV-1a (64-bit) is
//! fixed by its definition, fast on short ids and well mixed enough for ids that differ in
//! their last characters; std's `DefaultHasher` is explicitly not stable across releases.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a, 64-bit, of `bytes`.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The partition (0-based) of transaction `id` among `partitions` (1 when 0 is given).
pub fn of(id: &str, partitions: u32) -> u32 {
    (fnv1a(id.as_bytes()) % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn one_partition_takes_everything() {
        assert_eq!(of("t-1", 1), 0);
        assert_eq!(of("t-1", 0), 0);
    }

    #[test]
    fn ids_spread_over_partitions() {
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[of(&format!("txn-{i}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }
}
