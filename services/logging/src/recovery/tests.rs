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
    let s = scan(bytes, bytes.len() as u64, None, |e, _| seen.push(e.offset)).unwrap();
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
            reason: "CRC mismatch",
            records_follow: true,
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

/// The point after record `n` of a log whose records start at `starts`.
fn point_after(n: u64, bytes: &[u8], starts: &[u64]) -> RecoveryPoint {
    RecoveryPoint {
        end: starts
            .get(n as usize)
            .copied()
            .unwrap_or(bytes.len() as u64),
        next_offset: n + 1,
    }
}

fn scan_by(bytes: &[u8], point: RecoveryPoint) -> Scan {
    scan(bytes, bytes.len() as u64, Some(point), |_, _| {}).unwrap()
}

#[test]
fn a_flipped_bit_in_the_last_durable_record_is_damage_not_a_torn_tail() {
    let (mut bytes, starts) = log(10);
    let point = point_after(10, &bytes, &starts);
    bytes[starts[9] as usize + 12] ^= 0x01;
    // Without a point it looks torn, and is cut: what the recovery point is for.
    assert!(scan_bytes(&bytes).0.torn_tail.is_some());
    let s = scan_by(&bytes, point);
    assert!(s.torn_tail.is_none(), "{s:?}");
    assert_eq!(
        s.damage,
        vec![Damage {
            start: starts[9],
            end: bytes.len() as u64,
            lost_from: 10,
            lost_through: 10,
            reason: "CRC mismatch",
            records_follow: false,
        }]
    );
    assert_eq!(
        (s.records, s.next_offset),
        (9, 11),
        "offset 10 is never reused"
    );
    // The same rot with room set aside after it, and with half a batch torn after it.
    let mut roomy = bytes.clone();
    roomy.resize(bytes.len() + 4096, 0);
    assert_eq!(scan_by(&roomy, point).damage.len(), 1);
    let mut torn_after = bytes.clone();
    torn_after.extend_from_slice(&[9, 0, 0, 0, 1, 2]);
    let s = scan_by(&torn_after, point);
    assert_eq!(
        (s.damage.len(), s.damage[0].end),
        (1, torn_after.len() as u64)
    );
}

#[test]
fn a_write_torn_past_the_recovery_point_is_still_a_torn_tail() {
    let (mut bytes, starts) = log(10);
    let point = point_after(9, &bytes, &starts);
    bytes.truncate(starts[9] as usize + 5);
    let s = scan_by(&bytes, point);
    assert!(s.damage.is_empty(), "{s:?}");
    let t = s.torn_tail.unwrap();
    assert_eq!((t.start, t.offset), (starts[9], 10));
    // Room set aside past the point is room.
    let (mut roomy, starts) = log(10);
    roomy.resize(roomy.len() + 4096, 0);
    let s = scan_by(&roomy, point_after(10, &roomy, &starts));
    assert!(s.damage.is_empty() && s.torn_tail.is_none());
    assert_eq!(s.preallocated, 4096);
}

#[test]
fn a_log_that_ends_before_its_recovery_point_has_lost_durable_records() {
    let (bytes, starts) = log(10);
    let point = point_after(10, &bytes, &starts);
    let cut = &bytes[..starts[7] as usize];
    let s = scan_by(cut, point);
    assert_eq!(s.damage.len(), 1, "{s:?}");
    let d = &s.damage[0];
    assert_eq!(
        (d.start, d.end, d.lost_from, d.lost_through),
        (starts[7], starts[7], 8, 10)
    );
    assert!(!d.records_follow);
    assert_eq!(s.next_offset, 11);
}

#[test]
fn repair_quarantines_a_rotten_last_record_behind_a_gap_marker() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, starts) = log(10);
    let point = point_after(10, &bytes, &starts);
    bytes[starts[9] as usize + 12] ^= 0x01;
    std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
    recovery_point::store(dir.path(), point).unwrap();
    let before = check(dir.path()).unwrap();
    assert_eq!(before.damage.len(), 1);
    let r = repair(dir.path()).unwrap();
    assert_eq!(r.quarantined.len(), 1);
    assert_eq!(
        std::fs::read(&r.quarantined[0]).unwrap(),
        &bytes[starts[9] as usize..]
    );
    let after = check(dir.path()).unwrap();
    assert!(
        after.damage.is_empty() && after.torn_tail.is_none(),
        "{after:?}"
    );
    assert_eq!(
        (after.records, after.gap_offsets, after.next_offset),
        (9, 1, 11)
    );
    assert_eq!(
        recovery_point(dir.path()).unwrap().map(|p| p.next_offset),
        Some(11)
    );
}

#[test]
fn an_unreadable_recovery_point_refuses_and_repair_writes_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let (bytes, _) = log(5);
    std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
    std::fs::write(
        dir.path().join(recovery_point::RECOVERY_POINT_FILE),
        [1u8; 64],
    )
    .unwrap();
    assert!(matches!(
        check(dir.path()),
        Err(ScanError::PointUnreadable(_))
    ));
    let r = repair(dir.path()).unwrap();
    assert!(r.new_recovery_point && r.quarantined.is_empty());
    assert_eq!(
        recovery_point(dir.path()).unwrap().map(|p| p.next_offset),
        Some(6)
    );
}

#[test]
fn repair_names_the_path_it_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut bytes, starts) = log(10);
    bytes[starts[4] as usize + 12] ^= 0x01;
    std::fs::write(dir.path().join(LOG_FILE), &bytes).unwrap();
    // Where the quarantine file would go, a directory already stands.
    let blocked = dir
        .path()
        .join(format!("{QUARANTINE_PREFIX}.{}-{}", starts[4], starts[5]));
    std::fs::create_dir(&blocked).unwrap();
    let e = repair(dir.path()).unwrap_err().to_string();
    assert!(
        e.contains(&blocked.display().to_string()) && e.contains("quarantine"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(dir.path().join(LOG_FILE)).unwrap(),
        bytes,
        "unchanged"
    );
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
        let s = scan(bytes.as_slice(), bytes.len() as u64, None, |e, _| seen.push(e.clone())).unwrap();
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

    /// With a recovery point, whatever is done to the bytes: nothing at or below the
    /// point is ever cut as a torn tail, and no offset up to it is handed out again.
    #[test]
    fn nothing_durable_is_ever_cut_as_torn(
        n in 1u64..40,
        durable in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 1usize..100), 0..3),
        truncate in any::<Option<prop::sample::Index>>(),
    ) {
        let (mut bytes, starts) = log(n);
        let point = point_after(durable.index(n as usize + 1) as u64, &bytes, &starts);
        for (at, value, span) in &edits {
            let i = at.index(bytes.len());
            let end = (i + span).min(bytes.len());
            for b in &mut bytes[i..end] { *b = b.wrapping_add(*value | 1); }
        }
        if let Some(t) = truncate {
            bytes.truncate(t.index(bytes.len() + 1));
        }
        let s = scan_by(&bytes, point);
        if let Some(t) = &s.torn_tail {
            prop_assert!(t.offset > point.durable_through(), "{t:?} cut below {point:?}");
        }
        prop_assert!(s.next_offset > point.durable_through());
    }
}
