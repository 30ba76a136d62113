//! One core: a pinned thread, its monoio runtime (io_uring, or the legacy driver where io_uring
//! is unavailable), its listeners, its timer wheel, its buffer pool and its connections.
//! Nothing here is shared with another core except the metrics the admin thread reads.

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpListener;

use crate::audit::{AuditEvent, AuditSink};
use crate::auth::admission::{Admission, ReplayAsk, ReplayShards};
use crate::auth::ReplayStore;
use crate::bufpool::BufPool;
use crate::config::Config;
use crate::limits::ip_limit::IpLimiter;
use crate::metrics::CoreMetrics;
use crate::reason::Reason;
use crate::refuse::{Refusal, RefusalRecorder};
use crate::sockopt::AcceptedSocketOptions;
use crate::tls::ktls::KtlsPolicy;
use crate::ws::{HandshakeLimits, SessionLimits};

use super::conn;
use super::lifecycle::{DrainOrder, Lifecycle};
use super::live::{CloseOrder, LiveRegistry, LiveSession};
use super::timer::{TimerWheel, TICK};
use super::tls_state::TlsState;

/// Everything one core's connections share. Single-threaded: cells, no locks.
pub(crate) struct Core {
    pub index: usize,
    /// How many cores serve (token ids are sharded across them).
    pub cores: usize,
    pub cfg: Arc<Config>,
    /// The TLS config new handshakes start from, and the CRLs (both swappable).
    pub tls: Arc<TlsState>,
    pub ktls: Arc<KtlsPolicy>,
    /// Set when the edge stops: the ticker ends the core.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// Who is let in, how far they may go, and the sessions that stay answerable.
    pub access: Access,
    /// Proxy mode: routes, groups, breakers (shared by the cores; atomics only).
    pub upstreams: Option<Arc<crate::upstream::Upstreams>>,
    /// Which kind of route a path falls under (upstream group or pub/sub).
    pub routes: Arc<crate::routes::RouteKinds>,
    /// This core's pub/sub, when a route serves it.
    pub pubsub: Option<Rc<crate::pubsub::CorePubsub>>,
    /// This core's producer end of the audit trail (never blocks, never drops).
    pub audit: AuditSink,
    /// OpenTelemetry spans (`[telemetry]`): handed to the exporter thread, never waited on.
    pub telemetry: Option<crate::telemetry::SpanSink>,
    pub metrics: Arc<CoreMetrics>,
    pub wheel: Rc<TimerWheel>,
    pub buffers: CoreBuffers,
    pub counts: CoreCounts,
    /// What every accepted connection is set up with.
    pub conn: ConnSettings,
    /// `[server] busy_poll_us`: the spinner that connection passes mark (None: off).
    pub busy: Option<Rc<super::busy_poll::BusyPoll>>,
}

/// Admission and the limits behind it, on one core.
pub(crate) struct Access {
    /// Per-IP limits at accept (when the kernel does not enforce them at the SYN).
    pub ip_limiter: Arc<IpLimiter>,
    pub admission: Arc<Admission>,
    /// Message rate limits: per connection, and this core's side of the identity budgets.
    pub rates: CoreRates,
    /// This core's shard of the replay store and its lines to the others.
    pub replay: Rc<ReplayShards>,
    /// Upgraded sessions, for revocations and token expiry.
    pub live: Rc<LiveRegistry>,
    /// In a fleet: the fleet-wide replay check and the `down` rule for new upgrades.
    pub fleet: Option<crate::fleet::FleetAdmission>,
}

/// The core's shared buffers.
pub(crate) struct CoreBuffers {
    pub pool: RefCell<BufPool>,
    /// Plaintext staging for encryption: frames are gathered here and encrypted at once, so a
    /// burst of small frames becomes few records. Emptied within each step, so one per core.
    pub staging: RefCell<Vec<u8>>,
}

/// The core's connection counts and their caps.
pub(crate) struct CoreCounts {
    pub connections: Cell<usize>,
    /// Connections that have sent nothing yet, oldest first (see [`super::line`]).
    pub silent: Rc<super::line::Line>,
    /// Connections whose first byte arrived, until their 101 (or end), oldest first.
    pub handshaking: Rc<super::line::Line>,
    /// How long this core's handshakes take (how long a place is held before it may be taken).
    pub handshake_pace: super::line::HandshakePace,
    pub max_connections: usize,
    /// Bytes held in partly received frames and messages by all of this core's connections.
    pub buffered: Cell<usize>,
}

/// The socket options and protocol limits every connection is set up with.
pub(crate) struct ConnSettings {
    pub socket_opts: AcceptedSocketOptions,
    pub handshake_limits: HandshakeLimits,
    session_limits: SessionLimits,
    /// Sends messages, compressed where the session agreed to permessage-deflate.
    pub outgoing: crate::compression::Outgoing,
}

impl ConnSettings {
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_frame_bytes: self.session_limits.max_frame_bytes,
            max_message_bytes: self.session_limits.max_message_bytes,
        }
    }
}

impl Core {
    pub fn session_limits(&self) -> SessionLimits {
        self.conn.session_limits()
    }

    pub fn new(
        start: &CoreStart,
        peers: Vec<futures_channel::mpsc::Sender<ReplayAsk>>,
        audit: AuditSink,
    ) -> Self {
        let cfg = start.cfg.clone();
        let cores = start.cores;
        let l = &cfg.limits;
        let wheel = TimerWheel::new(Instant::now());
        Self {
            index: start.index,
            cores,
            tls: start.tls.clone(),
            ktls: start.ktls.clone(),
            stop: start.stop.clone(),
            access: Access {
                ip_limiter: start.ip_limiter.clone(),
                admission: start.admission.clone(),
                rates: CoreRates {
                    connection: start.rates.connection,
                    control: start.rates.control,
                    identities: crate::limits::CoreBudgets::new(start.rates.identities.clone()),
                },
                replay: Rc::new(ReplayShards::new(
                    start.index,
                    ReplayStore::new(start.replay.capacity, start.replay.leeway_s)
                        .with_max_lifetime(start.replay.max_lifetime_s),
                    peers,
                )),
                live: LiveRegistry::new(wheel.clone()),
                fleet: start.fleet.clone(),
            },
            upstreams: start.upstreams.clone(),
            routes: start.routes.clone(),
            pubsub: start
                .pubsub
                .as_ref()
                .map(|p| Rc::new(crate::pubsub::CorePubsub::new(&p.shared, start.index))),
            audit,
            telemetry: start.telemetry.clone(),
            metrics: start.metrics.clone(),
            buffers: CoreBuffers {
                pool: RefCell::new(BufPool::default()),
                staging: RefCell::new(Vec::new()),
            },
            wheel,
            counts: CoreCounts {
                connections: Cell::new(0),
                silent: Rc::default(),
                handshaking: Rc::default(),
                handshake_pace: Default::default(),
                max_connections: l.max_connections.div_ceil(cores),
                buffered: Cell::new(0),
            },
            conn: ConnSettings {
                socket_opts: AcceptedSocketOptions {
                    send_buffer_bytes: l.socket_send_buffer_bytes,
                    recv_buffer_bytes: l.socket_recv_buffer_bytes,
                },
                handshake_limits: HandshakeLimits {
                    max_request_bytes: l.max_request_bytes,
                    max_headers: l.max_headers,
                },
                session_limits: SessionLimits {
                    max_frame_bytes: l.max_frame_bytes,
                    max_message_bytes: l.max_message_bytes,
                },
                outgoing: crate::compression::Outgoing::new(
                    &cfg.compression,
                    start.metrics.clone(),
                ),
            },
            busy: super::busy_poll::BusyPoll::new(cfg.server.busy_poll_us),
            cfg,
        }
    }
}

/// Shuts the core's listeners down when the core stops, however it stops (unwinding too), so
/// the kernel stops steering SYNs to a core that will never accept them. Disarmed once a drain
/// has dealt with the listeners itself: shut down, or handed over to a successor process (whose
/// listeners they are now too: shutting them down would close them for it as well).
struct ListenerShutdown {
    fds: Vec<RawFd>,
    armed: Rc<Cell<bool>>,
}

impl Drop for ListenerShutdown {
    fn drop(&mut self) {
        if !self.armed.get() {
            return;
        }
        // The descriptors belong to listeners owned by this core's runtime, which is still
        // alive while this guard drops (it is declared after the runtime); shutdown does not
        // close them, it only stops listening.
        for &fd in &self.fds {
            let _ = wssedge_sys::sock::shutdown_listener_raw(fd);
        }
    }
}

/// What a core thread is started with (all `Send`; the core's own state is built on its thread).
pub(crate) struct CoreStart {
    pub index: usize,
    pub cores: usize,
    pub cpu: usize,
    pub cfg: Arc<Config>,
    pub tls: Arc<TlsState>,
    pub ktls: Arc<KtlsPolicy>,
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    pub ip_limiter: Arc<IpLimiter>,
    pub admission: Arc<Admission>,
    pub upstreams: Option<Arc<crate::upstream::Upstreams>>,
    pub routes: Arc<crate::routes::RouteKinds>,
    /// The cores' pub/sub lines, this core's inbox and feeds.
    pub pubsub: Option<crate::pubsub::CorePubsubStart>,
    pub rates: RatesStart,
    pub audit: AuditSink,
    pub telemetry: Option<crate::telemetry::SpanSink>,
    pub replay: ReplayStart,
    pub metrics: Arc<CoreMetrics>,
    pub listeners: Vec<std::net::TcpListener>,
    /// Drains reach the core through it (checked on every tick).
    pub lifecycle: Arc<Lifecycle>,
    /// In a fleet: what upgrades ask of it.
    pub fleet: Option<crate::fleet::FleetAdmission>,
}

impl RefusalRecorder for Core {
    fn metrics(&self) -> &CoreMetrics {
        &self.metrics
    }
    fn audit(&self) -> &AuditSink {
        &self.audit
    }
}

/// The rate limits as handed to a core thread.
pub(crate) struct RatesStart {
    pub connection: crate::limits::RateLimit,
    pub control: crate::limits::RateLimit,
    pub identities: Arc<crate::limits::IdentityBudgets>,
}

/// A core's rate limits.
pub(crate) struct CoreRates {
    pub connection: crate::limits::RateLimit,
    /// Each connection's allowance for pings and pongs.
    pub control: crate::limits::RateLimit,
    pub identities: crate::limits::CoreBudgets,
}

/// A core's replay shard, as handed to its thread.
pub(crate) struct ReplayStart {
    pub peers: Vec<futures_channel::mpsc::Sender<ReplayAsk>>,
    pub questions: futures_channel::mpsc::Receiver<ReplayAsk>,
    pub capacity: usize,
    pub leeway_s: u64,
    /// `max_token_lifetime_s`: bounds the expiry of entries a predecessor hands over.
    pub max_lifetime_s: Option<u64>,
}

/// What the other cores send this one.
struct CoreInboxes {
    replay: futures_channel::mpsc::Receiver<ReplayAsk>,
    pubsub: Option<futures_channel::mpsc::UnboundedReceiver<crate::pubsub::lines::CoreMsg>>,
    feeds: Vec<crate::pubsub::feed::FeedStart>,
}

/// Why a core did not start serving.
#[derive(Debug, thiserror::Error)]
pub enum CoreStartError {
    #[error("core {core} (CPU {cpu}): cannot build its runtime: {source}")]
    Runtime {
        core: usize,
        cpu: usize,
        source: std::io::Error,
    },
    #[error("a core did not start within 10 s")]
    Timeout,
}

/// The body of a core thread. Reports on `started` once it serves (or why it cannot).
pub(crate) fn run_core(
    mut start: CoreStart,
    started: std::sync::mpsc::Sender<Result<(), CoreStartError>>,
) {
    let peers = std::mem::take(&mut start.replay.peers);
    let audit = std::mem::replace(&mut start.audit, AuditSink::disabled());
    let core = Core::new(&start, peers, audit);
    let CoreStart {
        cpu,
        listeners,
        replay,
        lifecycle,
        pubsub,
        ..
    } = start;
    let (pubsub_inbox, feeds) = match pubsub {
        Some(p) => (Some(p.inbox), p.feeds),
        None => (None, Vec::new()),
    };
    if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
        tracing::warn!(core = core.index, cpu, error = %e, "could not pin the core thread; it runs unpinned");
    }
    let uring = monoio::utils::detect_uring();
    let mut rt = match build_runtime(core.busy.is_none()) {
        Ok(rt) => rt,
        Err(source) => {
            let _ = started.send(Err(CoreStartError::Runtime {
                core: core.index,
                cpu,
                source,
            }));
            return;
        }
    };
    let driver = if uring {
        "io_uring"
    } else {
        "legacy (epoll): io_uring is unavailable on this kernel"
    };
    tracing::info!(core = core.index, cpu, driver, "core started");
    let metrics = core.metrics.clone();
    let gate = AcceptGate::new(
        listeners.iter().map(|l| l.as_raw_fd()).collect(),
        lifecycle.clone(),
    );
    let _shutdown = ListenerShutdown {
        fds: gate.fds.clone(),
        armed: gate.listeners_owned.clone(),
    };
    let (counted_out, accepting) = (gate.counted_out.clone(), lifecycle.clone());
    metrics.alive.store(true, Ordering::Relaxed);
    let _ = started.send(Ok(()));
    drop(started);
    let (ip_limiter, index) = (core.access.ip_limiter.clone(), core.index);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(core_main(
            Rc::new(core),
            listeners,
            CoreInboxes {
                replay: replay.questions,
                pubsub: pubsub_inbox,
                feeds,
            },
            lifecycle,
            gate,
        ))
    }));
    // However the core ended: no more SYNs steered here, then (guard) its listeners close.
    ip_limiter.set_active(index, false);
    // A panic leaves the accept loops' tasks in the runtime, never dropped: count the core
    // out here, or a later restart would wait for it.
    if !counted_out.replace(true) {
        accepting.core_stopped_accepting();
    }
    metrics.alive.store(false, Ordering::Relaxed);
    if result.is_err() {
        tracing::error!(cpu, "core runtime panicked; its listeners are closed");
    }
}

type CoreRuntime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// The core's runtime: io_uring where the kernel has it, else the legacy (epoll) driver.
///
/// The ring is set up for one thread (SINGLE_ISSUER) with its completion work deferred
/// (DEFER_TASKRUN, 6.1+, when `defer`): what the network stack completes on another CPU
/// neither interrupts this core nor runs until the core asks for completions, which monoio
/// does when it parks — once per loop turn with nothing left to run, so a burst is reaped in
/// one go. A busy-polling core (`busy_poll_us`) must reap without parking, which a deferred
/// ring does not allow: it, and kernels without DEFER_TASKRUN, get cooperative task running
/// (COOP_TASKRUN, 6.0: no IPI, completions run at the next kernel entry); older kernels a
/// plain ring.
fn build_runtime(defer: bool) -> std::io::Result<CoreRuntime> {
    const ENTRIES: u32 = 4096;
    let build = |urb: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .with_entries(ENTRIES)
            .uring_builder(urb)
            .enable_timer()
            .build()
    };
    let coop = || {
        let mut coop = io_uring::IoUring::builder();
        coop.setup_coop_taskrun().setup_single_issuer();
        build(coop).or_else(|e| {
            tracing::info!(error = %e, "io_uring without COOP_TASKRUN/SINGLE_ISSUER on this kernel");
            build(io_uring::IoUring::builder())
        })
    };
    if !defer {
        return coop();
    }
    let mut deferred = io_uring::IoUring::builder();
    deferred.setup_single_issuer().setup_defer_taskrun();
    build(deferred).or_else(|e| {
        tracing::info!(error = %e, "io_uring without DEFER_TASKRUN on this kernel");
        coop()
    })
}

async fn core_main(
    core: Rc<Core>,
    listeners: Vec<std::net::TcpListener>,
    inboxes: CoreInboxes,
    lifecycle: Arc<Lifecycle>,
    gate: Rc<AcceptGate>,
) {
    monoio::spawn(core.access.replay.clone().serve(inboxes.replay));
    if let Some(busy) = &core.busy {
        monoio::spawn(busy.clone().run(core.metrics.clone()));
    }
    if let (Some(pubsub), Some(inbox)) = (&core.pubsub, inboxes.pubsub) {
        monoio::spawn(pubsub.clone().serve(inbox));
        for feed in inboxes.feeds {
            monoio::spawn(crate::pubsub::feed::run(
                pubsub.clone(),
                feed,
                core.session_limits(),
            ));
        }
    }
    for l in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_loop(core.clone(), l, AcceptLoop::enter(&gate)));
            }
            Err(e) => tracing::error!(core = core.index, error = %e, "cannot register a listener"),
        }
    }
    gate.count_out_if_idle();
    // The ticker drives the core's timer wheel, watches the shared revocation state and
    // carries out a drain.
    let mut watch = RevocationWatch::default();
    let mut drain: Option<DrainState> = None;
    loop {
        monoio::time::sleep(TICK).await;
        if core.stop.load(Ordering::Relaxed) {
            // The runtime ends with this future; its listeners close on the way out.
            tracing::info!(core = core.index, "core stopping");
            return;
        }
        let now = Instant::now();
        if let Some(order) = lifecycle.drain() {
            let state = drain.get_or_insert_with(|| DrainState::begin(&core, &gate, order, now));
            if state.step(&core, &gate, now) {
                return;
            }
        }
        watch.tick(&core, now);
        // A pressure episode on the audit queue that has ended gets its refusal summaries.
        core.audit.tick();
        let fired = core.wheel.advance(now);
        if fired > 0 {
            tracing::trace!(core = core.index, fired, "deadlines fired");
        }
        core.metrics.timers.set(core.wheel.len() as i64);
    }
}

/// What the ticker last saw of the shared revocation state; a change makes it scan this
/// core's live sessions once.
#[derive(Default)]
struct RevocationWatch {
    revocations: u64,
    crls: u64,
    kicks: u64,
    ticks: u64,
}

impl RevocationWatch {
    fn tick(&mut self, core: &Core, now: Instant) {
        self.ticks += 1;
        let revocations = core.access.admission.revocations.load();
        if revocations.version() != self.revocations {
            self.revocations = revocations.version();
            close_revoked(core, now, "tokens", |s| {
                revocations
                    .is_revoked(s.subject.as_deref(), s.jti.as_deref())
                    .map(|_| (1008, Reason::Revoked))
            });
        }
        let kicks = core.access.admission.kicks.load();
        if kicks.version() != self.kicks {
            let kicked: Vec<&str> = kicks.since(self.kicks).collect();
            self.kicks = kicks.version();
            close_revoked(core, now, "kicked subjects", |s| {
                s.subject
                    .as_deref()
                    .filter(|sub| kicked.contains(sub))
                    .map(|_| (1008, Reason::Kicked))
            });
        }
        let crls = core.tls.crls.load();
        if crls.version() != self.crls {
            self.crls = crls.version();
            close_revoked(core, now, "certificates", |s| {
                s.identity
                    .as_deref()
                    .filter(|id| crls.is_revoked(id))
                    .map(|_| (1008, Reason::CertificateRevoked))
            });
        }
        // Expired replay entries, and identities' refilled budgets, go about once a second.
        if self.ticks % 20 == 0 {
            core.access.replay.purge(unix_now());
            core.metrics
                .replay_entries
                .set(core.access.replay.len() as i64);
            if core.index == 0 {
                core.access.rates.identities.shared().purge_refilled(now);
            }
        }
    }
}

/// Orders closed this core's sessions `must_close` names, and says how many.
fn close_revoked(
    core: &Core,
    now: Instant,
    what: &str,
    must_close: impl FnMut(&LiveSession) -> Option<CloseOrder>,
) {
    let closed = core.access.live.close_matching(now, must_close);
    if closed > 0 {
        tracing::info!(
            core = core.index,
            closed,
            "sessions of revoked {what} closed"
        );
    }
}

/// Seconds since the UNIX epoch (token times are in these).
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

async fn accept_loop(core: Rc<Core>, listener: TcpListener, running: AcceptLoop) {
    let gate = &running.0;
    // A restart's successor: not before the predecessor has stopped accepting.
    while gate.lifecycle.accepts_held() {
        if gate.mode.get() == AcceptMode::Stopped {
            return;
        }
        monoio::time::sleep(ACCEPT_HOLD_POLL).await;
    }
    let accept_failures = crate::repeats::Repeats::every(std::time::Duration::from_secs(10));
    loop {
        if gate.mode.get() == AcceptMode::Stopped {
            return;
        }
        // Its own statement: the canceller's borrow must not live across the await.
        let cancel = gate.canceller.borrow().handle();
        let accepted = listener.cancelable_accept(cancel).await;
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(_) if gate.mode.get() == AcceptMode::Stopped => return,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: the backlog keeps the SYNs; retry shortly. Counted
                // each time, said once per interval (a 20 ms retry is 50 lines a second).
                core.metrics.accept_errors.inc();
                if let Some(times) = accept_failures.note(std::time::Instant::now()) {
                    tracing::warn!(core = core.index, error = %e, times, "accept failed (retried every 20 ms; counted in wssedge_accept_errors_total; said once per 10 s)");
                }
                monoio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        core.metrics.accepted.inc();
        match gate.mode.get() {
            AcceptMode::Serve => {}
            AcceptMode::CloseQueued => {
                // Draining, with nobody to hand the queue to: a fresh TCP connection (no TLS
                // byte yet) is reset at once rather than left waiting for a server going away.
                core.metrics.drain_queued_closed.inc();
                crate::sockopt::set_linger_zero(crate::sockopt::borrow_fd(&stream));
                drop(stream);
                continue;
            }
            // An accept that won the race against its cancellation (a restart handed the
            // listener on): the client reached us, so it is served; the drain closes it with
            // the others.
            AcceptMode::Stopped => {}
        }
        let over = if core.counts.connections.get() >= core.counts.max_connections {
            Some(Reason::MaxConnections)
        } else if core.audit.over_high_water() {
            // The trail must never drop a record: new connections wait until it drains.
            Some(Reason::AuditBackpressure)
        } else {
            None
        };
        if let Some(reason) = over {
            Refusal::Silent { reason }.record_at_accept(&core, peer);
            drop(stream);
            continue;
        }
        // Before a single TLS byte: the source address's slot (userspace limiter only; the
        // kernel's refuses at the SYN).
        let ip_slot = match core.access.ip_limiter.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                Refusal::Silent {
                    reason: refused.reason,
                }
                .record_at_accept(&core, peer);
                drop(stream);
                continue;
            }
        };
        core.audit.record(AuditEvent::Accept {
            peer: peer.to_string(),
        });
        monoio::spawn(conn::serve(conn::Slot::take(&core, ip_slot), stream, peer));
    }
}

/// What a core's accept loops do with the next connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptMode {
    Serve,
    /// Draining: take what is queued and close it unserved, until the queue is empty.
    CloseQueued,
    /// No more accepts: pending ones are cancelled and the loops end.
    Stopped,
}

/// A core's hold on its listeners: the accept loops' mode and the canceller of their pending
/// accepts, plus the descriptors (to read their queues and shut them down).
pub(crate) struct AcceptGate {
    mode: Cell<AcceptMode>,
    canceller: RefCell<monoio::io::Canceller>,
    fds: Vec<RawFd>,
    /// True while the listeners are this core's to shut down when it stops.
    listeners_owned: Rc<Cell<bool>>,
    /// Accept loops that have not returned yet. A loop returns only once its accept's
    /// completion has come back (a cancelled accept may still have taken a connection), so
    /// while any runs, the core must not end: an accept still in the ring when the runtime
    /// goes would take a connection nobody serves, reset when the process exits.
    loops_running: Cell<usize>,
    /// Where the main thread sees whether this core still accepts (a restart waits for it).
    lifecycle: Arc<Lifecycle>,
    /// Set once this core has counted itself out of [`Lifecycle::accepting_cores`] (shared
    /// with `run_core`, which counts out a core whose runtime panicked).
    counted_out: Rc<Cell<bool>>,
}

/// How often a successor's accept loops look whether they may start.
const ACCEPT_HOLD_POLL: std::time::Duration = std::time::Duration::from_millis(1);

/// A running accept loop's place in [`AcceptGate::loops_running`], given back when it returns.
struct AcceptLoop(Rc<AcceptGate>);

impl AcceptLoop {
    /// Counted before the loop's task is spawned, so no tick can see a gate with none.
    fn enter(gate: &Rc<AcceptGate>) -> Self {
        gate.loops_running.set(gate.loops_running.get() + 1);
        AcceptLoop(gate.clone())
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.0.loops_running.set(self.0.loops_running.get() - 1);
        self.0.count_out_if_idle();
    }
}

impl AcceptGate {
    /// Counts the core into the lifecycle's accepting cores (before the core reports started).
    fn new(fds: Vec<RawFd>, lifecycle: Arc<Lifecycle>) -> Rc<Self> {
        lifecycle.core_accepts();
        Rc::new(AcceptGate {
            mode: Cell::new(AcceptMode::Serve),
            canceller: RefCell::new(monoio::io::Canceller::new()),
            fds,
            listeners_owned: Rc::new(Cell::new(true)),
            loops_running: Cell::new(0),
            lifecycle,
            counted_out: Rc::new(Cell::new(false)),
        })
    }

    /// With no accept loop left (all returned, or none could start), the core no longer
    /// accepts: counted out once.
    fn count_out_if_idle(&self) {
        if self.loops_running.get() == 0 && !self.counted_out.replace(true) {
            self.lifecycle.core_stopped_accepting();
        }
    }

    /// Connections waiting in this core's accept queues.
    fn queued(&self) -> usize {
        // The descriptors belong to listeners the core's accept loops own; they stay open until
        // the gate stops them, and `queued` is only asked before that.
        self.fds
            .iter()
            .map(|&fd| wssedge_sys::sock::accept_queue_len_raw(fd).unwrap_or(0))
            .sum()
    }

    /// Ends the accept loops (their pending accepts are cancelled). With `shut`, the listeners
    /// are shut down first, which also resets anything that reached the queue meanwhile;
    /// without it (handed over) they are left as they are for the successor's cores.
    fn stop(&self, shut: bool) {
        if shut {
            // As in `queued`: open listener descriptors of this core; shutdown does not close
            // them.
            for &fd in &self.fds {
                let _ = wssedge_sys::sock::shutdown_listener_raw(fd);
            }
        }
        self.listeners_owned.set(false);
        self.mode.set(AcceptMode::Stopped);
        let canceller = std::mem::take(&mut *self.canceller.borrow_mut());
        drop(canceller.cancel());
    }
}

/// One core's part of a drain, advanced by its ticker.
///
/// 1. The core leaves the eBPF listener steering, and its accept loops take what is already
///    queued and close it unserved (counted), until the queues are empty (or `QUEUE_GRACE`);
///    then the listeners are shut down. Under a restart the listeners belong to the successor
///    too: the accept loops just stop and its cores serve the queue.
/// 2. On every tick, every live session without a close order gets the drain's (1001
///    "going_away" or 1012 "service_restart"): the connection closes itself through its
///    session deadline. Sessions that finish their upgrade during the drain get it on the next
///    tick.
/// 3. Connections still in their TLS handshake or upgrade are not interrupted: they are not
///    reachable from here (only upgraded sessions register), and a client mid-handshake has
///    sent nothing it could lose. They get until their handshake timeout; if they upgrade, step
///    2 closes them at once; whatever is left at the drain deadline is closed with the core.
/// 4. The core stops when its accept loops have returned (every cancelled accept completed, so
///    none is left in the ring to take a connection after the runtime ends) and its
///    connections are gone — or at the deadline whatever is left: the remaining connections
///    are counted as forced and closed by the runtime's end.
struct DrainState {
    order: DrainOrder,
    began: Instant,
    listeners_closed: bool,
}

/// How long a drain keeps taking queued connections off a listener before shutting it.
const QUEUE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl DrainState {
    fn begin(core: &Core, gate: &AcceptGate, order: DrainOrder, now: Instant) -> Self {
        tracing::info!(
            core = core.index,
            code = order.code,
            reason = order.reason.as_str(),
            connections = core.counts.connections.get(),
            "core draining"
        );
        if order.handed_over {
            // The successor's cores accept on these same sockets now.
            gate.stop(false);
        } else {
            core.access.ip_limiter.set_active(core.index, false);
            gate.mode.set(AcceptMode::CloseQueued);
        }
        DrainState {
            order,
            began: now,
            listeners_closed: order.handed_over,
        }
    }

    /// One tick of the drain; true when the core is done.
    fn step(&mut self, core: &Core, gate: &AcceptGate, now: Instant) -> bool {
        if !self.listeners_closed && (gate.queued() == 0 || now >= self.began + QUEUE_GRACE) {
            gate.stop(true);
            self.listeners_closed = true;
        }
        let (code, reason) = (self.order.code, self.order.reason);
        let closed = core
            .access
            .live
            .close_matching(now, |_| Some((code, reason)));
        core.metrics.drain_sessions_closed.add(closed as u64);
        let left = core.counts.connections.get();
        // The accept loops return once their cancelled accepts complete; one that won the
        // race brought a connection, counted in `left` from then on.
        if self.listeners_closed && gate.loops_running.get() == 0 && left == 0 {
            tracing::info!(core = core.index, "core drained");
            return true;
        }
        if now >= self.order.deadline {
            core.metrics.drain_forced.add(left as u64);
            tracing::warn!(
                core = core.index,
                left,
                "drain deadline reached; the remaining connections are closed"
            );
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_that_cannot_start_says_which_and_why() {
        let runtime = CoreStartError::Runtime {
            core: 2,
            cpu: 5,
            source: std::io::Error::other("out of memory"),
        };
        assert_eq!(
            runtime.to_string(),
            "core 2 (CPU 5): cannot build its runtime: out of memory"
        );
        assert_eq!(
            CoreStartError::Timeout.to_string(),
            "a core did not start within 10 s"
        );
    }
    use std::net::TcpStream;

    /// A stopped core's listener leaves the SO_REUSEPORT group: every new connection then goes
    /// to the cores that still accept, none is queued on a listener nobody serves.
    #[test]
    fn shut_down_listener_leaves_the_reuseport_group() {
        let set = crate::server::listen::bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let [alive, dead]: [std::net::TcpListener; 2] = set.per_core.try_into().unwrap();
        drop(ListenerShutdown {
            fds: vec![dead.as_raw_fd()],
            armed: Rc::new(Cell::new(true)),
        });
        let mut clients = Vec::new();
        for i in 0..32 {
            clients.push(TcpStream::connect(set.addr).expect("the group still accepts"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while alive.accept().is_err() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "connection {i} did not reach the live listener"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        assert!(
            dead.accept().is_err(),
            "the shut-down listener must not receive connections"
        );
    }
}
