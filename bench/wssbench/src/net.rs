//! Sockets: the stream type, connection setup (TCP → TLS → upgrade), a precise pacing
//! timer (timerfd) and the process CPU clock.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
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
use crate::{deflate, market};

/// What one kind of connection moved, process-wide: WebSocket bytes (frames, what goes into
/// and comes out of TLS) and data messages received. Sampled at the measured window's edges;
/// relaxed atomics, as the threads only ever add.
pub struct Wire {
    pub rx: AtomicU64,
    pub tx: AtomicU64,
    /// Data messages sent (echoes, publications) and received, and how many of those
    /// received were compressed (RSV1).
    pub sent: AtomicU64,
    pub msgs: AtomicU64,
    pub compressed: AtomicU64,
    /// What the compressed ones inflated to.
    pub inflated: AtomicU64,
}

impl Wire {
    const fn new() -> Self {
        Wire {
            rx: AtomicU64::new(0),
            tx: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            msgs: AtomicU64::new(0),
            compressed: AtomicU64::new(0),
            inflated: AtomicU64::new(0),
        }
    }

    /// One data message received; `inflated`: it was compressed and inflated to this size.
    pub fn message(&self, inflated: Option<usize>) {
        self.msgs.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = inflated {
            self.compressed.fetch_add(1, Ordering::Relaxed);
            self.inflated.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub fn message_sent(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> WireSnap {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        WireSnap {
            rx: l(&self.rx),
            tx: l(&self.tx),
            sent: l(&self.sent),
            msgs: l(&self.msgs),
            compressed: l(&self.compressed),
            inflated: l(&self.inflated),
        }
    }
}

/// [`Wire`] at one instant (or the difference of two).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireSnap {
    pub rx: u64,
    pub tx: u64,
    pub sent: u64,
    pub msgs: u64,
    pub compressed: u64,
    pub inflated: u64,
}

impl std::ops::Sub for WireSnap {
    type Output = WireSnap;
    fn sub(self, o: WireSnap) -> WireSnap {
        WireSnap {
            rx: self.rx.saturating_sub(o.rx),
            tx: self.tx.saturating_sub(o.tx),
            sent: self.sent.saturating_sub(o.sent),
            msgs: self.msgs.saturating_sub(o.msgs),
            compressed: self.compressed.saturating_sub(o.compressed),
            inflated: self.inflated.saturating_sub(o.inflated),
        }
    }
}

/// `WIRE[0]`: echo connections and fan-out subscribers; `WIRE[PUBLISHER]`: the fan-out
/// publisher, apart, so per-delivery bytes are the subscribers' alone.
pub static WIRE: [Wire; 2] = [Wire::new(), Wire::new()];
pub const PUBLISHER: usize = 1;

pub fn wire_now() -> [WireSnap; 2] {
    [WIRE[0].snapshot(), WIRE[1].snapshot()]
}

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
    /// Offer permessage-deflate in the upgrade (and use it when agreed).
    pub deflate: bool,
    /// Echo payloads are market-data JSON (text), the tag at `market::TAG_OFFSET`.
    pub market: bool,
    /// Which [`WIRE`] counters this target's connections add to.
    pub wire: usize,
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

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A connection's byte stream (plaintext side of TLS), every byte counted into its [`Wire`].
pub struct Stream {
    io: Io,
    wire: &'static Wire,
}

impl Stream {
    pub fn plain(s: TcpStream, wire: usize) -> Self {
        Stream {
            io: Io::Plain(s),
            wire: &WIRE[wire],
        }
    }
    pub fn tls(s: tokio_rustls::client::TlsStream<TcpStream>, wire: usize) -> Self {
        Stream {
            io: Io::Tls(Box::new(s)),
            wire: &WIRE[wire],
        }
    }
    pub fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(s) => s,
            Io::Tls(s) => s.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = match &mut me.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        let n = buf.filled().len().saturating_sub(before);
        me.wire.rx.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = match &mut me.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        if let Poll::Ready(Ok(n)) = &r {
            me.wire.tx.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
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
    /// permessage-deflate, when the server agreed to it.
    pub deflate: Option<deflate::Agreement>,
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
        let _ = self.s.tcp().set_zero_linger();
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
        Some(c) => Stream::tls(
            c.connect(t.server_name.clone(), tcp)
                .await
                .map_err(|e| format!("tls: {:?}", e.kind()))?,
            t.wire,
        ),
        None => Stream::plain(tcp, t.wire),
    };
    let mask = rng.next().to_le_bytes();
    let mask = [mask[0], mask[1], mask[2], mask[3]];
    let ws = t.proto.ws();
    let mut rd = Reader::new(ws, t.payload, t.text, read_cap);
    rd.set_counters(&WIRE[t.wire]);
    let mut agreed = None;
    if ws {
        let key = ws::new_key(rng);
        let accept = ws::accept_for(&key);
        let offer = if t.deflate { deflate::OFFER } else { "" };
        let req = match &t.mint {
            Some(m) => {
                let headers = format!("{}Authorization: Bearer {}\r\n{offer}", t.headers, m.next());
                ws::upgrade_request(&t.host_header, &t.path, &key, &headers)
            }
            None => {
                let headers = format!("{}{offer}", t.headers);
                ws::upgrade_request(&t.host_header, &t.path, &key, &headers)
            }
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
                let answer = ws::header_values(&rd.pending()[..head], "sec-websocket-extensions");
                agreed = deflate::parse_agreement(&answer, t.deflate)?;
                if t.deflate {
                    deflate::count(agreed.as_ref(), &answer);
                }
                rd.consume(head);
                break;
            }
        }
    }
    if let Some(a) = &agreed {
        rd.set_inflater(a.server_no_context_takeover);
    }
    let window = agreed.map(|a| a.client_window_bits);
    let mut tmpl = if t.market {
        rd.set_tag_offset(market::TAG_OFFSET);
        let body = market::echo_message(t.payload, idx as u64);
        FrameTemplate::with_body(ws, body, market::TAG_OFFSET, t.text, mask, window)
    } else if window.is_some() {
        let body = (0..t.payload).map(|i| b'a' + (i % 26) as u8).collect();
        FrameTemplate::with_body(ws, body, 0, t.text, mask, window)
    } else {
        FrameTemplate::new(ws, t.payload, t.text, mask)
    };
    tmpl.set_counters(&WIRE[t.wire]);
    Ok((
        Conn {
            s,
            rd,
            tmpl,
            mask,
            ws,
            deflate: agreed,
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
    fn wire_counts_both_ways_and_messages_apart() {
        let w = Wire::new();
        w.message(None);
        w.message(Some(500));
        w.rx.fetch_add(10, Ordering::Relaxed);
        let a = w.snapshot();
        assert_eq!((a.msgs, a.compressed, a.inflated, a.rx), (2, 1, 500, 10));
        w.tx.fetch_add(7, Ordering::Relaxed);
        w.message(Some(100));
        w.message_sent();
        let d = w.snapshot() - a;
        assert_eq!(
            d,
            WireSnap {
                rx: 0,
                tx: 7,
                sent: 1,
                msgs: 1,
                compressed: 1,
                inflated: 100
            }
        );
        // a counter that went backwards (never) does not wrap
        assert_eq!((a - w.snapshot()).tx, 0);

        // the stream counts what really crossed it
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let c = TcpStream::connect(addr).await.unwrap();
            let (mut srv, _) = l.accept().await.unwrap();
            let before = WIRE[PUBLISHER].snapshot();
            let mut s = Stream::plain(c, PUBLISHER);
            s.write_all(&[1; 300]).await.unwrap();
            let mut got = [0u8; 300];
            srv.read_exact(&mut got).await.unwrap();
            srv.write_all(&[2; 40]).await.unwrap();
            let mut back = [0u8; 40];
            s.read_exact(&mut back).await.unwrap();
            let d = WIRE[PUBLISHER].snapshot() - before;
            assert_eq!((d.tx, d.rx), (300, 40));
        });
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
