//! The mesh's side doors, never its load path: what the generator reads from a running
//! binary besides the outcomes of its transactions.
//!
//! - [`metrics`]: Prometheus samples from `/metrics`, for the live view, benchmarks and
//!   scenarios.

pub mod metrics;
