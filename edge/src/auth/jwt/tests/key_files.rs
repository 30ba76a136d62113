//! Key material from files: PEM public keys, the JWKS file, the HMAC secret — what loads,
//! and what is refused with the file's name and a fix.

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::signature::KeyPair as _;
use serde_json::{json, Value};

use super::mint::*;
use crate::auth::jwt::{jwks, Alg, JwtConfig};

fn jwk_rsa(kid: &str) -> Value {
    let pk = keys().rsa.public_key();
    json!({
        "kty": "RSA", "kid": kid, "use": "sig",
        "n": b64(pk.modulus().big_endian_without_leading_zero()),
        "e": b64(pk.exponent().big_endian_without_leading_zero()),
    })
}

fn jwk_ec(kid: &str, crv: &str, point: &[u8]) -> Value {
    let size = (point.len() - 1) / 2;
    json!({
        "kty": "EC", "kid": kid, "crv": crv,
        "x": b64(&point[1..1 + size]), "y": b64(&point[1 + size..]),
    })
}

fn jwk_ed(kid: &str) -> Value {
    json!({"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64(keys().ed.public_key().as_ref())})
}

fn jwks_config(f: &Fixture, doc: &Value) -> JwtConfig {
    let path = write(f.dir.path(), "keys.jwks", doc.to_string().as_bytes());
    JwtConfig {
        keys: vec![],
        hs_secret_file: None,
        jwks: Some(path),
        ..f.config()
    }
}

#[test]
fn jwks_with_rsa_ec_and_okp_keys_verifies_tokens_by_kid() {
    let f = fixture();
    let k = keys();
    let mut rsa_ps = jwk_rsa("rsa-ps");
    rsa_ps["alg"] = json!("PS256");
    let doc = json!({"keys": [
        jwk_rsa("rsa-1"),
        rsa_ps,
        jwk_ec("ec-256", "P-256", k.p256.public_key().as_ref()),
        jwk_ec("ec-384", "P-384", k.p384.public_key().as_ref()),
        jwk_ed("ed-1"),
    ]});
    let v = crate::auth::jwt::load_verifier(&jwks_config(&f, &doc)).unwrap();
    for (alg, kid) in [
        (Alg::Rs256, "rsa-1"),
        (Alg::Ps256, "rsa-1"),
        (Alg::Ps256, "rsa-ps"),
        (Alg::Es256, "ec-256"),
        (Alg::Es384, "ec-384"),
        (Alg::EdDsa, "ed-1"),
    ] {
        let t = v
            .verify(
                &token(json!({"alg": alg.name(), "kid": kid}), good_claims()),
                NOW,
            )
            .unwrap_or_else(|e| panic!("{alg} {kid}: {e}"));
        assert_eq!(t.kid, kid);
    }
    // The key's own `alg` restricts it: rsa-ps never verifies RS256.
    let e = v
        .verify(
            &token(json!({"alg": "RS256", "kid": "rsa-ps"}), good_claims()),
            NOW,
        )
        .unwrap_err();
    assert_eq!(e.reason(), "key_alg_mismatch");
    // Two RSA keys fit RS256/PS256 now: a token without kid is ambiguous.
    let e = v
        .verify(&token(json!({"alg": "PS256"}), good_claims()), NOW)
        .unwrap_err();
    assert_eq!(e.reason(), "kid_required");
}

/// JWK integers have no leading zeros, but some issuers write one (as DER does); aws-lc-rs
/// refuses components with one, so it is stripped before the key is made.
#[test]
fn jwks_rsa_integers_with_leading_zeros_verify() {
    let f = fixture();
    let pk = keys().rsa.public_key();
    let padded = |b: &[u8]| b64(&[&[0u8][..], b].concat());
    let mut jwk = jwk_rsa("rsa-z");
    jwk["n"] = json!(padded(pk.modulus().big_endian_without_leading_zero()));
    jwk["e"] = json!(padded(pk.exponent().big_endian_without_leading_zero()));
    let v = crate::auth::jwt::load_verifier(&jwks_config(&f, &json!({"keys": [jwk]}))).unwrap();
    v.verify(
        &token(json!({"alg": "RS256", "kid": "rsa-z"}), good_claims()),
        NOW,
    )
    .unwrap();
}

#[test]
fn jwks_refusals_name_the_key_and_the_fix() {
    let k = keys();
    let p256 = jwk_ec("ec", "P-256", k.p256.public_key().as_ref());
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"keys": [{"kty": "oct", "kid": "s", "k": "c2VjcmV0"}]}),
            "hs_secret_file",
        ),
        (
            json!({"keys": [with(jwk_rsa("r"), "d", json!("AAAA"))]}),
            "private key material",
        ),
        (json!({"keys": [without(jwk_rsa("r"), "kid")]}), "kid"),
        (
            json!({"keys": [jwk_rsa("r"), jwk_ed("r")]}),
            "appears twice",
        ),
        (
            json!({"keys": [with(jwk_rsa("r"), "use", json!("enc"))]}),
            "not a signing key",
        ),
        (
            json!({"keys": [with(jwk_rsa("r"), "key_ops", json!(["encrypt"]))]}),
            "verify",
        ),
        (
            json!({"keys": [with(p256.clone(), "crv", json!("P-521"))]}),
            "P-521",
        ),
        (
            json!({"keys": [with(p256.clone(), "alg", json!("RS256"))]}),
            "does not fit",
        ),
        (
            json!({"keys": [with(p256.clone(), "alg", json!("none"))]}),
            "unsupported",
        ),
        (
            json!({"keys": [with(p256.clone(), "x", json!("AAAA"))]}),
            "32 bytes",
        ),
        (
            json!({"keys": [with(p256, "y", json!(b64(&[1u8; 32])))]}),
            "refuses the key",
        ),
        (
            json!({"keys": [with(jwk_rsa("r"), "n", json!(b64(&[0xff; 128])))]}),
            "1024 bits",
        ),
        (
            json!({"keys": [with(jwk_rsa("r"), "e", json!(b64(&[2])))]}),
            "exponent",
        ),
        (
            json!({"keys": [with(jwk_rsa("r"), "n", json!("a+b/"))]}),
            "base64url",
        ),
        (
            json!({"keys": [{"kty": "OKP", "kid": "x", "crv": "X25519", "x": "AAAA"}]}),
            "X25519",
        ),
        (
            json!({"keys": [{"kty": "DSA", "kid": "x"}]}),
            "not supported",
        ),
        (json!({"keys": []}), "empty"),
        (json!([]), "\"keys\" array"),
    ];
    for (doc, want) in cases {
        let e = jwks::parse(doc.to_string().as_bytes(), "k.jwks").unwrap_err();
        assert!(e.to_string().contains(want), "{doc}: {e}");
    }
    // Through the loader the error names the config key and the file.
    let f = fixture();
    let e = crate::auth::jwt::load_verifier(&jwks_config(
        &f,
        &json!({"keys": [{"kty": "oct", "kid": "s", "k": "AA"}]}),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("jwt.jwks") && e.contains("keys.jwks"), "{e}");
}

#[test]
fn pem_files() {
    let f = fixture();
    let dir = f.dir.path();
    let load = |name: &str, text: &str| {
        let p = write(dir, name, text.as_bytes());
        let cfg = JwtConfig {
            keys: vec![p],
            hs_secret_file: None,
            ..f.config()
        };
        crate::auth::jwt::load_verifier(&cfg).map_err(|e| e.to_string())
    };
    // PKCS#1 `RSA PUBLIC KEY` works as well as SPKI.
    let pk = keys().rsa.public_key();
    // aws-lc-rs gives the RSA public key as PKCS#1 `RSAPublicKey` DER.
    let pkcs1: &[u8] = pk.as_ref();
    let v = load("legacy.pem", &pem("RSA PUBLIC KEY", pkcs1)).unwrap();
    v.verify(
        &token(json!({"alg": "RS256", "kid": "legacy"}), good_claims()),
        NOW,
    )
    .unwrap();
    let spki = pk.as_der().unwrap();
    let cases = [
        ("priv.pem", pem("PRIVATE KEY", &[1, 2, 3]), "-pubout"),
        ("cert.pem", pem("CERTIFICATE", &[1, 2, 3]), "-pubkey"),
        (
            "two.pem",
            format!("{}{}", rsa_pem(), ed_pem()),
            "one key per file",
        ),
        ("empty.pem", String::new(), "no PEM block"),
        (
            "junk.pem",
            pem("PUBLIC KEY", &[0x30, 0x03, 1, 2, 3]),
            "SubjectPublicKeyInfo",
        ),
        (
            "trail.pem",
            pem("PUBLIC KEY", &[spki.as_ref(), &[0]].concat()),
            "trailing",
        ),
        ("params.pem", pem("DH PARAMETERS", &[1]), "not a public key"),
    ];
    for (name, text, want) in cases {
        let e = load(name, &text).unwrap_err();
        assert!(
            e.contains(want) && e.contains(name) && e.contains("jwt.keys"),
            "{name}: {e}"
        );
    }
    let e = crate::auth::jwt::load_verifier(&JwtConfig {
        keys: vec![dir.join("missing.pem")],
        ..f.config()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("missing.pem") && e.contains("cannot open"),
        "{e}"
    );
}

#[test]
fn kids_must_be_unique_across_sources() {
    let f = fixture();
    let sub = f.dir.path().join("other");
    std::fs::create_dir(&sub).unwrap();
    let again = write(&sub, "rsa.pem", ed_pem().as_bytes());
    let cfg = JwtConfig {
        keys: vec![f.keys.rsa.clone(), again],
        ..f.config()
    };
    let e = crate::auth::jwt::load_verifier(&cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"rsa\"") && e.contains("unique"), "{e}");
    // A JWKS kid equal to a PEM file stem collides as well.
    let doc = json!({"keys": [jwk_ed("rsa")]});
    let cfg = JwtConfig {
        keys: vec![f.keys.rsa.clone()],
        ..jwks_config(&f, &doc)
    };
    assert!(crate::auth::jwt::load_verifier(&cfg).is_err());
}

#[test]
fn hs_secret_file_rules() {
    use std::os::unix::fs::PermissionsExt as _;
    let f = fixture();
    let cfg_for = |p| JwtConfig {
        keys: vec![],
        hs_secret_file: Some(p),
        ..f.config()
    };
    let p = write(f.dir.path(), "open.key", &keys().hs);
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = crate::auth::jwt::load_verifier(&cfg_for(p.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("too open") && e.contains("chmod 600"),
            "{mode:o}: {e}"
        );
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        crate::auth::jwt::load_verifier(&cfg_for(p.clone())).unwrap();
    }
    let short = write(f.dir.path(), "short.key", &[1u8; 31]);
    let e = crate::auth::jwt::load_verifier(&cfg_for(short))
        .unwrap_err()
        .to_string();
    assert!(e.contains("31 bytes") && e.contains("at least 32"), "{e}");
    let huge = write(f.dir.path(), "huge.key", &vec![1u8; 5000]);
    assert!(crate::auth::jwt::load_verifier(&cfg_for(huge)).is_err());
    let e = crate::auth::jwt::load_verifier(&cfg_for(f.dir.path().to_owned()))
        .unwrap_err()
        .to_string();
    assert!(e.contains("regular file"), "{e}");
    // The secret is used as raw bytes: a trailing newline is part of it.
    let nl = write(
        f.dir.path(),
        "nl.key",
        &[keys().hs.as_slice(), b"\n"].concat(),
    );
    let v = crate::auth::jwt::load_verifier(&cfg_for(nl)).unwrap();
    let e = v
        .verify(&token(json!({"alg": "HS256"}), good_claims()), NOW)
        .unwrap_err();
    assert_eq!(e.reason(), "bad_signature");
}
