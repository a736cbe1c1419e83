//! From a number to a trace: the transactions behind the report's figures — the slowest,
//! and the first that failed — each with the trace id it carried, so a p99 or an error count
//! leads straight to the trace that explains it (and, with `--jaeger-url`, to a link).
//!
//! Both lists are bounded, whatever the run's length: the slowest are a fixed-size top-K
//! ([`TopK`]: a min-heap of K entries, where a transaction replaces the fastest of them only
//! when it is slower), the failed are the first K. Recording is a comparison on the hot path;
//! a transaction's id is copied only when it enters a list.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::Duration;

use opentelemetry::trace::TraceId;
use serde::Serialize;

/// Slowest transactions listed in a report.
pub const DEFAULT_SLOWEST: usize = 10;
/// Failed transactions listed in a report (the first ones, in the order they failed).
pub const DEFAULT_FAILED: usize = 10;

/// The `k` highest-ranked items offered so far; among equal ranks, the earliest offered.
#[derive(Debug)]
pub struct TopK<T> {
    k: usize,
    /// A min-heap (by rank) of at most `k` entries: its top is the one to replace next.
    heap: BinaryHeap<Reverse<Ranked<T>>>,
    offered: u64,
}

#[derive(Debug)]
struct Ranked<T> {
    rank: u64,
    /// Order of arrival: among equal ranks the later one counts as lower, so it goes first.
    seq: u64,
    item: T,
}

impl<T> Ord for Ranked<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank
            .cmp(&other.rank)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl<T> PartialOrd for Ranked<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> PartialEq for Ranked<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Ranked<T> {}

impl<T> TopK<T> {
    /// Keeps the `k` highest ranks (0: keeps nothing).
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: BinaryHeap::with_capacity(k),
            offered: 0,
        }
    }

    /// Offers an item of `rank`; `item` is made only when it is kept. Returns whether it was.
    pub fn offer(&mut self, rank: u64, item: impl FnOnce() -> T) -> bool {
        let seq = self.offered;
        self.offered += 1;
        if self.heap.len() < self.k {
            self.heap.push(Reverse(Ranked {
                rank,
                seq,
                item: item(),
            }));
            return true;
        }
        match self.heap.peek() {
            // Strictly higher: a tie keeps the earlier one.
            Some(Reverse(lowest)) if rank > lowest.rank => {
                self.heap.pop();
                self.heap.push(Reverse(Ranked {
                    rank,
                    seq,
                    item: item(),
                }));
                true
            }
            _ => false,
        }
    }

    /// The kept items, highest rank first.
    pub fn sorted(&self) -> Vec<&T> {
        let mut kept: Vec<&Ranked<T>> = self.heap.iter().map(|Reverse(r)| r).collect();
        kept.sort_by(|a, b| b.cmp(a));
        kept.into_iter().map(|r| &r.item).collect()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// Where trace ids link to: a Jaeger UI, whose trace page is `<base>/trace/<trace id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLinks {
    base: String,
}

impl TraceLinks {
    /// `url` is the UI's base, e.g. `http://127.0.0.1:16686` (a trailing `/` is dropped).
    pub fn parse(url: &str) -> Result<TraceLinks, String> {
        let base = url.trim_end_matches('/');
        let host = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        match host {
            Some(host) if !host.is_empty() => Ok(TraceLinks {
                base: base.to_string(),
            }),
            _ => Err(format!(
                "{url:?}: expected the Jaeger UI's URL, e.g. http://127.0.0.1:16686"
            )),
        }
    }

    /// The page of the trace `trace_id` (32 hex digits).
    pub fn url(&self, trace_id: &str) -> String {
        format!("{}/trace/{trace_id}", self.base)
    }
}

/// `--jaeger-url`, for every command that writes a load report.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TraceLinkArgs {
    /// The Jaeger UI (e.g. http://127.0.0.1:16686): each trace id in the report's slowest
    /// and failed transactions also gets a link, URL/trace/TRACE_ID. Trace ids are those
    /// of the `traceparent` each transaction carried: with no OTLP endpoint
    /// (OTEL_EXPORTER_OTLP_ENDPOINT, or --otlp-endpoint before the command) the generator
    /// starts no traces and sends none, and the report lists the transactions without them.
    #[arg(long, env = "SLUICE_JAEGER_URL", value_parser = TraceLinks::parse)]
    pub jaeger_url: Option<TraceLinks>,
}

/// One transaction kept for the report, as recorded (turned into an [`Exemplar`] at the end).
#[derive(Debug, Clone)]
pub(crate) struct Noted {
    pub(crate) id: String,
    pub(crate) trace_id: Option<TraceId>,
    pub(crate) code: String,
    pub(crate) message: String,
    /// None when it never finished (`NO_OUTCOME`).
    pub(crate) latency: Option<Duration>,
}

impl Noted {
    pub(crate) fn exemplar(&self, links: Option<&TraceLinks>) -> Exemplar {
        let trace_id = self.trace_id.map(|t| t.to_string());
        Exemplar {
            id: self.id.clone(),
            code: self.code.clone(),
            message: self.message.clone(),
            latency_ms: self.latency.map(|l| l.as_secs_f64() * 1000.0),
            trace_url: trace_id
                .as_deref()
                .and_then(|t| links.map(|links| links.url(t))),
            trace_id,
        }
    }
}

/// One transaction named in the report, with what it takes to find its trace.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Exemplar {
    /// The transaction's id.
    pub id: String,
    /// `OK`, a gRPC code name, or `NO_OUTCOME`.
    pub code: String,
    /// The error's message (empty when OK).
    pub message: String,
    /// Its latency (from the intended send time in open loop); null when it never finished.
    pub latency_ms: Option<f64>,
    /// The trace id of the `traceparent` it carried (32 hex digits); absent when it carried
    /// none (tracing off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// With `--jaeger-url`: the trace's page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
}

impl Exemplar {
    /// Where to find its trace, for people: the link, else the trace id, else nothing.
    pub fn trace(&self) -> &str {
        self.trace_url
            .as_deref()
            .or(self.trace_id.as_deref())
            .unwrap_or("")
    }

    /// One line of the text report: latency, code, id, then the trace and the message when
    /// there are any.
    pub fn line(&self) -> String {
        let ms = self
            .latency_ms
            .map_or("-".to_string(), |ms| format!("{ms:.2}"));
        let mut line = format!("  {ms:>10}  {:<18} {:<24}", self.code, self.id);
        for extra in [self.trace(), self.message.as_str()] {
            if !extra.is_empty() {
                line.push_str("  ");
                line.push_str(extra);
            }
        }
        line.trim_end().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(top: &TopK<u32>) -> Vec<u32> {
        top.sorted().into_iter().copied().collect()
    }

    #[test]
    fn keeps_the_k_highest_highest_first() {
        let mut top = TopK::new(3);
        for (i, rank) in [5u64, 1, 9, 3, 7, 9, 2].into_iter().enumerate() {
            top.offer(rank, || i as u32);
        }
        // Ranks 9 (item 2), 9 (item 5), 7 (item 4): the earlier of equal ranks first.
        assert_eq!(kept(&top), vec![2, 5, 4]);
        assert_eq!(top.len(), 3);
    }

    #[test]
    fn stays_bounded_and_makes_only_what_it_keeps() {
        let mut top = TopK::new(10);
        let mut made = 0;
        // The slowest come first: everything after them is offered, compared, never made.
        for rank in (0..100_000u64).rev() {
            top.offer(rank, || {
                made += 1;
                rank as u32
            });
            assert!(top.len() <= 10);
        }
        assert_eq!(kept(&top), (99_990..100_000).rev().collect::<Vec<u32>>());
        assert_eq!(made, 10);
        // Rising ranks replace the lowest each time, and still keep only ten.
        for rank in 100_000..200_000u64 {
            top.offer(rank, || rank as u32);
        }
        assert_eq!(kept(&top), (199_990..200_000).rev().collect::<Vec<u32>>());
    }

    #[test]
    fn a_tie_with_the_lowest_kept_does_not_replace_it() {
        let mut top = TopK::new(2);
        assert!(top.offer(4, || 'a'));
        assert!(top.offer(4, || 'b'));
        assert!(!top.offer(4, || 'c'));
        assert!(top.offer(5, || 'd'));
        let order: Vec<char> = top.sorted().into_iter().copied().collect();
        assert_eq!(order, vec!['d', 'a']);
    }

    #[test]
    fn k_zero_keeps_nothing() {
        let mut top = TopK::new(0);
        assert!(!top.offer(1, || unreachable!("never made")));
        assert!(top.is_empty());
    }

    #[test]
    fn links_need_a_base_url() {
        let links = TraceLinks::parse("http://127.0.0.1:16686/").unwrap();
        assert_eq!(
            links.url("4bf92f3577b34da6a3ce929d0e0e4736"),
            "http://127.0.0.1:16686/trace/4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(TraceLinks::parse("https://jaeger.example").is_ok());
        for bad in ["127.0.0.1:16686", "http://", "ftp://x"] {
            assert!(TraceLinks::parse(bad).is_err(), "{bad}");
        }
    }
}
