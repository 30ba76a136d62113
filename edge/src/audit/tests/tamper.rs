//! The verifier against every kind of damage, each named precisely; and against garbage.

use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::{read_lines, upgrade, write_lines, Fixture, KEY};
use crate::audit::{run_cli, verify, AuditTrail, Problem, ProblemKind};
use wssedge_proto::audit_chain::{hex, unhex_mac};

/// A sealed trail of several files (≈ 10 records each) to damage.
fn sample() -> (Fixture, Vec<PathBuf>) {
    let f = Fixture::new(4096, 1024);
    let (trail, sinks) = AuditTrail::start(&f.cfg, 2).unwrap();
    for n in 0..60 {
        sinks[n % 2].record(upgrade(n % 2, n));
    }
    trail.shutdown().unwrap();
    let files = f.files();
    assert!(files.len() >= 4, "{files:?}");
    let report = verify(&KEY, &files);
    assert!(report.is_ok() && report.from_genesis, "{report}");
    (f, files)
}

fn seq_of(line: &str) -> u64 {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"]
        .as_u64()
        .unwrap()
}

fn first_problem(files: &[PathBuf]) -> Problem {
    let report = verify(&KEY, files);
    match report.problem {
        Some(p) => p,
        None => panic!("no problem found: {report}"),
    }
}

#[test]
fn an_edited_record_is_named() {
    let (_f, files) = sample();
    let mut lines = read_lines(&files[1]);
    let seq = seq_of(&lines[4]);
    assert!(lines[4].contains(r#""allowed":false"#) || lines[4].contains(r#""allowed":true"#));
    lines[4] = lines[4]
        .replace(r#""allowed":false"#, r#""allowed":true"#)
        .replace(r#""status":403"#, r#""status":101"#);
    if !lines[4].contains("\"status\":101") || lines[4] == read_lines(&files[1])[4] {
        lines[4] = lines[4].replace("trader-7", "trader-8");
    }
    write_lines(&files[1], &lines);
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line, p.seq),
        (ProblemKind::Edited, &files[1], 5, Some(seq)),
        "{p:?}"
    );
    assert!(p.kind.is_tampering());
}

#[test]
fn a_deleted_record_is_named() {
    let (_f, files) = sample();
    let mut lines = read_lines(&files[1]);
    let gone = seq_of(&lines[4]);
    lines.remove(4);
    write_lines(&files[1], &lines);
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line, p.seq),
        (ProblemKind::Missing, &files[1], 5, Some(gone + 1)),
        "{p:?}"
    );
    assert!(
        p.detail.contains(&format!("seq {gone} is missing")),
        "{}",
        p.detail
    );
}

#[test]
fn a_reordered_pair_is_named() {
    let (_f, files) = sample();
    let mut lines = read_lines(&files[1]);
    let seq = seq_of(&lines[4]);
    lines.swap(4, 5);
    write_lines(&files[1], &lines);
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line, p.seq),
        (ProblemKind::Reordered, &files[1], 5, Some(seq + 1)),
        "{p:?}"
    );
}

#[test]
fn a_truncated_file_is_named() {
    let (_f, files) = sample();
    let mut lines = read_lines(&files[1]);
    let kept = lines.len() - 3;
    let first_cut = seq_of(&lines[kept]);
    lines.truncate(kept);
    write_lines(&files[1], &lines);
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line, p.seq),
        (ProblemKind::Truncated, &files[1], kept + 1, Some(first_cut)),
        "{p:?}"
    );
    assert!(p.detail.contains("cut from its end"), "{}", p.detail);
}

#[test]
fn a_torn_last_line_is_named() {
    let (_f, files) = sample();
    let last = files.last().unwrap();
    let lines = read_lines(last);
    let bytes = std::fs::read(last).unwrap();
    std::fs::write(last, &bytes[..bytes.len() - 20]).unwrap();
    let p = first_problem(&files);
    let torn_seq = seq_of(lines.last().unwrap());
    assert_eq!(
        (p.kind, p.line, p.seq),
        (ProblemKind::TornLine, lines.len(), Some(torn_seq)),
        "{p:?}"
    );
    // The same cut in a file that is not the last is a truncation.
    let bytes = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], &bytes[..bytes.len() - 20]).unwrap();
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file),
        (ProblemKind::Truncated, &files[0]),
        "{p:?}"
    );
}

#[test]
fn a_cut_live_file_reads_as_an_unsealed_tail() {
    let (_f, files) = sample();
    let last = files.last().unwrap();
    let mut lines = read_lines(last);
    lines.truncate(lines.len() - 2);
    write_lines(last, &lines);
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, p.line),
        (ProblemKind::UnsealedTail, lines.len()),
        "{p:?}"
    );
    assert!(!p.kind.is_tampering());
}

#[test]
fn a_missing_file_is_named() {
    let (_f, mut files) = sample();
    let gone = files.remove(1);
    let first = seq_of(&read_lines(&gone)[0]);
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line),
        (ProblemKind::Missing, &files[1], 1),
        "{p:?}"
    );
    assert!(
        p.detail.contains(&format!("records seq {first}..=")),
        "{}",
        p.detail
    );
}

#[test]
fn missing_newest_files_are_named() {
    let (_f, mut files) = sample();
    files.pop();
    let last = files.last().unwrap().clone();
    let n = read_lines(&last).len();
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line),
        (ProblemKind::Missing, &last, n + 1),
        "{p:?}"
    );
    assert!(p.detail.contains("newer"), "{}", p.detail);
}

#[test]
fn files_out_of_order_are_named() {
    let (_f, mut files) = sample();
    files.swap(1, 2);
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line),
        (ProblemKind::Missing, &files[1], 1),
        "{p:?}"
    );
    // Going back is a reorder.
    let (_f, mut files) = sample();
    let dup = files[1].clone();
    files.insert(2, dup);
    let p = first_problem(&files);
    assert_eq!((p.kind, p.line), (ProblemKind::Reordered, 1), "{p:?}");
}

#[test]
fn the_wrong_key_is_named() {
    let (_f, files) = sample();
    let report = verify(&[0x42; 32], &files);
    let p = report.problem.unwrap();
    assert_eq!(
        (p.kind, &p.file, p.line, p.seq),
        (ProblemKind::WrongKey, &files[0], 1, Some(0)),
        "{p:?}"
    );
    assert!(p.detail.contains("key id"), "{}", p.detail);
    assert!(!p.kind.is_tampering());
}

/// A forger without the key edits a record and recomputes the chain from there with plain
/// SHA-256, fixing every `prev`: each line is self-consistent, but not under the key.
fn recompute_unkeyed(path: &Path, from: usize, edit: impl Fn(&str) -> String) {
    let mut lines = read_lines(path);
    let mut prev = if from == 0 {
        [0u8; 32]
    } else {
        let l = &lines[from - 1];
        let at = l.rfind(",\"mac\":\"").unwrap();
        unhex_mac(&l.as_bytes()[at + 8..at + 72]).unwrap()
    };
    for (i, line) in lines.iter_mut().enumerate().skip(from) {
        let body = if i == from { edit(line) } else { line.clone() };
        let at = body.rfind(",\"prev\":\"").unwrap();
        let prefix = format!("{},\"prev\":\"{}\"", &body[..at], hex(&prev));
        let mut input = prev.to_vec();
        input.extend_from_slice(prefix.as_bytes());
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &input);
        prev.copy_from_slice(d.as_ref());
        *line = format!("{prefix},\"mac\":\"{}\"}}", hex(&prev));
    }
    write_lines(path, &lines);
}

#[test]
fn a_chain_recomputed_with_plain_sha256_is_named() {
    let (_f, files) = sample();
    let seq = seq_of(&read_lines(&files[1])[4]);
    recompute_unkeyed(&files[1], 4, |l| l.replace("trader-7", "trader-9"));
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line, p.seq),
        (ProblemKind::Edited, &files[1], 5, Some(seq)),
        "{p:?}"
    );
    assert!(
        p.detail.contains("recomputed without the key"),
        "{}",
        p.detail
    );

    // The whole trail rewritten from its first record: still an edit, not a "wrong key" (the
    // open record names the key that wrote the trail).
    let (_f, files) = sample();
    recompute_unkeyed(&files[0], 0, |l| l.to_owned());
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line, p.seq),
        (ProblemKind::Edited, &files[0], 1, Some(0)),
        "{p:?}"
    );
    assert!(
        p.detail.contains("recomputed without the key"),
        "{}",
        p.detail
    );
}

#[test]
fn a_file_missing_its_first_records_is_named() {
    let (_f, files) = sample();
    let mut lines = read_lines(&files[2]);
    lines.remove(0);
    write_lines(&files[2], &lines);
    let p = first_problem(&files);
    assert_eq!(
        (p.kind, &p.file, p.line),
        (ProblemKind::Missing, &files[2], 1),
        "{p:?}"
    );
}

#[test]
fn joined_files_are_named() {
    let (f, files) = sample();
    let joined = f.trail_dir().join("joined");
    let mut bytes = std::fs::read(&files[0]).unwrap();
    bytes.extend(std::fs::read(&files[1]).unwrap());
    std::fs::write(&joined, bytes).unwrap();
    let p = first_problem(std::slice::from_ref(&joined));
    assert_eq!(
        (p.kind, p.line),
        (ProblemKind::Edited, read_lines(&files[0]).len() + 1),
        "{p:?}"
    );
}

#[test]
fn a_partial_trail_verifies_with_a_note() {
    let (_f, files) = sample();
    let report = verify(&KEY, &files[2..]);
    assert!(report.is_ok(), "{report}");
    assert!(!report.from_genesis);
    assert!(
        report.notes[0].contains("earlier records were not checked"),
        "{report}"
    );
}

#[test]
fn garbage_is_reported_never_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let junk: Vec<Vec<u8>> = vec![
        vec![],
        b"\n".to_vec(),
        b"{}\n".to_vec(),
        b"\"}\n".to_vec(),
        vec![0xff; 5000],
        vec![b'\n'; 100_000],
        b"{\"seq\":18446744073709551615,\"event\":\"open\",\"prev\":\"00\"}\n".to_vec(),
        (0..=255u8).cycle().take(70_000).collect(),
    ];
    for (i, bytes) in junk.iter().enumerate() {
        let path = dir.path().join(format!("junk{i}"));
        std::fs::write(&path, bytes).unwrap();
        let report = verify(&KEY, &[path]);
        assert!(!report.is_ok(), "junk {i} accepted");
        let _ = report.to_string();
    }
    let report = verify(&KEY, &[dir.path().join("absent")]);
    assert_eq!(report.problem.unwrap().kind, ProblemKind::Unreadable);
    assert_eq!(
        verify(&KEY, &[]).problem.unwrap().kind,
        ProblemKind::Unreadable
    );
}

#[test]
fn the_cli_sorts_files_and_exits_0_1_2() {
    let (f, mut files) = sample();
    files.reverse(); // any order: the CLI sorts by the seq in the names
    assert_eq!(run_cli(f.key_file(), &files), 0);
    assert_eq!(run_cli(f.key_file(), &[]), 2);
    assert_eq!(run_cli(&f.dir.path().join("absent.key"), &files), 2);
    assert_eq!(run_cli(f.key_file(), &[f.dir.path().join("absent")]), 2);
    let mut lines = read_lines(&files[1]);
    lines[1] = lines[1].replace("trader-7", "trader-0");
    write_lines(&files[1], &lines);
    assert_eq!(run_cli(f.key_file(), &files), 1);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Any one changed byte anywhere in a trail is found.
    #[test]
    fn any_changed_byte_is_found(file_pick in 0usize..1000, pos_pick in 0usize..1_000_000, byte in any::<u8>()) {
        let (_f, files) = sample();
        let path = &files[file_pick % files.len()];
        let mut bytes = std::fs::read(path).unwrap();
        let pos = pos_pick % bytes.len();
        prop_assume!(bytes[pos] != byte);
        bytes[pos] = byte;
        std::fs::write(path, &bytes).unwrap();
        let report = verify(&KEY, &files);
        prop_assert!(!report.is_ok(), "byte {pos} of {path:?} -> {byte:#x} passed");
    }

    /// Random files never make the verifier panic.
    #[test]
    fn random_files_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, &data).unwrap();
        let report = verify(&KEY, &[path]);
        prop_assert!(!report.is_ok());
    }
}
