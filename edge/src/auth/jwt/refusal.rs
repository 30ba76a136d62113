//! Why a token was not accepted.
//!
//! `Display` is what goes to logs and the audit trail, so it never contains the token, a
//! secret, or any string taken from the token (an `alg` or `kid` value is attacker-chosen
//! text): only fixed phrases and names from our own configuration.

use super::alg::Alg;
use crate::auth::identifier::IdentifierError;
use crate::auth::revocation::RevokedBy;
use crate::reason::Reason;

/// A refused token, with a stable reason code and the HTTP status to answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtRefusal {
    #[error("no bearer token in the request")]
    TokenMissing,
    #[error("a token was found both in {first} and in {second}; send exactly one")]
    TokenAmbiguous {
        first: &'static str,
        second: &'static str,
    },
    #[error(
        "a bearer subprotocol was offered without an application protocol; offer [app, \"bearer.<token>\"]"
    )]
    BearerWithoutAppProtocol,
    #[error("token is longer than the {max} bytes allowed")]
    TooLarge { max: usize },
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("alg none (an unsigned token) is never accepted")]
    AlgNone,
    /// `None`: an `alg` we do not know at all.
    #[error("{}", match .0 { Some(a) => format!("algorithm {a} is not allowed"), None => "unknown algorithm".to_owned() })]
    AlgNotAllowed(Option<Alg>),
    #[error("token has a crit header; no JWS extension is supported")]
    CritUnsupported,
    #[error("no configured key has the token's kid")]
    UnknownKid,
    #[error("token has no kid and several keys fit {0}; the issuer must set kid")]
    KidRequired(Alg),
    #[error("the key named by kid is not a key for {0}")]
    KeyAlgMismatch(Alg),
    #[error("signature does not verify")]
    BadSignature,
    #[error("claim `{0}` has the wrong type or value")]
    ClaimInvalid(String),
    /// `sub` or `jti` no revocation could name exactly (see [`crate::auth::identifier`]).
    #[error("claim `{claim}` is {why}")]
    IdentifierInvalid {
        claim: &'static str,
        why: IdentifierError,
    },
    #[error("required claim `{0}` is missing")]
    MissingClaim(String),
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("issuer is not the configured one")]
    WrongIssuer,
    #[error("audience does not include this edge")]
    WrongAudience,
    #[error("token lives longer than max_token_lifetime_s = {max}")]
    LifetimeTooLong { max: u64 },
    #[error("single-use tokens need a jti claim")]
    JtiRequired,
    #[error("token is revoked (by {0})")]
    Revoked(RevokedBy),
    #[error("token was already used (jti replayed)")]
    Replayed,
    #[error("replay store is full of unexpired tokens; retry shortly")]
    ReplayStoreFull,
    #[error("replay store is being handed to a restarted process; retry shortly")]
    ReplayStoreUnavailable,
    #[error(
        "single-use token issued before this process took over a replay store it did not \
         receive whole; it may have been used already: get a new token"
    )]
    ReplayUnproven,
    #[error("token lacks the scope this path needs")]
    ScopeMissing,
}

const CHALLENGE: &[(&str, &str)] = &[("WWW-Authenticate", "Bearer")];
const INVALID_REQUEST: &[(&str, &str)] =
    &[("WWW-Authenticate", "Bearer error=\"invalid_request\"")];
const INVALID_TOKEN: &[(&str, &str)] = &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")];
const INSUFFICIENT_SCOPE: &[(&str, &str)] =
    &[("WWW-Authenticate", "Bearer error=\"insufficient_scope\"")];
const RETRY_SOON: &[(&str, &str)] = &[("Retry-After", "1")];

impl JwtRefusal {
    /// The stable snake_case code: counters, dashboards and the audit trail key on it.
    pub fn reason(&self) -> Reason {
        match self {
            JwtRefusal::TokenMissing => Reason::TokenMissing,
            JwtRefusal::TokenAmbiguous { .. } => Reason::TokenAmbiguous,
            JwtRefusal::BearerWithoutAppProtocol => Reason::BearerWithoutAppProtocol,
            JwtRefusal::TooLarge { .. } => Reason::TokenTooLarge,
            JwtRefusal::Malformed(_) => Reason::TokenMalformed,
            JwtRefusal::AlgNone => Reason::AlgNone,
            JwtRefusal::AlgNotAllowed(_) => Reason::AlgNotAllowed,
            JwtRefusal::CritUnsupported => Reason::CritUnsupported,
            JwtRefusal::UnknownKid => Reason::UnknownKid,
            JwtRefusal::KidRequired(_) => Reason::KidRequired,
            JwtRefusal::KeyAlgMismatch(_) => Reason::KeyAlgMismatch,
            JwtRefusal::BadSignature => Reason::BadSignature,
            JwtRefusal::ClaimInvalid(_) => Reason::ClaimInvalid,
            JwtRefusal::IdentifierInvalid { .. } => Reason::IdentifierInvalid,
            JwtRefusal::MissingClaim(_) => Reason::MissingClaim,
            JwtRefusal::Expired => Reason::Expired,
            JwtRefusal::NotYetValid => Reason::NotYetValid,
            JwtRefusal::IssuedInFuture => Reason::IssuedInFuture,
            JwtRefusal::WrongIssuer => Reason::WrongIssuer,
            JwtRefusal::WrongAudience => Reason::WrongAudience,
            JwtRefusal::LifetimeTooLong { .. } => Reason::LifetimeTooLong,
            JwtRefusal::JtiRequired => Reason::JtiRequired,
            JwtRefusal::Revoked(_) => Reason::Revoked,
            JwtRefusal::Replayed => Reason::Replayed,
            JwtRefusal::ReplayStoreFull => Reason::ReplayStoreFull,
            JwtRefusal::ReplayStoreUnavailable => Reason::ReplayStoreUnavailable,
            JwtRefusal::ReplayUnproven => Reason::ReplayUnproven,
            JwtRefusal::ScopeMissing => Reason::ScopeMissing,
        }
    }

    /// RFC 6750 §3.1: a bad request is 400, an unusable token 401, a missing right 403; a
    /// full replay store is our capacity, not the client's fault: 503.
    pub fn status(&self) -> u16 {
        match self {
            JwtRefusal::TokenAmbiguous { .. } | JwtRefusal::BearerWithoutAppProtocol => 400,
            JwtRefusal::ScopeMissing => 403,
            JwtRefusal::ReplayStoreFull | JwtRefusal::ReplayStoreUnavailable => 503,
            _ => 401,
        }
    }

    /// Headers that belong with the status: the RFC 6750 §3 challenge, or `Retry-After`.
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            JwtRefusal::TokenMissing => CHALLENGE,
            JwtRefusal::ReplayStoreFull | JwtRefusal::ReplayStoreUnavailable => RETRY_SOON,
            _ => match self.status() {
                400 => INVALID_REQUEST,
                403 => INSUFFICIENT_SCOPE,
                _ => INVALID_TOKEN,
            },
        }
    }
}
