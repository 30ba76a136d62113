//! The bearer token `--hs256-secret-file` mints: an HS256 JWT allowed to publish and read.

use aws_lc_rs::hmac;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

const HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;
/// Lifetime of a minted token: far beyond any run.
pub const LIFETIME_S: u64 = 3600;

/// A token for subject `wssbench` with scopes `publish read`, issued at `now_s` (Unix seconds).
pub fn mint_hs256(key: &[u8], now_s: u64) -> String {
    let claims = format!(
        r#"{{"sub":"wssbench","scope":"publish read","iat":{now_s},"exp":{}}}"#,
        now_s + LIFETIME_S
    );
    sign_hs256(HEADER, &claims, key)
}

/// Tokens one per connection: a fresh `jti` each (single-use servers take each once), the
/// subject one of [`Minter::SUBJECTS`] in turn (identity limits see a few identities).
pub struct Minter {
    key: Vec<u8>,
    run: u64,
    life_s: u64,
    next: std::sync::atomic::AtomicU64,
}

impl Minter {
    pub const SUBJECTS: u64 = 16;

    pub fn new(key: Vec<u8>) -> Self {
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            key,
            run,
            life_s: LIFETIME_S,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Tokens live `life_s` seconds from their minting.
    pub fn with_life(mut self, life_s: u64) -> Self {
        self.life_s = life_s;
        self
    }

    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = format!(
            r#"{{"sub":"wssbench-{}","jti":"{:x}-{n}","scope":"publish read","iat":{now_s},"exp":{}}}"#,
            n % Self::SUBJECTS,
            self.run,
            now_s + self.life_s
        );
        sign_hs256(HEADER, &claims, &self.key)
    }
}

/// The compact JWS of `header` and `claims` (JSON texts) under HMAC-SHA256 with `key`.
pub fn sign_hs256(header: &str, claims: &str, key: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(part: &str) -> String {
        String::from_utf8(URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn rfc4231_case_2() {
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, b"Jefe"),
            b"what do ya want for nothing?",
        );
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn known_jwt() {
        // the HS256 example of RFC 7519's best-known debugger (jwt.io)
        let t = sign_hs256(
            HEADER,
            r#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#,
            b"your-256-bit-secret",
        );
        assert_eq!(
            t,
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
             eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
             SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        );
    }

    #[test]
    fn minted_shape() {
        let key = [7u8; 32];
        let t = mint_hs256(&key, 1_700_000_000);
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(decode(parts[0]), HEADER);
        let claims: serde_json::Value = serde_json::from_str(&decode(parts[1])).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"sub":"wssbench","scope":"publish read","iat":1_700_000_000u64,"exp":1_700_003_600u64})
        );
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA256, &key),
            format!("{}.{}", parts[0], parts[1]).as_bytes(),
        );
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap(), tag.as_ref());
        assert!(!t.contains('='), "base64url without padding");
    }
}
