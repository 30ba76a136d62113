//! The HMAC key file: raw bytes, at least 32 of them, readable by its owner only.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An HMAC-SHA256 key shorter than its output gives away strength for nothing.
pub(crate) const MIN_KEY_BYTES: usize = 32;
/// A key file larger than this is surely the wrong file (a certificate bundle, a log…).
const MAX_KEY_BYTES: u64 = 64 << 10;

/// What is wrong with a key file; each says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot open it: {0}")]
    Open(#[source] std::io::Error),
    #[error("cannot stat it: {0}")]
    Stat(#[source] std::io::Error),
    #[error("is not a regular file")]
    NotAFile,
    #[error(
        "is accessible to group/other (mode {mode:04o}); anyone who can read it can forge the trail: run `chmod 600 {path}`"
    )]
    OpenToOthers { mode: u32, path: PathBuf },
    #[error(
        "holds {len} bytes, more than the {MAX_KEY_BYTES} a key file may hold: is this the right file?"
    )]
    TooLarge { len: u64 },
    #[error("cannot read it: {0}")]
    Read(#[source] std::io::Error),
    #[error(
        "holds {len} bytes; the audit key needs at least {MIN_KEY_BYTES} random bytes \
         (e.g. `head -c 32 /dev/urandom > {path} && chmod 600 {path}`)"
    )]
    TooShort { len: usize, path: PathBuf },
}

/// Reads the key file. With `strict`, a file that group or other may access is refused (the
/// writer); without it, it is only reported in the returned warning (the offline verifier, so
/// an auditor's copy can still be checked).
pub(crate) fn read_key_file(
    path: &Path,
    strict: bool,
) -> Result<(Vec<u8>, Option<KeyFileError>), KeyFileError> {
    let file = std::fs::File::open(path).map_err(KeyFileError::Open)?;
    let meta = file.metadata().map_err(KeyFileError::Stat)?;
    if !meta.is_file() {
        return Err(KeyFileError::NotAFile);
    }
    let mut warning = None;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        let open = KeyFileError::OpenToOthers {
            mode,
            path: path.to_owned(),
        };
        if strict {
            return Err(open);
        }
        warning = Some(open);
    }
    if meta.len() > MAX_KEY_BYTES {
        return Err(KeyFileError::TooLarge { len: meta.len() });
    }
    let mut key = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_KEY_BYTES + 1)
        .read_to_end(&mut key)
        .map_err(KeyFileError::Read)?;
    if key.len() < MIN_KEY_BYTES {
        return Err(KeyFileError::TooShort {
            len: key.len(),
            path: path.to_owned(),
        });
    }
    Ok((key, warning))
}
