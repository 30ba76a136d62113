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

use crate::backend::{Backend, Mode};
use crate::harness::*;
use crate::proxy::proxy_config;

const MIB: usize = 1 << 20;

/// Clients held open one after another, each queueing 8 MiB somewhere in the edge.
const CLIENTS: usize = 32;
const SIZE: usize = 8 * MIB;
/// The per-core budget of these tests (one core).
const BUDGET: usize = 32 * MIB;

/// One core with the test budget, a 20 s write timeout (nothing is a slow consumer here) and
/// small socket buffers; proxying to `backend` when given.
fn budget_server(backend: Option<&Backend>) -> Server {
    let limits = format!(
        "[limits]\nmax_buffered_bytes_per_core = {BUDGET}\nwrite_timeout_ms = 20000\n\
         socket_send_buffer_bytes = 65536\nsocket_recv_buffer_bytes = 65536\n"
    );
    let config = match backend {
        Some(b) => proxy_config(&[b.url("/base")], &[], &limits),
        None => limits,
    };
    ServerBuilder::new().cores(1).config(&config).start()
}

/// What the edge held while the clients were held: the highest `wssedge_buffered_bytes`, the
/// highest RSS above the start, and the connections closed for the budget.
struct Held {
    buffered: f64,
    rss_growth: u64,
    closed: f64,
}

/// Opens [`CLIENTS`] connections with `open` (each leaves its 8 MiB queued in the edge and is
/// kept open, unread), sampling the gauge and RSS after each and for half a second after the
/// last; prints what it saw under `what`.
async fn hold_clients<F, Fut>(srv: &Server, what: &str, mut open: F) -> Held
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = RawWs>,
{
    let pid = srv.proc.pid();
    let rss0 = vm_rss_bytes(pid).expect("VmRSS");
    let mut rss_max = rss0;
    let mut buffered: f64 = 0.0;
    let mut held = Vec::new();
    let sample = async |rss_max: &mut u64, buffered: &mut f64| {
        *buffered = buffered.max(srv.metric("wssedge_buffered_bytes", &[]).await);
        if let Some(r) = vm_rss_bytes(pid) {
            *rss_max = (*rss_max).max(r);
        }
    };
    for i in 0..CLIENTS {
        held.push(open(i).await);
        sample(&mut rss_max, &mut buffered).await;
    }
    let settle = Instant::now();
    while settle.elapsed() < Duration::from_millis(500) {
        sample(&mut rss_max, &mut buffered).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = srv
        .metric("wssedge_refusals_total", &[("reason", "buffer_budget")])
        .await;
    let rss_growth = rss_max.saturating_sub(rss0);
    visible_line(&format!(
        "{CLIENTS} clients x 8 MiB {what}: RSS +{} MiB, buffered_bytes peak {} MiB, {closed} \
         closed 1013 buffer_budget (budget {} MiB)",
        rss_growth >> 20,
        buffered as u64 >> 20,
        BUDGET >> 20
    ));
    drop(held);
    Held {
        buffered,
        rss_growth,
        closed,
    }
}

/// What every test here asserts: the queued bytes were counted (the gauge saw at least half a
/// message), the budget closed someone, and the RSS grew by a few budgets' worth, however many
/// clients — not 8 MiB per client (before the fix: +334 to +342 MiB for these 32 clients). The
/// budget counts bytes, not allocations: a receive buffer grown by doubling holds up to twice
/// its length, and the connection that trips the budget holds its message until it is closed.
fn assert_bounded(h: &Held, what: &str) {
    assert!(
        h.buffered >= (SIZE / 2) as f64,
        "{what}: the queued bytes were not counted: wssedge_buffered_bytes peaked at {}",
        h.buffered
    );
    assert!(
        h.buffered <= (BUDGET + SIZE + 2 * MIB) as f64,
        "{what}: buffered {} beyond the budget",
        h.buffered
    );
    assert!(
        h.closed >= 1.0,
        "{what}: no connection was closed for the budget"
    );
    let bound = 3 * BUDGET + 64 * MIB;
    assert!(
        h.rss_growth < bound as u64,
        "{what}: RSS grew by {} MiB (bound {} MiB)",
        h.rss_growth >> 20,
        bound >> 20
    );
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
    let srv = budget_server(None);
    let message = big_message(SIZE);
    let held = hold_clients(&srv, "echoes never read", |_| async {
        let mut ws = srv.raw().await;
        // The server reads it all (nothing is queued for this client yet); it never reads back.
        ws.send_lossy(&message).await;
        ws
    })
    .await;
    assert_bounded(&held, "echo");
}

/// Proxy, upstream → client: each client's upstream sends one 8 MiB message the client never
/// reads. The message is relayed piece by piece as the client's socket takes it; what waits
/// counts against the budget.
#[tokio::test]
async fn upstream_messages_a_client_never_reads_count_against_the_core_budget() {
    let backend = Backend::start(Mode::Flood {
        count: 1,
        size: SIZE,
    })
    .await;
    let srv = budget_server(Some(&backend));
    let held = hold_clients(&srv, "from the upstream, never read", |i| {
        let (srv, backend) = (&srv, &backend);
        async move {
            let (_, ws) = expect_upgraded(srv, &ws_request("/p/feed", &[])).await;
            backend
                .wait_session(i, "the upstream's flood", |s| s.flood_done)
                .await;
            ws
        }
    })
    .await;
    assert_bounded(&held, "upstream to client");
}

/// Proxy, client → upstream: clients send 8 MiB each to an upstream that never reads. Before,
/// each message was masked whole into the upstream's write queue; now the masking follows the
/// upstream socket's room and the client's reads pause at the cap.
#[tokio::test]
async fn messages_to_an_upstream_that_never_reads_stay_under_the_cap() {
    let backend = Backend::start(Mode::Stall).await;
    let srv = budget_server(Some(&backend));
    let message = big_message(SIZE);
    let held = hold_clients(&srv, "to an upstream that never reads", |_| {
        let (srv, message) = (&srv, &message);
        async move {
            let (_, mut ws) = expect_upgraded(srv, &ws_request("/p/up", &[])).await;
            // Bounded: once the edge stops reading, this write cannot finish; that is the point.
            let _ = tokio::time::timeout(Duration::from_millis(300), send_all(&mut ws.wr, message))
                .await;
            ws
        }
    })
    .await;
    assert_bounded(&held, "client to upstream");
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
