//! What one load run is: [`LoadSpec`], its defaults, and the builder every caller uses.
//!
//! The CLI, the lab (bench, pressure, scenarios, chaos) and the tests all describe runs.
//! Each starts from [`LoadSpec::builder`] — every setting at its `DEFAULT_*` — and states only
//! what differs; [`LoadSpecBuilder::build`] then checks the whole spec once, so a bad value
//! fails the same way whoever wrote it, before any connection is made.

use std::sync::Arc;
use std::time::Duration;

use anyhow::ensure;

use crate::drive::schedule::{ArrivalKind, Arrivals};
use crate::drive::signal::OutcomeSignal;
use crate::drive::traffic::PriorityMix;
use crate::report::exemplars::TraceLinks;
use crate::report::live::Narrator;

/// The gateway a run drives unless told otherwise (the gateway's default listen address).
pub const DEFAULT_TARGET: &str = "http://127.0.0.1:50051";
/// Open-loop rate, transactions per second, when no pacing is given.
pub const DEFAULT_RATE: f64 = 1000.0;
/// Measured time of a run.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// HTTP/2 connections to the gateway (stream mode: one SubmitStream each).
pub const DEFAULT_CONNECTIONS: usize = 2;
/// Deadline of each transaction.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default most transactions in flight in open loop; beyond it, sends wait (and the wait
/// counts in latency).
pub const DEFAULT_MAX_OUTSTANDING: usize = 20_000;
/// Default transactions buffered per stream before a send blocks.
pub const DEFAULT_STREAM_BUFFER: usize = 16;
/// Length of one timeline interval: a second, for people.
pub const DEFAULT_TICK: Duration = Duration::from_secs(1);
/// Seed of the traffic generator (and of Poisson arrivals).
pub const DEFAULT_SEED: u64 = 1;
/// The metadata key that names the client to the gateway's per-client rate limit.
pub const CLIENT_ID_METADATA: &str = "x-client-id";
/// Longest client id the gateway accepts.
pub const MAX_CLIENT_ID_LEN: usize = 64;

/// Checks a client id as the gateway will: 1 to [`MAX_CLIENT_ID_LEN`] visible ASCII
/// characters (it travels as metadata, so no spaces or control characters).
pub fn check_client_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CLIENT_ID_LEN {
        return Err(format!(
            "client id must be 1 to {MAX_CLIENT_ID_LEN} characters, not {}",
            id.len()
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "client id {id:?} must be visible ASCII (letters, digits, punctuation; no spaces)"
        ));
    }
    Ok(())
}

/// Which gateway API to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `Submit`, one call per transaction.
    Unary,
    /// `SubmitStream`, one long-lived stream per connection.
    Stream,
}

impl Mode {
    /// Its name as the report and the gateway's `api` label spell it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Unary => "unary",
            Mode::Stream => "stream",
        }
    }
}

/// How sends are paced.
#[derive(Debug, Clone)]
pub enum Pacing {
    /// Fixed schedule at `rate` transactions per second.
    Open { rate: f64 },
    /// Open loop over a rate profile (steps, ramps; constant or Poisson arrivals). The run
    /// lasts the profile's length.
    Shaped(Arc<Arrivals>),
    /// `concurrency` transactions outstanding at a time.
    Closed { concurrency: usize },
}

impl Pacing {
    /// Open loop at `rate` for `duration`, arrivals spaced as `kind` says.
    pub fn at_rate(rate: f64, kind: ArrivalKind, duration: Duration) -> Pacing {
        match kind {
            ArrivalKind::Constant => Pacing::Open { rate },
            ArrivalKind::Poisson => Pacing::Shaped(Arc::new(Arrivals::constant(
                ArrivalKind::Poisson,
                rate,
                duration,
            ))),
        }
    }

    /// The open-loop arrival profile over `duration`, if open loop.
    pub(crate) fn arrivals(&self, duration: Duration) -> Option<Arc<Arrivals>> {
        match self {
            Pacing::Open { rate } => Some(Arc::new(Arrivals::constant(
                ArrivalKind::Constant,
                *rate,
                duration,
            ))),
            Pacing::Shaped(a) => Some(a.clone()),
            Pacing::Closed { .. } => None,
        }
    }

    /// One line for people, e.g. `open loop, 2000/s`.
    pub fn describe(&self) -> String {
        match self {
            Pacing::Open { rate } => format!("open loop, {rate:.0}/s"),
            Pacing::Shaped(a) => format!(
                "open loop, {:?} arrivals over {} segment(s)",
                a.kind,
                a.segments.len()
            ),
            Pacing::Closed { concurrency } => format!("closed loop, {concurrency} outstanding"),
        }
    }
}

/// One load run. Build it with [`LoadSpec::builder`]; the fields are public to read.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The gateway's gRPC URL.
    pub target: String,
    pub mode: Mode,
    pub pacing: Pacing,
    /// Measured time (a shaped profile sets its own).
    pub duration: Duration,
    /// Load sent before measuring starts, not counted.
    pub warmup: Duration,
    pub connections: usize,
    /// Share of deliberately invalid transactions (0..1).
    pub invalid_ratio: f64,
    /// Open loop: most transactions in flight; beyond it sends wait (and the wait counts in
    /// latency).
    pub max_outstanding: usize,
    /// Stream mode: transactions buffered per stream before a send blocks.
    pub stream_buffer: usize,
    /// Deadline of each transaction (sent as grpc-timeout on unary calls).
    pub timeout: Duration,
    /// Print a progress line every interval on stderr.
    pub progress: bool,
    /// Prints the caller's lines between the live view's redraws.
    pub narrator: Option<Narrator>,
    pub seed: u64,
    /// Prefix of generated transaction ids (unique per run by default).
    pub id_prefix: String,
    /// Wait for the gateway to report ready before sending.
    pub wait_ready: bool,
    /// HTTP/2 settings of the generator's connections (its receive windows bound the
    /// outcomes the gateway may send ahead of the generator reading them).
    pub h2: sluice_core::h2::H2Settings,
    /// Length of one timeline interval (1 s for people; finer for benchmarks).
    pub tick: Duration,
    /// The gateway's metrics URL (`http://host:port/metrics`), to show its queue depths in
    /// the timeline.
    pub metrics: Option<String>,
    /// Stream mode: open a new SubmitStream when one ends before the run does (the gateway
    /// restarted, the connection broke), instead of retiring that connection.
    pub reopen_streams: bool,
    /// Told of every OK outcome as it arrives (for callers that wait on recovery).
    pub outcomes: Option<Arc<OutcomeSignal>>,
    /// Where the report links trace ids to (a Jaeger UI), if anywhere.
    pub trace_links: Option<TraceLinks>,
    /// Sent as [`CLIENT_ID_METADATA`] on every call, so the gateway's per-client token
    /// bucket counts this run as one client; `None` sends none (the gateway then counts by
    /// the connection's IP address).
    pub client_id: Option<String>,
    /// Each transaction's priority drawn from this mix, and the report broken down by
    /// priority; `None` leaves every priority unset (DEFAULT) and the report whole.
    pub priority_mix: Option<PriorityMix>,
    /// Send each account's transactions after its latest acknowledged one
    /// (`Transaction.after_hlc` = that outcome's `hlc`), so the gateway's clocks order each
    /// account's history as this client saw it (`verify` checks it).
    pub causal: bool,
    /// Unary mode: client-side adaptive throttling with this K (requests the gateway may
    /// see per call it accepts; see [`crate::drive::throttle`]); `None` sends every call.
    pub client_throttle: Option<f64>,
}

impl Default for LoadSpec {
    /// Every setting at its `DEFAULT_*`, against [`DEFAULT_TARGET`], with a random id prefix.
    fn default() -> Self {
        LoadSpec {
            target: DEFAULT_TARGET.to_string(),
            mode: Mode::Stream,
            pacing: Pacing::Open { rate: DEFAULT_RATE },
            duration: DEFAULT_DURATION,
            warmup: Duration::ZERO,
            connections: DEFAULT_CONNECTIONS,
            invalid_ratio: 0.0,
            max_outstanding: DEFAULT_MAX_OUTSTANDING,
            stream_buffer: DEFAULT_STREAM_BUFFER,
            timeout: DEFAULT_TIMEOUT,
            progress: false,
            narrator: None,
            causal: false,
            seed: DEFAULT_SEED,
            id_prefix: random_prefix(),
            wait_ready: true,
            h2: Default::default(),
            tick: DEFAULT_TICK,
            metrics: None,
            reopen_streams: false,
            outcomes: None,
            trace_links: None,
            client_id: None,
            priority_mix: None,
            client_throttle: None,
        }
    }
}

/// A prefix no other run will use, so transaction ids never collide in the audit log.
fn random_prefix() -> String {
    use rand::Rng;
    let n: u64 = rand::rng().random();
    format!("lg{:x}", n & 0xffff_ffff)
}

impl LoadSpec {
    /// A run against `target` with every other setting at its default; say what differs,
    /// then [`LoadSpecBuilder::build`].
    pub fn builder(target: impl Into<String>) -> LoadSpecBuilder {
        LoadSpecBuilder(LoadSpec {
            target: target.into(),
            ..LoadSpec::default()
        })
    }

    /// Fails, naming the setting, when the run could not mean anything (no connections, no
    /// time, a rate that is not one).
    pub fn validate(&self) -> anyhow::Result<()> {
        match &self.pacing {
            Pacing::Open { rate } => ensure!(
                rate.is_finite() && *rate > 0.0,
                "rate must be a positive number of transactions per second, not {rate}"
            ),
            Pacing::Closed { concurrency } => {
                ensure!(*concurrency > 0, "concurrency must be at least 1")
            }
            Pacing::Shaped(_) => {}
        }
        ensure!(
            (0.0..=1.0).contains(&self.invalid_ratio),
            "invalid ratio must be between 0 and 1, not {}",
            self.invalid_ratio
        );
        ensure!(self.connections > 0, "connections must be at least 1");
        ensure!(!self.duration.is_zero(), "duration must be more than 0");
        ensure!(!self.timeout.is_zero(), "timeout must be more than 0");
        ensure!(!self.tick.is_zero(), "tick must be more than 0");
        ensure!(
            self.max_outstanding > 0,
            "max outstanding must be at least 1"
        );
        ensure!(self.stream_buffer > 0, "stream buffer must be at least 1");
        if let Some(id) = &self.client_id {
            check_client_id(id).map_err(anyhow::Error::msg)?;
        }
        if let Some(k) = self.client_throttle {
            ensure!(
                k.is_finite() && k >= 1.0,
                "client throttle K must be 1 or more (requests per accepted call; 2 is the SRE book's default), not {k}"
            );
        }
        Ok(())
    }
}

/// Builds a [`LoadSpec`]: each method sets one setting; unset ones keep their `DEFAULT_*`.
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build`"]
pub struct LoadSpecBuilder(LoadSpec);

impl LoadSpecBuilder {
    pub fn mode(mut self, mode: Mode) -> Self {
        self.0.mode = mode;
        self
    }

    pub fn pacing(mut self, pacing: Pacing) -> Self {
        self.0.pacing = pacing;
        self
    }

    pub fn duration(mut self, duration: Duration) -> Self {
        self.0.duration = duration;
        self
    }

    pub fn warmup(mut self, warmup: Duration) -> Self {
        self.0.warmup = warmup;
        self
    }

    pub fn connections(mut self, connections: usize) -> Self {
        self.0.connections = connections;
        self
    }

    pub fn invalid_ratio(mut self, ratio: f64) -> Self {
        self.0.invalid_ratio = ratio;
        self
    }

    pub fn max_outstanding(mut self, max: usize) -> Self {
        self.0.max_outstanding = max;
        self
    }

    pub fn stream_buffer(mut self, buffer: usize) -> Self {
        self.0.stream_buffer = buffer;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.0.timeout = timeout;
        self
    }

    pub fn progress(mut self, progress: bool) -> Self {
        self.0.progress = progress;
        self
    }

    /// Chains each account's transactions with `after_hlc` (see [`LoadSpec::causal`]).
    pub fn causal(mut self, causal: bool) -> Self {
        self.0.causal = causal;
        self
    }

    /// Lines said through `narrator` appear between the live view's redraws.
    pub fn narrator(mut self, narrator: Narrator) -> Self {
        self.0.narrator = Some(narrator);
        self
    }

    pub fn seed(mut self, seed: u64) -> Self {
        self.0.seed = seed;
        self
    }

    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.0.id_prefix = prefix.into();
        self
    }

    pub fn wait_ready(mut self, wait: bool) -> Self {
        self.0.wait_ready = wait;
        self
    }

    pub fn h2(mut self, h2: sluice_core::h2::H2Settings) -> Self {
        self.0.h2 = h2;
        self
    }

    pub fn tick(mut self, tick: Duration) -> Self {
        self.0.tick = tick;
        self
    }

    /// Shows the gateway's queue depths, scraped from this metrics URL, in the timeline.
    pub fn metrics(mut self, url: Option<String>) -> Self {
        self.0.metrics = url;
        self
    }

    pub fn reopen_streams(mut self, reopen: bool) -> Self {
        self.0.reopen_streams = reopen;
        self
    }

    pub fn outcomes(mut self, signal: Arc<OutcomeSignal>) -> Self {
        self.0.outcomes = Some(signal);
        self
    }

    /// Links each trace id in the report to its page under `links` (a Jaeger UI).
    pub fn trace_links(mut self, links: Option<TraceLinks>) -> Self {
        self.0.trace_links = links;
        self
    }

    /// Names the run to the gateway's per-client rate limit (see [`LoadSpec::client_id`]).
    pub fn client_id(mut self, id: Option<String>) -> Self {
        self.0.client_id = id;
        self
    }

    /// Draws each transaction's priority from `mix` and breaks the report down by priority.
    pub fn priority_mix(mut self, mix: Option<PriorityMix>) -> Self {
        self.0.priority_mix = mix;
        self
    }

    /// Throttles unary calls on the client side (see [`LoadSpec::client_throttle`]).
    pub fn client_throttle(mut self, k: Option<f64>) -> Self {
        self.0.client_throttle = k;
        self
    }

    /// The spec, once [`LoadSpec::validate`] accepts it.
    pub fn build(self) -> anyhow::Result<LoadSpec> {
        self.0.validate()?;
        Ok(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_states_only_what_differs_and_checks_the_rest() {
        let spec = LoadSpec::builder("http://gw:1")
            .mode(Mode::Unary)
            .pacing(Pacing::Closed { concurrency: 8 })
            .build()
            .unwrap();
        assert_eq!(spec.target, "http://gw:1");
        assert_eq!(spec.mode, Mode::Unary);
        assert_eq!(spec.connections, DEFAULT_CONNECTIONS);
        assert_eq!(spec.timeout, DEFAULT_TIMEOUT);
        assert!(spec.id_prefix.starts_with("lg"));
        let other = LoadSpec::default();
        assert_ne!(spec.id_prefix, other.id_prefix, "runs never share ids");

        let bad = |b: LoadSpecBuilder| b.build().unwrap_err().to_string();
        let b = || LoadSpec::builder(DEFAULT_TARGET);
        assert!(bad(b().pacing(Pacing::Open { rate: -3.0 })).starts_with("rate"));
        assert!(bad(b().pacing(Pacing::Open { rate: f64::NAN })).starts_with("rate"));
        assert!(bad(b().pacing(Pacing::Closed { concurrency: 0 })).starts_with("concurrency"));
        assert!(bad(b().connections(0)).starts_with("connections"));
        assert!(bad(b().invalid_ratio(1.5)).starts_with("invalid ratio"));
        assert!(bad(b().duration(Duration::ZERO)).starts_with("duration"));
        assert!(bad(b().tick(Duration::ZERO)).starts_with("tick"));
        assert!(bad(b().client_id(Some(String::new()))).starts_with("client id"));
        assert!(bad(b().client_id(Some("x".repeat(65)))).starts_with("client id"));
        assert!(bad(b().client_id(Some("tenant a".into()))).starts_with("client id"));
        assert!(bad(b().client_id(Some("tenant-é".into()))).starts_with("client id"));
        let named = b().client_id(Some("x".repeat(64))).build().unwrap();
        assert_eq!(named.client_id.map(|id| id.len()), Some(64));
    }
}
