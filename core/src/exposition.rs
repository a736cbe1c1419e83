//! One reader of the Prometheus text exposition (`/metrics`), for everything that reads a
//! Sluice binary's metrics: the gateway's live map (its own registry), the load generator's
//! live view and timeline, the lab's benchmarks and the tests.
//!
//! [`Samples`] holds one scrape as `name{labels}` → value, exactly as the exposition writes
//! the series (so a key is the line's text before its value). Histogram quantiles follow one
//! rule, Prometheus's `histogram_quantile`: find the bucket the rank falls in and interpolate
//! linearly within it (from 0 for the first bucket); a rank in the `+Inf` bucket reads as
//! the highest finite bound.

use std::collections::BTreeMap;

/// One scrape: every sample of a text exposition, keyed by its series (`name{labels}`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(pub BTreeMap<String, f64>);

impl Samples {
    /// Every sample of `text`. Comments (`# HELP`, `# TYPE`) are skipped, and so is an
    /// OpenMetrics exemplar (` # {trace_id=…} value time`) after a sample's value.
    pub fn parse(text: &str) -> Self {
        Samples(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| l.split_once(" # ").map_or(l, |(sample, _)| sample))
                .filter_map(|l| l.rsplit_once(' '))
                .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
                .collect(),
        )
    }

    /// The value of one series, e.g. `inflight{api="stream"}`.
    pub fn get(&self, series: &str) -> Option<f64> {
        self.0.get(series).copied()
    }

    /// Every series of `name` that has labels: (labels without braces, value).
    pub fn series<'a>(&'a self, name: &str) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        let prefix = format!("{name}{{");
        let skip = prefix.len();
        self.0
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter_map(move |(k, v)| Some((k.get(skip..k.len() - 1)?, *v)))
    }

    /// The sum of every series of `name` (any labels, or none).
    pub fn sum(&self, name: &str) -> f64 {
        self.series(name).map(|(_, v)| v).sum::<f64>() + self.get(name).unwrap_or(0.0)
    }

    /// A histogram's cumulative buckets (`le` → count) summed over its series whose labels
    /// contain `labels` (e.g. `downstream="risk"`; `""` for all). `le` may come anywhere
    /// among a series' labels.
    pub fn buckets(&self, name: &str, labels: &str) -> Buckets {
        let mut out = BTreeMap::new();
        for (series, v) in self.series(&format!("{name}_bucket")) {
            if !labels.is_empty() && !series.contains(labels) {
                continue;
            }
            let Some(le) = label(series, "le") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(le) => le,
                    Err(_) => continue,
                }
            };
            // Keyed by the bound's bits: non-negative floats order as their bits do.
            *out.entry(le.to_bits()).or_insert(0.0) += v;
        }
        Buckets(out)
    }
}

/// The value of `key` among a series' labels (`a="x",b="y"`, braces optional).
pub fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels
        .trim_start_matches('{')
        .trim_end_matches('}')
        .split(',')
        .find_map(|pair| pair.trim().strip_prefix(key)?.strip_prefix("=\""))
        .and_then(|v| v.strip_suffix('"'))
}

/// A histogram's cumulative bucket counts at one scrape, by upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets(BTreeMap<u64, f64>);

impl Buckets {
    /// What was observed after `before` (an earlier scrape of the same histogram).
    pub fn since(&self, before: &Buckets) -> Buckets {
        Buckets(
            self.0
                .iter()
                .map(|(le, c)| (*le, c - before.0.get(le).copied().unwrap_or(0.0)))
                .collect(),
        )
    }

    /// Observations counted (the `+Inf` bucket's count).
    pub fn count(&self) -> f64 {
        self.0.values().last().copied().unwrap_or(0.0)
    }

    /// The `q` quantile (in the histogram's unit) as Prometheus's `histogram_quantile`
    /// computes it; `None` when nothing was observed.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, count) in self.0.iter().map(|(le, c)| (f64::from_bits(*le), *c)) {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower);
                }
                let share = if count > below {
                    (rank - below) / (count - below)
                } else {
                    1.0
                };
                return Some(lower + (le - lower) * share);
            }
            (lower, below) = (le, count);
        }
        Some(lower)
    }
}

#[cfg(test)]
mod tests {
    use super::{Samples, label};

    const TEXT: &str = "# HELP sluice_gateway_inflight Admitted.\n\
        # TYPE sluice_gateway_inflight gauge\n\
        sluice_gateway_inflight{api=\"stream\"} 12\n\
        sluice_gateway_inflight{api=\"unary\"} 3\n\
        sluice_gateway_level 2\n\
        sluice_gateway_latency_seconds_bucket{le=\"0.001\",api=\"unary\"} 10 # {trace_id=\"ab\"} 0.0004 1700000000.1\n\
        sluice_gateway_latency_seconds_bucket{api=\"unary\",le=\"0.002\"} 30\n\
        sluice_gateway_latency_seconds_bucket{api=\"unary\",le=\"+Inf\"} 40\n\
        sluice_risk_busy 7\n";

    #[test]
    fn reads_series_by_name_and_labels_skipping_comments_and_exemplars() {
        let all = Samples::parse(TEXT);
        assert_eq!(all.get("sluice_risk_busy"), Some(7.0));
        assert_eq!(
            all.get("sluice_gateway_latency_seconds_bucket{le=\"0.001\",api=\"unary\"}"),
            Some(10.0),
            "the exemplar's value and timestamp are not the sample's"
        );
        assert_eq!(all.sum("sluice_gateway_inflight"), 15.0);
        assert_eq!(all.sum("sluice_gateway_level"), 2.0);
        let apis: Vec<_> = all.series("sluice_gateway_inflight").collect();
        assert_eq!(apis, [("api=\"stream\"", 12.0), ("api=\"unary\"", 3.0)]);
        assert_eq!(label("{api=\"unary\",le=\"0.002\"}", "le"), Some("0.002"));
        assert_eq!(label("api=\"unary\"", "le"), None);
    }

    #[test]
    fn quantiles_interpolate_within_the_bucket_as_prometheus_does() {
        let now = Samples::parse(TEXT).buckets("sluice_gateway_latency_seconds", "");
        // 40 observations: 10 ≤ 1 ms, 20 in (1, 2] ms, 10 above.
        let p50 = now.quantile(0.5).unwrap();
        assert!(
            (p50 - 0.0015).abs() < 1e-12,
            "rank 20 is halfway into (1, 2] ms: {p50}"
        );
        let p10 = now.quantile(0.1).unwrap();
        assert!(
            (p10 - 0.0004).abs() < 1e-12,
            "from 0 in the first bucket: {p10}"
        );
        assert_eq!(
            now.quantile(0.99),
            Some(0.002),
            "+Inf reads as the highest bound"
        );
        // Only what a run added counts.
        let before = Samples::parse(
            "sluice_gateway_latency_seconds_bucket{le=\"0.001\"} 10\n\
             sluice_gateway_latency_seconds_bucket{le=\"0.002\"} 10\n\
             sluice_gateway_latency_seconds_bucket{le=\"+Inf\"} 10\n",
        )
        .buckets("sluice_gateway_latency_seconds", "");
        let run = now.since(&before);
        assert_eq!(run.count(), 30.0);
        let p50 = run.quantile(0.5).unwrap();
        assert!((p50 - 0.00175).abs() < 1e-12, "{p50}");
        assert_eq!(before.since(&before).quantile(0.5), None);
        assert_eq!(
            Samples::default()
                .buckets("latency_seconds", "")
                .quantile(0.5),
            None
        );
    }
}
