//! `wssbench siege`: the attacker's side of a slow-connection siege. It holds `--connections`
//! sockets open against the server for `--duration` seconds, each in one of four ways, and
//! opens a socket again `--reopen-after` seconds after the server closed it (a real slowloris
//! keeps its place in the queue):
//! - `silent`: TCP connected, never a byte;
//! - `stall`: a whole TLS ClientHello, then nothing (the server has done its half of the key
//!   exchange and waits for a Finished that never comes);
//! - `dribble`: TLS completed, then an upgrade request one byte every `--byte-every` seconds;
//! - `slow-frame`: upgraded, then one binary frame of `--frame-mib` MiB whose payload comes at
//!   `--send-kib-per-s` (the server holds it as it arrives, until its buffer budget says no).
//!
//! The sockets are opened evenly over `--warmup` seconds. It measures only what it did (sockets
//! opened, how many the server closed, the most held at once); the legitimate client's
//! success and latency are a `storm` run beside it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::{self, Stream, Target};
use crate::ws;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SiegeKind {
    Silent,
    Stall,
    Dribble,
    SlowFrame,
}

impl SiegeKind {
    fn name(self) -> &'static str {
        match self {
            SiegeKind::Silent => "silent",
            SiegeKind::Stall => "stall",
            SiegeKind::Dribble => "dribble",
            SiegeKind::SlowFrame => "slow-frame",
        }
    }
}

/// `slow-frame`'s frame, as given on the command line.
pub struct FrameSpec {
    pub bytes: u64,
    pub bytes_per_s: u64,
}

pub struct Plan {
    pub kind: SiegeKind,
    pub sockets: usize,
    pub threads: usize,
    pub cpus: Option<Vec<usize>>,
    pub ramp: Duration,
    pub hold: Duration,
    pub reopen_after: Duration,
    pub byte_every: Duration,
    /// `slow-frame`: the frame's length and how fast its payload is sent.
    pub frame_bytes: u64,
    pub send_bytes_per_s: u64,
}

/// What the attacker did, over all threads.
#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    /// Connected (and, for `dribble`, through TLS): a socket the server holds.
    opened: AtomicU64,
    open_failed: AtomicU64,
    /// Closed by the server (EOF or reset) before the siege ended.
    closed_by_server: AtomicU64,
    held: AtomicU64,
    peak_held: AtomicU64,
    /// Bytes of upgrade request dribbled.
    dribbled: AtomicU64,
    /// `slow-frame`: payload bytes sent, and the close codes the server sent.
    frame_bytes_sent: AtomicU64,
    close_codes: std::sync::Mutex<std::collections::BTreeMap<u16, u64>>,
}

impl Counters {
    fn get(a: &AtomicU64) -> u64 {
        a.load(Ordering::Relaxed)
    }
}

/// Counts one held socket for as long as it lives.
struct Held<'a>(&'a Counters);

impl<'a> Held<'a> {
    fn new(c: &'a Counters) -> Self {
        let now = c.held.fetch_add(1, Ordering::Relaxed) + 1;
        c.peak_held.fetch_max(now, Ordering::Relaxed);
        Held(c)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the siege and prints (and writes, with `json`) what it did. Returns the exit code.
pub fn run(plan: Plan, target: Target, json_out: Option<&std::path::Path>) -> anyhow::Result<i32> {
    if plan.kind != SiegeKind::Silent && target.tls.is_none() {
        anyhow::bail!("siege --kind {} needs a TLS target", plan.kind.name());
    }
    if plan.frame_bytes < 2 || plan.send_bytes_per_s == 0 {
        anyhow::bail!("--frame-mib and --send-kib-per-s must be positive");
    }
    crate::raise_nofile(plan.sockets as u64 + 1024);
    let hello = match plan.kind {
        SiegeKind::Stall => Arc::new(client_hello(&target)?),
        _ => Arc::new(Vec::new()),
    };
    let counters = Arc::new(Counters::default());
    let target = Arc::new(target);
    let plan = Arc::new(plan);
    let base = Instant::now() + Duration::from_millis(5);
    let end = base + plan.ramp + plan.hold;
    let cpu0 = net::cpu_now();
    let mut threads = Vec::new();
    for k in 0..plan.threads {
        let (plan, target, counters, hello) = (
            plan.clone(),
            target.clone(),
            counters.clone(),
            hello.clone(),
        );
        threads.push(
            std::thread::Builder::new()
                .name(format!("siege-{k}"))
                .spawn(move || thread_main(k, plan, target, counters, hello, base, end))?,
        );
    }
    for t in threads {
        let _ = t.join();
    }
    let cpu = net::cpu_now() - cpu0;
    let c = &counters;
    let g = Counters::get;
    println!(
        "siege {} sockets={} from {} addresses: attempts={} opened={} open_failed={} closed_by_server={} peak_held={} dribbled={}B frame_bytes={} close_codes={:?}; client cpu {cpu:.2}s",
        plan.kind.name(),
        plan.sockets,
        target.source_ips.len().max(1),
        g(&c.attempts),
        g(&c.opened),
        g(&c.open_failed),
        g(&c.closed_by_server),
        g(&c.peak_held),
        g(&c.dribbled),
        g(&c.frame_bytes_sent),
        c.close_codes.lock().unwrap_or_else(|e| e.into_inner()),
    );
    if let Some(path) = json_out {
        let v = json!({
            "mode": "siege",
            "kind": plan.kind.name(),
            "sockets": plan.sockets,
            "source_addresses": target.source_ips.len().max(1),
            "ramp_s": plan.ramp.as_secs_f64(),
            "hold_s": plan.hold.as_secs_f64(),
            "reopen_after_s": plan.reopen_after.as_secs_f64(),
            "attempts": g(&c.attempts),
            "opened": g(&c.opened),
            "open_failed": g(&c.open_failed),
            "closed_by_server": g(&c.closed_by_server),
            "peak_held": g(&c.peak_held),
            "dribbled_bytes": g(&c.dribbled),
            "frame_bytes_sent": g(&c.frame_bytes_sent),
            "close_codes": *c.close_codes.lock().unwrap_or_else(|e| e.into_inner()),
            "client_cpu_s": cpu,
        });
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(0)
}

/// One ClientHello as the target's TLS client would send it, sent by every `stall` socket.
fn client_hello(t: &Target) -> anyhow::Result<Vec<u8>> {
    let cfg = t.tls.as_ref().context("a TLS target")?.config().clone();
    let mut client = rustls::ClientConnection::new(cfg, t.server_name.clone())?;
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello)?;
    }
    Ok(hello)
}

fn thread_main(
    k: usize,
    plan: Arc<Plan>,
    target: Arc<Target>,
    counters: Arc<Counters>,
    hello: Arc<Vec<u8>>,
    base: Instant,
    end: Instant,
) {
    if let Some(cpus) = &plan.cpus {
        let id = cpus[k % cpus.len()];
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            eprintln!("wssbench: siege thread {k}: could not pin to CPU {id}");
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wssbench: runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let mut slots = Vec::new();
        for idx in (k..plan.sockets).step_by(plan.threads) {
            let at = base + plan.ramp.mul_f64(idx as f64 / plan.sockets.max(1) as f64);
            let (plan, target, counters, hello) = (
                plan.clone(),
                target.clone(),
                counters.clone(),
                hello.clone(),
            );
            slots.push(tokio::task::spawn_local(async move {
                tokio::time::sleep_until(at.into()).await;
                while Instant::now() < end {
                    counters.attempts.fetch_add(1, Ordering::Relaxed);
                    let one = hold_one(&plan, &target, idx, &hello, &counters);
                    match tokio::time::timeout_at(end.into(), one).await {
                        Err(_) => break, // the siege is over: dropping the socket closes it
                        Ok(Err(_)) => {
                            counters.open_failed.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Ok(())) => {
                            counters.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    let again = Instant::now() + plan.reopen_after;
                    tokio::time::sleep_until(again.min(end).into()).await;
                }
            }));
        }
        for s in slots {
            let _ = s.await;
        }
    });
}

/// Opens one socket and holds it the `kind`'s way until the server closes it (Ok) or it could
/// not be opened (Err).
async fn hold_one(
    plan: &Plan,
    t: &Target,
    idx: usize,
    hello: &[u8],
    c: &Counters,
) -> Result<(), String> {
    if plan.kind == SiegeKind::SlowFrame {
        return slow_frame(plan, t, idx, c).await;
    }
    let mut tcp = net::tcp_connect(t, idx).await?;
    let mut sink = [0u8; 4096];
    match plan.kind {
        SiegeKind::Silent => {
            c.opened.fetch_add(1, Ordering::Relaxed);
            let _held = Held::new(c);
            until_closed(&mut tcp, &mut sink).await;
        }
        SiegeKind::Stall => {
            tcp.write_all(hello)
                .await
                .map_err(|e| format!("hello: {:?}", e.kind()))?;
            c.opened.fetch_add(1, Ordering::Relaxed);
            let _held = Held::new(c);
            // The server's flight is read and thrown away: it waits for our Finished.
            until_closed(&mut tcp, &mut sink).await;
        }
        SiegeKind::Dribble => {
            let tls = t.tls.as_ref().ok_or("no TLS")?;
            let s = tls
                .connect(t.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("tls: {:?}", e.kind()))?;
            let mut s = Stream::tls(s, 0);
            c.opened.fetch_add(1, Ordering::Relaxed);
            let _held = Held::new(c);
            let mut rng = ws::Rng::new(idx as u64);
            let req = ws::upgrade_request(&t.host_header, &t.path, &ws::new_key(&mut rng), "");
            let mut next = 0;
            loop {
                tokio::select! {
                    r = s.read(&mut sink) => match r {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {} // a refusal's body: wait for the close
                    },
                    _ = tokio::time::sleep(plan.byte_every) => {
                        // The last byte is never sent: the request stays incomplete.
                        if next + 1 < req.len() {
                            if s.write_all(&req[next..next + 1]).await.is_err()
                                || s.flush().await.is_err()
                            {
                                break;
                            }
                            next += 1;
                            c.dribbled.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        SiegeKind::SlowFrame => {} // above
    }
    Ok(())
}

/// Upgrades, then sends one binary frame of `plan.frame_bytes` at `plan.send_bytes_per_s`
/// (eight chunks a second) until the server closes; its close code is counted.
async fn slow_frame(plan: &Plan, t: &Target, idx: usize, c: &Counters) -> Result<(), String> {
    let mut rng = ws::Rng::new(idx as u64 ^ 0x5eed);
    let (mut conn, _) = net::connect(t, idx, &mut rng, 4096).await?;
    c.opened.fetch_add(1, Ordering::Relaxed);
    let _held = Held::new(c);
    let mut head = vec![0x82, 0x80 | 127]; // FIN, binary; masked, 64-bit length
    head.extend_from_slice(&plan.frame_bytes.to_be_bytes());
    head.extend_from_slice(&conn.mask);
    let chunk = vec![0u8; (plan.send_bytes_per_s / 8).max(1) as usize];
    conn.s
        .write_all(&head)
        .await
        .map_err(|e| format!("frame head: {:?}", e.kind()))?;
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(125));
    // A write the server held up is not made up for with a burst: the rate stays the rate.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let code = loop {
        tokio::select! {
            r = conn.s.read(conn.rd.spare()) => match r {
                Ok(0) | Err(_) => break None,
                Ok(n) => {
                    conn.rd.filled(n);
                    // Every event of the read: a close behind a ping is still the close.
                    let mut closed = None;
                    loop {
                        match conn.rd.next_event() {
                            Ok(Some(ws::Ev::Close(code))) => {
                                closed = Some(Some(code.unwrap_or(1005)));
                                break;
                            }
                            Ok(Some(_)) => {}
                            Ok(None) => break,
                            Err(_) => {
                                closed = Some(None);
                                break;
                            }
                        }
                    }
                    if let Some(code) = closed {
                        break code;
                    }
                }
            },
            _ = tick.tick() => {
                // Never the last byte: the frame stays incomplete.
                let left = plan.frame_bytes - 1 - sent;
                if left == 0 {
                    continue;
                }
                let out = &chunk[..chunk.len().min(left as usize)];
                if conn.s.write_all(out).await.is_err() || conn.s.flush().await.is_err() {
                    break None;
                }
                sent += out.len() as u64;
                c.frame_bytes_sent.fetch_add(out.len() as u64, Ordering::Relaxed);
            }
        }
    };
    let code = code.unwrap_or(1006);
    let mut codes = c.close_codes.lock().unwrap_or_else(|e| e.into_inner());
    *codes.entry(code).or_default() += 1;
    Ok(())
}

async fn until_closed(s: &mut tokio::net::TcpStream, sink: &mut [u8]) {
    while let Ok(n) = s.read(sink).await {
        if n == 0 {
            break;
        }
    }
}
