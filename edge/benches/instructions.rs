//! Fixed workloads for instruction counts under valgrind/callgrind, which are repeatable on a
//! noisy shared machine where wall time is not.
//!
//! `instructions PATH SIZE ITERATIONS` runs one path ITERATIONS times:
//! `parse`, `unmask`, `utf8`, `encode` (SIZE = payload bytes) and `handshake_echo` (one full
//! TLS 1.3 handshake through our unbuffered driver against a rustls client, the upgrade, and
//! one SIZE-byte echo, all in memory), and `deliver` (one pub/sub delivery as a subscriber's
//! connection writes it under userspace TLS: a SIZE-byte shared publication framed, queued in
//! the outbox and sealed straight into a record by the userspace records the edge takes over
//! from rustls; the handshake before the first one is set-up). Set-up (certificates, configs)
//! is paid once per process: count two runs (ITERATIONS = 1 and 11) and divide the difference
//! by 10 to get the cost of one iteration without it. Without arguments it runs every path
//! once (a smoke test).

use std::io::{Read, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use wssedge::bufpool::BufPool;
use wssedge::tls::TlsSession;
use wssedge_proto::ws::{
    apply_mask, frame, parse_upgrade, write_response_101, Event, HandshakeLimits, MessageKind,
    OpCode, Outbox, Payload, Session, SessionLimits, Utf8Validator,
};

mod common;
use common::{client_frame, text, MASK};

fn parse(size: usize, iterations: usize) -> usize {
    let wire = client_frame(OpCode::Binary, &vec![0x5a; size]);
    let mut session = Session::new(SessionLimits::default());
    let mut total = 0;
    for _ in 0..iterations {
        let mut buf = BytesMut::from(&wire[..]);
        session.receive(&mut buf);
        if let Some(Event::Message(m)) = session.poll_event() {
            total += m.payload.len();
        }
    }
    total
}

fn unmask(size: usize, iterations: usize) -> usize {
    let mut buf = vec![0x5a; size];
    for i in 0..iterations {
        apply_mask(std::hint::black_box(&mut buf), MASK, i);
    }
    buf.iter().map(|&b| b as usize).sum()
}

fn utf8(size: usize, iterations: usize) -> usize {
    let text = text(size);
    let mut v = Utf8Validator::new();
    let mut ok = 0;
    for _ in 0..iterations {
        if v.feed(std::hint::black_box(&text)).is_ok() && v.finish().is_ok() {
            ok += 1;
        }
    }
    ok
}

fn encode(size: usize, iterations: usize) -> usize {
    let payload = Bytes::from(vec![0x5a; size]);
    let mut session = Session::new(SessionLimits::default());
    let mut staging = Vec::with_capacity(size + frame::MAX_HEADER_LEN);
    let mut total = 0;
    for _ in 0..iterations {
        staging.clear();
        session.send(MessageKind::Binary, Payload::Single(payload.clone()));
        if let Some(f) = session.poll_transmit() {
            f.append_to(&mut staging);
        }
        total += staging.len();
    }
    total
}

/// Everything the handshake workload needs, built once per process.
struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    _dir: tempfile::TempDir,
}

fn tls_setup() -> Tls {
    let dir = tempfile::tempdir().expect("temp dir");
    let dev = wssedge::tls::devcert::ensure_dev_cert(dir.path()).expect("dev certificate");
    let mut server =
        (*wssedge::tls::server_config(dev.chain, dev.key).expect("server config")).clone();
    // As the edge's own: its records leave rustls after the handshake (`deliver`).
    server.enable_secret_extraction = true;
    let server = Arc::new(server);
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(&dev.ca_pem_path).expect("dev CA");
    roots.add(ca).expect("add CA");
    let provider = Arc::new(wssedge::tls::policy::crypto_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Tls {
        server,
        client: Arc::new(client),
        _dir: dir,
    }
}

/// Moves the client's pending records into the server and runs it.
fn to_server(
    client: &mut rustls::ClientConnection,
    server: &mut TlsSession,
    pool: &mut BufPool,
    plain: &mut BytesMut,
) {
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).expect("client write_tls");
    }
    let mut rest = &wire[..];
    while !rest.is_empty() {
        let space = server.recv_space(pool);
        let n = space.len().min(rest.len());
        space[..n].copy_from_slice(&rest[..n]);
        server.commit_recv(n);
        rest = &rest[n..];
        server.process(plain).expect("server process");
    }
}

/// Moves the server's output into the client and runs it.
fn to_client(server: &mut TlsSession, client: &mut rustls::ClientConnection) {
    let out = server.take_output();
    let mut rest = &out[..];
    while !rest.is_empty() {
        client.read_tls(&mut rest).expect("client read_tls");
        client.process_new_packets().expect("client process");
    }
    server.restore_output(out);
}

fn handshake_echo(tls: &Tls, size: usize, iterations: usize) -> usize {
    let mut pool = BufPool::default();
    let mut echoed = 0;
    let request =
        b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let frame = client_frame(OpCode::Binary, &vec![0x5a; size]);
    for _ in 0..iterations {
        let (mut client, mut server, mut plain) = handshake(tls, &mut pool);
        client.writer().write_all(request).expect("request");
        client.writer().write_all(&frame).expect("frame");
        to_server(&mut client, &mut server, &mut pool, &mut plain);
        let (req, used) = parse_upgrade(&plain, &HandshakeLimits::default())
            .expect("valid upgrade")
            .expect("complete upgrade");
        let _ = plain.split_to(used);
        let mut response = Vec::new();
        write_response_101(&req, None, None, &mut response);
        server.encrypt(&response).expect("encrypt 101");
        let mut session = Session::new(SessionLimits::default());
        session.receive(&mut plain);
        let mut staging = Vec::new();
        while let Some(ev) = session.poll_event() {
            if let Event::Message(m) = ev {
                session.send(m.kind, m.payload);
            }
        }
        while let Some(f) = session.poll_transmit() {
            f.append_to(&mut staging);
        }
        server.encrypt(&staging).expect("encrypt echo");
        to_client(&mut server, &mut client);
        let mut got = Vec::new();
        let _ = client.reader().read_to_end(&mut got);
        echoed += got.len();
        server.release_idle(&mut pool);
    }
    echoed
}

/// A server session whose TLS 1.3 handshake with a rustls client is done (set-up for
/// `deliver`, outside the counted scope).
fn handshaken(tls: &Tls) -> TlsSession {
    handshake(tls, &mut BufPool::default()).1
}

/// One full TLS 1.3 handshake in memory: the client, our server session, and any plaintext
/// that arrived with it.
fn handshake(tls: &Tls, pool: &mut BufPool) -> (rustls::ClientConnection, TlsSession, BytesMut) {
    let name = "localhost".try_into().expect("server name");
    let mut client = rustls::ClientConnection::new(tls.client.clone(), name).expect("client");
    let mut server = TlsSession::new(tls.server.clone()).expect("server");
    let mut plain = BytesMut::new();
    while client.is_handshaking() || server.is_handshaking() {
        to_server(&mut client, &mut server, pool, &mut plain);
        to_client(&mut server, &mut client);
    }
    (client, server, plain)
}

/// One delivery per iteration, as a subscriber's connection writes it under userspace TLS: the
/// publication's shared bytes framed by the session, queued in the outbox and sealed straight
/// into a record (the records taken over from rustls after the handshake, as the edge does).
/// What the socket would take is dropped. The publication is encoded once, outside the loop,
/// as the owner core does.
fn deliver(server: TlsSession, size: usize, iterations: usize) -> usize {
    let mut pool = BufPool::default();
    let Ok(mut records) = wssedge::tls::soft::take_over(server, &mut pool, None) else {
        panic!("a quiescent session is taken over");
    };
    let data = "x".repeat(size.saturating_sub(40));
    let publication = Bytes::from(format!(
        "{{\"topic\":\"trades.BTC-USD\",\"seq\":1,\"data\":\"{data}\"}}"
    ));
    let mut session = Session::new(SessionLimits::default());
    let mut outbox = Outbox::new();
    let mut sent = 0;
    for _ in 0..iterations {
        session.send(MessageKind::Text, Payload::Single(publication.clone()));
        while let Some(f) = session.poll_transmit() {
            outbox.push(f);
        }
        records
            .encrypt_from(&mut outbox, usize::MAX)
            .expect("seal delivery");
        let n = records.pending_output().len();
        records.consume_output(n);
        sent += n;
    }
    sent
}

fn run(path: &str, size: usize, iterations: usize, tls: &Tls, ready: Option<TlsSession>) -> usize {
    match (path, ready) {
        ("deliver", Some(server)) => deliver(server, size, iterations),
        (path, _) => run_plain(path, size, iterations, tls),
    }
}

fn run_plain(path: &str, size: usize, iterations: usize, tls: &Tls) -> usize {
    match path {
        "parse" => parse(size, iterations),
        "unmask" => unmask(size, iterations),
        "utf8" => utf8(size, iterations),
        "encode" => encode(size, iterations),
        "handshake_echo" => handshake_echo(tls, size, iterations),
        other => {
            eprintln!(
                "unknown path {other}: parse | unmask | utf8 | encode | handshake_echo | deliver"
            );
            std::process::exit(2);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let tls = tls_setup();
    if args.is_empty() {
        for path in [
            "parse",
            "unmask",
            "utf8",
            "encode",
            "handshake_echo",
            "deliver",
        ] {
            let server = (path == "deliver").then(|| handshaken(&tls));
            let r = run(path, 1024, 1, &tls, server);
            println!("{path}: ok ({r})");
        }
        return;
    }
    let size = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1024);
    let iterations = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let server = (args[0] == "deliver").then(|| handshaken(&tls));
    let r = run(&args[0], size, iterations, &tls, server);
    println!("{} {size} x{iterations}: {r}", args[0]);
}
