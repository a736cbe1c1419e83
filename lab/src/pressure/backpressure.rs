//! The backpressure section: a gateway with its static bounds and the same gateway
//! unbounded, each through a logging stall at half load and a 10x overload.
use std::time::Instant;

use sluice_loadgen::drive::spec::{Mode, Pacing};
use sluice_loadgen::report::Report;

use crate::kit::{HELD, RSS, SAMPLE_EVERY};
use crate::pressure::{
    CONNECTIONS, LEAD_IN, MIB, OPEN_LOOP_OUTSTANDING, OVERLOAD_TIMEOUT, PressureArgs,
    RECOVERY_WINDOW,
};

use crate::kit::{held_bounds, message_bytes, peaks, set_stall};
use crate::pressure::{
    SATURATION_CONCURRENCY, SATURATION_RUN, STALL_DEADLINE, measure_saturation, mesh, spec, start,
};

struct Variant {
    pub(crate) name: &'static str,
    pub(crate) unbounded: bool,
}

#[derive(Default)]
struct Figures {
    pub(crate) time_to_block: Option<f64>,
    pub(crate) held_max: f64,
    pub(crate) stall_growth: f64,
    pub(crate) recovery: Option<f64>,
    pub(crate) drained: Option<f64>,
    pub(crate) overload_sent_rate: f64,
    pub(crate) overload_goodput: f64,
    pub(crate) overload_peak_growth: f64,
    pub(crate) overload_errors: String,
}

/// Phase 1: stall logging at half of saturation.
async fn stall_phase(
    dir: &std::path::Path,
    v: &Variant,
    sat: f64,
    args: &PressureArgs,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let mesh = mesh(dir, v.unbounded, Some(STALL_DEADLINE)).await?;
    let metrics = mesh.gateway.metrics_url()?;
    let rate = sat / 2.0;
    let duration = LEAD_IN + args.stall_for + RECOVERY_WINDOW;
    let (load, start) = start(
        spec(
            &mesh.gateway.url(),
            Pacing::Open { rate },
            duration,
            format!("stall-{}", v.name),
        )
        .tick(SAMPLE_EVERY)
        .max_outstanding(OPEN_LOOP_OUTSTANDING)
        .build()?,
    )
    .await?;
    tokio::time::sleep_until((start + LEAD_IN).into()).await;
    let baseline = sluice_loadgen::admin::metrics::metric(&metrics, RSS)
        .await
        .unwrap_or(0.0);
    set_stall(&mut mesh.control(&mesh.logging).await?, true).await?;
    let stall_at = start.elapsed().as_secs_f64();
    let [held, rss] = peaks(
        &metrics,
        [HELD.as_str(), RSS],
        Instant::now() + args.stall_for,
        [0.0, baseline],
    )
    .await;
    set_stall(&mut mesh.control(&mesh.logging).await?, false).await?;
    let unstall_at = start.elapsed().as_secs_f64();
    let report = load.await??;
    f.held_max = held;
    f.stall_growth = rss - baseline;
    f.time_to_block = report
        .timeline
        .iter()
        .find(|p| p.t > stall_at && p.t <= unstall_at && p.blocked_pct >= 50.0)
        .map(|p| p.t - stall_at);
    // Throughput is back when OK completions reach 90% of the offered rate; the backlog is
    // drained when the generator, which kept its schedule through the stall, is no longer
    // blocked catching up.
    let after: Vec<_> = report
        .timeline
        .iter()
        .filter(|p| p.t > unstall_at)
        .collect();
    f.recovery = after
        .iter()
        .find(|p| p.ok >= 0.9 * rate)
        .map(|p| p.t - unstall_at);
    f.drained = after
        .iter()
        .find(|p| p.blocked_pct < 10.0 && p.ok <= 1.1 * rate)
        .map(|p| p.t - unstall_at);
    Ok(())
}

/// Phase 2: offer `factor` × saturation.
async fn overload_phase(
    dir: &std::path::Path,
    v: &Variant,
    sat: f64,
    args: &PressureArgs,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let mesh = mesh(dir, v.unbounded, None).await?;
    let metrics = mesh.gateway.metrics_url()?;
    let rate = sat * args.overload_factor;
    let (load, start) = start(
        spec(
            &mesh.gateway.url(),
            Pacing::Open { rate },
            args.overload_for,
            format!("over-{}", v.name),
        )
        .max_outstanding(OPEN_LOOP_OUTSTANDING)
        .timeout(OVERLOAD_TIMEOUT)
        .build()?,
    )
    .await?;
    let baseline = sluice_loadgen::admin::metrics::metric(&metrics, RSS)
        .await
        .unwrap_or(0.0);
    let [peak] = peaks(&metrics, [RSS], start + args.overload_for, [baseline]).await;
    let report: Report = load.await??;
    let during: Vec<_> = report
        .timeline
        .iter()
        .filter(|p| p.t <= args.overload_for.as_secs_f64() + 0.01)
        .collect();
    let n = during.len().max(1) as f64;
    f.overload_sent_rate = during.iter().map(|p| p.sent).sum::<f64>() / n;
    f.overload_goodput = during.iter().map(|p| p.ok).sum::<f64>() / n;
    f.overload_peak_growth = peak - baseline;
    f.overload_errors = if report.errors.is_empty() {
        "none".into()
    } else {
        report
            .errors
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    Ok(())
}

/// The backpressure section: bounded vs unbounded.
pub(crate) async fn backpressure(dir: &std::path::Path, args: &PressureArgs) -> anyhow::Result<()> {
    let sat = match args.saturation {
        Some(s) => s,
        None => {
            eprintln!(
                "measuring saturation (closed loop, {SATURATION_CONCURRENCY} outstanding, {SATURATION_RUN:?}) ..."
            );
            measure_saturation(dir, Mode::Stream, Vec::new()).await?
        }
    };
    let mut variants = vec![Variant {
        name: "bounded",
        unbounded: false,
    }];
    if !args.bounded_only {
        variants.push(Variant {
            name: "unbounded",
            unbounded: true,
        });
    }
    let mut figures = Vec::new();
    for v in &variants {
        let mut f = Figures::default();
        eprintln!(
            "{}: stalling logging at 50% load for {:?} ...",
            v.name, args.stall_for
        );
        stall_phase(dir, v, sat, args, &mut f).await?;
        eprintln!(
            "{}: {}x overload for {:?} ...",
            v.name, args.overload_factor, args.overload_for
        );
        overload_phase(dir, v, sat, args, &mut f).await?;
        figures.push(f);
    }

    let (held_bound, bytes_bound) = held_bounds(CONNECTIONS);
    let (d, msg) = (sluice_gateway::Config::defaults(), message_bytes());

    let col = |get: &dyn Fn(&Figures) -> String| {
        figures
            .iter()
            .map(get)
            .map(|s| format!("{s:>26}"))
            .collect::<String>()
    };
    let secs = |v: Option<f64>| v.map_or("never".to_string(), |s| format!("{s:.1} s"));
    println!("\nbackpressure benchmark: release binaries on loopback, saturation {sat:.0} tx/s");
    println!("{}", crate::procs::cpu_split());
    println!(
        "{:<44}{}",
        "",
        variants
            .iter()
            .map(|v| format!("{:>26}", v.name))
            .collect::<String>()
    );
    println!(
        "stall logging for {:?} at 50% load ({:.0} tx/s)",
        args.stall_for,
        sat / 2.0
    );
    println!(
        "{:<44}{}",
        "  client sends block after (during the stall)",
        col(&|f| secs(f.time_to_block))
    );
    println!(
        "{:<44}{}",
        format!("  held client→logging, max (bound {held_bound:.0})"),
        col(&|f| format!("{:.0} tx", f.held_max))
    );
    println!(
        "{:<44}{}",
        format!(
            "  gateway memory growth (bound {:.1} MiB)",
            bytes_bound / MIB
        ),
        col(&|f| format!("{:+.1} MiB", f.stall_growth / MIB))
    );
    println!(
        "{:<44}{}",
        "  throughput back after unstall",
        col(&|f| secs(f.recovery))
    );
    println!(
        "{:<44}{}",
        "  backlog drained after unstall",
        col(&|f| secs(f.drained))
    );
    println!(
        "{}x overload ({:.0} tx/s offered) for {:?}",
        args.overload_factor,
        sat * args.overload_factor,
        args.overload_for
    );
    println!(
        "{:<44}{}",
        "  sent by the generator",
        col(&|f| format!("{:.0} tx/s", f.overload_sent_rate))
    );
    println!(
        "{:<44}{}",
        "  goodput (share of saturation)",
        col(&|f| format!(
            "{:.0} tx/s ({:.0}%)",
            f.overload_goodput,
            100.0 * f.overload_goodput / sat
        ))
    );
    println!(
        "{:<44}{}",
        "  gateway peak memory growth",
        col(&|f| format!("{:+.1} MiB", f.overload_peak_growth / MIB))
    );
    println!("{:<44}{}", "  errors", col(&|f| f.overload_errors.clone()));
    println!(
        "\nheld bound = min(downstream queue {} + {} streams x {} in flight, {} client streams x {} admitted); bytes bound = held x {msg:.0} B + {} HTTP/2 connection windows of {} KiB",
        d.downstream_queue,
        d.streams_per_downstream,
        d.downstream_stream_inflight,
        CONNECTIONS,
        d.stream_inflight,
        CONNECTIONS + 1,
        d.server.h2.connection_window / 1024
    );
    println!(
        "reproduce: cargo run --release -p sluice-lab -- pressure --stall-for {:?} --overload-for {:?}",
        args.stall_for, args.overload_for
    );
    Ok(())
}
