//! The contract of one downstream hop, written once for both of its ends.
//!
//! Every mesh.v1 downstream RPC is a long-lived bidirectional stream of requests that carry
//! a transaction, a gateway-assigned correlation id, an absolute deadline and a send
//! timestamp, answered by replies that carry the same correlation id and, on failure, an
//! [`pb::Error`]. [`HopRequest`] and [`HopReply`] say that once per message type; the
//! gateway's stream client and the services' worker pool are generic over them, so neither
//! side describes the protocol again.

use std::collections::HashMap;

use crate::pb::{
    self, AppendAck, AppendRequest, NotifyAck, NotifyRequest, RiskRequest, RiskVerdict, Transaction,
};

/// A request sent on a downstream stream.
pub trait HopRequest: prost::Message + Default + Send + Sync + 'static {
    /// What the service answers with.
    type Reply: HopReply;
    /// Short service label for logs and metrics: `risk`, `logging`, `notification`.
    const NAME: &'static str;
    /// The gRPC service, e.g. `mesh.v1.Risk`.
    const SERVICE: &'static str;
    /// The streaming method, e.g. `Assess`.
    const METHOD: &'static str;
    /// The method's HTTP/2 path, e.g. `/mesh.v1.Risk/Assess`.
    const PATH: &'static str;

    /// A request for `transaction`, due by `deadline_unix_ms` (Unix ms).
    fn new(transaction: Transaction, deadline_unix_ms: i64) -> Self;
    fn transaction(&self) -> Option<&Transaction>;
    fn correlation_id(&self) -> u64;
    fn set_correlation_id(&mut self, id: u64);
    /// Absolute deadline, Unix ms (0 = none).
    fn deadline_unix_ms(&self) -> i64;
    /// When the sender handed the message to the stream, Unix µs (0 = unknown).
    fn sent_unix_micros(&self) -> i64;
    fn set_sent_unix_micros(&mut self, micros: i64);

    /// The message's own trace context (each message belongs to its own trace).
    fn trace_context(&self) -> Option<&HashMap<String, String>> {
        self.transaction().map(|t| &t.trace_context)
    }

    /// The reply that reports `status` for this request (correlation id kept).
    fn reject(&self, status: &tonic::Status) -> Self::Reply {
        Self::Reply::failed(self.correlation_id(), status)
    }
}

/// A reply received on a downstream stream.
pub trait HopReply: prost::Message + Default + Send + Sync + 'static {
    fn correlation_id(&self) -> u64;
    /// The per-message error this reply reports, if any.
    fn error(&self) -> Option<&pb::Error>;
    /// A reply reporting `status` for the request with `correlation_id`.
    fn failed(correlation_id: u64, status: &tonic::Status) -> Self;
}

/// One `HopRequest` impl: the requests differ only in type and names.
macro_rules! hop_request {
    ($req:ty, $reply:ty, $name:literal, $service:literal, $method:literal $(, failed: { $($field:ident: $value:expr),* })?) => {
        impl HopRequest for $req {
            type Reply = $reply;
            const NAME: &'static str = $name;
            const SERVICE: &'static str = $service;
            const METHOD: &'static str = $method;
            const PATH: &'static str = concat!("/", $service, "/", $method);

            fn new(transaction: Transaction, deadline_unix_ms: i64) -> Self {
                Self {
                    transaction: Some(transaction),
                    deadline_unix_ms,
                    ..Default::default()
                }
            }
            fn transaction(&self) -> Option<&Transaction> {
                self.transaction.as_ref()
            }
            fn correlation_id(&self) -> u64 {
                self.correlation_id
            }
            fn set_correlation_id(&mut self, id: u64) {
                self.correlation_id = id;
            }
            fn deadline_unix_ms(&self) -> i64 {
                self.deadline_unix_ms
            }
            fn sent_unix_micros(&self) -> i64 {
                self.sent_unix_micros
            }
            fn set_sent_unix_micros(&mut self, micros: i64) {
                self.sent_unix_micros = micros;
            }
        }

        impl HopReply for $reply {
            fn correlation_id(&self) -> u64 {
                self.correlation_id
            }
            fn error(&self) -> Option<&pb::Error> {
                self.error.as_ref()
            }
            // Some replies have no fields beyond these: the update is then empty.
            #[allow(clippy::needless_update)]
            fn failed(correlation_id: u64, status: &tonic::Status) -> Self {
                Self {
                    correlation_id,
                    error: Some(pb::Error::from_status(status)),
                    $($($field: $value,)*)?
                    ..Default::default()
                }
            }
        }
    };
}

hop_request!(RiskRequest, RiskVerdict, "risk", "mesh.v1.Risk", "Assess");
hop_request!(
    NotifyRequest,
    NotifyAck,
    "notification",
    "mesh.v1.Notification",
    "Deliver",
    failed: { status: pb::NotificationStatus::Failed as i32 }
);
hop_request!(
    AppendRequest,
    AppendAck,
    "logging",
    "mesh.v1.Logging",
    "Append"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_the_generated_clients() {
        assert_eq!(RiskRequest::PATH, "/mesh.v1.Risk/Assess");
        assert_eq!(NotifyRequest::PATH, "/mesh.v1.Notification/Deliver");
        assert_eq!(AppendRequest::PATH, "/mesh.v1.Logging/Append");
    }

    #[test]
    fn a_rejection_keeps_the_correlation_id() {
        let mut r = AppendRequest::new(Transaction::default(), 7);
        r.set_correlation_id(42);
        let ack = r.reject(&tonic::Status::unavailable("gone"));
        assert_eq!(ack.correlation_id(), 42);
        let e = ack.error().expect("an error");
        assert_eq!(e.code, tonic::Code::Unavailable as i32);
        assert_eq!(r.deadline_unix_ms(), 7);
        let notice =
            NotifyRequest::new(Transaction::default(), 0).reject(&tonic::Status::internal("boom"));
        assert_eq!(notice.status, pb::NotificationStatus::Failed as i32);
    }
}
