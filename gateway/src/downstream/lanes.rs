//! More connections to one replica, grown with load and given back when idle.
//!
//! A replica starts with one *lane*: one HTTP/2 connection carrying `--streams-per-downstream`
//! streams. One connection is one task at each end (h2's connection driver, and the task
//! that polls the stream's body), so however many threads the gateway runs, one
//! connection's messages are encoded and written by one thread at a time: the serial part of
//! a hop on a many-core machine.
//!
//! **Grow.** A stream that can send (it has HTTP/2 window and room under `stream_inflight`)
//! and finds a batch's worth of requests (`--downstream-linger-batch`) already queued,
//! `grow_after` times in a row, while fewer than half its `stream_inflight` await replies,
//! shows that the sender, not the service, is what the queue waits for (a slow service
//! leaves many unanswered, and frees room only as it answers). It then opens another lane
//! — a connection of its
//! own, one stream — at most one per [`GROW_SPACING`], up to `lanes_max` lanes per replica
//! (default: the gateway's worker threads, since a lane uses at most one; so one on a
//! machine of under eight cores, where nothing changes).
//!
//! **Give back.** An extra lane whose takes have found the queue empty for `lane_idle` —
//! a lower bar than the one it opened on, so a lane that carries steady load stays — ends:
//! it half-closes its stream, reads the replies still due, and closes. It never
//! reconnects (the first lane does); one that cannot open delays the next for
//! [`FAILED_SPACING`].
//!
//! Every lane takes from the replica's one queue, so the queue's bounds hold in total;
//! `stream_inflight` is per stream, so a replica has at most
//! `(streams + lanes_max − 1) × stream_inflight` requests in flight. The decisions read the
//! monotonic clock (`Instant`) at a take; only an extra lane's wait for work has a
//! (millisecond) tokio timer, its `lane_idle`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_core::CancellationToken;
use tokio::sync::Notify;
use tonic::transport::Channel;

/// Opens a new connection to the replica (lazily: it connects on first use).
pub type Connect = Arc<dyn Fn() -> Channel + Send + Sync>;

/// Least time between two lanes opened to one replica: a new lane takes its share of the
/// backlog before another is judged needed.
pub const GROW_SPACING: Duration = Duration::from_millis(100);
/// Least time after an extra lane failed to open before another is tried: a replica that
/// refuses more connections is not asked ten times a second.
pub const FAILED_SPACING: Duration = Duration::from_secs(5);

/// A replica's lanes, shared by its streams.
pub(crate) struct Lanes {
    connect: Connect,
    /// The replica's stop: extra lanes end with it.
    pub(crate) shutdown: CancellationToken,
    /// Lanes open, the first included; the first lane's first stream waits, after the stop,
    /// until it is 1 again.
    open: AtomicUsize,
    closed: Notify,
    /// Touched only when a lane may open.
    grow: Mutex<Grow>,
}

struct Grow {
    /// When the last lane opened (or, after a failure, a time ahead).
    last: Option<Instant>,
    /// The next lane's stream index (for the logs).
    next_index: usize,
}

impl Lanes {
    pub(crate) fn new(connect: Connect, shutdown: CancellationToken, first_streams: usize) -> Self {
        Self {
            connect,
            shutdown,
            open: AtomicUsize::new(1),
            closed: Notify::new(),
            grow: Mutex::new(Grow {
                last: None,
                next_index: first_streams,
            }),
        }
    }

    /// A connection for the first lane.
    pub(crate) fn first(&self) -> Channel {
        (self.connect)()
    }

    /// Lanes open now, the first included.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Claims a new lane if one may open now (fewer than `max`, none opened within
    /// [`GROW_SPACING`], not stopping): its stream index and connection.
    pub(crate) fn claim(&self, max: usize) -> Option<(usize, Channel)> {
        let mut grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        // `duration_since` is zero for a time still ahead (after a failure).
        if grow
            .last
            .is_some_and(|t| now.duration_since(t) < GROW_SPACING)
            || self.open() >= max
        {
            return None;
        }
        // Counted before the stop is checked: the first lane's wait for extra lanes begins
        // only after the stop, so either it sees this count or this sees the stop.
        self.open.fetch_add(1, Ordering::SeqCst);
        if self.shutdown.is_cancelled() {
            self.closed();
            return None;
        }
        grow.last = Some(now);
        grow.next_index += 1;
        Some((grow.next_index - 1, (self.connect)()))
    }

    /// An extra lane could not open: the next waits [`FAILED_SPACING`].
    pub(crate) fn failed(&self) {
        let mut grow = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        grow.last = Some(Instant::now() + FAILED_SPACING - GROW_SPACING);
    }

    /// An extra lane ended.
    pub(crate) fn closed(&self) {
        self.open.fetch_sub(1, Ordering::SeqCst);
        self.closed.notify_waiters();
    }

    /// Waits until every extra lane has ended (after the replica's stop).
    pub(crate) async fn extras_ended(&self) {
        loop {
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.open() <= 1 {
                return;
            }
            closed.await;
        }
    }
}

/// What one stream's sender knows of its lane: whether it is an extra one, and how long
/// the queue has kept it busy.
pub(crate) struct Lane {
    extra: bool,
    /// Takes in a row that found a batch's worth of requests already queued.
    backlogged: usize,
    /// The last take that found the queue not empty (or the lane's start).
    last_busy: Instant,
    /// Set by the sender when an idle extra lane closes, so its stream is not reopened.
    pub(crate) retired: Arc<AtomicBool>,
}

/// What a take tells the lane to do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Go,
    /// Open another lane, if one may open.
    Grow,
}

impl Lane {
    pub(crate) fn new(extra: bool) -> Self {
        Self {
            extra,
            backlogged: 0,
            last_busy: Instant::now(),
            retired: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A take found the queue not empty, at `now`: the lane has work.
    pub(crate) fn busy(&mut self, now: Instant) {
        self.last_busy = now;
    }

    /// A take found a batch's worth of requests queued while the service keeps up.
    pub(crate) fn backlog(&mut self, grow_after: usize) -> Verdict {
        self.backlogged += 1;
        if self.backlogged >= grow_after.max(1) {
            self.backlogged = 0;
            Verdict::Grow
        } else {
            Verdict::Go
        }
    }

    /// A take found less than that.
    pub(crate) fn drained(&mut self) {
        self.backlogged = 0;
    }

    /// For an extra lane, when it is idle enough to close: `lane_idle` after a take last
    /// found the queue not empty. None for the first lane, which never closes.
    pub(crate) fn idle_at(&self, lane_idle: Duration) -> Option<Instant> {
        self.extra.then(|| self.last_busy + lane_idle)
    }

    /// Marks the lane closed for want of work.
    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lanes() -> Lanes {
        let connect: Connect = Arc::new(|| {
            tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy()
        });
        Lanes::new(connect, CancellationToken::new(), 1)
    }

    #[test]
    fn a_lane_asks_to_grow_after_a_run_of_backlogged_takes_only() {
        let mut lane = Lane::new(false);
        for _ in 0..3 {
            assert_eq!(lane.backlog(4), Verdict::Go);
        }
        lane.drained();
        for _ in 0..3 {
            assert_eq!(lane.backlog(4), Verdict::Go);
        }
        assert_eq!(lane.backlog(4), Verdict::Grow);
        assert_eq!(lane.backlog(4), Verdict::Go, "the run starts again");
        assert_eq!(
            lane.idle_at(Duration::from_secs(1)),
            None,
            "the first lane stays"
        );
        let extra = Lane::new(true);
        assert!(extra.idle_at(Duration::from_secs(1)).is_some());
    }

    #[tokio::test]
    async fn lanes_open_up_to_the_most_spaced_apart_and_stop_with_the_replica() {
        let l = lanes();
        let (index, _) = l.claim(3).expect("a second lane may open");
        assert_eq!((index, l.open()), (1, 2));
        assert!(l.claim(3).is_none(), "not within the spacing");
        l.grow.lock().unwrap().last = Some(Instant::now() - GROW_SPACING);
        assert!(l.claim(3).is_some());
        l.grow.lock().unwrap().last = Some(Instant::now() - GROW_SPACING);
        assert!(l.claim(3).is_none(), "at most 3");
        assert_eq!(l.open(), 3);
        l.closed();
        l.closed();
        assert_eq!(l.open(), 1);
        l.failed();
        assert!(l.claim(3).is_none(), "not soon after a lane failed to open");
        l.grow.lock().unwrap().last = Some(Instant::now() - GROW_SPACING);
        assert!(l.claim(3).is_some());
        l.closed();
        l.extras_ended().await;
        l.shutdown.cancel();
        l.grow.lock().unwrap().last = None;
        assert!(l.claim(3).is_none(), "none while stopping");
    }
}
