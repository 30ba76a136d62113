//! Per-source-IP connection limits (`[limits] per_ip_connections`, `ip_overrides`), enforced
//! before any TLS work: by eBPF at the SYN (root) and by the userspace fallback at accept.
//! Clients bind distinct loopback sources (127.0.0.2, 127.0.0.3, …) to act as different IPs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::harness::*;

pub(crate) const CONFIG: &str = "[limits]\nper_ip_connections = 3\n\
                      ip_overrides = [{ cidr = \"127.0.0.9/32\", limit = 0 }, \
                      { cidr = \"127.0.0.10/32\", limit = 5 }]\n";

fn source(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection from `from` to the server.
async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    within(WAIT, "TCP connect", socket.connect(to)).await
}

/// A TLS session from `from`, or the error of whichever step failed.
async fn tls_from(srv: &Server, from: IpAddr) -> Result<TlsStream<TcpStream>, String> {
    let tcp = tcp_from(from, srv.addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    within(
        WAIT,
        "TLS handshake",
        TlsConnector::from(srv.tls_config()).connect(name, tcp),
    )
    .await
    .map_err(|e| format!("TLS: {e}"))
}

/// An upgraded session from `from` (panics if refused).
async fn session_from(srv: &Server, from: IpAddr) -> RawWs {
    let tls = tls_from(srv, from)
        .await
        .expect("a session within the limit");
    srv.raw_over(tls).await
}

/// What a refused client sees: nothing of TLS. Under eBPF the SYN itself is refused
/// (ECONNREFUSED); in userspace the connection is accepted and closed before any byte.
async fn expect_refused_before_tls(srv: &Server, from: IpAddr) {
    match tcp_from(from, srv.addr).await {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "a refused SYN: {e}"
        ),
        Ok(mut tcp) => {
            // A ClientHello's first bytes: the edge must not answer with any TLS byte.
            let _ = tcp.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05]).await;
            let mut buf = [0u8; 64];
            let read = within(WAIT, "the refusal", tcp.read(&mut buf)).await;
            assert!(
                matches!(read, Ok(0) | Err(_)),
                "a refused connection got bytes: {read:?}"
            );
        }
    }
}

/// Retries a session from `from` until the limit lets it in (a closed slot comes back once the
/// server has seen the close), bounded.
async fn session_when_freed(srv: &Server, from: IpAddr) -> RawWs {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(tls) = tls_from(srv, from).await {
            return srv.raw_over(tls).await;
        }
        assert!(Instant::now() < deadline, "the freed slot never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The scenario both limiters must pass: limit 3 from one source, others unaffected, a closed
/// connection frees its slot, a blocked CIDR and a raised override.
pub(crate) async fn limits_hold(srv: &Server) {
    let a = source(2);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(session_from(srv, a).await);
    }
    expect_refused_before_tls(srv, a).await;
    // Another source is not affected.
    let _other = session_from(srv, source(3)).await;
    // Closing one session frees its slot.
    drop(held.pop());
    held.push(session_when_freed(srv, a).await);
    // A blocked CIDR is refused; an override raises the limit to 5.
    expect_refused_before_tls(srv, source(9)).await;
    let mut raised = Vec::new();
    for _ in 0..5 {
        raised.push(session_from(srv, source(10)).await);
    }
    expect_refused_before_tls(srv, source(10)).await;
}

#[tokio::test]
async fn the_userspace_limiter_refuses_at_accept_before_tls() {
    let srv = ServerBuilder::new()
        .config(&format!("{CONFIG}ip_limiter = \"userspace\"\n"))
        .start();
    limits_hold(&srv).await;
    assert_eq!(
        srv.metric("wssedge_ip_limiter", &[("mode", "userspace")])
            .await,
        1.0
    );
    srv.wait_metric("wssedge_refusals_total", &[("reason", "ip_limit")], 2.0)
        .await;
    srv.wait_metric("wssedge_refusals_total", &[("reason", "ip_blocked")], 1.0)
        .await;
    srv.wait_metric("wssedge_ip_refused_total", &[("addr", "127.0.0.2")], 1.0)
        .await;
}

#[tokio::test]
async fn the_ebpf_limiter_refuses_the_syn() {
    let builder = ServerBuilder::new().config(&format!("{CONFIG}ip_limiter = \"ebpf\"\n"));
    let srv = match builder.try_start() {
        Ok(srv) => srv,
        Err(why) if !is_root() => {
            visible_line(&format!("skipped: the eBPF limiter needs root ({why})"));
            return;
        }
        Err(why) => panic!("the eBPF limiter must load as root: {why}"),
    };
    // The edge claims the kernel limit only after proving this kernel holds it.
    let log = srv.proc.stderr();
    assert!(
        log.contains("self-test passed"),
        "no passed self-test in the start-up log:\n{log}"
    );
    limits_hold(&srv).await;
    assert_eq!(
        srv.metric("wssedge_ip_limiter", &[("mode", "ebpf")]).await,
        1.0
    );
    srv.wait_metric("wssedge_ip_limit_total", &[("event", "refused_limit")], 2.0)
        .await;
    srv.wait_metric(
        "wssedge_ip_limit_total",
        &[("event", "refused_blocked")],
        1.0,
    )
    .await;
    // The kernel refused before accept: nothing of this reached the refusal path at accept.
    assert_eq!(
        srv.metric("wssedge_refusals_total", &[("reason", "ip_limit")])
            .await,
        0.0
    );
}

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `wssedge ctl reload` applies new per-IP rules without a restart: a limit raised from 3 to 4
/// lets one more session in at once; a bad file changes nothing and says why.
#[tokio::test]
async fn a_reload_applies_new_limits_live() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("ctl.sock");
    let srv = ServerBuilder::new()
        .config(&format!("{CONFIG}ip_limiter = \"userspace\"\n"))
        .arg("--control")
        .arg(socket.to_str().expect("UTF-8"))
        .start();
    let a = source(2);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(session_from(&srv, a).await);
    }
    expect_refused_before_tls(&srv, a).await;
    let raised = CONFIG.replace("per_ip_connections = 3", "per_ip_connections = 4");
    std::fs::write(
        srv.config_path(),
        format!("{raised}ip_limiter = \"userspace\"\n"),
    )
    .expect("rewrite the config");
    let out = ctl(&socket, &["reload"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("per-IP limit 4"), "{out:#?}");
    held.push(session_from(&srv, a).await);
    expect_refused_before_tls(&srv, a).await;
    // A broken file is refused with its reason; the running limits stay.
    std::fs::write(
        srv.config_path(),
        "[limits]\nper_ip_connections = \"many\"\n",
    )
    .expect("rewrite the config");
    let out = ctl(&socket, &["reload"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(
        out.stdout.contains("per_ip_connections") || out.stderr.contains("per_ip_connections"),
        "{out:#?}"
    );
    expect_refused_before_tls(&srv, a).await;
}
