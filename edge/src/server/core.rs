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
use crate::auth::ReplayStore;
use crate::bufpool::BufPool;
use crate::config::Config;
use crate::metrics::CoreMetrics;
use crate::refuse::Refusal;
use crate::sockopt::AcceptedSocketOptions;
use crate::tls::ktls::KtlsPolicy;
use crate::ws::{HandshakeLimits, SessionLimits};

use super::admission::{Admission, ReplayAsk, ReplayShards};
use super::conn;
use super::ip_limit::IpLimiter;
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
    /// Per-IP limits at accept (when the kernel does not enforce them at the SYN).
    pub ip_limiter: Arc<IpLimiter>,
    pub admission: Arc<Admission>,
    /// This core's producer end of the audit trail (never blocks, never drops).
    pub audit: AuditSink,
    /// This core's shard of the replay store and its lines to the others.
    pub replay: Rc<ReplayShards>,
    pub metrics: Arc<CoreMetrics>,
    pub pool: RefCell<BufPool>,
    /// Plaintext staging for encryption: frames are gathered here and encrypted at once, so a
    /// burst of small frames becomes few records. Emptied within each step, so one per core.
    pub staging: RefCell<Vec<u8>>,
    pub wheel: Rc<TimerWheel>,
    /// Upgraded sessions, for revocations and token expiry.
    pub live: Rc<LiveRegistry>,
    pub connections: Cell<usize>,
    pub handshakes: Cell<usize>,
    /// Bytes held in partly received frames and messages by all of this core's connections.
    pub buffered: Cell<usize>,
    pub max_connections: usize,
    pub socket_opts: AcceptedSocketOptions,
    pub handshake_limits: HandshakeLimits,
    pub session_limits: SessionLimits,
}

impl Core {
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            max_frame_bytes: self.session_limits.max_frame_bytes,
            max_message_bytes: self.session_limits.max_message_bytes,
        }
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
            ip_limiter: start.ip_limiter.clone(),
            admission: start.admission.clone(),
            audit,
            replay: Rc::new(ReplayShards::new(
                start.index,
                ReplayStore::new(start.replay.capacity, start.replay.leeway_s),
                peers,
            )),
            metrics: start.metrics.clone(),
            pool: RefCell::new(BufPool::default()),
            staging: RefCell::new(Vec::new()),
            wheel: wheel.clone(),
            live: LiveRegistry::new(wheel),
            connections: Cell::new(0),
            handshakes: Cell::new(0),
            buffered: Cell::new(0),
            max_connections: l.max_connections.div_ceil(cores),
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
            cfg,
        }
    }
}

/// Shuts the core's listeners down when the core stops, however it stops (unwinding too), so
/// the kernel stops steering SYNs to a core that will never accept them.
struct ListenerShutdown(Vec<RawFd>);

impl Drop for ListenerShutdown {
    fn drop(&mut self) {
        for &fd in &self.0 {
            // SAFETY: the descriptors belong to listeners owned by this core's runtime, which is
            // still alive while this guard drops (it is declared after the runtime); shutdown
            // does not close them, it only stops listening.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
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
    pub audit: AuditSink,
    pub replay: ReplayStart,
    pub metrics: Arc<CoreMetrics>,
    pub listeners: Vec<std::net::TcpListener>,
}

impl Refusal {
    /// The one refusal path on a core: the counter and log line, and the audit record.
    pub(crate) fn record_on(&self, core: &Core, peer: std::net::SocketAddr) {
        self.record(&core.metrics, peer);
        core.audit.record(self.audit_event(peer));
    }
}

/// A core's replay shard, as handed to its thread.
pub(crate) struct ReplayStart {
    pub peers: Vec<futures_channel::mpsc::Sender<ReplayAsk>>,
    pub questions: futures_channel::mpsc::Receiver<ReplayAsk>,
    pub capacity: usize,
    pub leeway_s: u64,
}

/// The body of a core thread. Reports on `started` once it serves (or why it cannot).
pub(crate) fn run_core(mut start: CoreStart, started: std::sync::mpsc::Sender<Result<(), String>>) {
    let peers = std::mem::take(&mut start.replay.peers);
    let audit = std::mem::replace(&mut start.audit, AuditSink::disabled());
    let core = Core::new(&start, peers, audit);
    let CoreStart {
        cpu,
        listeners,
        replay,
        ..
    } = start;
    if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
        tracing::warn!(core = core.index, cpu, error = %e, "could not pin the core thread; it runs unpinned");
    }
    let uring = monoio::utils::detect_uring();
    let mut rt = match build_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            let why = format!(
                "core {} (CPU {cpu}): cannot build its runtime: {e}",
                core.index
            );
            let _ = started.send(Err(why));
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
    let _shutdown = ListenerShutdown(listeners.iter().map(|l| l.as_raw_fd()).collect());
    metrics.alive.store(true, Ordering::Relaxed);
    let _ = started.send(Ok(()));
    drop(started);
    let (ip_limiter, index) = (core.ip_limiter.clone(), core.index);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        rt.block_on(core_main(Rc::new(core), listeners, replay.questions))
    }));
    // However the core ended: no more SYNs steered here, then (guard) its listeners close.
    ip_limiter.set_active(index, false);
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
/// The ring is set up for one thread (SINGLE_ISSUER) with cooperative task running
/// (COOP_TASKRUN): completions raised by the network stack on another CPU then do not
/// interrupt this core with an IPI; they are run when the core next enters the kernel, which
/// it does on every loop turn. Kernels without these flags (before 6.0) get a plain ring.
fn build_runtime() -> std::io::Result<CoreRuntime> {
    const ENTRIES: u32 = 4096;
    let mut tuned = io_uring::IoUring::builder();
    tuned.setup_coop_taskrun().setup_single_issuer();
    let build = |urb: io_uring::Builder| {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .with_entries(ENTRIES)
            .uring_builder(urb)
            .enable_timer()
            .build()
    };
    build(tuned).or_else(|e| {
        tracing::info!(error = %e, "io_uring without COOP_TASKRUN/SINGLE_ISSUER on this kernel");
        build(io_uring::IoUring::builder())
    })
}

async fn core_main(
    core: Rc<Core>,
    listeners: Vec<std::net::TcpListener>,
    replay_questions: futures_channel::mpsc::Receiver<ReplayAsk>,
) {
    monoio::spawn(core.replay.clone().serve(replay_questions));
    for l in listeners {
        match TcpListener::from_std(l) {
            Ok(l) => {
                monoio::spawn(accept_loop(core.clone(), l));
            }
            Err(e) => tracing::error!(core = core.index, error = %e, "cannot register a listener"),
        }
    }
    // The ticker drives the core's timer wheel and watches the shared revocation state.
    let mut watch = RevocationWatch::default();
    loop {
        monoio::time::sleep(TICK).await;
        if core.stop.load(Ordering::Relaxed) {
            // The runtime ends with this future; its listeners close on the way out. (A drain
            // that says 1001 to every client first comes with graceful drain.)
            tracing::info!(core = core.index, "core stopping");
            return;
        }
        let now = Instant::now();
        watch.tick(&core, now);
        let fired = core.wheel.advance(now);
        if fired > 0 {
            tracing::trace!(core = core.index, fired, "deadlines fired");
        }
    }
}

/// What the ticker last saw of the shared revocation state; a change makes it scan this
/// core's live sessions once.
#[derive(Default)]
struct RevocationWatch {
    revocations: u64,
    crls: u64,
    ticks: u64,
}

impl RevocationWatch {
    fn tick(&mut self, core: &Core, now: Instant) {
        self.ticks += 1;
        let revocations = core.admission.revocations.load();
        if revocations.version() != self.revocations {
            self.revocations = revocations.version();
            close_revoked(core, now, "tokens", |s| {
                revocations
                    .is_revoked(s.subject.as_deref(), s.jti.as_deref())
                    .map(|_| (1008, "revoked"))
            });
        }
        let crls = core.tls.crls.load();
        if crls.version() != self.crls {
            self.crls = crls.version();
            close_revoked(core, now, "certificates", |s| {
                s.identity
                    .as_deref()
                    .filter(|id| crls.is_revoked(id))
                    .map(|_| (1008, "certificate_revoked"))
            });
        }
        // Expired replay entries go about once a second.
        if self.ticks % 20 == 0 {
            core.replay.purge(unix_now());
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
    let closed = core.live.close_matching(now, must_close);
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

async fn accept_loop(core: Rc<Core>, listener: TcpListener) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: the backlog keeps the SYNs; retry shortly.
                tracing::warn!(core = core.index, error = %e, "accept failed");
                monoio::time::sleep(std::time::Duration::from_millis(20)).await;
                continue;
            }
        };
        core.metrics.accepted.inc();
        let over = if core.connections.get() >= core.max_connections {
            Some("max_connections")
        } else if core.audit.over_high_water() {
            // The trail must never drop a record: new connections wait until it drains.
            Some("audit_backpressure")
        } else if core.handshakes.get() >= core.cfg.limits.max_handshakes_in_flight {
            Some("max_handshakes_in_flight")
        } else {
            None
        };
        if let Some(reason) = over {
            Refusal::Silent { reason }.record_on(&core, peer);
            drop(stream);
            continue;
        }
        // Before a single TLS byte: the source address's slot (userspace limiter only; the
        // kernel's refuses at the SYN).
        let ip_slot = match core.ip_limiter.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                Refusal::Silent {
                    reason: refused.reason,
                }
                .record_on(&core, peer);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpStream;

    /// A stopped core's listener leaves the SO_REUSEPORT group: every new connection then goes
    /// to the cores that still accept, none is queued on a listener nobody serves.
    #[test]
    fn shut_down_listener_leaves_the_reuseport_group() {
        let set = crate::server::listen::bind_listeners("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let [alive, dead]: [std::net::TcpListener; 2] = set.per_core.try_into().unwrap();
        drop(ListenerShutdown(vec![dead.as_raw_fd()]));
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
