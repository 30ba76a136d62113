//! JWT at the upgrade, over the wire: the bad-token corpus (each refusal's status, JSON reason
//! and counters), the three token sources (a subprotocol token selects the application's
//! protocol and is never echoed), scopes, single-use tokens across two cores (the replay check
//! on the jti's owner core), the replay store's capacity, and a token expiring mid-session.
//!
//! Tokens are made here, independently of the server's code: HS256 with aws-lc-rs' HMAC,
//! RS256/PS256 with its RSA keys, ES256 and EdDSA with its ECDSA and Ed25519 keys.
//! Other test files use the minting helpers (`pub(crate)`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

pub(crate) const ISSUER: &str = "https://issuer.e2e.test";
pub(crate) const AUDIENCE: &str = "wssedge-e2e";

// ---------------------------------------------------------------------------------------------
// Keys and tokens
// ---------------------------------------------------------------------------------------------

pub(crate) struct Keys {
    /// The HS256 secret the server is configured with.
    pub hs: Vec<u8>,
    /// A secret the server does not know.
    pub hs_other: Vec<u8>,
    pub rsa: RsaKeyPair,
    pub es: EcdsaKeyPair,
    /// An ES256 key the server does not know.
    pub es_other: EcdsaKeyPair,
    pub ed: Ed25519KeyPair,
}

/// Generated once per test binary (an RSA key takes a moment).
pub(crate) fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        hs: (0u8..48).map(|i| i.wrapping_mul(73) ^ 0xa5).collect(),
        hs_other: (0u8..48).map(|i| i.wrapping_mul(29) ^ 0x3c).collect(),
        rsa: RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key"),
        es: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("P-256"),
        es_other: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
            .expect("P-256"),
        ed: Ed25519KeyPair::generate().expect("Ed25519"),
    })
}

pub(crate) fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// The RSA public key file's exact text (SPKI PEM): what an attacker would use as an HMAC
/// secret in the RS→HS confusion.
pub(crate) fn rsa_public_pem() -> String {
    pem(
        "PUBLIC KEY",
        keys().rsa.public_key().as_der().expect("RSA SPKI").as_ref(),
    )
}

fn rsa_public_der() -> Vec<u8> {
    keys()
        .rsa
        .public_key()
        .as_der()
        .expect("RSA SPKI")
        .as_ref()
        .to_vec()
}

pub(crate) fn hmac256(secret: &[u8], input: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input)
        .as_ref()
        .to_vec()
}

/// Signs `input` as `alg` with the configured key of that family.
pub(crate) fn sign(alg: &str, input: &[u8]) -> Vec<u8> {
    let k = keys();
    let rng = SystemRandom::new();
    let rsa = |enc: &'static dyn signature::RsaEncoding| {
        let mut sig = vec![0; k.rsa.public_modulus_len()];
        k.rsa.sign(enc, &rng, input, &mut sig).expect("RSA sign");
        sig
    };
    match alg {
        "HS256" => hmac256(&k.hs, input),
        "RS256" => rsa(&signature::RSA_PKCS1_SHA256),
        "PS256" => rsa(&signature::RSA_PSS_SHA256),
        "ES256" => k.es.sign(&rng, input).expect("ES256").as_ref().to_vec(),
        "EdDSA" => k.ed.sign(input).as_ref().to_vec(),
        other => panic!("no test key for {other}"),
    }
}

/// `b64(header).b64(claims)`.
pub(crate) fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    )
}

/// A token signed with the configured key for the header's `alg`.
pub(crate) fn token(header: Value, claims: Value) -> String {
    let alg = header["alg"].as_str().expect("alg").to_owned();
    token_with(header, claims, |m| sign(&alg, m))
}

/// A token signed by `signer`.
pub(crate) fn token_with(
    header: Value,
    claims: Value,
    signer: impl Fn(&[u8]) -> Vec<u8>,
) -> String {
    let input = signing_input(&header, &claims);
    let sig = signer(input.as_bytes());
    format!("{input}.{}", b64url(&sig))
}

/// A good HS256 token with `claims`.
pub(crate) fn hs(claims: Value) -> String {
    token(json!({"alg": "HS256", "typ": "JWT"}), claims)
}

/// Claims every server of these tests accepts: issuer, audience, ten minutes of life.
pub(crate) fn claims(sub: &str, jti: &str) -> Value {
    let now = unix_now();
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": sub,
        "jti": jti,
        "iat": now,
        "exp": now + 600,
    })
}

pub(crate) fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

pub(crate) fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("claims object").remove(key);
    claims
}

/// A jti no other token of this test binary has.
pub(crate) fn unique_jti(tag: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A request to `target` carrying `token` in `Authorization`.
pub(crate) fn with_header_token(target: &str, token: &str) -> String {
    ws_request(target, &[("Authorization", &bearer(token))])
}

/// The key files a server is configured with: `hs.key` (0600), `rsa.pem`, `es.pem`, `ed.pem`
/// (kids are the file stems).
pub(crate) struct KeyFiles {
    _dir: tempfile::TempDir,
    pub hs: PathBuf,
    pub rsa: PathBuf,
    pub es: PathBuf,
    pub ed: PathBuf,
}

pub(crate) fn key_files() -> KeyFiles {
    let dir = tempfile::tempdir().expect("tempdir");
    let k = keys();
    let hs = dir.path().join("hs.key");
    write_private(&hs, &k.hs);
    let rsa = dir.path().join("rsa.pem");
    std::fs::write(&rsa, rsa_public_pem()).expect("write rsa.pem");
    let es = dir.path().join("es.pem");
    std::fs::write(
        &es,
        pem(
            "PUBLIC KEY",
            k.es.public_key().as_der().expect("EC SPKI").as_ref(),
        ),
    )
    .expect("write es.pem");
    let ed = dir.path().join("ed.pem");
    std::fs::write(
        &ed,
        pem(
            "PUBLIC KEY",
            k.ed.public_key().as_der().expect("Ed SPKI").as_ref(),
        ),
    )
    .expect("write ed.pem");
    KeyFiles {
        _dir: dir,
        hs,
        rsa,
        es,
        ed,
    }
}

/// A `[jwt]` section with every key, the issuer and audience, `leeway_s = 5`, a one-hour
/// lifetime cap and a 4096-byte token cap; `overrides` replace or add keys (TOML values as
/// written), `tail` follows the section (`[[jwt.scopes]]`, other sections).
pub(crate) fn jwt_config(files: &KeyFiles, overrides: &[(&str, &str)], tail: &str) -> String {
    let keys: Vec<(String, String)> = vec![
        ("hs_secret_file".into(), toml_path(&files.hs)),
        (
            "keys".into(),
            format!(
                "[{}, {}, {}]",
                toml_path(&files.rsa),
                toml_path(&files.es),
                toml_path(&files.ed)
            ),
        ),
        ("issuer".into(), toml_str(ISSUER)),
        ("audience".into(), format!("[{}]", toml_str(AUDIENCE))),
        ("leeway_s".into(), "5".into()),
        ("max_token_lifetime_s".into(), "3600".into()),
        ("max_token_bytes".into(), "4096".into()),
    ];
    let mut out = toml_table("jwt", keys, overrides);
    out.push_str(tail);
    out
}

/// The `WWW-Authenticate` challenge RFC 6750 §3 pairs with a status.
fn check_challenge(r: &Refused) {
    let challenge = header(&r.head, "www-authenticate");
    match (r.status, r.reason.as_str()) {
        (401, "token_missing") => assert_eq!(challenge, Some("Bearer"), "{}", r.head),
        (401, _) => assert_eq!(
            challenge,
            Some("Bearer error=\"invalid_token\""),
            "{}",
            r.head
        ),
        (403, "scope_missing") => assert_eq!(
            challenge,
            Some("Bearer error=\"insufficient_scope\""),
            "{}",
            r.head
        ),
        (400, _) => assert_eq!(
            challenge,
            Some("Bearer error=\"invalid_request\""),
            "{}",
            r.head
        ),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// The corpus
// ---------------------------------------------------------------------------------------------

/// Every bad token of issue 5's corpus, over the wire: each refused with its status, its JSON
/// reason and both counters, never echoing the token; and a good token of each algorithm
/// family upgrades (so the refusals are about the tokens, not the server).
#[tokio::test]
async fn bad_token_corpus_is_refused_with_status_reason_and_counters() {
    let files = key_files();
    let srv = Server::with_config(&jwt_config(&files, &[], ""));
    let now = unix_now();
    let k = keys();

    // Positive controls: every configured key family, with and without kid.
    for (alg, kid) in [
        ("HS256", None),
        ("HS256", Some("hs")),
        ("RS256", Some("rsa")),
        ("PS256", None),
        ("ES256", Some("es")),
        ("EdDSA", None),
    ] {
        let mut h = json!({"alg": alg, "typ": "JWT"});
        if let Some(kid) = kid {
            h["kid"] = json!(kid);
        }
        let tok = token(h, claims("alice", &unique_jti("good")));
        let (_, mut ws) = expect_upgraded(&srv, &with_header_token("/", &tok)).await;
        expect_echo(&mut ws, alg).await;
    }

    let good = claims("alice", "corpus");
    let hs_header = json!({"alg": "HS256", "typ": "JWT"});
    let good_token = hs(good.clone());
    let tampered = {
        let parts: Vec<&str> = good_token.split('.').collect();
        let evil = b64url(
            with(good.clone(), "sub", json!("admin"))
                .to_string()
                .as_bytes(),
        );
        format!("{}.{evil}.{}", parts[0], parts[2])
    };
    let alg_none = |alg: &str, trailing_dot: bool| {
        let input = signing_input(&json!({"alg": alg, "typ": "JWT"}), &good);
        if trailing_dot {
            format!("{input}.")
        } else {
            input
        }
    };
    let rsa_pem_secret = rsa_public_pem();
    let rsa_der_secret = rsa_public_der();
    let random_parts = format!(
        "{}.{}.{}",
        b64url(&pattern(40)),
        b64url(&pattern(90)),
        b64url(&pattern(32))
    );

    // (what, Authorization value or none, status, reason)
    let cases: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no token at all", None, 401, "token_missing"),
        (
            "another scheme",
            Some("Basic YWxpY2U6cHc=".into()),
            401,
            "token_missing",
        ),
        (
            "expired",
            Some(bearer(&hs(with(
                with(good.clone(), "exp", json!(now - 60)),
                "iat",
                json!(now - 120),
            )))),
            401,
            "expired",
        ),
        (
            "future nbf",
            Some(bearer(&hs(with(good.clone(), "nbf", json!(now + 600))))),
            401,
            "not_yet_valid",
        ),
        (
            "wrong aud",
            Some(bearer(&hs(with(
                good.clone(),
                "aud",
                json!("another-service"),
            )))),
            401,
            "wrong_audience",
        ),
        (
            "wrong iss",
            Some(bearer(&hs(with(
                good.clone(),
                "iss",
                json!("https://evil.test"),
            )))),
            401,
            "wrong_issuer",
        ),
        (
            "wrong key (HS256, another secret)",
            Some(bearer(&token_with(hs_header.clone(), good.clone(), |m| {
                hmac256(&k.hs_other, m)
            }))),
            401,
            "bad_signature",
        ),
        (
            "wrong key (ES256, another key pair)",
            Some(bearer(&token_with(
                json!({"alg": "ES256"}),
                good.clone(),
                |m| {
                    k.es_other
                        .sign(&SystemRandom::new(), m)
                        .expect("sign")
                        .as_ref()
                        .to_vec()
                },
            ))),
            401,
            "bad_signature",
        ),
        (
            "alg none, empty signature",
            Some(bearer(&alg_none("none", true))),
            401,
            "alg_none",
        ),
        (
            "alg none, two parts",
            Some(bearer(&alg_none("none", false))),
            401,
            "alg_none",
        ),
        (
            "alg None (case)",
            Some(bearer(&alg_none("None", true))),
            401,
            "alg_none",
        ),
        (
            "RS->HS confusion, kid of the RSA key",
            Some(bearer(&token_with(
                json!({"alg": "HS256", "typ": "JWT", "kid": "rsa"}),
                good.clone(),
                |m| hmac256(rsa_pem_secret.as_bytes(), m),
            ))),
            401,
            "key_alg_mismatch",
        ),
        (
            "RS->HS confusion, no kid, PEM as secret",
            Some(bearer(&token_with(hs_header.clone(), good.clone(), |m| {
                hmac256(rsa_pem_secret.as_bytes(), m)
            }))),
            401,
            "bad_signature",
        ),
        (
            "RS->HS confusion, no kid, DER as secret",
            Some(bearer(&token_with(hs_header.clone(), good.clone(), |m| {
                hmac256(&rsa_der_secret, m)
            }))),
            401,
            "bad_signature",
        ),
        (
            "tampered payload",
            Some(bearer(&tampered)),
            401,
            "bad_signature",
        ),
        (
            "oversized token header (5000-byte kid, cap 4096)",
            Some(bearer(&token(
                json!({"alg": "HS256", "kid": "k".repeat(5000)}),
                good.clone(),
            ))),
            401,
            "token_too_large",
        ),
        ("garbage", Some(bearer("garbage")), 401, "token_malformed"),
        (
            "garbage in three parts",
            Some(bearer(&random_parts)),
            401,
            "token_malformed",
        ),
        (
            "two tokens in one header",
            Some("Bearer a.b.c d.e.f".into()),
            401,
            "token_malformed",
        ),
        (
            "too long-lived (2 h, cap 1 h)",
            Some(bearer(&hs(with(
                with(good.clone(), "iat", json!(now)),
                "exp",
                json!(now + 7200),
            )))),
            401,
            "lifetime_too_long",
        ),
        (
            "unknown kid",
            Some(bearer(&token(
                json!({"alg": "HS256", "kid": "rotated-away"}),
                good.clone(),
            ))),
            401,
            "unknown_kid",
        ),
        (
            "no sub (a required claim)",
            Some(bearer(&hs(without(good.clone(), "sub")))),
            401,
            "missing_claim",
        ),
        (
            "issued in the future",
            Some(bearer(&hs(with(good.clone(), "iat", json!(now + 600))))),
            401,
            "issued_in_future",
        ),
        (
            "exp of the wrong type",
            Some(bearer(&hs(with(good.clone(), "exp", json!("tomorrow"))))),
            401,
            "claim_invalid",
        ),
        (
            "crit header",
            Some(bearer(&token(
                json!({"alg": "HS256", "crit": ["exp"]}),
                good.clone(),
            ))),
            401,
            "crit_unsupported",
        ),
        (
            "alg not allowed (HS512 with no key for it)",
            Some(bearer(&token_with(
                json!({"alg": "HS512"}),
                good.clone(),
                |m| {
                    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA512, &k.hs), m)
                        .as_ref()
                        .to_vec()
                },
            ))),
            401,
            "alg_not_allowed",
        ),
    ];

    let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
    for (what, authorization, status, reason) in &cases {
        let req = match authorization {
            Some(a) => ws_request("/", &[("Authorization", a)]),
            None => ws_request("/", &[]),
        };
        let r = attempt(&srv, &req).await.refused(what);
        assert_eq!(
            (r.status, r.reason.as_str()),
            (*status, *reason),
            "{what}: {}{}",
            r.head,
            r.body
        );
        check_refused(&r, *status, reason, &req);
        check_challenge(&r);
        if let Some(a) = authorization {
            let tok = a.split_once(' ').map_or(a.as_str(), |(_, t)| t);
            assert!(
                !r.head.contains(tok) && !r.body.contains(tok),
                "{what}: the refusal echoes the token"
            );
        }
        *counts.entry(reason).or_default() += 1;
    }

    // An Authorization header beyond the request size cap never reaches the token check.
    let huge = ws_request("/", &[("Authorization", &bearer(&"a".repeat(9000)))]);
    expect_refused(&srv, &huge, 431, "headers_too_large").await;
    *counts.entry("headers_too_large").or_default() += 1;

    for (reason, n) in counts {
        expect_refusals_counted(&srv, reason, n).await;
    }
    srv.wait_metric("wssedge_handshakes_total", &[("result", "ok")], 6.0)
        .await;
}

/// The RS→HS confusion against a server configured with the RSA key only: HS256 is not among
/// the algorithms that key allows, whatever secret signed the token; RS256 passes.
#[tokio::test]
async fn rs_to_hs_confusion_with_only_the_rsa_key_configured_is_refused() {
    let files = key_files();
    let cfg = format!(
        "[jwt]\nkeys = [{}]\nissuer = {}\naudience = [{}]\n",
        toml_path(&files.rsa),
        toml_str(ISSUER),
        toml_str(AUDIENCE)
    );
    let srv = Server::with_config(&cfg);
    let c = claims("alice", "confusion");
    let pem_secret = rsa_public_pem();
    for header in [
        json!({"alg": "HS256", "typ": "JWT"}),
        json!({"alg": "HS256", "typ": "JWT", "kid": "rsa"}),
    ] {
        let forged = token_with(header, c.clone(), |m| hmac256(pem_secret.as_bytes(), m));
        let r = expect_refused(
            &srv,
            &with_header_token("/", &forged),
            401,
            "alg_not_allowed",
        )
        .await;
        check_challenge(&r);
    }
    expect_refusals_counted(&srv, "alg_not_allowed", 2).await;
    let real = token(json!({"alg": "RS256", "kid": "rsa"}), c);
    let (_, mut ws) = expect_upgraded(&srv, &with_header_token("/", &real)).await;
    expect_echo(&mut ws, "rs256").await;
}

// ---------------------------------------------------------------------------------------------
// Sources
// ---------------------------------------------------------------------------------------------

/// Header, subprotocol and query tokens each admit; a subprotocol token makes the 101 select
/// the application's protocol (checked by tokio-tungstenite, which refuses a 101 selecting a
/// protocol it did not offer) and never appear in the response.
#[tokio::test]
async fn header_subprotocol_and_query_tokens_admit_and_the_token_is_never_echoed() {
    let files = key_files();
    let srv = Server::with_config(&jwt_config(
        &files,
        &[("sources", r#"["header", "subprotocol", "query"]"#)],
        "",
    ));

    // Header.
    let tok = hs(claims("alice", "src-header"));
    let (head, mut ws) = expect_upgraded(&srv, &with_header_token("/", &tok)).await;
    assert_eq!(header(&head, "sec-websocket-protocol"), None, "{head}");
    expect_echo(&mut ws, "header").await;

    // Subprotocol, raw: the token offered first, two application protocols after it.
    let tok = hs(claims("alice", "src-proto-raw"));
    let offer = format!("bearer.{tok}, app.v2, app.v1");
    let req = ws_request("/", &[("Sec-WebSocket-Protocol", &offer)]);
    let (head, mut ws) = expect_upgraded(&srv, &req).await;
    assert_eq!(
        header(&head, "sec-websocket-protocol"),
        Some("app.v2"),
        "the 101 must select the client's first application protocol:\n{head}"
    );
    assert!(!head.contains(&tok), "the 101 echoes the token:\n{head}");
    assert!(!head.to_ascii_lowercase().contains("bearer."), "{head}");
    expect_echo(&mut ws, "subprotocol").await;

    // Subprotocol, through tokio-tungstenite (an independent client).
    let tok = hs(claims("alice", "src-proto-tungstenite"));
    let mut request = srv.url().into_client_request().expect("request");
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        format!("chat.v1, bearer.{tok}")
            .parse()
            .expect("header value"),
    );
    let (mut client, response) = within(
        WAIT,
        "tungstenite upgrade with a subprotocol token",
        tokio_tungstenite::client_async_with_config(
            request,
            srv.tls().await,
            Some(unlimited_ws_config()),
        ),
    )
    .await
    .expect("tungstenite accepts the 101");
    assert_eq!(response.status().as_u16(), 101);
    let selected = response
        .headers()
        .get("sec-websocket-protocol")
        .map(|v| v.to_str().expect("ASCII").to_owned());
    assert_eq!(selected.as_deref(), Some("chat.v1"));
    for (name, value) in response.headers() {
        assert!(
            !value
                .as_bytes()
                .windows(tok.len())
                .any(|w| w == tok.as_bytes()),
            "response header {name} carries the token"
        );
    }
    within(WAIT, "send", client.send(Message::text("via tungstenite")))
        .await
        .expect("send");
    let echoed = loop {
        match within(WAIT, "echo", client.next()).await {
            Some(Ok(Message::Text(t))) => break t.as_str().to_owned(),
            Some(Ok(_)) => continue,
            other => panic!("no echo: {other:?}"),
        }
    };
    assert_eq!(echoed, "via tungstenite");

    // A token offer without an application protocol is a bad request.
    let tok = hs(claims("alice", "src-proto-alone"));
    let r = expect_refused(
        &srv,
        &ws_request("/", &[("Sec-WebSocket-Protocol", &format!("bearer.{tok}"))]),
        400,
        "bearer_without_app_protocol",
    )
    .await;
    assert!(!r.head.contains(&tok) && !r.body.contains(&tok));
    check_challenge(&r);

    // Query, percent-encoding allowed; other parameters stay.
    let tok = hs(claims("alice", "src-query"));
    let (head, mut ws) = expect_upgraded(
        &srv,
        &ws_request(&format!("/feed?x=1&access_token={tok}"), &[]),
    )
    .await;
    assert!(!head.contains(&tok), "{head}");
    expect_echo(&mut ws, "query").await;

    // Two sources at once: refused, whichever token is good.
    let a = hs(claims("alice", "src-two-a"));
    let b = hs(claims("alice", "src-two-b"));
    let req = ws_request(
        &format!("/?access_token={b}"),
        &[("Authorization", &bearer(&a))],
    );
    let r = expect_refused(&srv, &req, 400, "token_ambiguous").await;
    check_challenge(&r);
    expect_refusals_counted(&srv, "bearer_without_app_protocol", 1).await;
    expect_refusals_counted(&srv, "token_ambiguous", 1).await;
}

/// Sources that are not enabled are not looked at: with the default `sources = ["header"]`, a
/// token in a subprotocol or in the query is no token.
#[tokio::test]
async fn disabled_sources_are_not_looked_at() {
    let files = key_files();
    let srv = Server::with_config(&jwt_config(&files, &[], ""));
    let tok = hs(claims("alice", "disabled"));
    let offer = format!("app.v1, bearer.{tok}");
    let r = expect_refused(
        &srv,
        &ws_request("/", &[("Sec-WebSocket-Protocol", &offer)]),
        401,
        "token_missing",
    )
    .await;
    check_challenge(&r);
    expect_refused(
        &srv,
        &ws_request(&format!("/?access_token={tok}"), &[]),
        401,
        "token_missing",
    )
    .await;
    expect_refusals_counted(&srv, "token_missing", 2).await;
    expect_upgraded(&srv, &with_header_token("/", &tok)).await;
}

// ---------------------------------------------------------------------------------------------
// Scopes
// ---------------------------------------------------------------------------------------------

/// A path under a scope rule needs its scope (403 `scope_missing` with the insufficient_scope
/// challenge); prefixes match whole segments; the longest rule wins; other paths need none.
#[tokio::test]
async fn scope_rules_gate_paths_with_403() {
    let files = key_files();
    let tail = "[[jwt.scopes]]\npath_prefix = \"/trade\"\nscope = \"trade\"\n\
                [[jwt.scopes]]\npath_prefix = \"/trade/admin\"\nscope = \"admin\"\n";
    let srv = Server::with_config(&jwt_config(&files, &[], tail));
    let reader = hs(with(claims("rita", "scope-read"), "scope", json!("read")));
    let trader = hs(with(
        claims("tom", "scope-trade"),
        "scope",
        json!("read trade"),
    ));
    let trader_array = hs(with(
        claims("tim", "scope-array"),
        "scope",
        json!(["trade"]),
    ));
    let admin = hs(with(claims("ada", "scope-admin"), "scope", json!("admin")));

    let refused = [
        (&reader, "/trade"),
        (&reader, "/trade/orders?x=1"),
        (&trader, "/trade/admin"),
        (&trader, "/trade/admin/users"),
    ];
    for (tok, path) in refused {
        let r = expect_refused(&srv, &with_header_token(path, tok), 403, "scope_missing").await;
        check_challenge(&r);
    }
    for (tok, path) in [
        (&reader, "/"),
        (&reader, "/tradex"),
        (&reader, "/quotes"),
        (&trader, "/trade"),
        (&trader, "/trade/orders"),
        (&trader_array, "/trade"),
        (&admin, "/trade/admin"),
    ] {
        expect_upgraded(&srv, &with_header_token(path, tok)).await;
    }
    expect_refusals_counted(&srv, "scope_missing", refused.len() as u64).await;
}

// ---------------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------------

/// With `single_use` on two cores, each jti is accepted once and then refused 401 `replayed`,
/// whichever core the connections land on: jtis owned by each core are used, so whatever core
/// accepts a connection, some checks are local and some are one message to the other core.
/// Two simultaneous uses of a fresh jti: exactly one upgrades.
#[tokio::test]
async fn single_use_jtis_are_refused_when_replayed_across_two_cores() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        visible_line("single_use_jtis_are_refused_when_replayed_across_two_cores: SKIPPED, fewer than 2 CPUs");
        return;
    }
    let files = key_files();
    let srv = ServerBuilder::new()
        .cores(2)
        .config(&jwt_config(&files, &[("single_use", "true")], ""))
        .start();

    let mut by_owner: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for i in 0..1000 {
        let jti = format!("replay-{}-{i}", std::process::id());
        // The server's own sharding function, to pick jtis owned by each core.
        let owner = wssedge::auth::owner_core(&jti, 2);
        if by_owner[owner].len() < 4 {
            by_owner[owner].push(jti);
        }
        if by_owner.iter().all(|v| v.len() == 4) {
            break;
        }
    }
    // A single-use token needs a jti.
    let no_jti = hs(without(claims("alice", "unused"), "jti"));
    expect_refused(&srv, &with_header_token("/", &no_jti), 401, "jti_required").await;
    expect_refusals_counted(&srv, "jti_required", 1).await;

    let mut sessions = Vec::new();
    let mut replays = 0u64;
    for jti in by_owner.iter().flatten() {
        let tok = hs(claims("alice", jti));
        let req = with_header_token("/", &tok);
        let (_, mut ws) = expect_upgraded(&srv, &req).await;
        expect_echo(&mut ws, jti).await;
        sessions.push(ws);
        for _ in 0..2 {
            expect_refused(&srv, &req, 401, "replayed").await;
            replays += 1;
        }
    }

    // Simultaneous first uses.
    for i in 0..4 {
        let tok = hs(claims("alice", &unique_jti(&format!("race{i}"))));
        let req = with_header_token("/", &tok);
        let (a, b) = tokio::join!(attempt(&srv, &req), attempt(&srv, &req));
        let mut upgraded = 0;
        for o in [a, b] {
            match o {
                Outcome::Upgraded { .. } => upgraded += 1,
                Outcome::Refused(r) => {
                    check_refused(&r, 401, "replayed", &req);
                    replays += 1;
                }
            }
        }
        assert_eq!(
            upgraded, 1,
            "two simultaneous uses of one jti: exactly one may upgrade"
        );
    }
    expect_refusals_counted(&srv, "replayed", replays).await;
    // The live sessions were not disturbed by the replays.
    for ws in &mut sessions {
        expect_echo(ws, "still here").await;
    }
}

/// RFC 7235 §3.1: a 401 carries a `WWW-Authenticate` challenge, and every other 401 of the
/// edge does (`Bearer error="invalid_token"` for an unusable token). A replayed jti is one.
#[tokio::test]
async fn a_replayed_jti_401_carries_the_bearer_challenge() {
    let files = key_files();
    let srv = Server::with_config(&jwt_config(&files, &[("single_use", "true")], ""));
    let req = with_header_token("/", &hs(claims("alice", "challenge")));
    expect_upgraded(&srv, &req).await;
    let r = expect_refused(&srv, &req, 401, "replayed").await;
    check_challenge(&r);
}

/// The replay store is capped: once it holds `max_tracked_jti` unexpired ids, a new one gets
/// 503 `replay_store_full` with `Retry-After`; the tracked one is still refused as replayed
/// (never evicted).
#[tokio::test]
async fn a_full_replay_store_answers_503_with_retry_after() {
    let files = key_files();
    let srv = Server::with_config(&jwt_config(
        &files,
        &[("single_use", "true"), ("max_tracked_jti", "1")],
        "",
    ));
    let first = hs(claims("alice", "full-1"));
    expect_upgraded(&srv, &with_header_token("/", &first)).await;
    let second = hs(claims("alice", "full-2"));
    let r = expect_refused(
        &srv,
        &with_header_token("/", &second),
        503,
        "replay_store_full",
    )
    .await;
    assert_eq!(header(&r.head, "retry-after"), Some("1"), "{}", r.head);
    expect_refused(&srv, &with_header_token("/", &first), 401, "replayed").await;
    expect_refusals_counted(&srv, "replay_store_full", 1).await;
    expect_refusals_counted(&srv, "replayed", 1).await;
}

/// `[limits] per_identity_connections`: one subject's third session over two cores gets 429
/// with `Retry-After`, another subject is not affected, and closing a session gives the slot
/// back.
#[tokio::test]
async fn an_identity_over_its_connection_limit_gets_429_with_retry_after() {
    let files = key_files();
    let srv = ServerBuilder::new()
        .config(&jwt_config(
            &files,
            &[],
            "[limits]\nper_identity_connections = 2\n",
        ))
        .cores(2)
        .start();
    let alice = hs(claims("alice", "limit-a"));
    let (_, first) = expect_upgraded(&srv, &with_header_token("/", &alice)).await;
    let (_, _second) = expect_upgraded(&srv, &with_header_token("/", &alice)).await;
    let r = expect_refused(
        &srv,
        &with_header_token("/", &alice),
        429,
        "identity_connection_limit",
    )
    .await;
    assert_eq!(header(&r.head, "retry-after"), Some("1"), "{}", r.head);
    let bob = hs(claims("bob", "limit-b"));
    expect_upgraded(&srv, &with_header_token("/", &bob)).await;
    expect_refusals_counted(&srv, "identity_connection_limit", 1).await;
    // The slot comes back when the server has closed the first session.
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match attempt(&srv, &with_header_token("/", &alice)).await {
            Outcome::Upgraded { .. } => break,
            Outcome::Refused(r) => {
                assert_eq!(r.status, 429, "{}", r.head);
                assert!(
                    Instant::now() < deadline,
                    "the closed session's slot never came back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Expiry mid-session
// ---------------------------------------------------------------------------------------------

/// With `expiry = "close"` (the default) and `leeway_s = 0`, a session whose token expires
/// while it is open is closed with 1008 "token_expired" at `exp`, not before and not much
/// after; with `expiry = "ignore"` the token only gates the upgrade.
#[tokio::test]
async fn a_token_expiring_mid_session_closes_it_with_1008() {
    let files = key_files();
    let srv = Server::with_config(&jwt_config(&files, &[("leeway_s", "0")], ""));
    let exp = unix_now() + 3;
    let tok = hs(with(claims("alice", "expiring"), "exp", json!(exp)));
    let (_, mut ws) = expect_upgraded(&srv, &with_header_token("/", &tok)).await;
    expect_echo(&mut ws, "before expiry").await;
    let close = ws.rd.expect_close_frame().await;
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    assert_eq!(
        (close.close_code(), close.close_reason().as_str()),
        (Some(1008), "token_expired")
    );
    let exp_d = Duration::from_secs(exp);
    // Whole seconds on the server's side: allow one second early, 1.5 s late.
    assert!(
        at + Duration::from_secs(1) >= exp_d,
        "closed {:?} before exp",
        exp_d.saturating_sub(at)
    );
    assert!(
        at <= exp_d + Duration::from_millis(1500),
        "closed {:?} after exp",
        at.saturating_sub(exp_d)
    );
    visible_line(&format!(
        "token expiry close: {:+.3} s relative to exp",
        at.as_secs_f64() - exp as f64
    ));
    expect_closed_1008(&srv, "token_expired", 1.0).await;
    // The same token is now refused at the upgrade.
    expect_refused(&srv, &with_header_token("/", &tok), 401, "expired").await;
}

#[tokio::test]
async fn with_expiry_ignore_the_token_only_gates_the_upgrade() {
    let files = key_files();
    let srv = Server::with_config(&jwt_config(
        &files,
        &[("leeway_s", "0"), ("expiry", "\"ignore\"")],
        "",
    ));
    let exp = unix_now() + 2;
    let tok = hs(with(claims("alice", "ignored-expiry"), "exp", json!(exp)));
    let (_, mut ws) = expect_upgraded(&srv, &with_header_token("/", &tok)).await;
    let t0 = Instant::now();
    // Bounded: until one and a half seconds past exp.
    while unix_now() <= exp + 1 && t0.elapsed() < WAIT {
        expect_echo(&mut ws, "still open").await;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    expect_echo(&mut ws, "after exp").await;
    assert_eq!(
        srv.metric("wssedge_refusals_total", &[("reason", "token_expired")])
            .await,
        0.0
    );
}
