//! Key material from files: each file read (capped, and the HMAC secret's permissions checked)
//! and its bytes handed to [`wssedge_proto::jwt::keys`] / [`wssedge_proto::jwt::jwks`]. A
//! failure names the config key and the file.

use std::io::Read as _;
use std::path::Path;

use wssedge_proto::jwt::keys::{self, KeySpec, HS_SECRET_BYTES, MAX_KEY_FILE_BYTES};
use wssedge_proto::jwt::{jwks, JwtConfig, JwtVerifier};

use crate::config_error::ConfigError;

/// Why a key file could not be read. The text says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("the file stem is the kid and must be non-empty UTF-8")]
    NoKid,
    #[error("cannot open: {0}")]
    Open(std::io::Error),
    #[error("cannot read: {0}")]
    Read(std::io::Error),
    #[error("larger than {0} bytes; is this the right file?")]
    TooLarge(u64),
    #[error("cannot stat: {0}")]
    Stat(std::io::Error),
    #[error("not a regular file")]
    NotAFile,
    #[error(
        "permissions {mode:04o} are too open: the secret must not be readable by group or \
         others (chmod 600 {path})"
    )]
    TooOpen { mode: u32, path: String },
}

/// Validates `c`, reads every key file and binds the keys to the allowed algorithms.
/// Errors name the config key, the file and what to change.
pub fn load_verifier(c: &JwtConfig) -> Result<JwtVerifier, ConfigError> {
    c.validate()?;
    let mut specs: Vec<KeySpec> = Vec::new();
    for path in &c.keys {
        specs.push(load_pem_key(path)?);
    }
    if let Some(path) = &c.jwks {
        specs.extend(load_jwks(path)?);
    }
    if let Some(path) = &c.hs_secret_file {
        specs.push(load_hs_secret(path)?);
    }
    Ok(JwtVerifier::from_specs(c, specs)?)
}

/// Reads a whole file of at most `max` bytes.
pub(crate) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, KeyFileError> {
    let file = std::fs::File::open(path).map_err(KeyFileError::Open)?;
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(KeyFileError::Read)?;
    if out.len() as u64 > max {
        return Err(KeyFileError::TooLarge(max));
    }
    Ok(out)
}

/// The `kid` of a key file: its stem (`keys/issuer-2024.pem` → `issuer-2024`).
pub fn kid_from_path(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    (!stem.is_empty()).then(|| stem.to_owned())
}

/// A PEM public key file (see [`keys::pem_key`]). One key per file, since the file stem is
/// its `kid`.
pub fn load_pem_key(path: &Path) -> Result<KeySpec, ConfigError> {
    let fail =
        |reason: &dyn std::fmt::Display| ConfigError::invalid("jwt.keys", path.display(), reason);
    let kid = kid_from_path(path).ok_or_else(|| fail(&KeyFileError::NoKid))?;
    let bytes = read_capped(path, MAX_KEY_FILE_BYTES).map_err(|e| fail(&e))?;
    keys::pem_key(&bytes, kid, path.display().to_string()).map_err(|e| fail(&e))
}

/// Every key of the JWKS file at `path` (see [`jwks::parse`]).
pub fn load_jwks(path: &Path) -> Result<Vec<KeySpec>, ConfigError> {
    let fail =
        |reason: &dyn std::fmt::Display| ConfigError::invalid("jwt.jwks", path.display(), reason);
    let bytes = read_capped(path, MAX_KEY_FILE_BYTES).map_err(|e| fail(&e))?;
    jwks::parse(&bytes, &path.display().to_string()).map_err(|e| fail(&e))
}

/// The HMAC secret file: its raw bytes (see [`keys::hs_secret`]), readable by its owner only
/// (the rule ssh applies to private keys: no group or other permission bits).
pub fn load_hs_secret(path: &Path) -> Result<KeySpec, ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |reason: &dyn std::fmt::Display| {
        ConfigError::invalid("jwt.hs_secret_file", path.display(), reason)
    };
    let kid = kid_from_path(path).ok_or_else(|| fail(&KeyFileError::NoKid))?;
    let meta = std::fs::metadata(path).map_err(|e| fail(&KeyFileError::Stat(e)))?;
    if !meta.is_file() {
        return Err(fail(&KeyFileError::NotAFile));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(fail(&KeyFileError::TooOpen {
            mode,
            path: path.display().to_string(),
        }));
    }
    let bytes = read_capped(path, *HS_SECRET_BYTES.end() as u64).map_err(|e| fail(&e))?;
    keys::hs_secret(&bytes, kid, path.display().to_string()).map_err(|e| fail(&e))
}
