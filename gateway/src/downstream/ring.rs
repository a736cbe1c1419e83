//! Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, SODA 2018), for
//! routing risk requests by account.
//!
//! Risk's velocity rule counts an account's recent transactions in the replica that sees
//! them, so all of an account's transactions should reach one replica. Plain consistent
//! hashing does that but lets a hot or slow replica pile up work; the bounded-load variant
//! caps every replica at `ceil((1 + ε) · (total + 1) / live)` outstanding requests and
//! walks a key past full replicas to the next one on the ring. An account stays on its home
//! replica whenever that replica is under the cap — always at ordinary load — and a replica
//! that slows down (its outstanding requests grow) sheds the excess to its neighbours
//! instead of growing a queue. The price, documented in ARCHITECTURE.md: while an account's
//! home is over the cap, the transactions that spill are counted by another replica, so the
//! velocity rule can see fewer of them (it errs towards APPROVE, never towards a false
//! REVIEW).
//!
//! Each replica has [`POINTS_PER_REPLICA`] points on the ring so that keys split evenly;
//! a replica that joins or leaves moves only the keys next to its points.

use sluice_proto::partition::fnv1a;

/// Ring points per replica: enough that three replicas split keys within a few percent.
pub(crate) const POINTS_PER_REPLICA: usize = 64;

/// The ring over one set of replicas (by index in that set).
#[derive(Debug, Default)]
pub(crate) struct Ring {
    /// (position, replica index), sorted by position.
    points: Vec<(u64, usize)>,
    replicas: usize,
}

/// A 64-bit finalizer (splitmix64): FNV alone clusters the positions of similar names.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn position(key: &str) -> u64 {
    mix(fnv1a(key.as_bytes()))
}

impl Ring {
    /// A ring over replicas named `names` (their addresses: stable across restarts of the
    /// gateway, so an account keeps its replica).
    pub(crate) fn new(names: &[String]) -> Self {
        let mut points: Vec<(u64, usize)> = names
            .iter()
            .enumerate()
            .flat_map(|(i, name)| {
                (0..POINTS_PER_REPLICA).map(move |p| (position(&format!("{name}#{p}")), i))
            })
            .collect();
        points.sort_unstable();
        Self {
            points,
            replicas: names.len(),
        }
    }

    /// The replica for `key`: the first one clockwise from the key's position that is live
    /// and under the load cap. `load(i)` is replica `i`'s outstanding requests, or `None`
    /// when it is not live. `None` when no replica is live.
    pub(crate) fn pick(
        &self,
        key: &str,
        epsilon: f64,
        load: impl Fn(usize) -> Option<usize>,
    ) -> Option<usize> {
        // No allocation per request: `load` reads atomics, so asking twice is cheap.
        let (live, total) = (0..self.replicas)
            .filter_map(&load)
            .fold((0usize, 0usize), |(n, sum), l| (n + 1, sum + l));
        if live == 0 {
            return None;
        }
        let cap = ((1.0 + epsilon) * (total + 1) as f64 / live as f64).ceil() as usize;
        let at = position(key);
        let start = self.points.partition_point(|&(p, _)| p < at);
        let (before, after) = self.points.split_at(start);
        let home = after
            .iter()
            .chain(before)
            .map(|&(_, i)| i)
            .find(|&i| matches!(load(i), Some(l) if l < cap));
        // `None` is unreachable by counting (some live replica is at or under the average),
        // but never fail a request over it: take the least loaded.
        home.or_else(|| {
            (0..self.replicas)
                .filter_map(|i| load(i).map(|l| (l, i)))
                .min()
                .map(|(_, i)| i)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:50052")).collect()
    }

    #[test]
    fn an_idle_ring_sends_a_key_to_one_replica_and_splits_keys_evenly() {
        let ring = Ring::new(&names(3));
        let idle = |_| Some(0);
        let mut counts = [0usize; 3];
        for a in 0..3000 {
            let key = format!("acct-{a}");
            let home = ring.pick(&key, 0.25, idle).unwrap();
            assert_eq!(ring.pick(&key, 0.25, idle), Some(home));
            counts[home] += 1;
        }
        assert!(
            counts.iter().all(|&c| (700..1300).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn a_full_replica_sheds_to_the_next_and_a_dead_one_is_skipped() {
        let ring = Ring::new(&names(3));
        let key = "acct-7";
        let home = ring.pick(key, 0.25, |_| Some(0)).unwrap();
        // Home far above the others: cap = ceil(1.25 · 103 / 3) = 43 < 100.
        let hot = |i| Some(if i == home { 100 } else { 1 });
        let spill = ring.pick(key, 0.25, hot).unwrap();
        assert_ne!(spill, home);
        let dead = |i| if i == home { None } else { Some(0) };
        assert_eq!(ring.pick(key, 0.25, dead), Some(spill));
        assert_eq!(ring.pick(key, 0.25, |_| None), None);
    }

    #[test]
    fn a_replica_joining_moves_only_some_keys() {
        let (three, four) = (Ring::new(&names(3)), Ring::new(&names(4)));
        let idle = |_| Some(0);
        let moved = (0..3000)
            .filter(|a| {
                let key = format!("acct-{a}");
                three.pick(&key, 0.25, idle) != four.pick(&key, 0.25, idle)
            })
            .count();
        // Ideally a quarter move; all of them would with modulo hashing.
        assert!(moved < 1200, "{moved} of 3000 moved");
    }
}
