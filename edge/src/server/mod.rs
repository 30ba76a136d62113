//! Threads and sockets: one pinned monoio runtime per core, each with its own SO_REUSEPORT
//! listener per address, its own connections, timer wheel and buffer pool. Connections never
//! migrate between cores; cores share nothing on the data path.

mod admission;
mod conn;
mod core;
pub mod cpus;
mod identity_slots;
pub(crate) mod ip_limit;
pub mod listen;
mod live;
mod operator;
mod record_layer;
pub mod timer;
mod tls_state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::config::Config;
use crate::metrics::{CoreMetrics, Registry};
use crate::tls::crl::{CrlSet, CrlWatcher};
use crate::tls::ktls::KtlsPolicy;
use crate::tls::policy;

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
    Tls(String),
    #[error("admin listener on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a core thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    Core(String),
    #[error("kTLS: {0}")]
    Ktls(String),
    #[error("per-IP limit: {0}")]
    IpLimit(String),
    #[error("audit trail: {0}")]
    Audit(#[from] crate::audit::AuditError),
    #[error("control socket: {0}")]
    Control(#[from] crate::control::ControlError),
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
    _locks: Vec<listen::InstanceLock>,
    /// Served while the process runs; dropping it removes the socket file.
    _control: Option<crate::control::ControlServer>,
    /// Re-reads the CRLs when their files change (none without CRLs).
    _crl_watcher: Option<CrlWatcher>,
    /// Sealed once every core has stopped.
    trail: crate::audit::AuditTrail,
    /// Set to stop: each core closes its listeners and stops within a tick.
    stop: Arc<AtomicBool>,
    /// Detached (eBPF) once the cores have stopped.
    ip_limiter: Arc<ip_limit::IpLimiter>,
}

impl Running {
    /// The flag that stops the edge (SIGTERM/SIGINT set it).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Blocks until every core thread has ended, then seals the audit trail. True when the
    /// stop was asked for (false: the cores ended on their own, which is a failure).
    pub fn wait(self) -> bool {
        for t in self.threads {
            let _ = t.join();
        }
        // The kernel programs go before the listeners close with the process.
        self.ip_limiter.stop();
        if let Err(e) = self.trail.shutdown() {
            tracing::error!(error = %e, "the audit trail could not be sealed");
        }
        self.stop.load(Ordering::SeqCst)
    }
}

/// Watches the CRL files: a change rebuilds the TLS config and swaps it and the set in (each
/// core then closes its sessions whose certificate is now revoked). Audited either way.
fn watch_crls(
    tls: &Arc<tls_state::TlsState>,
    audit: crate::audit::AuditHandle,
) -> std::io::Result<Option<CrlWatcher>> {
    let current = tls.crls.load_full();
    if current.is_empty() {
        return Ok(None);
    }
    let tls = tls.clone();
    CrlWatcher::spawn(&current, move |crls| {
        let _ = tls.replace_crls(Ok(crls), &audit);
    })
    .map(Some)
}

/// Validates the configuration, binds every listener, starts the cores and the admin listener.
pub fn start(cfg: Config) -> Result<Running, StartError> {
    cfg.validate()?;
    let cpus = cpus::choose(cfg.server.cores, cfg.server.cpus.as_deref())?;
    let (chain, key, dev_ca) = match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(cert), Some(key)) => (
            policy::load_cert_chain(cert).map_err(|e| StartError::Tls(e.to_string()))?,
            policy::load_private_key(key).map_err(|e| StartError::Tls(e.to_string()))?,
            None,
        ),
        _ => {
            let dev = crate::devcert::ensure_dev_cert(&cfg.server.state_dir)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            (dev.chain, dev.key, Some(dev.ca_pem_path))
        }
    };
    let ktls = KtlsPolicy::decide(cfg.tls.ktls, cfg.tls.ktls_key_limit_records)
        .map_err(StartError::Ktls)?;
    ktls.log_start();
    let crls = CrlSet::load(&cfg.tls.crls).map_err(|e| StartError::Tls(e.to_string()))?;
    let tls = Arc::new(
        tls_state::TlsState::new(cfg.tls.clone(), chain, key, crls, ktls.offloads())
            .map_err(|e| StartError::Tls(e.to_string()))?,
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
        sets.push(listen::bind_listeners(*addr, cpus.len())?);
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

    let (trail, sinks) = crate::audit::AuditTrail::start(&cfg.audit, cpus.len())?;
    let stop = Arc::new(AtomicBool::new(false));
    let registry = Registry {
        cores: cpus
            .iter()
            .enumerate()
            .map(|(i, &cpu)| Arc::new(CoreMetrics::new(i, cpu)))
            .collect(),
        ktls_available: ktls.offloads(),
        audit: trail.is_enabled().then(|| trail.stats()),
        ip_limiter: Some(ip_limiter.clone()),
    };
    let admin = crate::admin::start(cfg.server.admin, registry.clone()).map_err(|source| {
        StartError::Admin {
            addr: cfg.server.admin,
            source,
        }
    })?;

    let cfg = Arc::new(cfg);
    let mut per_core: Vec<Vec<std::net::TcpListener>> =
        (0..cpus.len()).map(|_| Vec::new()).collect();
    let mut locks = Vec::new();
    for set in sets {
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
    for ((((i, &cpu), listeners), questions), audit) in cpus
        .iter()
        .enumerate()
        .zip(per_core)
        .zip(replay_questions)
        .zip(sinks)
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
            audit,
            replay: core::ReplayStart {
                peers: replay_peers.clone(),
                questions,
                capacity: replay_capacity,
                leeway_s: replay_leeway,
            },
            metrics: registry.cores[i].clone(),
            listeners,
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
            Err(_) => return Err(StartError::Core("a core did not start within 10 s".into())),
        }
    }
    let crl_watcher =
        watch_crls(&tls, trail.handle()).map_err(|e| StartError::Tls(e.to_string()))?;
    let control = match &cfg.server.control {
        Some(path) => Some(crate::control::ControlServer::start(
            path,
            Arc::new(operator::Operator {
                admission: admission.clone(),
                tls: tls.clone(),
                config_source: cfg.source.clone(),
                ip_limiter: ip_limiter.clone(),
                audit: trail.handle(),
                metrics: registry.clone(),
                started: std::time::Instant::now(),
            }),
        )?),
        None => None,
    };
    Ok(Running {
        listening,
        admin,
        dev_ca,
        cpus,
        metrics: registry,
        threads,
        _locks: locks,
        _control: control,
        _crl_watcher: crl_watcher,
        trail,
        stop,
        ip_limiter,
    })
}
