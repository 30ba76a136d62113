//! Key files of the test keys ([`wssedge_proto::jwt::mint`]: keys, PEM texts, tokens).

use std::path::{Path, PathBuf};

pub use wssedge_proto::jwt::mint::*;

use crate::auth::jwt::JwtConfig;

/// Writes a file, mode 0600.
pub fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// A directory with every test key (see [`KeyFiles`]).
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub keys: KeyFiles,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = KeyFiles::write_with(|name, bytes| write(dir.path(), name, bytes));
    Fixture { dir, keys }
}

impl Fixture {
    /// Every key, the corpus claim rules.
    pub fn config(&self) -> JwtConfig {
        self.keys.corpus_config()
    }
}
