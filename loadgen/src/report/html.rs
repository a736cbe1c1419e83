//! The self-contained HTML report (`--html`): inline SVG charts, no scripts, no network.
//! Throughput over time (offered, sent, OK, rejected, errors), latency over time (p50, p99 per
//! interval), both with the moments faults were switched marked, the latency percentile
//! distribution on a "nines" axis, and the slowest and failed transactions with their traces
//! (linked, with `--jaeger-url`: the only links on the page, and only when asked for).

use std::fmt::Write;

use crate::report::exemplars::Exemplar;
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
        &[("", report)],
    )
}

/// A table of `rows` (slowest or failed transactions); the trace column only when one of
/// them has a trace.
fn exemplar_table(heading: &str, rows: &[Exemplar]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let traced = rows.iter().any(|e| e.trace_id.is_some());
    let mut s = format!(
        "<h2>{}</h2>\n<table class=\"exemplars\"><tr><th>ms</th><th>result</th><th>id</th>{}<th>message</th></tr>\n",
        escape(heading),
        if traced { "<th>trace</th>" } else { "" }
    );
    for e in rows {
        let ms = e
            .latency_ms
            .map_or("-".to_string(), |ms| format!("{ms:.2}"));
        let trace = match (&e.trace_id, &e.trace_url) {
            (Some(id), Some(url)) => {
                format!(r#"<td><a href="{}">{}</a></td>"#, escape(url), escape(id))
            }
            (Some(id), None) => format!("<td>{}</td>", escape(id)),
            (None, _) if traced => "<td></td>".to_string(),
            (None, _) => String::new(),
        };
        let _ = writeln!(
            s,
            "<tr><td>{ms}</td><td>{}</td><td>{}</td>{trace}<td>{}</td></tr>",
            escape(&e.code),
            escape(&e.id),
            escape(&e.message)
        );
    }
    s.push_str("</table>\n");
    s
}

/// The slowest and failed transactions of each named report (`""`: the only one).
fn exemplar_tables(reports: &[(&str, &Report)]) -> String {
    let mut s = String::new();
    for (name, report) in reports {
        let of = if name.is_empty() {
            String::new()
        } else {
            format!(" — {name}")
        };
        s.push_str(&exemplar_table(
            &format!("Slowest transactions{of}"),
            &report.slowest,
        ));
        s.push_str(&exemplar_table(
            &format!("Failed transactions{of} (the first)"),
            &report.failed,
        ));
    }
    s
}

const COLORS: [&str; 6] = [
    "#9467bd", "#1f77b4", "#2ca02c", "#d62728", "#ff7f0e", "#8c564b",
];

/// The page for several distributions (e.g. one per scenario phase), a shared timeline, and
/// the slowest and failed transactions of each of `reports` (named as the distributions are).
pub fn render_many(
    title: &str,
    summary: &str,
    distributions: &[(&str, &[crate::report::Percentile])],
    timeline: &[TimelinePoint],
    marks: &[Mark],
    reports: &[(&str, &Report)],
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
    let transactions = exemplar_tables(reports);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}svg{{display:block;margin:12px 0;border:1px solid #ddd}}pre{{background:#f7f7f7;padding:12px;overflow:auto}}table{{border-collapse:collapse}}th,td{{padding:2px 10px;text-align:left;font-family:ui-monospace,monospace;font-size:13px}}tr:nth-child(even){{background:#f7f7f7}}</style>
</head><body>
<h1>{t}</h1>
{throughput}
{latency}
{distribution}
{transactions}<h2>Summary</h2>
<pre>{summary}</pre>
</body></html>
"#,
        t = escape(title)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exemplar(id: &str, trace: Option<&str>, url: Option<&str>) -> Exemplar {
        Exemplar {
            id: id.into(),
            code: "UNAVAILABLE".into(),
            message: "no <live> stream".into(),
            latency_ms: Some(12.5),
            trace_id: trace.map(Into::into),
            trace_url: url.map(Into::into),
        }
    }

    #[test]
    fn tables_link_traces_and_leave_the_column_out_without_any() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let url = format!("http://jaeger:16686/trace/{trace}");
        let linked = exemplar_table(
            "Failed",
            &[
                exemplar("a", Some(trace), Some(&url)),
                exemplar("b", None, None),
            ],
        );
        assert!(linked.contains("<th>trace</th>"), "{linked}");
        assert!(
            linked.contains(&format!(r#"<td><a href="{url}">{trace}</a></td>"#)),
            "{linked}"
        );
        assert!(
            linked.contains("no &lt;live&gt; stream"),
            "escaped: {linked}"
        );
        let untraced = exemplar_table("Failed", &[exemplar("b", None, None)]);
        assert!(!untraced.contains("trace"), "{untraced}");
        assert_eq!(exemplar_table("Failed", &[]), "");
    }
}
