//! `[server] busy_poll_us`: the core keeps polling after a connection's work, and only then —
//! a window after the last message, never longer — sleeps. While it spins, every deadline
//! still fires (monoio fires timers only when it parks: a spinner that never let it park would
//! stop heartbeats and idle timeouts for as long as one client keeps talking).

use std::time::{Duration, Instant};

use crate::attack_flow::cpu_seconds;
use crate::harness::*;

/// The spinner's turns, once they have stopped moving: two reads 200 ms apart agree.
async fn settled_turns(srv: &Server, within: Duration) -> Option<f64> {
    let until = Instant::now() + within;
    let mut last = srv.metric("wssedge_busy_poll_turns_total", &[]).await;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = srv.metric("wssedge_busy_poll_turns_total", &[]).await;
        if now == last {
            return Some(now);
        }
        last = now;
    }
    None
}

#[tokio::test]
async fn the_core_spins_after_work_and_sleeps_once_the_window_has_passed() {
    let srv = Server::with_config("[server]\nbusy_poll_us = 2000\n");
    let mut raw = srv.raw().await;
    for i in 0..20 {
        expect_echo(&mut raw, &format!("tick {i}")).await;
    }
    srv.wait_metric("wssedge_busy_poll_windows_total", &[], 1.0)
        .await;
    let turns = srv.metric("wssedge_busy_poll_turns_total", &[]).await;
    assert!(
        turns > 0.0,
        "a window was begun but the spinner never turned"
    );
    // Silence: the window (2 ms) ends and the spinner sleeps; the core burns nothing more.
    let settled = settled_turns(&srv, Duration::from_secs(5)).await;
    assert!(
        settled.is_some(),
        "the spinner never stopped turning on an idle core"
    );
    let pid = srv.proc.pid();
    let cpu0 = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_cpu = cpu_seconds(pid) - cpu0;
    visible_line(&format!(
        "busy_poll_us = 2000: {turns} turns after 20 echoes, then idle: {idle_cpu:.2} s CPU in 0.5 s"
    ));
    assert!(
        idle_cpu < 0.2,
        "an idle core spun: {idle_cpu:.2} s of CPU in 0.5 s"
    );
    // Still serving, and the next message opens a new window.
    let windows = srv.metric("wssedge_busy_poll_windows_total", &[]).await;
    expect_echo(&mut raw, "after the sleep").await;
    srv.wait_metric("wssedge_busy_poll_windows_total", &[], windows + 1.0)
        .await;
}

#[tokio::test]
async fn off_by_default_no_spinner_turns() {
    let srv = Server::start();
    let mut raw = srv.raw().await;
    expect_echo(&mut raw, "hello").await;
    let body = srv.metrics().await;
    assert_eq!(
        metric_sum(&body, "wssedge_busy_poll_windows_total", &[]),
        0.0
    );
    assert_eq!(metric_sum(&body, "wssedge_busy_poll_turns_total", &[]), 0.0);
}

/// One client keeps the core spinning (a message every millisecond, inside every window of
/// 10 ms); another goes silent. The silent one's heartbeat and pong deadline must still fire:
/// it is pinged and closed `1001 pong_timeout` on time.
#[tokio::test]
async fn deadlines_fire_while_a_talking_client_keeps_the_core_spinning() {
    let srv = Server::with_config(
        "[server]\nbusy_poll_us = 10000\n[limits]\nping_interval_ms = 300\npong_timeout_ms = 300\n",
    );
    let mut talker = srv.raw().await;
    let mut silent = srv.raw().await;
    expect_echo(&mut silent, "last words").await;
    let silent_since = Instant::now();
    let watch = tokio::spawn(async move {
        loop {
            match within(Duration::from_secs(5), "a frame", silent.next()).await {
                Event::Frame(f) if f.opcode == OP_CLOSE => {
                    return (f.close_code(), f.close_reason(), silent_since.elapsed());
                }
                Event::Frame(_) => continue,
                Event::Closed => panic!("closed without a close frame"),
            }
        }
    });
    let turns0 = srv.metric("wssedge_busy_poll_turns_total", &[]).await;
    // Talk until the silent one is closed, at most 4 s (a client this busy is never pinged).
    let talk_until = Instant::now() + Duration::from_secs(4);
    let mut sent = 0u32;
    while !watch.is_finished() && Instant::now() < talk_until {
        expect_echo(&mut talker, &format!("m{sent}")).await;
        sent += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (code, reason, after) = within(Duration::from_secs(5), "the silent client's close", watch)
        .await
        .expect("the watcher");
    let turns = srv.metric("wssedge_busy_poll_turns_total", &[]).await - turns0;
    visible_line(&format!(
        "busy_poll_us = 10000 under {sent} echoes: silent client closed {code:?} {reason} after {after:?}; {turns} spinner turns"
    ));
    assert_eq!((code, reason.as_str()), (Some(1001), "pong_timeout"));
    // interval + deadline = 600 ms; ticks and a loaded CI host add some.
    assert!(
        after <= Duration::from_millis(600 + 2000),
        "deadlines waited for the spinning to stop: closed after {after:?}"
    );
    assert!(turns > 0.0, "the core never spun: the test proves nothing");
}
