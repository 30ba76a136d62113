//! Proxy mode over the wire: a route's sessions go to an in-process backend ([`Backend`]).
//!
//! - the edge's upgrade toward the member: path and query joined to the member's path, the
//!   forwarded headers (Host, Origin, User-Agent, X-Forwarded-For/-Proto) and the identity
//!   headers (JWT claims, mTLS subject / SANs / SPIFFE ID / fingerprint), a client's copies of
//!   any of them stripped or replaced;
//! - refusals: 404 `no_route`, 503 `upstream_connect_failed` (refused), 503 `upstream_timeout`
//!   (no answer), 502
//!   `upstream_refused`, 503 `upstream_unavailable` while the member's breaker is open, and the
//!   breaker's half-open probe closing it again once the member is back;
//! - relaying: text, binary and fragmented messages, the edge answering the client's pings,
//!   close codes both ways, 1014 when the upstream vanishes or breaks the protocol;
//! - backpressure: a client that stops reading while its upstream floods is reset after
//!   write_timeout + close_timeout with the edge's memory bounded (RSS and socket memory
//!   printed); a lossy route drops whole upstream messages instead of pausing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_rustls::rustls::{self, ClientConfig};

use crate::admission_jwt::{bearer, claims, hs, jwt_config, key_files, unique_jti};
use crate::admission_mtls::{Ca, Leaf};
use crate::backend::{flood_index, Backend, Mode, Seen, SessionLog};
use crate::harness::*;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// The identity headers every proxy config of these tests names.
pub(crate) const HEADERS: &str = "\
[upstream.headers]
subject = \"x-client-subject\"
san_dns = \"x-client-san-dns\"
spiffe = \"x-client-spiffe\"
fingerprint = \"x-client-cert-sha256\"
claims = { sub = \"x-token-sub\" }
";

/// `[upstream]` with the contract's defaults (`overrides` replace or add keys, TOML values as
/// written), the identity headers, one group `g` of `members`, and the routes `/p` (normal)
/// and `/lossy` (lossy) to it. `tail` follows (`[limits]`, …).
pub(crate) fn proxy_config(members: &[String], overrides: &[(&str, &str)], tail: &str) -> String {
    let defaults: Vec<(String, String)> = [
        ("connect_timeout_ms", "1000"),
        ("health_interval_ms", "1000"),
        ("health_timeout_ms", "500"),
        ("breaker_failures", "5"),
        ("breaker_open_ms", "2000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let mut out = toml_table("upstream", defaults, overrides);
    out.push_str(HEADERS);
    let members: Vec<String> = members.iter().map(|m| toml_str(m)).collect();
    out.push_str(&format!(
        "[[upstream.groups]]\nname = \"g\"\nmembers = [{}]\n\
         [[routes]]\nprefix = \"/p\"\ngroup = \"g\"\nlossy = false\n\
         [[routes]]\nprefix = \"/lossy\"\ngroup = \"g\"\nlossy = true\n",
        members.join(", ")
    ));
    out.push_str(tail);
    out
}

/// A proxying server in front of `backend` (member `ws://127.0.0.1:PORT/base`).
pub(crate) fn proxy_server(backend: &Backend, overrides: &[(&str, &str)], tail: &str) -> Server {
    Server::with_config(&proxy_config(&[backend.url("/base")], overrides, tail))
}

/// Text message `text` on a raw session, expecting it back (through the backend's echo).
async fn roundtrip(ws: &mut RawWs, text: &str) {
    expect_echo(ws, text).await;
}

/// The one value of header `name` the backend saw in upgrade `u`, asserting it came once.
fn one<'a>(u: &'a crate::backend::Upgrade, name: &str) -> &'a str {
    let v = u.all(name);
    assert_eq!(
        v.len(),
        1,
        "header {name}: expected exactly one, the upstream saw {v:?}; all headers: {:#?}",
        u.headers
    );
    v[0]
}

/// Waits until group `g` has counted `n` upstream connects with `result` (`ok`, `failed`) and
/// checks the count did not go past `n`; `what` says why `n`.
async fn expect_connects(srv: &Server, result: &str, n: f64, what: &str) {
    wait_metric_exactly(
        srv,
        "wssedge_upstream_connects_total",
        &[("group", "g"), ("result", result)],
        n,
        what,
    )
    .await;
}

fn absent(u: &crate::backend::Upgrade, name: &str) {
    assert!(
        u.all(name).is_empty(),
        "header {name} must not reach the upstream, saw {:?}; all headers: {:#?}",
        u.all(name),
        u.headers
    );
}

// ---------------------------------------------------------------------------------------------
// 1. End to end, with the identity headers
// ---------------------------------------------------------------------------------------------

/// A JWT client through `/p`: echo end to end, path + query joined to the member's path, the
/// forwarded headers written by the edge, the token's `sub` as `x-token-sub`, and the client's
/// spoofed copies (identity headers, X-Forwarded-For/-Proto) gone or replaced.
#[tokio::test]
async fn proxied_echo_forwards_identity_headers_and_strips_spoofed_ones() {
    let backend = Backend::start(Mode::Echo).await;
    let files = key_files();
    let srv = Server::with_config(&jwt_config(
        &files,
        &[],
        &proxy_config(&[backend.url("/base")], &[], ""),
    ));
    let tok = hs(claims("alice", &unique_jti("proxy-ident")));
    let auth = bearer(&tok);
    let req = ws_request(
        "/p/x/y?q=1&r=two",
        &[
            ("Authorization", &auth),
            ("Origin", "https://app.example"),
            ("User-Agent", "e2e-client/1.0"),
            ("X-Client-Subject", "CN=spoofed-admin"),
            ("X-Client-Spiffe", "spiffe://evil/admin"),
            ("X-Token-Sub", "mallory"),
            ("x-token-SUB", "mallory2"),
            ("X-Forwarded-For", "6.6.6.6"),
            ("X-Forwarded-Proto", "http"),
            ("Cookie", "session=secret"),
        ],
    );
    let (_, mut ws) = expect_upgraded(&srv, &req).await;
    roundtrip(&mut ws, "hello through the proxy").await;
    // Binary, and a fragmented message.
    let bin = pattern(3000);
    ws.send(&cframe(true, OP_BINARY, &bin)).await;
    assert_eq!(ws.message().await, (OP_BINARY, bin.clone()));

    let ups = backend.upgrades();
    assert_eq!(ups.len(), 1, "one upgrade toward the member: {ups:#?}");
    let u = &ups[0];
    assert_eq!(u.target, "/base/x/y?q=1&r=two", "path + query joined");
    assert_eq!(one(u, "host"), format!("127.0.0.1:{}", backend.port()));
    assert_eq!(one(u, "origin"), "https://app.example");
    assert_eq!(one(u, "user-agent"), "e2e-client/1.0");
    assert_eq!(one(u, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(u, "x-forwarded-proto"), "https");
    assert_eq!(one(u, "x-token-sub"), "alice");
    // No certificate on this session: the edge writes none of these, and no client copy passes.
    for h in [
        "x-client-subject",
        "x-client-spiffe",
        "x-client-san-dns",
        "x-client-cert-sha256",
    ] {
        absent(u, h);
    }
    // The edge verified the token: it does not travel on, nor do cookies.
    absent(u, "authorization");
    absent(u, "cookie");
    // The client's WebSocket key is the client's, not the upstream hop's.
    assert!(
        !u.all("sec-websocket-key").contains(&WS_KEY),
        "the client's Sec-WebSocket-Key was forwarded: {:#?}",
        u.headers
    );
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));

    // The bare prefix and a query only.
    for (target, want) in [("/p?z=1", "/base?z=1"), ("/p", "/base"), ("/p/", "/base/")] {
        let tok = hs(claims("alice", &unique_jti("proxy-path")));
        let (_, mut ws) = expect_upgraded(
            &srv,
            &ws_request(target, &[("Authorization", &bearer(&tok))]),
        )
        .await;
        roundtrip(&mut ws, target).await;
        let ups = backend.upgrades();
        assert_eq!(ups.last().unwrap().target, want, "client target {target}");
    }
    expect_connects(&srv, "ok", 4.0, "one upstream connect per proxied session").await;
}

fn mtls_client_config(srv: &Server, leaf: &Leaf) -> Arc<ClientConfig> {
    let ca = srv.ca_pem.as_ref().expect("dev certificate");
    Arc::new(
        ClientConfig::builder_with_provider(
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots_trusting(ca))
        .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
        .expect("client certificate"),
    )
}

/// An mTLS client through `/p`: its CN, DNS SANs, SPIFFE ID and certificate fingerprint reach
/// the upstream as the configured headers, each once, whatever the client sent under those
/// names.
#[tokio::test]
async fn proxied_mtls_identity_reaches_the_upstream_as_headers() {
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("wssedge e2e proxy client CA");
    let ca_path = dir.path().join("client-ca.pem");
    ca.write_pem(&ca_path);
    let spiffe = "spiffe://bank.test/trading/desk-7";
    let leaf = ca.client(
        "trader-7",
        &["a.clients.test", "b.clients.test"],
        &[spiffe],
        0x70,
    );
    let tls = format!(
        "[tls]\nclient_auth = \"required\"\nclient_ca = {}\n",
        toml_path(&ca_path)
    );
    let srv = Server::with_config(&format!(
        "{tls}{}",
        proxy_config(&[backend.url("/base")], &[], "")
    ));
    let stream = tls_connect(srv.addr, mtls_client_config(&srv, &leaf)).await;
    let req = ws_request(
        "/p/book?depth=5",
        &[
            ("X-Client-Subject", "CN=spoofed-admin"),
            ("X-Client-San-Dns", "evil.example"),
            ("X-Client-Spiffe", "spiffe://evil/admin"),
            ("X-Client-Cert-Sha256", "00"),
            ("X-Token-Sub", "mallory"),
            ("X-Forwarded-For", "6.6.6.6, 7.7.7.7"),
        ],
    );
    let (_, mut ws) = attempt_over(stream, &req)
        .await
        .upgraded("mTLS proxy upgrade");
    roundtrip(&mut ws, "mtls through the proxy").await;
    let ups = backend.upgrades();
    assert_eq!(ups.len(), 1, "{ups:#?}");
    let u = &ups[0];
    assert_eq!(u.target, "/base/book?depth=5");
    assert_eq!(one(u, "x-client-subject"), "trader-7");
    assert_eq!(one(u, "x-client-san-dns"), "a.clients.test,b.clients.test");
    assert_eq!(one(u, "x-client-spiffe"), spiffe);
    assert_eq!(one(u, "x-client-cert-sha256"), leaf.fingerprint_hex());
    assert_eq!(one(u, "x-forwarded-for"), "127.0.0.1");
    assert_eq!(one(u, "x-forwarded-proto"), "https");
    // No token on this session: no claim header, and the client's copy is gone.
    absent(u, "x-token-sub");
}

// ---------------------------------------------------------------------------------------------
// 2. Refusals, the breaker
// ---------------------------------------------------------------------------------------------

/// Sends `req` on a fresh TLS connection; the outcome and how long the answer took once the
/// request was written (the TLS handshake not counted).
async fn timed_attempt(srv: &Server, req: &str) -> (Outcome, Duration) {
    let tls = srv.tls().await;
    let t0 = Instant::now();
    let o = attempt_over(tls, req).await;
    (o, t0.elapsed())
}

async fn breaker_state(srv: &Server) -> f64 {
    srv.metric("wssedge_upstream_breaker_state", &[("group", "g")])
        .await
}

/// The member goes down: each connect fails (503 `upstream_connect_failed`) until
/// `breaker_failures` in a row open its breaker; then clients get 503 `upstream_unavailable`
/// with Retry-After at once, without a connect attempt. The member comes back: after
/// `breaker_open_ms` a half-open probe (the next client) gets through, the breaker closes and
/// the echo works again.
#[tokio::test]
async fn member_down_opens_the_breaker_and_a_probe_closes_it_when_back() {
    let mut backend = Backend::start(Mode::Echo).await;
    // Health checks far apart: this test is about the breaker alone.
    let srv = proxy_server(
        &backend,
        &[
            ("breaker_failures", "3"),
            ("breaker_open_ms", "1500"),
            ("health_interval_ms", "60000"),
        ],
        "",
    );
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p", &[])).await;
    roundtrip(&mut ws, "member up").await;
    drop(ws);
    assert_eq!(
        breaker_state(&srv).await,
        0.0,
        "breaker closed while the member works"
    );

    backend.stop().await;
    let mut opened_at = Instant::now();
    for i in 0..3 {
        let (o, took) = timed_attempt(&srv, &ws_request("/p", &[])).await;
        let r = o.refused("member down");
        check_refused(&r, 503, "upstream_connect_failed", "/p");
        visible_line(&format!(
            "connect failure {i}: 503 upstream_connect_failed in {took:?}"
        ));
        opened_at = Instant::now();
    }
    expect_connects(&srv, "failed", 3.0, "one failed connect per refusal").await;

    // Open: refused at once, and no connect attempt is made.
    for _ in 0..3 {
        let (o, took) = timed_attempt(&srv, &ws_request("/p", &[])).await;
        let r = o.refused("breaker open");
        check_refused(&r, 503, "upstream_unavailable", "/p");
        assert!(
            header(&r.head, "retry-after").is_some(),
            "503 upstream_unavailable without Retry-After:\n{}",
            r.head
        );
        assert!(
            took < Duration::from_millis(200),
            "upstream_unavailable took {took:?} (must be at once)"
        );
        visible_line(&format!(
            "breaker open: 503 upstream_unavailable in {took:?}"
        ));
    }
    assert_eq!(breaker_state(&srv).await, 1.0, "breaker_state while open");
    assert_eq!(
        srv.metric(
            "wssedge_upstream_connects_total",
            &[("group", "g"), ("result", "failed")]
        )
        .await,
        3.0,
        "an open breaker must not let connects through"
    );

    // The member comes back; the breaker still refuses until breaker_open_ms has passed.
    backend.restart().await;
    if opened_at.elapsed() < Duration::from_millis(1000) {
        let (o, _) = timed_attempt(&srv, &ws_request("/p", &[])).await;
        check_refused(&o.refused("still open"), 503, "upstream_unavailable", "/p");
    }
    let t0 = Instant::now();
    let (first_ok, mut ws) = loop {
        match attempt(&srv, &ws_request("/p", &[])).await {
            Outcome::Upgraded { ws, .. } => break (opened_at.elapsed(), ws),
            Outcome::Refused(r) => {
                assert_eq!(
                    (r.status, r.reason.as_str()),
                    (503, "upstream_unavailable"),
                    "while waiting for the probe:\n{}{}",
                    r.head,
                    r.body
                );
                assert!(t0.elapsed() < WAIT, "the breaker never let a probe through");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    visible_line(&format!(
        "breaker: first 101 {first_ok:?} after it opened (breaker_open_ms = 1500)"
    ));
    assert!(
        first_ok >= Duration::from_millis(1300),
        "a probe went through {first_ok:?} after the breaker opened, before breaker_open_ms"
    );
    roundtrip(&mut ws, "member back").await;
    let t0 = Instant::now();
    while breaker_state(&srv).await != 0.0 {
        assert!(t0.elapsed() < WAIT, "breaker_state never went back to 0");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Closed again: more clients get through.
    let (_, mut ws2) = expect_upgraded(&srv, &ws_request("/p/again", &[])).await;
    roundtrip(&mut ws2, "closed again").await;
    expect_refusals_counted(&srv, "upstream_connect_failed", 3).await;
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "upstream_unavailable")],
        3.0,
    )
    .await;
}

/// A member that accepts TCP and never answers the upgrade: 503 `upstream_timeout` (as the
/// README promises; it was reported as `upstream_connect_failed`) after `connect_timeout_ms`,
/// not before and not much later.
#[tokio::test]
async fn a_member_that_never_answers_times_out_with_503() {
    let backend = Backend::start(Mode::Silent).await;
    let srv = proxy_server(&backend, &[("connect_timeout_ms", "800")], "");
    let (o, took) = timed_attempt(&srv, &ws_request("/p", &[])).await;
    check_refused(&o.refused("silent member"), 503, "upstream_timeout", "/p");
    visible_line(&format!(
        "silent member: 503 upstream_timeout after {took:?}"
    ));
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2500),
        "connect_timeout_ms = 800, refused after {took:?}"
    );
}

/// A member answering the upgrade with HTTP 403: the client gets 502 `upstream_refused`. The
/// member is up (it answered), so this never opens its breaker.
#[tokio::test]
async fn a_member_refusing_the_upgrade_gives_502() {
    let backend = Backend::start(Mode::Refuse(403)).await;
    let srv = proxy_server(&backend, &[("breaker_failures", "2")], "");
    for _ in 0..4 {
        expect_refused(&srv, &ws_request("/p/x", &[]), 502, "upstream_refused").await;
    }
    assert_eq!(
        backend.upgrades().len(),
        4,
        "every attempt reached the member"
    );
    assert_eq!(
        breaker_state(&srv).await,
        0.0,
        "a 403 answer opened the breaker"
    );
    expect_refusals_counted(&srv, "upstream_refused", 4).await;

    // Any answer other than 101 is a refusal by the upstream: a 5xx too.
    backend.set_mode(Mode::Refuse(503));
    expect_refused(&srv, &ws_request("/p/x", &[]), 502, "upstream_refused").await;
}

// ---------------------------------------------------------------------------------------------
// 3. Relaying: messages, pings, close codes
// ---------------------------------------------------------------------------------------------

/// Text, binary and fragmented messages both ways; the client's ping is answered by the edge
/// and never reaches the upstream; the client's close 1000 reaches the upstream as 1000.
#[tokio::test]
async fn messages_relay_both_ways_and_the_client_close_reaches_the_upstream() {
    let backend = Backend::start(Mode::Echo).await;
    let srv = proxy_server(&backend, &[], "");
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p", &[])).await;
    roundtrip(&mut ws, "text one").await;
    let bin = pattern(70_000);
    ws.send(&cframe(true, OP_BINARY, &bin)).await;
    assert_eq!(ws.message().await, (OP_BINARY, bin.clone()));
    // One message in three frames, a ping between two of them.
    let whole = pattern(9000);
    let mut wire = cframe(false, OP_BINARY, &whole[..3000]);
    wire.extend(cframe(false, OP_CONT, &whole[3000..6000]));
    wire.extend(cframe(true, OP_PING, b"client-ping"));
    wire.extend(cframe(true, OP_CONT, &whole[6000..]));
    ws.send(&wire).await;
    // The pong comes from the edge, the message back whole.
    let mut pong = None;
    let mut got = None;
    for _ in 0..8 {
        match ws.next().await {
            Event::Frame(f) if f.opcode == OP_PONG => pong = Some(f.payload),
            Event::Frame(f) if f.opcode == OP_PING => {}
            Event::Frame(f) if f.opcode == OP_BINARY => {
                let mut data = f.payload.clone();
                let mut fin = f.fin;
                while !fin {
                    match ws.next().await {
                        Event::Frame(c) if c.opcode == OP_CONT => {
                            data.extend_from_slice(&c.payload);
                            fin = c.fin;
                        }
                        Event::Frame(c) if c.opcode >= 0x8 => {
                            if c.opcode == OP_PONG {
                                pong = Some(c.payload)
                            }
                        }
                        other => panic!("inside a fragmented message: {other:?}"),
                    }
                }
                got = Some(data);
            }
            other => panic!("unexpected: {other:?}"),
        }
        if pong.is_some() && got.is_some() {
            break;
        }
    }
    assert_eq!(
        pong.as_deref(),
        Some(&b"client-ping"[..]),
        "pong for the client's ping"
    );
    assert_eq!(
        got.as_ref(),
        Some(&whole),
        "fragmented message echoed whole"
    );
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "done")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));

    let log = backend
        .wait_session(0, "the client's close", |s| s.close().is_some())
        .await;
    assert_eq!(
        log.data(),
        vec![
            &Seen::Text("text one".into()),
            &Seen::Binary(bin),
            &Seen::Binary(whole),
        ],
        "what the upstream received (fragments arrive as one message)"
    );
    assert!(
        !log.seen.contains(&Seen::Ping(b"client-ping".to_vec())),
        "the client's ping reached the upstream: {:?}",
        log.seen
    );
    assert_eq!(
        log.close().unwrap().as_ref().map(|(c, _)| *c),
        Some(1000),
        "close code the upstream saw"
    );
    srv.wait_metric("wssedge_proxy_hop_seconds_count", &[], 1.0)
        .await;
}

/// A session through `/p` that sends one text message, "first" (what the backend's
/// `…AfterFirst` modes wait for): the session and the close frame the client then receives.
async fn closed_after_the_first_message(srv: &Server) -> (RawWs, Frame) {
    let (_, mut ws) = expect_upgraded(srv, &ws_request("/p", &[])).await;
    ws.send(&cframe(true, OP_TEXT, b"first")).await;
    let f = ws.rd.expect_close_frame().await;
    (ws, f)
}

/// The upstream closes with 4000 "bye": the client receives 4000 "bye".
#[tokio::test]
async fn the_upstream_close_code_and_reason_reach_the_client() {
    let backend = Backend::start(Mode::CloseAfterFirst {
        code: 4000,
        reason: "bye".into(),
    })
    .await;
    let srv = proxy_server(&backend, &[], "");
    let (mut ws, f) = closed_after_the_first_message(&srv).await;
    assert_eq!(
        (f.close_code(), f.close_reason().as_str()),
        (Some(4000), "bye"),
        "close the client received"
    );
    // The client completes the handshake; the edge then ends the connection.
    ws.send_lossy(&cframe(true, OP_CLOSE, &close_payload(4000, "bye")))
        .await;
    assert!(
        matches!(ws.next().await, Event::Closed),
        "connection still open after the close handshake"
    );
}

/// The upstream's TCP connection ends without a close frame: the client gets 1014
/// "upstream_closed". An upstream breaking the protocol: 1014 too.
#[tokio::test]
async fn upstream_gone_or_broken_closes_the_client_with_1014() {
    let backend = Backend::start(Mode::DropAfterFirst).await;
    let srv = proxy_server(&backend, &[], "");
    // The client keeps both sessions to the end of the test, never answering their closes.
    let (_dropped, f) = closed_after_the_first_message(&srv).await;
    assert_eq!(
        (f.close_code(), f.close_reason().as_str()),
        (Some(1014), "upstream_closed"),
        "upstream TCP drop"
    );

    backend.set_mode(Mode::ViolateAfterFirst);
    let (_violated, f) = closed_after_the_first_message(&srv).await;
    visible_line(&format!(
        "upstream protocol violation: client closed with {:?} {:?}",
        f.close_code(),
        f.close_reason()
    ));
    assert_eq!(f.close_code(), Some(1014), "upstream protocol violation");
    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1014"), ("side", "server")],
        2.0,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. No route
// ---------------------------------------------------------------------------------------------

/// Routes are configured and none matches: 404 `no_route`, and nothing reaches the member.
#[tokio::test]
async fn a_path_matching_no_route_is_refused_with_404() {
    let backend = Backend::start(Mode::Echo).await;
    let srv = proxy_server(&backend, &[], "");
    for target in ["/", "/other", "/px", "/q/p", "/lossyx?x=1"] {
        expect_refused(&srv, &ws_request(target, &[]), 404, "no_route").await;
    }
    // A dot segment is refused at the upgrade (it could normalise upstream into another path).
    let r = attempt(&srv, &ws_request("/p/../admin", &[]))
        .await
        .refused("/p/../admin");
    assert!(
        matches!(
            (r.status, r.reason.as_str()),
            (404, "no_route") | (400, "path_dot_segment")
        ),
        "/p/../admin: {} {}",
        r.status,
        r.body
    );
    // (The health checker's TCP connects reach the member; upgrades must not.)
    assert!(
        backend.upgrades().is_empty(),
        "an unrouted request reached the member: {:#?}",
        backend.upgrades()
    );
    let no_route = 5 + u64::from(r.reason == "no_route");
    expect_refusals_counted(&srv, "no_route", no_route).await;
    // The routes still work.
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p/ok", &[])).await;
    roundtrip(&mut ws, "routed").await;
}

// ---------------------------------------------------------------------------------------------
// 6. Backpressure
// ---------------------------------------------------------------------------------------------

const SLOW_LIMITS: &str = "\
[limits]
socket_send_buffer_bytes = 65536
max_outbound_bytes = 262144
write_timeout_ms = 1000
close_timeout_ms = 1000
";

const SNDBUF: u64 = 65536;
const MAX_OUTBOUND: u64 = 262_144;

/// One TCP socket as `ss -tmn` shows it.
#[derive(Debug, Clone)]
struct SockRow {
    state: String,
    /// Bytes received and not read by the application.
    recv_q: u64,
    /// Bytes written by the application and not yet acknowledged by the peer.
    send_q: u64,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    skmem: Option<SkMem>,
}

/// Every TCP socket with a local or peer port in `ports`, in one `ss` snapshot.
async fn ss_rows(ports: &[u16]) -> Vec<SockRow> {
    let mut cmd = tokio::process::Command::new("ss");
    cmd.args(["-tmnH", "state", "all", "("]);
    for (i, p) in ports.iter().enumerate() {
        if i > 0 {
            cmd.arg("or");
        }
        cmd.args([
            "sport",
            "=",
            &format!(":{p}"),
            "or",
            "dport",
            "=",
            &format!(":{p}"),
        ]);
    }
    cmd.arg(")");
    let (status, out, err) = run_cmd(cmd, WAIT).await.expect("ss did not finish");
    assert!(status.success(), "ss failed: {err}");
    let mut rows: Vec<SockRow> = Vec::new();
    for line in out.lines() {
        if line.starts_with(char::is_whitespace) {
            // The skmem line of the socket above.
            if let Some(last) = rows.last_mut() {
                last.skmem = last.skmem.or(parse_skmem(line));
            }
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let (Ok(recv_q), Ok(send_q), Ok(local), Ok(peer)) =
            (f[1].parse(), f[2].parse(), f[3].parse(), f[4].parse())
        else {
            continue;
        };
        rows.push(SockRow {
            state: f[0].to_owned(),
            recv_q,
            send_q,
            local,
            peer,
            skmem: parse_skmem(line),
        });
    }
    rows
}

/// The backend floods a client that never reads. The edge stops reading the upstream while the
/// client's queue is at max_outbound_bytes, marks a slow consumer after write_timeout_ms and
/// resets the connection after close_timeout_ms (counted, audited).
///
/// Memory, three ways, all printed:
/// - the bytes the edge holds in user space, by accounting: what the backend's socket took,
///   minus what sits in the four kernel queues between backend and client (backend send queue,
///   the edge's upstream receive queue, the edge's client-facing send queue, the client's
///   receive queue) — within 2 × max_outbound_bytes;
/// - the server's RSS growth while the client stalls, after a warm-up session that read a
///   flood of the same messages to the end (so one-time allocator growth is not charged to the
///   stalled client) — below max_outbound_bytes + 16 MiB. That bound is coarse on purpose: the
///   allocator grows its arenas in MiB steps (4–8 MiB were seen on quiet runs), while an edge
///   that did not pause its upstream reads would hold most of the 320 MiB flood. The byte
///   accounting above is the precise check; the cold growth is printed too;
/// - the client-facing socket's send memory (`ss -m` t/w, tb) within
///   2 × socket_send_buffer_bytes (the kernel doubles SO_SNDBUF), + one 64 KiB skb.
#[tokio::test]
async fn a_client_that_stops_reading_is_reset_with_bounded_memory() {
    let size = 16 * 1024;
    let frame = size as u64 + 4; // server frame header for 16 KiB: 2 + 2 bytes
    let count = 20_000u64; // 320 MiB if nothing paused
    let warm_count = 300u64;
    let backend = Backend::start(Mode::Flood {
        count: warm_count,
        size,
    })
    .await;
    let t = crate::audit::trail();
    let srv = proxy_server(&backend, &[], &format!("{SLOW_LIMITS}{}", t.section(None)));
    let pid = srv.proc.pid();
    let rss_cold = vm_rss_bytes(pid).expect("server VmRSS");
    // Warm-up: a client that reads the whole flood.
    let (_, mut warm) = expect_upgraded(&srv, &ws_request("/p", &[])).await;
    for i in 0..warm_count {
        let (op, p) = warm.message().await;
        assert_eq!(
            (op, flood_index(&p, size)),
            (OP_BINARY, Some(i)),
            "warm-up message {i}"
        );
    }
    warm.send(&cframe(true, OP_CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(warm.expect_close().await, Some(1000));
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = vm_rss_bytes(pid).expect("server VmRSS");

    backend.set_mode(Mode::Flood { count, size });
    // The flood's session is the next one the backend logs (it may log it just after our 101).
    let flood_session = backend.sessions().len();
    let mut tls = srv.tls().await;
    let client_local = tls.get_ref().0.local_addr().expect("client address");
    send_all(&mut tls, ws_request("/p/flood", &[]).as_bytes())
        .await
        .expect("write upgrade");
    let (head, _rest) = within(WAIT, "101", read_head(&mut tls))
        .await
        .expect("101 head");
    assert_eq!(status_code(&head), Some(101), "{head}");
    let t0 = Instant::now();
    backend
        .wait_session(flood_session, "the flood session", |_| true)
        .await;
    // From here on the client reads nothing. Sample until its connection is gone.
    let mut rss_max = rss_before;
    let mut rss_timeline: Vec<(u128, u64)> = Vec::new();
    let mut skmem_max: Option<SkMem> = None;
    let mut states: Vec<(Duration, String)> = Vec::new();
    let mut held_max: Option<(i64, String)> = None;
    let mut reset_after = None;
    let mut samples = 0;
    while t0.elapsed() < Duration::from_secs(8) && samples < 400 {
        samples += 1;
        if let Some(r) = vm_rss_bytes(pid) {
            rss_max = rss_max.max(r);
            if rss_timeline.last().is_none_or(|(_, l)| *l != r / 1024) {
                rss_timeline.push((t0.elapsed().as_millis(), r / 1024));
            }
        }
        let sent = backend.sessions()[flood_session].flood_sent;
        let rows = ss_rows(&[srv.addr.port(), backend.port()]).await;
        let at = t0.elapsed();
        let edge_client = rows
            .iter()
            .find(|r| r.local == srv.addr && r.peer == client_local);
        let client = rows
            .iter()
            .find(|r| r.local == client_local && r.peer == srv.addr);
        let estab = |r: &&SockRow| r.state == "ESTAB";
        let backend_sendq: u64 = rows
            .iter()
            .filter(estab)
            .filter(|r| r.local == backend.addr)
            .map(|r| r.send_q)
            .sum();
        let edge_up_recvq: u64 = rows
            .iter()
            .filter(estab)
            .filter(|r| r.peer == backend.addr)
            .map(|r| r.recv_q)
            .sum();
        if let Some(m) = edge_client.and_then(|r| r.skmem) {
            if skmem_max.is_none_or(|o| m.t + m.w > o.t + o.w) {
                skmem_max = Some(m);
            }
        }
        // Once everything has stalled, account for the bytes between backend and client.
        if let (Some(ec), Some(c)) = (edge_client, client) {
            if at >= Duration::from_millis(300) && at < Duration::from_millis(900) {
                let in_kernel = backend_sendq + edge_up_recvq + ec.send_q + c.recv_q;
                let held = (sent * frame) as i64 - in_kernel as i64;
                let detail = format!(
                    "at {at:?}: backend sent {sent} msgs = {} B; kernel queues: backend send {backend_sendq}, \
                     edge upstream recv {edge_up_recvq}, edge client-facing send {}, client recv {} \
                     => edge user space ≈ {held} B",
                    sent * frame,
                    ec.send_q,
                    c.recv_q
                );
                if held_max.as_ref().is_none_or(|(h, _)| held > *h) {
                    held_max = Some((held, detail));
                }
            }
        }
        let state = client.map_or("gone".to_string(), |r| r.state.clone());
        if states.last().is_none_or(|(_, s)| *s != state) {
            states.push((at, state.clone()));
        }
        if client.is_none() || state == "CLOSE-WAIT" {
            reset_after = Some(at);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flood = backend.sessions()[flood_session].clone();
    let growth = rss_max.saturating_sub(rss_before);
    visible_line(&format!(
        "slow consumer: RSS cold {} KiB, after warm-up {} KiB, max while stalled {} KiB: growth {} KiB \
         (bound: max_outbound {} KiB + 16 MiB); RSS timeline (ms, KiB) {:?}",
        rss_cold / 1024,
        rss_before / 1024,
        rss_max / 1024,
        growth / 1024,
        MAX_OUTBOUND / 1024,
        rss_timeline,
    ));
    visible_line(&format!(
        "slow consumer: byte accounting {}",
        held_max
            .as_ref()
            .map_or("(no stable sample)".to_string(), |(_, d)| d.clone())
    ));
    visible_line(&format!(
        "slow consumer: edge client-facing socket skmem max {:?} (SO_SNDBUF {} -> cap {}); \
         client socket states {:?}; backend flood sent {} of {} × {} B ({:?})",
        skmem_max,
        SNDBUF,
        2 * SNDBUF,
        states,
        flood.flood_sent,
        count,
        size,
        flood.flood_error,
    ));
    let reset_after = reset_after.unwrap_or_else(|| {
        panic!("the edge did not end the slow consumer's connection within 8 s; states {states:?}")
    });
    // Gone from the kernel's tables = reset (a FIN would leave it in CLOSE-WAIT).
    assert_eq!(
        states.last().map(|(_, s)| s.as_str()),
        Some("gone"),
        "the slow consumer was not reset (a FIN instead?): {states:?}"
    );
    assert!(
        reset_after >= Duration::from_millis(1000),
        "reset after {reset_after:?}, before write_timeout_ms"
    );
    assert!(
        reset_after <= Duration::from_millis(1000 + 1000 + 1500),
        "reset after {reset_after:?}: expected within write_timeout + close_timeout + 1.5 s"
    );
    assert!(
        flood.flood_sent < count,
        "the backend sent all {count} messages: the edge never paused its upstream reads"
    );
    let (held, detail) = held_max.expect("no stable sample of the kernel queues");
    // The queue may pass the cap by what one upstream read brings (reads pause only once it is
    // at the cap), and a partial frame may wait in the read buffer: well within twice the cap.
    let allowed = 2 * MAX_OUTBOUND;
    assert!(
        held <= allowed as i64,
        "the edge holds ≈ {held} B in user space for a stalled client (allowed 2 × max_outbound_bytes \
         = {allowed}): {detail}"
    );
    assert!(
        growth < MAX_OUTBOUND + (16 << 20),
        "server RSS grew {growth} bytes while a client did not read (max_outbound_bytes {MAX_OUTBOUND})"
    );
    let m = skmem_max.expect("no skmem sample of the edge's client-facing socket");
    assert!(
        m.tb <= 2 * SNDBUF,
        "edge socket send buffer tb = {} above 2 × socket_send_buffer_bytes",
        m.tb
    );
    assert!(
        m.t <= 2 * SNDBUF + 65536 && m.w <= 2 * SNDBUF + 65536,
        "edge socket send memory t = {}, w = {} above the 2 × {SNDBUF} cap (+ one 64 KiB skb)",
        m.t,
        m.w
    );
    expect_slow_consumers_reset(&srv, 1.0).await;
    srv.wait_metric(
        "wssedge_backpressure_total",
        &[("event", "upstream_paused")],
        1.0,
    )
    .await;
    t.wait_for("a slow_consumer record", |rs| {
        rs.iter().any(|r| r.to_string().contains("slow_consumer"))
    })
    .await;
    // The reset reaches the client as an error (or EOF) once it reads again.
    let (_, ended) = read_to_close(&mut tls, WAIT).await;
    assert!(ended, "client stream still open after the reset");
    // The upstream session ends too.
    backend
        .wait_session(flood_session, "the upstream end", |s| s.ended().is_some())
        .await;
}

/// On a lossy route the edge drops whole upstream messages while the client's queue is full
/// instead of pausing the upstream: what the client gets is intact, in order, with gaps, and
/// every gap is counted.
#[tokio::test]
async fn a_lossy_route_drops_whole_upstream_messages_under_backpressure() {
    let size = 4096;
    let count = 3000u64; // ~12 MiB
    let backend = Backend::start(Mode::Flood { count, size }).await;
    let srv = proxy_server(&backend, &[], SLOW_LIMITS);
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/lossy/feed", &[])).await;
    // Stall below write_timeout_ms, then read everything.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut got: Vec<u64> = Vec::new();
    let t0 = Instant::now();
    loop {
        let flood: SessionLog = backend.sessions().first().cloned().unwrap_or_default();
        let step = tokio::time::timeout(Duration::from_millis(1000), ws.next()).await;
        match step {
            Ok(Event::Frame(f)) if f.opcode == OP_BINARY => {
                assert!(f.fin, "an upstream message arrived fragmented");
                let i = flood_index(&f.payload, size).unwrap_or_else(|| {
                    panic!(
                        "message {} (len {}) is not intact",
                        got.len(),
                        f.payload.len()
                    )
                });
                assert!(
                    got.last().is_none_or(|&l| i > l),
                    "message {i} after {:?}: out of order or repeated",
                    got.last()
                );
                got.push(i);
                if i + 1 == count {
                    break;
                }
            }
            Ok(Event::Frame(f)) if f.opcode >= 0x8 && f.opcode != OP_CLOSE => {}
            Ok(other) => panic!(
                "lossy session ended: {other:?} after {} messages",
                got.len()
            ),
            // Quiet for a second after the backend sent everything: the rest was dropped.
            Err(_) if flood.flood_done => break,
            Err(_) => {}
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "flood never finished"
        );
    }
    let dropped = count - got.len() as u64;
    visible_line(&format!(
        "lossy backpressure: {} of {count} messages delivered, {dropped} dropped",
        got.len()
    ));
    assert!(
        dropped > 0,
        "nothing dropped: the client's stall did not fill the queue"
    );
    wait_metric_exactly(
        &srv,
        "wssedge_lossy_drops_total",
        &[("reason", "backpressure")],
        dropped as f64,
        "lossy_drops_total vs messages missing",
    )
    .await;
    assert_eq!(
        srv.metric("wssedge_backpressure_total", &[("event", "slow_consumer")])
            .await,
        0.0,
        "a client that read within write_timeout_ms was called slow"
    );
    // The session is still open: a close handshake completes.
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));
}
