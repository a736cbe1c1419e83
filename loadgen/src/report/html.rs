//! The self-contained HTML report (`--html`): inline SVG charts, no scripts, no network.
//! Throughput over time (offered, sent, OK, rejected, errors), latency over time (p50, p99 per
//! interval), both with the moments faults were switched marked, and the latency percentile
//! distribution on a "nines" axis.

use std::fmt::Write;

use crate::report::{Report, TimelinePoint};

/// A vertical mark on the time charts: seconds since the start, and what happened.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Mark {
    pub t: f64,
    pub label: String,
}

struct Series<'a> {
    name: &'a str,
    color: &'a str,
    points: Vec<(f64, f64)>,
}

const W: f64 = 900.0;
const H: f64 = 280.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 45.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for about five gridlines up to `max`.
fn step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag)
}

fn chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    marks: &[Mark],
    x_ticks: Option<&[(f64, String)]>,
) -> String {
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
    let x_max = xs.fold(1e-9, f64::max);
    let x_min = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(1e-9, f64::max)
        * 1.1;
    let sx = |x: f64| LEFT + (x - x_min) / (x_max - x_min).max(1e-9) * (W - LEFT - RIGHT);
    let sy = |y: f64| TOP + (1.0 - y / y_max) * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="{id}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img"><title>{}</title>"#,
        escape(title)
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{W}" height="{H}" fill="#fff"/><text x="{LEFT}" y="18" font-size="14" font-weight="bold">{}</text>"##,
        escape(title)
    );
    let dy = step(y_max);
    let mut y = 0.0;
    while y <= y_max {
        let py = sy(y);
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            py + 4.0,
            fmt_num(y)
        );
        y += dy;
    }
    match x_ticks {
        Some(ticks) => {
            for (x, label) in ticks {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                    sx(*x),
                    H - BOTTOM + 16.0,
                    escape(label)
                );
            }
        }
        None => {
            let dx = step(x_max - x_min);
            let mut x = x_min;
            while x <= x_max + 1e-9 {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                    sx(x),
                    H - BOTTOM + 16.0,
                    fmt_num(x)
                );
                x += dx;
            }
        }
    }
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>"##,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"#,
        (LEFT + W - RIGHT) / 2.0,
        H - 8.0,
        escape(x_label)
    );
    let _ = write!(
        s,
        r#"<text x="14" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 14 {:.1})">{}</text>"#,
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label)
    );
    for (i, m) in marks
        .iter()
        .filter(|m| m.t >= x_min && m.t <= x_max)
        .enumerate()
    {
        let x = sx(m.t);
        // Staggered, so marks at the same moment stay readable.
        let label_y = TOP + 10.0 + 12.0 * (i % 4) as f64;
        let _ = write!(
            s,
            r##"<g class="mark"><line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#c00" stroke-dasharray="4 3"/><text x="{:.1}" y="{label_y:.1}" font-size="10" fill="#c00">{}</text></g>"##,
            H - BOTTOM,
            x + 3.0,
            escape(&m.label)
        );
    }
    for (i, series) in series.iter().enumerate() {
        let pts: Vec<String> = series
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let _ = write!(
            s,
            r#"<polyline class="series" data-name="{}" fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            escape(series.name),
            series.color,
            pts.join(" ")
        );
        let lx = W - RIGHT - 150.0;
        let ly = TOP + 14.0 * i as f64 + 4.0;
        let _ = write!(
            s,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="3" fill="{}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            ly,
            series.color,
            lx + 16.0,
            ly + 4.0,
            escape(series.name)
        );
    }
    s.push_str("</svg>");
    s
}

fn trim(s: String) -> String {
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn fmt_num(v: f64) -> String {
    if v >= 10.0 {
        format!("{v:.0}")
    } else {
        trim(format!("{v:.2}"))
    }
}

fn over_time<'a>(
    timeline: &[TimelinePoint],
    name: &'a str,
    color: &'a str,
    f: impl Fn(&TimelinePoint) -> f64,
) -> Series<'a> {
    Series {
        name,
        color,
        points: timeline.iter().map(|p| (p.t, f(p))).collect(),
    }
}

/// Writes the page for `report` (its timeline, `marks` on it) to `path`.
pub fn write(
    path: &std::path::Path,
    title: &str,
    report: &Report,
    marks: &[Mark],
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let page = render(title, report, &report.timeline, marks);
    std::fs::write(path, page).with_context(|| format!("cannot write {}", path.display()))
}

/// The whole page.
pub fn render(title: &str, report: &Report, timeline: &[TimelinePoint], marks: &[Mark]) -> String {
    render_many(
        title,
        &report.text(),
        &[("latency", &report.percentiles)],
        timeline,
        marks,
    )
}

const COLORS: [&str; 6] = [
    "#9467bd", "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#8c564b",
];

/// The page for several distributions (e.g. one per scenario phase) and a shared timeline.
pub fn render_many(
    title: &str,
    summary: &str,
    distributions: &[(&str, &[crate::report::Percentile])],
    timeline: &[TimelinePoint],
    marks: &[Mark],
) -> String {
    let throughput = chart(
        "throughput",
        "Throughput over time",
        "seconds",
        "transactions / s",
        &[
            over_time(timeline, "offered", "#999", |p| p.offered),
            over_time(timeline, "sent", "#1f77b4", |p| p.sent),
            over_time(timeline, "ok", "#2ca02c", |p| p.ok),
            over_time(timeline, "rejected", "#ff7f0e", |p| p.rejected),
            over_time(timeline, "errors", "#d62728", |p| p.errors),
        ],
        marks,
        None,
    );
    let latency = chart(
        "latency",
        "Latency over time (per interval, from the intended send time)",
        "seconds",
        "ms",
        &[
            over_time(timeline, "p50", "#1f77b4", |p| p.p50_ms),
            over_time(timeline, "p99", "#d62728", |p| p.p99_ms),
        ],
        marks,
        None,
    );
    // Percentiles on a "nines" axis: x = -log10(1 - q).
    let nines = |q: f64| -(1.0 - q).log10();
    let series: Vec<Series<'_>> = distributions
        .iter()
        .enumerate()
        .map(|(i, (name, ps))| Series {
            name,
            color: COLORS[i % COLORS.len()],
            points: ps.iter().map(|p| (nines(p.quantile), p.ms)).collect(),
        })
        .collect();
    let ticks: Vec<(f64, String)> = crate::report::PERCENTILES
        .iter()
        .map(|q| (nines(*q), trim(format!("{:.3}", q * 100.0))))
        .collect();
    let distribution = chart(
        "percentiles",
        "Latency percentile distribution",
        "percentile",
        "ms",
        &series,
        &[],
        Some(&ticks),
    );
    let summary = escape(summary);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}svg{{display:block;margin:12px 0;border:1px solid #ddd}}pre{{background:#f7f7f7;padding:12px;overflow:auto}}</style>
</head><body>
<h1>{t}</h1>
{throughput}
{latency}
{distribution}
<h2>Summary</h2>
<pre>{summary}</pre>
</body></html>
"#,
        t = escape(title)
    )
}
