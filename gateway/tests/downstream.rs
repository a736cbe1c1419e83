//! The downstream stream client in process: a real tonic Risk server on 127.0.0.1:0 whose
//! reading the test controls, and the client as a tower Service over it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_gateway::downstream::linger::LingerMode;
use sluice_gateway::downstream::{Admission, Downstream, DownstreamConfig, HopCall, Workers};
use sluice_proto::HopRequest;
use sluice_proto::pb::risk_server::{Risk, RiskServer};
use sluice_proto::pb::{RiskRequest, RiskVerdict, Transaction};
use tokio::sync::Semaphore;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use tower::{Service, ServiceExt};

/// A Risk service that reads a message only with a permit from `reads`, and answers each
/// at once — or ends the stream with UNAVAILABLE when `break_streams` is set.
#[derive(Clone)]
struct Scripted {
    reads: Arc<Semaphore>,
    break_streams: bool,
}

#[tonic::async_trait]
impl Risk for Scripted {
    type AssessStream = ReceiverStream<Result<RiskVerdict, Status>>;

    async fn assess(
        &self,
        request: Request<Streaming<RiskRequest>>,
    ) -> Result<Response<Self::AssessStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let (reads, break_streams) = (self.reads.clone(), self.break_streams);
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            loop {
                let Ok(permit) = reads.acquire().await else {
                    return;
                };
                permit.forget();
                let Ok(Some(r)) = inbound.message().await else {
                    return;
                };
                let reply = if break_streams {
                    Err(Status::unavailable("scripted break"))
                } else {
                    Ok(RiskVerdict {
                        correlation_id: r.correlation_id,
                        risk_score: 7.0,
                        ..Default::default()
                    })
                };
                let broke = reply.is_err();
                if tx.send(reply).await.is_err() || broke {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A server that reads and answers everything (as fast as it comes).
async fn answering() -> String {
    server(Scripted {
        reads: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
        break_streams: false,
    })
    .await
}

async fn server(script: Scripted) -> String {
    server_of(RiskServer::new(script)).await
}

async fn server_of<S: Risk>(service: RiskServer<S>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}

fn config(queue: usize, stream_inflight: usize) -> DownstreamConfig {
    DownstreamConfig {
        queue,
        streams: 1,
        stream_inflight,
        immediate_reserved: 0,
        ..Default::default()
    }
}

/// The client, and its stream workers (dropping them stops the streams).
fn client(url: &str, config: DownstreamConfig) -> (Downstream<RiskRequest>, Workers) {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string()).unwrap();
    Downstream::start(
        sluice_gateway::downstream::connect_lazy(endpoint),
        config,
        &mut Registry::default(),
        CancellationToken::new(),
    )
}

fn call(id: &str) -> HopCall<RiskRequest> {
    let txn = Transaction {
        id: id.to_string(),
        ..Default::default()
    };
    HopCall {
        request: sluice_proto::Encoded::of(txn, 0),
        deadline: Instant::now() + Duration::from_secs(30),
        span: tracing::Span::none(),
    }
}

/// Waits (polling the state, at most 10 s) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    let give_up = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < give_up, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn until_live(d: &Downstream<RiskRequest>) {
    until("a stream is live", || d.is_live()).await;
}

#[tokio::test]
async fn replies_find_their_requests() {
    let reads = Arc::new(Semaphore::new(1000));
    let url = server(Scripted {
        reads,
        break_streams: false,
    })
    .await;
    let (d, _workers) = client(&url, config(16, 4));
    until_live(&d).await;
    let mut replies = Vec::new();
    for i in 0..8 {
        let svc = d.service(Admission::Wait);
        replies.push(svc.oneshot(call(&format!("t{i}"))));
    }
    for reply in futures::future::join_all(replies).await {
        let verdict = reply.expect("a verdict");
        assert_eq!(verdict.risk_score, 7.0);
        assert!(verdict.correlation_id > 0);
    }
}

#[tokio::test]
async fn readiness_is_queue_room() {
    // The service reads nothing: one request goes out (stream_inflight 1), three fill the
    // queue, and then the downstream is not ready.
    let reads = Arc::new(Semaphore::new(0));
    let url = server(Scripted {
        reads: reads.clone(),
        break_streams: false,
    })
    .await;
    let (d, _workers) = client(&url, config(3, 1));
    until_live(&d).await;
    let mut replies = Vec::new();
    for i in 0..4 {
        let svc = d.service(Admission::Wait);
        replies.push(tokio::spawn(svc.oneshot(call(&format!("t{i}")))));
    }
    until("the queue is full", || d.queue_depth() == 3).await;
    let mut waiting = d.service(Admission::Wait);
    assert!(
        waiting.ready().now_or_never().is_none(),
        "a waiting caller parks while the queue is full"
    );
    let mut immediate = d.service(Admission::Immediate);
    let refused = immediate.ready().await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    // The service reads again: the parked caller gets room and every request its reply.
    reads.add_permits(100);
    waiting.ready().await.expect("room again");
    let reply = waiting.call(call("late")).await.expect("answered");
    assert_eq!(reply.risk_score, 7.0);
    for r in replies {
        r.await.unwrap().expect("answered");
    }
}

#[tokio::test]
async fn a_request_that_finds_the_queue_empty_lingers_for_company() {
    let linger = Duration::from_millis(50);
    let url = answering().await;
    let (d, _workers) = client(
        &url,
        DownstreamConfig {
            linger,
            linger_mode: LingerMode::Fixed,
            linger_batch: 100,
            ..config(16, 16)
        },
    );
    until_live(&d).await;
    let sent = Instant::now();
    let reply = d.service(Admission::Wait).oneshot(call("alone")).await;
    assert_eq!(reply.expect("answered").risk_score, 7.0);
    assert!(
        sent.elapsed() >= linger,
        "a lone request is held for the linger, answered after {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn a_linger_ends_when_its_batch_is_full() {
    // A linger far past the test's life: only a full batch (4) can send these.
    let url = answering().await;
    let (d, _workers) = client(
        &url,
        DownstreamConfig {
            linger: Duration::from_secs(3600),
            linger_mode: LingerMode::Fixed,
            linger_batch: 4,
            ..config(16, 16)
        },
    );
    until_live(&d).await;
    let first: Vec<_> = (0..3)
        .map(|i| tokio::spawn(d.service(Admission::Wait).oneshot(call(&format!("t{i}")))))
        .collect();
    until("the stream took the three", || {
        d.outstanding() == 3 && d.queue_depth() == 0
    })
    .await;
    assert!(
        first.iter().all(|r| !r.is_finished()),
        "three of a batch of four wait for the fourth"
    );
    let fourth = d.service(Admission::Wait).oneshot(call("t3")).await;
    assert_eq!(fourth.expect("answered").risk_score, 7.0);
    for r in first {
        assert_eq!(r.await.unwrap().expect("answered").risk_score, 7.0);
    }
}

#[tokio::test]
async fn no_live_stream_fails_fast() {
    // Nothing listens on this port (bound, then closed).
    let url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let (d, _workers) = client(&url, config(8, 8));
    for admission in [Admission::Wait, Admission::Immediate] {
        let status = d.service(admission).ready().await.expect_err("not ready");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(
            status.message().contains("risk has no live stream"),
            "{status}"
        );
    }
}

#[tokio::test]
async fn a_broken_stream_fails_what_waits_on_it() {
    let reads = Arc::new(Semaphore::new(1000));
    let url = server(Scripted {
        reads,
        break_streams: true,
    })
    .await;
    let (d, _workers) = client(&url, config(8, 8));
    until_live(&d).await;
    let status = d
        .service(Admission::Wait)
        .oneshot(call("doomed"))
        .await
        .expect_err("failed");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
}

/// A Risk service that answers every message at once and counts, per connection (the
/// peer's address), the messages it answered and the streams still open.
#[derive(Clone, Default)]
struct Peers {
    seen: Arc<std::sync::Mutex<std::collections::HashMap<std::net::SocketAddr, (u64, i64)>>>,
}

impl Peers {
    /// Messages answered on every connection.
    fn answered(&self) -> u64 {
        self.seen.lock().unwrap().values().map(|(m, _)| m).sum()
    }

    /// Connections that carried at least one message, and the streams open now.
    fn counts(&self) -> (usize, i64) {
        let seen = self.seen.lock().unwrap();
        let used = seen.values().filter(|(messages, _)| *messages > 0).count();
        (used, seen.values().map(|(_, open)| open).sum())
    }
}

#[tonic::async_trait]
impl Risk for Peers {
    type AssessStream = ReceiverStream<Result<RiskVerdict, Status>>;

    async fn assess(
        &self,
        request: Request<Streaming<RiskRequest>>,
    ) -> Result<Response<Self::AssessStream>, Status> {
        let peer = request.remote_addr().expect("a TCP peer");
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let seen = self.seen.clone();
        seen.lock().unwrap().entry(peer).or_default().1 += 1;
        let mut inbound = request.into_inner();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                seen.lock().unwrap().entry(peer).or_default().0 += 1;
                let verdict = RiskVerdict {
                    correlation_id: r.correlation_id,
                    risk_score: 7.0,
                    ..Default::default()
                };
                if tx.send(Ok(verdict)).await.is_err() {
                    break;
                }
            }
            seen.lock().unwrap().entry(peer).or_default().1 -= 1;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Sends from 8 tasks, 256 waiting each, until `stop`; every reply must be a verdict.
/// Returns how many were answered.
fn flood(d: &Downstream<RiskRequest>, stop: &CancellationToken) -> tokio::task::JoinHandle<u64> {
    use futures::StreamExt as _;
    let (d, stop) = (d.clone(), stop.clone());
    tokio::spawn(async move {
        let senders = (0..8).map(|s| {
            let (d, stop) = (d.clone(), stop.clone());
            tokio::spawn(async move {
                let calls = futures::stream::iter(0u64..)
                    .take_while(move |_| std::future::ready(!stop.is_cancelled()))
                    .map(|i| {
                        d.service(Admission::Wait)
                            .oneshot(call(&format!("s{s}-{i}")))
                    });
                calls
                    .buffer_unordered(256)
                    .fold(0u64, |n, r| {
                        assert_eq!(r.expect("answered").risk_score, 7.0);
                        std::future::ready(n + 1)
                    })
                    .await
            })
        });
        let mut answered = 0;
        for s in futures::future::join_all(senders).await {
            answered += s.unwrap();
        }
        answered
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_opens_another_connection_which_closes_when_idle() {
    let peers = Peers::default();
    let url = server_of(RiskServer::new(peers.clone())).await;
    let (d, _workers) = client(
        &url,
        DownstreamConfig {
            linger: Duration::ZERO,
            lanes_max: 2,
            lane_grow_after: 8,
            lane_idle: Duration::from_millis(300),
            // Room enough that the service, answering at once, never has half of it.
            ..config(1024, 4096)
        },
    );
    until_live(&d).await;
    assert_eq!(d.lanes(), 1);
    let stop = CancellationToken::new();
    let sending = flood(&d, &stop);
    until("a second connection carries requests", || {
        d.lanes() == 2 && peers.counts().0 == 2
    })
    .await;
    // The backlog goes on, each run of 8 asks for another lane: the cap holds.
    let from = peers.answered();
    until("20,000 more were answered", || {
        peers.answered() >= from + 20_000
    })
    .await;
    stop.cancel();
    let answered = sending.await.unwrap();
    assert!(answered >= 20_000);
    assert_eq!(
        (d.lanes(), peers.counts().0),
        (2, 2),
        "at most --downstream-lanes-max connections"
    );
    // Idle now: the extra connection half-closes its stream and goes; the first stays.
    until("the extra connection closed", || {
        d.lanes() == 1 && peers.counts().1 == 1
    })
    .await;
    assert_eq!(d.outstanding(), 0);
    let reply = d.service(Admission::Wait).oneshot(call("after")).await;
    assert_eq!(reply.expect("answered").risk_score, 7.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_service_gets_no_second_connection() {
    // The service answers 20 messages per 2 ms, far below what the stream could send: the
    // queue stays full and every take finds it so, but most of `stream_inflight` awaits
    // replies — more connections would not help, and none opens.
    let reads = Arc::new(Semaphore::new(0));
    let url = server(Scripted {
        reads: reads.clone(),
        break_streams: false,
    })
    .await;
    let given = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pace = {
        let (reads, given) = (reads.clone(), given.clone());
        tokio::spawn(async move {
            loop {
                given.fetch_add(20, std::sync::atomic::Ordering::Relaxed);
                reads.add_permits(20);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let (d, _workers) = client(
        &url,
        DownstreamConfig {
            linger: Duration::ZERO,
            lanes_max: 2,
            lane_grow_after: 8,
            ..config(1024, 64)
        },
    );
    until_live(&d).await;
    let stop = CancellationToken::new();
    let sending = flood(&d, &stop);
    until("the queue is full", || d.queue_depth() == 1024).await;
    let read = || given.load(std::sync::atomic::Ordering::Relaxed) - reads.available_permits();
    let from = read();
    until("the service read 2,000 more under the flood", || {
        read() >= from + 2000
    })
    .await;
    stop.cancel();
    pace.abort();
    assert_eq!(
        d.lanes(),
        1,
        "a slow service is not what another connection helps"
    );
    reads.add_permits(Semaphore::MAX_PERMITS / 2);
    sending.await.unwrap();
}

#[test]
fn the_contract_names_the_generated_path() {
    assert_eq!(RiskRequest::PATH, "/mesh.v1.Risk/Assess");
}

/// Discovery over `urls` (a replica each), with `config` per replica.
fn replicas(
    urls: &[&str],
    take: sluice_gateway::downstream::replicas::Take,
    config: DownstreamConfig,
) -> (sluice_gateway::downstream::Replicas<RiskRequest>, Workers) {
    use sluice_gateway::downstream::replicas::Setup;
    use sluice_gateway::downstream::{Replicas, ServiceMetrics, Target};
    let targets = urls.iter().map(|u| Target::parse(u).unwrap()).collect();
    let setup = Setup {
        config,
        endpoint: Arc::new(|addr| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap()
        }),
        resolve_interval: Duration::from_secs(5),
        resolver: sluice_gateway::downstream::replicas::dns(),
    };
    let metrics = ServiceMetrics::new("risk", &mut Registry::default());
    Replicas::start(targets, take, &setup, metrics, CancellationToken::new())
}

#[tokio::test]
async fn p2c_keeps_away_from_a_replica_that_stopped_answering() {
    use sluice_gateway::downstream::replicas::Take;
    use sluice_gateway::downstream::{Balancer, Route, Routing};
    let fast = answering().await;
    let stuck = server(Scripted {
        reads: Arc::new(Semaphore::new(0)),
        break_streams: false,
    })
    .await;
    let (set, _workers) = replicas(&[&fast, &stuck], Take::All, config(64, 8));
    until("both replicas are live", || {
        let m = set.snapshot();
        m.list.len() == 2 && m.list.iter().all(|m| m.downstream.is_live())
    })
    .await;
    let route = Route::new(set.clone(), Routing::Balance(Balancer::P2c));
    let members = set.snapshot();
    let load = |url: &str| {
        let m = members
            .list
            .iter()
            .find(|m| url.ends_with(&m.addr.to_string()));
        m.expect("member").downstream.outstanding()
    };
    let mut replies = Vec::new();
    for n in 0..100 {
        let mut svc = route.ready(Admission::Wait, "any").await.expect("ready");
        replies.push(svc.call(call(&format!("p2c-{n}"))));
        // One request at a time, as a steady trickle: the fast replica answers each.
        until("the fast replica answered", || load(&fast) == 0).await;
    }
    // Load = outstanding requests: once the stuck replica holds one, it is more loaded than
    // the fast one (which answers at once) and p2c never prefers it again.
    let stuck_took = load(&stuck);
    assert!(
        stuck_took <= 1,
        "the stuck replica took {stuck_took} of 100"
    );
    drop(replies);
}

#[tokio::test]
async fn a_partition_without_a_live_stream_fails_its_own_ids_at_once() {
    use sluice_gateway::downstream::Partitions;
    use sluice_gateway::downstream::replicas::Take;
    let up = answering().await;
    // Nothing listens on port 1.
    let (p0, _w0) = replicas(&[&up], Take::First, config(16, 4));
    let (p1, _w1) = replicas(&["http://127.0.0.1:1"], Take::First, config(16, 4));
    let parts = Partitions::new(vec![p0.clone(), p1]);
    until("partition 0 is live", || p0.is_live()).await;
    let (mut ok, mut refused) = (0, 0);
    for n in 0..40 {
        let id = format!("part-{n}");
        let started = Instant::now();
        match parts.ready(Admission::Wait, &id).await {
            Ok((partition, mut svc)) => {
                assert_eq!(partition, 0);
                assert_eq!(sluice_proto::partition::of(&id, 2), 0);
                svc.call(call(&id)).await.expect("partition 0 answers");
                ok += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(status.message().contains("partition 1"), "{status:?}");
                assert!(started.elapsed() < Duration::from_millis(100));
                refused += 1;
            }
        }
    }
    assert!(ok > 0 && refused > 0, "ok {ok}, refused {refused}");
}

#[tokio::test]
async fn replicas_that_appear_are_used_and_those_that_vanish_are_drained() {
    use sluice_gateway::downstream::replicas::{Resolver, Setup, Take};
    use sluice_gateway::downstream::{Replicas, ServiceMetrics, Target};
    use std::net::SocketAddr;
    use std::sync::Mutex;
    let (a, b) = (answering().await, answering().await);
    let addr = |url: &str| {
        url.trim_start_matches("http://")
            .parse::<SocketAddr>()
            .unwrap()
    };
    // What "DNS" answers for the name, changed by the test.
    let answer = Arc::new(Mutex::new(vec![addr(&a)]));
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let resolver: Resolver = {
        let (answer, asked) = (answer.clone(), asked.clone());
        Arc::new(move |_| {
            asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let now = answer.lock().unwrap().clone();
            Box::pin(async move { Ok(now) })
        })
    };
    let setup = Setup {
        config: config(16, 4),
        endpoint: Arc::new(|addr| {
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap()
        }),
        resolve_interval: Duration::from_millis(20),
        resolver,
    };
    let mut registry = Registry::default();
    let metrics = ServiceMetrics::new("risk", &mut registry);
    let target = Target::parse("http://risk.example:50052").unwrap();
    let (set, _workers) = Replicas::<RiskRequest>::start(
        vec![target],
        Take::All,
        &setup,
        metrics,
        CancellationToken::new(),
    );
    let addrs = |set: &Replicas<RiskRequest>| -> Vec<SocketAddr> {
        set.snapshot().list.iter().map(|m| m.addr).collect()
    };
    until("replica a is found and live", || {
        addrs(&set) == vec![addr(&a)] && set.is_live()
    })
    .await;

    answer.lock().unwrap().push(addr(&b));
    until("replica b joins", || addrs(&set).len() == 2).await;
    let b_member = set
        .snapshot()
        .list
        .iter()
        .find(|m| m.addr == addr(&b))
        .cloned()
        .unwrap();
    until("b is live", || b_member.downstream.is_live()).await;

    // b vanishes from the answer: it leaves the set and its streams close.
    *answer.lock().unwrap() = vec![addr(&a)];
    until("b leaves", || addrs(&set) == vec![addr(&a)]).await;
    until("b's streams are drained", || !b_member.downstream.is_live()).await;

    // An empty answer (a DNS hiccup) keeps the last good set.
    answer.lock().unwrap().clear();
    let before = asked.load(std::sync::atomic::Ordering::SeqCst);
    until("three more resolutions", || {
        asked.load(std::sync::atomic::Ordering::SeqCst) >= before + 3
    })
    .await;
    assert_eq!(addrs(&set), vec![addr(&a)]);
    assert!(set.is_live());
}
