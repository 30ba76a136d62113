//! Connection lifecycles under kTLS: `required` starting and serving, many sequential
//! connections each offloaded once and released, and application data pipelined right behind
//! the client's Finished (the partial-record trap at the switch point).

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::clients::pipelined_upgrade_and_message;
use crate::harness::*;
use crate::kernel::*;

#[tokio::test]
async fn required_mode_starts_and_serves() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    assert_eq!(
        srv.metric("wssedge_ktls_available", &[]).await,
        1.0,
        "the probe found no kTLS on a kernel that has it"
    );
    let base = OffloadBaseline::take(&srv).await;
    let tls = srv.tls().await;
    // A client offering everything: whatever it negotiated is what the kernel must show.
    let conn = tls.get_ref().1;
    let suite = conn.negotiated_cipher_suite().expect("negotiated suite");
    let version = conn.protocol_version().expect("negotiated version");
    let mut ws = ws_over(tls, &srv.url()).await;
    assert_eq!(
        message_text(&echo(&mut ws, Message::text("served by the kernel's TLS")).await),
        "served by the kernel's TLS"
    );
    assert_ss_shows_tls_ulp(srv.addr.port(), ss_version(version), ss_cipher(suite)).await;
    base.assert_offloaded(&srv, 1).await;
    within(WAIT, "close", ws.close(None)).await.expect("close");
}

/// Enough to catch a per-connection leak of kTLS state or a counter that drifts.
const SEQUENTIAL: u64 = 200;

#[tokio::test]
async fn two_hundred_sequential_connections_are_each_offloaded_once() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let base = OffloadBaseline::take(&srv).await;
    for i in 0..SEQUENTIAL {
        connect_echo_close(&srv, i).await;
    }
    base.assert_offloaded(&srv, SEQUENTIAL).await;
    base.wait_until_released().await;
}

/// Connect, upgrade, one echo, and a complete close handshake (our close, its reply, its EOF).
async fn connect_echo_close(srv: &Server, i: u64) {
    let mut ws = srv.ws().await;
    let text = format!("connection {i}");
    assert_eq!(
        message_text(&echo(&mut ws, Message::text(text.clone())).await),
        text
    );
    within(WAIT, "close", ws.close(None)).await.expect("close");
    within(WAIT, "the server's close reply and EOF", async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// The upgrade request and a first frame sent in the same flight as the client's Finished:
/// once small (both fit one record each), once large (a 100 kB frame spans several records,
/// so a read at the switch point can end mid-record). Both get the 101 and their echo, then
/// one more message and its echo (by then under kTLS), and both are offloaded once.
#[tokio::test]
async fn data_pipelined_after_the_client_finished_is_served() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let srv = ServerBuilder::new().config(KTLS_REQUIRED).start();
    let base = OffloadBaseline::take(&srv).await;
    let small = b"right behind Finished".to_vec();
    let large = pattern(100_000);
    for (opcode, payload) in [(OP_TEXT, small), (OP_BINARY, large)] {
        let (addr, cfg) = (srv.addr, srv.tls_config());
        let sent = payload.clone();
        let reply = within(
            WAIT * 2,
            "pipelined client",
            tokio::task::spawn_blocking(move || {
                pipelined_upgrade_and_message(addr, cfg, opcode, &sent)
            }),
        )
        .await
        .expect("pipelined client panicked");
        assert_eq!(status_code(&reply.head), Some(101), "{}", reply.head);
        assert!(
            reply.message == (opcode, payload),
            "the pipelined {} B frame came back different",
            reply.message.1.len()
        );
    }
    base.assert_offloaded(&srv, 2).await;
}
