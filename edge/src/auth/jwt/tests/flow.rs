//! The admission chain as `auth::admission` runs it: extract → verify → revocation → replay (owner
//! core) → scope, then the session deadline.

use serde_json::json;

use super::mint::*;
use crate::auth::jwt::{ExpiryPolicy, JwtConfig, JwtRefusal, JwtVerifier, ScopeRule, TokenSource};
use crate::auth::replay::{owner_core, ReplayStore};
use crate::auth::revocation::{RevocationEntry, Revocations, RevokedBy};
use crate::reason::Reason;

fn scoped(f: &Fixture) -> JwtVerifier {
    crate::auth::jwt::load_verifier(&JwtConfig {
        scopes: vec![
            ScopeRule {
                path_prefix: "/trade".into(),
                scope: "trade".into(),
            },
            ScopeRule {
                path_prefix: "/admin".into(),
                scope: "admin".into(),
            },
        ],
        sources: vec![TokenSource::Header, TokenSource::Subprotocol],
        ..f.config()
    })
    .unwrap()
}

#[test]
fn admission_chain() {
    let f = fixture();
    let v = scoped(&f);
    let tok = token(json!({"alg": "ES256"}), good_claims());
    let header = format!("Bearer {tok}");
    let found = v.extract_token(Some(&header), &[], None).unwrap().unwrap();
    let t = v.verify(&found.token, NOW).unwrap();

    let mut revs = Revocations::new();
    v.check_revocation(&revs, &t).unwrap();

    let cores = 4;
    let jti = t.jti.as_deref().unwrap();
    let mut stores: Vec<ReplayStore> = (0..cores)
        .map(|_| ReplayStore::new(v.replay_capacity_per_core(cores), v.leeway_s()))
        .collect();
    let owner = owner_core(jti, cores);
    stores[owner]
        .check_and_insert(jti, t.exp.unwrap(), NOW)
        .unwrap();
    // The same token again, a second later: replayed.
    let again = v.verify(&found.token, NOW + 1).unwrap();
    let e: JwtRefusal = stores[owner_core(again.jti.as_deref().unwrap(), cores)]
        .check_and_insert(jti, again.exp.unwrap(), NOW + 1)
        .unwrap_err()
        .into();
    assert_eq!((Reason::from(&e), e.status()), (Reason::Replayed, 401));

    let target = |s: &str| crate::ws::RequestTarget::parse(s).unwrap();
    assert!(v.scope_allows(&target("/trade/orders?x=1"), &t));
    assert!(v.scope_allows(&target("/public"), &t));
    let e = v.check_scope(&target("/admin"), &t).unwrap_err();
    assert_eq!((Reason::from(&e), e.status()), (Reason::ScopeMissing, 403));
    assert_eq!(
        e.extra_headers()[0].1,
        "Bearer error=\"insufficient_scope\""
    );

    // Close at exp + leeway: the first second verify refuses the token.
    let deadline = v.session_deadline(&t).unwrap();
    assert_eq!(deadline, NOW + 300 + 30);
    assert_eq!(
        v.verify(&found.token, deadline).unwrap_err().reason(),
        "expired"
    );
    assert!(v.verify(&found.token, deadline - 1).is_ok());

    // Revoking the subject while connected: the version moves, the check now refuses.
    let seen = revs.version();
    revs.revoke(&RevocationEntry::Sub("alice".into()));
    assert!(revs.version() > seen);
    let e = v.check_revocation(&revs, &t).unwrap_err();
    assert_eq!(e, JwtRefusal::Revoked(RevokedBy::Subject));
    assert_eq!((Reason::from(&e), e.status()), (Reason::Revoked, 401));
}

#[test]
fn expiry_ignore_has_no_deadline() {
    let f = fixture();
    let v = crate::auth::jwt::load_verifier(&JwtConfig {
        expiry: ExpiryPolicy::Ignore,
        ..f.config()
    })
    .unwrap();
    let t = v
        .verify(&token(json!({"alg": "EdDSA"}), good_claims()), NOW)
        .unwrap();
    assert_eq!(v.session_deadline(&t), None);
}

#[test]
fn subprotocol_token_through_the_verifier() {
    let f = fixture();
    let v = scoped(&f);
    let tok = token(json!({"alg": "ES384"}), good_claims());
    let offers = vec!["exchange.v1".to_owned(), format!("bearer.{tok}")];
    let found = v.extract_token(None, &offers, None).unwrap().unwrap();
    assert_eq!(found.app_protocol(), Some("exchange.v1"));
    v.verify(&found.token, NOW).unwrap();
    assert!(v.is_token_protocol(&offers[1]) && !v.is_token_protocol(&offers[0]));
    let e = v.extract_required(None, &offers[..1], None).unwrap_err();
    assert_eq!((Reason::from(&e), e.status()), (Reason::TokenMissing, 401));
    // Query is not an enabled source here: ignored, and redacted from the target anyway.
    assert_eq!(v.extract_token(None, &[], Some("access_token=x")), Ok(None));
    assert_eq!(v.redact_target("/ws?access_token=x&a=1"), "/ws?a=1");
}

#[test]
fn statuses_and_challenges() {
    let cases = [
        (JwtRefusal::TokenMissing, 401, "Bearer"),
        (JwtRefusal::Expired, 401, "Bearer error=\"invalid_token\""),
        (
            JwtRefusal::BearerWithoutAppProtocol,
            400,
            "Bearer error=\"invalid_request\"",
        ),
        (
            JwtRefusal::ScopeMissing,
            403,
            "Bearer error=\"insufficient_scope\"",
        ),
        (JwtRefusal::ReplayStoreFull, 503, "1"),
    ];
    for (r, status, header) in cases {
        assert_eq!(r.status(), status, "{r}");
        assert_eq!(r.extra_headers()[0].1, header, "{r}");
    }
}
