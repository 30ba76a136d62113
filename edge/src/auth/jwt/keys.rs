//! Key material: PEM public keys and the HMAC secret file, made into jsonwebtoken
//! [`DecodingKey`]s. A key gets its [`KeyFamily`] here, once, from what the key *is* (the SPKI
//! algorithm and curve), never from what a token claims; and aws-lc-rs parses it here, once,
//! so that a bad key fails at start with the file's name.

use std::io::Read as _;
use std::path::Path;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::{self, ParsedPublicKey, RsaPublicKeyComponents};
use jsonwebtoken::DecodingKey;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::alg::{Alg, KeyFamily};
use crate::config::ConfigError;

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
    /// What jsonwebtoken verifies with: the secret, RSA `n` and `e`, the uncompressed EC point
    /// or the 32 Ed25519 bytes.
    pub key: DecodingKey,
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

impl KeySpec {
    /// The HMAC secret's length (RFC 7518 §3.2 sizes the HS algorithms by it); 0 for others.
    pub fn secret_len(&self) -> usize {
        self.key.try_get_hmac_secret().map_or(0, <[u8]>::len)
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
    std::str::from_utf8(&bytes).map_err(|_| fail("not a PEM text file".into()))?;
    let block = one_pem_block(&bytes).map_err(fail)?;
    let (family, key) = match block.tag() {
        "PUBLIC KEY" => spki(block.contents()),
        "RSA PUBLIC KEY" => pkcs1_rsa(block.contents()),
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
    Ok(KeySpec {
        kid,
        family,
        key,
        alg: None,
        config_key: "jwt.keys",
        origin: path.display().to_string(),
    })
}

/// The one PEM block of a key file (RFC 7468). Text around it is allowed (§2 permits
/// explanatory text); PEM headers are not.
fn one_pem_block(bytes: &[u8]) -> Result<pem::Pem, String> {
    let mut blocks = pem::parse_many(bytes).map_err(|e| format!("not a PEM file: {e}"))?;
    let block = match blocks.len() {
        1 => blocks.remove(0),
        0 => return Err("no PEM block; expected -----BEGIN PUBLIC KEY-----".into()),
        _ => {
            return Err(
                "more than one PEM block; put one key per file (the file stem is its kid)".into(),
            )
        }
    };
    if block.headers().iter().next().is_some() {
        return Err("PEM headers (encrypted or legacy PEM) are not supported".into());
    }
    Ok(block)
}

/// Classifies a DER SubjectPublicKeyInfo by its algorithm OID (and curve).
pub fn spki(der_bytes: &[u8]) -> Result<(KeyFamily, DecodingKey), String> {
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
        Ok((family, point_key(family, key)?))
    } else if *oid == OID_SIG_ED25519 {
        Ok((KeyFamily::Ed25519, point_key(KeyFamily::Ed25519, key)?))
    } else {
        Err(format!(
            "key algorithm {oid} is not supported; use RSA, EC P-256/P-384 or Ed25519"
        ))
    }
}

/// A PKCS#1 `RSAPublicKey`, checked through [`rsa_key`] like a JWK's `n` and `e`.
fn pkcs1_rsa(der_bytes: &[u8]) -> Result<(KeyFamily, DecodingKey), String> {
    let (rest, key) =
        RSAPublicKey::from_der(der_bytes).map_err(|_| "not a DER RSAPublicKey".to_owned())?;
    if !rest.is_empty() {
        return Err("trailing bytes after the RSAPublicKey".into());
    }
    Ok((KeyFamily::Rsa, rsa_key(key.modulus, key.exponent)?))
}

/// An RSA key from its unsigned big-endian `n` and `e`, refusing what aws-lc-rs would refuse
/// at every verify: every RSA key, from PEM or JWKS, goes through here.
pub fn rsa_key(n: &[u8], e: &[u8]) -> Result<DecodingKey, String> {
    let n = strip_leading_zeros(n);
    let bits = bit_len(n);
    if !RSA_BITS.contains(&bits) {
        return Err(format!(
            "RSA modulus of {bits} bits; {}..={} bits are accepted",
            RSA_BITS.start(),
            RSA_BITS.end()
        ));
    }
    let e = strip_leading_zeros(e);
    if e.is_empty() || e.len() > 8 || e[e.len() - 1] & 1 == 0 || e == [1] {
        return Err("RSA public exponent must be odd, above 1 and fit 64 bits".into());
    }
    // Parsed back from its DER, as a key file would be, so aws-lc-rs checks it whole.
    let components = RsaPublicKeyComponents { n, e };
    components
        .as_der()
        .map_err(|e| format!("aws-lc-rs refuses the key: {e}"))
        .and_then(|der| {
            ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der.as_ref())
                .map_err(|e| format!("aws-lc-rs refuses the key: {e}"))
        })?;
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

/// An EC public key (the uncompressed SEC1 point) or an Ed25519 key (its 32 bytes), parsed
/// as aws-lc-rs will, so that a bad point fails at start rather than as `bad_signature` on
/// every token.
pub fn point_key(family: KeyFamily, bytes: &[u8]) -> Result<DecodingKey, String> {
    let (algorithm, len, wrong_len): (&'static dyn signature::VerificationAlgorithm, _, _) =
        match family {
            KeyFamily::Ed25519 => (
                &signature::ED25519,
                32,
                "Ed25519 public key must be 32 bytes",
            ),
            KeyFamily::EcP256 => (
                &signature::ECDSA_P256_SHA256_FIXED,
                65,
                "P-256 public key must be an uncompressed point (65 bytes)",
            ),
            KeyFamily::EcP384 => (
                &signature::ECDSA_P384_SHA384_FIXED,
                97,
                "P-384 public key must be an uncompressed point (97 bytes)",
            ),
            KeyFamily::Rsa | KeyFamily::Hmac => return Err("not a point key".into()),
        };
    if bytes.len() != len {
        return Err(wrong_len.into());
    }
    ParsedPublicKey::new(algorithm, bytes)
        .map_err(|e| format!("aws-lc-rs refuses the key: {e}"))?;
    Ok(match family {
        KeyFamily::Ed25519 => DecodingKey::from_ed_der(bytes),
        _ => DecodingKey::from_ec_der(bytes),
    })
}

/// Big-endian unsigned bytes without leading zeros (JWK allows none; DER parsers may give one).
fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// The bit length of an unsigned big-endian integer.
fn bit_len(b: &[u8]) -> usize {
    let b = strip_leading_zeros(b);
    match b.first() {
        None => 0,
        Some(&top) => b.len() * 8 - top.leading_zeros() as usize,
    }
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
        key: DecodingKey::from_secret(&bytes),
        alg: None,
        config_key: "jwt.hs_secret_file",
        origin: path.display().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_block_with_surrounding_text() {
        let text = "comment\n-----BEGIN PUBLIC KEY-----\nAAEC\nAw==\n-----END PUBLIC KEY-----\n";
        let b = one_pem_block(text.as_bytes()).unwrap();
        assert_eq!(b.tag(), "PUBLIC KEY");
        assert_eq!(b.contents(), &[0, 1, 2, 3]);
    }

    #[test]
    fn broken_envelopes_are_refused() {
        for text in [
            "-----BEGIN PUBLIC KEY-----\nAAEC\n",
            "-----BEGIN PUBLIC KEY-----\nAAEC\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
            "-----END PUBLIC KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n-----END RSA PRIVATE KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\nAAEC\n-----END RSA PRIVATE KEY-----\n",
        ] {
            assert!(one_pem_block(text.as_bytes()).is_err(), "{text}");
        }
    }

    #[test]
    fn rsa_integers_are_measured_without_leading_zeros() {
        assert_eq!(bit_len(&[0xC0; 256]), 2048);
        assert_eq!(bit_len(&[0, 0, 1]), 1);
        assert_eq!(bit_len(&[]), 0);
        assert_eq!(strip_leading_zeros(&[0, 0x81]), &[0x81]);
    }
}
