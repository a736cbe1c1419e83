//! The single-hop reference and the summary table: one column per build.

use crate::kit::list;
use sluice_loadgen::report::Report;
use std::path::Path;

use anyhow::Context;

use crate::bench::tail::Tail;
use crate::bench::{BenchArgs, Build};
use crate::cpu::{Cost, Cpu, Threads};
use crate::kit::median;
use crate::procs::Proc;
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::spec::{Mode, Pacing};

/// A charged run's progress line.
pub(crate) fn run_line(r: &Report, cost: &Cost) -> String {
    format!(
        "{:.0} ok/s, {:.0} µs/tx, p99 {:.2} ms, errors {:?}",
        r.ok_rate,
        cost.total(),
        r.latency_ms.p99,
        r.errors
    )
}

/// The single-hop reference: this generator against `sink` in its own process.
pub(crate) struct SingleHop {
    pub(crate) saturation: Vec<f64>,
    pub(crate) cost: Vec<f64>,
}

pub(crate) async fn single_hop(
    args: &BenchArgs,
    dir: &Path,
    mode: Mode,
    ticks: f64,
) -> anyhow::Result<SingleHop> {
    let dir = dir.to_path_buf();
    let sink = tokio::task::spawn_blocking(move || {
        Proc::spawn(
            &dir,
            "sluice-lab",
            &["sink".to_string(), "--listen".into(), "127.0.0.1:0".into()],
        )
    })
    .await
    .context("starting the sink panicked")??;
    let cpu = Cpu {
        procs: vec![("sink", sink.pid())],
        ticks,
    };
    args.warm_up(&sink.url(), mode).await?;
    let mut single = SingleHop {
        saturation: Vec::new(),
        cost: Vec::new(),
    };
    for run in 0..args.measure.runs {
        let pacing = Pacing::Open {
            rate: args.cost_rate,
        };
        let (_, cost, _) = cpu.run(args.spec(&sink.url(), mode, pacing, run)?).await?;
        single.cost.push(cost.total());
        let pacing = Pacing::Closed {
            concurrency: args.concurrency(mode),
        };
        let r = driver::run(args.spec(&sink.url(), mode, pacing, run)?).await?;
        eprintln!(
            "  {mode:?} single hop run {}: {:.0} µs/tx at {:.0}/s; saturation {:.0} ok/s",
            run + 1,
            cost.total(),
            args.cost_rate,
            r.ok_rate
        );
        single.saturation.push(r.ok_rate);
    }
    Ok(single)
}

/// One mode's figures, one column per build.
pub(crate) fn summary(
    args: &BenchArgs,
    mode: &str,
    builds: &[Build],
    single: Option<&SingleHop>,
) -> String {
    let mut s = format!("{mode}\n");
    let row = |s: &mut String, label: &str, cell: &dyn Fn(&Build) -> Option<String>| {
        for b in builds {
            if let Some(c) = cell(b) {
                let who = if builds.len() > 1 { b.name } else { "" };
                s.push_str(&format!("  {label:<28} {who:<5} {c}\n"));
            }
        }
    };
    row(&mut s, &format!("cpu at {:.0}/s", args.cost_rate), &|b| {
        (!b.cost.is_empty()).then(|| Cost::line(&b.cost))
    });
    // A latency's median in ms and its runs (to `digits` places).
    let ms = |runs: &[f64], digits: usize| {
        (!runs.is_empty()).then(|| {
            format!(
                "{:.2} ms (runs {})",
                median(runs.to_vec()),
                list(runs, digits)
            )
        })
    };
    row(&mut s, &format!("p50 at {:.0}/s", args.cost_rate), &|b| {
        ms(&b.cost_p50, 2)
    });
    row(&mut s, &format!("p99 at {:.0}/s", args.cost_rate), &|b| {
        ms(&b.cost_p99, 1)
    });
    row(&mut s, "saturation", &|b| {
        (!b.saturation.is_empty()).then(|| {
            format!(
                "{:.0} tx/s (runs {}); p99 runs {} ms",
                median(b.saturation.clone()),
                list(&b.saturation, 0),
                list(&b.saturation_p99, 0)
            )
        })
    });
    row(&mut s, "cpu at saturation", &|b| {
        (!b.saturation_cost.is_empty()).then(|| Cost::line(&b.saturation_cost))
    });
    row(&mut s, "busiest thread at saturation", &|b| {
        (!b.saturation_threads.is_empty()).then(|| Threads::line(&b.saturation_threads))
    });
    row(&mut s, "connections at saturation", &|b| {
        (!b.saturation_lanes.is_empty()).then(|| super::Lanes::line(&b.saturation_lanes))
    });
    for (label, pick) in [
        (
            "p99 at half load, disk",
            (|b: &Build| &b.disk) as fn(&Build) -> &Vec<Tail>,
        ),
        ("p99 at half load, tmpfs", |b: &Build| &b.tmpfs),
    ] {
        row(&mut s, label, &|b| {
            let tails = pick(b);
            (!tails.is_empty()).then(|| {
                let p99: Vec<f64> = tails.iter().map(|t| t.p99).collect();
                let commit: Vec<f64> = tails.iter().map(|t| t.fsync_p999).collect();
                let gateway: Vec<f64> = tails.iter().map(|t| t.gateway_p99).collect();
                let stalled: Vec<f64> = tails.iter().map(|t| t.stalls.total_ms).collect();
                let longest: Vec<f64> = tails.iter().map(|t| t.stalls.longest_ms).collect();
                let generator: Vec<f64> = tails.iter().map(|t| t.generator_cpu).collect();
                format!(
                    "{:.2} ms at {:.0}/s (runs {}; worst {:.1}); gateway p99 runs {} ms; audit commit p99.9 runs {} ms; machine stalls runs {} ms, longest {} ms; generator cpu runs {} % of a core",
                    median(p99.clone()),
                    b.half_load(),
                    list(&p99, 1),
                    p99.iter().copied().fold(0.0, f64::max),
                    list(&gateway, 1),
                    list(&commit, 1),
                    list(&stalled, 0),
                    list(&longest, 1),
                    list(&generator, 0)
                )
            })
        });
    }
    if let Some(single) = single {
        let sat = median(single.saturation.clone());
        let cost = median(single.cost.clone());
        s.push_str(&format!(
            "  {:<28}       {sat:.0} tx/s, {cost:.0} µs/tx at {:.0}/s (sink, one bare tonic hop)\n",
            "single hop", args.cost_rate
        ));
        for b in builds {
            let mut ratios = Vec::new();
            if !b.saturation.is_empty() {
                ratios.push(format!(
                    "saturation {:.2}×",
                    median(b.saturation.clone()) / sat
                ));
            }
            if !b.cost.is_empty() {
                let mesh: Vec<f64> = b.cost.iter().map(Cost::total).collect();
                ratios.push(format!("cpu {:.1}×", median(mesh) / cost));
            }
            if !ratios.is_empty() {
                let who = if builds.len() > 1 { b.name } else { "" };
                s.push_str(&format!(
                    "  {:<28} {who:<5} {}\n",
                    "mesh / single hop",
                    ratios.join(", ")
                ));
            }
        }
    }
    s
}
