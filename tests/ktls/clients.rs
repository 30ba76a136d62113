//! Client pieces the e2e harness does not have: a TLS config restricted to one suite, reading a
//! connection to its end while telling a clean close_notify from a bare TCP close, and a
//! blocking rustls client that pipelines application data right behind its Finished.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, SupportedCipherSuite};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::harness::*;

/// A client that offers only `suite`, at the only protocol version that suite belongs to, and
/// trusts the server's dev CA.
pub fn suite_client_config(ca_pem: &Path, suite: SupportedCipherSuite) -> Arc<ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: vec![suite],
        ..aws_lc_rs::default_provider()
    };
    let cfg = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[suite.version()])
        .expect("suite and version agree")
        .with_root_certificates(roots_trusting(ca_pem))
        .with_no_client_auth();
    Arc::new(cfg)
}

/// Reads `r` to its end (bounded by `WAIT`) and returns what arrived on the way. Panics unless
/// the end is a clean TLS EOF: rustls returns `Ok(0)` only after the peer's close_notify and
/// `UnexpectedEof` when the TCP stream ends without one.
pub async fn read_to_clean_tls_eof<R: AsyncRead + Unpin>(r: &mut R) -> Vec<u8> {
    within(WAIT, "the server's close_notify and EOF", async {
        let mut seen = Vec::new();
        let mut chunk = vec![0u8; 65536];
        loop {
            match r.read(&mut chunk).await {
                Ok(0) => return seen,
                Ok(n) => seen.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => panic!(
                    "the server closed TCP without a close_notify ({e}); bytes before: {}",
                    seen.len()
                ),
                Err(e) => panic!("connection failed instead of a clean TLS close: {e}"),
            }
        }
    })
    .await
}

/// The server's reply to a pipelined upgrade: the response head and the first whole message.
pub struct PipelinedReply {
    pub head: String,
    pub message: (u8, Vec<u8>),
}

/// Connects with a blocking rustls client and hands it the upgrade request AND one masked
/// frame carrying `payload` before the handshake has even started, so rustls sends them in the
/// same flight as its Finished. That is the trap the server's switch point must survive:
/// application records queued right behind the handshake, possibly cut mid-record by a read.
/// Blocking (run it on a blocking thread); every socket operation is bounded by `WAIT`.
pub fn pipelined_upgrade_and_message(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    opcode: u8,
    payload: &[u8],
) -> PipelinedReply {
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    let mut conn = ClientConnection::new(cfg, name).expect("client connection");
    // The early plaintext can exceed rustls' default 64 KiB buffer for data sent before the
    // handshake completes.
    conn.set_buffer_limit(None);
    let mut early =
        upgrade_request(&addr.to_string(), "dGhlIHNhbXBsZSBub25jZQ==", &[]).into_bytes();
    early.extend(cframe(true, opcode, payload));
    conn.writer()
        .write_all(&early)
        .expect("queue the early plaintext");
    assert!(
        conn.is_handshaking(),
        "the data must be queued before Finished"
    );

    let mut sock = std::net::TcpStream::connect(addr).expect("TCP connect");
    sock.set_nodelay(true).expect("TCP_NODELAY");
    sock.set_read_timeout(Some(WAIT)).expect("read timeout");
    sock.set_write_timeout(Some(WAIT)).expect("write timeout");

    let reply = drive_until_reply(&mut conn, &mut sock);
    echo_once_more(&mut conn, &mut sock);
    close_politely(&mut conn, &mut sock);
    reply
}

/// Runs the blocking client's I/O until the 101 head and one whole message have arrived.
fn drive_until_reply(
    conn: &mut ClientConnection,
    sock: &mut std::net::TcpStream,
) -> PipelinedReply {
    let mut head: Option<String> = None;
    let mut message = (None, Vec::new());
    drive(conn, sock, "the 101 and the echo", |plain| {
        if head.is_none() {
            head = take_head(plain);
        }
        let head = head.as_ref()?;
        collect_message(plain, &mut message).then(|| PipelinedReply {
            head: head.clone(),
            message: (
                message.0.expect("a data frame started it"),
                message.1.clone(),
            ),
        })
    })
}

/// One more message and its echo before the client closes. The server hands the connection to
/// the kernel right after it has written the first reply, in the same pass; a client still
/// waiting for this echo is connected when it does. A client that closed at once could beat
/// the hand-off to the socket (`TCP_ULP` refuses a socket past ESTABLISHED), and the
/// connection would stay in userspace: served, but as a counted fallback.
fn echo_once_more(conn: &mut ClientConnection, sock: &mut std::net::TcpStream) {
    let payload = b"after the hand-off";
    conn.writer()
        .write_all(&cframe(true, OP_TEXT, payload))
        .expect("queue the second message");
    let mut message = (None, Vec::new());
    let echo = drive(conn, sock, "the second echo", |plain| {
        collect_message(plain, &mut message).then(|| message.clone())
    });
    assert!(
        echo == (Some(OP_TEXT), payload.to_vec()),
        "the second message came back different: {echo:?}"
    );
}

/// Runs the blocking client's I/O (bounded by `WAIT`) until `done` finds what it waits for in
/// the plaintext received.
fn drive<T>(
    conn: &mut ClientConnection,
    sock: &mut std::net::TcpStream,
    what: &str,
    mut done: impl FnMut(&mut Vec<u8>) -> Option<T>,
) -> T {
    let deadline = Instant::now() + WAIT;
    let mut plain = Vec::new();
    loop {
        flush_tls(conn, sock);
        if let Some(found) = done(&mut plain) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} within {WAIT:?}; {} plaintext bytes pending",
            plain.len()
        );
        match conn.read_tls(sock) {
            Ok(0) => panic!(
                "the server closed the connection before {what}; plaintext {:?}",
                String::from_utf8_lossy(&plain)
            ),
            Ok(_) => {}
            Err(e) => panic!("read from the server: {e} (waiting for {what})"),
        }
        conn.process_new_packets()
            .unwrap_or_else(|e| panic!("TLS error from the server's records: {e}"));
        read_plaintext(conn, &mut plain);
    }
}

fn flush_tls(conn: &mut ClientConnection, sock: &mut std::net::TcpStream) {
    while conn.wants_write() {
        conn.write_tls(sock).expect("write to the server");
    }
}

fn read_plaintext(conn: &mut ClientConnection, plain: &mut Vec<u8>) {
    let mut chunk = vec![0u8; 65536];
    loop {
        match conn.reader().read(&mut chunk) {
            Ok(0) => return, // close_notify: whatever came before it is in `plain`
            Ok(n) => plain.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
            Err(e) => panic!("reading plaintext: {e}"),
        }
    }
}

/// Takes the HTTP response head off the front of `plain` once it is complete.
fn take_head(plain: &mut Vec<u8>) -> Option<String> {
    let end = plain.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&plain[..end]).into_owned();
    plain.drain(..end);
    Some(head)
}

/// Moves whole frames from `plain` into `message` (opcode, data); true once its last fragment
/// is in. Control frames are skipped.
fn collect_message(plain: &mut Vec<u8>, message: &mut (Option<u8>, Vec<u8>)) -> bool {
    while let Some(f) = take_frame(plain) {
        assert_ne!(
            f.opcode,
            OP_CLOSE,
            "close {:?} {:?} instead of the echo",
            f.close_code(),
            f.close_reason()
        );
        if f.opcode >= 0x8 {
            continue;
        }
        message.0.get_or_insert(f.opcode);
        message.1.extend_from_slice(&f.payload);
        if f.fin {
            return true;
        }
    }
    false
}

/// A close frame and our close_notify, best effort: the test is over, this only spares the
/// server an abrupt end.
fn close_politely(conn: &mut ClientConnection, sock: &mut std::net::TcpStream) {
    let _ = conn
        .writer()
        .write_all(&cframe(true, OP_CLOSE, &close_payload(1000, "done")));
    conn.send_close_notify();
    while conn.wants_write() {
        if conn.write_tls(sock).is_err() {
            break;
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Write);
}
