//! Protocol errors after the upgrade: the server closes with the RFC 6455 code and then closes
//! the connection. Frames are written raw because tungstenite will not produce them.

use crate::harness::*;

/// Sends `wire` on a fresh connection and expects a close frame with `code`, then EOF.
async fn expect_close_for(srv: &Server, wire: &[u8], code: u16) {
    let mut raw = srv.raw().await;
    raw.send_lossy(wire).await;
    assert_eq!(
        raw.expect_close().await,
        Some(code),
        "close code for {:02x?}",
        &wire[..wire.len().min(16)]
    );
    // The server may wait briefly for our close reply; answer it, then expect the end.
    raw.send_lossy(&cframe(true, OP_CLOSE, &close_payload(code, "")))
        .await;
    loop {
        match raw.next().await {
            Event::Closed => break,
            Event::Frame(f) => assert!(f.opcode >= 0x8, "data frame after a protocol error: {f:?}"),
        }
    }
}

#[tokio::test]
async fn unmasked_client_frame_is_closed_with_1002() {
    let srv = Server::start();
    expect_close_for(&srv, &frame(true, OP_TEXT, b"not masked", None), 1002).await;
    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1002"), ("side", "server")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn invalid_utf8_text_is_closed_with_1007() {
    let srv = Server::start();
    // Single frame.
    expect_close_for(&srv, &cframe(true, OP_TEXT, b"ok \xc3\x28 bad"), 1007).await;
    // Split across fragments: the first fragment ends in the middle of a valid sequence (must
    // not be refused), the second one is invalid.
    let mut wire = cframe(false, OP_TEXT, b"abc\xe2\x82");
    wire.extend(cframe(true, OP_CONT, b"\x28"));
    expect_close_for(&srv, &wire, 1007).await;
    // Invalid UTF-8 in a close reason.
    let mut p = close_payload(1000, "");
    p.extend_from_slice(b"\xff\xfe");
    expect_close_for(&srv, &cframe(true, OP_CLOSE, &p), 1007).await;
    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1007"), ("side", "server")],
        3.0,
    )
    .await;
}

#[tokio::test]
async fn valid_utf8_split_across_fragments_is_accepted() {
    let srv = Server::start();
    let mut raw = srv.raw().await;
    let s = "€uro ✓ 𝄞".as_bytes();
    // Cut inside the 3-byte euro sign and inside the 4-byte clef.
    let mut wire = cframe(false, OP_TEXT, &s[..1]);
    wire.extend(cframe(false, OP_CONT, &s[1..s.len() - 2]));
    wire.extend(cframe(true, OP_CONT, &s[s.len() - 2..]));
    raw.send(&wire).await;
    let (k, d) = raw.message().await;
    assert_eq!(k, OP_TEXT);
    assert_eq!(d, s);
}

#[tokio::test]
async fn framing_errors_are_closed_with_1002() {
    let srv = Server::start();
    // Reserved opcodes.
    expect_close_for(&srv, &cframe(true, 0x3, b"x"), 1002).await;
    expect_close_for(&srv, &cframe(true, 0xB, b"x"), 1002).await;
    // RSV bits without a negotiated extension.
    expect_close_for(&srv, &frame_rsv(true, 0b100, OP_TEXT, b"x", MASK), 1002).await;
    // Continuation without a message in progress.
    expect_close_for(&srv, &cframe(true, OP_CONT, b"x"), 1002).await;
    // A new data frame inside a fragmented message.
    let mut wire = cframe(false, OP_TEXT, b"a");
    wire.extend(cframe(true, OP_TEXT, b"b"));
    expect_close_for(&srv, &wire, 1002).await;
    // Fragmented and oversized control frames.
    expect_close_for(&srv, &cframe(false, OP_PING, b"x"), 1002).await;
    expect_close_for(&srv, &cframe(true, OP_PING, &[b'p'; 126]), 1002).await;
    // Close frame with a 1-byte payload, and with a code that must not appear on the wire.
    expect_close_for(&srv, &cframe(true, OP_CLOSE, &[0x03]), 1002).await;
    expect_close_for(
        &srv,
        &cframe(true, OP_CLOSE, &close_payload(1005, "")),
        1002,
    )
    .await;
}
