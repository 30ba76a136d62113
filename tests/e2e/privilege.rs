//! Least privilege (`[server] user`, capabilities) and systemd's readiness protocol, on the
//! real binary: who every thread of the process is once it serves, that the eBPF limiter it
//! loaded before the drop still refuses, and that reload, restart handover and the audit trail
//! work as the user it became. Root only (the per-IP tests' rule): skipped, visibly, otherwise.

use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;
use crate::ip_limits::{is_root, limits_hold, CONFIG};

/// `nobody` on Debian.
const NOBODY: u32 = 65534;
/// CAP_NET_ADMIN (12), CAP_PERFMON (38), CAP_BPF (39): what a restart's new process needs to
/// load the eBPF limiter again, and nothing else.
const EBPF_LIMITER_CAPS: u64 = (1 << 12) | (1 << 38) | (1 << 39);

/// One thread's identity from /proc/PID/task/TID/status.
#[derive(Debug)]
struct ThreadCreds {
    name: String,
    uids: Vec<u32>,
    gids: Vec<u32>,
    effective: u64,
    permitted: u64,
    ambient: u64,
    no_new_privs: bool,
}

fn threads_of(pid: u32) -> Vec<ThreadCreds> {
    let mut out = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the server's tasks");
    for task in tasks.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue; // a thread that just ended
        };
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_else(|| panic!("{name} in {status}"))
                .to_string()
        };
        let ids = |name: &str| -> Vec<u32> {
            field(name)
                .split_whitespace()
                .map(|v| v.parse().expect("an id"))
                .collect()
        };
        let caps = |name: &str| u64::from_str_radix(&field(name), 16).expect("a capability mask");
        out.push(ThreadCreds {
            name: field("Name:"),
            uids: ids("Uid:"),
            gids: ids("Gid:"),
            effective: caps("CapEff:"),
            permitted: caps("CapPrm:"),
            ambient: caps("CapAmb:"),
            no_new_privs: field("NoNewPrivs:") == "1",
        });
    }
    out
}

/// Every thread of `pid` runs as `uid` with no effective capability and only the eBPF
/// limiter's capabilities kept for a restart; returns how many threads there were.
fn expect_dropped(pid: u32, uid: u32) -> usize {
    let threads = threads_of(pid);
    assert!(threads.len() >= 3, "cores, audit, admin…: {threads:#?}");
    for t in &threads {
        assert!(t.uids.iter().all(|&u| u == uid), "{t:#?}");
        assert_eq!(
            t.effective, 0,
            "{}: no effective capability: {t:#?}",
            t.name
        );
        assert_eq!(t.permitted, EBPF_LIMITER_CAPS, "{t:#?}");
        assert_eq!(t.ambient, EBPF_LIMITER_CAPS, "{t:#?}");
        assert!(t.no_new_privs, "{t:#?}");
    }
    threads.len()
}

/// A directory owned by `uid` (mode 0700) under a root-owned, world-traversable one.
fn owned_dir(parent: &Path, name: &str, uid: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let dir = parent.join(name);
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).expect("chown");
    dir
}

/// The `[audit]` section of a trail `uid` owns (directory and key).
fn audit_owned_by(parent: &Path, uid: u32) -> (String, PathBuf, PathBuf) {
    let dir = owned_dir(parent, "audit", uid);
    let key = dir.join("audit.key");
    write_private(&key, &pattern(48));
    std::os::unix::fs::chown(&key, Some(uid), Some(uid)).expect("chown the key");
    let path = dir.join("audit.jsonl");
    (
        format!(
            "[audit]\npath = {}\nkey_file = {}\nfsync_interval_ms = 0\n",
            toml_path(&path),
            toml_path(&key)
        ),
        path,
        key,
    )
}

/// `wssedge ctl` run as nobody, as an operator runs it for an edge serving as its user.
async fn ctl_as_nobody(socket: &Path, args: &[&str]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = tokio::process::Command::new("setpriv");
    cmd.args([
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
        BIN,
        "ctl",
        "--control",
    ])
    .arg(socket)
    .args(args);
    run_cmd(cmd, WAIT)
        .await
        .expect("wssedge ctl as nobody, in time")
}

/// A server started as nobody by `setpriv` (its state directory nobody's, under `parent`),
/// with `caps` (setpriv's spelling, e.g. "+bpf,+perfmon") inheritable, ambient and the whole
/// bounding set, or with none.
fn started_as_nobody(parent: &Path, caps: Option<&str>) -> ServerBuilder {
    let state = owned_dir(parent, "state", NOBODY);
    let mut setpriv: Vec<String> = [
        "setpriv",
        "--reuid=nobody",
        "--regid=nogroup",
        "--clear-groups",
    ]
    .map(String::from)
    .to_vec();
    if let Some(caps) = caps {
        setpriv.push(format!("--inh-caps=-all,{caps}"));
        setpriv.push(format!("--ambient-caps={caps}"));
        setpriv.push(format!("--bounding-set=-all,{caps}"));
    }
    let setpriv: Vec<&str> = setpriv.iter().map(String::as_str).collect();
    ServerBuilder::new()
        .open_tmp()
        .state_dir(&state)
        .via(&setpriv)
}

fn become_subreaper() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes who adopts this process's orphans.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
}

fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a server this test started (or adopted).
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig})");
}

/// Started as root with `[server] user = "nobody"`: every thread serves as nobody with an
/// empty effective set; the eBPF limiter loaded before the drop refuses at the SYN; a SIGHUP
/// reload re-reads config and the development certificate as nobody; `ctl restart` (run as
/// root, talking to nobody's socket in nobody's directory) hands over to a new process that
/// loads its own eBPF limiter with the capabilities kept for it; the audit trail is nobody's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_with_a_user_serves_as_that_user_and_keeps_only_what_a_restart_needs() {
    if !is_root() || which("setpriv").is_none() {
        visible_line("skipped: dropping to [server] user needs root (and setpriv, util-linux)");
        return;
    }
    become_subreaper();
    let dir = tempfile::tempdir().expect("tempdir");
    let run = owned_dir(dir.path(), "run", NOBODY);
    let socket = run.join("control.sock");
    let (audit, trail, key) = audit_owned_by(dir.path(), NOBODY);
    let srv = ServerBuilder::new()
        .cores(2)
        .open_tmp()
        .config(&format!(
            "[server]\nuser = \"nobody\"\ncontrol = {}\n\n{CONFIG}ip_limiter = \"ebpf\"\n\n{audit}",
            toml_path(&socket)
        ))
        .start();
    let pid = srv.proc.pid();
    let threads = expect_dropped(pid, NOBODY);
    let log = srv.proc.stderr();
    assert!(log.contains("privileges dropped"), "{log}");
    limits_hold(&srv).await;
    assert_eq!(
        srv.metric("wssedge_ip_limiter", &[("mode", "ebpf")]).await,
        1.0
    );

    // Reload as nobody: the config file and the development certificate are re-read.
    signal(pid, libc::SIGHUP);
    srv.wait_metric(
        "wssedge_reloads_total",
        &[("what", "config"), ("result", "applied")],
        1.0,
    )
    .await;
    assert_eq!(
        srv.metric(
            "wssedge_reloads_total",
            &[("what", "config"), ("result", "refused")]
        )
        .await,
        0.0,
        "{}",
        srv.proc.stderr()
    );

    // Restart handover, asked by the server's own user (root's ctl talks only to root's
    // servers or its own: `sudo -u wssedge wssedge ctl …`); the new process gets the eBPF
    // capabilities and nothing else.
    let refused = ctl(&socket, &["status"]).await;
    assert_eq!(refused.code, Some(2), "{refused:#?}");
    let out = ctl_as_nobody(&socket, &["restart"]).await;
    assert_eq!(out.0.code(), Some(0), "{out:#?}\n{}", srv.proc.stderr());
    let out = CmdOut {
        code: out.0.code(),
        stdout: out.1,
        stderr: out.2,
        pid: 0,
        ended: Instant::now(),
    };
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let new_pid = v["new_pid"].as_u64().expect("new_pid") as u32;
    let mut successor = crate::lifecycle::Successor::adopt(new_pid);
    let deadline = Instant::now() + WAIT;
    while !srv
        .proc
        .stderr()
        .contains("accepting handed to the new process")
    {
        assert!(Instant::now() < deadline, "{}", srv.proc.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The new process dropped before it said ready (which the old one waited for).
    expect_dropped(new_pid, NOBODY);
    // Its own programs limit now (the old process's left the group with it).
    limits_hold(&srv).await;
    assert_eq!(
        srv.metric("wssedge_ip_limiter", &[("mode", "ebpf")]).await,
        1.0
    );

    // The new process drains and seals the trail as nobody; the whole trail, both
    // processes' records, was written by nobody and verifies.
    signal(new_pid, libc::SIGTERM);
    let code = tokio::task::block_in_place(|| successor.wait_exit(WAIT));
    assert_eq!(code, Some(0), "the new process's exit");
    let files = crate::audit::files_of(&trail);
    assert!(!files.is_empty());
    for f in &files {
        assert_eq!(
            std::fs::metadata(f).expect("trail file").uid(),
            NOBODY,
            "{f:?}"
        );
    }
    let verified = crate::audit::verify(&key, &files).await;
    assert_eq!(verified.code, Some(0), "{verified:#?}");
    visible_line(&format!(
        "privilege: root → nobody: {threads} threads with CapEff 0, CapPrm/CapAmb = BPF|PERFMON|NET_ADMIN; eBPF limit held before and after ctl restart (pid {pid} → {new_pid})"
    ));
}

/// Started as nobody with only the unit's capabilities, ambient (as systemd's `User=` with
/// `AmbientCapabilities=` does; `setpriv` here): the eBPF limiter loads and refuses, and once
/// the edge serves no thread holds an effective capability — CAP_NET_BIND_SERVICE included.
#[tokio::test]
async fn under_setpriv_with_ambient_capabilities_the_limiter_loads_then_nothing_stays_effective() {
    if !is_root() || which("setpriv").is_none() {
        visible_line("skipped: needs root and setpriv (util-linux)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let srv = started_as_nobody(
        dir.path(),
        Some("+net_bind_service,+bpf,+net_admin,+perfmon"),
    )
    .cores(2)
    .config(&format!("{CONFIG}ip_limiter = \"ebpf\"\n"))
    .start();
    let pid = srv.proc.pid();
    let threads = threads_of(pid);
    for t in &threads {
        assert_eq!(t.uids[0], NOBODY, "{t:#?}");
        assert!(t.gids.iter().all(|&g| g != 0), "{t:#?}");
        assert_eq!(t.effective, 0, "{t:#?}");
        // CAP_NET_BIND_SERVICE (10) is gone: a restart inherits the listeners.
        assert_eq!(t.permitted, EBPF_LIMITER_CAPS, "{t:#?}");
    }
    limits_hold(&srv).await;
    assert_eq!(
        srv.metric("wssedge_ip_limiter", &[("mode", "ebpf")]).await,
        1.0
    );
    visible_line(&format!(
        "privilege: setpriv nobody + ambient caps: eBPF limiter loaded; {} threads with CapEff 0",
        threads.len()
    ));
}

/// A user that does not exist, or one a process without CAP_SETUID cannot become, stops the
/// start with exit 2 and what to do, before anything binds.
#[tokio::test]
async fn an_unknown_user_or_one_this_process_cannot_become_refuses_the_start() {
    let (status, _, stderr) = ServerBuilder::new()
        .config("[server]\nuser = \"no-such-user-wssedge\"\n")
        .run_expect_exit();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no-such-user-wssedge") && stderr.contains("adduser"),
        "{stderr}"
    );
    if !is_root() || which("setpriv").is_none() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (status, _, stderr) = started_as_nobody(dir.path(), None)
        .config("[server]\nuser = \"root\"\n")
        .run_expect_exit();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("start it as root"), "{stderr}");
}

/// What systemd hears on `$NOTIFY_SOCKET` (a `Type=notify` unit with `NotifyAccess=all`):
/// READY=1 once serving; RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP;
/// a restart's new process names itself MAINPID with its READY=1; STOPPING=1 on a drain.
#[tokio::test]
async fn systemd_hears_ready_reloading_the_new_main_pid_and_stopping() {
    become_subreaper();
    let dir = tempfile::tempdir().expect("tempdir");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify.set_read_timeout(Some(WAIT)).expect("read timeout");
    let socket = dir.path().join("control.sock");
    let srv = ServerBuilder::new()
        .env("NOTIFY_SOCKET", notify_path.to_str().expect("UTF-8"))
        .arg("--control")
        .arg(socket.to_str().expect("UTF-8"))
        .start();
    let pid = srv.proc.pid();
    let next = || {
        let mut buf = [0u8; 1024];
        let (n, _) = notify.recv_from(&mut buf).expect("a notification in time");
        String::from_utf8(buf[..n].to_vec()).expect("UTF-8")
    };
    assert!(next().starts_with("READY=1\n"));

    signal(pid, libc::SIGHUP);
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next().starts_with("READY=1\n"));

    let out = ctl(&socket, &["restart"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let new_pid = v["new_pid"].as_u64().expect("new_pid") as u32;
    let successor = crate::lifecycle::Successor::adopt(new_pid);
    // The successor's READY names it; the old process says it hands over (a status, never
    // STOPPING: the service goes on).
    let mut seen = Vec::new();
    while !seen.iter().any(|m: &String| m.starts_with("MAINPID=")) {
        seen.push(next());
        assert!(seen.len() < 10, "{seen:#?}");
    }
    let ready = seen
        .iter()
        .find(|m| m.starts_with("MAINPID="))
        .expect("MAINPID");
    assert!(
        ready.starts_with(&format!("MAINPID={new_pid}\nREADY=1\n")),
        "{ready}"
    );
    assert!(!seen.iter().any(|m| m.contains("STOPPING")), "{seen:#?}");

    // The new process drains on SIGTERM: STOPPING=1 (a status line from the old process's
    // handover may still be on its way first).
    signal(new_pid, libc::SIGTERM);
    let mut after = Vec::new();
    while !after.iter().any(|m: &String| m.starts_with("STOPPING=1")) {
        after.push(next());
        assert!(after.len() < 10, "{after:#?}");
    }
    assert!(
        after
            .iter()
            .all(|m| m.starts_with("STOPPING=1") || m.starts_with("STATUS=")),
        "{after:#?}"
    );
    drop(successor);
}
