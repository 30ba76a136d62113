//! Flow control and liveness on a connection: when to read (the outbound cap), writing
//! without waiting, slow consumers, heartbeats, and the close (the last bytes' grace, the
//! client's close reply, the reset).

use std::time::Instant;

use bytes::BytesMut;

use crate::reason::Reason;
use crate::refuse::Refusal;
use crate::sockopt;
use crate::tls::record_layer::Direct;
use crate::ws::{SessionState, Timeout};

use super::app::App;
use super::{Conn, End};

impl Conn {
    /// Whether the client's bytes may be read now: not while what is queued for it (or, in
    /// proxy mode, for its upstream) is at the outbound cap. A client that sends but does not
    /// read is not served faster than it reads, and a slow upstream slows its client: TCP
    /// pushes back on both.
    pub(super) fn reads_allowed(&mut self) -> bool {
        if self.awaiting_handoff() {
            // The hand-off to the kernel waits for our last handshake bytes to leave, and
            // nothing more may be read before it: the client's readiness would only wake us
            // again and again. The loop waits for the socket to take our bytes instead.
            return false;
        }
        // A pub/sub client with all its asks out waits for answers before it may ask more.
        let allowed = !self.outbound_full() && self.phase.app().is_none_or(App::accepts_input);
        if !allowed && !self.reads_paused {
            self.core.metrics.read_pauses.inc();
        }
        self.reads_paused = !allowed;
        allowed
    }

    /// Before the hand-off to the kernel: every record received is decrypted (reads stop at
    /// record boundaries) and only our pending bytes hold the hand-off up.
    fn awaiting_handoff(&self) -> bool {
        self.layer.awaiting_handoff(self.finishing)
    }

    /// The WebSocket session's state; `None` before the upgrade.
    pub(super) fn session_state(&self) -> Option<SessionState> {
        self.phase.session().map(|s| s.state())
    }

    /// Whether what is queued for the client (or, in proxy mode, for its upstream) has reached
    /// the outbound cap: reading more from the client would only add to it.
    pub(super) fn outbound_full(&self) -> bool {
        let cap = self.core.cfg.limits.max_outbound_bytes;
        self.outbound_len() >= cap || self.phase.app().is_some_and(|a| a.pending_output() >= cap)
    }

    /// Bytes queued for the client: frames not yet handed to the record layer (with what each
    /// costs to keep), and what the record layer holds for the socket.
    pub(super) fn outbound_len(&self) -> usize {
        self.outbox.len() + self.outbox.overhead() + self.layer.pending_output_len()
    }

    /// Whether anything waits to be written to the client.
    pub(super) fn output_pending(&self) -> bool {
        !self.outbox.is_empty() || self.layer.has_pending_output()
    }

    /// Every byte this connection holds for its peers, counted against the core's buffer
    /// budget as it is queued: partial frames and messages received (both sides), and what
    /// waits to be written (both sides). Over the budget, the offender — the connection whose
    /// step took the core past it — is closed with 1013 at once: its unsent frames are dropped
    /// (a frame the client is in the middle of is finished first), its close reply is not
    /// awaited, and its share is given back.
    pub(super) fn enforce_budget(&mut self) -> Option<End> {
        let total = self.hold(self.held_bytes());
        let open = self.session_state() == Some(SessionState::Open);
        if total <= self.core.cfg.limits.max_buffered_bytes_per_core || !open {
            return None;
        }
        Refusal::Close {
            code: 1013,
            reason: Reason::BufferBudget,
        }
        .record_on(&self.core, self.peer);
        self.close_dropping_unsent(1013, Reason::BufferBudget);
        // What the app has not begun to deliver goes too: the session ends with 1013 on both
        // sides.
        if let Some(app) = self.phase.app_mut() {
            app.on_budget_close();
        }
        self.skip_close_reply = true;
        self.plaintext = BytesMut::new();
        if self.encrypt_outgoing().is_err() {
            return Some(End::Abort);
        }
        // What is left until the connection is gone: a frame each side is in the middle of,
        // the close frames, partial input not yet freed.
        self.hold(self.held_bytes());
        Some(End::Close)
    }

    /// What this connection holds for its peers, either way: partial frames and messages
    /// received from the client and the upstream, and what waits to be written to each.
    /// Received plaintext counts by its capacity: a large partial frame grows its buffer by
    /// doubling, and its length alone let 1,000 slow 15 MiB frames hold 1.9× the budget.
    fn held_bytes(&self) -> usize {
        self.plaintext.capacity()
            + self.phase.session().map_or(0, |s| s.buffered_bytes())
            + self.outbound_len()
            + self.phase.app().map_or(0, App::held_bytes)
    }

    /// Writes what the socket takes now, without waiting, handing the record layer more of
    /// the queued frames as it drains. While bytes stay queued the stall deadline runs
    /// (re-armed by every bit of progress); a drained queue clears it.
    pub(super) fn write_some(&mut self) -> Result<(), End> {
        let mut progressed = false;
        loop {
            // Under kTLS the frames go to the socket as they are (no staging copy) whenever
            // nothing is queued in the layer before them.
            match self.transmit_frames() {
                Ok(Direct::Wrote { bytes, records }) => {
                    self.moved += bytes as u64;
                    self.bytes_out += bytes as u64;
                    self.core.metrics.bytes_out.add(bytes as u64);
                    self.core.metrics.ktls_tx_records.add(records);
                    progressed = true;
                    continue;
                }
                Ok(Direct::WouldBlock) => break,
                Ok(Direct::NotApplicable) => {}
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "write failed");
                    return Err(End::Abort);
                }
            }
            self.feed_record_layer()?;
            if !self.layer.has_pending_output() {
                break;
            }
            let fd = sockopt::borrow_fd(&self.stream);
            match self.layer.transmit(fd) {
                Ok(Some((n, records))) => {
                    self.moved += n as u64;
                    self.core.metrics.ktls_tx_records.add(records);
                    progressed = true;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "write failed");
                    return Err(End::Abort);
                }
            }
        }
        if !self.output_pending() {
            self.write_deadline.clear();
        } else if progressed || !self.write_deadline.is_set() {
            self.write_deadline
                .set(Instant::now() + self.core.cfg.limits.write_timeout());
        }
        Ok(())
    }

    fn transmit_frames(&mut self) -> std::io::Result<Direct> {
        if self.outbox.is_empty() {
            return Ok(Direct::NotApplicable);
        }
        let fd = sockopt::borrow_fd(&self.stream);
        let max = self.core.cfg.limits.max_outbound_bytes;
        self.layer.transmit_frames(fd, &mut self.outbox, max)
    }

    /// The client has taken nothing for `write_timeout_ms` while bytes wait for it: a slow
    /// consumer. The frames it has not begun to take are dropped and its close frame queued
    /// behind the one it is in the middle of; the close then gives the last bytes
    /// `close_timeout_ms` before the connection is reset.
    pub(super) fn on_slow_consumer(&mut self) -> End {
        self.core.metrics.slow_consumers.inc();
        Refusal::Close {
            code: 1008,
            reason: Reason::SlowConsumer,
        }
        .record_on(&self.core, self.peer);
        self.write_deadline.clear();
        // What the client has not begun to take, it never will.
        self.close_dropping_unsent(1008, Reason::SlowConsumer);
        if self.encrypt_outgoing().is_err() {
            return End::Abort;
        }
        End::Close
    }

    /// Queues our close in place of the frames the client has not begun to take (they are
    /// dropped), right behind the one it is in the middle of. The caller hands it on.
    fn close_dropping_unsent(&mut self, code: u16, reason: Reason) {
        self.drain_session();
        self.outbox.discard_unstarted();
        if let Some(session) = self.phase.session_mut() {
            session.close(code, reason.as_str());
        }
    }

    /// The session's timer fired: its heartbeat (a ping after `ping_interval_ms` without a
    /// byte from the client, a close when nothing at all arrives within `pong_timeout_ms` of
    /// it) acts, and the session says when it wants the time next.
    ///
    /// The wait that woke us consumed the firing: the timer is re-armed only when the session
    /// asks (not with heartbeats off, nor once the session is no longer open: the close reply's
    /// wait is armed in [`Conn::await_close_reply`], after this loop).
    pub(super) fn on_session_timer(&mut self) -> Option<End> {
        let session = self.phase.session_mut()?;
        let timeout = session.handle_timeout(Instant::now());
        if let Some(at) = session.poll_timeout() {
            self.session_timer.set(at);
        }
        match timeout? {
            Timeout::PongTimeout => Some(self.close_session(1001, Reason::PongTimeout)),
            Timeout::PingSent => {
                self.core.metrics.pings_sent.inc();
                if self.encrypt_outgoing().is_err() {
                    return Some(End::Abort);
                }
                None
            }
            Timeout::CloseReplyMissed => Some(End::Close),
        }
    }

    /// Once upgraded, something partial the client began must complete within
    /// `frame_timeout_ms` of when it began, however its bytes trickle in (each read pushes the
    /// idle deadline, never this one): a frame, a fragmented message (even one of empty
    /// fragments) or a TLS record the record layer holds part of. The deadline is off while
    /// nothing is partial — and while reads are paused at the outbound cap, when it is not the
    /// client that holds the frame up (it restarts when reading resumes).
    pub(super) fn watch_partial_input(&mut self) {
        if let Some(received) = self.phase.session().map(|s| s.messages_received()) {
            if received != self.messages_seen.0 {
                self.messages_seen = (received, Instant::now());
            }
        }
        let partial = self.phase.is_upgraded()
            && (!self.plaintext.is_empty()
                || self.phase.session().is_some_and(|s| s.in_message())
                || self.layer.holds_partial_record());
        if !partial || self.outbound_full() {
            self.frame_deadline.clear();
        } else if !self.frame_deadline.is_set() {
            self.frame_deadline
                .set(Instant::now() + self.core.cfg.limits.frame_timeout());
        }
    }

    /// The frame deadline fired: if the client completed a message since it was armed, what is
    /// partial now began after that, and its deadline runs from then (renewed: true). A client
    /// that streams message after message, every read ending inside a frame, is making
    /// progress; one frame (or fragmented message) that never completes is not. Renewing only
    /// when it fires keeps a streaming client to one timer entry per period.
    pub(super) fn renew_frame_deadline(&mut self) -> bool {
        let renewed = self.messages_seen.1 + self.core.cfg.limits.frame_timeout();
        if renewed > Instant::now() {
            self.frame_deadline.set(renewed);
            true
        } else {
            false
        }
    }

    /// The last bytes of a closing connection (its close frame, an HTTP refusal, an alert) get
    /// until `limit` (the close's one deadline, `close_timeout_ms` after it began) to leave. A
    /// client that has not taken them by then is reset (SO_LINGER 0): its queued bytes are
    /// freed at once instead of waiting for a peer that does not read.
    pub(super) async fn flush_before_close(&mut self, limit: Instant) -> Result<(), End> {
        loop {
            self.write_some()?;
            if !self.output_pending() {
                return Ok(());
            }
            match self.writable_by(limit).await {
                Some(Ok(())) => {}
                Some(Err(_)) => return Err(End::Abort),
                None => {
                    self.core.metrics.close_resets.inc();
                    Refusal::Silent {
                        reason: Reason::CloseTimeout,
                    }
                    .record_on(&self.core, self.peer);
                    self.reset();
                    return Err(End::Abort);
                }
            }
        }
    }

    /// Waits until the socket takes more, or `limit` passes (`None`).
    pub(super) async fn writable_by(&mut self, limit: Instant) -> Option<std::io::Result<()>> {
        self.write_deadline.set(limit);
        let ready = monoio::select! {
            r = self.stream.writable(false) => Some(r),
            _ = self.write_deadline.expired() => None,
        };
        self.write_deadline.clear();
        ready
    }

    /// The edge closes an upgraded session: the refusal (counter, audit record), then the
    /// close frame queued for the client. `End::Close` lets the last bytes and the client's
    /// close reply be awaited.
    pub(super) fn close_session(&mut self, code: u16, reason: Reason) -> End {
        Refusal::Close { code, reason }.record_on(&self.core, self.peer);
        if let Some(session) = self.phase.session_mut() {
            session.close(code, reason.as_str());
        }
        if self.encrypt_outgoing().is_err() {
            return End::Abort;
        }
        End::Close
    }

    /// Resets the connection: SO_LINGER 0, so the close that follows sends RST and frees the
    /// socket's queued bytes; the shutdown ends any wait still holding the socket.
    pub(super) fn reset(&mut self) {
        let fd = sockopt::borrow_fd(&self.stream);
        sockopt::set_linger_zero(fd);
        sockopt::shutdown_both(fd);
    }

    /// Our close frame went first (idle, heartbeat, drain, revocation, rate limit…): the
    /// client's close reply is awaited until `close_by` (the close's one deadline) before TCP
    /// closes, so the close handshake completes (RFC 6455 §7.1.1) and a well-behaved client
    /// reads our code rather than a reset. The wait is the session's timer, told `close_by`.
    /// False when nothing more can be written (a read that fails still leaves close_notify to
    /// send).
    pub(super) async fn await_close_reply(&mut self, close_by: Instant) -> bool {
        let Some(session) = self.phase.session_mut() else {
            return true;
        };
        session.await_close_reply_until(close_by);
        let Some(at) = session.poll_timeout() else {
            return true;
        };
        self.session_timer.set(at);
        loop {
            let ready = monoio::select! {
                r = self.readable.ready() => Some(r),
                _ = self.session_timer.expired() => None,
            };
            match ready {
                None => {
                    let session = self.phase.session_mut();
                    let missed =
                        session.map(|s| (s.handle_timeout(Instant::now()), s.poll_timeout()));
                    match missed {
                        // Not due by the session's clock: the wait goes on.
                        Some((None, Some(at))) => {
                            self.session_timer.set(at);
                            continue;
                        }
                        // No reply in time: close all the same.
                        _ => return true,
                    }
                }
                Some(Err(_)) => return false,
                Some(Ok(())) => {}
            }
            let step = self.read_and_process();
            self.account_buffers();
            if self.write_some().is_err() {
                return false;
            }
            if step.is_some() {
                return true;
            }
            let cap = self.core.cfg.limits.max_outbound_bytes;
            let held =
                self.plaintext.len() + self.phase.session().map_or(0, |s| s.buffered_bytes());
            if held > cap {
                // Data instead of a close reply, more than the cap of it: no reply is coming
                // that we would keep for. Closed all the same, holding no more.
                return true;
            }
            if self
                .phase
                .session()
                .is_none_or(|s| s.state() == SessionState::Closed)
            {
                return true;
            }
        }
    }
}
