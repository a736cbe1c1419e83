//! The Sluice load generator as a library. The binary (`main.rs`) only parses flags
//! ([`cli`]) and calls into these; tests call them directly.
//!
//! The modules follow what the generator does, so the tree reads as its roles:
//!
//! - [`drive`]: driving load at a gateway — the arrival schedule, the generated traffic, the
//!   driver that sends it and waits for every outcome, and the recorder every outcome goes to.
//! - [`report`]: what a run produced — the report (text, JSON, HTML), the live view, and the
//!   audit check of acknowledged transactions against the log.
//! - [`admin`]: the mesh's side doors, never its load path — admin HTTP (`/metrics`,
//!   `/healthz`, `/readyz`), the Control API with its token, and the `fault` command.
//!
//! It depends on the protocol, `sluice-core` and `sluice-observe` only: it measures any
//! gateway that speaks `mesh.v1`, and builds without the mesh. The experiments run on a mesh
//! (the demo, bench, pressure, chaos, scenarios) live in the `sluice-lab` crate, which drives
//! through this one.

pub mod admin;
pub mod cli;
pub mod drive;
pub mod report;
