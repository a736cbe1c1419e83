//! One real server: `run_service` on 127.0.0.1:0 with a toy risk service over the pool,
//! driven by tonic clients, as tonic's own integration tests drive theirs.

use std::collections::HashSet;

use clap::Parser;
use prometheus_client::registry::Registry;
use sluice_core::CancellationToken;
use sluice_core::deadline;
use sluice_core::server::{CommonServerArgs, Listeners, ServeError};
use sluice_proto::hop::HopRequest as _;
use sluice_proto::pb::control_client::ControlClient;
use sluice_proto::pb::risk_client::RiskClient;
use sluice_proto::pb::risk_server::{Risk, RiskServer};
use sluice_proto::pb::{Decision, Faults, GetFaultsRequest, RiskRequest, RiskVerdict, Transaction};
use sluice_runtime::{ReplyStream, ServiceArgs, ServiceConfig, WorkerPool, run_service};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const TOKEN: &str = "s3cret";

/// Approves every transaction.
struct Approve {
    pool: WorkerPool,
}

#[tonic::async_trait]
impl Risk for Approve {
    type AssessStream = ReplyStream<RiskVerdict>;

    async fn assess(
        &self,
        request: Request<Streaming<RiskRequest>>,
    ) -> Result<Response<Self::AssessStream>, Status> {
        Ok(Response::new(self.pool.serve(
            request,
            |r: RiskRequest| async move {
                RiskVerdict {
                    correlation_id: r.correlation_id,
                    decision: Decision::Approve as i32,
                    ..Default::default()
                }
            },
        )))
    }
}

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    common: CommonServerArgs,
    #[command(flatten)]
    service: ServiceArgs,
}

struct Served {
    channel: Channel,
    shutdown: CancellationToken,
    server: JoinHandle<Result<(), ServeError>>,
}

async fn serve() -> Served {
    let flags = Flags::parse_from(["test", "--admin-token", TOKEN, "--workers", "4"]);
    let config = ServiceConfig::try_from(flags.service).expect("valid flags");
    let listeners = Listeners::bind("127.0.0.1:0".parse().unwrap(), None)
        .await
        .unwrap();
    let url = format!("http://{}", listeners.grpc_addr());
    let shutdown = CancellationToken::new();
    let mut registry = Registry::default();
    let pool = WorkerPool::new(config.pool, &mut registry, shutdown.clone());
    let service = RiskServer::new(Approve { pool: pool.clone() });
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        run_service(
            listeners,
            &flags.common.clone().into(),
            &config.admin_token,
            pool,
            registry,
            service,
            stop,
        )
        .await
    });
    // The listener is bound: connecting needs no wait for the accept loop.
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    Served {
        channel,
        shutdown,
        server,
    }
}

fn due(id: u64) -> RiskRequest {
    let mut r = RiskRequest::new(Transaction::default(), deadline::now_unix_ms() + 60_000);
    r.correlation_id = id;
    r
}

fn with_token<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_is_answered_message_by_message_and_ends_ok_on_half_close() {
    let served = serve().await;
    // The service's health is set by the readiness mirror, a task of its own that may not
    // have run when the listener first answers ("service not registered" until then).
    let mut health = HealthClient::new(served.channel.clone());
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        let check = health
            .check(HealthCheckRequest {
                service: "mesh.v1.Risk".into(),
            })
            .await;
        match check {
            Ok(reply) => break reply.into_inner().status,
            Err(status) if status.code() == tonic::Code::NotFound => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "mesh.v1.Risk never registered with health: {status}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(status) => panic!("health check: {status}"),
        }
    };
    assert_eq!(status, ServingStatus::Serving as i32);

    let (tx, rx) = mpsc::channel(16);
    let mut replies = RiskClient::new(served.channel.clone())
        .assess(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    // More messages than workers, and than the channel holds: the sender waits on the pool.
    let sender = tokio::spawn(async move {
        for id in 1..=100 {
            tx.send(due(id)).await.unwrap();
        }
    });
    let mut seen = HashSet::new();
    while let Some(verdict) = replies.message().await.expect("no stream error") {
        assert!(verdict.error.is_none(), "{verdict:?}");
        assert_eq!(verdict.decision, Decision::Approve as i32);
        assert!(seen.insert(verdict.correlation_id), "one reply per request");
    }
    assert_eq!(seen, (1..=100).collect(), "every request answered, then OK");
    sender.await.unwrap();

    served.shutdown.cancel();
    served.server.await.unwrap().expect("a clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_faults_reach_an_open_stream_and_shutdown_ends_it_unavailable() {
    let served = serve().await;
    let mut control = ControlClient::new(served.channel.clone());
    let refused = control
        .get_faults(GetFaultsRequest {})
        .await
        .expect_err("Control needs the token");
    assert_eq!(refused.code(), Code::Unauthenticated);

    let (tx, rx) = mpsc::channel(16);
    let mut replies = RiskClient::new(served.channel.clone())
        .assess(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut ask = async |id| {
        tx.send(due(id)).await.unwrap();
        replies.message().await.unwrap().expect("a reply")
    };
    assert!(ask(1).await.error.is_none());

    control
        .set_faults(with_token(Faults {
            error_rate: 1.0,
            ..Default::default()
        }))
        .await
        .unwrap();
    let failed = ask(2).await;
    assert_eq!(failed.correlation_id, 2);
    let error = failed.error.expect("an injected error");
    assert_eq!(error.code, Code::Unavailable as i32, "{}", error.message);

    control
        .set_faults(with_token(Faults::default()))
        .await
        .unwrap();
    assert!(ask(3).await.error.is_none(), "the stream went on");

    served.shutdown.cancel();
    let end = replies.message().await.expect_err("not OK");
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    served.server.await.unwrap().expect("a clean stop");
}
