//! Admission at the upgrade, sans-IO: who may have a WebSocket.
//!
//! Nothing here reads a clock or a socket: times come in as UNIX seconds, headers as strings,
//! and every decision comes out as a value with a stable snake_case `reason()` and the HTTP
//! `status()` the refusal path sends.
//!
//! - [`jwt`]: bearer tokens — where they are found, compact JWS verification on aws-lc-rs,
//!   claims, scopes per path (the checks in `wssedge_proto::jwt`, the key files read here).
//! - [`replay`]: the single-use `jti` store of one owner core, and which core owns a `jti`.
//! - [`revocation`]: revoked `jti`s and subjects, from a file and from control commands.
//! - [`identifier`]: the one rule a `sub`, a `jti` and every revocation of them follow, so
//!   that whatever is admitted can be revoked.
//! - [`origin`]: the `Host` and `Origin` allow-lists.
//! - [`admission`]: the decision at the upgrade that puts these together with the client
//!   certificate's identity, and the replay questions to the `jti`'s owner core (its one
//!   wait: the replay store handed across cores at a restart).
//!
//! # Reason → status
//!
//! | reason | status | meaning |
//! |---|---|---|
//! | `token_missing` | 401 | no bearer token in any enabled source |
//! | `token_ambiguous` | 400 | more than one token (several sources, or one source twice) |
//! | `bearer_without_app_protocol` | 400 | a `bearer.<token>` subprotocol offered with no application protocol |
//! | `token_too_large` | 401 | longer than `max_token_bytes` (checked before any decoding) |
//! | `token_malformed` | 401 | not three base64url parts, header/payload not a JSON object, bad `typ`/`kid` |
//! | `alg_none` | 401 | `alg: none` in any spelling, with or without a signature part |
//! | `alg_not_allowed` | 401 | an `alg` outside the allowed set (or unknown) |
//! | `crit_unsupported` | 401 | a `crit` header: no extension is understood, so none may be critical |
//! | `unknown_kid` | 401 | no configured key has the token's `kid` |
//! | `kid_required` | 401 | no `kid`, and more than one key fits the `alg` |
//! | `key_alg_mismatch` | 401 | the `kid` names a key of another family (e.g. an RSA key for HS256) |
//! | `bad_signature` | 401 | the signature does not verify over `header.payload` |
//! | `claim_invalid` | 401 | a registered claim (or the scope claim) has the wrong type, or `iss` is empty |
//! | `identifier_invalid` | 401 | `sub` or `jti` is no exact identifier ([`identifier`]): empty, over 1024 bytes, padded with whitespace, or holding a control character, an invisible one or a space other than U+0020 |
//! | `missing_claim` | 401 | a required claim (or `iss`/`aud` when they are checked) is absent |
//! | `expired` | 401 | `now >= exp + leeway` |
//! | `not_yet_valid` | 401 | `now + leeway < nbf` |
//! | `issued_in_future` | 401 | `iat > now + leeway` |
//! | `wrong_issuer` | 401 | `iss` differs from `issuer` |
//! | `wrong_audience` | 401 | no `aud` value among `audience` |
//! | `lifetime_too_long` | 401 | `exp − start > max_token_lifetime_s` (or no `exp` under a cap) |
//! | `jti_required` | 401 | `single_use` and no `jti` |
//! | `revoked` | 401 | the `jti` or the subject is revoked |
//! | `replayed` | 401 | `single_use` and this `jti` was already used within its life |
//! | `replay_store_full` | 503 | the owner core's replay store is full of unexpired entries |
//! | `replay_store_unavailable` | 503 | the owner core's shard was sealed and handed to a restart's new process (or the core is gone); retry |
//! | `replay_unproven` | 401 | `single_use`, and this restarted process did not receive the whole replay store: the token was issued before it took over (or names no `iat`/`nbf`) and may have been used |
//! | `scope_missing` | 403 | the token lacks the scope the request path needs |
//! | `origin_missing` | 403 | `require_origin` and no `Origin` header |
//! | `origin_not_allowed` | 403 | `Origin` (or `null`) not in `allowed_origins`, or malformed |
//! | `host_not_allowed` | 421 | `Host` not in `allowed_hosts`, or malformed |
//!
//! Why these statuses: RFC 6750 §3.1 maps a request problem (`invalid_request`) to 400, any
//! token that cannot be used — malformed, expired, revoked, replayed — to 401 (the client's
//! fix is a new token), and a valid token lacking a right (`insufficient_scope`) to 403.
//! Revocation stays 401 for subjects too: a revoked subject's tokens are revoked tokens, and a
//! different status would tell a prober more than the token-level answer. A `Host` outside the
//! list is not an authorization decision but a request that reached the wrong server, which is
//! what 421 (Misdirected Request, RFC 9110 §15.5.20) says. Each refusal also names its
//! `WWW-Authenticate` challenge or `Retry-After` in `extra_headers()`.

pub(crate) mod admission;
pub mod jwt;
pub mod kicks;
pub use wssedge_proto::jwt::identifier;
pub use wssedge_proto::origin;
pub mod replay;
pub mod revocation;

pub use identifier::{check_identifier, IdentifierError, MAX_IDENTIFIER_BYTES};
pub use jwt::{
    extract_token, redact_query_token, ExpiryPolicy, ExtractedToken, JwtConfig, JwtRefusal,
    JwtVerifier, ScopeRule, TokenSource, VerifiedToken,
};
pub use origin::{OriginConfig, OriginPolicy, OriginRefusal};

impl From<origin::OriginConfigError> for crate::config_error::ConfigError {
    fn from(e: origin::OriginConfigError) -> Self {
        Self::invalid(e.key, e.value, e.reason.to_string())
    }
}
pub use replay::{owner_core, ReplayRefusal, ReplayStore};
pub use revocation::{RevocationEntry, RevocationError, Revocations, RevokedBy};
