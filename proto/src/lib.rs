//! Generated `mesh.v1` messages and tonic clients/servers.
//!
//! Everything generated lives under [`pb`]; the rest of the workspace imports from there.
//! [`validate`] holds the rules a `Transaction` must satisfy, shared by every side that
//! accepts one; [`hop`] the contract of a downstream stream (requests, replies, correlation),
//! shared by the gateway's stream clients and the services' worker pool; [`partition`] which
//! audit-log partition owns a transaction id; [`encoded`] a hop request encoded once per
//! transaction and shared by its hops.

pub mod encoded;
pub mod hop;
pub mod partition;
pub mod validate;

pub use encoded::{Body, Encoded, HopCodec};
pub use hop::{HopReply, HopRequest};

/// Generated code for package `mesh.v1`.
#[allow(clippy::all, unreachable_pub, missing_docs)]
pub mod pb {
    tonic::include_proto!("mesh.v1");
}

impl pb::Error {
    /// The per-message error that reports `status` (gRPC code number and message).
    pub fn from_status(status: &tonic::Status) -> Self {
        Self {
            code: status.code() as i32,
            message: status.message().to_string(),
        }
    }
}
