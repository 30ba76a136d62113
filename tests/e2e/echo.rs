//! Echo behaviour over the real WSS path: every kind of data message, control frames, the
//! close handshake, fragmentation and several connections at once.

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn text_message_is_echoed() {
    let srv = Server::start();
    let mut ws = srv.ws().await;
    let m = echo(&mut ws, Message::text("hello, edge ✓")).await;
    assert_eq!(message_text(&m), "hello, edge ✓");
}

#[tokio::test]
async fn binary_message_is_echoed() {
    let srv = Server::start();
    let mut ws = srv.ws().await;
    let data = pattern(1000);
    let m = echo(&mut ws, Message::binary(data.clone())).await;
    assert_eq!(m, Message::binary(data));
}

#[tokio::test]
async fn empty_messages_are_echoed() {
    let srv = Server::start();
    let mut ws = srv.ws().await;
    assert_eq!(echo(&mut ws, Message::text("")).await, Message::text(""));
    assert_eq!(
        echo(&mut ws, Message::binary(Vec::new())).await,
        Message::binary(Vec::new())
    );
}

#[tokio::test]
async fn one_mib_messages_are_echoed() {
    let srv = Server::start();
    let mut ws = srv.ws().await;
    let data = pattern(1 << 20);
    assert_eq!(
        echo(&mut ws, Message::binary(data.clone())).await,
        Message::binary(data)
    );
    let text: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let m = echo(&mut ws, Message::text(text.clone())).await;
    assert_eq!(message_text(&m), text);
}

#[tokio::test]
async fn many_messages_in_order() {
    let srv = Server::start();
    let mut ws = srv.ws().await;
    // Pipelined: send 200 messages, then read 200 echoes in order.
    for i in 0..200u32 {
        within(WAIT, "send", ws.feed(Message::text(format!("msg {i}"))))
            .await
            .unwrap();
    }
    within(WAIT, "flush", ws.flush()).await.unwrap();
    for i in 0..200u32 {
        let m = next_data(&mut ws).await;
        assert_eq!(message_text(&m), format!("msg {i}"));
    }
}

#[tokio::test]
async fn ping_gets_pong_with_same_payload() {
    let srv = Server::start();
    let mut raw = srv.raw().await;
    raw.send(&cframe(true, OP_PING, b"are you there")).await;
    match raw.next().await {
        Event::Frame(f) => {
            assert_eq!(f.opcode, OP_PONG, "expected a pong, got {f:?}");
            assert_eq!(f.payload, b"are you there");
            assert!(!f.masked);
        }
        Event::Closed => panic!("closed instead of pong"),
    }
    // Empty ping too, and via tungstenite.
    let mut ws = srv.ws().await;
    within(WAIT, "send ping", ws.send(Message::Ping(Vec::new().into())))
        .await
        .unwrap();
    match within(WAIT, "pong", ws.next()).await {
        Some(Ok(Message::Pong(p))) => assert!(p.is_empty()),
        other => panic!("expected pong, got {other:?}"),
    }
}

#[tokio::test]
async fn client_close_is_echoed() {
    let srv = Server::start();
    let mut raw = srv.raw().await;
    raw.send(&cframe(true, OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    assert_eq!(raw.expect_close().await, Some(1000));
    // After the close handshake the server closes the TCP connection.
    match raw.next().await {
        Event::Closed => {}
        Event::Frame(f) => panic!("frame after close: {f:?}"),
    }

    // A non-1000 code is echoed too (through tungstenite's close handshake).
    let mut ws = srv.ws().await;
    let cf = CloseFrame {
        code: CloseCode::Library(4001),
        reason: "custom".into(),
    };
    within(WAIT, "close", ws.send(Message::Close(Some(cf))))
        .await
        .unwrap();
    match within(WAIT, "close reply", ws.next()).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 4001),
        other => panic!("expected close 4001, got {other:?}"),
    }

    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1000"), ("side", "client")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn fragmented_messages_are_reassembled() {
    let srv = Server::start();
    let mut raw = srv.raw().await;
    // Text in three fragments with a ping in between (control frames may interleave).
    raw.send(&cframe(false, OP_TEXT, b"frag")).await;
    raw.send(&cframe(false, OP_CONT, b"ment")).await;
    raw.send(&cframe(true, OP_PING, b"mid")).await;
    raw.send(&cframe(true, OP_CONT, "ed ✓".as_bytes())).await;
    let (mut saw_pong, mut done, mut first) = (false, false, true);
    let mut data = Vec::new();
    while !(done && saw_pong) {
        match raw.next().await {
            Event::Frame(f) if f.opcode == OP_PONG => {
                assert_eq!(f.payload, b"mid");
                saw_pong = true;
            }
            Event::Frame(f) if !done && f.opcode == if first { OP_TEXT } else { OP_CONT } => {
                first = false;
                data.extend_from_slice(&f.payload);
                done = f.fin;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(String::from_utf8(data).unwrap(), "fragmented ✓");

    // Binary in many small fragments, including empty ones.
    let payload = pattern(10_000);
    let chunks: Vec<&[u8]> = payload.chunks(999).collect();
    let mut wire = cframe(false, OP_BINARY, &[]);
    for (i, c) in chunks.iter().enumerate() {
        wire.extend(cframe(i + 1 == chunks.len(), OP_CONT, c));
    }
    raw.send(&wire).await;
    let (k, d) = raw.message().await;
    assert_eq!(k, OP_BINARY);
    assert_eq!(d, payload);
}

#[tokio::test]
async fn many_connections_on_two_cores() {
    let srv = ServerBuilder::new().cores(2).start();
    let mut tasks = Vec::new();
    for c in 0..16u32 {
        let url = srv.url();
        let addr = srv.addr;
        let cfg = srv.tls_config();
        tasks.push(tokio::spawn(async move {
            let mut ws = ws_over(tls_connect(addr, cfg).await, &url).await;
            for i in 0..20u32 {
                let m = echo(&mut ws, Message::text(format!("{c}:{i}"))).await;
                assert_eq!(message_text(&m), format!("{c}:{i}"));
            }
            let _ = within(WAIT, "close", ws.close(None)).await;
        }));
    }
    for t in tasks {
        within(WAIT, "client task", t)
            .await
            .expect("client task panicked");
    }
    srv.wait_metric("wssedge_connections_accepted_total", &[], 16.0)
        .await;
    srv.wait_metric("wssedge_handshakes_total", &[("result", "ok")], 16.0)
        .await;
    srv.wait_metric("wssedge_frames_total", &[("direction", "in")], 320.0)
        .await;
    srv.wait_metric("wssedge_frames_total", &[("direction", "out")], 320.0)
        .await;
}

/// A close frame and the TLS close_notify in one flight: the close frame is still answered.
#[tokio::test]
async fn close_frame_followed_by_close_notify_is_answered() {
    use tokio::io::AsyncWriteExt;
    let srv = Server::start();
    let mut raw = srv.raw().await;
    let mut flight = cframe(true, OP_TEXT, b"last");
    flight.extend(cframe(true, OP_CLOSE, &close_payload(1000, "bye")));
    raw.send(&flight).await;
    raw.wr.shutdown().await.expect("send close_notify");
    assert_eq!(raw.message().await, (OP_TEXT, b"last".to_vec()));
    assert_eq!(raw.expect_close().await, Some(1000));
}
