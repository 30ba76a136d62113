//! Strict JWS compact serialization (RFC 7515 §7.1): `header.payload.signature`, each part
//! unpadded base64url (canonical: no padding, no stray bits), the header a JSON object.
//!
//! Only the header is decoded before the signature is checked; the payload stays opaque
//! until then, so unauthenticated input meets as little parsing as possible.

use base64::Engine as _;
use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, Visitor};
use serde_json::{Map, Value};

use super::alg::{self, Alg};
use super::refusal::JwtRefusal;

/// A token split and its header understood; nothing verified yet.
#[derive(Debug)]
pub struct Compact<'a> {
    /// `header.payload`, exactly the bytes the signature covers.
    pub signing_input: &'a str,
    pub payload_b64: &'a str,
    pub signature_b64: &'a str,
    pub alg: Alg,
    pub kid: Option<String>,
}

/// Splits and checks `token`. The size cap comes first, before any decoding.
pub fn parse(token: &str, max_bytes: usize) -> Result<Compact<'_>, JwtRefusal> {
    if token.len() > max_bytes {
        return Err(JwtRefusal::TooLarge { max: max_bytes });
    }
    let mut parts = token.splitn(4, '.');
    let header_b64 = parts.next().unwrap_or_default();
    let payload_b64 = parts.next();
    let signature_b64 = parts.next();
    let extra = parts.next();
    // A two-part token is what `alg: none` without a signature looks like; parse its header
    // anyway so the refusal says `alg_none`, not just "malformed".
    let Some(payload_b64) = payload_b64 else {
        return Err(JwtRefusal::Malformed("expected header.payload.signature"));
    };
    if extra.is_some() {
        return Err(JwtRefusal::Malformed(
            "more than three parts (a JWE or a JWS JSON form is not accepted)",
        ));
    }
    let header = decode(header_b64).ok_or(JwtRefusal::Malformed("header is not base64url"))?;
    let header =
        json_object(&header).ok_or(JwtRefusal::Malformed("header is not a JSON object"))?;
    let alg = match header.get("alg") {
        None => return Err(JwtRefusal::Malformed("header has no alg")),
        Some(Value::String(name)) if alg::is_none(name) => return Err(JwtRefusal::AlgNone),
        Some(Value::String(name)) => Alg::from_name(name).ok_or(JwtRefusal::AlgNotAllowed(None))?,
        Some(_) => return Err(JwtRefusal::Malformed("alg is not a string")),
    };
    let Some(signature_b64) = signature_b64 else {
        return Err(JwtRefusal::Malformed("expected header.payload.signature"));
    };
    if header.contains_key("crit") {
        return Err(JwtRefusal::CritUnsupported);
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) if is_jwt_typ(t) => {}
        Some(_) => return Err(JwtRefusal::Malformed("typ is not JWT")),
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(JwtRefusal::Malformed("kid is not a string")),
    };
    // `jwk`, `jku`, `x5u`, `x5c` are never looked at: keys come from configuration only.
    Ok(Compact {
        signing_input: &token[..header_b64.len() + 1 + payload_b64.len()],
        payload_b64,
        signature_b64,
        alg,
        kid,
    })
}

/// `JWT` (RFC 7519 §5.1) or `at+jwt` (RFC 9068 access tokens), with or without the
/// `application/` prefix, case-insensitively (media types are).
fn is_jwt_typ(t: &str) -> bool {
    let t = match t.get(..12) {
        Some(p) if p.eq_ignore_ascii_case("application/") => &t[12..],
        _ => t,
    };
    t.eq_ignore_ascii_case("jwt") || t.eq_ignore_ascii_case("at+jwt")
}

/// Unpadded, canonical base64url. `None` on padding, whitespace or non-zero trailing bits.
pub fn decode(part: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .ok()
}

/// A JSON object whose top-level member names are unique. serde_json alone keeps the last of
/// two `alg`s; another parser might keep the first, and that difference is an attack.
pub fn json_object(bytes: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice::<UniqueObject>(bytes)
        .ok()
        .map(|o| o.0)
}

struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = UniqueObject;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object with unique member names")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<UniqueObject, A::Error> {
        let mut map = Map::new();
        while let Some(name) = access.next_key::<String>()? {
            if map.contains_key(&name) {
                return Err(A::Error::custom("duplicate member name"));
            }
            let value: Value = access.next_value()?;
            map.insert(name, value);
        }
        Ok(UniqueObject(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_members_are_refused() {
        assert!(json_object(br#"{"alg":"HS256","alg":"none"}"#).is_none());
        assert!(json_object(br#"{"alg":"HS256","x":{"a":1}}"#).is_some());
        assert!(json_object(br#"["alg"]"#).is_none());
        assert!(json_object(br#"{"a":1} x"#).is_none());
    }

    #[test]
    fn base64url_is_strict() {
        assert_eq!(decode("AQI"), Some(vec![1, 2]));
        assert_eq!(decode("AQI="), None, "padding");
        assert_eq!(decode("AQJ"), None, "non-zero trailing bits");
        assert_eq!(decode("AQ+/"), None, "standard alphabet");
        assert_eq!(decode("AQ I"), None, "whitespace");
    }

    #[test]
    fn typ_forms() {
        for ok in [
            "JWT",
            "jwt",
            "at+jwt",
            "application/at+JWT",
            "application/jwt",
        ] {
            assert!(is_jwt_typ(ok), "{ok}");
        }
        for bad in ["JOSE", "", "application/", "jwt ", "application/json"] {
            assert!(!is_jwt_typ(bad), "{bad}");
        }
    }
}
