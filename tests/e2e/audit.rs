//! The audit trail as the real server writes it: every decision recorded (accept, TLS failure,
//! upgrade allowed and refused with who/what/why, refusal, close with code, bytes and
//! duration, control commands with the caller's uid and pid, revocations), no token ever in
//! it, and `wssedge audit verify` proving it intact — and naming an edited record, a deleted
//! one, a reordered pair, a truncated file, a torn tail and a chain recomputed with plain
//! SHA-256 (no key) on copies of a trail the server wrote.
//!
//! Sealing: the binary has no graceful stop today (no SIGTERM handling; `ctl drain` answers
//! "not supported yet"), and the harness ends servers with SIGKILL. A trail verified after
//! the server is gone therefore ends without a seal: `audit verify` exits 1 naming
//! `unsealed_tail` (and says that alone is not evidence of tampering), having verified every
//! record before it. That is what these tests expect of an intact trail.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;
use tokio_tungstenite::tungstenite::Message;

use crate::admission_jwt::{
    claims, hmac256, hs, jwt_config, key_files, token_with, with, with_header_token,
};
use crate::harness::*;

/// An audit trail's directory, live file and HMAC key file (0600, 48 bytes).
pub(crate) struct Trail {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub key: PathBuf,
}

pub(crate) fn trail() -> Trail {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = dir.path().join("audit.key");
    write_private(&key, &pattern(48));
    let path = dir.path().join("audit.jsonl");
    Trail { dir, path, key }
}

impl Trail {
    /// The `[audit]` section: fsync after every batch; rotation at `rotate_bytes` if given.
    pub(crate) fn section(&self, rotate_bytes: Option<u64>) -> String {
        let mut s = format!(
            "[audit]\npath = {}\nkey_file = {}\nfsync_interval_ms = 0\n",
            toml_path(&self.path),
            toml_path(&self.key)
        );
        if let Some(n) = rotate_bytes {
            s.push_str(&format!("rotate_bytes = {n}\n"));
        }
        s
    }

    /// The trail's files: rotated ones by their first seq, then the live file.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        files_of(&self.path)
    }

    /// Every complete record of every file, in chain order.
    pub(crate) fn records(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for f in self.files() {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            for line in text.split_inclusive('\n') {
                if let Some(line) = line.strip_suffix('\n') {
                    out.push(
                        serde_json::from_str(line)
                            .unwrap_or_else(|e| panic!("not a JSON record ({e}): {line}")),
                    );
                }
            }
        }
        out
    }

    /// Every byte of every file.
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.files()
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap_or_default())
            .collect()
    }

    /// Polls the trail until `done` holds for its records (bounded by `WAIT`).
    pub(crate) async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let t0 = Instant::now();
        loop {
            let records = self.records();
            if done(&records) {
                return records;
            }
            if t0.elapsed() > WAIT {
                panic!(
                    "audit trail: {what} not recorded within {WAIT:?}; records:\n{}",
                    records
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The live file `live` and its rotated files (`<name>.<time>.<20-digit seq>`), in chain order.
pub(crate) fn files_of(live: &Path) -> Vec<PathBuf> {
    let dir = live.parent().expect("dir");
    let name = live
        .file_name()
        .and_then(|n| n.to_str())
        .expect("UTF-8 name");
    let mut rotated: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .expect("list the trail's directory")
        .filter_map(|e| {
            let e = e.ok()?;
            let n = e.file_name().into_string().ok()?;
            let rest = n.strip_prefix(name)?.strip_prefix('.')?;
            let seq = rest.rsplit('.').next()?;
            (seq.len() == 20 && seq.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (seq.parse().ok(), e.path()))
                .and_then(|(s, p)| Some((s?, p)))
        })
        .collect();
    rotated.sort();
    let mut out: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    if live.exists() {
        out.push(live.to_owned());
    }
    out
}

/// `wssedge audit verify --key KEY FILES…`.
pub(crate) async fn verify(key: &Path, files: &[PathBuf]) -> CmdOut {
    let mut args = vec![
        "audit".to_owned(),
        "verify".to_owned(),
        "--key".to_owned(),
        key.to_str().expect("UTF-8").to_owned(),
    ];
    args.extend(files.iter().map(|f| f.to_str().expect("UTF-8").to_owned()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    wssedge_cmd(&refs).await
}

/// Expects verify to exit 1 naming `kind` as the first problem; returns its output.
pub(crate) async fn expect_problem(key: &Path, files: &[PathBuf], kind: &str) -> String {
    let out = verify(key, files).await;
    assert_eq!(out.code, Some(1), "verify should find {kind}: {out:#?}");
    assert!(
        out.stdout.contains(&format!("PROBLEM {kind}:")),
        "verify should name {kind}: {out:#?}"
    );
    out.stdout
}

/// The intact trail of a killed server: exit 1, `unsealed_tail`, every record verified.
pub(crate) async fn expect_intact_but_unsealed(trail: &Trail) -> String {
    let files = trail.files();
    let out = expect_problem(&trail.key, &files, "unsealed_tail").await;
    assert!(
        out.contains("not evidence of tampering"),
        "an unsealed tail must not read as tampering: {out}"
    );
    let n = trail.records().len();
    assert!(
        out.contains(&format!("verified before it: {n} records")),
        "verify must have checked all {n} records: {out}"
    );
    out
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn of_event<'a>(records: &'a [Value], event: &str) -> Vec<&'a Value> {
    records.iter().filter(|r| r["event"] == event).collect()
}

fn has(records: &[Value], pred: impl Fn(&Value) -> bool) -> bool {
    records.iter().any(pred)
}

fn find<'a>(records: &'a [Value], what: &str, pred: impl Fn(&Value) -> bool) -> &'a Value {
    records
        .iter()
        .find(|r| pred(r))
        .unwrap_or_else(|| panic!("no {what} record among:\n{}", dump(records)))
}

fn dump(records: &[Value]) -> String {
    records
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A server with `[jwt]` (every source), `[audit]` and a control socket; returns it with its
/// trail and socket path.
fn audited_server(
    rotate_bytes: Option<u64>,
) -> (Server, Trail, PathBuf, crate::admission_jwt::KeyFiles) {
    let files = key_files();
    let t = trail();
    let socket = t.dir.path().join("ctl.sock");
    let srv = ServerBuilder::new()
        .config(&jwt_config(
            &files,
            &[("sources", r#"["header", "subprotocol", "query"]"#)],
            &t.section(rotate_bytes),
        ))
        .arg("--control")
        .arg(socket.to_str().expect("UTF-8"))
        .start();
    (srv, t, socket, files)
}

#[tokio::test]
async fn the_trail_records_every_decision_and_never_a_token() {
    let (srv, t, socket, _files) = audited_server(None);

    // An allowed upgrade (header token), a message each way, a clean close.
    let good = hs(claims("alice", "audit-good"));
    let (_, mut ws) = expect_upgraded(&srv, &with_header_token("/feed?x=1", &good)).await;
    expect_echo(&mut ws, "hello audit").await;
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));
    drop(ws);

    // An allowed upgrade with a query token: the recorded path must not carry it.
    let query_token = hs(claims("quinn", "audit-query"));
    let (_, ws) = expect_upgraded(
        &srv,
        &ws_request(&format!("/q?access_token={query_token}&y=2"), &[]),
    )
    .await;
    drop(ws);

    // Refused upgrades: a forged token in the header, an expired one in the query.
    let forged = token_with(
        serde_json::json!({"alg": "HS256"}),
        claims("mallory", "audit-forged"),
        |m| hmac256(b"not the server's secret, not at all", m),
    );
    expect_refused(
        &srv,
        &with_header_token("/admin", &forged),
        401,
        "bad_signature",
    )
    .await;
    let now = unix_now();
    let expired = hs(with(
        with(
            claims("eve", "audit-expired"),
            "exp",
            serde_json::json!(now - 100),
        ),
        "iat",
        serde_json::json!(now - 200),
    ));
    expect_refused(
        &srv,
        &ws_request(&format!("/old?access_token={expired}"), &[]),
        401,
        "expired",
    )
    .await;
    // A malformed upgrade: refused through the refusal path (400).
    let no_key: String = ws_request("/", &[])
        .lines()
        .filter(|l| !l.starts_with("Sec-WebSocket-Key"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    expect_refused(&srv, &no_key, 400, "missing_key").await;

    // A TLS failure: plain HTTP on the TLS port.
    let mut tcp = tokio::net::TcpStream::connect(srv.addr)
        .await
        .expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let _ = read_to_close(&mut tcp, WAIT).await;

    // Control commands: a query and a revocation.
    let status = ctl(&socket, &["status"]).await;
    assert_eq!(status.code, Some(0), "{status:?}");
    let revoke = ctl(&socket, &["revoke-jti", "audit-revoked"]).await;
    assert_eq!(revoke.code, Some(0), "{revoke:?}");

    let records = t
        .wait_for("every event of the scenario", |r| {
            of_event(r, "close").len() >= 2
                && of_event(r, "control").len() >= 2
                && has(r, |x| x["event"] == "tls_failure")
                && has(r, |x| x["event"] == "revocation")
                && has(r, |x| x["event"] == "refusal")
                && of_event(r, "upgrade").len() >= 4
        })
        .await;

    // The chain's envelope: consecutive seqs from 0, open then start.
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64), "seq of record {i}: {r}");
        for f in ["ts", "prev", "mac"] {
            assert!(r[f].is_string(), "record {i} without {f}: {r}");
        }
    }
    assert_eq!(records[0]["event"], "open", "{}", records[0]);
    assert_eq!(records[0]["prev_state"], "genesis");
    let start = find(&records, "start", |r| r["event"] == "start");
    assert_eq!(start["pid"].as_u64(), Some(u64::from(srv.proc.pid())));

    // Accepts: one per TCP connection (4 upgrade attempts, 1 malformed, 1 not TLS).
    assert_eq!(of_event(&records, "accept").len(), 6, "{}", dump(&records));
    for a in of_event(&records, "accept") {
        assert!(
            a["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with("127.0.0.1:")),
            "{a}"
        );
    }

    // Upgrade decisions: who, what, why.
    let allowed = find(&records, "allowed upgrade", |r| {
        r["event"] == "upgrade" && r["jti"] == "audit-good"
    });
    assert_eq!(allowed["allowed"], true);
    assert_eq!(allowed["status"], 101);
    assert_eq!(allowed["reason"], "ok");
    assert_eq!(allowed["sub"], "alice");
    assert_eq!(allowed["path"], "/feed?x=1");
    assert_eq!(
        allowed["token_sha256"],
        sha256_hex(good.as_bytes()).as_str()
    );
    let by_query = find(&records, "query-token upgrade", |r| {
        r["event"] == "upgrade" && r["jti"] == "audit-query"
    });
    assert_eq!(
        by_query["path"], "/q?y=2",
        "the query token must be cut from the path"
    );
    assert_eq!(
        by_query["token_sha256"],
        sha256_hex(query_token.as_bytes()).as_str()
    );
    let forged_rec = find(&records, "refused upgrade", |r| {
        r["event"] == "upgrade" && r["reason"] == "bad_signature"
    });
    assert_eq!(forged_rec["allowed"], false);
    assert_eq!(forged_rec["status"], 401);
    assert_eq!(forged_rec["path"], "/admin");
    let expired_rec = find(&records, "refused query upgrade", |r| {
        r["event"] == "upgrade" && r["reason"] == "expired"
    });
    assert_eq!(expired_rec["allowed"], false);
    assert_eq!(
        expired_rec["path"], "/old",
        "the query token must be cut from the path"
    );

    // The refusal path's own record, and the TLS failure.
    let refusal = find(&records, "refusal", |r| {
        r["event"] == "refusal" && r["reason"] == "missing_key"
    });
    assert_eq!(refusal["status"], 400);
    let tls = find(&records, "tls_failure", |r| r["event"] == "tls_failure");
    assert!(
        tls["reason"].as_str().is_some_and(|s| !s.is_empty()),
        "{tls}"
    );

    // Closes: code, bytes each way, duration.
    let clean = find(&records, "clean close", |r| {
        r["event"] == "close" && r["code"] == 1000
    });
    assert!(clean["bytes_in"].as_u64().is_some_and(|n| n > 0), "{clean}");
    assert!(
        clean["bytes_out"].as_u64().is_some_and(|n| n > 0),
        "{clean}"
    );
    assert!(clean["duration_ms"].is_u64(), "{clean}");

    // Control commands with the caller's credentials, and the revocation they made.
    let uid = u64::from(effective_uid());
    let ctl_status = find(&records, "control status", |r| {
        r["event"] == "control" && r["command"] == "status"
    });
    assert_eq!(ctl_status["uid"].as_u64(), Some(uid), "{ctl_status}");
    assert_eq!(
        ctl_status["pid"].as_u64(),
        Some(u64::from(status.pid)),
        "{ctl_status}"
    );
    assert_eq!(ctl_status["ok"], true);
    let ctl_revoke = find(&records, "control revoke", |r| {
        r["event"] == "control" && r["command"] == "revoke"
    });
    assert_eq!(
        ctl_revoke["pid"].as_u64(),
        Some(u64::from(revoke.pid)),
        "{ctl_revoke}"
    );
    assert!(ctl_revoke["detail"]
        .as_str()
        .is_some_and(|d| d.contains("audit-revoked")));
    let revocation = find(&records, "revocation", |r| r["event"] == "revocation");
    assert_eq!(
        (
            &revocation["kind"],
            &revocation["value"],
            &revocation["source"]
        ),
        (
            &Value::from("jti"),
            &Value::from("audit-revoked"),
            &Value::from("control")
        )
    );

    // No token, nor any part of one that could be replayed or forged from, is in the trail.
    let bytes = t.bytes();
    let text = String::from_utf8_lossy(&bytes);
    for tok in [&good, &query_token, &forged, &expired] {
        assert!(
            !text.contains(tok.as_str()),
            "a token is in the audit trail"
        );
        for part in tok.split('.').skip(1) {
            assert!(
                !text.contains(part),
                "part of a token is in the audit trail"
            );
        }
    }

    // The server is killed (no graceful stop exists): everything written verifies, the tail is
    // unsealed.
    drop(srv);
    let out = expect_intact_but_unsealed(&t).await;
    visible_line(&format!(
        "audit verify after SIGKILL: {}",
        out.lines().next().unwrap_or("")
    ));
}

/// The effective uid `wssedge ctl` runs as (this test's), from /proc.
fn effective_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|u| u.parse().ok())
        .expect("effective uid in /proc/self/status")
}

// ---------------------------------------------------------------------------------------------
// Tampering
// ---------------------------------------------------------------------------------------------

/// Lines of a file, each without its newline.
fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .expect("read trail file")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write trail file");
}

/// Copies the trail's files into a fresh directory (same names); returns it and the copies.
fn copy_trail(files: &[PathBuf]) -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let copies = files
        .iter()
        .map(|f| {
            let to = dir.path().join(f.file_name().expect("name"));
            std::fs::copy(f, &to).expect("copy trail file");
            to
        })
        .collect();
    (dir, copies)
}

/// The record with the last digit of its timestamp's fraction changed: still valid JSON, one
/// byte different.
fn edit_ts(line: &str) -> String {
    let at = line.find("\"ts\":\"").expect("ts field");
    let z = at + line[at..].find("Z\"").expect("ts ends in Z");
    let mut bytes = line.as_bytes().to_vec();
    bytes[z - 1] = if bytes[z - 1] == b'0' { b'1' } else { b'0' };
    String::from_utf8(bytes).expect("ASCII")
}

const MAC_FIELD: &str = ",\"mac\":\"";
const PREV_FIELD: &str = "\"prev\":\"";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a forger without the key does: edit line `from`, then recompute that line's and every
/// later line's `mac` as plain SHA-256(prev || covered bytes), re-linking each `prev`.
fn recompute_without_key(lines: &mut [String], from: usize, edit: impl Fn(&str) -> String) {
    let mut prev: Option<String> = None;
    for (i, line) in lines.iter_mut().enumerate().skip(from) {
        let mut l = if i == from { edit(line) } else { line.clone() };
        let at = l.rfind(MAC_FIELD).expect("mac field");
        l.truncate(at);
        let p = l.rfind(PREV_FIELD).expect("prev field") + PREV_FIELD.len();
        if let Some(prev) = &prev {
            l.replace_range(p..p + 64, prev);
        }
        let mut input = unhex(&l[p..p + 64]);
        input.extend_from_slice(l.as_bytes());
        let mac = hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input).as_ref());
        l.push_str(MAC_FIELD);
        l.push_str(&mac);
        l.push_str("\"}");
        *line = l;
        prev = Some(mac);
    }
}

/// A trail written by the real server (rotated every 4 KiB, then the server killed), and
/// `audit verify` on tampered copies of it: each finding exits 1 and names its kind.
#[tokio::test]
async fn audit_verify_names_each_kind_of_tampering_on_a_real_trail() {
    let (srv, t, socket, _files) = audited_server(Some(4096));
    // Enough traffic for several rotations; bounded.
    let t0 = Instant::now();
    let mut n = 0;
    while t.files().len() < 4 && n < 200 && t0.elapsed() < WAIT * 3 {
        let tok = hs(claims("alice", &format!("rot-{n}")));
        let (_, mut ws) = expect_upgraded(&srv, &with_header_token("/rotate", &tok)).await;
        expect_echo(&mut ws, "x").await;
        drop(ws);
        if n % 10 == 0 {
            let _ = ctl(&socket, &["status"]).await;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        t.files().len() >= 4,
        "no rotations after {n} sessions: {:?}",
        t.files()
    );
    // Let the last closes reach the file, then kill the server.
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(srv);
    let files = t.files();
    visible_line(&format!(
        "audit tamper test: {} files, {} records",
        files.len(),
        t.records().len()
    ));

    // Intact: every rotated file sealed and chained; the live one unsealed after the kill.
    expect_intact_but_unsealed(&t).await;
    for f in &files[..files.len() - 1] {
        let last = lines_of(f).pop().expect("a line");
        assert!(
            last.contains("\"event\":\"seal\""),
            "rotated file not sealed: {last}"
        );
    }
    // Files given in any order are sorted by their names' seqs.
    let mut shuffled = files.clone();
    shuffled.reverse();
    expect_problem(&t.key, &shuffled, "unsealed_tail").await;

    let first = &files[0];
    let first_lines = lines_of(first);
    assert!(
        first_lines.len() >= 6,
        "first file too short: {first_lines:?}"
    );
    let idx = files.iter().position(|f| f == first).expect("first");

    // An edited record: one field changed in the middle of the first file.
    let (_d, copy) = copy_trail(&files);
    let mut lines = first_lines.clone();
    let target = 3;
    let edited = edit_ts(&lines[target]);
    assert_ne!(edited, lines[target]);
    lines[target] = edited;
    write_lines(&copy[idx], &lines);
    let out = expect_problem(&t.key, &copy, "edited").await;
    assert!(
        out.contains("line 4"),
        "the edited line must be named: {out}"
    );

    // A deleted record.
    let (_d, copy) = copy_trail(&files);
    let mut lines = first_lines.clone();
    lines.remove(3);
    write_lines(&copy[idx], &lines);
    let out = expect_problem(&t.key, &copy, "missing").await;
    assert!(out.contains("line 4"), "the gap must be named: {out}");

    // A reordered pair.
    let (_d, copy) = copy_trail(&files);
    let mut lines = first_lines.clone();
    lines.swap(3, 4);
    write_lines(&copy[idx], &lines);
    expect_problem(&t.key, &copy, "reordered").await;

    // A truncated file: the first file's seal and last record cut off (the next file says
    // where it continues from).
    let (_d, copy) = copy_trail(&files);
    let mut lines = first_lines.clone();
    lines.truncate(lines.len() - 2);
    write_lines(&copy[idx], &lines);
    expect_problem(&t.key, &copy, "truncated").await;

    // The live file cut in the middle of a line (indistinguishable from a kill mid-write).
    let (_d, copy) = copy_trail(&files);
    let live = copy.last().expect("live file");
    let bytes = std::fs::read(live).expect("read");
    let cut = bytes.len() - 20;
    std::fs::write(live, &bytes[..cut]).expect("write");
    expect_problem(&t.key, &copy, "torn_line").await;

    // A whole file removed from the middle.
    if files.len() >= 3 {
        let (_d, mut copy) = copy_trail(&files);
        copy.remove(1);
        expect_problem(&t.key, &copy, "missing").await;
    }

    // A chain recomputed from an edited record on with plain SHA-256: each line links, but
    // none carries the keyed MAC.
    let (_d, copy) = copy_trail(&files);
    let mut lines = first_lines.clone();
    recompute_without_key(&mut lines, 3, edit_ts);
    write_lines(&copy[idx], &lines);
    let out = expect_problem(&t.key, &copy, "edited").await;
    assert!(
        out.contains("plain SHA-256"),
        "verify must say the chain was recomputed without the key: {out}"
    );

    // Another key: named as such, not as tampering.
    let other_key = t.dir.path().join("other.key");
    write_private(&other_key, &pattern(64)[16..]);
    expect_problem(&other_key, &files, "wrong_key").await;

    // Usage errors: exit 2.
    let out = wssedge_cmd(&["audit", "verify", "--key", t.key.to_str().expect("UTF-8")]).await;
    assert_eq!(out.code, Some(2), "no files: {out:?}");
    let missing_key = t.dir.path().join("no-such.key");
    let out = verify(&missing_key, &files).await;
    assert_eq!(out.code, Some(2), "missing key file: {out:?}");
}

/// SIGTERM stops the edge with exit 0 and a sealed trail: `audit verify` passes from the
/// first record to the seal (a SIGKILL, by contrast, leaves the unsealed tail tested above).
#[tokio::test]
async fn sigterm_seals_the_trail_and_verify_passes() {
    let t = trail();
    let mut srv = ServerBuilder::new().config(&t.section(None)).start();
    let mut ws = srv.ws().await;
    echo(&mut ws, Message::text("before the stop")).await;
    let pid = srv.proc.pid() as libc::pid_t;
    // SAFETY: kill(2) with the pid of the child this test started and still owns (not reaped).
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = srv
        .proc
        .wait_timeout(Duration::from_secs(10))
        .expect("the edge stops within 10 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", srv.proc.stderr());
    let out = verify(&t.key, &t.files()).await;
    assert_eq!(out.code, Some(0), "a SIGTERM'd trail verifies: {out:#?}");
    let records = t.records();
    let last = records.last().expect("records");
    assert_eq!(last["event"], "seal", "{}", dump(&records));
    assert!(
        has(&records, |r| r["event"] == "stop"),
        "{}",
        dump(&records)
    );
}
