//! `cargo xtask perf [SCENARIO]`: the edge under a benchmark load, profiled.
//!
//! Starts a release wssedge pinned to CPU 0 and `wssbench` pinned to CPU 1 running the
//! scenario, then points `perf-scripts/profile.sh` (cpu-clock sampling + flame graph) and
//! `perf-scripts/syscalls.sh` (syscall and io_uring counts) at the edge while the load runs.
//! Output in `target/perf/<scenario>/`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{apt_install, is_root, wait_listening, which, Env, Guard, DEV_CA_FILE};

/// A load the edge is profiled under.
struct Scenario {
    name: &'static str,
    what: &'static str,
    /// wssbench's mode and arguments (the URL, CA, CPU and duration are added).
    args: &'static [&'static str],
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        name: "rate",
        what: "open loop, 50 connections, 64 B, 10,000 msg/s",
        args: &[
            "open",
            "--rate",
            "10000",
            "--connections",
            "50",
            "--payload",
            "64",
        ],
    },
    Scenario {
        name: "closed",
        what: "closed loop, 50 connections, 64 B, 16 in flight each",
        args: &[
            "closed",
            "--depth",
            "16",
            "--connections",
            "50",
            "--payload",
            "64",
        ],
    },
    Scenario {
        name: "storm",
        what: "new TLS + WebSocket connections, 300 per second",
        args: &["storm", "--rate", "300"],
    },
];

const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";

fn usage() -> String {
    let names: Vec<String> = SCENARIOS
        .iter()
        .map(|s| format!("  {:<8} {}", s.name, s.what))
        .collect();
    format!(
        "usage: cargo xtask perf [SCENARIO] [--seconds N]\nscenarios (default rate):\n{}",
        names.join("\n")
    )
}

pub fn run(args: &[String]) -> Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{}", usage());
        return Ok(());
    }
    let mut name = "rate".to_string();
    let mut seconds: u64 = 10;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|s| (4..=120).contains(s))
                    .context("--seconds takes 4 to 120")?
            }
            other if !other.starts_with('-') => name = other.to_string(),
            other => bail!("unknown option {other}\n{}", usage()),
        }
    }
    let Some(scenario) = SCENARIOS.iter().find(|s| s.name == name) else {
        bail!("unknown scenario {name}\n{}", usage());
    };
    let env = Env::detect();
    ensure_tools()?;

    eprintln!("xtask perf: building release wssedge and wssbench");
    let st = env
        .cargo()
        .args(["build", "--release", "-p", "wssedge", "-p", "wssbench"])
        .status()
        .context("spawn cargo build")?;
    if !st.success() {
        bail!("cargo build failed");
    }
    let out = env.target.join("perf").join(scenario.name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;

    let log = std::fs::File::create(out.join("wssedge.log"))?;
    let wssedge = env.target.join("release/wssedge");
    let mut server = Guard {
        name: "wssedge",
        child: Command::new(&wssedge)
            .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--cpus", SERVER_CPU, "--state-dir"])
            .arg(out.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", wssedge.display()))?,
        group: false,
    };
    let addr = wait_listening(&mut server, &out)?;
    let ca = out.join("state").join(DEV_CA_FILE);
    let pid = server.child.id().to_string();

    // The load outlasts the start-up pause, the profile and both syscall windows (strace,
    // then the io_uring tracepoints), with a margin.
    let syscall_seconds = 3;
    let load_seconds = 2 + seconds + 2 * syscall_seconds + 4;
    let wssbench = env.target.join("release/wssbench");
    let load_log = std::fs::File::create(out.join("wssbench.log"))?;
    let mut load = Guard {
        name: "wssbench",
        child: Command::new("taskset")
            .args(["-c", CLIENT_CPU])
            .arg(&wssbench)
            .args(scenario.args)
            .arg("--url")
            .arg(format!("wss://{addr}/"))
            .arg("--ca")
            .arg(&ca)
            .args(["--cpus", CLIENT_CPU, "--warmup", "1", "--duration"])
            .arg(load_seconds.to_string())
            .arg("--json")
            .arg(out.join("wssbench.json"))
            .stdin(Stdio::null())
            .stdout(load_log.try_clone()?)
            .stderr(load_log)
            .spawn()
            .with_context(|| format!("spawn {}", wssbench.display()))?,
        group: false,
    };
    std::thread::sleep(Duration::from_secs(2));
    if let Some(s) = load.exited() {
        bail!(
            "wssbench ended before the profile ({s}); see {}",
            out.join("wssbench.log").display()
        );
    }
    eprintln!(
        "xtask perf: profiling wssedge (pid {pid}) for {seconds} s under `{}`",
        scenario.what
    );
    let scripts = env.root.join("perf-scripts");
    run_script(
        &scripts.join("profile.sh"),
        &[&pid, &seconds.to_string(), &out.display().to_string()],
    )?;
    run_script(
        &scripts.join("syscalls.sh"),
        &[
            &pid,
            &syscall_seconds.to_string(),
            &out.join("syscalls.txt").display().to_string(),
        ],
    )?;
    // Let the generator finish its run so its JSON (rate achieved, latency) is complete.
    let wait = Duration::from_secs(load_seconds + 15);
    let t0 = std::time::Instant::now();
    while load.exited().is_none() && t0.elapsed() < wait {
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(load);
    drop(server);

    println!("\n== top symbols (cpu-clock samples) — {}", scenario.what);
    if let Ok(top) = std::fs::read_to_string(out.join("top.txt")) {
        for line in top.lines().take(25) {
            println!("{}", line.trim_end());
        }
    }
    println!("\nflame graph:   {}", out.join("flamegraph.svg").display());
    println!("syscalls:      {}", out.join("syscalls.txt").display());
    println!("load result:   {}", out.join("wssbench.json").display());
    Ok(())
}

fn run_script(script: &Path, args: &[&str]) -> Result<()> {
    let st = Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("run {}", script.display()))?;
    if !st.success() {
        bail!("{} failed ({st})", script.display());
    }
    Ok(())
}

/// perf, strace and taskset from Debian; inferno (flame graphs) from crates.io.
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = [("perf", "linux-perf"), ("strace", "strace")]
        .into_iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, pkg)| pkg)
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!("missing {}: install them (needs root)", missing.join(" "));
        }
        apt_install(&missing)?;
    }
    if which("inferno-flamegraph").is_none() {
        eprintln!("xtask perf: installing inferno for flame graphs (cargo install inferno)");
        let st = Command::new("cargo")
            .args(["install", "--locked", "inferno"])
            .status()
            .context("spawn cargo install inferno")?;
        if !st.success() {
            eprintln!("xtask perf: no inferno: the profile is kept, without a flame graph");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scenarios_are_named_once_and_listed_in_the_usage() {
        let text = usage();
        for (i, s) in SCENARIOS.iter().enumerate() {
            assert!(text.contains(s.name));
            assert!(SCENARIOS[..i].iter().all(|o| o.name != s.name));
            assert!(["open", "closed", "storm"].contains(&s.args[0]));
        }
    }
}
