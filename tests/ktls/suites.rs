//! Echo over each of the six suites the kernel can take over: TLS 1.3 and TLS 1.2
//! (ECDHE-ECDSA; the dev certificate is P-256) × AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305.
//! One server and one connection per suite, so a failure names the suite.

use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::SupportedCipherSuite;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::suite_client_config;
use crate::harness::*;
use crate::kernel::*;

#[tokio::test]
async fn tls13_aes_128_gcm() {
    echo_over_suite(cipher_suite::TLS13_AES_128_GCM_SHA256).await;
}

#[tokio::test]
async fn tls13_aes_256_gcm() {
    echo_over_suite(cipher_suite::TLS13_AES_256_GCM_SHA384).await;
}

#[tokio::test]
async fn tls13_chacha20_poly1305() {
    echo_over_suite(cipher_suite::TLS13_CHACHA20_POLY1305_SHA256).await;
}

#[tokio::test]
async fn tls12_ecdhe_ecdsa_aes_128_gcm() {
    echo_over_suite(cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).await;
}

#[tokio::test]
async fn tls12_ecdhe_ecdsa_aes_256_gcm() {
    echo_over_suite(cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384).await;
}

#[tokio::test]
async fn tls12_ecdhe_ecdsa_chacha20_poly1305() {
    echo_over_suite(cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256).await;
}

/// One connection restricted to `suite`: the client negotiated exactly it, text and binary
/// echo, `ss` shows the TLS ULP with this version (and cipher, where ss names it), and the
/// kernel and the edge each count one offload.
async fn echo_over_suite(suite: SupportedCipherSuite) {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let ca = srv.ca_pem.clone().expect("dev certificate");
    let base = OffloadBaseline::take(&srv).await;

    let tls = tls_connect(srv.addr, suite_client_config(&ca, suite)).await;
    let version = suite.version().version;
    assert_negotiated(tls.get_ref().1, suite);
    let mut ws = ws_over(tls, &srv.url()).await;

    let text = format!("over {:?} ✓", suite.suite());
    assert_eq!(
        message_text(&echo(&mut ws, Message::text(text.clone())).await),
        text
    );
    let data = pattern(3000);
    assert_eq!(
        echo(&mut ws, Message::binary(data.clone())).await,
        Message::binary(data)
    );

    assert_ss_shows_tls_ulp(srv.addr.port(), ss_version(version), ss_cipher(suite)).await;
    base.assert_offloaded(&srv, 1).await;
    within(WAIT, "close", ws.close(None)).await.expect("close");
}

fn assert_negotiated(conn: &rustls::ClientConnection, suite: SupportedCipherSuite) {
    assert_eq!(
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(suite.suite()),
        "the client negotiated another suite"
    );
    assert_eq!(
        conn.protocol_version(),
        Some(suite.version().version),
        "the client negotiated another version"
    );
}
