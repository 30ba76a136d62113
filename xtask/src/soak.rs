//! `cargo xtask soak [--minutes N]`: the edge under a mixed load for a long time, sampled every
//! second, then left idle: everything it holds must return to its idle baseline, and nothing
//! may grow while the load is steady. The test command runs a short version (2 minutes).
//!
//! The load, all at once, on one edge with two cores, JWT single-use tokens and identity
//! limits on, in a fleet (its own `redis-server`: replay checks, revocations, identity counts
//! and pub/sub sequences go through it):
//! - long-lived echo sessions (wssbench `open`, a fixed message rate), in two phases around
//!   a restart handover: the handover also switches the edge into proxy mode, so in the second
//!   phase every session, churn connection and bad upgrade crosses the proxy to an upstream
//!   (a second wssedge, echoing, over wss://), which must hold no connection afterwards;
//! - connection churn (wssbench `storm`): connect, upgrade, one echo, close — every 4th ends
//!   with half a frame and a TCP reset instead; tokens that live 15 s, so the replay store has
//!   entries to forget;
//! - bad upgrades: a storm without tokens (401 each);
//! - pub/sub: a publisher and 32 subscribers of one topic (wssbench `fanout`), in two phases
//!   like the sessions; nothing may be lost;
//! - handshake failures and misbehaving sockets from xtask: plain HTTP on the TLS port, an
//!   empty ClientHello, a connection closed before its first byte;
//! - operator actions: `ctl revoke-jti` / `unrevoke-jti` every 5 s, `ctl reload` every
//!   minute (every 30 s in a run shorter than 5 minutes), one `ctl restart` at 40 % of the run.
//!
//! Sampled every second: RSS, open descriptors, connections, bytes buffered and read buffers
//! held per core, timer-wheel entries, replay-store entries, identities' budgets. After the
//! load: descriptors, connections, buffers, timers, replay entries and identity budgets must
//! come back to their idle values (descriptors exactly) within [`SETTLE_LIMIT`], RSS within
//! [`RSS_BOUND_BYTES`] of the first idle sample; during the steady part of the second phase
//! the RSS trend (Theil–Sen: the median slope between every two samples, so one allocator
//! step is not a trend) must stay under [`MAX_RSS_SLOPE_BYTES_PER_MIN`]. Report, plot and samples in
//! `target/soak/` (`report.md`, `soak.svg`, `samples.csv`).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use plotters::prelude::*;

use crate::edge_proc::{metric, scrape, start_edge};
use crate::{banner, Counts, Env, Outcome};

/// The test command's soak.
const LAYER_SECONDS: u64 = 120;
const DEFAULT_MINUTES: u64 = 30;
/// After the load: how long everything may take to come back (tokens of the last phase expire
/// [`TOKEN_SLACK_S`] after it ends; the replay store forgets them within a second after).
const SETTLE_LIMIT: Duration = Duration::from_secs(45);
const TOKEN_SLACK_S: u64 = 5;
/// The allocator keeps some of what a load made it map (mimalloc returns freed pages lazily,
/// in segments): RSS after the load may exceed the first idle sample by this much.
const RSS_BOUND_BYTES: u64 = 24 << 20;
/// The RSS trend (Theil–Sen, see `slope`) over the steady part of the second phase.
const MAX_RSS_SLOPE_BYTES_PER_MIN: f64 = 1024.0 * 1024.0;
/// Long-lived sessions and their total message rate.
const SESSIONS: u32 = 64;
const SESSION_RATE: u32 = 640;
/// New connections per second: with tokens (every 4th aborted), and without (401).
const CHURN_RATE: u32 = 40;
const ABORT_EVERY: u32 = 4;
const CHURN_TOKEN_LIFE_S: u64 = 15;
const BAD_UPGRADE_RATE: u32 = 5;
/// Pub/sub: subscribers of one topic, and its publications per second.
const SUBSCRIBERS: u32 = 32;
const PUBLICATION_RATE: u32 = 20;

struct Options {
    seconds: u64,
    build: bool,
    /// The cargo profile the binaries come from.
    profile: &'static str,
}

/// `cargo xtask soak ...`
pub fn run(args: &[String]) -> Result<bool> {
    let mut opts = Options {
        seconds: DEFAULT_MINUTES * 60,
        build: true,
        profile: "release",
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<u64> {
            it.next()
                .with_context(|| format!("{name} needs a value"))?
                .parse()
                .with_context(|| format!("{name} takes a whole number"))
        };
        match a.as_str() {
            "--minutes" => opts.seconds = 60 * value("--minutes")?,
            "--seconds" => opts.seconds = value("--seconds")?,
            "--no-build" => opts.build = false,
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask soak [--minutes N | --seconds N] [--no-build]\n\
                     mixed load on one edge for N minutes (default {DEFAULT_MINUTES}), then idle; \
                     report in target/soak/"
                );
                return Ok(true);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if opts.seconds < 60 {
        bail!("a soak needs at least 60 seconds");
    }
    let env = Env::detect();
    let verdict = soak(&env, &opts)?;
    Ok(verdict.failures.is_empty())
}

/// The test command's `soak` layer: [`LAYER_SECONDS`] on the ci-profile binaries. Each check
/// is one test.
pub fn layer(env: &Env) -> Result<Outcome> {
    let opts = Options {
        seconds: crate::seconds_from_env("WSSEDGE_SOAK_SECONDS", LAYER_SECONDS),
        build: true,
        profile: "ci",
    };
    let verdict = soak(env, &opts)?;
    let failed = verdict.failures.len() as u64;
    Ok(Outcome::Ran(Counts {
        passed: verdict.checks - failed,
        failed,
        skipped: 0,
    }))
}

/// One second's look at the edge.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    t: f64,
    pid: u32,
    rss: u64,
    fds: u64,
    connections: f64,
    buffered: f64,
    read_buffers: f64,
    timers: f64,
    replay: f64,
    identities: f64,
    accepted: f64,
    frames_in: f64,
}

/// A named series and how to read it from a sample.
type Series = (&'static str, fn(&Sample) -> f64);

/// The series that must come back to their idle value.
const SETTLING: [Series; 7] = [
    ("open descriptors", |s| s.fds as f64),
    ("connections", |s| s.connections),
    ("buffered bytes", |s| s.buffered),
    ("read buffers held", |s| s.read_buffers),
    ("timer-wheel entries", |s| s.timers),
    ("replay-store entries", |s| s.replay),
    ("identity budgets", |s| s.identities),
];

struct Verdict {
    checks: u64,
    failures: Vec<String>,
}

fn soak(env: &Env, opts: &Options) -> Result<Verdict> {
    let out = env.target.join("soak");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(out.join("state"))?;
    let bins = env.target.join(opts.profile);
    if opts.build {
        banner(&format!(
            "soak: building wssedge + wssbench ({})",
            opts.profile
        ));
        let status = env
            .cargo()
            .args([
                "build",
                "--profile",
                opts.profile,
                "-p",
                "wssedge",
                "-p",
                "wssbench",
            ])
            .status()?;
        if !status.success() {
            bail!("building the soak's binaries failed ({status})");
        }
    }
    // The fleet's Redis: replay checks, revocations, identity counts and pub/sub sequences go
    // through it.
    let redis_bin = crate::bench::fleet::ensure_redis().map_err(|e| anyhow!(e))?;
    let redis_port = crate::free_port()?;
    std::fs::create_dir_all(out.join("redis"))?;
    let _redis = crate::Guard {
        name: "redis-server",
        child: Command::new(&redis_bin)
            .args(crate::bench::fleet::redis_args(
                redis_port,
                &out.join("redis"),
            ))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out.join("redis.log"))?)
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-server")?,
        group: false,
    };
    crate::bench::fleet::wait_listening(SocketAddr::from(([127, 0, 0, 1], redis_port)))?;
    let setup = Setup::write(&out, redis_port)?;
    // The upstream of the second phase: an echo edge of its own.
    std::fs::create_dir_all(out.join("upstream-state"))?;
    let upstream_config = out.join("upstream.toml");
    std::fs::write(&upstream_config, "[server]\ncores = 1\n")?;
    let upstream = start_edge(
        &bins.join("wssedge"),
        &upstream_config,
        &out.join("upstream-state"),
        &out.join("upstream.log"),
        &[1],
    )?;
    let edge = start_edge(
        &bins.join("wssedge"),
        &setup.config,
        &out.join("state"),
        &out.join("wssedge.log"),
        &[0, 1],
    )?;
    let first_pid = edge.guard.child.id();
    let mut guard = edge.guard;
    let ctl = Ctl {
        bin: bins.join("wssedge"),
        socket: setup.control.clone(),
    };
    banner(&format!(
        "soak: {} s of load on {} (pid {first_pid}), then idle",
        opts.seconds, edge.addr
    ));

    let t0 = Instant::now();
    let mut samples = Vec::new();
    let sample = |pid: u32, samples: &mut Vec<Sample>| -> Result<Sample> {
        let s = take_sample(edge.admin, pid, t0)?;
        samples.push(s);
        Ok(s)
    };
    // The idle baseline: a few samples, the last one kept.
    let mut baseline = Sample::default();
    for _ in 0..3 {
        baseline = sample(first_pid, &mut samples)?;
        std::thread::sleep(Duration::from_millis(500));
    }
    let fds_before = fd_targets(first_pid);
    let sockets_before = socket_details(first_pid);

    let load_secs = opts.seconds;
    let restart_at = load_secs * 2 / 5;
    let reload_every = if load_secs < 300 { 30 } else { 60 };
    let wssbench = bins.join("wssbench");
    let url = format!("wss://{}/soak", edge.addr);
    let gen = Generators {
        bin: &wssbench,
        url: &url,
        ca: &edge.ca,
        key: &setup.jwt_key,
        out: &out,
    };
    let mut churn = gen.storm("churn", CHURN_RATE, load_secs, true)?;
    let mut bad = gen.storm("bad-upgrades", BAD_UPGRADE_RATE, load_secs, false)?;
    let mut sessions = gen.sessions("sessions-1", restart_at.saturating_sub(2))?;
    let mut fanout = gen.fanout("fanout-1", restart_at.saturating_sub(2))?;
    let stop = Arc::new(AtomicBool::new(false));
    let misbehaved = Arc::new(AtomicU64::new(0));
    let misbehaver = {
        let (stop, count, addr) = (stop.clone(), misbehaved.clone(), edge.addr);
        std::thread::spawn(move || misbehave(addr, &stop, &count))
    };

    let mut pid = first_pid;
    let mut actions = Vec::new();
    let mut phase2: Option<(f64, Child)> = None;
    let mut fanout2: Option<Child> = None;
    let mut restarted = false;
    let mut failures = Vec::new();
    let mut next_revoke = 5;
    let mut next_reload = reload_every;
    for second in 1..=load_secs {
        let due = t0 + Duration::from_secs(2 + second);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        match sample(pid, &mut samples) {
            Ok(_) => {}
            Err(e) if restarted => actions.push(format!("{second} s: sample failed: {e:#}")),
            Err(e) => return Err(e.context("the edge stopped answering /metrics")),
        }
        if second == next_revoke {
            next_revoke += 5;
            let jti = format!("soak-{second}");
            ctl.run(&["revoke-jti", &jti])?;
            ctl.run(&["unrevoke-jti", &jti])?;
        }
        if second == next_reload {
            next_reload += reload_every;
            ctl.run(&["reload"])?;
            actions.push(format!("{second} s: reload"));
        }
        if second == restart_at && !restarted {
            restarted = true;
            setup.switch_to_proxy(upstream.addr, &upstream.ca)?;
            ctl.run(&["restart"])?;
            pid = wait_new_pid(&ctl, first_pid)?;
            actions.push(format!(
                "{second} s: restart handover into proxy mode (upstream: an echo edge), pid {first_pid} → {pid}"
            ));
            let left = load_secs - second;
            fanout2 = Some(gen.fanout("fanout-2", left.saturating_sub(2))?);
            phase2 = Some((
                t0.elapsed().as_secs_f64() + 2.0,
                gen.sessions("sessions-2", left.saturating_sub(2))?,
            ));
        }
        if let Some(s) = guard.exited() {
            if !restarted {
                bail!(
                    "the edge exited during the soak ({s}); see {}",
                    out.join("wssedge.log").display()
                );
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = misbehaver.join();
    let load_end = t0.elapsed().as_secs_f64();
    for (what, child) in [
        ("churn", &mut churn),
        ("bad upgrades", &mut bad),
        ("sessions", &mut sessions),
        ("pub/sub", &mut fanout),
    ]
    .into_iter()
    .chain(
        phase2
            .as_mut()
            .map(|(_, c)| ("sessions after the restart", c)),
    )
    .chain(fanout2.as_mut().map(|c| ("pub/sub after the restart", c)))
    {
        wait_child(child, what, Duration::from_secs(30))?;
    }

    // Idle again: every settling series back to its baseline, or the limit.
    let settle_start = Instant::now();
    let settled = loop {
        std::thread::sleep(Duration::from_secs(1));
        let s = sample(pid, &mut samples)?;
        let back = SETTLING.iter().all(|(_, f)| f(&s) <= f(&baseline));
        if back || settle_start.elapsed() > SETTLE_LIMIT {
            break s;
        }
    };
    let settle_secs = settle_start.elapsed().as_secs_f64();
    let fds_after = fd_targets(pid);
    let sockets_after = socket_details(pid);
    let fleet_up = scrape(edge.admin)
        .ok()
        .and_then(|t| metric(&t, "wssedge_fleet_up", &[]));
    // Nothing left behind upstream either, while the edge still runs (stopping it would
    // close its upstream connections whatever they were doing).
    let upstream_left = upstream_connections_left(upstream.admin);
    stop_edge(pid, &mut guard);

    let mut checks = 0;
    for (name, f) in SETTLING {
        checks += 1;
        let (now, idle) = (f(&settled), f(&baseline));
        if now > idle {
            let mut why =
                format!("{name}: {now} after {settle_secs:.0} s idle, {idle} before the load");
            if name == "open descriptors" {
                let _ = write!(
                    why,
                    " (sockets before: {}; after: {})",
                    sockets_before.join(", "),
                    sockets_after.join(", ")
                );
                let _ = write!(
                    why,
                    " (new: {})",
                    fd_diff(&fds_before, &fds_after).join(", ")
                );
            }
            failures.push(why);
        }
    }
    checks += 1;
    if settled.rss > baseline.rss + RSS_BOUND_BYTES {
        failures.push(format!(
            "RSS {} MiB after the load, {} MiB before: more than the allocator's {} MiB",
            settled.rss >> 20,
            baseline.rss >> 20,
            RSS_BOUND_BYTES >> 20
        ));
    }
    // The steady part: the second phase after its first quarter, until the load ends.
    checks += 1;
    let steady_from = phase2.as_ref().map_or(load_end / 2.0, |(start, _)| {
        start + (load_end - start) / 4.0
    });
    let steady: Vec<(f64, f64)> = samples
        .iter()
        .filter(|s| s.t >= steady_from && s.t <= load_end && s.pid == pid)
        .map(|s| (s.t, s.rss as f64))
        .collect();
    let slope_per_min = slope(&steady).map(|b| b * 60.0);
    match slope_per_min {
        Some(b) if b > MAX_RSS_SLOPE_BYTES_PER_MIN => failures.push(format!(
            "RSS grew {:.0} KiB/min during the steady load (bound {:.0} KiB/min)",
            b / 1024.0,
            MAX_RSS_SLOPE_BYTES_PER_MIN / 1024.0
        )),
        Some(_) => {}
        None => failures.push("too few steady samples to measure a trend".into()),
    }
    checks += 1;
    if !restarted || pid == first_pid {
        failures.push("the restart handover did not happen".into());
    }
    checks += 1;
    if fleet_up != Some(1.0) {
        failures.push(format!(
            "the fleet link was not up at the end (wssedge_fleet_up {fleet_up:?})"
        ));
    }
    for name in ["fanout-1", "fanout-2"] {
        checks += 1;
        let v = read_gen(&out.join(format!("{name}.json")));
        let lost = v.as_ref().and_then(|v| v["fanout"]["lost"].as_u64());
        let delivered = v.as_ref().and_then(|v| v["fanout"]["deliveries"].as_u64());
        match (lost, delivered) {
            (Some(0), Some(d)) if d > 0 => {}
            (lost, delivered) => failures.push(format!(
                "{name}: pub/sub lost {lost:?} of its deliveries (delivered {delivered:?})"
            )),
        }
    }
    checks += 1;
    match upstream_left {
        Ok(0) => {}
        Ok(n) => failures.push(format!(
            "the upstream edge still holds {n} connections after the load"
        )),
        Err(e) => failures.push(format!("the upstream edge: {e:#}")),
    }
    let upstream_served = scrape(upstream.admin)
        .ok()
        .and_then(|t| metric(&t, "wssedge_connections_accepted_total", &[]))
        .unwrap_or(0.0);
    actions.push(format!(
        "upstream edge: {upstream_served} proxied connections accepted"
    ));
    drop(upstream);

    let summary = Summary {
        seconds: load_secs,
        baseline,
        settled,
        settle_secs,
        slope_per_min,
        misbehaved: misbehaved.load(Ordering::Relaxed),
        gens: [
            ("churn", out.join("churn.json")),
            ("bad upgrades", out.join("bad-upgrades.json")),
            ("sessions before the restart", out.join("sessions-1.json")),
            ("sessions after the restart", out.join("sessions-2.json")),
            ("pub/sub before the restart", out.join("fanout-1.json")),
            ("pub/sub after the restart", out.join("fanout-2.json")),
        ]
        .into_iter()
        .map(|(what, p)| (what, read_gen(&p)))
        .collect(),
        actions,
        failures: failures.clone(),
    };
    plot(&out.join("soak.svg"), &samples, load_end)?;
    write_csv(&out.join("samples.csv"), &samples)?;
    let report = summary.render();
    std::fs::write(out.join("report.md"), &report)?;
    eprintln!("{report}");
    eprintln!("report: {}", out.join("report.md").display());
    Ok(Verdict { checks, failures })
}

/// The files the edge runs on: config, JWT key, control socket directory.
struct Setup {
    config: PathBuf,
    /// The configuration's echo-mode text (proxy mode appends to it).
    base: String,
    jwt_key: PathBuf,
    control: PathBuf,
}

impl Setup {
    fn write(out: &Path, redis_port: u16) -> Result<Setup> {
        use std::os::unix::fs::PermissionsExt;
        let jwt_key = out.join("jwt.key");
        std::fs::write(&jwt_key, b"soak-secret-soak-secret-soak-secret-0123")?;
        std::fs::set_permissions(&jwt_key, std::fs::Permissions::from_mode(0o600))?;
        let ctl_dir = out.join("ctl");
        std::fs::create_dir_all(&ctl_dir)?;
        std::fs::set_permissions(&ctl_dir, std::fs::Permissions::from_mode(0o700))?;
        let control = ctl_dir.join("control.sock");
        let config = out.join("wssedge.toml");
        let base = format!(
            "[server]\ncontrol = \"{}\"\ndrain_timeout_ms = 2000\n\n\
             [jwt]\nhs_secret_file = \"{}\"\nleeway_s = 1\nsingle_use = true\n\
             max_token_lifetime_s = 86400\n\n\
             [limits]\nper_identity_connections = 10000\n\
             identity_rate = {{ messages_per_s = 100000, burst_messages = 100000 }}\n\n\
             [fleet]\nredis = \"redis://127.0.0.1:{redis_port}/0\"\nnode = \"soak\"\n\n\
             [pubsub]\n\n[[routes]]\nprefix = \"/md\"\npubsub = true\n",
            control.display(),
            jwt_key.display()
        );
        std::fs::write(&config, &base)?;
        Ok(Setup {
            config,
            base,
            jwt_key,
            control,
        })
    }

    /// From the restart on, the edge is in proxy mode: every path goes to the upstream edge
    /// (echo, over wss://), so the second phase's sessions, churn and bad upgrades all cross
    /// the proxy.
    fn switch_to_proxy(&self, upstream: SocketAddr, upstream_ca: &Path) -> Result<()> {
        let text = format!(
            "{}\n[upstream]\n\n[upstream.tls]\nca = \"{}\"\n\
             [[upstream.groups]]\nname = \"echo\"\nmembers = [\"wss://{upstream}/\"]\n\n\
             [[routes]]\nprefix = \"/\"\ngroup = \"echo\"\n",
            self.base,
            upstream_ca.display()
        );
        std::fs::write(&self.config, text)?;
        Ok(())
    }
}

struct Generators<'a> {
    bin: &'a Path,
    url: &'a str,
    ca: &'a Path,
    key: &'a Path,
    out: &'a Path,
}

impl Generators<'_> {
    fn base(&self, mode: &str, name: &str, seconds: u64) -> Result<Command> {
        self.base_at(self.url, mode, name, seconds)
    }

    fn base_at(&self, url: &str, mode: &str, name: &str, seconds: u64) -> Result<Command> {
        let mut c = Command::new(self.bin);
        c.arg(mode)
            .args(["--url", url])
            .arg("--ca")
            .arg(self.ca)
            .args(["--warmup", "0", "--duration", &seconds.to_string()])
            .arg("--json")
            .arg(self.out.join(format!("{name}.json")))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.out.join(format!("{name}.log")))?)
            .stderr(std::fs::File::create(self.out.join(format!("{name}.err")))?);
        Ok(c)
    }

    /// New connections at `rate`; with tokens (every 4th aborted mid-frame) or without.
    fn storm(&self, name: &str, rate: u32, seconds: u64, tokens: bool) -> Result<Child> {
        let mut c = self.base("storm", name, seconds)?;
        c.args(["--rate", &rate.to_string(), "--max-inflight", "64"]);
        if tokens {
            c.arg("--mint-per-connection").arg(self.key);
            c.args(["--token-life-s", &CHURN_TOKEN_LIFE_S.to_string()]);
            c.args(["--abort-every", &ABORT_EVERY.to_string()]);
        }
        c.spawn()
            .with_context(|| format!("starting wssbench {name}"))
    }

    /// Pub/sub for `seconds`: one publisher, [`SUBSCRIBERS`] subscribers of its topic, each
    /// with its own single-use token; publications sequenced through the fleet's Redis.
    fn fanout(&self, name: &str, seconds: u64) -> Result<Child> {
        let url = self.url.replace("/soak", "/md");
        let mut c = self.base_at(&url, "fanout", name, seconds)?;
        c.args(["--connections", &SUBSCRIBERS.to_string()])
            .args(["--rate", &PUBLICATION_RATE.to_string()])
            .args(["--payload", "256"])
            .arg("--mint-per-connection")
            .arg(self.key)
            .args(["--token-life-s", &(seconds + TOKEN_SLACK_S).to_string()]);
        c.spawn()
            .with_context(|| format!("starting wssbench {name}"))
    }

    /// Long-lived sessions for `seconds`, their tokens living a little longer.
    fn sessions(&self, name: &str, seconds: u64) -> Result<Child> {
        let mut c = self.base("open", name, seconds)?;
        c.args(["--connections", &SESSIONS.to_string()])
            .args(["--rate", &SESSION_RATE.to_string()])
            .arg("--mint-per-connection")
            .arg(self.key)
            .args(["--token-life-s", &(seconds + TOKEN_SLACK_S).to_string()]);
        c.spawn()
            .with_context(|| format!("starting wssbench {name}"))
    }
}

fn wait_child(child: &mut Child, what: &str, limit: Duration) -> Result<()> {
    let t0 = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the {what} generator outlived the load by {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// wssbench's JSON result, as far as the report needs it.
fn read_gen(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

struct Ctl {
    bin: PathBuf,
    socket: PathBuf,
}

impl Ctl {
    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.bin)
            .arg("ctl")
            .arg("--control")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running wssedge ctl")?;
        if !out.status.success() {
            bail!(
                "wssedge ctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn pid(&self) -> Option<u32> {
        let status: serde_json::Value = serde_json::from_str(&self.run(&["status"]).ok()?).ok()?;
        status["pid"].as_u64().map(|p| p as u32)
    }
}

/// After `ctl restart`: the new process's PID, once it answers on the control socket.
fn wait_new_pid(ctl: &Ctl, old: u32) -> Result<u32> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Some(pid) = ctl.pid().filter(|p| *p != old) {
            return Ok(pid);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("no new process answered the control socket within 30 s of `ctl restart`")
}

/// The edge we started, or the one it handed over to (not our child: SIGTERM by PID, then
/// wait for it to be gone).
fn stop_edge(pid: u32, guard: &mut crate::Guard) {
    if pid == guard.child.id() {
        return; // the guard stops it
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let t0 = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if Path::new(&format!("/proc/{pid}")).exists() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

fn take_sample(admin: SocketAddr, pid: u32, t0: Instant) -> Result<Sample> {
    let text = scrape(admin)?;
    let m = |name: &str, labels: &[(&str, &str)]| metric(&text, name, labels).unwrap_or(0.0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("the edge (pid {pid}) is gone"))?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))?.count() as u64;
    Ok(Sample {
        t: t0.elapsed().as_secs_f64(),
        pid,
        rss: crate::bench::procfs::parse_vmrss(&status).unwrap_or(0),
        fds,
        connections: m("wssedge_connections", &[]),
        buffered: m("wssedge_buffered_bytes", &[]),
        read_buffers: m("wssedge_read_buffers_held", &[]),
        timers: m("wssedge_timers", &[]),
        replay: m("wssedge_replay_entries", &[]),
        identities: m("wssedge_identity_budgets", &[("state", "held")]),
        accepted: m("wssedge_connections_accepted_total", &[]),
        frames_in: m("wssedge_frames_total", &[("direction", "in")]),
    })
}

/// The upstream edge's connections once they have had [`SETTLE_LIMIT`] to go to zero.
fn upstream_connections_left(admin: SocketAddr) -> Result<u64> {
    let t0 = Instant::now();
    loop {
        let n = metric(&scrape(admin)?, "wssedge_connections", &[]).unwrap_or(0.0) as u64;
        if n == 0 || t0.elapsed() > SETTLE_LIMIT {
            return Ok(n);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every socket `pid` holds (TCP listeners left out): TCP as `LOCAL→REMOTE STATE`, UDP and
/// unix sockets by address or path: what a socket the soak left behind is connected to.
fn socket_details(pid: u32) -> Vec<String> {
    let mut by_inode = std::collections::HashMap::new();
    for table in ["tcp", "tcp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // sl local remote st ... inode (column 9); 0A is LISTEN.
            if cols.len() > 9 && cols[3] != "0A" {
                let state = tcp_state(cols[3]);
                let row = format!("{}→{} {state}", endpoint(cols[1]), endpoint(cols[2]));
                by_inode.insert(cols[9].to_owned(), row);
            }
        }
    }
    for table in ["udp", "udp6"] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 9 {
                let row = format!("udp {}→{}", endpoint(cols[1]), endpoint(cols[2]));
                by_inode.insert(cols[9].to_owned(), row);
            }
        }
    }
    // Num RefCount Protocol Flags Type St Inode [Path]
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) {
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() > 6 {
                let path = cols.get(7).copied().unwrap_or("(unnamed)");
                let row = format!("unix {path} type {} state {}", cols[4], cols[5]);
                by_inode.insert(cols[6].to_owned(), row);
            }
        }
    }
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = dir
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|t| {
            let t = t.to_string_lossy().into_owned();
            let inode = t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned();
            Some(
                by_inode
                    .get(&inode)
                    .cloned()
                    .unwrap_or_else(|| format!("socket inode {inode} (not TCP, UDP or unix)")),
            )
        })
        .collect();
    out.sort();
    out
}

/// `0100007F:1F90` (a /proc/net/tcp address, IPv4 little-endian) as `127.0.0.1:8080`; IPv6
/// addresses keep their hex, with the port decoded.
fn endpoint(hex: &str) -> String {
    let Some((addr, port)) = hex.split_once(':') else {
        return hex.to_owned();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    match u32::from_str_radix(addr, 16) {
        Ok(a) if addr.len() == 8 => {
            format!("{}:{port}", std::net::Ipv4Addr::from(a.swap_bytes()))
        }
        _ => format!("[{addr}]:{port}"),
    }
}

fn tcp_state(code: &str) -> &'static str {
    match code {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0B" => "CLOSING",
        _ => "other",
    }
}

/// What each open descriptor of `pid` is (`socket:[…]` kinds folded to their kind).
fn fd_targets(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .map(|t| match t.split_once(":[") {
            Some((kind, _)) => format!("{kind}:[…]"),
            None => t,
        })
        .collect();
    v.sort();
    v
}

/// The descriptors in `after` beyond those in `before`, by what they are.
fn fd_diff(before: &[String], after: &[String]) -> Vec<String> {
    let mut left = before.to_vec();
    after
        .iter()
        .filter(|t| match left.iter().position(|b| b == *t) {
            Some(i) => {
                left.remove(i);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

/// Sockets that misbehave before TLS, round after round until `stop`: plain HTTP on the TLS
/// port, a garbage handshake record, a connection closed before its first byte.
fn misbehave(addr: SocketAddr, stop: &AtomicBool, count: &AtomicU64) {
    let attempts: [&[u8]; 3] = [
        b"GET / HTTP/1.1\r\nHost: soak\r\n\r\n",
        &[22, 3, 1, 0, 4, 1, 0, 0, 0],
        b"",
    ];
    while !stop.load(Ordering::Relaxed) {
        for bytes in attempts {
            let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) else {
                continue;
            };
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            if !bytes.is_empty() {
                let _ = s.write_all(bytes);
                let mut sink = [0u8; 256];
                while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
            }
            count.fetch_add(1, Ordering::Relaxed);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The trend of `points` (per second), if there are enough of them: robust to one-off steps.
fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 5 {
        return None;
    }
    // Theil–Sen: the median of the slopes between every two samples. A leak raises every
    // pair's slope; a one-off step (the allocator mapping a segment, a reload's new state)
    // raises only the pairs that straddle it, which least squares would turn into a trend.
    let step = points.len().div_ceil(600); // at most 600 samples: 180k pairs
    let pts: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    let mut slopes = Vec::with_capacity(pts.len() * pts.len() / 2);
    for (i, (x1, y1)) in pts.iter().enumerate() {
        for (x2, y2) in &pts[i + 1..] {
            if x2 != x1 {
                slopes.push((y2 - y1) / (x2 - x1));
            }
        }
    }
    if slopes.is_empty() {
        return None;
    }
    slopes.sort_by(f64::total_cmp);
    let mid = slopes.len() / 2;
    Some(if slopes.len() % 2 == 1 {
        slopes[mid]
    } else {
        (slopes[mid - 1] + slopes[mid]) / 2.0
    })
}

struct Summary {
    seconds: u64,
    baseline: Sample,
    settled: Sample,
    settle_secs: f64,
    slope_per_min: Option<f64>,
    misbehaved: u64,
    gens: Vec<(&'static str, Option<serde_json::Value>)>,
    actions: Vec<String>,
    failures: Vec<String>,
}

impl Summary {
    fn render(&self) -> String {
        let mut r = String::new();
        let _ = writeln!(
            r,
            "# Soak report\n\n{} s of mixed load on one edge (2 cores), then idle. Plot: `soak.svg`.\n",
            self.seconds
        );
        let _ = writeln!(
            r,
            "Verdict: {}\n",
            if self.failures.is_empty() {
                "PASS".to_owned()
            } else {
                format!("FAIL\n\n- {}", self.failures.join("\n- "))
            }
        );
        let _ = writeln!(r, "## Load\n\n| generator | handshakes ok | failed | messages echoed | errors |\n|---|---:|---:|---:|---|");
        for (what, v) in &self.gens {
            let Some(v) = v else {
                let _ = writeln!(r, "| {what} | – | – | – | no result file |");
                continue;
            };
            let reasons = |key: &str| {
                v[key]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, n)| format!("{k}: {n}"))
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            };
            let mut why = reasons("failure_reasons");
            why.extend(reasons("errors"));
            if let Some(f) = v.get("fanout") {
                why.push(format!(
                    "{} publications, {} deliveries, lost {}",
                    f["publications"], f["deliveries"], f["lost"]
                ));
            }
            let _ = writeln!(
                r,
                "| {what} | {} | {} | {} | {} |",
                v["handshakes_ok"],
                v["handshakes_failed"],
                v["received"],
                why.join(", ").replace('|', "/")
            );
        }
        let _ = writeln!(
            r,
            "\nConnections accepted by the edge: {:.0}; frames received: {:.0}; misbehaving \
             sockets (plain HTTP, garbage record, closed silent): {}.\n",
            self.settled.accepted, self.settled.frames_in, self.misbehaved
        );
        let _ = writeln!(
            r,
            "Operator actions: revoke/unrevoke every 5 s; {}.\n",
            self.actions.join("; ")
        );
        let _ = writeln!(
            r,
            "## Idle before and after ({:.0} s after the load)\n\n| series | before | after |\n|---|---:|---:|",
            self.settle_secs
        );
        let (b, a) = (&self.baseline, &self.settled);
        let _ = writeln!(
            r,
            "| RSS (MiB) | {:.1} | {:.1} |",
            b.rss as f64 / 1048576.0,
            a.rss as f64 / 1048576.0
        );
        for (name, f) in SETTLING {
            let _ = writeln!(r, "| {name} | {} | {} |", f(b), f(a));
        }
        let _ = writeln!(
            r,
            "\nRSS trend over the steady load: {}.",
            self.slope_per_min
                .map_or("not measured".to_owned(), |s| format!(
                    "{:+.0} KiB/min",
                    s / 1024.0
                ))
        );
        r
    }
}

/// Every sample, one line a second, for a closer look than the plot gives.
fn write_csv(path: &Path, samples: &[Sample]) -> Result<()> {
    let mut csv = String::from(
        "t_s,pid,rss_bytes,fds,connections,buffered_bytes,read_buffers,timers,replay_entries,identity_budgets,accepted,frames_in\n",
    );
    for s in samples {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{},{},{},{},{}",
            s.t,
            s.pid,
            s.rss,
            s.fds,
            s.connections,
            s.buffered,
            s.read_buffers,
            s.timers,
            s.replay,
            s.identities,
            s.accepted,
            s.frames_in
        );
    }
    Ok(std::fs::write(path, csv)?)
}

/// RSS, descriptors and connections over time, one panel each; the load's end marked.
fn plot(path: &Path, samples: &[Sample], load_end: f64) -> Result<()> {
    let root = SVGBackend::new(path, (900, 900)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
    let panels = root.split_evenly((3, 1));
    let t_max = samples.last().map_or(1.0, |s| s.t).max(1.0);
    let series: [Series; 3] = [
        ("RSS (MiB)", |s| s.rss as f64 / 1048576.0),
        ("open descriptors", |s| s.fds as f64),
        ("connections", |s| s.connections),
    ];
    for (panel, (label, f)) in panels.iter().zip(series) {
        let y_max = samples.iter().map(f).fold(1.0f64, f64::max) * 1.15;
        let mut chart = ChartBuilder::on(panel)
            .caption(label, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)
            .map_err(|e| anyhow!("{e:?}"))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.t, f(s))),
                RGBColor(0x1f, 0x77, 0xb4).stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e:?}"))?;
        chart
            .draw_series(LineSeries::new(
                [(load_end, 0.0), (load_end, y_max)],
                RGBColor(0xd6, 0x27, 0x28),
            ))
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    root.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp_addresses() {
        assert_eq!(endpoint("0100007F:1F90"), "127.0.0.1:8080");
        assert_eq!(tcp_state("08"), "CLOSE_WAIT");
    }

    #[test]
    fn slope_of_a_line_and_of_noise() {
        let line: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
        assert!((slope(&line).unwrap() - 3.0).abs() < 1e-9);
        let flat: Vec<(f64, f64)> = (0..10)
            .map(|i| (i as f64, if i % 2 == 0 { 5.0 } else { 6.0 }))
            .collect();
        assert!(slope(&flat).unwrap().abs() < 0.1);
        assert_eq!(slope(&line[..3]), None, "too few points");
        // One step of 1.4 MiB two thirds in (what a 120 s soak saw): no trend; a leak of the
        // same size spread over the window: its rate.
        let stepped: Vec<(f64, f64)> = (0..54)
            .map(|i| (i as f64, if i < 36 { 32.3 } else { 33.7 }))
            .collect();
        assert!(slope(&stepped).unwrap().abs() < 1e-9);
        let leak: Vec<(f64, f64)> = (0..54).map(|i| (i as f64, 0.026 * i as f64)).collect();
        assert!((slope(&leak).unwrap() - 0.026).abs() < 1e-9);
    }
}
