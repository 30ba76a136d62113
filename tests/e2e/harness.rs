//! Test harness: starts the real `wssedge` binary on ephemeral loopback ports with a temporary
//! state dir, parses its start lines, and kills it on drop. Clients are independent of the
//! server code: tokio-rustls for TLS, tokio-tungstenite for WebSocket, and a small raw frame
//! codec for the cases tungstenite refuses to produce.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::protocol::{Message, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// Upper bound for any single wait in these tests (the machine is shared and loaded).
pub const WAIT: Duration = Duration::from_secs(10);

pub const BIN: &str = env!("CARGO_BIN_EXE_wssedge");

pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Runs `fut` with a deadline; panics with `what` when it expires.
pub async fn within<T>(d: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(d, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {d:?}: {what}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------------------------

/// How to start a server. Defaults: one core, `--listen 127.0.0.1:0 --admin 127.0.0.1:0`, a
/// fresh temporary state dir, the dev certificate.
pub struct ServerBuilder {
    config: Option<String>,
    cores: Option<u32>,
    listen: Option<String>,
    args: Vec<String>,
    state_dir: Option<PathBuf>,
    /// Pass no --listen/--admin/--state-dir/--cores: the config file must supply them.
    config_only: bool,
}

impl Default for ServerBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ServerBuilder {
    pub fn new() -> Self {
        ServerBuilder {
            config: None,
            cores: Some(1),
            listen: None,
            args: Vec::new(),
            state_dir: None,
            config_only: false,
        }
    }
    /// TOML written to a file in the state dir and passed with `--config`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }
    pub fn cores(mut self, n: u32) -> Self {
        self.cores = Some(n);
        self
    }
    /// Leave the core count to the config file / the server's default.
    pub fn no_cores_flag(mut self) -> Self {
        self.cores = None;
        self
    }
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_string());
        self
    }
    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
    /// Take listen/admin/state dir/cores from the config file only (set `state_dir` too so
    /// the harness knows where the state lives).
    pub fn config_only(mut self) -> Self {
        self.config_only = true;
        self
    }
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    fn command(&self, tmp: &Path) -> Command {
        let state = self.state_dir.clone().unwrap_or_else(|| tmp.join("state"));
        let mut cmd = Command::new(BIN);
        cmd.arg("serve");
        if let Some(cfg) = &self.config {
            let path = tmp.join("wssedge.toml");
            std::fs::write(&path, cfg).expect("write config");
            cmd.arg("--config").arg(path);
        }
        if !self.config_only {
            cmd.arg("--listen")
                .arg(self.listen.as_deref().unwrap_or("127.0.0.1:0"));
            cmd.arg("--admin").arg("127.0.0.1:0");
            cmd.arg("--state-dir").arg(state);
            if let Some(n) = self.cores {
                cmd.arg("--cores").arg(n.to_string());
            }
        }
        cmd.args(&self.args);
        cmd.env("RUST_BACKTRACE", "1");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the server and waits for both start lines (listening + admin).
    pub fn start(self) -> Server {
        match self.try_start() {
            Ok(s) => s,
            Err(e) => panic!("server did not start: {e}"),
        }
    }

    pub fn try_start(self) -> Result<Server, String> {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = self.command(tmp.path());
        let child = cmd.spawn().map_err(|e| format!("spawn {BIN}: {e}"))?;
        let mut proc = Proc::new(child);
        let state_dir = self
            .state_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("state"));

        let deadline = Instant::now() + WAIT;
        let mut ws: Option<(SocketAddr, Option<PathBuf>)> = None;
        let mut admin: Option<SocketAddr> = None;
        while ws.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match proc.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(parsed) = parse_listening(&line) {
                        ws.get_or_insert(parsed);
                    } else if let Some(a) = parse_admin(&line) {
                        admin.get_or_insert(a);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no start lines within {WAIT:?}; stdout so far {:?}; stderr:\n{}",
                        proc.stdout_seen(),
                        proc.stderr()
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = proc.wait_timeout(Duration::from_secs(5));
                    return Err(format!(
                        "server exited before its start lines ({status:?}); stdout {:?}; stderr:\n{}",
                        proc.stdout_seen(),
                        proc.stderr()
                    ));
                }
            }
        }
        let (addr, trust) = ws.unwrap();
        Ok(Server {
            proc,
            addr,
            admin: admin.unwrap(),
            ca_pem: trust,
            state_dir,
            _tmp: tmp,
        })
    }

    /// Runs `serve` expecting it to exit by itself (a refused start); returns its exit status
    /// and stderr. Kills it after `WAIT` if it does not exit (and panics).
    pub fn run_expect_exit(self) -> (ExitStatus, String, String) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut cmd = self.command(tmp.path());
        let child = cmd.spawn().expect("spawn wssedge");
        let mut proc = Proc::new(child);
        match proc.wait_timeout(WAIT) {
            Some(status) => {
                // Let the reader threads drain.
                std::thread::sleep(Duration::from_millis(50));
                (status, proc.stdout_seen().join("\n"), proc.stderr())
            }
            None => panic!(
                "wssedge serve was expected to exit but still runs after {WAIT:?}; stdout {:?}; stderr:\n{}",
                proc.stdout_seen(),
                proc.stderr()
            ),
        }
    }
}

/// `listening on wss://127.0.0.1:PORT/ (trust DIR/dev-ca.pem)` or `listening on wss://ADDR/`.
pub fn parse_listening(line: &str) -> Option<(SocketAddr, Option<PathBuf>)> {
    let rest = line.trim().strip_prefix("listening on wss://")?;
    let (addr, tail) = rest.split_once('/')?;
    let addr: SocketAddr = addr.parse().ok()?;
    let trust = tail
        .trim()
        .strip_prefix("(trust ")
        .and_then(|t| t.strip_suffix(')'))
        .map(PathBuf::from);
    Some((addr, trust))
}

/// `admin on http://127.0.0.1:PORT/`.
pub fn parse_admin(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("admin on http://")?;
    rest.trim_end_matches('/').parse().ok()
}

/// A child process with its stdout lines on a channel and its stderr collected; killed (by its
/// own PID) and reaped on drop.
pub struct Proc {
    child: Child,
    pub lines: mpsc::Receiver<String>,
    seen: Arc<Mutex<Vec<String>>>,
    err: Arc<Mutex<String>>,
}

impl Proc {
    fn new(mut child: Child) -> Proc {
        let (tx, rx) = mpsc::channel();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("piped stdout");
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                seen2.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut errp = child.stderr.take().expect("piped stderr");
        let err2 = err.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                match errp.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut e = err2.lock().unwrap();
                        // Keep the tail bounded: a chatty server must not eat the test's memory.
                        if e.len() > 1 << 20 {
                            let cut = e.len() - (1 << 19);
                            let cut = (cut..e.len())
                                .find(|i| e.is_char_boundary(*i))
                                .unwrap_or(e.len());
                            e.drain(..cut);
                        }
                        e.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            }
        });
        Proc {
            child,
            lines: rx,
            seen,
            err,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }
    pub fn stdout_seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
    /// As [`Proc::wait_timeout`], without blocking the test's runtime: its other tasks (clients
    /// the process is still serving) go on while it waits.
    pub async fn exited_within(&mut self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(end) = self.exit_by(deadline) {
                return end;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    pub fn wait_timeout(&mut self, d: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + d;
        loop {
            if let Some(end) = self.exit_by(deadline) {
                return end;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    /// One look while waiting for the exit: `Some(status)` when it exited, `Some(None)` past
    /// the deadline, `None` to look again.
    fn exit_by(&mut self, deadline: Instant) -> Option<Option<ExitStatus>> {
        match self.try_wait() {
            Some(s) => Some(Some(s)),
            None if Instant::now() >= deadline => Some(None),
            None => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- wssedge (pid {}) stderr ----\n{}",
                self.child.id(),
                self.stderr()
            );
        }
    }
}

/// A running server; killed when dropped.
pub struct Server {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// The dev CA the server announced (`None` with `--cert`).
    pub ca_pem: Option<PathBuf>,
    pub state_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Server {
    pub fn start() -> Server {
        ServerBuilder::new().start()
    }
    pub fn with_config(toml: &str) -> Server {
        ServerBuilder::new().config(toml).start()
    }

    /// The configuration file the server was started with (to rewrite it before a reload).
    pub fn config_path(&self) -> PathBuf {
        self._tmp.path().join("wssedge.toml")
    }

    pub fn url(&self) -> String {
        format!("wss://{}/", self.addr)
    }

    pub fn tls_config(&self) -> Arc<ClientConfig> {
        let ca = self
            .ca_pem
            .as_ref()
            .expect("server runs with the dev certificate");
        client_config_trusting(ca, &[])
    }

    /// TCP + TLS to the server, trusting its dev CA (server name 127.0.0.1).
    pub async fn tls(&self) -> TlsStream<TcpStream> {
        tls_connect(self.addr, self.tls_config()).await
    }

    /// A WebSocket client (tokio-tungstenite) over our own TLS stream, without client-side size
    /// limits so that the server's limits are the ones under test.
    pub async fn ws(&self) -> Ws {
        ws_over(self.tls().await, &self.url()).await
    }

    /// A raw-frame WebSocket connection: TLS + our own upgrade request.
    pub async fn raw(&self) -> RawWs {
        self.raw_over(self.tls().await).await
    }

    /// The same upgrade over a TLS stream the caller made (its own suite, version or ALPN).
    pub async fn raw_over(&self, mut tls: TlsStream<TcpStream>) -> RawWs {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = upgrade_request(&self.addr.to_string(), key, &[]);
        tls.write_all(req.as_bytes()).await.expect("write upgrade");
        let (head, rest) = within(WAIT, "101 response", read_head(&mut tls))
            .await
            .expect("read 101");
        let status = status_code(&head);
        assert_eq!(status, Some(101), "upgrade refused: {head}");
        let accept = header(&head, "sec-websocket-accept").expect("Sec-WebSocket-Accept");
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "wrong accept key");
        RawWs::from_parts(tls, rest)
    }

    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// Sum of the samples of `name` whose labels include all of `labels` (extra labels allowed).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// Polls /metrics until the metric reaches `at_least` (counters may lag per core).
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let body = self.metrics().await;
            let v = metric_sum(&body, name, labels);
            if v >= at_least {
                return v;
            }
            if Instant::now() >= deadline {
                let related: Vec<&str> = body.lines().filter(|l| l.starts_with(name)).collect();
                panic!(
                    "metric {name}{labels:?} = {v}, expected >= {at_least}; samples: {related:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS + WebSocket clients
// ---------------------------------------------------------------------------------------------

pub fn client_config_trusting(ca_pem: &Path, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    let mut cfg = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots_trusting(ca_pem))
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// A root store holding every certificate of the PEM file `ca_pem`.
pub fn roots_trusting(ca_pem: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca_pem)
        .unwrap_or_else(|e| panic!("read {}: {e}", ca_pem.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("parse {}: {e}", ca_pem.display()));
    assert!(
        !certs.is_empty(),
        "{} holds no certificate",
        ca_pem.display()
    );
    for c in certs {
        roots.add(c).expect("add CA");
    }
    roots
}

pub async fn tls_connect(addr: SocketAddr, cfg: Arc<ClientConfig>) -> TlsStream<TcpStream> {
    within(WAIT, "TLS connect", async {
        let tcp = TcpStream::connect(addr).await.expect("TCP connect");
        tcp.set_nodelay(true).unwrap();
        let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
        TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    })
    .await
}

pub fn unlimited_ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None)
}

pub async fn ws_over(tls: TlsStream<TcpStream>, url: &str) -> Ws {
    let (ws, resp) = within(
        WAIT,
        "WebSocket upgrade",
        tokio_tungstenite::client_async_with_config(url, tls, Some(unlimited_ws_config())),
    )
    .await
    .expect("WebSocket upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

/// Sends `msg` and returns the next data message (pongs for our pings are skipped).
pub async fn echo(ws: &mut Ws, msg: Message) -> Message {
    within(WAIT, "send", ws.send(msg)).await.expect("send");
    next_data(ws).await
}

/// The next text/binary message (or close), skipping pings/pongs.
pub async fn next_data(ws: &mut Ws) -> Message {
    loop {
        let m = within(WAIT, "next message", ws.next()).await;
        match m {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(m)) => return m,
            Some(Err(e)) => panic!("WebSocket error: {e}"),
            None => panic!("connection ended while waiting for a message"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP bits
// ---------------------------------------------------------------------------------------------

pub fn upgrade_request(host: &str, key: &str, extra: &[(&str, &str)]) -> String {
    upgrade_request_path("/", host, key, extra)
}

/// [`upgrade_request`] for another request target (`/path?query`).
pub fn upgrade_request_path(path: &str, host: &str, key: &str, extra: &[(&str, &str)]) -> String {
    let mut r = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (k, v) in extra {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// Reads an HTTP response head (up to the blank line). Returns the head and any bytes after it.
pub async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "EOF before end of response head; got {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return Err(std::io::Error::other("response head too large"));
        }
    }
}

pub fn status_code(head: &str) -> Option<u16> {
    let line = head.lines().next()?;
    let mut parts = line.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads until EOF (or a reset), bounded by `d`. Returns the bytes and whether the stream ended
/// (false: still open at the deadline).
pub async fn read_to_close<S: AsyncRead + Unpin>(s: &mut S, d: Duration) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + d;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Err(_) => return (out, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, true),
            Ok(Ok(n)) => {
                out.extend_from_slice(&chunk[..n]);
                if out.len() > 64 << 20 {
                    return (out, false);
                }
            }
        }
    }
}

/// A one-shot HTTP/1.1 GET with `Connection: close`; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    within(WAIT, "admin HTTP GET", async {
        let mut s = TcpStream::connect(addr).await.expect("connect admin");
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.expect("write");
        let (head, mut rest) = read_head(&mut s).await.expect("response head");
        let status = status_code(&head).unwrap_or_else(|| panic!("bad status line: {head}"));
        if let Some(len) = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
            while rest.len() < len {
                let mut chunk = vec![0u8; 65536];
                let n = s.read(&mut chunk).await.expect("read body");
                if n == 0 {
                    break;
                }
                rest.extend_from_slice(&chunk[..n]);
            }
            rest.truncate(len);
        } else if header(&head, "transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            s.read_to_end(&mut rest).await.expect("read body");
            rest = dechunk(&rest);
        } else {
            s.read_to_end(&mut rest).await.expect("read body");
        }
        (status, String::from_utf8_lossy(&rest).into_owned())
    })
    .await
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(i) = b.windows(2).position(|w| w == b"\r\n") {
        let size_str = String::from_utf8_lossy(&b[..i]);
        let size =
            usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        b = &b[i + 2..];
        if size == 0 || b.len() < size {
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = &b[(size + 2).min(b.len())..];
    }
    out
}

/// Sum of the samples of metric `name` carrying all `labels` (other labels are ignored).
pub fn metric_sum(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.rfind('}') {
            Some(close) => (&line[..=close], &line[close + 1..]),
            None => match line.split_once(char::is_whitespace) {
                Some(x) => x,
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let (n, lbls) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i + 1..series.len() - 1])),
            None => (series, Vec::new()),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| lbls.iter().any(|(lk, lv)| lk == k && lv == v))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(body) = after.strip_prefix('"') else {
            break;
        };
        let mut val = String::new();
        let mut chars = body.char_indices();
        let mut end = body.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        val.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((key, val));
        rest = &body[end..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Raw frames
// ---------------------------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Encodes one frame. `mask: None` produces an (illegal from a client) unmasked frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    frame_rsv(fin, 0, opcode, payload, mask)
}

pub fn frame_rsv(fin: bool, rsv: u8, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(((fin as u8) << 7) | ((rsv & 0x7) << 4) | (opcode & 0x0f));
    let m = if mask.is_some() { 0x80 } else { 0 };
    let len = payload.len();
    if len < 126 {
        out.push(m | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(m | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(m | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    match mask {
        Some(k) => {
            out.extend_from_slice(&k);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

pub const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

/// A masked client frame.
pub fn cframe(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(fin, opcode, payload, MASK)
}

pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
    /// The reason text of a close frame (lossy UTF-8; empty without one).
    pub fn close_reason(&self) -> String {
        match self.payload.get(2..) {
            Some(r) if self.opcode == OP_CLOSE => String::from_utf8_lossy(r).into_owned(),
            _ => String::new(),
        }
    }
}

/// What the server did next.
#[derive(Debug)]
pub enum Event {
    Frame(Frame),
    /// EOF or reset without (further) frames.
    Closed,
}

/// Takes one complete frame off the front of `buf`, if one is there (frames from any source:
/// a `FrameReader`, or plaintext a blocking rustls client collected).
pub fn take_frame(buf: &mut Vec<u8>) -> Option<Frame> {
    let b = &*buf;
    if b.len() < 2 {
        return None;
    }
    let fin = b[0] & 0x80 != 0;
    let rsv = (b[0] >> 4) & 0x7;
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut off) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([b[2], b[3]]) as usize, 4)
        }
        127 => {
            if b.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(b[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    let mask = if masked {
        if b.len() < off + 4 {
            return None;
        }
        let k = [b[off], b[off + 1], b[off + 2], b[off + 3]];
        off += 4;
        Some(k)
    } else {
        None
    };
    if b.len() < off + len {
        return None;
    }
    let mut payload = b[off..off + len].to_vec();
    if let Some(k) = mask {
        for (i, x) in payload.iter_mut().enumerate() {
            *x ^= k[i % 4];
        }
    }
    buf.drain(..off + len);
    Some(Frame {
        fin,
        rsv,
        opcode,
        masked,
        payload,
    })
}

pub struct FrameReader<R> {
    pub io: R,
    pub buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Takes one complete frame off the front of `buf`, if one is there.
    pub fn parse_buffered(&mut self) -> Option<Frame> {
        take_frame(&mut self.buf)
    }

    /// The next frame, or `Closed` on EOF/reset. Panics after `WAIT`.
    pub async fn next(&mut self) -> Event {
        within(WAIT, "next frame from server", self.next_inner()).await
    }

    async fn next_inner(&mut self) -> Event {
        let mut chunk = vec![0u8; 65536];
        loop {
            if let Some(f) = self.parse_buffered() {
                return Event::Frame(f);
            }
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return Event::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads until a close frame arrives (returns its code, `None` for an empty close) or the
    /// stream ends (panics). Data frames and pings on the way are ignored.
    pub async fn expect_close(&mut self) -> Option<u16> {
        self.expect_close_frame().await.close_code()
    }

    /// Like `expect_close`, but returns the whole close frame (code and reason).
    pub async fn expect_close_frame(&mut self) -> Frame {
        loop {
            match self.next().await {
                Event::Frame(f) if f.opcode == OP_CLOSE => return f,
                Event::Frame(_) => continue,
                Event::Closed => panic!("connection ended without a close frame"),
            }
        }
    }

    /// Reads one whole data message (reassembling fragments; control frames skipped).
    pub async fn message(&mut self) -> (u8, Vec<u8>) {
        let mut kind = None;
        let mut data = Vec::new();
        loop {
            match self.next().await {
                Event::Frame(f) if f.opcode >= 0x8 => {
                    assert_ne!(
                        f.opcode,
                        OP_CLOSE,
                        "got close {:?} while waiting for a message",
                        f.close_code()
                    );
                }
                Event::Frame(f) => {
                    assert!(!f.masked, "server frames must not be masked");
                    if kind.is_none() {
                        assert_ne!(
                            f.opcode, OP_CONT,
                            "message started with a continuation frame"
                        );
                        kind = Some(f.opcode);
                    } else {
                        assert_eq!(
                            f.opcode, OP_CONT,
                            "new data frame inside a fragmented message"
                        );
                    }
                    data.extend_from_slice(&f.payload);
                    if f.fin {
                        return (kind.unwrap(), data);
                    }
                }
                Event::Closed => panic!("connection ended while waiting for a message"),
            }
        }
    }
}

pub struct RawWs<S = TlsStream<TcpStream>> {
    pub rd: FrameReader<ReadHalf<S>>,
    pub wr: WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawWs<S> {
    /// A raw connection over an already upgraded stream; `buffered` holds bytes read past the
    /// 101 (or past the last frame) that belong to the next frames.
    pub fn from_parts(stream: S, buffered: Vec<u8>) -> RawWs<S> {
        let (r, w) = tokio::io::split(stream);
        RawWs {
            rd: FrameReader {
                io: r,
                buf: buffered,
            },
            wr: w,
        }
    }
    /// The stream back (to reach its TLS state) and the bytes read but not yet parsed.
    pub fn into_parts(self) -> (S, Vec<u8>) {
        (self.rd.io.unsplit(self.wr), self.rd.buf)
    }
    pub async fn send(&mut self, bytes: &[u8]) {
        within(WAIT, "write frame", self.wr.write_all(bytes))
            .await
            .expect("write frame");
        self.wr.flush().await.expect("flush");
    }
    /// Like `send`, but tolerates the server having closed already.
    pub async fn send_lossy(&mut self, bytes: &[u8]) -> bool {
        match tokio::time::timeout(WAIT, self.wr.write_all(bytes)).await {
            Ok(Ok(())) => self.wr.flush().await.is_ok(),
            _ => false,
        }
    }
    pub async fn expect_close(&mut self) -> Option<u16> {
        self.rd.expect_close().await
    }
    pub async fn message(&mut self) -> (u8, Vec<u8>) {
        self.rd.message().await
    }
    pub async fn next(&mut self) -> Event {
        self.rd.next().await
    }
}

/// Deterministic filler bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

/// Runs a command with a time bound; returns (status, stdout, stderr). `None` on timeout
/// (the child is killed).
pub async fn run_cmd(
    mut cmd: tokio::process::Command,
    d: Duration,
) -> Option<(ExitStatus, String, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().ok()?;
    match tokio::time::timeout(d, child.wait_with_output()).await {
        Ok(Ok(out)) => Some((
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )),
        _ => None,
    }
}

/// Runs `wssedge ARGS...` to completion (bounded); returns (exit code, stdout, stderr).
pub fn run_wssedge(args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wssedge");
    let mut p = Proc::new(child);
    let status = p
        .wait_timeout(WAIT)
        .unwrap_or_else(|| panic!("wssedge {args:?} did not exit within {WAIT:?}"));
    std::thread::sleep(Duration::from_millis(50));
    (status.code(), p.stdout_seen().join("\n"), p.stderr())
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub fn message_text(m: &Message) -> &str {
    match m {
        Message::Text(t) => t.as_str(),
        other => panic!("expected a text message, got {other:?}"),
    }
}

/// Writes one line straight to the process's stderr. libtest captures `println!`/`eprintln!`
/// of passing tests; a skip notice or a measured figure must be seen without `--nocapture`.
pub fn visible_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The kernel's kTLS statistics; the file exists once the `tls` module is loaded.
pub const TLS_STAT: &str = "/proc/net/tls_stat";

/// Whether this kernel offers kTLS. A kernel built with `CONFIG_TLS=m` shows `TLS_STAT` only
/// after the module is loaded, so ask for the ULP once (as the server would, which makes the
/// kernel load it) before deciding; on a kernel without TLS that request just fails.
pub fn kernel_has_ktls() -> bool {
    if Path::new(TLS_STAT).exists() {
        return true;
    }
    request_tls_ulp();
    Path::new(TLS_STAT).exists()
}

/// `setsockopt(TCP_ULP, "tls")` on a connected loopback socket, result ignored: its only purpose
/// is the kernel's module autoload.
fn request_tls_ulp() {
    use std::os::fd::AsRawFd;
    let Ok(listener) = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else {
        return;
    };
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let Ok(client) = std::net::TcpStream::connect(addr) else {
        return;
    };
    let _accepted = listener.accept();
    let ulp = b"tls";
    // SAFETY: the fd belongs to `client`, which outlives the call; the option value points to
    // `ulp.len()` readable bytes and that is the length passed.
    let _ = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_ULP,
            ulp.as_ptr().cast(),
            ulp.len() as libc::socklen_t,
        )
    };
}

// ---------------------------------------------------------------------------------------------
// Admission: upgrade attempts that may be refused, control commands
// ---------------------------------------------------------------------------------------------

/// The `Sec-WebSocket-Key` of [`ws_request`]; its accept value is [`WS_ACCEPT`].
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An upgrade request for `target` (`/path?query`) with `Host: 127.0.0.1` and `extra` headers.
pub fn ws_request(target: &str, extra: &[(&str, &str)]) -> String {
    upgrade_request_path(target, "127.0.0.1", WS_KEY, extra)
}

/// A refused upgrade: the status, the head, the body and the reason code its JSON names.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub head: String,
    pub body: String,
    /// `error` of the JSON body (empty when the body is not that JSON).
    pub reason: String,
    /// Whether the server closed the connection after the response.
    pub closed: bool,
}

/// What an upgrade attempt got.
pub enum Outcome {
    Upgraded { head: String, ws: RawWs },
    Refused(Refused),
}

impl Outcome {
    /// The 101 head and the session; panics with `what` and the response if refused.
    pub fn upgraded(self, what: &str) -> (String, RawWs) {
        match self {
            Outcome::Upgraded { head, ws } => (head, ws),
            Outcome::Refused(r) => panic!(
                "{what}: expected 101, got {}:\n{}{}",
                r.status, r.head, r.body
            ),
        }
    }
    /// The refusal; panics with `what` if the upgrade went through.
    pub fn refused(self, what: &str) -> Refused {
        match self {
            Outcome::Refused(r) => r,
            Outcome::Upgraded { head, .. } => panic!("{what}: expected a refusal, got:\n{head}"),
        }
    }
}

/// TCP + TLS, reporting a failed handshake (or a timeout) instead of panicking.
pub async fn try_tls_connect(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "TCP connect timed out")
        })??;
    try_tls_over(tcp, cfg).await
}

/// The TLS handshake over a connected `tcp` (bounded by `WAIT`).
pub async fn try_tls_over(
    tcp: TcpStream,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    match tokio::time::timeout(WAIT, TlsConnector::from(cfg).connect(name, tcp)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("TLS connect did not finish within {WAIT:?}"),
        )),
    }
}

/// Sends `req` and reads the answer: a 101 (the stream becomes a [`RawWs`]) or a refusal with
/// its body, after which the server must close. `Err` when the stream fails before a response
/// head arrives (a TLS alert, a reset, EOF): what a refused client certificate looks like
/// under TLS 1.3, where the client's side of the handshake completes first.
pub async fn try_attempt_over(
    mut tls: TlsStream<TcpStream>,
    req: &str,
) -> std::io::Result<Outcome> {
    within(WAIT, "write upgrade request", tls.write_all(req.as_bytes())).await?;
    let (head, rest) = within(WAIT, "response head", read_head(&mut tls)).await?;
    let status = status_code(&head)
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response head: {head:?}")))?;
    if status == 101 {
        return Ok(Outcome::Upgraded {
            head,
            ws: RawWs::from_parts(tls, rest),
        });
    }
    let len = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok());
    let (more, closed) = read_to_close(&mut tls, WAIT).await;
    let mut body = rest;
    body.extend_from_slice(&more);
    if let Some(len) = len {
        assert!(
            body.len() >= len,
            "refusal body shorter than its Content-Length {len}: {head}{}",
            String::from_utf8_lossy(&body)
        );
        body.truncate(len);
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_default();
    Ok(Outcome::Refused(Refused {
        status,
        head,
        body,
        reason,
        closed,
    }))
}

/// [`try_attempt_over`] that panics when no response head arrives.
pub async fn attempt_over(tls: TlsStream<TcpStream>, req: &str) -> Outcome {
    try_attempt_over(tls, req)
        .await
        .unwrap_or_else(|e| panic!("no response to the upgrade request: {e}\nrequest:\n{req}"))
}

/// One upgrade attempt on a fresh TLS connection to `srv` (its dev CA trusted).
pub async fn attempt(srv: &Server, req: &str) -> Outcome {
    attempt_over(srv.tls().await, req).await
}

/// Expects `req` to be refused with `status` and the JSON reason `reason`, and the connection
/// closed afterwards; returns the refusal for further checks.
pub async fn expect_refused(srv: &Server, req: &str, status: u16, reason: &str) -> Refused {
    let r = attempt(srv, req).await.refused(reason);
    check_refused(&r, status, reason, req);
    r
}

/// The checks of [`expect_refused`] on a refusal already read.
pub fn check_refused(r: &Refused, status: u16, reason: &str, req: &str) {
    assert_eq!(
        (r.status, r.reason.as_str()),
        (status, reason),
        "request:\n{req}\nresponse:\n{}{}",
        r.head,
        r.body
    );
    assert!(
        header(&r.head, "content-type").is_some_and(|v| v.starts_with("application/json")),
        "refusal without a JSON content type:\n{}",
        r.head
    );
    assert!(r.closed, "connection still open after the {status} refusal");
}

/// Expects a 101 with the right accept key; returns the head and the session.
pub async fn expect_upgraded(srv: &Server, req: &str) -> (String, RawWs) {
    let (head, ws) = attempt(srv, req).await.upgraded(req);
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some(WS_ACCEPT),
        "{head}"
    );
    (head, ws)
}

/// Sends a text message on a raw session and expects its echo (the session is live).
pub async fn expect_echo(ws: &mut RawWs, text: &str) {
    ws.send(&cframe(true, OP_TEXT, text.as_bytes())).await;
    assert_eq!(ws.message().await, (OP_TEXT, text.as_bytes().to_vec()));
}

/// Waits until `reason` was counted `n` times both as a refusal and as a failed handshake, and
/// checks that neither counter went past `n`.
pub async fn expect_refusals_counted(srv: &Server, reason: &str, n: u64) {
    let n = n as f64;
    srv.wait_metric("wssedge_refusals_total", &[("reason", reason)], n)
        .await;
    srv.wait_metric(
        "wssedge_handshakes_total",
        &[("result", "failed"), ("reason", reason)],
        n,
    )
    .await;
    let body = srv.metrics().await;
    let refusals = metric_sum(&body, "wssedge_refusals_total", &[("reason", reason)]);
    let failed = metric_sum(
        &body,
        "wssedge_handshakes_total",
        &[("result", "failed"), ("reason", reason)],
    );
    assert_eq!(
        (refusals, failed),
        (n, n),
        "{reason}: refusals_total and handshakes_total{{result=failed}}, expected {n} each"
    );
}

/// What a `wssedge …` command run by [`wssedge_cmd`] did.
#[derive(Debug)]
pub struct CmdOut {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// The command's process id (the pid the control socket sees through SO_PEERCRED).
    pub pid: u32,
    /// When the process had exited.
    pub ended: Instant,
}

/// Runs `wssedge ARGS…` without blocking the runtime, bounded by `WAIT` (panics beyond).
pub async fn wssedge_cmd(args: &[&str]) -> CmdOut {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn wssedge");
    let pid = child.id().unwrap_or(0);
    let out = within(WAIT, "wssedge command", child.wait_with_output())
        .await
        .expect("wait for wssedge");
    CmdOut {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
        ended: Instant::now(),
    }
}

/// Waits until the server has counted `n` sessions it closed with 1008 for `reason`: the
/// refusal counter and the close-code counter both.
pub async fn expect_closed_1008(srv: &Server, reason: &str, n: f64) {
    srv.wait_metric("wssedge_refusals_total", &[("reason", reason)], n)
        .await;
    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1008"), ("side", "server")],
        n,
    )
    .await;
}

/// `wssedge ctl --control SOCKET ARGS…`.
pub async fn ctl(socket: &Path, args: &[&str]) -> CmdOut {
    let socket = socket.to_str().expect("UTF-8 socket path");
    let mut all = vec!["ctl", "--control", socket];
    all.extend_from_slice(args);
    wssedge_cmd(&all).await
}

/// Writes `bytes` to a new file of mode 0600 (secrets: the server refuses wider modes).
pub fn write_private(path: &Path, bytes: &[u8]) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    f.write_all(bytes).expect("write secret");
}

/// A path as a TOML basic string (quoted, escaped).
pub fn toml_path(p: &Path) -> String {
    toml_str(p.to_str().expect("UTF-8 path"))
}

pub fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Seconds since the UNIX epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

// ---------------------------------------------------------------------------------------------
// Memory and socket measurements (proxy backpressure tests)
// ---------------------------------------------------------------------------------------------

/// `VmRSS` of process `pid` in bytes, from `/proc/PID/status`.
pub fn vm_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// One socket's kernel memory as `ss -m` prints it: `skmem:(r…,rb…,t…,tb…,f…,w…,o…,bl…,d…)`
/// (receive queue and buffer, transmit allocation and buffer, forward alloc, write queue,
/// option memory, backlog, drops).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SkMem {
    pub r: u64,
    pub rb: u64,
    pub t: u64,
    pub tb: u64,
    pub f: u64,
    pub w: u64,
    pub o: u64,
    pub bl: u64,
    pub d: u64,
}

/// Parses the first `skmem:(…)` in `text`.
pub fn parse_skmem(text: &str) -> Option<SkMem> {
    let start = text.find("skmem:(")? + "skmem:(".len();
    let end = start + text[start..].find(')')?;
    let mut m = SkMem::default();
    for field in text[start..end].split(',') {
        let split = field.find(|c: char| c.is_ascii_digit())?;
        let (name, value) = field.split_at(split);
        let value: u64 = value.parse().ok()?;
        match name {
            "r" => m.r = value,
            "rb" => m.rb = value,
            "t" => m.t = value,
            "tb" => m.tb = value,
            "f" => m.f = value,
            "w" => m.w = value,
            "o" => m.o = value,
            "bl" => m.bl = value,
            "d" => m.d = value,
            _ => {}
        }
    }
    Some(m)
}

/// The TCP socket `local` → `peer` as `ss -tmn` sees it: its state (`ESTAB`, `CLOSE-WAIT`, …)
/// and kernel memory. `None` when the kernel holds no such socket (never existed, or closed:
/// a socket that got a reset is gone from the tables). Panics if `ss` cannot run.
pub async fn ss_socket(local: SocketAddr, peer: SocketAddr) -> Option<(String, Option<SkMem>)> {
    let mut cmd = tokio::process::Command::new("ss");
    cmd.args(["-tmnH", "state", "all", "src"])
        .arg(local.to_string())
        .arg("dst")
        .arg(peer.to_string());
    let (status, out, err) = run_cmd(cmd, WAIT).await.expect("ss did not finish");
    assert!(status.success(), "ss failed: {err}");
    let state = out.split_whitespace().next()?.to_string();
    Some((state, parse_skmem(&out)))
}

// ---------------------------------------------------------------------------------------------
// Shared by the proxy, rate limit, limits, lifecycle and CLI tests
// ---------------------------------------------------------------------------------------------

/// Waits until `name{labels}` reaches `n`, then checks it did not go past: exactly `n`. `what`
/// says what the count stands for.
pub async fn wait_metric_exactly(
    srv: &Server,
    name: &str,
    labels: &[(&str, &str)],
    n: f64,
    what: &str,
) {
    let v = srv.wait_metric(name, labels, n).await;
    assert_eq!(v, n, "{what}: {name}{labels:?}");
}

/// Waits until the server has counted `n` slow consumers and reset them: the `slow_consumer`
/// backpressure event and refusal, and the reset after close_timeout_ms (`close_reset`).
pub async fn expect_slow_consumers_reset(srv: &Server, n: f64) {
    srv.wait_metric(
        "wssedge_backpressure_total",
        &[("event", "slow_consumer")],
        n,
    )
    .await;
    srv.wait_metric("wssedge_backpressure_total", &[("event", "close_reset")], n)
        .await;
    srv.wait_metric("wssedge_refusals_total", &[("reason", "slow_consumer")], n)
        .await;
}

/// The TOML table `[name]` with `defaults` (key, TOML value as written), one `key = value` line
/// each; `overrides` replace a default's value or add a key after them.
pub fn toml_table(
    name: &str,
    defaults: Vec<(String, String)>,
    overrides: &[(&str, &str)],
) -> String {
    let mut keys = defaults;
    for (k, v) in overrides {
        match keys.iter_mut().find(|(key, _)| key == k) {
            Some(slot) => slot.1 = (*v).to_owned(),
            None => keys.push(((*k).to_owned(), (*v).to_owned())),
        }
    }
    let mut out = format!("[{name}]\n");
    for (k, v) in keys {
        out.push_str(&format!("{k} = {v}\n"));
    }
    out
}

/// A CA with the common name `ca_name` and a leaf it issued for `localhost` and 127.0.0.1
/// (rcgen, independent of the server's code), as PEM: (the leaf followed by the CA, the leaf's
/// key, the CA to trust).
pub fn issue_localhost_chain(ca_name: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut leaf_params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf_params
        .subject_alt_names
        .push(SanType::IpAddress(Ipv4Addr::LOCALHOST.into()));
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    (
        format!("{}{}", leaf.pem(), ca.pem()),
        leaf_key.serialize_pem(),
        ca.pem(),
    )
}
