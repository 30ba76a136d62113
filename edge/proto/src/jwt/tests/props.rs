//! Nothing panics, whatever comes in.

use proptest::prelude::*;
use serde_json::json;

use super::fixture::*;
use crate::jwt::mint::*;
use crate::jwt::{extract_token, JwtConfig, JwtVerifier, TokenSource, TokenSources};
use crate::origin::{OriginConfig, OriginPolicy};

fn verifier() -> &'static (Fixture, JwtVerifier) {
    static V: std::sync::OnceLock<(Fixture, JwtVerifier)> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let f = fixture();
        let v = f.verifier();
        (f, v)
    })
}

fn b64part() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<u8>(), 0..200).prop_map(|b| b64(&b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn verify_never_panics_on_any_string(s in any::<String>(), now in any::<u64>()) {
        let _ = verifier().1.verify(&s, now);
    }

    #[test]
    fn verify_never_panics_on_three_base64_parts(h in b64part(), p in b64part(), s in b64part()) {
        let _ = verifier().1.verify(&format!("{h}.{p}.{s}"), NOW);
    }

    #[test]
    fn verify_never_panics_on_json_headers_and_claims(
        alg in prop::sample::select(vec!["HS256", "RS256", "ES256", "ES384", "EdDSA", "none", "x"]),
        kid in prop::option::of("[a-z0-9]{0,6}"),
        exp in any::<i64>(),
        junk in any::<String>(),
    ) {
        let header = json!({"alg": alg, "kid": kid, "typ": junk.clone()});
        let claims = json!({"exp": exp, "nbf": exp, "iat": exp, "sub": junk, "aud": [1, "a"], "scope": {}});
        let input = signing_input(&header.to_string(), &claims.to_string());
        let _ = verifier().1.verify(&format!("{input}.{}", b64(&[0; 64])), NOW);
    }

    #[test]
    fn a_verified_token_stays_verified_only_unchanged(flip in 0usize..400) {
        let tok = token(json!({"alg": "ES256"}), good_claims());
        let v = &verifier().1;
        prop_assert!(v.verify(&tok, NOW).is_ok());
        let mut b = tok.into_bytes();
        let i = flip % b.len();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        if let Ok(s) = String::from_utf8(b) {
            prop_assert!(v.verify(&s, NOW).is_err());
        }
    }

    #[test]
    fn extraction_never_panics(
        auth in prop::option::of(any::<String>()),
        protos in prop::collection::vec(any::<String>(), 0..4),
        query in prop::option::of(any::<String>()),
    ) {
        let s = TokenSources::from_config(&JwtConfig {
            sources: vec![TokenSource::Header, TokenSource::Subprotocol, TokenSource::Query],
            ..JwtConfig::default()
        });
        let _ = extract_token(&s, auth.as_deref(), &protos, query.as_deref());
    }

    #[test]
    fn origin_and_host_checks_never_panic(host in any::<String>(), origin in prop::option::of(any::<String>())) {
        let p = OriginPolicy::from_config(&OriginConfig {
            allowed_origins: vec!["https://*.example.com".into(), "null".into(), "http://[::1]:*".into()],
            allowed_hosts: vec!["*.example.com:443".into(), "[::1]".into()],
            require_origin: true,
        }).unwrap();
        let _ = p.check(&host, origin.as_deref());
    }

    #[test]
    fn origin_entries_never_panic(e in any::<String>()) {
        let _ = OriginConfig { allowed_origins: vec![e.clone()], allowed_hosts: vec![e], require_origin: false }.validate();
    }
}
