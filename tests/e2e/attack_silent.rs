//! Sockets that never speak, tried as an attacker would: they must not lock out the clients
//! that do.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};

use crate::harness::*;

/// A TCP connection from `from` (a loopback address) that sends nothing.
async fn silent_from(from: Ipv4Addr, to: SocketAddr) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::from((from, 0))).ok()?;
    socket.connect(to).await.ok()
}

/// 16 loopback addresses keep opening silent sockets — far more than the core's
/// `max_silent_connections`, and more than its handshake slots — while a legitimate client
/// upgrades every 100 ms: every one of them gets its 101 (none refused
/// `max_handshakes_in_flight`, as they all were while silent sockets held the slots), the
/// oldest silent sockets are closed to make room (counted `silent_evicted`), and the core never
/// holds more silent ones than its cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_lock_out_clients_that_speak() {
    const CAP: usize = 64;
    const FLOOD: usize = 2_000;
    let srv = Server::with_config(&format!(
        "[server]\ncores = 1\n[limits]\nmax_handshakes_in_flight = 8\n\
         max_silent_connections = {CAP}\nfirst_byte_timeout_ms = 5000\n"
    ));
    let addr = srv.addr;
    // The flood: bounded in count (FLOOD) and time (WAIT), paced to last about as long as the
    // legitimate clients' 3 s; the sockets stay open until the end of the test (each one the
    // server has not closed keeps its place).
    let flood = tokio::spawn(async move {
        let started = Instant::now();
        let mut held = Vec::with_capacity(FLOOD);
        for i in 0..FLOOD {
            if started.elapsed() > WAIT {
                break;
            }
            let from = Ipv4Addr::new(127, 0, 0, 10 + (i % 16) as u8);
            if let Some(s) = silent_from(from, addr).await {
                held.push(s);
            }
            if i % 15 == 14 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        held
    });
    srv.wait_metric(
        "wssedge_refusals_total",
        &[("reason", "silent_evicted")],
        CAP as f64,
    )
    .await;
    let mut took = Vec::new();
    for i in 0..30 {
        let t0 = Instant::now();
        let (_, mut ws) = expect_upgraded(&srv, &ws_request("/", &[])).await;
        took.push(t0.elapsed());
        ws.send(&cframe(true, OP_TEXT, format!("legit {i}").as_bytes()))
            .await;
        assert_eq!(
            ws.rd.message().await,
            (OP_TEXT, format!("legit {i}").into_bytes())
        );
        let silent = srv
            .metric("wssedge_connections", &[("state", "silent")])
            .await;
        assert!(
            silent <= CAP as f64,
            "{silent} silent connections held (cap {CAP})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = within(WAIT * 2, "the flood ends", flood)
        .await
        .expect("flood task");
    took.sort();
    let evicted = srv
        .metric("wssedge_refusals_total", &[("reason", "silent_evicted")])
        .await;
    let refused = srv
        .metric(
            "wssedge_refusals_total",
            &[("reason", "max_handshakes_in_flight")],
        )
        .await;
    visible_line(&format!(
        "silent flood: {} sockets from 16 addresses, {evicted} evicted; 30/30 legitimate upgrades, \
         p50 {:?}, max {:?}",
        held.len(),
        took[took.len() / 2],
        took[took.len() - 1]
    ));
    assert_eq!(
        refused, 0.0,
        "a legitimate client was refused a handshake slot"
    );
    assert!(
        held.len() > 10 * CAP,
        "the flood opened only {} sockets",
        held.len()
    );
}
