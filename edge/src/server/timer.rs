//! One hashed timer wheel per core for every connection deadline.
//!
//! Thousands of connections each have a deadline (handshake, idle, write) that moves on every
//! read. A runtime timer per connection would mean a timer-tree insert and removal per message;
//! here moving a deadline is a `Cell` store. The wheel is visited once per tick by the core's
//! ticker task: an entry whose deadline moved later is re-slotted, one that has passed fires
//! and wakes its connection. Expiry never cancels I/O by itself: the connection's readiness
//! wait sees the expiry and the connection decides (close, or shut the socket down under a
//! stuck write).
//!
//! A fired deadline is consumed by the wait that sees it: [`Deadline::expired`] completes once
//! per firing and leaves the deadline unset. A loop that waits on a deadline again therefore
//! waits for a new instant it set, never on the old one still "fired" — which would complete
//! every wait at once and spin the core.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Tick of the wheel: deadlines fire at most this late.
pub const TICK: Duration = Duration::from_millis(50);
const SLOTS: usize = 512;

#[derive(Debug)]
struct Entry {
    at: Cell<Option<Instant>>,
    /// The tick whose slot holds this entry, if any.
    slotted: Cell<Option<u64>>,
    fired: Cell<bool>,
    /// Firings consumed by the waits that saw them, ever (a progress mark for loops that
    /// must never complete a wait twice on one firing).
    consumed: Cell<u64>,
    waker: RefCell<Option<Waker>>,
}

/// The per-core wheel.
#[derive(Debug)]
pub struct TimerWheel {
    origin: Instant,
    /// The next tick to visit.
    cursor: Cell<u64>,
    slots: RefCell<Vec<Vec<Weak<Entry>>>>,
}

impl TimerWheel {
    pub fn new(origin: Instant) -> Rc<Self> {
        Rc::new(Self {
            origin,
            cursor: Cell::new(0),
            slots: RefCell::new(vec![Vec::new(); SLOTS]),
        })
    }

    fn tick_of(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.origin);
        // Round up: a deadline never fires before its instant.
        since.as_nanos().div_ceil(TICK.as_nanos()) as u64
    }

    fn slot(&self, entry: &Rc<Entry>, at: Instant) {
        let tick = self.tick_of(at).max(self.cursor.get());
        if let Some(current) = entry.slotted.get() {
            if current <= tick {
                // Already slotted no later than needed; it is re-slotted lazily when visited.
                return;
            }
        }
        entry.slotted.set(Some(tick));
        self.slots.borrow_mut()[(tick % SLOTS as u64) as usize].push(Rc::downgrade(entry));
    }

    /// Visits every tick up to `now`, firing the deadlines that have passed. Returns how many fired.
    pub fn advance(&self, now: Instant) -> usize {
        let target = self.tick_of(now);
        let mut fired = 0;
        while self.cursor.get() <= target {
            let tick = self.cursor.get();
            let index = (tick % SLOTS as u64) as usize;
            let due = std::mem::take(&mut self.slots.borrow_mut()[index]);
            self.cursor.set(tick + 1);
            let mut later_rounds = Vec::new();
            for weak in due {
                let Some(entry) = weak.upgrade() else {
                    continue;
                };
                match entry.slotted.get() {
                    Some(t) if t == tick => {}
                    // Same slot, a later revolution of the wheel: not yet.
                    Some(t) if t > tick && t % SLOTS as u64 == index as u64 => {
                        later_rounds.push(weak);
                        continue;
                    }
                    // A stale duplicate: the entry was moved to an earlier slot.
                    _ => continue,
                }
                entry.slotted.set(None);
                match entry.at.get() {
                    None => {}
                    Some(at) if at <= now => {
                        entry.fired.set(true);
                        fired += 1;
                        if let Some(w) = entry.waker.borrow_mut().take() {
                            w.wake();
                        }
                    }
                    Some(at) => self.slot(&entry, at),
                }
            }
            self.slots.borrow_mut()[index].extend(later_rounds);
            // Nothing can be due between now and the next tick; stop once past `now`.
        }
        fired
    }

    /// Entries still slotted (including lazily stale ones), for tests and metrics.
    pub fn len(&self) -> usize {
        self.slots.borrow().iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's deadline. Moving it is cheap; dropping it removes it from the wheel (lazily).
#[derive(Debug)]
pub struct Deadline {
    wheel: Rc<TimerWheel>,
    entry: Rc<Entry>,
}

impl Deadline {
    pub fn new(wheel: &Rc<TimerWheel>) -> Self {
        Self {
            wheel: wheel.clone(),
            entry: Rc::new(Entry {
                at: Cell::new(None),
                slotted: Cell::new(None),
                fired: Cell::new(false),
                consumed: Cell::new(0),
                waker: RefCell::new(None),
            }),
        }
    }

    /// Sets (or moves) the deadline.
    pub fn set(&self, at: Instant) {
        self.entry.at.set(Some(at));
        self.entry.fired.set(false);
        self.wheel.slot(&self.entry, at);
    }

    /// Removes the deadline; a pending [`Deadline::expired`] then never completes.
    pub fn clear(&self) {
        self.entry.at.set(None);
        self.entry.fired.set(false);
    }

    pub fn has_fired(&self) -> bool {
        self.entry.fired.get()
    }

    /// How many firings of this deadline its waits have consumed.
    pub fn consumed(&self) -> u64 {
        self.entry.consumed.get()
    }

    /// Whether a deadline is set (fired or not).
    pub fn is_set(&self) -> bool {
        self.entry.at.get().is_some()
    }

    /// Completes once the wheel has found the deadline passed, and consumes the firing: the
    /// deadline is then unset until set again.
    pub fn expired(&self) -> Expired<'_> {
        Expired { deadline: self }
    }
}

/// The future of [`Deadline::expired`].
pub struct Expired<'a> {
    deadline: &'a Deadline,
}

impl Future for Expired<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let entry = &self.deadline.entry;
        if entry.fired.get() {
            entry.fired.set(false);
            entry.at.set(None);
            entry.consumed.set(entry.consumed.get() + 1);
            return Poll::Ready(());
        }
        let mut w = entry.waker.borrow_mut();
        match &*w {
            Some(old) if old.will_wake(cx.waker()) => {}
            _ => *w = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_at_or_after_the_deadline_never_before() {
        let t0 = Instant::now();
        let wheel = TimerWheel::new(t0);
        let d = Deadline::new(&wheel);
        d.set(t0 + Duration::from_millis(120));
        assert_eq!(wheel.advance(t0 + Duration::from_millis(100)), 0);
        assert!(!d.has_fired());
        assert_eq!(wheel.advance(t0 + Duration::from_millis(200)), 1);
        assert!(d.has_fired());
    }

    #[test]
    fn moving_later_reslots_and_moving_earlier_fires_earlier() {
        let t0 = Instant::now();
        let wheel = TimerWheel::new(t0);
        let d = Deadline::new(&wheel);
        d.set(t0 + Duration::from_millis(100));
        d.set(t0 + Duration::from_secs(60)); // an idle deadline pushed by a read
        assert_eq!(wheel.advance(t0 + Duration::from_secs(1)), 0);
        assert!(!d.has_fired());
        d.set(t0 + Duration::from_millis(1500));
        assert_eq!(wheel.advance(t0 + Duration::from_secs(2)), 1);
        assert!(d.has_fired());
    }

    #[test]
    fn deadlines_beyond_one_revolution_wait_their_turn() {
        let t0 = Instant::now();
        let wheel = TimerWheel::new(t0);
        let d = Deadline::new(&wheel);
        let far = TICK * (SLOTS as u32 * 3 + 7);
        d.set(t0 + far);
        assert_eq!(wheel.advance(t0 + far - TICK * 2), 0);
        assert_eq!(wheel.advance(t0 + far + TICK), 1);
    }

    #[test]
    fn cleared_and_dropped_deadlines_never_fire() {
        let t0 = Instant::now();
        let wheel = TimerWheel::new(t0);
        let a = Deadline::new(&wheel);
        let b = Deadline::new(&wheel);
        a.set(t0 + Duration::from_millis(60));
        b.set(t0 + Duration::from_millis(60));
        a.clear();
        drop(b);
        assert_eq!(wheel.advance(t0 + Duration::from_secs(1)), 0);
        assert!(wheel.is_empty());
    }

    #[test]
    fn expired_future_wakes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let t0 = Instant::now();
        let wheel = TimerWheel::new(t0);
        let d = Deadline::new(&wheel);
        d.set(t0 + Duration::from_millis(10));
        let mut fut = std::pin::pin!(d.expired());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        wheel.advance(t0 + Duration::from_millis(100));
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(fut.as_mut().poll(&mut cx).is_ready());
    }

    #[test]
    fn a_firing_is_consumed_by_the_wait_that_sees_it() {
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let t0 = Instant::now();
        let wheel = TimerWheel::new(t0);
        let d = Deadline::new(&wheel);
        d.set(t0 + Duration::from_millis(10));
        wheel.advance(t0 + Duration::from_millis(100));
        assert!(std::pin::pin!(d.expired()).poll(&mut cx).is_ready());
        assert!(!d.is_set() && !d.has_fired());
        assert_eq!(d.consumed(), 1);
        // A second wait on the same deadline does not complete until it is set and fires again.
        assert!(std::pin::pin!(d.expired()).poll(&mut cx).is_pending());
        d.set(t0 + Duration::from_millis(150));
        assert!(std::pin::pin!(d.expired()).poll(&mut cx).is_pending());
        wheel.advance(t0 + Duration::from_millis(200));
        assert!(std::pin::pin!(d.expired()).poll(&mut cx).is_ready());
        assert!(std::pin::pin!(d.expired()).poll(&mut cx).is_pending());
    }
}
