//! Connections that have not spoken yet.
//!
//! A TCP connection costs the edge nothing until its first byte (the ClientHello's) arrives,
//! and an attacker nothing to open: were it counted as a handshake from accept, a few hundred
//! sockets that never send a byte would hold every handshake slot and lock out every client
//! that speaks, for as long as the handshake timeout, again and again. So a connection is
//! *silent* from accept to its first byte: it holds no handshake slot, it must speak within
//! `first_byte_timeout_ms`, and when a core holds `max_silent_connections` of them the oldest
//! is closed to admit the new one (counted: `silent_evicted`). A client that speaks at once —
//! every real one — is silent for one round trip and is never the oldest.
//!
//! [`SilentLine`] is a core's queue of silent connections in accept order; each connection
//! holds a [`Silence`] ticket until it speaks, is evicted, or ends.

use std::cell::Cell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

/// Where a silent connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Silent,
    /// It spoke (or ended): no longer in the line.
    Left,
    /// Closed to admit a newer one; its task is woken to close.
    Evicted,
}

struct Ticket {
    standing: Cell<Standing>,
    waker: Cell<Option<Waker>>,
}

/// A core's silent connections, oldest first, and how many there are.
#[derive(Debug, Default)]
pub(crate) struct SilentLine {
    order: std::cell::RefCell<VecDeque<Weak<Ticket>>>,
    silent: Cell<usize>,
}

impl SilentLine {
    /// Connections silent right now (the metrics keep their own gauge).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.silent.get()
    }

    /// A new connection joins the line. When `cap` are silent already, the oldest of them is
    /// evicted first (`true` is returned: count it).
    pub fn join(self: &Rc<Self>, cap: usize) -> (Silence, bool) {
        let evicted = self.silent.get() >= cap && self.evict_oldest();
        let ticket = Rc::new(Ticket {
            standing: Cell::new(Standing::Silent),
            waker: Cell::new(None),
        });
        let mut order = self.order.borrow_mut();
        order.push_back(Rc::downgrade(&ticket));
        // Tickets that left stay in the line until they reach its front or this sweep: the
        // line never holds more than twice the silent ones (plus a little).
        if order.len() > 2 * self.silent.get() + 64 {
            order.retain(|t| {
                t.upgrade()
                    .is_some_and(|t| t.standing.get() == Standing::Silent)
            });
        }
        drop(order);
        self.silent.set(self.silent.get() + 1);
        (
            Silence {
                line: self.clone(),
                ticket,
            },
            evicted,
        )
    }

    fn evict_oldest(&self) -> bool {
        let mut order = self.order.borrow_mut();
        while let Some(oldest) = order.pop_front() {
            let Some(ticket) = oldest.upgrade() else {
                continue;
            };
            if ticket.standing.get() != Standing::Silent {
                continue;
            }
            ticket.standing.set(Standing::Evicted);
            self.silent.set(self.silent.get() - 1);
            if let Some(waker) = ticket.waker.take() {
                waker.wake();
            }
            return true;
        }
        false
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("standing", &self.standing.get())
            .finish_non_exhaustive()
    }
}

/// A connection's place in its core's [`SilentLine`] until its first byte.
#[derive(Debug)]
pub(crate) struct Silence {
    line: Rc<SilentLine>,
    ticket: Rc<Ticket>,
}

impl Silence {
    /// The connection spoke: it leaves the line. `false`: too late, it was evicted.
    pub fn spoke(&self) -> bool {
        match self.ticket.standing.get() {
            Standing::Silent => {
                self.leave();
                true
            }
            Standing::Left => true,
            Standing::Evicted => false,
        }
    }

    /// Resolves once the connection is evicted (never, if it leaves first).
    pub fn evicted(&self) -> Evicted<'_> {
        Evicted(self)
    }

    fn leave(&self) {
        if self.ticket.standing.get() == Standing::Silent {
            self.ticket.standing.set(Standing::Left);
            self.line.silent.set(self.line.silent.get() - 1);
        }
    }
}

impl Drop for Silence {
    fn drop(&mut self) {
        self.leave();
    }
}

/// See [`Silence::evicted`].
pub(crate) struct Evicted<'a>(&'a Silence);

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

    fn is_evicted(s: &Silence) -> bool {
        let mut wait = std::pin::pin!(s.evicted());
        wait.as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready()
    }

    #[test]
    fn the_oldest_silent_connection_makes_room_and_speakers_never_do() {
        let line = Rc::new(SilentLine::default());
        let (first, e) = line.join(2);
        assert!(!e);
        let (second, e) = line.join(2);
        assert!(!e);
        assert_eq!(line.len(), 2);
        // The first speaks: it is out of the line, and a third fits without evicting.
        assert!(first.spoke());
        assert_eq!(line.len(), 1);
        let (third, e) = line.join(2);
        assert!(!e);
        // Full again: the fourth evicts the oldest silent one (the second, not the speaker).
        let (fourth, e) = line.join(2);
        assert!(e);
        assert!(is_evicted(&second) && !second.spoke());
        assert!(!is_evicted(&first) && !is_evicted(&third) && !is_evicted(&fourth));
        assert_eq!(line.len(), 2);
        // An evicted ticket dropped does not count twice; one that ends silent leaves.
        drop(second);
        drop(third);
        assert_eq!(line.len(), 1);
        drop(fourth);
        assert_eq!(line.len(), 0);
        assert!(first.spoke(), "speaking twice is harmless");
    }

    #[test]
    fn an_eviction_wakes_the_waiting_connection() {
        struct Flag(std::sync::atomic::AtomicBool);
        impl std::task::Wake for Flag {
            fn wake(self: std::sync::Arc<Self>) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let line = Rc::new(SilentLine::default());
        let (old, _) = line.join(1);
        let flag = std::sync::Arc::new(Flag(false.into()));
        let waker = Waker::from(flag.clone());
        let mut wait = std::pin::pin!(old.evicted());
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_pending());
        let (_new, evicted) = line.join(1);
        assert!(evicted);
        assert!(flag.0.load(std::sync::atomic::Ordering::SeqCst), "woken");
        assert!(wait
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready());
    }

    #[test]
    fn the_line_stays_bounded_by_the_silent_ones() {
        let line = Rc::new(SilentLine::default());
        let (stays, _) = line.join(usize::MAX);
        for _ in 0..10_000 {
            let (s, _) = line.join(usize::MAX);
            assert!(s.spoke());
        }
        assert_eq!(line.len(), 1);
        assert!(line.order.borrow().len() <= 2 + 64 + 1, "swept");
        // The one left silent is still the oldest, and still evictable.
        let (_new, evicted) = line.join(2);
        assert!(!evicted);
        let (_newer, evicted) = line.join(2);
        assert!(evicted && is_evicted(&stays));
    }
}
