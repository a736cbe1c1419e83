//! The Sluice load generator as a library: traffic ([`traffic`]), pacing and drivers
//! ([`driver`]), results ([`report`]), audit checks ([`audit`]) and an in-process mesh for
//! the demo ([`mesh`]), kill/stop runs against the real binaries ([`chaos`]). The CLI in `main.rs` only parses flags and calls these.

pub mod audit;
pub mod bench;
pub mod chaos;
pub mod cli;
pub mod driver;
pub mod fault;
pub mod html;
pub mod mesh;
pub mod pressure;
pub mod procs;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod scrape;
pub mod sink;
pub mod traffic;
