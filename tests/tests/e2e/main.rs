//! End-to-end tests against the real binaries, one test executable (`mod` per topic).

mod api;
mod backpressure;
mod chaos;
mod control;
mod faults;
mod loadgen;
mod loadgen_features;
mod shutdown;
mod stream;
mod tracing;
