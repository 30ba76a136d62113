//! `cargo xtask flood [--quick]`: the per-IP limiter under a connection flood (issue 6, item 6).
//!
//! For each limiter (eBPF at the SYN, needs root; then the userspace fallback at accept) a fresh
//! release build of wssedge runs pinned to CPU 0 with `[limits] per_ip_connections = 50`.
//! Background traffic from other sources (wssbench, pinned to CPU 1): an open-loop echo from
//! 127.0.0.3/.4 and a handshake storm from 127.0.0.5/.6. After a baseline window with only that
//! traffic, one source (127.0.0.2) makes 10,000 non-blocking connection attempts within about a
//! second (a tokio task per attempt on a thread of this process pinned to CPU 1), keeping every
//! connection it gets until the end of the flood window.
//!
//! Measured: how many connections the flooder holds (asserted ≤ the limit), the refused
//! attempts, the limiter's counters, the storm's handshake success and p99 during the flood,
//! and the CPU per refused attempt: busy time of all CPUs from /proc/stat (user, nice, system,
//! irq and softirq) over the flood window minus the same over the baseline window, divided by
//! the refused attempts. Afterwards the limiter must return to zero (accepted = released once
//! all traffic is gone), checked a second way by re-admitting exactly the limit from the
//! flooding source. This is a measurement: the only assertions are those two exactness checks.
//! Output: `target/flood/report.md`, `report.json`; logs in `target/flood/logs/`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::edge_proc::{metric, scrape, start_edge, Edge};
use crate::{banner, is_root, which, Env, Guard};

const LIMIT: u32 = 50;
const ATTEMPTS: usize = 10_000;
/// The flood is spread over this long.
const FLOOD_SPREAD: Duration = Duration::from_secs(1);
/// A connect not answered within this is counted as timed out (a dropped SYN is retried by
/// the kernel after 1 s and 3 s).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
const FLOODER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const ECHO_SOURCES: &str = "127.0.0.3,127.0.0.4";
const STORM_SOURCES: &str = "127.0.0.5,127.0.0.6";
const ECHO_RATE: u32 = 2000;
const ECHO_CONNECTIONS: u32 = 16;
const STORM_RATE: u32 = 100;
/// Keeps every storm source far below the limit (at most 16 handshakes each in flight).
const STORM_INFLIGHT: u32 = 32;
/// Bounded waits.
const ZERO_LIMIT: Duration = Duration::from_secs(15);
const GEN_GRACE: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy)]
struct Timing {
    /// From the generators' start to the baseline window (connections up, warmed).
    settle: Duration,
    /// Length of the baseline window and of the flood window.
    window: Duration,
}

impl Timing {
    fn new(quick: bool) -> Timing {
        if quick {
            Timing {
                settle: Duration::from_millis(800),
                window: Duration::from_secs(2),
            }
        } else {
            Timing {
                settle: Duration::from_millis(1200),
                window: Duration::from_millis(3000),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// /proc
// ---------------------------------------------------------------------------------------------

/// The aggregate `cpu` line of /proc/stat, in clock ticks summed over all CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct SysCpu {
    user: u64,
    nice: u64,
    system: u64,
    idle: u64,
    iowait: u64,
    irq: u64,
    softirq: u64,
}

impl SysCpu {
    fn parse(text: &str) -> Option<SysCpu> {
        let line = text.lines().find(|l| l.starts_with("cpu "))?;
        let f: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().ok())
            .collect::<Option<_>>()?;
        Some(SysCpu {
            user: *f.first()?,
            nice: *f.get(1)?,
            system: *f.get(2)?,
            idle: *f.get(3)?,
            iowait: *f.get(4)?,
            irq: *f.get(5)?,
            softirq: *f.get(6)?,
        })
    }
    fn read() -> SysCpu {
        std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|t| SysCpu::parse(&t))
            .unwrap_or_default()
    }
    fn busy(&self) -> u64 {
        self.user + self.nice + self.system + self.irq + self.softirq
    }
    fn delta(&self, before: &SysCpu) -> SysCpu {
        SysCpu {
            user: self.user.saturating_sub(before.user),
            nice: self.nice.saturating_sub(before.nice),
            system: self.system.saturating_sub(before.system),
            idle: self.idle.saturating_sub(before.idle),
            iowait: self.iowait.saturating_sub(before.iowait),
            irq: self.irq.saturating_sub(before.irq),
            softirq: self.softirq.saturating_sub(before.softirq),
        }
    }
}

/// utime + stime of one process (all its threads), in clock ticks.
fn proc_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|t| parse_proc_ticks(&t))
        .unwrap_or(0)
}

fn parse_proc_ticks(text: &str) -> Option<u64> {
    // The command name may contain spaces: count from the last `)`. utime, stime = fields 14, 15.
    let f: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Nanoseconds on CPU of all threads of `pid` (schedstat), if the kernel has it.
fn proc_ns(pid: u32) -> Option<u64> {
    let mut sum = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .ok()?
        .flatten()
    {
        let text = std::fs::read_to_string(t.path().join("schedstat")).ok()?;
        sum += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// This process's CPU (user + system, exited threads included), in nanoseconds.
fn self_ns() -> u64 {
    // SAFETY: a zeroed rusage is valid; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid, owned rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    (us(ru.ru_utime) + us(ru.ru_stime)) * 1000
}

/// utime + stime by PID of every process except `mine`: user-space ones (the other work on a
/// shared host) and kernel threads (ksoftirqd, kworkers: kernel work done for us).
fn other_ticks(mine: &[u32]) -> (BTreeMap<u32, u64>, BTreeMap<u32, u64>) {
    const PF_KTHREAD: u64 = 0x0020_0000;
    let mut out = (BTreeMap::new(), BTreeMap::new());
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if mine.contains(&pid) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some(i) = text.rfind(')') else { continue };
        let f: Vec<u64> = text[i + 1..]
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        // f[5] = flags (field 9), f[10], f[11] = utime, stime (fields 14, 15).
        if f.len() < 12 {
            continue;
        }
        let map = if f[5] & PF_KTHREAD != 0 {
            &mut out.1
        } else {
            &mut out.0
        };
        map.insert(pid, f[10] + f[11]);
    }
    out
}

/// One sample of every CPU figure the report uses.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    sys: SysCpu,
    edge: u64,
    edge_ns: Option<u64>,
    /// This process (the flooder, plus the orchestration, which sleeps).
    me_ns: u64,
    /// The generators.
    gens: u64,
    foreign: BTreeMap<u32, u64>,
    kthreads: BTreeMap<u32, u64>,
}

fn sample(edge: u32, gens: &[u32]) -> Sample {
    let me = std::process::id();
    let mut mine = vec![edge, me];
    mine.extend_from_slice(gens);
    let (foreign, kthreads) = other_ticks(&mine);
    Sample {
        at: Instant::now(),
        sys: SysCpu::read(),
        edge: proc_ticks(edge),
        edge_ns: proc_ns(edge),
        me_ns: self_ns(),
        gens: gens.iter().map(|p| proc_ticks(*p)).sum(),
        foreign,
        kthreads,
    }
}

/// CPU spent in one window.
#[derive(Debug, Clone, Copy)]
struct WindowCpu {
    secs: f64,
    sys: SysCpu,
    edge: u64,
    edge_s: Option<f64>,
    me_s: f64,
    gens: u64,
    /// Ticks of user-space processes not ours and of kernel threads (see [`other_ticks`]).
    foreign: u64,
    kthreads: u64,
}

fn window(a: &Sample, b: &Sample) -> WindowCpu {
    // Per PID: a process that started in the window counts whole, one that ended is lost.
    let delta = |a: &BTreeMap<u32, u64>, b: &BTreeMap<u32, u64>| -> u64 {
        b.iter()
            .map(|(pid, t)| t.saturating_sub(a.get(pid).copied().unwrap_or(0)))
            .sum()
    };
    let foreign = delta(&a.foreign, &b.foreign);
    let kthreads = delta(&a.kthreads, &b.kthreads);
    WindowCpu {
        secs: (b.at - a.at).as_secs_f64(),
        sys: b.sys.delta(&a.sys),
        edge: b.edge.saturating_sub(a.edge),
        edge_s: a
            .edge_ns
            .zip(b.edge_ns)
            .map(|(x, y)| y.saturating_sub(x) as f64 / 1e9),
        me_s: b.me_ns.saturating_sub(a.me_ns) as f64 / 1e9,
        gens: b.gens.saturating_sub(a.gens),
        foreign,
        kthreads,
    }
}

impl WindowCpu {
    /// Busy seconds of all CPUs.
    fn busy_s(&self, tck: f64) -> f64 {
        self.sys.busy() as f64 / tck
    }
    /// Our processes (edge, flooder, generators) plus kernel threads. With tick accounting a
    /// softirq is charged to the task it interrupted, so the loopback path of our packets is
    /// in here too; unlike [`Self::busy_s`] it does not move with other work on a shared host.
    fn ours_s(&self, tck: f64) -> f64 {
        self.edge_s.unwrap_or(self.edge as f64 / tck)
            + self.me_s
            + (self.gens + self.kthreads) as f64 / tck
    }
    /// Idle share of all CPUs.
    fn idle_share(&self) -> f64 {
        let idle = self.sys.idle + self.sys.iowait;
        idle as f64 / (idle + self.sys.busy()).max(1) as f64
    }
}

fn window_json(w: &WindowCpu, tck: f64) -> Value {
    let s = |t: u64| t as f64 / tck;
    json!({
        "seconds": w.secs,
        "system_busy_s": w.busy_s(tck),
        "ours_s": w.ours_s(tck),
        "other_processes_s": s(w.foreign),
        "kernel_threads_s": s(w.kthreads),
        "user_s": s(w.sys.user + w.sys.nice),
        "system_s": s(w.sys.system),
        "irq_s": s(w.sys.irq),
        "softirq_s": s(w.sys.softirq),
        "idle_s": s(w.sys.idle + w.sys.iowait),
        "edge_process_s": w.edge_s.unwrap_or(s(w.edge)),
        "flooder_process_s": w.me_s,
        "generators_s": s(w.gens),
    })
}

// ---------------------------------------------------------------------------------------------
// Pinning and limits
// ---------------------------------------------------------------------------------------------

/// Pins the calling thread to `cpu` (false when it cannot).
fn pin_current_thread(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it; a pid of 0
    // means the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Raises the soft open-files limit towards `want` (within the hard limit); returns the result.
fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid, owned rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur < want {
        let new = libc::rlimit {
            rlim_cur: want.min(r.rlim_max),
            rlim_max: r.rlim_max,
        };
        // SAFETY: setrlimit reads a valid rlimit; on failure the old limit stays.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } == 0 {
            r.rlim_cur = new.rlim_cur;
        }
    }
    r.rlim_cur
}

// ---------------------------------------------------------------------------------------------
// The flooder
// ---------------------------------------------------------------------------------------------

/// What the flooding source saw.
#[derive(Debug, Default, Clone)]
struct FloodStats {
    attempts: usize,
    /// The TCP handshake completed.
    connected: usize,
    /// ECONNREFUSED (the eBPF limiter drops the SYN; the client gets a RST).
    refused_at_connect: usize,
    timed_out: usize,
    errors: BTreeMap<String, usize>,
    /// Connected, and still open after the settle time: the connections the flooder holds.
    held: usize,
    /// Connected, then closed by the edge (the userspace limiter's refusal at accept).
    closed_by_server: usize,
    /// Bytes arrived on a held connection (the edge must send nothing before a ClientHello).
    got_bytes: usize,
    /// From the first attempt to the last one started, and to the last one answered.
    spread_s: f64,
    done_s: f64,
}

impl FloodStats {
    /// Attempts the edge refused, whichever way.
    fn refused(&self) -> usize {
        self.refused_at_connect + self.closed_by_server
    }
}

enum Attempt {
    Connected(tokio::net::TcpStream),
    Refused,
    TimedOut,
    Error(String),
}

async fn attempt(src: IpAddr, dst: SocketAddr) -> Attempt {
    let sock = match tokio::net::TcpSocket::new_v4() {
        Ok(s) => s,
        Err(e) => return Attempt::Error(format!("socket: {:?}", e.kind())),
    };
    if let Err(e) = sock.bind(SocketAddr::new(src, 0)) {
        return Attempt::Error(format!("bind: {:?}", e.kind()));
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(dst)).await {
        Ok(Ok(s)) => Attempt::Connected(s),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => Attempt::Refused,
        Ok(Err(e)) => Attempt::Error(format!("connect: {:?}", e.kind())),
        Err(_) => Attempt::TimedOut,
    }
}

/// `n` connection attempts from `src` spread evenly over `spread`, then `settle` for the edge
/// to close what it refuses at accept. Returns the counts and every connection still open
/// (the caller closes them by dropping).
fn flood(
    src: IpAddr,
    dst: SocketAddr,
    n: usize,
    spread: Duration,
    settle: Duration,
) -> Result<(FloodStats, Vec<std::net::TcpStream>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("flooder runtime")?;
    let mut st = FloodStats {
        attempts: n,
        ..FloodStats::default()
    };
    let conns = rt.block_on(async {
        let t0 = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let due = t0 + spread.mul_f64(i as f64 / n as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
            set.spawn(attempt(src, dst));
        }
        st.spread_s = t0.elapsed().as_secs_f64();
        let mut conns = Vec::with_capacity(n);
        // Every attempt ends within CONNECT_TIMEOUT; the join is bounded by that.
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Attempt::Connected(s)) => {
                    st.connected += 1;
                    conns.push(s);
                }
                Ok(Attempt::Refused) => st.refused_at_connect += 1,
                Ok(Attempt::TimedOut) => st.timed_out += 1,
                Ok(Attempt::Error(e)) => *st.errors.entry(e).or_default() += 1,
                Err(_) => *st.errors.entry("task failed".into()).or_default() += 1,
            }
        }
        st.done_s = t0.elapsed().as_secs_f64();
        tokio::time::sleep(settle).await;
        conns
    });
    let mut held = Vec::with_capacity(LIMIT as usize * 2);
    let mut closed = Vec::new();
    for s in conns {
        let s = s.into_std().context("into_std")?;
        // Still non-blocking: WouldBlock = open and silent.
        let mut b = [0u8; 1];
        match s.peek(&mut b) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held.push(s),
            Ok(0) | Err(_) => {
                st.closed_by_server += 1;
                closed.push(s);
            }
            Ok(_) => {
                st.got_bytes += 1;
                held.push(s);
            }
        }
    }
    st.held = held.len();
    // The refused ones stay open too (closed at the end, with the rest).
    held.extend(closed);
    drop(rt);
    Ok((st, held))
}

// ---------------------------------------------------------------------------------------------
// The edge and its /metrics
// ---------------------------------------------------------------------------------------------

/// The limiter's counters.
#[derive(Debug, Clone, Copy, Default)]
struct Limiter {
    seen: f64,
    accepted: f64,
    refused_limit: f64,
    released: f64,
    refused_flooder: f64,
    refusals_ip_limit: f64,
}

impl Limiter {
    fn read(text: &str) -> Limiter {
        let ev = |e| metric(text, "wssedge_ip_limit_total", &[("event", e)]).unwrap_or(0.0);
        Limiter {
            seen: ev("seen"),
            accepted: ev("accepted"),
            refused_limit: ev("refused_limit"),
            released: ev("released"),
            refused_flooder: metric(
                text,
                "wssedge_ip_refused_total",
                &[("addr", &FLOODER.to_string())],
            )
            .unwrap_or(0.0),
            refusals_ip_limit: metric(text, "wssedge_refusals_total", &[("reason", "ip_limit")])
                .unwrap_or(0.0),
        }
    }
    fn delta(&self, b: &Limiter) -> Limiter {
        Limiter {
            seen: self.seen - b.seen,
            accepted: self.accepted - b.accepted,
            refused_limit: self.refused_limit - b.refused_limit,
            released: self.released - b.released,
            refused_flooder: self.refused_flooder - b.refused_flooder,
            refusals_ip_limit: self.refusals_ip_limit - b.refusals_ip_limit,
        }
    }
    fn json(&self) -> Value {
        json!({
            "seen": self.seen,
            "accepted": self.accepted,
            "refused_limit": self.refused_limit,
            "released": self.released,
            "refused_127_0_0_2": self.refused_flooder,
            "refusals_total_ip_limit": self.refusals_ip_limit,
        })
    }
}

fn limiter_now(admin: SocketAddr) -> Result<Limiter> {
    Ok(Limiter::read(&scrape(admin)?))
}

/// Polls until every slot taken has been released (no traffic left), bounded.
fn wait_zero(admin: SocketAddr) -> (bool, f64, Limiter) {
    let t0 = Instant::now();
    let mut last = Limiter::default();
    while t0.elapsed() < ZERO_LIMIT {
        if let Ok(l) = limiter_now(admin) {
            last = l;
            if l.accepted == l.released {
                return (true, t0.elapsed().as_secs_f64(), l);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (false, t0.elapsed().as_secs_f64(), last)
}

// ---------------------------------------------------------------------------------------------
// One limiter mode
// ---------------------------------------------------------------------------------------------

struct Ctx {
    bin: PathBuf,
    generator: PathBuf,
    out: PathBuf,
    logs: PathBuf,
    timing: Timing,
    tck: f64,
}

#[derive(Debug, Default)]
struct ModeResult {
    mode: String,
    active: String,
    flood: FloodStats,
    /// Limiter counters over the flood window.
    during: Limiter,
    base_cpu: Option<WindowCpu>,
    flood_cpu: Option<WindowCpu>,
    storm: Option<Value>,
    echo: Option<Value>,
    zero: bool,
    zero_s: f64,
    zero_counters: Limiter,
    probe_held: Option<usize>,
    probe_zero: bool,
    edge_died: Option<String>,
    notes: Vec<String>,
}

impl ModeResult {
    /// CPU µs per refused attempt from a figure in seconds (flood − baseline).
    fn per_refused(&self, pick: impl Fn(&WindowCpu) -> f64) -> Option<f64> {
        let (b, f) = (self.base_cpu?, self.flood_cpu?);
        let refused = self.flood.refused();
        if refused == 0 {
            return None;
        }
        // Scale the baseline to the flood window's exact length.
        let extra = pick(&f) - pick(&b) * (f.secs / b.secs);
        Some(extra * 1e6 / refused as f64)
    }
    fn exact(&self) -> bool {
        self.flood.held <= LIMIT as usize
    }
    fn passed(&self) -> bool {
        self.exact() && self.zero && self.probe_held == Some(LIMIT as usize) && self.probe_zero
    }
}

fn generator(ctx: &Ctx, edge: &Edge, mode: &str, name: &str) -> Command {
    let mut c = if which("taskset").is_some() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(CLIENT_CPU.to_string()).arg(&ctx.generator);
        c
    } else {
        Command::new(&ctx.generator)
    };
    let t = ctx.timing;
    c.arg(mode)
        .arg("--url")
        .arg(format!("wss://{}/", edge.addr))
        .arg("--ca")
        .arg(&edge.ca)
        .args(["--cpus", &CLIENT_CPU.to_string()])
        // Measured: the flood window; everything before it is warmup (same traffic).
        .args([
            "--warmup",
            &format!("{:.3}", (t.settle + t.window).as_secs_f64()),
        ])
        .args(["--duration", &format!("{:.3}", t.window.as_secs_f64())])
        .arg("--json")
        .arg(ctx.logs.join(format!("{name}.json")))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

fn run_mode(ctx: &Ctx, mode: &str) -> Result<ModeResult> {
    let mut r = ModeResult {
        mode: mode.to_string(),
        ..ModeResult::default()
    };
    let t = ctx.timing;
    let cfg = ctx.out.join(format!("flood-{mode}.toml"));
    // Long handshake and first-byte timeouts: the flooder's accepted connections (which never
    // send a ClientHello) stay held for the whole scenario.
    std::fs::write(
        &cfg,
        format!(
            "[limits]\nper_ip_connections = {LIMIT}\nip_limiter = \"{mode}\"\nhandshake_timeout_ms = 30000\nfirst_byte_timeout_ms = 30000\n"
        ),
    )?;
    let mut edge = start_edge(
        &ctx.bin,
        &cfg,
        &ctx.out.join("state"),
        &ctx.logs.join(format!("{mode}.wssedge.log")),
        &[SERVER_CPU],
    )?;
    let text = scrape(edge.admin)?;
    r.active = ["ebpf", "userspace", "off"]
        .into_iter()
        .find(|m| metric(&text, "wssedge_ip_limiter", &[("mode", m)]) == Some(1.0))
        .unwrap_or("unknown")
        .to_string();
    if r.active != mode {
        bail!("asked for the {mode} limiter, /metrics says {}", r.active);
    }
    eprintln!(
        "xtask: wssedge (pid {}) on {}, admin {}, limiter {}",
        edge.guard.child.id(),
        edge.addr,
        edge.admin,
        r.active
    );

    // The flooder thread waits for the go signal (its runtime is built after it).
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let dst = edge.addr;
    let settle_after = Duration::from_millis(500);
    let flooder = std::thread::Builder::new()
        .name("flooder".into())
        .spawn(move || {
            if !pin_current_thread(CLIENT_CPU) {
                eprintln!("xtask: the flooder could not be pinned to CPU {CLIENT_CPU}");
            }
            if go_rx.recv().is_err() {
                return Ok((FloodStats::default(), Vec::new()));
            }
            flood(
                IpAddr::V4(FLOODER),
                dst,
                ATTEMPTS,
                FLOOD_SPREAD,
                settle_after,
            )
        })?;

    let t0 = Instant::now();
    let echo_json = ctx.logs.join(format!("{mode}.echo.json"));
    let storm_json = ctx.logs.join(format!("{mode}.storm.json"));
    let _ = std::fs::remove_file(&echo_json);
    let _ = std::fs::remove_file(&storm_json);
    let mut echo_cmd = generator(ctx, &edge, "open", &format!("{mode}.echo"));
    echo_cmd
        .args(["--rate", &ECHO_RATE.to_string()])
        .args(["--connections", &ECHO_CONNECTIONS.to_string()])
        .args(["--source-ips", ECHO_SOURCES])
        .stderr(std::fs::File::create(
            ctx.logs.join(format!("{mode}.echo.log")),
        )?);
    let mut storm_cmd = generator(ctx, &edge, "storm", &format!("{mode}.storm"));
    storm_cmd
        .args(["--rate", &STORM_RATE.to_string()])
        .args(["--max-inflight", &STORM_INFLIGHT.to_string()])
        .args(["--source-ips", STORM_SOURCES])
        .stderr(std::fs::File::create(
            ctx.logs.join(format!("{mode}.storm.log")),
        )?);
    let mut echo = Guard {
        name: "wssbench open (echo)",
        child: echo_cmd.spawn().context("spawn wssbench open")?,
        group: false,
    };
    let mut storm = Guard {
        name: "wssbench storm",
        child: storm_cmd.spawn().context("spawn wssbench storm")?,
        group: false,
    };
    let gens = [echo.child.id(), storm.child.id()];
    let epid = edge.guard.child.id();

    sleep_until(t0 + t.settle);
    let s0 = sample(epid, &gens);
    let l0 = limiter_now(edge.admin).unwrap_or_default();
    sleep_until(t0 + t.settle + t.window);
    let s1 = sample(epid, &gens);
    let l1 = limiter_now(edge.admin).unwrap_or_default();
    let _ = go_tx.send(());
    sleep_until(t0 + t.settle + t.window * 2);
    let s2 = sample(epid, &gens);
    let l2 = limiter_now(edge.admin).unwrap_or_default();
    r.base_cpu = Some(window(&s0, &s1));
    r.flood_cpu = Some(window(&s1, &s2));
    r.during = l2.delta(&l1);
    if let Some(b) = r.base_cpu.filter(|b| b.idle_share() < 0.1) {
        r.notes.push(format!(
            "the host had {:.0} % idle CPU in the baseline window ({:.2} s of other processes): \
             the system-wide CPU per refused is not meaningful, use the `ours` row",
            b.idle_share() * 100.0,
            b.foreign as f64 / ctx.tck
        ));
    }
    if l1.delta(&l0).refused_limit > 0.0 {
        r.notes.push(format!(
            "the background traffic itself was refused {} times in the baseline window",
            l1.delta(&l0).refused_limit
        ));
    }
    // The flooder ends within CONNECT_TIMEOUT + settle of its start: a bounded join.
    let (fs, conns) = flooder
        .join()
        .map_err(|_| anyhow::anyhow!("the flooder thread panicked"))??;
    if fs.done_s + settle_after.as_secs_f64() > t.window.as_secs_f64() {
        r.notes.push(format!(
            "the flood's last attempt ended {:.2} s after its start: part of it fell after the \
             measured window ({:.1} s)",
            fs.done_s,
            t.window.as_secs_f64()
        ));
    }
    r.flood = fs;
    eprintln!(
        "xtask: {mode}: {} attempts in {:.2} s (answered by {:.2} s): held {}, refused {} \
         (at connect {}, closed by the edge {}), timed out {}, errors {:?}",
        r.flood.attempts,
        r.flood.spread_s,
        r.flood.done_s,
        r.flood.held,
        r.flood.refused(),
        r.flood.refused_at_connect,
        r.flood.closed_by_server,
        r.flood.timed_out,
        r.flood.errors
    );
    // All closed at the end.
    drop(conns);

    // The generators end after their window (+ the open loop's 2 s drain); bounded.
    let end = t0 + t.settle + t.window * 2 + GEN_GRACE;
    for g in [&mut echo, &mut storm] {
        while g.exited().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(50));
        }
        if g.exited().is_none() {
            r.notes.push(format!("{} did not finish in time", g.name));
        }
    }
    drop(echo);
    drop(storm);
    r.echo = std::fs::read_to_string(&echo_json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());
    r.storm = std::fs::read_to_string(&storm_json)
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok());

    // Back to zero: all traffic is gone, so every slot taken must have been released.
    let (zero, zero_s, zl) = wait_zero(edge.admin);
    (r.zero, r.zero_s, r.zero_counters) = (zero, zero_s, zl);
    eprintln!(
        "xtask: {mode}: limiter back to zero: {zero} after {zero_s:.2} s (accepted {}, released {})",
        zl.accepted, zl.released
    );
    // And per source: the flooding source gets exactly the limit again, no more.
    if zero {
        let (ps, pconns) = flood(
            IpAddr::V4(FLOODER),
            edge.addr,
            LIMIT as usize + 1,
            Duration::from_millis(100),
            Duration::from_millis(300),
        )?;
        r.probe_held = Some(ps.held);
        drop(pconns);
        r.probe_zero = wait_zero(edge.admin).0;
        eprintln!(
            "xtask: {mode}: re-admission probe: {} of {} held from {FLOODER}; back to zero: {}",
            ps.held,
            LIMIT + 1,
            r.probe_zero
        );
    }
    r.edge_died = edge.guard.exited().map(|s| s.to_string());
    drop(edge);
    Ok(r)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

fn num(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "–".into())
}

fn storm_rate(r: &ModeResult) -> Option<f64> {
    let s = r.storm.as_ref()?;
    let ok = s["handshakes_ok"].as_f64()?;
    let failed = s["handshakes_failed"].as_f64()?;
    (ok + failed > 0.0).then(|| 100.0 * ok / (ok + failed))
}

/// (label, value per mode) rows of the side-by-side table.
fn rows(results: &[ModeResult], tck: f64) -> Vec<(String, Vec<String>)> {
    let col = |f: &dyn Fn(&ModeResult) -> String| results.iter().map(f).collect::<Vec<_>>();
    let mut rows = vec![
        (
            "attempts from 127.0.0.2".to_string(),
            col(&|r| format!("{} in {:.2} s", r.flood.attempts, r.flood.spread_s)),
        ),
        (
            format!("held by the flooder (≤ {LIMIT})"),
            col(&|r| {
                format!(
                    "{} {}",
                    r.flood.held,
                    if r.exact() { "ok" } else { "OVER THE LIMIT" }
                )
            }),
        ),
        (
            "refused (client: RST at connect / closed at accept)".into(),
            col(&|r| {
                format!(
                    "{} ({} / {})",
                    r.flood.refused(),
                    r.flood.refused_at_connect,
                    r.flood.closed_by_server
                )
            }),
        ),
        (
            "timed out / other errors".into(),
            col(&|r| {
                format!(
                    "{} / {}",
                    r.flood.timed_out,
                    r.flood.errors.values().sum::<usize>()
                )
            }),
        ),
        (
            "edge: refused for 127.0.0.2 (Δ)".into(),
            col(&|r| format!("{:.0}", r.during.refused_flooder)),
        ),
        (
            "edge: limiter seen / accepted / refused_limit (Δ, all sources)".into(),
            col(&|r| {
                format!(
                    "{:.0} / {:.0} / {:.0}",
                    r.during.seen, r.during.accepted, r.during.refused_limit
                )
            }),
        ),
        (
            "edge: refusals_total{ip_limit} (Δ)".into(),
            col(&|r| format!("{:.0}", r.during.refusals_ip_limit)),
        ),
        (
            "back to zero (accepted = released)".into(),
            col(&|r| {
                format!(
                    "{} in {:.2} s ({:.0} = {:.0})",
                    if r.zero { "yes" } else { "NO" },
                    r.zero_s,
                    r.zero_counters.accepted,
                    r.zero_counters.released
                )
            }),
        ),
        (
            format!("re-admitted from 127.0.0.2 afterwards (of {})", LIMIT + 1),
            col(&|r| {
                r.probe_held
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "–".into())
            }),
        ),
        (
            "others: storm handshakes ok / failed (success %)".into(),
            col(&|r| {
                let s = r.storm.as_ref();
                format!(
                    "{} / {} ({} %)",
                    s.and_then(|s| s["handshakes_ok"].as_u64())
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "–".into()),
                    s.and_then(|s| s["handshakes_failed"].as_u64())
                        .map(|v| v.to_string())
                        .unwrap_or_else(|| "–".into()),
                    num(storm_rate(r), 1)
                )
            }),
        ),
        (
            "others: handshake p50 / p99 / max µs".into(),
            col(&|r| {
                let h = r.storm.as_ref().map(|s| &s["handshake_us"]);
                let g = |k: &str| h.and_then(|h| h[k].as_f64());
                format!(
                    "{} / {} / {}",
                    num(g("p50"), 0),
                    num(g("p99"), 0),
                    num(g("max"), 0)
                )
            }),
        ),
        (
            "others: echo p99 µs, errors (open loop)".into(),
            col(&|r| {
                let e = r.echo.as_ref();
                format!(
                    "{}, {}",
                    num(e.and_then(|e| e["latency_us"]["p99"].as_f64()), 0),
                    num(e.and_then(|e| e["errors"].as_f64()), 0)
                )
            }),
        ),
        (
            "CPU µs per refused, system-wide (flood − baseline)".into(),
            col(&|r| num(r.per_refused(|w| w.busy_s(tck)), 2)),
        ),
        (
            "CPU µs per refused, ours: edge + clients + kernel threads".into(),
            col(&|r| num(r.per_refused(|w| w.ours_s(tck)), 2)),
        ),
        (
            "  of which softirq".into(),
            col(&|r| num(r.per_refused(|w| w.sys.softirq as f64 / tck), 2)),
        ),
        (
            "  of which the edge process".into(),
            col(&|r| {
                num(
                    r.per_refused(|w| w.edge_s.unwrap_or(w.edge as f64 / tck)),
                    2,
                )
            }),
        ),
        (
            "  of which the flooder process (client side)".into(),
            col(&|r| num(r.per_refused(|w| w.me_s), 2)),
        ),
        (
            "busy CPU s, baseline / flood (other processes on the host)".into(),
            col(&|r| match (r.base_cpu, r.flood_cpu) {
                (Some(b), Some(f)) => format!(
                    "{:.2} / {:.2} ({:.2} / {:.2})",
                    b.busy_s(tck),
                    f.busy_s(tck),
                    b.foreign as f64 / tck,
                    f.foreign as f64 / tck
                ),
                _ => "–".into(),
            }),
        ),
    ];
    rows.retain(|(_, v)| !v.is_empty());
    rows
}

fn table(results: &[ModeResult], tck: f64) -> String {
    let mut md = String::from("| | ");
    md.push_str(
        &results
            .iter()
            .map(|r| r.mode.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
    );
    md.push_str(" |\n|---|");
    md.push_str(&"---|".repeat(results.len()));
    md.push('\n');
    for (label, vals) in rows(results, tck) {
        md.push_str(&format!("| {label} | {} |\n", vals.join(" | ")));
    }
    md
}

fn result_json(r: &ModeResult, tck: f64) -> Value {
    json!({
        "mode": r.mode,
        "active": r.active,
        "flood": {
            "attempts": r.flood.attempts,
            "spread_s": r.flood.spread_s,
            "answered_by_s": r.flood.done_s,
            "connected": r.flood.connected,
            "held": r.flood.held,
            "refused": r.flood.refused(),
            "refused_at_connect": r.flood.refused_at_connect,
            "closed_by_server": r.flood.closed_by_server,
            "timed_out": r.flood.timed_out,
            "got_bytes": r.flood.got_bytes,
            "errors": r.flood.errors,
        },
        "held_within_limit": r.exact(),
        "limiter_delta_flood_window": r.during.json(),
        "back_to_zero": { "ok": r.zero, "after_s": r.zero_s, "counters": r.zero_counters.json() },
        "readmission_probe": { "attempts": LIMIT + 1, "held": r.probe_held, "back_to_zero": r.probe_zero },
        "others": {
            "storm_success_pct": storm_rate(r),
            "storm": r.storm,
            "echo": r.echo,
        },
        "cpu": {
            "baseline": r.base_cpu.map(|w| window_json(&w, tck)),
            "flood": r.flood_cpu.map(|w| window_json(&w, tck)),
            "us_per_refused_system": r.per_refused(|w| w.busy_s(tck)),
            "us_per_refused_ours": r.per_refused(|w| w.ours_s(tck)),
            "us_per_refused_softirq": r.per_refused(|w| w.sys.softirq as f64 / tck),
            "us_per_refused_edge": r.per_refused(|w| w.edge_s.unwrap_or(w.edge as f64 / tck)),
            "us_per_refused_flooder": r.per_refused(|w| w.me_s),
        },
        "edge_died": r.edge_died,
        "notes": r.notes,
        "passed": r.passed(),
    })
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

pub fn run(args: &[String]) -> Result<bool> {
    let mut quick = false;
    let mut no_build = false;
    for a in args {
        match a.as_str() {
            "--quick" => quick = true,
            "--no-build" => no_build = true,
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask flood [--quick] [--no-build]\n  {ATTEMPTS} connection attempts from \
                     {FLOODER} within ~1 s against per_ip_connections = {LIMIT}, eBPF (root) then userspace;\n  \
                     report in target/flood/"
                );
                return Ok(true);
            }
            other => bail!("unknown argument {other:?} (flood takes --quick, --no-build)"),
        }
    }
    let started = Instant::now();
    let env = Env::detect();
    let out = env.target.join("flood");
    let logs = out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;

    if no_build {
        eprintln!("xtask: --no-build: using the binaries already in target/release");
    } else {
        banner("flood: build");
        let a = ["build", "--release", "-p", "wssedge", "-p", "wssbench"];
        eprintln!("$ cargo {}", a.join(" "));
        if !env.cargo().args(a).stdin(Stdio::null()).status()?.success() {
            bail!("building wssedge / wssbench failed");
        }
    }
    let build_s = started.elapsed().as_secs_f64();
    let bin = env.target.join("release");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        eprintln!("xtask: WARNING: fewer than 2 CPUs: the edge and the clients share one");
    }
    let nofile = raise_nofile(ATTEMPTS as u64 + 2048);
    if nofile < ATTEMPTS as u64 + 256 {
        bail!(
            "open-files limit {nofile}: the flooder needs {} descriptors",
            ATTEMPTS + 256
        );
    }
    let ctx = Ctx {
        generator: bin.join("wssbench"),
        bin: bin.join("wssedge"),
        out: out.clone(),
        logs,
        timing: Timing::new(quick),
        tck: clk_tck() as f64,
    };

    let root = is_root();
    let mut skipped = Vec::new();
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for mode in ["ebpf", "userspace"] {
        if mode == "ebpf" && !root {
            let why = "not root: the eBPF limiter cannot load";
            eprintln!("xtask: SKIPPING the eBPF half: {why}");
            skipped.push(json!({"mode": mode, "reason": why}));
            continue;
        }
        banner(&format!("flood: {mode} limiter"));
        match run_mode(&ctx, mode) {
            Ok(r) => results.push(r),
            Err(e) => {
                eprintln!("xtask: flood {mode}: {e:#}");
                failures.push(format!("{mode}: {e:#}"));
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let total_s = started.elapsed().as_secs_f64();

    let t = ctx.timing;
    let mut md = format!(
        "# wssedge flood{}\n\n{ATTEMPTS} connection attempts from {FLOODER} spread over {:.1} s, \
         against `[limits] per_ip_connections = {LIMIT}` (handshake timeout 30 s so the flooder \
         keeps what it gets). The edge is pinned to CPU {SERVER_CPU}; the flooder (a thread of \
         xtask) and the background traffic (wssbench, pinned) to CPU {CLIENT_CPU}. Background: \
         open-loop echo {ECHO_RATE} msg/s over {ECHO_CONNECTIONS} connections from \
         {ECHO_SOURCES}, handshake storm {STORM_RATE}/s from {STORM_SOURCES}; their figures \
         cover the flood window only. CPU windows: baseline {:.1} s (background only), then \
         flood {:.1} s; CPU per refused = (busy(flood) − busy(baseline)) / refused attempts, \
         busy = user+nice+system+irq+softirq over all {cpus} CPUs from /proc/stat (ticks of \
         1/{} s). Flood sockets are all closed after the window (userspace: the client-side \
         close of the refused ones is not in it). Build {build_s:.0} s, total {total_s:.0} s.\n\n",
        if quick { " (--quick)" } else { "" },
        FLOOD_SPREAD.as_secs_f64(),
        t.window.as_secs_f64(),
        t.window.as_secs_f64(),
        ctx.tck
    );
    for s in &skipped {
        md.push_str(&format!(
            "**{} skipped**: {}\n\n",
            s["mode"].as_str().unwrap_or(""),
            s["reason"].as_str().unwrap_or("")
        ));
    }
    for f in &failures {
        md.push_str(&format!("**failed**: {f}\n\n"));
    }
    if !results.is_empty() {
        md.push_str(&table(&results, ctx.tck));
    }
    for r in &results {
        for n in &r.notes {
            md.push_str(&format!("\n- {}: {n}", r.mode));
        }
        if let Some(d) = &r.edge_died {
            md.push_str(&format!(
                "\n- {}: wssedge exited during the run ({d})",
                r.mode
            ));
        }
    }
    md.push('\n');
    let report = json!({
        "quick": quick,
        "limit": LIMIT,
        "attempts": ATTEMPTS,
        "flooder": FLOODER.to_string(),
        "timing": { "settle_s": t.settle.as_secs_f64(), "window_s": t.window.as_secs_f64(), "spread_s": FLOOD_SPREAD.as_secs_f64() },
        "background": {
            "echo": { "sources": ECHO_SOURCES, "rate": ECHO_RATE, "connections": ECHO_CONNECTIONS },
            "storm": { "sources": STORM_SOURCES, "rate": STORM_RATE, "max_inflight": STORM_INFLIGHT },
        },
        "environment": {
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "cpus_online": cpus,
            "clk_tck": ctx.tck,
            "open_files_limit": nofile,
        },
        "build_s": build_s,
        "total_s": total_s,
        "skipped": skipped,
        "failures": failures,
        "results": results.iter().map(|r| result_json(r, ctx.tck)).collect::<Vec<_>>(),
    });
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)? + "\n",
    )?;
    banner("flood: report");
    println!("{}", table(&results, ctx.tck));
    eprintln!(
        "xtask: total {total_s:.1} s; wrote {} and {}",
        out.join("report.md").display(),
        out.join("report.json").display()
    );
    let mut ok = failures.is_empty();
    for r in &results {
        if !r.exact() {
            eprintln!(
                "xtask: FAILED: {}: the flooder held {} connections, over the limit of {LIMIT}",
                r.mode, r.flood.held
            );
        }
        if !r.zero || !r.probe_zero {
            eprintln!(
                "xtask: FAILED: {}: the limiter did not return to zero within {ZERO_LIMIT:?}",
                r.mode
            );
        }
        if r.zero && r.probe_held != Some(LIMIT as usize) {
            eprintln!(
                "xtask: FAILED: {}: after the flood {FLOODER} was re-admitted {:?} times, not \
                 exactly {LIMIT}",
                r.mode, r.probe_held
            );
        }
        ok &= r.passed();
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_addr_after;

    #[test]
    fn reads_proc_stat_and_pid_stat() {
        let s = SysCpu::parse("cpu  10 2 30 400 5 6 7 8 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n").unwrap();
        assert_eq!(s.busy(), 10 + 2 + 30 + 6 + 7);
        assert_eq!(s.delta(&s).busy(), 0);
        assert!(SysCpu::parse("intr 1 2").is_none());
        let stat = "42 (a (b) c) S 1 1 1 0 -1 0 0 0 0 0 17 5 0 0 20 0 1 0";
        assert_eq!(parse_proc_ticks(stat), Some(22));
    }

    #[test]
    fn reads_metrics() {
        let text = "# HELP x\nwssedge_ip_limiter{mode=\"ebpf\"} 1\n\
                    wssedge_ip_limit_total{event=\"seen\"} 12\n\
                    wssedge_ip_limit_total{event=\"accepted\"} 5\n\
                    wssedge_ip_refused_total{addr=\"127.0.0.2\"} 7\n\
                    wssedge_refusals_total{reason=\"ip_limit\"} 3\n";
        assert_eq!(
            metric(text, "wssedge_ip_limiter", &[("mode", "ebpf")]),
            Some(1.0)
        );
        assert_eq!(metric(text, "wssedge_ip_limiter", &[("mode", "x")]), None);
        let l = Limiter::read(text);
        assert_eq!((l.seen, l.accepted, l.released), (12.0, 5.0, 0.0));
        assert_eq!((l.refused_flooder, l.refusals_ip_limit), (7.0, 3.0));
        assert_eq!(
            parse_addr_after("admin on http://127.0.0.1:9/", "admin on http://"),
            Some("127.0.0.1:9".parse().unwrap())
        );
    }
}
