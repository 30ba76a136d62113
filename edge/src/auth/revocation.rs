//! Revoked `jti`s and subjects.
//!
//! Two sources: a file the operator maintains, and revoke/unrevoke commands from the control
//! socket. A file entry belongs to the file: re-reading it replaces all file entries, and a
//! command cannot unrevoke one (the answer says to edit the file), so nothing the file says
//! silently comes back or goes away. A command entry lasts until a command unrevokes it.
//!
//! Sharing is the caller's: cores hold an `Arc<Revocations>` (arc-swap); a change is a clone,
//! an edit and a swap. [`Revocations::version`] grows with every change, so a core notices one
//! with a single integer comparison and only then re-checks its live sessions. Cloning costs
//! O(entries) and happens on the control path only; a query is two hash lookups.
//!
//! # File format
//!
//! UTF-8, one entry per line: `jti <value>` or `sub <value>` (the value is the rest of the
//! line without its surrounding ASCII spaces and tabs; it may contain spaces). Blank lines and
//! lines starting with `#` are ignored; `#` elsewhere is part of a value. Anything else is
//! refused with its line number — a value included that is no exact identifier
//! ([`wssedge_proto::jwt::identifier`]: the rule tokens' `sub` and `jti` are held to at verification),
//! so the file names nothing a token could not carry and nothing is silently trimmed into
//! another value.

use std::collections::HashMap;
use std::path::Path;

pub use wssedge_proto::jwt::RevokedBy;
use wssedge_proto::jwt::{check_identifier, IdentifierError, MAX_IDENTIFIER_BYTES};

/// One revocation: a `jti` or a subject.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RevocationEntry {
    Jti(String),
    Sub(String),
}

/// Longest value accepted (the identifier rule's cap).
pub const MAX_VALUE_BYTES: usize = MAX_IDENTIFIER_BYTES;

/// What separates the kind from the value, and what a line may be padded with: ASCII only, so
/// a look-alike space (U+00A0…) stays part of the value and the identifier rule refuses it.
fn is_separator(c: char) -> bool {
    c == ' ' || c == '\t' || c == '\r'
}

/// Why a revocation line (`jti <value>` / `sub <value>`) is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("expected `jti <value>` or `sub <value>`")]
    Shape,
    #[error("`{kind}` without a value")]
    NoValue { kind: String },
    #[error("the value is {0}")]
    Value(IdentifierError),
    #[error("unknown kind `{}`; expected `jti` or `sub`", .kind.escape_debug())]
    UnknownKind { kind: String },
}

impl RevocationEntry {
    /// Parses `jti <value>` / `sub <value>` (a file line); the value must be an exact
    /// identifier ([`check_identifier`]).
    pub fn parse(line: &str) -> Result<Self, EntryError> {
        let line = line.trim_matches(is_separator);
        let (kind, value) = line.split_once(is_separator).ok_or(EntryError::Shape)?;
        let value = value.trim_matches(is_separator);
        if value.is_empty() {
            return Err(EntryError::NoValue {
                kind: kind.to_owned(),
            });
        }
        check_identifier(value).map_err(EntryError::Value)?;
        match kind {
            "jti" => Ok(RevocationEntry::Jti(value.to_owned())),
            "sub" => Ok(RevocationEntry::Sub(value.to_owned())),
            other => Err(EntryError::UnknownKind {
                kind: other.to_owned(),
            }),
        }
    }
}

impl std::fmt::Display for RevocationEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RevocationEntry::Jti(v) => write!(f, "jti {v}"),
            RevocationEntry::Sub(v) => write!(f, "sub {v}"),
        }
    }
}

/// Where an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    Command,
}

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("revocation file {path}: cannot read: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("revocation file {path}, line {line}: {reason}")]
    Line {
        path: String,
        line: usize,
        reason: EntryError,
    },
    #[error("`{0}` comes from the revocation file; remove it there and reload")]
    FromFile(RevocationEntry),
}

/// The revocation set. `Clone` for copy-on-write sharing; queries never allocate.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    jtis: HashMap<String, Source>,
    subs: HashMap<String, Source>,
    version: u64,
}

impl Revocations {
    pub fn new() -> Self {
        Self::default()
    }

    /// The revoked token ids and subjects, each sorted (for listings).
    pub fn entries(&self) -> (Vec<String>, Vec<String>) {
        let sorted = |m: &HashMap<String, Source>| {
            let mut v: Vec<String> = m.keys().cloned().collect();
            v.sort();
            v
        };
        (sorted(&self.jtis), sorted(&self.subs))
    }

    /// Grows by at least one with every change; never goes back.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.jtis.len() + self.subs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The subject wins over the `jti` when both match: it is the broader decision.
    pub fn is_revoked(&self, sub: Option<&str>, jti: Option<&str>) -> Option<RevokedBy> {
        if sub.is_some_and(|s| self.subs.contains_key(s)) {
            return Some(RevokedBy::Subject);
        }
        if jti.is_some_and(|j| self.jtis.contains_key(j)) {
            return Some(RevokedBy::Jti);
        }
        None
    }

    /// Parses file text; `path` only names the file in errors.
    pub fn parse_file(text: &str, path: &str) -> Result<Vec<RevocationEntry>, RevocationError> {
        let mut out = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let t = line.trim_matches(is_separator);
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            out.push(
                RevocationEntry::parse(t).map_err(|reason| RevocationError::Line {
                    path: path.to_owned(),
                    line: i + 1,
                    reason,
                })?,
            );
        }
        Ok(out)
    }

    /// Reads and parses the revocation file.
    pub fn read_file(path: &Path) -> Result<Vec<RevocationEntry>, RevocationError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RevocationError::Read {
            path: name.clone(),
            source,
        })?;
        Self::parse_file(&text, &name)
    }

    /// Replaces every file entry with `entries` (the file as just read). Command entries
    /// stay. Returns whether anything changed (the version moves only then).
    pub fn replace_file_entries(&mut self, entries: &[RevocationEntry]) -> bool {
        let mut jtis: HashMap<String, Source> = HashMap::new();
        let mut subs: HashMap<String, Source> = HashMap::new();
        for (map, mine) in [(&self.jtis, &mut jtis), (&self.subs, &mut subs)] {
            for (v, s) in map {
                if *s == Source::Command {
                    mine.insert(v.clone(), Source::Command);
                }
            }
        }
        for e in entries {
            let (map, v) = match e {
                RevocationEntry::Jti(v) => (&mut jtis, v),
                RevocationEntry::Sub(v) => (&mut subs, v),
            };
            // A value both commanded and in the file belongs to the file from now on.
            map.insert(v.clone(), Source::File);
        }
        let changed = jtis != self.jtis || subs != self.subs;
        if changed {
            self.jtis = jtis;
            self.subs = subs;
            self.bump();
        }
        changed
    }

    /// The entries control commands made (in a fleet: every node's), for a resync.
    pub fn command_entries(&self) -> Vec<RevocationEntry> {
        let jtis = self.jtis.iter().filter(|(_, s)| **s == Source::Command);
        let subs = self.subs.iter().filter(|(_, s)| **s == Source::Command);
        jtis.map(|(v, _)| RevocationEntry::Jti(v.clone()))
            .chain(subs.map(|(v, _)| RevocationEntry::Sub(v.clone())))
            .collect()
    }

    /// A control command: revoke. `false` if it was already revoked (no version change).
    pub fn revoke(&mut self, entry: &RevocationEntry) -> bool {
        let (map, v) = self.map_mut(entry);
        if map.contains_key(v) {
            return false;
        }
        map.insert(v.to_owned(), Source::Command);
        self.bump();
        true
    }

    /// A control command: unrevoke. `Ok(false)` if it was not revoked; an entry the file
    /// holds is refused (it would come back at the next reload).
    pub fn unrevoke(&mut self, entry: &RevocationEntry) -> Result<bool, RevocationError> {
        let (map, v) = self.map_mut(entry);
        match map.get(v) {
            None => Ok(false),
            Some(Source::File) => Err(RevocationError::FromFile(entry.clone())),
            Some(Source::Command) => {
                map.remove(v);
                self.bump();
                Ok(true)
            }
        }
    }

    /// Where a revoked entry comes from, if it is revoked.
    pub fn source(&self, entry: &RevocationEntry) -> Option<Source> {
        match entry {
            RevocationEntry::Jti(v) => self.jtis.get(v).copied(),
            RevocationEntry::Sub(v) => self.subs.get(v).copied(),
        }
    }

    fn map_mut<'a>(
        &'a mut self,
        entry: &'a RevocationEntry,
    ) -> (&'a mut HashMap<String, Source>, &'a str) {
        match entry {
            RevocationEntry::Jti(v) => (&mut self.jtis, v),
            RevocationEntry::Sub(v) => (&mut self.subs, v),
        }
    }

    fn bump(&mut self) {
        self.version = self.version.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jti(v: &str) -> RevocationEntry {
        RevocationEntry::Jti(v.into())
    }
    fn sub(v: &str) -> RevocationEntry {
        RevocationEntry::Sub(v.into())
    }

    #[test]
    fn command_entries_are_the_commanded_ones_only() {
        let mut r = Revocations::new();
        r.replace_file_entries(&[RevocationEntry::Sub("from-file".into())]);
        r.revoke(&RevocationEntry::Jti("j".into()));
        r.revoke(&RevocationEntry::Sub("s".into()));
        let mut got = r.command_entries();
        got.sort_by_key(|e| e.to_string());
        assert_eq!(
            got,
            [
                RevocationEntry::Jti("j".into()),
                RevocationEntry::Sub("s".into())
            ]
        );
    }

    #[test]
    fn file_format() {
        let text = "# revoked after the incident\n\njti abc-123\nsub  alice@example.com \n  # indented comment\nsub svc account #7\n";
        let e = Revocations::parse_file(text, "r.txt").unwrap();
        assert_eq!(
            e,
            vec![
                jti("abc-123"),
                sub("alice@example.com"),
                sub("svc account #7")
            ]
        );
        for (bad, line) in [
            ("jti a\nuser bob\n", 2),
            ("sub\n", 1),
            ("jti    \n", 1),
            ("jti a\x07b\n", 1),
            ("\n\njti-abc\n", 3),
            // What no token could carry: a look-alike space, an invisible character.
            ("sub ok\nsub alice\u{a0}\n", 2),
            ("jti j-1\u{200b}\n", 1),
            ("sub\u{a0}alice\n", 1),
            ("jti \u{feff}j\n", 1),
        ] {
            match Revocations::parse_file(bad, "r.txt") {
                Err(RevocationError::Line { line: l, path, .. }) => {
                    assert_eq!((l, path.as_str()), (line, "r.txt"), "{bad:?}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = format!("jti {}\n", "x".repeat(MAX_VALUE_BYTES + 1));
        assert!(Revocations::parse_file(&long, "r").is_err());
    }

    #[test]
    fn queries() {
        let mut r = Revocations::new();
        r.replace_file_entries(&[jti("j1"), sub("alice")]);
        assert_eq!(
            r.is_revoked(Some("alice"), Some("other")),
            Some(RevokedBy::Subject)
        );
        assert_eq!(r.is_revoked(Some("bob"), Some("j1")), Some(RevokedBy::Jti));
        assert_eq!(
            r.is_revoked(Some("alice"), Some("j1")),
            Some(RevokedBy::Subject)
        );
        assert_eq!(r.is_revoked(Some("bob"), None), None);
        assert_eq!(r.is_revoked(None, None), None);
        // A jti value is not a subject.
        assert_eq!(r.is_revoked(Some("j1"), None), None);
    }

    #[test]
    fn version_grows_with_every_change_only() {
        let mut r = Revocations::new();
        assert_eq!(r.version(), 0);
        assert!(r.revoke(&jti("a")));
        assert_eq!(r.version(), 1);
        assert!(!r.revoke(&jti("a")));
        assert_eq!(r.version(), 1);
        assert!(r.replace_file_entries(&[sub("s")]));
        assert_eq!(r.version(), 2);
        assert!(!r.replace_file_entries(&[sub("s")]), "same file, no change");
        assert_eq!(r.version(), 2);
        assert!(r.unrevoke(&jti("a")).unwrap());
        assert_eq!(r.version(), 3);
        assert!(!r.unrevoke(&jti("a")).unwrap());
        assert_eq!(r.version(), 3);
        // A clone carries the version, so a swapped-in edit is always newer.
        let mut next = r.clone();
        next.revoke(&sub("t"));
        assert!(next.version() > r.version());
    }

    #[test]
    fn file_entries_belong_to_the_file() {
        let mut r = Revocations::new();
        r.revoke(&jti("cmd"));
        r.replace_file_entries(&[jti("file"), sub("s")]);
        assert!(matches!(
            r.unrevoke(&jti("file")),
            Err(RevocationError::FromFile(_))
        ));
        assert_eq!(r.source(&jti("cmd")), Some(Source::Command));
        // A reload without "file" un-revokes it; the command entry survives.
        r.replace_file_entries(&[sub("s")]);
        assert_eq!(r.is_revoked(None, Some("file")), None);
        assert_eq!(r.is_revoked(None, Some("cmd")), Some(RevokedBy::Jti));
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn read_file_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("revoked.txt");
        std::fs::write(&p, "jti ok\nbad line here\n").unwrap();
        let e = Revocations::read_file(&p).unwrap_err().to_string();
        assert!(e.contains("revoked.txt") && e.contains("line 2"), "{e}");
        assert!(Revocations::read_file(&dir.path().join("missing")).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever passes the identifier rule survives the trip through a revocations-file
        /// line unchanged: what is admitted can be revoked.
        #[test]
        fn a_passing_value_survives_a_revocation_line(s in "\\PC{0,40}") {
            if check_identifier(&s).is_ok() {
                let parsed = RevocationEntry::parse(&format!("sub {s}"));
                proptest::prop_assert_eq!(parsed, Ok(RevocationEntry::Sub(s.clone())));
            }
        }

        /// Nothing panics, whatever the file holds.
        #[test]
        fn revocation_files_never_panic(text in proptest::prelude::any::<String>()) {
            let _ = Revocations::parse_file(&text, "r");
        }

        /// And whatever a revocation accepts passes the rule: no value can be revoked that no
        /// token could carry.
        #[test]
        fn a_parsed_revocation_is_an_exact_identifier(s in "\\PC{0,40}|[ \\t\\u{a0}\\u{200b}a-z]{0,12}") {
            if let Ok(entry) = RevocationEntry::parse(&format!("jti {s}")) {
                let RevocationEntry::Jti(v) = entry else {
                    unreachable!("a jti line")
                };
                proptest::prop_assert_eq!(check_identifier(&v), Ok(()));
            }
        }
    }
}
