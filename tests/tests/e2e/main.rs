//! End-to-end tests against the real binaries, one test executable (`mod` per topic).

mod admin_token;
mod api;
mod audit;
mod backpressure;
mod causal;
mod chaos;
mod connections;
mod control;
mod dashboard;
mod fairness;
mod faults;
mod hostile;
mod loadgen;
mod loadgen_features;
mod overload;
mod pressure_map;
mod readiness;
mod replicas;
mod shutdown;
mod stream;
mod stream_errors;
mod tracing;
