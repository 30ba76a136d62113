//! Sockets: the stream type, connection setup (TCP → TLS → upgrade), a precise pacing
//! timer (timerfd) and the process CPU clock.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

use crate::ws::{self, FrameTemplate, Reader, Rng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    Wss,
    Ws,
    Tls,
    Tcp,
}

impl Proto {
    pub fn ws(self) -> bool {
        matches!(self, Proto::Wss | Proto::Ws)
    }
    pub fn tls(self) -> bool {
        matches!(self, Proto::Wss | Proto::Tls)
    }
    pub fn name(self) -> &'static str {
        match self {
            Proto::Wss => "wss",
            Proto::Ws => "ws",
            Proto::Tls => "tls",
            Proto::Tcp => "tcp",
        }
    }
}

/// Where and how to connect; shared read-only by all threads.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host_header: String,
    pub path: String,
    pub server_name: ServerName<'static>,
    pub proto: Proto,
    pub tls: Option<TlsConnector>,
    pub payload: usize,
    pub text: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub source_ips: Vec<IpAddr>,
    /// Extra request header lines for the upgrade, each ending in CRLF.
    pub headers: String,
    /// Mint a fresh bearer token (its own jti) for every connection's upgrade.
    pub mint: Option<std::sync::Arc<crate::token::Minter>>,
}

/// Splits `scheme://host[:port][/path]`; returns (scheme, host, port, path).
pub fn parse_url(url: &str) -> anyhow::Result<(String, String, u16, String)> {
    let (scheme, rest) = url.split_once("://").context("URL needs scheme://")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let default_port = match scheme {
        "wss" | "https" | "tls" => 443,
        _ => 80,
    };
    let (host, port) = if let Some(h) = hostport.strip_prefix('[') {
        let (h, p) = h.split_once(']').context("bad IPv6 host")?;
        let port = p.strip_prefix(':').map(str::parse).transpose()?;
        (h.to_string(), port.unwrap_or(default_port))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().context("bad port")?),
            None => (hostport.to_string(), default_port),
        }
    };
    if host.is_empty() {
        bail!("URL has no host");
    }
    Ok((scheme.to_string(), host, port, path))
}

pub fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .with_context(|| format!("{host} resolves to nothing"))
}

pub fn tls_connector(ca: Option<&std::path::Path>) -> anyhow::Result<TlsConnector> {
    let ca = ca.context("--ca PEM is required for wss/tls")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots.add(cert.context("bad PEM")?)?;
    }
    if roots.is_empty() {
        bail!("{}: no certificates", ca.display());
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(cfg)))
}

pub enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One established (and, for ws/wss, upgraded) connection.
pub struct Conn {
    pub s: Stream,
    pub rd: Reader,
    pub tmpl: FrameTemplate,
    pub mask: [u8; 4],
    pub ws: bool,
}

impl Conn {
    /// Polite close: WS close frame (and wait briefly for the server's), then TLS close_notify.
    pub async fn close(mut self) {
        let fut = async {
            if self.ws {
                let mut out = Vec::with_capacity(8);
                ws::control_frame(ws::OP_CLOSE, &1000u16.to_be_bytes(), self.mask, &mut out);
                self.s.write_all(&out).await?;
                self.s.flush().await?;
                loop {
                    match self.rd.next_event() {
                        Ok(Some(ws::Ev::Close(_))) | Err(_) => break,
                        Ok(Some(_)) => continue,
                        Ok(None) => {}
                    }
                    let n = self.s.read(self.rd.spare()).await?;
                    if n == 0 {
                        break;
                    }
                    self.rd.filled(n);
                }
            }
            self.s.shutdown().await
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), fut).await;
    }

    /// Abrupt end, as a crashed or cut-off client: the first half of a frame, then a TCP reset
    /// (SO_LINGER 0) with no close frame and no close_notify.
    pub async fn abort_mid_frame(mut self) {
        let wire = self.tmpl.with_tag(0).to_vec();
        let _ = self.s.write_all(&wire[..wire.len() / 2]).await;
        let _ = self.s.flush().await;
        let tcp = match &self.s {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        };
        let _ = tcp.set_zero_linger();
    }

    /// Sends one tagged message and waits for its echo; answers pings on the way.
    pub async fn echo_once(&mut self, base: Instant) -> Result<(), String> {
        let tag = base.elapsed().as_nanos() as u64;
        let wire = self.tmpl.with_tag(tag);
        self.s
            .write_all(wire)
            .await
            .map_err(|e| format!("io: {:?}", e.kind()))?;
        self.s
            .flush()
            .await
            .map_err(|e| format!("io: {:?}", e.kind()))?;
        loop {
            match self.rd.next_event() {
                Ok(Some(ws::Ev::Msg(t))) if t == tag => return Ok(()),
                Ok(Some(ws::Ev::Msg(_))) => return Err("echo: wrong tag".into()),
                Ok(Some(ws::Ev::Ping(p))) => {
                    let mut out = Vec::new();
                    ws::control_frame(ws::OP_PONG, &p, self.mask, &mut out);
                    self.s
                        .write_all(&out)
                        .await
                        .map_err(|e| format!("io: {:?}", e.kind()))?;
                }
                Ok(Some(ws::Ev::Close(c))) => {
                    return Err(format!("server close {}", c.unwrap_or(0)))
                }
                Ok(None) => {}
                Err(e) => return Err(format!("protocol: {e}")),
            }
            let n = self
                .s
                .read(self.rd.spare())
                .await
                .map_err(|e| format!("io: {:?}", e.kind()))?;
            if n == 0 {
                return Err("eof".into());
            }
            self.rd.filled(n);
        }
    }
}

/// TCP connect → TLS → upgrade (101 received). Returns the connection and the time that took.
pub async fn connect(
    t: &Target,
    idx: usize,
    rng: &mut Rng,
    read_cap: usize,
) -> Result<(Conn, Duration), String> {
    match tokio::time::timeout(t.connect_timeout, connect_inner(t, idx, rng, read_cap)).await {
        Ok(r) => r,
        Err(_) => Err("handshake timeout".into()),
    }
}

/// A TCP connection to the target (no TLS, no upgrade), from the `idx`-th source address
/// when sources are given; Nagle off.
pub async fn tcp_connect(t: &Target, idx: usize) -> Result<TcpStream, String> {
    let sock = if t.addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("socket: {:?}", e.kind()))?;
    if !t.source_ips.is_empty() {
        let src = t.source_ips[idx % t.source_ips.len()];
        sock.bind(SocketAddr::new(src, 0))
            .map_err(|e| format!("bind: {:?}", e.kind()))?;
    }
    let tcp = sock
        .connect(t.addr)
        .await
        .map_err(|e| format!("connect: {:?}", e.kind()))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("nodelay: {:?}", e.kind()))?;
    Ok(tcp)
}

async fn connect_inner(
    t: &Target,
    idx: usize,
    rng: &mut Rng,
    read_cap: usize,
) -> Result<(Conn, Duration), String> {
    let started = Instant::now();
    let tcp = tcp_connect(t, idx).await?;
    let mut s = match &t.tls {
        Some(c) => Stream::Tls(Box::new(
            c.connect(t.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("tls: {:?}", e.kind()))?,
        )),
        None => Stream::Plain(tcp),
    };
    let mask = rng.next().to_le_bytes();
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    let ws = t.proto.ws();
    let mut rd = Reader::new(ws, t.payload, t.text, read_cap);
    if ws {
        let key = ws::new_key(rng);
        let accept = ws::accept_for(&key);
        let req = match &t.mint {
            Some(m) => {
                let headers = format!("{}Authorization: Bearer {}\r\n", t.headers, m.next());
                ws::upgrade_request(&t.host_header, &t.path, &key, &headers)
            }
            None => ws::upgrade_request(&t.host_header, &t.path, &key, &t.headers),
        };
        s.write_all(&req)
            .await
            .map_err(|e| format!("upgrade io: {:?}", e.kind()))?;
        s.flush()
            .await
            .map_err(|e| format!("upgrade io: {:?}", e.kind()))?;
        loop {
            let n = s
                .read(rd.spare())
                .await
                .map_err(|e| format!("upgrade io: {:?}", e.kind()))?;
            if n == 0 {
                return Err("upgrade: eof".into());
            }
            rd.filled(n);
            if let Some(head) = ws::check_response(rd.pending(), &accept)? {
                rd.consume(head);
                break;
            }
        }
    }
    let tmpl = FrameTemplate::new(ws, t.payload, t.text, mask);
    Ok((
        Conn {
            s,
            rd,
            tmpl,
            mask,
            ws,
        },
        started.elapsed(),
    ))
}

/// A one-shot nanosecond-precision timer (timerfd) for open-loop pacing; tokio's own
/// timer rounds to milliseconds, which would show up as fake latency.
pub struct Pacer {
    fd: AsyncFd<OwnedFd>,
}

impl Pacer {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain syscall with constant flags; the result is checked before use.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly created fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: `fd` is an open timerfd moved into the AsyncFd, which owns it (and keeps
        // returning the same raw fd) until it is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Pacer { fd })
    }

    /// Fires once after `after` (at least 1 ns: zero would disarm).
    pub fn arm(&self, after: Duration) -> io::Result<()> {
        let ns = after.as_nanos().max(1);
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (ns / 1_000_000_000) as libc::time_t,
                tv_nsec: (ns % 1_000_000_000) as libc::c_long,
            },
        };
        // SAFETY: the fd is a valid timerfd owned by self; `spec` lives across the call and
        // the old-value pointer may be null.
        let r =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the timer to fire (cancel safe).
    pub async fn wait(&self) -> io::Result<()> {
        loop {
            let mut g = self.fd.readable().await?;
            let mut v = [0u8; 8];
            // SAFETY: reads 8 bytes into a valid 8-byte buffer from our own timerfd.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
            if r == 8 {
                return Ok(());
            }
            g.clear_ready();
        }
    }
}

/// User + system CPU seconds of the whole process so far.
pub fn cpu_now() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct on success; we only read it when it returns 0.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } == 0;
    if !ok {
        return 0.0;
    }
    // SAFETY: initialised by the successful call above.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("wss://127.0.0.1:8443/").unwrap(),
            ("wss".into(), "127.0.0.1".into(), 8443, "/".into())
        );
        assert_eq!(parse_url("ws://localhost/x").unwrap().2, 80);
        assert_eq!(parse_url("wss://[::1]:9/").unwrap().1, "::1");
        assert!(parse_url("nohost").is_err());
    }

    #[test]
    fn cpu_clock_moves() {
        let a = cpu_now();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_now() > a);
    }

    #[test]
    fn pacer_fires() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let p = Pacer::new().unwrap();
            let t = Instant::now();
            p.arm(Duration::from_micros(300)).unwrap();
            p.wait().await.unwrap();
            let e = t.elapsed();
            assert!(
                e >= Duration::from_micros(300) && e < Duration::from_millis(100),
                "{e:?}"
            );
        });
    }
}
