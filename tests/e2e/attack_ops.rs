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

// ---------------------------------------------------------------------------------------------
// Item 9: whom `wssedge ctl` and the control socket trust
// ---------------------------------------------------------------------------------------------

/// The uid (and gid) of `nobody`: "another user" for these tests, which run as root.
const NOBODY: u32 = 65534;

fn running_as_root() -> bool {
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        visible_line("SKIP: acting as another uid (nobody) needs root");
    }
    root
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A directory owned by `nobody` (mode 0700) inside a temporary one it can traverse.
fn nobodys_dir() -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::tempdir().expect("tempdir");
    chmod(base.path(), 0o755);
    let dir = base.path().join("nobody");
    std::fs::create_dir(&dir).expect("mkdir");
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).expect("chown");
    chmod(&dir, 0o700);
    (base, dir)
}

/// A process this test started; killed (by its own PID) and reaped on drop.
struct Spawned(std::process::Child);

impl Spawned {
    fn new(child: std::process::Child) -> Self {
        Spawned(child)
    }

    /// Reads its stdout until a line starts with `prefix` (bounded by `WAIT`).
    fn wait_for_line(&mut self, prefix: &str) {
        use std::io::BufRead as _;
        let out = self.0.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return,
                Ok(_) => {}
                Err(e) => {
                    let _ = self.0.kill();
                    let mut err = String::new();
                    if let Some(mut e2) = self.0.stderr.take() {
                        use std::io::Read as _;
                        let _ = e2.read_to_string(&mut err);
                    }
                    panic!("no `{prefix}` line ({e}); stderr:\n{err}");
                }
            }
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Item 9 (a). A wssedge of another user (`nobody`) serves the control socket at the path:
/// `wssedge ctl` (root) checks who listens there (SO_PEERCRED) and refuses to talk to it,
/// exit 2, naming the uid it found.
///
/// Before the fix: ctl sent `status` to it and printed its answer, exit 0.
#[tokio::test]
async fn ctl_refuses_a_control_socket_served_by_another_uid() {
    use std::os::unix::process::CommandExt as _;
    if !running_as_root() {
        return;
    }
    let (_base, dir) = nobodys_dir();
    let socket = dir.join("ctl.sock");
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--cores", "1", "--state-dir"])
        .arg(dir.join("state"))
        .arg("--control")
        .arg(&socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: runs in the forked child before exec and only makes async-signal-safe calls
    // (setgroups, setgid, setuid), touching no memory but constants.
    unsafe {
        cmd.pre_exec(|| {
            let ok = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(NOBODY) == 0
                && libc::setuid(NOBODY) == 0;
            if ok {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let mut other = Spawned::new(cmd.spawn().expect("spawn wssedge as nobody"));
    other.wait_for_line("listening on wss://");
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&socket).expect("socket"));
    assert_eq!(owner, NOBODY, "the socket is the other user's");

    let out = ctl(&socket, &["status"]).await;
    assert_eq!(
        out.code,
        Some(2),
        "ctl must refuse a server of another uid: {out:#?}"
    );
    assert!(
        out.stderr.contains("uid 65534") && out.stderr.contains(socket.to_str().unwrap()),
        "the refusal names the path and the uid found: {out:#?}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing from that server is shown: {out:#?}"
    );
    assert!(
        other.0.try_wait().expect("try_wait").is_none(),
        "the other server still runs"
    );
}

/// Item 9 (b). The server refuses a control socket in a directory others can write to (0777,
/// sticky 1777 like /tmp, group-writable 0770): exit 2 naming the directory and its mode, and
/// no socket file left there. In a 0700 directory it starts and `ctl` works.
///
/// Before the fix: it started in all of them.
#[tokio::test]
async fn a_control_socket_in_a_shared_directory_is_refused() {
    for mode in [0o777, 0o1777, 0o770] {
        let base = tempfile::tempdir().expect("tempdir");
        let dir = base.path().join("shared");
        std::fs::create_dir(&dir).expect("mkdir");
        chmod(&dir, mode);
        let socket = dir.join("ctl.sock");
        let (status, _out, err) = ServerBuilder::new()
            .arg("--control")
            .arg(socket.to_str().unwrap())
            .run_expect_exit();
        assert_eq!(status.code(), Some(2), "mode {mode:04o}: {err}");
        let shown = format!("{mode:04o}");
        assert!(
            err.contains(dir.to_str().unwrap()) && err.contains(&shown),
            "mode {mode:04o}: the message names the directory and its mode: {err}"
        );
        assert!(!socket.exists(), "mode {mode:04o}: no socket left behind");
    }
    // A private directory inside a shared, non-sticky one: its parent's other writers could
    // rename it aside and put their own in its place.
    let base = tempfile::tempdir().expect("tempdir");
    let shared = base.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    let dir = shared.join("private");
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o700);
    chmod(&shared, 0o777);
    let (status, _out, err) = ServerBuilder::new()
        .arg("--control")
        .arg(dir.join("ctl.sock").to_str().unwrap())
        .run_expect_exit();
    assert_eq!(status.code(), Some(2), "shared parent: {err}");
    assert!(
        err.contains(shared.to_str().unwrap()) && err.contains("0777"),
        "the message names the shared parent and its mode: {err}"
    );
    let base = tempfile::tempdir().expect("tempdir");
    let dir = base.path().join("private");
    std::fs::create_dir(&dir).expect("mkdir");
    chmod(&dir, 0o700);
    let socket = dir.join("ctl.sock");
    let _srv = ServerBuilder::new()
        .arg("--control")
        .arg(socket.to_str().unwrap())
        .start();
    let out = ctl(&socket, &["status"]).await;
    assert_eq!(out.code, Some(0), "0700 directory: {out:#?}");
}

/// Item 9 (b). A socket file of another user at the control path, nobody answering on it, is
/// not removed: the server refuses to start (exit 2, naming the owner). A stale socket of its
/// own uid is replaced as before.
///
/// Before the fix: the other user's file was unlinked and the server started.
#[tokio::test]
async fn a_foreign_socket_file_at_the_control_path_is_left_alone() {
    use std::os::unix::fs::MetadataExt as _;
    if !running_as_root() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("ctl.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    std::os::unix::fs::chown(&socket, Some(NOBODY), Some(NOBODY)).expect("chown");
    let inode = std::fs::symlink_metadata(&socket).expect("stat").ino();
    let (status, _out, err) = ServerBuilder::new()
        .arg("--control")
        .arg(socket.to_str().unwrap())
        .run_expect_exit();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("uid 65534") && err.contains(socket.to_str().unwrap()),
        "the message names the file and its owner: {err}"
    );
    assert_eq!(
        std::fs::symlink_metadata(&socket)
            .expect("still there")
            .ino(),
        inode,
        "the other user's file is untouched"
    );

    // Our own stale socket goes.
    std::os::unix::fs::chown(&socket, Some(0), Some(0)).expect("chown");
    let _srv = ServerBuilder::new()
        .arg("--control")
        .arg(socket.to_str().unwrap())
        .start();
    assert_eq!(ctl(&socket, &["status"]).await.code, Some(0));
}
