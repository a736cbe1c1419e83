//! Arrival schedules for open-loop load: constant or Poisson arrivals over a rate profile made
//! of segments (a constant rate, steps, or linear ramps), from flags or a TOML file.
//!
//! ```text
//! --rate 2000                          constant 2000/s for --duration
//! --arrivals poisson --rate 2000       Poisson arrivals averaging 2000/s
//! --steps 1000@5s,5000@5s,1000@10s     rate 1000 for 5 s, then 5000 for 5 s, then 1000 for 10 s
//! --ramp 100-5000@20s                  rate rising linearly from 100 to 5000 over 20 s
//! --schedule-file load.toml            the same, from a file (see `ScheduleFile`)
//! ```

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use rand::Rng;
use rand::rngs::SmallRng;
use serde::Deserialize;

/// How arrivals are spaced within a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalKind {
    /// Evenly spaced: 1/rate apart.
    #[default]
    Constant,
    /// Exponentially distributed gaps (a Poisson process): bursts and lulls, same mean.
    Poisson,
}

/// One stretch of the profile: the rate goes linearly from `from` to `to` over `duration`.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub duration: Duration,
    pub from: f64,
    pub to: f64,
}

/// A rate profile and how arrivals are spaced in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrivals {
    pub kind: ArrivalKind,
    pub segments: Vec<Segment>,
}

/// Rates below this are treated as "no arrivals" (a pause).
const MIN_RATE: f64 = 1e-6;

impl Arrivals {
    /// A constant rate for `duration`.
    pub fn constant(kind: ArrivalKind, rate: f64, duration: Duration) -> Self {
        Self {
            kind,
            segments: vec![Segment {
                duration,
                from: rate,
                to: rate,
            }],
        }
    }

    /// Length of the whole profile.
    pub fn total(&self) -> Duration {
        self.segments.iter().map(|s| s.duration).sum()
    }

    /// The rate `t` seconds in (0 past the end).
    pub fn rate_at(&self, t: f64) -> f64 {
        let mut start = 0.0;
        for s in &self.segments {
            let d = s.duration.as_secs_f64();
            if t < start + d {
                let f = if d > 0.0 { (t - start) / d } else { 0.0 };
                return s.from + (s.to - s.from) * f;
            }
            start += d;
        }
        0.0
    }

    /// Which segment `t` seconds in falls in (`None` before 0 or past the end).
    pub fn segment_at(&self, t: f64) -> Option<usize> {
        if t < 0.0 {
            return None;
        }
        let mut end = 0.0;
        self.segments.iter().position(|s| {
            end += s.duration.as_secs_f64();
            t < end
        })
    }

    /// Where segment `i` starts, seconds in.
    pub fn segment_start(&self, i: usize) -> f64 {
        self.segments[..i.min(self.segments.len())]
            .iter()
            .map(|s| s.duration.as_secs_f64())
            .sum()
    }

    /// Arrivals expected in the first `t` seconds (the integral of the rate).
    pub fn expected(&self, t: f64) -> f64 {
        let mut start = 0.0;
        let mut n = 0.0;
        for s in &self.segments {
            let d = s.duration.as_secs_f64();
            let span = (t - start).clamp(0.0, d);
            if span > 0.0 {
                let end_rate = s.from + (s.to - s.from) * if d > 0.0 { span / d } else { 0.0 };
                n += (s.from + end_rate) / 2.0 * span;
            }
            start += d;
        }
        n
    }

    /// The arrival after the one at `t` seconds, or `None` past the end.
    pub fn next_after(&self, t: f64, rng: &mut SmallRng) -> Option<f64> {
        let total = self.total().as_secs_f64();
        let mut t = t;
        loop {
            if t >= total {
                return None;
            }
            let rate = self.rate_at(t);
            if rate < MIN_RATE {
                // A pause: jump to where the rate picks up again.
                t = self.next_nonzero(t)?;
                continue;
            }
            let gap = match self.kind {
                ArrivalKind::Constant => 1.0 / rate,
                ArrivalKind::Poisson => -(1.0 - rng.random::<f64>()).ln() / rate,
            };
            let next = t + gap;
            return (next < total).then_some(next);
        }
    }

    fn next_nonzero(&self, t: f64) -> Option<f64> {
        let mut start = 0.0;
        for s in &self.segments {
            let end = start + s.duration.as_secs_f64();
            if end > t && (s.from >= MIN_RATE || s.to >= MIN_RATE) {
                // Inside or before a segment that has arrivals: advance in small steps.
                return Some(t.max(start) + (end - start) / 1000.0);
            }
            start = end;
        }
        None
    }
}

fn rate(s: &str) -> anyhow::Result<f64> {
    let r: f64 = s
        .trim()
        .parse()
        .with_context(|| format!("{s:?} is not a rate (transactions per second)"))?;
    ensure!(r.is_finite() && r >= 0.0, "rate {s:?} must be 0 or more");
    Ok(r)
}

fn duration(s: &str) -> anyhow::Result<Duration> {
    let d = sluice_core::parse_duration(s.trim()).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))?;
    ensure!(!d.is_zero(), "duration {s:?} must be more than 0");
    Ok(d)
}

/// Parses `--steps RATE@DUR,RATE@DUR,...`.
pub fn parse_steps(spec: &str) -> anyhow::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for step in spec.split(',') {
        let (r, d) = step
            .split_once('@')
            .with_context(|| format!("--steps: {step:?} should be RATE@DURATION, e.g. 1000@5s"))?;
        let r = rate(r)?;
        out.push(Segment {
            duration: duration(d)?,
            from: r,
            to: r,
        });
    }
    ensure!(!out.is_empty(), "--steps needs at least one RATE@DURATION");
    Ok(out)
}

/// Parses `--ramp FROM-TO@DUR` (several ramps may be comma-separated).
pub fn parse_ramp(spec: &str) -> anyhow::Result<Vec<Segment>> {
    let mut out = Vec::new();
    for ramp in spec.split(',') {
        let (rates, d) = ramp.split_once('@').with_context(|| {
            format!("--ramp: {ramp:?} should be FROM-TO@DURATION, e.g. 100-5000@20s")
        })?;
        let (from, to) = rates
            .split_once('-')
            .with_context(|| format!("--ramp: {rates:?} should be FROM-TO, e.g. 100-5000"))?;
        out.push(Segment {
            duration: duration(d)?,
            from: rate(from)?,
            to: rate(to)?,
        });
    }
    Ok(out)
}

/// A schedule file (TOML):
///
/// ```toml
/// arrivals = "poisson"                             # or "constant" (default)
/// [[segment]]
/// rate = 1000
/// duration = "5s"
/// [[segment]]
/// from = 1000                                      # a ramp
/// to = 8000
/// duration = "10s"
/// ```
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleFile {
    #[serde(default)]
    pub arrivals: ArrivalKind,
    pub segment: Vec<FileSegment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSegment {
    pub duration: String,
    pub rate: Option<f64>,
    pub from: Option<f64>,
    pub to: Option<f64>,
}

impl FileSegment {
    /// The segment, checked.
    pub fn segment(&self) -> anyhow::Result<Segment> {
        let (from, to) = match (self.rate, self.from, self.to) {
            (Some(r), None, None) => (r, r),
            (None, Some(f), Some(t)) => (f, t),
            _ => bail!("a segment has either `rate`, or `from` and `to`"),
        };
        Ok(Segment {
            duration: duration(&self.duration)?,
            from: rate(&from.to_string())?,
            to: rate(&to.to_string())?,
        })
    }
}

/// Reads a schedule file.
pub fn load_file(path: &std::path::Path) -> anyhow::Result<Arrivals> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: ScheduleFile = toml::from_str(&text)
        .with_context(|| format!("{} is not a schedule file", path.display()))?;
    let segments = file
        .segment
        .iter()
        .map(FileSegment::segment)
        .collect::<anyhow::Result<Vec<_>>>()?;
    ensure!(!segments.is_empty(), "{}: no [[segment]]", path.display());
    Ok(Arrivals {
        kind: file.arrivals,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn count(a: &Arrivals, seed: u64) -> usize {
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut t = 0.0;
        let mut n = 1;
        while let Some(next) = a.next_after(t, &mut rng) {
            t = next;
            n += 1;
        }
        n
    }

    #[test]
    fn constant_and_poisson_hit_the_mean() {
        let c = Arrivals::constant(ArrivalKind::Constant, 1000.0, Duration::from_secs(10));
        assert!((count(&c, 1) as f64 - 10_000.0).abs() <= 1.0);
        let p = Arrivals::constant(ArrivalKind::Poisson, 1000.0, Duration::from_secs(10));
        let n = count(&p, 1) as f64;
        assert!((n - 10_000.0).abs() < 300.0, "{n}");
    }

    #[test]
    fn steps_and_ramps() {
        let steps = Arrivals {
            kind: ArrivalKind::Constant,
            segments: parse_steps("100@2s,1000@1s").unwrap(),
        };
        assert_eq!(steps.total(), Duration::from_secs(3));
        assert_eq!(steps.rate_at(1.0), 100.0);
        assert_eq!(steps.rate_at(2.5), 1000.0);
        assert!((steps.expected(3.0) - 1200.0).abs() < 1e-6);
        assert!((count(&steps, 1) as f64 - 1200.0).abs() <= 2.0);
        let ramp = Arrivals {
            kind: ArrivalKind::Constant,
            segments: parse_ramp("0-1000@10s").unwrap(),
        };
        assert_eq!(ramp.rate_at(5.0), 500.0);
        assert!((ramp.expected(10.0) - 5000.0).abs() < 1e-6);
        let n = count(&ramp, 1) as f64;
        assert!((n - 5000.0).abs() < 100.0, "{n}");
    }

    #[test]
    fn each_moment_has_its_segment() {
        let steps = Arrivals {
            kind: ArrivalKind::Constant,
            segments: parse_steps("100@2s,1000@1s").unwrap(),
        };
        assert_eq!(steps.segment_at(-0.1), None);
        assert_eq!(steps.segment_at(0.0), Some(0));
        assert_eq!(steps.segment_at(1.999), Some(0));
        assert_eq!(steps.segment_at(2.0), Some(1));
        assert_eq!(steps.segment_at(3.0), None);
        assert_eq!(steps.segment_start(0), 0.0);
        assert_eq!(steps.segment_start(1), 2.0);
        assert_eq!(steps.segment_start(5), 3.0);
    }

    #[test]
    fn pauses_are_skipped() {
        let a = Arrivals {
            kind: ArrivalKind::Constant,
            segments: parse_steps("0@1s,100@1s").unwrap(),
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let first = a.next_after(0.0, &mut rng).unwrap();
        assert!((1.0..1.02).contains(&first), "{first}");
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        assert!(
            parse_steps("1000")
                .unwrap_err()
                .to_string()
                .contains("RATE@DURATION")
        );
        assert!(
            parse_steps("x@5s")
                .unwrap_err()
                .to_string()
                .contains("not a rate")
        );
        assert!(
            parse_steps("10@0s")
                .unwrap_err()
                .to_string()
                .contains("more than 0")
        );
        assert!(
            parse_ramp("100@5s")
                .unwrap_err()
                .to_string()
                .contains("FROM-TO")
        );
        assert!(parse_ramp("-5-10@5s").is_err());
    }

    #[test]
    fn schedule_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, "arrivals = \"poisson\"\n[[segment]]\nrate = 10\nduration = \"1s\"\n[[segment]]\nfrom = 10\nto = 20\nduration = \"2s\"\n").unwrap();
        let a = load_file(&p).unwrap();
        assert_eq!(a.kind, ArrivalKind::Poisson);
        assert_eq!(a.total(), Duration::from_secs(3));
        std::fs::write(&p, "[[segment]]\nrate = 10\nfrom = 1\nduration = \"1s\"\n").unwrap();
        assert!(load_file(&p).unwrap_err().to_string().contains("either"));
    }
}
