//! The audit log's index from transaction id to offset, payload digest and clock, split into
//! [`SHARDS`] maps so that growing it never stalls the writer.
//!
//! One `HashMap` doubles when it fills, moving every entry at once on the writer thread,
//! while every append waits: with 250,000 records that was a 50 ms pause with the log on a
//! tmpfs (`sluice-lab bench`, half load; the audit commit histogram's max). Split in
//! [`SHARDS`], each map grows on its own and a growth moves a [`SHARDS`]th of the entries.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

use crate::frame::PayloadDigest;

/// Maps the index is split into. A power of two; the shard is the top bits of the id's hash.
pub(crate) const SHARDS: usize = 256;

/// What the index knows of one id: its offset, the digest of its payload, and the clock
/// it was stamped with (a replay answers with it).
pub(crate) type Indexed = (u64, PayloadDigest, u64);

pub(crate) struct IdIndex {
    shards: Vec<HashMap<String, Indexed>>,
    /// Picks the shard; each shard hashes again with its own keys.
    hasher: RandomState,
}

impl IdIndex {
    pub(crate) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, id: &str) -> usize {
        (self.hasher.hash_one(id) >> (64 - SHARDS.trailing_zeros())) as usize
    }

    pub(crate) fn get(&self, id: &str) -> Option<&Indexed> {
        self.shards[self.shard(id)].get(id)
    }

    pub(crate) fn insert(&mut self, id: String, indexed: Indexed) {
        let shard = self.shard(&id);
        self.shards[shard].insert(id, indexed);
    }

    pub(crate) fn remove(&mut self, id: &str) {
        let shard = self.shard(id);
        self.shards[shard].remove(id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_was_inserted_and_forgets_what_was_removed() {
        let mut index = IdIndex::new();
        for i in 0..1000u64 {
            index.insert(format!("txn-{i}"), (i + 1, [i as u8; 32], 0));
        }
        assert_eq!(index.len(), 1000);
        assert_eq!(index.get("txn-7"), Some(&(8, [7; 32], 0)));
        index.remove("txn-7");
        assert_eq!(index.get("txn-7"), None);
        assert_eq!(index.get("txn-8"), Some(&(9, [8; 32], 0)));
        assert_eq!(index.len(), 999);
    }

    #[test]
    fn no_shard_holds_much_more_than_its_share() {
        // A growth moves one shard's entries: bounded by the fullest shard.
        let mut index = IdIndex::new();
        let n = 200_000;
        for i in 0..n {
            index.insert(format!("lg-{i}"), (i as u64, [0; 32], 0));
        }
        let fullest = index.shards.iter().map(HashMap::len).max().unwrap();
        assert!(fullest < 2 * n / SHARDS, "fullest shard {fullest}");
    }
}
