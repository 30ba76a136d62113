//! A connection's phases, each holding what only it owns: handshaking (TLS and the upgrade
//! request) → upgrading (admitted, waiting for the replay check or the upstream's 101) → open
//! (a WebSocket session and its app). What every phase needs — the socket, the record layer,
//! the plaintext, the loop's deadlines — stays on the connection.

use crate::limits::ConnectionLimiter;
use crate::upstream::relay::Route;
use crate::ws::{self, Session};

use super::super::live::LiveEntry;
use super::app::App;
use crate::auth::admission::Admitted;
use crate::limits::identity_slots::IdentitySlot;

/// Where a connection is in its life.
// One per connection, inside its task: boxing the larger variants would add an allocation.
#[allow(clippy::large_enum_variant)]
pub(super) enum Phase {
    /// The TLS handshake and the HTTP upgrade request, until the request is admitted.
    Handshaking,
    /// Admitted: waiting for its token id's replay check on the owner core, or for its
    /// upstream connection (proxy mode), before the 101. Boxed, like the wait that finishes
    /// it: only connections with a replay check or an upstream pass through this phase.
    Upgrading(Box<PendingUpgrade>),
    /// Upgraded: frames through the session, messages to its app.
    Open { session: Session, open: Upgraded },
    /// Upgraded, but the session was lost to a panic (its state is suspect): only the close is
    /// left.
    Broken(Upgraded),
    /// The upgrade was refused after its app was made (its upstream opened): the app is kept
    /// only to close that upstream with the connection.
    Refused(App),
}

/// An upgrade request that passed every synchronous check.
pub(super) struct PendingUpgrade {
    pub(super) request: ws::UpgradeRequest,
    pub(super) admitted: Admitted,
    /// Proxy mode: where the session goes.
    pub(super) route: Option<Route>,
    /// The path is a pub/sub route.
    pub(super) pubsub: bool,
    /// The permessage-deflate agreement the 101 will state.
    pub(super) deflate: Option<wssedge_proto::ws::deflate::DeflateAgreement>,
}

/// What an upgraded connection owns besides its session.
pub(super) struct Upgraded {
    /// What the session does with its messages.
    pub(super) app: App,
    /// This session's place in the core's live registry (revocations, token expiry reach the
    /// connection through its deadline).
    pub(super) live: LiveEntry,
    /// The session's rate limits (its own and its identity's); `None`: unlimited.
    pub(super) limiter: Option<ConnectionLimiter>,
    /// This session's place in its identity's `per_identity_connections` count (`None`: not
    /// counted), given back when the connection goes.
    pub(super) _identity_slot: Option<IdentitySlot>,
    /// In a fleet: the session as the fleet lists and counts it, until it ends.
    pub(super) _fleet: Option<Box<crate::fleet::FleetSession>>,
    /// The request target it was admitted to (redacted), for its close record.
    pub(super) path: String,
}

impl Phase {
    /// The 101 was sent (whatever happened to the session since).
    pub(super) fn is_upgraded(&self) -> bool {
        matches!(self, Phase::Open { .. } | Phase::Broken(_))
    }

    pub(super) fn session(&self) -> Option<&Session> {
        match self {
            Phase::Open { session, .. } => Some(session),
            _ => None,
        }
    }

    pub(super) fn session_mut(&mut self) -> Option<&mut Session> {
        match self {
            Phase::Open { session, .. } => Some(session),
            _ => None,
        }
    }

    pub(super) fn upgraded(&self) -> Option<&Upgraded> {
        match self {
            Phase::Open { open, .. } | Phase::Broken(open) => Some(open),
            _ => None,
        }
    }

    pub(super) fn upgraded_mut(&mut self) -> Option<&mut Upgraded> {
        match self {
            Phase::Open { open, .. } | Phase::Broken(open) => Some(open),
            _ => None,
        }
    }

    /// The session's app, once made.
    pub(super) fn app(&self) -> Option<&App> {
        match self {
            Phase::Refused(app) => Some(app),
            _ => self.upgraded().map(|u| &u.app),
        }
    }

    pub(super) fn app_mut(&mut self) -> Option<&mut App> {
        match self {
            Phase::Refused(app) => Some(app),
            _ => self.upgraded_mut().map(|u| &mut u.app),
        }
    }

    /// The session and its app, each when the phase has it (an app outlives a broken session
    /// and a refused upgrade).
    pub(super) fn session_and_app_mut(&mut self) -> (Option<&mut Session>, Option<&mut App>) {
        match self {
            Phase::Open { session, open } => (Some(session), Some(&mut open.app)),
            Phase::Broken(open) => (None, Some(&mut open.app)),
            Phase::Refused(app) => (None, Some(app)),
            Phase::Handshaking | Phase::Upgrading(_) => (None, None),
        }
    }

    /// Takes the admitted request out to finish its upgrade; the connection counts as
    /// handshaking (its deadline is the handshake's) until the 101.
    pub(super) fn take_pending(&mut self) -> Option<Box<PendingUpgrade>> {
        if !matches!(self, Phase::Upgrading(_)) {
            return None;
        }
        match std::mem::replace(self, Phase::Handshaking) {
            Phase::Upgrading(pending) => Some(pending),
            _ => None,
        }
    }

    /// A panic left the session's state suspect: it is dropped, and what the connection owns as
    /// upgraded stays for the close.
    pub(super) fn break_session(&mut self) {
        if !matches!(self, Phase::Open { .. }) {
            return;
        }
        if let Phase::Open { open, .. } = std::mem::replace(self, Phase::Handshaking) {
            *self = Phase::Broken(open);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::live::LiveRegistry;
    use std::time::Instant;

    use super::super::super::timer::TimerWheel;
    use super::*;
    use crate::ws::{SessionLimits, SessionState};

    fn upgraded(registry: &std::rc::Rc<LiveRegistry>) -> Upgraded {
        Upgraded {
            app: App::Echo,
            live: registry.register(Some("sub".into()), None, None),
            limiter: None,
            _identity_slot: None,
            _fleet: None,
            path: "/chat".into(),
        }
    }

    fn session() -> Session {
        Session::new(SessionLimits {
            max_frame_bytes: 1024,
            max_message_bytes: 1024,
        })
    }

    #[test]
    fn a_handshaking_connection_owns_no_session_and_no_app() {
        let mut phase = Phase::Handshaking;
        assert!(!phase.is_upgraded());
        assert!(phase.session().is_none() && phase.app().is_none());
        assert!(phase.take_pending().is_none());
        phase.break_session();
        assert!(matches!(phase, Phase::Handshaking));
    }

    #[test]
    fn an_open_connection_owns_its_session_and_app() {
        let registry = LiveRegistry::new(TimerWheel::new(Instant::now()));
        let mut phase = Phase::Open {
            session: session(),
            open: upgraded(&registry),
        };
        assert!(phase.is_upgraded());
        assert_eq!(
            phase.session().map(Session::state),
            Some(SessionState::Open)
        );
        assert!(matches!(phase.app(), Some(App::Echo)));
        assert!(
            phase.take_pending().is_none(),
            "only an upgrading phase has one"
        );
        assert!(matches!(phase, Phase::Open { .. }));
    }

    #[test]
    fn a_panic_drops_the_session_and_keeps_the_rest_for_the_close() {
        let registry = LiveRegistry::new(TimerWheel::new(Instant::now()));
        let mut phase = Phase::Open {
            session: session(),
            open: upgraded(&registry),
        };
        phase.break_session();
        assert!(phase.is_upgraded(), "the close record is still written");
        assert!(phase.session().is_none());
        assert_eq!(phase.upgraded().map(|u| u.path.as_str()), Some("/chat"));
        assert!(phase.app_mut().is_some(), "its upstream is still closed");
        phase.break_session();
        assert!(matches!(phase, Phase::Broken(_)));
    }
}
