//! Unary and streaming API behaviour: decisions, validation, idempotency.

use std::collections::HashSet;

use sluice_proto::pb::{Decision, NotificationStatus, Transaction};
use sluice_tests::{Mesh, txn};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_follow_the_rules() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;

    let ok = gw.submit(txn("plain-1")).await.expect("plain").into_inner();
    assert_eq!(ok.decision(), Decision::Approve);
    assert_eq!(ok.reasons, vec!["within_limits"]);
    assert!(ok.risk_score < 0.5);
    assert_eq!(ok.notification(), NotificationStatus::Queued);
    assert!(ok.audit_offset >= 1);

    let blocked = gw
        .submit(Transaction {
            merchant: "blocked-merchant".into(),
            ..txn("blocked-1")
        })
        .await
        .expect("blocked")
        .into_inner();
    assert_eq!(blocked.decision(), Decision::Decline);
    assert_eq!(blocked.risk_score, 1.0);
    assert_eq!(blocked.reasons, vec!["merchant_blocked"]);

    let large = gw
        .submit(Transaction {
            amount_minor: 1_000_001,
            ..txn("large-1")
        })
        .await
        .expect("large")
        .into_inner();
    assert_eq!(large.decision(), Decision::Review);
    assert_eq!(large.reasons, vec!["amount_over_review_threshold"]);
    let edge = gw
        .submit(Transaction {
            amount_minor: 1_000_000,
            ..txn("edge-1")
        })
        .await
        .expect("edge")
        .into_inner();
    assert_eq!(edge.decision(), Decision::Approve);

    // Twenty transactions for one account within 60 s are fine; the 21st goes to review.
    for i in 1..=21 {
        let t = Transaction {
            account: "velocity-acct".into(),
            ..txn(&format!("vel-{i}"))
        };
        let o = gw.submit(t).await.expect("velocity").into_inner();
        if i <= 20 {
            assert_eq!(o.decision(), Decision::Approve, "transaction {i}");
        } else {
            assert_eq!(o.decision(), Decision::Review, "transaction {i}");
            assert_eq!(o.reasons, vec!["account_velocity"]);
        }
    }
}

fn invalid_cases() -> Vec<(&'static str, Transaction)> {
    vec![
        (
            "id",
            Transaction {
                id: String::new(),
                ..txn("x")
            },
        ),
        (
            "id",
            Transaction {
                id: "a".repeat(65),
                ..txn("x")
            },
        ),
        (
            "id",
            Transaction {
                id: "bad id!".into(),
                ..txn("x")
            },
        ),
        (
            "account",
            Transaction {
                account: String::new(),
                ..txn("bad-account")
            },
        ),
        (
            "account",
            Transaction {
                account: "a".repeat(65),
                ..txn("long-account")
            },
        ),
        (
            "amount_minor",
            Transaction {
                amount_minor: 0,
                ..txn("zero-amount")
            },
        ),
        (
            "amount_minor",
            Transaction {
                amount_minor: 1_000_000_000_001,
                ..txn("huge-amount")
            },
        ),
        (
            "currency",
            Transaction {
                currency: "eur".into(),
                ..txn("lower-currency")
            },
        ),
        (
            "currency",
            Transaction {
                currency: "EURO".into(),
                ..txn("long-currency")
            },
        ),
        (
            "merchant",
            Transaction {
                merchant: String::new(),
                ..txn("no-merchant")
            },
        ),
        (
            "merchant",
            Transaction {
                merchant: "m".repeat(129),
                ..txn("long-merchant")
            },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_rejected_per_field_on_both_apis() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;

    for (field, t) in invalid_cases() {
        let status = gw
            .submit(t)
            .await
            .expect_err("invalid transaction accepted");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            status.message().starts_with(&format!("{field}:")),
            "message {:?} should name {field}",
            status.message()
        );
    }

    // On a stream, each bad message gets an error outcome and the stream goes on.
    let cases = invalid_cases();
    let mut messages: Vec<Transaction> = Vec::new();
    for (i, (_, t)) in cases.iter().enumerate() {
        messages.push(t.clone());
        messages.push(txn(&format!("stream-valid-{i}")));
    }
    let outcomes: Vec<_> = {
        let mut s = gw
            .submit_stream(tokio_stream::iter(messages))
            .await
            .expect("stream")
            .into_inner();
        let mut v = Vec::new();
        while let Some(o) = s.message().await.expect("stream stays healthy") {
            v.push(o);
        }
        v
    };
    assert_eq!(outcomes.len(), cases.len() * 2);
    let errors: Vec<_> = outcomes.iter().filter_map(|o| o.error.as_ref()).collect();
    assert_eq!(errors.len(), cases.len());
    for e in &errors {
        assert_eq!(e.code, Code::InvalidArgument as i32);
    }
    for (field, _) in &cases {
        assert!(
            errors
                .iter()
                .any(|e| e.message.starts_with(&format!("{field}:"))),
            "no stream error names {field}"
        );
    }
    let ok: HashSet<_> = outcomes
        .iter()
        .filter(|o| o.error.is_none())
        .map(|o| o.id.clone())
        .collect();
    assert_eq!(
        ok.len(),
        cases.len(),
        "every valid message after a bad one succeeds"
    );
    assert!(
        outcomes
            .iter()
            .filter(|o| o.error.is_none())
            .all(|o| o.audit_offset > 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitted_ids_keep_their_original_offset() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;
    let first = gw.submit(txn("dup-1")).await.expect("first").into_inner();
    let again = gw.submit(txn("dup-1")).await.expect("again").into_inner();
    assert_eq!(first.audit_offset, again.audit_offset);

    // Concurrent resubmits of one id, on a stream and as unary calls at once.
    let stream_msgs: Vec<_> = (0..50).map(|_| txn("dup-2")).collect();
    let mut s = gw
        .submit_stream(tokio_stream::iter(stream_msgs))
        .await
        .expect("stream")
        .into_inner();
    let mut unary = Vec::new();
    for _ in 0..20 {
        let mut gw = gw.clone();
        unary.push(tokio::spawn(async move {
            gw.submit(txn("dup-2"))
                .await
                .map(|r| r.into_inner().audit_offset)
        }));
    }
    let mut offsets = HashSet::new();
    while let Some(o) = s.message().await.expect("stream") {
        assert!(o.error.is_none(), "{:?}", o.error);
        offsets.insert(o.audit_offset);
    }
    for u in unary {
        offsets.insert(u.await.unwrap().expect("unary resubmit"));
    }
    assert_eq!(
        offsets.len(),
        1,
        "every resubmit of dup-2 got one offset: {offsets:?}"
    );

    let entries = mesh.audit_entries().await;
    assert_eq!(entries.iter().filter(|e| e.id == "dup-1").count(), 1);
    assert_eq!(entries.iter().filter(|e| e.id == "dup-2").count(), 1);
    assert_eq!(entries.len(), 2);
}
