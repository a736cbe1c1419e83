//! Fair overload control, end to end: whoever holds something is charged for it, and no
//! client, partition or hop can get another refused. A client that reads slowly does not
//! lower the limit for others; a stalled audit partition refuses its own transactions only;
//! one connection cannot squat every SubmitStream slot, and an idle stream gives its slot
//! back; rotating client ids do not push an honest newcomer out of its bucket; a CRITICAL
//! claim without a grant does not crowd out an honest DEFAULT client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::{Faults, Priority, Transaction};
use sluice_tests::{CLEAR, Mesh, MeshOptions, eventually, metric, metric_reaches, txn};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

fn with_gateway(flags: &[&str]) -> MeshOptions {
    MeshOptions {
        gateway: flags.iter().map(|f| f.to_string()).collect(),
        ..MeshOptions::default()
    }
}

/// OK and total unary calls made by a [`paced`] caller.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    total: AtomicU64,
}

impl Tally {
    fn get(&self) -> (u64, u64) {
        (
            self.ok.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// Unary Submits at `rate`/s with ids from `id`, each counted in the tally `count` picks
/// for its id (None: not counted), until `stop`.
fn paced(
    gw: GatewayClient<Channel>,
    rate: u64,
    id: impl Fn(u64) -> Transaction + Send + 'static,
    count: impl Fn(&str) -> Option<Arc<Tally>> + Send + Sync + 'static,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    let count = Arc::new(count);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        let mut calls = tokio::task::JoinSet::new();
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            n += 1;
            let (mut gw, count) = (gw.clone(), count.clone());
            let t = id(n);
            calls.spawn(async move {
                let tally = count(&t.id);
                let mut r = tonic::Request::new(t);
                r.set_timeout(Duration::from_secs(5));
                let ok = gw.submit(r).await.is_ok();
                if let Some(tally) = tally {
                    tally.total.fetch_add(1, Ordering::Relaxed);
                    tally.ok.fetch_add(u64::from(ok), Ordering::Relaxed);
                }
            });
        }
        while calls.join_next().await.is_some() {}
    })
}

/// The smallest value `name` takes while `stop` is unset, sampled every 100 ms.
fn lowest(admin: SocketAddr, name: &'static str, stop: Arc<AtomicBool>) -> JoinHandle<f64> {
    tokio::spawn(async move {
        let mut low = f64::INFINITY;
        while !stop.load(Ordering::Relaxed) {
            if let Some(v) = metric(admin, name).await {
                low = low.min(v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        low
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_reads_slowly_does_not_lower_the_limit_for_another() {
    let mesh = Mesh::start().await;
    let admin = mesh.gateway.admin.expect("admin");
    let initial = metric(admin, "sluice_gateway_concurrency_limit")
        .await
        .expect("limit exported");

    // The slow reader: a SubmitStream that sends without pause and reads an outcome every
    // 5 ms (slower than the mesh answers), on its own connection. Its outcomes wait for it;
    // a limit that read their delivery time would see seconds.
    let sending = Arc::new(AtomicBool::new(true));
    let slow = {
        let gw = mesh.gateway().await;
        let sending = sending.clone();
        let endless = tokio_stream::iter(0u64..)
            .map(|i| txn(&format!("slow-{i}")))
            .take_while(move |_| sending.load(Ordering::Relaxed));
        let mut outcomes = gw
            .clone()
            .submit_stream(endless)
            .await
            .expect("open SubmitStream")
            .into_inner();
        tokio::spawn(async move {
            let mut read = 0u64;
            while let Ok(Some(_)) = outcomes.message().await {
                read += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            read
        })
    };
    // Held outcomes pile up for the slow reader: wait until it has a full queue's worth
    // admitted, so the limit has had the chance to read its delivery time.
    metric_reaches(
        admin,
        "the slow reader's outcomes to fill its queue",
        (
            "sluice_gateway_transactions_total{api=\"stream\",result=\"ok\"}",
            1_200.0,
        ),
        Duration::from_secs(30),
    )
    .await;

    // Another client, polite, on its own connection, while the slow reader keeps sending.
    let stop = Arc::new(AtomicBool::new(false));
    let low = lowest(admin, "sluice_gateway_concurrency_limit", stop.clone());
    let tally = Arc::new(Tally::default());
    let other = {
        let tally = tally.clone();
        paced(
            mesh.gateway().await,
            100,
            |n| txn(&format!("other-{n}")),
            move |_| Some(tally.clone()),
            stop.clone(),
        )
    };
    eventually(
        "1,000 calls from the other client",
        Duration::from_secs(60),
        || async { (tally.get().1 >= 1_000).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    other.await.unwrap();
    let low = low.await.unwrap();
    sending.store(false, Ordering::Relaxed);
    slow.abort();
    let (ok, total) = tally.get();
    eprintln!(
        "limit {initial} at start, at least {low} while a slow reader held outcomes; other client {ok}/{total} OK"
    );
    assert!(
        low >= initial,
        "a slow reader lowered the concurrency limit from {initial} to {low}"
    );
    assert!(
        ok as f64 >= 0.99 * total as f64,
        "the other client got {ok} of {total} OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_partition_refuses_its_own_transactions_only() {
    let mesh = Mesh::start_with(MeshOptions {
        logging_partitions: 2,
        ..MeshOptions::default()
    })
    .await;
    let admin = mesh.gateway.admin.expect("admin");
    let stop = Arc::new(AtomicBool::new(false));
    let (healthy, stalled) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let counting = Arc::new(AtomicBool::new(false));
    let caller = {
        let (healthy, stalled, counting) = (healthy.clone(), stalled.clone(), counting.clone());
        paced(
            mesh.gateway().await,
            100,
            |n| txn(&format!("p-{n}")),
            move |id| {
                if !counting.load(Ordering::Relaxed) {
                    return None;
                }
                match sluice_proto::partition::of(id, 2) {
                    0 => Some(healthy.clone()),
                    _ => Some(stalled.clone()),
                }
            },
            stop.clone(),
        )
    };
    let most_level = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut most = 0f64;
            while !stop.load(Ordering::Relaxed) {
                if let Some(v) = metric(admin, "sluice_gateway_degradation_level").await {
                    most = most.max(v);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            most
        })
    };
    // Partition 1 stops reading.
    let partition_1 = &mesh.more_logging[0];
    mesh.set_faults(
        partition_1,
        Faults {
            stall: true,
            ..CLEAR
        },
    )
    .await;
    counting.store(true, Ordering::Relaxed);
    metric_reaches(
        admin,
        "partition 1 at its own level 3",
        (
            "sluice_gateway_partition_degradation_level{partition=\"1\"}",
            3.0,
        ),
        Duration::from_secs(30),
    )
    .await;
    // Partition 0's callers, counted through the stall and past it.
    eventually(
        "600 calls to partition 0 during the stall",
        Duration::from_secs(60),
        || async { (healthy.get().1 >= 600).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    caller.await.unwrap();
    let most_level = most_level.await.unwrap();
    let ((ok, total), (ok1, total1)) = (healthy.get(), stalled.get());
    eprintln!(
        "partition 1 stalled: partition 0 {ok}/{total} OK, partition 1 {ok1}/{total1} OK; gateway level at most {most_level}"
    );
    assert!(
        ok as f64 >= 0.99 * total as f64,
        "partition 0 got {ok} of {total} OK while partition 1 was stalled"
    );
    assert!(total1 > 0 && ok1 < total1, "partition 1 was not stalled");
    assert!(
        most_level < 3.0,
        "one stalled partition took the whole gateway to level {most_level}"
    );
    mesh.set_faults(partition_1, CLEAR).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_cannot_squat_every_stream_slot_and_idle_streams_give_theirs_back() {
    let mesh = Mesh::start_with(with_gateway(&["--stream-idle-timeout", "3s"])).await;
    let admin = mesh.gateway.admin.expect("admin");
    // The squatter: 256 SubmitStreams on one connection, each sending nothing.
    let squatter = mesh.gateway_channel().await;
    let mut opens = tokio::task::JoinSet::new();
    for _ in 0..256 {
        let mut gw = GatewayClient::new(squatter.clone());
        opens.spawn(async move {
            let silent = tokio_stream::pending::<Transaction>();
            gw.submit_stream(silent).await
        });
    }
    let (mut squatted, mut refused) = (Vec::new(), 0);
    while let Some(r) = opens.join_next().await {
        match r.unwrap() {
            Ok(stream) => squatted.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
                assert!(
                    status.message().contains("--max-streams-per-connection"),
                    "{status}"
                );
                refused += 1;
            }
        }
    }
    assert_eq!(squatted.len(), 32, "the per-connection share");
    assert_eq!(refused, 256 - 32);

    // Another client, on its own connection, while every squatted stream is still open.
    let gw = mesh.gateway().await;
    let (tx, mut outcomes) = sluice_tests::open_submit_stream(&gw, 4).await;
    tx.send(txn("newcomer")).await.unwrap();
    let outcome = outcomes.message().await.expect("outcome").expect("one");
    assert!(outcome.error.is_none(), "{outcome:?}");
    drop(tx);

    // The squatted streams hold their slots sending nothing: each ends UNAVAILABLE at the
    // idle timeout, and every slot comes back.
    for mut stream in squatted {
        let status = stream.message().await.expect_err("ended by the gateway");
        assert_eq!(status.code(), Code::Unavailable, "{status}");
        assert!(
            status.message().contains("--stream-idle-timeout"),
            "{status}"
        );
    }
    eventually("every slot free", Duration::from_secs(10), || async {
        (metric(admin, "sluice_gateway_submit_streams").await? == 0.0).then_some(())
    })
    .await;
    let idle = metric(
        admin,
        "sluice_gateway_rejected_total{api=\"stream\",reason=\"stream_idle\"}",
    )
    .await
    .unwrap_or(0.0);
    assert!(idle >= 32.0, "{idle} idle streams counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_client_ids_do_not_push_out_an_honest_newcomer() {
    let mesh = Mesh::start_with(with_gateway(&["--client-rate", "50"])).await;
    let admin = mesh.gateway.admin.expect("admin");
    let gw = mesh.gateway().await;
    let named = |t: Transaction, client: &str| {
        let mut r = tonic::Request::new(t);
        r.metadata_mut()
            .insert("x-client-id", client.parse().expect("ascii"));
        r.set_timeout(Duration::from_secs(5));
        r
    };
    // The rotator: at least 30,000 calls and on until the newcomer is done, each under a
    // client id never seen before, 16 at a time.
    let next = Arc::new(AtomicU64::new(0));
    let newcomer_done = Arc::new(AtomicBool::new(false));
    let rotator: Vec<_> = (0..16)
        .map(|_| {
            let (mut gw, next, done) = (gw.clone(), next.clone(), newcomer_done.clone());
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= 30_000 && done.load(Ordering::Relaxed) {
                        return;
                    }
                    let _ = gw
                        .submit(named(txn(&format!("rot-{n}")), &format!("rotating-{n}")))
                        .await;
                }
            })
        })
        .collect();
    // Every bucket taken: from here on each new id evicts the least recently used client.
    eventually(
        "the client buckets full",
        Duration::from_secs(120),
        || async {
            let evicted = metric(admin, "sluice_gateway_client_buckets_evicted_total").await?;
            (evicted > 0.0).then_some(())
        },
    )
    .await;
    // The newcomer: 100 calls at 20/s, under its rate, while the rotation goes on.
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut ok = 0;
    for i in 0..100 {
        tick.tick().await;
        ok += u32::from(
            gw.clone()
                .submit(named(txn(&format!("honest-{i}")), "honest-newcomer"))
                .await
                .is_ok(),
        );
    }
    newcomer_done.store(true, Ordering::Relaxed);
    for r in rotator {
        r.await.unwrap();
    }
    let evicted = metric(admin, "sluice_gateway_client_buckets_evicted_total")
        .await
        .unwrap_or(0.0);
    let rotated = next.load(Ordering::Relaxed);
    eprintln!("{rotated} rotating ids; newcomer {ok}/100 OK; {evicted} buckets evicted");
    // (Fewer than 20,000 when a trim forgot idle buckets first: a trim every 10 s.)
    assert!(evicted > 0.0, "the bound was never reached");
    assert!(ok >= 95, "an honest newcomer got {ok} of 100 OK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_claim_without_a_grant_does_not_crowd_out_an_honest_client() {
    // A small static limit, so that both clients are refused some of the time.
    let mesh = Mesh::start_with(with_gateway(&[
        "--concurrency-limit",
        "static",
        "--concurrency-max",
        "32",
        "--degradation",
        "off",
    ]))
    .await;
    let admin = mesh.gateway.admin.expect("admin");
    let stop = Arc::new(AtomicBool::new(false));
    // Each client: 32 callers in a closed loop on its own connection, no backoff beyond a
    // 5 ms pause after a refusal.
    let client = |priority: Priority, counted: Arc<Tally>, gw: GatewayClient<Channel>| {
        let stop = stop.clone();
        (0..32)
            .map(|w| {
                let (mut gw, stop, counted) = (gw.clone(), stop.clone(), counted.clone());
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let mut t = txn(&format!("{}-{w}-{n}", priority.as_str_name()));
                        t.priority = priority as i32;
                        let ok = gw.submit(t).await.is_ok();
                        counted.total.fetch_add(1, Ordering::Relaxed);
                        counted.ok.fetch_add(u64::from(ok), Ordering::Relaxed);
                        if !ok {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    let (claimant, honest) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let mut workers = client(Priority::Critical, claimant.clone(), mesh.gateway().await);
    workers.extend(client(
        Priority::Default,
        honest.clone(),
        mesh.gateway().await,
    ));
    eventually(
        "4,000 accepted between them",
        Duration::from_secs(120),
        || async { (claimant.get().0 + honest.get().0 >= 4_000).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let ((c_ok, c_total), (h_ok, h_total)) = (claimant.get(), honest.get());
    let demoted = metric(admin, "sluice_gateway_priority_demoted_total")
        .await
        .unwrap_or(0.0);
    let share = h_ok as f64 / (c_ok + h_ok) as f64;
    eprintln!(
        "CRITICAL claimant {c_ok}/{c_total} OK, honest DEFAULT {h_ok}/{h_total} OK: honest share {:.0} % of accepted; {demoted} claims demoted",
        share * 100.0
    );
    assert!(
        c_ok < c_total && h_ok < h_total,
        "nobody was refused: the limit never bound"
    );
    assert!(demoted > 0.0, "no claim was demoted");
    assert!(
        share >= 0.40,
        "the honest client kept {:.0} % of what was accepted",
        share * 100.0
    );
}
