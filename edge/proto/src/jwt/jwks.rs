//! A local JWKS file (RFC 7517 §5) of public signing keys, from its bytes.
//!
//! Refused rather than skipped, because this file is the operator's own and a silently
//! ignored key shows up much later as `unknown_kid`: `oct` keys (a secret does not belong in
//! a key *set* file that gets copied around; use `hs_secret_file`), private members (`d`,
//! `p`, …), keys for encryption (`use` ≠ `sig`, `key_ops` without `verify`), curves other
//! than P-256/P-384/Ed25519, keys without `kid`, duplicate `kid`s and `alg`s that do not fit
//! the key.

use base64::Engine as _;
use serde_json::{Map, Value};

use super::alg::{Alg, KeyFamily};
use super::keys::{self, KeyError, KeySpec};

/// Members that only private JWKs have (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Why a JWKS file was refused; a key's own fault names its index (and `kid`, when it has one).
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("expected a JSON object with a \"keys\" array")]
    NoKeysArray,
    #[error("the \"keys\" array is empty")]
    NoKeys,
    #[error("keys[{index}] is not a JSON object")]
    NotAnObject { index: usize },
    #[error(
        "keys[{index}]{}: {error}",
        .kid.as_ref().map(|kid| format!(" (kid {kid:?})")).unwrap_or_default()
    )]
    Key {
        index: usize,
        kid: Option<String>,
        error: JwkError,
    },
    #[error("keys[{index}]: kid {kid:?} appears twice")]
    DuplicateKid { index: usize, kid: String },
}

/// What is wrong with one key of the set.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("no \"{0}\"")]
    Missing(&'static str),
    #[error("\"{0}\" must be a string")]
    NotAString(&'static str),
    #[error("\"{0}\" is not unpadded base64url")]
    NotBase64url(&'static str),
    #[error(
        "kty oct is a shared secret; secrets do not belong in a JWKS file, use `hs_secret_file`"
    )]
    SharedSecret,
    #[error("contains private key material (\"{0}\"); publish public keys only")]
    PrivateMember(&'static str),
    #[error("no \"kid\"; every key needs one")]
    NoKid,
    #[error("empty \"kid\"")]
    EmptyKid,
    #[error("\"use\": \"{0}\" is not a signing key; remove it")]
    NotForSigning(String),
    #[error("\"key_ops\" does not include \"verify\"")]
    NotForVerifying,
    #[error("curve {0} is not supported; use P-256 or P-384")]
    UnsupportedEcCurve(String),
    #[error("\"x\" and \"y\" must be {0} bytes each")]
    CoordinateSize(usize),
    #[error("OKP curve {0} is not supported; use Ed25519")]
    UnsupportedOkpCurve(String),
    #[error("kty {0} is not supported; use RSA, EC or OKP")]
    UnsupportedKty(String),
    #[error("unsupported \"alg\" {0}")]
    UnsupportedAlg(String),
    #[error("\"alg\" {alg} does not fit a {} key", .family.name())]
    AlgDoesNotFit { alg: Alg, family: KeyFamily },
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Parses JWKS JSON text; `origin` names the file in each key's [`KeySpec::origin`].
pub fn parse(bytes: &[u8], origin: &str) -> Result<Vec<KeySpec>, JwksError> {
    let doc: Value = serde_json::from_slice(bytes).map_err(JwksError::NotJson)?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or(JwksError::NoKeysArray)?;
    if list.is_empty() {
        return Err(JwksError::NoKeys);
    }
    let mut out: Vec<KeySpec> = Vec::with_capacity(list.len());
    for (index, jwk) in list.iter().enumerate() {
        let jwk = jwk.as_object().ok_or(JwksError::NotAnObject { index })?;
        let spec = key(jwk, origin).map_err(|error| JwksError::Key {
            index,
            kid: jwk.get("kid").and_then(Value::as_str).map(str::to_owned),
            error,
        })?;
        if out.iter().any(|k| k.kid == spec.kid) {
            return Err(JwksError::DuplicateKid {
                index,
                kid: spec.kid,
            });
        }
        out.push(spec);
    }
    Ok(out)
}

fn key(jwk: &Map<String, Value>, origin: &str) -> Result<KeySpec, JwkError> {
    let kty = string(jwk, "kty")?.ok_or(JwkError::Missing("kty"))?;
    if kty == "oct" {
        return Err(JwkError::SharedSecret);
    }
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(JwkError::PrivateMember(m));
    }
    let kid = string(jwk, "kid")?.ok_or(JwkError::NoKid)?;
    if kid.is_empty() {
        return Err(JwkError::EmptyKid);
    }
    if let Some(u) = string(jwk, "use")? {
        if u != "sig" {
            return Err(JwkError::NotForSigning(u.to_owned()));
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err(JwkError::NotForVerifying);
        }
    }
    let (family, key) = match kty {
        "RSA" => {
            let n = b64(jwk, "n")?;
            let e = b64(jwk, "e")?;
            (KeyFamily::Rsa, keys::rsa_key(&n, &e)?)
        }
        "EC" => {
            let (family, size) = match string(jwk, "crv")?.ok_or(JwkError::Missing("crv"))? {
                "P-256" => (KeyFamily::EcP256, 32),
                "P-384" => (KeyFamily::EcP384, 48),
                crv => return Err(JwkError::UnsupportedEcCurve(crv.to_owned())),
            };
            let x = b64(jwk, "x")?;
            let y = b64(jwk, "y")?;
            if x.len() != size || y.len() != size {
                return Err(JwkError::CoordinateSize(size));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (family, keys::point_key(family, &point)?)
        }
        "OKP" => match string(jwk, "crv")?.ok_or(JwkError::Missing("crv"))? {
            "Ed25519" => (
                KeyFamily::Ed25519,
                keys::point_key(KeyFamily::Ed25519, &b64(jwk, "x")?)?,
            ),
            crv => return Err(JwkError::UnsupportedOkpCurve(crv.to_owned())),
        },
        kty => return Err(JwkError::UnsupportedKty(kty.to_owned())),
    };
    let alg = match string(jwk, "alg")? {
        None => None,
        Some(name) => {
            let alg = Alg::from_name(name).ok_or_else(|| JwkError::UnsupportedAlg(name.into()))?;
            if alg.family() != family {
                return Err(JwkError::AlgDoesNotFit { alg, family });
            }
            Some(alg)
        }
    };
    Ok(KeySpec {
        kid: kid.to_owned(),
        family,
        key,
        alg,
        config_key: "jwt.jwks",
        origin: origin.to_owned(),
    })
}

fn string<'a>(
    jwk: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, JwkError> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwkError::NotAString(name)),
    }
}

/// A base64url member without padding (RFC 7518 §6: Base64urlUInt and coordinates).
fn b64(jwk: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JwkError> {
    let s = string(jwk, name)?.ok_or(JwkError::Missing(name))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwkError::NotBase64url(name))
}
