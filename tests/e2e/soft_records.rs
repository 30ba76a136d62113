//! The records of a session the edge protects itself (kTLS off, absent or refused): after the
//! first echo the session has left rustls (`tls::soft`), so these drive KeyUpdates against our
//! own record layer — followed when they come with data, refused as a flood when they do not.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

const SOFT: &str = "[tls]\nktls = \"off\"\n";

/// A raw TLS 1.3 session past its first echo: its records are ours by now.
async fn soft_raw(srv: &Server) -> RawWs {
    let mut raw = srv.raw().await;
    raw.send(&cframe(true, OP_TEXT, b"before")).await;
    assert_eq!(raw.message().await, (OP_TEXT, b"before".to_vec()));
    raw
}

/// Each client KeyUpdate (rustls asks for ours in return) is followed on both sides: the
/// message after it comes back intact under the new keys, again and again, well past the flood
/// bound, because data comes between them.
#[tokio::test]
async fn client_key_updates_between_messages_are_followed() {
    let srv = Server::with_config(SOFT);
    let (mut tls, buffered) = soft_raw(&srv).await.into_parts();
    let mut buffered = buffered;
    for i in 0..40 {
        tls.get_mut()
            .1
            .refresh_traffic_keys()
            .expect("TLS 1.3 KeyUpdate");
        let mut raw = RawWs::from_parts(tls, buffered);
        let body = format!("after key update {i}");
        raw.send(&cframe(true, OP_TEXT, body.as_bytes())).await;
        assert_eq!(
            raw.message().await,
            (OP_TEXT, body.into_bytes()),
            "message {i} under new keys"
        );
        (tls, buffered) = raw.into_parts();
    }
    let mut raw = RawWs::from_parts(tls, buffered);
    raw.send(&cframe(true, OP_CLOSE, &close_payload(1000, "done")))
        .await;
    assert_eq!(raw.rd.expect_close().await, Some(1000));
    assert_eq!(
        srv.metric(
            "wssedge_refusals_total",
            &[("reason", "tls_protocol_error")]
        )
        .await,
        0.0,
        "KeyUpdates with data between them were refused"
    );
}

/// KeyUpdates with no data between them: each costs the edge a key derivation and a KeyUpdate
/// of its own. Past 32 in a row (rustls' and BoringSSL's bound) the connection is refused
/// `tls_protocol_error` and closed.
#[tokio::test]
async fn a_flood_of_client_key_updates_is_refused() {
    let srv = Server::with_config(SOFT);
    let (mut tls, _) = soft_raw(&srv).await.into_parts();
    for _ in 0..40 {
        tls.get_mut()
            .1
            .refresh_traffic_keys()
            .expect("TLS 1.3 KeyUpdate");
    }
    // The server may already be gone while the last ones are written.
    let _ = within(WAIT, "flush the KeyUpdates", tls.flush()).await;
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "tls_protocol_error")],
        1.0,
    )
    .await;
    // And the connection is closed: the client reads to its end (an alert or EOF).
    let mut rest = Vec::new();
    let _ = within(
        WAIT,
        "the refused connection ends",
        tls.read_to_end(&mut rest),
    )
    .await;
}
