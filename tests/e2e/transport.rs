//! Before the WebSocket session: non-TLS bytes on the TLS port, old TLS versions, and the
//! handshake deadline (TLS + upgrade request) against slow or silent clients.

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::*;

/// The contract says "closed within 1 s"; the slack covers a loaded 2-core machine.
const NOT_TLS_LIMIT: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn plain_http_on_tls_port_is_closed_quickly() {
    let srv = Server::start();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let t0 = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let (bytes, closed) = read_to_close(&mut s, WAIT).await;
    let took = t0.elapsed();
    assert!(closed, "plain HTTP connection still open after {WAIT:?}");
    assert!(
        took <= NOT_TLS_LIMIT,
        "plain HTTP closed only after {took:?}"
    );
    assert!(
        !bytes.starts_with(b"HTTP/1.1 101"),
        "plain HTTP got upgraded"
    );
    srv.wait_metric("wssedge_refusals_total", &[("reason", "not_tls")], 1.0)
        .await;
}

#[tokio::test]
async fn garbage_on_tls_port_is_closed_quickly() {
    let srv = Server::start();
    for garbage in [
        &b"\x00\x01\x02\x03\x04\x05\x06\x07garbage"[..],
        &[0xff; 64][..],
        b"\x16\x03\x01\x00\x05hello",
    ] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let t0 = Instant::now();
        s.write_all(garbage).await.unwrap();
        let (_, closed) = read_to_close(&mut s, WAIT).await;
        let took = t0.elapsed();
        assert!(closed, "connection still open after garbage {garbage:02x?}");
        assert!(
            took <= NOT_TLS_LIMIT,
            "garbage {garbage:02x?} closed only after {took:?}"
        );
    }
    // The server is still fine.
    let mut ws = srv.ws().await;
    let m = echo(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text("still here"),
    )
    .await;
    assert_eq!(message_text(&m), "still here");
}

#[tokio::test]
async fn tls_1_1_is_refused_with_a_server_alert() {
    let Some(openssl) = which("openssl") else {
        eprintln!("SKIP tls_1_1_is_refused_with_a_server_alert: openssl not found");
        return;
    };
    let srv = Server::start();
    let mut cmd = tokio::process::Command::new(openssl);
    cmd.args([
        "s_client",
        "-tls1_1",
        "-cipher",
        "DEFAULT:@SECLEVEL=0",
        "-connect",
    ])
    .arg(srv.addr.to_string())
    .args(["-servername", "localhost"]);
    let (status, out, err) = run_cmd(cmd, WAIT)
        .await
        .expect("openssl s_client did not finish");
    let all = format!("{out}\n{err}");
    if all.contains("no protocols available") || all.contains("unknown option") {
        eprintln!("SKIP tls_1_1_is_refused_with_a_server_alert: this openssl cannot offer TLS 1.1:\n{all}");
        return;
    }
    assert!(!status.success(), "TLS 1.1 handshake succeeded:\n{all}");
    // The alert must come from the server ("SSL alert number 70" is protocol_version as received).
    assert!(
        all.contains("alert protocol version") || all.contains("SSL alert number 70"),
        "no protocol_version alert from the server:\n{all}"
    );
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "tls_protocol_version")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn dribbling_upgrade_request_hits_the_handshake_deadline() {
    let srv = Server::with_config("[limits]\nhandshake_timeout_ms = 1000\n");
    let t0 = Instant::now();
    let tls = srv.tls().await;
    let (mut rd, mut wr) = tokio::io::split(tls);
    let reader = tokio::spawn(async move { read_to_close(&mut rd, WAIT).await });
    let req = upgrade_request("127.0.0.1", "dGhlIHNhbXBsZSBub25jZQ==", &[]);
    // One byte every 200 ms: the whole request would take > 20 s.
    let writer = tokio::spawn(async move {
        for b in req.as_bytes() {
            if wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            if t0.elapsed() > WAIT {
                break;
            }
        }
    });
    let (bytes, closed) = within(WAIT + Duration::from_secs(1), "reader", reader)
        .await
        .unwrap();
    let took = t0.elapsed();
    writer.abort();
    assert!(closed, "dribbling client still connected after {took:?}");
    assert!(
        took >= Duration::from_millis(700),
        "closed before the deadline: {took:?}"
    );
    assert!(
        took <= Duration::from_secs(4),
        "closed only after {took:?} (deadline 1 s)"
    );
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains(" 101 "),
        "upgraded despite the deadline: {text}"
    );
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "handshake_timeout")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn silent_clients_hit_the_handshake_deadline() {
    let srv = Server::with_config("[limits]\nhandshake_timeout_ms = 1000\n");
    // Silent before TLS.
    let t0 = Instant::now();
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let (_, closed) = read_to_close(&mut s, WAIT).await;
    let took = t0.elapsed();
    assert!(
        closed && took <= Duration::from_secs(4),
        "silent TCP client: closed={closed} after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(700),
        "closed before the deadline: {took:?}"
    );
    // Silent after TLS (no upgrade request).
    let t0 = Instant::now();
    let mut tls = srv.tls().await;
    let (_, closed) = read_to_close(&mut tls, WAIT).await;
    let took = t0.elapsed();
    assert!(
        closed && took <= Duration::from_secs(4),
        "silent TLS client: closed={closed} after {took:?}"
    );
    // The first waited for its first byte (`first_byte_timeout_ms`, capped at the handshake's);
    // the second for its upgrade request.
    wait_metric_exactly(
        &srv,
        "wssedge_refusals_total",
        &[("reason", "first_byte_timeout")],
        1.0,
        "the silent TCP client",
    )
    .await;
    wait_metric_exactly(
        &srv,
        "wssedge_refusals_total",
        &[("reason", "handshake_timeout")],
        1.0,
        "the silent TLS client",
    )
    .await;
}
