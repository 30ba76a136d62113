//! JSON Web Tokens at the upgrade: compact JWS (RFC 7515), claims per RFC 7519. Signatures
//! are verified by the `jsonwebtoken` crate on aws-lc-rs; what it cannot tell apart or is
//! lenient about stays here, so that every refusal is ours to choose and to name: the header
//! (`alg: none` in any case and unknown algorithms told apart from garbage, `crit`, `typ`,
//! duplicate members, the RFC 9864 `Ed25519` name), key selection by `kid` with the key
//! family barrier, and every claim rule (its `exp` leeway, fractional dates, `iat`, `aud`
//! lists, identifiers, lifetime, scopes).
//!
//! Sans-IO like the rest of this crate: key material comes in as bytes (the edge reads the
//! files), the time as UNIX seconds, revocations through [`RevocationList`].
//!
//! - [`config`]: the `[jwt]` section and its static validation.
//! - [`alg`]: the algorithms and the key family each one may use (the confusion barrier).
//! - [`keys`], [`jwks`]: key material from the bytes of a PEM file (the `pem` crate reads the
//!   envelope), a JWKS file and the HMAC secret file, checked by aws-lc-rs and made into
//!   `jsonwebtoken::DecodingKey`s.
//! - [`compact`]: strict parsing of `header.payload.signature` and the header policy.
//! - [`claims`]: time, issuer, audience, required claims, lifetime, `jti`, scopes.
//! - [`identifier`]: the one rule a `sub`, a `jti` and every revocation of them follow.
//! - [`verifier`]: [`JwtVerifier`], which ties them together.
//! - [`extract`]: where the token is found in the upgrade request.
//! - [`scope`]: which scope a request path needs.
//! - [`refusal`]: [`JwtRefusal`], reason codes and statuses.
//! - `mint` (tests, and the `mint` feature): test keys and tokens signed with them.

pub mod alg;
pub mod claims;
pub mod compact;
pub mod config;
pub mod extract;
pub mod identifier;
pub mod jwks;
pub mod keys;
#[cfg(any(test, feature = "mint"))]
#[allow(clippy::disallowed_methods)] // test keys and signatures need randomness
pub mod mint;
pub mod refusal;
pub mod scope;
pub mod verifier;

pub use alg::{Alg, KeyFamily};
pub use config::{ExpiryPolicy, JwtConfig, JwtConfigError, ScopeRule, TokenSource};
pub use extract::{extract_token, redact_query_token, ExtractedToken, TokenSources};
pub use identifier::{check_identifier, IdentifierError, MAX_IDENTIFIER_BYTES};
pub use keys::{KeyError, KeySpec};
pub use refusal::{JwtRefusal, RevokedBy};
pub use scope::{Requirement, ScopeRules};
pub use verifier::{JwtVerifier, RevocationList, VerifiedToken};

#[cfg(test)]
mod tests;
