//! The overload-control section: the mesh's throughput-latency curve, then a static limit,
//! the adaptive one, and the adaptive one against a client that throttles itself, each
//! through unary steps around saturation and a slowed logging.
use sluice_observe::names::gateway;
use sluice_observe::names::service::{WORKER_POOL_BUSY, WORKER_POOL_CAPACITY, name as pool};
use std::sync::Arc;
use std::time::Duration;

use sluice_proto::pb::Faults;

use crate::procs::ProcMesh;
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::schedule::{ArrivalKind, Arrivals, Segment};
use sluice_loadgen::drive::spec::{DEFAULT_TIMEOUT, Mode, Pacing};
use sluice_loadgen::report::{BottleneckSeen, Report, TimelinePoint, bottleneck_named, counts};

use crate::kit::{RSS, peaks};
use crate::pressure::{
    BASE_LOAD, GOODPUT_TARGET, LEAD_IN, MIB, OPEN_LOOP_OUTSTANDING, OVERLOAD_TICK,
    P99_TARGET_FACTOR, PressureArgs, SATURATION_RUN, SATURATION_WARMUP, TICK_SLACK,
    UNARY_SATURATION_CONCURRENCY, mesh_with, spec, start,
};

/// The closed-loop concurrencies the overload section measures unary goodput and p99 at:
/// what a perfectly chosen static limit would buy, refusing nothing. The last is
/// saturation's ([`UNARY_SATURATION_CONCURRENCY`]).
pub(crate) const FRONTIER: [usize; 4] = [32, 64, 128, UNARY_SATURATION_CONCURRENCY];

/// One point of the throughput–latency curve.
#[derive(Debug, Clone, Copy)]
struct FrontierPoint {
    pub(crate) concurrency: usize,
    pub(crate) goodput: f64,
    pub(crate) p99_ms: f64,
}

/// Unary goodput and p99 closed loop at each of [`FRONTIER`]'s concurrencies, on one mesh
/// with `gateway`'s flags.
async fn measure_frontier(
    dir: &std::path::Path,
    gateway: Vec<String>,
) -> anyhow::Result<Vec<FrontierPoint>> {
    let mesh = mesh_with(dir, gateway).await?;
    let mut points = Vec::with_capacity(FRONTIER.len());
    for concurrency in FRONTIER {
        let spec = spec(
            &mesh.gateway.url(),
            Pacing::Closed { concurrency },
            SATURATION_RUN,
            format!("frontier-{concurrency}"),
        )
        .mode(Mode::Unary)
        .max_outstanding(concurrency)
        .warmup(SATURATION_WARMUP)
        .build()?;
        let report = driver::run(spec).await?;
        points.push(FrontierPoint {
            concurrency,
            goodput: report.ok_rate,
            p99_ms: report.latency_ms.p99,
        });
    }
    Ok(points)
}

/// The fewest outstanding of `frontier` that carry [`GOODPUT_TARGET`] of `sat`: the best
/// accepted p99 any limit could give at that goodput here.
fn frontier_verdict(frontier: &[FrontierPoint], sat: f64, unloaded_p99: f64) -> Option<String> {
    let p = frontier
        .iter()
        .find(|p| p.goodput >= GOODPUT_TARGET * sat)?;
    Some(format!(
        "  {:<28}{}: {} outstanding carry {:.0} % of saturation at p99 {:.1} ms = {:.1} x the unloaded {:.1} ms (closed loop, nothing refused)",
        "best any limit can do here",
        if p.p99_ms <= P99_TARGET_FACTOR * unloaded_p99 {
            "reachable"
        } else {
            "out of reach"
        },
        p.concurrency,
        100.0 * p.goodput / sat.max(1e-9),
        p.p99_ms,
        p.p99_ms / unloaded_p99.max(1e-9),
        unloaded_p99
    ))
}

/// A gateway configuration the overload section compares.
struct OverloadControl {
    pub(crate) name: &'static str,
    /// For transaction ids.
    pub(crate) slug: &'static str,
    pub(crate) flags: &'static [&'static str],
    /// The generator as a cooperating client: client-side adaptive throttling with this K
    /// (`--client-throttle`); `None` sends every call whatever the gateway answers.
    pub(crate) client_throttle: Option<f64>,
}

/// The limit as it was (static, nothing degraded), then overload control as it ships
/// (adaptive limit, degradation on by default) against a client that sends every call, and
/// against one that throttles itself when refused. Saturation is measured on the first.
const CONTROLS: [OverloadControl; 3] = [
    OverloadControl {
        name: "static, no degradation",
        slug: "static",
        flags: &["--concurrency-limit", "static", "--degradation", "off"],
        client_throttle: None,
    },
    OverloadControl {
        name: "adaptive",
        slug: "adaptive",
        flags: &["--concurrency-limit", "adaptive"],
        client_throttle: None,
    },
    OverloadControl {
        name: "adaptive + client throttle",
        slug: "adaptive-throttled",
        flags: &["--concurrency-limit", "adaptive"],
        client_throttle: Some(CLIENT_THROTTLE_K),
    },
];

/// K of the cooperating client's throttle: the gateway sees about 1.1 calls per one it
/// accepts, so it refuses about one in eleven of what reaches it.
const CLIENT_THROTTLE_K: f64 = 1.1;

/// The measured segments of the overload run, by their index in its profile. Segment 0 is
/// the lead-in: warmup at the base load while connections and the limit settle, not
/// measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// 0.5×: the unloaded figures every other step is compared with.
    Base = 1,
    /// 3× (`--peak-factor`).
    Peak,
    /// 0.5× again, twice as long: how soon accepted latency recovers.
    After,
    /// Logging slowed by `--slow-logging-delay`, at `--slow-logging-load`, twice as long.
    SlowLogging,
}

/// The measured steps, in order.
pub(crate) const STEPS: [Step; 4] = [Step::Base, Step::Peak, Step::After, Step::SlowLogging];

impl Step {
    /// Its load, as a multiple of saturation.
    pub(crate) fn load(self, args: &PressureArgs) -> f64 {
        match self {
            Step::Base | Step::After => BASE_LOAD,
            Step::Peak => args.peak_factor,
            Step::SlowLogging => args.slow_logging_load,
        }
    }

    /// How long it lasts.
    pub(crate) fn length(self, args: &PressureArgs) -> Duration {
        match self {
            Step::Base | Step::Peak => args.step_for,
            Step::After | Step::SlowLogging => args.step_for * 2,
        }
    }

    /// What the step is, for its heading.
    pub(crate) fn purpose(self, delay: Duration) -> String {
        match self {
            Step::Base => "unloaded".into(),
            Step::Peak => "overload".into(),
            Step::After => "after the overload".into(),
            Step::SlowLogging => format!("logging slowed by {delay:?}"),
        }
    }
}

/// The overload run's rate profile: the lead-in, then each [`Step`] at its index.
pub(crate) fn overload_profile(sat: f64, args: &PressureArgs) -> Arrivals {
    let segment = |load: f64, duration: Duration| Segment {
        duration,
        from: sat * load,
        to: sat * load,
    };
    let lead_in = segment(BASE_LOAD, LEAD_IN);
    let steps = STEPS.map(|step| segment(step.load(args), step.length(args)));
    Arrivals {
        kind: ArrivalKind::Constant,
        segments: std::iter::once(lead_in).chain(steps).collect(),
    }
}

/// One step's figures on one gateway.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepResult {
    /// Sent by the generator per second while the step lasted.
    pub(crate) sent: f64,
    /// OK per second while the step lasted.
    pub(crate) goodput: f64,
    /// p99 of the OK transactions due in the step, ms.
    pub(crate) ok_p99: f64,
    /// Share of the transactions due in the step that the gateway refused
    /// (RESOURCE_EXHAUSTED).
    pub(crate) refused: f64,
    /// Share of the calls wanted while the step lasted that the client's own throttle
    /// refused (never sent).
    pub(crate) throttled: f64,
    /// The highest degradation level while the step lasted.
    pub(crate) degradation_max: Option<u8>,
}

/// One gateway's figures.
struct ControlFigures {
    /// Indexed by [`Step`] (index 0: the lead-in).
    pub(crate) steps: Vec<StepResult>,
    /// Seconds from the end of the peak until accepted p99 was back within
    /// [`P99_TARGET_FACTOR`] of the unloaded one.
    pub(crate) recovery: Option<f64>,
    pub(crate) rss_peak: f64,
    pub(crate) rss_growth: f64,
    /// At the peak, the mean time a transaction spent in each gateway stage (ms):
    /// admission, mesh (`sluice_gateway_stage_seconds`). Beside the client's accepted p99,
    /// it says where a queue formed: in front of the gateway (the client's connection, the
    /// socket) when neither stage holds it.
    pub(crate) peak_stages: Option<[f64; 2]>,
    /// Gateway CPU µs per OK call with nothing refused (the unloaded step), and per refusal
    /// at the peak (its CPU less its OK calls at the unloaded cost, over its refusals).
    pub(crate) refusal_cost: Option<[f64; 2]>,
    /// Busiest risk and logging worker pools (of their capacity) before logging was
    /// slowed: whether a pool ever filled, i.e. whether a load-aware pool size would have
    /// had anything to do.
    pub(crate) pools_busy: [f64; 2],
    pub(crate) pools_capacity: [f64; 2],
    /// The bottleneck the gateway named most often while logging was slow.
    pub(crate) bottleneck: Option<BottleneckSeen>,
    pub(crate) errors: String,
}

/// Mean ms per unary transaction in the gateway's admission and mesh stages between two
/// scrapes.
fn stage_means(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
) -> [f64; 2] {
    ["admission", "mesh"].map(|stage| {
        let series = |part: &str| {
            let key = format!(
                "{}_{part}{{api=\"unary\",stage=\"{stage}\"}}",
                gateway::STAGE_SECONDS
            );
            after.get(&key).copied().unwrap_or(0.0) - before.get(&key).copied().unwrap_or(0.0)
        };
        let count = series("count");
        if count > 0.0 {
            1000.0 * series("sum") / count
        } else {
            0.0
        }
    })
}

/// Gateway CPU µs per OK unary call over the unloaded step (`base` → `peak` snapshots),
/// and per refusal over the peak (`peak` → `after`): the peak's CPU less its OK calls at
/// the unloaded cost, over the calls it refused. None without refusals.
fn refusal_cost(
    base: &(std::collections::BTreeMap<String, f64>, f64),
    peak: &(std::collections::BTreeMap<String, f64>, f64),
    after: &(std::collections::BTreeMap<String, f64>, f64),
) -> Option<[f64; 2]> {
    let calls = |m: &std::collections::BTreeMap<String, f64>| -> (f64, f64) {
        let all = m
            .iter()
            .filter(|(k, _)| {
                k.starts_with(&format!("{}{{api=\"unary\"", gateway::TRANSACTIONS_TOTAL))
            })
            .map(|(_, v)| v)
            .sum::<f64>();
        let ok = m
            .get(&format!(
                "{}{{api=\"unary\",result=\"ok\"}}",
                gateway::TRANSACTIONS_TOTAL
            ))
            .copied()
            .unwrap_or(0.0);
        (all, ok)
    };
    let ((_, b_ok), (p_all, p_ok), (a_all, a_ok)) =
        (calls(&base.0), calls(&peak.0), calls(&after.0));
    let ok_base = p_ok - b_ok;
    let per_ok = 1e6 * (peak.1 - base.1) / ok_base.max(1.0);
    let (ok_peak, refused_peak) = (a_ok - p_ok, (a_all - p_all) - (a_ok - p_ok));
    (refused_peak > 0.0).then(|| {
        let cpu = 1e6 * (after.1 - peak.1);
        [per_ok, ((cpu - ok_peak * per_ok) / refused_peak).max(0.0)]
    })
}

/// The timeline points whose interval (`tick` seconds, ending at `t`) lies within
/// `start..end` seconds of the run.
pub(crate) fn within(
    timeline: &[TimelinePoint],
    start: f64,
    end: f64,
    tick: f64,
) -> &[TimelinePoint] {
    let from = timeline.partition_point(|p| p.t - tick < start - TICK_SLACK);
    let to = timeline.partition_point(|p| p.t <= end + TICK_SLACK);
    &timeline[from..to.max(from)]
}

/// Step `i`'s figures: rates from the timeline while it lasted, latency and refusals from
/// the transactions due in it.
fn step_result(report: &Report, profile: &Arrivals, i: usize, tick: f64) -> StepResult {
    let start = profile.segment_start(i);
    let end = start + profile.segments[i].duration.as_secs_f64();
    let points = within(&report.timeline, start, end, tick);
    let n = points.len().max(1) as f64;
    let due = report.steps.get(i).map(|s| &s.figures);
    StepResult {
        sent: points.iter().map(|p| p.sent).sum::<f64>() / n,
        goodput: points.iter().map(|p| p.ok).sum::<f64>() / n,
        ok_p99: due.map_or(0.0, |f| f.ok_p99_ms),
        refused: due.map_or(0.0, |f| {
            f.errors.get("RESOURCE_EXHAUSTED").copied().unwrap_or(0) as f64 / f.sent.max(1) as f64
        }),
        degradation_max: points.iter().filter_map(|p| p.degradation_level).max(),
        throttled: {
            let throttled: f64 = points.iter().map(|p| p.throttled).sum();
            let sent: f64 = points.iter().map(|p| p.sent).sum();
            throttled / (throttled + sent).max(1e-9)
        },
    }
}

/// Seconds from `since` until the end of the first of `points` whose accepted p99 is within
/// [`P99_TARGET_FACTOR`] of `unloaded_p99` (ms).
pub(crate) fn time_to_recover(
    points: &[TimelinePoint],
    since: f64,
    unloaded_p99: f64,
) -> Option<f64> {
    points
        .iter()
        .find(|p| p.ok > 0.0 && p.ok_p99_ms <= P99_TARGET_FACTOR * unloaded_p99)
        .map(|p| p.t - since)
}

/// Whether the peak met the target (accepted p99 within [`P99_TARGET_FACTOR`] of the base
/// step's, goodput at least [`GOODPUT_TARGET`] of `sat`), with the figures that decide it.
pub(crate) fn verdict(base: &StepResult, peak: &StepResult, sat: f64) -> (bool, String) {
    let p99_ok = base.ok_p99 > 0.0 && peak.ok_p99 <= P99_TARGET_FACTOR * base.ok_p99;
    let share = peak.goodput / sat.max(1e-9);
    let goodput_ok = share >= GOODPUT_TARGET;
    let why = format!(
        "accepted p99 {:.1} ms {} {P99_TARGET_FACTOR} x {:.1} ms unloaded; goodput {:.0} tx/s = {:.0} % of saturation {} {:.0} %",
        peak.ok_p99,
        if p99_ok { "<=" } else { ">" },
        base.ok_p99,
        peak.goodput,
        100.0 * share,
        if goodput_ok { ">=" } else { "<" },
        100.0 * GOODPUT_TARGET
    );
    (p99_ok && goodput_ok, why)
}

/// Slows every logging append by `delay`: the fault layer's fixed delay holds a worker just
/// as slow work would, so logging's capacity drops as a slow disk's would.
async fn set_logging_delay(mesh: &ProcMesh, delay: Duration) -> anyhow::Result<()> {
    let mut control = mesh.control(&mesh.logging).await?;
    control
        .set(Faults {
            delay_ms: u32::try_from(delay.as_millis()).unwrap_or(u32::MAX),
            ..Default::default()
        })
        .await?;
    Ok(())
}

/// One gateway through the overload run: a fresh mesh, one unary run over `profile`,
/// logging slowed when its last step starts.
async fn overload_run(
    dir: &std::path::Path,
    control: &OverloadControl,
    profile: &Arc<Arrivals>,
    args: &PressureArgs,
) -> anyhow::Result<ControlFigures> {
    let gateway = control.flags.iter().map(|f| f.to_string()).collect();
    let mesh = mesh_with(dir, gateway).await?;
    let metrics = mesh.gateway.metrics_url()?;
    let total = profile.total();
    let (load, start) = start(
        spec(
            &mesh.gateway.url(),
            Pacing::Shaped(profile.clone()),
            total - LEAD_IN,
            format!("steps-{}", control.slug),
        )
        .mode(Mode::Unary)
        .warmup(LEAD_IN)
        // What a real client gives a transaction: the accepted p99 is what it would see.
        .timeout(DEFAULT_TIMEOUT)
        .tick(OVERLOAD_TICK)
        .max_outstanding(OPEN_LOOP_OUTSTANDING)
        .client_throttle(control.client_throttle)
        // The timeline records the gateway's degradation level and bottleneck.
        .metrics(Some(metrics.clone()))
        .build()?,
    )
    .await?;
    let baseline = sluice_loadgen::admin::metrics::metric(&metrics, RSS)
        .await
        .unwrap_or(0.0);
    let slow_from = profile.segment_start(Step::SlowLogging as usize);
    let slow_at = start + Duration::from_secs_f64(slow_from);
    let (risk_metrics, logging_metrics) = (mesh.risk.metrics_url()?, mesh.logging.metrics_url()?);
    let peak_stages = {
        let at = |step: Step| start + Duration::from_secs_f64(profile.segment_start(step as usize));
        let marks = [at(Step::Base), at(Step::Peak), at(Step::After)];
        let (metrics, pid) = (metrics.clone(), mesh.gateway.pid());
        tokio::spawn(async move {
            let ticks = crate::cpu::ticks_per_second();
            let mut snaps = Vec::new();
            for mark in marks {
                tokio::time::sleep_until(mark.into()).await;
                let cpu = crate::cpu::cpu_seconds(pid, ticks);
                snaps.push(
                    sluice_loadgen::admin::metrics::samples(&metrics)
                        .await
                        .zip(cpu),
                );
            }
            let [base, peak, after] = [0, 1, 2].map(|i| snaps[i].take());
            let stages = peak
                .as_ref()
                .zip(after.as_ref())
                .map(|((b, _), (a, _))| stage_means(b, a));
            let cost = base
                .zip(peak)
                .zip(after)
                .and_then(|((b, p), a)| refusal_cost(&b, &p, &a));
            (stages, cost)
        })
    };
    let [risk_pool, logging_pool] =
        ["risk", "logging"].map(|p| [pool(p, WORKER_POOL_BUSY), pool(p, WORKER_POOL_CAPACITY)]);
    let ([rss], [risk_busy, risk_capacity], [logging_busy, logging_capacity]) = tokio::join!(
        peaks(&metrics, [RSS], slow_at, [baseline]),
        peaks(
            &risk_metrics,
            [risk_pool[0].as_str(), risk_pool[1].as_str()],
            slow_at,
            [0.0; 2],
        ),
        peaks(
            &logging_metrics,
            [logging_pool[0].as_str(), logging_pool[1].as_str()],
            slow_at,
            [0.0; 2]
        ),
    );
    set_logging_delay(&mesh, args.slow_logging_delay).await?;
    let [rss] = peaks(&metrics, [RSS], start + total, [rss]).await;
    let report = load.await??;
    let (peak_stages, refusal_cost) = peak_stages.await?;

    let tick = OVERLOAD_TICK.as_secs_f64();
    let steps: Vec<StepResult> = (0..profile.segments.len())
        .map(|i| step_result(&report, profile, i, tick))
        .collect();
    let peak_end = profile.segment_start(Step::After as usize);
    let after = within(&report.timeline, peak_end, slow_from, tick);
    let slow_to = slow_from
        + profile.segments[Step::SlowLogging as usize]
            .duration
            .as_secs_f64();
    let slow = within(&report.timeline, slow_from, slow_to, tick);
    Ok(ControlFigures {
        recovery: time_to_recover(after, peak_end, steps[Step::Base as usize].ok_p99),
        steps,
        rss_peak: rss,
        rss_growth: rss - baseline,
        peak_stages,
        refusal_cost,
        pools_busy: [risk_busy, logging_busy],
        pools_capacity: [risk_capacity, logging_capacity],
        bottleneck: bottleneck_named(slow),
        errors: counts(&report.errors),
    })
}

/// The overload-control section: static vs adaptive, one run each.
pub(crate) async fn overload(dir: &std::path::Path, args: &PressureArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.step_for.is_zero(), "--step-for must be more than 0");
    anyhow::ensure!(
        args.peak_factor > 0.0 && args.slow_logging_load > 0.0,
        "--peak-factor and --slow-logging-load must be more than 0"
    );
    let measured_on = &CONTROLS[0];
    let (sat, frontier) = match args.unary_saturation {
        Some(s) => (s, Vec::new()),
        None => {
            eprintln!(
                "measuring unary goodput and p99 closed loop at {FRONTIER:?} outstanding ({SATURATION_RUN:?} each, {}); saturation at {UNARY_SATURATION_CONCURRENCY} ...",
                measured_on.name
            );
            let flags = measured_on.flags.iter().map(|f| f.to_string()).collect();
            let frontier = measure_frontier(dir, flags).await?;
            let sat = frontier.last().map_or(0.0, |p| p.goodput);
            (sat, frontier)
        }
    };
    let profile = Arc::new(overload_profile(sat, args));
    let mut figures = Vec::new();
    for control in &CONTROLS {
        eprintln!(
            "{}: unary {BASE_LOAD}x, {}x, {BASE_LOAD}x of {sat:.0} tx/s, then logging slowed by {:?} at {}x ({:?}) ...",
            control.name,
            args.peak_factor,
            args.slow_logging_delay,
            args.slow_logging_load,
            profile.total()
        );
        figures.push(overload_run(dir, control, &profile, args).await?);
    }

    let col = |get: &dyn Fn(&ControlFigures) -> String| {
        figures
            .iter()
            .map(get)
            .map(|s| format!("{s:>28}"))
            .collect::<String>()
    };
    let row = |label: &str, values: String| println!("{label:<44}{values}");
    println!(
        "\noverload control: unary, release binaries on loopback, saturation {sat:.0} tx/s (closed loop, {})",
        measured_on.name
    );
    println!("{}", crate::procs::cpu_split());
    row(
        "",
        CONTROLS
            .iter()
            .map(|c| format!("{:>28}", c.name))
            .collect::<String>(),
    );
    for step in STEPS {
        let i = step as usize;
        let segment = &profile.segments[i];
        println!(
            "{}x ({:.0} tx/s) for {:?}: {}",
            step.load(args),
            segment.from,
            segment.duration,
            step.purpose(args.slow_logging_delay)
        );
        row(
            "  sent by the generator",
            col(&|f| format!("{:.0} tx/s", f.steps[i].sent)),
        );
        row(
            "  goodput (share of saturation)",
            col(&|f| {
                let goodput = f.steps[i].goodput;
                format!("{goodput:.0} tx/s ({:.0}%)", 100.0 * goodput / sat)
            }),
        );
        row(
            "  accepted p99",
            col(&|f| format!("{:.1} ms", f.steps[i].ok_p99)),
        );
        row(
            "  refused (RESOURCE_EXHAUSTED)",
            col(&|f| format!("{:.1}%", 100.0 * f.steps[i].refused)),
        );
        row(
            "  throttled by the client (not sent)",
            col(&|f| format!("{:.1}%", 100.0 * f.steps[i].throttled)),
        );
        row(
            "  degradation level, max",
            col(&|f| {
                f.steps[i]
                    .degradation_max
                    .map_or("-".to_string(), |l| l.to_string())
            }),
        );
        match step {
            Step::Peak => {
                row(
                    "  at the gateway, mean admission / mesh",
                    col(&|f| {
                        f.peak_stages.map_or("-".to_string(), |[admission, mesh]| {
                            format!("{admission:.1} / {mesh:.1} ms")
                        })
                    }),
                );
                row(
                    "  gateway CPU per OK (unloaded) / refusal",
                    col(&|f| {
                        f.refusal_cost.map_or("-".to_string(), |[ok, refusal]| {
                            format!("{ok:.0} / {refusal:.0} µs")
                        })
                    }),
                );
            }
            Step::After => row(
                &format!("  accepted p99 back within {P99_TARGET_FACTOR}x unloaded after"),
                col(&|f| {
                    f.recovery
                        .map_or("never".to_string(), |s| format!("{s:.1} s"))
                }),
            ),
            Step::SlowLogging => row(
                "  bottleneck named (intervals)",
                col(&|f| match &f.bottleneck {
                    Some(b) if b.intervals > 0 => format!(
                        "{} {:.0}% ({}/{})",
                        b.hop,
                        100.0 * b.share,
                        b.intervals,
                        b.of_intervals
                    ),
                    Some(b) => b.hop.clone(),
                    None => "-".to_string(),
                }),
            ),
            _ => {}
        }
    }
    row(
        "gateway peak memory (growth)",
        col(&|f| format!("{:.1} MiB ({:+.1})", f.rss_peak / MIB, f.rss_growth / MIB)),
    );
    row(
        "busiest workers risk / logging",
        col(&|f| {
            format!(
                "{:.0}/{:.0} / {:.0}/{:.0}",
                f.pools_busy[0], f.pools_capacity[0], f.pools_busy[1], f.pools_capacity[1]
            )
        }),
    );
    for (control, f) in CONTROLS.iter().zip(&figures) {
        println!("errors, {}: {}", control.name, f.errors);
    }
    if !frontier.is_empty() {
        println!(
            "\nthe mesh's own curve, closed loop, {}, nothing refused:",
            measured_on.name
        );
        for p in &frontier {
            println!(
                "  {:>5} outstanding: goodput {:>6.0} tx/s ({:>3.0} % of saturation), p99 {:>6.1} ms",
                p.concurrency,
                p.goodput,
                100.0 * p.goodput / sat.max(1e-9),
                p.p99_ms
            );
        }
    }
    println!(
        "\ntarget: at {}x saturation, accepted p99 within {P99_TARGET_FACTOR}x of unloaded while goodput stays at {:.0} % of saturation or more (adaptive must meet it)",
        args.peak_factor,
        100.0 * GOODPUT_TARGET
    );
    if let Some(line) =
        frontier_verdict(&frontier, sat, figures[0].steps[Step::Base as usize].ok_p99)
    {
        println!("{line}");
    }
    for (control, f) in CONTROLS.iter().zip(&figures) {
        let (met, why) = verdict(
            &f.steps[Step::Base as usize],
            &f.steps[Step::Peak as usize],
            sat,
        );
        println!(
            "  {:<28}{}: {why}",
            control.name,
            if met { "met" } else { "MISSED" }
        );
    }
    println!(
        "reproduce: cargo run --release -p sluice-lab -- pressure --sections overload --unary-saturation {sat:.0} --step-for {:?} --peak-factor {} --slow-logging-delay {:?} --slow-logging-load {}",
        args.step_for, args.peak_factor, args.slow_logging_delay, args.slow_logging_load
    );
    Ok(())
}
