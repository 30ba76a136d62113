//! Issue 12, the operator's side of an attack: what a client flood does to the audit trail when
//! its disk is full (item 6), and who `wssedge ctl` and the control socket trust (item 9).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

use crate::audit::{files_of, verify};
use crate::harness::*;

// ---------------------------------------------------------------------------------------------
// Item 6: audit back-pressure stays bounded
// ---------------------------------------------------------------------------------------------

/// A small tmpfs mounted on a fresh directory: a disk that can really be filled. Unmounted
/// (lazily: the server may still hold its files open) when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` when this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(bytes: u64) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(dir.path())
            .output()
            .ok()?;
        if !out.status.success() {
            visible_line(&format!(
                "SKIP: cannot mount a tmpfs to fill ({}): the full-disk test needs root",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            return None;
        }
        Some(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a filler file until the filesystem says ENOSPC.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).expect("create the filler");
        let chunk = vec![0x5au8; 16 << 10];
        for _ in 0..100_000 {
            if let Err(e) = f.write_all(&chunk) {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "filling: {e}");
                return filler;
            }
        }
        panic!("the tmpfs never filled up");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// The server's resident set, from /proc/PID/status (kB).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn records_of(live: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for f in files_of(live) {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.split_inclusive('\n') {
            if let Some(line) = line.strip_suffix('\n') {
                out.push(serde_json::from_str(line).expect("JSON record"));
            }
        }
    }
    out
}

/// How many connections the flood makes while the writer is stalled.
const FLOOD: usize = 20_000;
/// Concurrent connectors of the flood.
const CONNECTORS: usize = 16;

/// Item 6. Writer stalled on a full disk; 20k connects are each refused `audit_backpressure`
/// and counted, yet the core's queue and the process stay the same size; once space is back
/// the trail gets ONE summary record carrying the count, and verifies.
///
/// Before the fix: every refusal queued its own record — `wssedge_audit_queue_depth` went from
/// 32 to ~20 000 and RSS grew by several MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_against_a_full_audit_disk_is_counted_not_queued() {
    let Some(disk) = SmallDisk::mount(1 << 20) else {
        return;
    };
    let keys = tempfile::tempdir().expect("tempdir");
    let key = keys.path().join("audit.key");
    write_private(&key, &pattern(48));
    let live = disk.path().join("audit.jsonl");
    // 64 records per core, refusing from 32 on: the mark is reached with a few connections.
    let mut srv = ServerBuilder::new()
        .config(&format!(
            "[audit]\npath = {}\nkey_file = {}\nfsync_interval_ms = 0\nring_capacity = 64\nhigh_water = 0.5\n",
            toml_path(&live),
            toml_path(&key)
        ))
        .start();
    let pid = srv.proc.pid();
    let backpressure = [("reason", "audit_backpressure")];

    // The disk fills: the writer's appends fail with ENOSPC and it retries, holding the queue.
    let filler = disk.fill();
    // Connections that open and close (accept + tls_failure records) until the core refuses.
    let t0 = Instant::now();
    let mut opened = 0;
    while srv.metric("wssedge_refusals_total", &backpressure).await < 1.0 {
        for _ in 0..8 {
            let s = TcpStream::connect(srv.addr).await.expect("connect");
            drop(s);
            opened += 1;
        }
        assert!(
            opened < 2_000 && t0.elapsed() < WAIT,
            "no audit_backpressure refusal after {opened} connections with a full disk"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let depth_before = srv.metric("wssedge_audit_queue_depth", &[]).await;
    let rss_before = rss_kib(pid);
    assert!(
        srv.metric("wssedge_audit_write_errors_total", &[]).await >= 1.0,
        "the writer should be failing on the full disk"
    );

    // The flood: 20k connections, each refused before TLS.
    let flood_start = Instant::now();
    let refused_before = srv.metric("wssedge_refusals_total", &backpressure).await;
    let mut tasks = Vec::new();
    for _ in 0..CONNECTORS {
        let addr = srv.addr;
        tasks.push(tokio::spawn(async move {
            let mut closed = 0usize;
            for _ in 0..FLOOD / CONNECTORS {
                if let Ok(mut s) = TcpStream::connect(addr).await {
                    let mut buf = [0u8; 16];
                    if let Ok(Ok(0)) = tokio::time::timeout(WAIT, s.read(&mut buf)).await {
                        closed += 1;
                    }
                }
            }
            closed
        }));
    }
    let mut closed = 0;
    for t in tasks {
        closed += within(Duration::from_secs(120), "the flood", t)
            .await
            .expect("connector");
    }
    let flood_took = flood_start.elapsed();
    let refused = srv.metric("wssedge_refusals_total", &backpressure).await;
    let depth_after = srv.metric("wssedge_audit_queue_depth", &[]).await;
    let rss_after = rss_kib(pid);
    eprintln!(
        "flood: {closed} of {FLOOD} connections closed unserved in {flood_took:?}; \
         audit_backpressure {refused_before} -> {refused}; queue depth {depth_before} -> {depth_after}; \
         RSS {rss_before} kB -> {rss_after} kB"
    );
    assert!(closed >= FLOOD * 99 / 100, "{closed} of {FLOOD} closed");
    assert!(
        refused - refused_before >= closed as f64,
        "every refusal is counted in /metrics: {refused_before} -> {refused} for {closed}"
    );
    // The queue holds what it held when refusing began (the mark), give or take the records of
    // the connections still open then; it does not grow with the flood.
    assert!(
        depth_after <= depth_before + 16.0,
        "audit queue grew with the flood: {depth_before} -> {depth_after} records"
    );
    assert!(
        rss_after <= rss_before + 2048,
        "RSS grew with the flood: {rss_before} kB -> {rss_after} kB"
    );
    assert!(srv.proc.try_wait().is_none(), "the server died");

    // Space again: the writer catches up, the pressure ends, one summary is written.
    std::fs::remove_file(&filler).expect("remove the filler");
    // Nothing connects any more: the last figure is final.
    let refused_total = srv.metric("wssedge_refusals_total", &backpressure).await;
    let t1 = Instant::now();
    let records = loop {
        let records = records_of(&live);
        let summed: u64 = records
            .iter()
            .filter(|r| r["event"] == "refusal_summary" && r["reason"] == "audit_backpressure")
            .map(|r| r["count"].as_u64().unwrap_or(0))
            .sum();
        if summed as f64 >= refused_total {
            break records;
        }
        assert!(
            t1.elapsed() < Duration::from_secs(30),
            "no refusal_summary for {refused_total} refusals within 30 s of freeing the disk \
             ({} records, summaries sum to {summed}); queue depth now {}",
            records.len(),
            srv.metric("wssedge_audit_queue_depth", &[]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let summaries: Vec<&Value> = records
        .iter()
        .filter(|r| r["event"] == "refusal_summary")
        .collect();
    assert_eq!(
        summaries.len(),
        1,
        "one summary for one episode: {summaries:#?}"
    );
    let s = summaries[0];
    eprintln!("summary: {s}");
    assert_eq!(s["reason"], "audit_backpressure", "{s}");
    assert_eq!(s["count"].as_u64(), Some(refused_total as u64), "{s}");
    let (from, to) = (
        s["from"].as_str().expect("from"),
        s["to"].as_str().expect("to"),
    );
    assert!(from <= to && to <= s["ts"].as_str().unwrap(), "{s}");
    assert_eq!(s["peers"][0]["ip"], "127.0.0.1", "{s}");
    assert_eq!(
        s["peers"][0]["refusals"].as_u64(),
        Some(refused_total as u64),
        "{s}"
    );
    assert!(
        !records
            .iter()
            .any(|r| r["event"] == "refusal" && r["reason"] == "audit_backpressure"),
        "no per-connection audit_backpressure record: the summary stands for them"
    );

    // Stop cleanly: the sealed trail verifies from its first record to the seal.
    // SAFETY: kill(2) with the pid of the child this test started and still owns (not reaped).
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let status = srv
        .proc
        .exited_within(Duration::from_secs(15))
        .await
        .expect("the edge stops within 15 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", srv.proc.stderr());
    let out = verify(&key, &files_of(&live)).await;
    assert_eq!(out.code, Some(0), "the trail verifies: {out:#?}");
}
