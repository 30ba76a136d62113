//! Memory per idle upgraded connection, kTLS against userspace TLS. kTLS moves the record layer
//! into the kernel, so the figure is the server's RSS **plus** kernel memory: TCP socket
//! buffers (`/proc/net/sockstat`) and slab (`/proc/meminfo`), where the kernel's TLS contexts
//! and cipher state live. Kernel figures include the client's sockets, the same in both modes.
//! Timings in the guest are emulated; memory is not.

use std::fmt::Write as _;
use std::time::Duration;

use crate::harness::*;
use crate::kernel::*;

/// Idle connections per mode: enough that what they keep outweighs the pages the allocator
/// already holds from transient handshake state (with 200, kTLS's ~2.6 KB per connection fit
/// entirely into those pages and RSS did not move); within the guest's 1024 open files.
const IDLE: usize = 800;
/// sockstat counts TCP memory in pages (x86_64 guest).
const PAGE: i64 = 4096;

#[tokio::test]
async fn ktls_holds_less_memory_per_idle_connection_than_userspace() {
    if !ktls_kernel_or_skip() {
        return;
    }
    let ktls = idle_memory("required").await;
    let userspace = idle_memory("off").await;
    report(&[("ktls", &ktls), ("userspace", &userspace)]);
    assert!(
        ktls.rss < userspace.rss,
        "server RSS per idle connection is not lower under kTLS ({} B) than under userspace TLS \
         ({} B): is the rustls state dropped after the offload?",
        ktls.rss,
        userspace.rss
    );
}

/// Bytes per connection (signed: a delta can dip below zero in noise).
#[derive(Debug)]
struct PerConnection {
    rss: i64,
    sockmem: i64,
    slab: i64,
}

impl PerConnection {
    fn total(&self) -> i64 {
        self.rss + self.sockmem + self.slab
    }
}

/// Starts a server with `ktls = mode`, warms it up with one connection, then opens `IDLE`
/// upgraded connections (one echo each, then idle) and measures what they added.
async fn idle_memory(mode: &str) -> PerConnection {
    let srv = ServerBuilder::new()
        .config(&format!("[tls]\nktls = \"{mode}\"\n"))
        .start();
    let base = OffloadBaseline::take(&srv).await;
    // The first connection pays for lazily built state (pools, the TLS config's caches).
    drop(idle_connection(&srv, 0).await);
    wait_until_open(&srv, 0).await;
    let before = settled_snapshot(srv.proc.pid()).await;

    let mut held = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        held.push(idle_connection(&srv, i).await);
    }
    wait_until_open(&srv, IDLE).await;
    let after = settled_snapshot(srv.proc.pid()).await;

    // The figures only mean something if the mode did what it says, for every connection.
    let conns = IDLE as u64 + 1;
    match mode {
        "required" => base.assert_offloaded(&srv, conns).await,
        _ => base.assert_userspace(&srv, conns).await,
    }
    drop(held);
    after.per_connection_since(&before, IDLE)
}

/// An upgraded connection that has echoed one message; idle from then on.
async fn idle_connection(srv: &Server, i: usize) -> RawWs {
    let mut raw = srv.raw().await;
    let payload = (i as u32).to_be_bytes();
    raw.send(&cframe(true, OP_BINARY, &payload)).await;
    assert_eq!(raw.message().await, (OP_BINARY, payload.to_vec()));
    raw
}

/// Waits (bounded) until the server holds exactly `n` open connections and no read buffer.
async fn wait_until_open(srv: &Server, n: usize) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let body = srv.metrics().await;
        let open = metric_sum(&body, "wssedge_connections", &[("state", "open")]);
        let buffers = metric_sum(&body, "wssedge_read_buffers_held", &[]);
        if open == n as f64 && buffers == 0.0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server shows {open} open connections and {buffers} read buffers, expected {n} and 0"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Server RSS and the kernel's TCP and slab memory, in bytes.
#[derive(Debug)]
struct Snapshot {
    rss: i64,
    sockmem: i64,
    slab: i64,
}

impl Snapshot {
    fn take(pid: u32) -> Snapshot {
        Snapshot {
            rss: kib_field(&format!("/proc/{pid}/status"), "VmRSS:") * 1024,
            sockmem: tcp_mem_pages() * PAGE,
            slab: kib_field("/proc/meminfo", "Slab:") * 1024,
        }
    }

    fn per_connection_since(&self, before: &Snapshot, conns: usize) -> PerConnection {
        let n = conns as i64;
        PerConnection {
            rss: (self.rss - before.rss) / n,
            sockmem: (self.sockmem - before.sockmem) / n,
            slab: (self.slab - before.slab) / n,
        }
    }
}

/// Lets deferred frees (RCU, TIME_WAIT of the warm-up connection, allocator purges) land first.
async fn settled_snapshot(pid: u32) -> Snapshot {
    tokio::time::sleep(Duration::from_millis(500)).await;
    Snapshot::take(pid)
}

/// A `Name:   12345 kB` field of a /proc file.
fn kib_field(path: &str, name: &str) -> i64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {path}"))
}

/// `TCP: inuse 5 orphan 0 tw 0 alloc 7 mem 1` → the `mem` pages.
fn tcp_mem_pages() -> i64 {
    let text = std::fs::read_to_string("/proc/net/sockstat").expect("read /proc/net/sockstat");
    let tcp = text
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .expect("TCP line in sockstat");
    let fields: Vec<&str> = tcp.split_whitespace().collect();
    fields
        .windows(2)
        .find(|w| w[0] == "mem")
        .and_then(|w| w[1].parse().ok())
        .unwrap_or_else(|| panic!("no TCP mem in {tcp:?}"))
}

/// The table, visible without `--nocapture`, and in `$WSSEDGE_VMTEST_OUT/memory.txt` for the
/// vmtest report when that is set.
fn report(rows: &[(&str, &PerConnection)]) {
    let mut table = format!(
        "memory per idle connection ({IDLE} upgraded, one echo each), bytes:\n\
         {:<10} {:>10} {:>13} {:>10} {:>11}\n",
        "mode", "rss/conn", "sockmem/conn", "slab/conn", "total/conn"
    );
    for (mode, m) in rows {
        let _ = writeln!(
            table,
            "{mode:<10} {:>10} {:>13} {:>10} {:>11}",
            m.rss,
            m.sockmem,
            m.slab,
            m.total()
        );
    }
    report_finding("memory.txt", &table);
}
