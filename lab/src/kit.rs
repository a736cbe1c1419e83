//! What the experiments share: how each measures (runs, length, warmup, binaries), the
//! median they report, and the gateway's figures they sample.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use sluice_observe::names;

use prost::Message as _;
use sluice_loadgen::drive::traffic::Traffic;
use sluice_proto::pb::Faults;

use clap::Args;

/// How each benchmark measures: runs per figure (medians reported), their length and
/// warmup, and where the binaries are. Shared by `bench` and `balance`.
#[derive(Debug, Clone, Args)]
pub struct Measure {
    /// Runs per measurement; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Measured time per run, e.g. 8s.
    #[arg(long, default_value = "8s", value_parser = sluice_core::parse_duration)]
    pub duration: Duration,
    /// Unmeasured warmup per run, e.g. 2s.
    #[arg(long, default_value = "2s", value_parser = sluice_core::parse_duration)]
    pub warmup: Duration,
    /// Directory with the sluice-* binaries (default: this executable's directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// The median of `v` (the upper one of an even count); `v` is never empty here.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `v` as a space-separated list with `decimals` places: one figure per run.
pub(crate) fn list(v: &[f64], decimals: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// How often [`peaks`] samples the gateway's metrics, and the timeline tick of the runs it watches.
pub(crate) const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// The highest value of each of `names` at `metrics`, sampled every [`SAMPLE_EVERY`] until
/// `end`, starting from `floor`.
pub(crate) async fn peaks<const N: usize>(
    metrics: &str,
    names: [&str; N],
    end: Instant,
    mut floor: [f64; N],
) -> [f64; N] {
    while Instant::now() < end {
        for (name, peak) in names.iter().zip(floor.iter_mut()) {
            let now = sluice_loadgen::admin::metrics::metric(metrics, name).await;
            *peak = peak.max(now.unwrap_or(0.0));
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    floor
}

pub(crate) const RSS: &str = names::gateway::PROCESS_RESIDENT_MEMORY_BYTES;
/// What the gateway holds for SubmitStreams (`inflight{api="stream"}`).
pub(crate) static HELD: LazyLock<String> =
    LazyLock::new(|| format!("{}{{api=\"stream\"}}", names::gateway::INFLIGHT));

/// Stalls (or releases) a service through its Control API.
pub(crate) async fn set_stall(
    control: &mut sluice_loadgen::admin::control::Control,
    stall: bool,
) -> anyhow::Result<()> {
    control
        .set(Faults {
            stall,
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// The bound on SubmitStream transactions a default gateway holds between `connections`
/// clients and logging, and the bytes those and its connections' HTTP/2 windows may take.
pub(crate) fn held_bounds(connections: usize) -> (f64, f64) {
    let d = sluice_gateway::Config::defaults();
    let held = (d.downstream_queue + d.streams_per_downstream * d.downstream_stream_inflight)
        .min(connections * d.stream_inflight) as f64;
    let windows = (connections as f64 + 1.0) * f64::from(d.server.h2.connection_window);
    (held, held * message_bytes() + windows)
}

/// Average encoded size of a generated transaction on the logging hop, bytes.
pub(crate) fn message_bytes() -> f64 {
    let mut t = Traffic::new("stall-bounded-1234567", 0.0, 7);
    let n = 1000;
    (0..n)
        .map(|_| t.next_transaction().0.encoded_len() + 16)
        .sum::<usize>() as f64
        / n as f64
}
