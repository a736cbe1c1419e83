//! The driver against an in-process gateway on port 0: a stream that ends before answering
//! everything it read must show up as `NO_OUTCOME`, one per transaction, with the stream's
//! terminal status in the report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::spec::{LoadSpec, Pacing};
use sluice_loadgen::report::{NO_OUTCOME, Report};
use sluice_proto::pb::gateway_server::{Gateway, GatewayServer};
use sluice_proto::pb::{Decision, Outcome, Transaction};
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
async fn serve(gateway: Quitter) -> String {
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
