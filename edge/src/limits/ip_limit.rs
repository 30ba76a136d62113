//! Per-source-IP connection limits: in the kernel (eBPF, at the SYN) where it loads and its
//! start-up self-test shows this kernel holds the limit, else at accept in userspace (the
//! reason in `wssedge_ip_limiter_fallback`) — same rules, and before a single TLS byte either way.
//!
//! The kernel limiter refuses the SYN itself, so nothing reaches the accept loop; the
//! userspace one takes a slot right after accept and holds it in the connection's [`Slot`]
//! until the connection ends. A sweep thread releases the kernel slots of handshakes that died
//! before they became sockets (on kernels without the immediate-release hooks).
//!
//! [`Slot`]: crate::server::conn::Slot

use std::fmt::Write as _;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;

use crate::ebpf::{
    self_test, EbpfError, EbpfLimiter, IpStats, LimitConfig, LimitConfigError, LimitGuard,
    LimiterStats, Refused, SelfTestError, UserspaceLimiter,
};
use crate::metrics::PrometheusFamilies;

/// `[limits] ip_limiter`: which limiter enforces `per_ip_connections` and `ip_overrides`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IpLimiterMode {
    /// eBPF where it loads (root, BPF), else userspace; the start-up log says which and why.
    #[default]
    Auto,
    /// eBPF or refuse to start.
    Ebpf,
    /// Always at accept, in userspace.
    Userspace,
}

/// The active limiter.
pub(crate) enum IpLimiter {
    /// No limit configured.
    Off,
    /// Taken out (and detached) by [`IpLimiter::stop`]; locked only by it and the metrics
    /// scrape, never on the accept path.
    Kernel {
        limiters: Mutex<Vec<Arc<EbpfLimiter>>>,
        sweeper: Mutex<Option<Sweeper>>,
    },
    /// At accept; with the reason when eBPF was wanted (`auto`) but could not be trusted.
    Userspace(Arc<UserspaceLimiter>, Option<Fallback>),
}

/// Why the limit is enforced in userspace although `ip_limiter = "auto"` wanted the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The programs did not load or attach (no root, no BTF, verifier).
    CannotLoad,
    /// They loaded, but the start-up self-test showed this kernel does not hold the limit.
    SelfTestFailed,
}

impl Fallback {
    /// The `reason` label of `wssedge_ip_limiter_fallback` (a public contract).
    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::CannotLoad => "ebpf_cannot_load",
            Fallback::SelfTestFailed => "ebpf_self_test_failed",
        }
    }
}

/// Why the per-IP limiter cannot start or take new rules.
#[derive(Debug, thiserror::Error)]
pub enum IpLimitError {
    #[error("[limits] ip_limiter = \"ebpf\" but the eBPF limiter cannot load: {0}")]
    EbpfRequired(EbpfError),
    #[error(
        "[limits] ip_limiter = \"ebpf\" but this kernel cannot be trusted with the limit: {0}; \
         set ip_limiter = \"auto\" (falls back to userspace) or \"userspace\""
    )]
    EbpfSelfTest(SelfTestError),
    #[error("per-IP limits were off at start; restart the edge to turn them on")]
    OffAtStart,
    #[error(transparent)]
    Rules(#[from] LimitConfigError),
    #[error(transparent)]
    Kernel(#[from] EbpfError),
}

impl IpLimiter {
    /// Starts the limiter for the listener groups (one per listen address, each with one
    /// listener per core).
    pub fn start(
        mode: IpLimiterMode,
        cfg: &LimitConfig,
        groups: &[(u16, Vec<BorrowedFd<'_>>)],
    ) -> Result<Self, IpLimitError> {
        if cfg.per_ip_connections == 0 && cfg.ip_overrides.is_empty() {
            tracing::info!("per-IP connection limit: off ([limits] per_ip_connections = 0)");
            return Ok(IpLimiter::Off);
        }
        if mode == IpLimiterMode::Userspace {
            tracing::info!("per-IP connection limit enforced in userspace at accept ([limits] ip_limiter = \"userspace\")");
            return Ok(IpLimiter::Userspace(UserspaceLimiter::new(cfg)?, None));
        }
        let ports: Vec<u16> = groups.iter().map(|(port, _)| *port).collect();
        let fallback = match self_test(&ports) {
            Ok(passed) => match attach_all(cfg, groups) {
                Ok(limiters) => {
                    let release = limiters
                        .first()
                        .and_then(|l| l.immediate_release())
                        .unwrap_or("periodic sweep");
                    tracing::info!(
                        limit = cfg.per_ip_connections,
                        overrides = cfg.ip_overrides.len(),
                        release,
                        self_test_ms = passed.elapsed.as_millis() as u64,
                        "per-IP connection limit in the kernel (eBPF sk_reuseport, at the SYN); \
                         self-test passed: this kernel refused a 2nd connection at limit 1 and \
                         released the slot on close"
                    );
                    // The sweep thread starts with `start_sweeping`, after the privilege drop:
                    // a thread started now would keep the capabilities the drop takes away.
                    return Ok(IpLimiter::Kernel {
                        limiters: Mutex::new(limiters),
                        sweeper: Mutex::new(None),
                    });
                }
                Err(e) if mode == IpLimiterMode::Ebpf => return Err(IpLimitError::EbpfRequired(e)),
                Err(e) => {
                    tracing::warn!(
                        "per-IP connection limit enforced in userspace at accept (before TLS): the \
                         eBPF limiter cannot load: {e}"
                    );
                    Fallback::CannotLoad
                }
            },
            Err(SelfTestError::Load(e)) if mode == IpLimiterMode::Ebpf => {
                return Err(IpLimitError::EbpfRequired(e))
            }
            Err(SelfTestError::Load(e)) => {
                tracing::warn!(
                    "per-IP connection limit enforced in userspace at accept (before TLS): the \
                     eBPF limiter cannot load: {e}"
                );
                Fallback::CannotLoad
            }
            Err(e) if mode == IpLimiterMode::Ebpf => return Err(IpLimitError::EbpfSelfTest(e)),
            Err(e) => {
                tracing::warn!(
                    "per-IP connection limit enforced in userspace at accept (before TLS), not in \
                     the kernel: the eBPF limiter loads here but its start-up self-test failed: {e}"
                );
                Fallback::SelfTestFailed
            }
        };
        Ok(IpLimiter::Userspace(
            UserspaceLimiter::new(cfg)?,
            Some(fallback),
        ))
    }

    /// At accept: a slot for `ip`, or the refusal (userspace only; the kernel limiter has
    /// already refused at the SYN).
    pub fn admit(&self, ip: IpAddr) -> Result<Option<LimitGuard>, Refused> {
        match self {
            IpLimiter::Userspace(l, _) => l.try_acquire(ip).map(Some),
            _ => Ok(None),
        }
    }

    /// Before a restart: the listeners leave our programs' socket arrays so that the new
    /// process can attach its own (see `EbpfLimiter::hand_listeners_over`).
    pub fn hand_listeners_over(&self) -> Result<(), IpLimitError> {
        if let IpLimiter::Kernel { limiters, .. } = self {
            for l in limiters.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                l.hand_listeners_over()?;
            }
        }
        Ok(())
    }

    /// After a restart that failed: our programs steer to the listeners again.
    pub fn take_listeners_back(&self) {
        if let IpLimiter::Kernel { limiters, .. } = self {
            for l in limiters.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if let Err(e) = l.take_listeners_back() {
                    tracing::warn!(error = %e, "eBPF listener steering not restored after a failed restart");
                }
            }
        }
    }

    /// Starts the thread that releases the kernel slots of handshakes that died (kernel
    /// limiter only; a second call does nothing).
    pub fn start_sweeping(&self) {
        if let IpLimiter::Kernel { limiters, sweeper } = self {
            let mut sweeper = sweeper.lock().unwrap_or_else(|e| e.into_inner());
            if sweeper.is_none() {
                let limiters = limiters.lock().unwrap_or_else(|e| e.into_inner()).clone();
                *sweeper = Some(Sweeper::start(limiters));
            }
        }
    }

    /// The capabilities a restart's new process needs to start this limiter the same way
    /// (load and attach its own programs): none unless the limit is in the kernel.
    pub fn capabilities_for_successor(&self) -> wssedge_sys::privilege::CapabilitySet {
        match self {
            IpLimiter::Kernel { .. } => crate::privilege::EBPF_LIMITER,
            _ => wssedge_sys::privilege::CapabilitySet::empty(),
        }
    }

    /// New rules, applied live (reload). A limiter that was off at start cannot be started
    /// without a restart (the kernel programs attach before the cores accept).
    pub fn update(&self, cfg: &LimitConfig) -> Result<(), IpLimitError> {
        match self {
            IpLimiter::Off if cfg.per_ip_connections == 0 && cfg.ip_overrides.is_empty() => Ok(()),
            IpLimiter::Off => Err(IpLimitError::OffAtStart),
            IpLimiter::Userspace(l, _) => Ok(l.update(cfg)?),
            IpLimiter::Kernel { limiters, .. } => {
                for l in limiters.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    l.update(cfg)?;
                }
                Ok(())
            }
        }
    }

    /// Stops (or resumes) steering new connections to `core`'s listeners: a core that has
    /// stopped must not be handed SYNs nobody will accept.
    pub fn set_active(&self, core: usize, active: bool) {
        if let IpLimiter::Kernel { limiters, .. } = self {
            for l in limiters.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                if let Err(e) = l.set_active(core, active) {
                    tracing::warn!(core, error = %e, "eBPF listener steering not updated");
                }
            }
        }
    }

    /// The label of `/metrics` and the start-up log.
    pub fn mode(&self) -> &'static str {
        match self {
            IpLimiter::Off => "off",
            IpLimiter::Kernel { .. } => "ebpf",
            IpLimiter::Userspace(..) => "userspace",
        }
    }

    /// Counters and the most refused addresses (summed over the listen addresses).
    pub fn stats(&self, top: usize) -> Option<(LimiterStats, Vec<(IpAddr, IpStats)>)> {
        match self {
            IpLimiter::Off => None,
            IpLimiter::Userspace(l, _) => Some((l.stats(), l.top_refused(top))),
            IpLimiter::Kernel { limiters, .. } => {
                let mut total = LimiterStats::default();
                let mut refused = Vec::new();
                for l in limiters.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                    if let Ok(s) = l.stats() {
                        total.syns_seen += s.syns_seen;
                        total.refused_limit += s.refused_limit;
                        total.refused_blocked += s.refused_blocked;
                        total.accepted += s.accepted;
                        total.released += s.released;
                    }
                    refused.extend(l.top_refused(top));
                }
                refused.sort_by_key(|(_, s)| std::cmp::Reverse(s.refused));
                refused.truncate(top);
                Some((total, refused))
            }
        }
    }

    /// Lets go of the kernel programs without detaching them from the listener groups: after a
    /// restart handover the groups are the successor's, and so is the program attached to them
    /// (its attach replaced ours). Our maps and links close with the process.
    pub fn abandon(&self) {
        if let IpLimiter::Kernel { limiters, sweeper } = self {
            drop(sweeper.lock().unwrap_or_else(|e| e.into_inner()).take());
            let taken = std::mem::take(&mut *limiters.lock().unwrap_or_else(|e| e.into_inner()));
            for l in taken {
                match Arc::try_unwrap(l) {
                    Ok(l) => l.leave_attached(),
                    // Still shared: leaked rather than detached on drop.
                    Err(l) => std::mem::forget(l),
                }
            }
        }
    }

    /// Detaches the kernel programs (aya leaves an `SO_ATTACH_REUSEPORT_EBPF` attached); the
    /// sweep thread stops first so the limiters have no other owner.
    pub fn stop(&self) {
        if let IpLimiter::Kernel { limiters, sweeper } = self {
            drop(sweeper.lock().unwrap_or_else(|e| e.into_inner()).take());
            let taken = std::mem::take(&mut *limiters.lock().unwrap_or_else(|e| e.into_inner()));
            for l in taken {
                match Arc::try_unwrap(l) {
                    Ok(l) => {
                        if let Err(e) = l.detach() {
                            tracing::warn!(error = %e, "eBPF limiter detach failed");
                        }
                    }
                    Err(_) => tracing::debug!("eBPF limiter still shared; it detaches on drop"),
                }
            }
        }
    }
}

fn attach_all(
    cfg: &LimitConfig,
    groups: &[(u16, Vec<BorrowedFd<'_>>)],
) -> Result<Vec<Arc<EbpfLimiter>>, EbpfError> {
    groups
        .iter()
        .map(|(port, fds)| EbpfLimiter::attach(fds, &[*port], cfg).map(Arc::new))
        .collect()
}

/// Releases the kernel slots of handshakes that died before they became sockets, about once a
/// second (reservations younger than a second are left alone).
pub(crate) struct Sweeper {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sweeper {
    fn start(limiters: Vec<Arc<EbpfLimiter>>) -> Sweeper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("wssedge-ebpf-sweep".into())
            .spawn(move || {
                'sweeping: loop {
                    // Ten short naps: a stop is noticed within 100 ms.
                    for _ in 0..10 {
                        std::thread::sleep(Duration::from_millis(100));
                        if flag.load(Ordering::Relaxed) {
                            break 'sweeping;
                        }
                    }
                    for l in &limiters {
                        if let Err(e) = l.sweep(Duration::from_secs(1)) {
                            tracing::debug!(error = %e, "eBPF sweep failed");
                        }
                    }
                }
            })
            .ok();
        Sweeper { stop, thread }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The limiter's mode, counters and the ten most refused addresses.
impl PrometheusFamilies for IpLimiter {
    fn render_families(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP wssedge_ip_limiter Where the per-IP connection limit is enforced\n\
             # TYPE wssedge_ip_limiter gauge\nwssedge_ip_limiter{{mode=\"{}\"}} 1",
            self.mode()
        );
        if let IpLimiter::Userspace(_, Some(fallback)) = self {
            let _ = writeln!(
                out,
                "# HELP wssedge_ip_limiter_fallback Why the per-IP limit is enforced in userspace \
                 although the kernel was wanted\n\
                 # TYPE wssedge_ip_limiter_fallback gauge\n\
                 wssedge_ip_limiter_fallback{{reason=\"{}\"}} 1",
                fallback.as_str()
            );
        }
        let Some((stats, top)) = self.stats(10) else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP wssedge_ip_limit_total Per-IP limiter events (kernel: SYNs)\n\
             # TYPE wssedge_ip_limit_total counter"
        );
        for (event, n) in [
            ("seen", stats.syns_seen),
            ("accepted", stats.accepted),
            ("refused_limit", stats.refused_limit),
            ("refused_blocked", stats.refused_blocked),
            ("released", stats.released),
        ] {
            let _ = writeln!(out, "wssedge_ip_limit_total{{event=\"{event}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP wssedge_ip_refused_total Connections refused per source address (top 10)\n\
             # TYPE wssedge_ip_refused_total counter"
        );
        for (ip, s) in top.iter().filter(|(_, s)| s.refused > 0) {
            let _ = writeln!(
                out,
                "wssedge_ip_refused_total{{addr=\"{ip}\"}} {}",
                s.refused
            );
        }
    }
}

impl std::fmt::Debug for IpLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IpLimiter").field(&self.mode()).finish()
    }
}

/// The descriptors of a listener group, for attaching.
pub(crate) fn group_fds(listeners: &[std::net::TcpListener]) -> Vec<BorrowedFd<'_>> {
    listeners.iter().map(AsFd::as_fd).collect()
}
