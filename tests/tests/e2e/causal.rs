//! One causal history across audit partitions: every transaction stamped with its
//! gateway's hybrid logical clock, stored in its record, and each account's history read
//! back from every partition, ordered by clock, in the order its client established with
//! `after_hlc`. `sluice-loadgen run --causal` + `verify` + `history` do the same from the
//! command line.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use sluice_lab::loadgen::report::audit::{Located, history};
use sluice_lab::procs::MeshOptions;
use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::{Outcome, Transaction};
use sluice_tests::{Mesh, loadgen_json};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

const ACCOUNTS: usize = 20;
const PER_ACCOUNT: usize = 40;
const CLIENTS: usize = 8;

fn payment(account: usize, n: usize, after_hlc: u64) -> Transaction {
    Transaction {
        id: format!("causal-{account}-{n}"),
        account: format!("acct-causal-{account}"),
        amount_minor: 100 + n as i64,
        currency: "EUR".into(),
        merchant: "corner-shop".into(),
        after_hlc,
        ..Default::default()
    }
}

async fn client(url: String) -> GatewayClient<Channel> {
    GatewayClient::new(
        Channel::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect to a gateway"),
    )
}

/// `CLIENTS` clients, each taking its share of the accounts and interleaving them: each
/// account's transactions go one after another, each after the previous outcome's clock,
/// through the gateways in turn. Returns every outcome by (account, n).
async fn drive(gateways: &[String]) -> BTreeMap<(usize, usize), Outcome> {
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let gateways = gateways.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut clients = Vec::new();
            for g in &gateways {
                clients.push(client(g.clone()).await);
            }
            let mine: Vec<usize> = (0..ACCOUNTS).filter(|a| a % CLIENTS == c).collect();
            let mut last: HashMap<usize, u64> = HashMap::new();
            let mut out = Vec::new();
            for n in 0..PER_ACCOUNT {
                for &a in &mine {
                    let after = last.get(&a).copied().unwrap_or(0);
                    // With two gateways, each account alternates between them.
                    let gw = &mut clients[(a + n) % gateways.len()];
                    let outcome = gw
                        .submit(payment(a, n, after))
                        .await
                        .unwrap_or_else(|s| panic!("account {a} #{n}: {s:?}"))
                        .into_inner();
                    assert!(outcome.error.is_none(), "{outcome:?}");
                    last.insert(a, outcome.hlc);
                    out.push(((a, n), outcome));
                }
            }
            out
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    all
}

/// What both tests check: every outcome's clock is non-zero and its record's; within a
/// minute of the wall clock; each account's records from every partition, merged by
/// (hlc, partition, offset), are exactly its submit order. Returns the merged history.
async fn check_history(mesh: &Mesh, outcomes: &BTreeMap<(usize, usize), Outcome>) -> Vec<Located> {
    assert_eq!(outcomes.len(), ACCOUNTS * PER_ACCOUNT);
    let merged = history(&mesh.logging_urls(), None)
        .await
        .expect("read every partition");
    assert_eq!(merged.len(), ACCOUNTS * PER_ACCOUNT);
    let by_id: HashMap<&str, &Located> = merged.iter().map(|r| (r.entry.id.as_str(), r)).collect();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut partitions = std::collections::BTreeSet::new();
    for ((a, n), o) in outcomes {
        let id = format!("causal-{a}-{n}");
        let record = by_id[id.as_str()];
        partitions.insert(record.partition);
        assert_ne!(o.hlc, 0, "{id}: no clock");
        assert_eq!(o.hlc, record.entry.hlc, "{id}: outcome and record disagree");
        assert_eq!(
            (o.audit_partition, o.audit_offset),
            (record.partition, record.entry.offset)
        );
        let physical = o.hlc >> 16;
        assert!(
            now_ms.abs_diff(physical) < 60_000,
            "{id}: {physical} ms vs {now_ms}"
        );
    }
    assert_eq!(
        partitions.len(),
        2,
        "the accounts' records span both partitions"
    );
    for a in 0..ACCOUNTS {
        let account = format!("acct-causal-{a}");
        let order: Vec<&str> = merged
            .iter()
            .filter(|r| r.entry.account == account)
            .map(|r| r.entry.id.as_str())
            .collect();
        let submitted: Vec<String> = (0..PER_ACCOUNT)
            .map(|n| format!("causal-{a}-{n}"))
            .collect();
        assert_eq!(
            order, submitted,
            "{account}'s history out of its submit order"
        );
        let spans: std::collections::BTreeSet<u32> = merged
            .iter()
            .filter(|r| r.entry.account == account)
            .map(|r| r.partition)
            .collect();
        assert_eq!(spans.len(), 2, "{account} lands on both partitions");
    }
    merged
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_two_partitions_each_account_reads_in_submit_order() {
    let mesh = Mesh::start_with(MeshOptions {
        logging_partitions: 2,
        ..Default::default()
    })
    .await;
    let outcomes = drive(&[mesh.gateway.url()]).await;
    check_history(&mesh, &outcomes).await;
    let mut clocks: Vec<u64> = outcomes.values().map(|o| o.hlc).collect();
    clocks.sort_unstable();
    clocks.dedup();
    assert_eq!(
        clocks.len(),
        outcomes.len(),
        "one gateway's clocks are all distinct"
    );

    // A clock 300 ms ahead (within the offset) is passed: the stamp comes after it.
    let mut gw = mesh.gateway().await;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let ahead = (now_ms + 300) << 16;
    let after = gw
        .submit(payment(98, 0, ahead))
        .await
        .expect("an after_hlc 300 ms ahead")
        .into_inner();
    assert!(after.hlc > ahead, "{} not after {ahead}", after.hlc);

    // A clock far ahead is refused, and counted.
    let far = (outcomes.values().map(|o| o.hlc).max().unwrap() >> 16) + 60_000;
    let refused = gw
        .submit(payment(99, 0, far << 16))
        .await
        .expect_err("an after_hlc a minute ahead");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("--max-clock-offset"),
        "{refused:?}"
    );
    let admin = mesh.gateway.admin.unwrap();
    assert_eq!(
        sluice_tests::metric(admin, "sluice_gateway_clock_refused_total").await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_alternating_keep_each_history_causal_and_replays_keep_their_clock() {
    let mesh = Mesh::start_with(MeshOptions {
        logging_partitions: 2,
        ..Default::default()
    })
    .await;
    // The second gateway's wall clock runs 300 ms slow: alternating without `after_hlc`,
    // its stamps would sort before the first one's earlier transactions.
    let second = mesh
        .another_gateway(&["--test-clock-behind", "300ms"])
        .expect("a second gateway");
    sluice_tests::wait_gateway_at(&second.url(), ServingStatus::Serving).await;
    let outcomes = drive(&[mesh.gateway.url(), second.url()]).await;
    let merged = check_history(&mesh, &outcomes).await;
    assert!(merged.windows(2).all(|w| w[0].order() < w[1].order()));

    // A replay through the other gateway returns the first clock.
    let first = &outcomes[&(3, 0)];
    let mut other = client(second.url()).await;
    let again = other
        .submit(payment(3, 0, 0))
        .await
        .expect("a replay")
        .into_inner();
    assert!(again.replayed, "{again:?}");
    assert_eq!(
        (again.hlc, again.audit_offset),
        (first.hlc, first.audit_offset)
    );
}

/// The command line: `run --causal` chains each account, `verify` checks every clock and
/// link, `history` prints the merged history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_causal_then_verify_and_history() {
    let mesh = Mesh::start_with(MeshOptions {
        logging_partitions: 2,
        ..Default::default()
    })
    .await;
    let (out, report) = loadgen_json(&[
        "run",
        "--target",
        &mesh.gateway.url(),
        "--mode",
        "unary",
        "--rate",
        "300",
        "--duration",
        "2s",
        "--causal",
    ])
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let acked = report["acked"].as_array().expect("acked");
    let chained = acked
        .iter()
        .filter(|a| a["after_hlc"].as_u64().is_some())
        .count();
    assert!(
        acked.len() > 300 && chained > 0,
        "{} acked, {chained} chained",
        acked.len()
    );
    assert!(
        acked
            .iter()
            .all(|a| a["hlc"].as_u64().is_some_and(|h| h > 0))
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    std::fs::write(&path, report.to_string()).unwrap();
    let bin = sluice_tests::bin_dir().join("sluice-loadgen");
    let verify = tokio::process::Command::new(&bin)
        .args(["verify", "--logging", &mesh.logging_urls(), "--report"])
        .arg(&path)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{text}");
    let check: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in ["missing", "wrong_offset", "wrong_clock", "out_of_order"] {
        assert_eq!(
            check[field].as_array().map(Vec::len),
            Some(0),
            "{field}: {text}"
        );
    }
    let first_id = report["acked"][0]["id"].as_str().unwrap().to_string();
    let history = tokio::process::Command::new(&bin)
        .args([
            "history",
            "--logging",
            &mesh.logging_urls(),
            "--since",
            "10m",
        ])
        .output()
        .await
        .unwrap();
    let lines = String::from_utf8_lossy(&history.stdout);
    assert!(history.status.success());
    assert!(lines.lines().count() >= acked.len(), "{lines}");
    assert!(lines.contains(&first_id), "{first_id} not in the history");
    // Merged by clock: the lines' times never go back.
    let times: Vec<&str> = lines.lines().filter_map(|l| l.split(' ').next()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{lines}");
}
