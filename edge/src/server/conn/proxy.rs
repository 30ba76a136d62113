//! The proxy app: the upstream session opened before the 101 (route and connect live in
//! [`crate::upstream::relay`]), and its steps — reading the upstream and handing its whole
//! messages to the client (or dropping them whole on lossy routes), writing what the client
//! sent on to it, closing it with the connection. Each step takes what it needs of the
//! connection as arguments; the loop only dispatches to it through [`super::app::App::Proxy`].

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::metrics::Side;
use crate::reason::{LossyDrop, Reason};
use crate::refuse::Refusal;
use crate::tls::identity::ClientIdentity;
use crate::ws::{Session, SessionState};

use super::super::core::Core;
use super::super::timer::Deadline;
use super::pass::{yield_to_core, yield_turn, AfterPass, PassGuard, Waited};
use super::{End, PendingUpgrade};
use crate::upstream::relay::{Relay, Route, UpstreamEvent};

/// Proxy mode's side of a session: the relay and the loop state that only it needs.
pub(super) struct Proxy {
    pub(super) relay: Relay,
    /// Upstream events of the current step, kept to reuse the allocation.
    events: Vec<UpstreamEvent>,
    /// Upstream reads are paused at the client's outbound cap (for counting pauses).
    paused: bool,
    /// When the oldest message relayed in this step was read (the proxy hop histogram).
    pub(super) hop_started: Option<Instant>,
    /// Armed while bytes wait for the upstream: no progress until it fires closes the client
    /// with 1014.
    pub(super) write_deadline: Deadline,
    /// Armed while the upstream holds a frame or message begun and not completed (and we are
    /// reading it): an upstream that hangs mid-message closes the client with 1014 after
    /// `frame_timeout_ms`, as a client that does would be closed.
    pub(super) frame_deadline: Deadline,
    /// The upstream's messages completed so far, and when that count last moved: an upstream
    /// that streams message after message is making progress even when every read ends
    /// inside a frame.
    messages_seen: (u64, Instant),
}

/// What one read of the upstream did for the client.
pub(super) struct Relayed {
    /// Bytes read (the loop's progress mark).
    pub(super) moved: u64,
    /// The upstream closed or failed: the client's session is closing.
    pub(super) end: Option<End>,
}

impl Proxy {
    pub(super) fn new(relay: Relay, write_deadline: Deadline, frame_deadline: Deadline) -> Self {
        Self {
            relay,
            events: Vec::new(),
            paused: false,
            hop_started: None,
            write_deadline,
            frame_deadline,
            messages_seen: (0, Instant::now()),
        }
    }

    /// Opens the session's upstream side before the client hears its 101, within the client's
    /// handshake deadline (`handshake`).
    pub(super) async fn open(
        core: &Core,
        pending: &PendingUpgrade,
        route: &Route,
        identity: Option<&ClientIdentity>,
        peer: SocketAddr,
        handshake: &Deadline,
        traceparent: Option<&str>,
    ) -> Result<Self, Refusal> {
        let Some(upstreams) = core.upstreams.clone() else {
            return Err(internal_refusal());
        };
        let client = crate::upstream::ClientContext {
            request: &pending.request,
            user_agent: pending.request.user_agent.as_deref(),
            peer: peer.ip(),
            protocol: pending.admitted.protocol.as_deref(),
            identity,
            token: pending.admitted.token.as_ref(),
            traceparent,
        };
        let relay = crate::upstream::relay::open(
            &upstreams,
            route,
            &client,
            core.session_limits(),
            core.cfg.limits.max_outbound_bytes,
            handshake.expired(),
            peer,
        )
        .await?;
        Ok(Self::new(
            relay,
            Deadline::new(&core.wheel),
            Deadline::new(&core.wheel),
        ))
    }

    /// Whether the upstream's bytes may be read now (`client_outbound`: bytes queued for the
    /// client): not while the client's queue is at the outbound cap, except on lossy routes,
    /// which drop whole messages instead; and never while the upstream's own queue is at the
    /// cap (what it sends can make us answer: an upstream that floods pings and reads nothing
    /// must not grow our pongs).
    pub(super) fn reads_allowed(&mut self, core: &Core, client_outbound: usize) -> bool {
        if self.relay.is_done() {
            self.frame_deadline.clear();
            return false;
        }
        let relay = &self.relay;
        let cap = core.cfg.limits.max_outbound_bytes;
        let allowed = (relay.is_lossy() || client_outbound < cap) && relay.pending_output() < cap;
        if !allowed && !self.paused {
            core.metrics.upstream_pauses.inc();
        }
        self.paused = !allowed;
        self.watch_partial_input(core);
        allowed
    }

    /// The upstream's half-sent frame or message must complete within `frame_timeout_ms` of
    /// when it began; the deadline is off while nothing is partial, and while we are not
    /// reading it (the client's queue is full, or the upstream's own queue is: the latter is
    /// the write timeout's to judge).
    fn watch_partial_input(&mut self, core: &Core) {
        let received = self.relay.messages_received();
        if received != self.messages_seen.0 {
            self.messages_seen = (received, Instant::now());
        }
        let partial = self.relay.in_message() && !self.paused && !self.relay.is_done();
        if !partial {
            self.frame_deadline.clear();
        } else if !self.frame_deadline.is_set() {
            self.frame_deadline
                .set(Instant::now() + core.cfg.limits.frame_timeout());
        }
    }

    /// The frame deadline fired: if the upstream completed a message since it was armed, what
    /// is partial now began after that, and its deadline runs from then (renewed: true).
    /// Renewing only when it fires keeps a streaming upstream to one timer entry per period.
    pub(super) fn renew_frame_deadline(&self, core: &Core) -> bool {
        let renewed = self.messages_seen.1 + core.cfg.limits.frame_timeout();
        if renewed > Instant::now() {
            self.frame_deadline.set(renewed);
            true
        } else {
            false
        }
    }

    /// Reads the upstream and hands its whole messages to the client's `session`
    /// (`client_outbound`: bytes queued for the client). On a lossy route a message that does
    /// not fit under the client's outbound cap is dropped whole.
    pub(super) fn relay_to_client(
        &mut self,
        core: &Core,
        peer: SocketAddr,
        mut session: Option<&mut Session>,
        client_outbound: usize,
    ) -> Relayed {
        let lossy = self.relay.is_lossy();
        let now = Instant::now();
        let mut events = std::mem::take(&mut self.events);
        let cap = core.cfg.limits.max_outbound_bytes;
        // What still fits under the client's cap bounds the read (lossy routes read on and
        // drop whole messages instead).
        let room = if lossy {
            usize::MAX
        } else {
            cap.saturating_sub(client_outbound)
        };
        let moved = self.relay.read(now, &mut events, room) as u64;
        let mut queued = client_outbound;
        let mut end = None;
        for event in events.drain(..) {
            let Some(session) = session.as_deref_mut() else {
                break;
            };
            match event {
                UpstreamEvent::Message(message, read_at) => {
                    if session.state() != SessionState::Open {
                        continue;
                    }
                    let size = message.payload.len() + 14;
                    if lossy && queued + size > cap {
                        core.metrics.lossy_drop(LossyDrop::Backpressure);
                        continue;
                    }
                    queued += size;
                    core.conn
                        .outgoing
                        .send(session, message.kind, message.payload);
                    self.hop_started.get_or_insert(read_at);
                }
                UpstreamEvent::Closed { code, reason } => {
                    // The upstream's code goes to the client as it was sent; an empty close
                    // stays empty (1005 in the counters, as RFC 6455 names a missing code).
                    core.metrics
                        .close_code(code.unwrap_or(1005), Side::Upstream);
                    session.close_with(code, &reason);
                    end = Some(End::Close);
                }
                UpstreamEvent::Failed { reason } => {
                    Refusal::Close { code: 1014, reason }.record_on(core, peer);
                    session.close(1014, reason.as_str());
                    end = Some(End::Close);
                }
            }
        }
        self.events = events;
        self.watch_partial_input(core);
        Relayed { moved, end }
    }

    /// Writes what the upstream socket takes now: the bytes written, or why the upstream is
    /// given up on (the client is told 1014).
    pub(super) fn write(
        &mut self,
        write_timeout: Duration,
        peer: SocketAddr,
    ) -> Result<u64, Reason> {
        let relay = &mut self.relay;
        match relay.write_some() {
            Ok(written) => {
                // An upstream that takes nothing for the write timeout is as stuck as a slow
                // client: its client is told 1014 rather than held forever.
                let stalled = &self.write_deadline;
                if relay.pending_output() == 0 {
                    stalled.clear();
                } else if written > 0 || !stalled.is_set() {
                    stalled.set(Instant::now() + write_timeout);
                }
                Ok(written as u64)
            }
            Err(e) => {
                tracing::debug!(peer = %peer, member = relay.member(), error = %e, "upstream write failed");
                Err(Reason::UpstreamWriteFailed)
            }
        }
    }
}

impl Proxy {
    /// Whatever ended the client side ends the upstream side, by `close_by` (the connection's
    /// one close deadline): our close (unless one went already) behind what was forwarded, the
    /// upstream's reply, then both directions shut.
    pub(super) async fn close_with_client(mut self: Box<Self>, core: Rc<Core>, close_by: Instant) {
        let relay = &mut self.relay;
        relay.close(1001, Reason::GoingAway);
        close_upstream(&core, relay, close_by).await;
        relay.shutdown();
    }
}

/// The session is ending: what was forwarded to the upstream (and our close behind it) leaves,
/// and the upstream's close reply is awaited, until `close_by`. Closing a socket with unread
/// bytes resets it, and a reset can destroy what the upstream has not read yet: the messages it
/// was sent before the client's session ended. What the upstream sends meanwhile is read and
/// dropped (the client's session is closing), never held beyond the outbound cap: an upstream
/// that keeps sending a frame that never ends is let go. An upstream already given up on
/// (broken, stalled) gets one last write attempt and no wait.
async fn close_upstream(core: &Core, relay: &mut Relay, close_by: Instant) {
    if relay.is_abandoned() {
        let _ = relay.write_some();
        return;
    }
    let cap = core.cfg.limits.max_outbound_bytes;
    let limit = Deadline::new(&core.wheel);
    limit.set(close_by);
    let mut events = Vec::new();
    let mut guard = PassGuard::default();
    let mut moved = 0u64;
    loop {
        match relay.write_some() {
            Ok(n) => moved += n as u64,
            Err(_) => return,
        }
        let writing = relay.pending_output() > 0;
        if !writing && relay.is_done() {
            return;
        }
        let reading = !relay.is_done();
        let more = reading && relay.holds_more();
        let (wake, waited) = {
            let wait = std::pin::pin!(async {
                monoio::select! {
                    r = relay.writable(), if writing => r.is_ok(),
                    r = relay.readable(), if reading && !more => r.is_ok(),
                    _ = std::future::ready(()), if more => true,
                    _ = limit.expired() => false,
                }
            });
            Waited::new(wait).await
        };
        if !wake {
            return;
        }
        if reading {
            // The flag or the readiness is consumed by this read.
            moved += 1 + relay.read(Instant::now(), &mut events, cap) as u64;
            events.clear();
            if relay.buffered() > cap {
                return;
            }
        }
        match guard.after_pass(waited, moved) {
            AfterPass::Continue => {}
            AfterPass::YieldBudget => yield_turn().await,
            _ => yield_to_core().await,
        }
    }
}

/// A refusal for a state that should not happen (a bug, not the client's fault).
pub(super) fn internal_refusal() -> Refusal {
    Refusal::Http {
        status: 500,
        reason: Reason::InternalError,
        extra_headers: &[],
    }
}
