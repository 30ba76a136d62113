//! The read-only admin HTTP endpoint: health, readiness and Prometheus metrics.

use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

#[tokio::test]
async fn health_and_readiness() {
    let srv = Server::start();
    let (st, body) = http_get(srv.admin, "/healthz").await;
    assert_eq!(st, 200, "/healthz: {body}");
    // Ready once the cores serve; allow a moment after the start line.
    let t0 = std::time::Instant::now();
    loop {
        let (st, body) = http_get(srv.admin, "/readyz").await;
        if st == 200 {
            break;
        }
        assert!(
            t0.elapsed() < WAIT,
            "/readyz still {st} after {WAIT:?}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (st, _) = http_get(srv.admin, "/no-such-page").await;
    assert_eq!(st, 404, "unknown admin path");
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_traffic() {
    let srv = Server::start();
    let body = srv.metrics().await;
    for name in [
        "wssedge_connections_accepted_total",
        "wssedge_handshakes_total",
        "wssedge_frames_total",
        "wssedge_bytes_total",
        "wssedge_panics_total",
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "no TYPE line for {name} in:\n{body}"
        );
    }
    assert!(
        body.contains("# TYPE wssedge_connections gauge"),
        "wssedge_connections gauge missing:\n{body}"
    );
    assert_eq!(metric_sum(&body, "wssedge_panics_total", &[]), 0.0);

    let mut ws = srv.ws().await;
    let payload = pattern(5000);
    assert_eq!(
        echo(&mut ws, Message::binary(payload.clone())).await,
        Message::binary(payload)
    );
    srv.wait_metric("wssedge_connections_accepted_total", &[], 1.0)
        .await;
    srv.wait_metric("wssedge_handshakes_total", &[("result", "ok")], 1.0)
        .await;
    srv.wait_metric("wssedge_frames_total", &[("direction", "in")], 1.0)
        .await;
    srv.wait_metric("wssedge_frames_total", &[("direction", "out")], 1.0)
        .await;
    srv.wait_metric("wssedge_bytes_total", &[("direction", "in")], 5000.0)
        .await;
    srv.wait_metric("wssedge_bytes_total", &[("direction", "out")], 5000.0)
        .await;
    // One open connection is visible in the gauge (whatever its state label says).
    let open = srv.metric("wssedge_connections", &[]).await;
    assert!(
        open >= 1.0,
        "wssedge_connections = {open} with one open connection"
    );

    within(WAIT, "close", ws.close(None)).await.unwrap();
    drop(ws);
    srv.wait_metric("wssedge_close_codes_total", &[("side", "client")], 1.0)
        .await;
}
