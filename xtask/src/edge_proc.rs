//! A wssedge process started by xtask (the flood and the soak): its addresses from the lines it
//! prints, its `/metrics`, and the value of one series there.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{parse_addr_after, which, Guard, DEV_CA_FILE};

const START_LIMIT: Duration = Duration::from_secs(30);

pub(crate) struct Edge {
    pub guard: Guard,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub ca: PathBuf,
}

/// Starts `wssedge serve` on `cfg` with ephemeral listen and admin ports, its cores on `cpus`
/// (the process pinned there too when taskset exists), and waits for both addresses.
pub(crate) fn start_edge(
    bin: &Path,
    cfg: &Path,
    state: &Path,
    log: &Path,
    cpus: &[usize],
) -> Result<Edge> {
    let cpu_list = cpus
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut c = if which("taskset").is_some() {
        let mut c = Command::new("taskset");
        c.arg("-c").arg(&cpu_list).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    c.arg("serve")
        .arg("--config")
        .arg(cfg)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--state-dir")
        .arg(state)
        .args(["--cpus", &cpu_list])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log)?);
    let mut child = c
        .spawn()
        .with_context(|| format!("spawn {}", bin.display()))?;
    let out = child.stdout.take().context("piped stdout")?;
    let mut guard = Guard {
        name: "wssedge",
        child,
        group: false,
    };
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            // Keep draining after the receiver is gone so the edge never blocks on stdout.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + START_LIMIT;
    let (mut addr, mut admin) = (None, None);
    while addr.is_none() || admin.is_none() {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(a) = parse_addr_after(&line, "listening on wss://") {
                    addr = Some(a);
                }
                if let Some(a) = parse_addr_after(&line, "admin on http://") {
                    admin = Some(a);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "wssedge exited at start ({:?}): {}",
                    guard.exited(),
                    last_lines(log, 3)
                );
            }
        }
        if let Some(s) = guard.exited() {
            bail!("wssedge exited at start ({s}): {}", last_lines(log, 3));
        }
        if Instant::now() > deadline {
            bail!("wssedge did not print its addresses within {START_LIMIT:?}");
        }
    }
    Ok(Edge {
        guard,
        addr: addr.context("listen address")?,
        admin: admin.context("admin address")?,
        ca: state.join(DEV_CA_FILE),
    })
}

pub(crate) fn last_lines(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

pub(crate) fn scrape(admin: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.set_write_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("/metrics: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// The value of `name{labels}` (the given labels a subset of the sample's), summed if several
/// samples match; None if none does.
pub(crate) fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, lab) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if n != name {
            continue;
        }
        let have: Vec<(&str, &str)> = lab
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|l| have.contains(l)) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}
