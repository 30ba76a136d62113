//! JWS algorithms (RFC 7518 §3) and the one key family each may be verified with.
//!
//! Algorithm confusion is impossible by construction: a key is loaded as exactly one
//! [`KeyFamily`], and an algorithm is only ever paired with keys of its own family. The HMAC
//! family has exactly one member, the `hs_secret_file`; no public key is ever bytes to an HMAC.

/// A supported JWS `alg`. `none` is deliberately not a variant: it cannot be allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

/// What a key is. Each configured key has exactly one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFamily {
    /// The shared secret of `hs_secret_file`.
    Hmac,
    /// An RSA public key, 2048–8192 bits.
    Rsa,
    /// An ECDSA public key on P-256.
    EcP256,
    /// An ECDSA public key on P-384.
    EcP384,
    /// An Ed25519 public key.
    Ed25519,
}

impl KeyFamily {
    pub fn name(self) -> &'static str {
        match self {
            KeyFamily::Hmac => "HMAC secret",
            KeyFamily::Rsa => "RSA",
            KeyFamily::EcP256 => "EC P-256",
            KeyFamily::EcP384 => "EC P-384",
            KeyFamily::Ed25519 => "Ed25519",
        }
    }

    /// The algorithms a key of this family allows when `algorithms` is not configured: the
    /// ones the issue names (RS256 and PS256 for RSA). Others must be listed explicitly.
    pub fn default_algs(self) -> &'static [Alg] {
        match self {
            KeyFamily::Hmac => &[Alg::Hs256, Alg::Hs384, Alg::Hs512],
            KeyFamily::Rsa => &[Alg::Rs256, Alg::Ps256],
            KeyFamily::EcP256 => &[Alg::Es256],
            KeyFamily::EcP384 => &[Alg::Es384],
            KeyFamily::Ed25519 => &[Alg::EdDsa],
        }
    }
}

impl Alg {
    pub const ALL: [Alg; 12] = [
        Alg::Hs256,
        Alg::Hs384,
        Alg::Hs512,
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

    /// The `alg` header value, case-sensitive as RFC 7515 §4.1.1 requires. `Ed25519` is the
    /// fully-specified name of RFC 9864 for what `EdDSA` means here.
    pub fn from_name(name: &str) -> Option<Alg> {
        Some(match name {
            "HS256" => Alg::Hs256,
            "HS384" => Alg::Hs384,
            "HS512" => Alg::Hs512,
            "RS256" => Alg::Rs256,
            "RS384" => Alg::Rs384,
            "RS512" => Alg::Rs512,
            "PS256" => Alg::Ps256,
            "PS384" => Alg::Ps384,
            "PS512" => Alg::Ps512,
            "ES256" => Alg::Es256,
            "ES384" => Alg::Es384,
            "EdDSA" | "Ed25519" => Alg::EdDsa,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// The only family whose keys may verify this algorithm.
    pub fn family(self) -> KeyFamily {
        match self {
            Alg::Hs256 | Alg::Hs384 | Alg::Hs512 => KeyFamily::Hmac,
            Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
                KeyFamily::Rsa
            }
            Alg::Es256 => KeyFamily::EcP256,
            Alg::Es384 => KeyFamily::EcP384,
            Alg::EdDsa => KeyFamily::Ed25519,
        }
    }

    /// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
    pub fn min_hmac_secret_bytes(self) -> usize {
        match self {
            Alg::Hs384 => 48,
            Alg::Hs512 => 64,
            _ => 32,
        }
    }

    /// The same algorithm in jsonwebtoken, which verifies the signature.
    pub fn jws(self) -> jsonwebtoken::Algorithm {
        use jsonwebtoken::Algorithm as J;
        match self {
            Alg::Hs256 => J::HS256,
            Alg::Hs384 => J::HS384,
            Alg::Hs512 => J::HS512,
            Alg::Rs256 => J::RS256,
            Alg::Rs384 => J::RS384,
            Alg::Rs512 => J::RS512,
            Alg::Ps256 => J::PS256,
            Alg::Ps384 => J::PS384,
            Alg::Ps512 => J::PS512,
            Alg::Es256 => J::ES256,
            Alg::Es384 => J::ES384,
            Alg::EdDsa => J::EdDSA,
        }
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Is `name` some spelling of `none`? Checked before the allowed set so that the refusal is
/// named for what it is, whatever the case (`None`, `NONE`, `nOnE`).
pub fn is_none(name: &str) -> bool {
    name.eq_ignore_ascii_case("none")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_case_sensitive() {
        for a in Alg::ALL {
            assert_eq!(Alg::from_name(a.name()), Some(a));
            assert_eq!(Alg::from_name(&a.name().to_lowercase()), None, "{a}");
        }
        assert_eq!(Alg::from_name("none"), None);
        assert!(is_none("NoNe"));
    }

    #[test]
    fn every_alg_has_exactly_one_kind_of_verifier() {
        use jsonwebtoken::AlgorithmFamily as J;
        for a in Alg::ALL {
            // The library's family for the algorithm is the one our keys are bound by, so it
            // refuses any key of another family as well.
            let library = match a.family() {
                KeyFamily::Hmac => J::Hmac,
                KeyFamily::Rsa => J::Rsa,
                KeyFamily::EcP256 | KeyFamily::EcP384 => J::Ec,
                KeyFamily::Ed25519 => J::Ed,
            };
            let in_family: Vec<_> = [J::Hmac, J::Rsa, J::Ec, J::Ed]
                .into_iter()
                .filter(|f| f.algorithms().contains(&a.jws()))
                .collect();
            assert_eq!(in_family, vec![library], "{a}");
            assert_eq!(
                a.name().parse::<jsonwebtoken::Algorithm>().ok(),
                Some(a.jws()),
                "{a}"
            );
        }
    }
}
