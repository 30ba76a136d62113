//! A WebSocket backend for the proxy tests: plain ws:// on 127.0.0.1, in-process (tokio +
//! tokio-tungstenite `accept_hdr_async`), independent of the server's code.
//!
//! It records every upgrade request it sees (path + query and each header line, in order) and,
//! per accepted session, what arrived (messages, pings, the close frame, how it ended). What it
//! does with a session is its [`Mode`], read when the connection is accepted:
//!
//! - `Echo`: every data message back, as it came;
//! - `CloseAfterFirst`: after the first data message, a close frame with the given code/reason;
//! - `CloseEmptyAfterFirst`: after the first data message, an empty close frame (no code);
//! - `DropAfterFirst`: after the first data message, the TCP connection is closed without a
//!   close frame;
//! - `ViolateAfterFirst`: after the first data message, a frame with a reserved opcode;
//! - `Flood`: right after the upgrade, `count` binary messages of `size` bytes as fast as the
//!   socket takes them (each numbered, see [`flood_payload`]), counting those sent;
//! - `Stall`: the upgrade is answered, then nothing is ever read (the edge's writes pile up);
//! - `PingFlood { count }`: right after the upgrade, `count` pings written raw as fast as the
//!   socket takes them, and nothing is ever read (the edge's pongs pile up);
//! - `Refuse(status)`: the upgrade is answered with that HTTP status;
//! - `Silent`: the TCP connection is accepted and nothing is ever answered.
//!
//! [`Backend::stop`] closes the listener and every session (connects are then refused);
//! [`Backend::restart`] listens again on the same port.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{unlimited_ws_config, WAIT};

/// What the backend does with a new session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Echo,
    CloseAfterFirst {
        code: u16,
        reason: String,
    },
    CloseEmptyAfterFirst,
    DropAfterFirst,
    ViolateAfterFirst,
    Flood {
        count: u64,
        size: usize,
    },
    Stall,
    PingFlood {
        count: u64,
    },
    Refuse(u16),
    Silent,
    /// After the first message: the first 16 bytes of a 256-byte frame, then nothing (the
    /// connection held, reads go on).
    HangMidMessageAfterFirst,
    /// Every message echoed `delay_ms` later, in order.
    SlowEcho {
        delay_ms: u64,
    },
    /// After the first message: a TCP reset (SO_LINGER 0), no close frame.
    ResetAfterFirst,
    /// A valid 101 with bytes that are no WebSocket frame right behind it, in the same write.
    GarbageAfter101,
}

/// One upgrade request as the backend received it.
#[derive(Debug, Clone)]
pub struct Upgrade {
    /// The request target: path and query.
    pub target: String,
    /// Every header line (lowercase name, value), in order; repeated names stay repeated.
    pub headers: Vec<(String, String)>,
    /// Whether the backend answered 101.
    pub accepted: bool,
}

impl Upgrade {
    /// Every value of header `name` (case-insensitive).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// What a session saw from the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    /// A close frame: code and reason (`None`: an empty close).
    Close(Option<(u16, String)>),
    /// How the session ended: "eof", or the error.
    Ended(String),
}

/// One accepted session's log.
#[derive(Debug, Clone, Default)]
pub struct SessionLog {
    /// Index into [`Backend::upgrades`].
    pub upgrade: usize,
    pub seen: Vec<Seen>,
    /// Flood mode: messages the socket took so far.
    pub flood_sent: u64,
    /// Flood mode: the sender stopped (all sent, or a send failed).
    pub flood_done: bool,
    /// Flood mode: the error that stopped the sender, if any.
    pub flood_error: Option<String>,
}

impl SessionLog {
    /// The data messages that arrived, in order.
    pub fn data(&self) -> Vec<&Seen> {
        self.seen
            .iter()
            .filter(|s| matches!(s, Seen::Text(_) | Seen::Binary(_)))
            .collect()
    }
    pub fn close(&self) -> Option<&Option<(u16, String)>> {
        self.seen.iter().find_map(|s| match s {
            Seen::Close(c) => Some(c),
            _ => None,
        })
    }
    pub fn ended(&self) -> Option<&str> {
        self.seen.iter().find_map(|s| match s {
            Seen::Ended(e) => Some(e.as_str()),
            _ => None,
        })
    }
}

#[derive(Default)]
struct Shared {
    mode: Mutex<Option<Mode>>,
    upgrades: Mutex<Vec<Upgrade>>,
    sessions: Mutex<Vec<SessionLog>>,
    /// TCP connections accepted (any mode).
    tcp_accepted: Mutex<u64>,
}

impl Shared {
    fn mode(&self) -> Mode {
        self.mode.lock().unwrap().clone().unwrap_or(Mode::Echo)
    }
    fn log(&self, session: usize, seen: Seen) {
        self.sessions.lock().unwrap()[session].seen.push(seen);
    }
    /// Logs what a read of `session` gave: the message (returned), or how its stream ended
    /// (`None`).
    fn log_read(
        &self,
        session: usize,
        read: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Option<Message> {
        let (seen, m) = match read {
            None => (Seen::Ended("eof".into()), None),
            Some(Err(e)) => (Seen::Ended(e.to_string()), None),
            Some(Ok(m)) => (seen_of(&m), Some(m)),
        };
        self.log(session, seen);
        m
    }
}

/// The backend; stopped (its tasks aborted) on drop.
pub struct Backend {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Backend {
    /// Listens on 127.0.0.1 on an ephemeral port.
    pub async fn start(mode: Mode) -> Backend {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let shared = Arc::new(Shared::default());
        *shared.mode.lock().unwrap() = Some(mode);
        let mut b = Backend {
            addr,
            shared,
            accept: None,
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        b.serve(listener);
        b
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `ws://127.0.0.1:PORT{path}`: a member URL for the config.
    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// The mode for sessions accepted from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = Some(mode);
    }

    fn serve(&mut self, listener: TcpListener) {
        let shared = self.shared.clone();
        let conns = self.conns.clone();
        self.accept = Some(tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                *shared.tcp_accepted.lock().unwrap() += 1;
                let h = tokio::spawn(handle(tcp, shared.clone()));
                let mut c = conns.lock().unwrap();
                c.retain(|h| !h.is_finished());
                c.push(h);
            }
        }));
    }

    /// Closes the listener and every session (no close frames): connects to the port are
    /// refused until [`restart`](Self::restart).
    pub async fn stop(&mut self) {
        let mut handles: Vec<JoinHandle<()>> = std::mem::take(&mut *self.conns.lock().unwrap());
        if let Some(a) = self.accept.take() {
            handles.push(a);
        }
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = tokio::time::timeout(WAIT, h).await;
        }
    }

    /// Listens again on the same port (retrying briefly while the port is still held).
    pub async fn restart(&mut self) {
        assert!(self.accept.is_none(), "restart of a running backend");
        let t0 = Instant::now();
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if t0.elapsed() < WAIT => {
                    eprintln!("backend rebind {}: {e}; retrying", self.addr);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("backend cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    /// Every upgrade request seen so far (accepted or refused), in arrival order.
    pub fn upgrades(&self) -> Vec<Upgrade> {
        self.shared.upgrades.lock().unwrap().clone()
    }

    /// Every accepted session's log so far.
    pub fn sessions(&self) -> Vec<SessionLog> {
        self.shared.sessions.lock().unwrap().clone()
    }

    pub fn tcp_accepted(&self) -> u64 {
        *self.shared.tcp_accepted.lock().unwrap()
    }

    /// Polls session `i`'s log until `done` holds (bounded by `WAIT`); returns the log.
    pub async fn wait_session(
        &self,
        i: usize,
        what: &str,
        done: impl Fn(&SessionLog) -> bool,
    ) -> SessionLog {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.sessions().get(i) {
                if done(s) {
                    return s.clone();
                }
            }
            if t0.elapsed() > WAIT {
                panic!(
                    "backend session {i}: {what} not seen within {WAIT:?}; sessions: {:#?}",
                    self.sessions()
                        .iter()
                        .map(|s| (
                            s.upgrade,
                            s.seen.len(),
                            s.seen.iter().rev().take(3).collect::<Vec<_>>()
                        ))
                        .collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

/// Flood message `i` of `size` bytes (at least 8): `i` big-endian, then bytes derived from `i`.
pub fn flood_payload(i: u64, size: usize) -> Vec<u8> {
    assert!(size >= 8, "flood messages carry an 8-byte number");
    let mut p = i.to_be_bytes().to_vec();
    p.extend((8..size).map(|j| (j as u64).wrapping_mul(7).wrapping_add(i) as u8));
    p
}

/// The number of a flood message if it is intact (its length and every byte as sent).
pub fn flood_index(p: &[u8], size: usize) -> Option<u64> {
    if p.len() != size || size < 8 {
        return None;
    }
    let i = u64::from_be_bytes(p[..8].try_into().ok()?);
    (flood_payload(i, size) == p).then_some(i)
}

fn seen_of(m: &Message) -> Seen {
    match m {
        Message::Text(t) => Seen::Text(t.as_str().to_owned()),
        Message::Binary(b) => Seen::Binary(b.to_vec()),
        Message::Ping(p) => Seen::Ping(p.to_vec()),
        Message::Pong(p) => Seen::Pong(p.to_vec()),
        Message::Close(c) => Seen::Close(
            c.as_ref()
                .map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
        ),
        Message::Frame(_) => Seen::Ended("raw frame".into()),
    }
}

// The callback's error type is tungstenite's `ErrorResponse`, large by its definition.
#[allow(clippy::result_large_err)]
async fn handle(tcp: TcpStream, shared: Arc<Shared>) {
    let mode = shared.mode();
    if mode == Mode::GarbageAfter101 {
        garbage_after_101(tcp, &shared).await;
        return;
    }
    if mode == Mode::Silent {
        // Hold the connection open, say nothing (until aborted or the peer goes).
        let mut tcp = tcp;
        let mut sink = [0u8; 4096];
        loop {
            match tokio::io::AsyncReadExt::read(&mut tcp, &mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }
    let refuse = match mode {
        Mode::Refuse(s) => Some(s),
        _ => None,
    };
    let rec = shared.clone();
    let callback = move |req: &Request, resp: Response| {
        let up = Upgrade {
            target: req
                .uri()
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| req.uri().to_string()),
            headers: req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_ascii_lowercase(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            accepted: refuse.is_none(),
        };
        rec.upgrades.lock().unwrap().push(up);
        match refuse {
            None => Ok(resp),
            Some(status) => {
                let mut r = ErrorResponse::new(Some(format!("backend refuses ({status})")));
                *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
                Err(r)
            }
        }
    };
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(
        tcp,
        callback,
        Some(unlimited_ws_config()),
    )
    .await
    {
        Ok(ws) => ws,
        Err(_) => return,
    };
    let session = {
        let mut s = shared.sessions.lock().unwrap();
        let upgrade = shared.upgrades.lock().unwrap().len() - 1;
        s.push(SessionLog {
            upgrade,
            ..SessionLog::default()
        });
        s.len() - 1
    };
    match mode {
        Mode::Flood { count, size } => flood(ws, shared, session, count, size).await,
        Mode::Stall => {
            // Hold the session, read nothing, until aborted.
            let _ws = ws;
            std::future::pending::<()>().await;
        }
        Mode::PingFlood { count } => {
            let mut ws = ws;
            let tcp = ws.get_mut();
            // Server frames are unmasked: FIN + ping, 4-byte payload.
            let mut batch = Vec::with_capacity(6 * 1024);
            for i in 0..count {
                batch.extend_from_slice(&[0x89, 0x04]);
                batch.extend_from_slice(&(i as u32).to_be_bytes());
                if batch.len() >= 6 * 1024 || i + 1 == count {
                    if tcp.write_all(&batch).await.is_err() {
                        break;
                    }
                    batch.clear();
                    shared.sessions.lock().unwrap()[session].flood_sent = i + 1;
                }
            }
            shared.sessions.lock().unwrap()[session].flood_done = true;
            std::future::pending::<()>().await;
        }
        mode => respond(ws, shared, session, mode).await,
    }
}

async fn respond(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
    session: usize,
    mode: Mode,
) {
    let mut first = true;
    loop {
        let Some(m) = shared.log_read(session, ws.next().await) else {
            return;
        };
        let data = matches!(m, Message::Text(_) | Message::Binary(_));
        if !data {
            continue;
        }
        let was_first = std::mem::replace(&mut first, false);
        match &mode {
            Mode::Echo => {
                let sent = ws.send(m).await;
                if sent.is_err() {
                    shared.log(session, Seen::Ended("echo send failed".into()));
                    return;
                }
            }
            Mode::CloseAfterFirst { code, reason } if was_first => {
                let frame = CloseFrame {
                    code: CloseCode::from(*code),
                    reason: reason.clone().into(),
                };
                let _ = ws.send(Message::Close(Some(frame))).await;
            }
            Mode::CloseEmptyAfterFirst if was_first => {
                let _ = ws.send(Message::Close(None)).await;
            }
            Mode::SlowEcho { delay_ms } => {
                tokio::time::sleep(Duration::from_millis(*delay_ms)).await;
                if ws.send(m).await.is_err() {
                    shared.log(session, Seen::Ended("echo send failed".into()));
                    return;
                }
            }
            Mode::HangMidMessageAfterFirst if was_first => {
                // Binary, 16-bit length 256; 16 of its bytes.
                let tcp = ws.get_mut();
                let mut half = vec![0x82, 0x7E, 0x01, 0x00];
                half.extend_from_slice(&[0xAB; 16]);
                let _ = tcp.write_all(&half).await;
                let _ = tcp.flush().await;
            }
            Mode::ResetAfterFirst if was_first => {
                shared.log(session, Seen::Ended("reset by the backend".into()));
                let _ = ws.get_mut().set_zero_linger();
                drop(ws);
                return;
            }
            Mode::DropAfterFirst if was_first => {
                shared.log(session, Seen::Ended("dropped by the backend".into()));
                drop(ws);
                return;
            }
            Mode::ViolateAfterFirst if was_first => {
                // FIN + reserved opcode 0x3, empty payload: a protocol violation.
                let tcp = ws.get_mut();
                let _ = tcp.write_all(&[0x83, 0x00]).await;
                let _ = tcp.flush().await;
            }
            _ => {}
        }
    }
}

/// Answers the upgrade by hand: a correct 101, and in the same write bytes that break the
/// WebSocket protocol (`HTTP/1.1 200 OK`: `H` is a frame with RSV1 set and no extension
/// agreed). Then holds the connection, reading, until the peer goes.
async fn garbage_after_101(mut tcp: TcpStream, shared: &Shared) {
    use tokio::io::AsyncReadExt as _;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let Some(key) = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    }) else {
        return;
    };
    shared.upgrades.lock().unwrap().push(Upgrade {
        target: text.split(' ').nth(1).unwrap_or("").to_owned(),
        headers: Vec::new(),
        accepted: true,
    });
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"
    );
    if tcp.write_all(answer.as_bytes()).await.is_err() {
        return;
    }
    while let Ok(n) = tcp.read(&mut chunk).await {
        if n == 0 {
            break;
        }
    }
}

async fn flood(
    ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    shared: Arc<Shared>,
    session: usize,
    count: u64,
    size: usize,
) {
    let (mut tx, mut rx) = ws.split();
    let reader_shared = shared.clone();
    // Aborted with this task (`Backend::stop`): its half holds the connection open.
    let mut reader = AbortOnDrop(tokio::spawn(async move {
        while reader_shared.log_read(session, rx.next().await).is_some() {}
    }));
    let mut error = None;
    for i in 0..count {
        if let Err(e) = tx.send(Message::binary(flood_payload(i, size))).await {
            error = Some(e.to_string());
            break;
        }
        shared.sessions.lock().unwrap()[session].flood_sent = i + 1;
    }
    {
        let mut s = shared.sessions.lock().unwrap();
        s[session].flood_done = true;
        s[session].flood_error = error;
    }
    // Keep reading until the edge goes (the reader logs how it ended).
    let _ = (&mut reader.0).await;
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
