//! The fleet scenario (`--scenarios fleet`): one Redis (Debian's `redis-server`, started here
//! on a free port without persistence) and two wssedge nodes on it. The publisher is on node
//! A; subscribers are on A (`wssedge-fleet-same`) or on B (`wssedge-fleet-cross`). The
//! single-node pub/sub peer (`wssedge-pubsub`, no Redis) runs the same cells as the baseline.
//! Nodes' CPU is the server CPU; Redis' CPU is counted apart (per publication).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Publications `redis-server` must be subscribed by `nodes` before a cell starts.
const READY_WAIT: Duration = Duration::from_secs(20);

/// The arguments of a `redis-server` for a bench: loopback, `port`, nothing on disk.
pub fn redis_args(port: u16, dir: &std::path::Path) -> Vec<String> {
    vec![
        "--port".into(),
        port.to_string(),
        "--bind".into(),
        "127.0.0.1".into(),
        "--save".into(),
        String::new(),
        "--appendonly".into(),
        "no".into(),
        "--dir".into(),
        dir.display().to_string(),
    ]
}

/// One node's configuration: the pub/sub set-up of `wssedge-pubsub` and `[fleet]`.
pub fn node_conf(secret: &std::path::Path, redis_port: u16, node: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\ncores = 1\n\n\
         [limits]\nmax_connections = 200000\n\n\
         [jwt]\nhs_secret_file = \"{}\"\n\n\
         [pubsub]\nhistory = 1000\n\n\
         [[routes]]\nprefix = \"/md\"\npubsub = true\n\n\
         [fleet]\nredis = \"redis://127.0.0.1:{redis_port}/0\"\nnode = \"{node}\"\n",
        secret.display()
    )
}

/// The upgrade cells' node: echo on every path, `[jwt]`, `[fleet]`; `checks`: single-use
/// tokens and `per_identity_connections` (both asked of Redis at every upgrade).
pub fn upgrade_node_conf(secret: &std::path::Path, redis_port: u16, checks: bool) -> String {
    let (jwt_extra, limits) = if checks {
        (
            "single_use = true\n",
            "per_identity_connections = 1000000\n",
        )
    } else {
        ("", "")
    };
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\ncores = 1\n\n\
         [limits]\nmax_connections = 200000\n{limits}\n\
         [jwt]\nhs_secret_file = \"{}\"\n{jwt_extra}\n\
         [fleet]\nredis = \"redis://127.0.0.1:{redis_port}/0\"\nnode = \"a\"\n",
        secret.display()
    )
}

/// Sends one RESP command and returns the raw reply (a bench helper, not a client).
fn command(port: u16, args: &[&str]) -> Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Waits until `nodes` nodes subscribe to the fleet's publication channel (every node is
/// linked and will deliver): `PUBSUB NUMSUB`.
pub fn wait_subscribed(port: u16, nodes: usize) -> Result<()> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let reply = command(port, &["PUBSUB", "NUMSUB", "wssedge:publications"]);
        if let Ok(r) = &reply {
            // *2\r\n$20\r\nwssedge:publications\r\n:N\r\n
            let n = r
                .rsplit(':')
                .next()
                .and_then(|t| t.trim().parse::<usize>().ok());
            if n.is_some_and(|n| n >= nodes) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the nodes did not subscribe to Redis within {READY_WAIT:?}: {reply:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until something listens on `addr`.
pub fn wait_listening(addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + READY_WAIT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The redis-server binary, installed (without starting its service) when missing.
pub fn ensure_redis() -> std::result::Result<std::path::PathBuf, String> {
    if let Some(p) = crate::which("redis-server") {
        return Ok(p);
    }
    if !crate::is_root() || crate::which("apt-get").is_none() {
        return Err("redis-server is not installed and cannot be (need root and apt-get)".into());
    }
    crate::banner("installing redis-server");
    crate::apt_install_quietly(&["redis-server"])
        .map_err(|e| format!("apt-get install redis-server: {e:#}"))?;
    crate::which("redis-server")
        .context("redis-server installed but not found")
        .map_err(|e| e.to_string())
}
