//! permessage-deflate (RFC 7692) through the real edge: the 101 states what was agreed, echo
//! compresses what is large enough, a bomb is stopped at the cap, malformed offers are refused,
//! and a path without compression neither answers the offer nor accepts RSV1.

use wssedge_proto::ws::deflate::{MessageDeflater, MessageInflater};

use crate::harness::*;

const ON: &str = "[compression]\nenabled = true\n";
const PD: &str = "permessage-deflate; client_max_window_bits";

fn deflate(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    MessageDeflater::new(6, 15, true).compress_message(msg, &mut out);
    out
}

fn inflate(payload: &[u8]) -> Vec<u8> {
    let mut i = MessageInflater::new(true);
    i.inflate(payload, 64 << 20).expect("inflates");
    i.finish_message(64 << 20).expect("inflates");
    i.take_message()
}

/// Reads until the edge's close frame and checks its code and reason.
async fn expect_closed(ws: &mut RawWs, code: u16, reason: &str) {
    let close = ws.rd.expect_close_frame().await;
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(code), reason)
    );
}

/// One compressed message in one frame (RSV1 set), as a client sends it.
async fn send_deflated(ws: &mut RawWs, opcode: u8, msg: &[u8]) {
    ws.send(&frame_rsv(true, 0b100, opcode, &deflate(msg), MASK))
        .await;
}

/// The next data frame, whole (the edge sends unfragmented frames).
async fn data_frame(ws: &mut RawWs) -> Frame {
    loop {
        match ws.next().await {
            Event::Frame(f) if f.opcode == OP_CLOSE => {
                panic!("closed {:?} {}", f.close_code(), f.close_reason())
            }
            Event::Frame(f) if f.opcode >= 0x8 => continue,
            Event::Frame(f) => return f,
            Event::Closed => panic!("connection ended while waiting for a data frame"),
        }
    }
}

#[tokio::test]
async fn the_101_states_the_agreement_and_echo_compresses_both_ways() {
    let srv = Server::with_config(ON);
    let req = ws_request("/", &[("Sec-WebSocket-Extensions", PD)]);
    let (head, mut ws) = expect_upgraded(&srv, &req).await;
    assert_eq!(
        header(&head, "sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "{head}"
    );
    // A compressed message comes back compressed; a short one plain (below min_bytes).
    let big = "{\"topic\":\"trades.BTC-USD\",\"px\":\"64123.5\",\"qty\":\"0.25\"}".repeat(200);
    let z = deflate(big.as_bytes());
    ws.send(&frame_rsv(true, 0b100, OP_TEXT, &z, MASK)).await;
    let f = data_frame(&mut ws).await;
    assert_eq!((f.fin, f.rsv, f.opcode), (true, 0b100, OP_TEXT));
    assert!(f.payload.len() < big.len() / 5, "{} bytes", f.payload.len());
    assert_eq!(inflate(&f.payload), big.as_bytes());
    ws.send(&cframe(true, OP_TEXT, b"short")).await;
    let f = data_frame(&mut ws).await;
    assert_eq!((f.rsv, &f.payload[..]), (0, &b"short"[..]));
    // A compressed message in three fragments, a ping between them.
    let z = deflate(big.as_bytes());
    let (a, rest) = z.split_at(z.len() / 3);
    let (b, c) = rest.split_at(rest.len() / 2);
    ws.send(&frame_rsv(false, 0b100, OP_TEXT, a, MASK)).await;
    ws.send(&cframe(false, OP_CONT, b)).await;
    ws.send(&cframe(true, OP_PING, b"p")).await;
    ws.send(&cframe(true, OP_CONT, c)).await;
    let f = data_frame(&mut ws).await;
    assert_eq!(inflate(&f.payload), big.as_bytes());
    let compressed = "wssedge_compressed_messages_total";
    assert_eq!(srv.metric(compressed, &[("direction", "in")]).await, 2.0);
    assert_eq!(srv.metric(compressed, &[("direction", "out")]).await, 2.0);
    let bytes = srv
        .metric(
            "wssedge_compression_bytes_total",
            &[("direction", "out"), ("form", "uncompressed")],
        )
        .await;
    assert_eq!(bytes, 2.0 * big.len() as f64);
    assert_eq!(
        srv.metric("wssedge_compression_ratio_count", &[]).await,
        2.0
    );
}

#[tokio::test]
async fn a_decompression_bomb_is_closed_1009_before_its_memory_is_spent() {
    let srv = Server::with_config(&format!(
        "{ON}[limits]\nmax_message_bytes = 1048576\nmax_frame_bytes = 1048576\n"
    ));
    let req = ws_request("/", &[("Sec-WebSocket-Extensions", PD)]);
    let (_, mut ws) = expect_upgraded(&srv, &req).await;
    // 256 MiB of zeros in ~250 KiB.
    let bomb = deflate(&vec![0u8; 256 << 20]);
    assert!(bomb.len() < 1 << 20);
    ws.send(&frame_rsv(true, 0b100, OP_BINARY, &bomb, MASK))
        .await;
    expect_closed(&mut ws, 1009, "inflated_too_large").await;
    srv.wait_metric_eq(
        "wssedge_inflate_refusals_total",
        &[("reason", "inflated_too_large")],
        1.0,
    )
    .await;
    // Not DEFLATE at all.
    let (_, mut ws) = expect_upgraded(&srv, &req).await;
    ws.send(&frame_rsv(true, 0b100, OP_TEXT, &[0xff, 0xff, 0xff], MASK))
        .await;
    expect_closed(&mut ws, 1007, "bad_compressed_data").await;
    // Invalid UTF-8 once inflated.
    let (_, mut ws) = expect_upgraded(&srv, &req).await;
    send_deflated(&mut ws, OP_TEXT, b"ok \xc3\x28").await;
    expect_closed(&mut ws, 1007, "invalid_utf8").await;
    // RSV1 on a control frame or a continuation.
    let (_, mut ws) = expect_upgraded(&srv, &req).await;
    ws.send(&frame_rsv(true, 0b100, OP_PING, b"", MASK)).await;
    assert_eq!(ws.expect_close().await, Some(1002));
}

#[tokio::test]
async fn malformed_offers_are_refused_with_their_reason() {
    let srv = Server::with_config(ON);
    for (offer, reason) in [
        ("permessage-deflate; foo", "deflate_unknown_parameter"),
        (
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "deflate_repeated_parameter",
        ),
        (
            "permessage-deflate; client_no_context_takeover=1",
            "deflate_unexpected_value",
        ),
        (
            "permessage-deflate; server_max_window_bits",
            "deflate_missing_value",
        ),
        (
            "permessage-deflate; client_max_window_bits=16",
            "deflate_bad_window_bits",
        ),
        ("permessage-deflate; ;", "bad_extension_header"),
    ] {
        let req = ws_request("/", &[("Sec-WebSocket-Extensions", offer)]);
        expect_refused(&srv, &req, 400, reason).await;
    }
    // A window of 8 is declined, not refused: no compression, the session works.
    let req = ws_request(
        "/",
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; server_max_window_bits=8",
        )],
    );
    let (head, mut ws) = expect_upgraded(&srv, &req).await;
    assert_eq!(header(&head, "sec-websocket-extensions"), None, "{head}");
    expect_echo(&mut ws, "uncompressed").await;
}

#[tokio::test]
async fn a_path_without_compression_ignores_the_offer_and_refuses_rsv1() {
    // The default: compression only on pub/sub routes; echo here.
    let srv = Server::start();
    let req = ws_request(
        "/",
        &[("Sec-WebSocket-Extensions", "permessage-deflate; foo")],
    );
    let (head, mut ws) = expect_upgraded(&srv, &req).await;
    assert_eq!(header(&head, "sec-websocket-extensions"), None, "{head}");
    send_deflated(&mut ws, OP_TEXT, b"x").await;
    expect_closed(&mut ws, 1002, "reserved_bits").await;
    // On by default on pub/sub routes; a route may say otherwise.
    let srv = Server::with_config(
        "[[routes]]\nprefix = \"/md\"\npubsub = true\n\
         [[routes]]\nprefix = \"/plain\"\npubsub = true\ncompression = false\n",
    );
    let req = ws_request("/md", &[("Sec-WebSocket-Extensions", PD)]);
    let (head, _) = expect_upgraded(&srv, &req).await;
    assert!(
        header(&head, "sec-websocket-extensions").is_some(),
        "{head}"
    );
    let req = ws_request("/plain", &[("Sec-WebSocket-Extensions", PD)]);
    let (head, _) = expect_upgraded(&srv, &req).await;
    assert_eq!(header(&head, "sec-websocket-extensions"), None, "{head}");
}

/// What the edge must answer an offer under a `context_takeover` policy: `None` when it
/// declines (a server window of 8 bits, which zlib cannot deflate with).
fn expected_answer(offer: &serde_json::Value, policy: &str) -> Option<String> {
    let flag = |k: &str| offer[k].as_bool().unwrap_or(false);
    let smwb = offer["server_max_window_bits"].as_u64();
    if smwb == Some(8) {
        return None;
    }
    let mut v = String::from("permessage-deflate");
    if policy != "both" || flag("server_no_context_takeover") {
        v.push_str("; server_no_context_takeover");
    }
    if policy == "none" || flag("client_no_context_takeover") {
        v.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = smwb {
        v.push_str(&format!("; server_max_window_bits={bits}"));
    }
    Some(v)
}

#[tokio::test]
async fn python_websockets_agrees_on_every_offer_and_every_echo_under_every_policy() {
    let python = python_with_websockets();
    for policy in ["none", "client", "both"] {
        let srv = Server::with_config(&format!("{ON}context_takeover = \"{policy}\"\n"));
        let ca = srv.ca_pem.clone().expect("the dev CA");
        let out = tokio::process::Command::new(&python)
            .arg(py_script("deflate_echo.py"))
            .arg(format!("wss://127.0.0.1:{}/", srv.addr.port()))
            .arg(&ca)
            .output();
        let out = within(std::time::Duration::from_secs(120), "deflate_echo.py", out)
            .await
            .expect("run python");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "deflate_echo.py: {:?}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 2 * 2 * 5 * 4, "{stdout}");
        for line in &lines {
            let offer = &line["offer"];
            assert!(line["error"].is_null(), "{policy}: {line}");
            assert_eq!(line["echoed"], 10, "{policy}: {line}");
            let want = expected_answer(offer, policy);
            assert_eq!(line["agreed"].as_str(), want.as_deref(), "{policy}: {line}");
            // websockets applies what it read from the 101: compression is on exactly when
            // the edge agreed.
            let used = line["extensions"].as_array().map_or(0, Vec::len);
            assert_eq!(used, usize::from(want.is_some()), "{policy}: {line}");
        }
        let inflated = srv
            .metric("wssedge_compressed_messages_total", &[("direction", "in")])
            .await;
        assert!(inflated > 0.0, "{policy}: no message arrived compressed");
    }
}

/// Proxy mode compresses per hop: the client's hop as agreed, the upstream's never (no offer
/// goes upstream, and what reaches the member is the inflated message).
#[tokio::test]
async fn proxy_mode_compresses_the_client_hop_only() {
    use crate::backend::{Backend, Mode, Seen};
    let backend = Backend::start(Mode::Echo).await;
    let srv = crate::proxy::proxy_server(&backend, &[], ON);
    let req = ws_request("/p", &[("Sec-WebSocket-Extensions", PD)]);
    let (head, mut ws) = expect_upgraded(&srv, &req).await;
    assert!(
        header(&head, "sec-websocket-extensions").is_some(),
        "{head}"
    );
    let big = "{\"book\":\"ETH-USD\",\"bids\":[[\"3001.5\",\"2\"]]}".repeat(100);
    send_deflated(&mut ws, OP_TEXT, big.as_bytes()).await;
    let f = data_frame(&mut ws).await;
    assert_eq!(
        f.rsv, 0b100,
        "the member's echo reaches the client compressed"
    );
    assert_eq!(inflate(&f.payload), big.as_bytes());
    let ups = backend.upgrades();
    assert!(
        ups[0].all("sec-websocket-extensions").is_empty(),
        "no extension offered upstream: {:#?}",
        ups[0].headers
    );
    let sessions = backend.sessions();
    assert_eq!(sessions[0].data(), [&Seen::Text(big.clone())]);
}

/// A data frame's payload as the client reads it: inflated when RSV1 is set.
async fn data_text(ws: &mut RawWs) -> (bool, String) {
    let f = data_frame(ws).await;
    let bytes = if f.rsv == 0b100 {
        inflate(&f.payload)
    } else {
        f.payload.clone()
    };
    (f.rsv == 0b100, String::from_utf8(bytes).expect("text"))
}

/// Pub/sub compresses a publication once per window size, whatever its subscribers: three
/// subscribers with the same window cost one deflate per publication, a fourth with another
/// window one more, and a subscriber that did not offer the extension gets it plain.
#[tokio::test]
async fn a_publication_is_compressed_once_for_all_its_subscribers() {
    use crate::admission_jwt::{bearer, claims, hs, key_files, unique_jti, with};
    let files = key_files();
    let srv = Server::with_config(&crate::pubsub::config(&files, "", ""));
    let token = || {
        bearer(&hs(with(
            claims("sub", &unique_jti("deflate")),
            "scope",
            serde_json::json!("read"),
        )))
    };
    let mut subscribers = Vec::new();
    for offer in [
        PD,
        PD,
        PD,
        "permessage-deflate; server_max_window_bits=10",
        "",
    ] {
        let auth = token();
        let mut headers = vec![("Authorization", auth.as_str())];
        if !offer.is_empty() {
            headers.push(("Sec-WebSocket-Extensions", offer));
        }
        let (head, mut ws) = expect_upgraded(&srv, &ws_request("/md", &headers)).await;
        assert_eq!(
            header(&head, "sec-websocket-extensions").is_some(),
            !offer.is_empty(),
            "{head}"
        );
        let sub = r#"{"op":"subscribe","id":1,"topics":["trades.BTC-USD"]}"#;
        ws.send(&cframe(true, OP_TEXT, sub.as_bytes())).await;
        let (_, answer) = data_text(&mut ws).await;
        assert!(answer.contains("\"subscribed\""), "{answer}");
        subscribers.push(ws);
    }
    let runs_before = srv.metric("wssedge_compression_runs_total", &[]).await;
    let mut publisher = crate::pubsub::connect(&srv, "publish").await;
    let data = serde_json::json!({"bids": vec![["64123.5", "0.25"]; 60]});
    for id in 0..3 {
        crate::pubsub::publish(&mut publisher, id, "trades.BTC-USD", data.clone()).await;
    }
    for (i, ws) in subscribers.iter_mut().enumerate() {
        for seq in 1..=3 {
            let (compressed, text) = data_text(ws).await;
            assert_eq!(compressed, i < 4, "subscriber {i}: {text}");
            let v: serde_json::Value = serde_json::from_str(&text).expect("JSON");
            assert_eq!(v["seq"], seq, "{v}");
            assert_eq!(v["data"], data);
        }
    }
    // Three publications, two window sizes: six deflates for twelve compressed deliveries.
    let runs = srv.metric("wssedge_compression_runs_total", &[]).await - runs_before;
    assert_eq!(runs, 6.0);
}

/// A hostile client against the inflate path. Silent: a compressed message begun and never
/// finished is closed at the frame deadline and its inflater given back. Flood: one message in
/// thousands of one-byte compressed fragments is inflated whole, holding nothing but it.
/// Odd spelling: the offer written with other case, tabs, spaces and a quoted value.
#[tokio::test]
async fn a_hostile_client_against_the_inflate_path() {
    let srv = Server::with_config(&format!(
        "{ON}[limits]\nframe_timeout_ms = 500\nidle_timeout_ms = 60000\nping_interval_ms = 0\n"
    ));
    let req = ws_request("/", &[("Sec-WebSocket-Extensions", PD)]);

    // Silent after the first compressed fragment.
    let (_, mut ws) = expect_upgraded(&srv, &req).await;
    let z = deflate("a message that never ends ".repeat(40).as_bytes());
    ws.send(&frame_rsv(false, 0b100, OP_TEXT, &z[..z.len() / 2], MASK))
        .await;
    expect_closed(&mut ws, 1008, "frame_timeout").await;
    srv.wait_metric_eq("wssedge_buffered_bytes", &[], 0.0).await;

    // A flood of one-byte compressed fragments (a stored block, so every byte is a fragment).
    let (_, mut ws) = expect_upgraded(&srv, &req).await;
    let text = "x".repeat(4000);
    let mut stored = vec![0x00, 0xa0, 0x0f, 0x5f, 0xf0]; // BFINAL 0, stored, LEN 4000
    stored.extend_from_slice(text.as_bytes());
    let mut bytes = frame_rsv(false, 0b100, OP_TEXT, &stored[..1], MASK);
    for b in &stored[1..stored.len() - 1] {
        bytes.extend(cframe(false, OP_CONT, std::slice::from_ref(b)));
    }
    bytes.extend(cframe(true, OP_CONT, &stored[stored.len() - 1..]));
    ws.send(&bytes).await;
    let f = data_frame(&mut ws).await;
    let echoed = if f.rsv == 0b100 {
        inflate(&f.payload)
    } else {
        f.payload
    };
    assert_eq!(echoed, text.as_bytes());
    drop(ws);
    srv.wait_metric_eq("wssedge_buffered_bytes", &[], 0.0).await;

    // Odd spelling of a valid offer.
    let odd = "PerMessage-Deflate ;\tServer_Max_Window_Bits = \"10\" ,  x-other";
    let (head, mut ws) =
        expect_upgraded(&srv, &ws_request("/", &[("sec-websocket-extensions", odd)])).await;
    assert_eq!(
        header(&head, "sec-websocket-extensions"),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"),
        "{head}"
    );
    let big = "{\"px\":\"1.0\"}".repeat(50);
    send_deflated(&mut ws, OP_TEXT, big.as_bytes()).await;
    let f = data_frame(&mut ws).await;
    assert_eq!(inflate(&f.payload), big.as_bytes());
}

#[tokio::test]
async fn kept_compressors_are_charged_to_the_core_buffer_budget() {
    // "both": each connection keeps a compressor (~262 KiB) from its first compressed message.
    // Two fit in a 700 KiB budget on the one core; the third takes the core past it.
    let srv = Server::with_config(
        "[compression]\nenabled = true\ncontext_takeover = \"both\"\n\
         [limits]\nmax_buffered_bytes_per_core = 716800\n",
    );
    let req = ws_request("/", &[("Sec-WebSocket-Extensions", PD)]);
    let msg = "{\"topic\":\"trades.BTC-USD\",\"px\":\"64123.5\",\"qty\":\"0.25\"}".repeat(20);
    let mut kept = Vec::new();
    for _ in 0..2 {
        let (head, mut ws) = expect_upgraded(&srv, &req).await;
        assert_eq!(
            header(&head, "sec-websocket-extensions"),
            Some("permessage-deflate"),
            "{head}"
        );
        ws.send(&cframe(true, OP_TEXT, msg.as_bytes())).await;
        let f = data_frame(&mut ws).await;
        assert_eq!(
            (f.rsv, inflate(&f.payload)),
            (0b100, msg.clone().into_bytes())
        );
        kept.push(ws);
    }
    // Idle, they still hold their compressors.
    let held = srv.metric("wssedge_buffered_bytes", &[]).await;
    assert!(held >= 2.0 * 262.0 * 1024.0, "{held} bytes held");

    let (_, mut third) = expect_upgraded(&srv, &req).await;
    third.send(&cframe(true, OP_TEXT, msg.as_bytes())).await;
    expect_closed(&mut third, 1013, "buffer_budget").await;
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "buffer_budget")],
        1.0,
    )
    .await;
    // The two that fit go on, with their context.
    for ws in &mut kept {
        ws.send(&cframe(true, OP_TEXT, msg.as_bytes())).await;
        let f = data_frame(ws).await;
        assert_eq!(f.rsv, 0b100);
    }
    drop(kept);
    drop(third);
    srv.wait_metric_eq("wssedge_buffered_bytes", &[], 0.0).await;
}

#[tokio::test]
async fn a_message_inflating_to_megabytes_is_taken_in_slices_and_echoed_whole() {
    // 8 MiB from 8 KiB: the core inflates it 256 KiB a pass, with turns for its other
    // connections between; the frames behind it keep their place.
    let srv = Server::with_config(ON);
    let req = ws_request("/", &[("Sec-WebSocket-Extensions", PD)]);
    let (_, mut ws) = expect_upgraded(&srv, &req).await;
    let (_, mut other) = expect_upgraded(&srv, &req).await;
    let big = vec![b'7'; 8 << 20];
    let z = deflate(&big);
    assert!(z.len() < 16 << 10, "{} bytes", z.len());
    let mut bytes = frame_rsv(true, 0b100, OP_BINARY, &z, MASK);
    bytes.extend(cframe(true, OP_PING, b"behind"));
    ws.send(&bytes).await;
    other.send(&cframe(true, OP_TEXT, b"meanwhile")).await;
    assert_eq!(other.message().await, (OP_TEXT, b"meanwhile".to_vec()));
    let f = data_frame(&mut ws).await;
    // Past max_bytes (1 MiB): it goes back as it is.
    assert_eq!((f.opcode, f.rsv), (OP_BINARY, 0));
    assert!(f.payload == big, "the echo differs");
    match ws.next().await {
        Event::Frame(p) => assert_eq!((p.opcode, &p.payload[..]), (OP_PONG, &b"behind"[..])),
        e => panic!("expected the pong, got {e:?}"),
    }
    let compressed_in = srv
        .metric(
            "wssedge_compression_bytes_total",
            &[("direction", "in"), ("form", "compressed")],
        )
        .await;
    assert_eq!(compressed_in, z.len() as f64);
    drop((ws, other));
    srv.wait_metric_eq("wssedge_buffered_bytes", &[], 0.0).await;
}

#[tokio::test]
async fn messages_outside_min_and_max_bytes_go_out_plain() {
    let srv =
        Server::with_config("[compression]\nenabled = true\nmin_bytes = 64\nmax_bytes = 4096\n");
    let req = ws_request("/", &[("Sec-WebSocket-Extensions", PD)]);
    let (_, mut ws) = expect_upgraded(&srv, &req).await;
    for (len, compressed) in [
        (63, false),
        (64, true),
        (4096, true),
        (4097, false),
        (1 << 20, false),
    ] {
        let msg = "{\"px\":\"1.0\"}".repeat(len / 12 + 1)[..len].to_string();
        send_deflated(&mut ws, OP_TEXT, msg.as_bytes()).await;
        let f = data_frame(&mut ws).await;
        let echoed = if compressed {
            assert_eq!(f.rsv, 0b100, "{len} bytes go out compressed");
            inflate(&f.payload)
        } else {
            assert_eq!(f.rsv, 0, "{len} bytes go out plain");
            f.payload
        };
        assert_eq!(echoed, msg.as_bytes(), "{len} bytes");
    }
}
