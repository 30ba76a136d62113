//! Message rate limits on proxied sessions (`[limits] connection_rate`, `identity_rate`):
//! a client over its connection budget is closed with 1008 "rate_limited" and its excess never
//! reaches the upstream; two sessions of one identity (the token's `sub`) share one budget; on
//! a lossy route the excess whole messages are dropped and counted, the session stays open, and
//! what gets through is intact and in order.

use std::time::{Duration, Instant};

use crate::admission_jwt::{bearer, claims, hs, jwt_config, key_files, unique_jti};
use crate::backend::{Backend, Mode, Seen};
use crate::harness::*;
use crate::proxy::{proxy_config, proxy_server};

const CONN_RATE: &str =
    "[limits]\nconnection_rate = { messages_per_s = 10, burst_messages = 10 }\n";

/// Reads text messages until a close frame: (the texts, the close frame). Bounded in count.
async fn texts_until_close(ws: &mut RawWs, max: usize) -> (Vec<String>, Frame) {
    let mut texts = Vec::new();
    for _ in 0..max {
        match ws.next().await {
            Event::Frame(f) if f.opcode == OP_CLOSE => return (texts, f),
            Event::Frame(f) if f.opcode == OP_TEXT => {
                assert!(f.fin, "echo arrived fragmented");
                texts.push(String::from_utf8(f.payload).expect("UTF-8 echo"));
            }
            Event::Frame(_) => {}
            Event::Closed => panic!("connection ended without a close frame after {texts:?}"),
        }
    }
    panic!("no close frame within {max} frames; texts {texts:?}");
}

/// Sends `text` and expects its echo; a close instead fails with its code, reason and `what`.
async fn echo_within_budget(ws: &mut RawWs, text: &str, what: &str) {
    ws.send(&cframe(true, OP_TEXT, text.as_bytes())).await;
    loop {
        match ws.next().await {
            Event::Frame(f) if f.opcode == OP_TEXT => {
                assert_eq!(String::from_utf8_lossy(&f.payload), text, "{what}");
                return;
            }
            Event::Frame(f) if f.opcode == OP_CLOSE => panic!(
                "{what}: closed with {:?} {:?} at message {text:?}, within its budget",
                f.close_code(),
                f.close_reason()
            ),
            Event::Frame(_) => {}
            Event::Closed => panic!("{what}: connection ended at message {text:?}"),
        }
    }
}

/// The texts the backend's session `i` received.
fn upstream_texts(backend: &Backend, i: usize) -> Vec<String> {
    backend.sessions()[i]
        .data()
        .into_iter()
        .map(|s| match s {
            Seen::Text(t) => t.clone(),
            other => panic!("unexpected upstream message {other:?}"),
        })
        .collect()
}

/// Waits until one session was closed for its `scope` rate (`connection`, `identity`): counted
/// as a rate limit close, a `rate_limited` refusal and a 1008 close.
async fn expect_rate_limit_close(srv: &Server, scope: &str) {
    srv.wait_metric(
        "wssedge_rate_limited_total",
        &[("scope", scope), ("action", "close")],
        1.0,
    )
    .await;
    expect_closed_1008(srv, "rate_limited", 1.0).await;
}

/// 30 messages at once against 10/s with a burst of 10: the session is closed with 1008
/// "rate_limited", only the burst (plus what refilled meanwhile) reaches the upstream, in
/// order; a client within its rate is not affected.
#[tokio::test]
async fn a_client_over_its_connection_rate_is_closed_with_1008() {
    let backend = Backend::start(Mode::Echo).await;
    let srv = proxy_server(&backend, &[], CONN_RATE);

    // Within the rate: 5 messages 150 ms apart.
    let (_, mut calm) = expect_upgraded(&srv, &ws_request("/p", &[])).await;
    for i in 0..5 {
        expect_echo(&mut calm, &format!("calm-{i}")).await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p", &[])).await;
    let mut wire = Vec::new();
    for i in 0..30 {
        wire.extend(cframe(true, OP_TEXT, format!("m{i:02}").as_bytes()));
    }
    ws.send_lossy(&wire).await;
    let (echoed, close) = texts_until_close(&mut ws, 64).await;
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1008), "rate_limited"),
        "after {} echoes",
        echoed.len()
    );
    let log = backend
        .wait_session(1, "the end of the limited session", |s| s.ended().is_some())
        .await;
    let upstream = upstream_texts(&backend, 1);
    let want: Vec<String> = (0..upstream.len()).map(|i| format!("m{i:02}")).collect();
    assert_eq!(
        upstream, want,
        "the upstream got a prefix of the messages, in order"
    );
    assert!(
        (10..=12).contains(&upstream.len()),
        "burst 10 at 10/s: {} messages reached the upstream ({:?})",
        upstream.len(),
        log.seen
    );
    assert!(
        echoed.len() <= upstream.len() && echoed[..] == want[..echoed.len()],
        "echoes {echoed:?} vs upstream {upstream:?}"
    );
    visible_line(&format!(
        "connection_rate: {} of 30 reached the upstream, {} echoed before 1008",
        upstream.len(),
        echoed.len()
    ));
    expect_rate_limit_close(&srv, "connection").await;
    // The calm session is still fine.
    expect_echo(&mut calm, "calm-after").await;
}

/// `identity_rate` 1/s with a burst of 10: alice's first session spends 8, her second session
/// gets at most the 2 left (plus a refill) before 1008 "rate_limited"; bob has his own budget.
#[tokio::test]
async fn two_sessions_of_one_identity_share_its_rate() {
    let backend = Backend::start(Mode::Echo).await;
    let files = key_files();
    let srv = Server::with_config(&jwt_config(
        &files,
        &[],
        &proxy_config(
            &[backend.url("/base")],
            &[],
            "[limits]\nidentity_rate = { messages_per_s = 1, burst_messages = 10 }\n",
        ),
    ));
    let alice1 = hs(claims("alice", &unique_jti("rate-a1")));
    let alice2 = hs(claims("alice", &unique_jti("rate-a2")));
    let bob = hs(claims("bob", &unique_jti("rate-b")));
    let (_, mut a1) = expect_upgraded(
        &srv,
        &ws_request("/p", &[("Authorization", &bearer(&alice1))]),
    )
    .await;
    let (_, mut a2) = expect_upgraded(
        &srv,
        &ws_request("/p", &[("Authorization", &bearer(&alice2))]),
    )
    .await;
    let (_, mut b) =
        expect_upgraded(&srv, &ws_request("/p", &[("Authorization", &bearer(&bob))])).await;

    let t0 = Instant::now();
    for i in 0..8 {
        echo_within_budget(&mut a1, &format!("a1-{i}"), "alice's first session").await;
    }
    let mut wire = Vec::new();
    for i in 0..8 {
        wire.extend(cframe(true, OP_TEXT, format!("a2-{i}").as_bytes()));
    }
    a2.send_lossy(&wire).await;
    let (echoed, close) = texts_until_close(&mut a2, 32).await;
    let spent = t0.elapsed();
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1008), "rate_limited"),
        "alice's second session, after {echoed:?}"
    );
    // 10 burst + 1/s refill since the budget's first use.
    let budget_left = 2 + spent.as_secs() as usize + 1;
    assert!(
        echoed.len() <= budget_left,
        "alice's second session got {} messages through with {budget_left} left in the shared budget",
        echoed.len()
    );
    // Bob is not affected by alice's budget.
    for i in 0..8 {
        echo_within_budget(&mut b, &format!("b-{i}"), "bob's session").await;
    }
    expect_rate_limit_close(&srv, "identity").await;
}

/// A message of the lossy test: its number, then filler derived from it (varied lengths).
fn lossy_msg(i: usize) -> String {
    let filler: String = (0..(i * 37) % 500)
        .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
        .collect();
    format!("msg-{i:03}-{filler}")
}

/// On `/lossy` with 10/s and a burst of 10, 40 messages at once (each in three fragments):
/// the excess whole messages are dropped and counted, the session stays open, and what
/// reaches the upstream (and comes back) is intact and in order.
#[tokio::test]
async fn a_lossy_route_drops_whole_messages_over_the_rate_and_stays_open() {
    let backend = Backend::start(Mode::Echo).await;
    let srv = proxy_server(&backend, &[], CONN_RATE);
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/lossy/orders", &[])).await;
    let sent: Vec<String> = (0..40).map(lossy_msg).collect();
    let mut wire = Vec::new();
    for m in &sent {
        let b = m.as_bytes();
        let (x, y) = (b.len() / 3, 2 * b.len() / 3);
        wire.extend(cframe(false, OP_TEXT, &b[..x]));
        wire.extend(cframe(false, OP_CONT, &b[x..y]));
        wire.extend(cframe(true, OP_CONT, &b[y..]));
    }
    ws.send(&wire).await;
    // Let the bucket refill, then a marker: everything before it has been decided.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ws.send(&cframe(true, OP_TEXT, b"marker")).await;
    let mut echoed = Vec::new();
    for _ in 0..64 {
        let (op, data) = ws.message().await;
        assert_eq!(op, OP_TEXT);
        let text = String::from_utf8(data).expect("UTF-8");
        if text == "marker" {
            break;
        }
        echoed.push(text);
    }
    // Each echoed message is one of those sent, whole, in the order sent.
    let mut last = None;
    for e in &echoed {
        let i = sent
            .iter()
            .position(|s| s == e)
            .unwrap_or_else(|| panic!("not a message that was sent (a partial one?): {e:?}"));
        assert!(last.is_none_or(|l| i > l), "{e:?} out of order");
        last = Some(i);
    }
    let passed = echoed.len();
    let dropped = sent.len() - passed;
    visible_line(&format!(
        "lossy rate limit: {passed} of 40 passed, {dropped} dropped"
    ));
    assert!(
        (10..=12).contains(&passed),
        "burst 10 at 10/s: {passed} messages passed"
    );
    let mut upstream = upstream_texts(&backend, 0);
    assert_eq!(upstream.pop().as_deref(), Some("marker"));
    assert_eq!(upstream, echoed, "what the upstream received");
    wait_metric_exactly(
        &srv,
        "wssedge_lossy_drops_total",
        &[("reason", "rate_limit")],
        dropped as f64,
        "one lossy drop per message dropped",
    )
    .await;
    wait_metric_exactly(
        &srv,
        "wssedge_rate_limited_total",
        &[("scope", "connection"), ("action", "drop")],
        dropped as f64,
        "one rate_limited drop per message dropped",
    )
    .await;
    assert_eq!(
        srv.metric("wssedge_rate_limited_total", &[("action", "close")])
            .await,
        0.0,
        "a lossy route closed a session for its rate"
    );
    // Still open.
    expect_echo(&mut ws, "still here").await;
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));
}
