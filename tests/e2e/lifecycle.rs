//! The edge's lifecycle: graceful drain (SIGTERM, SIGINT, `wssedge ctl drain`), reload
//! (SIGHUP, `wssedge ctl reload`) and restart handover (`wssedge ctl restart`, SIGUSR2).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::audit::{trail, verify, Trail};
use crate::harness::*;

/// Sessions open when a drain starts.
const SESSIONS: usize = 6;

/// Handshake timeout of the drain tests: a client holding a TCP connection without a TLS byte
/// keeps the drain going this long (the drain lets handshakes run to their timeout), which
/// leaves time to see `/readyz` answer 503.
const HANDSHAKE_TIMEOUT_MS: u64 = 2500;

fn signal(srv: &Server, signal: libc::c_int) {
    let pid = srv.proc.pid() as libc::pid_t;
    // SAFETY: kill(2) with the pid of the child this test started and still owns (not reaped).
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// A server with two cores, an audit trail and a control socket.
fn drained_server(extra: &str) -> (Server, Trail, PathBuf) {
    let t = trail();
    let socket = t.dir.path().join("ctl.sock");
    let srv = ServerBuilder::new()
        .cores(2)
        .config(&format!(
            "[limits]\nhandshake_timeout_ms = {HANDSHAKE_TIMEOUT_MS}\n\n{}\n{extra}",
            t.section(None)
        ))
        .arg("--control")
        .arg(socket.to_str().expect("UTF-8 path"))
        .start();
    (srv, t, socket)
}

/// `n` echoing sessions (the first message `LABEL I`), each with a task waiting for its close
/// frame.
async fn open_sessions(srv: &Server, n: usize, label: &str) -> Vec<tokio::task::JoinHandle<Frame>> {
    let mut watches = Vec::new();
    for i in 0..n {
        let mut ws = srv.raw().await;
        expect_echo(&mut ws, &format!("{label} {i}")).await;
        let RawWs { mut rd, wr } = ws;
        watches.push(tokio::spawn(async move {
            let _keep_writer = wr;
            rd.expect_close_frame().await
        }));
    }
    watches
}

/// Like [`open_sessions`], but each client answers the close frame as a polite client does and
/// then expects the TCP close: the connection must end, whichever process sent the close (a
/// descriptor inherited across a restart would keep it open).
async fn open_sessions_until_eof(
    srv: &Server,
    n: usize,
    label: &str,
) -> Vec<tokio::task::JoinHandle<Frame>> {
    let mut watches = Vec::new();
    for i in 0..n {
        let mut ws = srv.raw().await;
        expect_echo(&mut ws, &format!("{label} {i}")).await;
        watches.push(tokio::spawn(async move {
            let close = ws.rd.expect_close_frame().await;
            let code = close.close_code().unwrap_or(1000);
            let _ = ws
                .send_lossy(&cframe(true, OP_CLOSE, &close_payload(code, "")))
                .await;
            if let Event::Frame(f) = ws.next().await {
                panic!("a frame after the close frame: {f:?}");
            }
            close
        }));
    }
    watches
}

/// Every watched session gets the close frame `code` `reason`; `what` names the wait.
async fn expect_closed_with(
    watches: Vec<tokio::task::JoinHandle<Frame>>,
    code: u16,
    reason: &str,
    what: &str,
) {
    for w in watches {
        let frame = within(WAIT, what, w).await.expect("reader task");
        assert_eq!(
            (frame.close_code(), frame.close_reason().as_str()),
            (Some(code), reason),
            "{what}"
        );
    }
}

async fn readyz(srv: &Server) -> (u16, String) {
    http_get(srv.admin, "/readyz").await
}

/// Config reloads (accepted or refused) on record in the trail.
fn config_reloads(records: &[Value]) -> usize {
    records
        .iter()
        .filter(|r| r["event"] == "reload" && r["what"] == "config")
        .count()
}

/// Waits for the process to exit (bounded) and returns its exit code.
async fn exit_code(srv: &mut Server, within: Duration) -> Option<i32> {
    let status = srv.proc.exited_within(within).await.unwrap_or_else(|| {
        panic!(
            "the edge did not exit within {within:?}; stderr:\n{}",
            srv.proc.stderr()
        )
    });
    status.code()
}

/// The drain as the outside sees it once started: readiness off while it runs, every session
/// closed with 1001 "going_away", exit 0, an intact trail with the drain's record.
async fn expect_drained(
    mut srv: Server,
    t: &Trail,
    watches: Vec<tokio::task::JoinHandle<Frame>>,
    trigger: &str,
) {
    // The signal (or command) reaches the main thread asynchronously: poll, briefly.
    let asked = Instant::now();
    loop {
        let (status, body) = readyz(&srv).await;
        if (status, body.as_str()) == (503, "draining\n") {
            break;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "readyz while draining: {status} {body:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = srv.metrics().await;
    assert_eq!(
        metric_sum(&metrics, "wssedge_draining", &[]),
        1.0,
        "{metrics}"
    );
    expect_closed_with(
        watches,
        1001,
        "going_away",
        "close frame of a drained session",
    )
    .await;
    let started = Instant::now();
    let code = exit_code(&mut srv, WAIT).await;
    assert_eq!(code, Some(0), "stderr:\n{}", srv.proc.stderr());
    visible_line(&format!(
        "lifecycle: {trigger} drain exited {:?} after the last close",
        started.elapsed()
    ));
    let out = verify(&t.key, &t.files()).await;
    assert_eq!(out.code, Some(0), "the drained trail verifies: {out:#?}");
    let records = t.records();
    let drain: Vec<&Value> = records.iter().filter(|r| r["event"] == "drain").collect();
    assert_eq!(drain.len(), 1, "one drain record: {records:#?}");
    assert_eq!(drain[0]["trigger"], trigger);
    assert_eq!(drain[0]["code"], 1001);
    assert_eq!(drain[0]["sessions_closed"], SESSIONS as u64);
    let closes = records
        .iter()
        .filter(|r| r["event"] == "close" && r["code"] == 1001)
        .count();
    assert_eq!(closes, SESSIONS, "each drained session's close is audited");
    assert_eq!(records.last().expect("records")["event"], "seal");
}

#[tokio::test]
async fn sigterm_drains_every_session_with_1001_and_exits_0() {
    let (srv, t, _socket) = drained_server("");
    let watches = open_sessions(&srv, SESSIONS, "session").await;
    // A connection that never says a TLS byte: still handshaking when the drain starts.
    let _silent = tokio::net::TcpStream::connect(srv.addr).await.expect("TCP");
    let (status, _) = readyz(&srv).await;
    assert_eq!(status, 200, "ready before the drain");
    signal(&srv, libc::SIGTERM);
    expect_drained(srv, &t, watches, "SIGTERM").await;
}

#[tokio::test]
async fn ctl_drain_drains_every_session_with_1001_and_exits_0() {
    let (srv, t, socket) = drained_server("");
    let watches = open_sessions(&srv, SESSIONS, "session").await;
    let _silent = tokio::net::TcpStream::connect(srv.addr).await.expect("TCP");
    let out = ctl(&socket, &["drain"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["draining"], true, "{v}");
    assert_eq!(v["drain_timeout_ms"], 5000, "{v}");
    // A second drain is refused, not queued.
    let again = ctl(&socket, &["drain"]).await;
    assert_eq!(again.code, Some(1), "{again:#?}");
    assert!(again.stderr.contains("already draining"), "{again:#?}");
    expect_drained(srv, &t, watches, "control").await;
    let records = t.records();
    assert!(
        records
            .iter()
            .any(|r| r["event"] == "control" && r["command"] == "drain" && r["ok"] == true),
        "the drain command is audited"
    );
}

/// New connections during a drain are not served; the edge stops at its deadline even with
/// a client that never finishes its handshake and a session that never answers the close.
#[tokio::test]
async fn the_drain_deadline_bounds_the_exit() {
    let (mut srv, t, _socket) = drained_server("[server]\ndrain_timeout_ms = 800\n");
    let _silent = tokio::net::TcpStream::connect(srv.addr).await.expect("TCP");
    let mut ws = srv.raw().await;
    expect_echo(&mut ws, "before").await;
    let began = Instant::now();
    signal(&srv, libc::SIGINT);
    assert_eq!(ws.expect_close().await, Some(1001));
    let code = exit_code(&mut srv, WAIT).await;
    let took = began.elapsed();
    assert_eq!(code, Some(0), "stderr:\n{}", srv.proc.stderr());
    assert!(
        took < Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        "the 800 ms drain deadline ends the wait for the silent handshake, took {took:?}"
    );
    let drain = t
        .records()
        .into_iter()
        .find(|r| r["event"] == "drain")
        .expect("drain record");
    assert_eq!(drain["trigger"], "SIGINT");
    assert!(drain["forced"].as_u64() >= Some(1), "{drain}");
    drop(ws);
}

// ---------------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------------

/// Replaces a file the way a certificate deployment does: write aside, rename over.
fn replace_file(path: &std::path::Path, contents: &str) {
    let aside = path.with_extension("new");
    std::fs::write(&aside, contents).expect("write");
    std::fs::rename(&aside, path).expect("rename");
}

/// Whether a fresh client trusting only `ca` completes a TLS handshake.
async fn handshake_trusting(srv: &Server, ca: &std::path::Path) -> std::io::Result<()> {
    try_tls_connect(srv.addr, client_config_trusting(ca, &[]))
        .await
        .map(drop)
}

#[tokio::test]
async fn sighup_rotates_the_certificate_for_new_clients_while_an_old_session_echoes() {
    let t = trail();
    let dir = t.dir.path();
    let (chain_a, key_a, ca_a) = issue_localhost_chain("lifecycle CA A");
    let (chain_b, key_b, ca_b) = issue_localhost_chain("lifecycle CA B");
    let (cert, key) = (dir.join("edge.pem"), dir.join("edge.key"));
    let (ca_a_path, ca_b_path) = (dir.join("ca-a.pem"), dir.join("ca-b.pem"));
    std::fs::write(&ca_a_path, ca_a).unwrap();
    std::fs::write(&ca_b_path, ca_b).unwrap();
    replace_file(&cert, &chain_a);
    replace_file(&key, &key_a);
    let socket = dir.join("ctl.sock");
    let srv = ServerBuilder::new()
        .config(&format!(
            "[tls]\ncert = {}\nkey = {}\n\n{}",
            toml_path(&cert),
            toml_path(&key),
            t.section(None)
        ))
        .arg("--control")
        .arg(socket.to_str().expect("UTF-8"))
        .start();
    let old_tls = tls_connect(srv.addr, client_config_trusting(&ca_a_path, &[])).await;
    let mut old = srv.raw_over(old_tls).await;
    expect_echo(&mut old, "before the rotation").await;

    // Rotate to B, SIGHUP: new clients see B (once the signal is handled), the old session
    // keeps echoing over A.
    replace_file(&cert, &chain_b);
    replace_file(&key, &key_b);
    signal(&srv, libc::SIGHUP);
    let asked = Instant::now();
    while handshake_trusting(&srv, &ca_b_path).await.is_err() {
        assert!(
            asked.elapsed() < WAIT,
            "no new handshake served with certificate B after SIGHUP:\n{}",
            srv.proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        handshake_trusting(&srv, &ca_a_path).await.is_err(),
        "a new client must no longer be served certificate A"
    );
    expect_echo(&mut old, "after the rotation").await;
    let mut new = srv
        .raw_over(tls_connect(srv.addr, client_config_trusting(&ca_b_path, &[])).await)
        .await;
    expect_echo(&mut new, "new client on B").await;

    // A broken key file: refused with the reason, B keeps serving, the sessions go on.
    replace_file(
        &key,
        "-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n",
    );
    let out = ctl(&socket, &["reload"]).await;
    assert_eq!(out.code, Some(1), "a broken key is refused: {out:#?}");
    assert!(
        out.stderr.contains("not reloaded") && out.stderr.contains("edge.key"),
        "the refusal names the file: {out:#?}"
    );
    // A certificate that does not match its key.
    replace_file(&key, &key_a);
    let out = ctl(&socket, &["reload"]).await;
    assert_eq!(out.code, Some(1), "a mismatched key is refused: {out:#?}");
    assert!(out.stderr.contains("match"), "{out:#?}");
    signal(&srv, libc::SIGHUP);
    // The signal is handled asynchronously: its (refused) reload must be on record before the
    // files change again, or it could read the next ones.
    t.wait_for("the refused SIGHUP reload", |r| config_reloads(r) >= 4)
        .await;
    handshake_trusting(&srv, &ca_b_path)
        .await
        .expect("B still serves after the refused reloads");
    expect_echo(&mut old, "old still echoes").await;
    expect_echo(&mut new, "new still echoes").await;

    // A reload that changes a fixed setting says so.
    let text = std::fs::read_to_string(srv.config_path()).unwrap();
    std::fs::write(
        srv.config_path(),
        format!("{text}\n[limits]\nidle_timeout_ms = 1000\n"),
    )
    .unwrap();
    replace_file(&key, &key_b);
    let out = ctl(&socket, &["reload"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["needs_restart"], serde_json::json!(["limits"]), "{v}");

    let records = t.wait_for("the reloads", |r| config_reloads(r) >= 5).await;
    let reloads: Vec<(bool, String)> = records
        .iter()
        .filter(|r| r["event"] == "reload" && r["what"] == "config")
        .map(|r| {
            (
                r["ok"].as_bool().unwrap(),
                r["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let shape: Vec<(bool, bool)> = reloads
        .iter()
        .map(|(ok, d)| (*ok, d.starts_with("SIGHUP")))
        .collect();
    assert_eq!(
        shape,
        [
            (true, true),
            (false, false),
            (false, false),
            (false, true),
            (true, false)
        ],
        "{reloads:#?}"
    );
    drop(old);
    drop(new);
}

// ---------------------------------------------------------------------------------------------
// Restart handover
// ---------------------------------------------------------------------------------------------

/// The successor of a restart is the old process's child, not ours; once the old process
/// exits it is re-parented. This test process becomes the child subreaper so the orphan comes
/// to us: we can wait for it (its exit code) and it never outlives the test (killed by pid).
pub(crate) struct Successor(libc::pid_t);

impl Successor {
    pub(crate) fn adopt(pid: u32) -> Successor {
        Successor(pid as libc::pid_t)
    }

    /// Waits for the successor's exit code (it must have been re-parented to us by then).
    pub(crate) fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            let mut status = 0;
            // SAFETY: waitpid on a pid we adopted as subreaper; `status` is a valid out place.
            let rc = unsafe { libc::waitpid(self.0, &mut status, libc::WNOHANG) };
            if rc == self.0 {
                self.0 = 0;
                return libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            }
            if Instant::now() >= deadline {
                panic!("the new process {} did not exit within {within:?}", self.0);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: kill(2)/waitpid(2) on the one pid this guard stands for.
            unsafe {
                libc::kill(self.0, libc::SIGKILL);
                libc::waitpid(self.0, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// What one connection attempt of the looping client saw.
#[derive(Debug, Default)]
struct LoopCounts {
    attempts: u64,
    upgraded: u64,
    echoed: u64,
    /// Closed with 1012 right after its upgrade: it landed on the old process after the
    /// handover (served, then drained like the old sessions). Must not happen: the new process
    /// starts accepting only once the old one cannot any more.
    restarted: u64,
    failures: Vec<String>,
    /// The longest attempt, connect to echo (the handover's pause shows here).
    slowest: Duration,
}

/// Connects, handshakes, upgrades and echoes in a loop until `stop` (bounded: 3000 attempts).
async fn connect_in_a_loop(
    addr: std::net::SocketAddr,
    tls: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> LoopCounts {
    use std::sync::atomic::Ordering;
    let mut c = LoopCounts::default();
    while !stop.load(Ordering::Relaxed) && c.attempts < 3000 {
        c.attempts += 1;
        let began = Instant::now();
        let tcp = match tokio::net::TcpStream::connect(addr).await {
            Ok(tcp) => tcp,
            Err(e) => {
                c.failures
                    .push(format!("attempt {}: TCP connect: {e}", c.attempts));
                continue;
            }
        };
        let local = tcp
            .local_addr()
            .map_or_else(|e| e.to_string(), |a| a.to_string());
        let stream = match try_tls_over(tcp, tls.clone()).await {
            Ok(s) => s,
            Err(e) => {
                c.failures.push(format!(
                    "attempt {} from {local}: TLS: {e}; the server's end: {}",
                    c.attempts,
                    server_end(&local).await
                ));
                continue;
            }
        };
        let outcome = tokio::time::timeout(WAIT, try_attempt_over(stream, &ws_request("/", &[])))
            .await
            .map_err(|_| std::io::Error::other("upgrade timed out"))
            .and_then(|r| r);
        let mut ws = match outcome {
            Ok(Outcome::Upgraded { ws, .. }) => ws,
            Ok(Outcome::Refused(r)) => {
                c.failures
                    .push(format!("attempt {}: refused {}", c.attempts, r.status));
                continue;
            }
            Err(e) => {
                c.failures
                    .push(format!("attempt {} from {local}: upgrade: {e}", c.attempts));
                continue;
            }
        };
        c.upgraded += 1;
        ws.send(&cframe(true, OP_TEXT, b"loop")).await;
        match ws.next().await {
            Event::Frame(f) if f.opcode == OP_TEXT && f.payload == b"loop" => {
                c.echoed += 1;
                c.slowest = c.slowest.max(began.elapsed());
            }
            Event::Frame(f) if f.close_code() == Some(1012) => c.restarted += 1,
            other => c
                .failures
                .push(format!("attempt {}: echo: {other:?}", c.attempts)),
        }
        let _ = ws
            .send_lossy(&cframe(true, OP_CLOSE, &close_payload(1000, "")))
            .await;
    }
    c
}

/// Who holds the server's end of the connection from `local` (`ss -tanp`), for a failure's
/// message: a process, or no one (still in an accept queue).
async fn server_end(local: &str) -> String {
    let mut cmd = tokio::process::Command::new("ss");
    cmd.args(["-tanpH", "state", "all", "dst", local]);
    match run_cmd(cmd, WAIT).await {
        Some((_, out, err)) => format!("{:?}", format!("{out}{err}").trim()),
        None => "ss did not finish".into(),
    }
}

async fn status_pid(socket: &std::path::Path) -> Option<u32> {
    let out = ctl(socket, &["status"]).await;
    if out.code != Some(0) {
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

// Multi-threaded: the connecting loop runs on a worker of its own, so nothing the test body
// waits on can stall a client mid-handshake (which the old process would then wait out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_restart_hands_over_without_refusing_a_connection() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes who adopts this process's orphans.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    let (mut srv, t, socket) = drained_server("");
    let old_pid = srv.proc.pid();
    let watches = open_sessions_until_eof(&srv, 3, "old session").await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let looping = tokio::spawn(connect_in_a_loop(srv.addr, srv.tls_config(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let out = ctl(&socket, &["restart"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}\n{}", srv.proc.stderr());
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(v["old_pid"], old_pid, "{v}");
    let new_pid = v["new_pid"].as_u64().expect("new_pid") as u32;
    assert_ne!(new_pid, old_pid);
    let mut successor = Successor::adopt(new_pid);

    // The old sessions get 1012, then their TCP close; the old process exits 0.
    expect_closed_with(
        watches,
        1012,
        "service_restart",
        "close frame of an old session",
    )
    .await;
    assert_eq!(
        exit_code(&mut srv, WAIT).await,
        Some(0),
        "{}",
        srv.proc.stderr()
    );
    // The loop goes on against the new process for a while, then stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let counts = within(WAIT, "the connecting loop", looping)
        .await
        .expect("loop task");
    visible_line(&format!(
        "lifecycle: restart handover: {} attempts, {} upgraded, {} echoed, {} closed 1012 right after the upgrade, {} failed; slowest attempt {:?}",
        counts.attempts,
        counts.upgraded,
        counts.echoed,
        counts.restarted,
        counts.failures.len(),
        counts.slowest
    ));
    assert!(
        counts.failures.is_empty(),
        "no connection attempt may fail across the handover: {:#?}\n{}",
        counts.failures,
        srv.proc.stderr()
    );
    assert!(counts.attempts >= 20, "the loop ran: {counts:?}");

    // The new process serves the same address and the control socket.
    let asked = Instant::now();
    while status_pid(&socket).await != Some(new_pid) {
        assert!(
            asked.elapsed() < WAIT,
            "the new process never took the control socket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // It holds no socket of the old process: connections accepted through io_uring are not
    // close-on-exec, and every one live at the fork (the three sessions at least) used to
    // cross into it, held there unknowingly until it exited. Its own accepts (the loop's, now
    // over) lack the flag too, so the count must fall to zero once they are closed.
    let inherited = |pid: u32| -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let target = std::fs::read_link(e.path()).ok()?;
                let info = std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    e.file_name().to_string_lossy()
                ))
                .ok()?;
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:"))?;
                let flags = u32::from_str_radix(flags.trim(), 8).ok()?;
                let socket = target.to_string_lossy().starts_with("socket:");
                (socket && flags & 0o2000000 == 0).then(|| target.display().to_string())
            })
            .collect()
    };
    let since = Instant::now();
    loop {
        let left = inherited(new_pid);
        if left.is_empty() {
            break;
        }
        assert!(
            since.elapsed() < WAIT,
            "the new process holds sockets that are not close-on-exec: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut ws = srv.raw().await;
    expect_echo(&mut ws, "served by the new process").await;
    let (status, _) = readyz(&srv).await;
    assert_eq!(
        status, 200,
        "the new process is ready on the same admin address"
    );

    // Its drain ends it cleanly too; the trail runs across both processes and verifies.
    let out = ctl(&socket, &["drain"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(ws.expect_close().await, Some(1001));
    assert_eq!(successor.wait_exit(WAIT), Some(0));
    let out = verify(&t.key, &t.files()).await;
    assert_eq!(
        out.code,
        Some(0),
        "the trail verifies across the handover: {out:#?}"
    );
    let records = t.records();
    let restart = records
        .iter()
        .find(|r| r["event"] == "restart")
        .expect("restart record");
    assert_eq!(
        (restart["ok"].as_bool(), restart["new_pid"].as_u64()),
        (Some(true), Some(new_pid as u64))
    );
    // The restart record marks the handover: the old process accepted nothing after it (the
    // new one starts accepting only then). Its records are those before the new process's
    // start record; timestamps are fixed-width RFC 3339, so they compare as strings.
    let handed_over_at = restart["ts"].as_str().expect("ts");
    let successor_starts = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r["event"] == "start")
        .nth(1)
        .map(|(i, _)| i)
        .expect("the new process's start record");
    let late: Vec<&Value> = records[..successor_starts]
        .iter()
        .filter(|r| r["event"] == "accept" && r["ts"].as_str() > Some(handed_over_at))
        .collect();
    assert!(
        late.is_empty(),
        "the old process accepted after the handover at {handed_over_at}: {late:?}"
    );
    let drains: Vec<(u64, u64)> = records
        .iter()
        .filter(|r| r["event"] == "drain")
        .map(|r| {
            (
                r["code"].as_u64().unwrap(),
                r["sessions_closed"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(drains.len(), 2, "{drains:?}");
    assert_eq!(drains[0].0, 1012);
    assert!(drains[0].1 >= 3, "{drains:?}");
    assert_eq!(drains[1].0, 1001);
}

/// A successor that cannot start (here: the configuration file broke since) is reported, and
/// the running process keeps serving everything: sessions, listeners, the control socket.
/// SIGUSR2 asks for the same handover; its failure is logged and audited.
#[tokio::test]
async fn a_failed_restart_keeps_the_old_process_serving() {
    let (srv, t, socket) = drained_server("");
    let mut ws = srv.raw().await;
    expect_echo(&mut ws, "before").await;
    std::fs::write(srv.config_path(), "[server\nbroken").unwrap();
    let out = ctl(&socket, &["restart"]).await;
    assert_eq!(out.code, Some(1), "{out:#?}");
    assert!(out.stderr.contains("keeps serving"), "{out:#?}");
    signal(&srv, libc::SIGUSR2);
    t.wait_for("two refused restarts", |r| {
        r.iter()
            .filter(|r| r["event"] == "restart" && r["ok"] == false)
            .count()
            >= 2
    })
    .await;
    expect_echo(&mut ws, "after").await;
    assert_eq!(status_pid(&socket).await, Some(srv.proc.pid()));
    let (status, _) = readyz(&srv).await;
    assert_eq!(status, 200);
    let mut again = srv.raw().await;
    expect_echo(&mut again, "a new session").await;
}
