//! `[server] busy_poll_us`: after a connection's work, the core keeps its thread running for
//! this long, polling the ring, instead of sleeping in the kernel at once.
//!
//! A core that sleeps pays a wake-up for the next message: the scheduler's switch back, and on
//! a host that shares the CPU, whatever ran meanwhile. A host that isolates cores for the edge
//! (see `perf-scripts/GUIDE.md`) can spend the CPU to skip that: the next message, if it comes
//! within the window, is reaped by a turn of the spinning loop.
//!
//! How, without forking the runtime: one task per core spins by yielding ([`yield_turn`]:
//! re-queued at once; monoio's loop, finding a task ready, submits and reaps the ring without
//! waiting before it runs it again). Such a core's ring runs completions at every kernel entry
//! (COOP_TASKRUN), not only when parking as a deferred ring would (see `build_runtime`). Each
//! millisecond of spinning it also lets the runtime park on a timer already due: the park enters
//! the ring with a zero timeout and fires every due timer, which monoio fires only when it parks
//! (the core's deadline wheel is driven by one). Every connection pass marks activity; the
//! window restarts at each mark and ends when none came for `busy_poll_us`; then the spinner
//! sleeps until the next mark wakes it. An idle core therefore spins for one window after its
//! last message, never longer.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::metrics::CoreMetrics;

use super::conn::{boxed_timer, yield_turn};

/// How often a spinning core lets its due timers fire.
const TIMERS_EVERY: Duration = Duration::from_millis(1);

/// One core's spinner.
pub(crate) struct BusyPoll {
    window: Duration,
    /// Connection passes so far (the spinner compares it to see activity).
    marks: Cell<u64>,
    /// The spinner, parked until the next mark.
    parked: RefCell<Option<Waker>>,
}

impl BusyPoll {
    /// `None` when `busy_poll_us` is 0 (the default): the core sleeps as soon as it is idle.
    pub(crate) fn new(busy_poll_us: u64) -> Option<Rc<Self>> {
        (busy_poll_us > 0).then(|| {
            Rc::new(Self {
                window: Duration::from_micros(busy_poll_us),
                marks: Cell::new(0),
                parked: RefCell::new(None),
            })
        })
    }

    /// A connection did work: the window restarts (and a parked spinner wakes). A store and
    /// a branch on the data path.
    pub(crate) fn mark(&self) {
        self.marks.set(self.marks.get().wrapping_add(1));
        if let Some(waker) = self.parked.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Waits for a mark newer than `seen`.
    async fn activity_since(&self, seen: u64) {
        std::future::poll_fn(|cx| {
            if self.marks.get() != seen {
                return Poll::Ready(());
            }
            *self.parked.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// The spinner: the core's task for as long as the core serves.
    pub(crate) async fn run(self: Rc<Self>, metrics: std::sync::Arc<CoreMetrics>) {
        let mut seen = self.marks.get();
        loop {
            self.activity_since(seen).await;
            metrics.busy_poll_windows.inc();
            seen = self.marks.get();
            let start = Instant::now();
            let (mut until, mut timers_at) = (start + self.window, start + TIMERS_EVERY);
            loop {
                yield_turn().await;
                metrics.busy_poll_turns.inc();
                let now = Instant::now();
                if now >= timers_at {
                    park_on_due_timer().await;
                    timers_at = now + TIMERS_EVERY;
                }
                let marks = self.marks.get();
                if marks != seen {
                    seen = marks;
                    until = now + self.window;
                } else if now >= until {
                    break;
                }
            }
        }
    }
}

/// Lets the runtime park without waiting: a timer already due makes monoio's park enter the
/// ring with a zero timeout (reaping what completed) and fire every due timer. (A zero-length
/// sleep would not do: monoio rounds a deadline up to its next millisecond, and its park would
/// sleep until then.)
async fn park_on_due_timer() {
    let due = Instant::now()
        .checked_sub(Duration::from_millis(2))
        .unwrap_or_else(Instant::now);
    boxed_timer(due).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_means_no_spinner() {
        assert!(BusyPoll::new(0).is_none());
        assert!(BusyPoll::new(50).is_some());
    }

    #[test]
    fn a_mark_wakes_the_parked_spinner_once() {
        use std::future::Future;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
        let busy = BusyPoll::new(10).expect("a spinner");
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let mut wait = Box::pin(busy.activity_since(0));
        assert!(wait.as_mut().poll(&mut cx).is_pending(), "no mark yet");
        busy.mark();
        busy.mark();
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "one wake for two marks");
        assert!(wait.as_mut().poll(&mut cx).is_ready());
    }
}
