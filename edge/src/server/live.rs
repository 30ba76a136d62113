//! The upgraded sessions of one core, reachable from outside their connection task.
//!
//! A revocation (a token's subject or id, a client certificate on a new CRL) must close the
//! sessions it names within a second, and a token that expires mid-session must close at its
//! expiry. Each upgraded connection registers what later decisions need to know about it here
//! and keeps a [`Deadline`] its loop waits on; the core's ticker (every [`TICK`](super::timer::TICK))
//! scans the registry when the shared revocation state changes and, for a session that must
//! go, leaves the close order and fires that deadline. The scan runs only on a change, never
//! per message.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use super::timer::{Deadline, TimerWheel};
use crate::reason::Reason;
use crate::tls::identity::ClientIdentity;

/// A close order: the close code and the reason (a stable counter label).
pub(crate) type CloseOrder = (u16, Reason);

/// What a core knows about one upgraded session.
pub(crate) struct LiveSession {
    /// The token's subject and id, when a token admitted it.
    pub subject: Option<String>,
    pub jti: Option<String>,
    /// The client certificate's identity, under mutual TLS (checked against new CRLs).
    pub identity: Option<Arc<ClientIdentity>>,
    /// Left by the ticker (or at the token's expiry): why the session must close.
    order: Cell<Option<CloseOrder>>,
    /// The connection's loop waits on this besides readiness and its other deadlines.
    wake: Deadline,
}

impl LiveSession {
    /// The close order once the session deadline fired: a revocation's, or the token's expiry.
    pub fn order(&self) -> Option<CloseOrder> {
        self.order.get()
    }

    pub fn deadline(&self) -> &Deadline {
        &self.wake
    }

    /// Orders the session closed at `at` (now for a revocation; the token's expiry otherwise).
    /// The first order stands.
    pub fn close_at(&self, at: Instant, order: CloseOrder) {
        if self.order.get().is_none() {
            self.order.set(Some(order));
            self.wake.set(at);
        }
    }

    /// A token expiry the session closes at, unless something closes it first. The order is
    /// only left once the deadline fires, so an earlier revocation keeps its own reason.
    pub fn expire_at(&self, at: Instant) {
        self.wake.set(at);
    }
}

/// The registry of one core's live sessions.
pub(crate) struct LiveRegistry {
    wheel: Rc<TimerWheel>,
    next_id: Cell<u64>,
    sessions: RefCell<HashMap<u64, Rc<LiveSession>>>,
}

/// A session's place in the registry; leaving it (drop) unregisters the session.
pub(crate) struct LiveEntry {
    id: u64,
    registry: Rc<LiveRegistry>,
    pub session: Rc<LiveSession>,
}

impl LiveEntry {
    /// Its number on this core.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl Drop for LiveEntry {
    fn drop(&mut self) {
        self.registry.sessions.borrow_mut().remove(&self.id);
    }
}

impl LiveRegistry {
    pub fn new(wheel: Rc<TimerWheel>) -> Rc<Self> {
        Rc::new(Self {
            wheel,
            next_id: Cell::new(0),
            sessions: RefCell::new(HashMap::new()),
        })
    }

    pub fn register(
        self: &Rc<Self>,
        subject: Option<String>,
        jti: Option<String>,
        identity: Option<Arc<ClientIdentity>>,
    ) -> LiveEntry {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let session = Rc::new(LiveSession {
            subject,
            jti,
            identity,
            order: Cell::new(None),
            wake: Deadline::new(&self.wheel),
        });
        self.sessions.borrow_mut().insert(id, session.clone());
        LiveEntry {
            id,
            registry: self.clone(),
            session,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sessions.borrow().len()
    }

    /// Orders closed, now, every session `must_close` names; returns how many.
    pub fn close_matching(
        &self,
        now: Instant,
        mut must_close: impl FnMut(&LiveSession) -> Option<CloseOrder>,
    ) -> usize {
        let sessions = self.sessions.borrow();
        let mut closed = 0;
        for session in sessions.values() {
            if session.order().is_some() {
                continue;
            }
            if let Some(order) = must_close(session) {
                session.close_at(now, order);
                closed += 1;
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_matching_session_gets_its_order_and_its_deadline_fires() {
        let t0 = Instant::now();
        let wheel = TimerWheel::new(t0);
        let registry = LiveRegistry::new(wheel.clone());
        let alice = registry.register(Some("alice".into()), Some("j1".into()), None);
        let bob = registry.register(Some("bob".into()), None, None);
        assert_eq!(registry.len(), 2);
        let closed = registry.close_matching(t0, |s| {
            (s.subject.as_deref() == Some("alice")).then_some((1008, Reason::Revoked))
        });
        assert_eq!(closed, 1);
        assert_eq!(alice.session.order(), Some((1008, Reason::Revoked)));
        assert_eq!(bob.session.order(), None);
        wheel.advance(t0 + super::super::timer::TICK * 2);
        assert!(alice.session.deadline().has_fired());
        assert!(!bob.session.deadline().has_fired());
        // A second scan takes bob and leaves alice's first order alone.
        assert_eq!(
            registry.close_matching(t0, |_| Some((1008, Reason::GoingAway))),
            1
        );
        assert_eq!(alice.session.order(), Some((1008, Reason::Revoked)));
        drop(alice);
        assert_eq!(registry.len(), 1, "a dropped entry leaves the registry");
    }
}
