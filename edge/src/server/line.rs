//! Connections that have not earned their place yet, oldest first — and who makes room.
//!
//! A TCP connection costs the edge nothing until its first byte (the ClientHello's) arrives,
//! and an attacker nothing to open. Were it counted as a handshake from accept, a few hundred
//! sockets that never send a byte would hold every handshake slot and lock out every client
//! that speaks, for as long as the handshake timeout, again and again. So each core keeps two
//! [`Line`]s:
//!
//! - **silent**: accept to first byte. No handshake slot is held; the first byte must come
//!   within `first_byte_timeout_ms`; when `max_silent_connections` are silent the oldest is
//!   reset to admit the new one (`silent_evicted`). A client that speaks at once — every real
//!   one — is silent for one round trip and is never the oldest.
//! - **handshaking**: first byte to 101, at most `max_handshakes_in_flight`. When the line is
//!   full, a connection that starts its handshake takes the place of the oldest one if that
//!   one has held its place for long — four times as long as this core's handshakes take
//!   ([`HandshakePace`]: 50 ms to 1 s) — (`handshake_evicted`): a handshake that stalls after
//!   its ClientHello, or an upgrade request dribbled a byte at a time, cannot keep a real
//!   client (done in a few round trips) out. A younger line is a busy core, not an attack: the
//!   newcomer is refused (`max_handshakes_in_flight`) and the work under way finishes. When
//!   the core is slow its handshakes are too, and the age grows with them.
//!
//! A connection holds a [`Place`] while in a line; its task waits on [`Place::evicted`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How long this core's handshakes take, first byte to 101 (a moving average over the last
/// few dozen), and so how long one may hold its place before a newcomer may take it.
#[derive(Debug)]
pub(crate) struct HandshakePace {
    average_us: Cell<f64>,
}

impl HandshakePace {
    /// Held places younger than this are never taken.
    pub const MIN_AGE: Duration = Duration::from_millis(50);
    /// Places held this long may always be taken.
    pub const MAX_AGE: Duration = Duration::from_secs(1);
    /// The weight of each new handshake in the average.
    const WEIGHT: f64 = 1.0 / 16.0;

    /// A handshake completed in `took`.
    pub fn observe(&self, took: Duration) {
        let avg = self.average_us.get();
        self.average_us
            .set(avg + (took.as_micros() as f64 - avg) * Self::WEIGHT);
    }

    /// How long a place must have been held to be taken: 4 × the average, within bounds.
    pub fn evict_age(&self) -> Duration {
        Duration::from_micros((4.0 * self.average_us.get()) as u64)
            .clamp(Self::MIN_AGE, Self::MAX_AGE)
    }
}

impl Default for HandshakePace {
    /// Until handshakes have completed, the longest age (a core under attack from its start
    /// learns nothing from those that never finish).
    fn default() -> Self {
        Self {
            average_us: Cell::new(Self::MAX_AGE.as_micros() as f64 / 4.0),
        }
    }
}

/// Where a connection in a line stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Waiting,
    /// It moved on (or ended): no longer in the line.
    Left,
    /// Its place was taken; its task is woken to close.
    Evicted,
}

struct Ticket {
    standing: Cell<Standing>,
    joined: Instant,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("standing", &self.standing.get())
            .field("joined", &self.joined)
            .finish_non_exhaustive()
    }
}

/// One core's connections at one stage, oldest first, and how many there are.
#[derive(Debug, Default)]
pub(crate) struct Line {
    order: RefCell<VecDeque<Weak<Ticket>>>,
    waiting: Cell<usize>,
}

impl Line {
    /// Connections in the line right now.
    pub fn len(&self) -> usize {
        self.waiting.get()
    }

    /// A connection joins the line at its end.
    pub fn join(self: &Rc<Self>, now: Instant) -> Place {
        let ticket = Rc::new(Ticket {
            standing: Cell::new(Standing::Waiting),
            joined: now,
            waker: Cell::new(None),
        });
        let mut order = self.order.borrow_mut();
        order.push_back(Rc::downgrade(&ticket));
        // Tickets that left stay in the deque until they reach its front or this sweep: it
        // never holds more than twice the waiting ones (plus a little).
        if order.len() > 2 * self.waiting.get() + 64 {
            order.retain(|t| {
                t.upgrade()
                    .is_some_and(|t| t.standing.get() == Standing::Waiting)
            });
        }
        drop(order);
        self.waiting.set(self.waiting.get() + 1);
        Place {
            line: self.clone(),
            ticket,
        }
    }

    /// Evicts the oldest connection in the line if it joined at or before `joined_by` (any,
    /// when `None`): `true` when one was.
    pub fn evict_oldest(&self, joined_by: Option<Instant>) -> bool {
        let mut order = self.order.borrow_mut();
        while let Some(oldest) = order.front() {
            let Some(ticket) = oldest
                .upgrade()
                .filter(|t| t.standing.get() == Standing::Waiting)
            else {
                order.pop_front();
                continue;
            };
            if joined_by.is_some_and(|by| ticket.joined > by) {
                return false; // the oldest is too young: so is everyone behind it
            }
            order.pop_front();
            ticket.standing.set(Standing::Evicted);
            self.waiting.set(self.waiting.get() - 1);
            if let Some(waker) = ticket.waker.take() {
                waker.wake();
            }
            return true;
        }
        false
    }
}

/// A connection's place in a [`Line`]; leaving it (or dropping it) frees the place.
#[derive(Debug)]
pub(crate) struct Place {
    line: Rc<Line>,
    ticket: Rc<Ticket>,
}

impl Place {
    /// Leaves the line. `false`: too late, the place was taken.
    pub fn leave(&self) -> bool {
        match self.ticket.standing.get() {
            Standing::Waiting => {
                self.ticket.standing.set(Standing::Left);
                self.line.waiting.set(self.line.waiting.get() - 1);
                true
            }
            Standing::Left => true,
            Standing::Evicted => false,
        }
    }

    /// How long the place has been held.
    pub fn held(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.ticket.joined)
    }

    /// Resolves once the place is taken (never, if the connection leaves first).
    pub fn evicted(&self) -> Evicted<'_> {
        Evicted(self)
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.leave();
    }
}

/// See [`Place::evicted`].
pub(crate) struct Evicted<'a>(&'a Place);

impl Future for Evicted<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let ticket = &self.0.ticket;
        if ticket.standing.get() == Standing::Evicted {
            return Poll::Ready(());
        }
        ticket.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_evicted(p: &Place) -> bool {
        let mut wait = std::pin::pin!(p.evicted());
        wait.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn the_oldest_waiting_connection_makes_room_and_those_that_left_never_do() {
        let line = Rc::new(Line::default());
        let now = Instant::now();
        let first = line.join(now);
        let second = line.join(now);
        assert_eq!(line.len(), 2);
        // The first moves on: out of the line.
        assert!(first.leave());
        assert_eq!(line.len(), 1);
        let third = line.join(now);
        // The oldest waiting one (the second, not the one that left) makes room.
        assert!(line.evict_oldest(None));
        assert!(is_evicted(&second) && !second.leave());
        assert!(!is_evicted(&first) && !is_evicted(&third));
        assert_eq!(line.len(), 1);
        // An evicted place dropped does not count twice; one that ends waiting leaves.
        drop(second);
        assert_eq!(line.len(), 1);
        drop(third);
        assert_eq!(line.len(), 0);
        assert!(!line.evict_oldest(None), "nobody to evict");
        assert!(first.leave(), "leaving twice is harmless");
    }

    #[test]
    fn only_a_place_held_long_enough_is_taken() {
        let line = Rc::new(Line::default());
        let t0 = Instant::now();
        let old = line.join(t0);
        let young = line.join(t0 + Duration::from_secs(2));
        // Nobody joined by t0 - 1 s: nobody is evicted.
        assert!(!line.evict_oldest(t0.checked_sub(Duration::from_secs(1))));
        assert!(!is_evicted(&old));
        // By t0 + 1 s the old one qualifies, the young one not.
        assert!(line.evict_oldest(Some(t0 + Duration::from_secs(1))));
        assert!(is_evicted(&old));
        assert!(!line.evict_oldest(Some(t0 + Duration::from_secs(1))));
        assert!(!is_evicted(&young));
    }

    #[test]
    fn the_eviction_age_follows_the_cores_handshakes_within_bounds() {
        let pace = HandshakePace::default();
        assert_eq!(
            pace.evict_age(),
            HandshakePace::MAX_AGE,
            "nothing learned yet"
        );
        for _ in 0..300 {
            pace.observe(Duration::from_millis(2));
        }
        assert_eq!(
            pace.evict_age(),
            HandshakePace::MIN_AGE,
            "fast handshakes: the floor"
        );
        for _ in 0..300 {
            pace.observe(Duration::from_millis(100));
        }
        let age = pace.evict_age();
        assert!(
            (Duration::from_millis(390)..=Duration::from_millis(400)).contains(&age),
            "{age:?}"
        );
        for _ in 0..300 {
            pace.observe(Duration::from_secs(3));
        }
        assert_eq!(
            pace.evict_age(),
            HandshakePace::MAX_AGE,
            "a slow core: the cap"
        );
    }

    #[test]
    fn an_eviction_wakes_the_waiting_connection() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let line = Rc::new(Line::default());
        let old = line.join(Instant::now());
        let flag = std::sync::Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut wait = std::pin::pin!(old.evicted());
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        assert!(line.evict_oldest(None));
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
    }

    #[test]
    fn the_line_stays_bounded_by_the_waiting_ones() {
        let line = Rc::new(Line::default());
        let now = Instant::now();
        let stays = line.join(now);
        for _ in 0..10_000 {
            assert!(line.join(now).leave());
        }
        assert_eq!(line.len(), 1);
        assert!(line.order.borrow().len() <= 2 + 64 + 1, "swept");
        // The one still waiting is the oldest, and still evictable.
        let _new = line.join(now);
        assert!(line.evict_oldest(None) && is_evicted(&stays));
    }
}
