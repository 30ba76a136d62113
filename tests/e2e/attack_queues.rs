//! Issue 12, item 3: what a client or upstream that does not read can make the edge queue.
//! `max_outbound_bytes` used to be checked only before a read; then a whole message was queued
//! (encrypted, or masked toward the upstream) whatever its size, counted nowhere: 60 clients
//! each echoing 16 MiB they never read took the edge from 70 MB to 1.17 GB with
//! `wssedge_buffered_bytes` at 0. Now queued bytes count against the connection's cap and the
//! core's budget as they are queued, a large message is handed to the socket piece by piece as
//! room appears, and a connection that takes the core past its budget is closed (1013).
//!
//! Each test reads the server's RSS and its buffered-bytes gauge while the load holds, and
//! prints them (the figures the table quotes).

use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;

use crate::backend::{Backend, Mode};
use crate::harness::*;
use crate::proxy::proxy_config;

const MIB: usize = 1 << 20;

/// The most `wssedge_buffered_bytes` showed while `f` ran, sampled every 50 ms, and the most
/// RSS the server had.
struct Peak {
    buffered: f64,
    rss: u64,
}

async fn sample(srv: &Server, peak: &mut Peak) {
    let b = srv.metric("wssedge_buffered_bytes", &[]).await;
    peak.buffered = peak.buffered.max(b);
    if let Some(r) = vm_rss_bytes(srv.proc.pid()) {
        peak.rss = peak.rss.max(r);
    }
}

/// One binary message of `size` bytes as masked frames of 1 MiB (one message, several frames).
fn big_message(size: usize) -> Vec<u8> {
    let payload = pattern(size);
    let mut out = Vec::with_capacity(size + 64);
    let chunks: Vec<&[u8]> = payload.chunks(MIB).collect();
    for (i, c) in chunks.iter().enumerate() {
        let op = if i == 0 { OP_BINARY } else { OP_CONT };
        out.extend(cframe(i + 1 == chunks.len(), op, c));
    }
    out
}

/// Echo: clients one after another each send one 8 MiB message and never read. Each message
/// fits the per-core budget while it arrives; before the fix its echo then left the budget's
/// count (encrypted whole into the write queue) and the next client could do the same.
#[tokio::test]
async fn echoes_nobody_reads_count_against_the_core_budget() {
    const CLIENTS: usize = 32;
    const SIZE: usize = 8 * MIB;
    let budget = 32 * MIB;
    let srv = ServerBuilder::new()
        .cores(1)
        .config(&format!(
            "[limits]\nmax_buffered_bytes_per_core = {budget}\nwrite_timeout_ms = 20000\n\
             socket_send_buffer_bytes = 65536\nmax_outbound_bytes = 1048576\n"
        ))
        .start();
    let rss0 = vm_rss_bytes(srv.proc.pid()).expect("VmRSS");
    let mut peak = Peak {
        buffered: 0.0,
        rss: rss0,
    };
    let message = big_message(SIZE);
    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        let mut ws = srv.raw().await;
        // The server reads it all (nothing is queued for this client yet); it never reads back.
        ws.send_lossy(&message).await;
        sample(&srv, &mut peak).await;
        held.push(ws);
    }
    // Let the last echoes land, then look again.
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        sample(&srv, &mut peak).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = srv
        .metric("wssedge_refusals_total", &[("reason", "buffer_budget")])
        .await;
    let growth = peak.rss.saturating_sub(rss0);
    visible_line(&format!(
        "{CLIENTS} clients x 8 MiB echoes never read: RSS +{} MiB, buffered_bytes peak {} MiB, \
         {closed} closed 1013 buffer_budget (budget {} MiB)",
        growth >> 20,
        peak.buffered as u64 >> 20,
        budget >> 20
    ));
    assert!(
        peak.buffered >= (SIZE / 2) as f64,
        "the queued echoes were not counted: wssedge_buffered_bytes peaked at {}",
        peak.buffered
    );
    assert!(
        peak.buffered <= (budget + SIZE + 2 * MIB) as f64,
        "buffered {} beyond the budget",
        peak.buffered
    );
    assert!(closed >= 1.0, "no connection was closed for the budget");
    // The budget (twice: a payload's allocation can be up to twice its length) and the
    // allocator's slack, however many clients: not 8 MiB per client.
    let bound = 2 * budget + 64 * MIB;
    assert!(
        growth < bound as u64,
        "RSS grew by {} MiB (bound {} MiB)",
        growth >> 20,
        bound >> 20
    );
    drop(held);
}

/// Proxy, upstream → client: each client's upstream sends one 8 MiB message the client never
/// reads. The message is relayed piece by piece as the client's socket takes it; what waits
/// counts against the budget.
#[tokio::test]
async fn upstream_messages_a_client_never_reads_count_against_the_core_budget() {
    const CLIENTS: usize = 32;
    const SIZE: usize = 8 * MIB;
    let budget = 32 * MIB;
    let backend = Backend::start(Mode::Flood {
        count: 1,
        size: SIZE,
    })
    .await;
    let srv = ServerBuilder::new()
        .cores(1)
        .config(&proxy_config(
            &[backend.url("/base")],
            &[],
            &format!(
                "[limits]\nmax_buffered_bytes_per_core = {budget}\nwrite_timeout_ms = 20000\n\
                 socket_send_buffer_bytes = 65536\n"
            ),
        ))
        .start();
    let rss0 = vm_rss_bytes(srv.proc.pid()).expect("VmRSS");
    let mut peak = Peak {
        buffered: 0.0,
        rss: rss0,
    };
    let mut held = Vec::new();
    for i in 0..CLIENTS {
        let (_, ws) = expect_upgraded(&srv, &ws_request("/p/feed", &[])).await;
        backend
            .wait_session(i, "the upstream's flood", |s| s.flood_done)
            .await;
        sample(&srv, &mut peak).await;
        held.push(ws);
    }
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        sample(&srv, &mut peak).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = srv
        .metric("wssedge_refusals_total", &[("reason", "buffer_budget")])
        .await;
    let growth = peak.rss.saturating_sub(rss0);
    visible_line(&format!(
        "{CLIENTS} clients x 8 MiB from the upstream, never read: RSS +{} MiB, buffered_bytes \
         peak {} MiB, {closed} closed 1013 buffer_budget",
        growth >> 20,
        peak.buffered as u64 >> 20
    ));
    assert!(
        peak.buffered >= (SIZE / 2) as f64,
        "the relayed messages were not counted: wssedge_buffered_bytes peaked at {}",
        peak.buffered
    );
    assert!(closed >= 1.0, "no connection was closed for the budget");
    let bound = 2 * budget + 64 * MIB;
    assert!(
        growth < bound as u64,
        "RSS grew by {} MiB (bound {} MiB)",
        growth >> 20,
        bound >> 20
    );
    drop(held);
}

/// Proxy, client → upstream: clients send 8 MiB each to an upstream that never reads. Before,
/// each message was masked whole into the upstream's write queue; now the masking follows the
/// upstream socket's room and the client's reads pause at the cap.
#[tokio::test]
async fn messages_to_an_upstream_that_never_reads_stay_under_the_cap() {
    const CLIENTS: usize = 32;
    const SIZE: usize = 8 * MIB;
    let budget = 32 * MIB;
    let backend = Backend::start(Mode::Stall).await;
    let srv = ServerBuilder::new()
        .cores(1)
        .config(&proxy_config(
            &[backend.url("/base")],
            &[],
            &format!(
                "[limits]\nmax_buffered_bytes_per_core = {budget}\nwrite_timeout_ms = 20000\n\
                 socket_send_buffer_bytes = 65536\nsocket_recv_buffer_bytes = 65536\n"
            ),
        ))
        .start();
    let rss0 = vm_rss_bytes(srv.proc.pid()).expect("VmRSS");
    let mut peak = Peak {
        buffered: 0.0,
        rss: rss0,
    };
    let message = big_message(SIZE);
    let mut held = Vec::new();
    for _ in 0..CLIENTS {
        let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p/up", &[])).await;
        // Bounded: once the edge stops reading, this write cannot finish; that is the point.
        let _ = tokio::time::timeout(Duration::from_millis(300), ws.wr.write_all(&message)).await;
        sample(&srv, &mut peak).await;
        held.push(ws);
    }
    let growth = peak.rss.saturating_sub(rss0);
    visible_line(&format!(
        "{CLIENTS} clients x 8 MiB to an upstream that never reads: RSS +{} MiB, buffered_bytes \
         peak {} MiB",
        growth >> 20,
        peak.buffered as u64 >> 20
    ));
    assert!(
        peak.buffered >= (SIZE / 2) as f64,
        "the messages waiting for the upstream were not counted: wssedge_buffered_bytes peaked at {}",
        peak.buffered
    );
    let bound = 2 * budget + 64 * MIB;
    assert!(
        growth < bound as u64,
        "RSS grew by {} MiB (bound {} MiB)",
        growth >> 20,
        bound >> 20
    );
    drop(held);
}

/// Proxy: an upstream that floods pings and never reads. The edge answered every ping with a
/// pong queued for a socket that takes nothing (129 MB of pings: +286 MB RSS). Now the
/// upstream's reads pause while its queue is at the cap, and the upstream that takes nothing
/// for `write_timeout_ms` closes its client with `1014 upstream_stalled`.
#[tokio::test]
async fn an_upstream_ping_flood_that_never_reads_is_stalled_not_queued() {
    let backend = Backend::start(Mode::PingFlood { count: 20_000_000 }).await;
    let srv = ServerBuilder::new()
        .cores(1)
        .config(&proxy_config(
            &[backend.url("/base")],
            &[],
            "[limits]\nwrite_timeout_ms = 1500\nsocket_send_buffer_bytes = 65536\n\
             socket_recv_buffer_bytes = 65536\nmax_outbound_bytes = 262144\n",
        ))
        .start();
    let rss0 = vm_rss_bytes(srv.proc.pid()).expect("VmRSS");
    let (_, mut ws) = expect_upgraded(&srv, &ws_request("/p/pings", &[])).await;
    let t0 = Instant::now();
    let mut rss_max = rss0;
    let close = loop {
        if let Some(r) = vm_rss_bytes(srv.proc.pid()) {
            rss_max = rss_max.max(r);
        }
        match tokio::time::timeout(Duration::from_millis(100), ws.next()).await {
            Ok(Event::Frame(f)) if f.opcode == OP_CLOSE => break Some(f),
            Ok(Event::Frame(_)) => {}
            Ok(Event::Closed) => break None,
            Err(_) => {}
        }
        if t0.elapsed() > Duration::from_secs(8) {
            break None;
        }
    };
    let sent = backend.sessions()[0].flood_sent;
    let growth = rss_max.saturating_sub(rss0);
    visible_line(&format!(
        "upstream ping flood, never reading: {sent} pings written, RSS +{} MiB, then {:?}",
        growth >> 20,
        close.as_ref().map(|f| (f.close_code(), f.close_reason()))
    ));
    let close = close.expect("the client was never told that its upstream stalled");
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1014), "upstream_stalled")
    );
    assert!(
        growth < (32 * MIB) as u64,
        "RSS grew by {} MiB while the upstream flooded pings",
        growth >> 20
    );
}
