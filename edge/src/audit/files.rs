//! The trail's files: names, the writer's lock, and reading the end of an existing file.
//!
//! * live file: `<path>`
//! * rotated:   `<path>.<UTC time>.<first seq, 20 digits>` (sorts by seq; see
//!   [`crate::audit::sort_trail_files`])
//! * `.<name>.new` (hidden, so `audit.log*` globs skip it): the next file while it is being
//!   created; renamed over `<path>` only once its `open` record is on disk.
//! * `.<name>.lock` (hidden): flock'ed by the one process writing the trail.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use crate::audit::chain::{parse_line, ChainKey, Mac};
use crate::audit::time::Timestamp;
use crate::audit::AuditError;

/// Rotated names end in the first seq of the file, zero-padded to this many digits.
pub(crate) const SEQ_DIGITS: usize = 20;
/// How much of a file's end is read at start to find its last record.
const TAIL_WINDOW: u64 = 4 << 20;

pub(crate) struct TrailPaths {
    pub live: PathBuf,
    pub dir: PathBuf,
    pub name: String,
    pub next: PathBuf,
    pub lock: PathBuf,
}

impl TrailPaths {
    pub(crate) fn new(path: &Path) -> Result<Self, AuditError> {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| AuditError::Trail {
                path: path.to_owned(),
                reason: "audit.path must end in a UTF-8 file name".into(),
            })?
            .to_owned();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        Ok(TrailPaths {
            live: path.to_owned(),
            next: dir.join(format!(".{name}.new")),
            lock: dir.join(format!(".{name}.lock")),
            dir,
            name,
        })
    }

    pub(crate) fn rotated_name(&self, at: Timestamp, first_seq: u64) -> String {
        format!(
            "{}.{}.{first_seq:0width$}",
            self.name,
            at.compact(),
            width = SEQ_DIGITS
        )
    }

    /// Rotated files of this trail in the directory, by first seq.
    pub(crate) fn rotated(&self) -> Result<Vec<(u64, PathBuf)>, AuditError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io(&self.dir, "list", e))?;
        let prefix = format!("{}.", self.name);
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(&self.dir, "list", e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let (true, Some(seq)) = (name.starts_with(&prefix), rotated_seq(name)) {
                out.push((seq, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// The first seq a rotated file name carries: its last dot-separated part, 20 digits.
pub(crate) fn rotated_seq(name: &str) -> Option<u64> {
    let last = name.rsplit('.').next()?;
    if last.len() == SEQ_DIGITS && last.bytes().all(|b| b.is_ascii_digit()) {
        last.parse().ok()
    } else {
        None
    }
}

pub(crate) fn io(path: &Path, action: &str, source: std::io::Error) -> AuditError {
    AuditError::Io {
        path: path.to_owned(),
        action: action.to_owned(),
        source,
    }
}

/// Takes the trail's exclusive lock: two writers on one trail would interleave two chains.
/// Held until the returned file is dropped (the writer thread's end).
pub(crate) fn lock(paths: &TrailPaths) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&paths.lock)
        .map_err(|e| io(&paths.lock, "create the lock file", e))?;
    if let Err(e) = wssedge_sys::fs::lock_exclusive_nonblocking(file.as_fd()) {
        return Err(AuditError::Trail {
            path: paths.live.clone(),
            reason: format!(
                "another process writes this audit trail (lock {} is held: {e}); give each wssedge its own audit.path",
                paths.lock.display()
            ),
        });
    }
    Ok(file)
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// How an existing file ends, read at start to continue its chain.
#[derive(Debug)]
pub(crate) struct Tail {
    /// The seq of its first record (names the file when it is rotated away).
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_mac: Mac,
    pub sealed: bool,
    /// Bytes after the last newline: a write cut short.
    pub torn: bool,
}

/// Reads the first and the last complete line of `path` and checks the last one's MAC with
/// `key`, so the trail never continues a chain under a different key.
pub(crate) fn read_tail(path: &Path, key: &ChainKey) -> Result<Tail, AuditError> {
    let trail_err = |reason: String| AuditError::Trail {
        path: path.to_owned(),
        reason,
    };
    let move_aside = "check it with `wssedge audit verify`, then move it out of the way (with its rotated files, to start a new trail) and restart";
    let mut file = File::open(path).map_err(|e| io(path, "open", e))?;
    let len = file.metadata().map_err(|e| io(path, "stat", e))?.len();
    let start = len.saturating_sub(TAIL_WINDOW);
    file.seek(SeekFrom::Start(start))
        .map_err(|e| io(path, "seek in", e))?;
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.read_to_end(&mut tail)
        .map_err(|e| io(path, "read", e))?;
    let Some(last_nl) = tail.iter().rposition(|&b| b == b'\n') else {
        return Err(trail_err(format!("holds no complete record; {move_aside}")));
    };
    let torn = last_nl + 1 != tail.len();
    let line_start = match tail[..last_nl].iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        None if start == 0 => 0,
        None => {
            return Err(trail_err(format!(
                "its last line is longer than {TAIL_WINDOW} bytes; {move_aside}"
            )))
        }
    };
    let last = parse_line(&tail[line_start..last_nl])
        .map_err(|why| trail_err(format!("its last complete line {why}; {move_aside}")))?;
    if !last.mac_ok(key) {
        return Err(trail_err(format!(
            "its last record (seq {}) does not verify under audit.key_file: configure the key that wrote this trail, or {move_aside}",
            last.seq
        )));
    }
    let first_seq = if start == 0 {
        let end = tail.iter().position(|&b| b == b'\n').unwrap_or(last_nl);
        parse_line(&tail[..end]).map(|l| l.seq).unwrap_or(last.seq)
    } else {
        read_first_seq(path).unwrap_or(last.seq)
    };
    Ok(Tail {
        first_seq,
        last_seq: last.seq,
        last_mac: last.mac,
        sealed: last.event == "seal" && !torn,
        torn,
    })
}

fn read_first_seq(path: &Path) -> Option<u64> {
    let mut head = Vec::new();
    File::open(path)
        .ok()?
        .take(TAIL_WINDOW)
        .read_to_end(&mut head)
        .ok()?;
    let end = head.iter().position(|&b| b == b'\n')?;
    parse_line(&head[..end]).ok().map(|l| l.seq)
}
