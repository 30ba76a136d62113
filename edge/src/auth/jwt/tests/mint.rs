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

/// A directory with every test key: `rsa.pem`, `p256.pem`, `p384.pem`, `ed.pem`, `hs.key`.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub rsa: PathBuf,
    pub p256: PathBuf,
    pub p384: PathBuf,
    pub ed: PathBuf,
    pub hs: PathBuf,
}

pub fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    Fixture {
        rsa: write(dir.path(), "rsa.pem", rsa_pem().as_bytes()),
        p256: write(dir.path(), "p256.pem", p256_pem(&k.p256).as_bytes()),
        p384: write(dir.path(), "p384.pem", p384_pem().as_bytes()),
        ed: write(dir.path(), "ed.pem", ed_pem().as_bytes()),
        hs: write(dir.path(), "hs.key", &k.hs),
        dir,
    }
}

impl Fixture {
    /// Every key, the corpus claim rules.
    pub fn config(&self) -> JwtConfig {
        JwtConfig {
            keys: vec![
                self.rsa.clone(),
                self.p256.clone(),
                self.p384.clone(),
                self.ed.clone(),
            ],
            hs_secret_file: Some(self.hs.clone()),
            issuer: Some(ISSUER.into()),
            audience: vec![AUDIENCE.into()],
            max_token_lifetime_s: Some(3600),
            single_use: true,
            ..JwtConfig::default()
        }
    }
}
