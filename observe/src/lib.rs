//! One source of the gateway's truth for everything that reads it from outside — the
//! gateway's own live map, the load generator's live view and timeline, the lab's
//! experiments and the end-to-end tests:
//!
//! - [`names`]: the metric names they read, in one place (an end-to-end test,
//!   `tests/tests/e2e/dashboard.rs`, checks each against what the binaries serve).
//! - [`snapshot`]: the `/pressure` snapshot — what each hop holds against its bound, the
//!   degradation level and the bottleneck, where a transaction's time went — as one serde
//!   type, computed from one scrape by one function.

pub mod names;
pub mod snapshot;
