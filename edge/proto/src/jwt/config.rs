//! The `[jwt]` configuration section and its static checks (the ones that need no file).
//! Key material is checked by [`super::JwtVerifier::from_specs`], after the edge reads the files.

use std::path::PathBuf;

use serde::Deserialize;

use super::alg::{self, Alg, KeyFamily};

/// Why the `[jwt]` section (or a key given to it) was refused: the key, the value and what to
/// change. The edge shows it as its own configuration error, with the same words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{key}` = {value}: {reason}")]
pub struct JwtConfigError {
    pub key: &'static str,
    pub value: String,
    pub reason: String,
}

impl JwtConfigError {
    pub fn invalid(
        key: &'static str,
        value: impl std::fmt::Display,
        reason: impl std::fmt::Display,
    ) -> Self {
        Self {
            key,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}

/// Where a bearer token may be taken from in the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`.
    Header,
    /// `Sec-WebSocket-Protocol: <app>, bearer.<token>` (browsers cannot set headers).
    Subprotocol,
    /// `?access_token=<token>`: ends up in every access log on the way; last resort.
    Query,
}

impl TokenSource {
    pub fn name(self) -> &'static str {
        match self {
            TokenSource::Header => "header",
            TokenSource::Subprotocol => "subprotocol",
            TokenSource::Query => "query",
        }
    }
}

/// What happens to a live session when its token's `exp` passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpiryPolicy {
    /// Close with 1008 (policy violation) at `exp + leeway_s`.
    #[default]
    Close,
    /// The token only gates the upgrade.
    Ignore,
}

/// A request path at or under `path_prefix` needs `scope`; the longest matching prefix wins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeRule {
    pub path_prefix: String,
    pub scope: String,
}

/// `[jwt]`: bearer tokens at the upgrade.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// PEM public keys (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`), one per file; the
    /// file stem is the key's `kid`.
    #[serde(deserialize_with = "crate::config_list::one_or_many")]
    pub keys: Vec<PathBuf>,
    /// A JWKS file (RFC 7517) of public keys, each with a `kid`.
    pub jwks: Option<PathBuf>,
    /// The HS256/384/512 secret: the file's raw bytes (no trimming), at least 32, mode 0600
    /// or stricter. Its `kid` is the file stem.
    pub hs_secret_file: Option<PathBuf>,
    /// Allowed `alg`s; empty = derived from the configured keys (HS256/384/512 as the secret's
    /// length permits, RS256+PS256, ES256, ES384, EdDSA, plus any `alg` a JWKS key names).
    #[serde(deserialize_with = "crate::config_list::one_or_many")]
    pub algorithms: Vec<String>,
    /// `iss` must equal this when set.
    pub issuer: Option<String>,
    /// `aud` (a string or an array) must contain one of these. When empty, a token that
    /// carries an `aud` is refused (RFC 7519 §4.1.3: we cannot be its audience).
    #[serde(deserialize_with = "crate::config_list::one_or_many")]
    pub audience: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub leeway_s: u64,
    /// Claims that must be present (and not null).
    #[serde(deserialize_with = "crate::config_list::one_or_many")]
    pub required_claims: Vec<String>,
    /// The claim holding scopes: a space-separated string or an array of strings.
    pub scope_claim: String,
    pub scopes: Vec<ScopeRule>,
    /// Each `jti` is accepted once within its life (needs `exp` among `required_claims`).
    pub single_use: bool,
    /// Tokens living longer than this (`exp` − `iat`/`nbf`, or `exp` − now) are refused.
    pub max_token_lifetime_s: Option<u64>,
    /// Tokens longer than this are refused before any decoding.
    pub max_token_bytes: usize,
    /// Replay store capacity for the whole process (split across owner cores).
    pub max_tracked_jti: usize,
    #[serde(deserialize_with = "crate::config_list::one_or_many")]
    pub sources: Vec<TokenSource>,
    pub query_param: String,
    pub subprotocol_prefix: String,
    pub expiry: ExpiryPolicy,
    /// Revoked token ids and subjects, one per line: `jti <id>` / `sub <subject>` (`#`
    /// comments). Re-read on reload; the control socket adds and removes entries live.
    pub revocations_file: Option<PathBuf>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            jwks: None,
            hs_secret_file: None,
            algorithms: Vec::new(),
            issuer: None,
            audience: Vec::new(),
            leeway_s: 30,
            required_claims: vec!["exp".into(), "sub".into()],
            scope_claim: "scope".into(),
            scopes: Vec::new(),
            single_use: false,
            max_token_lifetime_s: None,
            max_token_bytes: 8192,
            max_tracked_jti: 1_000_000,
            sources: vec![TokenSource::Header],
            query_param: "access_token".into(),
            subprotocol_prefix: "bearer.".into(),
            expiry: ExpiryPolicy::Close,
            revocations_file: None,
        }
    }
}

/// Leeway covers clock skew between issuer and edge; ten minutes of skew is a broken clock.
const MAX_LEEWAY_S: u64 = 600;
/// Below this no real token fits; above it the token would not fit the upgrade request.
const TOKEN_BYTES_RANGE: std::ops::RangeInclusive<usize> = 256..=65_536;

impl JwtConfig {
    /// The allowed algorithms as configured (`None` = derive them from the keys).
    pub fn parsed_algorithms(&self) -> Result<Option<Vec<Alg>>, JwtConfigError> {
        if self.algorithms.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(self.algorithms.len());
        for name in &self.algorithms {
            if alg::is_none(name) {
                return Err(JwtConfigError::invalid(
                    "jwt.algorithms",
                    name,
                    "`none` means unsigned tokens and is never allowed",
                ));
            }
            let Some(a) = Alg::from_name(name) else {
                return Err(JwtConfigError::invalid(
                    "jwt.algorithms",
                    name,
                    "unknown algorithm; supported: HS256 HS384 HS512 RS256 RS384 RS512 PS256 \
                     PS384 PS512 ES256 ES384 EdDSA (names are case-sensitive)",
                ));
            };
            if out.contains(&a) {
                return Err(JwtConfigError::invalid(
                    "jwt.algorithms",
                    name,
                    "listed twice",
                ));
            }
            out.push(a);
        }
        Ok(Some(out))
    }

    /// Every check that needs no file. [`super::JwtVerifier::from_specs`] calls it first.
    pub fn validate(&self) -> Result<(), JwtConfigError> {
        if self.keys.is_empty() && self.jwks.is_none() && self.hs_secret_file.is_none() {
            return Err(JwtConfigError::invalid(
                "jwt",
                "(no keys)",
                "give at least one of `keys`, `jwks` or `hs_secret_file`",
            ));
        }
        if let Some(algs) = self.parsed_algorithms()? {
            for a in algs {
                let hs = a.family() == KeyFamily::Hmac;
                if hs && self.hs_secret_file.is_none() {
                    return Err(JwtConfigError::invalid(
                        "jwt.algorithms",
                        a,
                        "an HS algorithm needs `hs_secret_file` (public keys are never HMAC secrets)",
                    ));
                }
                if !hs && self.keys.is_empty() && self.jwks.is_none() {
                    return Err(JwtConfigError::invalid(
                        "jwt.algorithms",
                        a,
                        "a public-key algorithm needs `keys` or `jwks`",
                    ));
                }
            }
        }
        if let Some(iss) = &self.issuer {
            if iss.is_empty() {
                return Err(JwtConfigError::invalid(
                    "jwt.issuer",
                    "\"\"",
                    "must not be empty; leave it out to skip the issuer check",
                ));
            }
        }
        for (i, aud) in self.audience.iter().enumerate() {
            if aud.is_empty() {
                return Err(JwtConfigError::invalid(
                    "jwt.audience",
                    "\"\"",
                    "empty entry",
                ));
            }
            if self.audience[..i].contains(aud) {
                return Err(JwtConfigError::invalid("jwt.audience", aud, "listed twice"));
            }
        }
        if self.leeway_s > MAX_LEEWAY_S {
            return Err(JwtConfigError::invalid(
                "jwt.leeway_s",
                self.leeway_s,
                format!("at most {MAX_LEEWAY_S}; fix the clocks (NTP) instead"),
            ));
        }
        for (i, c) in self.required_claims.iter().enumerate() {
            if c.is_empty() {
                return Err(JwtConfigError::invalid(
                    "jwt.required_claims",
                    "\"\"",
                    "empty claim name",
                ));
            }
            if self.required_claims[..i].contains(c) {
                return Err(JwtConfigError::invalid(
                    "jwt.required_claims",
                    c,
                    "listed twice",
                ));
            }
        }
        if self.scope_claim.is_empty() {
            return Err(JwtConfigError::invalid(
                "jwt.scope_claim",
                "\"\"",
                "must name a claim",
            ));
        }
        super::scope::ScopeRules::new(&self.scopes)?;
        if self.single_use && !self.required_claims.iter().any(|c| c == "exp") {
            return Err(JwtConfigError::invalid(
                "jwt.single_use",
                true,
                "needs \"exp\" in `required_claims`: a used jti is remembered until its token expires",
            ));
        }
        if self.max_token_lifetime_s == Some(0) {
            return Err(JwtConfigError::invalid(
                "jwt.max_token_lifetime_s",
                0,
                "must be at least 1 (leave it out for no cap)",
            ));
        }
        if !TOKEN_BYTES_RANGE.contains(&self.max_token_bytes) {
            return Err(JwtConfigError::invalid(
                "jwt.max_token_bytes",
                self.max_token_bytes,
                format!(
                    "must be within {}..={}",
                    TOKEN_BYTES_RANGE.start(),
                    TOKEN_BYTES_RANGE.end()
                ),
            ));
        }
        if self.single_use && self.max_tracked_jti == 0 {
            return Err(JwtConfigError::invalid(
                "jwt.max_tracked_jti",
                0,
                "must be at least 1 with `single_use`",
            ));
        }
        if self.sources.is_empty() {
            return Err(JwtConfigError::invalid(
                "jwt.sources",
                "[]",
                "name at least one of \"header\", \"subprotocol\", \"query\"",
            ));
        }
        for (i, s) in self.sources.iter().enumerate() {
            if self.sources[..i].contains(s) {
                return Err(JwtConfigError::invalid(
                    "jwt.sources",
                    s.name(),
                    "listed twice",
                ));
            }
        }
        if self.query_param.is_empty() || !self.query_param.bytes().all(is_unreserved) {
            return Err(JwtConfigError::invalid(
                "jwt.query_param",
                &self.query_param,
                "must be a non-empty name of letters, digits, '-', '.', '_' or '~'",
            ));
        }
        if self.subprotocol_prefix.is_empty() || !self.subprotocol_prefix.bytes().all(is_tchar) {
            return Err(JwtConfigError::invalid(
                "jwt.subprotocol_prefix",
                &self.subprotocol_prefix,
                "must be a non-empty HTTP token (RFC 9110 tchar), e.g. \"bearer.\"",
            ));
        }
        Ok(())
    }
}

/// RFC 3986 unreserved characters: a query parameter name that needs no escaping.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// RFC 9110 §5.6.2 tchar: what a `Sec-WebSocket-Protocol` token may contain.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'.'
                | b'^'
                | b'_'
                | b'`'
                | b'|'
                | b'~'
        )
}
