//! The self-contained HTML report (`--html`): inline SVG charts, no scripts, no network.
//! Throughput over time (offered, sent, OK, rejected, errors); with `--metrics`, what the
//! gateway held per hop and the share of time the client's sends were blocked; latency over
//! time (p50, p99 per interval — and where nothing finished, the age of the oldest
//! transaction still waiting, dashed, instead of a drop to 0); every time chart with the
//! moments faults were switched marked (labels in rows, never overlapping); the latency
//! percentile distribution on a "nines" axis; the slowest and failed transactions with their
//! traces (linked, with `--jaeger-url`: the only links on the page, and only when asked
//! for); and the summary as a table.

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
    /// A NaN value breaks the line there (an interval with nothing to show).
    points: Vec<(f64, f64)>,
    /// Drawn dashed: a stand-in, not a measurement of the same kind.
    dashed: bool,
}

/// Width of one character of a mark's label (10 px sans-serif), for placing labels.
const LABEL_CHAR: f64 = 5.6;
/// Rows the marks' labels may take before they overlap.
const LABEL_ROWS: usize = 6;

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
    let x_max = xs.filter(|x| x.is_finite()).fold(1e-9, f64::max);
    let x_min = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .filter(|y| y.is_finite())
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
    // Each label takes the first row where it clears the one before it, so labels of
    // marks close together never overlap (until every row is taken).
    let mut row_ends = [f64::NEG_INFINITY; LABEL_ROWS];
    for m in marks.iter().filter(|m| m.t >= x_min && m.t <= x_max) {
        let x = sx(m.t);
        let width = LABEL_CHAR * m.label.chars().count() as f64 + 8.0;
        let row = row_ends
            .iter()
            .position(|end| *end <= x)
            .unwrap_or_else(|| {
                (0..LABEL_ROWS)
                    .min_by(|a, b| row_ends[*a].total_cmp(&row_ends[*b]))
                    .unwrap_or(0)
            });
        row_ends[row] = x + width;
        let label_y = TOP + 10.0 + 12.0 * row as f64;
        let _ = write!(
            s,
            r##"<g class="mark"><line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#c00" stroke-dasharray="4 3"/><text x="{:.1}" y="{label_y:.1}" font-size="10" fill="#c00">{}</text></g>"##,
            H - BOTTOM,
            x + 3.0,
            escape(&m.label)
        );
    }
    for (i, series) in series.iter().enumerate() {
        // One path, broken where a value is missing.
        let mut d = String::new();
        let mut pen_down = false;
        for (x, y) in &series.points {
            if !y.is_finite() {
                pen_down = false;
                continue;
            }
            let _ = write!(
                d,
                "{}{:.1},{:.1} ",
                if pen_down { "L" } else { "M" },
                sx(*x),
                sy(*y)
            );
            pen_down = true;
        }
        let dash = if series.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = write!(
            s,
            r#"<path class="series" data-name="{}" fill="none" stroke="{}" stroke-width="2"{dash} d="{}"/>"#,
            escape(series.name),
            series.color,
            d.trim_end()
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
        dashed: false,
    }
}

/// The summary text as tables: each line's first word is its row's name, the rest its
/// value (wrapped, never cut off); a line that starts with spaces continues the row above
/// it. The per-interval timeline and the transaction lists are left out: the charts and the
/// tables above show them.
fn summary_tables(summary: &str) -> String {
    /// Marks a row that heads a section (a scenario's phase).
    const SECTION: &str = "\u{0}section";
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut skipping = false;
    for line in summary.lines() {
        let starts_section = !line.starts_with(' ');
        if starts_section {
            skipping = ["timeline", "slowest", "failed"]
                .iter()
                .any(|s| line.starts_with(s));
        }
        if skipping || line.trim().is_empty() {
            continue;
        }
        if let Some(phase) = line.strip_prefix("phase ") {
            rows.push((format!("phase {phase}"), SECTION.to_string()));
            continue;
        }
        match (starts_section, line.split_once(' ')) {
            (true, Some((key, value))) => rows.push((key.to_string(), value.trim().to_string())),
            (true, None) => rows.push((line.to_string(), String::new())),
            (false, _) => match rows.last_mut() {
                Some((_, value)) => {
                    value.push('\n');
                    value.push_str(line.trim_end());
                }
                None => rows.push((String::new(), line.trim_end().to_string())),
            },
        }
    }
    let mut s = String::from("<table class=\"summary\">");
    for (key, value) in rows {
        if value == SECTION {
            let _ = write!(s, "<tr><th colspan=\"2\">{}</th></tr>", escape(&key));
            continue;
        }
        let _ = write!(
            s,
            "<tr><th>{}</th><td>{}</td></tr>",
            escape(&key),
            escape(&value)
        );
    }
    s.push_str("</table>");
    s
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
    // An interval in which nothing finished has no latency to show; what it had was
    // transactions waiting: the oldest one's age, dashed.
    let finished = |p: &TimelinePoint, v: f64| if p.done > 0.0 { v } else { f64::NAN };
    let latency = chart(
        "latency",
        "Latency over time (per interval, from the intended send time; dashed where nothing finished)",
        "seconds",
        "ms",
        &[
            over_time(timeline, "p50", "#1f77b4", |p| finished(p, p.p50_ms)),
            over_time(timeline, "p99", "#d62728", |p| finished(p, p.p99_ms)),
            Series {
                dashed: true,
                ..over_time(timeline, "oldest waiting", "#7b1fa2", |p| {
                    if p.done > 0.0 {
                        f64::NAN
                    } else {
                        p.oldest_outstanding_ms.unwrap_or(f64::NAN)
                    }
                })
            },
        ],
        marks,
        None,
    );
    // What the gateway held per hop and how much of the time the client's sends were
    // blocked: the pressure moving from a hop to the client (with --metrics).
    let per_hop = if timeline
        .iter()
        .any(|p| p.held.is_some() || p.queues.is_some())
    {
        let hop =
            |i: usize| move |p: &TimelinePoint| p.held.or(p.queues).map_or(f64::NAN, |h| h[i]);
        let held = chart(
            "hops",
            "What the gateway holds per hop (queued or awaiting a reply)",
            "seconds",
            "transactions",
            &[
                over_time(timeline, "risk", "#1f77b4", hop(0)),
                over_time(timeline, "logging", "#d62728", hop(1)),
                over_time(timeline, "notification", "#2ca02c", hop(2)),
            ],
            marks,
            None,
        );
        let blocked = chart(
            "blocked",
            "The client's sends blocked (share of each interval)",
            "seconds",
            "%",
            &[over_time(timeline, "blocked", "#7b1fa2", |p| p.blocked_pct)],
            marks,
            None,
        );
        format!("{held}\n{blocked}")
    } else {
        String::new()
    };
    // Percentiles on a "nines" axis: x = -log10(1 - q).
    let nines = |q: f64| -(1.0 - q).log10();
    let series: Vec<Series<'_>> = distributions
        .iter()
        .enumerate()
        .map(|(i, (name, ps))| Series {
            name,
            color: COLORS[i % COLORS.len()],
            points: ps.iter().map(|p| (nines(p.quantile), p.ms)).collect(),
            dashed: false,
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
    let summary = summary_tables(summary);
    let transactions = exemplar_tables(reports);
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}svg{{display:block;margin:12px 0;border:1px solid #ddd}}table{{border-collapse:collapse;max-width:960px}}th,td{{padding:2px 10px;text-align:left;vertical-align:top;font-family:ui-monospace,monospace;font-size:13px}}table.summary td{{white-space:pre-wrap;overflow-wrap:anywhere}}tr:nth-child(even){{background:#f7f7f7}}</style>
</head><body>
<h1>{t}</h1>
{throughput}
{per_hop}
{latency}
{distribution}
{transactions}<h2>Summary</h2>
{summary}
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

    /// One interval of a run: `done` finished with p99 `p99`, the gateway holding `held`
    /// for logging, `oldest` ms the oldest still waiting.
    fn point(t: f64, done: f64, p99: f64, held: f64, oldest: Option<f64>) -> TimelinePoint {
        TimelinePoint {
            t,
            offered: 100.0,
            sent: done,
            done,
            ok: done,
            rejected: 0.0,
            throttled: 0.0,
            errors: 0.0,
            blocked_pct: if done > 0.0 { 0.0 } else { 100.0 },
            p50_ms: p99 / 2.0,
            p99_ms: p99,
            ok_p99_ms: p99,
            queues: Some([0.0; 3]),
            held: Some([0.0, held, 0.0]),
            held_bounds: None,
            oldest_outstanding_ms: oldest,
            degradation_level: None,
            bottleneck: None,
        }
    }

    fn svg<'a>(page: &'a str, id: &str) -> &'a str {
        let from = page.find(&format!("<svg id=\"{id}\"")).expect(id);
        &page[from..from + page[from..].find("</svg>").unwrap()]
    }

    /// A stall: two intervals in which nothing finished. The latency lines break there
    /// instead of dropping to 0, and the age of the oldest waiting transaction is drawn
    /// dashed in their place; the per-hop chart shows logging holding the backlog.
    #[test]
    fn a_stall_shows_the_oldest_waiting_transaction_not_a_drop_to_zero() {
        let timeline = vec![
            point(1.0, 100.0, 5.0, 2.0, None),
            point(2.0, 0.0, 0.0, 180.0, Some(1000.0)),
            point(3.0, 0.0, 0.0, 180.0, Some(2000.0)),
            point(4.0, 100.0, 2100.0, 3.0, None),
        ];
        let page = render_many("t", "rate       100/s", &[], &timeline, &[], &[]);
        let latency = svg(&page, "latency");
        let p99 = latency
            .split("<path ")
            .find(|p| p.contains("data-name=\"p99\""))
            .unwrap();
        assert_eq!(p99.matches('M').count(), 2, "broken at the stall: {p99}");
        let oldest = latency
            .split("<path ")
            .find(|p| p.contains("oldest waiting"))
            .unwrap();
        assert!(oldest.contains("stroke-dasharray"), "{oldest}");
        assert_eq!(
            oldest.matches(',').count(),
            2,
            "two stalled intervals: {oldest}"
        );
        assert!(svg(&page, "hops").contains("data-name=\"logging\""));
        assert!(svg(&page, "blocked").contains("data-name=\"blocked\""));
    }

    /// Marks a moment apart get labels in different rows.
    #[test]
    fn labels_of_marks_close_together_do_not_overlap() {
        let timeline = vec![
            point(0.0, 1.0, 1.0, 0.0, None),
            point(10.0, 1.0, 1.0, 0.0, None),
        ];
        let marks = [
            Mark {
                t: 5.0,
                label: "logging stall=true".into(),
            },
            Mark {
                t: 5.1,
                label: "phase stalled".into(),
            },
            Mark {
                t: 9.0,
                label: "logging clear".into(),
            },
        ];
        let chart = svg(
            &render_many("t", "", &[], &timeline, &marks, &[]),
            "throughput",
        )
        .to_string();
        let ys: Vec<&str> = chart
            .split("<g class=\"mark\">")
            .skip(1)
            .map(|m| {
                let text = &m[m.find("<text ").unwrap()..];
                text.split(" y=\"")
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(ys.len(), 3);
        assert_ne!(ys[0], ys[1], "close marks share a row: {chart}");
        assert_eq!(ys[0], ys[2], "a mark far enough away reuses the first row");
    }

    #[test]
    fn the_summary_is_a_table_without_the_timeline_it_charts() {
        let summary = "mode stream (open loop), 10.0 s measured\nrate       target 100/s\nerrors     UNAVAILABLE 3\ntimeline (per second)\n     t   offered\n    1s       100\nslowest    2 by latency\n     12.5  OK  a\n";
        let table = summary_tables(summary);
        assert!(
            table.contains("<tr><th>rate</th><td>target 100/s</td></tr>"),
            "{table}"
        );
        assert!(
            table.contains("<th>errors</th><td>UNAVAILABLE 3</td>"),
            "{table}"
        );
        assert!(
            !table.contains("offered") && !table.contains("by latency"),
            "{table}"
        );
        assert!(
            table.contains("<tr><th>mode</th><td>stream (open loop), 10.0 s measured</td></tr>"),
            "{table}"
        );
        let phases = summary_tables("phase steady\nrate       1/s\n");
        assert!(
            phases.starts_with(
                "<table class=\"summary\"><tr><th colspan=\"2\">phase steady</th></tr>"
            ),
            "{phases}"
        );
    }
}
