//! The mesh's side doors, never its load path: what the generator reads from (and does to)
//! a running binary besides sending it transactions.
//!
//! - [`http`]: one GET on an admin port (`/metrics`, `/healthz`, `/readyz`) through a real
//!   HTTP client, with a timeout, for every caller.
//! - [`metrics`]: Prometheus samples from `/metrics`, for the live view, benchmarks and
//!   scenarios.
//! - [`control`]: the one `mesh.v1.Control` client, which always presents the admin token.
//! - [`fault`]: the `fault` command's flags: show or change a service's faults through it.

pub mod control;
pub mod fault;
pub mod http;
pub mod metrics;
