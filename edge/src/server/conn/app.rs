//! The app seam: what an open session does with its client's messages.
//!
//! [`App`] is the one place that decides it — echoed back ([`App::Echo`]), relayed to an
//! upstream member ([`App::Proxy`]), or read as pub/sub requests with publications fanned out
//! to it ([`App::PubSub`]). The connection loop around it only moves bytes, keeps deadlines
//! and applies limits; a new kind of session is a new variant here and its arms, not edits
//! across the loop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::pubsub::session::{PubsubSession, Pumped};
use crate::reason::Reason;
use crate::ws::{Message, Session};

use super::super::core::Core;
use super::proxy::{Proxy, Relayed};

/// What a session does with its messages.
pub(super) enum App {
    /// Every message goes back to its client.
    Echo,
    /// Every message goes to one upstream member, and the member's messages to the client.
    /// Boxed: the relay is most of a kilobyte, and an echo connection's task should not carry
    /// that space (the task's size is every idle connection's memory).
    Proxy(Box<Proxy>),
    /// Requests to subscribe, unsubscribe and publish; the topics' publications to the
    /// client. Boxed for the same reason as the relay.
    PubSub(Box<PubsubSession>),
}

/// What a client over one of its message rates costs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OverRate {
    /// The session is closed (1008 `rate_limited`).
    Close,
    /// The message is dropped whole and the session stays (lossy routes: market data).
    Drop,
}

impl App {
    /// A whole message from the client, within its rates.
    pub(super) fn on_message(
        &mut self,
        session: &mut Session,
        message: Message,
        now: Instant,
        outgoing: &crate::compression::Outgoing,
    ) {
        match self {
            App::Echo => outgoing.send(session, message.kind, message.payload),
            App::Proxy(p) => {
                p.relay.forward(message);
                p.hop_started.get_or_insert(now);
            }
            App::PubSub(p) => p.on_message(session, message),
        }
    }

    /// Whether the client's own socket may be read (pub/sub: not while its asks to the topic
    /// owners are at their bound).
    pub(super) fn accepts_input(&self) -> bool {
        match self {
            App::PubSub(p) => p.accepts_input(),
            App::Echo | App::Proxy(_) => true,
        }
    }

    /// Resolves when something arrived for the client from elsewhere on the edge (pub/sub:
    /// answers, publications); never for the others.
    pub(super) async fn arrived(&self) {
        match self {
            App::PubSub(p) => p.ready().await,
            App::Echo | App::Proxy(_) => std::future::pending().await,
        }
    }

    /// Hands what arrived for the client to its session, within `room` bytes (pub/sub);
    /// nothing for the others.
    pub(super) fn pump(&mut self, session: &mut Session, room: usize, now: Instant) -> Pumped {
        match self {
            App::PubSub(p) => p.pump(session, room, now),
            App::Echo | App::Proxy(_) => Pumped::default(),
        }
    }

    /// Arrivals still held for the client (what the last pump had no room for).
    pub(super) fn holds_arrivals(&self) -> bool {
        match self {
            App::PubSub(p) => p.has_queued(),
            App::Echo | App::Proxy(_) => false,
        }
    }

    /// The next wait for arrivals resolves at once.
    pub(super) fn rearm_arrivals(&self) {
        if let App::PubSub(p) = self {
            p.rearm();
        }
    }

    /// What serves the session, for its span.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            App::Echo => "echo",
            App::Proxy(_) => "proxy",
            App::PubSub(_) => "pubsub",
        }
    }

    pub(super) fn is_pubsub(&self) -> bool {
        matches!(self, App::PubSub(_))
    }

    /// A message over the client's rate: what it costs.
    pub(super) fn over_rate(&self) -> OverRate {
        match self {
            App::Proxy(p) if p.relay.is_lossy() => OverRate::Drop,
            _ => OverRate::Close,
        }
    }

    /// The client closed the session with `code` (`None`: an empty close frame).
    pub(super) fn on_client_closed(&mut self, code: Option<u16>, reason: &str) {
        if let App::Proxy(p) = self {
            // The client's close goes on to the upstream with its code; an empty close stays
            // empty.
            p.relay.close_with(code, reason);
        }
    }

    /// The session is ending on our side (`reason`: why, for the upstream's close frame).
    pub(super) fn on_session_closing(&mut self, reason: Reason) {
        if let App::Proxy(p) = self {
            p.relay.close(1001, reason);
        }
    }

    /// The session is closed for the core's buffer budget: what the client sent that the app
    /// has not begun to deliver goes too.
    pub(super) fn on_budget_close(&mut self) {
        if let App::Proxy(p) = self {
            p.relay.discard_unstarted();
            p.relay.close(1001, Reason::BufferBudget);
        }
    }

    /// Whether the app's far side may be read now (`client_outbound`: bytes queued for the
    /// client); never for echo.
    pub(super) fn reads_allowed(&mut self, core: &Core, client_outbound: usize) -> bool {
        match self {
            App::Proxy(p) => p.reads_allowed(core, client_outbound),
            App::Echo | App::PubSub(_) => false,
        }
    }

    /// The app's far side is readable: what it produced goes to the client's `session`
    /// (`None` for echo, which has no far side).
    pub(super) fn on_readable(
        &mut self,
        core: &Core,
        peer: SocketAddr,
        session: Option<&mut Session>,
        client_outbound: usize,
    ) -> Option<Relayed> {
        match self {
            App::Proxy(p) => Some(p.relay_to_client(core, peer, session, client_outbound)),
            App::Echo | App::PubSub(_) => None,
        }
    }

    /// Writes what the app's far side takes now: bytes written, or why the far side is given
    /// up on (`None` for echo).
    pub(super) fn write(
        &mut self,
        write_timeout: Duration,
        peer: SocketAddr,
    ) -> Option<Result<u64, Reason>> {
        match self {
            App::Proxy(p) => Some(p.write(write_timeout, peer)),
            App::Echo | App::PubSub(_) => None,
        }
    }

    /// The app's far side broke: it is given up on (no close handshake with it). False for
    /// echo, which has none.
    pub(super) fn far_side_failed(&mut self) -> bool {
        match self {
            App::Proxy(p) => {
                p.relay.abandon();
                true
            }
            App::Echo | App::PubSub(_) => false,
        }
    }

    /// Bytes the app holds for the session's peers: partial messages and what waits to be
    /// written (counted against the core's buffer budget).
    pub(super) fn held_bytes(&self) -> usize {
        match self {
            App::Echo | App::PubSub(_) => 0,
            App::Proxy(p) => p.relay.buffered() + p.relay.pending_output(),
        }
    }

    /// Bytes queued toward the app's far side (nothing for echo).
    pub(super) fn pending_output(&self) -> usize {
        match self {
            App::Echo | App::PubSub(_) => 0,
            App::Proxy(p) => p.relay.pending_output(),
        }
    }

    /// The app's far side has bytes held that its socket's readiness does not announce: read
    /// again without waiting.
    pub(super) fn holds_more(&self) -> bool {
        self.proxy().is_some_and(|p| p.relay.holds_more())
    }

    /// Resolves when the app's far side is readable; never for echo.
    pub(super) async fn readable(&self) -> std::io::Result<()> {
        match self {
            App::Proxy(p) => p.relay.readable().await,
            App::Echo | App::PubSub(_) => std::future::pending().await,
        }
    }

    /// Resolves when the app's far side takes more; never for echo.
    pub(super) async fn writable(&self) -> std::io::Result<()> {
        match self {
            App::Proxy(p) => p.relay.writable().await,
            App::Echo | App::PubSub(_) => std::future::pending().await,
        }
    }

    /// Resolves when the far side took nothing for the write timeout; never for echo.
    pub(super) async fn stalled(&self) {
        match self {
            App::Proxy(p) => p.write_deadline.expired().await,
            App::Echo | App::PubSub(_) => std::future::pending().await,
        }
    }

    /// Resolves when the far side left a frame or message half-sent for `frame_timeout_ms`;
    /// never for echo or pub/sub.
    pub(super) async fn frame_timed_out(&self) {
        match self {
            App::Proxy(p) => p.frame_deadline.expired().await,
            App::Echo | App::PubSub(_) => std::future::pending().await,
        }
    }

    /// The far side's frame deadline fired: renewed when it completed a message since (see
    /// [`Proxy::renew_frame_deadline`]).
    pub(super) fn renew_frame_deadline(&self, core: &Core) -> bool {
        self.proxy().is_some_and(|p| p.renew_frame_deadline(core))
    }

    /// Proxy mode's side, when there is one.
    pub(super) fn proxy(&self) -> Option<&Proxy> {
        match self {
            App::Proxy(p) => Some(p),
            App::Echo | App::PubSub(_) => None,
        }
    }

    pub(super) fn proxy_mut(&mut self) -> Option<&mut Proxy> {
        match self {
            App::Proxy(p) => Some(p),
            App::Echo | App::PubSub(_) => None,
        }
    }

    /// Firings of the app's own deadlines consumed (the loop's progress mark).
    pub(super) fn deadlines_consumed(&self) -> u64 {
        self.proxy().map_or(0, |p| {
            p.write_deadline.consumed() + p.frame_deadline.consumed()
        })
    }

    /// When the oldest message the app relayed in this step was read; cleared.
    pub(super) fn take_hop_start(&mut self) -> Option<Instant> {
        self.proxy_mut().and_then(|p| p.hop_started.take())
    }

    /// The app's far side, taken out to be closed beside the client (`None` for echo).
    pub(super) fn take_far_side(&mut self) -> Option<Box<Proxy>> {
        match self {
            App::Proxy(_) => match std::mem::replace(self, App::Echo) {
                App::Proxy(p) => Some(p),
                _ => None,
            },
            App::Echo | App::PubSub(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ws::{MessageKind, SessionLimits};

    fn session() -> Session {
        Session::new(SessionLimits {
            max_frame_bytes: 1 << 16,
            max_message_bytes: 1 << 16,
        })
    }

    #[test]
    fn echo_sends_each_message_back_to_its_client() {
        let mut app = App::Echo;
        let mut s = session();
        let message = Message {
            kind: MessageKind::Text,
            payload: Bytes::from_static(b"hello").into(),
        };
        let metrics = std::sync::Arc::new(crate::metrics::CoreMetrics::new(0, 0));
        let outgoing = crate::compression::Outgoing::new(&Default::default(), metrics);
        app.on_message(&mut s, message, Instant::now(), &outgoing);
        let frame = s.poll_transmit().expect("the echo is queued");
        let mut wire = Vec::new();
        let mut outbox = crate::ws::Outbox::new();
        outbox.push(frame);
        outbox.fill(&mut wire, usize::MAX);
        assert_eq!(&wire[..], b"\x81\x05hello");
        assert!(s.poll_transmit().is_none());
    }

    #[test]
    fn echo_compresses_where_the_client_agreed_and_the_message_is_large_enough() {
        use wssedge_proto::ws::deflate::DeflateParams;
        let mut app = App::Echo;
        let mut s = session().with_deflate(DeflateParams {
            peer_no_context_takeover: true,
            own_no_context_takeover: true,
            own_window_bits: 15,
            level: 3,
        });
        let metrics = std::sync::Arc::new(crate::metrics::CoreMetrics::new(0, 0));
        let cfg = crate::compression::CompressionConfig::default();
        let outgoing = crate::compression::Outgoing::new(&cfg, metrics.clone());
        let big = Bytes::from("{\"px\":\"1.0\"}".repeat(40));
        for payload in [Bytes::from_static(b"small"), big.clone()] {
            let message = Message {
                kind: MessageKind::Text,
                payload: payload.into(),
            };
            app.on_message(&mut s, message, Instant::now(), &outgoing);
        }
        let small = s.poll_transmit().unwrap();
        assert_eq!(small.header()[0], 0x81, "below min_bytes: RSV1 clear");
        let large = s.poll_transmit().unwrap();
        assert_eq!(large.header()[0], 0xc1, "compressed: RSV1 set");
        assert!(large.payload().len() < big.len() / 4);
        assert_eq!(metrics.deflate_out_messages.get(), 1);
        assert_eq!(metrics.deflate_out_uncompressed.get(), big.len() as u64);
        assert_eq!(
            metrics.deflate_out_compressed.get(),
            large.payload().len() as u64
        );
    }

    #[test]
    fn echo_closes_over_rate_and_holds_nothing() {
        let mut app = App::Echo;
        assert_eq!(app.over_rate(), OverRate::Close);
        assert_eq!(app.held_bytes(), 0);
        assert_eq!(app.pending_output(), 0);
        assert_eq!(app.deadlines_consumed(), 0);
        app.on_client_closed(Some(1000), "bye");
        app.on_session_closing(Reason::GoingAway);
        app.on_budget_close();
        assert!(app.take_hop_start().is_none());
        assert!(app.take_far_side().is_none());
        assert!(matches!(app, App::Echo));
    }

    #[test]
    fn echo_has_no_far_side_to_write_or_give_up_on() {
        let mut app = App::Echo;
        let peer = "192.0.2.7:4000".parse().unwrap();
        assert!(app.write(Duration::from_secs(1), peer).is_none());
        assert!(!app.far_side_failed());
        assert!(!app.holds_more());
        assert!(matches!(app, App::Echo));
    }
}
