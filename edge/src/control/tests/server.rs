//! The server through real sockets: file safety, every command, bad clients, limits.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::mock::{fast_options, start, Mock, PANIC_VALUE};
use crate::control::server::{authorize, turn_away};
use crate::control::{
    ControlClient, ControlError, ControlOptions, ControlServer, PeerCred, Request, Response,
    RevocationKind,
};

fn mode(path: &std::path::Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn client(path: &std::path::Path) -> ControlClient {
    ControlClient::connect_with_timeout(path, Duration::from_secs(5)).unwrap()
}

fn status_works(path: &std::path::Path) {
    let response = client(path).call(&Request::Status).unwrap();
    assert!(response.is_ok(), "{response:?}");
}

/// Reads whatever is left until the server closes (EOF or, with unread input, a reset).
fn read_to_close(stream: &mut UnixStream) -> String {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("expected the server to close, got {e}"),
        }
    }
    String::from_utf8(all).unwrap()
}

#[test]
fn the_socket_file_is_a_0600_socket_and_its_lock_is_0600() {
    // A permissive umask must not widen the socket: its mode is set before bind.
    let f = start(fast_options());
    let meta = fs::symlink_metadata(&f.path).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(mode(&f.path), 0o600);
    assert_eq!(mode(&f.dir.path().join("ctl.sock.lock")), 0o600);
    status_works(&f.path);
}

#[test]
fn a_stale_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    drop(UnixListener::bind(&path).unwrap()); // the file stays; nothing answers on it
    fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).unwrap();
    let server = ControlServer::start(&path, Arc::new(Mock::default())).unwrap();
    assert_eq!(mode(&path), 0o600, "a new file, not the stale 0777 one");
    status_works(&path);
    drop(server);
}

#[test]
fn a_second_server_on_a_live_path_is_refused_and_the_first_keeps_serving() {
    let f = start(fast_options());
    let err = ControlServer::start(&f.path, Arc::new(Mock::default()))
        .err()
        .expect("a second server must be refused");
    assert!(matches!(err, ControlError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("another wssedge holds"), "{err}");
    status_works(&f.path);
}

#[test]
fn a_live_listener_without_our_lock_is_refused_and_left_alone() {
    // E.g. an older build that does not take the lock: it answers, so it is live.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let foreign = UnixListener::bind(&path).unwrap();
    let ino = fs::symlink_metadata(&path).unwrap().ino();
    let err = ControlServer::start(&path, Arc::new(Mock::default()))
        .err()
        .expect("a live socket must be refused");
    assert!(matches!(err, ControlError::AlreadyServed { .. }), "{err:?}");
    assert!(err.to_string().contains("choose another --control path"));
    assert_eq!(fs::symlink_metadata(&path).unwrap().ino(), ino);
    drop(foreign);
}

#[test]
fn a_regular_file_at_the_path_is_never_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    fs::write(&path, "precious").unwrap();
    let err = ControlServer::start(&path, Arc::new(Mock::default()))
        .err()
        .unwrap();
    assert!(matches!(err, ControlError::NotASocket { .. }), "{err:?}");
    assert_eq!(fs::read_to_string(&path).unwrap(), "precious");
}

#[test]
fn bad_paths_are_refused_with_what_to_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope").join("ctl.sock");
    let err = ControlServer::start(&missing, Arc::new(Mock::default()))
        .err()
        .unwrap();
    assert!(matches!(err, ControlError::NoDirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("create it"), "{err}");

    let long = dir.path().join("x".repeat(120));
    let err = ControlServer::start(&long, Arc::new(Mock::default()))
        .err()
        .unwrap();
    assert!(matches!(err, ControlError::PathTooLong { .. }), "{err:?}");
    assert!(err.to_string().contains("shorter --control path"), "{err}");
}

#[test]
fn an_ancestor_others_could_rename_in_is_refused() {
    use crate::control::socket::ancestor_is_safe;
    let dir = std::path::Path::new("/srv");
    // Sticky and root's (/tmp), or writable by nobody else: nobody renames our directory.
    for ok in [0o755, 0o1777, 0o711, 0o1770] {
        assert!(
            ancestor_is_safe(dir, 0o40000 | ok, 0, 1000).is_ok(),
            "{ok:o}"
        );
    }
    for shared in [0o777, 0o775, 0o757] {
        let err = ancestor_is_safe(dir, 0o40000 | shared, 0, 1000).unwrap_err();
        assert!(matches!(err, ControlError::SharedAncestor { mode, .. } if mode == shared));
        assert!(
            err.to_string().contains("/srv") && err.to_string().contains(&format!("{shared:04o}"))
        );
    }
    let err = ancestor_is_safe(dir, 0o40755, 1001, 1000).unwrap_err();
    assert!(
        matches!(err, ControlError::ForeignAncestor { owner: 1001, .. }),
        "{err:?}"
    );
}

#[test]
fn a_directory_others_can_write_to_is_refused_with_its_mode() {
    use crate::control::socket::directory_is_private;
    let dir = std::path::Path::new("/run/x");
    for ok in [0o700, 0o755, 0o750, 0o711, 0o1700, 0o2755] {
        assert!(directory_is_private(dir, ok, 1000, 1000).is_ok(), "{ok:o}");
    }
    for shared in [0o777, 0o1777, 0o770, 0o730, 0o702, 0o1733] {
        let err = directory_is_private(dir, 0o40000 | shared, 1000, 1000).unwrap_err();
        assert!(matches!(err, ControlError::SharedDirectory { mode, .. } if mode == shared));
        let text = err.to_string();
        assert!(
            text.contains("/run/x") && text.contains(&format!("{shared:04o}")),
            "{text}"
        );
    }
    // Root's directory or ours; not a third user's, who could take the path.
    assert!(directory_is_private(dir, 0o755, 0, 1000).is_ok());
    assert!(directory_is_private(dir, 0o700, 0, 0).is_ok());
    let err = directory_is_private(dir, 0o700, 1001, 1000).unwrap_err();
    assert!(
        matches!(
            err,
            ControlError::ForeignDirectory {
                owner: 1001,
                me: 1000,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("uid 1001"), "{err}");
}

#[test]
fn a_socket_in_a_world_writable_directory_is_never_bound() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("shared");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
    let path = dir.join("ctl.sock");
    let err = ControlServer::start(&path, Arc::new(Mock::default()))
        .err()
        .expect("a shared directory must be refused");
    assert!(
        matches!(err, ControlError::SharedDirectory { mode: 0o1777, .. }),
        "{err:?}"
    );
    assert!(ControlServer::check_path(&path).is_err());
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        0,
        "no socket, no lock file"
    );
}

#[test]
fn another_users_stale_socket_is_left_alone() {
    if crate::control::sys::effective_uid() != 0 {
        eprintln!("SKIP: giving a file to another uid needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    drop(UnixListener::bind(&path).unwrap()); // stale: nothing answers on it
    std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
    let ino = fs::symlink_metadata(&path).unwrap().ino();
    let err = ControlServer::start(&path, Arc::new(Mock::default()))
        .err()
        .expect("another user's file must not be replaced");
    assert!(
        matches!(
            err,
            ControlError::ForeignSocket {
                owner: 65534,
                me: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("uid 65534"), "{err}");
    assert_eq!(fs::symlink_metadata(&path).unwrap().ino(), ino);
}

#[test]
fn drop_removes_the_socket_file_and_cuts_idle_clients_at_once() {
    // Default 10 s read timeout: drop must not wait for the idle client to time out.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let server = ControlServer::start(&path, Arc::new(Mock::default())).unwrap();
    let mut idle = UnixStream::connect(&path).unwrap();
    status_works(&path); // the idle client has been admitted by now
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!path.exists(), "the socket file must be gone");
    assert_eq!(read_to_close(&mut idle), "");
    // The path is free again, for a restart in the same place.
    let again = ControlServer::start(&path, Arc::new(Mock::default())).unwrap();
    status_works(&path);
    again.shutdown();
    assert!(!path.exists());
}

#[test]
fn every_command_round_trips_with_the_callers_credentials() {
    let f = start(fast_options());
    let mut c = client(&f.path);
    let requests = [
        Request::Revoke {
            kind: RevocationKind::Jti,
            value: "j-1".into(),
        },
        Request::Revoke {
            kind: RevocationKind::Subject,
            value: "alice".into(),
        },
        Request::Unrevoke {
            kind: RevocationKind::Jti,
            value: "j-1".into(),
        },
        Request::Unrevoke {
            kind: RevocationKind::Subject,
            value: "alice".into(),
        },
        Request::Revocations,
        Request::Status,
        Request::Reload,
        Request::Drain,
        Request::CrlReload,
    ];
    let answers: Vec<Response> = requests.iter().map(|r| c.call(r).unwrap()).collect();
    assert_eq!(
        answers[0],
        Response::Ok(serde_json::json!({"kind": "jti", "value": "j-1", "changed": true}))
    );
    assert_eq!(
        answers[3],
        Response::Ok(serde_json::json!({"kind": "subject", "value": "alice", "changed": false}))
    );
    assert_eq!(
        answers[4],
        Response::Ok(serde_json::json!({"jti": ["j-1"], "subject": ["alice"]}))
    );
    let Response::Ok(status) = &answers[5] else {
        panic!("{:?}", answers[5])
    };
    assert_eq!(status["pid"], std::process::id());
    assert_eq!(status["uptime_s"], 42);
    assert_eq!(status["connections"], 7);
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(matches!(&answers[6], Response::Error(e) if e.contains("`reload` is not supported")));
    assert_eq!(answers[7], Response::done());
    assert_eq!(answers[8], Response::done());

    let handled = f.mock.handled();
    let seen: Vec<Request> = handled.iter().map(|(r, _)| r.clone()).collect();
    assert_eq!(seen, requests);
    let me = PeerCred {
        uid: crate::control::sys::effective_uid(),
        gid: wssedge_sys::cred::effective_gid(),
        pid: std::process::id(),
    };
    assert!(handled.iter().all(|(_, peer)| *peer == me), "{handled:?}");
    assert!(f.mock.refused().is_empty());
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let f = start(fast_options());
    let mut c = client(&f.path);
    c.send_raw(b"{\"cmd\":\"drain\"}\n\n{\"cmd\":\"nope\"}\r\n{\"cmd\":\"status\"}\n")
        .unwrap();
    assert_eq!(c.receive().unwrap(), Response::done());
    assert!(matches!(c.receive().unwrap(), Response::Error(e) if e.contains("unknown command")));
    assert!(c.receive().unwrap().is_ok());
}

#[test]
fn bad_requests_get_errors_and_the_connection_keeps_serving() {
    let f = start(fast_options());
    let mut c = client(&f.path);
    let bad: [&[u8]; 6] = [
        b"{not json\n",
        b"{\"cmd\":\"launch\"}\n",
        b"{\"cmd\":\"revoke\",\"kind\":\"jti\",\"value\":\"a\",\"why\":1}\n",
        b"{\"cmd\":\"status\",\"x\":1}\n",
        b"[]\n",
        b"\xff\n",
    ];
    for line in bad {
        c.send_raw(line).unwrap();
        let response = c.receive().unwrap();
        assert!(!response.is_ok(), "{line:?} → {response:?}");
        assert!(c.call(&Request::Status).unwrap().is_ok());
    }
    let refused = f.mock.refused();
    assert_eq!(refused.len(), bad.len(), "{refused:?}");
    assert!(refused[1].1.contains("unknown command `launch`"));
    assert!(refused.iter().all(|(p, _)| p.pid == std::process::id()));
    // Only the well-formed status requests reached the handler.
    assert_eq!(f.mock.handled().len(), bad.len());
}

#[test]
fn an_over_long_line_is_answered_then_closed_and_others_are_still_served() {
    let f = start(fast_options());
    let mut stream = UnixStream::connect(&f.path).unwrap();
    let writer = {
        let mut w = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            let junk = vec![b'a'; 200 * 1024];
            let _ = w.write_all(&junk); // fails once the server closes: expected
        })
    };
    let answer = read_to_close(&mut stream);
    writer.join().unwrap();
    let response: Response = serde_json::from_str(answer.trim_end()).unwrap();
    assert!(
        matches!(&response, Response::Error(e) if e.contains("longer than 65536 bytes")),
        "{response:?}"
    );
    status_works(&f.path);
    assert!(f.mock.refused()[0].1.contains("longer than 65536"));
}

#[test]
fn a_silent_client_is_dropped_after_the_timeout_without_blocking_others() {
    // Long enough that "served before the silent ones time out" holds on a loaded machine.
    let f = start(ControlOptions {
        read_timeout: Duration::from_millis(800),
        ..fast_options()
    });
    let connected = Instant::now();
    let mut silent = UnixStream::connect(&f.path).unwrap();
    let mut trickler = UnixStream::connect(&f.path).unwrap();
    trickler.write_all(b"{\"cmd\":").unwrap(); // half a request, never finished
                                               // Others are served at once, while both are still connected.
    let started = Instant::now();
    status_works(&f.path);
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );
    for stream in [&mut silent, &mut trickler] {
        let answer = read_to_close(stream);
        assert!(
            answer.contains("no complete request within 800ms"),
            "{answer}"
        );
    }
    let waited = connected.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert_eq!(f.mock.refused().len(), 2);
    status_works(&f.path);
}

#[test]
fn beyond_max_clients_a_client_is_told_busy_until_a_slot_frees() {
    // A long read timeout: the holder's slot must stay taken until it hangs up.
    let f = start(ControlOptions {
        max_clients: 1,
        read_timeout: Duration::from_secs(10),
        ..fast_options()
    });
    let holder = UnixStream::connect(&f.path).unwrap();
    status_works_or_busy(&f.path, false);
    drop(holder);
    // The slot frees when the holder's thread notices EOF.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if client(&f.path).call(&Request::Status).unwrap().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(f.mock.refused()[0].1.contains("busy"));
}

fn status_works_or_busy(path: &std::path::Path, expect_ok: bool) {
    let response = client(path).call(&Request::Status).unwrap();
    match response {
        Response::Ok(_) => assert!(expect_ok),
        Response::Error(e) => {
            assert!(!expect_ok);
            assert!(e.contains("busy") && e.contains("retry"), "{e}");
        }
    }
}

#[test]
fn a_panicking_handler_answers_an_error_and_the_server_carries_on() {
    let f = start(fast_options());
    let mut c = client(&f.path);
    let response = c
        .call(&Request::Revoke {
            kind: RevocationKind::Jti,
            value: PANIC_VALUE.into(),
        })
        .unwrap();
    assert!(
        matches!(response, Response::Error(e) if e.contains("internal error while running `revoke`"))
    );
    assert!(c.call(&Request::Status).unwrap().is_ok());
    status_works(&f.path);
}

#[test]
fn only_root_and_the_servers_own_uid_are_authorised() {
    let peer = |uid| PeerCred {
        uid,
        gid: 0,
        pid: 1,
    };
    assert!(authorize(&peer(0), 1000).is_ok());
    assert!(authorize(&peer(1000), 1000).is_ok());
    let err = authorize(&peer(1001), 1000).unwrap_err();
    assert!(
        err.contains("uid 1001 may not") && err.contains("as uid 1000"),
        "{err}"
    );
}

#[test]
fn a_turned_away_peer_hears_why_and_the_handler_is_told() {
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    let mock = Mock::default();
    let peer = PeerCred {
        uid: 4242,
        gid: 4242,
        pid: 99,
    };
    turn_away(
        ours,
        &peer,
        &mock,
        "uid 4242 may not use this control socket",
    );
    let answer = read_to_close(&mut theirs);
    assert_eq!(
        answer,
        "{\"ok\":false,\"error\":\"uid 4242 may not use this control socket\"}\n"
    );
    assert_eq!(
        mock.refused(),
        vec![(peer, "uid 4242 may not use this control socket".into())]
    );
}

/// End to end with a real foreign uid: needs root (to run socat as `nobody`) and socat.
/// The socket mode is loosened on purpose so the uid check is what refuses.
#[test]
fn a_foreign_uid_is_refused_even_if_the_mode_is_loosened() {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    if crate::control::sys::effective_uid() != 0 {
        eprintln!("SKIP a_foreign_uid_is_refused…: needs root to connect as another uid");
        return;
    }
    let socat = ["/usr/bin/socat", "/bin/socat"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(socat) = socat else {
        eprintln!("SKIP a_foreign_uid_is_refused…: socat is not installed");
        return;
    };
    let f = start(fast_options());
    fs::set_permissions(f.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(&f.path, fs::Permissions::from_mode(0o666)).unwrap();
    // Read-only (-u, socket → stdout): the refusal comes before any request is read, and a
    // socat still writing would die of EPIPE before printing it.
    let mut child = Command::new(socat)
        .args(["-u", "-t", "3"])
        .arg(format!("UNIX-CONNECT:{}", f.path.display()))
        .arg("-")
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("uid 65534 may not use this control socket"),
        "stdout: {stdout} stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        f.mock.handled().is_empty(),
        "a refused peer's command must not run"
    );
    let refused = f.mock.refused();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!((refused[0].0.uid, refused[0].0.gid), (65534, 65534));
    assert!(refused[0].0.pid > 0);
}
