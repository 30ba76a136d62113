//! Test support, not for production: keys generated once per test binary (with aws-lc-rs's
//! randomness), their PEM texts, and tokens signed with them. Compiled for this crate's tests
//! and, through the `mint` feature, for the edge's (which reads the same keys from files).

use std::path::PathBuf;
use std::sync::OnceLock;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use serde_json::{json, Value};

use super::{Alg, JwtConfig};

/// "Now" in every test: 2023-11-14T22:13:20Z.
pub const NOW: u64 = 1_700_000_000;
pub const ISSUER: &str = "https://issuer.example";
pub const AUDIENCE: &str = "wss-edge";

pub struct Keys {
    pub rsa: RsaKeyPair,
    pub p256: EcdsaKeyPair,
    pub p256_other: EcdsaKeyPair,
    pub p384: EcdsaKeyPair,
    pub ed: Ed25519KeyPair,
    pub hs: Vec<u8>,
}

pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        rsa: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
        p256: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        p256_other: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        p384: EcdsaKeyPair::generate(&signature::ECDSA_P384_SHA384_FIXED_SIGNING).unwrap(),
        ed: Ed25519KeyPair::generate().unwrap(),
        hs: (0u8..64).map(|i| i.wrapping_mul(37) ^ 0x5a).collect(),
    })
}

pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

pub fn rsa_pem() -> String {
    pem(
        "PUBLIC KEY",
        keys().rsa.public_key().as_der().unwrap().as_ref(),
    )
}
pub fn p256_pem(k: &EcdsaKeyPair) -> String {
    pem("PUBLIC KEY", k.public_key().as_der().unwrap().as_ref())
}
pub fn p384_pem() -> String {
    pem(
        "PUBLIC KEY",
        keys().p384.public_key().as_der().unwrap().as_ref(),
    )
}
pub fn ed_pem() -> String {
    pem(
        "PUBLIC KEY",
        keys().ed.public_key().as_der().unwrap().as_ref(),
    )
}

/// Signs `input` as `alg` with the test key of that family.
pub fn sign(alg: Alg, input: &[u8]) -> Vec<u8> {
    let k = keys();
    let rng = SystemRandom::new();
    let rsa = |enc: &'static dyn aws_lc_rs::signature::RsaEncoding| {
        let mut sig = vec![0; k.rsa.public_modulus_len()];
        k.rsa.sign(enc, &rng, input, &mut sig).unwrap();
        sig
    };
    match alg {
        Alg::Hs256 => hmac_sign(hmac::HMAC_SHA256, &k.hs, input),
        Alg::Hs384 => hmac_sign(hmac::HMAC_SHA384, &k.hs, input),
        Alg::Hs512 => hmac_sign(hmac::HMAC_SHA512, &k.hs, input),
        Alg::Rs256 => rsa(&signature::RSA_PKCS1_SHA256),
        Alg::Rs384 => rsa(&signature::RSA_PKCS1_SHA384),
        Alg::Rs512 => rsa(&signature::RSA_PKCS1_SHA512),
        Alg::Ps256 => rsa(&signature::RSA_PSS_SHA256),
        Alg::Ps384 => rsa(&signature::RSA_PSS_SHA384),
        Alg::Ps512 => rsa(&signature::RSA_PSS_SHA512),
        Alg::Es256 => k.p256.sign(&rng, input).unwrap().as_ref().to_vec(),
        Alg::Es384 => k.p384.sign(&rng, input).unwrap().as_ref().to_vec(),
        Alg::EdDsa => k.ed.sign(input).as_ref().to_vec(),
    }
}

pub fn hmac_sign(alg: hmac::Algorithm, secret: &[u8], input: &[u8]) -> Vec<u8> {
    hmac::sign(&hmac::Key::new(alg, secret), input)
        .as_ref()
        .to_vec()
}

/// `b64(header).b64(payload)` from JSON texts, exactly as given.
pub fn signing_input(header: &str, payload: &str) -> String {
    format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()))
}

/// A token signed with the test key for the header's `alg`.
pub fn token(header: Value, claims: Value) -> String {
    let alg = Alg::from_name(header["alg"].as_str().unwrap()).unwrap();
    let input = signing_input(&header.to_string(), &claims.to_string());
    let sig = sign(alg, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// A token signed by an arbitrary signer.
pub fn token_with(header: Value, claims: Value, signer: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = signing_input(&header.to_string(), &claims.to_string());
    let sig = signer(input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// Claims that pass the corpus verifier: issuer, audience, an hour of life, a jti.
pub fn good_claims() -> Value {
    json!({
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "jti": "jti-0001",
        "iat": NOW - 10,
        "exp": NOW + 300,
        "scope": "read trade",
    })
}

pub fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

pub fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().unwrap().remove(key);
    claims
}

/// Where each test key is, as files a `[jwt]` section names: `rsa.pem`, `p256.pem`,
/// `p384.pem`, `ed.pem`, `hs.key`. Whoever writes them (to memory, to a directory) chooses the
/// paths.
pub struct KeyFiles {
    pub rsa: PathBuf,
    pub p256: PathBuf,
    pub p384: PathBuf,
    pub ed: PathBuf,
    pub hs: PathBuf,
}

impl KeyFiles {
    /// Writes every test key with `write(file name, bytes)`, which returns the file's path.
    pub fn write_with(mut write: impl FnMut(&str, &[u8]) -> PathBuf) -> Self {
        let k = keys();
        KeyFiles {
            rsa: write("rsa.pem", rsa_pem().as_bytes()),
            p256: write("p256.pem", p256_pem(&k.p256).as_bytes()),
            p384: write("p384.pem", p384_pem().as_bytes()),
            ed: write("ed.pem", ed_pem().as_bytes()),
            hs: write("hs.key", &k.hs),
        }
    }

    /// Every key, the corpus claim rules.
    pub fn corpus_config(&self) -> JwtConfig {
        JwtConfig {
            keys: vec![
                self.rsa.clone(),
                self.p256.clone(),
                self.p384.clone(),
                self.ed.clone(),
            ],
            hs_secret_file: Some(self.hs.clone()),
            issuer: Some(ISSUER.into()),
            audience: vec![AUDIENCE.into()],
            max_token_lifetime_s: Some(3600),
            single_use: true,
            ..JwtConfig::default()
        }
    }
}
