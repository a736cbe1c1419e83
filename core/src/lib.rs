//! Mechanisms every Sluice binary shares, one concern per module. Nothing here knows about
//! transactions, risk or audit records: business logic lives in the service crates.
//!
//! - [`shutdown`]: SIGINT/SIGTERM and the bounded drain that follows.
//! - [`h2`]: HTTP/2 flow-control and keepalive settings as one config type, applied to tonic
//!   servers and endpoints so every window is explicit.
//! - [`admin`]: the HTTP admin listener (`/metrics`, `/healthz`, `/readyz`).
//! - [`readiness`]: whether the process should get traffic; one flag behind `/readyz` and
//!   the gRPC health of the main service.
//! - [`incoming`]: the accept loop: handshake timeout, connection cap, accept-error backoff.
//! - [`log_format`]: log lines as text or JSON, each naming its span's trace.
//! - [`log_limit`]: one log line per interval, with a count, for errors that repeat.
//! - [`metrics`]: the Prometheus registry plus process metrics.
//! - [`flags`]: flags → checked config: the one error for a flag that cannot work, exit 64.
//! - [`exposition`]: the one reader of `/metrics` text, with Prometheus's
//!   `histogram_quantile` rule.
//! - [`piggyback`]: deadlines finer than tokio's millisecond timer, ended by the process's
//!   next wake-up past them instead of a wake-up of their own.
//! - [`auth`]: the mesh token (bearer, constant-time) on data-path RPCs.
//! - [`admin_token`]: where the Control API's token comes from (flag, file, or generated and
//!   written). The Control API itself, like the worker pool, is the service side of a hop:
//!   crate `sluice-runtime`.
//! - [`descriptors`]: the connection caps fitted to `RLIMIT_NOFILE` less a reserve.
//! - [`deadline`]: per-message deadlines carried as Unix milliseconds across hops.
//! - [`server`]: binding, the ready line, and running a tonic router until shutdown.
//! - [`spans`]: the tracer, gRPC span attributes, failure marking.
//! - [`telemetry`]: one `tracing` subscriber: spans to OpenTelemetry (OTLP export through a
//!   bounded, counted queue), log lines to stderr (`RUST_LOG`, `--log-format`).
//! - [`propagation`]: W3C + B3 trace context in gRPC metadata and per-message maps.

pub mod admin;
pub mod admin_token;
pub mod auth;
pub mod deadline;
pub mod descriptors;
pub mod exposition;
pub mod flags;
pub mod h2;
pub mod incoming;
pub mod log_format;
pub mod log_limit;
pub mod metrics;
pub mod piggyback;
pub mod propagation;
pub mod readiness;
pub mod server;
pub mod shutdown;
pub mod spans;
pub mod telemetry;

pub use tokio_util::sync::CancellationToken;

/// A duration as people write and read it (`250ms`, `5s`, `2m`): lets clap show and take a
/// `DEFAULT_*` duration constant as the flag's default (`default_value_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub std::time::Duration);

impl std::fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        humantime::format_duration(self.0).fmt(f)
    }
}

impl std::str::FromStr for HumanDuration {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Self)
    }
}

/// Parses a human duration such as `250ms`, `5s` or `2m` (for clap `value_parser`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 250ms, 5s, 2m)"))
}

/// The status that ends a stream whose next message could not be read. tonic reports a
/// message over `max_decoding_message_size` as OUT_OF_RANGE; gRPC specifies
/// RESOURCE_EXHAUSTED for it, which is what clients (and their retry policies) expect.
pub fn inbound_error(status: tonic::Status) -> tonic::Status {
    if status.code() == tonic::Code::OutOfRange {
        tonic::Status::resource_exhausted(status.message().to_string())
    } else {
        status
    }
}
