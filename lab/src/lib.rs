//! The lab (`sluice-lab`): meshes to drive and the experiments run on them. The binary
//! (`main.rs`) only parses flags ([`cli`]) and calls into these; the end-to-end tests use
//! [`procs`] as their harness.
//!
//! Two ways to have a mesh: [`mesh`] runs all four servers inside this process (the
//! [`demo`]), [`procs`] spawns the real binaries as processes on loopback (everything else,
//! and the end-to-end tests). On those: [`bench`](mod@bench) (saturation and latency),
//! [`balance`](mod@balance) (routing policies around one slow replica of three),
//! [`pressure`] (bounded vs unbounded backpressure; static vs adaptive overload control),
//! [`scenario`] (phases, faults and expectations from a file), [`chaos`] (kill and freeze
//! each process under load). [`sink`] is the opposite: a gateway that does nothing, to
//! measure the generator itself.
//!
//! None of this is on the measuring path: it only starts, disturbs and stops what the load
//! generator ([`sluice_loadgen`], re-exported as [`loadgen`]) drives and measures.

pub mod balance;
pub mod bench;
pub mod chaos;
pub mod cli;
pub mod cpu;
pub mod demo;
pub mod kit;
pub mod mesh;
pub mod pressure;
pub mod procs;
pub mod scenario;
pub mod sink;

pub use sluice_loadgen as loadgen;
