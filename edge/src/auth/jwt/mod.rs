//! JSON Web Tokens at the upgrade. The checks themselves are sans-IO and live in
//! [`wssedge_proto::jwt`] (re-exported here); this room reads the key files they need.
//!
//! - [`key_files`]: PEM files, the JWKS file and the HMAC secret file read from disk (size cap,
//!   the secret's permissions, the `kid` from the file stem) and handed to the protocol crate
//!   as bytes; [`load_verifier`] builds the [`JwtVerifier`] of a `[jwt]` section.

pub mod key_files;

pub use key_files::load_verifier;
pub use wssedge_proto::jwt::*;

impl From<JwtConfigError> for crate::config_error::ConfigError {
    fn from(e: JwtConfigError) -> Self {
        Self::invalid(e.key, e.value, e.reason)
    }
}

impl RevocationList for crate::auth::revocation::Revocations {
    fn is_revoked(&self, sub: Option<&str>, jti: Option<&str>) -> Option<RevokedBy> {
        crate::auth::revocation::Revocations::is_revoked(self, sub, jti)
    }
}

#[cfg(test)]
mod tests;
