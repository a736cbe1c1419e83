//! The driver against in-process gateways on port 0:
//!
//! - a stream that ends before answering everything it read must show up as `NO_OUTCOME`, one
//!   per transaction, with the stream's terminal status in the report;
//! - the report names its slowest and failed transactions by the trace ids the gateway
//!   received, with their codes and messages, in the JSON too.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::spec::{LoadSpec, Mode, Pacing};
use sluice_loadgen::report::exemplars::{DEFAULT_FAILED, DEFAULT_SLOWEST, TraceLinks};
use sluice_loadgen::report::{NO_OUTCOME, Report};
use sluice_proto::pb::gateway_server::{Gateway, GatewayServer};
use sluice_proto::pb::{Decision, Error as OutcomeError, Outcome, Transaction};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// How a [`Quitter`] stream ends after answering its share.
#[derive(Clone, Copy)]
enum Ending {
    /// `UNAVAILABLE: shutting down: N messages not read`, as a draining gateway says it.
    Unavailable,
    /// OK, as if nothing had been left unanswered.
    Ok,
}

/// A gateway whose every SubmitStream answers `answer` transactions, reads `unread` more
/// without answering them, then ends the stream.
struct Quitter {
    answer: u64,
    unread: u64,
    ending: Ending,
    /// Outcomes actually sent, over all streams: the ground truth.
    answered: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Gateway for Quitter {
    type SubmitStreamStream = ReceiverStream<Result<Outcome, Status>>;

    async fn submit(&self, _: Request<Transaction>) -> Result<Response<Outcome>, Status> {
        Err(Status::unimplemented("stream only"))
    }

    async fn submit_stream(
        &self,
        request: Request<Streaming<Transaction>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (answer, unread, ending) = (self.answer, self.unread, self.ending);
        let answered = self.answered.clone();
        tokio::spawn(async move {
            for _ in 0..answer {
                let Some(Ok(txn)) = inbound.next().await else {
                    return;
                };
                let outcome = Outcome {
                    id: txn.id,
                    decision: Decision::Approve as i32,
                    audit_offset: 1,
                    ..Default::default()
                };
                if tx.send(Ok(outcome)).await.is_err() {
                    return;
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
            for _ in 0..unread {
                if inbound.next().await.is_none() {
                    break;
                }
            }
            if let Ending::Unavailable = ending {
                let status =
                    Status::unavailable(format!("shutting down: {unread} messages not read"));
                let _ = tx.send(Err(status)).await;
            }
            // Dropping `tx` ends the stream (OK unless an error was sent).
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves `gateway` on 127.0.0.1:0; returns its URL.
async fn serve<G: Gateway>(gateway: G) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(GatewayServer::new(gateway))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    url
}

fn spec(target: String) -> LoadSpec {
    LoadSpec::builder(target)
        // Far more than the streams take: the run ends because both streams ended.
        .pacing(Pacing::Open { rate: 2000.0 })
        .duration(Duration::from_secs(30))
        .id_prefix("quit")
        .wait_ready(false)
        .build()
        .expect("a valid spec")
}

async fn run_against(ending: Ending) -> (Report, u64) {
    let answered = Arc::new(AtomicU64::new(0));
    let url = serve(Quitter {
        answer: 50,
        unread: 30,
        ending,
        answered: answered.clone(),
    })
    .await;
    let report = driver::run(spec(url)).await.expect("run");
    (report, answered.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_unavailable_counts_what_it_left_unanswered() {
    let (report, answered) = run_against(Ending::Unavailable).await;
    assert_eq!(answered, 100, "two streams of 50 answers");
    assert_eq!(report.completed, answered);
    // Each stream: 50 answered + 30 read and left unanswered, and perhaps more in flight.
    assert!(report.sent >= answered + 60, "sent {}", report.sent);
    assert_eq!(
        report.errors.get(NO_OUTCOME).copied(),
        Some(report.sent - answered),
        "{:?}",
        report.errors
    );
    assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
    assert_eq!(report.hung, 0);
    assert_eq!(report.stream_ends.len(), 2, "{:?}", report.stream_ends);
    for end in &report.stream_ends {
        assert_eq!(end.code, "UNAVAILABLE");
        assert_eq!(end.message, "shutting down: 30 messages not read");
        assert!(end.without_outcome >= 30, "{end:?}");
    }
    let text = report.text();
    assert!(
        text.contains("stream end UNAVAILABLE: shutting down: 30 messages not read (2 streams"),
        "{text}"
    );
    assert!(text.contains(&format!("NO_OUTCOME {}", report.sent - answered)));
    // The stall probe watched the measured time (the run ended early, when the streams
    // did) and the report says what it saw.
    let stalls = report.stalls.expect("the stall probe's count");
    assert!(
        stalls.watched_s > 0.0 && stalls.watched_s < 30.0,
        "{stalls:?}"
    );
    assert!(text.contains("machine    "), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_ends_ok_early_cannot_hide_what_it_did_not_answer() {
    let (report, answered) = run_against(Ending::Ok).await;
    assert_eq!(report.completed, answered);
    assert_eq!(
        report.errors.get(NO_OUTCOME).copied(),
        Some(report.sent - answered),
        "{:?}",
        report.errors
    );
    assert_eq!(report.stream_ends.len(), 2);
    assert!(report.stream_ends.iter().all(|e| e.code == "OK"));
}

/// A unary gateway that answers by the transaction's number (`<prefix>-<n>`): every 5th is
/// refused in its outcome, every 7th fails with a call status, number 3 is answered after
/// [`SLOW`], the rest at once. It keeps the `traceparent` each transaction carried.
#[derive(Default)]
struct Teller {
    traceparents: Arc<Mutex<HashMap<String, String>>>,
}

/// Far above any scheduling noise on a loaded machine: transaction 3 is the slowest.
const SLOW: Duration = Duration::from_millis(500);

#[tonic::async_trait]
impl Gateway for Teller {
    type SubmitStreamStream = ReceiverStream<Result<Outcome, Status>>;

    async fn submit(&self, request: Request<Transaction>) -> Result<Response<Outcome>, Status> {
        let txn = request.into_inner();
        if let Some(tp) = txn.trace_context.get("traceparent") {
            self.traceparents
                .lock()
                .unwrap()
                .insert(txn.id.clone(), tp.clone());
        }
        let n: u64 = txn.id.rsplit('-').next().unwrap().parse().unwrap();
        if n == 3 {
            tokio::time::sleep(SLOW).await;
        }
        if n.is_multiple_of(7) {
            return Err(Status::unavailable(format!("no live stream ({n})")));
        }
        let error = n.is_multiple_of(5).then(|| OutcomeError {
            code: tonic::Code::ResourceExhausted as i32,
            message: format!("queue full ({n})"),
        });
        Ok(Response::new(Outcome {
            id: txn.id,
            error,
            ..Default::default()
        }))
    }

    async fn submit_stream(
        &self,
        _: Request<Streaming<Transaction>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        Err(Status::unimplemented("unary only"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_names_its_slowest_and_failed_transactions_by_their_traces() {
    // Tracing on, in this process: real spans (tracing, bridged to an SDK provider), and the
    // W3C + B3 propagators.
    sluice_core::propagation::install();
    opentelemetry::global::set_tracer_provider(
        opentelemetry_sdk::trace::SdkTracerProvider::builder().build(),
    );
    {
        use tracing_subscriber::prelude::*;
        let spans =
            tracing_opentelemetry::layer().with_tracer(opentelemetry::global::tracer("test"));
        let _ = tracing_subscriber::registry().with(spans).try_init();
    }
    let teller = Teller::default();
    let traceparents = teller.traceparents.clone();
    let url = serve(teller).await;
    let spec = LoadSpec::builder(url)
        .mode(Mode::Unary)
        .pacing(Pacing::Open { rate: 200.0 })
        .duration(Duration::from_secs(1))
        .id_prefix("tell")
        .wait_ready(false)
        .trace_links(Some(TraceLinks::parse("http://jaeger:16686").unwrap()))
        .build()
        .unwrap();
    let report = driver::run(spec).await.expect("run");
    assert!(report.completed >= 150, "{}", report.text());

    // The JSON, as `--json` writes it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    sluice_loadgen::report::json::write(&path, &report).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let traceparents = traceparents.lock().unwrap();
    // Every entry names the trace the gateway received, and links to it.
    let check_trace = |e: &serde_json::Value| {
        let id = e["id"].as_str().unwrap();
        let trace = e["trace_id"].as_str().unwrap();
        let received = &traceparents[id];
        assert_eq!(&received[3..35], trace, "{id}: sent {received}");
        assert_eq!(
            e["trace_url"].as_str().unwrap(),
            format!("http://jaeger:16686/trace/{trace}")
        );
    };

    let slowest = json["slowest"].as_array().unwrap();
    assert_eq!(slowest.len(), DEFAULT_SLOWEST);
    assert_eq!(slowest[0]["id"], "tell-3", "{}", report.text());
    assert!(slowest[0]["latency_ms"].as_f64().unwrap() >= SLOW.as_secs_f64() * 1000.0);
    let latencies: Vec<f64> = slowest
        .iter()
        .map(|e| e["latency_ms"].as_f64().unwrap())
        .collect();
    assert!(latencies.windows(2).all(|w| w[0] >= w[1]), "{latencies:?}");
    slowest.iter().for_each(check_trace);

    let failed = json["failed"].as_array().unwrap();
    assert_eq!(failed.len(), DEFAULT_FAILED);
    for e in failed {
        check_trace(e);
        let n: u64 = e["id"].as_str().unwrap()[5..].parse().unwrap();
        let (code, message) = if n.is_multiple_of(7) {
            ("UNAVAILABLE", format!("no live stream ({n})"))
        } else {
            assert!(n.is_multiple_of(5), "{e}");
            ("RESOURCE_EXHAUSTED", format!("queue full ({n})"))
        };
        assert_eq!(
            (e["code"].as_str(), e["message"].as_str()),
            (Some(code), Some(message.as_str()))
        );
    }
    let text = report.text();
    assert!(
        text.contains("slowest    10 by latency: ms, result, id, trace"),
        "{text}"
    );
    assert!(text.contains("http://jaeger:16686/trace/"), "{text}");
}
