//! Deadlines shorter than tokio's timer can wait, kept without waking anyone.
//!
//! Tokio's timer counts whole milliseconds. A 300 µs sleep ends 1–2 ms later, and a
//! finer timer (a `timerfd` per wait) costs a system call and a wake-up of its own. Under
//! load, though, a process wakes many times a millisecond anyway, for a socket read or a
//! reply. [`Due`] ends at the first of those wake-ups after its deadline. Each runtime
//! worker calls [`fire_due`] when it unparks (`server::main_with` installs it with
//! `on_thread_unpark`), and that call wakes every `Due` whose time has come. The check costs
//! one atomic load and a clock read per wake-up. A `Due` is also polled again whenever its
//! task wakes for another reason.
//!
//! Nothing guarantees another wake-up, so a `Due` is for waits that a millisecond timer
//! may end later with no harm: the caller races it with `tokio::time::sleep` for the same
//! deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

/// Where nanosecond counts start: the first use in this process.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The earliest deadline waiting (ns since [`EPOCH`]), `u64::MAX` when none.
static EARLIEST: AtomicU64 = AtomicU64::new(u64::MAX);

/// Who waits until when: (deadline, the `Due`'s id, its task's waker). At most one entry
/// per `Due`: polled again, it replaces its waker.
static WAITING: Mutex<Vec<(u64, u64, Waker)>> = Mutex::new(Vec::new());

/// Ids of `Due`s, so that each finds (and on drop removes) only its own entry.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_nanos()).unwrap_or(u64::MAX - 1)
}

/// Wakes every [`Due`] whose deadline has passed. Cheap when none has: call it on every
/// wake-up of a runtime thread.
pub fn fire_due() {
    let earliest = EARLIEST.load(Ordering::Acquire);
    if earliest == u64::MAX {
        return;
    }
    let now = nanos(Instant::now());
    if now < earliest {
        return;
    }
    let due: Vec<Waker> = {
        let mut waiting = WAITING.lock().expect("piggyback lock");
        let mut due = Vec::new();
        waiting.retain(|(at, _, waker)| {
            if *at <= now {
                due.push(waker.clone());
                false
            } else {
                true
            }
        });
        EARLIEST.store(earliest_of(&waiting), Ordering::Release);
        due
    };
    for waker in due {
        waker.wake();
    }
}

fn earliest_of(waiting: &[(u64, u64, Waker)]) -> u64 {
    waiting.iter().map(|(at, ..)| *at).min().unwrap_or(u64::MAX)
}

/// A future that is ready at the first wake-up of the process at or after `at` (see the
/// module's note: race it with a real timer).
#[derive(Debug)]
pub struct Due {
    at: u64,
    id: u64,
}

impl Due {
    pub fn at(at: Instant) -> Self {
        Self {
            at: nanos(at),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl Future for Due {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if nanos(Instant::now()) >= self.at {
            return Poll::Ready(());
        }
        let mut waiting = WAITING.lock().expect("piggyback lock");
        match waiting.iter_mut().find(|(_, id, _)| *id == self.id) {
            Some((_, _, waker)) => waker.clone_from(cx.waker()),
            None => waiting.push((self.at, self.id, cx.waker().clone())),
        }
        EARLIEST.fetch_min(self.at, Ordering::AcqRel);
        Poll::Pending
    }
}

impl Drop for Due {
    fn drop(&mut self) {
        if EARLIEST.load(Ordering::Acquire) > self.at {
            return; // fired (or never registered): nothing of ours is left
        }
        let mut waiting = WAITING.lock().expect("piggyback lock");
        waiting.retain(|(_, id, _)| *id != self.id);
        EARLIEST.store(earliest_of(&waiting), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_past_deadline_is_ready_at_once() {
        Due::at(Instant::now()).await;
    }

    #[test]
    fn a_wake_up_past_the_deadline_ends_the_wait() {
        let at = Instant::now() + Duration::from_millis(5);
        let mut due = Box::pin(Due::at(at));
        let (waker, woken) = flag();
        let mut cx = Context::from_waker(&waker);
        assert!(due.as_mut().poll(&mut cx).is_pending());
        fire_due();
        assert!(!woken.load(Ordering::SeqCst), "not yet due");
        while Instant::now() < at {
            std::thread::yield_now();
        }
        fire_due();
        assert!(
            woken.load(Ordering::SeqCst),
            "the wake-up after the deadline woke it"
        );
        assert!(due.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_dropped_wait_leaves_nothing_behind() {
        let at = Instant::now() + Duration::from_secs(3600);
        let mut due = Box::pin(Due::at(at));
        let (waker, _) = flag();
        assert!(
            due.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let id = due.id;
        let held = || {
            WAITING
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, i, _)| *i == id)
                .count()
        };
        assert_eq!(held(), 1);
        assert!(
            due.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        assert_eq!(held(), 1, "polled again, it keeps one entry");
        let other = Due::at(at);
        let mut other = Box::pin(other);
        assert!(
            other
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        drop(due);
        assert_eq!(held(), 0);
        let other_id = other.id;
        assert!(
            WAITING
                .lock()
                .unwrap()
                .iter()
                .any(|(_, i, _)| *i == other_id),
            "another wait with the same deadline keeps its entry"
        );
    }

    fn flag() -> (Waker, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl std::task::Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let woken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        (Waker::from(std::sync::Arc::new(Flag(woken.clone()))), woken)
    }
}
