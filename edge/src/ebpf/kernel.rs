//! The loader of `ebpf/obj/edge.bpf.o`: attach, live updates, steering, counters, detach.

use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use aya::maps::lpm_trie::Key as LpmKey;
use aya::maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, ReusePortSockArray};
use aya::programs::{
    BtfTracePoint, FEntry, FExit, Iter, ProgramError, RawTracePoint, RawTracePointRunOptions,
    SkReuseport, TestRun,
};
use aya::{Btf, Ebpf, EbpfLoader};

use super::maps::{counter, EdgeConfig, EdgeFlow, EdgeIpStats, EdgePending, MAX_LISTENERS};
use super::rules::{addr_of, key_of, LimitConfig, LimitConfigError, RuleTable};
use super::{IpStats, LimiterStats};

/// The committed object (`cargo xtask ebpf` rebuilds it), aligned as aya's ELF parser needs.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!("../../../ebpf/obj/edge.bpf.o");

/// Source files the object is built from, relative to the workspace root, in hash-file order.
pub const SOURCES: [&str; 2] = ["ebpf/src/edge.bpf.c", "ebpf/include/edge_maps.h"];

/// Why the kernel limiter cannot run (the caller falls back to [`super::UserspaceLimiter`]).
#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    #[error("not permitted: {0}")]
    NotPermitted(String),
    #[error("no kernel BTF (/sys/kernel/btf/vmlinux): {0}")]
    NoBtf(String),
    #[error("the verifier rejected {program}: {log}")]
    Verifier { program: String, log: String },
    #[error("{what}: {detail}")]
    Kernel { what: String, detail: String },
    #[error("invalid listeners: {0}")]
    Listeners(String),
    #[error(transparent)]
    Config(#[from] LimitConfigError),
}

fn errno_of(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return io.raw_os_error();
        }
        cur = err.source();
    }
    None
}

fn not_permitted(what: &str) -> EbpfError {
    EbpfError::NotPermitted(format!(
        "{what}: EPERM (needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN)"
    ))
}

fn kernel_err(what: impl Into<String>, e: &(dyn std::error::Error + 'static)) -> EbpfError {
    let what = what.into();
    if matches!(errno_of(e), Some(libc::EPERM)) {
        return not_permitted(&what);
    }
    let mut detail = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        detail.push_str(": ");
        detail.push_str(&s.to_string());
        src = s.source();
    }
    EbpfError::Kernel { what, detail }
}

fn map_err(name: &str, e: MapError) -> EbpfError {
    kernel_err(format!("map {name}"), &e)
}

fn prog_err(program: &str, e: ProgramError) -> EbpfError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            if io_error.raw_os_error() == Some(libc::EPERM) {
                let mut e = not_permitted(&format!("loading {program}"));
                if let EbpfError::NotPermitted(m) = &mut e {
                    if !tail.is_empty() {
                        m.push_str("; verifier: ");
                        m.push_str(&tail);
                    }
                }
                return e;
            }
            EbpfError::Verifier {
                program: program.to_string(),
                log: format!("{io_error}\n{tail}"),
            }
        }
        other => kernel_err(format!("program {program}"), &other),
    }
}

/// Whether this thread's effective capabilities may load the limiter (capget; unknown: let
/// the kernel answer).
fn has_caps() -> bool {
    use wssedge_sys::privilege::{capabilities, CapabilitySet as Cap};
    let Ok(sets) = capabilities() else {
        return true;
    };
    let eff = sets.effective;
    eff.contains(Cap::NET_ADMIN)
        && (eff.contains(Cap::SYS_ADMIN) || eff.contains(Cap::BPF | Cap::PERFMON))
}

struct Inner {
    bpf: Ebpf,
    config: Array<MapData, EdgeConfig>,
    overrides: LpmTrie<MapData, [u8; 16], u32>,
    ip_stats: HashMap<MapData, [u8; 16], EdgeIpStats>,
    counters: PerCpuArray<MapData, u64>,
    active: Array<MapData, u32>,
    pending: HashMap<MapData, EdgeFlow, EdgePending>,
    _listeners: ReusePortSockArray<MapData>,
    /// Duplicates of the group's listeners, in their slots: to put them back in
    /// `_listeners` after a restart that failed (see `hand_listeners_over`).
    listener_fds: Vec<OwnedFd>,
    _ports: HashMap<MapData, u16, u8>,
    active_set: Vec<bool>,
    rules: RuleTable,
}

/// The kernel limiter attached to one SO_REUSEPORT listener group.
pub struct EbpfLimiter {
    inner: Mutex<Inner>,
    /// A duplicate of one listener of the group, to detach through.
    group: Option<OwnedFd>,
    expired: AtomicU64,
    /// The request-socket drop hook when the fentry/fexit hooks are attached (diagnostics).
    reqsk_drop_hook: Option<&'static str>,
}

impl std::fmt::Debug for EbpfLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EbpfLimiter")
            .field("reqsk_drop_hook", &self.reqsk_drop_hook)
            .finish_non_exhaustive()
    }
}

fn take<T>(bpf: &mut Ebpf, name: &str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let m = bpf.take_map(name).ok_or_else(|| EbpfError::Kernel {
        what: format!("map {name}"),
        detail: "missing from the object".into(),
    })?;
    T::try_from(m).map_err(|e| map_err(name, e))
}

fn program<'a, T>(bpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = bpf.program_mut(name).ok_or_else(|| EbpfError::Kernel {
        what: format!("program {name}"),
        detail: "missing from the object".into(),
    })?;
    p.try_into().map_err(|e| prog_err(name, e))
}

/// Loads the hooks that release a dead handshake's slot at once (fentry/fexit). Optional:
/// some kernels and sandboxes refuse fentry/fexit (EPERM) while tp_btf and iterators work;
/// the periodic [`EbpfLimiter::sweep`] then does their job. Returns (drop program, function).
fn load_immediate_hooks(bpf: &mut Ebpf, btf: &Btf) -> Option<(&'static str, &'static str)> {
    let r = (|| -> Result<(&'static str, &'static str), EbpfError> {
        program::<FEntry>(bpf, "edge_reqsk_hashed")?
            .load("inet_csk_reqsk_queue_hash_add", btf)
            .map_err(|e| prog_err("edge_reqsk_hashed", e))?;
        program::<FExit>(bpf, "edge_conn_request_exit")?
            .load("tcp_conn_request", btf)
            .map_err(|e| prog_err("edge_conn_request_exit", e))?;
        // 6.10+ (and stable backports such as Debian 12's 6.1) drop timed-out request
        // sockets through the static helper; older kernels through the exported function.
        if program::<FExit>(bpf, "edge_reqsk_drop")?
            .load("__inet_csk_reqsk_queue_drop", btf)
            .is_ok()
        {
            return Ok(("edge_reqsk_drop", "__inet_csk_reqsk_queue_drop"));
        }
        program::<FExit>(bpf, "edge_reqsk_drop_exported")?
            .load("inet_csk_reqsk_queue_drop", btf)
            .map_err(|e| prog_err("edge_reqsk_drop_exported", e))?;
        Ok(("edge_reqsk_drop_exported", "inet_csk_reqsk_queue_drop"))
    })();
    match r {
        Ok(x) => Some(x),
        Err(e) => {
            tracing::info!("eBPF limiter: no fentry/fexit ({e}); dead handshakes are released by the periodic sweep");
            None
        }
    }
}

impl EbpfLimiter {
    /// Loads the object, fills the maps and attaches: the tracing programs first (so every
    /// reservation has its release path), then `sk_reuseport` to the group of `listeners`
    /// (one per core, all in the same SO_REUSEPORT group; index = core). `ports` are the
    /// group's listening ports (host order). Connections open before the attach are not
    /// counted.
    pub fn attach(
        listeners: &[BorrowedFd<'_>],
        ports: &[u16],
        cfg: &LimitConfig,
    ) -> Result<EbpfLimiter, EbpfError> {
        Self::attach_with(listeners, ports, cfg, true)
    }

    /// [`Self::attach`] without the fentry/fexit hooks, as on a kernel that refuses them: only
    /// [`Self::sweep`] releases dead handshakes (tests of that path on every kernel).
    #[cfg(test)]
    pub(crate) fn attach_sweep_only(
        listeners: &[BorrowedFd<'_>],
        ports: &[u16],
        cfg: &LimitConfig,
    ) -> Result<EbpfLimiter, EbpfError> {
        Self::attach_with(listeners, ports, cfg, false)
    }

    fn attach_with(
        listeners: &[BorrowedFd<'_>],
        ports: &[u16],
        cfg: &LimitConfig,
        immediate_hooks: bool,
    ) -> Result<EbpfLimiter, EbpfError> {
        let rules = cfg.validate()?;
        if listeners.is_empty() || listeners.len() > MAX_LISTENERS {
            return Err(EbpfError::Listeners(format!(
                "{} listeners (1..={MAX_LISTENERS})",
                listeners.len()
            )));
        }
        if ports.is_empty() {
            return Err(EbpfError::Listeners("no listening port".into()));
        }
        if !has_caps() {
            return Err(EbpfError::NotPermitted(
                "needs root, or CAP_BPF + CAP_PERFMON + CAP_NET_ADMIN".into(),
            ));
        }
        let btf = Btf::from_sys_fs().map_err(|e| EbpfError::NoBtf(e.to_string()))?;
        let mut bpf = EbpfLoader::new()
            .btf(Some(&btf))
            .load(OBJECT)
            .map_err(|e| kernel_err("loading edge.bpf.o", &e))?;

        program::<SkReuseport>(&mut bpf, "edge_select")?
            .load()
            .map_err(|e| prog_err("edge_select", e))?;
        program::<BtfTracePoint>(&mut bpf, "edge_state")?
            .load("inet_sock_set_state", &btf)
            .map_err(|e| prog_err("edge_state", e))?;
        program::<RawTracePoint>(&mut bpf, "edge_sweep")?
            .load()
            .map_err(|e| prog_err("edge_sweep", e))?;
        program::<Iter>(&mut bpf, "edge_mark")?
            .load("tcp", &btf)
            .map_err(|e| prog_err("edge_mark", e))?;
        let immediate = if immediate_hooks {
            load_immediate_hooks(&mut bpf, &btf)
        } else {
            None
        };

        let mut inner = Inner {
            config: take(&mut bpf, "config")?,
            overrides: take(&mut bpf, "overrides")?,
            ip_stats: take(&mut bpf, "ip_stats")?,
            counters: take(&mut bpf, "counters")?,
            active: take(&mut bpf, "active")?,
            pending: take(&mut bpf, "pending")?,
            _listeners: take(&mut bpf, "listeners")?,
            listener_fds: listeners
                .iter()
                .map(|fd| fd.try_clone_to_owned())
                .collect::<Result<_, _>>()
                .map_err(|e| kernel_err("dup listener", &e))?,
            _ports: take(&mut bpf, "ports")?,
            bpf,
            active_set: vec![true; listeners.len()],
            rules: rules.clone(),
        };
        for p in ports {
            inner
                ._ports
                .insert(p, 1u8, 0)
                .map_err(|e| map_err("ports", e))?;
        }
        inner.put_listeners()?;
        inner.write_active()?;
        inner.write_rules(&rules)?;

        program::<BtfTracePoint>(&mut inner.bpf, "edge_state")?
            .attach()
            .map_err(|e| kernel_err("attaching edge_state", &e))?;
        let immediate = immediate.and_then(|(drop_name, drop_fn)| {
            let r = program::<FEntry>(&mut inner.bpf, "edge_reqsk_hashed")
                .and_then(|p| p.attach().map_err(|e| prog_err("edge_reqsk_hashed", e)))
                .and_then(|_| program::<FExit>(&mut inner.bpf, "edge_conn_request_exit"))
                .and_then(|p| p.attach().map_err(|e| prog_err("edge_conn_request_exit", e)))
                .and_then(|_| program::<FExit>(&mut inner.bpf, drop_name))
                .and_then(|p| p.attach().map_err(|e| prog_err(drop_name, e)));
            match r {
                Ok(_) => Some(drop_fn),
                Err(e) => {
                    tracing::info!("eBPF limiter: fentry/fexit hooks not attached ({e}); dead handshakes are released by the periodic sweep");
                    None
                }
            }
        });
        let group = listeners[0]
            .try_clone_to_owned()
            .map_err(|e| kernel_err("dup listener", &e))?;
        program::<SkReuseport>(&mut inner.bpf, "edge_select")?
            .attach(group.as_fd())
            .map_err(|e| kernel_err("SO_ATTACH_REUSEPORT_EBPF", &e))?;
        Ok(EbpfLimiter {
            inner: Mutex::new(inner),
            group: Some(group),
            expired: AtomicU64::new(0),
            reqsk_drop_hook: immediate,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a new default limit and override table live. Open connections keep their
    /// slots; a lowered limit refuses new SYNs until the source is under it.
    pub fn update(&self, cfg: &LimitConfig) -> Result<(), EbpfError> {
        let rules = cfg.validate()?;
        self.lock().write_rules(&rules)
    }

    /// Stops (or resumes) steering new SYNs to listener `core`, e.g. while its core drains.
    /// With no active listener left, the kernel's own hash over the whole group applies.
    pub fn set_active(&self, core: usize, active: bool) -> Result<(), EbpfError> {
        let mut inner = self.lock();
        let Some(slot) = inner.active_set.get_mut(core) else {
            return Err(EbpfError::Listeners(format!("no listener {core}")));
        };
        *slot = active;
        inner.write_active()
    }

    /// Global counters, summed over CPUs.
    pub fn stats(&self) -> Result<LimiterStats, EbpfError> {
        let inner = self.lock();
        let get = |i: u32| -> Result<u64, EbpfError> {
            let v = inner
                .counters
                .get(&i, 0)
                .map_err(|e| map_err("counters", e))?;
            Ok(v.iter().sum())
        };
        Ok(LimiterStats {
            syns_seen: get(counter::SYNS_SEEN)?,
            refused_limit: get(counter::REFUSED_LIMIT)?,
            refused_blocked: get(counter::REFUSED_BLOCKED)?,
            accepted: get(counter::ACCEPTED)?,
            released: get(counter::RELEASED)?,
            retransmit: get(counter::RETRANSMIT)?,
            no_listener: get(counter::NO_LISTENER)?,
            unreserved: get(counter::UNRESERVED)?,
            table_full: get(counter::TABLE_FULL)?,
            expired: self.expired.load(Ordering::Relaxed),
        })
    }

    /// The `n` source addresses with the most refusals.
    pub fn top_refused(&self, n: usize) -> Vec<(IpAddr, IpStats)> {
        let inner = self.lock();
        let all = inner
            .ip_stats
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.refused > 0)
            .map(|(k, v)| (addr_of(k), ip_stats(v)))
            .collect();
        super::top_n(all, n)
    }

    /// Slots held by `ip` (handshakes in flight + open connections).
    pub fn connections_of(&self, ip: IpAddr) -> u32 {
        self.stats_of(ip).current
    }

    /// Everything the kernel knows about `ip`.
    pub fn stats_of(&self, ip: IpAddr) -> IpStats {
        self.lock()
            .ip_stats
            .get(&key_of(ip), 0)
            .map(ip_stats)
            .unwrap_or_default()
    }

    /// Reservations not yet owned by a socket (diagnostics and tests).
    pub fn pending_reservations(&self) -> usize {
        self.lock().pending.keys().count()
    }

    /// Mark-and-sweep of reservations whose handshake is gone: an iterator over the
    /// namespace's TCP sockets stamps every reservation whose request socket still exists,
    /// then `edge_sweep` (run in the kernel with BPF_PROG_TEST_RUN, claiming entries like every
    /// other release path) releases the unstamped ones older than `min_age`. This is how a
    /// handshake killed by a RST, timed out, or a SYN the kernel dropped after our reservation
    /// (accept queue full, SYN cookie sent, backlog overflow) gives its slot back when the
    /// fentry/fexit hooks are unavailable, and the safety net when they are. Cost: one walk of
    /// the TCP hash tables. The lead calls this every 1-5 s (a dead handshake holds its slot
    /// until then: never an overshoot, at worst a late release). Returns how many it released.
    pub fn sweep(&self, min_age: Duration) -> Result<u32, EbpfError> {
        use std::io::Read as _;
        let mut inner = self.lock();
        let mut cfg = inner.edge_config();
        cfg.sweep_epoch = cfg.sweep_epoch.wrapping_add(1);
        let epoch = cfg.sweep_epoch;
        inner
            .config
            .set(0, cfg, 0)
            .map_err(|e| map_err("config", e))?;
        let it = program::<Iter>(&mut inner.bpf, "edge_mark")?;
        let id = it
            .attach()
            .map_err(|e| kernel_err("attaching edge_mark", &e))?;
        let link = it
            .take_link(id)
            .map_err(|e| kernel_err("edge_mark link", &e))?;
        let mut file = link
            .into_file()
            .map_err(|e| kernel_err("edge_mark iterator", &e))?;
        let mut sink = Vec::new();
        file.read_to_end(&mut sink)
            .map_err(|e| kernel_err("reading the edge_mark iterator", &e))?;
        drop(file);
        let p: &RawTracePoint = inner
            .bpf
            .program("edge_sweep")
            .expect("loaded at attach")
            .try_into()
            .map_err(|e| prog_err("edge_sweep", e))?;
        let mut opts = RawTracePointRunOptions::new();
        opts.args[0] = u64::from(epoch);
        opts.args[1] = u64::try_from(min_age.as_nanos()).unwrap_or(u64::MAX);
        let r = p
            .test_run(opts)
            .map_err(|e| kernel_err("running edge_sweep", &e))?;
        self.expired
            .fetch_add(u64::from(r.return_value), Ordering::Relaxed);
        Ok(r.return_value)
    }

    /// `Some(drop hook)` when dead handshakes release their slots at once (fentry/fexit
    /// attached; `__inet_csk_reqsk_queue_drop` on 6.10+), `None` when only [`Self::sweep`]
    /// does (the kernel or sandbox refuses fentry/fexit).
    /// Takes the group's listeners out of this program's socket array, so that a restart's
    /// new process can put them in its own (a socket sits in one `REUSEPORT_SOCKARRAY` at a
    /// time: the kernel answers EBUSY otherwise). Until its program replaces ours on the group,
    /// ours still limits every SYN and the kernel picks the listener.
    pub fn hand_listeners_over(&self) -> Result<(), EbpfError> {
        let mut inner = self.lock();
        for i in 0..inner.listener_fds.len() as u32 {
            inner
                ._listeners
                .clear_index(&i)
                .map_err(|e| map_err(&format!("listeners[{i}]"), e))?;
        }
        Ok(())
    }

    /// Puts the listeners back after a restart that did not happen.
    pub fn take_listeners_back(&self) -> Result<(), EbpfError> {
        self.lock().put_listeners()
    }

    pub fn immediate_release(&self) -> Option<&'static str> {
        self.reqsk_drop_hook
    }

    /// Detaches the program from the listener group (SO_DETACH_REUSEPORT_BPF: aya does not
    /// on drop), then unloads everything; the group accepts everyone again.
    pub fn detach(mut self) -> Result<(), EbpfError> {
        self.detach_group()
    }

    /// Lets go of the limiter without detaching it: the listener group now belongs to another
    /// process too (a restart's successor), whose own program replaced this one on the group —
    /// detaching would remove *its* program.
    pub fn leave_attached(mut self) {
        self.group.take();
    }

    fn detach_group(&mut self) -> Result<(), EbpfError> {
        match self.group.take() {
            Some(fd) => match SkReuseport::detach(fd.as_fd()) {
                Ok(()) => Ok(()),
                // The drain closed the listeners first: the socket left its group, and the
                // program went with the group. Nothing is attached any more.
                Err(e) if errno_of(&e) == Some(libc::ENOENT) => Ok(()),
                Err(e) => Err(kernel_err("SO_DETACH_REUSEPORT_BPF", &e)),
            },
            None => Ok(()),
        }
    }
}

impl Drop for EbpfLimiter {
    /// A limiter dropped without [`EbpfLimiter::detach`] still detaches: otherwise the group
    /// would keep refusing with frozen counts while nothing releases slots any more.
    fn drop(&mut self) {
        if let Err(e) = self.detach_group() {
            tracing::warn!("eBPF limiter: detach on drop failed: {e}");
        }
    }
}

fn ip_stats(v: EdgeIpStats) -> IpStats {
    IpStats {
        current: v.current,
        accepted: v.accepted,
        refused: v.refused,
    }
}

impl Inner {
    fn edge_config(&self) -> EdgeConfig {
        self.config.get(&0, 0).unwrap_or_default()
    }

    /// Active list first, count last: a concurrent SYN never sees a count covering entries
    /// not yet written. Removing a core: its position is overwritten, the tail repeats a live
    /// entry until the count shrinks.
    /// Every listener of the group in its slot of the socket array (at attach, and back after
    /// a restart that failed).
    fn put_listeners(&mut self) -> Result<(), EbpfError> {
        for (i, fd) in self.listener_fds.iter().enumerate() {
            self._listeners
                .set(i as u32, fd, 0)
                .map_err(|e| map_err(&format!("listeners[{i}]"), e))?;
        }
        Ok(())
    }

    fn write_active(&mut self) -> Result<(), EbpfError> {
        let list: Vec<u32> = self
            .active_set
            .iter()
            .enumerate()
            .filter(|(_, a)| **a)
            .map(|(i, _)| i as u32)
            .collect();
        let mut cfg = self.edge_config();
        let old = cfg.active_count as usize;
        for (i, core) in list.iter().enumerate() {
            self.active
                .set(i as u32, core, 0)
                .map_err(|e| map_err("active", e))?;
        }
        if let Some(first) = list.first() {
            for i in list.len()..old.min(MAX_LISTENERS) {
                self.active
                    .set(i as u32, first, 0)
                    .map_err(|e| map_err("active", e))?;
            }
        }
        cfg.active_count = list.len() as u32;
        self.config.set(0, cfg, 0).map_err(|e| map_err("config", e))
    }

    fn write_rules(&mut self, rules: &RuleTable) -> Result<(), EbpfError> {
        let wanted: Vec<(u32, [u8; 16], u32)> = rules
            .overrides
            .iter()
            .map(|(c, l)| (u32::from(c.prefix), c.addr, *l))
            .collect();
        for (len, addr, limit) in &wanted {
            self.overrides
                .insert(&LpmKey::new(*len, *addr), limit, 0)
                .map_err(|e| map_err("overrides", e))?;
        }
        let stale: Vec<LpmKey<[u8; 16]>> = self
            .overrides
            .keys()
            .filter_map(Result::ok)
            .filter(|k| {
                !wanted
                    .iter()
                    .any(|(len, addr, _)| k.prefix_len() == *len && k.data() == *addr)
            })
            .collect();
        for k in stale {
            match self.overrides.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err("overrides", e)),
            }
        }
        let mut cfg = self.edge_config();
        cfg.default_limit = rules.default_limit;
        cfg.enabled = 1;
        self.config
            .set(0, cfg, 0)
            .map_err(|e| map_err("config", e))?;
        self.rules = rules.clone();
        Ok(())
    }
}
