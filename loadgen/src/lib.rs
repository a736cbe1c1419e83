//! The Sluice load generator as a library. The binary (`main.rs`) only parses flags
//! ([`cli`]) and calls into these; tests call them directly.
//!
//! The modules follow what the generator does, so the tree reads as its roles:
//!
//! - [`drive`]: driving load at a gateway — the arrival schedule, the generated traffic, and
//!   the driver that sends it and waits for every outcome.
//! - [`report`]: what a run produced — the recorder and the report (text, JSON, HTML), and
//!   the audit check of acknowledged transactions against the log.
//! - [`lab`]: meshes to drive — the in-process demo mesh and the real binaries as processes
//!   — and the experiments run on them: bench, pressure, scenarios, chaos, fault injection.
//! - [`admin`]: the mesh's side doors, never its load path — admin HTTP (`/metrics`,
//!   `/healthz`, `/readyz`) and the Control API with its token.

pub mod admin;
pub mod cli;
pub mod drive;
pub mod lab;
pub mod report;
