//! The service side of a hop: what risk, notification and logging share, and the gateway
//! and the load generator do not.
//!
//! `sluice-core` is plumbing every binary needs (shutdown, HTTP/2 settings, the accept loop,
//! admin endpoints, metrics, telemetry). Serving a downstream stream is one more concern,
//! with its own bounds, its own faults and its own spans, and only the three services have
//! it; kept here, it is written once for all three and core stays free of it.
//!
//! A message's way through a service, and the module that owns each step:
//!
//! ```text
//!  inbound stream ──► pool: reply room → stream share → worker → (not stalled) → read
//!                       │
//!                       ▼  one task per message read, in its `process` span (trace)
//!                     faults: deadline → injected delay → deadline → injected error
//!                       │
//!                       ▼
//!                     the service's work, in its `work` span (stack)
//! ```
//!
//! - [`pool`]: the bounded worker pool; reads a message only once a worker is free.
//! - [`faults`]: fault injection as a tower layer around the work.
//! - [`stack`]: the stack one message goes through, built in one place.
//! - [`trace`]: the stream's span and each message's spans.
//! - [`control`]: `mesh.v1.Control`, which sets the faults and the pool size.
//! - [`service`]: the flags every service shares and [`service::run_service`], which
//!   puts a service's server together.

pub mod control;
pub mod faults;
pub mod pool;
pub mod service;
pub mod stack;
pub mod trace;

pub use pool::{ReplyStream, WorkerPool};
pub use service::{ServiceArgs, ServiceConfig, run_service};
