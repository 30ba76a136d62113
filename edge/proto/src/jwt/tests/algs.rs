//! A good token for every algorithm, verified by the key of its family, and the fields of
//! the resulting `VerifiedToken`.

use aws_lc_rs::digest;
use serde_json::json;

use super::fixture::*;
use crate::jwt::mint::*;
use crate::jwt::{Alg, JwtConfig, JwtVerifier};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn every_algorithm_verifies_with_its_key() {
    let f = fixture();
    let cfg = JwtConfig {
        algorithms: Alg::ALL.iter().map(|a| a.name().to_owned()).collect(),
        ..f.config()
    };
    let v = f.load(&cfg).unwrap();
    let expect_kid = |a: Alg| match a {
        Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => "hs",
        Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => "rsa",
        Alg::Es256 => "p256",
        Alg::Es384 => "p384",
        Alg::EdDsa => "ed",
    };
    for alg in Alg::ALL {
        // Without a kid (one key per family here) and with the right kid.
        for header in [
            json!({"alg": alg.name(), "typ": "JWT"}),
            json!({"alg": alg.name(), "kid": expect_kid(alg)}),
        ] {
            let tok = token(header, good_claims());
            let t = v.verify(&tok, NOW).unwrap_or_else(|e| panic!("{alg}: {e}"));
            assert_eq!(t.alg, alg);
            assert_eq!(t.kid, expect_kid(alg));
            assert_eq!(t.sub.as_deref(), Some("alice"));
            assert_eq!(t.jti.as_deref(), Some("jti-0001"));
            assert_eq!(t.exp, Some(NOW + 300));
            assert_eq!(t.iat, Some(NOW - 10));
            assert_eq!(t.scopes, vec!["read".to_owned(), "trade".to_owned()]);
            assert_eq!(t.claims["iss"], ISSUER);
            assert_eq!(
                t.token_sha256_hex,
                hex(digest::digest(&digest::SHA256, tok.as_bytes()).as_ref())
            );
        }
    }
}

#[test]
fn the_fully_specified_ed25519_name_is_eddsa() {
    let f = fixture();
    let v = f.verifier();
    let input = signing_input(r#"{"alg":"Ed25519"}"#, &good_claims().to_string());
    let tok = format!("{input}.{}", b64(&sign(Alg::EdDsa, input.as_bytes())));
    assert_eq!(v.verify(&tok, NOW).unwrap().alg, Alg::EdDsa);
}

#[test]
fn derived_algorithms_follow_the_keys() {
    let f = fixture();
    let v = f.verifier();
    assert_eq!(
        v.allowed_algorithms(),
        &[
            Alg::Hs256,
            Alg::Hs384,
            Alg::Hs512,
            Alg::Rs256,
            Alg::Ps256,
            Alg::Es256,
            Alg::Es384,
            Alg::EdDsa
        ]
    );
    // A 32-byte secret is long enough for HS256 only (RFC 7518 §3.2).
    let short = f.write("short.key", &[9u8; 32]);
    let cfg = JwtConfig {
        keys: vec![],
        hs_secret_file: Some(short),
        ..f.config()
    };
    assert_eq!(f.load(&cfg).unwrap().allowed_algorithms(), &[Alg::Hs256]);
    let e = f
        .load(&JwtConfig {
            algorithms: vec!["HS512".into()],
            ..cfg
        })
        .unwrap_err()
        .to_string();
    assert!(e.contains("HS512") && e.contains("64 bytes"), "{e}");
}

#[test]
fn scopes_as_an_array_and_the_scope_claim_name() {
    let f = fixture();
    let cfg = JwtConfig {
        scope_claim: "scp".into(),
        ..f.config()
    };
    let v = f.load(&cfg).unwrap();
    let claims = with(without(good_claims(), "scope"), "scp", json!(["a", "b c"]));
    let t = v
        .verify(&token(json!({"alg": "ES256"}), claims), NOW)
        .unwrap();
    assert_eq!(t.scopes, vec!["a".to_owned(), "b c".to_owned()]);
    // The old claim name is now just another claim.
    let t = v
        .verify(&token(json!({"alg": "ES256"}), good_claims()), NOW)
        .unwrap();
    assert!(t.scopes.is_empty());
}

#[test]
fn verifier_is_shareable_across_cores() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<JwtVerifier>();
}
