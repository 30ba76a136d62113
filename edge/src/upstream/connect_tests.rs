//! `connect()` against tiny in-test backends (std threads) under a monoio runtime: ws:// and
//! wss:// (with and without a client certificate), early frames after the 101, and the
//! failures the breaker must record (refused, timeout, bad 101, untrusted certificate).

use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::tls::testpki::{ClientSpec, Leaf, TestPki};
use crate::upstream::breaker::BreakerState;
use crate::upstream::config::{GroupConfig, Route, UpstreamConfig, UpstreamTls};
use crate::upstream::handshake::ClientContext;
use crate::upstream::test_support::upstream_tls;
use crate::upstream::Upstreams;
use crate::ws::handshake::{accept_key_for, parse_upgrade, UpgradeRequest};
use crate::ws::{Event, MessageKind, Payload, Session};

fn rt() -> monoio::Runtime<monoio::time::TimeDriver<monoio::LegacyDriver>> {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
}

#[derive(Clone, Copy)]
enum Backend {
    /// A 101 with a "welcome" text frame in the same write, then echo one message.
    Echo,
    /// Answer with this status instead of 101.
    Status(u16),
    /// Answer 101 with a wrong Sec-WebSocket-Accept.
    BadAccept,
}

/// The request head the backend saw: (path, headers lowercased).
type Seen = (String, Vec<(String, String)>);

fn read_head<S: Read>(s: &mut S) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    head
}

fn serve<S: Read + Write>(mut s: S, how: Backend, seen: &mpsc::Sender<Seen>) {
    let head = read_head(&mut s);
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut hs);
    if req.parse(&head).map(|r| r.is_partial()).unwrap_or(true) {
        return;
    }
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let key = headers
        .iter()
        .find(|(n, _)| n == "sec-websocket-key")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let proto = headers
        .iter()
        .find(|(n, _)| n == "sec-websocket-protocol")
        .map(|(_, v)| v.clone());
    let _ = seen.send((req.path.unwrap_or_default().to_owned(), headers));
    let accept = match how {
        Backend::Status(code) => {
            let _ = write!(s, "HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\n\r\n");
            let _ = s.flush();
            return;
        }
        Backend::BadAccept => accept_key_for("something else"),
        Backend::Echo => accept_key_for(&key),
    };
    let mut resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n"
    );
    if let Some(p) = proto {
        resp.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    resp.push_str("\r\n");
    let mut bytes = resp.into_bytes();
    // The first frame rides in the same write as the 101: it must not be lost.
    bytes.extend_from_slice(&[0x81, 7]);
    bytes.extend_from_slice(b"welcome");
    let _ = s.write_all(&bytes);
    let _ = s.flush();
    let mut ws =
        tungstenite::WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Server, None);
    if let Ok(m) = ws.read() {
        let _ = ws.send(m);
        let _ = ws.flush();
    }
}

/// Starts a backend for `conns` connections; TLS with `tls` when given.
fn backend(
    how: Backend,
    tls: Option<Arc<rustls::ServerConfig>>,
    conns: usize,
) -> (u16, mpsc::Receiver<Seen>, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        for _ in 0..conns {
            let (s, _) = l.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            match &tls {
                None => serve(s, how, &tx),
                Some(cfg) => {
                    let conn = rustls::ServerConnection::new(cfg.clone()).unwrap();
                    serve(rustls::StreamOwned::new(conn, s), how, &tx);
                }
            }
        }
    });
    (port, rx, h)
}

fn upstreams(member: &str, tls: Option<UpstreamTls>, failures: u32, timeout_ms: u64) -> Upstreams {
    let cfg = UpstreamConfig {
        connect_timeout_ms: timeout_ms,
        breaker_failures: failures,
        tls,
        groups: vec![GroupConfig {
            name: "g".into(),
            members: vec![member.to_owned()],
        }],
        ..UpstreamConfig::default()
    };
    let routes = [Route {
        prefix: "/".into(),
        group: Some("g".into()),
        pubsub: false,
        lossy: false,
        compression: None,
    }];
    Upstreams::without_health_checks(&cfg, &routes).unwrap()
}

/// [`upstreams`] for a wss:// member, trusting `pki` and presenting `client` if given (the TLS
/// files only live while the upstreams are built).
fn wss_upstreams(member: &str, pki: &TestPki, client: Option<&Leaf>, failures: u32) -> Upstreams {
    let dir = tempfile::tempdir().unwrap();
    let tls = upstream_tls(pki, client, dir.path());
    upstreams(member, Some(tls), failures, 2000)
}

fn client_request() -> UpgradeRequest {
    parse_upgrade(
        b"GET /x?y=1 HTTP/1.1\r\nHost: edge.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: md.v2\r\n\r\n",
        &Default::default(),
    )
    .unwrap()
    .unwrap()
    .0
}

async fn try_connect(u: &Upstreams) -> Result<UpstreamStream, ConnectError> {
    let req = client_request();
    let ctx = ClientContext {
        request: &req,
        user_agent: Some("t/1"),
        peer: IpAddr::from([198, 51, 100, 9]),
        protocol: Some("md.v2"),
        identity: None,
        token: None,
        traceparent: None,
    };
    let routed = u.route(&req.path).unwrap();
    let lease = u
        .pick(routed.group, Instant::now())
        .expect("a usable member");
    let request = u.request(&lease.url, routed.rest, &ctx);
    connect(lease, &request, u.connect_options()).await
}

/// Reads until the client session yields an event.
async fn next_event(s: &mut UpstreamStream, session: &mut Session, buf: &mut BytesMut) -> Event {
    loop {
        if let Some(e) = session.poll_event() {
            return e;
        }
        match s.read_plaintext(buf, 4096).unwrap() {
            ReadOutcome::Data(_) => {
                session.receive(buf);
            }
            ReadOutcome::WouldBlock => s.tcp().readable(false).await.unwrap(),
            ReadOutcome::Eof => panic!("upstream closed"),
        }
    }
}

async fn flush(s: &mut UpstreamStream) {
    while s.pending_output() > 0 {
        s.write_pending().unwrap();
        if s.pending_output() > 0 {
            s.tcp().writable(false).await.unwrap();
        }
    }
}

/// Connects, reads the early "welcome" frame, sends a message and reads its echo.
async fn round_trip(u: &Upstreams) {
    let mut s = try_connect(u).await.expect("connected");
    assert_eq!(s.protocol(), Some("md.v2"));
    assert!(
        s.has_buffered_plaintext(),
        "the frame after the 101 is kept"
    );
    let mut session = Session::client(Default::default(), crate::upstream::SystemMaskKeys);
    let mut buf = BytesMut::new();
    match next_event(&mut s, &mut session, &mut buf).await {
        Event::Message(m) => assert_eq!(m.payload.to_vec(), b"welcome"),
        e => panic!("{e:?}"),
    }
    session.send(
        MessageKind::Binary,
        Payload::Single(Bytes::from_static(b"echo me")),
    );
    while let Some(f) = session.poll_transmit() {
        s.queue(&f.to_vec());
    }
    flush(&mut s).await;
    match next_event(&mut s, &mut session, &mut buf).await {
        Event::Message(m) => {
            assert_eq!(
                (m.kind, m.payload.to_vec()),
                (MessageKind::Binary, b"echo me".to_vec())
            )
        }
        e => panic!("{e:?}"),
    }
    s.close_notify();
    flush(&mut s).await;
    s.shutdown();
}

fn header<'a>(seen: &'a Seen, name: &str) -> Option<&'a str> {
    seen.1
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn ws_member_round_trip_and_early_frame() {
    let (port, seen, h) = backend(Backend::Echo, None, 1);
    let u = upstreams(&format!("ws://127.0.0.1:{port}/feed"), None, 3, 2000);
    rt().block_on(round_trip(&u));
    h.join().unwrap();
    let seen = seen.recv().unwrap();
    assert_eq!(seen.0, "/feed/x?y=1");
    assert_eq!(
        header(&seen, "host"),
        Some(format!("127.0.0.1:{port}").as_str())
    );
    assert_eq!(header(&seen, "x-forwarded-for"), Some("198.51.100.9"));
    assert_eq!(header(&seen, "sec-websocket-protocol"), Some("md.v2"));
    let m = &u.metrics()[0];
    assert_eq!(
        (m.connects_ok, m.connect_failures, m.breaker_state),
        (1, 0, 0)
    );
}

#[test]
fn wss_member_round_trip() {
    let pki = TestPki::new_named("upstream CA");
    let (port, _seen, h) = backend(Backend::Echo, Some(pki.server_config("127.0.0.1")), 1);
    let u = wss_upstreams(&format!("wss://127.0.0.1:{port}/feed"), &pki, None, 3);
    rt().block_on(round_trip(&u));
    h.join().unwrap();
    assert_eq!(u.metrics()[0].connects_ok, 1);
}

#[test]
fn wss_member_with_client_certificate() {
    let pki = TestPki::new_named("upstream CA");
    let client: Leaf = pki.client(ClientSpec {
        cn: Some("edge-1"),
        ..ClientSpec::default()
    });
    let (port, _seen, h) = backend(Backend::Echo, Some(pki.server_config_mtls("127.0.0.1")), 2);
    let url = format!("wss://127.0.0.1:{port}/");
    let with_cert = wss_upstreams(&url, &pki, Some(&client), 3);
    rt().block_on(round_trip(&with_cert));
    // Without a certificate the member refuses the handshake.
    let without = wss_upstreams(&url, &pki, None, 3);
    let e = rt().block_on(try_connect(&without)).unwrap_err();
    assert!(e.is_member_failure(), "{e}");
    h.join().unwrap();
}

#[test]
fn untrusted_member_certificate_is_a_tls_failure() {
    let pki = TestPki::new_named("upstream CA");
    let other = TestPki::new_named("someone else");
    let (port, _seen, h) = backend(Backend::Echo, Some(other.server_config("127.0.0.1")), 1);
    let u = wss_upstreams(&format!("wss://127.0.0.1:{port}/"), &pki, None, 1);
    let e = rt().block_on(try_connect(&u)).unwrap_err();
    assert!(matches!(e, ConnectError::Tls(_)), "{e}");
    assert_eq!(e.reason(), "upstream_tls_failed");
    assert_eq!(u.members[0].breaker.state(), BreakerState::Open);
    h.join().unwrap();
}

#[test]
fn refused_connection_counts_against_the_breaker() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let u = upstreams(&format!("ws://127.0.0.1:{port}/"), None, 2, 2000);
    let e = rt().block_on(try_connect(&u)).unwrap_err();
    assert!(matches!(e, ConnectError::Io(_)), "{e}");
    let m = &u.metrics()[0];
    assert_eq!((m.connect_failures, m.breaker_state), (1, 0));
    rt().block_on(try_connect(&u)).unwrap_err();
    assert_eq!(u.metrics()[0].breaker_state, 1, "open after 2 failures");
    assert!(
        u.pick(0, Instant::now()).is_none(),
        "the caller answers 503"
    );
}

#[test]
fn silent_member_times_out() {
    // Accepted by the kernel (backlog), never answered.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let u = upstreams(&format!("ws://127.0.0.1:{port}/"), None, 1, 150);
    let t = Instant::now();
    let e = rt().block_on(try_connect(&u)).unwrap_err();
    assert!(matches!(e, ConnectError::Timeout(_)), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(u.members[0].breaker.state(), BreakerState::Open);
    drop(l);
}

/// One connect to a member that answers `how`, its breaker opening at the first failure: the
/// error and the upstreams (for the breaker and the counters).
fn connect_to_a_bad_answer(how: Backend) -> (ConnectError, Upstreams) {
    let (port, _seen, h) = backend(how, None, 1);
    let u = upstreams(&format!("ws://127.0.0.1:{port}/"), None, 1, 2000);
    let e = rt().block_on(try_connect(&u)).unwrap_err();
    h.join().unwrap();
    (e, u)
}

#[test]
fn bad_answers_are_typed_and_4xx_does_not_trip_the_breaker() {
    let (e, u) = connect_to_a_bad_answer(Backend::Status(503));
    assert!(
        matches!(e, ConnectError::Response(ResponseError::Status(503))),
        "{e}"
    );
    assert_eq!(u.members[0].breaker.state(), BreakerState::Open);

    let (e, u) = connect_to_a_bad_answer(Backend::Status(403));
    assert!(
        matches!(e, ConnectError::Response(ResponseError::Status(403))),
        "{e}"
    );
    assert_eq!(u.members[0].breaker.state(), BreakerState::Closed);
    assert_eq!(u.metrics()[0].connect_failures, 1);

    let (e, u) = connect_to_a_bad_answer(Backend::BadAccept);
    assert!(
        matches!(e, ConnectError::Response(ResponseError::BadAccept)),
        "{e}"
    );
    assert_eq!(u.members[0].breaker.state(), BreakerState::Open);
}

#[test]
fn raw_stream_io_is_non_blocking() {
    // A peer that sends nothing: reads report WouldBlock, never wait.
    let (port, _seen, h) = backend(Backend::Echo, None, 1);
    let u = upstreams(&format!("ws://127.0.0.1:{port}/"), None, 3, 2000);
    rt().block_on(async {
        let mut s = try_connect(&u).await.unwrap();
        let mut buf = BytesMut::new();
        // The early frame first, in pieces no larger than asked.
        assert_eq!(s.read_plaintext(&mut buf, 4).unwrap(), ReadOutcome::Data(4));
        assert_eq!(
            s.read_plaintext(&mut buf, 100).unwrap(),
            ReadOutcome::Data(5)
        );
        assert_eq!(&buf[2..], b"welcome");
        assert_eq!(
            s.read_plaintext(&mut buf, 100).unwrap(),
            ReadOutcome::WouldBlock
        );
        assert_eq!(buf.len(), 9);
        assert_eq!(s.write_pending().unwrap(), 0);
        // Close: the backend's tungstenite read ends, the thread finishes.
        s.shutdown();
    });
    h.join().unwrap();
}
