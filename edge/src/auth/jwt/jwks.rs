//! A local JWKS file (RFC 7517 §5) of public signing keys.
//!
//! Refused rather than skipped, because this file is the operator's own and a silently
//! ignored key shows up much later as `unknown_kid`: `oct` keys (a secret does not belong in
//! a key *set* file that gets copied around; use `hs_secret_file`), private members (`d`,
//! `p`, …), keys for encryption (`use` ≠ `sig`, `key_ops` without `verify`), curves other
//! than P-256/P-384/Ed25519, keys without `kid`, duplicate `kid`s and `alg`s that do not fit
//! the key.

use std::path::Path;

use base64::Engine as _;
use serde_json::{Map, Value};

use super::alg::{Alg, KeyFamily};
use super::keys::{self, KeySpec};
use crate::config::ConfigError;

/// Members that only private JWKs have (RFC 7518 §6.2.2, §6.3.2, §6.4).
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

/// Loads every key of the JWKS file at `path`.
pub fn load(path: &Path) -> Result<Vec<KeySpec>, ConfigError> {
    let fail = |reason: String| ConfigError::invalid("jwt.jwks", path.display(), reason);
    let bytes = keys::read_capped(path, keys::MAX_KEY_FILE_BYTES).map_err(fail)?;
    let origin = path.display().to_string();
    parse(&bytes, &origin).map_err(fail)
}

/// Parses JWKS JSON text; `origin` names the file in each key's [`KeySpec::origin`].
pub fn parse(bytes: &[u8], origin: &str) -> Result<Vec<KeySpec>, String> {
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let list = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| "expected a JSON object with a \"keys\" array".to_owned())?;
    if list.is_empty() {
        return Err("the \"keys\" array is empty".into());
    }
    let mut out: Vec<KeySpec> = Vec::with_capacity(list.len());
    for (i, jwk) in list.iter().enumerate() {
        let jwk = jwk
            .as_object()
            .ok_or_else(|| format!("keys[{i}] is not a JSON object"))?;
        let spec = key(jwk, origin).map_err(|e| match jwk.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("keys[{i}] (kid {kid:?}): {e}"),
            None => format!("keys[{i}]: {e}"),
        })?;
        if out.iter().any(|k| k.kid == spec.kid) {
            return Err(format!("keys[{i}]: kid {:?} appears twice", spec.kid));
        }
        out.push(spec);
    }
    Ok(out)
}

fn key(jwk: &Map<String, Value>, origin: &str) -> Result<KeySpec, String> {
    let kty = string(jwk, "kty")?.ok_or("no \"kty\"")?;
    if kty == "oct" {
        return Err(
            "kty oct is a shared secret; secrets do not belong in a JWKS file, use \
             `hs_secret_file`"
                .into(),
        );
    }
    if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| jwk.contains_key(**m)) {
        return Err(format!(
            "contains private key material (\"{m}\"); publish public keys only"
        ));
    }
    let kid = string(jwk, "kid")?.ok_or("no \"kid\"; every key needs one")?;
    if kid.is_empty() {
        return Err("empty \"kid\"".into());
    }
    if let Some(u) = string(jwk, "use")? {
        if u != "sig" {
            return Err(format!("\"use\": \"{u}\" is not a signing key; remove it"));
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verifies {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
    }
    let (family, key) = match kty {
        "RSA" => {
            let n = b64(jwk, "n")?;
            let e = b64(jwk, "e")?;
            (KeyFamily::Rsa, keys::rsa_key(&n, &e)?)
        }
        "EC" => {
            let (family, size) = match string(jwk, "crv")?.ok_or("no \"crv\"")? {
                "P-256" => (KeyFamily::EcP256, 32),
                "P-384" => (KeyFamily::EcP384, 48),
                crv => return Err(format!("curve {crv} is not supported; use P-256 or P-384")),
            };
            let x = b64(jwk, "x")?;
            let y = b64(jwk, "y")?;
            if x.len() != size || y.len() != size {
                return Err(format!("\"x\" and \"y\" must be {size} bytes each"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (family, keys::point_key(family, &point)?)
        }
        "OKP" => match string(jwk, "crv")?.ok_or("no \"crv\"")? {
            "Ed25519" => (
                KeyFamily::Ed25519,
                keys::point_key(KeyFamily::Ed25519, &b64(jwk, "x")?)?,
            ),
            crv => return Err(format!("OKP curve {crv} is not supported; use Ed25519")),
        },
        kty => return Err(format!("kty {kty} is not supported; use RSA, EC or OKP")),
    };
    let alg = match string(jwk, "alg")? {
        None => None,
        Some(name) => {
            let a = Alg::from_name(name).ok_or_else(|| format!("unsupported \"alg\" {name}"))?;
            if a.family() != family {
                return Err(format!("\"alg\" {a} does not fit a {} key", family.name()));
            }
            Some(a)
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

fn string<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("\"{name}\" must be a string")),
    }
}

/// A base64url member without padding (RFC 7518 §6: Base64urlUInt and coordinates).
fn b64(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = string(jwk, name)?.ok_or_else(|| format!("no \"{name}\""))?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| format!("\"{name}\" is not unpadded base64url"))
}
