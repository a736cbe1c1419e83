//! The audit log's promises, against the real binaries: damage is refused and repaired
//! without losing or renumbering a record; an id reused for another transaction is refused;
//! a replay is reported as one; logging validates and authenticates on its own.

use std::process::Command;
use std::time::Duration;

use sluice_proto::pb::logging_client::LoggingClient;
use sluice_proto::pb::{AppendRequest, Decision, ReadRequest, Transaction};
use sluice_tests::{Mesh, MeshOptions, bin_dir, txn};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// Runs `sluice-logging <args>` to completion: (exit code, stdout, stderr).
fn logging_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_dir().join("sluice-logging"))
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_LOG", "off")
        .output()
        .expect("run sluice-logging");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mid_file_damage_is_refused_checked_and_repaired_without_losing_offsets() {
    let mut mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;
    let msgs: Vec<_> = (0..600).map(|i| txn(&format!("dmg-{i}"))).collect();
    let mut s = gw
        .submit_stream(tokio_stream::iter(msgs))
        .await
        .expect("stream")
        .into_inner();
    let mut acked = Vec::new();
    while let Some(o) = s.message().await.expect("outcome") {
        assert!(o.error.is_none(), "{:?}", o.error);
        acked.push((o.id, o.audit_offset));
    }
    assert_eq!(acked.len(), 600);

    // Stop logging cleanly, then flip one byte in the middle of the log.
    mesh.logging.sigterm().expect("sigterm logging");
    assert!(mesh.logging.wait_exit(Duration::from_secs(20)).is_some());
    // The gateway has seen it go: its SERVING after the restart below is then news.
    mesh.wait_gateway(ServingStatus::NotServing).await;
    let dir = mesh.data_dir.path().to_path_buf();
    let dir_arg = dir.to_str().unwrap();
    let log = dir.join("audit.log");
    let mut bytes = std::fs::read(&log).unwrap();
    // The middle of the records, not of the zeros the writer set aside after them.
    let records = bytes.iter().rposition(|&b| b != 0).expect("records") + 1;
    assert!(
        records < bytes.len(),
        "room set aside after the records (--preallocate)"
    );
    bytes[records / 2] ^= 0x10;
    std::fs::write(&log, &bytes).unwrap();

    // check: reports, changes nothing, exit 65.
    let (code, out, _) = logging_cli(&["check", "--data-dir", dir_arg]);
    assert_eq!(code, 65, "{out}");
    assert!(out.contains("DAMAGED bytes"), "{out}");
    assert!(out.contains("set aside: bytes"), "{out}");
    assert_eq!(std::fs::read(&log).unwrap(), bytes, "check changed the log");

    // A start refuses with exit 65 and one line naming the file, byte and offset.
    let (code, _, err) = logging_cli(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg,
    ]);
    assert_eq!(code, 65, "{err}");
    let lines: Vec<_> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    assert!(lines[0].contains(&log.display().to_string()), "{err}");
    assert!(lines[0].contains("damaged at byte ") && lines[0].contains("record offset "));
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "a refused start changed the log"
    );

    // repair: quarantines, keeps every other record at its offset.
    let (code, out, err) = logging_cli(&["repair", "--data-dir", dir_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("quarantined: "), "{out}");
    let quarantined = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("audit.log.quarantine")
        })
        .count();
    assert_eq!(quarantined, 1);
    assert_eq!(logging_cli(&["check", "--data-dir", dir_arg]).0, 0);

    mesh.restart_logging();
    mesh.wait_gateway(ServingStatus::Serving).await;
    let entries = mesh.audit_entries().await;
    assert!(
        entries.len() >= 598 && entries.len() < 600,
        "{} entries after: {out}",
        entries.len()
    );
    let by_id: std::collections::HashMap<_, _> =
        entries.iter().map(|e| (e.id.clone(), e.offset)).collect();
    for (id, offset) in &acked {
        if let Some(o) = by_id.get(id) {
            assert_eq!(o, offset, "{id} moved");
        }
    }
    // New records continue after the highest offset ever handed out: none is reused.
    let new = gw
        .submit(txn("after-repair"))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(new.audit_offset, 601);
}

/// Issue 23: one flipped bit in the *last* acknowledged record. On disk it looks like a torn
/// write; the recovery point says it was durable, so it is damage: the start refuses (65),
/// `check` names it, `repair` quarantines it behind a gap marker, and its offset is never
/// handed to another transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rot_in_the_last_acknowledged_record_is_damage_and_its_offset_never_reused() {
    let mut mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;
    for i in 0..50 {
        let o = gw
            .submit(txn(&format!("rot-{i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(o.audit_offset, i + 1);
    }
    mesh.logging.sigterm().expect("sigterm logging");
    assert!(mesh.logging.wait_exit(Duration::from_secs(20)).is_some());
    mesh.wait_gateway(ServingStatus::NotServing).await;
    let dir = mesh.data_dir.path().to_path_buf();
    let dir_arg = dir.to_str().unwrap();
    let log = dir.join("audit.log");
    let mut bytes = std::fs::read(&log).unwrap();
    // The last byte of the last record (the zeros after it are room set aside).
    let last = bytes.iter().rposition(|&b| b != 0).expect("records");
    bytes[last] ^= 0x01;
    std::fs::write(&log, &bytes).unwrap();

    let (code, out, _) = logging_cli(&["check", "--data-dir", dir_arg]);
    assert_eq!(code, 65, "{out}");
    assert!(
        out.contains("DAMAGED bytes") && out.contains("offsets 50-50"),
        "{out}"
    );
    assert!(out.contains("at or below the recovery point"), "{out}");
    assert!(!out.contains("never acknowledged"), "{out}");
    let (code, _, err) = logging_cli(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--data-dir",
        dir_arg,
    ]);
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("record offset 50"), "{err}");
    assert_eq!(
        std::fs::read(&log).unwrap(),
        bytes,
        "a refused start changed the log"
    );

    let (code, out, err) = logging_cli(&["repair", "--data-dir", dir_arg]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("quarantined: "), "{out}");
    assert_eq!(logging_cli(&["check", "--data-dir", dir_arg]).0, 0);
    mesh.restart_logging();
    mesh.wait_gateway(ServingStatus::Serving).await;
    let offsets: Vec<u64> = mesh
        .audit_entries()
        .await
        .iter()
        .map(|e| e.offset)
        .collect();
    assert_eq!(
        offsets,
        (1..50).collect::<Vec<_>>(),
        "every other record at its offset"
    );
    let next = gw.submit(txn("after-rot")).await.unwrap().into_inner();
    assert_eq!(
        next.audit_offset, 51,
        "offset 50 names one transaction only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_reused_for_another_transaction_is_refused_and_a_replay_is_reported() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;
    let alice = Transaction {
        account: "alice".into(),
        amount_minor: 100,
        merchant: "shop".into(),
        ..txn("reuse-1")
    };
    let mallory = Transaction {
        account: "mallory".into(),
        amount_minor: 999_999_999_999,
        merchant: "blocked-merchant".into(),
        ..txn("reuse-1")
    };
    let first = gw.submit(alice.clone()).await.expect("first").into_inner();
    assert_eq!(first.decision(), Decision::Approve);
    assert!(!first.replayed);

    let err = gw.submit(mallory.clone()).await.expect_err("reuse");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(
        err.message(),
        "id: already used for a different transaction"
    );

    let replay = gw.submit(alice.clone()).await.expect("replay").into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.audit_offset, first.audit_offset);
    assert_eq!(replay.decision(), Decision::Approve);

    // The same on a stream, and the stream goes on.
    let mut s = gw
        .submit_stream(tokio_stream::iter(vec![mallory, alice, txn("reuse-2")]))
        .await
        .expect("stream")
        .into_inner();
    let mut outcomes = Vec::new();
    while let Some(o) = s.message().await.expect("outcome") {
        outcomes.push(o);
    }
    outcomes.sort_by_key(|o| (o.id.clone(), o.error.is_none()));
    assert_eq!(outcomes.len(), 3);
    let refused = outcomes[0].error.as_ref().expect("refused");
    assert_eq!(refused.code, Code::AlreadyExists as i32);
    assert!(outcomes[1].replayed && outcomes[1].audit_offset == first.audit_offset);
    assert!(!outcomes[2].replayed && outcomes[2].error.is_none());

    let entries = mesh.audit_entries().await;
    let reuse: Vec<_> = entries.iter().filter(|e| e.id == "reuse-1").collect();
    assert_eq!(reuse.len(), 1, "nothing written for the reuse");
    assert_eq!(reuse[0].account, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_do_not_count_toward_velocity() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;
    let t = |i: usize| Transaction {
        account: "replay-velocity".into(),
        ..txn(&format!("rv-{i}"))
    };
    for i in 1..=20 {
        let o = gw.submit(t(i)).await.expect("submit").into_inner();
        assert_eq!(o.decision(), Decision::Approve, "{i}");
    }
    // A client retrying one of them many times is still at 20.
    for _ in 0..10 {
        let o = gw.submit(t(7)).await.expect("replay").into_inner();
        assert!(o.replayed);
        assert_eq!(o.decision(), Decision::Approve);
    }
    let o = gw.submit(t(21)).await.expect("21st").into_inner();
    assert_eq!(o.decision(), Decision::Review);
}

fn append((i, txn): (usize, Transaction)) -> AppendRequest {
    AppendRequest {
        correlation_id: i as u64,
        transaction: Some(txn),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_validates_and_requires_the_mesh_token() {
    let token = "mesh-secret-1";
    let mesh = Mesh::start_with(MeshOptions {
        gateway: vec!["--mesh-token".into(), token.into()],
        logging: vec!["--mesh-token".into(), token.into()],
        ..Default::default()
    })
    .await;
    // The gateway presents the token: the mesh works.
    let mut gw = mesh.gateway().await;
    let ok = gw.submit(txn("tok-1")).await.expect("submit").into_inner();
    assert!(ok.audit_offset >= 1);

    let mut client = LoggingClient::connect(mesh.logging.url()).await.unwrap();
    // No token: UNAUTHENTICATED for Append and Read.
    let err = client
        .append(tokio_stream::iter(vec![append((0, txn("squat-id-1")))]))
        .await
        .expect_err("append without a token");
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = client
        .read(ReadRequest::default())
        .await
        .expect_err("read without a token");
    assert_eq!(err.code(), Code::Unauthenticated);

    // With the token, invalid records are refused, naming the field.
    fn with_token<T>(mut r: tonic::Request<T>) -> tonic::Request<T> {
        r.metadata_mut()
            .insert("authorization", "Bearer mesh-secret-1".parse().unwrap());
        r
    }
    let bad = vec![
        (
            "account",
            Transaction {
                account: String::new(),
                amount_minor: -5,
                ..txn("squat-id-1")
            },
        ),
        (
            "amount_minor",
            Transaction {
                amount_minor: -5,
                ..txn("squat-id-2")
            },
        ),
        (
            "merchant",
            Transaction {
                merchant: "shop\u{1b}[31m".into(),
                ..txn("squat-id-3")
            },
        ),
        (
            "account",
            Transaction {
                account: "a\0b".into(),
                ..txn("squat-id-4")
            },
        ),
        ("id", txn("squat\nid")),
    ];
    let fields: Vec<_> = bad.iter().map(|(f, _)| *f).collect();
    let mut acks = client
        .append(with_token(tonic::Request::new(tokio_stream::iter(
            bad.into_iter()
                .map(|(_, t)| t)
                .enumerate()
                .map(append)
                .collect::<Vec<_>>(),
        ))))
        .await
        .expect("append")
        .into_inner();
    let mut got = Vec::new();
    while let Some(ack) = acks.message().await.expect("ack") {
        let e = ack.error.expect("refused");
        assert_eq!(e.code, Code::InvalidArgument as i32, "{}", e.message);
        got.push((ack.correlation_id, e.message));
    }
    got.sort();
    let got: Vec<_> = got.into_iter().map(|(_, m)| m).collect();
    assert_eq!(got.len(), fields.len());
    for (message, field) in got.iter().zip(&fields) {
        assert!(message.starts_with(&format!("{field}: ")), "{message}");
    }
    // Nothing was stored, so the gateway's later Submit of a squatted id is fresh.
    let o = gw
        .submit(txn("squat-id-1"))
        .await
        .expect("submit")
        .into_inner();
    assert!(!o.replayed);
    let mut read = client
        .read(with_token(tonic::Request::new(ReadRequest::default())))
        .await
        .expect("read with token")
        .into_inner();
    let mut ids = Vec::new();
    while let Some(e) = read.message().await.unwrap() {
        ids.push(e.id);
    }
    assert_eq!(ids, vec!["tok-1", "squat-id-1"]);
}

/// Protected mode: a logging beyond loopback with no mesh token refuses to start, exit 64 and
/// one line saying what to do; with a token file, or on loopback, it starts.
#[test]
fn an_open_audit_log_beyond_loopback_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let logging = |args: &[&str]| {
        std::process::Command::new(sluice_tests::bin_dir().join("sluice-logging"))
            .args(["--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .args(args)
            .env_remove("SLUICE_MESH_TOKEN")
            .env_remove("SLUICE_MESH_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let out = logging(&["--listen", "0.0.0.0:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--mesh-token-file") && stderr.contains("--allow-open-audit-log"),
        "{stderr}"
    );
    let token = data.path().join("mesh-token");
    std::fs::write(&token, "t0ken\n").unwrap();
    let with_token = sluice_tests::Proc::spawn(
        sluice_tests::bin_dir(),
        "sluice-logging",
        &[
            "--listen".into(),
            "0.0.0.0:0".into(),
            "--admin-listen".into(),
            "127.0.0.1:0".into(),
            "--data-dir".into(),
            data.path().join("served").to_string_lossy().into_owned(),
            "--mesh-token-file".into(),
            token.to_string_lossy().into_owned(),
        ],
    );
    assert!(with_token.is_ok(), "starts with a token file");
}
