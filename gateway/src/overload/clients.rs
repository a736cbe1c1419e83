//! Per-client rate limits: a token bucket per client (`--client-rate` tokens a second, up to
//! `--client-burst` saved), keyed by the `x-client-id` metadata, else the peer's IP address.
//! governor's GCRA is the bucket; what this adds is the bounds a hostile client cannot
//! break, and metrics whose label set cannot grow without bound:
//!
//! - At most [`MAX_CLIENTS`] buckets, kept least recently used first (the `lru` crate). A
//!   new client beyond the bound takes the bucket of the client heard from least recently
//!   (`client_buckets_evicted_total` counts it), so a stream of fresh `x-client-id`s pushes
//!   out only idle clients — and itself — never a newcomer who is still sending. Buckets
//!   idle long enough to be full again are forgotten every [`Clients::trim`] (an absent
//!   bucket and a full one behave alike).
//!
//! `x-client-id` is what the client says it is: unauthenticated unless the deployment
//! authenticates it in front of the gateway. A client that rotates ids gets a fresh bucket
//! each time; the concurrency limit, not the bucket, is what bounds it.
//! - `sluice_gateway_client_requests_total{client, result}` names at most
//!   [`TOP_CLIENTS`] clients: the busiest of the last period (re-chosen every trim). The
//!   rest count as `client="other"`; a client that leaves the top has its series removed.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::num::NonZeroUsize;
use std::time::Instant;

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use lru::LruCache;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Most clients with a bucket of their own.
pub const MAX_CLIENTS: usize = 10_000;
/// Most clients named in the per-client metrics.
pub const TOP_CLIENTS: usize = 10;
/// The metrics label of every client not among the [`TOP_CLIENTS`].
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
    quota: Quota,
    /// Least recently used first; at most [`MAX_CLIENTS`].
    buckets: Arc<Mutex<LruCache<Arc<str>, Bucket>>>,
    counts: Arc<Mutex<Counts>>,
    requests: Family<ClientLabels, Counter>,
    evicted: Counter,
}

/// One client's token bucket (governor's GCRA) and when it was last used.
struct Bucket {
    limiter: DefaultDirectRateLimiter,
    last: Instant,
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
        let evicted = Counter::default();
        registry.register(
            "client_buckets_evicted",
            "Client buckets given to a new client because every one of the bounded number was taken (the least recently used client's)",
            evicted.clone(),
        );
        let other = series(&requests, OTHER);
        let capacity = NonZeroUsize::new(MAX_CLIENTS).expect("a positive bound");
        Self {
            rate,
            quota,
            buckets: Arc::new(Mutex::new(LruCache::new(capacity))),
            evicted,
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
        let result = {
            let now = Instant::now();
            let mut buckets = self.buckets.lock().expect("client buckets");
            let bucket = match buckets.get_mut(client) {
                Some(bucket) => bucket,
                None => {
                    // At the bound, `push` hands back the least recently used client's.
                    let fresh = Bucket {
                        limiter: DefaultDirectRateLimiter::direct(self.quota),
                        last: now,
                    };
                    if buckets.push(client.clone(), fresh).is_some() {
                        self.evicted.inc();
                    }
                    buckets.get_mut(client).expect("just inserted")
                }
            };
            bucket.last = now;
            bucket
                .limiter
                .check()
                .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
        };
        let mut counts = self.counts.lock().expect("client counts");
        let room = counts.period.len() < MAX_CLIENTS;
        match counts.period.get_mut(client) {
            Some(n) => *n += 1,
            None if room => {
                counts.period.insert(client.clone(), 1);
            }
            None => {}
        }
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
        {
            // A bucket idle for a whole burst's refill is full: forgetting it changes nothing.
            let refill =
                Duration::from_secs_f64(f64::from(self.rate.burst.max(1)) / self.rate.rate);
            let now = Instant::now();
            let mut buckets = self.buckets.lock().expect("client buckets");
            while buckets
                .peek_lru()
                .is_some_and(|(_, b)| now.duration_since(b.last) >= refill)
            {
                buckets.pop_lru();
            }
        }
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
    fn rotating_ids_evict_idle_clients_not_a_newcomer_still_sending() {
        let c = clients(1e6, 5);
        let honest: Arc<str> = "honest".into();
        for i in 0..(3 * MAX_CLIENTS) {
            assert!(
                c.check(&format!("rotating-{i}").into()).is_ok(),
                "a fresh id has a full bucket"
            );
            if i % 1000 == 0 {
                // The newcomer sends now and then, within its rate: never pushed out, so
                // never given a second burst, and never shares anyone's bucket.
                assert!(
                    c.check(&honest).is_ok(),
                    "the newcomer keeps its own bucket"
                );
            }
        }
        assert_eq!(c.buckets.lock().unwrap().len(), MAX_CLIENTS);
        assert!(c.buckets.lock().unwrap().contains(&honest));
        assert_eq!(c.evicted.get(), (2 * MAX_CLIENTS + 1) as u64);
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
