use super::*;
use crate::id_index::IdIndex;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;

fn record(id: &str) -> NewRecord {
    crate::frame::tests::entry(0, id)
}

fn open(dir: &Path) -> AuditLog {
    AuditLog::open(dir, 64, 16, 0, &mut Registry::default()).unwrap()
}

#[tokio::test]
async fn offsets_start_at_one_and_ids_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    assert_eq!(
        log.append(record("a")).await.unwrap(),
        Appended {
            offset: 1,
            duplicate: false,
            hlc: 0
        }
    );
    assert_eq!(
        log.append(record("b")).await.unwrap(),
        Appended {
            offset: 2,
            duplicate: false,
            hlc: 0
        }
    );
    assert_eq!(
        log.append(record("a")).await.unwrap(),
        Appended {
            offset: 1,
            duplicate: true,
            hlc: 0
        }
    );
    assert_eq!(log.len(), 2);
    let read = log.read(1, 10).unwrap();
    assert_eq!(
        read.iter()
            .map(|e| (e.offset, e.id.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "a"), (2, "b")]
    );
    assert_eq!(log.read(2, 10).unwrap().len(), 1);
    assert!(log.read(3, 10).unwrap().is_empty());
}

/// A record keeps the clock it was appended with, across a restart, and a replay answers
/// with it; a log written before clocks (its records carry none: field 11 absent, which
/// decodes as 0) opens, reads and replays with clock 0.
#[tokio::test]
async fn a_record_keeps_its_clock_and_records_from_before_clocks_read_as_zero() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        log.append(record("old")).await.unwrap();
        let mut stamped = record("new");
        stamped.hlc = 1_700_000_000_000 << 16 | 9;
        assert_eq!(
            log.append(stamped).await.unwrap().hlc,
            1_700_000_000_000 << 16 | 9
        );
        log.close();
    }
    // "old" is on disk as a record from before clocks: protobuf writes no field for a 0,
    // so its bytes are what the code before clocks wrote.
    let log = open(dir.path());
    let read = log.read(1, 10).unwrap();
    assert_eq!(
        read.iter()
            .map(|e| (e.id.as_str(), e.hlc))
            .collect::<Vec<_>>(),
        vec![("old", 0), ("new", 1_700_000_000_000 << 16 | 9)]
    );
    let mut again = record("new");
    again.hlc = 1_800_000_000_000 << 16;
    let replay = log.append(again).await.unwrap();
    assert!(replay.duplicate);
    assert_eq!(
        replay.hlc,
        1_700_000_000_000 << 16 | 9,
        "the stored clock, not the replay's"
    );
    assert_eq!(log.append(record("old")).await.unwrap().hlc, 0);
}

#[tokio::test]
async fn concurrent_duplicates_in_one_batch_share_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let mut tasks = Vec::new();
    for i in 0..200 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            log.append(record(&format!("id{}", i % 50))).await.unwrap()
        }));
    }
    let mut by_id: HashMap<u64, usize> = HashMap::new();
    for t in tasks {
        *by_id.entry(t.await.unwrap().offset).or_default() += 1;
    }
    assert_eq!(by_id.len(), 50);
    assert!(by_id.values().all(|&n| n == 4));
    assert_eq!(log.len(), 50);
}

#[tokio::test]
async fn reopen_recovers_index_and_cuts_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..10 {
            log.append(record(&format!("t{i}"))).await.unwrap();
        }
        log.close();
    }
    // A torn tail: half a record's header plus garbage.
    let path = dir.path().join(LOG_FILE);
    let intact = std::fs::metadata(&path).unwrap().len();
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[42, 0, 0, 0, 1, 2, 3]).unwrap();
    drop(f);

    let log = open(dir.path());
    assert_eq!(std::fs::metadata(&path).unwrap().len(), intact);
    assert_eq!(log.len(), 10);
    assert_eq!(
        log.append(record("t3")).await.unwrap(),
        Appended {
            offset: 4,
            duplicate: true,
            hlc: 0
        }
    );
    assert_eq!(
        log.append(record("new")).await.unwrap(),
        Appended {
            offset: 11,
            duplicate: false,
            hlc: 0
        }
    );
    assert_eq!(log.read(11, 1).unwrap()[0].id, "new");
}

fn open_preallocating(dir: &Path, chunk: u64) -> AuditLog {
    AuditLog::open(dir, 64, 16, chunk, &mut Registry::default()).unwrap()
}

#[tokio::test]
async fn appends_overwrite_zeros_set_aside_ahead_and_a_reopen_goes_on_after_the_last_record() {
    const CHUNK: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let zero_tail = |bytes: &[u8]| bytes.iter().rev().take_while(|&&b| b == 0).count();
    {
        let log = open_preallocating(dir.path(), CHUNK);
        for i in 0..100 {
            log.append(record(&format!("p{i}"))).await.unwrap();
            // The file is whole chunks, with zeros after the records.
            let len = std::fs::metadata(&path).unwrap().len();
            assert_eq!(len % CHUNK, 0, "after {i}: {len}");
        }
        log.close();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes.len() > 4 * CHUNK as usize, "100 records span chunks");
    assert!(zero_tail(&bytes) > 0, "room set aside at the end");
    let scan = recovery::check(dir.path()).unwrap();
    assert_eq!((scan.records, scan.next_offset), (100, 101));
    assert!(scan.damage.is_empty() && scan.torn_tail.is_none());
    assert!(scan.preallocated > 0 && scan.preallocated <= 2 * CHUNK);

    // Reopened, the log goes on after its last record, not after the zeros.
    let log = open_preallocating(dir.path(), CHUNK);
    assert_eq!(log.len(), 100);
    assert_eq!(log.append(record("p7")).await.unwrap().offset, 8);
    for i in 100..200 {
        let a = log.append(record(&format!("p{i}"))).await.unwrap();
        assert_eq!(a.offset, i + 1);
    }
    let all = log.read(1, 1000).unwrap();
    assert_eq!(all.len(), 200);
    assert!(
        all.iter()
            .enumerate()
            .all(|(i, e)| e.offset == i as u64 + 1)
    );
    log.close();
    let scan = recovery::check(dir.path()).unwrap();
    assert_eq!(scan.records, 200);
    assert!(scan.damage.is_empty() && scan.torn_tail.is_none());
    // Without room set aside (--preallocate 0), the same log opens and appends too.
    let log = open(dir.path());
    assert_eq!(log.append(record("p200")).await.unwrap().offset, 201);
}

#[tokio::test]
async fn a_torn_batch_in_the_room_set_aside_is_cut_and_the_room_set_aside_again() {
    const CHUNK: u64 = 4096;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    {
        let log = open_preallocating(dir.path(), CHUNK);
        for i in 0..3 {
            log.append(record(&format!("t{i}"))).await.unwrap();
        }
        log.close();
    }
    // A crash mid-batch: part of a frame landed in the zeros.
    let end = recovery::check(dir.path()).unwrap().valid_end();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[end as usize..end as usize + 6].copy_from_slice(&[42, 0, 0, 0, 9, 9]);
    std::fs::write(&path, &bytes).unwrap();
    assert!(recovery::check(dir.path()).unwrap().torn_tail.is_some());

    let log = open_preallocating(dir.path(), CHUNK);
    assert_eq!(log.len(), 3);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        end,
        "the tail was cut"
    );
    assert_eq!(log.append(record("t3")).await.unwrap().offset, 4);
    assert_eq!(std::fs::metadata(&path).unwrap().len() % CHUNK, 0);
    log.close();
    let scan = recovery::check(dir.path()).unwrap();
    assert_eq!(scan.records, 4);
    assert!(scan.torn_tail.is_none() && scan.preallocated > 0);
}

#[tokio::test]
async fn a_flipped_bit_in_the_last_acknowledged_record_is_damage_not_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..3 {
            log.append(record(&format!("t{i}"))).await.unwrap();
        }
        log.close();
    }
    let path = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01; // one bit of the third (last, acknowledged) record's payload
    std::fs::write(&path, &bytes).unwrap();
    let refused = AuditLog::open(dir.path(), 64, 16, 0, &mut Registry::default());
    assert!(
        matches!(refused, Err(AuditError::Damaged { offset: 3, .. })),
        "rot in an acknowledged record is not cut as torn"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes, "nothing changed");
    let scan = recovery::check(dir.path()).unwrap();
    assert_eq!(
        (
            scan.damage.len(),
            scan.damage[0].lost_from,
            scan.damage[0].lost_through
        ),
        (1, 3, 3)
    );
    assert!(scan.torn_tail.is_none());
    recovery::repair(dir.path()).unwrap();
    let log = open(dir.path());
    assert_eq!(log.len(), 2);
    assert_eq!(
        log.read(1, 10)
            .unwrap()
            .iter()
            .map(|e| e.offset)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        log.append(record("t9")).await.unwrap(),
        Appended {
            offset: 4,
            duplicate: false,
            hlc: 0
        },
        "offset 3 is never handed to another transaction"
    );
}

#[tokio::test]
async fn a_write_torn_past_the_recovery_point_is_cut_silently() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path());
        for i in 0..3 {
            log.append(record(&format!("t{i}"))).await.unwrap();
        }
        log.close();
    }
    // Half of a fourth record: a write the crash tore before its fsync returned.
    let mut half = Vec::new();
    let mut fourth = record("t3");
    fourth.offset = 4;
    crate::frame::encode(&fourth, &mut half).unwrap();
    half.truncate(half.len() / 2);
    let path = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&half);
    std::fs::write(&path, &bytes).unwrap();
    let log = open(dir.path());
    assert_eq!(log.len(), 3);
    assert_eq!(
        log.append(record("t3")).await.unwrap(),
        Appended {
            offset: 4,
            duplicate: false,
            hlc: 0
        }
    );
}

async fn write_log(dir: &Path, n: usize) -> u64 {
    let log = open(dir);
    for i in 0..n {
        log.append(record(&format!("t{i}"))).await.unwrap();
    }
    log.close();
    std::fs::metadata(dir.join(LOG_FILE)).unwrap().len()
}

#[tokio::test]
async fn mid_file_damage_refuses_to_open_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let len = write_log(dir.path(), 6000).await;
    let path = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let err = AuditLog::open(dir.path(), 64, 16, 0, &mut Registry::default())
        .err()
        .expect("a damaged log must not open");
    let AuditError::Damaged {
        position, offset, ..
    } = &err
    else {
        panic!("expected Damaged, got {err}");
    };
    assert!(*position <= middle as u64 && *offset > 2900 && *offset < 3100);
    let line = err.to_string();
    assert!(line.contains(&path.display().to_string()) && !line.contains('\n'));
    assert!(
        line.contains(&format!("byte {position}")) && line.contains(&format!("offset {offset}"))
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        len,
        "file untouched"
    );
}

#[tokio::test]
async fn repair_then_open_keeps_every_valid_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), 100).await;
    let path = dir.path().join(LOG_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4096..4096 + 300].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let repaired = crate::recovery::repair(dir.path()).unwrap();
    let d = &repaired.before.damage[0];
    let lost = d.lost_from..=d.lost_through;
    assert!(!lost.is_empty());
    let log = open(dir.path());
    assert_eq!(log.len(), 100 - lost.clone().count() as u64);
    assert_eq!(log.last_offset(), 100);
    let all = log.read(1, 1000).unwrap();
    assert_eq!(all.len() as u64, log.len());
    for e in &all {
        assert!(!lost.contains(&e.offset));
        assert_eq!(e.id, format!("t{}", e.offset - 1), "offset kept");
    }
    // Reading from inside the gap starts at the next record.
    assert_eq!(
        log.read(*lost.start(), 1).unwrap()[0].offset,
        lost.end() + 1
    );
    // A lost id can be appended again, at a new offset; a kept one is a replay.
    let again = log
        .append(record(&format!("t{}", lost.start() - 1)))
        .await
        .unwrap();
    assert_eq!(
        again,
        Appended {
            offset: 101,
            duplicate: false,
            hlc: 0
        }
    );
    assert_eq!(
        log.append(record("t0")).await.unwrap(),
        Appended {
            offset: 1,
            duplicate: true,
            hlc: 0
        }
    );
}

/// A writer on the log at `path` through `file`, appending after its last byte as
/// offset `next_offset`, for tests that swap what its writes meet.
fn writer_on(path: &Path, file: File, preallocate: u64, next_offset: u64) -> Writer {
    let len = std::fs::metadata(path).unwrap().len();
    Writer {
        path: path.to_path_buf(),
        file,
        end: len,
        room: Room::new(len, preallocate),
        next_offset,
        checkpoint: None,
        by_id: IdIndex::new(),
        index: Arc::default(),
        max_batch: 16,
        metrics: LogMetrics::new(&mut Registry::default()),
        poisoned: None,
        health: Health::new(Arc::default()),
    }
}

/// One append for [`Writer::commit`], and where its answer arrives.
fn job(record: NewRecord) -> (AppendJob, oneshot::Receiver<Result<Appended, AuditError>>) {
    let (reply, done) = oneshot::channel();
    (AppendJob { record, reply }, done)
}

#[test]
fn zeros_that_cannot_be_written_leave_appends_going_without_room() {
    const CHUNK: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(LOG_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .unwrap();
    let mut writer = writer_on(&path, file, CHUNK, 1);
    let mut buf = Vec::new();
    let mut append = |writer: &mut Writer, i: u64| {
        let (j, mut done) = job(record(&format!("room-{i}")));
        writer.commit(&mut vec![j], &mut buf);
        let appended = done.try_recv().unwrap().unwrap();
        assert_eq!(appended.offset, i, "append {i}");
    };
    append(&mut writer, 1);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        CHUNK,
        "a chunk set aside"
    );
    // A disk with less than a chunk free: every append still goes in, past the room.
    writer.room.fails = true;
    for i in 2..=40 {
        append(&mut writer, i);
    }
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(
        len > 2 * CHUNK,
        "{len}: grew past the room by appends alone"
    );
    assert_eq!(len, writer.end, "no zeros after the records");
    assert!(
        writer.room.errors.suppressed() > 0,
        "the room was asked for again and again"
    );
    // Room again: the next append sets a chunk aside after the records, never over them.
    writer.room.fails = false;
    append(&mut writer, 41);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len.is_multiple_of(CHUNK) && len > writer.end, "{len}");
    drop(writer);
    let scan = recovery::check(dir.path()).unwrap();
    assert_eq!((scan.records, scan.next_offset), (41, 42));
    assert!(scan.damage.is_empty() && scan.torn_tail.is_none());
    assert!(scan.preallocated > 0);
}

#[tokio::test]
async fn failing_writes_mark_the_service_not_ready_until_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let readiness = Readiness::default();
    readiness.set(true);
    log.report_health(readiness.clone());
    log.append(record("ok-1")).await.unwrap();
    // Swap the writer's file for a read-only handle: every write fails, as on a full disk.
    let path = dir.path().join(LOG_FILE);
    let mut writer = writer_on(&path, File::open(&path).unwrap(), 0, 2);
    writer.health.readiness = log.health.clone();
    let mut buf = Vec::new();
    for i in 0..100 {
        let (j, mut done) = job(record(&format!("fail-{i}")));
        writer.commit(&mut vec![j], &mut buf);
        assert!(matches!(done.try_recv(), Ok(Err(AuditError::Io { .. }))));
        // A read-only handle cannot roll back either; a full disk can.
        writer.poisoned = None;
    }
    assert!(!readiness.is_ready());
    assert_eq!(
        writer.health.errors.suppressed(),
        99,
        "one line for 100 failures"
    );
    writer.file = OpenOptions::new().append(true).open(&path).unwrap();
    let (j, mut done) = job(record("ok-2"));
    writer.commit(&mut vec![j], &mut buf);
    assert!(matches!(done.try_recv(), Ok(Ok(_))));
    assert!(readiness.is_ready(), "ready again once a write succeeds");
}

#[tokio::test]
async fn same_id_other_payload_conflicts_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let alice = record("x");
    let mut mallory = record("x");
    mallory.account = "mallory".into();
    mallory.amount_minor = 999_999_999_999;
    assert_eq!(log.append(alice.clone()).await.unwrap().offset, 1);
    assert!(matches!(
        log.append(mallory.clone()).await,
        Err(AuditError::Conflict)
    ));
    assert_eq!(
        log.append(alice.clone()).await.unwrap(),
        Appended {
            offset: 1,
            duplicate: true,
            hlc: 0
        }
    );
    assert_eq!(log.len(), 1);
    // In one batch, too.
    let (a, b) = tokio::join!(
        log.append(record("y")),
        log.append({
            let mut r = record("y");
            r.merchant = "other".into();
            r
        })
    );
    assert!(a.is_ok() != b.is_ok());
    log.close();
    // And after a restart, from the digests on disk.
    let log = open(dir.path());
    assert!(matches!(
        log.append(mallory).await,
        Err(AuditError::Conflict)
    ));
    assert_eq!(log.append(alice).await.unwrap().offset, 1);
    assert_eq!(log.read(1, 1).unwrap()[0].payload_digest.len(), 32);
}
