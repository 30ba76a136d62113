//! The JWT path of the upgrade on hostile input. The first byte picks what the rest is:
//! 0: a bearer token as the client sent it (split, header, base64, size cap, signature);
//! 1: a header and a claims set, split at the first newline, that the target signs with the
//!    verifier's own HS256 key, so the claim checks behind the signature are reached too;
//! 2: a JWKS document; 3: a PEM key file.
//! Must never panic; a token that verifies must satisfy every configured rule.
#![no_main]

use std::sync::OnceLock;

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use libfuzzer_sys::fuzz_target;
use wssedge_proto::jwt::{jwks, keys, JwtConfig, JwtVerifier};

const SECRET: &[u8] = b"a fuzzing secret of thirty-two+ bytes";
const NOW: u64 = 1_800_000_000;
const LEEWAY_S: u64 = 30;
const MAX_LIFETIME_S: u64 = 3600;

fn verifier() -> &'static JwtVerifier {
    static V: OnceLock<JwtVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let config = JwtConfig {
            issuer: Some("https://issuer.example".into()),
            audience: vec!["edge".into()],
            leeway_s: LEEWAY_S,
            required_claims: vec!["exp".into(), "sub".into(), "jti".into()],
            single_use: true,
            max_token_lifetime_s: Some(MAX_LIFETIME_S),
            max_token_bytes: 2048,
            // Named for validation only: the secret is handed over below, not read.
            hs_secret_file: Some("/fuzz/k1".into()),
            ..JwtConfig::default()
        };
        let key = keys::hs_secret(SECRET, "k1".into(), "fuzz".into()).expect("a valid secret");
        JwtVerifier::from_specs(&config, vec![key]).expect("a valid verifier")
    })
}

fn sign(header: &[u8], claims: &[u8]) -> String {
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(claims));
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
    let tag = hmac::sign(&key, token.as_bytes());
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(tag.as_ref()));
    token
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let token = String::from_utf8_lossy(rest);
            if let Ok(t) = verifier().verify(&token, NOW) {
                // Only a token whose signature is the secret's HMAC of its first two parts
                // verifies, however the parts are spelled.
                let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
                let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET);
                let tag = hmac::sign(&key, signing_input.as_bytes());
                let sent = URL_SAFE_NO_PAD
                    .decode(signature)
                    .expect("a verified signature decodes");
                assert_eq!(
                    sent,
                    tag.as_ref(),
                    "a token verified without its HMAC: {t:?}"
                );
            }
        }
        1 => {
            let cut = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let (header, claims) = (&rest[..cut], rest.get(cut + 1..).unwrap_or_default());
            let token = sign(header, claims);
            let Ok(t) = verifier().verify(&token, NOW) else {
                return;
            };
            // The rules, restated independently of the checks in `jwt::claims`.
            let exp = t.exp.expect("exp is required");
            assert!(
                NOW < exp.saturating_add(LEEWAY_S),
                "expired token accepted: {t:?}"
            );
            assert!(
                t.nbf.is_none_or(|nbf| nbf <= NOW + LEEWAY_S),
                "before nbf: {t:?}"
            );
            assert!(
                t.iat.is_none_or(|iat| iat <= NOW + LEEWAY_S),
                "iat ahead: {t:?}"
            );
            let start = match (t.iat, t.nbf) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) | (None, Some(a)) => a,
                (None, None) => NOW,
            };
            assert!(
                exp.saturating_sub(start) <= MAX_LIFETIME_S,
                "life over the cap: {t:?}"
            );
            assert!(t.sub.as_deref().is_some_and(|s| !s.is_empty()), "{t:?}");
            assert!(t.jti.as_deref().is_some_and(|s| !s.is_empty()), "{t:?}");
            assert_eq!(
                t.claims.get("iss").and_then(|v| v.as_str()),
                Some("https://issuer.example")
            );
            let aud = t
                .claims
                .get("aud")
                .expect("aud is required when audiences are set");
            let ours = |v: &serde_json::Value| v.as_str() == Some("edge");
            assert!(
                ours(aud) || aud.as_array().is_some_and(|l| l.iter().any(ours)),
                "{aud}"
            );
        }
        2 => {
            let _ = jwks::parse(rest, "fuzz.jwks");
        }
        _ => {
            let _ = keys::pem_key(rest, "fuzz".into(), "fuzz.pem".into());
        }
    }
});
