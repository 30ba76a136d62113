//! wssbench: wssedge's load generator. Few pinned single-threaded runtimes, hand-written
//! client framing, HdrHistogram latencies, and its own CPU cost in every report.

mod deflate;
mod fanout;
mod market;
mod modes;
mod net;
mod scan;
mod siege;
mod token;
mod ws;

use std::cell::{Cell, RefCell};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use fanout::{FanoutProto, Plan};
use modes::{Stats, Window};
use net::{Proto, Target};

#[derive(Parser)]
#[command(
    name = "wssbench",
    about = "Load generator for wssedge: closed/open loop, handshake storm, idle hold, pub/sub fan-out"
)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Max throughput: each connection keeps --depth messages in flight.
    Closed {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 1)]
        depth: usize,
    },
    /// Fixed total message rate on a schedule; latency from the intended send time.
    Open {
        #[command(flatten)]
        c: Common,
        /// Total messages per second over all connections.
        #[arg(long)]
        rate: f64,
    },
    /// New connections at a fixed rate: handshake + upgrade + one echo + close each.
    Storm {
        #[command(flatten)]
        c: Common,
        /// New connections per second.
        #[arg(long)]
        rate: f64,
        /// Most handshakes in flight at once (over all threads).
        #[arg(long, default_value_t = 512)]
        max_inflight: usize,
        /// Every Nth connection (0: none) ends abruptly instead of closing: half a frame,
        /// then a TCP reset.
        #[arg(long, default_value_t = 0)]
        abort_every: u64,
    },
    /// Open --connections upgraded connections, then hold them idle for --hold seconds.
    Idle {
        #[command(flatten)]
        c: Common,
        #[arg(long, default_value_t = 10.0)]
        hold: f64,
    },
    /// Pub/sub: one publisher at --rate publications/s to one topic, --connections
    /// subscribers; publish→receive latency, deliveries/s and loss.
    Fanout {
        #[command(flatten)]
        c: Common,
        #[command(flatten)]
        f: FanoutArgs,
    },
    /// The attacker of a slow-connection siege: --connections sockets, opened over --warmup
    /// seconds and held for --duration, each silent, stalled after its ClientHello, dribbling
    /// its upgrade request, or sending one large frame slowly; reopened after the server closes
    /// them.
    Siege {
        #[command(flatten)]
        c: Common,
        #[arg(long, value_enum)]
        kind: siege::SiegeKind,
        /// Seconds before a socket the server closed is opened again.
        #[arg(long, default_value_t = 1.0)]
        reopen_after: f64,
        /// `dribble`: seconds between two bytes of the upgrade request.
        #[arg(long, default_value_t = 1.0)]
        byte_every: f64,
        /// `slow-frame`: the frame's length in MiB.
        #[arg(long, default_value_t = 15.0)]
        frame_mib: f64,
        /// `slow-frame`: how fast its payload is sent, KiB per second.
        #[arg(long, default_value_t = 128)]
        send_kib_per_s: u64,
    },
}

#[derive(Args)]
struct FanoutArgs {
    /// Publications per second (--payload is the size of each one's `data` value).
    #[arg(long)]
    rate: f64,
    /// The server's protocol: json (wssedge's, also the broadcast and uWS peers) or nchan.
    #[arg(long, value_enum, default_value_t = FanoutProto::Json)]
    fanout_proto: FanoutProto,
    #[arg(long, default_value = "trades.BTC-USD")]
    topic: String,
    /// Every connection sends `Authorization: Bearer TOKEN`.
    #[arg(long, conflicts_with = "hs256_secret_file")]
    token: Option<String>,
    /// Mint the bearer token: an HS256 JWT (scope "publish read") keyed by this file's bytes.
    #[arg(long)]
    hs256_secret_file: Option<PathBuf>,
    /// The publisher connects here instead of --url (another node of a fleet: subscribers on
    /// one edge, the publisher on another). Same scheme and CA.
    #[arg(long)]
    publish_url: Option<String>,
}

#[derive(Args)]
struct Common {
    /// wss://HOST:PORT/PATH (ws:// for plain; host:port is used for tls/tcp)
    #[arg(long)]
    url: String,
    /// CA certificate(s) to trust (PEM), required for wss/tls.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Default: from the URL scheme (wss unless ws://).
    #[arg(long, value_enum)]
    proto: Option<Proto>,
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Measured seconds (after warmup).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds excluded from stats before the measured window.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// OS threads, each a single-threaded runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// CPUs to pin the threads to, e.g. 1 or 2-3,6 (thread i → i-th CPU, round robin).
    #[arg(long)]
    cpus: Option<String>,
    /// Message size in bytes (≥ 16; carries a timestamp tag).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Send text frames (hex tag + ASCII filler) instead of binary.
    #[arg(long)]
    text: bool,
    /// Bind clients to these source addresses, round robin (e.g. 127.0.0.1,127.0.0.2).
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Per-connection: seconds without a reply (while one is due) before giving up.
    #[arg(long, default_value_t = 5.0)]
    read_timeout: f64,
    /// Per-connection: seconds for TCP + TLS + upgrade.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Every connection's upgrade carries its own HS256 JWT keyed by this file's bytes (a
    /// fresh jti each: single-use servers accept every one once).
    #[arg(long)]
    mint_per_connection: Option<PathBuf>,
    /// Seconds each minted token lives (a soak uses short lives, so the edge's replay store
    /// has something to forget).
    #[arg(long, default_value_t = token::LIFETIME_S)]
    token_life_s: u64,
    /// Offer permessage-deflate (`client_max_window_bits`); where the server agrees, client
    /// messages go compressed and compressed server messages are inflated before they are
    /// checked.
    #[arg(long)]
    deflate: bool,
    /// Payloads shaped like market data (JSON book snapshots of --payload bytes, text frames):
    /// what compression figures must be measured on.
    #[arg(long)]
    market_data: bool,
}

fn parse_cpus(s: &str) -> anyhow::Result<Vec<usize>> {
    let mut v = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => v.extend(a.trim().parse::<usize>()?..=b.trim().parse::<usize>()?),
            None => v.push(part.trim().parse()?),
        }
    }
    if v.is_empty() {
        bail!("empty --cpus");
    }
    Ok(v)
}

#[derive(Clone, Copy)]
enum Kind {
    Closed {
        depth: usize,
    },
    Open {
        rate: f64,
    },
    Storm {
        rate: f64,
        inflight: usize,
        abort_every: u64,
    },
    Idle {
        hold: f64,
    },
    Fanout {
        rate: f64,
    },
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Closed { .. } => "closed",
            Kind::Open { .. } => "open",
            Kind::Storm { .. } => "storm",
            Kind::Idle { .. } => "idle",
            Kind::Fanout { .. } => "fanout",
        }
    }
}

/// What a thread tells main once its setup (connecting) is done.
struct Ready {
    ok: usize,
}

#[allow(clippy::too_many_arguments)]
fn thread_main(
    k: usize,
    threads: usize,
    cpu: Option<usize>,
    kind: Kind,
    t: Arc<Target>,
    ids: Vec<usize>,
    total: usize,
    ready: mpsc::Sender<Ready>,
    mut start: tokio::sync::watch::Receiver<Option<Window>>,
    done: mpsc::Sender<Stats>,
    plan: Option<Arc<Plan>>,
) {
    if let Some(id) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            eprintln!("wssbench: thread {k}: could not pin to CPU {id}");
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
    let st: Rc<RefCell<Stats>> = Rc::new(RefCell::new(Stats::new()));
    let st2 = st.clone();
    local.block_on(&rt, async move {
        let st = st2;
        let batch = (200 / threads).max(1);
        if let Some(plan) = plan {
            fanout_thread(k, plan, &t, &ids, batch, ready, start, st).await;
            return;
        }
        let conns = match kind {
            Kind::Storm { .. } => Vec::new(),
            Kind::Idle { .. } => modes::open_all(&t, &ids, batch, 512, &st).await,
            _ => modes::open_all(&t, &ids, batch, 16 << 10, &st).await,
        };
        let idle_closed = Rc::new(Cell::new(0u64));
        if let Kind::Idle { .. } = kind {
            // held before the ready line so pings are answered from the start
            let conns = std::mem::take(&mut { conns });
            let n = conns.len();
            for c in conns {
                tokio::task::spawn_local(modes::hold(c, idle_closed.clone()));
            }
            let _ = ready.send(Ready { ok: n });
            run_after_start(&mut start, |w| async move {
                tokio::time::sleep_until(w.end.into()).await;
            })
            .await;
            st.borrow_mut().idle_closed = idle_closed.get();
            return;
        }
        let _ = ready.send(Ready { ok: conns.len() });
        let t2 = t.clone();
        let st3 = st.clone();
        run_after_start(&mut start, move |w| async move {
            let hard = w.end + Duration::from_secs(8);
            let mut handles = Vec::with_capacity(conns.len());
            match kind {
                Kind::Storm {
                    rate,
                    inflight,
                    abort_every,
                } => {
                    let per = (inflight / threads).max(1);
                    let pace = modes::StormPace {
                        rate,
                        inflight: per,
                        abort_every,
                    };
                    modes::storm(t2, w, k, threads, pace, st3.clone()).await;
                }
                Kind::Closed { depth } => {
                    for c in conns {
                        handles.push(tokio::task::spawn_local(modes::closed(
                            c,
                            w,
                            depth,
                            t2.read_timeout,
                            st3.clone(),
                        )));
                    }
                }
                Kind::Open { rate } => {
                    for (c, g) in conns.into_iter().zip(ids.iter().copied()) {
                        handles.push(tokio::task::spawn_local(modes::open(
                            c,
                            w,
                            g,
                            total,
                            rate,
                            t2.read_timeout,
                            st3.clone(),
                        )));
                    }
                }
                Kind::Idle { .. } | Kind::Fanout { .. } => {}
            }
            for h in handles {
                if tokio::time::timeout_at(hard.into(), h).await.is_err() {
                    st3.borrow_mut().errors += 1;
                }
            }
        })
        .await;
    });
    drop(local);
    let s = std::mem::replace(&mut *st.borrow_mut(), Stats::new());
    let _ = done.send(s);
}

/// A fan-out thread: its subscribers (subscribed, reading from the start) and on thread 0
/// the publisher, which starts at the window's base.
#[allow(clippy::too_many_arguments)]
async fn fanout_thread(
    k: usize,
    plan: Arc<Plan>,
    t: &Target,
    ids: &[usize],
    batch: usize,
    ready: mpsc::Sender<Ready>,
    mut start: tokio::sync::watch::Receiver<Option<Window>>,
    st: Rc<RefCell<Stats>>,
) {
    let handles = fanout::open_subscribers(&plan, ids, batch, &start, &st).await;
    let n = handles.len();
    let publisher = if k == 0 {
        match fanout::connect_publisher(&plan).await {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("wssbench: publisher: {e}");
                st.borrow_mut().error(&format!("publisher connect: {e}"));
                None
            }
        }
    } else {
        None
    };
    let _ = ready.send(Ready { ok: n });
    let read_timeout = t.read_timeout;
    run_after_start(&mut start, move |w| async move {
        tokio::task::spawn_local(fanout::sample_busy(w, st.clone()));
        let p = publisher.map(|c| {
            tokio::task::spawn_local(fanout::publisher(c, plan, w, read_timeout, st.clone()))
        });
        let hard = w.end + Duration::from_secs(8);
        for h in handles.into_iter().chain(p) {
            if tokio::time::timeout_at(hard.into(), h).await.is_err() {
                st.borrow_mut().errors += 1;
            }
        }
    })
    .await;
}

async fn run_after_start<F, Fut>(start: &mut tokio::sync::watch::Receiver<Option<Window>>, f: F)
where
    F: FnOnce(Window) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let w = match start.wait_for(Option::is_some).await {
        Ok(w) => w.expect("checked by wait_for"),
        Err(_) => return, // main gave up
    };
    f(w).await;
}

fn main() {
    match run() {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("wssbench: {e:#}");
            std::process::exit(2);
        }
    }
}

fn run() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    let mut fan_args = None;
    let (c, kind) = match cli.mode {
        Mode::Closed { c, depth } => (
            c,
            Kind::Closed {
                depth: depth.max(1),
            },
        ),
        Mode::Open { c, rate } => (c, Kind::Open { rate }),
        Mode::Storm {
            c,
            rate,
            max_inflight,
            abort_every,
        } => (
            c,
            Kind::Storm {
                rate,
                inflight: max_inflight,
                abort_every,
            },
        ),
        Mode::Idle { c, hold } => (c, Kind::Idle { hold }),
        Mode::Fanout { c, f } => {
            let rate = f.rate;
            fan_args = Some(f);
            (c, Kind::Fanout { rate })
        }
        Mode::Siege {
            c,
            kind,
            reopen_after,
            byte_every,
            frame_mib,
            send_kib_per_s,
        } => {
            let frame = siege::FrameSpec {
                bytes: (frame_mib * (1 << 20) as f64) as u64,
                bytes_per_s: send_kib_per_s.saturating_mul(1024),
            };
            return run_siege(c, kind, reopen_after, byte_every, frame);
        }
    };
    if let Some(f) = &fan_args {
        check_fanout(&c, f)?;
    } else if c.payload < 16 {
        bail!("--payload must be ≥ 16");
    } else if c.market_data && c.payload < market::echo_min() {
        bail!("--market-data needs --payload ≥ {}", market::echo_min());
    }
    let rate = match kind {
        Kind::Open { rate } | Kind::Storm { rate, .. } | Kind::Fanout { rate } => {
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be > 0");
            }
            Some(rate)
        }
        _ => None,
    };
    if !(c.duration > 0.0 && c.warmup >= 0.0 && c.read_timeout > 0.0 && c.connect_timeout > 0.0) {
        bail!("durations must be positive");
    }
    let threads = c.threads.max(1);
    let cpus = c.cpus.as_deref().map(parse_cpus).transpose()?;
    let (target, proto) = target_of(&c)?;
    let plan = fan_args
        .as_ref()
        .map(|f| fanout_plan(f, &c, &target))
        .transpose()?
        .map(Arc::new);
    let target = Arc::new(target);
    let total = match kind {
        Kind::Storm { .. } => 0,
        _ => c.connections,
    };
    if matches!(kind, Kind::Idle { .. } | Kind::Fanout { .. }) {
        raise_nofile(total as u64 + 1024);
    }

    let (ready_tx, ready_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let (start_tx, start_rx) = tokio::sync::watch::channel(None);
    for k in 0..threads {
        let ids: Vec<usize> = match kind {
            // the publisher has thread 0 to itself when there are others
            Kind::Fanout { .. } if threads > 1 => match k {
                0 => Vec::new(),
                _ => (k - 1..total).step_by(threads - 1).collect(),
            },
            _ => (k..total).step_by(threads).collect(),
        };
        let cpu = cpus.as_ref().map(|v| v[k % v.len()]);
        let (t, r, d, s, p) = (
            target.clone(),
            ready_tx.clone(),
            done_tx.clone(),
            start_rx.clone(),
            plan.clone(),
        );
        std::thread::Builder::new()
            .name(format!("wssbench-{k}"))
            .spawn(move || thread_main(k, threads, cpu, kind, t, ids, total, r, s, d, p))?;
    }
    drop((ready_tx, done_tx));

    // setup: connect everything (bounded)
    let setup_deadline =
        Instant::now() + Duration::from_secs_f64(c.connect_timeout + 60.0 + total as f64 / 500.0);
    let mut opened = 0;
    for _ in 0..threads {
        let left = setup_deadline.saturating_duration_since(Instant::now());
        match ready_rx.recv_timeout(left) {
            Ok(r) => opened += r.ok,
            Err(_) => {
                eprintln!("wssbench: setup did not finish in time; hard stop");
                return Ok(3);
            }
        }
    }
    let (warmup, measure) = match kind {
        Kind::Idle { hold } => (0.0, hold),
        _ => (c.warmup, c.duration),
    };
    let base = Instant::now() + Duration::from_millis(5);
    let w = Window {
        base,
        warm: base + Duration::from_secs_f64(warmup),
        end: base + Duration::from_secs_f64(warmup + measure),
    };
    if matches!(kind, Kind::Idle { .. }) {
        let mut out = std::io::stdout().lock();
        writeln!(out, "IDLE_READY n={opened}")?;
        out.flush()?;
    } else if matches!(kind, Kind::Fanout { .. }) {
        // Opening thousands of subscribers takes seconds: the driver starts its CPU window
        // from here, not from our start.
        let mut out = std::io::stdout().lock();
        writeln!(out, "FANOUT_READY n={opened}")?;
        out.flush()?;
    } else if total > 0 && opened == 0 {
        eprintln!("wssbench: no connection could be opened");
    }
    let _ = start_tx.send(Some(w));
    std::thread::sleep(w.warm.saturating_duration_since(Instant::now()));
    let (cpu0, wire0) = (net::cpu_now(), net::wire_now());
    std::thread::sleep(w.end.saturating_duration_since(Instant::now()));
    let (cpu1, wire1) = (net::cpu_now(), net::wire_now());
    let wire = [wire1[0] - wire0[0], wire1[1] - wire0[1]];

    // collect, with a hard stop at end + 10 s
    let hard = w.end + Duration::from_secs(10);
    let mut st = Stats::new();
    let mut got = 0;
    while got < threads {
        match done_rx.recv_timeout(hard.saturating_duration_since(Instant::now())) {
            Ok(s) => {
                st.merge(&s);
                got += 1;
            }
            Err(_) => break,
        }
    }
    let hard_stop = got < threads;
    report(
        &c,
        kind,
        proto,
        rate,
        measure,
        threads,
        &st,
        cpu1 - cpu0,
        hard_stop,
        fan_args.as_ref(),
        cpu_slots(cpus.as_deref(), threads),
        wire,
    )?;
    Ok(if hard_stop { 3 } else { 0 })
}

/// `wssbench siege`: not a measured window like the other modes (see `siege`).
fn run_siege(
    c: Common,
    kind: siege::SiegeKind,
    reopen_after: f64,
    byte_every: f64,
    frame: siege::FrameSpec,
) -> anyhow::Result<i32> {
    let times = [c.warmup, c.duration, reopen_after, byte_every];
    if !times.iter().all(|t| t.is_finite() && *t >= 0.0) || c.duration <= 0.0 {
        bail!("durations must be positive");
    }
    let (target, _) = target_of(&c)?;
    let plan = siege::Plan {
        kind,
        sockets: c.connections,
        threads: c.threads.max(1),
        cpus: c.cpus.as_deref().map(parse_cpus).transpose()?,
        ramp: Duration::from_secs_f64(c.warmup),
        hold: Duration::from_secs_f64(c.duration),
        reopen_after: Duration::from_secs_f64(reopen_after),
        byte_every: Duration::from_secs_f64(byte_every.max(0.001)),
        frame_bytes: frame.bytes,
        send_bytes_per_s: frame.bytes_per_s,
    };
    siege::run(plan, target, c.json.as_deref())
}

/// Where and how `c` says to connect.
fn target_of(c: &Common) -> anyhow::Result<(Target, Proto)> {
    let (scheme, host, port, path) = net::parse_url(&c.url)?;
    let proto = c.proto.unwrap_or(match scheme.as_str() {
        "ws" | "http" => Proto::Ws,
        "tcp" => Proto::Tcp,
        "tls" => Proto::Tls,
        _ => Proto::Wss,
    });
    let tls = if proto.tls() {
        Some(net::tls_connector(c.ca.as_deref())?)
    } else {
        None
    };
    let default_port = if proto.tls() { 443 } else { 80 };
    let host_header = if port == default_port {
        host.clone()
    } else if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let target = Target {
        addr: net::resolve(&host, port)?,
        host_header,
        path,
        server_name: rustls::pki_types::ServerName::try_from(host.clone())
            .context("bad TLS server name")?,
        proto,
        tls,
        payload: c.payload,
        // market data is JSON: text frames
        text: c.text || c.market_data,
        connect_timeout: Duration::from_secs_f64(c.connect_timeout),
        read_timeout: Duration::from_secs_f64(c.read_timeout),
        source_ips: c.source_ips.clone(),
        headers: String::new(),
        mint: match &c.mint_per_connection {
            Some(path) => {
                let key =
                    std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
                Some(Arc::new(token::Minter::new(key).with_life(c.token_life_s)))
            }
            None => None,
        },
        deflate: c.deflate,
        market: c.market_data,
        wire: 0,
    };
    Ok((target, proto))
}

/// The fan-out arguments that can be checked before connecting anything.
fn check_fanout(c: &Common, f: &FanoutArgs) -> anyhow::Result<()> {
    let topic_ok = (1..=128).contains(&f.topic.len())
        && f.topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
    if !topic_ok {
        bail!("--topic must be 1-128 of A-Z a-z 0-9 . _ : -");
    }
    if !(f.rate > 0.0 && f.rate.is_finite()) {
        bail!("--rate must be > 0");
    }
    let span = c.warmup + c.duration + 1.0;
    let (t_max, n_max) = ((span * 1e9) as u64, (f.rate * span) as u64 + 1);
    let min = if c.market_data {
        market::data_min(t_max, n_max)
    } else {
        scan::data_min(t_max, n_max)
    };
    if c.payload < min {
        bail!("--payload must be ≥ {min} for this run (the data carries t, n and a pad)");
    }
    Ok(())
}

/// The fan-out plan: subscriber and publisher targets, the token header.
fn fanout_plan(f: &FanoutArgs, c: &Common, target: &Target) -> anyhow::Result<Plan> {
    let token = match (&f.token, &f.hs256_secret_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => {
            let key = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            if key.is_empty() {
                bail!("{}: empty HS256 secret", path.display());
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("clock before 1970")?
                .as_secs();
            Some(token::mint_hs256(&key, now))
        }
        (None, None) => None,
    };
    if token
        .as_deref()
        .is_some_and(|t| t.bytes().any(|b| b.is_ascii_control() || b == b' '))
    {
        bail!("--token must not contain spaces or control characters");
    }
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut subscriber = target.clone();
    subscriber.headers = auth.clone();
    let mut publisher = subscriber.clone();
    publisher.wire = net::PUBLISHER;
    if let Some(url) = &f.publish_url {
        let (_, host, port, path) = net::parse_url(url)?;
        publisher.addr = net::resolve(&host, port)?;
        publisher.host_header = format!("{host}:{port}");
        publisher.path = path;
    }
    if f.fanout_proto == FanoutProto::Nchan {
        subscriber.path = format!("/sub/{}", f.topic);
        publisher.proto = if target.proto.tls() {
            Proto::Tls
        } else {
            Proto::Tcp
        };
    } else if !target.proto.ws() {
        bail!("--fanout-proto json needs a ws:// or wss:// URL");
    }
    Ok(Plan {
        proto: f.fanout_proto,
        topic: f.topic.clone(),
        rate: f.rate,
        payload: c.payload,
        market: c.market_data,
        subscriber,
        publisher,
        auth,
        host_header: target.host_header.clone(),
        last_n: std::sync::atomic::AtomicU64::new(0),
    })
}

/// Per-message wire bytes: `bytes / msgs`, `None` without messages.
fn per_msg(bytes: u64, msgs: u64) -> Option<f64> {
    (msgs > 0).then(|| bytes as f64 / msgs as f64)
}

/// The WebSocket bytes of the measured window (frames as written into and read out of TLS;
/// TLS records add their own ~22 B each), and per message, bytes and messages counted over the
/// same wall-clock window (a server that lags still divides what arrived by what arrived): echo,
/// per message sent and per echo received; fan-out, the publisher's per publication and the
/// subscribers' per delivery.
fn wire_json(wire: &[net::WireSnap; 2], fanout: bool) -> serde_json::Value {
    let (main, publisher) = (wire[0], wire[1]);
    let (sender, receiver) = if fanout {
        (publisher, main)
    } else {
        (main, main)
    };
    let mut v = json!({
        "wire_bytes_sent": sender.tx,
        "wire_bytes_received": receiver.rx,
        "wire_messages_sent": sender.sent,
        "wire_messages_received": receiver.msgs,
        "wire_bytes_per_msg_sent": per_msg(sender.tx, sender.sent),
        "wire_bytes_per_msg_received": per_msg(receiver.rx, receiver.msgs),
    });
    if fanout {
        v["wire_bytes_subscribers_sent"] = json!(main.tx);
        v["wire_bytes_publisher_received"] = json!(publisher.rx);
    }
    v
}

/// `--deflate`: what was agreed and how much of what arrived was compressed.
fn deflate_json(wire: &[net::WireSnap; 2], fanout: bool) -> serde_json::Value {
    use std::sync::atomic::Ordering::Relaxed;
    let m = wire[0];
    json!({
        "offered": true,
        "negotiated": deflate::NEGOTIATED.load(Relaxed),
        "declined": deflate::DECLINED.load(Relaxed),
        "answer": deflate::LAST_ANSWER.lock().map(|l| l.clone()).unwrap_or_default(),
        // the receiving side: echoes, or the subscribers' deliveries in fan-out
        "messages_received": m.msgs,
        "compressed_received": m.compressed,
        "compressed_share": (m.msgs > 0).then(|| m.compressed as f64 / m.msgs as f64),
        "inflated_bytes": m.inflated,
        "fanout": fanout,
    })
}

/// How many CPUs the generator's threads can run on at once.
fn cpu_slots(cpus: Option<&[usize]>, threads: usize) -> usize {
    let online = std::thread::available_parallelism().map_or(threads, |n| n.get());
    let n = match cpus {
        Some(v) => {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.dedup();
            v.len()
        }
        None => online,
    };
    n.min(threads).max(1)
}

pub(crate) fn raise_nofile(want: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit fills a valid, owned rlimit struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 || r.rlim_cur >= want {
        return;
    }
    r.rlim_cur = want.min(r.rlim_max).max(r.rlim_cur);
    // SAFETY: setrlimit reads a valid rlimit struct; failure is harmless (we keep the old limit).
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &r) };
    if r.rlim_cur < want {
        eprintln!(
            "wssbench: open-files limit {} < {want}; some connections may fail",
            r.rlim_cur
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn report(
    c: &Common,
    kind: Kind,
    proto: Proto,
    rate: Option<f64>,
    measure: f64,
    threads: usize,
    st: &Stats,
    cpu: f64,
    hard_stop: bool,
    fan_args: Option<&FanoutArgs>,
    cpu_slots: usize,
    wire: [net::WireSnap; 2],
) -> anyhow::Result<()> {
    let l = &st.lat;
    let q = |p: f64| {
        if l.is_empty() {
            0
        } else {
            l.value_at_quantile(p)
        }
    };
    let msgs_per_s = st.received as f64 / measure;
    let busy = cpu / (measure * threads as f64);
    let us_per_msg = if st.received > 0 {
        cpu * 1e6 / st.received as f64
    } else {
        0.0
    };
    let h = &st.hs;
    let hq = |p: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(p)
        }
    };
    let mode = kind.name();
    let f = &st.fan;
    // threads sharing a CPU are bound together: count the CPUs they can use
    let busy_per_cpu = cpu / (measure * cpu_slots as f64);
    let client_bound = f.max_thread_busy.max(busy_per_cpu) >= fanout::CLIENT_BOUND_BUSY;
    match kind {
        Kind::Fanout { .. } => println!(
            "{mode} {} subs={} rate={}/s payload={} thr={threads}: {msgs_per_s:.0} deliveries/s, p50={}us p90={}us p99={}us p99.9={}us max={}us, publications={} expected={} lost={} closed={} out_of_order={} duplicates={} publish_errors={} errors={} late={} unanswered={}; client cpu {cpu:.2}s (busy {busy:.2}, load {:.2}, {us_per_msg:.2} us/delivery){}",
            fan_args.map_or("?", |a| a.fanout_proto.name()), f.subscribers, rate.unwrap_or(0.0), c.payload,
            q(0.5), q(0.9), q(0.99), q(0.999), l.max(), f.publications, f.expected(), f.lost(), f.closed,
            f.out_of_order, f.duplicates, f.publish_errors, st.errors, st.late_sends, st.unanswered,
            busy_per_cpu.max(f.max_thread_busy), if client_bound { " CLIENT-BOUND" } else { "" }
        ),
        Kind::Idle { .. } => println!(
            "{mode} {} conns={} ok={} failed={} closed_during_hold={} handshake p50={}us p99={}us max={}us; client cpu {cpu:.2}s (busy {busy:.2})",
            proto.name(), c.connections, st.hs_ok, st.hs_failed, st.idle_closed, hq(0.5), hq(0.99), h.max()
        ),
        Kind::Storm { .. } => println!(
            "{mode} {} rate={}/s ok={} failed={} errors={} late={} handshake p50={}us p99={}us max={}us; echo p50={}us p99={}us; client cpu {cpu:.2}s (busy {busy:.2})",
            proto.name(), rate.unwrap_or(0.0), st.hs_ok, st.hs_failed, st.errors, st.late_sends, hq(0.5), hq(0.99), h.max(), q(0.5), q(0.99)
        ),
        _ => println!(
            "{mode} {} conns={} payload={} thr={threads}: {msgs_per_s:.0} msg/s, p50={}us p90={}us p99={}us p99.9={}us max={}us, errors={} late={} unanswered={}; client cpu {cpu:.2}s (busy {busy:.2}, {us_per_msg:.2} us/msg)",
            proto.name(), c.connections, c.payload, q(0.5), q(0.9), q(0.99), q(0.999), l.max(), st.errors, st.late_sends, st.unanswered
        ),
    }
    if !st.reasons.is_empty() {
        eprintln!("wssbench: failure reasons: {:?}", st.reasons);
    }
    if hard_stop {
        eprintln!(
            "wssbench: hard stop: some threads did not finish by end + 10 s (partial results)"
        );
    }
    if let Some(path) = &c.json {
        let mut v = json!({
            "mode": mode,
            "proto": proto.name(),
            "url": c.url,
            "connections": c.connections,
            "payload": c.payload,
            "text": c.text,
            "rate": rate,
            "duration_s": measure,
            "warmup_s": c.warmup,
            "threads": threads,
            "sent": st.sent,
            "received": st.received,
            "errors": st.errors,
            "late_sends": st.late_sends,
            "unanswered": st.unanswered,
            "msgs_per_s": msgs_per_s,
            "latency_us": {
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999), "p9999": q(0.9999),
                "max": l.max(), "mean": if l.is_empty() { 0.0 } else { l.mean() },
            },
            "handshake_us": { "p50": hq(0.5), "p99": hq(0.99), "max": h.max() },
            "handshakes_ok": st.hs_ok,
            "handshakes_failed": st.hs_failed,
            "failure_reasons": st.reasons,
            "idle_closed_during_hold": st.idle_closed,
            "client_cpu_s": cpu,
            "client_cpu_busy": busy,
            "client_cpu_us_per_msg": us_per_msg,
            "hard_stop": hard_stop,
            "market_data": c.market_data,
        });
        let fanout = fan_args.is_some();
        let w = wire_json(&wire, fanout);
        for (k, x) in w.as_object().into_iter().flatten() {
            v[k.as_str()] = x.clone();
        }
        if c.deflate {
            v["deflate"] = deflate_json(&wire, fanout);
        }
        if let Some(a) = fan_args {
            v["fanout"] = json!({
                "proto": a.fanout_proto.name(),
                "topic": a.topic,
                "subscribers": f.subscribers,
                "subscribers_closed": f.closed,
                "publications": f.publications,
                "expected_deliveries": f.expected(),
                "deliveries": f.deliveries,
                "deliveries_open": f.deliveries_open,
                "lost": f.lost(),
                "seq_gaps": f.seq_gaps,
                "out_of_order": f.out_of_order,
                "duplicates": f.duplicates,
                "stale_deliveries": f.stale,
                "publish_errors": f.publish_errors,
                "publisher_reconnects": f.publisher_reconnects,
                "max_thread_busy": f.max_thread_busy,
                "cpu_busy": busy_per_cpu,
                "client_bound": client_bound,
            });
        }
        std::fs::write(path, serde_json::to_string_pretty(&v)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpus_list() {
        assert_eq!(super::parse_cpus("1").unwrap(), vec![1]);
        assert_eq!(super::parse_cpus("0,2-4").unwrap(), vec![0, 2, 3, 4]);
        assert!(super::parse_cpus("x").is_err());
    }
}
