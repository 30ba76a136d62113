//! Upgrade requests over a raw TLS stream: the good one gets 101 with the right accept key,
//! bad ones get an HTTP status and the connection is closed.

use crate::harness::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Sends `req` over a fresh TLS connection; returns the response head and whether the server
/// then closed the connection.
async fn send_request(srv: &Server, req: &[u8]) -> (String, bool) {
    let mut tls = srv.tls().await;
    send_all(&mut tls, req).await.expect("write request");
    let (head, _rest) = within(WAIT, "response head", read_head(&mut tls))
        .await
        .expect("response head");
    let (_, closed) = read_to_close(&mut tls, WAIT).await;
    (head, closed)
}

async fn expect_status(srv: &Server, req: &str, want: u16) -> String {
    let (head, closed) = send_request(srv, req.as_bytes()).await;
    assert_eq!(
        status_code(&head),
        Some(want),
        "request:\n{req}\nresponse:\n{head}"
    );
    assert!(closed, "connection still open after a {want} response");
    head
}

fn req_without(header_name: &str) -> String {
    upgrade_request("127.0.0.1", KEY, &[])
        .split("\r\n")
        .filter(|l| {
            !l.to_ascii_lowercase()
                .starts_with(&format!("{}:", header_name.to_ascii_lowercase()))
        })
        .collect::<Vec<_>>()
        .join("\r\n")
}

fn req_with(header_name: &str, value: &str) -> String {
    let base = req_without(header_name);
    base.replacen(
        "\r\n\r\n",
        &format!("\r\n{header_name}: {value}\r\n\r\n"),
        1,
    )
}

#[tokio::test]
async fn good_upgrade_gets_101_with_accept_key() {
    let srv = Server::start();
    let mut tls = srv.tls().await;
    let key = "x3JJHMbDL1EzLkh9GBhXDw==";
    send_all(&mut tls, upgrade_request("127.0.0.1", key, &[]).as_bytes())
        .await
        .unwrap();
    let (head, _) = within(WAIT, "101", read_head(&mut tls)).await.unwrap();
    assert_eq!(status_code(&head), Some(101), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some("HSmrc0sMlYUkAGmm5OPpG2HaGWk=")
    );
    assert!(header(&head, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")));
    assert!(header(&head, "connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")));
    // No extension is negotiated even when offered.
    let mut tls = srv.tls().await;
    let req = upgrade_request(
        "127.0.0.1",
        key,
        &[("Sec-WebSocket-Extensions", "permessage-deflate")],
    );
    send_all(&mut tls, req.as_bytes()).await.unwrap();
    let (head, _) = within(WAIT, "101", read_head(&mut tls)).await.unwrap();
    assert_eq!(status_code(&head), Some(101), "{head}");
    assert_eq!(header(&head, "sec-websocket-extensions"), None, "{head}");
}

#[tokio::test]
async fn bad_upgrades_get_400() {
    let srv = Server::start();
    expect_status(&srv, &req_without("Sec-WebSocket-Key"), 400).await;
    expect_status(&srv, &req_with("Sec-WebSocket-Key", "short"), 400).await;
    expect_status(
        &srv,
        &req_with("Sec-WebSocket-Key", "not base64 at all!!!!!!!"),
        400,
    )
    .await;
    expect_status(&srv, &req_without("Upgrade"), 400).await;
    expect_status(&srv, &req_with("Upgrade", "h2c"), 400).await;
    expect_status(&srv, &req_with("Connection", "keep-alive"), 400).await;
    let post = upgrade_request("127.0.0.1", KEY, &[]).replacen("GET", "POST", 1);
    // A wrong method may be answered 405 (more precise than 400); both refuse it.
    let (head, closed) = send_request(&srv, post.as_bytes()).await;
    let st = status_code(&head);
    assert!(st == Some(400) || st == Some(405), "POST upgrade: {head}");
    assert!(closed, "connection still open after refusing POST");
    let http10 = upgrade_request("127.0.0.1", KEY, &[]).replacen("HTTP/1.1", "HTTP/1.0", 1);
    expect_status(&srv, &http10, 400).await;
    expect_status(&srv, "this is not HTTP at all\r\n\r\n", 400).await;
    srv.wait_metric("wssedge_refusals_total", &[("reason", "bad_key")], 2.0)
        .await;
    srv.wait_metric("wssedge_handshakes_total", &[("result", "failed")], 9.0)
        .await;
}

#[tokio::test]
async fn wrong_or_missing_version_gets_426() {
    let srv = Server::start();
    for req in [
        req_without("Sec-WebSocket-Version"),
        req_with("Sec-WebSocket-Version", "8"),
    ] {
        let head = expect_status(&srv, &req, 426).await;
        assert_eq!(header(&head, "sec-websocket-version"), Some("13"), "{head}");
    }
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "unsupported_ws_version")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn oversized_request_gets_431() {
    let srv = Server::with_config("[limits]\nmax_request_bytes = 2048\nmax_headers = 16\n");
    // Too many bytes.
    let big = upgrade_request("127.0.0.1", KEY, &[("X-Filler", &"a".repeat(4096))]);
    expect_status(&srv, &big, 431).await;
    // Too many headers: 431 (too large) or 400 both refuse it; anything else is wrong.
    let many: Vec<(String, String)> = (0..40)
        .map(|i| (format!("X-H{i}"), "v".to_string()))
        .collect();
    let refs: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (head, closed) =
        send_request(&srv, upgrade_request("127.0.0.1", KEY, &refs).as_bytes()).await;
    let st = status_code(&head);
    assert!(
        st == Some(431) || st == Some(400),
        "too many headers: {head}"
    );
    assert!(closed);
    // Just under the byte limit still upgrades.
    let ok = upgrade_request("127.0.0.1", KEY, &[("X-Filler", &"a".repeat(1500))]);
    let mut tls = srv.tls().await;
    send_all(&mut tls, ok.as_bytes()).await.unwrap();
    let (head, _) = within(WAIT, "101", read_head(&mut tls)).await.unwrap();
    assert_eq!(status_code(&head), Some(101), "{head}");
}

#[tokio::test]
async fn pipelined_frame_after_upgrade_is_not_lost() {
    // The request and the first frame arrive in one write: the bytes after the head belong to
    // the WebSocket session.
    let srv = Server::start();
    let mut tls = srv.tls().await;
    let mut wire = upgrade_request("127.0.0.1", KEY, &[]).into_bytes();
    wire.extend(cframe(true, OP_TEXT, b"early"));
    send_all(&mut tls, &wire).await.unwrap();
    let (head, rest) = within(WAIT, "101", read_head(&mut tls)).await.unwrap();
    assert_eq!(status_code(&head), Some(101), "{head}");
    let (r, _w) = tokio::io::split(tls);
    let mut rd = FrameReader { io: r, buf: rest };
    let (k, d) = rd.message().await;
    assert_eq!((k, d.as_slice()), (OP_TEXT, &b"early"[..]));
}
