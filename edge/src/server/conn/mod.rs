//! One connection's life on its core: TLS handshake, upgrade, session, close.
//!
//! What an open session does with its messages is its [`app`] (echo, or relayed to an upstream:
//! [`proxy`] drives the relay's half of the loop); the record layer
//! ([`crate::tls::record_layer`]) decides the kTLS hand-off and keeps the kernel's keys fresh.
//!
//! The loop is readiness-first both ways: wait for the socket's readiness (the read poll kept
//! armed across passes, [`crate::readiness`]; both consume nothing) or one of the connection's
//! deadlines, then read without
//! blocking into a buffer taken from the core's pool, process everything synchronously, write
//! what the socket takes without blocking, and give the buffer back once it is drained. A
//! deadline therefore only ever ends a readiness wait, never a read or a write halfway, and an
//! idle connection holds no read buffer. When to read and write, heartbeats, slow consumers
//! and the close live in [`flow`].
//!
//! The synchronous processing step runs under `catch_unwind`: a bug closes this connection with
//! 1011 and is counted; the core and its other connections go on.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::BytesMut;
use monoio::net::TcpStream;

use crate::audit::AuditEvent;
use crate::auth::admission::Admitted;
use crate::ebpf::LimitGuard;
use crate::limits::{ConnectionLimiter, Verdict};
use crate::metrics::Side;
use crate::readiness::ArmedPoll;
use crate::reason::{KtlsFallback, LossyDrop, Reason};
use crate::refuse::Refusal;
use crate::routes::RouteKind;
use crate::sockopt;
use crate::tls::driver::TlsSession;
use crate::tls::identity::ClientIdentity;
use crate::tls::ktls::ControlRecord;
use crate::tls::record_layer::{KeyStep, LayerEnd, Received, RecordLayer, TlsMode};
use crate::ws::{self, Event, Heartbeat, Outbox, Session, SessionState};

mod app;
mod flow;
mod pass;
mod phase;
mod proxy;
mod trace;

use self::app::{App, OverRate};

/// A single-use token's fleet-wide claim outlives its expiry by this much (clock skew between
/// nodes, the verifier's leeway).
const REPLAY_CLAIM_MARGIN_S: u64 = 120;
/// The longest an upgrade waits for the fleet's answer (a claim, an identity count) before it
/// goes on as if Redis were away (the link itself gives up on Redis after 2 s).
const FLEET_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
/// What a client refused 503 `fleet_unavailable` is told.
const FLEET_RETRY: &[(&str, &str)] = &[("Retry-After", "1")];
pub(crate) use self::pass::{boxed_timer, yield_turn};
use self::pass::{yield_to_core, AfterPass, PassGuard, Waited};
use self::phase::{PendingUpgrade, Phase, Upgraded};
use self::proxy::Proxy;
use super::core::{unix_now, Core};
use super::line::Place;
use super::live::LiveSession;
use super::timer::Deadline;

/// Why the processing loop stopped.
#[derive(Debug)]
enum End {
    /// Flush what is queued, send close_notify when TLS is up, then close.
    Close,
    /// Close right away; nothing more can be written.
    Abort,
}

/// Serves one accepted connection to its end. Panics anywhere in it are caught here.
///
/// In two boxed steps: the wait for the first byte, then the connection's life. The second is
/// what an idle connection keeps for hours, so it holds only the connection (its own
/// allocation, of its own size) and its loop's wait — not the arguments of the first step,
/// which a single future would keep beside them for its whole life.
pub(crate) async fn serve(slot: Slot, stream: TcpStream, peer: SocketAddr) {
    let metrics = slot.core.metrics.clone();
    let conn = match CatchUnwind(Box::pin(open(slot, stream, peer))).await {
        Ok(Some(conn)) => conn,
        Ok(None) => return,
        Err(panic) => return on_panic(&metrics, peer, &panic),
    };
    if let Err(panic) = CatchUnwind(Box::pin(live(conn))).await {
        on_panic(&metrics, peer, &panic);
    }
}

fn on_panic(metrics: &crate::metrics::CoreMetrics, peer: SocketAddr, panic: &Box<dyn Any + Send>) {
    metrics.panics.inc();
    tracing::error!(%peer, panic = panic_message(panic), "connection task panicked; connection closed");
}

/// The connection once it has spoken, or `None` when it is closed unserved.
async fn open(mut slot: Slot, stream: TcpStream, peer: SocketAddr) -> Option<Box<Conn>> {
    let core = slot.core.clone();
    if let Err(e) = sockopt::tune_accepted(sockopt::borrow_fd(&stream), &core.conn.socket_opts) {
        tracing::debug!(%peer, error = %e, "socket options failed; connection closed");
        return None;
    }
    if let Err(reason) = first_byte(&mut slot, &stream).await {
        // Nothing was said: reset, leaving no TIME_WAIT behind a flood of silent sockets.
        Refusal::Silent { reason }.record_at_accept(&core, peer);
        sockopt::set_linger_zero(sockopt::borrow_fd(&stream));
        return None;
    }
    let tls = match TlsSession::new(core.tls.config.load_full()) {
        Ok(tls) => tls,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot start a TLS session");
            return None;
        }
    };
    Some(Box::new(Conn::new(slot, stream, peer, tls)))
}

/// The connection's life: TLS, the upgrade, the session, the close.
async fn live(mut conn: Box<Conn>) {
    let end = conn.run().await;
    conn.finish(end).await;
}

/// Waits for the connection's first byte, silent (see [`crate::server::line`]); then takes
/// its place among the handshakes. `Err`: why it is closed unserved.
async fn first_byte(slot: &mut Slot, stream: &TcpStream) -> Result<(), Reason> {
    if let Some(silent) = &slot.silent {
        let waited = monoio::select! {
            r = stream.readable(false) => r.map_err(|_| Reason::PeerClosedDuringHandshake),
            _ = boxed_timer(Instant::now() + slot.core.cfg.limits.first_byte_timeout()) => Err(Reason::FirstByteTimeout),
            _ = silent.evicted() => Err(Reason::SilentEvicted),
        };
        waited?;
    }
    slot.spoke()
}

/// A connection's place in its core's counts, taken at accept (so a burst of accepts cannot
/// overshoot the limits before the connections' tasks run) and given back on drop: silent
/// until its first byte, then handshaking until its 101, then open (see
/// [`crate::server::line`]).
pub(crate) struct Slot {
    core: Rc<Core>,
    /// Until the first byte: its place among the core's silent connections.
    silent: Option<Place>,
    /// From the first byte to the 101: its place among the core's handshakes.
    handshaking: Option<Place>,
    upgraded: bool,
    /// The source address's place in the userspace per-IP limit (given back on drop).
    _ip_slot: Option<LimitGuard>,
}

impl Slot {
    /// Counts a new connection, silent: when the core holds `max_silent_connections` silent
    /// ones already, the oldest of them is reset to make room.
    pub(crate) fn take(core: &Rc<Core>, ip_slot: Option<LimitGuard>) -> Self {
        core.counts
            .connections
            .set(core.counts.connections.get() + 1);
        let silent = &core.counts.silent;
        // The gauges follow the lines: an evicted connection leaves the count when it is
        // evicted, not when its task next runs (a scrape in between saw the cap passed).
        if silent.len() >= core.cfg.limits.max_silent_connections && silent.evict_oldest(None) {
            core.metrics.silent.add(-1);
        }
        core.metrics.silent.add(1);
        Self {
            core: core.clone(),
            silent: Some(silent.join(Instant::now())),
            handshaking: None,
            upgraded: false,
            _ip_slot: ip_slot,
        }
    }

    /// The first byte arrived: the connection leaves the silent ones for the handshakes —
    /// taking the place of the oldest when every place is taken and that one has held it long
    /// (see [`crate::server::line::HandshakePace`]). `Err`: it was evicted meanwhile, or the
    /// handshakes are full of young ones.
    fn spoke(&mut self) -> Result<(), Reason> {
        let core = &self.core;
        if let Some(silent) = self.silent.take() {
            if !silent.leave() {
                return Err(Reason::SilentEvicted);
            }
            core.metrics.silent.add(-1);
        }
        let now = Instant::now();
        let line = &core.counts.handshaking;
        if line.len() >= core.cfg.limits.max_handshakes_in_flight {
            if !line.evict_oldest(now.checked_sub(core.counts.handshake_pace.evict_age())) {
                return Err(Reason::MaxHandshakesInFlight);
            }
            core.metrics.handshaking.add(-1);
        }
        core.metrics.handshaking.add(1);
        self.handshaking = Some(line.join(now));
        Ok(())
    }

    /// Resolves once this handshake's place was taken by a newer one (never once upgraded).
    async fn handshake_evicted(&self) {
        match &self.handshaking {
            Some(place) => place.evicted().await,
            None => std::future::pending().await,
        }
    }

    /// The handshake is over: the connection leaves the handshakes for the open ones.
    fn upgraded(&mut self) {
        let core = &self.core;
        if let Some(place) = self.handshaking.take() {
            core.counts
                .handshake_pace
                .observe(place.held(Instant::now()));
            if place.leave() {
                core.metrics.handshaking.add(-1);
            }
        }
        core.metrics.open.add(1);
        self.upgraded = true;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let core = &self.core;
        core.counts
            .connections
            .set(core.counts.connections.get() - 1);
        // An evicted place was counted out when it was evicted.
        if self.silent.take().is_some_and(|place| place.leave()) {
            core.metrics.silent.add(-1);
        }
        if self.handshaking.take().is_some_and(|place| place.leave()) {
            core.metrics.handshaking.add(-1);
        }
        if self.upgraded {
            core.metrics.open.add(-1);
        }
    }
}

/// A connection's state. Its `Drop` gives back every per-core resource it counted.
struct Conn {
    slot: Slot,
    core: Rc<Core>,
    /// Shared with the armed read poll below.
    stream: Rc<TcpStream>,
    /// The socket's read readiness, kept armed across loop passes.
    readable: ArmedPoll,
    peer: SocketAddr,
    layer: RecordLayer,
    /// The client certificate's identity under mutual TLS, once read.
    identity: Option<Arc<ClientIdentity>>,
    /// Received plaintext not yet consumed: the upgrade request, then partial frames.
    plaintext: BytesMut,
    /// The session's frames not yet handed to the record layer: handed over as the client's
    /// socket takes bytes, so a large message is never encrypted (copied) whole past the cap.
    outbox: Outbox,
    /// Where the connection is in its life, with what only that phase owns.
    phase: Phase,
    /// Handshake deadline, then the idle deadline.
    deadline: Deadline,
    /// For the close's audit record: when the connection was accepted and the plaintext bytes
    /// each way.
    accepted_at: Instant,
    bytes_in: u64,
    bytes_out: u64,
    /// Armed while bytes wait for the client: no progress until it fires = a slow consumer.
    write_deadline: Deadline,
    /// The session's timer: its heartbeat while open (see [`Conn::on_session_timer`]), the
    /// wait for the client's close reply after our close (see [`Conn::await_close_reply`]).
    session_timer: Deadline,
    /// Armed while a frame (or a fragmented message) is partly received: it must complete by
    /// then (see [`Conn::watch_partial_input`]).
    frame_deadline: Deadline,
    /// The client's messages completed so far, and when that count last moved (see
    /// [`Conn::renew_frame_deadline`]).
    messages_seen: (u64, Instant),
    /// Client reads are paused at the outbound cap (for counting pauses, not waits).
    reads_paused: bool,
    /// The close reply is not awaited: the TLS keys cannot go on, or the connection is
    /// closed for the core's buffer budget (its share is given back at once).
    skip_close_reply: bool,
    /// Bytes this connection adds to the core's buffered budget right now.
    held: usize,
    /// The loop's progress mark: bytes moved on either socket and one-shot wake-ups consumed
    /// (see [`pass`]).
    moved: u64,
    /// The connection is ending (`finish`): no hand-off to the kernel will come.
    finishing: bool,
    holds_read_buffer: bool,
    /// Its trace (`[telemetry]` on): begun at the upgrade request.
    trace: Option<Box<trace::ConnTrace>>,
}

impl Conn {
    fn new(slot: Slot, stream: TcpStream, peer: SocketAddr, tls: TlsSession) -> Self {
        let core = slot.core.clone();
        let stream = Rc::new(stream);
        let deadline = Deadline::new(&core.wheel);
        deadline.set(Instant::now() + core.cfg.limits.handshake_timeout());
        let write_deadline = Deadline::new(&core.wheel);
        let session_timer = Deadline::new(&core.wheel);
        let frame_deadline = Deadline::new(&core.wheel);
        Self {
            slot,
            core,
            readable: ArmedPoll::readable(stream.clone()),
            stream,
            peer,
            layer: RecordLayer::new(tls),
            identity: None,
            plaintext: BytesMut::new(),
            outbox: Outbox::new(),
            phase: Phase::Handshaking,
            deadline,
            accepted_at: Instant::now(),
            bytes_in: 0,
            bytes_out: 0,
            write_deadline,
            session_timer,
            frame_deadline,
            messages_seen: (0, Instant::now()),
            reads_paused: false,
            skip_close_reply: false,
            held: 0,
            moved: 0,
            finishing: false,
            holds_read_buffer: false,
            trace: None,
        }
    }

    /// The connection's trace context, begun at its upgrade request (None: telemetry off).
    fn trace_for(&mut self, request: &ws::UpgradeRequest) -> Option<crate::telemetry::TraceSpan> {
        let sink = self.core.telemetry.as_ref()?;
        let trace = self.trace.get_or_insert_with(|| {
            Box::new(trace::ConnTrace {
                span: sink.begin(request.traceparent),
                upgraded_at: None,
            })
        });
        Some(trace.span)
    }

    /// The `traceparent` an upstream member gets: the edge's upgrade span as its parent, or,
    /// with telemetry off, the client's own header passed on unchanged.
    fn traceparent_upstream(&mut self, request: &ws::UpgradeRequest) -> Option<String> {
        match self.trace_for(request) {
            Some(span) => Some(span.traceparent()),
            None => request.traceparent.map(|p| p.format()),
        }
    }

    /// The upgrade decision's span (sampled traces only).
    fn trace_upgrade(
        &mut self,
        request: &ws::UpgradeRequest,
        admitted: Option<&Admitted>,
        allowed: bool,
        status: u16,
        reason: Reason,
        app: Option<&'static str>,
    ) {
        let Some(span) = self.trace_for(request).filter(|s| s.sampled) else {
            return;
        };
        let record = trace::upgrade_span(
            span,
            self.accepted_at,
            trace::UpgradeDecision {
                peer: self.peer,
                path: self.core.access.admission.redact_target(&request.path),
                identity: self.identity.as_deref(),
                admitted,
                allowed,
                status,
                reason,
                app,
            },
        );
        if let Some(sink) = &self.core.telemetry {
            sink.emit(record);
        }
    }

    /// The session's span at its end (sampled traces only).
    fn trace_session_end(&self) {
        let (Some(sink), Some(trace)) = (&self.core.telemetry, &self.trace) else {
            return;
        };
        let (true, Some(upgraded_at)) = (trace.span.sampled, trace.upgraded_at) else {
            return;
        };
        sink.emit(trace::session_span(
            &trace.span,
            upgraded_at,
            self.phase.upgraded().map(|u| u.path.to_string()),
            self.phase.session().and_then(Session::close_code),
            self.bytes_in,
            self.bytes_out,
        ));
    }

    async fn run(&mut self) -> End {
        let mut guard = PassGuard::default();
        loop {
            let live = self.phase.upgraded().map(|u| u.live.session.clone());
            // A compressed frame is inflated a slice per pass (its output can be a thousand
            // times its size): the session goes on with it before anything more is read.
            let inflating = self.phase.session().is_some_and(Session::inflate_paused);
            let reading = !inflating && self.reads_allowed();
            let writing = self.output_pending();
            let app_reading = self.app_reads_allowed();
            let app = self.phase.app();
            let app_more = app_reading && app.is_some_and(App::holds_more);
            let app_writing = app.is_some_and(|a| a.pending_output() > 0);
            let app_arrivals = app.is_some_and(App::is_pubsub);
            let (wake, waited) = {
                let wait = std::pin::pin!(async {
                    monoio::select! {
                        r = self.readable.ready(), if reading => Wake::Readable(r),
                        r = self.stream.writable(false), if writing => Wake::Writable(r),
                        _ = self.deadline.expired() => Wake::Deadline,
                        _ = self.slot.handshake_evicted() => Wake::Evicted,
                        _ = session_end(live.as_deref()) => Wake::SessionEnd,
                        _ = self.session_timer.expired() => Wake::SessionTimer,
                        _ = self.frame_deadline.expired() => Wake::FrameTimeout,
                        _ = self.write_deadline.expired(), if writing => Wake::WriteStalled,
                        r = app_readable(app), if app_reading && !app_more => Wake::AppReadable(r),
                        _ = std::future::ready(()), if app_more => Wake::AppMore,
                        _ = std::future::ready(()), if inflating => Wake::Inflate,
                        r = app_writable(app), if app_writing => Wake::AppWritable(r),
                        _ = app_arrived(app), if app_arrivals => Wake::AppArrived,
                        _ = app_stalled(app), if app_writing => Wake::AppStalled,
                        _ = app_frame_timed_out(app), if app.is_some() => Wake::AppFrameTimeout,
                    }
                });
                Waited::new(wait).await
            };
            self.core.metrics.loop_passes.inc();
            if let Some(busy) = &self.core.busy {
                busy.mark();
            }
            let inflated_a_slice = matches!(wake, Wake::Inflate);
            let step = match wake {
                Wake::AppReadable(Ok(())) => {
                    // Readiness consumed by a read (the bytes may all be TLS records that give
                    // no plaintext yet): progress, whatever the read returns.
                    self.moved += 1;
                    self.app_read()
                }
                Wake::AppMore => {
                    // The app's "more held" flag is a one-shot: the read clears it.
                    self.moved += 1;
                    self.app_read()
                }
                // A write wait is armed fresh each pass: its report is not a one-shot to
                // consume, and only bytes written count as progress.
                Wake::AppWritable(Ok(())) => None,
                Wake::AppArrived => {
                    // The arrival flag is a one-shot: the wait consumed it (taken below).
                    self.moved += 1;
                    None
                }
                Wake::AppStalled => self.app_failed(Reason::UpstreamStalled),
                Wake::AppFrameTimeout => {
                    let core = &self.core;
                    if self
                        .phase
                        .app()
                        .is_some_and(|a| a.renew_frame_deadline(core))
                    {
                        None
                    } else {
                        self.app_failed(Reason::UpstreamFrameTimeout)
                    }
                }
                Wake::AppReadable(Err(e)) | Wake::AppWritable(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "upstream readiness wait failed");
                    self.app_failed(Reason::UpstreamClosed)
                }
                Wake::Deadline => return self.on_deadline(),
                Wake::Evicted => {
                    // A newer handshake took this one's place (it held it too long).
                    Refusal::Tls {
                        reason: Reason::HandshakeEvicted,
                    }
                    .record_on(&self.core, self.peer);
                    return End::Abort;
                }
                Wake::SessionEnd => return self.on_session_end(),
                Wake::WriteStalled => return self.on_slow_consumer(),
                Wake::SessionTimer => self.on_session_timer(),
                Wake::FrameTimeout => {
                    if !self.renew_frame_deadline() {
                        return self.close_session(1008, Reason::FrameTimeout);
                    }
                    None
                }
                Wake::Readable(Err(e)) | Wake::Writable(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "readiness wait failed");
                    return End::Abort;
                }
                Wake::Writable(Ok(())) => None,
                Wake::Readable(Ok(())) => {
                    self.moved += 1;
                    let step = self.read_and_process();
                    self.account_buffers();
                    step
                }
                Wake::Inflate => {
                    // The paused frame is consumed a slice at a time: progress.
                    self.moved += 1;
                    let step = self.run_session();
                    self.account_buffers();
                    step
                }
            };
            // Key bookkeeping comes before the write: a KeyUpdate of ours must precede the
            // data queued after the client asked for it.
            let closing = step.is_some()
                || self
                    .session_state()
                    .is_some_and(|s| s != SessionState::Open);
            let keys = match self.keep_keys_fresh(closing).await {
                Ok(keys) => keys,
                Err(end) => return end,
            };
            if let Err(end) = self.write_some() {
                return end;
            }
            let step = step.or_else(|| self.app_pump());
            let step = step.or_else(|| self.app_write());
            if let Some(at) = self.phase.app_mut().and_then(App::take_hop_start) {
                self.core.metrics.proxy_hop.observe(at.elapsed());
            }
            // What is held once this pass has written what it could counts against the
            // core's budget (the connection that takes the core past it is closed).
            if let Some(end) = step.or(keys).or_else(|| self.enforce_budget()) {
                return end;
            }
            self.watch_partial_input();
            if let Some(pending) = self.phase.take_pending() {
                // Boxed: its waits (a replay check, an upstream's connect and 101) are the
                // largest state this loop has, and only some upgrades pass through them; kept
                // inline they would size every idle connection's task.
                let upgraded = Box::pin(self.finish_pending_upgrade(pending)).await;
                self.account_buffers();
                let written = self.write_some();
                if let Err(end) = upgraded.and(written) {
                    return end;
                }
            }
            if let Some(end) = self.settle_record_layer() {
                return end;
            }
            if self
                .session_state()
                .is_some_and(|s| s != SessionState::Open)
            {
                // Our close frame is queued (a rate limit, a failure): what is left — the last
                // bytes, the client's close reply — is bounded by close_timeout_ms in `finish`,
                // not by whatever deadline this loop would wait on next.
                return End::Close;
            }
            match guard.after_pass(waited, self.progress_mark()) {
                // Between two slices of one inflation the core's other connections get a turn.
                AfterPass::Continue if inflated_a_slice => yield_turn().await,
                AfterPass::Continue => {}
                AfterPass::YieldBudget => {
                    self.core.metrics.loop_yields.inc();
                    yield_turn().await;
                }
                AfterPass::ParkBudget => {
                    self.core.metrics.loop_yields.inc();
                    yield_to_core().await;
                }
                AfterPass::YieldStalled => {
                    self.core.metrics.loop_stalls.inc();
                    yield_to_core().await;
                }
            }
        }
    }

    /// Whether the app's far side may be read now (see the app's own rule).
    fn app_reads_allowed(&mut self) -> bool {
        let outbound = self.outbound_len();
        self.phase
            .app_mut()
            .is_some_and(|app| app.reads_allowed(&self.core, outbound))
    }

    /// The app's far side is readable: what it produced goes to the client.
    fn app_read(&mut self) -> Option<End> {
        let outbound = self.outbound_len();
        let (session, app) = self.phase.session_and_app_mut();
        let relayed = app?.on_readable(&self.core, self.peer, session, outbound)?;
        self.moved += relayed.moved;
        if let Err(end) = self.encrypt_outgoing() {
            return Some(end);
        }
        relayed.end
    }

    /// What arrived for the client from elsewhere on the edge (pub/sub) goes to its session,
    /// as much as the outbound cap leaves room for, and out to the socket.
    ///
    /// What a pump leaves queued for want of room is taken once the socket has taken the
    /// rest: at once while the socket keeps up (a few rounds), else when it is writable
    /// again, or in the next pass (re-armed: no arrival may be needed to deliver what already
    /// arrived).
    fn app_pump(&mut self) -> Option<End> {
        /// Pump + write rounds in one pass before the rest waits for the next pass.
        const ROUNDS: usize = 4;
        for _ in 0..ROUNDS {
            let room = self
                .core
                .cfg
                .limits
                .max_outbound_bytes
                .saturating_sub(self.outbound_len());
            let Phase::Open { session, open } = &mut self.phase else {
                return None;
            };
            if session.state() != SessionState::Open {
                return None;
            }
            let pumped = open.app.pump(session, room, Instant::now());
            if pumped.slow_consumer {
                if let Some(p) = &self.core.pubsub {
                    p.m().slow_consumer_closes.inc();
                }
                return Some(self.on_slow_consumer());
            }
            // A pump can take only publications the client no longer wants (queued before an
            // unsubscribe): nothing written, but the queue moved on; the rounds go on.
            if pumped.frames > 0 {
                self.moved += pumped.frames;
                if let Err(end) = self.encrypt_outgoing() {
                    return Some(end);
                }
                if let Err(end) = self.write_some() {
                    return Some(end);
                }
            }
            if self.output_pending() || !self.phase.app().is_some_and(App::holds_arrivals) {
                // The socket is full (its writability wakes us), or nothing is left.
                return None;
            }
        }
        if let Some(app) = self.phase.app() {
            app.rearm_arrivals();
        }
        None
    }

    /// Writes what the app's far side takes now.
    fn app_write(&mut self) -> Option<End> {
        let timeout = self.core.cfg.limits.write_timeout();
        match self.phase.app_mut()?.write(timeout, self.peer)? {
            Ok(written) => {
                self.moved += written;
                None
            }
            Err(reason) => self.app_failed(reason),
        }
    }

    /// The app's far side broke (`reason`): the client is told why.
    fn app_failed(&mut self, reason: Reason) -> Option<End> {
        if !self.phase.app_mut()?.far_side_failed() {
            return None;
        }
        Some(self.close_session(1014, reason))
    }

    /// The loop's progress mark: bytes and readiness moved, and the firings of this
    /// connection's own deadlines consumed (a wait that completed at once on a deadline
    /// consumed it, see `timer`).
    fn progress_mark(&self) -> u64 {
        let own = [
            &self.deadline,
            &self.session_timer,
            &self.frame_deadline,
            &self.write_deadline,
        ];
        let upgraded = self.phase.upgraded().map_or(0, |u| {
            u.live.session.deadline().consumed() + u.app.deadlines_consumed()
        });
        self.moved + upgraded + own.iter().map(|d| d.consumed()).sum::<u64>()
    }

    /// Reads what the socket holds (bounded, so one connection cannot starve the core) and
    /// processes it. `Some(end)` when the connection must end.
    fn read_and_process(&mut self) -> Option<End> {
        const MAX_READS_PER_WAKE: usize = 4;
        for _ in 0..MAX_READS_PER_WAKE {
            let limit = self.read_limit();
            if limit == Some(0) {
                if !self.layer.is_quiescent() {
                    // Whole records still held: rustls can stop at "handshake done" before
                    // decrypting records that arrived in the same read. One more pass over
                    // what is held, without reading.
                    if let Some(end) = self.process_guarded() {
                        return Some(end);
                    }
                }
                if self.layer.is_quiescent() {
                    return None; // at a record boundary: the hand-off comes first
                }
                // Held bytes that are still not whole records (a handshake message split over
                // records): the kernel cannot take over here; serve in userspace.
                if let Some(end) = self.stay_in_userspace(
                    KtlsFallback::NotQuiescent,
                    "a post-handshake message spans records",
                ) {
                    return Some(end);
                }
                continue;
            }
            let received = {
                let mut pool = self.core.buffers.pool.borrow_mut();
                let fd = sockopt::borrow_fd(&self.stream);
                self.layer.receive(fd, &mut pool, limit)
            };
            match received {
                Received::Data { n, filled, records } => {
                    self.moved += n as u64;
                    self.core.metrics.ktls_rx_records.add(records);
                    if let Some(end) = self.process_guarded() {
                        return Some(end);
                    }
                    if !filled {
                        return None; // drained: wait for readiness again
                    }
                    if self.phase.is_upgraded() && self.outbound_full() {
                        // What this read queued reached the cap: no more until it drains.
                        return None;
                    }
                }
                Received::WouldBlock => return None,
                Received::Eof => {
                    self.moved += 1;
                    if !self.phase.is_upgraded() {
                        self.core
                            .metrics
                            .handshake(false, Reason::PeerClosedDuringHandshake);
                    } else {
                        self.count_closed_without_frame();
                    }
                    return Some(End::Abort);
                }
                Received::ControlRecord => {
                    if let Some(end) = self.take_control_record() {
                        return Some(end);
                    }
                    if self.layer.tx_rekey_due() {
                        return None; // our KeyUpdate goes out before anything more is read
                    }
                }
                Received::Failed { error, reason } => {
                    if let Some(reason) = reason {
                        Refusal::Silent { reason }.record_on(&self.core, self.peer);
                    }
                    // A reset (or any read error) ends an open session without a close
                    // frame just as a FIN does.
                    self.count_closed_without_frame();
                    tracing::debug!(peer = %self.peer, error = %error, "read failed");
                    return Some(End::Abort);
                }
            }
        }
        None
    }

    /// How much the next read may take: before the hand-off to the kernel, no more than what
    /// completes the record in the buffer, so the kernel starts on a record boundary even when
    /// the client pipelines data right after its Finished.
    fn read_limit(&self) -> Option<usize> {
        self.layer.read_limit(self.finishing)
    }

    /// A kTLS read failed with EIO: the next record is an alert or a handshake message.
    fn take_control_record(&mut self) -> Option<End> {
        let fd = sockopt::borrow_fd(&self.stream);
        let taken = {
            let mut pool = self.core.buffers.pool.borrow_mut();
            self.layer
                .take_control_record(fd, &mut pool, &self.core.metrics)
        };
        let record = match taken {
            Ok(Some(record)) => record,
            Ok(None) => return None,
            Err(reason) => {
                Refusal::Silent { reason }.record_on(&self.core, self.peer);
                return Some(End::Abort);
            }
        };
        match record {
            ControlRecord::Handled | ControlRecord::KeyUpdate { .. } => self.process_guarded(),
            ControlRecord::CloseNotify => Some(End::Close),
            ControlRecord::Fatal(reason) => {
                Refusal::Silent { reason }.record_on(&self.core, self.peer);
                Some(End::Abort)
            }
            ControlRecord::RekeyUnsupported => {
                Some(self.close_for_keys(1001, Reason::TlsRekeyUnsupported))
            }
        }
    }

    /// The synchronous step under `catch_unwind`.
    fn process_guarded(&mut self) -> Option<End> {
        match catch_unwind(AssertUnwindSafe(|| self.process())) {
            Ok(step) => step,
            Err(panic) => {
                self.core.metrics.panics.inc();
                tracing::error!(peer = %self.peer, panic = panic_message(&panic), "panic while processing a connection; closing it with 1011");
                Some(self.refuse_after_panic())
            }
        }
    }

    fn refuse_after_panic(&mut self) -> End {
        let refusal = if self.phase.is_upgraded() {
            Refusal::Close {
                code: 1011,
                reason: Reason::Panic,
            }
        } else {
            Refusal::Http {
                status: 500,
                reason: Reason::Panic,
                extra_headers: &[],
            }
        };
        refusal.record_on(&self.core, self.peer);
        // The session's state is suspect after a panic: the close frame is made by hand, and
        // goes behind the whole frames already queued.
        self.phase.break_session();
        self.plaintext = BytesMut::new();
        if !self.layer.is_handshaking() {
            match &refusal {
                Refusal::Close { code, reason } => {
                    self.outbox
                        .push(ws::OutFrame::close_with(*code, reason.as_str()));
                    if self.feed_record_layer().is_err() {
                        return End::Abort;
                    }
                }
                other => {
                    let bytes = other.http_response().unwrap_or_default();
                    if self.layer.send(&bytes).is_err() {
                        return End::Abort;
                    }
                }
            }
        }
        End::Close
    }

    /// The client went away from an open session without a close frame (FIN or reset):
    /// 1006, as RFC 6455 names it. Nothing is counted for a session already closed.
    fn count_closed_without_frame(&self) {
        if self
            .phase
            .session()
            .is_some_and(|s| s.state() != SessionState::Closed)
        {
            self.core.metrics.close_code(1006, Side::Client);
        }
    }

    fn process(&mut self) -> Option<End> {
        let before = self.plaintext.len();
        if let Err(e) = self.layer.process(&mut self.plaintext) {
            // Any alert rustls queued is in the output and is flushed before closing.
            Refusal::Tls { reason: e.reason() }.record_on(&self.core, self.peer);
            return Some(End::Abort);
        }
        let received = (self.plaintext.len() - before) as u64;
        self.core.metrics.bytes_in.add(received);
        self.bytes_in += received;
        // What arrived before the client's close_notify is served first (a close frame in the
        // same flight still gets its reply).
        let step = self.process_plaintext();
        if step.is_none() && self.layer.peer_closed() {
            return Some(End::Close);
        }
        step
    }

    /// The upgrade request, then the session.
    fn process_plaintext(&mut self) -> Option<End> {
        match self.phase {
            Phase::Handshaking => {}
            Phase::Upgrading(_) | Phase::Refused(_) => return None,
            Phase::Open { .. } | Phase::Broken(_) => return self.run_session(),
        }
        if self.layer.is_handshaking() {
            return None;
        }
        match ws::parse_upgrade(&self.plaintext, &self.core.conn.handshake_limits) {
            Ok(None) => return None,
            Err(e) => {
                let refusal = Refusal::Http {
                    status: e.status(),
                    reason: Reason::from(&e),
                    extra_headers: e.extra_headers(),
                };
                return Some(self.refuse_http(refusal));
            }
            Ok(Some((request, consumed))) => {
                let _ = self.plaintext.split_to(consumed);
                let identity = match self.client_identity() {
                    Ok(identity) => identity,
                    Err(refusal) => return Some(self.refuse_upgrade(refusal, &request, None)),
                };
                let crls = self.core.tls.crls.load();
                let decided = self.core.access.admission.decide(
                    &request,
                    identity.as_deref(),
                    &crls,
                    unix_now(),
                    self.core.cores,
                );
                let admitted = match decided {
                    Ok(admitted) => admitted,
                    Err(refusal) => return Some(self.refuse_upgrade(refusal, &request, None)),
                };
                if self
                    .core
                    .access
                    .fleet
                    .as_ref()
                    .is_some_and(|f| f.refuses_new())
                {
                    // `[fleet] down = "refuse_new"`: no new session on state the fleet cannot
                    // see while its Redis is out of reach.
                    let refusal = Refusal::Http {
                        status: 503,
                        reason: Reason::FleetUnavailable,
                        extra_headers: FLEET_RETRY,
                    };
                    return Some(self.refuse_upgrade(refusal, &request, Some(&admitted)));
                }
                let pubsub = self.core.routes.kind(&request.path) == Some(RouteKind::PubSub);
                let routed = match &self.core.upstreams {
                    Some(u) if !pubsub => crate::upstream::relay::route(u, &request).map(Some),
                    _ => Ok(None),
                };
                let route = match routed {
                    Ok(route) => route,
                    Err(refusal) => {
                        return Some(self.refuse_upgrade(refusal, &request, Some(&admitted)))
                    }
                };
                let compression = &self.core.cfg.compression;
                let compress =
                    compression.enabled_for(self.core.routes.compression(&request.path), pubsub);
                let deflate =
                    match crate::compression::negotiate_upgrade(compression, compress, &request) {
                        Ok(deflate) => deflate,
                        Err(reason) => {
                            let refusal = Refusal::Http {
                                status: 400,
                                reason,
                                extra_headers: &[],
                            };
                            return Some(self.refuse_upgrade(refusal, &request, Some(&admitted)));
                        }
                    };
                if admitted.replay.is_some() || route.is_some() || self.counted_in_fleet(&admitted)
                {
                    // The token id's owner core answers first, and the upstream must say
                    // 101 before the client hears it: the loop waits for both.
                    self.phase = Phase::Upgrading(Box::new(PendingUpgrade {
                        request,
                        admitted,
                        route,
                        pubsub,
                        deflate,
                    }));
                    return None;
                }
                let app = if pubsub {
                    self.pubsub_app(&admitted)
                } else {
                    App::Echo
                };
                if let Err(end) = self.upgrade(&request, admitted, app, None, deflate) {
                    return Some(end);
                }
            }
        }
        self.run_session()
    }

    /// A pub/sub session for an admitted client: it may publish when its token carries
    /// `[pubsub] publish_scope`.
    fn pubsub_app(&self, admitted: &Admitted) -> App {
        let Some(hub) = self.core.pubsub.clone() else {
            // Pub/sub runs whenever a route serves it.
            return App::Echo;
        };
        let scope = hub.cfg.publish_scope.as_str();
        let may_publish = admitted
            .token
            .as_ref()
            .is_some_and(|t| t.scopes.iter().any(|s| s == scope));
        let max_data = self.core.session_limits().max_message_bytes;
        App::PubSub(Box::new(crate::pubsub::session::PubsubSession::new(
            hub,
            may_publish,
            max_data,
            self.core.conn.outgoing.clone(),
        )))
    }

    fn refuse_http(&mut self, refusal: Refusal) -> End {
        refusal.record_on(&self.core, self.peer);
        match refusal.http_response() {
            Some(response) if self.layer.send(&response).is_ok() => End::Close,
            _ => End::Abort,
        }
    }

    /// The client certificate's identity (mutual TLS), read once from the verified chain.
    fn client_identity(&mut self) -> Result<Option<Arc<ClientIdentity>>, Refusal> {
        if self.identity.is_some() {
            return Ok(self.identity.clone());
        }
        let Some(negotiated) = self.layer.negotiated() else {
            return Ok(None);
        };
        match ClientIdentity::from_peer(&negotiated.peer_certificates) {
            Ok(identity) => {
                self.identity = identity.map(Arc::new);
                Ok(self.identity.clone())
            }
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "client certificate unreadable");
                Err(Refusal::Http {
                    status: 403,
                    reason: Reason::IdentityUnreadable,
                    extra_headers: &[],
                })
            }
        }
    }

    /// An admission refusal: its counter, and an audit record of who asked for what and why.
    fn refuse_upgrade(
        &mut self,
        refusal: Refusal,
        request: &ws::UpgradeRequest,
        admitted: Option<&Admitted>,
    ) -> End {
        let Refusal::Http { status, reason, .. } = &refusal else {
            return self.refuse_http(refusal);
        };
        refusal.record(&self.core.metrics, self.peer);
        self.core
            .audit
            .record(self.upgrade_event(request, admitted, false, *status, *reason));
        self.trace_upgrade(request, admitted, false, *status, *reason, None);
        match refusal.http_response() {
            Some(response) if self.layer.send(&response).is_ok() => End::Close,
            _ => End::Abort,
        }
    }

    /// The audit record of an upgrade decision. Tokens never enter it: the subject, the id and
    /// the token's SHA-256 only; the request target without a query token.
    fn upgrade_event(
        &self,
        request: &ws::UpgradeRequest,
        admitted: Option<&Admitted>,
        allowed: bool,
        status: u16,
        reason: Reason,
    ) -> AuditEvent {
        let token = admitted.and_then(|a| a.token.as_ref());
        AuditEvent::Upgrade {
            peer: self.peer.to_string(),
            identity: self.identity.as_deref().map(audit_identity),
            path: self.core.access.admission.redact_target(&request.path),
            allowed,
            status,
            reason: reason.as_str().to_owned(),
            jti: token.and_then(|t| t.jti.clone()),
            sub: token.and_then(|t| t.sub.clone()),
            token_sha256: token.map(|t| t.token_sha256_hex.clone()),
        }
    }

    /// The audit record of an upgraded session's end.
    fn close_event(&self) -> AuditEvent {
        AuditEvent::Close {
            peer: self.peer.to_string(),
            identity: self.identity.as_deref().map(audit_identity),
            code: self.phase.session().and_then(Session::close_code),
            reason: match self.phase.upgraded() {
                Some(u) => format!("path {}", u.path),
                None => String::new(),
            },
            bytes_in: self.bytes_in,
            bytes_out: self.bytes_out,
            duration_ms: self.accepted_at.elapsed().as_millis() as u64,
        }
    }

    /// In a fleet with `per_identity_connections`: an identified session is counted fleet-wide
    /// before its 101.
    fn counted_in_fleet(&self, admitted: &Admitted) -> bool {
        self.core.access.fleet.is_some()
            && self.core.cfg.limits.per_identity_connections.is_some()
            && crate::auth::admission::identity_key(admitted, self.identity.as_deref()).is_some()
    }

    /// The fleet's checks of an upgrade, in one round trip: its single-use token id claimed on
    /// every node (401 `replayed` when another had it), its identity counted fleet-wide (429
    /// `identity_connection_limit` at the limit). Redis out of reach, or not answering within
    /// [`FLEET_ANSWER_WAIT`]: a token id cannot be claimed — 401 `replay_check_unavailable`
    /// unless `single_use_down = "local"` — and the identity is counted here (admitted on the
    /// local count). An upgrade never waits on Redis until its handshake deadline.
    async fn admit_in_fleet(
        &mut self,
        pending: &PendingUpgrade,
    ) -> Result<Option<crate::fleet::IdentityHold>, End> {
        let Some(fleet) = self.core.access.fleet.clone() else {
            return Ok(None);
        };
        let claim = pending.admitted.replay.as_ref().map(|check| {
            let ttl_ms = check
                .exp
                .saturating_sub(unix_now())
                .saturating_add(REPLAY_CLAIM_MARGIN_S)
                .saturating_mul(1000);
            (&check.key, ttl_ms)
        });
        // Counted in the fleet (see `counted_in_fleet`): a limit, and an identity to count.
        let identity = self
            .core
            .cfg
            .limits
            .per_identity_connections
            .and_then(|limit| {
                crate::auth::admission::identity_key(&pending.admitted, self.identity.as_deref())
                    .map(|key| (key, limit))
            });
        if claim.is_none() && identity.is_none() {
            return Ok(None);
        }
        let asked = identity.as_ref().map(|(key, limit)| (key.as_str(), *limit));
        let answer = monoio::select! {
            r = fleet.admit(claim, asked) => Some(r),
            _ = monoio::time::sleep(FLEET_ANSWER_WAIT) => Some(Err(())),
            _ = self.deadline.expired() => None,
        };
        let hold = || identity.as_ref().map(|(key, _)| fleet.hold(key));
        let refusal = match answer {
            None => return Err(self.on_deadline()),
            Some(Ok(crate::fleet::FleetVerdict::Admitted)) => return Ok(hold()),
            Some(Err(())) if fleet.admits_unanswered(claim.is_some()) => return Ok(hold()),
            Some(Ok(crate::fleet::FleetVerdict::AtIdentityLimit)) => Refusal::Http {
                status: 429,
                reason: Reason::IdentityConnectionLimit,
                extra_headers: FLEET_RETRY,
            },
            Some(Ok(crate::fleet::FleetVerdict::Replayed)) => {
                token_refusal(crate::auth::jwt::JwtRefusal::Replayed)
            }
            Some(Err(())) => token_refusal(crate::auth::jwt::JwtRefusal::ReplayCheckUnavailable),
        };
        Err(self.refuse_upgrade(refusal, &pending.request, Some(&pending.admitted)))
    }

    /// Asks the token id's owner core whether the id was seen and, in proxy mode, opens the
    /// upstream session; then upgrades or refuses. The handshake deadline bounds the waits.
    async fn finish_pending_upgrade(&mut self, pending: Box<PendingUpgrade>) -> Result<(), End> {
        if let Some(check) = pending.admitted.replay.clone() {
            let replay = self.core.access.replay.clone();
            let answer = monoio::select! {
                r = replay.check(&check, unix_now()) => Some(r),
                _ = self.deadline.expired() => None,
            };
            match answer {
                None => return Err(self.on_deadline()),
                Some(Err(refusal)) => {
                    return Err(self.refuse_upgrade(
                        refusal,
                        &pending.request,
                        Some(&pending.admitted),
                    ))
                }
                Some(Ok(())) => {}
            }
        }
        let fleet_hold = self.admit_in_fleet(&pending).await?;
        let app = match &pending.route {
            None if pending.pubsub => self.pubsub_app(&pending.admitted),
            None => App::Echo,
            Some(route) => {
                // Boxed: opening an upstream session (connect, TLS, upgrade) is a large future
                // that only proxied connections need, once. Held inline it would size every
                // connection's task, and that size is each idle connection's memory.
                let traceparent = self.traceparent_upstream(&pending.request);
                let opening = Box::pin(Proxy::open(
                    &self.core,
                    &pending,
                    route,
                    self.identity.as_deref(),
                    self.peer,
                    &self.deadline,
                    traceparent.as_deref(),
                ));
                match opening.await {
                    Ok(proxy) => App::Proxy(Box::new(proxy)),
                    Err(refusal) => {
                        return Err(self.refuse_upgrade(
                            refusal,
                            &pending.request,
                            Some(&pending.admitted),
                        ))
                    }
                }
            }
        };
        self.upgrade(
            &pending.request,
            pending.admitted,
            app,
            fleet_hold,
            pending.deflate,
        )?;
        // Frames the client sent right behind its request.
        match self.process_guarded() {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }

    /// Sends the 101 and switches to the WebSocket session, whose messages go to `app`. Refused
    /// here, the connection keeps `app` only to close its upstream with it.
    fn upgrade(
        &mut self,
        request: &ws::UpgradeRequest,
        admitted: Admitted,
        app: App,
        fleet_hold: Option<crate::fleet::IdentityHold>,
        deflate: Option<wssedge_proto::ws::deflate::DeflateAgreement>,
    ) -> Result<(), End> {
        let slot = self
            .core
            .access
            .admission
            .take_identity_slot(&admitted, self.identity.as_deref());
        let identity_slot = match slot {
            Ok(slot) => slot,
            Err(refusal) => {
                self.phase = Phase::Refused(app);
                return Err(self.refuse_upgrade(refusal, request, Some(&admitted)));
            }
        };
        let now = Instant::now();
        let rates = &self.core.access.rates;
        let identity = crate::auth::admission::identity_key(&admitted, self.identity.as_deref())
            .and_then(|key| rates.identities.attach(&key, now));
        let limiter = ConnectionLimiter::new(&rates.connection, identity, now)
            .with_control(&rates.control, now);
        let limiter = (!limiter.is_unlimited()).then_some(limiter);
        let mut response = Vec::with_capacity(160);
        let extensions = deflate.map(|a| a.response_value());
        ws::write_response_101(
            request,
            admitted.protocol.as_deref(),
            extensions.as_deref(),
            &mut response,
        );
        if self.layer.send(&response).is_err() {
            self.phase = Phase::Refused(app);
            return Err(End::Abort);
        }
        self.slot.upgraded();
        self.core
            .audit
            .record(self.upgrade_event(request, Some(&admitted), true, 101, Reason::Ok));
        self.trace_upgrade(
            request,
            Some(&admitted),
            true,
            101,
            Reason::Ok,
            Some(app.kind()),
        );
        if let Some(trace) = &mut self.trace {
            trace.upgraded_at = Some(Instant::now());
        }
        let path = self.core.access.admission.redact_target(&request.path);
        let token = admitted.token.as_ref();
        let entry = self.core.access.live.register(
            token.and_then(|t| t.sub.clone()),
            token.and_then(|t| t.jti.clone()),
            self.identity.clone(),
        );
        let fleet = self.core.access.fleet.as_ref().map(|f| {
            let info = crate::fleet::SessionInfo {
                node: String::new(),
                peer: self.peer.to_string(),
                // The token's subject, else the client certificate's identity.
                subject: admitted
                    .token
                    .as_ref()
                    .and_then(|t| t.sub.clone())
                    .or_else(|| {
                        crate::auth::admission::identity_key(&admitted, self.identity.as_deref())
                    }),
                path: path.clone(),
                since: unix_now(),
            };
            let id = format!("{}-{}", self.core.index, entry.id());
            Box::new(f.opened(id, info, fleet_hold))
        });
        if let Some(at) = admitted.close_at_unix {
            // To the instant, not the rounded second: the wheel's tick is the only lateness.
            let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(at);
            let left = at
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            entry.session.expire_at(Instant::now() + left);
        }
        let core = &self.core;
        core.metrics.handshake(true, Reason::Ok);
        core.metrics
            .handshake_time
            .observe(self.accepted_at.elapsed());
        let now = Instant::now();
        self.deadline.set(now + core.cfg.limits.idle_timeout());
        let mut session = Session::new(core.session_limits());
        if let Some(agreed) = deflate {
            session = session.with_deflate(agreed.server_params(core.cfg.compression.level));
        }
        if let Some(interval) = core.cfg.limits.ping_interval() {
            let pong_timeout = core.cfg.limits.pong_timeout();
            session = session.with_heartbeat(
                Heartbeat {
                    interval,
                    pong_timeout,
                },
                now,
            );
        }
        if let Some(at) = session.poll_timeout() {
            self.session_timer.set(at);
        }
        // The redacted target: a query token must not reach the logs.
        tracing::debug!(peer = %self.peer, path, "upgraded");
        self.phase = Phase::Open {
            session,
            open: Upgraded {
                app,
                live: entry,
                limiter,
                _identity_slot: identity_slot,
                _fleet: fleet,
                path,
            },
        };
        Ok(())
    }

    /// Feeds plaintext to the session, echoes messages and encrypts what the session sends.
    fn run_session(&mut self) -> Option<End> {
        let core = self.core.clone();
        let metrics = &core.metrics;
        let Phase::Open { session, open } = &mut self.phase else {
            return None;
        };
        let now = Instant::now();
        session.note_received(now);
        self.deadline.set(now + core.cfg.limits.idle_timeout());
        session.receive(&mut self.plaintext);
        // A compressed message's bytes count as its frames arrive, its inflated size when it
        // completes: a step that only reads a fragment still has bytes to count.
        let inflated = session.take_inflated();
        if inflated.messages > 0 || inflated.compressed_bytes > 0 {
            metrics.deflate_in_messages.add(inflated.messages);
            metrics.deflate_in_compressed.add(inflated.compressed_bytes);
            metrics.deflate_in_uncompressed.add(inflated.inflated_bytes);
        }
        // Closed for its rate in this step: later messages in the same read are not delivered.
        let mut rate_closed = false;
        // Empty fragments complete nothing and cost a parse each, like a ping without the
        // pong: they take from the control allowance (a message of 10^6 of them would pass
        // every message limit).
        for _ in 0..session.take_empty_fragments() {
            if let Verdict::Exceeded { which, unit } = check_control(&mut open.limiter, now, 0) {
                close_for_rate(&core, self.peer, session, &mut open.app, which, unit);
                rate_closed = true;
                break;
            }
        }
        while let Some(event) = session.poll_event() {
            match event {
                Event::Message(message) => {
                    metrics.frames_in.inc();
                    #[cfg(feature = "panic-injection")]
                    if message.payload.len() == PANIC_TRIGGER.len()
                        && message.payload.to_vec() == PANIC_TRIGGER
                    {
                        panic!("panic injected by a test client");
                    }
                    if rate_closed {
                        continue;
                    }
                    let verdict = match open.limiter.as_mut() {
                        Some(limiter) => limiter.check(now, message.payload.len()),
                        None => Verdict::Pass,
                    };
                    if let Verdict::Exceeded { which, unit } = verdict {
                        if open.app.over_rate() == OverRate::Drop {
                            // Market data: the whole message goes, the session stays.
                            metrics.rate_limited(which.as_str(), "drop");
                            metrics.lossy_drop(LossyDrop::RateLimit);
                            continue;
                        }
                        close_for_rate(&core, self.peer, session, &mut open.app, which, unit);
                        rate_closed = true;
                        continue;
                    }
                    open.app
                        .on_message(session, message, now, &core.conn.outgoing);
                }
                Event::Ping(payload) | Event::Pong(payload) => {
                    metrics.frames_in.inc();
                    if rate_closed {
                        continue;
                    }
                    let verdict = check_control(&mut open.limiter, now, payload.len());
                    if let Verdict::Exceeded { which, unit } = verdict {
                        // Control frames are never dropped (a ping's pong is already queued):
                        // a client over its control allowance is closed, lossy route or not.
                        close_for_rate(&core, self.peer, session, &mut open.app, which, unit);
                        rate_closed = true;
                    }
                }
                Event::PeerClosed { code, reason } => {
                    metrics.frames_in.inc();
                    metrics.close_code(code.unwrap_or(1005), Side::Client);
                    open.app.on_client_closed(code, &reason);
                }
                Event::Failed { code, reason } => {
                    match reason {
                        ws::Violation::InflatedTooLarge => metrics.inflate_too_large.inc(),
                        ws::Violation::BadCompressedData => metrics.inflate_corrupt.inc(),
                        _ => {}
                    }
                    Refusal::Close {
                        code,
                        reason: reason.into(),
                    }
                    .record_on(&core, self.peer);
                    open.app.on_session_closing(Reason::ClientProtocolError);
                }
            }
        }
        if let Err(end) = self.encrypt_outgoing() {
            return Some(end);
        }
        match self.session_state() {
            Some(SessionState::Closed) => Some(End::Close),
            _ => None,
        }
    }

    /// Once the handshake is done, the record layer decides where records are encrypted from
    /// now on (see [`RecordLayer::hand_off`]); a hand-off that cannot go on ends the connection.
    fn settle_record_layer(&mut self) -> Option<End> {
        let end = {
            let fd = sockopt::borrow_fd(&self.stream);
            let mut pool = self.core.buffers.pool.borrow_mut();
            self.layer.hand_off(
                fd,
                &mut pool,
                &self.core.ktls,
                &self.core.metrics,
                self.peer,
            )
        }?;
        Some(self.end_for_layer(end))
    }

    /// The hand-off is not possible for this connection: counted and served in userspace, or
    /// closed when kTLS is required.
    fn stay_in_userspace(&mut self, reason: KtlsFallback, detail: &str) -> Option<End> {
        let end = self.layer.stay_in_userspace(
            reason,
            detail,
            self.core.ktls.mode,
            &self.core.metrics,
            self.peer,
        )?;
        Some(self.end_for_layer(end))
    }

    fn end_for_layer(&self, end: LayerEnd) -> End {
        Refusal::Silent { reason: end.reason }.record_on(&self.core, self.peer);
        if end.abort {
            End::Abort
        } else {
            End::Close
        }
    }

    /// Under kTLS, the record layer's key maintenance: our KeyUpdate when due (waiting for room
    /// for it), or a 1001 close before the suite's record limit.
    /// `Ok(Some(end))`: flush, then end; `Err(end)`: end now, nothing more may be written.
    /// `closing`: the connection is ending (our close may be queued), so a wait for room is
    /// bounded by `close_timeout_ms`, not the write timeout.
    async fn keep_keys_fresh(&mut self, closing: bool) -> Result<Option<End>, End> {
        self.layer
            .sync_key_counts(sockopt::borrow_fd(&self.stream), self.peer);
        loop {
            let fd = sockopt::borrow_fd(&self.stream);
            match self.layer.refresh_keys(fd, self.peer, &self.core.metrics) {
                KeyStep::Fresh => return Ok(None),
                KeyStep::WaitWritable => {
                    // The KeyUpdate must go out before more data: wait for room, bounded by
                    // the write timeout like any write (the close timeout once closing).
                    let limits = &self.core.cfg.limits;
                    let wait = if closing {
                        limits.close_timeout()
                    } else {
                        limits.write_timeout()
                    };
                    self.wait_writable(wait).await?;
                }
                KeyStep::Close(reason) => return Ok(Some(self.close_for_keys(1001, reason))),
                KeyStep::Broken => {
                    Refusal::Silent {
                        reason: Reason::TlsRekeyFailed,
                    }
                    .record_on(&self.core, self.peer);
                    return Err(End::Abort);
                }
            }
        }
    }

    /// Waits until the socket takes more data, within `wait`.
    async fn wait_writable(&mut self, wait: std::time::Duration) -> Result<(), End> {
        let limit = Instant::now() + wait;
        match self.writable_by(limit).await {
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(End::Abort),
            None => {
                Refusal::Silent {
                    reason: Reason::WriteTimeout,
                }
                .record_on(&self.core, self.peer);
                Err(End::Abort)
            }
        }
    }

    /// Closes because the TLS keys cannot go on: a close frame when upgraded, then
    /// close_notify (the session does not wait for the client's close reply).
    fn close_for_keys(&mut self, code: u16, reason: Reason) -> End {
        // The keys cannot go on: what the client sends next may not even decrypt (a KeyUpdate
        // the kernel cannot follow), so its close reply is not awaited.
        self.skip_close_reply = true;
        if self.session_state() == Some(SessionState::Open) {
            return self.close_session(code, reason);
        }
        Refusal::Silent { reason }.record_on(&self.core, self.peer);
        End::Close
    }

    /// Sets this connection's share of the core's buffer budget; returns the core's total.
    fn hold(&mut self, held: usize) -> usize {
        let core = &self.core;
        let total = core.counts.buffered.get() - self.held + held;
        core.counts.buffered.set(total);
        core.metrics
            .buffered_bytes
            .add(held as i64 - self.held as i64);
        self.held = held;
        total
    }

    /// Moves the session's outgoing frames to the outbox (no copy), then hands the record
    /// layer what it has room for.
    fn encrypt_outgoing(&mut self) -> Result<(), End> {
        self.drain_session();
        self.feed_record_layer()
    }

    /// Moves the session's outgoing frames to the outbox: header bytes and shared payloads,
    /// nothing copied yet.
    fn drain_session(&mut self) {
        let Some(session) = self.phase.session_mut() else {
            return;
        };
        let mut frames = 0u64;
        while let Some(frame) = session.poll_transmit() {
            frames += 1;
            self.outbox.push(frame);
        }
        self.core.metrics.frames_out.add(frames);
    }

    /// Hands queued frame bytes to the record layer (sealed straight into records, or through
    /// the core's staging buffer to rustls or the kernel) while it holds less than the outbound
    /// cap, in pieces of at most 64 KiB: the copy follows the socket's pace, whatever the
    /// message's size.
    pub(super) fn feed_record_layer(&mut self) -> Result<(), End> {
        const STAGING_FLUSH: usize = 64 * 1024;
        if self.outbox.is_empty() {
            return Ok(());
        }
        let cap = self.core.cfg.limits.max_outbound_bytes;
        let mut staging = self.core.buffers.staging.borrow_mut();
        loop {
            let pending = self.layer.pending_output_len();
            if self.outbox.is_empty() || pending >= cap {
                break;
            }
            let room = (cap - pending).min(STAGING_FLUSH);
            let n = match self.layer.seal_frames(&mut self.outbox, room) {
                // Our userspace records: the frames are copied once, into their records.
                Some(sealed) => sealed.map_err(|_| End::Abort)?,
                None => {
                    staging.clear();
                    let n = self.outbox.fill(&mut staging, room);
                    self.layer.send(&staging).map_err(|_| End::Abort)?;
                    n
                }
            };
            self.core.metrics.bytes_out.add(n as u64);
            self.bytes_out += n as u64;
        }
        staging.clear();
        Ok(())
    }

    /// Returns the read buffer once drained, frees the queues a pass emptied (an idle
    /// connection holds neither) and keeps the held-buffers gauge true.
    fn account_buffers(&mut self) {
        self.layer
            .release_idle(&mut self.core.buffers.pool.borrow_mut());
        if self.plaintext.is_empty() && self.plaintext.capacity() > 0 {
            self.plaintext = BytesMut::new();
        }
        self.outbox.release_idle();
        if let Some(session) = self.phase.session_mut() {
            session.release_idle();
        }
        let holds = self.layer.holds_read_buffer() || self.plaintext.capacity() > 0;
        if holds != self.holds_read_buffer {
            self.core
                .metrics
                .read_buffers_held
                .add(if holds { 1 } else { -1 });
            self.holds_read_buffer = holds;
        }
    }

    /// The session deadline fired: a revocation's close order, or the token's expiry.
    fn on_session_end(&mut self) -> End {
        let order = self
            .phase
            .upgraded()
            .and_then(|u| u.live.session.order())
            .unwrap_or((1008, Reason::TokenExpired));
        let (code, reason) = order;
        self.close_session(code, reason)
    }

    fn on_deadline(&mut self) -> End {
        match self.phase.is_upgraded() {
            false => {
                let refusal = Refusal::Tls {
                    reason: Reason::HandshakeTimeout,
                };
                refusal.record_on(&self.core, self.peer);
                End::Abort
            }
            true => self.close_session(1001, Reason::IdleTimeout),
        }
    }

    /// Ends the connection: flushes, says close_notify when TLS is up, and closes.
    async fn finish(&mut self, end: End) {
        if self.phase.is_upgraded() {
            self.core.audit.record(self.close_event());
            self.trace_session_end();
        }
        // Everything after our close frame shares one deadline: the upstream's close, the last
        // bytes, the client's close reply and close_notify together get close_timeout_ms,
        // whatever the client or the upstream does.
        let close_by = Instant::now() + self.core.cfg.limits.close_timeout();
        // No hand-off to the kernel any more: what the client sends now is read as it comes.
        self.finishing = true;
        // Whatever ended the client side ends the app's far side (the upstream). The two sides
        // close at the same time, so a slow upstream does not spend the client's share of the
        // deadline.
        // The far side's close is boxed: a large future only proxied connections need, once,
        // that would otherwise size every connection's task.
        let far_side = self
            .phase
            .app_mut()
            .and_then(App::take_far_side)
            .map(|proxy| Box::pin(proxy.close_with_client(self.core.clone(), close_by)));
        let upstream = async move {
            if let Some(closing) = far_side {
                closing.await;
            }
        };
        monoio::join!(self.finish_client(end, close_by), upstream);
        // A readiness wait that lost to a deadline is cancelled (monoio's async-cancel), but the
        // cancellation completes later: until then the operation holds the socket, and
        // dropping the stream would not close it. Shutting the socket down ends any such wait
        // (and tells the client at once); the descriptor is closed when the last operation
        // lets go of it.
        sockopt::shutdown_both(sockopt::borrow_fd(&self.stream));
    }

    /// The client's side of the end: the last bytes, its close reply, close_notify.
    async fn finish_client(&mut self, end: End, close_by: Instant) {
        if matches!(end, End::Close) && !self.layer.is_handshaking() {
            let mut ok = self.flush_before_close(close_by).await.is_ok();
            let close_sent = self.session_state() == Some(SessionState::CloseSent);
            if ok && close_sent && !self.skip_close_reply {
                ok = self.await_close_reply(close_by).await;
            }
            if ok
                && self.layer.queue_close_notify()
                && self.flush_before_close(close_by).await.is_ok()
            {
                self.send_kernel_close_notify(close_by).await;
            }
        } else if self.output_pending() {
            // An alert (TLS failure) or the last frames: best effort, bounded by the close timeout.
            let _ = self.flush_before_close(close_by).await;
        }
    }
}

impl Conn {
    /// Under kTLS, close_notify is a record of its own sent with `sendmsg`; a full socket (the
    /// last frames may just have filled it) is waited for until the close's deadline.
    async fn send_kernel_close_notify(&mut self, close_by: Instant) {
        loop {
            let fd = sockopt::borrow_fd(&self.stream);
            match self.layer.send_close_notify(fd) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !matches!(self.writable_by(close_by).await, Some(Ok(()))) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "close_notify not sent");
                    return;
                }
                Ok(()) => return,
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.hold(0);
        let core = &self.core;
        if self.holds_read_buffer {
            core.metrics.read_buffers_held.add(-1);
        }
        if let Ok(mut pool) = core.buffers.pool.try_borrow_mut() {
            self.layer.release_idle(&mut pool);
        }
        if self.layer.mode() == Some(TlsMode::Kernel) {
            core.metrics.ktls_open.add(-1);
        }
    }
}

/// One control frame against the connection's control allowance (no limiter: unlimited).
/// A token's refusal as the upgrade's answer (its status, reason and challenge headers).
fn token_refusal(refusal: crate::auth::jwt::JwtRefusal) -> Refusal {
    Refusal::Http {
        status: refusal.status(),
        reason: Reason::from(&refusal),
        extra_headers: refusal.extra_headers(),
    }
}

fn check_control(
    limiter: &mut Option<ConnectionLimiter>,
    now: Instant,
    payload_len: usize,
) -> Verdict {
    limiter
        .as_mut()
        .map_or(Verdict::Pass, |l| l.check_control(now, payload_len))
}

/// A client over one of its rates (`which`: connection, identity, control): counted, refused
/// (`1008 rate_limited`, audited), its close queued, and its upstream told it is going.
fn close_for_rate(
    core: &Core,
    peer: SocketAddr,
    session: &mut Session,
    app: &mut App,
    which: crate::limits::Scope,
    unit: crate::limits::Unit,
) {
    core.metrics.rate_limited(which.as_str(), "close");
    tracing::debug!(%peer, scope = which.as_str(), unit = unit.as_str(), "rate limit exceeded");
    Refusal::Close {
        code: crate::limits::RATE_LIMITED_CODE,
        reason: crate::limits::RATE_LIMITED_REASON,
    }
    .record_on(core, peer);
    session.close(
        crate::limits::RATE_LIMITED_CODE,
        crate::limits::RATE_LIMITED_REASON.as_str(),
    );
    app.on_session_closing(Reason::ClientRateLimited);
}

/// A client identity as audit records carry it.
fn audit_identity(id: &ClientIdentity) -> crate::audit::Identity {
    crate::audit::Identity {
        subject_cn: id.subject_cn.clone(),
        dns: id.dns.clone(),
        uris: id.uris.clone(),
        fingerprint_sha256: Some(id.fingerprint_sha256.clone()),
    }
}

/// What woke a connection's loop.
enum Wake {
    Readable(std::io::Result<()>),
    Writable(std::io::Result<()>),
    Deadline,
    /// Still handshaking, and a newer handshake took this one's place.
    Evicted,
    SessionEnd,
    /// The session's timer (its heartbeat while open).
    SessionTimer,
    /// A frame or fragmented message stayed incomplete for `frame_timeout_ms`.
    FrameTimeout,
    WriteStalled,
    /// The app's far side (the upstream in proxy mode) is readable.
    AppReadable(std::io::Result<()>),
    /// The app stopped reading at a bound with more possibly held: read again at once.
    AppMore,
    /// The session paused inflating a compressed frame: go on at once (after a turn).
    Inflate,
    AppWritable(std::io::Result<()>),
    /// The app's far side took nothing for the write timeout.
    AppStalled,
    /// The far side left a frame half-sent for `frame_timeout_ms`.
    AppFrameTimeout,
    /// Something arrived for the client from elsewhere on the edge (pub/sub).
    AppArrived,
}

/// Resolves when the app's far side is readable; never without one.
async fn app_readable(app: Option<&App>) -> std::io::Result<()> {
    match app {
        Some(app) => app.readable().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the app's far side takes more; never without one.
async fn app_writable(app: Option<&App>) -> std::io::Result<()> {
    match app {
        Some(app) => app.writable().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the app's far side stalled; never without one.
async fn app_stalled(app: Option<&App>) {
    match app {
        Some(app) => app.stalled().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the app's far side left a frame half-sent too long; never without an app.
async fn app_frame_timed_out(app: Option<&App>) {
    match app {
        Some(app) => app.frame_timed_out().await,
        None => std::future::pending().await,
    }
}

/// Resolves when something arrived for the client; never without an app that gets arrivals.
async fn app_arrived(app: Option<&App>) {
    match app {
        Some(app) => app.arrived().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the session's deadline fires; never without a live session.
async fn session_end(live: Option<&LiveSession>) {
    match live {
        Some(session) => session.deadline().expired().await,
        None => std::future::pending().await,
    }
}

/// The text message that makes a `panic-injection` build panic inside the connection.
#[cfg(feature = "panic-injection")]
const PANIC_TRIGGER: &[u8] = b"__wssedge_panic__";

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Polls a future under `catch_unwind`: the last line of defence for panics outside the
/// guarded processing step (the socket is then simply dropped).
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match catch_unwind(AssertUnwindSafe(|| self.0.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn the_connection_state_stays_small() {
        // Paid by every idle connection (boxed beside its task's future): what only some
        // phases need lives behind a pointer (see perf-scripts/idle-memory.sh for the
        // breakdown this keeps true).
        let conn = std::mem::size_of::<Conn>();
        assert!(conn <= 2048, "Conn is {conn} bytes");
        assert!(
            std::mem::align_of::<Conn>() <= 16,
            "an over-aligned field pads every connection"
        );
    }
}
