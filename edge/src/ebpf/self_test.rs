//! The start-up proof that this kernel holds the limit the eBPF limiter sets: the same object,
//! loaded by the same code, attached to a private one-listener group on loopback with limit 1,
//! must refuse a second connection from one source while the first is open, and give the
//! slot back when it closes. Loading alone proves nothing: on Debian 12's 6.1 every program
//! loaded and attached while every slot was given back at handshake completion.
//!
//! Side-effect free: a private listener nobody else accepts on (nothing reaches the app), the
//! private instance's own maps (the real limiters' counters never see it: their tracing
//! programs only count their own ports, and the test port is never one of them), no audit
//! record. Cost: one more load of the object and four loopback handshakes.

use std::io::{self, ErrorKind};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use super::{EbpfError, EbpfLimiter, LimitConfig};

/// The test's source address (any 127/8 address is local on Linux loopback).
pub const SELF_TEST_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 255, 255, 254);
/// The private listener's address.
const LISTEN_ON: Ipv4Addr = Ipv4Addr::new(127, 255, 255, 253);
/// Generous for emulated guests; only a failing kernel waits this long.
const BOUND: Duration = Duration::from_secs(5);

/// What the self-test proved.
#[derive(Clone, Copy, Debug)]
pub struct SelfTestPassed {
    /// The hook that releases dead handshakes at once, or `None` (the periodic sweep).
    pub release: Option<&'static str>,
    pub elapsed: Duration,
}

/// Why the kernel limiter must not be trusted on this host.
#[derive(Debug, thiserror::Error)]
pub enum SelfTestError {
    #[error("the self-test cannot run: {what}: {source} (is loopback up?)")]
    Setup {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Load(#[from] EbpfError),
    #[error(
        "this kernel does not hold the limit: {0} (limit 1 for {SELF_TEST_SOURCE} on a private \
         loopback listener)"
    )]
    NotEnforced(String),
}

fn setup(what: &'static str) -> impl FnOnce(io::Error) -> SelfTestError {
    move |source| SelfTestError::Setup { what, source }
}

/// Runs the self-test. `avoid`: the real listening ports (the private listener never takes
/// one, so the real limiters' tracing programs ignore it).
pub fn run(avoid: &[u16]) -> Result<SelfTestPassed, SelfTestError> {
    let t0 = Instant::now();
    let listener = private_listener(avoid)?;
    let to = listener
        .local_addr()
        .map_err(setup("reading the listener address"))?;
    let cfg = LimitConfig {
        per_ip_connections: 1,
        ip_overrides: Vec::new(),
    };
    let lim = EbpfLimiter::attach(&[listener.as_fd()], &[to.port()], &cfg)?;
    let src = IpAddr::V4(SELF_TEST_SOURCE);
    let fail = |why: String| SelfTestError::NotEnforced(why);

    let first = connect(to).map_err(|e| fail(format!("the first connection failed: {e}")))?;
    let first_server = accept(&listener)?;
    if !wait(|| lim.connections_of(src) == 1 && lim.pending_reservations() == 0) {
        return Err(fail(format!(
            "an open connection does not hold its slot (slots {}, pending reservations {})",
            lim.connections_of(src),
            lim.pending_reservations()
        )));
    }
    match connect(to) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Ok(_) => {
            return Err(fail(
                "a second connection was accepted while the first was open".into(),
            ))
        }
        Err(e) => {
            return Err(fail(format!(
                "a second connection was not refused but failed otherwise: {e}"
            )))
        }
    }
    drop((first, first_server));
    if !wait(|| lim.connections_of(src) == 0) {
        return Err(fail(format!(
            "a closed connection's slot was not released (slots {})",
            lim.connections_of(src)
        )));
    }
    let again = connect(to).map_err(|e| {
        fail(format!(
            "a connection after the first closed was refused: {e}"
        ))
    })?;
    let again_server = accept(&listener)?;
    drop((again, again_server));
    let release = lim.immediate_release();
    lim.detach()?;
    Ok(SelfTestPassed {
        release,
        elapsed: t0.elapsed(),
    })
}

fn private_listener(avoid: &[u16]) -> Result<TcpListener, SelfTestError> {
    for _ in 0..8 {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).map_err(setup("socket"))?;
        s.set_reuse_port(true).map_err(setup("SO_REUSEPORT"))?;
        s.bind(&SocketAddr::new(IpAddr::V4(LISTEN_ON), 0).into())
            .map_err(setup("binding the private listener"))?;
        s.listen(8).map_err(setup("listen"))?;
        s.set_nonblocking(true).map_err(setup("O_NONBLOCK"))?;
        let l: TcpListener = s.into();
        let port = l.local_addr().map_err(setup("getsockname"))?.port();
        if !avoid.contains(&port) {
            return Ok(l);
        }
    }
    Err(SelfTestError::Setup {
        what: "an ephemeral port that is not a listening port",
        source: io::Error::from(ErrorKind::AddrInUse),
    })
}

fn connect(to: SocketAddr) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    s.bind(&SocketAddr::new(IpAddr::V4(SELF_TEST_SOURCE), 0).into())?;
    s.connect_timeout(&to.into(), BOUND)?;
    Ok(s.into())
}

fn accept(l: &TcpListener) -> Result<TcpStream, SelfTestError> {
    let t0 = Instant::now();
    loop {
        match l.accept() {
            Ok((s, _)) => return Ok(s),
            Err(e) if e.kind() == ErrorKind::WouldBlock && t0.elapsed() < BOUND => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(setup("accepting on the private listener")(e)),
        }
    }
}

/// Polls the kernel's counts (updated by its tracing programs, not an event we can await)
/// until `ok`, bounded by [`BOUND`].
fn wait(mut ok: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while !ok() {
        if t0.elapsed() > BOUND {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}
