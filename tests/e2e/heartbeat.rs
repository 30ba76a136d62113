//! Heartbeats: the server pings a quiet client, closes a silent one within
//! `ping_interval_ms + pong_timeout_ms`, keeps one that answers, and answers a client's ping at
//! once.

use std::time::{Duration, Instant};

use crate::harness::*;

const FAST: &str = "\
[limits]
ping_interval_ms = 300
pong_timeout_ms = 300
";

/// Reads frames until one with `opcode` arrives (panics on close or EOF first).
async fn frame_with(raw: &mut RawWs, opcode: u8) -> Frame {
    loop {
        match within(WAIT, "a frame", raw.next()).await {
            Event::Frame(f) if f.opcode == opcode => return f,
            Event::Frame(f) if f.opcode == OP_CLOSE => {
                panic!(
                    "closed ({:?}) while waiting for opcode {opcode}",
                    f.close_code()
                )
            }
            Event::Frame(_) => continue,
            Event::Closed => panic!("connection ended while waiting for opcode {opcode}"),
        }
    }
}

#[tokio::test]
async fn a_silent_client_is_pinged_then_closed_within_interval_plus_deadline() {
    let srv = Server::with_config(FAST);
    let mut raw = srv.raw().await;
    raw.send(&cframe(true, OP_TEXT, b"last words")).await;
    assert_eq!(raw.message().await, (OP_TEXT, b"last words".to_vec()));
    let silent_since = Instant::now();
    let ping = frame_with(&mut raw, OP_PING).await;
    let pinged_after = silent_since.elapsed();
    assert!(
        pinged_after >= Duration::from_millis(250),
        "pinged after only {pinged_after:?} (interval 300 ms)"
    );
    assert!(ping.payload.len() <= 125);
    // No answer: the close follows within the pong deadline.
    let close = frame_with(&mut raw, OP_CLOSE).await;
    let closed_after = silent_since.elapsed();
    assert_eq!(close.close_code(), Some(1001));
    assert_eq!(close.close_reason(), "pong_timeout");
    // interval + deadline = 600 ms; the per-core wheel ticks add a little, a loaded CI more.
    assert!(
        closed_after >= Duration::from_millis(550),
        "closed after only {closed_after:?}"
    );
    assert!(
        closed_after <= Duration::from_millis(600 + 1500),
        "a silent peer must be closed within interval + deadline: {closed_after:?}"
    );
    srv.wait_metric("wssedge_refusals_total", &[("reason", "pong_timeout")], 1.0)
        .await;
    assert!(srv.metric("wssedge_pings_sent_total", &[]).await >= 1.0);
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let srv = Server::with_config(FAST);
    let mut raw = srv.raw().await;
    let until = Instant::now() + Duration::from_millis(1500);
    let mut pongs = 0;
    while Instant::now() < until {
        let ping = frame_with(&mut raw, OP_PING).await;
        raw.send(&cframe(true, OP_PONG, &ping.payload)).await;
        pongs += 1;
    }
    assert!(
        pongs >= 2,
        "only {pongs} pings in 1.5 s with a 300 ms interval"
    );
    raw.send(&cframe(true, OP_TEXT, b"still here")).await;
    assert_eq!(raw.message().await, (OP_TEXT, b"still here".to_vec()));
    assert_eq!(
        srv.metric("wssedge_refusals_total", &[("reason", "pong_timeout")])
            .await,
        0.0
    );
}

#[tokio::test]
async fn a_client_ping_is_answered_at_once_with_its_payload() {
    let srv = Server::start();
    let mut raw = srv.raw().await;
    for i in 0..20u8 {
        let payload = [i; 17];
        let t0 = Instant::now();
        raw.send(&cframe(true, OP_PING, &payload)).await;
        let pong = frame_with(&mut raw, OP_PONG).await;
        assert_eq!(pong.payload, payload);
        assert!(t0.elapsed() < Duration::from_secs(2));
    }
}

#[tokio::test]
async fn pings_are_off_with_interval_zero() {
    let srv = Server::with_config("[limits]\nping_interval_ms = 0\nidle_timeout_ms = 1500\n");
    let mut raw = srv.raw().await;
    // Nothing but the idle close arrives: no ping on the way.
    match within(WAIT, "the idle close", raw.next()).await {
        Event::Frame(f) => {
            assert_eq!(
                f.opcode, OP_CLOSE,
                "no ping expected with ping_interval_ms = 0"
            );
            assert_eq!(f.close_code(), Some(1001));
        }
        Event::Closed => panic!("closed without a close frame"),
    }
}
