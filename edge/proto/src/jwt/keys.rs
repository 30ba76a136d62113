//! Key material: the bytes of PEM public keys and of the HMAC secret file, made into
//! jsonwebtoken [`DecodingKey`]s. A key gets its [`KeyFamily`] here, once, from what the key
//! *is* (the SPKI algorithm and curve), never from what a token claims; and aws-lc-rs parses it
//! here, once, so that a bad key fails at start with the file's name. Reading the files (their
//! size cap, the secret's permissions, the `kid` from the file stem) is the edge's.

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

/// RSA moduli aws-lc-rs verifies (and RFC 7518 §3.3 asks at least 2048 of).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;
/// A key or JWKS file larger than this is not a key file.
pub const MAX_KEY_FILE_BYTES: u64 = 1 << 20;
/// The HMAC secret: RFC 7518 §3.2 wants at least the hash size (32 for HS256); more than a
/// few KiB means the path names the wrong file.
pub const HS_SECRET_BYTES: std::ops::RangeInclusive<usize> = 32..=4096;

/// Why key material was refused. The text says what to give instead.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM text file")]
    NotPemText,
    #[error("not a PEM file: {0}")]
    NotPem(pem::PemError),
    #[error("no PEM block; expected -----BEGIN PUBLIC KEY-----")]
    NoPemBlock,
    #[error("more than one PEM block; put one key per file (the file stem is its kid)")]
    SeveralPemBlocks,
    #[error("PEM headers (encrypted or legacy PEM) are not supported")]
    PemHeaders,
    #[error("this is a {0}; give the public key (openssl pkey -in KEY -pubout)")]
    PrivateKey(String),
    #[error("this is a certificate; give its public key (openssl x509 -in CERT -pubkey -noout)")]
    Certificate,
    #[error("PEM label {0} is not a public key; expected PUBLIC KEY or RSA PUBLIC KEY")]
    NotPublicKeyLabel(String),
    #[error("not a DER SubjectPublicKeyInfo")]
    NotSpki,
    #[error("trailing bytes after the SubjectPublicKeyInfo")]
    TrailingAfterSpki,
    #[error("EC key without a named curve")]
    NoNamedCurve,
    #[error("EC curve {0} is not supported; use P-256 (ES256) or P-384 (ES384)")]
    UnsupportedCurve(String),
    #[error("key algorithm {0} is not supported; use RSA, EC P-256/P-384 or Ed25519")]
    UnsupportedAlgorithm(String),
    #[error("not a DER RSAPublicKey")]
    NotPkcs1,
    #[error("trailing bytes after the RSAPublicKey")]
    TrailingAfterPkcs1,
    #[error(
        "RSA modulus of {bits} bits; {}..={} bits are accepted",
        RSA_BITS.start(),
        RSA_BITS.end()
    )]
    RsaModulusSize { bits: usize },
    #[error("RSA public exponent must be odd, above 1 and fit 64 bits")]
    RsaExponent,
    /// aws-lc-rs's own words for why it will not use the key.
    #[error("aws-lc-rs refuses the key: {0}")]
    Refused(String),
    #[error("not a point key")]
    NotPointKey,
    #[error("Ed25519 public key must be 32 bytes")]
    Ed25519Length,
    #[error("P-256 public key must be an uncompressed point (65 bytes)")]
    P256Point,
    #[error("P-384 public key must be an uncompressed point (97 bytes)")]
    P384Point,
    #[error(
        "{len} bytes; an HMAC secret needs at least {} random bytes (e.g. head -c 64 \
         /dev/urandom > FILE)",
        HS_SECRET_BYTES.start()
    )]
    SecretTooShort { len: usize },
    #[error("larger than {} bytes; is this the right file?", HS_SECRET_BYTES.end())]
    SecretTooLong,
}

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

/// The text of a PEM public key file: `PUBLIC KEY` (SPKI: RSA, EC P-256/P-384, Ed25519) or
/// `RSA PUBLIC KEY` (PKCS#1). One key per file, since the file stem is its `kid`; `origin`
/// names the file in errors.
pub fn pem_key(bytes: &[u8], kid: String, origin: String) -> Result<KeySpec, KeyError> {
    std::str::from_utf8(bytes).map_err(|_| KeyError::NotPemText)?;
    let block = one_pem_block(bytes)?;
    let (family, key) = match block.tag() {
        "PUBLIC KEY" => spki(block.contents()),
        "RSA PUBLIC KEY" => pkcs1_rsa(block.contents()),
        label if label.contains("PRIVATE") => Err(KeyError::PrivateKey(label.to_owned())),
        "CERTIFICATE" => Err(KeyError::Certificate),
        label => Err(KeyError::NotPublicKeyLabel(label.to_owned())),
    }?;
    Ok(KeySpec {
        kid,
        family,
        key,
        alg: None,
        config_key: "jwt.keys",
        origin,
    })
}

/// The one PEM block of a key file (RFC 7468). Text around it is allowed (§2 permits
/// explanatory text); PEM headers are not.
fn one_pem_block(bytes: &[u8]) -> Result<pem::Pem, KeyError> {
    let mut blocks = pem::parse_many(bytes).map_err(KeyError::NotPem)?;
    let block = match blocks.len() {
        1 => blocks.remove(0),
        0 => return Err(KeyError::NoPemBlock),
        _ => return Err(KeyError::SeveralPemBlocks),
    };
    if block.headers().iter().next().is_some() {
        return Err(KeyError::PemHeaders);
    }
    Ok(block)
}

/// Classifies a DER SubjectPublicKeyInfo by its algorithm OID (and curve).
pub fn spki(der_bytes: &[u8]) -> Result<(KeyFamily, DecodingKey), KeyError> {
    let (rest, info) = SubjectPublicKeyInfo::from_der(der_bytes).map_err(|_| KeyError::NotSpki)?;
    if !rest.is_empty() {
        return Err(KeyError::TrailingAfterSpki);
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
            .ok_or(KeyError::NoNamedCurve)?;
        let family = if curve == OID_EC_P256 {
            KeyFamily::EcP256
        } else if curve == OID_NIST_EC_P384 {
            KeyFamily::EcP384
        } else {
            return Err(KeyError::UnsupportedCurve(curve.to_string()));
        };
        Ok((family, point_key(family, key)?))
    } else if *oid == OID_SIG_ED25519 {
        Ok((KeyFamily::Ed25519, point_key(KeyFamily::Ed25519, key)?))
    } else {
        Err(KeyError::UnsupportedAlgorithm(oid.to_string()))
    }
}

/// A PKCS#1 `RSAPublicKey`, checked through [`rsa_key`] like a JWK's `n` and `e`.
fn pkcs1_rsa(der_bytes: &[u8]) -> Result<(KeyFamily, DecodingKey), KeyError> {
    let (rest, key) = RSAPublicKey::from_der(der_bytes).map_err(|_| KeyError::NotPkcs1)?;
    if !rest.is_empty() {
        return Err(KeyError::TrailingAfterPkcs1);
    }
    Ok((KeyFamily::Rsa, rsa_key(key.modulus, key.exponent)?))
}

/// An RSA key from its unsigned big-endian `n` and `e`, refusing what aws-lc-rs would refuse
/// at every verify: every RSA key, from PEM or JWKS, goes through here.
pub fn rsa_key(n: &[u8], e: &[u8]) -> Result<DecodingKey, KeyError> {
    let n = strip_leading_zeros(n);
    let bits = bit_len(n);
    if !RSA_BITS.contains(&bits) {
        return Err(KeyError::RsaModulusSize { bits });
    }
    let e = strip_leading_zeros(e);
    if e.is_empty() || e.len() > 8 || e[e.len() - 1] & 1 == 0 || e == [1] {
        return Err(KeyError::RsaExponent);
    }
    // Parsed back from its DER, as a key file would be, so aws-lc-rs checks it whole.
    let components = RsaPublicKeyComponents { n, e };
    let refused = |e: &dyn std::fmt::Display| KeyError::Refused(e.to_string());
    let der = components.as_der().map_err(|e| refused(&e))?;
    ParsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, der.as_ref())
        .map_err(|e| refused(&e))?;
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

/// An EC public key (the uncompressed SEC1 point) or an Ed25519 key (its 32 bytes), parsed
/// as aws-lc-rs will, so that a bad point fails at start rather than as `bad_signature` on
/// every token.
pub fn point_key(family: KeyFamily, bytes: &[u8]) -> Result<DecodingKey, KeyError> {
    let (algorithm, len, wrong_len): (&'static dyn signature::VerificationAlgorithm, _, _) =
        match family {
            KeyFamily::Ed25519 => (&signature::ED25519, 32, KeyError::Ed25519Length),
            KeyFamily::EcP256 => (&signature::ECDSA_P256_SHA256_FIXED, 65, KeyError::P256Point),
            KeyFamily::EcP384 => (&signature::ECDSA_P384_SHA384_FIXED, 97, KeyError::P384Point),
            KeyFamily::Rsa | KeyFamily::Hmac => return Err(KeyError::NotPointKey),
        };
    if bytes.len() != len {
        return Err(wrong_len);
    }
    ParsedPublicKey::new(algorithm, bytes).map_err(|e| KeyError::Refused(e.to_string()))?;
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

/// The HMAC secret: the raw bytes of its file (no trimming), 32..=4096 of them.
pub fn hs_secret(bytes: &[u8], kid: String, origin: String) -> Result<KeySpec, KeyError> {
    if bytes.len() > *HS_SECRET_BYTES.end() {
        return Err(KeyError::SecretTooLong);
    }
    if bytes.len() < *HS_SECRET_BYTES.start() {
        return Err(KeyError::SecretTooShort { len: bytes.len() });
    }
    Ok(KeySpec {
        kid,
        family: KeyFamily::Hmac,
        key: DecodingKey::from_secret(bytes),
        alg: None,
        config_key: "jwt.hs_secret_file",
        origin,
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
