//! The ends of an offloaded session: close_notify in both directions, and a client KeyUpdate,
//! which a 6.1 kernel cannot follow (no rekey before 6.14) and the server must refuse cleanly,
//! and a newer kernel follows.

use tokio::io::AsyncWriteExt;

use crate::clients::read_to_clean_tls_eof;
use crate::harness::*;
use crate::kernel::*;

/// An offloaded raw connection past its first echo (so the record layer is in the kernel).
async fn offloaded_raw(srv: &Server) -> RawWs {
    let mut raw = srv.raw().await;
    raw.send(&cframe(true, OP_TEXT, b"before")).await;
    assert_eq!(raw.message().await, (OP_TEXT, b"before".to_vec()));
    raw
}

/// (a) The client sends close_notify without a WebSocket close: the server takes the alert
/// record off the kernel socket, ends the session, answers with its own close_notify and
/// closes; the alert is counted.
#[tokio::test]
async fn client_close_notify_ends_the_session_cleanly() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let base = OffloadBaseline::take(&srv).await;
    let (mut tls, _) = offloaded_raw(&srv).await.into_parts();

    // Only the alert: no FIN (a shutdown would also close our write side).
    tls.get_mut().1.send_close_notify();
    within(WAIT, "send close_notify", tls.flush())
        .await
        .expect("send close_notify");
    read_to_clean_tls_eof(&mut tls).await;

    srv.wait_metric(
        "wssedge_ktls_alerts_total",
        &[("kind", "close_notify")],
        1.0,
    )
    .await;
    assert_eq!(
        srv.metric("wssedge_ktls_alerts_total", &[("kind", "fatal")])
            .await,
        0.0,
        "a close_notify was counted as fatal"
    );
    base.assert_offloaded(&srv, 1).await;
    base.wait_until_released().await;
}

/// (b) After a WebSocket close handshake the server closes with close_notify: the client sees a
/// clean TLS EOF, not a truncation.
#[tokio::test]
async fn server_sends_close_notify_after_the_close_handshake() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let base = OffloadBaseline::take(&srv).await;
    let mut raw = offloaded_raw(&srv).await;

    raw.send(&cframe(true, OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    assert_eq!(raw.expect_close().await, Some(1000));
    let after_close = read_to_clean_tls_eof(&mut raw.rd.io).await;
    assert!(
        raw.rd.buf.is_empty() && after_close.is_empty(),
        "bytes after the close frame"
    );

    base.assert_offloaded(&srv, 1).await;
    base.wait_until_released().await;
}

/// A client KeyUpdate (rustls asks for ours in return), then a message under the new key.
/// - A kernel that cannot take new keys (6.1; rekeying came in 6.14) hands the KeyUpdate up as
///   a handshake record: the server must close with 1001 `tls_rekey_unsupported` (still
///   readable, its TX key is unchanged), then close_notify.
/// - A kernel that can: the server follows the client's keys on RX, sends its own KeyUpdate and
///   follows it on TX; the message comes back intact under the new keys, the session goes on,
///   and the kernel counts exactly one rekey each way.
#[tokio::test]
async fn client_key_update_is_refused_or_followed_as_the_kernel_can() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let base = OffloadBaseline::take(&srv).await;
    let (mut tls, buffered) = offloaded_raw(&srv).await.into_parts();

    tls.get_mut()
        .1
        .refresh_traffic_keys()
        .expect("TLS 1.3 KeyUpdate");
    // The KeyUpdate goes out first, then the frame under the new key.
    let mut raw = RawWs::from_parts(tls, buffered);
    raw.send_lossy(&cframe(true, OP_TEXT, b"after the key update"))
        .await;

    if base.stat.has("TlsRxRekeyOk") {
        assert_eq!(
            raw.message().await,
            (OP_TEXT, b"after the key update".to_vec()),
            "the message under the new keys came back different"
        );
        raw.send(&cframe(true, OP_BINARY, b"and after that")).await;
        assert_eq!(raw.message().await, (OP_BINARY, b"and after that".to_vec()));
        let stat = TlsStat::read();
        let moved = ["TlsRxRekeyReceived", "TlsRxRekeyOk", "TlsTxRekeyOk"]
            .map(|c| (c, stat.since(&base.stat, c)));
        report_finding(
            "key-update.txt",
            &format!("client KeyUpdate under kTLS: followed, echoes intact; tls_stat {moved:?}\n"),
        );
        assert_eq!(
            moved,
            [
                ("TlsRxRekeyReceived", 1),
                ("TlsRxRekeyOk", 1),
                ("TlsTxRekeyOk", 1)
            ],
            "one rekey each way"
        );
        for c in ["TlsRxRekeyError", "TlsTxRekeyError"] {
            assert_eq!(stat.since(&base.stat, c), 0, "{c} moved");
        }
        raw.send(&cframe(true, OP_CLOSE, &close_payload(1000, "done")))
            .await;
        assert_eq!(raw.rd.expect_close().await, Some(1000));
        read_to_clean_tls_eof(&mut raw.rd.io).await;
        base.assert_offloaded(&srv, 1).await;
        base.wait_until_released().await;
        return;
    }

    let close = raw.rd.expect_close_frame().await;
    report_finding(
        "key-update.txt",
        &format!(
            "client KeyUpdate under kTLS: close {:?} {:?}\n",
            close.close_code(),
            close.close_reason()
        ),
    );
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1001), "tls_rekey_unsupported"),
        "wrong close after a KeyUpdate"
    );
    read_to_clean_tls_eof(&mut raw.rd.io).await;

    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "tls_rekey_unsupported")],
        1.0,
    )
    .await;
    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1001"), ("side", "server")],
        1.0,
    )
    .await;
    base.assert_offloaded(&srv, 1).await;
    base.wait_until_released().await;
}
