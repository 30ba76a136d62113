//! Sockets that never speak, tried as an attacker would: they must not lock out the clients
//! that do.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

use crate::harness::*;

/// A TCP connection from `from` (a loopback address) that sends nothing.
async fn silent_from(from: Ipv4Addr, to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((from, 0))).ok()?;
    socket.connect(to).await.ok()
}

/// 16 loopback addresses keep opening silent sockets — far more than the core's
/// `max_silent_connections`, and more than its handshake slots — while a legitimate client
/// upgrades every 100 ms: every one of them gets its 101 (none refused
/// `max_handshakes_in_flight`, as they all were while silent sockets held the slots), the
/// oldest silent sockets are closed to make room (counted `silent_evicted`), and the core never
/// holds more silent ones than its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_lock_out_clients_that_speak() {
    const CAP: usize = 64;
    const FLOOD: usize = 2_000;
    let srv = Server::with_config(&format!(
        "[server]\ncores = 1\n[limits]\nmax_handshakes_in_flight = 8\n\
         max_silent_connections = {CAP}\nfirst_byte_timeout_ms = 5000\n"
    ));
    let addr = srv.addr;
    // The flood: bounded in count (FLOOD) and time (WAIT), paced to last about as long as the
    // legitimate clients' 3 s; the sockets stay open until the end of the test (each one the
    // server has not closed keeps its place).
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        let mut held = Vec::with_capacity(FLOOD);
        for i in 0..FLOOD {
            if started.elapsed() > WAIT {
                break;
            }
            let from = Ipv4Addr::new(127, 0, 0, 10 + (i % 16) as u8);
            if let Some(s) = silent_from(from, addr).await {
                held.push(s);
            }
            if i % 15 == 14 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        held
    });
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "silent_evicted")],
        CAP as f64,
    )
    .await;
    let mut took = Vec::new();
    for i in 0..30 {
        let t0 = Instant::now();
        let (_, mut ws) = expect_upgraded(&srv, &ws_request("/", &[])).await;
        took.push(t0.elapsed());
        ws.send(&cframe(true, OP_TEXT, format!("legit {i}").as_bytes()))
            .await;
        assert_eq!(
            ws.rd.message().await,
            (OP_TEXT, format!("legit {i}").into_bytes())
        );
        let silent = srv
            .metric("wssedge_connections", &[("state", "silent")])
            .await;
        assert!(
            silent <= CAP as f64,
            "{silent} silent connections held (cap {CAP})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = within(WAIT * 2, "the flood ends", flood)
        .await
        .expect("flood task");
    took.sort();
    let evicted = srv
        .metric("wssedge_refusals_total", &[("reason", "silent_evicted")])
        .await;
    let refused = srv
        .metric(
            "wssedge_refusals_total",
            &[("reason", "max_handshakes_in_flight")],
        )
        .await;
    visible_line(&format!(
        "silent flood: {} sockets from 16 addresses, {evicted} evicted; 30/30 legitimate upgrades, \
         p50 {:?}, max {:?}",
        held.len(),
        took[took.len() / 2],
        took[took.len() - 1]
    ));
    assert_eq!(
        refused, 0.0,
        "a legitimate client was refused a handshake slot"
    );
    assert!(
        held.len() > 10 * CAP,
        "the flood opened only {} sockets",
        held.len()
    );
}

/// A TCP connection from `from` that sends a whole ClientHello and then nothing more: the edge
/// answers (its ServerHello flight) and waits for a Finished that never comes.
async fn stalled_after_client_hello(srv: &Server, from: Ipv4Addr) -> Option<TcpStream> {
    let mut tcp = silent_from(from, srv.addr).await?;
    let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut client =
        tokio_rustls::rustls::ClientConnection::new(srv.tls_config(), name).expect("client");
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).expect("ClientHello");
    }
    send_all(&mut tcp, &hello).await.ok()?;
    Some(tcp)
}

/// Handshakes that stall after their ClientHello and upgrade requests dribbled a byte at a
/// time hold every handshake place; a client that starts its handshake takes the place of the
/// oldest once that one has held it four times as long as the core's handshakes take (50 ms
/// here, learned from the clients served before the attack; a second at most), counted
/// `handshake_evicted`. Every legitimate upgrade from the flood's 1.3th second on must
/// succeed (the bound holds whatever was learned); before that, most do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_and_dribblers_give_way_to_clients_that_finish() {
    const PLACES: usize = 8;
    let srv = Server::with_config(&format!(
        "[server]\ncores = 1\n[limits]\nmax_handshakes_in_flight = {PLACES}\n\
         handshake_timeout_ms = 30000\nfirst_byte_timeout_ms = 30000\n"
    ));
    // Clients served before the attack: the core learns how long its handshakes take.
    for _ in 0..60 {
        let (_, ws) = expect_upgraded(&srv, &ws_request("/", &[])).await;
        drop(ws);
    }
    let flooded = Instant::now();
    // Dribblers first (the oldest places): TLS done, then the upgrade request at one byte per
    // 200 ms — about 25 s for the whole request, longer than the test. Each task ends when
    // the edge cuts it off (bounded by that too).
    let mut dribblers = Vec::new();
    for _ in 0..PLACES / 2 {
        let mut tls = try_tls_connect(srv.addr, srv.tls_config())
            .await
            .expect("a dribbler's TLS (places are free)");
        dribblers.push(tokio::spawn(async move {
            for b in ws_request("/", &[]).into_bytes() {
                if send_all(&mut tls, &[b]).await.is_err() {
                    return true; // cut off
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            false
        }));
    }
    // Then handshakes that stall after their ClientHello, from 16 addresses: they take the
    // other places and are refused beyond them.
    let mut stalled = Vec::new();
    for i in 0..3 * PLACES {
        let from = Ipv4Addr::new(127, 0, 0, 10 + (i % 16) as u8);
        stalled.extend(stalled_after_client_hello(&srv, from).await);
    }
    let mut late_ok = 0;
    let mut early = (0, 0);
    let mut took = Vec::new();
    for i in 0..30 {
        let t0 = Instant::now();
        let settled = flooded.elapsed() > Duration::from_millis(1_300);
        let attempt = match try_tls_connect(srv.addr, srv.tls_config()).await {
            Ok(tls) => try_attempt_over(tls, &ws_request("/", &[])).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(Outcome::Upgraded { mut ws, .. }) => {
                took.push(t0.elapsed());
                ws.send(&cframe(true, OP_TEXT, format!("legit {i}").as_bytes()))
                    .await;
                assert_eq!(
                    ws.rd.message().await,
                    (OP_TEXT, format!("legit {i}").into_bytes())
                );
                if settled {
                    late_ok += 1;
                } else {
                    early.0 += 1;
                }
            }
            other => {
                let seen = match other {
                    Ok(Outcome::Refused(r)) => format!("{} {}", r.status, r.reason),
                    Ok(Outcome::Upgraded { .. }) => unreachable!(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    !settled,
                    "attempt {i}, {:?} into the flood: {seen}",
                    flooded.elapsed()
                );
                early.1 += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let evicted = srv
        .metric("wssedge_refusals_total", &[("reason", "handshake_evicted")])
        .await;
    took.sort();
    visible_line(&format!(
        "stalled flood: {} stalled handshakes, {} dribblers on {PLACES} places; legitimate: \
         {late_ok} upgraded after the first 1.3 s (all), {} of {} before; {evicted} evicted; \
         p50 {:?}",
        stalled.len(),
        PLACES / 2,
        early.0,
        early.0 + early.1,
        took.get(took.len() / 2)
    ));
    assert!(
        late_ok >= 15,
        "only {late_ok} attempts after the first second"
    );
    assert!(evicted >= 1.0, "no stalled handshake gave way");
    assert!(
        early.0 > early.1,
        "before 1.3 s only {} of {} upgraded",
        early.0,
        early.0 + early.1
    );
    // The oldest places were the dribblers': the first evictions cut them off.
    let mut cut = 0;
    for d in dribblers {
        if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_millis(500), d).await {
            cut += 1;
        }
    }
    assert!(cut >= 1, "no dribbler gave way");
}

/// Where a stalled handshake stops.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// Half a ClientHello.
    MidClientHello,
    /// A whole ClientHello, then nothing (the edge answered its flight).
    AfterClientHello,
    /// The server's flight read, then half of the client's second flight (its Finished).
    MidClientFinished,
    /// The handshake done on the client's side, then no upgrade request.
    AfterFinished,
}

/// Opens a connection and drives a TLS 1.3 handshake as far as `stall`, then sends nothing.
async fn stall_at(srv: &Server, stall: Stall) -> TcpStream {
    use tokio::io::AsyncReadExt as _;
    let mut tcp = TcpStream::connect(srv.addr).await.expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut client =
        tokio_rustls::rustls::ClientConnection::new(srv.tls_config(), name).expect("client");
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).expect("ClientHello");
    }
    match stall {
        Stall::MidClientHello => {
            send_all(&mut tcp, &hello[..hello.len() / 2])
                .await
                .expect("half a hello");
            return tcp;
        }
        Stall::AfterClientHello => {
            send_all(&mut tcp, &hello).await.expect("hello");
            return tcp;
        }
        Stall::MidClientFinished | Stall::AfterFinished => {
            send_all(&mut tcp, &hello).await.expect("hello");
        }
    }
    // The server's flight, until the client has its own second flight to send.
    let mut buf = vec![0u8; 16 * 1024];
    while !client.wants_write() {
        let n = within(WAIT, "the server's flight", tcp.read(&mut buf))
            .await
            .expect("read the server's flight");
        assert!(n > 0, "the edge closed during its own flight");
        client.read_tls(&mut &buf[..n]).expect("read_tls");
        client.process_new_packets().expect("the server's flight");
    }
    let mut finished = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut finished).expect("Finished");
    }
    let part = match stall {
        Stall::MidClientFinished => &finished[..finished.len() - 8],
        _ => &finished[..],
    };
    send_all(&mut tcp, part).await.expect("the client's flight");
    tcp
}

/// A TLS handshake stalled at each of its flights — half a ClientHello, a whole one, half the
/// client's Finished, the handshake done without an upgrade request — is closed at the
/// handshake deadline (not before, not long after), counted, and leaves nothing behind; a
/// client that finishes meanwhile is served.
#[tokio::test]
async fn a_handshake_stalled_at_any_flight_is_closed_at_its_deadline() {
    const DEADLINE: Duration = Duration::from_millis(1000);
    let srv = Server::with_config(&format!(
        "[limits]\nhandshake_timeout_ms = {}\n",
        DEADLINE.as_millis()
    ));
    let stalls = [
        Stall::MidClientHello,
        Stall::AfterClientHello,
        Stall::MidClientFinished,
        Stall::AfterFinished,
    ];
    let mut waits = Vec::new();
    for stall in stalls {
        let t0 = Instant::now();
        let tcp = stall_at(&srv, stall).await;
        waits.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let mut tcp = tcp;
            let mut sink = [0u8; 4096];
            // Whatever the edge still sends (an alert, nothing) until it closes.
            while let Ok(n) = tcp.read(&mut sink).await {
                if n == 0 {
                    break;
                }
            }
            (stall, t0.elapsed())
        }));
    }
    // A client that finishes is not held up by them.
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/", &[])).await;
    ws.send(&cframe(true, OP_TEXT, b"meanwhile")).await;
    assert_eq!(ws.rd.message().await, (OP_TEXT, b"meanwhile".to_vec()));
    drop(ws);
    let mut seen = Vec::new();
    for w in waits {
        let (stall, took) = within(WAIT, "a stalled handshake's close", w)
            .await
            .expect("waiter");
        seen.push(format!("{stall:?} {took:.2?}"));
        assert!(
            took >= DEADLINE - Duration::from_millis(50) && took < DEADLINE * 3,
            "{stall:?}: closed after {took:?} (deadline {DEADLINE:?})"
        );
    }
    let timeouts = srv
        .wait_metric(
            "wssedge_refusals_total",
            &[("reason", "handshake_timeout")],
            4.0,
        )
        .await;
    visible_line(&format!(
        "stalled handshakes closed: {}; handshake_timeout refusals {timeouts}",
        seen.join(", ")
    ));
    srv.wait_metric_eq("wssedge_connections", &[], 0.0).await;
}

/// The process's CPU time so far (user + system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("comm") + 2..]
        .split(' ')
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ = 100 on Linux
}

/// Out of descriptors (its `RLIMIT_NOFILE` lowered under it): accepts fail with EMFILE. The
/// core does not spin, keeps serving its live session, counts every failure
/// (`wssedge_accept_errors_total`) but says so once — not 50 lines a second — and serves new
/// clients the moment descriptors free up. The admin listener's thread says it once too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_core_counts_quietly_and_recovers() {
    let srv = Server::with_config(
        "[server]\ncores = 1\n[limits]\nfirst_byte_timeout_ms = 30000\nhandshake_timeout_ms = 30000\n",
    );
    let pid = srv.proc.pid();
    let (_, mut live) = expect_upgraded(&srv, &ws_request("/", &[])).await;
    expect_echo(&mut live, "before").await;
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    let limit = open + 4;
    let out = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .output()
        .expect("prlimit (util-linux)");
    assert!(out.status.success(), "prlimit: {out:?}");
    // Silent sockets take the last descriptors; the ones after them cannot be accepted.
    let mut held = Vec::new();
    for _ in 0..12 {
        held.push(
            TcpStream::connect(srv.addr)
                .await
                .expect("the kernel accepts"),
        );
    }
    // (The admin listener is out of descriptors too: the log says when accepts start failing.)
    srv.proc
        .wait_stderr("the first accept failure is logged", "accept failed")
        .await;
    let cpu0 = cpu_time(pid);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let busy = cpu_time(pid).saturating_sub(cpu0);
    let window = t0.elapsed();
    expect_echo(&mut live, "during").await;
    // The admin listener is out of descriptors too: a scrape waits in its backlog, and its
    // thread's retries (every 50 ms) are said once as well.
    let scrape = TcpStream::connect(srv.admin)
        .await
        .expect("the kernel accepts");
    srv.proc
        .wait_stderr(
            "the admin's accept failure is logged",
            "admin accept failed",
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let admin_lines = srv.proc.stderr().matches("admin accept failed").count();
    assert_eq!(admin_lines, 1, "{}", srv.proc.stderr());
    drop(scrape);
    let lines = srv.proc.stderr().matches("accept failed").count() - admin_lines;
    // Descriptors come back: the clients waiting in the backlog are served.
    drop(held);
    let (_, mut fresh) = expect_upgraded(&srv, &ws_request("/", &[])).await;
    expect_echo(&mut fresh, "after").await;
    let errors = srv.metric("wssedge_accept_errors_total", &[]).await;
    visible_line(&format!(
        "out of descriptors: {errors} accept failures counted, {lines} log line(s), \
         CPU {busy:?} in {window:?}"
    ));
    assert!(
        errors >= 20.0,
        "only {errors} failures counted in a second and more"
    );
    assert_eq!(lines, 1, "one line per 10 s:\n{}", srv.proc.stderr());
    assert!(
        busy < window / 4,
        "the core spins while out of descriptors: {busy:?} of CPU in {window:?}"
    );
}
