//! Key material: PEM public keys and the HMAC secret file, normalised to the bytes aws-lc-rs
//! verifies with. A key gets its [`KeyFamily`] here, once, from what the key *is* (the SPKI
//! algorithm and curve), never from what a token claims.

use std::io::Read as _;
use std::path::Path;

use aws_lc_rs::signature::ParsedPublicKey;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::alg::{Alg, KeyFamily};
use super::der;
use super::pem;
use crate::config_error::ConfigError;

/// RSA moduli aws-lc-rs verifies (and RFC 7518 §3.3 asks at least 2048 of).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;
/// A key or JWKS file larger than this is not a key file.
pub(crate) const MAX_KEY_FILE_BYTES: u64 = 1 << 20;
/// The HMAC secret: RFC 7518 §3.2 wants at least the hash size (32 for HS256); more than a
/// few KiB means the path names the wrong file.
const HS_SECRET_BYTES: std::ops::RangeInclusive<usize> = 32..=4096;

/// One configured key, before it is bound to the allowed algorithms.
#[derive(Clone)]
pub struct KeySpec {
    pub kid: String,
    pub family: KeyFamily,
    /// RSA: PKCS#1 `RSAPublicKey` DER. EC: the uncompressed SEC1 point. Ed25519: the 32 raw
    /// bytes. HMAC: the secret.
    pub bytes: Vec<u8>,
    /// The only `alg` this key may verify (a JWKS key's `alg`), if restricted.
    pub alg: Option<Alg>,
    /// Where it came from, for error messages: "jwt.keys", "jwt.jwks", "jwt.hs_secret_file".
    pub config_key: &'static str,
    pub origin: String,
}

impl std::fmt::Debug for KeySpec {
    // The HMAC secret must never reach a log; public keys are not interesting enough to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySpec")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("alg", &self.alg)
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

/// Reads a whole file of at most `max` bytes.
pub(crate) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let mut out = Vec::new();
    file.take(max + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("cannot read: {e}"))?;
    if out.len() as u64 > max {
        return Err(format!("larger than {max} bytes; is this the right file?"));
    }
    Ok(out)
}

/// The `kid` of a key file: its stem (`keys/issuer-2024.pem` → `issuer-2024`).
pub fn kid_from_path(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    (!stem.is_empty()).then(|| stem.to_owned())
}

/// A PEM public key file: `PUBLIC KEY` (SPKI: RSA, EC P-256/P-384, Ed25519) or
/// `RSA PUBLIC KEY` (PKCS#1). One key per file, since the file stem is its `kid`.
pub fn load_pem_key(path: &Path) -> Result<KeySpec, ConfigError> {
    let fail = |reason: String| ConfigError::invalid("jwt.keys", path.display(), reason);
    let kid = kid_from_path(path)
        .ok_or_else(|| fail("the file stem is the kid and must be non-empty UTF-8".into()))?;
    let bytes = read_capped(path, MAX_KEY_FILE_BYTES).map_err(fail)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| fail("not a PEM text file".into()))?;
    let blocks = pem::parse(text).map_err(fail)?;
    let block = match blocks.as_slice() {
        [one] => one,
        [] => {
            return Err(fail(
                "no PEM block; expected -----BEGIN PUBLIC KEY-----".into(),
            ))
        }
        _ => {
            return Err(fail(
                "more than one PEM block; put one key per file (the file stem is its kid)".into(),
            ))
        }
    };
    let (family, key_bytes) = match block.label.as_str() {
        "PUBLIC KEY" => spki(&block.der),
        "RSA PUBLIC KEY" => pkcs1_rsa(&block.der),
        label if label.contains("PRIVATE") => Err(format!(
            "this is a {label}; give the public key (openssl pkey -in KEY -pubout)"
        )),
        "CERTIFICATE" => Err(
            "this is a certificate; give its public key (openssl x509 -in CERT -pubkey -noout)"
                .into(),
        ),
        label => Err(format!(
            "PEM label {label} is not a public key; expected PUBLIC KEY or RSA PUBLIC KEY"
        )),
    }
    .map_err(fail)?;
    check_public_key(family, &key_bytes).map_err(fail)?;
    Ok(KeySpec {
        kid,
        family,
        bytes: key_bytes,
        alg: None,
        config_key: "jwt.keys",
        origin: path.display().to_string(),
    })
}

/// Classifies a DER SubjectPublicKeyInfo by its algorithm OID (and curve).
pub fn spki(der_bytes: &[u8]) -> Result<(KeyFamily, Vec<u8>), String> {
    let (rest, info) = SubjectPublicKeyInfo::from_der(der_bytes)
        .map_err(|_| "not a DER SubjectPublicKeyInfo".to_owned())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the SubjectPublicKeyInfo".into());
    }
    let oid = &info.algorithm.algorithm;
    let key: &[u8] = &info.subject_public_key.data;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        pkcs1_rsa(key)
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = info
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .ok_or_else(|| "EC key without a named curve".to_owned())?;
        let family = if curve == OID_EC_P256 {
            KeyFamily::EcP256
        } else if curve == OID_NIST_EC_P384 {
            KeyFamily::EcP384
        } else {
            return Err(format!(
                "EC curve {curve} is not supported; use P-256 (ES256) or P-384 (ES384)"
            ));
        };
        Ok((family, key.to_vec()))
    } else if *oid == OID_SIG_ED25519 {
        Ok((KeyFamily::Ed25519, key.to_vec()))
    } else {
        Err(format!(
            "key algorithm {oid} is not supported; use RSA, EC P-256/P-384 or Ed25519"
        ))
    }
}

/// A PKCS#1 `RSAPublicKey`, re-encoded canonically through [`rsa_from_components`].
fn pkcs1_rsa(der_bytes: &[u8]) -> Result<(KeyFamily, Vec<u8>), String> {
    let (rest, key) =
        RSAPublicKey::from_der(der_bytes).map_err(|_| "not a DER RSAPublicKey".to_owned())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the RSAPublicKey".into());
    }
    Ok((
        KeyFamily::Rsa,
        rsa_from_components(key.modulus, key.exponent)?,
    ))
}

/// PKCS#1 DER from `n` and `e`, refusing sizes aws-lc-rs would refuse at every verify.
pub fn rsa_from_components(n: &[u8], e: &[u8]) -> Result<Vec<u8>, String> {
    let bits = der::bit_len(n);
    if !RSA_BITS.contains(&bits) {
        return Err(format!(
            "RSA modulus of {bits} bits; {}..={} bits are accepted",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    let e = der::strip_leading_zeros(e);
    if e.is_empty() || e.len() > 8 || e[e.len() - 1] & 1 == 0 || e == [1] {
        return Err("RSA public exponent must be odd, above 1 and fit 64 bits".into());
    }
    Ok(der::rsa_public_key(n, e))
}

/// Parses the key as aws-lc-rs will, so that a bad point or modulus fails at start with the
/// file's name rather than as `bad_signature` on every token.
pub fn check_public_key(family: KeyFamily, bytes: &[u8]) -> Result<(), String> {
    let Some(alg) = family
        .default_algs()
        .first()
        .and_then(|a| a.public_key_algorithm())
    else {
        return Err("not a public key".into());
    };
    match family {
        KeyFamily::Ed25519 if bytes.len() != 32 => {
            return Err("Ed25519 public key must be 32 bytes".into())
        }
        KeyFamily::EcP256 if bytes.len() != 65 => {
            return Err("P-256 public key must be an uncompressed point (65 bytes)".into())
        }
        KeyFamily::EcP384 if bytes.len() != 97 => {
            return Err("P-384 public key must be an uncompressed point (97 bytes)".into())
        }
        _ => {}
    }
    ParsedPublicKey::new(alg, bytes)
        .map(|_| ())
        .map_err(|e| format!("aws-lc-rs refuses the key: {e}"))
}

/// The HMAC secret file: its raw bytes, 32..=4096 of them, readable by its owner only (the
/// rule ssh applies to private keys: no group or other permission bits).
pub fn load_hs_secret(path: &Path) -> Result<KeySpec, ConfigError> {
    use std::os::unix::fs::PermissionsExt as _;
    let fail = |reason: String| ConfigError::invalid("jwt.hs_secret_file", path.display(), reason);
    let kid = kid_from_path(path)
        .ok_or_else(|| fail("the file stem is the kid and must be non-empty UTF-8".into()))?;
    let meta = std::fs::metadata(path).map_err(|e| fail(format!("cannot stat: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "permissions {mode:04o} are too open: the secret must not be readable by group or \
             others (chmod 600 {})",
            path.display()
        )));
    }
    let bytes = read_capped(path, *HS_SECRET_BYTES.end() as u64).map_err(fail)?;
    if bytes.len() < *HS_SECRET_BYTES.start() {
        return Err(fail(format!(
            "{} bytes; an HMAC secret needs at least {} random bytes (e.g. head -c 64 \
             /dev/urandom > FILE)",
            bytes.len(),
            HS_SECRET_BYTES.start()
        )));
    }
    Ok(KeySpec {
        kid,
        family: KeyFamily::Hmac,
        bytes,
        alg: None,
        config_key: "jwt.hs_secret_file",
        origin: path.display().to_string(),
    })
}
