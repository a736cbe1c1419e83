//! Why a transaction did not get an outcome, as one type: raised where the decision is made
//! (a layer of the ingress stack, the stream slots, the downstream queues), counted by its
//! reason in the metrics layer, and turned into a gRPC `Status` in one place,
//! [`Refusal::into_status`], at the edge of the stack. No layer builds a `Status` of its
//! own, and no reason is guessed back from a status code.

use std::time::Duration;

use tonic::{Code, Status};

/// Why: the `reason` label of `sluice_gateway_rejected_total`, and the gRPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// The transaction is malformed (validation, an unusable `x-client-id`).
    InvalidArgument,
    /// `--max-inflight` unary calls are in flight.
    InflightLimit,
    /// The concurrency limit at the transaction's priority share.
    ConcurrencyLimit,
    /// Its audit partition holds its share of the limit.
    PartitionShare,
    /// Its audit partition's own degradation level refuses it.
    PartitionDegraded,
    /// The gateway's degradation level refuses it.
    Degraded,
    /// Its client is over `--client-rate`.
    ClientRate,
    /// `--max-streams` SubmitStreams are open.
    StreamLimit,
    /// Its connection has `--max-streams-per-connection` SubmitStreams open.
    ConnectionStreams,
    /// The SubmitStream sent nothing for `--stream-idle-timeout`.
    StreamIdle,
    /// A required downstream queue is full.
    QueueFull,
    /// A required downstream has no live stream (or is shutting down).
    Unavailable,
    /// Its deadline passed before it was admitted.
    Deadline,
    /// The id was already used with another payload.
    AlreadyExists,
    /// Admitted, then failed: a hop's error or the deadline while awaiting replies. Not a
    /// refusal; counted only by its result code.
    Failed,
}

impl Reason {
    /// The metrics label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::InvalidArgument => "invalid_argument",
            Reason::InflightLimit => "inflight_limit",
            Reason::ConcurrencyLimit => "concurrency_limit",
            Reason::PartitionShare => "partition_share",
            Reason::PartitionDegraded => "partition_degraded",
            Reason::Degraded => "degraded",
            Reason::ClientRate => "client_rate",
            Reason::StreamLimit => "stream_limit",
            Reason::ConnectionStreams => "connection_streams",
            Reason::StreamIdle => "stream_idle",
            Reason::QueueFull => "queue_full",
            Reason::Unavailable => "unavailable",
            Reason::Deadline => "deadline",
            Reason::AlreadyExists => "already_exists",
            Reason::Failed => "failed",
        }
    }

    fn code(self) -> Code {
        match self {
            Reason::InvalidArgument => Code::InvalidArgument,
            Reason::InflightLimit
            | Reason::ConcurrencyLimit
            | Reason::PartitionShare
            | Reason::ClientRate
            | Reason::StreamLimit
            | Reason::ConnectionStreams
            | Reason::QueueFull => Code::ResourceExhausted,
            Reason::PartitionDegraded | Reason::StreamIdle | Reason::Unavailable => {
                Code::Unavailable
            }
            // Level 2 refuses SHEDDABLE with RESOURCE_EXHAUSTED, level 3 unary writes with
            // UNAVAILABLE: `Refusal::degraded` picks.
            Reason::Degraded => Code::ResourceExhausted,
            Reason::Deadline => Code::DeadlineExceeded,
            Reason::AlreadyExists => Code::AlreadyExists,
            Reason::Failed => Code::Unknown,
        }
    }
}

/// A transaction not taken (or failed after it was): why, what to tell the client, and
/// when it may retry.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) reason: Reason,
    code: Code,
    message: String,
    /// Sent as `grpc-retry-pushback-ms`.
    pushback: Option<Duration>,
}

impl Refusal {
    pub(crate) fn new(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            reason,
            code: reason.code(),
            message: message.into(),
            pushback: None,
        }
    }

    /// Degradation level `level` refusing: UNAVAILABLE at 3, RESOURCE_EXHAUSTED below.
    pub(crate) fn degraded(level: u8, message: impl Into<String>) -> Self {
        let mut refusal = Self::new(Reason::Degraded, message);
        if level >= 3 {
            refusal.code = Code::Unavailable;
        }
        refusal
    }

    /// With `grpc-retry-pushback-ms` = `pushback`.
    pub(crate) fn pushback(mut self, pushback: Duration) -> Self {
        self.pushback = Some(pushback);
        self
    }

    /// A status from below ingress (the fan-out, a downstream queue) at admission: the one
    /// place a reason is read from a code, because the downstream layer speaks gRPC.
    pub(crate) fn at_admission(status: Status) -> Self {
        let reason = match status.code() {
            Code::ResourceExhausted => Reason::QueueFull,
            Code::Unavailable => Reason::Unavailable,
            Code::InvalidArgument => Reason::InvalidArgument,
            Code::DeadlineExceeded => Reason::Deadline,
            Code::AlreadyExists => Reason::AlreadyExists,
            _ => Reason::Failed,
        };
        Self {
            reason,
            code: status.code(),
            message: status.message().to_string(),
            pushback: None,
        }
    }

    /// A failure after admission, as the hop reported it.
    pub(crate) fn failed(status: Status) -> Self {
        Self {
            reason: Reason::Failed,
            code: status.code(),
            message: status.message().to_string(),
            pushback: None,
        }
    }

    /// The deadline passed while the transaction was being served: a failure with
    /// DEADLINE_EXCEEDED, not a refusal.
    pub(crate) fn deadline_failed(message: impl Into<String>) -> Self {
        Self {
            reason: Reason::Failed,
            code: Code::DeadlineExceeded,
            message: message.into(),
            pushback: None,
        }
    }

    /// True when this is a refusal (the transaction was never admitted), not a failure.
    pub(crate) fn refused(&self) -> bool {
        self.reason != Reason::Failed
    }

    pub(crate) fn code(&self) -> Code {
        self.code
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    /// The gRPC status the client gets: the one mapping.
    pub(crate) fn into_status(self) -> Status {
        let mut status = Status::new(self.code, self.message);
        if let Some(pushback) = self.pushback
            && let Ok(value) = pushback.as_millis().to_string().parse()
        {
            status
                .metadata_mut()
                .insert("grpc-retry-pushback-ms", value);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_maps_to_its_code_with_pushback() {
        let status = Refusal::new(Reason::ConcurrencyLimit, "full")
            .pushback(Duration::from_millis(250))
            .into_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "full");
        assert_eq!(
            status.metadata().get("grpc-retry-pushback-ms").unwrap(),
            "250"
        );
        assert_eq!(
            Refusal::degraded(3, "level 3").into_status().code(),
            Code::Unavailable
        );
        assert_eq!(
            Refusal::degraded(2, "level 2").into_status().code(),
            Code::ResourceExhausted
        );
        let none = Refusal::new(Reason::Deadline, "late").into_status();
        assert!(none.metadata().get("grpc-retry-pushback-ms").is_none());
    }

    #[test]
    fn statuses_from_below_keep_their_code_and_name_a_reason() {
        let r = Refusal::at_admission(Status::resource_exhausted("risk queue full"));
        assert_eq!(
            (r.reason, r.code()),
            (Reason::QueueFull, Code::ResourceExhausted)
        );
        assert!(r.refused());
        let f = Refusal::failed(Status::internal("bad reply"));
        assert_eq!(f.code(), Code::Internal);
        assert!(!f.refused());
    }
}
