//! The mesh's side doors, never its load path: what the generator reads from a running
//! binary besides the outcomes of its transactions.
//!
//! - [`http`]: one GET on an admin port (`/metrics`, `/healthz`, `/readyz`) through a real
//!   HTTP client, with a timeout, for every caller.
//! - [`metrics`]: Prometheus samples from `/metrics`, for the live view, benchmarks and
//!   scenarios.

pub mod http;
pub mod metrics;
