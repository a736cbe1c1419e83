//! The recovery scan on a real log damaged by the fuzzer: never panics, reports only records
//! that were written, in order, and loses no record that lies wholly before the first
//! damaged byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_logging::{frame, recovery};
use sluice_proto::pb::AuditEntry;

fn entry(offset: u64) -> AuditEntry {
    AuditEntry {
        offset,
        id: format!("tx-{offset}"),
        account: format!("acct-{}", offset % 7),
        amount_minor: 100 + offset as i64,
        currency: "EUR".into(),
        merchant: "shop".into(),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    // data = [record count, (position u16 LE, xor byte)*]
    let Some((&n, edits)) = data.split_first() else {
        return;
    };
    let n = u64::from(n % 64) + 1;
    let mut log = Vec::new();
    let mut starts = Vec::new();
    for o in 1..=n {
        starts.push(log.len());
        frame::encode(&entry(o), &mut log).unwrap();
    }
    let mut first_damage = usize::MAX;
    for e in edits.chunks_exact(3) {
        let at = usize::from(u16::from_le_bytes([e[0], e[1]])) % (log.len() + 1);
        if at == log.len() {
            log.truncate(at.saturating_sub(usize::from(e[2])));
            first_damage = first_damage.min(log.len());
        } else if e[2] != 0 {
            log[at] ^= e[2];
            first_damage = first_damage.min(at);
        }
    }
    let mut seen = Vec::new();
    let scan = recovery::scan(log.as_slice(), log.len() as u64, |e, _| seen.push(e.clone())).unwrap();
    for w in seen.windows(2) {
        assert!(w[0].offset < w[1].offset, "out of order");
    }
    for e in &seen {
        assert_eq!(e, &entry(e.offset), "a record that was never written");
    }
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().unwrap_or(usize::MAX);
        if end <= first_damage && end <= log.len() {
            assert!(seen.iter().any(|e| e.offset == i as u64 + 1), "record {} lost", i + 1);
        }
        let _ = start;
    }
    assert!(scan.next_offset > seen.last().map_or(0, |e| e.offset));
});
