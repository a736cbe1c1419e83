//! SubmitStream at volume: every transaction gets exactly one outcome and one audit record.

use std::collections::{HashMap, HashSet};

use sluice_tests::{Mesh, txn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_on_one_stream_get_ten_thousand_outcomes_and_records() {
    const N: usize = 10_000;
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;
    let messages = (0..N).map(|i| txn(&format!("bulk-{i}")));
    let mut outcomes = gw
        .submit_stream(tokio_stream::iter(messages))
        .await
        .expect("stream")
        .into_inner();
    let mut offsets: HashMap<String, u64> = HashMap::new();
    while let Some(o) = outcomes.message().await.expect("stream ends OK") {
        assert!(o.error.is_none(), "{}: {:?}", o.id, o.error);
        assert!(
            offsets.insert(o.id.clone(), o.audit_offset).is_none(),
            "duplicate outcome for {}",
            o.id
        );
    }
    assert_eq!(offsets.len(), N);
    let unique: HashSet<u64> = offsets.values().copied().collect();
    assert_eq!(unique.len(), N, "audit offsets are unique");

    let entries = mesh.audit_entries().await;
    assert_eq!(entries.len(), N, "Read returns each id once");
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(
            e.offset,
            i as u64 + 1,
            "offsets start at 1 and increase by 1"
        );
        assert_eq!(
            offsets.get(&e.id),
            Some(&e.offset),
            "{} logged at the acknowledged offset",
            e.id
        );
    }
}
