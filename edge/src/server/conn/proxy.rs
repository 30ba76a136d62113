//! Proxy mode on a client connection: the upstream session opened before the 101 (route and
//! connect live in [`crate::upstream::relay`]), and the relay step that hands the upstream's
//! whole messages to the client (or drops them whole on lossy routes) — the upstream half of
//! the connection loop, driven for [`super::app::App::Proxy`].

use std::time::Instant;

use crate::metrics::Side;
use crate::reason::{LossyDrop, Reason};
use crate::refuse::Refusal;
use crate::ws::SessionState;

use super::super::core::Core;
use super::super::timer::Deadline;
use super::app::App;
use super::pass::{yield_to_core, yield_turn, AfterPass, PassGuard, Waited};
use super::{Conn, End, PendingUpgrade};
use crate::upstream::relay::{Relay, Route, UpstreamEvent};

impl Conn {
    /// Whether the upstream's bytes may be read now: not while the client's queue is at the
    /// outbound cap, except on lossy routes, which drop whole messages instead; and never
    /// while the upstream's own queue is at the cap (what it sends can make us answer: an
    /// upstream that floods pings and reads nothing must not grow our pongs).
    pub(super) fn upstream_reads_allowed(&mut self) -> bool {
        let outbound = self.outbound_len();
        let proxy = self.phase.app_mut().and_then(App::proxy_mut);
        let Some(proxy) = proxy.filter(|p| !p.relay.is_done()) else {
            return false;
        };
        let relay = &proxy.relay;
        let cap = self.core.cfg.limits.max_outbound_bytes;
        let allowed = (relay.is_lossy() || outbound < cap) && relay.pending_output() < cap;
        if !allowed && !proxy.paused {
            self.core.metrics.upstream_pauses.inc();
        }
        proxy.paused = !allowed;
        allowed
    }

    /// Proxy mode: reads the upstream and hands its whole messages to the client. On a lossy
    /// route a message that does not fit under the client's outbound cap is dropped whole.
    pub(super) fn relay_from_upstream(&mut self) -> Option<End> {
        let lossy = self.phase.app()?.proxy()?.relay.is_lossy();
        let now = Instant::now();
        let mut events = std::mem::take(&mut self.phase.app_mut()?.proxy_mut()?.events);
        let cap = self.core.cfg.limits.max_outbound_bytes;
        // What still fits under the client's cap bounds the read (lossy routes read on and
        // drop whole messages instead).
        let room = if lossy {
            usize::MAX
        } else {
            cap.saturating_sub(self.outbound_len())
        };
        let proxy = self.phase.app_mut()?.proxy_mut()?;
        self.moved += proxy.relay.read(now, &mut events, room) as u64;
        let mut hop_started = proxy.hop_started;
        let mut queued = self.outbound_len();
        let mut end = None;
        for event in events.drain(..) {
            let Some(session) = self.phase.session_mut() else {
                break;
            };
            match event {
                UpstreamEvent::Message(message, read_at) => {
                    if session.state() != SessionState::Open {
                        continue;
                    }
                    let size = message.payload.len() + 14;
                    if lossy && queued + size > cap {
                        self.core.metrics.lossy_drop(LossyDrop::Backpressure);
                        continue;
                    }
                    queued += size;
                    session.send(message.kind, message.payload);
                    hop_started.get_or_insert(read_at);
                }
                UpstreamEvent::Closed { code, reason } => {
                    // The upstream's code goes to the client as it was sent; an empty close
                    // stays empty (1005 in the counters, as RFC 6455 names a missing code).
                    self.core
                        .metrics
                        .close_code(code.unwrap_or(1005), Side::Upstream);
                    session.close_with(code, &reason);
                    end = Some(End::Close);
                }
                UpstreamEvent::Failed { reason } => {
                    Refusal::Close { code: 1014, reason }.record_on(&self.core, self.peer);
                    session.close(1014, reason.as_str());
                    end = Some(End::Close);
                }
            }
        }
        if let Some(proxy) = self.phase.app_mut().and_then(App::proxy_mut) {
            proxy.events = events;
            proxy.hop_started = hop_started;
        }
        if let Err(end) = self.encrypt_outgoing() {
            return Some(end);
        }
        end
    }

    /// Writes what the upstream socket takes now; a broken upstream closes the client with
    /// 1014.
    pub(super) fn write_upstream(&mut self) -> Option<End> {
        let proxy = self.phase.app_mut()?.proxy_mut()?;
        let relay = &mut proxy.relay;
        match relay.write_some() {
            Ok(written) => {
                self.moved += written as u64;
                // An upstream that takes nothing for the write timeout is as stuck as a slow
                // client: its client is told 1014 rather than held forever.
                let stalled = &proxy.write_deadline;
                if relay.pending_output() == 0 {
                    stalled.clear();
                } else if written > 0 || !stalled.is_set() {
                    stalled.set(Instant::now() + self.core.cfg.limits.write_timeout());
                }
                None
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, member = relay.member(), error = %e, "upstream write failed");
                Some(self.upstream_failed(Reason::UpstreamWriteFailed))
            }
        }
    }

    /// The upstream connection broke: the client is told 1014 (bad gateway).
    pub(super) fn upstream_failed(&mut self, reason: Reason) -> End {
        if let Some(proxy) = self.phase.app_mut().and_then(App::proxy_mut) {
            proxy.relay.abandon();
        }
        self.close_session(1014, reason)
    }

    /// Proxy mode: opens the session's upstream side before the client hears its 101, within
    /// the client's handshake deadline.
    pub(super) async fn open_upstream(
        &mut self,
        pending: &PendingUpgrade,
        route: &Route,
    ) -> Result<Relay, Refusal> {
        let Some(upstreams) = self.core.upstreams.clone() else {
            return Err(internal_refusal());
        };
        let client = crate::upstream::ClientContext {
            request: &pending.request,
            user_agent: pending.request.user_agent.as_deref(),
            peer: self.peer.ip(),
            protocol: pending.admitted.protocol.as_deref(),
            identity: self.identity.as_deref(),
            token: pending.admitted.token.as_ref(),
        };
        crate::upstream::relay::open(
            &upstreams,
            route,
            &client,
            self.core.session_limits(),
            self.core.cfg.limits.max_outbound_bytes,
            self.deadline.expired(),
            self.peer,
        )
        .await
    }
}

/// The session is ending: what was forwarded to the upstream (and our close behind it) leaves,
/// and the upstream's close reply is awaited, until `close_by`. Closing a socket with unread
/// bytes resets it, and a reset can destroy what the upstream has not read yet: the messages it
/// was sent before the client's session ended. What the upstream sends meanwhile is read and
/// dropped (the client's session is closing), never held beyond the outbound cap: an upstream
/// that keeps sending a frame that never ends is let go. An upstream already given up on
/// (broken, stalled) gets one last write attempt and no wait.
pub(super) async fn close_upstream(core: &Core, relay: &mut Relay, close_by: Instant) {
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
