//! Tests of the kernel limiter (root only: each prints `skipped: …` and returns otherwise;
//! serialized by [`SERIAL`] because attachments are process-wide) and of the committed
//! object's freshness.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::*;

static SERIAL: Mutex<()> = Mutex::new(());
const BOUND: Duration = Duration::from_secs(10);

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn committed_object_matches_its_sources() {
    // `ebpf/obj/edge.bpf.o.sha256` is `sha256sum` output over SOURCES; a mismatch means the
    // object is stale: run `cargo xtask ebpf` and commit both files.
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let want = std::fs::read_to_string(format!("{root}/ebpf/obj/edge.bpf.o.sha256")).unwrap();
    let mut got = String::new();
    for rel in SOURCES {
        let bytes = std::fs::read(format!("{root}/{rel}")).unwrap();
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes);
        let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        got.push_str(&format!("{hex}  {rel}\n"));
    }
    assert_eq!(
        got, want,
        "ebpf/obj/edge.bpf.o is stale: run `cargo xtask ebpf` and commit the object and its hash"
    );
    assert!(OBJECT.starts_with(b"\x7fELF"), "the object is an ELF file");
}

fn cfg(default: u32, o: &[(&str, u32)]) -> LimitConfig {
    LimitConfig::for_tests(default, o)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// TCP_DEFER_ACCEPT (socket2 has no setter).
fn set_defer_accept(s: &Socket, secs: u32) -> io::Result<()> {
    wssedge_sys::sock::set_defer_accept(s.as_fd(), secs)
}

/// `n` listeners in one SO_REUSEPORT group on `host:0`.
fn group(host: &str, n: usize, backlog: i32, defer_accept: bool) -> (Vec<TcpListener>, u16) {
    let mut out: Vec<TcpListener> = Vec::new();
    let mut port = 0;
    for _ in 0..n {
        let addr = SocketAddr::new(ip(host), port);
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
        s.set_reuse_port(true).unwrap();
        if addr.is_ipv6() {
            s.set_only_v6(true).unwrap();
        }
        s.bind(&addr.into()).unwrap();
        if defer_accept {
            set_defer_accept(&s, 60).unwrap();
        }
        s.listen(backlog).unwrap();
        s.set_nonblocking(true).unwrap();
        let l: TcpListener = s.into();
        port = l.local_addr().unwrap().port();
        out.push(l);
    }
    (out, port)
}

/// Attaches, or says why not (a visible skip line) when this host cannot.
fn attach(test: &str, ls: &[TcpListener], port: u16, c: &LimitConfig) -> Option<EbpfLimiter> {
    attach_how(test, ls, port, c, EbpfLimiter::attach)
}

type AttachFn = fn(&[BorrowedFd<'_>], &[u16], &LimitConfig) -> Result<EbpfLimiter, EbpfError>;

fn attach_how(
    test: &str,
    ls: &[TcpListener],
    port: u16,
    c: &LimitConfig,
    how: AttachFn,
) -> Option<EbpfLimiter> {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false);
    // In `cargo xtask vmtest`'s guests (root, a stock kernel) these tests are the point: a
    // skip there is a failure.
    let must_run = std::env::var_os("WSSEDGE_VMTEST").is_some();
    if !root {
        assert!(!must_run, "{test}: not root in the vmtest guest");
        println!("skipped: {test}: needs root (eBPF)");
        return None;
    }
    let fds: Vec<_> = ls.iter().map(|l| l.as_fd()).collect();
    match how(&fds, &[port], c) {
        Ok(l) => Some(l),
        Err(e @ (EbpfError::NotPermitted(_) | EbpfError::NoBtf(_))) => {
            assert!(!must_run, "{test}: the vmtest guest cannot attach: {e}");
            println!("skipped: {test}: {e}");
            None
        }
        Err(e) => panic!("{test}: attach failed: {e}"),
    }
}

fn connect(from: &str, to: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    s.bind(&SocketAddr::new(ip(from), 0).into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(3))?;
    Ok(s.into())
}

/// Accepts until `n` connections arrived on the group (bounded); returns (listener index, stream).
fn accept_n(ls: &[TcpListener], n: usize) -> Vec<(usize, TcpStream)> {
    let mut got = Vec::new();
    let t0 = Instant::now();
    while got.len() < n {
        assert!(t0.elapsed() < BOUND, "accepted {} of {n}", got.len());
        let mut idle = true;
        for (i, l) in ls.iter().enumerate() {
            match l.accept() {
                Ok((s, _)) => {
                    got.push((i, s));
                    idle = false;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    got
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < BOUND, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_refused(r: io::Result<TcpStream>, what: &str) {
    match r {
        Ok(_) => panic!("{what}: connected, expected a refusal"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{what}: {e}"),
    }
}

#[test]
fn kernel_limits_ipv4_exactly() {
    let _g = serial();
    let (ls, port) = group("127.0.0.1", 2, 128, false);
    let rules = cfg(3, &[("127.0.0.4/32", 0), ("127.0.0.5", 5)]);
    let Some(lim) = attach("kernel_limits_ipv4_exactly", &ls, port, &rules) else {
        return;
    };
    let to = SocketAddr::new(ip("127.0.0.1"), port);
    let mut conns: Vec<TcpStream> = (0..3).map(|_| connect("127.0.0.2", to).unwrap()).collect();
    let t0 = Instant::now();
    assert_refused(connect("127.0.0.2", to), "4th from 127.0.0.2");
    assert!(t0.elapsed() < Duration::from_millis(500), "refused at once");
    let other = connect("127.0.0.3", to).unwrap();
    let mut server = accept_n(&ls, 4);
    assert_eq!(lim.connections_of(ip("127.0.0.2")), 3);
    assert_eq!(lim.connections_of(ip("127.0.0.3")), 1);

    // Closing one (both ends) frees its slot.
    let c = conns.pop().unwrap();
    let local = c.local_addr().unwrap();
    drop(c);
    let pos = server
        .iter()
        .position(|(_, s)| s.peer_addr().unwrap() == local)
        .unwrap();
    drop(server.remove(pos));
    wait_for("a released slot", || {
        lim.connections_of(ip("127.0.0.2")) == 2
    });
    conns.push(connect("127.0.0.2", to).unwrap());
    server.extend(accept_n(&ls, 1));
    assert_refused(connect("127.0.0.2", to), "4th again");

    // Blocked CIDR and an override raising the limit.
    assert_refused(connect("127.0.0.4", to), "blocked 127.0.0.4");
    let five: Vec<_> = (0..5).map(|_| connect("127.0.0.5", to).unwrap()).collect();
    assert_refused(connect("127.0.0.5", to), "6th from 127.0.0.5");
    server.extend(accept_n(&ls, 5));

    // Live update: default 4.
    lim.update(&cfg(4, &[("127.0.0.4/32", 0)])).unwrap();
    conns.push(connect("127.0.0.2", to).unwrap());
    server.extend(accept_n(&ls, 1));
    assert_refused(connect("127.0.0.2", to), "5th after raising to 4");
    assert_eq!(lim.connections_of(ip("127.0.0.5")), 5);

    let s = lim.stats().unwrap();
    // SYNs: 3+1 (.2), 1 (.3), 1+1 (.2 again), 1 (.4), 5+1 (.5), 1+1 (.2 at 4) = 16;
    // accepted 3+1+1+5+1 = 11; over the limit 4; blocked 1.
    assert_eq!(s.syns_seen, 16, "{s:?}");
    assert_eq!(s.accepted, 11, "{s:?}");
    assert_eq!(s.refused_limit, 4, "{s:?}");
    assert_eq!(s.refused_blocked, 1, "{s:?}");
    assert_eq!(s.released, 1, "{s:?}");
    assert_eq!(
        (s.unreserved, s.table_full, s.no_listener),
        (0, 0, 0),
        "{s:?}"
    );
    let top = lim.top_refused(2);
    assert_eq!(top[0].0, ip("127.0.0.2"));
    assert_eq!(top[0].1.refused, 3);
    assert_eq!(lim.stats_of(ip("127.0.0.4")).refused, 1);

    // Everything closed: every count returns to 0.
    drop((conns, five, other, server));
    wait_for("all slots released", || {
        ["127.0.0.2", "127.0.0.3", "127.0.0.5"]
            .iter()
            .all(|a| lim.connections_of(ip(a)) == 0)
    });
    assert_eq!(lim.stats().unwrap().released, 11);
    assert_eq!(lim.pending_reservations(), 0);

    // Detach: the group accepts everyone again.
    lim.detach().unwrap();
    let many: Vec<_> = (0..6).map(|_| connect("127.0.0.4", to).unwrap()).collect();
    drop(many);
}

#[test]
fn kernel_limits_ipv6() {
    let _g = serial();
    let (ls, port) = group("::1", 2, 128, false);
    let Some(lim) = attach("kernel_limits_ipv6", &ls, port, &cfg(2, &[])) else {
        return;
    };
    let to = SocketAddr::new(ip("::1"), port);
    let a = connect("::1", to).unwrap();
    let _b = connect("::1", to).unwrap();
    assert_refused(connect("::1", to), "3rd from ::1");
    let mut server = accept_n(&ls, 2);
    assert_eq!(lim.connections_of(ip("::1")), 2);
    drop(a);
    let local = server
        .iter()
        .position(|(_, s)| s.peer_addr().is_ok())
        .unwrap();
    drop(server.remove(local));
    wait_for("a released slot", || lim.connections_of(ip("::1")) == 1);
    let _c = connect("::1", to).unwrap();
    lim.update(&cfg(2, &[("::1/128", 0)])).unwrap();
    assert_refused(connect("::1", to), "blocked ::1");
    let s = lim.stats().unwrap();
    assert_eq!(
        (s.syns_seen, s.accepted, s.refused_limit, s.refused_blocked),
        (5, 3, 1, 1)
    );
    lim.detach().unwrap();
}

/// Two handshakes from `from` held in flight (the listener defers accept) under a limit of 2:
/// a third is refused, and a sweep leaves the live ones alone.
fn two_handshakes_in_flight(lim: &EbpfLimiter, from: &str, to: SocketAddr) -> [TcpStream; 2] {
    let held = [connect(from, to).unwrap(), connect(from, to).unwrap()];
    assert_refused(connect(from, to), "3rd while 2 handshakes are in flight");
    assert_eq!(
        lim.sweep(Duration::ZERO).unwrap(),
        0,
        "live handshakes survive a sweep"
    );
    held
}

/// Kills each handshake with a RST (close with a zero linger).
fn reset(conns: [TcpStream; 2]) {
    for c in conns {
        Socket::from(c).set_linger(Some(Duration::ZERO)).unwrap();
    }
}

#[test]
fn kernel_releases_slots_of_handshakes_that_die() {
    let _g = serial();
    // TCP_DEFER_ACCEPT keeps the request socket (server side SYN_RECV) after the client's
    // ACK, so the client can kill the handshake with a RST while it is in flight.
    let (ls, port) = group("127.0.0.1", 1, 128, true);
    let test = "kernel_releases_slots_of_handshakes_that_die";
    let Some(lim) = attach(test, &ls, port, &cfg(2, &[])) else {
        return;
    };
    let to = SocketAddr::new(ip("127.0.0.1"), port);
    let in_flight = two_handshakes_in_flight(&lim, "127.0.0.6", to);
    assert_eq!(
        lim.pending_reservations(),
        2,
        "request sockets hold the slots"
    );
    assert_eq!(lim.connections_of(ip("127.0.0.6")), 2);
    reset(in_flight);
    println!("immediate release hooks: {:?}", lim.immediate_release());
    wait_for("slots of reset handshakes", || {
        if lim.immediate_release().is_none() {
            lim.sweep(Duration::ZERO).unwrap();
        }
        lim.connections_of(ip("127.0.0.6")) == 0
    });
    assert_eq!(lim.pending_reservations(), 0);
    let s = lim.stats().unwrap();
    assert_eq!(
        (s.accepted, s.released, s.refused_limit),
        (2, 2, 1),
        "{s:?}"
    );
    lim.detach().unwrap();

    // A SYN the kernel drops after our reservation (accept queue full: no request socket)
    // gives its slot back at once (fexit tcp_conn_request).
    let (ls, port) = group("127.0.0.1", 1, 0, false);
    let Some(lim) = attach(test, &ls, port, &cfg(5, &[])) else {
        return;
    };
    let to = SocketAddr::new(ip("127.0.0.1"), port);
    let first = connect("127.0.0.7", to).unwrap(); // fills the accept queue (backlog 0)
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::new(ip("127.0.0.7"), 0).into()).unwrap();
    let r = s.connect_timeout(&to.into(), Duration::from_millis(300));
    assert!(r.is_err(), "accept queue full: the SYN is dropped");
    drop(s);
    wait_for("the dropped SYN's slot", || {
        if lim.immediate_release().is_none() {
            lim.sweep(Duration::ZERO).unwrap();
        }
        lim.connections_of(ip("127.0.0.7")) == 1 && lim.pending_reservations() == 0
    });
    let st = lim.stats().unwrap();
    assert!(st.accepted >= 2 && st.released == st.accepted - 1, "{st:?}");
    assert_eq!(lim.sweep(Duration::ZERO).unwrap(), 0);
    drop(first);
    lim.detach().unwrap();
}

/// The release path of kernels that refuse fentry/fexit, on every kernel: only the periodic
/// mark-and-sweep gives the slots of dead handshakes back, and a live one survives it.
#[test]
fn kernel_sweep_releases_slots_of_handshakes_that_die() {
    let _g = serial();
    let (ls, port) = group("127.0.0.1", 1, 128, true);
    let test = "kernel_sweep_releases_slots_of_handshakes_that_die";
    let how: AttachFn = EbpfLimiter::attach_sweep_only;
    let Some(lim) = attach_how(test, &ls, port, &cfg(2, &[]), how) else {
        return;
    };
    assert_eq!(lim.immediate_release(), None);
    let to = SocketAddr::new(ip("127.0.0.1"), port);
    reset(two_handshakes_in_flight(&lim, "127.0.0.11", to));
    wait_for("the request sockets to go", || {
        lim.sweep(Duration::ZERO).unwrap();
        lim.connections_of(ip("127.0.0.11")) == 0
    });
    assert_eq!(lim.pending_reservations(), 0);
    let s = lim.stats().unwrap();
    assert_eq!((s.accepted, s.released, s.expired), (2, 2, 2), "{s:?}");
    // A completed handshake keeps its slot through sweeps (the socket owns it).
    let c = connect("127.0.0.11", to).unwrap();
    {
        use std::io::Write as _;
        (&c).write_all(b"x").unwrap(); // TCP_DEFER_ACCEPT: data makes the socket
    }
    let server = accept_n(&ls, 1);
    wait_for("the socket to own its slot", || {
        lim.sweep(Duration::ZERO).unwrap();
        lim.pending_reservations() == 0
    });
    assert_eq!(lim.connections_of(ip("127.0.0.11")), 1);
    drop((c, server));
    wait_for("the closed socket's slot", || {
        lim.connections_of(ip("127.0.0.11")) == 0
    });
    lim.detach().unwrap();
}

#[test]
fn kernel_steers_away_from_inactive_listeners() {
    let _g = serial();
    let (ls, port) = group("127.0.0.1", 2, 128, false);
    let Some(lim) = attach(
        "kernel_steers_away_from_inactive_listeners",
        &ls,
        port,
        &cfg(0, &[]),
    ) else {
        return;
    };
    let to = SocketAddr::new(ip("127.0.0.1"), port);
    let both: Vec<_> = (0..24).map(|_| connect("127.0.0.8", to).unwrap()).collect();
    let got = accept_n(&ls, 24);
    assert!(got.iter().any(|(i, _)| *i == 0) && got.iter().any(|(i, _)| *i == 1));
    lim.set_active(1, false).unwrap();
    let only0: Vec<_> = (0..24).map(|_| connect("127.0.0.8", to).unwrap()).collect();
    let got0 = accept_n(&ls, 24);
    assert!(
        got0.iter().all(|(i, _)| *i == 0),
        "every SYN went to listener 0"
    );
    lim.set_active(1, true).unwrap();
    assert!(lim.set_active(2, false).is_err());
    assert_eq!(
        lim.connections_of(ip("127.0.0.8")),
        48,
        "unlimited still counts"
    );
    drop((both, only0, got, got0));
    lim.detach().unwrap();
}

/// The start-up self-test passes on this kernel, and says which path releases the slots of
/// dead handshakes (left for `cargo xtask vmtest` to print per kernel).
#[test]
fn kernel_self_test_holds_the_limit() {
    let _g = serial();
    let (ls, port) = group("127.0.0.1", 1, 8, false);
    // Only to find out whether this host can attach at all (a visible skip otherwise).
    let Some(probe) = attach("kernel_self_test_holds_the_limit", &ls, port, &cfg(1, &[])) else {
        return;
    };
    probe.detach().unwrap();
    let passed = self_test(&[port]).expect("the self-test passes on this kernel");
    let path = match passed.release {
        Some(hook) => format!("fentry/fexit, dead handshakes released at once by fexit {hook}"),
        None => "periodic sweep (this kernel refuses fentry/fexit)".to_string(),
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let line = format!(
        "ebpf release path ({}): {path}; self-test passed in {} ms",
        kernel.trim(),
        passed.elapsed.as_millis()
    );
    println!("{line}");
    if let Ok(dir) = std::env::var("WSSEDGE_VMTEST_OUT") {
        std::fs::write(format!("{dir}/ebpf-release-path"), format!("{line}\n")).unwrap();
    }
    // A second run passes too: nothing of the first (private listener, attachment) is left.
    let s = self_test(&[port]).expect("a second self-test passes too");
    assert_eq!(s.release, passed.release);
}
