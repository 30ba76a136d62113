//! The HMAC key file: raw bytes, at least 32 of them, readable by its owner only.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// An HMAC-SHA256 key shorter than its output gives away strength for nothing.
pub(crate) const MIN_KEY_BYTES: usize = 32;
/// A key file larger than this is surely the wrong file (a certificate bundle, a log…).
const MAX_KEY_BYTES: u64 = 64 << 10;

/// Reads the key file. With `strict`, a file that group or other may access is refused (the
/// writer); without it, it is only reported in the returned warning (the offline verifier, so
/// an auditor's copy can still be checked).
pub(crate) fn read_key_file(
    path: &Path,
    strict: bool,
) -> Result<(Vec<u8>, Option<String>), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mut warning = None;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        let msg = format!(
            "is accessible to group/other (mode {mode:04o}); anyone who can read it can forge the trail: run `chmod 600 {}`",
            path.display()
        );
        if strict {
            return Err(msg);
        }
        warning = Some(msg);
    }
    if meta.len() > MAX_KEY_BYTES {
        return Err(format!(
            "holds {} bytes, more than the {MAX_KEY_BYTES} a key file may hold: is this the right file?",
            meta.len()
        ));
    }
    let mut key = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut key)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if key.len() < MIN_KEY_BYTES {
        return Err(format!(
            "holds {} bytes; the audit key needs at least {MIN_KEY_BYTES} random bytes \
             (e.g. `head -c 32 /dev/urandom > {p} && chmod 600 {p}`)",
            key.len(),
            p = path.display()
        ));
    }
    Ok((key, warning))
}
