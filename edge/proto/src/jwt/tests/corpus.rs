//! The corpus of bad tokens: each refused with its precise reason, and no refusal's Display
//! carrying the token, a part of it or a secret.

use aws_lc_rs::hmac;
use serde_json::json;

use super::fixture::*;
use crate::jwt::mint::*;
use aws_lc_rs::signature::KeyPair as _;

use crate::jwt::{JwtConfig, JwtVerifier};

fn rs() -> serde_json::Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": "rsa"})
}

/// Checks one refusal and that its Display leaks nothing of the token or the secret.
fn refused(v: &JwtVerifier, name: &str, token: &str, reason: &str) {
    match v.verify(token, NOW) {
        Ok(t) => panic!("{name}: accepted {t:?}"),
        Err(e) => {
            assert_eq!(e.reason(), reason, "{name}: {e}");
            let shown = format!("{e} {e:?}");
            for part in token.split('.').filter(|p| p.len() >= 8) {
                assert!(
                    !shown.contains(part),
                    "{name}: Display shows a token part: {shown}"
                );
            }
            assert!(
                !shown.contains(&b64(&keys().hs)),
                "{name}: secret in {shown}"
            );
        }
    }
}

#[test]
fn a_good_token_passes_the_corpus_verifier() {
    let f = fixture();
    let v = f.verifier();
    let t = v.verify(&token(rs(), good_claims()), NOW).unwrap();
    assert_eq!(t.sub.as_deref(), Some("alice"));
}

#[test]
fn time_claims() {
    let f = fixture();
    let v = f.verifier();
    let c = good_claims();
    // leeway_s = 30 by default.
    refused(
        &v,
        "expired",
        &token(rs(), with(c.clone(), "exp", json!(NOW - 31))),
        "expired",
    );
    refused(
        &v,
        "expired at exp+leeway",
        &token(rs(), with(c.clone(), "exp", json!(NOW - 30))),
        "expired",
    );
    v.verify(&token(rs(), with(c.clone(), "exp", json!(NOW - 29))), NOW)
        .expect("within the leeway");
    refused(
        &v,
        "future nbf",
        &token(rs(), with(c.clone(), "nbf", json!(NOW + 31))),
        "not_yet_valid",
    );
    v.verify(&token(rs(), with(c.clone(), "nbf", json!(NOW + 30))), NOW)
        .expect("nbf within the leeway");
    refused(
        &v,
        "future iat",
        &token(rs(), with(c.clone(), "iat", json!(NOW + 31))),
        "issued_in_future",
    );
    refused(
        &v,
        "no exp",
        &token(rs(), without(c.clone(), "exp")),
        "missing_claim",
    );
    refused(
        &v,
        "exp as string",
        &token(rs(), with(c.clone(), "exp", json!("soon"))),
        "claim_invalid",
    );
    refused(
        &v,
        "negative exp",
        &token(rs(), with(c.clone(), "exp", json!(-1))),
        "claim_invalid",
    );
    refused(
        &v,
        "null nbf",
        &token(rs(), with(c.clone(), "nbf", json!(null))),
        "claim_invalid",
    );
    // A fractional NumericDate is fine (RFC 7519 §2).
    v.verify(
        &token(rs(), with(c, "exp", json!((NOW + 60) as f64 + 0.5))),
        NOW,
    )
    .expect("fractional exp");
}

#[test]
fn issuer_audience_and_required_claims() {
    let f = fixture();
    let v = f.verifier();
    let c = good_claims();
    refused(
        &v,
        "wrong iss",
        &token(rs(), with(c.clone(), "iss", json!("https://evil.example"))),
        "wrong_issuer",
    );
    refused(
        &v,
        "no iss",
        &token(rs(), without(c.clone(), "iss")),
        "missing_claim",
    );
    refused(
        &v,
        "wrong aud",
        &token(rs(), with(c.clone(), "aud", json!("other-service"))),
        "wrong_audience",
    );
    refused(
        &v,
        "wrong aud list",
        &token(rs(), with(c.clone(), "aud", json!(["a", "b"]))),
        "wrong_audience",
    );
    refused(
        &v,
        "aud not strings",
        &token(rs(), with(c.clone(), "aud", json!([1]))),
        "claim_invalid",
    );
    refused(
        &v,
        "no aud",
        &token(rs(), without(c.clone(), "aud")),
        "missing_claim",
    );
    v.verify(
        &token(rs(), with(c.clone(), "aud", json!(["other", AUDIENCE]))),
        NOW,
    )
    .expect("any audience matches");
    refused(
        &v,
        "no sub",
        &token(rs(), without(c.clone(), "sub")),
        "missing_claim",
    );
    refused(
        &v,
        "empty sub",
        &token(rs(), with(c.clone(), "sub", json!(""))),
        "identifier_invalid",
    );
    refused(
        &v,
        "sub not string",
        &token(rs(), with(c.clone(), "sub", json!(7))),
        "claim_invalid",
    );
    refused(
        &v,
        "scope not strings",
        &token(rs(), with(c.clone(), "scope", json!({"a": 1}))),
        "claim_invalid",
    );
    refused(
        &v,
        "no jti, single_use",
        &token(rs(), without(c, "jti")),
        "jti_required",
    );
}

#[test]
fn audience_when_none_is_configured() {
    let f = fixture();
    let cfg = JwtConfig {
        audience: vec![],
        ..f.config()
    };
    let v = f.load(&cfg).unwrap();
    // RFC 7519 §4.1.3: we cannot be in an audience we do not know.
    refused(
        &v,
        "aud without configured audience",
        &token(rs(), good_claims()),
        "wrong_audience",
    );
    v.verify(&token(rs(), without(good_claims(), "aud")), NOW)
        .unwrap();
}

#[test]
fn lifetime_cap() {
    let f = fixture();
    let v = f.verifier(); // max_token_lifetime_s = 3600
    let c = good_claims();
    let long = with(with(c.clone(), "iat", json!(NOW)), "exp", json!(NOW + 3601));
    refused(
        &v,
        "too long-lived (iat)",
        &token(rs(), long),
        "lifetime_too_long",
    );
    let nbf_only = with(
        with(without(c.clone(), "iat"), "nbf", json!(NOW - 100)),
        "exp",
        json!(NOW + 3600),
    );
    refused(
        &v,
        "too long-lived (nbf)",
        &token(rs(), nbf_only),
        "lifetime_too_long",
    );
    let bare = with(without(c.clone(), "iat"), "exp", json!(NOW + 3601));
    refused(
        &v,
        "too long-lived (now)",
        &token(rs(), bare),
        "lifetime_too_long",
    );
    let old_iat = with(
        with(c.clone(), "iat", json!(NOW - 3000)),
        "exp",
        json!(NOW + 700),
    );
    refused(
        &v,
        "long life mostly spent",
        &token(rs(), old_iat),
        "lifetime_too_long",
    );
    let exact = with(with(c.clone(), "iat", json!(NOW)), "exp", json!(NOW + 3600));
    v.verify(&token(rs(), exact), NOW).expect("exactly the cap");
    // Without exp there is no bound at all: refused under a cap even if exp is not required.
    let cfg = JwtConfig {
        required_claims: vec!["sub".into()],
        single_use: false,
        ..f.config()
    };
    let v = f.load(&cfg).unwrap();
    refused(
        &v,
        "no exp under a cap",
        &token(rs(), without(c, "exp")),
        "lifetime_too_long",
    );
}

#[test]
fn alg_none_in_every_form() {
    let f = fixture();
    let v = f.verifier();
    let payload = good_claims().to_string();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let input = signing_input(&json!({"alg": alg, "typ": "JWT"}).to_string(), &payload);
        refused(&v, "none, no signature part", &input, "alg_none");
        refused(
            &v,
            "none, empty signature",
            &format!("{input}."),
            "alg_none",
        );
        let sig = b64(&sign(crate::jwt::Alg::Rs256, input.as_bytes()));
        refused(
            &v,
            "none, with a signature",
            &format!("{input}.{sig}"),
            "alg_none",
        );
    }
}

#[test]
fn rsa_public_key_as_hmac_secret_is_refused() {
    let f = fixture();
    let pem_bytes = f.read(&f.keys.rsa);
    let der = aws_lc_rs::encoding::AsDer::as_der(keys().rsa.public_key()).unwrap();
    for secret in [pem_bytes.as_slice(), der.as_ref()] {
        let forge = |kid: Option<&str>| {
            let header = match kid {
                Some(k) => json!({"alg": "HS256", "typ": "JWT", "kid": k}),
                None => json!({"alg": "HS256", "typ": "JWT"}),
            };
            token_with(header, good_claims(), |m| {
                hmac_sign(hmac::HMAC_SHA256, secret, m)
            })
        };
        // A verifier with only the RSA key: HS256 is not even allowed.
        let only_rsa = JwtConfig {
            keys: vec![f.keys.rsa.clone()],
            hs_secret_file: None,
            ..f.config()
        };
        let v = f.load(&only_rsa).unwrap();
        refused(
            &v,
            "RS->HS, RSA-only verifier",
            &forge(Some("rsa")),
            "alg_not_allowed",
        );
        refused(
            &v,
            "RS->HS, RSA-only verifier, no kid",
            &forge(None),
            "alg_not_allowed",
        );
        // Allowing HS256 without a secret is a configuration error, not a fallback.
        let forced = JwtConfig {
            algorithms: vec!["RS256".into(), "HS256".into()],
            ..only_rsa
        };
        let e = f.load(&forced).unwrap_err().to_string();
        assert!(e.contains("hs_secret_file"), "{e}");
        // A verifier with the RSA key and a real HS secret: the kid names an RSA key, which
        // never verifies HS256; without a kid the HS secret is used, and it is not the PEM.
        let v = f.verifier();
        refused(
            &v,
            "RS->HS, kid of the RSA key",
            &forge(Some("rsa")),
            "key_alg_mismatch",
        );
        refused(&v, "RS->HS, no kid", &forge(None), "bad_signature");
    }
}

#[test]
fn keys_and_signatures() {
    let f = fixture();
    let v = f.verifier();
    let c = good_claims();
    let good = token(rs(), c.clone());
    let (h, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let evil = b64(with(c.clone(), "sub", json!("admin"))
        .to_string()
        .as_bytes());
    refused(
        &v,
        "tampered payload",
        &format!("{h}.{evil}.{sig}"),
        "bad_signature",
    );
    let mut flipped = sig.as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    refused(
        &v,
        "tampered signature",
        &format!(
            "{h}.{}",
            rest.replace(sig, std::str::from_utf8(&flipped).unwrap())
        ),
        "bad_signature",
    );
    let other_key = token_with(json!({"alg": "ES256", "kid": "p256"}), c.clone(), |m| {
        keys()
            .p256_other
            .sign(&aws_lc_rs::rand::SystemRandom::new(), m)
            .unwrap()
            .as_ref()
            .to_vec()
    });
    refused(&v, "wrong key (ES256)", &other_key, "bad_signature");
    let wrong_secret = token_with(json!({"alg": "HS256"}), c.clone(), |m| {
        hmac_sign(hmac::HMAC_SHA256, &[7u8; 64], m)
    });
    refused(&v, "wrong key (HS256)", &wrong_secret, "bad_signature");
    refused(
        &v,
        "unknown kid",
        &token(json!({"alg": "RS256", "kid": "rotated-away"}), c.clone()),
        "unknown_kid",
    );
    refused(
        &v,
        "kid of another family",
        &token(json!({"alg": "RS256", "kid": "p256"}), c.clone()),
        "key_alg_mismatch",
    );
    refused(
        &v,
        "ES384 with the P-256 key",
        &token(json!({"alg": "ES384", "kid": "p256"}), c.clone()),
        "key_alg_mismatch",
    );
    // ES256 as ASN.1 DER instead of the fixed r||s: refused, the encoding is not JWS.
    let der_sig = token_with(json!({"alg": "ES256"}), c.clone(), |m| {
        let k = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            keys().p256.to_pkcs8v1().unwrap().as_ref(),
        )
        .unwrap();
        k.sign(&aws_lc_rs::rand::SystemRandom::new(), m)
            .unwrap()
            .as_ref()
            .to_vec()
    });
    refused(&v, "ES256 DER signature", &der_sig, "bad_signature");
    refused(
        &v,
        "empty signature",
        &format!("{h}.{}.", rest.split_once('.').unwrap().0),
        "bad_signature",
    );
    // RS512 is not among the derived defaults (RS256 + PS256 for RSA).
    refused(
        &v,
        "RS512 not allowed",
        &token(json!({"alg": "RS512"}), c.clone()),
        "alg_not_allowed",
    );
    let es512 = token_with(json!({"alg": "ES512"}), c, |_| vec![1; 132]);
    refused(&v, "unknown alg", &es512, "alg_not_allowed");
}

#[test]
fn kid_required_when_two_keys_fit() {
    let f = fixture();
    let second = f.write("p256b.pem", p256_pem(&keys().p256_other).as_bytes());
    let cfg = JwtConfig {
        keys: vec![f.keys.p256.clone(), second],
        hs_secret_file: None,
        ..f.config()
    };
    let v = f.load(&cfg).unwrap();
    refused(
        &v,
        "no kid, two P-256 keys",
        &token(json!({"alg": "ES256"}), good_claims()),
        "kid_required",
    );
    v.verify(
        &token(json!({"alg": "ES256", "kid": "p256"}), good_claims()),
        NOW,
    )
    .unwrap();
}

#[test]
fn header_and_structure() {
    let f = fixture();
    let v = f.verifier();
    let c = good_claims();
    refused(
        &v,
        "crit header",
        &token(
            json!({"alg": "RS256", "crit": ["exp"], "exp": 1}),
            c.clone(),
        ),
        "crit_unsupported",
    );
    refused(
        &v,
        "empty crit",
        &token(json!({"alg": "RS256", "crit": []}), c.clone()),
        "crit_unsupported",
    );
    refused(
        &v,
        "typ JOSE",
        &token(json!({"alg": "RS256", "typ": "JOSE"}), c.clone()),
        "token_malformed",
    );
    refused(
        &v,
        "kid not a string",
        &token(json!({"alg": "RS256", "kid": 1}), c.clone()),
        "token_malformed",
    );
    refused(
        &v,
        "no alg",
        &token_with(json!({"typ": "JWT"}), c.clone(), |_| vec![0; 8]),
        "token_malformed",
    );
    refused(
        &v,
        "alg not a string",
        &token_with(json!({"alg": ["RS256"]}), c.clone(), |_| vec![0; 8]),
        "token_malformed",
    );
    // Two `alg` members: a parser keeping the first would see RS256, one keeping the last none.
    let dup = signing_input(r#"{"alg":"RS256","alg":"none"}"#, &c.to_string());
    let sig = b64(&sign(crate::jwt::Alg::Rs256, dup.as_bytes()));
    refused(
        &v,
        "duplicate alg",
        &format!("{dup}.{sig}"),
        "token_malformed",
    );
    let dup_claims = signing_input(
        r#"{"alg":"RS256"}"#,
        r#"{"sub":"a","sub":"admin","exp":1700000100,"jti":"x"}"#,
    );
    let sig = b64(&sign(crate::jwt::Alg::Rs256, dup_claims.as_bytes()));
    refused(
        &v,
        "duplicate claim",
        &format!("{dup_claims}.{sig}"),
        "token_malformed",
    );
    let not_object = signing_input(r#"{"alg":"RS256"}"#, r#"["sub"]"#);
    let sig = b64(&sign(crate::jwt::Alg::Rs256, not_object.as_bytes()));
    refused(
        &v,
        "payload not an object",
        &format!("{not_object}.{sig}"),
        "token_malformed",
    );
    // jwk/jku/x5u in the header are never used: the token verifies (or not) on our key only.
    let embedded = token(
        json!({"alg": "RS256", "jku": "https://evil.example/jwks", "jwk": {"kty": "oct", "k": "AAAA"}}),
        c.clone(),
    );
    v.verify(&embedded, NOW).expect("ignored header keys");
    let good = token(rs(), c);
    refused(
        &v,
        "padded signature",
        &format!("{good}=="),
        "token_malformed",
    );
    refused(&v, "four parts", &format!("{good}.x"), "token_malformed");
    refused(
        &v,
        "header not base64url",
        &format!("+{good}"),
        "token_malformed",
    );
}

#[test]
fn oversized_and_garbage() {
    let f = fixture();
    let v = f.verifier();
    let big = token(
        json!({"alg": "RS256", "x": "a".repeat(9000)}),
        good_claims(),
    );
    refused(&v, "oversized header", &big, "token_too_large");
    refused(
        &v,
        "oversized garbage",
        &"A".repeat(8193),
        "token_too_large",
    );
    for g in [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "....",
        ".",
        "€.€.€",
        "e30.e30.",
        "eyJhbGciOiJSUzI1NiJ9",
        "e30.e30.e30",
        " eyJ.e30.e30",
    ] {
        refused(&v, g, g, "token_malformed");
    }
}

/// A `sub` or `jti` no revocation could name exactly is refused at verification with
/// `identifier_invalid` (401, `invalid_token`), and the refusal's text names the claim and
/// the rule, never the value.
#[test]
fn identifiers_no_revocation_could_name() {
    let f = fixture();
    let v = f.verifier();
    let c = good_claims();
    for claim in ["sub", "jti"] {
        for bad in [
            "",
            " alice",
            "alice ",
            "alice\t",
            "ali\u{7}ce",
            "alice\u{200b}",
            "al\u{202e}ice",
            "a\u{a0}b",
            "\u{feff}x",
        ] {
            let name = format!("{claim} {bad:?}");
            let tok = token(rs(), with(c.clone(), claim, json!(bad)));
            refused(&v, &name, &tok, "identifier_invalid");
            let e = v.verify(&tok, NOW).unwrap_err();
            assert_eq!(e.status(), 401, "{name}");
            assert_eq!(
                e.extra_headers(),
                &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")],
                "{name}"
            );
            let shown = e.to_string();
            assert!(
                shown.contains(claim) && shown.contains("exact identifier"),
                "{shown}"
            );
            if !bad.trim().is_empty() {
                assert!(!shown.contains(bad.trim()), "{name}: the value in {shown}");
            }
        }
        // Inner spaces and any script are fine.
        for ok in ["svc account 7", "Zoë", "山田"] {
            let t = v
                .verify(&token(rs(), with(c.clone(), claim, json!(ok))), NOW)
                .unwrap_or_else(|e| panic!("{claim} {ok:?}: {e}"));
            let got = if claim == "sub" { t.sub } else { t.jti };
            assert_eq!(got.as_deref(), Some(ok));
        }
    }
}
