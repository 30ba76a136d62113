//! JSON Web Tokens at the upgrade: compact JWS (RFC 7515) verified on aws-lc-rs, claims per
//! RFC 7519, written here rather than taken from a JWT crate so that every refusal is ours to
//! choose and to name.
//!
//! - [`config`]: the `[jwt]` section and its static validation.
//! - [`alg`]: the algorithms and the key family each one may use (the confusion barrier).
//! - [`keys`], [`pem`], [`jwks`], [`der`]: key material from PEM files, a JWKS file and the
//!   HMAC secret file, normalised to what aws-lc-rs verifies with.
//! - [`compact`]: strict parsing of `header.payload.signature`.
//! - [`claims`]: time, issuer, audience, required claims, lifetime, `jti`, scopes.
//! - [`verifier`]: [`JwtVerifier`], which ties them together.
//! - [`extract`]: where the token is found in the upgrade request.
//! - [`scope`]: which scope a request path needs.
//! - [`refusal`]: [`JwtRefusal`], reason codes and statuses.

pub mod alg;
pub mod claims;
pub mod compact;
pub mod config;
pub mod der;
pub mod extract;
pub mod jwks;
pub mod keys;
pub mod pem;
pub mod refusal;
pub mod scope;
pub mod verifier;

pub use alg::Alg;
pub use config::{ExpiryPolicy, JwtConfig, ScopeRule, TokenSource};
pub use extract::{extract_token, redact_query_token, ExtractedToken, TokenSources};
pub use refusal::JwtRefusal;
pub use scope::{Requirement, ScopeRules};
pub use verifier::{JwtVerifier, VerifiedToken};

#[cfg(test)]
mod tests;
