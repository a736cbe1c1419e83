//! `sluice-lab sink`: a trivial `mesh.v1.Gateway` that answers every transaction at once
//! (APPROVE, no downstream). Measures the load generator's own ceiling, and gives h2load the
//! same unary call to compare with (`--body-file` writes a gRPC-framed request for it).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use prost::Message;
use sluice_core::server::Listeners;
use sluice_proto::pb::gateway_server::{Gateway, GatewayServer};
use sluice_proto::pb::{Decision, Outcome, Transaction};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug, Clone, Args)]
pub struct SinkArgs {
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,
    /// Also write one gRPC-framed Submit request body here (for `h2load -d`).
    #[arg(long)]
    pub body_file: Option<PathBuf>,
}

struct Sink;

fn approve(txn: &Transaction) -> Outcome {
    Outcome {
        id: txn.id.clone(),
        decision: Decision::Approve as i32,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Gateway for Sink {
    type SubmitStreamStream =
        std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<Outcome, Status>> + Send>>;

    async fn submit(&self, request: Request<Transaction>) -> Result<Response<Outcome>, Status> {
        Ok(Response::new(approve(request.get_ref())))
    }

    async fn submit_stream(
        &self,
        request: Request<Streaming<Transaction>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let outcomes = request.into_inner().map(|t| t.map(|t| approve(&t)));
        Ok(Response::new(Box::pin(outcomes)))
    }
}

/// A gRPC length-prefixed message: flag 0, 4-byte big-endian length, the protobuf bytes.
pub fn grpc_frame(txn: &Transaction) -> Vec<u8> {
    let body = txn.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Serves the sink until Ctrl-C / SIGTERM.
pub async fn run(args: SinkArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.body_file {
        let (txn, _) =
            sluice_loadgen::drive::traffic::Traffic::new("h2load", 0.0, 1).next_transaction();
        std::fs::write(path, grpc_frame(&txn))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let listeners = Listeners::bind(args.listen, None).await?;
    println!("{}", listeners.ready_line("sluice-lab-sink"));
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listeners.grpc);
    sluice_core::h2::H2Settings::default()
        .server()
        .add_service(GatewayServer::new(Sink))
        .serve_with_incoming_shutdown(incoming, sluice_core::shutdown::signal())
        .await?;
    Ok(())
}
