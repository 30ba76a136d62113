//! Configured limits: frame and message size (1009), the per-core buffer budget (1013), the
//! idle timeout (1001), the write timeout, max_connections (closed before any TLS work) and the
//! read path's promise that an idle connection holds no read buffer.

use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::harness::*;

const SMALL: &str = "\
[limits]
max_frame_bytes = 1024
max_message_bytes = 4096
";

#[tokio::test]
async fn frame_at_limit_passes_over_limit_gets_1009() {
    let srv = Server::with_config(SMALL);
    let mut raw = srv.raw().await;
    let at = pattern(1024);
    raw.send(&cframe(true, OP_BINARY, &at)).await;
    assert_eq!(raw.message().await, (OP_BINARY, at));
    // Text at the limit too.
    let text = "t".repeat(1024);
    raw.send(&cframe(true, OP_TEXT, text.as_bytes())).await;
    assert_eq!(raw.message().await, (OP_TEXT, text.into_bytes()));

    raw.send_lossy(&cframe(true, OP_BINARY, &pattern(1025)))
        .await;
    assert_eq!(raw.expect_close().await, Some(1009));
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "frame_too_large")],
        1.0,
    )
    .await;
    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1009"), ("side", "server")],
        1.0,
    )
    .await;

    // A frame header announcing a huge length is refused without waiting for the payload.
    let mut raw = srv.raw().await;
    let mut hdr = vec![0x82, 0x80 | 127];
    hdr.extend_from_slice(&(1u64 << 40).to_be_bytes());
    hdr.extend_from_slice(&[1, 2, 3, 4]);
    raw.send_lossy(&hdr).await;
    assert_eq!(raw.expect_close().await, Some(1009));
}

#[tokio::test]
async fn message_at_limit_passes_over_limit_gets_1009() {
    let srv = Server::with_config(SMALL);
    let mut raw = srv.raw().await;
    let msg = pattern(4096);
    let mut wire = Vec::new();
    for (i, c) in msg.chunks(1024).enumerate() {
        wire.extend(cframe(i == 3, if i == 0 { OP_BINARY } else { OP_CONT }, c));
    }
    raw.send(&wire).await;
    assert_eq!(raw.message().await, (OP_BINARY, msg));

    // 4097 bytes in frames that are each within max_frame_bytes.
    let msg = pattern(4097);
    let mut wire = Vec::new();
    let chunks: Vec<&[u8]> = msg.chunks(1024).collect();
    for (i, c) in chunks.iter().enumerate() {
        wire.extend(cframe(
            i + 1 == chunks.len(),
            if i == 0 { OP_BINARY } else { OP_CONT },
            c,
        ));
    }
    raw.send_lossy(&wire).await;
    assert_eq!(raw.expect_close().await, Some(1009));
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "message_too_large")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn large_partial_message_over_buffer_budget_gets_1013() {
    // One core, a 64 KiB budget for partly received messages; messages themselves may be large.
    let srv = Server::with_config(
        "[limits]\nmax_buffered_bytes_per_core = 65536\nmax_message_bytes = 16777216\nmax_frame_bytes = 16777216\n",
    );
    // A small complete message is fine.
    let mut ok = srv.raw().await;
    ok.send(&cframe(true, OP_TEXT, b"small")).await;
    assert_eq!(ok.message().await, (OP_TEXT, b"small".to_vec()));

    let raw = srv.raw().await;
    let RawWs { mut rd, mut wr } = raw;
    let reader = tokio::spawn(async move { rd.expect_close().await });
    // Up to 1 MiB in 16 KiB fragments, never finished; stop once the server has closed.
    let chunk = pattern(16 * 1024);
    let t0 = Instant::now();
    let mut sent = 0usize;
    let mut first = true;
    while sent < (1 << 20) && !reader.is_finished() && t0.elapsed() < WAIT {
        let f = cframe(false, if first { OP_BINARY } else { OP_CONT }, &chunk);
        first = false;
        if send_all(&mut wr, &f).await.is_err() {
            break;
        }
        sent += chunk.len();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let code = within(WAIT, "close 1013", reader)
        .await
        .expect("reader panicked");
    assert_eq!(code, Some(1013), "after {sent} bytes");
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "buffer_budget")],
        1.0,
    )
    .await;

    // Only the offender was closed.
    ok.send(&cframe(true, OP_TEXT, b"still ok")).await;
    assert_eq!(ok.message().await, (OP_TEXT, b"still ok".to_vec()));
}

#[tokio::test]
async fn idle_connection_is_closed_with_1001() {
    let srv = Server::with_config("[limits]\nidle_timeout_ms = 1000\n");
    let mut raw = srv.raw().await;
    raw.send(&cframe(true, OP_TEXT, b"active")).await;
    assert_eq!(raw.message().await, (OP_TEXT, b"active".to_vec()));
    let t0 = Instant::now();
    assert_eq!(raw.expect_close().await, Some(1001));
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "idle close after only {took:?}"
    );
    assert!(
        took <= Duration::from_secs(6),
        "idle close after {took:?} (timeout 1 s)"
    );
    srv.wait_metric("wssedge_refusals_total", &[("reason", "idle_timeout")], 1.0)
        .await;
}

/// True if the server closed `s` without sending anything (no TLS ServerHello).
async fn closed_without_tls(addr: std::net::SocketAddr) -> bool {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("TCP connect (the kernel accepts)");
    // Deliberately send nothing: a refused connection is closed before any TLS work, so the
    // server does not wait for a ClientHello.
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("refused connection got {n} bytes"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn over_max_connections_is_closed_before_tls() {
    let srv = Server::with_config("[server]\ncores = 1\n[limits]\nmax_connections = 2\n");
    let mut a = srv.ws().await;
    let mut b = srv.ws().await;
    use tokio_tungstenite::tungstenite::Message;
    assert_eq!(message_text(&echo(&mut a, Message::text("a")).await), "a");
    assert_eq!(message_text(&echo(&mut b, Message::text("b")).await), "b");
    srv.wait_metric("wssedge_connections_accepted_total", &[], 2.0)
        .await;

    assert!(
        closed_without_tls(srv.addr).await,
        "third connection was not closed"
    );
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "max_connections")],
        1.0,
    )
    .await;
    // The admitted ones are unaffected.
    assert_eq!(message_text(&echo(&mut a, Message::text("a2")).await), "a2");

    // Closing one frees a slot (the server may take a moment to account for it).
    drop(b);
    let deadline = Instant::now() + WAIT;
    loop {
        let tcp = TcpStream::connect(srv.addr).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        );
        let tls = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(srv.tls_config()).connect(name, tcp),
        )
        .await;
        if let Ok(Ok(tls)) = tls {
            let mut c = ws_over(tls, &srv.url()).await;
            assert_eq!(message_text(&echo(&mut c, Message::text("c")).await), "c");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no slot freed after closing a connection"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Connects and sends the first bytes of a TLS record (a ClientHello's start): the
/// connection holds a handshake slot from then on.
async fn started_handshake(addr: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("TCP connect (the kernel accepts)");
    send_all(&mut s, &[0x16, 0x03, 0x01]).await.expect("write");
    s
}

#[tokio::test]
async fn over_max_handshakes_in_flight_is_closed_before_tls() {
    let srv = Server::with_config("[server]\ncores = 1\n[limits]\nmax_handshakes_in_flight = 2\nhandshake_timeout_ms = 8000\n");
    // Two handshakes that started (and stall) occupy both slots; a silent connection holds
    // none.
    let s1 = started_handshake(srv.addr).await;
    let s2 = started_handshake(srv.addr).await;
    let silent = TcpStream::connect(srv.addr).await.unwrap();
    srv.wait_metric_eq("wssedge_connections", &[("state", "handshake")], 2.0)
        .await;
    srv.wait_metric_eq("wssedge_connections", &[("state", "silent")], 1.0)
        .await;
    let mut third = started_handshake(srv.addr).await;
    let (got, closed) = read_to_close(&mut third, Duration::from_secs(5)).await;
    assert!(
        closed && got.is_empty(),
        "third handshake was not refused before TLS: closed={closed}, {} bytes",
        got.len()
    );
    drop(silent);
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "max_handshakes_in_flight")],
        1.0,
    )
    .await;
    drop((s1, s2));
    // Slots come back.
    let deadline = Instant::now() + WAIT;
    loop {
        let tcp = TcpStream::connect(srv.addr).await.unwrap();
        let name = tokio_rustls::rustls::pki_types::ServerName::IpAddress(
            std::net::Ipv4Addr::LOCALHOST.into(),
        );
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(srv.tls_config()).connect(name, tcp),
        )
        .await;
        if let Ok(Ok(_)) = r {
            break;
        }
        assert!(Instant::now() < deadline, "handshake slots not released");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The read path's memory promise: an idle upgraded connection holds no read buffer; only a
/// connection with a partly received frame does, until the frame completes.
#[tokio::test]
async fn idle_connections_hold_no_read_buffer() {
    let srv = Server::start();
    let mut conns = Vec::new();
    for i in 0..20u8 {
        let mut raw = srv.raw().await;
        raw.send(&cframe(true, OP_BINARY, &[i; 100])).await;
        assert_eq!(raw.message().await, (OP_BINARY, vec![i; 100]));
        conns.push(raw);
    }
    srv.wait_metric_eq("wssedge_connections", &[("state", "open")], 20.0)
        .await;
    srv.wait_metric_eq("wssedge_read_buffers_held", &[], 0.0)
        .await;

    // Half a frame: that one connection now holds its partial frame, counted in the budget.
    let frame = cframe(true, OP_BINARY, &pattern(1000));
    conns[3].send(&frame[..500]).await;
    srv.wait_metric_eq("wssedge_read_buffers_held", &[], 1.0)
        .await;
    assert!(srv.metric("wssedge_buffered_bytes", &[]).await > 0.0);
    conns[3].send(&frame[500..]).await;
    assert_eq!(conns[3].message().await, (OP_BINARY, pattern(1000)));
    srv.wait_metric_eq("wssedge_read_buffers_held", &[], 0.0)
        .await;
    srv.wait_metric_eq("wssedge_buffered_bytes", &[], 0.0).await;
}

/// A client that sends but never reads cannot pin the server's writes: its reads pause at the
/// outbound cap, and once a write makes no progress for write_timeout_ms it is a slow consumer,
/// reset after close_timeout_ms (its close frame cannot leave).
#[tokio::test]
async fn client_that_stops_reading_is_closed_at_the_write_timeout() {
    let srv = Server::with_config(
        "[limits]\nwrite_timeout_ms = 1000\nsocket_send_buffer_bytes = 4096\nsocket_recv_buffer_bytes = 4096\n",
    );
    let mut raw = srv.raw().await;
    let big = cframe(true, OP_BINARY, &pattern(64 * 1024));
    // Bounded: at most 32 MiB, each write given up after 3 s once the server stops reading.
    let writer = tokio::spawn(async move {
        for _ in 0..512 {
            match tokio::time::timeout(Duration::from_secs(3), send_all(&mut raw.wr, &big)).await {
                Ok(Ok(())) => {}
                _ => break,
            }
        }
        raw
    });
    expect_slow_consumers_reset(&srv, 1.0).await;
    let _ = within(WAIT, "writer gives up", writer).await;
    srv.wait_metric_eq("wssedge_connections", &[("state", "open")], 0.0)
        .await;
}
