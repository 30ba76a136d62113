//! Key limits under kTLS, with a test-only record limit (`ktls_key_limit_records`):
//! - TLS 1.2 has no KeyUpdate: the server closes with 1001 `tls_key_limit` shortly before the
//!   limit, on every kernel.
//! - TLS 1.3 where the kernel cannot rekey (before 6.14): the same close.
//! - TLS 1.3 where it can: the session goes on past the limit as often as it comes round, our
//!   keys renewed by our KeyUpdates and the client's on our request (`update_requested`), with
//!   data in flight across every key change arriving intact and in order, and the kernel's
//!   `/proc/net/tls_stat` counting exactly the KeyUpdates the edge says it sent and followed.

use rustls::crypto::aws_lc_rs::cipher_suite;
use tokio::io::AsyncWriteExt;

use crate::clients::suite_client_config;
use crate::harness::*;
use crate::kernel::*;

/// The test-only record limit given to the server where it closes.
const LIMIT: usize = 1000;
/// The server's safety margin: it closes once the records under the key reach LIMIT - LIMIT/16.
const MARGIN: usize = LIMIT / 16;
/// Server records before the first echo that may count under the key: TLS 1.3 session
/// tickets (sequence numbers carry over into the kernel) and the 101 response, with room.
const RECORDS_BEFORE_ECHOES: usize = 8;

/// The limit where the session is to go on: small, so that keys change many times.
const REKEY_LIMIT: u64 = 100;

#[tokio::test]
async fn tls12_closes_with_1001_tls_key_limit_before_the_limit() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = limited_server(LIMIT as u64);
    let ca = srv.ca_pem.clone().expect("dev certificate");
    let base = OffloadBaseline::take(&srv).await;
    let suite = cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
    let mut raw = srv
        .raw_over(tls_connect(srv.addr, suite_client_config(&ca, suite)).await)
        .await;
    assert_closed_at_the_limit(&srv, &mut raw, "TLS 1.2").await;
    base.assert_offloaded(&srv, 1).await;
}

#[tokio::test]
async fn tls13_keys_are_renewed_both_ways_where_the_kernel_can_else_closed_at_the_limit() {
    if !ktls_kernel_or_skip() {
        return;
    }
    if !TlsStat::read().has("TlsRxRekeyOk") {
        let srv = limited_server(LIMIT as u64);
        let base = OffloadBaseline::take(&srv).await;
        let mut raw = srv.raw().await;
        assert_closed_at_the_limit(&srv, &mut raw, "TLS 1.3 without kernel rekey").await;
        base.assert_offloaded(&srv, 1).await;
        return;
    }

    let srv = limited_server(REKEY_LIMIT);
    let base = OffloadBaseline::take(&srv).await;
    let mut raw = srv.raw().await;
    // One record each way per echo: 600 records per direction, six limits' worth.
    for i in 0..300 {
        for opcode in [OP_TEXT, OP_BINARY] {
            let msg = format!("{i} under keys that keep changing").into_bytes();
            raw.send(&cframe(true, opcode, &msg)).await;
            assert_eq!(raw.message().await, (opcode, msg), "echo {i}");
        }
    }
    let updates = end_and_count(raw, &srv, &base).await;
    report_finding(
        "rekey.txt",
        &format!("600 echoes under a {REKEY_LIMIT}-record limit: {updates}\n"),
    );
    // Each direction's key covered at most the limit: at least 600 / 100 renewals each way.
    assert!(updates.sent_total() >= 6, "{updates}");
    assert!(updates.received_total() >= 6, "{updates}");
    assert!(
        updates.sent_requested >= 6 && updates.received_not_requested >= 6,
        "the client's keys were renewed because the edge asked: {updates}"
    );
    assert_eq!(
        updates.received_requested, 0,
        "this client never asked for new keys: {updates}"
    );
}

/// The client pipelines windows of numbered messages and updates its own keys (rustls'
/// `refresh_traffic_keys`: `update_requested`) inside some windows, while the server's
/// KeyUpdates (at its limit, and asking for the client's) cross them: every message comes back
/// intact and in order, and the kernel follows each key change.
#[tokio::test]
async fn data_in_flight_across_key_changes_arrives_intact_and_in_order() {
    if !ktls_kernel_or_skip() {
        return;
    }
    if !TlsStat::read().has("TlsRxRekeyOk") {
        println!(
            "not applicable: this kernel cannot rekey (a client KeyUpdate closes with 1001, \
             proven by close::client_key_update_is_refused_or_followed_as_the_kernel_can)"
        );
        return;
    }
    // Room for a window in flight between the edge's request and the client's answer; the
    // client's own updates are rarer than the edge's requests (every 750 records), so both
    // kinds happen.
    const WINDOW: usize = 8;
    const WINDOWS: usize = 500;
    const CLIENT_UPDATE_EVERY: usize = 150;
    let limit = 1000;
    let srv = limited_server(limit);
    let base = OffloadBaseline::take(&srv).await;
    let mut raw = srv.raw().await;
    let mut client_updates = 0;
    for w in 0..WINDOWS {
        for i in 0..WINDOW {
            if i == WINDOW / 2 && w % CLIENT_UPDATE_EVERY == CLIENT_UPDATE_EVERY / 2 {
                // What is already written went under the old key; the rest goes under the new.
                flush(&mut raw).await;
                let (mut tls, buffered) = raw.into_parts();
                tls.get_mut()
                    .1
                    .refresh_traffic_keys()
                    .expect("TLS 1.3 KeyUpdate");
                raw = RawWs::from_parts(tls, buffered);
                client_updates += 1;
            }
            // One write, one record: the window is WINDOW records on the wire at once.
            let frame = cframe(true, OP_BINARY, &numbered(w, i));
            within(WAIT, "write a record", raw.wr.write_all(&frame))
                .await
                .expect("write a record");
        }
        flush(&mut raw).await;
        for i in 0..WINDOW {
            let (opcode, payload) = raw.message().await;
            assert_eq!(
                (opcode, payload.as_slice()),
                (OP_BINARY, numbered(w, i).as_slice()),
                "window {w}, message {i}: lost, changed or out of order"
            );
        }
    }
    let updates = end_and_count(raw, &srv, &base).await;
    report_finding(
        "rekey-in-flight.txt",
        &format!(
            "{} pipelined echoes in windows of {WINDOW}, {client_updates} client KeyUpdates, \
             limit {limit}: {updates}\n",
            WINDOWS * WINDOW
        ),
    );
    assert_eq!(
        updates.received_requested, client_updates,
        "every client KeyUpdate was followed: {updates}"
    );
    assert!(
        updates.sent_total() >= client_updates,
        "each client request was answered: {updates}"
    );
    assert!(
        updates.received_not_requested >= 1 && updates.sent_requested >= 1,
        "the edge asked for the client's keys at its RX limit, and followed the answer: {updates}"
    );
}

async fn flush(raw: &mut RawWs) {
    within(WAIT, "flush", raw.wr.flush()).await.expect("flush");
}

/// The message of window `w`, position `i`: numbered, and long enough to notice a torn record.
fn numbered(w: usize, i: usize) -> Vec<u8> {
    let mut m = format!("{w}:{i}:").into_bytes();
    m.extend((0..200).map(|k| (w * 31 + i * 7 + k) as u8));
    m
}

fn limited_server(limit: u64) -> Server {
    let config = format!("{KTLS_REQUIRED}ktls_key_limit_records = {limit}\n");
    ServerBuilder::new().config(&config).start()
}

/// Echoes until the server closes, then checks that the close is the key limit's, at the
/// point it should be.
async fn assert_closed_at_the_limit(srv: &Server, raw: &mut RawWs, what: &str) {
    let (echoes, close) = echo_until_closed(raw).await;
    // Whatever the close was, it was counted: the counters are published from here on.
    srv.wait_metric("wssedge_refusals_total", &[], 1.0).await;
    let tx = srv
        .metric("wssedge_ktls_records_total", &[("direction", "tx")])
        .await;
    report_finding(
        "key-limit.txt",
        &format!(
            "{what}, key limit {LIMIT} records: close {:?} {:?} after {echoes} echoes (one \
             record each); {tx} records sent under kTLS\n",
            close.close_code(),
            close.close_reason()
        ),
    );
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1001), "tls_key_limit"),
        "{what}: wrong close after {echoes} echoes"
    );
    let earliest = LIMIT - MARGIN - RECORDS_BEFORE_ECHOES;
    assert!(
        (earliest..LIMIT).contains(&echoes),
        "{what}: closed after {echoes} echoes (one server record each); expected in \
         {earliest}..{LIMIT}"
    );
    assert_eq!(
        srv.metric("wssedge_refusals_total", &[("reason", "tls_key_limit")])
            .await,
        1.0
    );
    assert!(
        (echoes as f64..=LIMIT as f64).contains(&tx),
        "{tx} records sent under kTLS: fewer than the {echoes} echoes, or past the limit {LIMIT}"
    );
    assert_eq!(
        srv.metric("wssedge_ktls_key_updates_total", &[]).await,
        0.0,
        "{what}: no KeyUpdate where keys cannot change"
    );
}

/// Sends one small message at a time and waits for its echo (so each echo is exactly one server
/// record), until a close frame arrives instead. Returns the echoes received and the close.
async fn echo_until_closed(raw: &mut RawWs) -> (usize, Frame) {
    // Bounded: past the limit the server has failed anyway.
    for i in 0..LIMIT + MARGIN {
        let msg = format!("{i}");
        raw.send_lossy(&cframe(true, OP_TEXT, msg.as_bytes())).await;
        match raw.next().await {
            Event::Frame(f) if f.opcode == OP_CLOSE => return (i, f),
            Event::Frame(f) => assert_eq!(
                (f.opcode, f.payload.as_slice()),
                (OP_TEXT, msg.as_bytes()),
                "echo {i}"
            ),
            Event::Closed => panic!("connection ended without a close frame after {i} echoes"),
        }
    }
    panic!(
        "no close after {} echoes: the key limit is not enforced",
        LIMIT + MARGIN
    )
}

/// Ends a session that went through key changes: it closes cleanly, it was offloaded and its
/// kTLS socket is gone; then the KeyUpdates the edge and the kernel counted, agreeing.
async fn end_and_count(raw: RawWs, srv: &Server, base: &OffloadBaseline) -> KeyUpdates {
    close_cleanly(raw).await;
    base.assert_offloaded(srv, 1).await;
    base.wait_until_released().await;
    KeyUpdates::settled(srv, base).await
}

/// A WebSocket close 1000 and the server's close_notify: the session ended well after all.
async fn close_cleanly(mut raw: RawWs) {
    raw.send(&cframe(true, OP_CLOSE, &close_payload(1000, "done")))
        .await;
    assert_eq!(raw.rd.expect_close().await, Some(1000));
    crate::clients::read_to_clean_tls_eof(&mut raw.rd.io).await;
}

/// The KeyUpdates of one test, as the edge counted them and as the kernel did.
struct KeyUpdates {
    sent_requested: usize,
    sent_not_requested: usize,
    received_requested: usize,
    received_not_requested: usize,
    /// `/proc/net/tls_stat` deltas: TlsTxRekeyOk, TlsRxRekeyOk, TlsRxRekeyReceived.
    kernel: [(&'static str, u64); 3],
}

impl KeyUpdates {
    /// Waits (bounded) until the edge's counts are published and agree with the kernel's, and
    /// asserts that they do: every KeyUpdate the edge sent is one TX rekey the kernel took,
    /// every one it followed is one RX rekey, and no rekey failed.
    async fn settled(srv: &Server, base: &OffloadBaseline) -> KeyUpdates {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let u = Self::read(srv, base).await;
            let agree = u.kernel[0].1 == u.sent_total() as u64
                && u.kernel[1].1 == u.received_total() as u64
                && u.kernel[2].1 == u.received_total() as u64;
            if agree || std::time::Instant::now() >= deadline {
                assert!(agree, "the edge's and the kernel's counts differ: {u}");
                let stat = TlsStat::read();
                for c in ["TlsRxRekeyError", "TlsTxRekeyError"] {
                    assert_eq!(stat.since(&base.stat, c), 0, "{c} moved: {u}");
                }
                return u;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    async fn read(srv: &Server, base: &OffloadBaseline) -> KeyUpdates {
        let body = srv.metrics().await;
        let count = |direction: &str, request: &str| {
            metric_sum(
                &body,
                "wssedge_ktls_key_updates_total",
                &[("direction", direction), ("request", request)],
            ) as usize
        };
        let stat = TlsStat::read();
        KeyUpdates {
            sent_requested: count("sent", "requested"),
            sent_not_requested: count("sent", "not_requested"),
            received_requested: count("received", "requested"),
            received_not_requested: count("received", "not_requested"),
            kernel: ["TlsTxRekeyOk", "TlsRxRekeyOk", "TlsRxRekeyReceived"]
                .map(|c| (c, stat.since(&base.stat, c))),
        }
    }

    fn sent_total(&self) -> usize {
        self.sent_requested + self.sent_not_requested
    }

    fn received_total(&self) -> usize {
        self.received_requested + self.received_not_requested
    }
}

impl std::fmt::Display for KeyUpdates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "edge sent {} KeyUpdates ({} asking for the client's), followed {} of the client's \
             ({} asking for ours); tls_stat {:?}",
            self.sent_total(),
            self.sent_requested,
            self.received_total(),
            self.received_requested,
            self.kernel
        )
    }
}

/// A client KeyUpdate with data right behind it, in the same TCP push, again and again: the
/// record under the new key is already queued when the kernel takes the new RX keys. A server
/// that then waited for readiness never woke (sid's 7.2 kernel does not announce a record
/// queued behind a KeyUpdate): the echo must come back every time.
#[tokio::test]
async fn client_key_updates_with_data_right_behind_them_never_stall() {
    if !ktls_kernel_or_skip() {
        return;
    }
    if !TlsStat::read().has("TlsRxRekeyOk") {
        println!("not applicable: this kernel cannot rekey");
        return;
    }
    const ROUNDS: usize = 100;
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let base = OffloadBaseline::take(&srv).await;
    let mut raw = srv.raw().await;
    for round in 0..ROUNDS {
        let (mut tls, buffered) = raw.into_parts();
        let before = format!("{round} before");
        let after = format!("{round} after");
        std::io::Write::write_all(
            &mut tls.get_mut().1.writer(),
            &cframe(true, OP_TEXT, before.as_bytes()),
        )
        .expect("queue a record");
        tls.get_mut()
            .1
            .refresh_traffic_keys()
            .expect("TLS 1.3 KeyUpdate");
        raw = RawWs::from_parts(tls, buffered);
        // The record before, the KeyUpdate and the record after leave in one flush.
        raw.send(&cframe(true, OP_TEXT, after.as_bytes())).await;
        for m in [before, after] {
            assert_eq!(
                raw.message().await,
                (OP_TEXT, m.into_bytes()),
                "round {round}"
            );
        }
    }
    let updates = end_and_count(raw, &srv, &base).await;
    assert_eq!(updates.received_requested, ROUNDS, "{updates}");
    assert_eq!(updates.sent_not_requested, ROUNDS, "{updates}");
}

/// The start-up line says whether this kernel can rekey, and it says what the kernel shows:
/// the rekey counters of `/proc/net/tls_stat` came with rekeying (6.14).
#[tokio::test]
async fn the_start_line_says_whether_this_kernel_can_rekey() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let can = TlsStat::read().has("TlsRxRekeyOk");
    let log = srv.proc.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("kTLS active"))
        .unwrap_or_else(|| panic!("no kTLS start-up line in: {log}"));
    report_finding("rekey-support.txt", &format!("{line}\n"));
    let says = if can { "rekey: yes" } else { "rekey: no" };
    assert!(line.contains(says), "expected {says:?}: {line}");
}

/// A flood of client KeyUpdates with no data between them: each would cost the edge a key
/// derivation, a setsockopt and a KeyUpdate of its own. Past 32 in a row (rustls' and
/// BoringSSL's bound) the connection is refused `tls_protocol_error`; on a kernel that cannot
/// rekey the first one already closes it (1001 `tls_rekey_unsupported`).
#[tokio::test]
async fn a_flood_of_client_key_updates_is_refused() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let base = OffloadBaseline::take(&srv).await;
    let raw = srv.raw().await;
    let (mut tls, _) = raw.into_parts();
    for _ in 0..40 {
        tls.get_mut()
            .1
            .refresh_traffic_keys()
            .expect("TLS 1.3 KeyUpdate");
    }
    // The server may already be gone while the last ones are written.
    let _ = within(WAIT, "flush the KeyUpdates", tls.flush()).await;
    let reason = if TlsStat::read().has("TlsRxRekeyOk") {
        "tls_protocol_error"
    } else {
        "tls_rekey_unsupported"
    };
    srv.wait_metric("wssedge_refusals_total", &[("reason", reason)], 1.0)
        .await;
    base.wait_until_released().await;
    if reason == "tls_protocol_error" {
        let followed = srv
            .metric(
                "wssedge_ktls_key_updates_total",
                &[("direction", "received")],
            )
            .await;
        assert_eq!(followed, 32.0, "followed up to the bound, not one more");
    }
}
