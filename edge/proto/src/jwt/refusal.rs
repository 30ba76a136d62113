//! Why a token was not accepted.
//!
//! `Display` is what goes to logs and the audit trail, so it never contains the token, a
//! secret, or any string taken from the token (an `alg` or `kid` value is attacker-chosen
//! text): only fixed phrases and names from our own configuration.

use super::alg::Alg;
use super::identifier::IdentifierError;

/// What matched a revocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedBy {
    Jti,
    Subject,
}

impl std::fmt::Display for RevokedBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RevokedBy::Jti => "jti",
            RevokedBy::Subject => "subject",
        })
    }
}

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
    /// `sub` or `jti` no revocation could name exactly (see [`super::identifier`]).
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
    #[error(
        "single-use token could not be checked against the fleet's replay store (Redis \
         unreachable); retry, or get a new token"
    )]
    ReplayCheckUnavailable,
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
    pub fn reason(&self) -> &'static str {
        match self {
            JwtRefusal::TokenMissing => "token_missing",
            JwtRefusal::TokenAmbiguous { .. } => "token_ambiguous",
            JwtRefusal::BearerWithoutAppProtocol => "bearer_without_app_protocol",
            JwtRefusal::TooLarge { .. } => "token_too_large",
            JwtRefusal::Malformed(_) => "token_malformed",
            JwtRefusal::AlgNone => "alg_none",
            JwtRefusal::AlgNotAllowed(_) => "alg_not_allowed",
            JwtRefusal::CritUnsupported => "crit_unsupported",
            JwtRefusal::UnknownKid => "unknown_kid",
            JwtRefusal::KidRequired(_) => "kid_required",
            JwtRefusal::KeyAlgMismatch(_) => "key_alg_mismatch",
            JwtRefusal::BadSignature => "bad_signature",
            JwtRefusal::ClaimInvalid(_) => "claim_invalid",
            JwtRefusal::IdentifierInvalid { .. } => "identifier_invalid",
            JwtRefusal::MissingClaim(_) => "missing_claim",
            JwtRefusal::Expired => "expired",
            JwtRefusal::NotYetValid => "not_yet_valid",
            JwtRefusal::IssuedInFuture => "issued_in_future",
            JwtRefusal::WrongIssuer => "wrong_issuer",
            JwtRefusal::WrongAudience => "wrong_audience",
            JwtRefusal::LifetimeTooLong { .. } => "lifetime_too_long",
            JwtRefusal::JtiRequired => "jti_required",
            JwtRefusal::Revoked(_) => "revoked",
            JwtRefusal::Replayed => "replayed",
            JwtRefusal::ReplayStoreFull => "replay_store_full",
            JwtRefusal::ReplayStoreUnavailable => "replay_store_unavailable",
            JwtRefusal::ReplayUnproven => "replay_unproven",
            JwtRefusal::ReplayCheckUnavailable => "replay_check_unavailable",
            JwtRefusal::ScopeMissing => "scope_missing",
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
