//! The test keys as the files a `[jwt]` section names, held in memory, and a loader that
//! reads them the way the edge reads the real files (the file stem is the kid; errors name the
//! config key and the file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::jwt::mint::*;
use crate::jwt::{jwks, keys, JwtConfig, JwtConfigError, JwtVerifier, KeySpec};

/// Every test key under a file name: `rsa.pem`, `p256.pem`, `p384.pem`, `ed.pem`, `hs.key`.
pub struct Fixture {
    files: Mutex<BTreeMap<PathBuf, Vec<u8>>>,
    pub rsa: PathBuf,
    pub p256: PathBuf,
    pub p384: PathBuf,
    pub ed: PathBuf,
    pub hs: PathBuf,
}

pub fn fixture() -> Fixture {
    let k = keys();
    let f = Fixture {
        files: Mutex::default(),
        rsa: PathBuf::new(),
        p256: PathBuf::new(),
        p384: PathBuf::new(),
        ed: PathBuf::new(),
        hs: PathBuf::new(),
    };
    Fixture {
        rsa: f.write("rsa.pem", rsa_pem().as_bytes()),
        p256: f.write("p256.pem", p256_pem(&k.p256).as_bytes()),
        p384: f.write("p384.pem", p384_pem().as_bytes()),
        ed: f.write("ed.pem", ed_pem().as_bytes()),
        hs: f.write("hs.key", &k.hs),
        ..f
    }
}

impl Fixture {
    /// Adds a file; its path, for a configuration to name.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = Path::new("/keys").join(name);
        self.files.lock().unwrap().insert(p.clone(), bytes.to_vec());
        p
    }

    pub fn read(&self, path: &Path) -> Vec<u8> {
        self.files.lock().unwrap()[path].clone()
    }

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

    pub fn verifier(&self) -> JwtVerifier {
        self.load(&self.config()).unwrap()
    }

    /// Validates `c`, reads the key files it names from this fixture, and binds the keys.
    pub fn load(&self, c: &JwtConfig) -> Result<JwtVerifier, JwtConfigError> {
        c.validate()?;
        let fail =
            |key, p: &Path, e: &dyn std::fmt::Display| JwtConfigError::invalid(key, p.display(), e);
        let kid = |p: &Path| p.file_stem().unwrap().to_str().unwrap().to_owned();
        let origin = |p: &Path| p.display().to_string();
        let mut specs: Vec<KeySpec> = Vec::new();
        for p in &c.keys {
            let spec = keys::pem_key(&self.read(p), kid(p), origin(p));
            specs.push(spec.map_err(|e| fail("jwt.keys", p, &e))?);
        }
        if let Some(p) = &c.jwks {
            let set = jwks::parse(&self.read(p), &origin(p));
            specs.extend(set.map_err(|e| fail("jwt.jwks", p, &e))?);
        }
        if let Some(p) = &c.hs_secret_file {
            let spec = keys::hs_secret(&self.read(p), kid(p), origin(p));
            specs.push(spec.map_err(|e| fail("jwt.hs_secret_file", p, &e))?);
        }
        JwtVerifier::from_specs(c, specs)
    }
}
