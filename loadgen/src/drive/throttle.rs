//! Client-side adaptive throttling, as the Google SRE book describes it ("Handling
//! Overload"): a client that sees its recent requests refused starts refusing some itself,
//! before they cost the server (or the client) anything.
//!
//! Over the last [`THROTTLE_WINDOW`] the client counts `requests` (every call it wanted to
//! make, its own refusals included) and `accepts` (calls the server did not refuse), and
//! refuses a new call itself with probability
//!
//! ```text
//! max(0, (requests − K × accepts) / (requests + 1))
//! ```
//!
//! A sent call counts as a request when its answer arrives, not when it leaves: counted at
//! the send, the calls still in flight would look refused, and a client starting up (every
//! call in flight, none answered yet) would throttle itself with nothing refused — and, as
//! it then sends only K times what it sees accepted, take many windows to climb out.
//!
//! One departure from the book: the throttle refuses nothing while the window holds no
//! refusal from the server. The book's formula alone cannot tell "the server accepts all I
//! send" from "the server accepts all I send because I send little": after an overload ends
//! a client throttled to a quarter of its calls would grow what it sends by only K per
//! window (with K = 1.1, seconds of calls refused for nothing). Without the server's
//! refusals in the window, it sends everything again, and the next refusal starts the
//! throttle over.
//!
//! At steady overload the server then sees about K times what it accepts: K = 2 (the book's
//! default) leaves it refusing half of what it sees, K = 1.1 one in eleven. A refusal is a
//! RESOURCE_EXHAUSTED or UNAVAILABLE answer (the gateway's "over the limit" and "degraded"
//! refusals, both with pushback); anything else, OK or a transaction's own error, is an
//! accept. Why a client should do this at all: a refusal is not free. On the server it is a
//! request's headers parsed and answered; on a machine whose CPU the server shares, or on a
//! server already at saturation, every refusal is paid for out of goodput.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng;

/// How far back the throttle looks: long enough to hold thousands of calls at the rates it
/// matters at, short enough to follow a load step within a second (the book's 2 minutes
/// are for long-lived production clients). Once the server accepts again, a deeply
/// throttled client grows what it sends by about K per window.
pub const THROTTLE_WINDOW: Duration = Duration::from_millis(250);
/// The window is kept as this many buckets, each a tenth of it: the oldest drops out as a
/// new one starts.
const BUCKETS: usize = 10;

/// One bucket's counts.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    requests: u64,
    accepts: u64,
    /// Calls the server refused.
    refusals: u64,
}

#[derive(Debug)]
struct Window {
    buckets: [Counts; BUCKETS],
    /// Index of the current bucket.
    current: usize,
    /// When the current bucket started.
    since: Instant,
}

impl Window {
    /// Moves the current bucket up to `now`, emptying the buckets that dropped out.
    fn advance(&mut self, now: Instant) {
        let bucket = THROTTLE_WINDOW / BUCKETS as u32;
        let mut passed = now.saturating_duration_since(self.since).as_nanos() / bucket.as_nanos();
        if passed == 0 {
            return;
        }
        self.since += bucket * u32::try_from(passed).unwrap_or(u32::MAX);
        passed = passed.min(BUCKETS as u128);
        for _ in 0..passed {
            self.current = (self.current + 1) % BUCKETS;
            self.buckets[self.current] = Counts::default();
        }
    }

    fn totals(&self) -> Counts {
        self.buckets.iter().fold(Counts::default(), |a, b| Counts {
            requests: a.requests + b.requests,
            accepts: a.accepts + b.accepts,
            refusals: a.refusals + b.refusals,
        })
    }
}

/// The throttle one run shares across its connections.
#[derive(Debug)]
pub struct Throttle {
    /// K: how many requests per accept the server may see.
    k: f64,
    window: Mutex<Window>,
}

impl Throttle {
    /// A throttle letting through about `k` requests per accept; `k` ≥ 1.
    pub fn new(k: f64, now: Instant) -> Self {
        Self {
            k,
            window: Mutex::new(Window {
                buckets: [Counts::default(); BUCKETS],
                current: 0,
                since: now,
            }),
        }
    }

    /// The share of calls refused right now.
    pub fn refuse_probability(&self, now: Instant) -> f64 {
        let mut w = self.window.lock().expect("throttle lock");
        w.advance(now);
        Self::probability(self.k, w.totals())
    }

    fn probability(k: f64, c: Counts) -> f64 {
        if c.refusals == 0 {
            return 0.0;
        }
        ((c.requests as f64 - k * c.accepts as f64) / (c.requests as f64 + 1.0)).max(0.0)
    }

    /// A call the client wants to make: false when the throttle refuses it (it is not
    /// sent, and counts as a request now); true to send it (it counts when answered).
    pub fn admit(&self, now: Instant, rng: &mut impl Rng) -> bool {
        let mut w = self.window.lock().expect("throttle lock");
        w.advance(now);
        let p = Self::probability(self.k, w.totals());
        if p == 0.0 || rng.random::<f64>() >= p {
            return true;
        }
        let current = w.current;
        w.buckets[current].requests += 1;
        false
    }

    /// A call that was sent got its answer; `refused` when the server refused it.
    pub fn answered(&self, now: Instant, refused: bool) {
        let mut w = self.window.lock().expect("throttle lock");
        w.advance(now);
        let current = w.current;
        w.buckets[current].requests += 1;
        if refused {
            w.buckets[current].refusals += 1;
        } else {
            w.buckets[current].accepts += 1;
        }
    }
}

/// Whether `code` is the server refusing a call (rather than answering it): what the
/// throttle counts against the client.
pub fn is_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::ResourceExhausted | tonic::Code::Unavailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    /// Calls in flight are neither accepts nor refusals: a client whose first thousand calls
    /// are all still unanswered sends the next one.
    #[test]
    fn calls_in_flight_do_not_throttle() {
        let t0 = Instant::now();
        let throttle = Throttle::new(1.1, t0);
        let mut rng = SmallRng::seed_from_u64(2);
        for i in 0..1_000 {
            assert!(throttle.admit(t0, &mut rng), "call {i} refused");
        }
        throttle.answered(t0, false);
        assert!(throttle.admit(t0, &mut rng));
    }

    #[test]
    fn nothing_is_refused_while_the_server_accepts() {
        let t0 = Instant::now();
        let throttle = Throttle::new(1.1, t0);
        let mut rng = SmallRng::seed_from_u64(1);
        for i in 0..10_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) * 100);
            assert!(throttle.admit(now, &mut rng), "call {i} refused");
            throttle.answered(now, false);
        }
        assert_eq!(
            throttle.refuse_probability(t0 + Duration::from_secs(1)),
            0.0
        );
    }

    /// A server that accepts 1,000 calls a second, offered 3,000: the throttle settles
    /// where the server sees about K × 1,000.
    #[test]
    fn under_overload_the_server_sees_about_k_times_what_it_accepts() {
        const OFFERED: u32 = 3_000;
        const CAPACITY: u32 = 1_000;
        const K: f64 = 1.1;
        let t0 = Instant::now();
        let throttle = Throttle::new(K, t0);
        let mut rng = SmallRng::seed_from_u64(7);
        let (mut sent_last_second, mut seconds) = (0u32, 0u32);
        for second in 0..5u32 {
            let mut accepted = 0;
            let mut sent = 0;
            for i in 0..OFFERED {
                let now = t0
                    + Duration::from_secs(u64::from(second))
                    + Duration::from_micros(u64::from(i) * 1_000_000 / u64::from(OFFERED));
                if throttle.admit(now, &mut rng) {
                    sent += 1;
                    // The server accepts at its capacity's pace and refuses the rest.
                    let refused = accepted > CAPACITY * (i + 1) / OFFERED;
                    if !refused {
                        accepted += 1;
                    }
                    throttle.answered(now, refused);
                }
            }
            sent_last_second = sent;
            seconds += 1;
        }
        assert_eq!(seconds, 5);
        let ratio = f64::from(sent_last_second) / f64::from(CAPACITY);
        assert!(
            (1.0..1.4).contains(&ratio),
            "the server saw {sent_last_second}/s for {CAPACITY}/s accepted"
        );
    }

    /// A client throttled to a quarter of its calls, whose server now accepts them all,
    /// sends everything again once the last refusal leaves the window.
    #[test]
    fn once_nothing_is_refused_the_throttle_lets_everything_through() {
        let t0 = Instant::now();
        let throttle = Throttle::new(1.1, t0);
        let mut rng = SmallRng::seed_from_u64(5);
        for i in 0..4_000 {
            if throttle.admit(t0, &mut rng) {
                throttle.answered(t0, i % 4 != 0);
            }
        }
        assert!(throttle.refuse_probability(t0) > 0.5);
        // Every call sent from now on is accepted.
        let step = THROTTLE_WINDOW / 100;
        let mut refused_after_window = 0;
        for i in 1..=300u32 {
            let now = t0 + step * i;
            if throttle.admit(now, &mut rng) {
                throttle.answered(now, false);
            } else if now > t0 + THROTTLE_WINDOW + step {
                refused_after_window += 1;
            }
        }
        assert_eq!(refused_after_window, 0);
    }

    #[test]
    fn old_refusals_age_out_of_the_window() {
        let t0 = Instant::now();
        let throttle = Throttle::new(1.1, t0);
        let mut rng = SmallRng::seed_from_u64(3);
        for _ in 0..1_000 {
            if throttle.admit(t0, &mut rng) {
                throttle.answered(t0, true);
            }
        }
        assert!(throttle.refuse_probability(t0) > 0.9);
        let later = t0 + THROTTLE_WINDOW + Duration::from_millis(1);
        assert_eq!(throttle.refuse_probability(later), 0.0);
    }

    #[test]
    fn refusals_are_exhausted_and_unavailable() {
        assert!(is_refusal(tonic::Code::ResourceExhausted));
        assert!(is_refusal(tonic::Code::Unavailable));
        assert!(!is_refusal(tonic::Code::InvalidArgument));
        assert!(!is_refusal(tonic::Code::Ok));
    }
}
