//! The run second by second: one [`TimelinePoint`] per interval (the generator's rates and
//! the gateway's pressure), and what a whole timeline says (the highest degradation level,
//! the bottleneck named most often).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::admin::metrics::{Bottleneck, DEGRADATION_LEVELS};

/// What `bottleneck` says when the gateway never named one.
pub const NO_BOTTLENECK: &str = "none";

/// The hop the gateway named as its bottleneck most often over a run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BottleneckSeen {
    /// `admission`, `risk`, `logging`, or [`NO_BOTTLENECK`].
    pub hop: String,
    /// Its mean share of the gateway's p99 over the intervals that named it (0..1).
    pub share: f64,
    /// Intervals that named it, of the intervals whose scrape succeeded.
    pub intervals: usize,
    pub of_intervals: usize,
}

impl BottleneckSeen {
    /// `logging, 71 % of p99 (named in 9 of 16 intervals)`, or `none (16 intervals)`.
    pub fn describe(&self) -> String {
        if self.intervals == 0 {
            return format!("{} ({} intervals)", self.hop, self.of_intervals);
        }
        format!(
            "{}, {:.0} % of p99 (named in {} of {} intervals)",
            self.hop,
            100.0 * self.share,
            self.intervals,
            self.of_intervals
        )
    }
}

/// The highest degradation level over `timeline` and the seconds spent at each level;
/// `None` when no interval has one (no `--metrics`, or a gateway without overload control).
pub fn degradation(timeline: &[TimelinePoint]) -> Option<(u8, [f64; DEGRADATION_LEVELS])> {
    let mut seconds = [0.0; DEGRADATION_LEVELS];
    let mut max: Option<u8> = None;
    let mut from = 0.0;
    for p in timeline {
        if let Some(level) = p.degradation_level {
            seconds[usize::from(level).min(DEGRADATION_LEVELS - 1)] += p.t - from;
            max = max.max(Some(level));
        }
        from = p.t;
    }
    max.map(|max| (max, seconds))
}

/// The hop the gateway named most often over `timeline` (ties: the larger total share);
/// [`NO_BOTTLENECK`] when it named none; `None` when no scrape succeeded.
pub fn bottleneck_named(timeline: &[TimelinePoint]) -> Option<BottleneckSeen> {
    let scraped = timeline.iter().filter(|p| p.queues.is_some()).count();
    if scraped == 0 {
        return None;
    }
    let mut hops: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for b in timeline.iter().filter_map(|p| p.bottleneck.as_ref()) {
        let (n, total) = hops.entry(b.hop.as_str()).or_default();
        *n += 1;
        *total += b.share;
    }
    let most = hops
        .into_iter()
        .max_by(|(_, a), (_, b)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1)));
    Some(match most {
        Some((hop, (n, total))) => BottleneckSeen {
            hop: hop.to_string(),
            share: total / n as f64,
            intervals: n,
            of_intervals: scraped,
        },
        None => BottleneckSeen {
            hop: NO_BOTTLENECK.to_string(),
            share: 0.0,
            intervals: 0,
            of_intervals: scraped,
        },
    })
}

/// One second of the run (rates per second; warmup included).
#[derive(Debug, Clone, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the run started (end of this interval).
    pub t: f64,
    /// Transactions due per second by the schedule (closed loop: as sent).
    pub offered: f64,
    /// Transactions actually sent per second.
    pub sent: f64,
    /// Transactions finished per second (any result).
    pub done: f64,
    pub ok: f64,
    /// RESOURCE_EXHAUSTED per second.
    pub rejected: f64,
    /// Calls the client's own throttle refused per second (`--client-throttle`; not sent).
    pub throttled: f64,
    /// Other failures per second.
    pub errors: f64,
    /// Share of the interval the generator's sends were blocked (stream window full, or no
    /// free outstanding slot).
    pub blocked_pct: f64,
    /// p50 latency of transactions finished in this interval, ms.
    pub p50_ms: f64,
    /// p99 latency of transactions finished in this interval, ms.
    pub p99_ms: f64,
    /// p99 latency of the transactions finished OK in this interval (what an accepted
    /// transaction waited, fast refusals left out), ms.
    pub ok_p99_ms: f64,
    /// With `--metrics`: the gateway's downstream queue depths (risk, logging,
    /// notification) at the end of the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queues: Option<[f64; 3]>,
    /// With `--metrics`: what the gateway holds per downstream (risk, logging,
    /// notification), queued or awaiting a reply, at the end of the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<[f64; 3]>,
    /// With `--metrics`: what each downstream may hold (for the live view's bars).
    #[serde(skip)]
    pub held_bounds: Option<[f64; 3]>,
    /// In an interval in which nothing finished: how long the oldest transaction still
    /// waiting had waited (from its intended send time) at the interval's end, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_outstanding_ms: Option<f64>,
    /// With `--metrics`: the gateway's degradation level (0..=3) at the end of the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub degradation_level: Option<u8>,
    /// With `--metrics`: the hop the gateway names as its bottleneck, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bottleneck: Option<Bottleneck>,
}

impl TimelinePoint {
    pub const HEADER: &str = "     t   offered      sent        ok  rejected    errors  blocked   p50 ms   p99 ms     held risk/log/ntf  deg";

    /// The live view's per-hop line: what the gateway holds for each downstream as a bar
    /// against what it may hold, FULL at 90 %, and the bottleneck it names. None without
    /// `--metrics`.
    pub fn hop_bars(&self) -> Option<String> {
        const WIDTH: usize = 10;
        let (held, bounds) = (self.held?, self.held_bounds?);
        let mut line = String::from("held");
        for ((name, held), bound) in ["risk", "log", "ntf"].iter().zip(held).zip(bounds) {
            let fill = if bound > 0.0 {
                (held / bound).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let cells = (fill * WIDTH as f64).round() as usize;
            let full = if fill >= 0.9 { " FULL" } else { "" };
            line.push_str(&format!(
                "  {name} \u{2595}{}{}\u{258f} {held:.0}/{bound:.0}{full}",
                "\u{2588}".repeat(cells),
                "\u{2591}".repeat(WIDTH - cells)
            ));
        }
        if let Some(b) = &self.bottleneck {
            line.push_str(&format!(
                "  << bottleneck: {} {:.0}%",
                b.hop,
                100.0 * b.share
            ));
        }
        Some(line)
    }

    /// One row under [`TimelinePoint::HEADER`].
    pub fn line(&self) -> String {
        // The gateway's columns, when it was scraped: queues, level ("-" from a gateway
        // without overload control), and the bottleneck when it names one.
        let gateway = self.held.or(self.queues).map_or(String::new(), |q| {
            let level = self
                .degradation_level
                .map_or("-".to_string(), |l| l.to_string());
            let bottleneck = self.bottleneck.as_ref().map_or(String::new(), |b| {
                format!("  bottleneck: {} {:.0}%", b.hop, 100.0 * b.share)
            });
            format!(
                "   {:>5.0}/{:>5.0}/{:>5.0}  {level:>5}{bottleneck}",
                q[0], q[1], q[2]
            )
        });
        format!(
            "{:>5.1}s {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>7.1}% {:>8.2} {:>8.2}{gateway}",
            self.t,
            self.offered,
            self.sent,
            self.ok,
            self.rejected,
            self.errors,
            self.blocked_pct,
            self.p50_ms,
            self.p99_ms
        )
    }
}
