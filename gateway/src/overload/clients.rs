//! Per-client rate limits: a token bucket per client (`--client-rate` tokens a second, up to
//! `--client-burst` saved), keyed by the `x-client-id` metadata, else the peer's IP address.
//! governor's GCRA is the bucket; what this adds is the bounds a hostile client cannot
//! break, and metrics whose label set cannot grow without bound:
//!
//! - At most [`MAX_CLIENTS`] buckets. Buckets that are full again are forgotten every
//!   [`Clients::trim`] (an absent bucket and a full one behave alike); a new client beyond
//!   the bound shares one overflow bucket, [`OTHER`], with every other such client.
//! - `sluice_gateway_client_requests_total{client, result}` names at most
//!   [`TOP_CLIENTS`] clients: the busiest of the last period (re-chosen every trim). The
//!   rest count as `client="other"`; a client that leaves the top has its series removed.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Most clients with a bucket of their own.
pub const MAX_CLIENTS: usize = 10_000;
/// Most clients named in the per-client metrics.
pub const TOP_CLIENTS: usize = 10;
/// The bucket and the label of everyone beyond the bounds.
pub const OTHER: &str = "other";
/// Longest `x-client-id` taken as given; a longer one is refused INVALID_ARGUMENT.
pub const MAX_CLIENT_ID: usize = 64;

/// `--client-rate` and `--client-burst`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClientRate {
    /// Tokens per second.
    pub rate: f64,
    /// Most tokens a client may save up.
    pub burst: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientLabels {
    client: String,
    /// `admitted` or `limited`.
    result: &'static str,
}

/// Every client's bucket and the bounded per-client metrics.
#[derive(Clone)]
pub struct Clients {
    rate: ClientRate,
    buckets: Arc<DefaultKeyedRateLimiter<Arc<str>>>,
    /// The overflow bucket's key.
    other: Arc<str>,
    counts: Arc<Mutex<Counts>>,
    requests: Family<ClientLabels, Counter>,
}

/// A client's two series, [admitted, limited], held so that counting allocates nothing.
type Series = [Counter; 2];

struct Counts {
    /// Requests per client this period (at most [`MAX_CLIENTS`] keys).
    period: HashMap<Arc<str>, u64>,
    /// The clients named in the metrics, busiest first, with their series.
    named: Vec<(Arc<str>, Series)>,
    /// Everyone else's series.
    other: Series,
}

impl Clients {
    pub fn new(rate: ClientRate, registry: &mut Registry) -> Self {
        let period = Duration::from_secs_f64(1.0 / rate.rate);
        let quota = Quota::with_period(period)
            .expect("a positive rate (checked by the flags)")
            .allow_burst(NonZeroU32::new(rate.burst.max(1)).expect("at least 1"));
        let requests = Family::<ClientLabels, Counter>::default();
        registry.register(
            "client_requests",
            "Transactions per client (x-client-id, else peer IP) by result (admitted, limited); the busiest clients by name, the rest as other",
            requests.clone(),
        );
        let other = series(&requests, OTHER);
        Self {
            rate,
            buckets: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
            other: Arc::from(OTHER),
            counts: Arc::new(Mutex::new(Counts {
                period: HashMap::new(),
                named: Vec::new(),
                other,
            })),
            requests,
        }
    }

    pub fn rate(&self) -> ClientRate {
        self.rate
    }

    /// Takes a token for `client`, or says how long until its next one; counts it.
    pub fn check(&self, client: &Arc<str>) -> Result<(), Duration> {
        let full = self.buckets.len() >= MAX_CLIENTS;
        let mut counts = self.counts.lock().expect("client counts");
        let key = match counts.period.get_mut(client) {
            Some(n) => {
                *n += 1;
                client
            }
            None => {
                if counts.period.len() < MAX_CLIENTS {
                    counts.period.insert(client.clone(), 1);
                }
                // A client new this period, with every bucket taken: the shared one.
                if full { &self.other } else { client }
            }
        };
        let result = self
            .buckets
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()));
        let series = counts
            .named
            .iter()
            .find(|(named, _)| named == client)
            .map_or(&counts.other, |(_, series)| series);
        series[usize::from(result.is_err())].inc();
        result
    }

    /// Forgets full buckets, and names the period's busiest clients in the metrics from
    /// now on. Called every few seconds.
    pub fn trim(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
        let mut counts = self.counts.lock().expect("client counts");
        let mut busiest: Vec<(Arc<str>, u64)> = counts.period.drain().collect();
        busiest.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        busiest.truncate(TOP_CLIENTS);
        let mut before = std::mem::take(&mut counts.named);
        counts.named = busiest
            .into_iter()
            .map(|(client, _)| {
                let kept = before.iter().position(|(c, _)| *c == client);
                let series = match kept {
                    Some(at) => before.swap_remove(at).1,
                    None => series(&self.requests, &client),
                };
                (client, series)
            })
            .collect();
        // Whoever left the top has its series removed: the label set stays bounded.
        for (gone, _) in before {
            for result in RESULTS {
                self.requests.remove(&ClientLabels {
                    client: gone.to_string(),
                    result,
                });
            }
        }
    }

    /// The clients named in the metrics now, busiest first.
    pub fn named(&self) -> Vec<String> {
        let counts = self.counts.lock().expect("client counts");
        counts.named.iter().map(|(c, _)| c.to_string()).collect()
    }
}

/// The `result` label values, in [`Series`] order.
const RESULTS: [&str; 2] = ["admitted", "limited"];

fn series(requests: &Family<ClientLabels, Counter>, client: &str) -> Series {
    RESULTS.map(|result| {
        requests
            .get_or_create(&ClientLabels {
                client: client.to_string(),
                result,
            })
            .clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(rate: f64, burst: u32) -> Clients {
        Clients::new(ClientRate { rate, burst }, &mut Registry::default())
    }

    #[test]
    fn a_client_over_its_rate_waits_the_refill_time() {
        let c = clients(10.0, 2);
        assert!(c.check(&"a".into()).is_ok());
        assert!(c.check(&"a".into()).is_ok());
        let wait = c.check(&"a".into()).expect_err("burst spent");
        // One token per 100 ms; the first was taken moments ago.
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(
            c.check(&"b".into()).is_ok(),
            "another client has its own bucket"
        );
    }

    #[test]
    fn metrics_name_only_the_busiest_clients() {
        let c = clients(1e6, 1000);
        for i in 0..(TOP_CLIENTS + 5) {
            for _ in 0..=i {
                c.check(&format!("client-{i:02}").into()).unwrap();
            }
        }
        c.trim();
        let named = c.named();
        assert_eq!(named.len(), TOP_CLIENTS);
        assert_eq!(named[0], format!("client-{:02}", TOP_CLIENTS + 4));
        assert!(!named.contains(&"client-00".to_string()));
        c.check(&"client-00".into()).unwrap();
        let mut text = String::new();
        let mut registry = Registry::default();
        registry.register("client_requests", "", c.requests.clone());
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("client=\"other\""), "{text}");
        assert!(!text.contains("client-00"), "{text}");
    }
}
