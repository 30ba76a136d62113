//! The key limit where the kernel cannot rekey: with a test-only limit of 1,000 records, the
//! server closes with 1001 `tls_key_limit` shortly before it would reach the limit.

use crate::harness::*;
use crate::kernel::*;

/// The test-only record limit given to the server.
const LIMIT: usize = 1000;
/// The server's safety margin: it closes once the records under the key reach LIMIT - LIMIT/16.
const MARGIN: usize = LIMIT / 16;
/// Server records before the first echo that may count under the key: TLS 1.3 session
/// tickets (sequence numbers carry over into the kernel) and the 101 response, with room.
const RECORDS_BEFORE_ECHOES: usize = 8;

#[tokio::test]
async fn server_closes_with_1001_tls_key_limit_before_the_limit() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let config = format!("{KTLS_REQUIRED}ktls_key_limit_records = {LIMIT}\n");
    let srv = ServerBuilder::new().config(&config).start();
    let base = OffloadBaseline::take(&srv).await;
    let mut raw = srv.raw().await;

    let (echoes, close) = echo_until_closed(&mut raw).await;
    // Whatever the close was, it was counted: the counters are published from here on.
    srv.wait_metric("wssedge_refusals_total", &[], 1.0).await;
    let tx = srv
        .metric("wssedge_ktls_records_total", &[("direction", "tx")])
        .await;
    report_finding(
        "key-limit.txt",
        &format!(
            "key limit {LIMIT} records: close {:?} {:?} after {echoes} echoes (one record each); \
             {tx} records sent under kTLS\n",
            close.close_code(),
            close.close_reason()
        ),
    );
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1001), "tls_key_limit"),
        "wrong close after {echoes} echoes"
    );
    let earliest = LIMIT - MARGIN - RECORDS_BEFORE_ECHOES;
    assert!(
        (earliest..LIMIT).contains(&echoes),
        "closed after {echoes} echoes (one server record each); expected in {earliest}..{LIMIT}"
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
    base.assert_offloaded(&srv, 1).await;
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
