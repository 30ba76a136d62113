//! `wssedge audit verify`: checks a trail's chain across its files and names the first problem.
//!
//! Checked, in file order: each line's MAC under the key; `prev` equal to the previous
//! record's MAC; `seq` one more than the previous; every file starts with an `open` whose
//! `prev_mac`/`prev_seq` continue the previous file, and ends with a `seal` (or, for a file cut
//! short by a kill, is acknowledged as such by the next file's `open`).
//!
//! Order rule: [`verify`] takes files in the order given. [`run_cli`] first sorts them with
//! [`sort_trail_files`]: rotated files (`<name>.<time>.<20-digit first seq>`) by seq, then any
//! other file (the live one) in the order given. Files out of chain order are reported, never
//! silently accepted.
//!
//! A trail may start after files that were not given (old files removed by retention: a note),
//! but it must not end in a file sealed for rotation (newer files missing: a problem).
//!
//! What cannot be told apart: the end of the *last* file. A live trail, a kill, and someone
//! cutting records off its end all look the same (`unsealed_tail` or `torn_line`); everything
//! up to there is proven intact. Likewise, deleting every file after a clean shutdown's seal
//! leaves a trail that ends cleanly. Anchor the last seq elsewhere (metrics' `durable_seq`,
//! logs, a remote copy) to close that gap.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::audit::chain::{
    key_id, new_key, parse_line, unkeyed_candidates, ChainKey, Mac, ParsedLine, GENESIS,
};
use crate::audit::files::rotated_seq;
use crate::audit::key::read_key_file;

/// Lines after a seq gap searched for the missing seq, to tell a swap from a deletion.
const REORDER_LOOKAHEAD: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A record's MAC does not match its text: it was changed (or the line is not a record).
    Edited,
    /// Records are absent: a seq gap, or a record that does not chain to the one before it.
    Missing,
    /// Seq goes backwards, or a record comes before one that precedes it.
    Reordered,
    /// A file that is not the last ends before its seal and the next file does not say so.
    Truncated,
    /// The last file ends in a partial line: a write cut short (kill, full disk) or a cut file.
    TornLine,
    /// The last file ends without a seal: a running or killed edge. Not evidence of tampering.
    UnsealedTail,
    /// The trail was written under another key.
    WrongKey,
    /// A file could not be read.
    Unreadable,
}

impl ProblemKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Edited => "edited",
            ProblemKind::Missing => "missing",
            ProblemKind::Reordered => "reordered",
            ProblemKind::Truncated => "truncated",
            ProblemKind::TornLine => "torn_line",
            ProblemKind::UnsealedTail => "unsealed_tail",
            ProblemKind::WrongKey => "wrong_key",
            ProblemKind::Unreadable => "unreadable",
        }
    }

    /// Whether the finding proves the trail was altered (as opposed to cut short by a kill, a
    /// wrong key or an unreadable file).
    pub fn is_tampering(self) -> bool {
        matches!(
            self,
            ProblemKind::Edited
                | ProblemKind::Missing
                | ProblemKind::Reordered
                | ProblemKind::Truncated
        )
    }
}

/// Where and what the first problem is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub file: PathBuf,
    /// 1-based line number in `file` (0: the file as a whole).
    pub line: usize,
    /// The seq the line carries, if it could be read.
    pub seq: Option<u64>,
    pub detail: String,
}

#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub files: usize,
    /// Records whose MAC and linkage were verified.
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    /// True when the first file starts the trail (its `open` is the genesis record).
    pub from_genesis: bool,
    /// Facts worth knowing that are not problems: where the chain starts if not at genesis,
    /// files cut short by a kill and acknowledged by the next file.
    pub notes: Vec<String>,
    pub problem: Option<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let range = match (self.first_seq, self.last_seq) {
            (Some(a), Some(b)) => format!("seq {a}..={b}"),
            _ => "no records".into(),
        };
        match &self.problem {
            None => writeln!(
                f,
                "OK: {} records across {} files verify ({range}){}",
                self.records,
                self.files,
                if self.from_genesis {
                    ", from the start of the trail"
                } else {
                    ""
                }
            )?,
            Some(p) => {
                let seq = p.seq.map(|s| format!(" (seq {s})")).unwrap_or_default();
                let line = if p.line > 0 {
                    format!(" line {}", p.line)
                } else {
                    String::new()
                };
                writeln!(
                    f,
                    "PROBLEM {}: {}{line}{seq}: {}",
                    p.kind.as_str(),
                    p.file.display(),
                    p.detail
                )?;
                writeln!(f, "verified before it: {} records ({range})", self.records)?;
                if !p.kind.is_tampering() && p.kind != ProblemKind::Unreadable {
                    writeln!(f, "(this finding alone is not evidence of tampering)")?;
                }
            }
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

/// Sorts trail files into chain order: rotated files by the first seq in their names, then the
/// others (the live file) in their given order.
pub fn sort_trail_files(files: &mut [PathBuf]) {
    files.sort_by_key(|p| {
        let seq = p.file_name().and_then(|n| n.to_str()).and_then(rotated_seq);
        (seq.is_none(), seq.unwrap_or(0))
    });
}

/// Verifies `files`, in the order given, as one chain under `key`. Never panics on bad input.
pub fn verify(key: &[u8], files: &[PathBuf]) -> VerifyReport {
    let mut v = Verifier {
        key: new_key(key),
        key_id: String::new(),
        report: VerifyReport::default(),
        next: None,
        prev_end: None,
    };
    v.key_id = key_id(&v.key);
    if let Err(p) = v.run(files) {
        v.report.problem = Some(p);
    }
    v.report
}

/// The CLI: prints a summary; returns 0 (intact and sealed), 1 (a problem, including an
/// unsealed tail) or 2 (usage or I/O error).
pub fn run_cli(key_file: &Path, files: &[PathBuf]) -> i32 {
    if files.is_empty() {
        eprintln!(
            "usage: wssedge audit verify --key KEY_FILE AUDIT_FILE...\n\
             give the live file and its rotated files (<name>.<time>.<seq>); they are sorted by seq"
        );
        return 2;
    }
    let key = match read_key_file(key_file, false) {
        Ok((key, warning)) => {
            if let Some(w) = warning {
                eprintln!("warning: key file {}: {w}", key_file.display());
            }
            key
        }
        Err(reason) => {
            eprintln!("key file {}: {reason}", key_file.display());
            return 2;
        }
    };
    let mut files = files.to_vec();
    sort_trail_files(&mut files);
    let report = verify(&key, &files);
    print!("{report}");
    match &report.problem {
        None => 0,
        Some(p) if p.kind == ProblemKind::Unreadable => 2,
        Some(_) => 1,
    }
}

/// How the previous file ended.
struct PrevEnd {
    file: PathBuf,
    lines: usize,
    last_seq: u64,
    last_mac: Mac,
    sealed: bool,
}

struct Verifier {
    key: ChainKey,
    key_id: String,
    report: VerifyReport,
    /// (expected seq, expected prev) of the next record, once a record was verified.
    next: Option<(u64, Mac)>,
    prev_end: Option<PrevEnd>,
}

fn problem(
    kind: ProblemKind,
    file: &Path,
    line: usize,
    seq: Option<u64>,
    detail: String,
) -> Problem {
    Problem {
        kind,
        file: file.to_owned(),
        line,
        seq,
        detail,
    }
}

impl Verifier {
    fn run(&mut self, files: &[PathBuf]) -> Result<(), Problem> {
        if files.is_empty() {
            return Err(problem(
                ProblemKind::Unreadable,
                Path::new(""),
                0,
                None,
                "no files given".into(),
            ));
        }
        for (i, path) in files.iter().enumerate() {
            let data = std::fs::read(path).map_err(|e| {
                problem(
                    ProblemKind::Unreadable,
                    path,
                    0,
                    None,
                    format!("cannot read: {e}"),
                )
            })?;
            self.report.files += 1;
            self.file(path, &data, i + 1 == files.len())?;
        }
        Ok(())
    }

    fn file(&mut self, path: &Path, data: &[u8], is_last: bool) -> Result<(), Problem> {
        let (lines, fragment) = match data.iter().rposition(|&b| b == b'\n') {
            Some(end) => (
                data[..end].split(|&b| b == b'\n').collect::<Vec<_>>(),
                &data[end + 1..],
            ),
            None => (Vec::new(), data),
        };
        if lines.is_empty() {
            let (kind, detail) = if fragment.is_empty() {
                (ProblemKind::Truncated, "the file is empty".to_owned())
            } else if is_last {
                (
                    ProblemKind::TornLine,
                    "the file holds only a partial line".to_owned(),
                )
            } else {
                (
                    ProblemKind::Truncated,
                    "the file holds only a partial line".to_owned(),
                )
            };
            return Err(problem(kind, path, 1, None, detail));
        }
        let mut last_event = String::new();
        let mut seal_reason = None;
        for (i, raw) in lines.iter().enumerate() {
            let lineno = i + 1;
            let rec = parse_line(raw).map_err(|why| {
                problem(
                    ProblemKind::Edited,
                    path,
                    lineno,
                    None,
                    format!("not an audit record: the line {why}"),
                )
            })?;
            if !rec.mac_ok(&self.key) {
                return Err(self.mac_failure(path, &lines, i, &rec));
            }
            if last_event == "seal" {
                return Err(problem(
                    ProblemKind::Edited,
                    path,
                    lineno,
                    Some(rec.seq),
                    "a record follows the seal (files joined together?)".into(),
                ));
            }
            if i == 0 {
                self.open(path, &rec)?;
            } else if rec.event == "open" {
                return Err(problem(
                    ProblemKind::Edited,
                    path,
                    lineno,
                    Some(rec.seq),
                    "an `open` record in the middle of a file (files joined together?)".into(),
                ));
            } else {
                self.link(path, &lines, i, &rec)?;
            }
            self.next = Some((rec.seq.wrapping_add(1), rec.mac));
            self.report.records += 1;
            self.report.first_seq.get_or_insert(rec.seq);
            self.report.last_seq = Some(rec.seq);
            seal_reason = rec.str_field("reason").map(str::to_owned);
            last_event = rec.event;
        }
        let n = lines.len();
        let last_seq = self.report.last_seq.unwrap_or(0);
        let sealed = last_event == "seal";
        if sealed && !fragment.is_empty() {
            return Err(problem(
                ProblemKind::Edited,
                path,
                n + 1,
                None,
                "bytes follow the seal".into(),
            ));
        }
        if sealed && is_last && seal_reason.as_deref() == Some("rotate") {
            // Old files may be deleted by retention (a note at the start), newer ones never.
            return Err(problem(
                ProblemKind::Missing,
                path,
                n + 1,
                Some(last_seq.wrapping_add(1)),
                "the seal says the trail continues in a newer file, but none was given: \
                 the live file and any newer rotated files are missing (pass them all)"
                    .into(),
            ));
        }
        if !sealed && is_last {
            return Err(if fragment.is_empty() {
                problem(
                    ProblemKind::UnsealedTail, path, n, Some(last_seq),
                    format!("the file ends after seq {last_seq} without a seal: a running edge, or one that was killed (records after the last fsync were lost); everything up to it verifies"),
                )
            } else {
                problem(
                    ProblemKind::TornLine, path, n + 1, Some(last_seq.wrapping_add(1)),
                    format!("the file ends in a partial line after seq {last_seq}: a write cut short (kill, full disk) or a cut file; everything before it verifies"),
                )
            });
        }
        self.prev_end = Some(PrevEnd {
            file: path.to_owned(),
            lines: n,
            last_seq,
            last_mac: self.next.map_or(GENESIS, |(_, m)| m),
            sealed,
        });
        Ok(())
    }

    /// The first line of a file: an `open` continuing the previous file (or the trail's start).
    fn open(&mut self, path: &Path, rec: &ParsedLine<'_>) -> Result<(), Problem> {
        let seq = Some(rec.seq);
        if rec.event != "open" {
            return Err(problem(
                ProblemKind::Missing,
                path,
                1,
                seq,
                "the file does not start with its `open` record: its first records are missing"
                    .into(),
            ));
        }
        let state = rec.str_field("prev_state").unwrap_or("");
        let prev_seq = rec.u64_field("prev_seq");
        let prev_file = rec.str_field("prev_file").unwrap_or("(unnamed)").to_owned();
        let Some(pe) = self.prev_end.take() else {
            // The first file given.
            if state == "genesis" && rec.seq == 0 && rec.prev == GENESIS {
                self.report.from_genesis = true;
            } else {
                self.report.notes.push(format!(
                    "the chain starts at seq {} after {prev_file} (not given): earlier records were not checked",
                    rec.seq
                ));
            }
            return Ok(());
        };
        let expected = pe.last_seq.wrapping_add(1);
        let continues = rec.prev == pe.last_mac && rec.seq == expected;
        if continues && pe.sealed {
            return Ok(());
        }
        if continues && (state == "unsealed" || state == "torn") {
            self.report.notes.push(format!(
                "{} ends without a seal after seq {} (the edge was killed); the next file acknowledges it: \
                 nothing written was altered, records not yet written at the kill were lost",
                pe.file.display(),
                pe.last_seq
            ));
            return Ok(());
        }
        if !pe.sealed && (continues || prev_seq.is_some_and(|s| s > pe.last_seq)) {
            let cut = prev_seq
                .filter(|&s| s > pe.last_seq)
                .map(|s| format!("records seq {expected}..={s} and the seal were cut from its end"))
                .unwrap_or_else(|| "its seal was cut from its end".into());
            return Err(problem(
                ProblemKind::Truncated, &pe.file, pe.lines + 1, Some(expected),
                format!("the file ends after seq {} without a seal, but {} continues from seq {}: {cut}",
                    pe.last_seq, path.display(), prev_seq.map_or("?".into(), |s| s.to_string())),
            ));
        }
        if rec.seq > expected {
            return Err(problem(
                ProblemKind::Missing, path, 1, seq,
                format!("records seq {expected}..={} are missing between {} and this file (a whole file?)",
                    rec.seq - 1, pe.file.display()),
            ));
        }
        if rec.seq < expected {
            return Err(problem(
                ProblemKind::Reordered, path, 1, seq,
                format!("this file starts at seq {} but {} already reached seq {}: files out of order or repeated",
                    rec.seq, pe.file.display(), pe.last_seq),
            ));
        }
        Err(problem(
            ProblemKind::Missing, path, 1, seq,
            format!("this file does not continue {} (its prev_mac differs): a file from another chain, or files missing between them",
                pe.file.display()),
        ))
    }

    /// Any other line: seq and prev continue the previous record.
    fn link(
        &self,
        path: &Path,
        lines: &[&[u8]],
        i: usize,
        rec: &ParsedLine<'_>,
    ) -> Result<(), Problem> {
        let Some((expected, prev)) = self.next else {
            return Ok(());
        };
        let (lineno, seq) = (i + 1, Some(rec.seq));
        if rec.seq == expected && rec.prev == prev {
            return Ok(());
        }
        if rec.seq == expected {
            return Err(problem(
                ProblemKind::Missing, path, lineno, seq,
                "the record does not chain to the one before it (its prev differs): a record was replaced or removed".into(),
            ));
        }
        if rec.seq < expected {
            return Err(problem(
                ProblemKind::Reordered,
                path,
                lineno,
                seq,
                format!(
                    "seq {} follows seq {}: records reordered or repeated",
                    rec.seq,
                    expected.wrapping_sub(1)
                ),
            ));
        }
        let later = lines[i + 1..]
            .iter()
            .take(REORDER_LOOKAHEAD)
            .position(|l| parse_line(l).is_ok_and(|r| r.seq == expected));
        Err(match later {
            Some(k) => problem(
                ProblemKind::Reordered,
                path,
                lineno,
                seq,
                format!(
                    "seq {} comes before seq {expected} (line {}): records reordered",
                    rec.seq,
                    lineno + 1 + k
                ),
            ),
            None if rec.seq - expected == 1 => problem(
                ProblemKind::Missing,
                path,
                lineno,
                seq,
                format!("record seq {expected} is missing before this line"),
            ),
            None => problem(
                ProblemKind::Missing,
                path,
                lineno,
                seq,
                format!(
                    "records seq {expected}..={} are missing before this line",
                    rec.seq - 1
                ),
            ),
        })
    }

    /// Names a MAC failure: wrong key, a chain recomputed without the key, or an edit.
    fn mac_failure(&self, path: &Path, lines: &[&[u8]], i: usize, rec: &ParsedLine<'_>) -> Problem {
        let (lineno, seq) = (i + 1, Some(rec.seq));
        if rec.event == "open" {
            if let Some(id) = rec.str_field("key_id").filter(|id| *id != self.key_id) {
                return problem(
                    ProblemKind::WrongKey, path, lineno, seq,
                    format!("the file was written under key id {id}; the given key's id is {}: use the key that wrote it", self.key_id),
                );
            }
        }
        if unkeyed_candidates(&rec.prev, rec.prefix).contains(&rec.mac) {
            return problem(
                ProblemKind::Edited, path, lineno, seq,
                "the MAC is a plain SHA-256 of the line: the chain was recomputed without the key from here on".into(),
            );
        }
        let none_verify = i == 0
            && self.next.is_none()
            && lines
                .iter()
                .all(|l| parse_line(l).map_or(true, |r| !r.mac_ok(&self.key)));
        if none_verify {
            return problem(
                ProblemKind::WrongKey, path, lineno, seq,
                "no record in this file verifies under the given key: the wrong key (or every record rewritten)".into(),
            );
        }
        problem(
            ProblemKind::Edited,
            path,
            lineno,
            seq,
            "the MAC does not match the record: it was changed after it was written".into(),
        )
    }
}
