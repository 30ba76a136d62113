//! The test keys as the files a `[jwt]` section names, held in memory, and a loader that
//! reads them the way the edge reads the real files (the file stem is the kid; errors name the
//! config key and the file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::jwt::mint::*;
use crate::jwt::{jwks, keys, JwtConfig, JwtConfigError, JwtVerifier, KeySpec};

/// Every test key under a file name (see [`KeyFiles`]), held in memory.
pub struct Fixture {
    files: Mutex<BTreeMap<PathBuf, Vec<u8>>>,
    pub keys: KeyFiles,
}

pub fn fixture() -> Fixture {
    let files = Mutex::default();
    let keys = KeyFiles::write_with(|name, bytes| put(&files, name, bytes));
    Fixture { files, keys }
}

fn put(files: &Mutex<BTreeMap<PathBuf, Vec<u8>>>, name: &str, bytes: &[u8]) -> PathBuf {
    let p = Path::new("/keys").join(name);
    files.lock().unwrap().insert(p.clone(), bytes.to_vec());
    p
}

impl Fixture {
    /// Adds a file; its path, for a configuration to name.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        put(&self.files, name, bytes)
    }

    pub fn read(&self, path: &Path) -> Vec<u8> {
        self.files.lock().unwrap()[path].clone()
    }

    /// Every key, the corpus claim rules.
    pub fn config(&self) -> JwtConfig {
        self.keys.corpus_config()
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
