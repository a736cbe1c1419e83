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
    buckets: Arc<DefaultKeyedRateLimiter<String>>,
    counts: Arc<Mutex<Counts>>,
    requests: Family<ClientLabels, Counter>,
}

#[derive(Default)]
struct Counts {
    /// Requests per client this period (at most [`MAX_CLIENTS`] keys).
    period: HashMap<String, u64>,
    /// The clients named in the metrics.
    named: Vec<String>,
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
        Self {
            rate,
            buckets: Arc::new(DefaultKeyedRateLimiter::keyed(quota)),
            counts: Arc::new(Mutex::new(Counts::default())),
            requests,
        }
    }

    pub fn rate(&self) -> ClientRate {
        self.rate
    }

    /// Takes a token for `client`, or says how long until its next one.
    pub fn check(&self, client: &str) -> Result<(), Duration> {
        let key = if self.buckets.len() >= MAX_CLIENTS && !self.known(client) {
            OTHER
        } else {
            client
        };
        let result = self
            .buckets
            .check_key(&key.to_string())
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()));
        self.count(client, result.is_ok());
        result
    }

    fn known(&self, client: &str) -> bool {
        self.counts
            .lock()
            .expect("client counts")
            .period
            .contains_key(client)
    }

    fn count(&self, client: &str, admitted: bool) {
        let mut counts = self.counts.lock().expect("client counts");
        if counts.period.len() < MAX_CLIENTS || counts.period.contains_key(client) {
            *counts.period.entry(client.to_string()).or_default() += 1;
        }
        let label = if counts.named.iter().any(|n| n == client) {
            client.to_string()
        } else {
            OTHER.to_string()
        };
        drop(counts);
        self.requests
            .get_or_create(&ClientLabels {
                client: label,
                result: if admitted { "admitted" } else { "limited" },
            })
            .inc();
    }

    /// Forgets full buckets, and names the period's busiest clients in the metrics from
    /// now on. Called every few seconds.
    pub fn trim(&self) {
        self.buckets.retain_recent();
        self.buckets.shrink_to_fit();
        let mut counts = self.counts.lock().expect("client counts");
        let mut busiest: Vec<(String, u64)> = counts.period.drain().collect();
        busiest.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        busiest.truncate(TOP_CLIENTS);
        let named: Vec<String> = busiest.into_iter().map(|(c, _)| c).collect();
        for gone in counts.named.iter().filter(|c| !named.contains(c)) {
            for result in ["admitted", "limited"] {
                self.requests.remove(&ClientLabels {
                    client: gone.clone(),
                    result,
                });
            }
        }
        counts.named = named;
    }

    /// The clients named in the metrics now.
    pub fn named(&self) -> Vec<String> {
        self.counts.lock().expect("client counts").named.clone()
    }
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
        assert!(c.check("a").is_ok());
        assert!(c.check("a").is_ok());
        let wait = c.check("a").expect_err("burst spent");
        // One token per 100 ms; the first was taken moments ago.
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        assert!(c.check("b").is_ok(), "another client has its own bucket");
    }

    #[test]
    fn metrics_name_only_the_busiest_clients() {
        let c = clients(1e6, 1000);
        for i in 0..(TOP_CLIENTS + 5) {
            for _ in 0..=i {
                c.check(&format!("client-{i:02}")).unwrap();
            }
        }
        c.trim();
        let named = c.named();
        assert_eq!(named.len(), TOP_CLIENTS);
        assert_eq!(named[0], format!("client-{:02}", TOP_CLIENTS + 4));
        assert!(!named.contains(&"client-00".to_string()));
        c.check("client-00").unwrap();
        let mut text = String::new();
        let mut registry = Registry::default();
        registry.register("client_requests", "", c.requests.clone());
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("client=\"other\""), "{text}");
        assert!(!text.contains("client-00"), "{text}");
    }
}
