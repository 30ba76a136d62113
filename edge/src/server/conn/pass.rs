//! The connection loop's guard against spinning: a pass that did not wait must have made
//! progress, and a run of passes that never waited gives the core back.
//!
//! A loop pass starts with a wait (readiness, a deadline, the session's end). Most waits
//! suspend the task; a few can complete at once — a deadline that already fired, plaintext
//! rustls still holds for the relay. If such a source stayed ready without being consumed, the
//! loop would never suspend again: the core at 100 %, its other connections, its timers and its
//! io_uring completions starved (what a fired heartbeat left set once did). So:
//! - every pass reports whether its wait suspended ([`Waited`]) and a progress mark (bytes
//!   moved, one-shot wake-ups consumed); a pass that neither waited nor progressed is a bug —
//!   a debug assertion in test builds, counted and yielded in release;
//! - after [`IMMEDIATE_BUDGET`] passes in a row without a wait the loop yields to the runtime
//!   (other tasks run, completions are reaped), even when each pass made progress: one busy
//!   connection must not starve its core; every [`PARK_EVERY`]th such yield in a row waits for
//!   the runtime's next park, so the core's timers fire too.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Passes in a row that may complete without suspending before the loop yields.
pub(super) const IMMEDIATE_BUDGET: u32 = 32;

/// Budget yields in a row (no wait between them) after which the yield waits for a park.
pub(super) const PARK_EVERY: u32 = 8;

/// What the loop does after a pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AfterPass {
    /// Go on to the next wait.
    Continue,
    /// Yield to the runtime first: the budget of passes without a wait is spent.
    YieldBudget,
    /// The same, the [`PARK_EVERY`]th time in a row: wait for the runtime's park (timers).
    ParkBudget,
    /// Yield to the runtime first: this pass neither waited nor made progress (a bug).
    YieldStalled,
}

/// Tracks the passes of one connection's loop.
#[derive(Debug, Default)]
pub(super) struct PassGuard {
    /// Passes in a row whose wait completed without suspending.
    immediate: u32,
    /// The progress mark after the previous pass.
    last_progress: u64,
    /// Budget yields since the last pass that waited.
    yields: u32,
}

impl PassGuard {
    /// Called once per pass with whether its wait suspended and the connection's progress mark
    /// (a counter that grows with every byte moved and every one-shot wake-up consumed).
    pub(super) fn after_pass(&mut self, waited: bool, progress: u64) -> AfterPass {
        let progressed = progress != self.last_progress;
        self.last_progress = progress;
        if waited {
            self.immediate = 0;
            self.yields = 0;
            return AfterPass::Continue;
        }
        debug_assert!(
            progressed,
            "a connection loop pass completed its wait at once and made no progress: a wake-up \
             source stays ready without being consumed"
        );
        if !progressed {
            self.immediate = 0;
            return AfterPass::YieldStalled;
        }
        self.immediate += 1;
        if self.immediate >= IMMEDIATE_BUDGET {
            self.immediate = 0;
            self.yields += 1;
            if self.yields >= PARK_EVERY {
                self.yields = 0;
                return AfterPass::ParkBudget;
            }
            return AfterPass::YieldBudget;
        }
        AfterPass::Continue
    }
}

/// Polls a future and reports, with its output, whether it ever returned `Pending`.
pub(super) struct Waited<F> {
    inner: F,
    suspended: bool,
}

impl<F> Waited<F> {
    pub(super) fn new(inner: F) -> Self {
        Self {
            inner,
            suspended: false,
        }
    }
}

impl<F: Future + Unpin> Future for Waited<F> {
    type Output = (F::Output, bool);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.inner).poll(cx) {
            Poll::Ready(v) => Poll::Ready((v, self.suspended)),
            Poll::Pending => {
                self.suspended = true;
                Poll::Pending
            }
        }
    }
}

/// A runtime timer, boxed: monoio's is cache-line aligned (128 bytes), and inline in a
/// connection's future (or any long-lived task's) it would align and pad the whole task for
/// one wait.
pub(crate) fn boxed_timer(at: std::time::Instant) -> Pin<Box<monoio::time::Sleep>> {
    Box::pin(monoio::time::sleep_until(at.into()))
}

/// Gives the core back until the runtime's next park: other tasks run, io_uring completions
/// are reaped and due timers fire (monoio fires timers only when it parks, so a plain re-wake
/// would not let them run). Costs at most the timer's 1 ms granularity.
pub(super) async fn yield_to_core() {
    boxed_timer(std::time::Instant::now()).await;
}

/// Gives the core back for one turn: the task is woken at once and queued behind the others;
/// the runtime reaps completions before it runs them. Cheaper than [`yield_to_core`], but due
/// timers wait for a park.
pub(crate) async fn yield_turn() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_passes_never_yield() {
        let mut g = PassGuard::default();
        for _ in 0..10 * IMMEDIATE_BUDGET {
            assert_eq!(g.after_pass(true, 0), AfterPass::Continue);
        }
    }

    #[test]
    fn a_run_of_immediate_passes_yields_once_per_budget() {
        let mut g = PassGuard::default();
        let (mut yields, mut parks) = (0, 0);
        for i in 1..=(u64::from(3 * PARK_EVERY * IMMEDIATE_BUDGET)) {
            match g.after_pass(false, i) {
                AfterPass::Continue => {}
                AfterPass::YieldBudget => yields += 1,
                AfterPass::ParkBudget => parks += 1,
                AfterPass::YieldStalled => panic!("progress was made"),
            }
        }
        assert_eq!((yields + parks, parks), (3 * PARK_EVERY, 3));
        // A wait resets the run.
        assert_eq!(g.after_pass(true, 1000), AfterPass::Continue);
        for i in 1..IMMEDIATE_BUDGET as u64 {
            assert_eq!(g.after_pass(false, 1000 + i), AfterPass::Continue);
        }
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "made no progress"))]
    fn an_immediate_pass_without_progress_is_a_bug() {
        let mut g = PassGuard::default();
        assert_eq!(g.after_pass(false, 7), AfterPass::Continue);
        // Same mark, no wait: in release builds counted and yielded.
        assert_eq!(g.after_pass(false, 7), AfterPass::YieldStalled);
    }

    #[test]
    fn waited_reports_whether_the_future_suspended() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut ready = Waited::new(std::future::ready(5));
        assert_eq!(Pin::new(&mut ready).poll(&mut cx), Poll::Ready((5, false)));
        let mut polls = 0;
        let once_pending = std::future::poll_fn(move |cx| {
            polls += 1;
            if polls == 1 {
                cx.waker().wake_by_ref();
                Poll::Pending
            } else {
                Poll::Ready(6)
            }
        });
        let mut w = Waited::new(Box::pin(once_pending));
        assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        assert_eq!(Pin::new(&mut w).poll(&mut cx), Poll::Ready((6, true)));
    }
}
