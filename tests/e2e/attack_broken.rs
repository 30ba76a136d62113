//! Clients that break off instead of closing: a TCP half-close (FIN) after the upgrade with no
//! close frame and no close_notify, and a reset in the middle of a frame. Each is closed at
//! once (no connection, buffer or timer left behind, no CPU spent on a socket that reads EOF
//! forever) and counted as 1006 from the client, as RFC 6455 names a close without a frame.

use std::os::fd::AsRawFd;

use crate::harness::*;

/// `shutdown(2)` on the client's TCP socket under its TLS stream: the kernel sends a FIN (or,
/// after SO_LINGER 0 and close, a RST) with no TLS or WebSocket goodbye.
fn shutdown_write(fd: i32) {
    // SAFETY: `fd` is the test's own connected socket, open for the call (its stream lives).
    let rc = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
    assert_eq!(rc, 0, "shutdown(SHUT_WR)");
}

/// The one connection is gone with nothing left behind, counted as 1006 from the client.
async fn expect_gone_as_1006(srv: &Server) {
    srv.wait_metric_eq("wssedge_connections", &[("state", "open")], 0.0)
        .await;
    srv.wait_metric_eq("wssedge_buffered_bytes", &[], 0.0).await;
    srv.wait_metric_eq("wssedge_read_buffers_held", &[], 0.0)
        .await;
    let closes = srv
        .metric(
            "wssedge_close_codes_total",
            &[("code", "1006"), ("side", "client")],
        )
        .await;
    assert_eq!(closes, 1.0);
}

/// A client that sends a message and then a FIN: its message is read (and echoed, if the
/// socket still takes it), then the connection is closed and counted 1006; nothing stays.
#[tokio::test]
async fn a_half_closed_client_is_closed_and_counted_as_1006() {
    let srv = Server::start();
    let tls = srv.tls().await;
    let fd = tls.get_ref().0.as_raw_fd();
    let mut raw = srv.raw_over(tls).await;
    raw.send(&cframe(true, OP_TEXT, b"last words")).await;
    assert_eq!(raw.message().await, (OP_TEXT, b"last words".to_vec()));
    shutdown_write(fd);
    assert!(
        matches!(raw.next().await, Event::Closed),
        "the edge closes a half-closed connection"
    );
    expect_gone_as_1006(&srv).await;
}

/// A reset after half a frame: the partial frame's bytes are given back, the connection is
/// gone, 1006 is counted; a client that behaves is served as before.
#[tokio::test]
async fn a_reset_in_the_middle_of_a_frame_leaves_nothing_behind() {
    let srv = Server::start();
    let tls = srv.tls().await;
    let tcp = tls.get_ref().0;
    tcp.set_zero_linger().expect("SO_LINGER 0");
    let mut raw = srv.raw_over(tls).await;
    let big = cframe(true, OP_BINARY, &vec![7u8; 64 * 1024]);
    raw.send(&big[..big.len() / 2]).await;
    srv.wait_metric("wssedge_bytes_total", &[("direction", "in")], 32.0 * 1024.0)
        .await;
    drop(raw); // closed with SO_LINGER 0: a RST
    expect_gone_as_1006(&srv).await;
    let mut fine = srv.raw().await;
    fine.send(&cframe(true, OP_TEXT, b"next")).await;
    assert_eq!(fine.message().await, (OP_TEXT, b"next".to_vec()));
}
