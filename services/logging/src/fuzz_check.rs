//! The recovery scan's fuzz property, shared by `fuzz/fuzz_targets/recovery.rs` (cargo fuzz,
//! nightly) and a stable test that replays `fuzz/regressions/recovery/*`, so every input that
//! once found a bug is checked by `cargo test`.
//!
//! Input: `[records, durable, (position u16 LE, xor byte)*]`. A log of `records % 64 + 1`
//! records is written, `durable % (records + 1)` of them are behind the recovery point, and
//! each edit flips bits at a position (a position equal to the log's length truncates it by
//! the xor byte instead).

use sluice_proto::pb::AuditEntry;

use crate::frame;
use crate::recovery::{self, Scan};
use crate::recovery_point::RecoveryPoint;

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

/// Checks the scan on the log `data` describes; panics on a violated property. Returns the
/// scan for callers that look further.
pub fn check_damaged_log(data: &[u8]) -> Option<Scan> {
    let [n, durable, edits @ ..] = data else {
        return None;
    };
    let n = u64::from(n % 64) + 1;
    let mut log = Vec::new();
    let mut starts = Vec::new();
    for o in 1..=n {
        starts.push(log.len());
        frame::encode(&entry(o), &mut log).expect("small record");
    }
    let durable = u64::from(*durable) % (n + 1);
    let point = RecoveryPoint {
        end: starts.get(durable as usize).map_or(log.len(), |&s| s) as u64,
        next_offset: durable + 1,
    };
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
    let scan = recovery::scan(log.as_slice(), log.len() as u64, Some(point), |e, _| {
        seen.push(e.clone())
    })
    .expect("reading a slice cannot fail");
    for w in seen.windows(2) {
        assert!(w[0].offset < w[1].offset, "out of order");
    }
    for e in &seen {
        assert_eq!(e, &entry(e.offset), "a record that was never written");
    }
    for i in 0..starts.len() {
        let end = starts.get(i + 1).copied().unwrap_or(usize::MAX);
        if end <= first_damage && end <= log.len() {
            assert!(
                seen.iter().any(|e| e.offset == i as u64 + 1),
                "record {} lost",
                i + 1
            );
        }
    }
    assert!(scan.next_offset > seen.last().map_or(0, |e| e.offset));
    // Nothing the recovery point calls durable is cut as torn, nor its offset reused.
    if let Some(t) = &scan.torn_tail {
        assert!(
            t.offset > durable,
            "offset {} cut as torn below {durable}",
            t.offset
        );
    }
    assert!(
        scan.next_offset > durable,
        "offset {durable} handed out again"
    );
    // Bytes touched only past the point: at most a torn tail, never damage.
    if first_damage >= point.end as usize {
        assert!(
            scan.damage.is_empty(),
            "damage past the recovery point: {scan:?}"
        );
    }
    Some(scan)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every input under `fuzz/regressions/recovery/` still holds the property.
    #[test]
    fn fuzz_regressions_replay() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/regressions/recovery");
        let mut replayed = 0;
        for file in std::fs::read_dir(&dir).expect("the regression inputs") {
            let path = file.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let scan = super::check_damaged_log(&data);
            assert!(scan.is_some(), "{} is not an input", path.display());
            replayed += 1;
        }
        assert!(replayed >= 2, "{replayed} regression inputs");
    }
}
