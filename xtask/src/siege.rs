//! `cargo xtask siege [--quick] [--sockets N] [--phase NAME]... [--ci-profile] [--no-build]`:
//! connections that never speak, or speak a byte a second, must not lock out the ones that do
//! (issue 19), proven at full scale; and the buffer budget and one flooding client, measured.
//!
//! One edge with two cores and the default limits (256 handshake places and 1,024 silent
//! connections per core). In each phase an attacker (`wssbench siege`) opens its sockets from
//! 16 loopback addresses (127.0.0.10–25) over a few seconds, holds them, and opens each again
//! one second after the edge closed it; once the siege stands, a legitimate client
//! (`wssbench storm` from 127.0.0.2) makes a TLS handshake and upgrade every 100 ms, each with
//! one echo. Phases:
//! - `baseline`: no attacker (the legitimate client's own figures);
//! - `silent`: 5,000 TCP sockets that never send a byte, plus 500 upgrade dribblers;
//! - `dribble`: 5,000 sockets that finish TLS, then send their upgrade request a byte a second
//!   (slowloris);
//! - `stall`: 5,000 sockets that send a ClientHello, then nothing;
//! - `slow-frame`: the buffer budget (`max_buffered_bytes_per_core`, 256 MiB by default) under
//!   1,000 upgraded clients each sending one 15 MiB frame at 128 KiB/s: the budget must be
//!   reached (connections closed `1013 buffer_budget`), the edge's buffered bytes must stay
//!   within it and its RSS within idle + budget + [`RSS_SLACK`].
//!
//! Then one client flooding the core it landed on: a second edge with one core (pinned to CPU
//! 0) serves 50 clients at 2,000 messages/s in all (64 B, open loop: latency from the intended
//! send time), first alone, then beside one client that sends 4 KiB messages as fast as it can
//! (64 in flight), with no rate limit configured. Reported: the 50 clients' p50/p99/p99.9 in
//! both runs and the ratio, what the flooder got through, the edge's CPU; asserted: the 50
//! clients lose nothing.
//!
//! Asserted per attack phase: ≥ 99 % of the legitimate handshakes succeed, and the siege had its
//! force (every one of the attacker's sockets reached the edge at least once; how many it held
//! at once is reported: the edge's closing them is the defence). After the last phase the edge
//! must hold what it held idle (descriptors exactly, no connection). Reported: the legitimate
//! handshakes' p50/p99 beside the baseline's, the edge's CPU and peak RSS, its refusals and
//! evictions by reason. Output: `target/siege/report.md`, `report.json`, logs beside them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::bench::procfs;
use crate::edge_proc::{metric, scrape, start_edge};
use crate::{banner, Counts, Env, Outcome};

const ATTACK_SOURCES: &str = "127.0.0.10,127.0.0.11,127.0.0.12,127.0.0.13,127.0.0.14,\
127.0.0.15,127.0.0.16,127.0.0.17,127.0.0.18,127.0.0.19,127.0.0.20,127.0.0.21,127.0.0.22,\
127.0.0.23,127.0.0.24,127.0.0.25";
const LEGIT_SOURCE: &str = "127.0.0.2";
/// A legitimate handshake every 100 ms.
const LEGIT_RATE: u32 = 10;
const SOCKETS: usize = 5_000;
/// Dribblers beside the silent sockets.
const SILENT_PHASE_DRIBBLERS: usize = 500;
/// The memory phase: this many clients, each sending one 15 MiB frame at 128 KiB/s.
const SLOW_FRAME_CLIENTS: usize = 1_000;
const SLOW_FRAME_ARGS: &[&str] = &["--frame-mib", "15", "--send-kib-per-s", "128"];
/// The edge's default `max_buffered_bytes_per_core`, and its cores here.
const BUDGET_PER_CORE: u64 = 256 << 20;
const CORES: u64 = 2;
/// What the edge may hold beyond its buffer budgets under the memory phase: the 1,000
/// connections themselves (TLS and session state, ~40 MiB), a read's worth past the budget per
/// core, and what mimalloc keeps of the freed frame buffers until its delayed purge. Measured
/// beyond idle + budget: 174–218 MiB with the default purge delay, 71 MiB with
/// MIMALLOC_PURGE_DELAY=0 (the edge keeps the default, which spares the hot path a madvise per
/// freed page). Without the budget it would be 1,000 × 15 MiB.
const RSS_SLACK: u64 = 320 << 20;
const MIN_SUCCESS: f64 = 0.99;
/// After a phase: how long the edge may take to let go of everything.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// The flooding-client measurement: the others, and the flooder.
const OTHERS: u32 = 50;
const OTHERS_RATE: u32 = 2_000;
const FLOODER_DEPTH: u32 = 64;
const FLOODER_PAYLOAD: u32 = 4096;

struct Options {
    sockets: usize,
    /// Seconds the siege builds up before the legitimate client starts.
    ramp: f64,
    /// Seconds the legitimate client runs under the siege.
    measured: f64,
    build: bool,
    profile: &'static str,
    /// Only these phases (all when empty).
    only: Vec<String>,
}

impl Options {
    fn new(quick: bool, profile: &'static str) -> Options {
        Options {
            sockets: SOCKETS,
            ramp: 3.0,
            measured: if quick { 10.0 } else { 30.0 },
            build: true,
            profile,
            only: Vec::new(),
        }
    }
}

/// `cargo xtask siege ...`
pub fn run(args: &[String]) -> Result<bool> {
    let mut opts = Options::new(false, "release");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => opts.measured = Options::new(true, "release").measured,
            "--no-build" => opts.build = false,
            "--ci-profile" => opts.profile = "ci",
            "--phase" => opts
                .only
                .push(it.next().context("--phase needs a name")?.clone()),
            "--sockets" => {
                opts.sockets = it
                    .next()
                    .context("--sockets needs a value")?
                    .parse()
                    .context("--sockets takes a whole number")?;
            }
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask siege [--quick] [--sockets N] [--phase NAME]... [--ci-profile] [--no-build]\n\
                     silent, dribbling and stalled sockets ({SOCKETS} by default) against one \
                     edge while a client upgrades every 100 ms; report in target/siege/"
                );
                return Ok(true);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    let verdict = siege(&Env::detect(), &opts)?;
    Ok(verdict.failures.is_empty())
}

/// The test command's `siege` layer: the quick run on the ci-profile binaries, one test per
/// check.
pub fn layer(env: &Env) -> Result<Outcome> {
    let verdict = siege(env, &Options::new(true, "ci"))?;
    let failed = verdict.failures.len() as u64;
    Ok(Outcome::Ran(Counts {
        passed: verdict.checks - failed,
        failed,
        skipped: 0,
    }))
}

struct Verdict {
    checks: u64,
    failures: Vec<String>,
}

/// One attacker of a phase: how its sockets behave and how many.
#[derive(Clone, Copy)]
struct Attack {
    kind: &'static str,
    sockets: usize,
    args: &'static [&'static str],
}

struct Phase {
    name: &'static str,
    what: &'static str,
    attacks: Vec<Attack>,
}

fn phases(sockets: usize) -> Vec<Phase> {
    let a = |kind, sockets| Attack {
        kind,
        sockets,
        args: &[],
    };
    vec![
        Phase {
            name: "baseline",
            what: "no attacker",
            attacks: vec![],
        },
        Phase {
            name: "silent",
            what: "silent TCP sockets + upgrade dribblers",
            attacks: vec![
                a("silent", sockets),
                a("dribble", SILENT_PHASE_DRIBBLERS.min(sockets)),
            ],
        },
        Phase {
            name: "dribble",
            what: "TLS done, upgrade request 1 byte/s (slowloris)",
            attacks: vec![a("dribble", sockets)],
        },
        Phase {
            name: "stall",
            what: "ClientHello, then nothing",
            attacks: vec![a("stall", sockets)],
        },
        Phase {
            name: "slow-frame",
            what: "1,000 upgraded clients, each a 15 MiB frame at 128 KiB/s",
            attacks: vec![Attack {
                kind: "slow-frame",
                sockets: SLOW_FRAME_CLIENTS,
                args: SLOW_FRAME_ARGS,
            }],
        },
    ]
}

/// What one phase measured.
#[derive(Default)]
struct Measured {
    legit_ok: u64,
    legit_failed: u64,
    legit_reasons: Value,
    echo_errors: u64,
    hs_p50_us: u64,
    hs_p99_us: u64,
    hs_max_us: u64,
    /// Per attacker: its JSON report.
    attackers: Vec<Value>,
    edge_cpu_s: f64,
    edge_peak_rss: u64,
    edge_peak_connections: f64,
    edge_idle_rss: u64,
    edge_peak_buffered: f64,
    refusals: BTreeMap<String, f64>,
    accepted: f64,
}

impl Measured {
    fn success(&self) -> f64 {
        let n = self.legit_ok + self.legit_failed;
        if n == 0 {
            0.0
        } else {
            self.legit_ok as f64 / n as f64
        }
    }
}

fn siege(env: &Env, opts: &Options) -> Result<Verdict> {
    let out = env.target.join("siege");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("state"))?;
    let bins = env.target.join(opts.profile);
    if opts.build {
        banner(&format!(
            "siege: building wssedge + wssbench ({})",
            opts.profile
        ));
        let status = env
            .cargo()
            .args(["build", "--profile", opts.profile])
            .args(["-p", "wssedge", "-p", "wssbench"])
            .status()?;
        if !status.success() {
            bail!("building the siege's binaries failed ({status})");
        }
    }
    let config = out.join("wssedge.toml");
    // The defaults are what is proven; only the cores are named (this machine has two).
    std::fs::write(&config, "[server]\ncores = 2\n")?;
    let edge = start_edge(
        &bins.join("wssedge"),
        &config,
        &out.join("state"),
        &out.join("wssedge.log"),
        &[0, 1],
    )?;
    let pid = edge.guard.child.id();
    let _guard = edge.guard;
    let url = format!("wss://{}/siege", edge.addr);
    let fds_idle = fd_count(pid)?;
    banner(&format!(
        "siege: {} sockets from 16 addresses against {} (pid {pid}); a client every 100 ms for {} s per phase",
        opts.sockets, edge.addr, opts.measured
    ));

    let mut checks = 0;
    let mut failures = Vec::new();
    let mut results = Vec::new();
    let all = phases(opts.sockets);
    for o in &opts.only {
        if o != "flood" && !all.iter().any(|p| p.name == o) {
            let names: Vec<&str> = all.iter().map(|p| p.name).collect();
            bail!("no phase {o:?} (phases: {}, flood)", names.join(", "));
        }
    }
    let chosen = all
        .into_iter()
        .filter(|p| opts.only.is_empty() || opts.only.iter().any(|o| o == p.name));
    for phase in chosen {
        let m = run_phase(
            &bins.join("wssbench"),
            &url,
            &edge.ca,
            edge.admin,
            pid,
            &phase,
            opts,
            &out,
        )
        .with_context(|| format!("phase {}", phase.name))?;
        eprintln!(
            "siege {}: legitimate {}/{} ({:.1} %), handshake p50 {} µs p99 {} µs; edge cpu {:.2} s, peak rss {:.1} MiB",
            phase.name,
            m.legit_ok,
            m.legit_ok + m.legit_failed,
            100.0 * m.success(),
            m.hs_p50_us,
            m.hs_p99_us,
            m.edge_cpu_s,
            m.edge_peak_rss as f64 / (1 << 20) as f64
        );
        checks += 1;
        if m.success() < MIN_SUCCESS {
            failures.push(format!(
                "{}: {} of {} legitimate handshakes succeeded (< {:.0} %): {}",
                phase.name,
                m.legit_ok,
                m.legit_ok + m.legit_failed,
                100.0 * MIN_SUCCESS,
                m.legit_reasons
            ));
        }
        for (attack, report) in phase.attacks.iter().zip(&m.attackers) {
            checks += 1;
            // The edge closes the attacker's sockets as fast as it can (that is the defence),
            // so the siege's force is what reached it: every socket at least once.
            let opened = report["opened"].as_u64().unwrap_or(0);
            if opened < attack.sockets as u64 {
                failures.push(format!(
                    "{}: the {} attacker opened only {opened} sockets of its {}: no siege",
                    phase.name, attack.kind, attack.sockets
                ));
            }
        }
        if phase.name == "slow-frame" {
            failures.extend(memory_failures(&m));
            checks += 3;
        }
        results.push((phase, m));
    }
    // Back to idle: nothing held after the last attacker left.
    checks += 1;
    let settled = settle(edge.admin, pid, fds_idle);
    if let Err(e) = &settled {
        failures.push(format!("after the siege: {e:#}"));
    }
    drop(_guard);
    let flood = if opts.only.is_empty() || opts.only.iter().any(|o| o == "flood") {
        let f = flooding_client(&bins, opts, &out).context("the flooding client")?;
        checks += 1;
        if f.others_lost() > 0 {
            failures.push(format!(
                "flood: the other clients lost {} messages beside the flooder",
                f.others_lost()
            ));
        }
        Some(f)
    } else {
        None
    };
    let mut text = render(opts, &results, fds_idle, &settled, &failures);
    if let Some(f) = &flood {
        text.push_str(&f.render());
    }
    std::fs::write(out.join("report.md"), &text)?;
    let json = json!({
        "sockets": opts.sockets,
        "measured_s": opts.measured,
        "legit_rate": LEGIT_RATE,
        "phases": results.iter().map(|(p, m)| json!({
            "name": p.name,
            "legit_ok": m.legit_ok,
            "legit_failed": m.legit_failed,
            "legit_failure_reasons": m.legit_reasons,
            "echo_errors": m.echo_errors,
            "handshake_us": { "p50": m.hs_p50_us, "p99": m.hs_p99_us, "max": m.hs_max_us },
            "attackers": m.attackers,
            "edge_cpu_s": m.edge_cpu_s,
            "edge_peak_rss": m.edge_peak_rss,
            "edge_peak_connections": m.edge_peak_connections,
            "edge_idle_rss": m.edge_idle_rss,
            "edge_peak_buffered": m.edge_peak_buffered,
            "refusals": m.refusals,
            "accepted": m.accepted,
        })).collect::<Vec<_>>(),
        "flood": flood.as_ref().map(|f| json!({
            "others_alone": f.alone,
            "others_beside_flooder": f.beside,
            "flooder": f.flooder,
            "edge_cpu_s_alone": f.cpu_alone,
            "edge_cpu_s_beside": f.cpu_beside,
        })),
        "failures": failures,
    });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    println!("{text}");
    for f in &failures {
        eprintln!("siege: FAILED: {f}");
    }
    Ok(Verdict { checks, failures })
}

#[allow(clippy::too_many_arguments)]
fn run_phase(
    wssbench: &Path,
    url: &str,
    ca: &Path,
    admin: SocketAddr,
    pid: u32,
    phase: &Phase,
    opts: &Options,
    out: &Path,
) -> Result<Measured> {
    banner(&format!("siege phase {}: {}", phase.name, phase.what));
    let before = scrape(admin)?;
    let idle_rss = rss(pid)?;
    let cpu0 = edge_cpu_s(pid);
    let gen = |mode: &str, name: &str| -> Result<Command> {
        let mut c = Command::new(wssbench);
        c.arg(mode)
            .args(["--url", url])
            .arg("--ca")
            .arg(ca)
            .arg("--json")
            .arg(out.join(format!("{name}.json")))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out.join(format!("{name}.log")))?)
            .stderr(std::fs::File::create(out.join(format!("{name}.err")))?);
        Ok(c)
    };
    let mut attackers: Vec<(String, Child)> = Vec::new();
    for a in &phase.attacks {
        let name = format!("{}-{}", phase.name, a.kind);
        let child = gen("siege", &name)?
            .args(["--kind", a.kind])
            .args(["--connections", &a.sockets.to_string()])
            .args(["--source-ips", ATTACK_SOURCES])
            .args(["--warmup", &opts.ramp.to_string()])
            .args(["--duration", &(opts.measured + 2.0).to_string()])
            .args(a.args)
            .spawn()
            .with_context(|| format!("starting the {} attacker", a.kind))?;
        attackers.push((name, child));
    }
    let legit_name = format!("{}-legit", phase.name);
    let mut legit = gen("storm", &legit_name)?
        .args(["--rate", &LEGIT_RATE.to_string()])
        .args(["--warmup", &opts.ramp.to_string()])
        .args(["--duration", &opts.measured.to_string()])
        .args(["--source-ips", LEGIT_SOURCE])
        .spawn()
        .context("starting the legitimate client")?;
    // While it runs: the edge's peak RSS and connections, twice a second.
    let limit = Duration::from_secs_f64(opts.ramp + opts.measured + 60.0);
    let t0 = Instant::now();
    let (mut peak_rss, mut peak_conns, mut peak_buffered) = (0u64, 0f64, 0f64);
    let mut running = attackers.len() + 1;
    while running > 0 {
        peak_rss = peak_rss.max(rss(pid)?);
        if let Ok(text) = scrape(admin) {
            let m = |name| metric(&text, name, &[]).unwrap_or(0.0);
            peak_conns = peak_conns.max(m("wssedge_connections"));
            peak_buffered = peak_buffered.max(m("wssedge_buffered_bytes"));
        }
        running = 0;
        for child in std::iter::once(&mut legit).chain(attackers.iter_mut().map(|(_, c)| c)) {
            if child.try_wait()?.is_none() {
                running += 1;
            }
        }
        if t0.elapsed() > limit {
            for child in std::iter::once(&mut legit).chain(attackers.iter_mut().map(|(_, c)| c)) {
                let _ = child.kill();
                let _ = child.wait();
            }
            bail!("the generators did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let cpu = edge_cpu_s(pid) - cpu0;
    let after = scrape(admin)?;
    let read = |name: &str| -> Result<Value> {
        let path = out.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{name} wrote no report ({})", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    let l = read(&legit_name)?;
    let u = |v: &Value| v.as_u64().unwrap_or(0);
    let mut m = Measured {
        legit_ok: u(&l["handshakes_ok"]),
        legit_failed: u(&l["handshakes_failed"]),
        legit_reasons: l["failure_reasons"].clone(),
        echo_errors: u(&l["errors"]),
        hs_p50_us: u(&l["handshake_us"]["p50"]),
        hs_p99_us: u(&l["handshake_us"]["p99"]),
        hs_max_us: u(&l["handshake_us"]["max"]),
        edge_cpu_s: cpu,
        edge_peak_rss: peak_rss,
        edge_peak_connections: peak_conns,
        edge_idle_rss: idle_rss,
        edge_peak_buffered: peak_buffered,
        accepted: counter_delta(&before, &after, "wssedge_connections_accepted_total", &[]),
        ..Measured::default()
    };
    for (name, _) in &attackers {
        m.attackers.push(read(name)?);
    }
    for reason in reasons(&after) {
        let d = counter_delta(
            &before,
            &after,
            "wssedge_refusals_total",
            &[("reason", &reason)],
        );
        if d > 0.0 {
            m.refusals.insert(reason, d);
        }
    }
    Ok(m)
}

/// The flooding client's measurement: the other clients' reports alone and beside it, its own.
struct Flood {
    alone: Value,
    beside: Value,
    flooder: Value,
    cpu_alone: f64,
    cpu_beside: f64,
    seconds: f64,
}

impl Flood {
    /// Messages the other clients sent and never got back (the generator's `unanswered`:
    /// no echo by the end of its drain), and its errors. Not `sent - received`: a reply that
    /// lands just past the measured window is counted sent but not received (a CI run saw
    /// 19,999 of 20,000 received with none unanswered).
    fn others_lost(&self) -> u64 {
        let lost = |v: &Value| {
            v["unanswered"].as_u64().unwrap_or(u64::MAX / 4) + v["errors"].as_u64().unwrap_or(0)
        };
        lost(&self.alone) + lost(&self.beside)
    }

    fn render(&self) -> String {
        let q = |v: &Value, p: &str| v["latency_us"][p].as_f64().unwrap_or(0.0) / 1000.0;
        let row = |name: &str, v: &Value, cpu: f64| {
            format!(
                "| {name} | {} / {} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms | {cpu:.2} s |\n",
                v["received"],
                v["sent"],
                q(v, "p50"),
                q(v, "p99"),
                q(v, "p999"),
                q(v, "max"),
            )
        };
        let ratio = |p: &str| {
            let a = q(&self.alone, p);
            if a > 0.0 {
                q(&self.beside, p) / a
            } else {
                0.0
            }
        };
        let f = &self.flooder;
        let mib_s =
            f["msgs_per_s"].as_f64().unwrap_or(0.0) * f64::from(FLOODER_PAYLOAD) / (1 << 20) as f64;
        format!(
            "\n## One client flooding its core\n\n\
             One core. {OTHERS} clients at {OTHERS_RATE} messages/s in all (64 B, open loop), \
             {} s, alone and then beside one client sending {FLOODER_PAYLOAD} B messages with \
             {FLOODER_DEPTH} in flight (no rate limit configured).\n\n\
             | the {OTHERS} clients | received / sent | p50 | p99 | p99.9 | max | edge CPU |\n\
             |---|---|---|---|---|---|---|\n{}{}\n\
             Beside the flooder: p50 ×{:.2}, p99 ×{:.2}, p99.9 ×{:.2}. The flooder got \
             {:.0} messages/s through ({mib_s:.0} MiB/s echoed), its own p99 {:.1} ms.\n",
            self.seconds,
            row("alone", &self.alone, self.cpu_alone),
            row("beside the flooder", &self.beside, self.cpu_beside),
            ratio("p50"),
            ratio("p99"),
            ratio("p999"),
            f["msgs_per_s"].as_f64().unwrap_or(0.0),
            q(f, "p99"),
        )
    }
}

/// One edge with one core; the other clients alone, then beside the flooder.
fn flooding_client(bins: &Path, opts: &Options, out: &Path) -> Result<Flood> {
    banner("siege: one client flooding its core");
    let config = out.join("flood.toml");
    std::fs::write(&config, "[server]\ncores = 1\n")?;
    std::fs::create_dir_all(out.join("flood-state"))?;
    let edge = start_edge(
        &bins.join("wssedge"),
        &config,
        &out.join("flood-state"),
        &out.join("flood-wssedge.log"),
        &[0],
    )?;
    let pid = edge.guard.child.id();
    let url = format!("wss://{}/flood", edge.addr);
    let seconds = opts.measured;
    let gen = |mode: &str, name: &str, secs: f64| -> Result<Command> {
        let mut c = Command::new(bins.join("wssbench"));
        c.arg(mode)
            .args(["--url", &url])
            .arg("--ca")
            .arg(&edge.ca)
            .args(["--warmup", "1", "--duration", &secs.to_string()])
            .arg("--json")
            .arg(out.join(format!("{name}.json")))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out.join(format!("{name}.log")))?)
            .stderr(std::fs::File::create(out.join(format!("{name}.err")))?);
        Ok(c)
    };
    let others = |name: &str| -> Result<Child> {
        Ok(gen("open", name, seconds)?
            .args(["--connections", &OTHERS.to_string()])
            .args(["--rate", &OTHERS_RATE.to_string()])
            .spawn()?)
    };
    let limit = Duration::from_secs_f64(seconds + 60.0);
    let cpu0 = edge_cpu_s(pid);
    let mut alone = others("flood-others-alone")?;
    wait_for(&mut alone, "the other clients", limit)?;
    let cpu_alone = edge_cpu_s(pid) - cpu0;
    let mut flooder = gen("closed", "flood-flooder", seconds + 2.0)?
        .args(["--connections", "1"])
        .args(["--depth", &FLOODER_DEPTH.to_string()])
        .args(["--payload", &FLOODER_PAYLOAD.to_string()])
        .spawn()?;
    // The flooder's connection is up and flooding before the others start measuring.
    std::thread::sleep(Duration::from_millis(500));
    let cpu1 = edge_cpu_s(pid);
    let mut beside = others("flood-others-beside")?;
    wait_for(&mut beside, "the other clients", limit)?;
    let cpu_beside = edge_cpu_s(pid) - cpu1;
    wait_for(&mut flooder, "the flooder", limit)?;
    let read = |name: &str| -> Result<Value> {
        let path = out.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{name} wrote no report ({})", path.display()))?;
        Ok(serde_json::from_str(&text)?)
    };
    Ok(Flood {
        alone: read("flood-others-alone")?,
        beside: read("flood-others-beside")?,
        flooder: read("flood-flooder")?,
        cpu_alone,
        cpu_beside,
        seconds,
    })
}

fn wait_for(child: &mut Child, what: &str, limit: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{what} exited with {status}");
            }
            return Ok(());
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The memory phase's checks: the budget was reached (else nothing was proven), the buffered
/// bytes stayed within it (a read's worth over per core), and so did the process.
fn memory_failures(m: &Measured) -> Vec<String> {
    let mut f = Vec::new();
    let budget = (BUDGET_PER_CORE * CORES) as f64;
    let closed_1013 = m.refusals.get("buffer_budget").copied().unwrap_or(0.0);
    if closed_1013 == 0.0 {
        f.push(
            "slow-frame: no connection was closed 1013 buffer_budget: the budget was never reached"
                .into(),
        );
    }
    if m.edge_peak_buffered > budget + (CORES << 20) as f64 {
        f.push(format!(
            "slow-frame: wssedge_buffered_bytes peaked at {:.1} MiB, over the {:.0} MiB of budget",
            m.edge_peak_buffered / (1 << 20) as f64,
            budget / (1 << 20) as f64
        ));
    }
    let bound = m.edge_idle_rss + BUDGET_PER_CORE * CORES + RSS_SLACK;
    if m.edge_peak_rss > bound {
        f.push(format!(
            "slow-frame: RSS peaked at {:.1} MiB, over idle {:.1} MiB + budget {} MiB + slack {} MiB",
            m.edge_peak_rss as f64 / (1 << 20) as f64,
            m.edge_idle_rss as f64 / (1 << 20) as f64,
            (BUDGET_PER_CORE * CORES) >> 20,
            RSS_SLACK >> 20
        ));
    }
    f
}

/// The `reason` label of every `wssedge_refusals_total` series in `text`.
fn reasons(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("wssedge_refusals_total{"))
        .filter_map(|l| l.split("reason=\"").nth(1))
        .filter_map(|r| r.split('"').next())
        .map(str::to_owned)
        .collect();
    v.sort();
    v.dedup();
    v
}

fn counter_delta(before: &str, after: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric(after, name, labels).unwrap_or(0.0) - metric(before, name, labels).unwrap_or(0.0)
}

fn edge_cpu_s(pid: u32) -> f64 {
    procfs::tree_cpu_ticks(Path::new("/proc"), &[pid]) as f64 / procfs::clk_tck() as f64
}

fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the edge (pid {pid}) is gone"))?;
    procfs::parse_vmrss(&status).context("no VmRSS")
}

fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("the edge (pid {pid}) is gone"))?
        .count())
}

/// Waits (bounded) until the edge holds no connection and exactly its idle descriptors.
fn settle(admin: SocketAddr, pid: u32, fds_idle: usize) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        let conns = metric(&scrape(admin)?, "wssedge_connections", &[]).unwrap_or(-1.0);
        let fds = fd_count(pid)?;
        if conns == 0.0 && fds == fds_idle {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > SETTLE_LIMIT {
            bail!(
                "{SETTLE_LIMIT:?} after the last attacker left the edge still holds \
                 {conns} connections and {fds} descriptors ({fds_idle} when idle)"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn render(
    opts: &Options,
    results: &[(Phase, Measured)],
    fds_idle: usize,
    settled: &Result<Duration>,
    failures: &[String],
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Siege: sockets that never speak, or a byte a second\n\n\
         One edge, 2 cores, default limits. Attackers: {} sockets per phase from 16 addresses \
         (127.0.0.10–25), opened over {} s, each reopened 1 s after the edge closed it. A \
         legitimate client from 127.0.0.2: a TLS handshake + upgrade + one echo every 100 ms \
         for {} s once the siege stands. Pass: ≥ {:.0} % of its handshakes succeed in every \
         phase; in `slow-frame` (1,000 clients, 15 MiB frames at 128 KiB/s each) the buffer \
         budget (2 × 256 MiB) is reached, the buffered bytes stay within it and the RSS within \
         idle + budget + {} MiB.\n",
        opts.sockets,
        opts.ramp,
        opts.measured,
        100.0 * MIN_SUCCESS,
        RSS_SLACK >> 20
    );
    let _ = writeln!(
        s,
        "| phase | attack | legitimate ok | success | echo errors | handshake p50 | p99 | max | attacker peak held | attacker opened / closed by edge | edge CPU | edge RSS idle → peak | edge peak buffered | edge peak connections | edge refusals |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (p, m) in results {
        let held: Vec<String> = m
            .attackers
            .iter()
            .map(|a| format!("{} {}", a["kind"].as_str().unwrap_or("?"), a["peak_held"]))
            .collect();
        let opened: Vec<String> = m
            .attackers
            .iter()
            .map(|a| format!("{} / {}", a["opened"], a["closed_by_server"]))
            .collect();
        let refusals: Vec<String> = m.refusals.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {}/{} | {:.1} % | {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {} | {:.2} s | {:.1} → {:.1} MiB | {:.1} MiB | {} | {} |",
            p.name,
            p.what,
            m.legit_ok,
            m.legit_ok + m.legit_failed,
            100.0 * m.success(),
            m.echo_errors,
            m.hs_p50_us as f64 / 1000.0,
            m.hs_p99_us as f64 / 1000.0,
            m.hs_max_us as f64 / 1000.0,
            if held.is_empty() { "—".into() } else { held.join(", ") },
            if opened.is_empty() { "—".into() } else { opened.join(", ") },
            m.edge_cpu_s,
            m.edge_idle_rss as f64 / (1 << 20) as f64,
            m.edge_peak_rss as f64 / (1 << 20) as f64,
            m.edge_peak_buffered / (1 << 20) as f64,
            m.edge_peak_connections,
            if refusals.is_empty() { "—".into() } else { refusals.join(", ") },
        );
    }
    let _ = writeln!(
        s,
        "\nAfter the last phase: {}.\n",
        match settled {
            Ok(d) => format!("no connection and {fds_idle} descriptors (as idle) within {d:.1?}"),
            Err(e) => format!("NOT idle: {e:#}"),
        }
    );
    if failures.is_empty() {
        let _ = writeln!(s, "Verdict: PASS");
    } else {
        let _ = writeln!(s, "Verdict: FAIL");
        for f in failures {
            let _ = writeln!(s, "- {f}");
        }
    }
    s
}
