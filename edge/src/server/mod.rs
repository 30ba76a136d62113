//! Threads and sockets: one pinned monoio runtime per core, each with its own SO_REUSEPORT
//! listener per address, its own connections, timer wheel and buffer pool. Connections never
//! migrate between cores; cores share nothing on the data path.

mod busy_poll;
mod conn;
pub(crate) use conn::yield_turn;
mod core;
pub mod cpus;
mod handover;
pub mod lifecycle;
mod line;
pub mod listen;
mod live;
mod operator;
mod reload;
mod reload_stats;
pub mod timer;
mod tls_state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::auth::admission;
use crate::config::Config;
use crate::limits::ip_limit;
use crate::metrics::{CoreMetrics, PrometheusFamilies, Registry};
use crate::tls::crl::{CrlSet, CrlWatcher};
use crate::tls::ktls::KtlsPolicy;

pub(crate) use lifecycle::Lifecycle;
pub use lifecycle::{Command, Commands};
use lifecycle::{DrainOrder, RestartError};

/// Why the edge could not start. All of these are the operator's to fix; the binary exits 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Cpus(#[from] cpus::CpuError),
    #[error(transparent)]
    Listen(#[from] listen::ListenError),
    #[error("TLS: {0}")]
    Certificate(#[source] reload::CertificateError),
    #[error("TLS: {0}")]
    Crls(#[source] crate::tls::crl::CrlError),
    #[error("TLS: {0}")]
    Tls(#[source] crate::tls::policy::TlsConfigError),
    #[error("TLS: {0}")]
    CrlWatch(#[source] std::io::Error),
    #[error("admin listener on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a core thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Core(#[source] core::CoreStartError),
    #[error("kTLS: {0}")]
    Ktls(#[source] crate::tls::ktls::KtlsRequiredError),
    #[error("per-IP limit: {0}")]
    IpLimit(#[source] crate::limits::ip_limit::IpLimitError),
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("upstream: {0}")]
    Upstream(#[source] crate::upstream::UpstreamError),
    #[error("control socket: {0}")]
    Control(#[from] crate::control::ControlError),
    #[error("restart handover: {0}")]
    Handover(#[source] handover::HandoverError),
    #[error("OpenTelemetry exporter: {0}")]
    Telemetry(#[source] std::io::Error),
    #[error("{0}")]
    Privilege(#[source] crate::privilege::PrivilegeError),
}

/// A running edge.
pub struct Running {
    /// The bound WSS addresses (ephemeral ports resolved).
    pub listening: Vec<SocketAddr>,
    pub admin: SocketAddr,
    /// The development CA to trust, when serving the development certificate.
    pub dev_ca: Option<PathBuf>,
    pub cpus: Vec<usize>,
    pub metrics: Registry,
    threads: Vec<JoinHandle<()>>,
    /// One per listen address, in the order of `handoff.sets`.
    locks: Vec<listen::InstanceLock>,
    /// Served while the process runs; dropping it removes the socket file.
    control: Option<crate::control::ControlServer>,
    /// Copies of the listening sockets, for a restart's successor.
    handoff: handover::Handoff,
    /// Stops the admin thread (a restart's successor serves the admin listener then).
    admin_stop: Arc<AtomicBool>,
    /// Set once a successor took the listeners (the eBPF program attached to the group is
    /// then the successor's: ours is not detached).
    handed_over: bool,
    /// Re-reads the CRLs in force when their files change.
    _crl_watcher: CrlWatcher,
    /// Sealed once every core has stopped.
    trail: crate::audit::AuditTrail,
    /// Set to stop: each core closes its listeners and stops within a tick.
    stop: Arc<AtomicBool>,
    /// Detached (eBPF) once the cores have stopped.
    ip_limiter: Arc<ip_limit::IpLimiter>,
    /// Drains reach the cores through it.
    lifecycle: Arc<Lifecycle>,
    /// What the signal thread and the control socket ask for.
    commands: mpsc::Receiver<Command>,
    command_tx: Commands,
    drain_timeout: Duration,
    /// SIGHUP reloads through it (`ctl reload` through the control socket's copy).
    reloader: Arc<reload::Reloader>,
    /// Lines to every core's replay shard: a restart seals them and hands their entries over.
    replay_lines: Vec<futures_channel::mpsc::Sender<admission::ReplayAsk>>,
    /// systemd's `$NOTIFY_SOCKET`, when supervised.
    notifier: Arc<crate::systemd::Notifier>,
    /// The OTLP exporter, flushed once the cores have stopped.
    telemetry: Option<crate::telemetry::Telemetry>,
}

/// How long a restarting process waits for its cores' accepts to return (each core sees the
/// drain on its next tick) before its successor starts accepting anyway.
const ACCEPTS_STOP_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a restarting process waits for its cores to seal and export their replay shards.
const REPLAY_EXPORT_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a successor waits for its cores to take the replay entries handed over.
const REPLAY_IMPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a successor holds its accepts for the predecessor's word (longer than the
/// predecessor waits for its cores, then for their replay shards, plus sending them).
const ACCEPTS_RELEASE_TIMEOUT: Duration = Duration::from_secs(8);

/// What a drain did, for its audit record and log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct DrainSummary {
    sessions_closed: u64,
    queued_closed: u64,
    forced: u64,
}

impl Running {
    /// The flag that stops the edge at once (no drain): each core ends at its next tick.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Where the signal thread sends what it is asked for (drain, stop, reload, restart).
    pub fn commands(&self) -> Commands {
        self.command_tx.clone()
    }

    /// Serves until a drain (or a stop) ends the cores, carrying out the commands that arrive
    /// meanwhile; then seals the audit trail. True when the end was asked for (false: the
    /// cores ended on their own, which is a failure).
    pub fn wait(mut self) -> bool {
        let asked = loop {
            match self.commands.recv_timeout(Duration::from_millis(100)) {
                Ok(Command::Drain { trigger }) => {
                    self.drain(
                        trigger,
                        DrainOrder::going_away(Instant::now() + self.drain_timeout),
                    );
                    break true;
                }
                Ok(Command::Stop) => {
                    self.stop.store(true, Ordering::SeqCst);
                    break true;
                }
                Ok(Command::Reload { trigger }) => {
                    // Logged and audited by the reloader, refusals included.
                    let _ = self.reloader.reload(trigger);
                }
                Ok(Command::Restart { trigger, reply }) => {
                    if self.restart(trigger, reply) {
                        break true;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.threads.iter().all(JoinHandle::is_finished) {
                        break self.stop.load(Ordering::SeqCst);
                    }
                }
                // Unreachable while `command_tx` lives in self.
                Err(mpsc::RecvTimeoutError::Disconnected) => break false,
            }
        };
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        if self.handed_over {
            // The group's program is the successor's now: ours goes without detaching.
            self.ip_limiter.abandon();
        } else {
            // The kernel programs go before the listeners close with the process.
            self.ip_limiter.stop();
        }
        if let Err(e) = self.trail.shutdown() {
            tracing::error!(error = %e, "the audit trail could not be sealed");
        }
        if let Some(telemetry) = self.telemetry.take() {
            telemetry.shutdown();
        }
        asked
    }

    /// Drains: readiness off, every core closes its queue, its listeners and its sessions with
    /// the order's code and stops when empty or at the deadline; the main thread waits for
    /// them (a second SIGTERM/SIGINT stops them at once) and audits what the drain did.
    fn drain(&mut self, trigger: &'static str, order: DrainOrder) -> DrainSummary {
        let began = Instant::now();
        if !self.lifecycle.start_drain(order) {
            return DrainSummary::default();
        }
        self.notifier.stopping();
        self.finish_drain(trigger, order, began)
    }

    /// Restart handover: a successor gets the listeners and reports ready; then this process
    /// stops accepting, answers, lets go of the control socket and drains with 1012. True
    /// when handed over (the caller ends); false when it failed (this process keeps serving;
    /// the reason is logged, audited and answered).
    fn restart(
        &mut self,
        trigger: &'static str,
        reply: Option<mpsc::Sender<Result<u32, RestartError>>>,
    ) -> bool {
        tracing::info!(trigger, "restart: handing the listeners to a new process");
        let record = |new_pid: Option<u32>, detail: String| {
            self.trail
                .handle()
                .record(crate::audit::AuditEvent::Restart {
                    trigger: trigger.to_owned(),
                    ok: new_pid.is_some(),
                    new_pid,
                    detail,
                })
        };
        // The new process puts the listeners in its own eBPF socket arrays.
        if let Err(e) = self.ip_limiter.hand_listeners_over() {
            tracing::warn!(error = %e, "restart: the listeners could not leave this process's eBPF socket arrays; the new process may fail to attach its limiter");
        }
        let successor = match handover::spawn_successor(&self.handoff, &self.locks) {
            Ok(s) => s,
            Err(e) => {
                self.ip_limiter.take_listeners_back();
                record(None, e.to_string());
                tracing::error!(reason = %e, "restart failed; this process keeps serving");
                if let Some(reply) = reply {
                    let _ = reply.send(Err(e.into()));
                }
                return false;
            }
        };
        tracing::info!(
            new_pid = successor.pid,
            "restart: the new process serves; draining with 1012"
        );
        // Not STOPPING: the service goes on in the new process, which names itself MAINPID.
        self.notifier.status(&format!(
            "handing over to pid {}; draining with 1012",
            successor.pid
        ));
        self.handed_over = true;
        // Stop accepting first; once every core's accepts have returned (none can take a
        // connection any more) the successor's cores start on the shared queues. Then answer.
        let began = Instant::now();
        let order = DrainOrder::service_restart(began + self.drain_timeout);
        self.admin_stop.store(true, Ordering::SeqCst);
        self.lifecycle.start_drain(order);
        let stopped = self.lifecycle.wait_accepts_stopped(ACCEPTS_STOP_TIMEOUT);
        if !stopped {
            tracing::warn!(
                cores = self.lifecycle.accepting_cores(),
                "restart: cores still accepting after {ACCEPTS_STOP_TIMEOUT:?}; the new process starts accepting anyway"
            );
        }
        // Nothing is admitted here any more that the successor will not know of: seal the
        // replay shards and hand their live entries over before it accepts.
        if successor.takes_replay {
            let (entries, complete) = admission::export_shards(
                &self.replay_lines,
                core::unix_now(),
                REPLAY_EXPORT_TIMEOUT,
            );
            match successor.hand_replay(&entries, complete) {
                Ok(()) => tracing::info!(
                    entries = entries.len(),
                    complete,
                    "restart: single-use token ids handed to the new process"
                ),
                Err(e) => tracing::warn!(
                    error = %e,
                    "restart: the replay store could not be handed over; the new process distrusts older single-use tokens"
                ),
            }
        }
        successor.accepts_released();
        let after_ms = began.elapsed().as_millis() as u64;
        tracing::info!(after_ms, "restart: accepting handed to the new process");
        // The handover's moment on record: this process accepted nothing after it (unless a
        // core did not stop in time, which the record says).
        record(
            Some(successor.pid),
            if stopped {
                format!(
                    "handed over to pid {}; this process stopped accepting {after_ms} ms after it was ready",
                    successor.pid
                )
            } else {
                format!(
                    "handed over to pid {}; {} core(s) of this process still accepting after {after_ms} ms",
                    successor.pid,
                    self.lifecycle.accepting_cores()
                )
            },
        );
        if let Some(reply) = reply {
            let _ = reply.send(Ok(successor.pid));
        }
        // The control socket goes once the command's answer is out; the successor takes it.
        if let Some(control) = self.control.take() {
            control.shutdown_after_answers(Duration::from_secs(2));
        }
        successor.control_released();
        self.finish_drain(trigger, order, began);
        true
    }

    /// The waiting half of a drain: until every core has stopped; then its audit record.
    fn finish_drain(
        &mut self,
        trigger: &'static str,
        order: DrainOrder,
        began: Instant,
    ) -> DrainSummary {
        let open: i64 = self.metrics.cores.iter().map(|c| c.open.get()).sum();
        tracing::info!(
            trigger,
            code = order.code,
            open_sessions = open,
            timeout_ms = order.deadline.saturating_duration_since(began).as_millis() as u64,
            "draining: not ready any more; closing the accept queues, the listeners and every session"
        );
        // The cores stop by themselves at the deadline; this margin only covers a core that
        // cannot (a stuck task), which the stop flag ends at its next tick.
        let hard_stop = order.deadline + Duration::from_secs(1);
        while !self.threads.iter().all(JoinHandle::is_finished) {
            match self.commands.recv_timeout(Duration::from_millis(20)) {
                Ok(Command::Stop) => {
                    tracing::warn!("stop requested during the drain: the cores stop now");
                    self.stop.store(true, Ordering::SeqCst);
                }
                Ok(Command::Restart { reply, .. }) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Err(RestartError::Draining));
                    }
                }
                Ok(other) => tracing::info!(command = ?other, "ignored: the edge is draining"),
                Err(_) => {}
            }
            if Instant::now() >= hard_stop {
                self.stop.store(true, Ordering::SeqCst);
            }
        }
        let sum = |f: fn(&CoreMetrics) -> u64| self.metrics.cores.iter().map(|c| f(c)).sum();
        let summary = DrainSummary {
            sessions_closed: sum(|c| c.drain_sessions_closed.get()),
            queued_closed: sum(|c| c.drain_queued_closed.get()),
            forced: sum(|c| c.drain_forced.get()),
        };
        let duration_ms = began.elapsed().as_millis() as u64;
        tracing::info!(
            trigger,
            sessions_closed = summary.sessions_closed,
            queued_closed = summary.queued_closed,
            forced = summary.forced,
            duration_ms,
            "drained"
        );
        self.trail.handle().record(crate::audit::AuditEvent::Drain {
            trigger: trigger.to_owned(),
            code: order.code,
            sessions_closed: summary.sessions_closed,
            queued_closed: summary.queued_closed,
            forced: summary.forced,
            duration_ms,
        });
        summary
    }
}

/// The rooms `/metrics` asks for their own families, in the order they are written.
fn metric_rooms(
    ip_limiter: &Arc<ip_limit::IpLimiter>,
    identities: &Arc<crate::limits::IdentityBudgets>,
    reloads: &Arc<reload_stats::ReloadStats>,
    upstreams: Option<&Arc<crate::upstream::Upstreams>>,
    pubsub: Option<&crate::pubsub::PubsubShared>,
    fleet: Option<&crate::fleet::Fleet>,
    telemetry: Option<&crate::telemetry::Telemetry>,
) -> Vec<Arc<dyn PrometheusFamilies>> {
    let mut rooms: Vec<Arc<dyn PrometheusFamilies>> =
        vec![ip_limiter.clone(), identities.clone(), reloads.clone()];
    if let Some(upstreams) = upstreams {
        rooms.push(upstreams.clone());
    }
    if let Some(pubsub) = pubsub {
        rooms.push(pubsub.metrics.clone());
    }
    if let Some(fleet) = fleet {
        rooms.push(fleet.status.clone());
    }
    if let Some(telemetry) = telemetry {
        rooms.push(telemetry.stats.clone());
    }
    rooms
}

/// Watches the files of the CRLs in force: a change rebuilds the TLS config and swaps it and
/// the set in (each core then closes its sessions whose certificate is now revoked). Audited
/// either way. It runs without CRLs too (stat-ing nothing), so that a reload that adds some,
/// or names other files, is watched from then on.
fn watch_crls(
    tls: &Arc<tls_state::TlsState>,
    audit: crate::audit::AuditHandle,
) -> std::io::Result<CrlWatcher> {
    let (reader, writer) = (tls.clone(), tls.clone());
    CrlWatcher::spawn(
        move || reader.crls.load_full(),
        move |crls, based_on| {
            let _ = writer.replace_crls(based_on, crls, &audit);
        },
    )
}

/// Validates the configuration, binds every listener (or takes them over from the previous
/// process of a restart), starts the cores and the admin listener.
pub fn start(cfg: Config) -> Result<Running, StartError> {
    let mut inherited = handover::inherit().map_err(StartError::Handover)?;
    let notifier = Arc::new(crate::systemd::Notifier::from_env());
    let started = start_serving(cfg, inherited.as_mut(), notifier);
    if let (Err(e), Some(h)) = (&started, &inherited) {
        h.failed(&e.to_string());
    }
    started
}

fn start_serving(
    cfg: Config,
    mut inherited: Option<&mut handover::Inheritance>,
    notifier: Arc<crate::systemd::Notifier>,
) -> Result<Running, StartError> {
    cfg.validate()?;
    // Who will serve is known before anything binds: an unknown user, or one this process
    // cannot become, stops the start here.
    let privilege = crate::privilege::Plan::resolve(cfg.server.user.as_deref())
        .map_err(StartError::Privilege)?;
    // The control socket's place is checked before anything binds (its directory must be
    // private to the user that serves); the socket itself is bound last.
    if let Some(path) = &cfg.server.control {
        crate::control::ControlServer::check_path_for(path, privilege.serving_uid())?;
    }
    let cpus = cpus::choose(cfg.server.cores, cfg.server.cpus.as_deref())?;
    let (chain, key, dev_ca) =
        reload::default_certificate(&cfg).map_err(StartError::Certificate)?;
    if dev_ca.is_some() {
        // Made (or read) as who we are now; a reload re-reads it as who we will be.
        privilege
            .hand_over_dir(&cfg.server.state_dir)
            .map_err(StartError::Privilege)?;
    }
    let ktls = KtlsPolicy::decide(cfg.tls.ktls, cfg.tls.ktls_key_limit_records)
        .map_err(StartError::Ktls)?;
    ktls.log_start();
    let crls = CrlSet::load(&cfg.tls.crls).map_err(StartError::Crls)?;
    let tls = Arc::new(
        tls_state::TlsState::new(cfg.tls.clone(), chain, key, crls).map_err(StartError::Tls)?,
    );
    tracing::info!("TLS: {}", cfg.tls.summary());
    let ktls = Arc::new(ktls);
    let admission = Arc::new(
        admission::Admission::from_config(
            &cfg.origin,
            cfg.jwt.as_ref(),
            cfg.tls.identity_rules()?,
        )?
        .with_identity_limit(cfg.limits.per_identity_connections),
    );

    let mut sets = Vec::new();
    for addr in &cfg.server.listen {
        let set = match inherited.as_mut().and_then(|h| h.take_set(*addr)) {
            Some(mut set) => {
                listen::fit_to_cores(&mut set, cpus.len())?;
                set
            }
            None => listen::bind_listeners(*addr, cpus.len())?,
        };
        sets.push(set);
    }
    let admin_listener = inherited
        .as_mut()
        .and_then(|h| h.take_admin(cfg.server.admin));
    if let Some(h) = inherited.as_mut() {
        h.drop_unused();
    }
    let listening: Vec<SocketAddr> = sets.iter().map(|s| s.addr).collect();
    // Per-IP limits attach to the listening groups before any core accepts.
    let groups: Vec<(u16, Vec<std::os::fd::BorrowedFd<'_>>)> = sets
        .iter()
        .map(|s| (s.addr.port(), ip_limit::group_fds(&s.per_core)))
        .collect();
    let ip_limiter = Arc::new(
        ip_limit::IpLimiter::start(cfg.limits.ip_limiter, &cfg.limits.ip_limits(), &groups)
            .map_err(StartError::IpLimit)?,
    );
    drop(groups);
    // Everything that needs a privilege is bound or loaded (the admin listener too, for a
    // port below 1024): drop them before any thread starts, so none keeps what the main
    // thread gives back.
    let admin_listener = match admin_listener {
        Some(l) => l,
        None => {
            std::net::TcpListener::bind(cfg.server.admin).map_err(|source| StartError::Admin {
                addr: cfg.server.admin,
                source,
            })?
        }
    };
    privilege
        .drop_privileges(ip_limiter.capabilities_for_successor())
        .map_err(StartError::Privilege)?;
    ip_limiter.start_sweeping();

    // A successor continues the trail once its predecessor has drained and sealed it.
    let lock_wait = inherited
        .is_some()
        .then(|| cfg.server.drain_timeout() + Duration::from_secs(30));
    let connection_rate = cfg.limits.connection_rate()?;
    let control_rate = cfg.limits.control_rate()?;
    let identity_budgets = crate::limits::IdentityBudgets::new(cfg.limits.identity_rate()?);
    let upstreams = match &cfg.upstream {
        Some(u) => {
            let mut upstreams = crate::upstream::Upstreams::from_config(u, &cfg.routes)
                .map_err(StartError::Upstream)?;
            upstreams.set_socket_options(crate::sockopt::AcceptedSocketOptions {
                send_buffer_bytes: cfg.limits.socket_send_buffer_bytes,
                recv_buffer_bytes: cfg.limits.socket_recv_buffer_bytes,
            });
            // A query token is the edge's: it never reaches a member.
            if let Some(jwt) = &cfg.jwt {
                upstreams.strip_query_param(&jwt.query_param);
            }
            tracing::info!(
                groups = u.groups.len(),
                routes = cfg.routes.len(),
                "proxy mode: sessions are forwarded to upstream groups"
            );
            Some(Arc::new(upstreams))
        }
        None => None,
    };
    let routes = Arc::new(crate::routes::RouteKinds::new(&cfg.routes));
    let (trail, sinks) = crate::audit::AuditTrail::start_with(&cfg.audit, cpus.len(), lock_wait)?;
    // Pub/sub runs where a route serves it or a feed publishes into it.
    let wants_pubsub = routes.has_pubsub() || !cfg.pubsub.feeds.is_empty();
    let pubsub_lines = wants_pubsub.then(|| crate::pubsub::lines::Lines::new(cpus.len()));
    let fleet = match &cfg.fleet {
        Some(f) => Some(
            crate::fleet::Fleet::start(
                f,
                f.node_name(&cfg.server.listen),
                crate::fleet::FleetParts {
                    lines: pubsub_lines.as_ref().map(|(lines, _)| lines.clone()),
                    history: cfg.pubsub.history,
                    revocations: admission.revocations.clone(),
                    kicks: admission.kicks.clone(),
                    audit: trail.handle(),
                },
            )
            .map_err(|e| {
                StartError::Config(crate::config::ConfigError::invalid(
                    "fleet.redis",
                    &f.redis,
                    e,
                ))
            })?,
        ),
        None => None,
    };
    let (pubsub, pubsub_starts) = if let Some(pubsub_lines) = pubsub_lines {
        let feed_connect = match &upstreams {
            Some(u) => u.connect_options().clone(),
            None => crate::upstream::ConnectOptions::new(
                crate::upstream::UpstreamConfig::default().connect_timeout(),
                None,
            ),
        };
        let (shared, starts) = crate::pubsub::PubsubShared::starts(
            &cfg.pubsub,
            pubsub_lines,
            &feed_connect,
            fleet.clone(),
        )
        .map_err(StartError::Config)?;
        (Some(shared), starts.into_iter().map(Some).collect())
    } else {
        (None, (0..cpus.len()).map(|_| None).collect::<Vec<_>>())
    };
    let telemetry =
        crate::telemetry::Telemetry::start(&cfg.telemetry).map_err(StartError::Telemetry)?;
    let stop = Arc::new(AtomicBool::new(false));
    let draining = Arc::new(AtomicBool::new(false));
    let lifecycle = Arc::new(match inherited {
        Some(_) => Lifecycle::holding_accepts(draining),
        None => Lifecycle::new(draining),
    });
    let (command_tx, commands) = mpsc::channel();
    let registry = Registry {
        cores: cpus
            .iter()
            .enumerate()
            .map(|(i, &cpu)| Arc::new(CoreMetrics::new(i, cpu)))
            .collect(),
        ktls_available: ktls.offloads(),
        audit: trail.is_enabled().then(|| trail.stats()),
        draining: lifecycle.draining_flag(),
        fleet: fleet.as_ref().map(|f| f.status.clone()),
        rooms: metric_rooms(
            &ip_limiter,
            &identity_budgets,
            &tls.reloads,
            upstreams.as_ref(),
            pubsub.as_ref(),
            fleet.as_ref(),
            telemetry.as_ref(),
        ),
    };
    let admin_err = |source| StartError::Admin {
        addr: cfg.server.admin,
        source,
    };
    let admin_copy = admin_listener.try_clone().map_err(admin_err)?;
    let admin_stop = Arc::new(AtomicBool::new(false));
    let admin = crate::admin::serve(admin_listener, registry.clone(), admin_stop.clone())
        .map_err(admin_err)?;

    let cfg = Arc::new(cfg);
    let mut per_core: Vec<Vec<std::net::TcpListener>> =
        (0..cpus.len()).map(|_| Vec::new()).collect();
    let mut locks = Vec::new();
    let mut handoff = handover::Handoff {
        sets: Vec::new(),
        admin: Some((admin, admin_copy.into())),
    };
    for set in sets {
        let copies = set
            .per_core
            .iter()
            .map(|l| l.try_clone().map(Into::into))
            .collect::<std::io::Result<Vec<std::os::fd::OwnedFd>>>()
            .map_err(|source| listen::ListenError::Bind {
                addr: set.addr,
                source,
            })?;
        handoff.sets.push((set.addr, copies));
        for (i, l) in set.per_core.into_iter().enumerate() {
            per_core[i].push(l);
        }
        locks.push(set.lock);
    }
    let mut threads = Vec::new();
    let (started_tx, started) = std::sync::mpsc::channel();
    let (replay_peers, replay_questions) = admission::replay_lines(cpus.len());
    let replay_capacity = admission
        .jwt()
        .map_or(1, |j| j.replay_capacity_per_core(cpus.len()));
    let replay_leeway = admission.jwt().map_or(0, |j| j.leeway_s());
    let replay_max_lifetime = admission.jwt().and_then(|j| j.max_lifetime_s());
    for (((((i, &cpu), listeners), questions), audit), pubsub) in cpus
        .iter()
        .enumerate()
        .zip(per_core)
        .zip(replay_questions)
        .zip(sinks)
        .zip(pubsub_starts)
    {
        let start = core::CoreStart {
            index: i,
            cores: cpus.len(),
            cpu,
            cfg: cfg.clone(),
            tls: tls.clone(),
            ktls: ktls.clone(),
            stop: stop.clone(),
            ip_limiter: ip_limiter.clone(),
            admission: admission.clone(),
            upstreams: upstreams.clone(),
            routes: routes.clone(),
            pubsub,
            rates: core::RatesStart {
                connection: connection_rate,
                control: control_rate,
                identities: identity_budgets.clone(),
            },
            audit,
            telemetry: telemetry.as_ref().map(|t| t.sink.clone()),
            replay: core::ReplayStart {
                peers: replay_peers.clone(),
                questions,
                capacity: replay_capacity,
                leeway_s: replay_leeway,
                max_lifetime_s: replay_max_lifetime,
            },
            metrics: registry.cores[i].clone(),
            listeners,
            lifecycle: lifecycle.clone(),
            fleet: fleet.as_ref().zip(cfg.fleet.as_ref()).map(|(fleet, f)| {
                crate::fleet::FleetAdmission {
                    fleet: fleet.clone(),
                    down: f.down,
                    single_use_down: f.single_use_down,
                }
            }),
        };
        let t = std::thread::Builder::new()
            .name(format!("wssedge-core-{i}"))
            .spawn({
                let started = started_tx.clone();
                move || core::run_core(start, started)
            })
            .map_err(StartError::Thread)?;
        threads.push(t);
    }
    drop(started_tx);
    // Ready means every core serves: wait for each to report before saying "listening".
    for _ in 0..threads.len() {
        match started.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(StartError::Core(e)),
            Err(_) => return Err(StartError::Core(core::CoreStartError::Timeout)),
        }
    }
    if let Some(h) = inherited.as_ref() {
        // Ready to serve: the predecessor stops accepting and hands over its replay store;
        // once its accepts have all returned and the entries are in our shards, ours start
        // (the queues wait meanwhile). Then it lets go of the control socket.
        h.ready();
        let replay = h.wait_accepts_released(
            ACCEPTS_RELEASE_TIMEOUT,
            replay_capacity.saturating_mul(cpus.len()),
        );
        take_over_replay(&admission, &replay_peers, replay);
        lifecycle.release_accepts();
        if cfg.server.control.is_some() {
            h.wait_control_released(Duration::from_secs(30));
        }
    }
    let crl_watcher = watch_crls(&tls, trail.handle()).map_err(StartError::CrlWatch)?;
    let reloader = Arc::new(reload::Reloader {
        started: (*cfg).clone(),
        tls: tls.clone(),
        admission: admission.clone(),
        ip_limiter: ip_limiter.clone(),
        audit: trail.handle(),
        one_at_a_time: Default::default(),
        notifier: notifier.clone(),
    });
    let control = match &cfg.server.control {
        Some(path) => Some(crate::control::ControlServer::start(
            path,
            Arc::new(operator::Operator {
                admission: admission.clone(),
                tls: tls.clone(),
                reloader: reloader.clone(),
                audit: trail.handle(),
                metrics: registry.clone(),
                started: std::time::Instant::now(),
                commands: command_tx.clone(),
                draining: lifecycle.clone(),
                drain_timeout: cfg.server.drain_timeout(),
                fleet: fleet.clone(),
            }),
        )?),
        None => None,
    };
    // Every core serves, the control socket answers: systemd may send traffic's way (a
    // restart's new process also becomes the unit's main process here).
    notifier.ready(inherited.is_some());
    Ok(Running {
        listening,
        admin,
        dev_ca,
        cpus,
        metrics: registry,
        threads,
        locks,
        control,
        handoff,
        admin_stop,
        handed_over: false,
        _crl_watcher: crl_watcher,
        trail,
        stop,
        ip_limiter,
        lifecycle,
        commands,
        command_tx,
        reloader,
        drain_timeout: cfg.server.drain_timeout(),
        replay_lines: replay_peers,
        notifier,
        telemetry,
    })
}

/// A restart's new process: puts the single-use token ids its predecessor handed over into its
/// own shards; when they are not all there (see [`handover`]), it distrusts every single-use
/// token issued before now rather than admit one that was used.
fn take_over_replay(
    admission: &admission::Admission,
    lines: &[futures_channel::mpsc::Sender<admission::ReplayAsk>],
    replay: handover::InheritedReplay,
) {
    let single_use = admission.jwt().is_some_and(|j| j.single_use());
    let whole = replay.is_whole();
    let shortfall = replay.shortfall();
    let now = core::unix_now();
    let summary = admission::import_shards(lines, replay.entries, now, REPLAY_IMPORT_TIMEOUT);
    let kept_all = summary.all_cores && summary.outcome.dropped == 0;
    if whole && kept_all {
        tracing::info!(
            kept = summary.outcome.kept,
            expired = summary.outcome.expired,
            "restart: single-use token ids taken over from the previous process"
        );
        return;
    }
    admission.distrust_tokens_before(now);
    if single_use {
        let why = if !whole {
            shortfall
        } else if !summary.all_cores {
            "a core did not take its entries in time"
        } else {
            "more entries than max_tracked_jti"
        };
        tracing::warn!(
            kept = summary.outcome.kept,
            dropped = summary.outcome.dropped,
            reason = why,
            "restart: the replay store did not arrive whole; single-use tokens issued before now are refused (401 replay_unproven)"
        );
    }
}
