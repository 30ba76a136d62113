//! With the `panic-injection` feature the server panics on the text message
//! `__wssedge_panic__`: only that connection is closed (1011), the core keeps serving.

use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn a_panic_closes_only_its_connection_with_1011() {
    let srv = Server::start();
    let mut bystander = srv.ws().await;
    assert_eq!(
        message_text(&echo(&mut bystander, Message::text("before")).await),
        "before"
    );

    let mut victim = srv.raw().await;
    victim
        .send(&cframe(true, OP_TEXT, b"__wssedge_panic__"))
        .await;
    assert_eq!(victim.expect_close().await, Some(1011));

    // Same core (one core), other connection: still served.
    assert_eq!(
        message_text(&echo(&mut bystander, Message::text("after")).await),
        "after"
    );
    // New connections too.
    let mut fresh = srv.ws().await;
    assert_eq!(
        message_text(&echo(&mut fresh, Message::text("fresh")).await),
        "fresh"
    );
    // A near miss is just echoed.
    assert_eq!(
        message_text(&echo(&mut fresh, Message::text("__wssedge_panic__ ")).await),
        "__wssedge_panic__ "
    );

    srv.wait_metric("wssedge_panics_total", &[], 1.0).await;
    srv.wait_metric("wssedge_refusals_total", &[("reason", "panic")], 1.0)
        .await;
    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1011"), ("side", "server")],
        1.0,
    )
    .await;
}
