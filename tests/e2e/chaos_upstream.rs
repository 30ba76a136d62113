//! Chaos on the upstream side of the proxy, tried as a broken or hostile member would: it hangs
//! in the middle of a message, answers slowly, resets the connection, or sends garbage right
//! behind its 101. The client must be told precisely (1014 and a reason), promptly, and lose
//! nothing the upstream completed; the edge must hold nothing afterwards.

use std::time::{Duration, Instant};

use crate::backend::{flood_index, Backend, Mode};
use crate::harness::*;
use crate::proxy::proxy_server;

/// Sends "first" (what the backend's `…AfterFirst` modes wait for) on a new session through
/// `/p`; returns the session, when it was sent and the close frame the client then gets.
async fn close_after_first(srv: &Server) -> (RawWs, Instant, Frame) {
    let (_, mut ws) = expect_upgraded(srv, &ws_request("/p", &[])).await;
    let sent = Instant::now();
    ws.send(&cframe(true, OP_TEXT, b"first")).await;
    let f = ws.rd.expect_close_frame().await;
    (ws, sent, f)
}

/// Nothing left behind: no connection, no buffered byte.
async fn holds_nothing(srv: &Server) {
    srv.wait_metric_eq("wssedge_connections", &[], 0.0).await;
    srv.wait_metric_eq("wssedge_buffered_bytes", &[], 0.0).await;
}

/// An upstream that sends 16 bytes of a 256-byte frame and then nothing: the client is closed
/// with `1014 upstream_frame_timeout` once `frame_timeout_ms` has passed — as a client that
/// hangs mid-frame is closed — instead of waiting forever for the rest. Before, nothing ended
/// such a session but the client.
#[tokio::test]
async fn an_upstream_hanging_mid_message_closes_its_client_with_1014() {
    let backend = Backend::start(Mode::HangMidMessageAfterFirst).await;
    let srv = proxy_server(&backend, &[], "[limits]\nframe_timeout_ms = 600\n");
    let (ws, sent, f) = close_after_first(&srv).await;
    let took = sent.elapsed();
    assert_eq!(
        (f.close_code(), f.close_reason().as_str()),
        (Some(1014), "upstream_frame_timeout")
    );
    assert!(
        took >= Duration::from_millis(600),
        "closed after {took:?}, before the frame timeout"
    );
    visible_line(&format!(
        "upstream hung mid-message: client closed 1014 upstream_frame_timeout after {took:?}"
    ));
    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1014"), ("side", "server")],
        1.0,
    )
    .await;
    drop(ws);
    holds_nothing(&srv).await;
}

/// An upstream that streams large messages back to back (the relay's reads ending inside a
/// frame) is making progress: its frame deadline (100 ms) holds each frame to its own time, so
/// the client gets every message and no 1014.
#[tokio::test]
async fn an_upstream_streaming_large_messages_is_not_cut_by_the_frame_deadline() {
    const COUNT: u64 = 4_000;
    const SIZE: usize = 100_000;
    let backend = Backend::start(Mode::Flood {
        count: COUNT,
        size: SIZE,
    })
    .await;
    let srv = proxy_server(&backend, &[], "[limits]\nframe_timeout_ms = 100\n");
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p", &[])).await;
    let t0 = Instant::now();
    for i in 0..COUNT {
        match ws.next().await {
            Event::Frame(f) if f.opcode == OP_BINARY => {
                assert_eq!(flood_index(&f.payload, SIZE), Some(i), "message {i}")
            }
            Event::Frame(f) if f.opcode == OP_CLOSE => panic!(
                "closed {:?} {} after {i} messages, {:?} into the stream",
                f.close_code(),
                f.close_reason(),
                t0.elapsed()
            ),
            other => panic!("message {i}: {other:?}"),
        }
    }
    visible_line(&format!(
        "upstream streamed {} MB in {:?} with a 100 ms frame deadline: not cut",
        COUNT as usize * SIZE / 1_000_000,
        t0.elapsed()
    ));
}

/// An upstream that answers slowly is not cut: the frame deadline runs only while a frame is
/// partly received. Here every answer comes 300 ms late with a frame timeout of 200 ms:
/// nothing is partial in the meantime, so every message comes back, in order, and the session
/// closes cleanly.
#[tokio::test]
async fn a_slow_upstream_delays_answers_and_loses_none() {
    let backend = Backend::start(Mode::SlowEcho { delay_ms: 300 }).await;
    let srv = proxy_server(&backend, &[], "[limits]\nframe_timeout_ms = 200\n");
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p", &[])).await;
    let t0 = Instant::now();
    let mut wire = Vec::new();
    for i in 0..5 {
        wire.extend(cframe(true, OP_TEXT, format!("slow {i}").as_bytes()));
    }
    ws.send(&wire).await;
    for i in 0..5 {
        assert_eq!(
            ws.message().await,
            (OP_TEXT, format!("slow {i}").into_bytes()),
            "answer {i}"
        );
    }
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "5 answers 300 ms apart came in {took:?}"
    );
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "done")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));
    let log = backend
        .wait_session(0, "the client's close", |s| s.close().is_some())
        .await;
    assert_eq!(log.data().len(), 5, "what the upstream received");
    holds_nothing(&srv).await;
}

/// An upstream that resets its connection mid-session: the client is closed with 1014 at once
/// (the read failed, or the connection was found closed), and the next session through the
/// same member works (one failure does not open the breaker).
#[tokio::test]
async fn an_upstream_reset_closes_its_client_with_1014() {
    let backend = Backend::start(Mode::ResetAfterFirst).await;
    let srv = proxy_server(&backend, &[], "");
    let (_ws, _, f) = close_after_first(&srv).await;
    let reason = f.close_reason();
    assert_eq!(f.close_code(), Some(1014), "{reason}");
    assert!(
        ["upstream_read_failed", "upstream_closed"].contains(&reason.as_str()),
        "reason {reason:?}"
    );
    visible_line(&format!("upstream reset: client closed 1014 {reason}"));
    backend.set_mode(Mode::Echo);
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p", &[])).await;
    ws.send(&cframe(true, OP_TEXT, b"after the reset")).await;
    assert_eq!(ws.message().await, (OP_TEXT, b"after the reset".to_vec()));
    drop((ws, _ws));
    holds_nothing(&srv).await;
}

/// An upstream whose 101 is followed, in the same packet, by bytes that are no WebSocket
/// frame: the client's upgrade completes (the 101 was valid) and the garbage closes it with
/// `1014 upstream_protocol_error` — nothing of it reaches the client as data.
#[tokio::test]
async fn garbage_behind_the_upstreams_101_closes_its_client_with_1014() {
    let backend = Backend::start(Mode::GarbageAfter101).await;
    let srv = proxy_server(&backend, &[], "");
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p", &[])).await;
    loop {
        match ws.next().await {
            Event::Frame(f) if f.opcode == OP_CLOSE => {
                assert_eq!(
                    (f.close_code(), f.close_reason().as_str()),
                    (Some(1014), "upstream_protocol_error")
                );
                break;
            }
            Event::Frame(f) if f.opcode >= 0x8 => {}
            other => panic!("before the close: {other:?}"),
        }
    }
    assert_eq!(backend.upgrades().len(), 1, "the member was asked once");
    drop(ws);
    holds_nothing(&srv).await;
}
