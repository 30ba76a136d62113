//! [`JwtVerifier`]: configured keys bound to the allowed algorithms, and the one `verify`.

use std::collections::HashMap;

use aws_lc_rs::digest;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};

use super::alg::{Alg, KeyFamily};
use super::claims::{self, ClaimPolicy};
use super::compact;
use super::config::{ExpiryPolicy, JwtConfig, JwtConfigError};
use super::extract::{self, ExtractedToken, TokenSources};
use super::keys::KeySpec;
use super::refusal::{JwtRefusal, RevokedBy};
use super::scope::ScopeRules;
use crate::ws::RequestTarget;

/// A token that verified, with what the rest of the edge may know about it. The token itself
/// is not kept: logs and audit records get `jti`, `sub` and `token_sha256_hex` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub sub: Option<String>,
    pub jti: Option<String>,
    pub exp: Option<u64>,
    pub iat: Option<u64>,
    pub nbf: Option<u64>,
    pub scopes: Vec<String>,
    /// SHA-256 of the compact token, lowercase hex: identifies it in audit records.
    pub token_sha256_hex: String,
    pub alg: Alg,
    /// The kid of the configured key that verified it (the file stem for PEM files).
    pub kid: String,
    /// Every claim, for forwarding upstream later.
    pub claims: Map<String, Value>,
}

/// Revoked `jti`s and subjects, as the verifier asks about them; the list itself (its file,
/// its control commands, its sharing across cores) is the caller's.
pub trait RevocationList {
    /// What revokes a token with this subject and `jti`, if anything.
    fn is_revoked(&self, sub: Option<&str>, jti: Option<&str>) -> Option<RevokedBy>;
}

/// One configured key and the allowed algorithms it may verify. Only algorithms of the key's
/// own family are ever listed (see `bind`), which is what makes an RSA key's bytes unusable
/// as an HMAC secret; jsonwebtoken refuses a key of another family as well.
struct BoundKey {
    kid: String,
    algs: Vec<Alg>,
    key: DecodingKey,
}

/// Verifies bearer tokens against the `[jwt]` configuration. Built once at start (and on
/// reload); `Send + Sync`, so every core may share one behind an `Arc`.
pub struct JwtVerifier {
    keys: Vec<BoundKey>,
    by_kid: HashMap<String, usize>,
    allowed: Vec<Alg>,
    claims: ClaimPolicy,
    scopes: ScopeRules,
    sources: TokenSources,
    max_token_bytes: usize,
    expiry: ExpiryPolicy,
    max_tracked_jti: usize,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field(
                "kids",
                &self.keys.iter().map(|k| &k.kid).collect::<Vec<_>>(),
            )
            .field("allowed", &self.allowed)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Validates `c` and binds the keys (read by the caller from the files `c` names) to the
    /// allowed algorithms. Errors name the config key, the file and what to change.
    pub fn from_specs(c: &JwtConfig, specs: Vec<KeySpec>) -> Result<Self, JwtConfigError> {
        c.validate()?;
        let mut by_kid = HashMap::new();
        for (i, s) in specs.iter().enumerate() {
            if let Some(&j) = by_kid.get(&s.kid) {
                let other: &KeySpec = &specs[j];
                return Err(JwtConfigError::invalid(
                    s.config_key,
                    &s.origin,
                    format!(
                        "kid {:?} is also the kid of {}; kids must be unique (rename a file)",
                        s.kid, other.origin
                    ),
                ));
            }
            by_kid.insert(s.kid.clone(), i);
        }
        let allowed = match c.parsed_algorithms()? {
            Some(list) => list,
            None => derive_algs(&specs),
        };
        let mut bound = Vec::with_capacity(specs.len());
        for s in &specs {
            bound.push(bind(s, &allowed)?);
        }
        for &a in &allowed {
            let usable = bound.iter().any(|k| k.algs.contains(&a));
            if !usable {
                let reason = match a.family() {
                    KeyFamily::Hmac => format!(
                        "{a} needs an hs_secret_file of at least {} bytes",
                        a.min_hmac_secret_bytes()
                    ),
                    family => format!(
                        "{a} is allowed but no configured {} key may use it",
                        family.name()
                    ),
                };
                return Err(JwtConfigError::invalid("jwt.algorithms", a, reason));
            }
        }
        Ok(Self {
            keys: bound,
            by_kid,
            allowed,
            claims: ClaimPolicy::from_config(c),
            scopes: ScopeRules::new(&c.scopes)?,
            sources: TokenSources::from_config(c),
            max_token_bytes: c.max_token_bytes,
            expiry: c.expiry,
            max_tracked_jti: c.max_tracked_jti,
        })
    }

    /// The allowed algorithms, as configured or derived from the keys.
    pub fn allowed_algorithms(&self) -> &[Alg] {
        &self.allowed
    }

    /// Verifies a compact JWS and its claims at `now_unix`. Revocation, replay and scope are
    /// separate steps (they need state this verifier does not own).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<VerifiedToken, JwtRefusal> {
        let parts = compact::parse(token, self.max_token_bytes)?;
        if !self.allowed.contains(&parts.alg) {
            return Err(JwtRefusal::AlgNotAllowed(Some(parts.alg)));
        }
        let (kid, key) = self.key_for(parts.alg, parts.kid.as_deref())?;
        let verified = jsonwebtoken::crypto::verify(
            parts.signature_b64,
            parts.signing_input.as_bytes(),
            key,
            parts.alg.jws(),
        );
        match verified {
            Ok(true) => {}
            Err(e) if matches!(e.kind(), ErrorKind::Base64(_)) => {
                return Err(JwtRefusal::Malformed("signature is not base64url"))
            }
            // `bind` pairs keys with their own family's algorithms, so an error here is not
            // one the token can be told apart by: it does not verify.
            Ok(false) | Err(_) => return Err(JwtRefusal::BadSignature),
        }
        let payload = compact::decode(parts.payload_b64)
            .ok_or(JwtRefusal::Malformed("payload is not base64url"))?;
        let claims = compact::json_object(&payload)
            .ok_or(JwtRefusal::Malformed("payload is not a JSON object"))?;
        let checked = claims::check(&claims, &self.claims, now_unix)?;
        Ok(VerifiedToken {
            sub: checked.sub,
            jti: checked.jti,
            exp: checked.exp,
            iat: checked.iat,
            nbf: checked.nbf,
            scopes: checked.scopes,
            token_sha256_hex: sha256_hex(token.as_bytes()),
            alg: parts.alg,
            kid: kid.to_owned(),
            claims,
        })
    }

    /// The key for `alg`: the one named by `kid`, or without a kid the only key that fits.
    fn key_for(&self, alg: Alg, kid: Option<&str>) -> Result<(&str, &DecodingKey), JwtRefusal> {
        fn find(k: &BoundKey, alg: Alg) -> Option<&DecodingKey> {
            k.algs.contains(&alg).then_some(&k.key)
        }
        match kid {
            Some(kid) => {
                let key = self
                    .by_kid
                    .get(kid)
                    .and_then(|&i| self.keys.get(i))
                    .ok_or(JwtRefusal::UnknownKid)?;
                let v = find(key, alg).ok_or(JwtRefusal::KeyAlgMismatch(alg))?;
                Ok((&key.kid, v))
            }
            None => {
                let mut fitting = self
                    .keys
                    .iter()
                    .filter_map(|k| find(k, alg).map(|v| (k, v)));
                match (fitting.next(), fitting.next()) {
                    (Some((k, v)), None) => Ok((&k.kid, v)),
                    (Some(_), Some(_)) => Err(JwtRefusal::KidRequired(alg)),
                    (None, _) => Err(JwtRefusal::UnknownKid),
                }
            }
        }
    }

    /// Finds the request's token in the configured sources (see [`extract::extract_token`]).
    pub fn extract_token(
        &self,
        authorization: Option<&str>,
        protocols: &[String],
        query: Option<&str>,
    ) -> Result<Option<ExtractedToken>, JwtRefusal> {
        extract::extract_token(&self.sources, authorization, protocols, query)
    }

    /// [`Self::extract_token`] when a token is required: none is `token_missing`.
    pub fn extract_required(
        &self,
        authorization: Option<&str>,
        protocols: &[String],
        query: Option<&str>,
    ) -> Result<ExtractedToken, JwtRefusal> {
        self.extract_token(authorization, protocols, query)?
            .ok_or(JwtRefusal::TokenMissing)
    }

    /// Is this `Sec-WebSocket-Protocol` offer a token (`bearer.…`)? The 101 must never select
    /// one, whichever source the token was taken from.
    pub fn is_token_protocol(&self, offer: &str) -> bool {
        offer.starts_with(self.sources.subprotocol_prefix.as_str())
    }

    /// The request target without the query token, for logs and upstreams.
    pub fn redact_target<'a>(&self, target: &'a str) -> std::borrow::Cow<'a, str> {
        extract::redact_query_token(target, &self.sources.query_param)
    }

    /// May this token open `target` (its normalised path; the query is ignored)?
    pub fn scope_allows(&self, target: &RequestTarget, token: &VerifiedToken) -> bool {
        self.scopes.allows(target, &token.scopes)
    }

    /// [`Self::scope_allows`] as a refusal.
    pub fn check_scope(
        &self,
        target: &RequestTarget,
        token: &VerifiedToken,
    ) -> Result<(), JwtRefusal> {
        if self.scope_allows(target, token) {
            Ok(())
        } else {
            Err(JwtRefusal::ScopeMissing)
        }
    }

    /// Is the token's `jti` or subject revoked?
    pub fn check_revocation(
        &self,
        revocations: &impl RevocationList,
        token: &VerifiedToken,
    ) -> Result<(), JwtRefusal> {
        match revocations.is_revoked(token.sub.as_deref(), token.jti.as_deref()) {
            Some(by) => Err(JwtRefusal::Revoked(by)),
            None => Ok(()),
        }
    }

    /// With `expiry = "close"`: the UNIX second at which the session must close with 1008 —
    /// `exp + leeway_s`, the first second `verify` would refuse the token.
    pub fn session_deadline(&self, token: &VerifiedToken) -> Option<u64> {
        match self.expiry {
            ExpiryPolicy::Close => token.exp.map(|e| e.saturating_add(self.claims.leeway_s)),
            ExpiryPolicy::Ignore => None,
        }
    }

    /// Does every token need a replay check (`single_use`)?
    pub fn single_use(&self) -> bool {
        self.claims.single_use
    }

    pub fn leeway_s(&self) -> u64 {
        self.claims.leeway_s
    }

    /// `max_token_lifetime_s`: no admitted token expires later than this after now.
    pub fn max_lifetime_s(&self) -> Option<u64> {
        self.claims.max_lifetime_s
    }

    /// `max_tracked_jti` split across `cores` owner cores (rounded up, at least 1 each).
    pub fn replay_capacity_per_core(&self, cores: usize) -> usize {
        self.max_tracked_jti.div_ceil(cores.max(1)).max(1)
    }
}

/// Without `algorithms`: what the keys allow. A JWKS key naming its `alg` allows that one;
/// an HMAC secret allows each HS size it is long enough for (RFC 7518 §3.2).
fn derive_algs(specs: &[KeySpec]) -> Vec<Alg> {
    let mut out: Vec<Alg> = Vec::new();
    for s in specs {
        let algs: &[Alg] = match &s.alg {
            Some(a) => std::slice::from_ref(a),
            None => s.family.default_algs(),
        };
        for &a in algs {
            if fits(s, a) && !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out.sort();
    out
}

fn fits(s: &KeySpec, a: Alg) -> bool {
    a.family() == s.family
        && s.alg.is_none_or(|only| only == a)
        && (s.family != KeyFamily::Hmac || s.secret_len() >= a.min_hmac_secret_bytes())
}

/// Binds one key to the allowed algorithms it fits.
fn bind(s: &KeySpec, allowed: &[Alg]) -> Result<BoundKey, JwtConfigError> {
    let algs: Vec<Alg> = allowed.iter().copied().filter(|&a| fits(s, a)).collect();
    if algs.is_empty() {
        let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
        if s.family == KeyFamily::Hmac && allowed.iter().any(|a| a.family() == KeyFamily::Hmac) {
            return Err(JwtConfigError::invalid(
                s.config_key,
                &s.origin,
                format!(
                    "a secret of {} bytes is too short for [{}]: HS256 needs 32 bytes, HS384 48 \
                     bytes, HS512 64 bytes (RFC 7518 §3.2)",
                    s.secret_len(),
                    names.join(", ")
                ),
            ));
        }
        return Err(JwtConfigError::invalid(
            s.config_key,
            &s.origin,
            format!(
                "key {:?} ({}{}) fits none of the allowed algorithms [{}]; allow one it fits or \
                 remove the key",
                s.kid,
                s.family.name(),
                s.alg.map(|a| format!(", alg {a}")).unwrap_or_default(),
                names.join(", ")
            ),
        ));
    }
    Ok(BoundKey {
        kid: s.kid.clone(),
        algs,
        key: s.key.clone(),
    })
}

fn sha256_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = String::with_capacity(64);
    for &b in d.as_ref() {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 15)] as char);
    }
    out
}
