//! CPU accounting from `/proc`: what each process of a run used (user + system, every
//! thread), its busiest thread, and the cost per transaction by role.

use sluice_loadgen::report::Report;
use std::collections::BTreeMap;
use std::path::Path;

use crate::kit::{list, median};
use crate::procs::ProcMesh;
use sluice_loadgen::drive::driver;
use sluice_loadgen::drive::spec::LoadSpec;

/// CPU time a process has used so far (user + system, every thread), from
/// `/proc/<pid>/stat`; `None` once it is gone.
pub(crate) fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    stat_cpu_seconds(Path::new(&format!("/proc/{pid}/stat")), ticks_per_second)
}

/// `sysconf(_SC_CLK_TCK)` through `getconf` (no unsafe code here); Linux's 100 otherwise.
pub(crate) fn ticks_per_second() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// The processes whose CPU one run is charged for, by role.
pub(crate) struct Cpu {
    pub(crate) procs: Vec<(&'static str, u32)>,
    pub(crate) ticks: f64,
}

impl Cpu {
    pub(crate) fn of_mesh(mesh: &ProcMesh, ticks: f64) -> Cpu {
        let mut procs = vec![("gateway", mesh.gateway.pid())];
        procs.extend(mesh.risks().map(|p| ("risk", p.pid())));
        procs.push(("notification", mesh.notification.pid()));
        procs.extend(mesh.loggings().map(|p| ("logging", p.pid())));
        Cpu { procs, ticks }
    }

    pub(crate) fn sample(&self) -> BTreeMap<&'static str, f64> {
        let mut out = BTreeMap::new();
        for &(role, pid) in &self.procs {
            *out.entry(role).or_default() += cpu_seconds(pid, self.ticks).unwrap_or(0.0);
        }
        out
    }

    /// Every thread's CPU time so far, by role and thread id (`/proc/<pid>/task/*/stat`).
    pub(crate) fn sample_threads(&self) -> BTreeMap<(&'static str, u32, String), f64> {
        let mut out = BTreeMap::new();
        for &(role, pid) in &self.procs {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let tid = task.file_name().to_string_lossy().to_string();
                let stat = task.path().join("stat");
                if let Some(used) = stat_cpu_seconds(&stat, self.ticks) {
                    out.insert((role, pid, tid), used);
                }
            }
        }
        out
    }

    /// Runs `spec` and charges the CPU used meanwhile to its completed transactions; with
    /// each role's busiest thread and the cores the processes used together.
    pub(crate) async fn run(&self, spec: LoadSpec) -> anyhow::Result<(Report, Cost, Threads)> {
        let before = self.sample();
        let threads_before = self.sample_threads();
        let started = std::time::Instant::now();
        let report = driver::run(spec).await?;
        let wall = started.elapsed().as_secs_f64().max(1e-3);
        let after = self.sample();
        let mut threads = Threads::default();
        for (key, used) in self.sample_threads() {
            let share = (used - threads_before.get(&key).copied().unwrap_or(used)) / wall;
            let busiest = threads.busiest.entry(key.0).or_default();
            *busiest = busiest.max(share);
        }
        threads.cores = after
            .iter()
            .map(|(role, used)| used - before.get(role).copied().unwrap_or(0.0))
            .sum::<f64>()
            / wall;
        let transactions = report.completed.max(1) as f64;
        let per_role = after
            .iter()
            .map(|(role, used)| {
                let us = (used - before.get(role).copied().unwrap_or(0.0)) * 1e6 / transactions;
                (*role, us)
            })
            .collect();
        Ok((report, Cost(per_role), threads))
    }
}

/// During one run: each role's busiest thread (share of a core, 0..=1) and the cores all
/// the processes used together. A busiest thread near 1 is what caps a process that has
/// more cores than it uses.
#[derive(Debug, Clone, Default)]
pub(crate) struct Threads {
    pub(crate) busiest: BTreeMap<&'static str, f64>,
    pub(crate) cores: f64,
}

impl Threads {
    /// The per-role medians of `runs`, as `gateway 98 %, logging 41 %, …; 1.9 cores`.
    pub(crate) fn line(runs: &[Threads]) -> String {
        let Some(first) = runs.first() else {
            return String::new();
        };
        let roles: Vec<String> = first
            .busiest
            .keys()
            .map(|role| {
                let v = runs
                    .iter()
                    .map(|t| t.busiest.get(role).copied().unwrap_or(0.0))
                    .collect();
                format!("{role} {:.0} %", 100.0 * median(v))
            })
            .collect();
        let cores: Vec<f64> = runs.iter().map(|t| t.cores).collect();
        format!(
            "{}; mesh {:.1} cores (runs {})",
            roles.join(", "),
            median(cores.clone()),
            list(&cores, 1)
        )
    }
}

/// User + system CPU seconds in one `stat` file (a process's or a thread's).
fn stat_cpu_seconds(path: &Path, ticks_per_second: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat.rsplit_once(')')?.1;
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name and state.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / ticks_per_second)
}

/// CPU µs per transaction, by process role.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cost(pub(crate) BTreeMap<&'static str, f64>);

impl Cost {
    pub(crate) fn total(&self) -> f64 {
        self.0.values().sum()
    }

    /// The per-role medians of `costs`.
    pub(crate) fn median(costs: &[Cost]) -> Cost {
        let mut out = BTreeMap::new();
        if let Some(first) = costs.first() {
            for role in first.0.keys() {
                let v = costs.iter().map(|c| c.0.get(role).copied().unwrap_or(0.0));
                out.insert(*role, median(v.collect()));
            }
        }
        Cost(out)
    }

    pub(crate) fn line(costs: &[Cost]) -> String {
        let m = Cost::median(costs);
        let totals: Vec<f64> = costs.iter().map(Cost::total).collect();
        let parts: Vec<String> = m.0.iter().map(|(r, v)| format!("{r} {v:.0}")).collect();
        format!(
            "{:.0} µs/tx ({}; runs {})",
            median(totals.clone()),
            parts.join(", "),
            list(&totals, 0)
        )
    }
}
