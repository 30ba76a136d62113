//! `cargo xtask`: the project's task driver.
//!
//! `cargo xtask test [--layer unit|e2e|vmtest|soak|fuzz|autobahn|package]...` runs every test
//! layer (or the named ones) and prints one summary line per layer,
//! `LAYER: N passed, N failed, N skipped (T s)`,
//! then `total: N passed, N failed, N skipped`; it exits non-zero when anything failed.
//! `cargo xtask autobahn` runs only the Autobahn conformance layer; `cargo xtask vmtest` only
//! the kTLS tests in a QEMU guest (see `vmtest.rs`), or with `--exec CMD` any command there.
//!
//! With `CI=true` a layer that cannot run for lack of a tool counts as failed, not skipped.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod bench;
mod ebpf;
mod edge_proc;
mod flood;
mod fuzz;
mod micro;
mod package;
mod perf;
mod proto_deps;
mod siege;
mod soak;
mod vmtest;

const LAYERS: [&str; 8] = [
    "unit", "e2e", "vmtest", "soak", "siege", "fuzz", "autobahn", "package",
];

/// Autobahn groups 12 and 13 test permessage-deflate (RFC 7692): the edge under test turns it
/// on for its echo path, and they are held to the same rule as groups 1-10.
const COMPRESSION_GROUPS: [&str; 2] = ["12.", "13."];
/// 301 cases in groups 1-10 and 216 in 12-13: a run that reports fewer left some out.
const AUTOBAHN_CASES: u64 = 517;
/// The edge under test: its defaults, with permessage-deflate on for every path (by default
/// only pub/sub routes negotiate it).
const AUTOBAHN_EDGE_CONFIG: &str = "[compression]\nenabled = true\n";
/// kosoku with its groups 12-13 echo check fixed to take a plain text message (see the file).
const KOSOKU_RUN_PY: &str = include_str!("../py/kosoku_run.py");

/// Upper bounds so a hung layer cannot eat CI's time budget.
const AUTOBAHN_RUN_LIMIT: Duration = Duration::from_secs(20 * 60);
const SERVER_START_LIMIT: Duration = Duration::from_secs(60);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => parse_layers(&args[1..]).and_then(|layers| run_tests(&layers)),
        Some("autobahn") => {
            if args.len() > 1 {
                Err(anyhow::anyhow!("`cargo xtask autobahn` takes no arguments"))
            } else {
                run_tests(&["autobahn"])
            }
        }
        Some("vmtest") => vmtest::run(&args[1..]),
        Some("bench") => bench::run(&args[1..]),
        Some("micro") => micro::run(&args[1..]),
        Some("perf") => perf::run(&args[1..]).map(|()| true),
        Some("ebpf") => ebpf::run(&args[1..]),
        Some("flood") => flood::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("soak") => soak::run(&args[1..]),
        Some("siege") => siege::run(&args[1..]),
        Some("package") => package::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            print_usage();
            return ExitCode::SUCCESS;
        }
        _ => {
            print_usage();
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn print_usage() {
    eprintln!(
        "usage:\n  cargo xtask test [--layer unit|e2e|vmtest|soak|siege|fuzz|autobahn|package]...   run the test layers (all by default)\n  \
         cargo xtask autobahn                               run the Autobahn conformance layer\n  \
         cargo xtask vmtest [--exec \"SHELL COMMAND\"]        the kTLS tests (or the command) in a QEMU guest\n  \
         cargo xtask bench [--quick] [--help]               side-by-side benchmarks, report in target/bench/\n  \
         cargo xtask micro [--quick] [--no-criterion] [--no-callgrind]   callgrind Ir + criterion, target/bench/micro.md\n  \
         cargo xtask perf [rate|closed|storm] [--seconds N] profile the edge under load (flame graph, syscalls)\n  \
         cargo xtask ebpf                                   rebuild ebpf/obj/edge.bpf.o + its .sha256 (clang, libbpf-dev)\n  \
         cargo xtask flood [--quick]                        per-IP limiter under a 10k-connection flood, eBPF vs userspace\n  \
         cargo xtask fuzz [--minutes N] [--target NAME]...   libFuzzer on stable, report in target/fuzz/report.md\n  \
         cargo xtask soak [--minutes N]                     mixed load, then idle: nothing grows, everything returns; target/soak/\n  \
         cargo xtask siege [--quick] [--sockets N] [--phase NAME]... [--ci-profile]   5,000 silent/dribbling/stalled sockets vs a client every 100 ms; target/siege/\n  \
         cargo xtask package [--profile NAME] [--no-build] [--fast]   the Debian package, target/debian/wssedge_<version>_amd64.deb\n\n\
         vmtest: this host's kernel has no kTLS, so the `ktls` tests of wssedge (or the --exec command, run\n\
         from the workspace root) run in a QEMU/TCG guest on Debian's 6.1 kernel with the host's / mounted\n\
         read-only. Needs root: installs qemu-system-x86, busybox-static and kmod with apt and caches the\n\
         kernel and the initramfs in target/vmtest/. The guest console is copied to target/vmtest/console.log;\n\
         the job may write to target/vmtest/share/. Time limit: WSSEDGE_VMTEST_TIMEOUT_S (default {} s).",
        vmtest::DEFAULT_TIMEOUT.as_secs()
    );
}

fn parse_layers(args: &[String]) -> Result<Vec<&'static str>> {
    let mut picked = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "--layer" {
            it.next().context("--layer needs a value")?.as_str()
        } else if let Some(v) = a.strip_prefix("--layer=") {
            v
        } else {
            bail!("unknown argument {a:?}");
        };
        for v in value.split(',') {
            let Some(l) = LAYERS.iter().find(|l| **l == v) else {
                bail!("unknown layer {v:?} (layers: {})", LAYERS.join(", "));
            };
            if !picked.contains(l) {
                picked.push(*l);
            }
        }
    }
    if picked.is_empty() {
        picked = LAYERS.to_vec();
    }
    Ok(picked)
}

// ---------------------------------------------------------------------------------------------
// Layers and their summary lines
// ---------------------------------------------------------------------------------------------

#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    passed: u64,
    failed: u64,
    skipped: u64,
}

enum Outcome {
    Ran(Counts),
    /// Could not run (a missing tool, ...). In CI mode this is a failure.
    Skipped(String),
}

struct Env {
    root: PathBuf,
    target: PathBuf,
    cargo: String,
    ci: bool,
}

impl Env {
    fn detect() -> Env {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives in the workspace")
            .to_path_buf();
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(t) if Path::new(&t).is_absolute() => PathBuf::from(t),
            Some(t) => root.join(t),
            None => root.join("target"),
        };
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let ci = std::env::var("CI")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes"));
        Env {
            root,
            target,
            cargo,
            ci,
        }
    }

    fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(&self.root);
        c
    }
}

fn run_tests(layers: &[&str]) -> Result<bool> {
    let env = Env::detect();
    if layers.iter().any(|l| *l == "e2e" || *l == "autobahn") {
        ensure_system_tools();
    }
    let mut lines = Vec::new();
    let mut total = Counts::default();
    for layer in layers {
        let t0 = Instant::now();
        banner(&format!("layer {layer}"));
        let outcome = match *layer {
            "unit" => layer_unit(&env),
            "e2e" => layer_e2e(&env),
            "fuzz" => fuzz::layer(&env),
            "soak" => soak::layer(&env),
            "siege" => siege::layer(&env),
            "vmtest" => vmtest::layer(&env),
            "autobahn" => layer_autobahn(&env),
            "package" => package::layer(&env),
            _ => unreachable!(),
        };
        let secs = t0.elapsed().as_secs_f64();
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                eprintln!("{layer}: error: {e:#}");
                Outcome::Ran(Counts {
                    failed: 1,
                    ..Counts::default()
                })
            }
        };
        let line = match outcome {
            Outcome::Ran(c) => {
                total.passed += c.passed;
                total.failed += c.failed;
                total.skipped += c.skipped;
                format!(
                    "{layer}: {} passed, {} failed, {} skipped ({secs:.1} s)",
                    c.passed, c.failed, c.skipped
                )
            }
            Outcome::Skipped(reason) if env.ci => {
                total.failed += 1;
                format!("{layer}: 0 passed, 1 failed, 0 skipped ({secs:.1} s) [cannot run with CI=true: {reason}]")
            }
            Outcome::Skipped(reason) => {
                total.skipped += 1;
                format!("{layer}: skipped ({reason})")
            }
        };
        lines.push(line);
    }
    banner("summary");
    for l in &lines {
        println!("{l}");
    }
    println!(
        "total: {} passed, {} failed, {} skipped",
        total.passed, total.failed, total.skipped
    );
    Ok(total.failed == 0)
}

/// A layer's length in seconds: `var` when it is set to a whole number, else `default`.
fn seconds_from_env(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn banner(what: &str) {
    eprintln!("\n==== xtask: {what} ====");
}

/// `cargo test ...` with its stdout both shown and parsed.
fn cargo_test_layer(env: &Env, args: &[&str]) -> Result<Outcome> {
    let mut cmd = env.cargo();
    cmd.args(args);
    eprintln!("$ cargo {}", args.join(" "));
    let (status, out) = run_tee(&mut cmd).context("running cargo test")?;
    let mut c = parse_cargo_test(&out);
    if !status.success() && c.failed == 0 {
        // A build failure or a crashed test binary: no "test result" line tells us.
        eprintln!(
            "cargo test exited with {status} without reporting a failed test: counting one failure"
        );
        c.failed = 1;
    }
    Ok(Outcome::Ran(c))
}

fn layer_unit(env: &Env) -> Result<Outcome> {
    let deps_ok = match proto_deps::check(env) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("unit: {e:#}");
            false
        }
    };
    let mut outcome = cargo_test_layer(
        env,
        &[
            "test",
            "--profile",
            "ci",
            "--no-fail-fast",
            "--workspace",
            "--lib",
            "--bins",
        ],
    )?;
    if let Outcome::Ran(c) = &mut outcome {
        if deps_ok {
            c.passed += 1;
        } else {
            c.failed += 1;
        }
    }
    Ok(outcome)
}

fn layer_e2e(env: &Env) -> Result<Outcome> {
    if !env.root.join("tests/e2e/main.rs").is_file() {
        return Ok(Outcome::Skipped("no tests/e2e".into()));
    }
    // The compression tests' independent peer; without it they fail naming what is missing.
    match ensure_python_websockets(env) {
        Ok(python) => std::env::set_var("WSSEDGE_E2E_PYTHON", python),
        Err(e) => eprintln!("xtask: {e:#}"),
    }
    cargo_test_layer(
        env,
        &[
            "test",
            "--profile",
            "ci",
            "-p",
            "wssedge",
            "--features",
            "panic-injection",
            "--test",
            "e2e",
            "--no-fail-fast",
        ],
    )
}

/// Sums cargo's `test result: ok. 3 passed; 0 failed; 1 ignored; ...` lines.
fn parse_cargo_test(out: &str) -> Counts {
    let mut c = Counts::default();
    for line in out.lines() {
        let Some(rest) = line.split_once("test result:").map(|(_, r)| r) else {
            continue;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => c.passed += n,
                "failed" => c.failed += n,
                "ignored" => c.skipped += n,
                _ => {}
            }
        }
    }
    c
}

/// Runs `cmd`, echoing its stdout line by line while keeping a copy (stderr passes through).
fn run_tee(cmd: &mut Command) -> Result<(ExitStatus, String)> {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut reader = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut captured = String::new();
    let mut buf = Vec::new();
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let line = String::from_utf8_lossy(&buf);
        print!("{line}");
        captured.push_str(&line);
    }
    Ok((child.wait()?, captured))
}

// ---------------------------------------------------------------------------------------------
// System tools
// ---------------------------------------------------------------------------------------------

/// Runs `cargo ARGS --message-format=json` (a `--no-run` build) and returns its JSON messages;
/// `what` names the build in errors.
fn cargo_build_json(env: &Env, args: &[&str], what: &str) -> Result<String> {
    let mut all: Vec<&str> = args.to_vec();
    all.push("--message-format=json");
    eprintln!("$ cargo {}", all.join(" "));
    let out = env
        .cargo()
        .args(&all)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("spawn cargo to build {what}"))?;
    if !out.status.success() {
        bail!("building {what} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// socat (the Autobahn TLS shim), openssl (the e2e TLS 1.1 refusal test), redis-server (the
/// fleet tests start their own) and chromium (the e2e browser test of permessage-deflate, run
/// headless; about 110 MB to download): installed with apt when missing and we are root. Each
/// tool's package has its name.
fn ensure_system_tools() {
    let missing: Vec<&str> = ["socat", "openssl", "redis-server", "chromium"]
        .into_iter()
        .filter(|t| which(t).is_none())
        .collect();
    if missing.is_empty() {
        return;
    }
    if !is_root() || which("apt-get").is_none() {
        eprintln!(
            "xtask: missing {} and cannot install it (need root and apt-get)",
            missing.join(", ")
        );
        return;
    }
    banner(&format!("installing {}", missing.join(" ")));
    if let Err(e) = apt_install_quietly(&missing) {
        eprintln!("xtask: apt-get install {} failed: {e:#}", missing.join(" "));
    }
}

/// `apt_install` without starting the services the packages bring (redis-server's, nginx's):
/// they are not ours to run; tests start their own on free ports. A `policy-rc.d` says no for
/// the length of the install.
pub(crate) fn apt_install_quietly(pkgs: &[&str]) -> Result<()> {
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let had_policy = policy.exists();
    if !had_policy {
        let _ = std::fs::write(policy, "#!/bin/sh\nexit 101\n");
        let _ = Command::new("chmod").arg("755").arg(policy).status();
    }
    let installed = apt_install(pkgs);
    if !had_policy {
        let _ = std::fs::remove_file(policy);
    }
    installed
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut updated = false;
    loop {
        let out = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .context("spawn apt-get")?;
        if out.status.success() {
            return Ok(());
        }
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let locked = text.contains("Could not get lock")
            || text.contains("Unable to acquire")
            || text.contains("is held by process");
        if locked && Instant::now() < deadline {
            eprintln!("xtask: dpkg is locked by another process, retrying in 5 s");
            std::thread::sleep(Duration::from_secs(5));
            continue;
        }
        if !locked && !updated {
            updated = true;
            eprintln!("xtask: apt-get install failed, running apt-get update once");
            let st = Command::new("apt-get")
                .args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .context("spawn apt-get update")?;
            if !st.success() && Instant::now() < deadline {
                // Possibly the lists lock; the install retry loop covers it.
                std::thread::sleep(Duration::from_secs(5));
            }
            continue;
        }
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        bail!(
            "apt-get install {}:\n{}",
            pkgs.join(" "),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Processes we start: killed by their own PID (or their own process group) on drop
// ---------------------------------------------------------------------------------------------

struct Guard {
    name: &'static str,
    child: Child,
    /// Spawned as the leader of its own process group (socat forks a child per connection).
    group: bool,
}

impl Guard {
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.exited().is_some() {
            return;
        }
        let pid = self.child.id();
        if self.group {
            // The group id is the leader's PID, which we started.
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(3) {
                if self.exited().is_some() {
                    eprintln!("xtask: stopped {} (pid {pid})", self.name);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("xtask: stopped {} (pid {pid})", self.name);
    }
}

/// The CA of the development certificate the edge serves when given none, in its state
/// directory.
pub(crate) const DEV_CA_FILE: &str = "dev-ca.pem";

/// The address after `prefix` in one of the edge's start-up lines:
/// `listening on wss://ADDR/ (trust …)` or `admin on http://ADDR/`.
pub(crate) fn parse_addr_after(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix(prefix)?;
    let end = rest.find(['/', ' ']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

// ---------------------------------------------------------------------------------------------
// Autobahn (kosoku through a socat TLS shim)
// ---------------------------------------------------------------------------------------------

fn layer_autobahn(env: &Env) -> Result<Outcome> {
    if which("socat").is_none() {
        return Ok(Outcome::Skipped("socat unavailable".into()));
    }
    let Some(python) = which("python3") else {
        return Ok(Outcome::Skipped("python3 unavailable".into()));
    };
    let kosoku = match ensure_kosoku(env, &python) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            return Ok(Outcome::Skipped("kosoku could not be installed".into()));
        }
    };

    eprintln!("$ cargo build --profile ci -p wssedge");
    let st = env
        .cargo()
        .args(["build", "--profile", "ci", "-p", "wssedge"])
        .stdin(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("building wssedge failed");
    }
    let bin = env.target.join("ci/wssedge");

    let work = env.target.join("xtask-autobahn");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let state = work.join("state");
    let config = work.join("wssedge.toml");
    std::fs::write(&config, AUTOBAHN_EDGE_CONFIG)?;
    let runner = work.join("kosoku_run.py");
    std::fs::write(&runner, KOSOKU_RUN_PY)?;

    // The edge under test.
    let log = std::fs::File::create(work.join("wssedge.log"))?;
    let mut server = Guard {
        name: "wssedge",
        child: Command::new(&bin)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .arg("--state-dir")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?,
        group: false,
    };
    let edge = wait_listening(&mut server, &work)?;
    let ca = state.join(DEV_CA_FILE);
    eprintln!(
        "xtask: wssedge (pid {}) on {edge}, CA {}",
        server.child.id(),
        ca.display()
    );

    // ws:// → wss:// shim; nodelay on both sides (without it 9.7.6/9.8.6 take ~44 s).
    let port = free_port()?;
    let shim_log = std::fs::File::create(work.join("socat.log"))?;
    let mut shim_cmd = Command::new("socat");
    shim_cmd
        .arg(format!(
            "TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr,nodelay"
        ))
        .arg(format!("OPENSSL:{edge},cafile={},nodelay", ca.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(shim_log);
    {
        use std::os::unix::process::CommandExt;
        shim_cmd.process_group(0);
    }
    let mut shim = Guard {
        name: "socat shim",
        child: shim_cmd.spawn().context("spawn socat")?,
        group: true,
    };
    wait_port(&mut shim, port)?;
    eprintln!(
        "xtask: socat shim (pid {}) on 127.0.0.1:{port}",
        shim.child.id()
    );

    let out_dir = env.target.join("autobahn");
    let _ = std::fs::remove_dir_all(&out_dir);
    let venv_python = kosoku.with_file_name("python");
    let t0 = Instant::now();
    let mut counts = Counts::default();
    for run in KOSOKU_RUNS {
        let run_out = out_dir.join(run.name);
        let mut k = Command::new(&venv_python);
        k.arg(&runner).args(run.args).arg("-o").arg(&run_out);
        k.arg(format!("127.0.0.1:{port}"));
        let finished = run_kosoku(k, &work, run.name, t0)?;
        let Some(index) = find_index(&run_out) else {
            print_tail(&work.join(format!("kosoku-{}.err", run.name)), 20);
            bail!("kosoku wrote no index.json under {}", run_out.display());
        };
        let report = read_index(&index)?;
        counts.passed += report.counts.passed;
        counts.failed += report.counts.failed;
        if !finished {
            counts.failed += 1;
        }
    }
    let server_died = server.exited();
    drop(shim);
    drop(server);
    if let Some(s) = server_died {
        eprintln!(
            "xtask: wssedge exited during the run ({s}); see {}",
            work.join("wssedge.log").display()
        );
        counts.failed += 1;
    }
    let reported = counts.passed + counts.failed;
    if reported < AUTOBAHN_CASES {
        eprintln!("xtask: kosoku reported {reported} cases, expected {AUTOBAHN_CASES}");
        counts.failed += AUTOBAHN_CASES - reported;
    }
    Ok(Outcome::Ran(counts))
}

/// One kosoku invocation of the Autobahn layer.
struct KosokuRun {
    name: &'static str,
    args: &'static [&'static str],
}

/// Groups 1-10 one case at a time: 6.4.x and 9.x time what they send. The permessage-deflate
/// groups two at a time: 216 cases bound by kosoku's own CPU (about 5.5 min one by one).
const KOSOKU_RUNS: [KosokuRun; 2] = [
    KosokuRun {
        name: "core",
        args: &["-x", "12.*", "-x", "13.*"],
    },
    KosokuRun {
        name: "deflate",
        args: &["--parallelism", "2", "-i", "12.*", "-i", "13.*"],
    },
];

/// Runs one kosoku invocation to its end or to the layer's time limit (counted from `t0`);
/// false when it was stopped.
fn run_kosoku(mut k: Command, work: &Path, name: &str, t0: Instant) -> Result<bool> {
    let log = work.join(format!("kosoku-{name}.log"));
    k.stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(
            work.join(format!("kosoku-{name}.err")),
        )?);
    eprintln!("$ {:?} (log {})", k, log.display());
    let started = Instant::now();
    let mut run = Guard {
        name: "kosoku",
        child: k.spawn().context("spawn kosoku")?,
        group: false,
    };
    let status = loop {
        if let Some(s) = run.exited() {
            break Some(s);
        }
        if t0.elapsed() > AUTOBAHN_RUN_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(run);
    match status {
        None => {
            eprintln!(
                "xtask: kosoku ({name}) did not finish within the layer's {AUTOBAHN_RUN_LIMIT:?}"
            );
            Ok(false)
        }
        Some(s) => {
            eprintln!(
                "xtask: kosoku ({name}) exited with {s} after {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(true)
        }
    }
}

fn ensure_kosoku(env: &Env, python: &Path) -> Result<PathBuf> {
    let venv = ensure_venv(env, python)?;
    let kosoku = venv.join("bin/kosoku");
    if !kosoku.is_file() {
        pip_install(&venv, "kosoku")?;
    }
    if !kosoku.is_file() {
        bail!("pip install kosoku left no {}", kosoku.display());
    }
    Ok(kosoku)
}

/// The Python of the tools venv with `websockets` (an independent RFC 6455/7692
/// implementation the e2e layer checks the edge against), for `WSSEDGE_E2E_PYTHON`.
fn ensure_python_websockets(env: &Env) -> Result<PathBuf> {
    let python = which("python3").context("python3 unavailable")?;
    let venv = ensure_venv(env, &python)?;
    let venv_python = venv.join("bin/python");
    let has = |py: &Path| {
        Command::new(py)
            .args(["-c", "import websockets.asyncio.client"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has(&venv_python) {
        pip_install(&venv, "websockets>=14")?;
    }
    if !has(&venv_python) {
        bail!("pip install websockets did not make `import websockets.asyncio.client` work");
    }
    Ok(venv_python)
}

/// `target/xtask-venv`, made once (Debian's python3-venv installed when missing).
fn ensure_venv(env: &Env, python: &Path) -> Result<PathBuf> {
    let venv = env.target.join("xtask-venv");
    if !venv.join("bin/pip").is_file() {
        let make_venv = || -> Result<bool> {
            eprintln!("$ python3 -m venv --clear {}", venv.display());
            Ok(Command::new(python)
                .args(["-m", "venv", "--clear"])
                .arg(&venv)
                .stdin(Stdio::null())
                .status()?
                .success())
        };
        if !make_venv()? {
            // Debian's system Python ships venv/ensurepip separately.
            if is_root() && python.starts_with("/usr/bin") && which("apt-get").is_some() {
                apt_install(&["python3-venv"])?;
            }
            if !make_venv()? {
                bail!("python3 -m venv failed");
            }
        }
    }
    Ok(venv)
}

fn pip_install(venv: &Path, package: &str) -> Result<()> {
    eprintln!("$ pip install {package}");
    let st = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check", package])
        .stdin(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("pip install {package} failed");
    }
    Ok(())
}

fn wait_listening(server: &mut Guard, work: &Path) -> Result<SocketAddr> {
    let out = server.child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep draining stdout for the server's lifetime so it never blocks on a full pipe.
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + SERVER_START_LIMIT;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                eprintln!("wssedge: {line}");
                if let Some(addr) = parse_addr_after(&line, "listening on wss://") {
                    return Ok(addr);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(100));
                print_tail(&work.join("wssedge.log"), 20);
                bail!("wssedge exited before listening ({:?})", server.exited());
            }
        }
        if let Some(s) = server.exited() {
            print_tail(&work.join("wssedge.log"), 20);
            bail!("wssedge exited before listening ({s})");
        }
        if Instant::now() > deadline {
            print_tail(&work.join("wssedge.log"), 20);
            bail!("wssedge printed no `listening on` line within {SERVER_START_LIMIT:?}");
        }
    }
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

fn wait_port(shim: &mut Guard, port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        if let Some(s) = shim.exited() {
            bail!("socat exited at start ({s})");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("socat is not listening on {addr} after 10 s")
}

fn print_tail(path: &Path, n: usize) {
    let mut s = String::new();
    if std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut s))
        .is_ok()
    {
        let lines: Vec<&str> = s.lines().collect();
        eprintln!("---- last lines of {} ----", path.display());
        for l in &lines[lines.len().saturating_sub(n)..] {
            eprintln!("{l}");
        }
    }
}

fn find_index(dir: &Path) -> Option<PathBuf> {
    let direct = dir.join("index.json");
    if direct.is_file() {
        return Some(direct);
    }
    // One or two levels down (e.g. reports/servers/index.json).
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((d, depth)) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() && depth < 3 {
                stack.push((p, depth + 1));
            } else if p.file_name() == Some(OsStr::new("index.json")) {
                return Some(p);
            }
        }
    }
    None
}

const VERDICTS: [&str; 4] = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED"];

struct AutobahnReport {
    counts: Counts,
}

/// A case passes only if both `behavior` and `behaviorClose` are OK or INFORMATIONAL.
fn case_verdict(behavior: &str, close: &str) -> &'static str {
    let rank = |v: &str| match v {
        "OK" => 0,
        "INFORMATIONAL" => 1,
        "NON-STRICT" => 2,
        _ => 3, // FAILED, UNIMPLEMENTED, anything unknown
    };
    VERDICTS_BY_RANK[rank(behavior).max(rank(close))]
}
const VERDICTS_BY_RANK: [&str; 4] = ["OK", "INFORMATIONAL", "NON-STRICT", "FAILED"];

fn case_key(id: &str) -> Vec<u64> {
    id.split('.')
        .map(|p| p.parse().unwrap_or(u64::MAX))
        .collect()
}

fn read_index(index: &Path) -> Result<AutobahnReport> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("read {}", index.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parse {}", index.display()))?;
    let agents = json
        .as_object()
        .context("index.json: expected an object of agents")?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut per_verdict: BTreeMap<&str, u64> = VERDICTS.iter().map(|v| (*v, 0)).collect();
    let mut failing = Vec::new();
    let mut counts = Counts::default();
    let (mut compression_cases, mut compression_passed) = (0u64, 0u64);
    for cases in agents.values() {
        let cases = cases
            .as_object()
            .context("index.json: expected an object of cases")?;
        let mut ids: Vec<&String> = cases.keys().collect();
        ids.sort_by_key(|id| case_key(id));
        for id in ids {
            let case = &cases[id.as_str()];
            let behavior = case
                .get("behavior")
                .and_then(|v| v.as_str())
                .unwrap_or("MISSING");
            let close = case
                .get("behaviorClose")
                .and_then(|v| v.as_str())
                .unwrap_or("MISSING");
            let verdict = case_verdict(behavior, close);
            *per_verdict.entry(verdict).or_default() += 1;
            let passed = verdict == "OK" || verdict == "INFORMATIONAL";
            if COMPRESSION_GROUPS.iter().any(|g| id.starts_with(g)) {
                compression_cases += 1;
                compression_passed += u64::from(passed);
            }
            if passed {
                counts.passed += 1;
            } else {
                counts.failed += 1;
                let desc = case
                    .get("reportfile")
                    .and_then(|f| f.as_str())
                    .and_then(|f| std::fs::read_to_string(dir.join(f)).ok())
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .and_then(|r| {
                        r.get("description")
                            .and_then(|d| d.as_str())
                            .map(clean_description)
                    })
                    .unwrap_or_default();
                failing.push(format!("  {id} behavior={behavior} close={close}: {desc}"));
            }
        }
    }
    let mut line = String::from("autobahn verdicts:");
    for v in VERDICTS {
        let _ = write!(line, " {v} {}", per_verdict.get(v).copied().unwrap_or(0));
        if v != "FAILED" {
            line.push(',');
        }
    }
    eprintln!("{line} (from {})", index.display());
    if compression_cases > 0 {
        eprintln!(
            "autobahn permessage-deflate groups 12-13: {compression_passed} of {compression_cases} \
             OK or INFORMATIONAL in both behavior and behaviorClose"
        );
    }
    if !failing.is_empty() {
        eprintln!("failing cases:");
        for f in &failing {
            eprintln!("{f}");
        }
    }
    Ok(AutobahnReport { counts })
}

/// Case descriptions are HTML snippets; keep them to one readable line.
fn clean_description(d: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for ch in d.chars() {
        match ch {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(if c.is_whitespace() { ' ' } else { c }),
            _ => {}
        }
    }
    let out = out.split_whitespace().collect::<Vec<_>>().join(" ");
    if out.chars().count() > 200 {
        out.chars().take(200).collect::<String>() + "…"
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cargo_test_summaries() {
        let out = "running 3 tests\n\
            test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s\n\
            test result: FAILED. 5 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n";
        assert_eq!(
            parse_cargo_test(out),
            Counts {
                passed: 8,
                failed: 2,
                skipped: 1
            }
        );
        assert_eq!(parse_cargo_test("nothing here"), Counts::default());
    }

    #[test]
    fn verdicts_take_the_worse_of_both() {
        assert_eq!(case_verdict("OK", "OK"), "OK");
        assert_eq!(case_verdict("OK", "INFORMATIONAL"), "INFORMATIONAL");
        assert_eq!(case_verdict("NON-STRICT", "OK"), "NON-STRICT");
        assert_eq!(case_verdict("OK", "FAILED"), "FAILED");
        assert_eq!(case_verdict("UNIMPLEMENTED", "OK"), "FAILED");
        // A permessage-deflate case the edge does not negotiate fails like any other.
        assert_eq!(case_verdict("UNIMPLEMENTED", "FAILED"), "FAILED");
    }

    #[test]
    fn reads_an_index() {
        let dir = std::env::temp_dir().join(format!("xtask-index-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("a_2_1.json"),
            r#"{"description": "<p>Send a <b>ping</b>\n</p>"}"#,
        )
        .unwrap();
        let idx = dir.join("index.json");
        std::fs::write(
            &idx,
            r#"{"wssedge": {
                "1.1.1": {"behavior": "OK", "behaviorClose": "OK"},
                "2.1": {"behavior": "FAILED", "behaviorClose": "OK", "reportfile": "a_2_1.json"},
                "6.4.3": {"behavior": "NON-STRICT", "behaviorClose": "OK"},
                "7.1.6": {"behavior": "INFORMATIONAL", "behaviorClose": "INFORMATIONAL"},
                "12.1.1": {"behavior": "OK", "behaviorClose": "OK"},
                "13.7.18": {"behavior": "UNIMPLEMENTED", "behaviorClose": "OK"}
            }}"#,
        )
        .unwrap();
        let r = read_index(&idx).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            r.counts,
            Counts {
                passed: 3,
                failed: 3,
                skipped: 0
            }
        );
    }

    #[test]
    fn parses_the_listening_line() {
        let listening = |line| parse_addr_after(line, "listening on wss://");
        let a = listening("listening on wss://127.0.0.1:4433/ (trust /tmp/s/dev-ca.pem)").unwrap();
        assert_eq!(a.port(), 4433);
        assert_eq!(
            listening("listening on wss://127.0.0.1:1/").unwrap().port(),
            1
        );
        assert!(listening("admin on http://127.0.0.1:1/").is_none());
        assert_eq!(
            clean_description("<p>Send a <b>ping</b>\n</p>"),
            "Send a ping"
        );
    }

    #[test]
    fn layer_arguments() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_layers(&s(&[])).unwrap(), LAYERS.to_vec());
        assert_eq!(parse_layers(&s(&["--layer", "e2e"])).unwrap(), vec!["e2e"]);
        assert_eq!(
            parse_layers(&s(&["--layer=unit,autobahn"])).unwrap(),
            vec!["unit", "autobahn"]
        );
        assert_eq!(
            parse_layers(&s(&["--layer", "vmtest"])).unwrap(),
            vec!["vmtest"]
        );
        assert_eq!(
            parse_layers(&s(&["--layer=e2e,vmtest", "--layer", "vmtest"])).unwrap(),
            vec!["e2e", "vmtest"]
        );
        assert_eq!(
            LAYERS[1..3],
            ["e2e", "vmtest"],
            "vmtest runs right after e2e"
        );
        assert!(parse_layers(&s(&["--layer", "nope"])).is_err());
    }
}
