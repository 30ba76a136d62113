//! Claims (RFC 7519 §4.1) of a token whose signature has verified.
//!
//! Order of checks, so that each refusal has one precise reason: types of the registered
//! claims (and `sub`/`jti` as exact identifiers), required claims, `exp`, `nbf`, `iat`, `iss`, `aud`, lifetime, `jti`, scopes.

use serde_json::{Map, Value};

use super::config::JwtConfig;
use super::identifier::check_identifier;
use super::refusal::JwtRefusal;

/// The claim rules of one verifier.
#[derive(Debug, Clone)]
pub struct ClaimPolicy {
    pub issuer: Option<String>,
    pub audience: Vec<String>,
    pub leeway_s: u64,
    pub required: Vec<String>,
    pub max_lifetime_s: Option<u64>,
    pub single_use: bool,
    pub scope_claim: String,
}

impl ClaimPolicy {
    pub fn from_config(c: &JwtConfig) -> Self {
        Self {
            issuer: c.issuer.clone(),
            audience: c.audience.clone(),
            leeway_s: c.leeway_s,
            required: c.required_claims.clone(),
            max_lifetime_s: c.max_token_lifetime_s,
            single_use: c.single_use,
            scope_claim: c.scope_claim.clone(),
        }
    }
}

/// What the checks extracted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub sub: Option<String>,
    pub jti: Option<String>,
    pub exp: Option<u64>,
    pub nbf: Option<u64>,
    pub iat: Option<u64>,
    pub scopes: Vec<String>,
}

pub fn check(
    claims: &Map<String, Value>,
    policy: &ClaimPolicy,
    now: u64,
) -> Result<Checked, JwtRefusal> {
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    let iat = numeric_date(claims, "iat")?;
    let sub = identifier(claims, "sub")?;
    let jti = identifier(claims, "jti")?;
    let iss = non_empty_string(claims, "iss")?;
    let aud = audiences(claims)?;
    let scopes = scopes(claims, &policy.scope_claim)?;

    for name in &policy.required {
        if claims.get(name).is_none_or(Value::is_null) {
            return Err(JwtRefusal::MissingClaim(name.clone()));
        }
    }
    let leeway = policy.leeway_s;
    // Accepted while now < exp + leeway: the same instant the replay store forgets the jti.
    if exp.is_some_and(|exp| now >= exp.saturating_add(leeway)) {
        return Err(JwtRefusal::Expired);
    }
    if nbf.is_some_and(|nbf| now.saturating_add(leeway) < nbf) {
        return Err(JwtRefusal::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(JwtRefusal::IssuedInFuture);
    }
    if let Some(want) = &policy.issuer {
        match iss {
            None => return Err(JwtRefusal::MissingClaim("iss".into())),
            Some(iss) if iss != *want => return Err(JwtRefusal::WrongIssuer),
            Some(_) => {}
        }
    }
    match aud {
        // RFC 7519 §4.1.3: a token naming audiences must be refused by anyone not among them,
        // so with no configured audience any `aud` is a wrong one.
        Some(list) if !list.iter().any(|a| policy.audience.iter().any(|w| w == a)) => {
            return Err(JwtRefusal::WrongAudience)
        }
        Some(_) => {}
        None if !policy.audience.is_empty() => return Err(JwtRefusal::MissingClaim("aud".into())),
        None => {}
    }
    if let Some(max) = policy.max_lifetime_s {
        // The whole life the issuer granted, from the earliest start it states; with none,
        // what is left of it. No `exp` at all is an unbounded life.
        let start = match (iat, nbf) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => now,
        };
        match exp {
            Some(exp) if exp.saturating_sub(start) <= max => {}
            _ => return Err(JwtRefusal::LifetimeTooLong { max }),
        }
    }
    if policy.single_use && jti.is_none() {
        return Err(JwtRefusal::JtiRequired);
    }
    Ok(Checked {
        sub: sub.map(str::to_owned),
        jti: jti.map(str::to_owned),
        exp,
        nbf,
        iat,
        scopes,
    })
}

/// RFC 7519 §2 NumericDate: seconds since the epoch, possibly fractional (truncated here).
/// Negative, non-numeric or null values are refused, not ignored.
fn numeric_date(
    claims: &Map<String, Value>,
    name: &'static str,
) -> Result<Option<u64>, JwtRefusal> {
    let invalid = || JwtRefusal::ClaimInvalid(name.into());
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else {
                match n.as_f64() {
                    // `as` saturates for values beyond u64; such a date is "never".
                    Some(f) if f.is_finite() && f >= 0.0 => Ok(Some(f as u64)),
                    _ => Err(invalid()),
                }
            }
        }
        Some(_) => Err(invalid()),
    }
}

fn non_empty_string<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, JwtRefusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(JwtRefusal::ClaimInvalid(name.into())),
    }
}

/// `sub` / `jti`: a string, and an exact identifier — one a revocation can name (see
/// [`super::identifier`]); the empty string included.
fn identifier<'a>(
    claims: &'a Map<String, Value>,
    name: &'static str,
) -> Result<Option<&'a str>, JwtRefusal> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => match check_identifier(s) {
            Ok(()) => Ok(Some(s)),
            Err(why) => Err(JwtRefusal::IdentifierInvalid { claim: name, why }),
        },
        Some(_) => Err(JwtRefusal::ClaimInvalid(name.into())),
    }
}

/// `aud`: one string or an array of strings (RFC 7519 §4.1.3).
fn audiences(claims: &Map<String, Value>) -> Result<Option<Vec<&str>>, JwtRefusal> {
    let invalid = || JwtRefusal::ClaimInvalid("aud".into());
    match claims.get("aud") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.as_str()])),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().ok_or_else(invalid))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(invalid()),
    }
}

/// The scope claim: a space-separated string (RFC 8693 §4.2) or an array of strings.
fn scopes(claims: &Map<String, Value>, claim: &str) -> Result<Vec<String>, JwtRefusal> {
    let invalid = || JwtRefusal::ClaimInvalid(claim.to_owned());
    match claims.get(claim) {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(s
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(invalid))
            .collect(),
        Some(_) => Err(invalid()),
    }
}
