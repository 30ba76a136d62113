//! `wssedge ctl`: argument mapping, exit codes and messages.

use std::os::unix::net::UnixListener;
use std::path::Path;

use super::mock::{fast_options, start};
use crate::control::client::{parse_cli, run_cli_to, CliCommand};
use crate::control::{Request, RevocationKind};

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// Runs the CLI; returns (exit code, stdout, stderr).
fn ctl(socket: &Path, words: &[&str]) -> (i32, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run_cli_to(socket, &args(words), &mut out, &mut err);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn the_command_words_map_to_requests() {
    let send = |words: &[&str]| match parse_cli(&args(words)).unwrap() {
        CliCommand::Send(request) => request,
        CliCommand::Help => panic!("help for {words:?}"),
    };
    let revoke = |kind, value: &str| Request::Revoke {
        kind,
        value: value.into(),
    };
    let unrevoke = |kind, value: &str| Request::Unrevoke {
        kind,
        value: value.into(),
    };
    assert_eq!(send(&["revoke-jti", "j"]), revoke(RevocationKind::Jti, "j"));
    assert_eq!(
        send(&["revoke-subject", "CN=a b"]),
        revoke(RevocationKind::Subject, "CN=a b")
    );
    assert_eq!(
        send(&["unrevoke-jti", "j"]),
        unrevoke(RevocationKind::Jti, "j")
    );
    assert_eq!(
        send(&["unrevoke-subject", "s"]),
        unrevoke(RevocationKind::Subject, "s")
    );
    assert_eq!(send(&["revocations"]), Request::Revocations);
    assert_eq!(send(&["status"]), Request::Status);
    assert_eq!(send(&["reload"]), Request::Reload);
    assert_eq!(send(&["drain"]), Request::Drain);
    assert_eq!(send(&["crl-reload"]), Request::CrlReload);
    assert_eq!(parse_cli(&args(&["help"])), Ok(CliCommand::Help));
}

#[test]
fn usage_errors_exit_2_with_what_to_type() {
    let nowhere = Path::new("/nonexistent/ctl.sock");
    let cases: &[(&[&str], &str)] = &[
        (&[], "no command given"),
        (&["revoke"], "unknown command `revoke`"),
        (&["revoke-jti"], "`revoke-jti` needs the jti"),
        (&["revoke-subject", "a", "b"], "got another argument `b`"),
        (&["status", "now"], "`status` takes no arguments"),
    ];
    for (words, needle) in cases {
        let (code, out, err) = ctl(nowhere, words);
        assert_eq!(code, 2, "{words:?}");
        assert!(out.is_empty());
        assert!(err.contains(needle), "{words:?}: {err}");
        assert!(err.contains("usage: wssedge ctl --control PATH"), "{err}");
    }
    let (code, out, _) = ctl(nowhere, &["help"]);
    assert_eq!(code, 0);
    assert!(out.contains("revoke-subject SUB"));
}

#[test]
fn nothing_listening_exits_2_saying_how_to_start_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let (code, out, err) = ctl(&path, &["status"]);
    assert_eq!(code, 2);
    assert!(out.is_empty());
    let expected = format!(
        "no wssedge is listening on {0} (no socket file there): start it with --control {0}",
        path.display()
    );
    assert!(err.contains(&expected), "{err}");

    drop(UnixListener::bind(&path).unwrap()); // a stale file from a dead process
    let (code, _, err) = ctl(&path, &["status"]);
    assert_eq!(code, 2);
    assert!(err.contains("stale socket file"), "{err}");
    assert!(err.contains("start it with --control"), "{err}");
}

#[test]
fn answers_map_to_exit_codes_and_output() {
    let f = start(fast_options());
    let (code, out, err) = ctl(&f.path, &["status"]);
    assert_eq!((code, err.as_str()), (0, ""));
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["connections"], 7);
    assert!(out.contains("\n  \"pid\""), "pretty JSON expected: {out}");

    let (code, out, _) = ctl(&f.path, &["drain"]);
    assert_eq!((code, out.as_str()), (0, "drain: ok\n"));

    let (code, out, err) = ctl(&f.path, &["reload"]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(
        err.starts_with("wssedge ctl: reload refused: `reload` is not supported"),
        "{err}"
    );

    let (code, _, _) = ctl(&f.path, &["revoke-jti", "j-9"]);
    assert_eq!(code, 0);
    let handled = f.mock.handled();
    assert_eq!(
        handled.last().unwrap().0,
        Request::Revoke {
            kind: RevocationKind::Jti,
            value: "j-9".into()
        }
    );

    // A value the server refuses (whitespace) comes back as exit 1 with the reason.
    let (code, _, err) = ctl(&f.path, &["revoke-subject", " alice"]);
    assert_eq!(code, 1);
    assert!(err.contains("whitespace"), "{err}");
}

#[test]
fn ctl_talks_only_to_a_server_of_root_or_its_own_uid() {
    use crate::control::client::trust_server;
    use crate::control::ClientError;
    let path = Path::new("/run/wssedge/ctl.sock");
    assert!(trust_server(path, 0, 1000).is_ok(), "root");
    assert!(trust_server(path, 1000, 1000).is_ok(), "our own uid");
    assert!(trust_server(path, 0, 0).is_ok());
    let err = trust_server(path, 65534, 1000).unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::UntrustedServer {
                uid: 65534,
                me: 1000,
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("uid 65534") && text.contains("/run/wssedge/ctl.sock"),
        "{text}"
    );
    // Root does not talk to another user's server either.
    assert!(trust_server(path, 1000, 0).is_err());
}
