//! `[tls]`: every TLS key of the configuration, its defaults, and its validation.
//!
//! What the names mean (suites, groups, versions) is [`crate::tls::policy`]'s business;
//! [`TlsSettings::validate`] asks it, so a bad name is refused once, at load, with the key,
//! the value and what to write instead.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::tls::identity::{IdentityRule, IdentityRules};
use crate::tls::ktls::KtlsMode;
use crate::tls::policy;

/// The `[tls]` section.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM file: the leaf certificate followed by its chain (`--cert`). The default entry:
    /// served when the client's SNI matches no `[[tls.certs]]` or is absent. Without it the
    /// edge serves a development certificate (loopback only).
    pub cert: Option<PathBuf>,
    /// PEM file: the leaf's private key (`--key`).
    pub key: Option<PathBuf>,
    /// Kernel TLS offload after the handshake: "auto", "required" or "off".
    pub ktls: KtlsMode,
    /// Testing only: lowers the records one key may protect under kTLS.
    pub ktls_key_limit_records: Option<u64>,
    /// Protocol versions: "1.2", "1.3".
    #[serde(deserialize_with = "wssedge_proto::config_list::one_or_many")]
    pub versions: Vec<String>,
    /// AEAD cipher suites, IANA or rustls names. rustls follows the client's preference among
    /// them (so clients without AES hardware can pick ChaCha20-Poly1305); the list decides
    /// what is offered, not the order.
    #[serde(deserialize_with = "wssedge_proto::config_list::one_or_many")]
    pub cipher_suites: Vec<String>,
    /// Key-exchange groups, in preference order.
    #[serde(deserialize_with = "wssedge_proto::config_list::one_or_many")]
    pub groups: Vec<String>,
    /// Session resumption. Unset: "tickets", or "off" with `client_auth = "required"`.
    pub resumption: Option<Resumption>,
    /// More certificates, chosen by SNI (`[[tls.certs]]`).
    pub certs: Vec<SniCert>,
    /// Client certificates: "off", "optional" or "required".
    pub client_auth: ClientAuth,
    /// PEM file of the CA certificates client certificates must chain to.
    pub client_ca: Option<PathBuf>,
    /// CRL files (PEM or DER) of the client CAs; re-read when they change.
    #[serde(deserialize_with = "wssedge_proto::config_list::one_or_many")]
    pub crls: Vec<PathBuf>,
    /// Which client identities may open which paths (`[[tls.identity_rules]]`).
    pub identity_rules: Vec<IdentityRule>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert: None,
            key: None,
            ktls: KtlsMode::default(),
            ktls_key_limit_records: None,
            versions: vec!["1.3".into(), "1.2".into()],
            cipher_suites: policy::default_cipher_suite_names(),
            groups: policy::default_group_names(),
            resumption: None,
            certs: Vec::new(),
            client_auth: ClientAuth::Off,
            client_ca: None,
            crls: Vec::new(),
            identity_rules: Vec::new(),
        }
    }
}

/// How clients may resume a session without a full handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resumption {
    /// Stateless tickets, encrypted under a key that rotates every 6 hours (aws-lc-rs
    /// `Ticketer`; a ticket is valid for 12); nothing is stored per session.
    Tickets,
    /// Session IDs (TLS 1.2) and stateful tickets (TLS 1.3) in a bounded in-memory cache
    /// ([`policy::SESSION_CACHE_SIZE`] sessions, shared by all cores).
    Stateful,
    /// Every connection does a full handshake; no tickets are sent.
    Off,
}

impl Resumption {
    pub fn name(self) -> &'static str {
        match self {
            Resumption::Tickets => "tickets",
            Resumption::Stateful => "stateful",
            Resumption::Off => "off",
        }
    }
}

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No certificate is asked for.
    #[default]
    Off,
    /// A certificate is asked for; without one the handshake succeeds with no identity (the
    /// identity rules then decide per path), with a bad one it fails.
    Optional,
    /// The handshake fails without a valid certificate.
    Required,
}

impl ClientAuth {
    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::Off => "off",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}

/// `[[tls.certs]]`: a certificate served when the client's SNI matches `sni`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    /// An exact host name (`api.example.com`) or a one-label wildcard (`*.example.com`).
    pub sni: String,
    /// PEM file: the leaf certificate followed by its chain.
    pub cert: PathBuf,
    /// PEM file: the leaf's private key.
    pub key: PathBuf,
}

impl TlsSettings {
    /// The resumption in effect: the configured one, else "tickets" — or "off" when client
    /// certificates are required, because rustls restores a resumed session's certificates
    /// without checking them against the current CRLs (see [`crate::tls::crl`]).
    pub fn resumption(&self) -> Resumption {
        match (self.resumption, self.client_auth) {
            (Some(r), _) => r,
            (None, ClientAuth::Required) => Resumption::Off,
            (None, _) => Resumption::Tickets,
        }
    }

    /// The compiled identity rules (validated by [`TlsSettings::validate`]).
    pub fn identity_rules(&self) -> Result<IdentityRules, ConfigError> {
        IdentityRules::new(&self.identity_rules)
    }

    /// One line for the start log: what the handshake policy is.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "versions {}; {} suites; groups {}; resumption {}; {} SNI certificate(s); client_auth {}",
            self.versions.join(","),
            self.cipher_suites.len(),
            self.groups.join(","),
            self.resumption().name(),
            self.certs.len(),
            self.client_auth.name(),
        );
        if self.client_auth != ClientAuth::Off {
            s.push_str(&format!(
                " (CA {}, {} CRL file(s), {} identity rule(s))",
                self.client_ca
                    .as_deref()
                    .map_or_else(|| "(none)".into(), |p| p.display().to_string()),
                self.crls.len(),
                self.identity_rules.len()
            ));
        }
        s
    }

    /// Checks every `[tls]` value, so the rest of the edge can trust them. Files are checked
    /// for existence here and parsed when the server config is built.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "tls.key",
                    "(missing)",
                    "`tls.cert` needs `tls.key` (--key)",
                ))
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "tls.cert",
                    "(missing)",
                    "`tls.key` needs `tls.cert` (--cert)",
                ))
            }
            _ => {}
        }
        for (key, path) in [("tls.cert", &self.cert), ("tls.key", &self.key)] {
            if let Some(p) = path {
                require_file(key, p)?;
            }
        }
        if let Some(n) = self.ktls_key_limit_records {
            if n < 64 {
                return Err(ConfigError::invalid(
                    "tls.ktls_key_limit_records",
                    n,
                    "must be at least 64 (it is a testing knob; leave it unset in production)",
                ));
            }
        }
        // Names, and that they fit together (a suite per version, a group TLS 1.2 can use).
        policy::crypto_provider_for(self)?;
        self.validate_certs()?;
        self.validate_client_auth()?;
        Ok(())
    }

    fn validate_certs(&self) -> Result<(), ConfigError> {
        for (i, c) in self.certs.iter().enumerate() {
            let name = crate::tls::sni::sni_pattern(&c.sni).map_err(|reason| {
                ConfigError::invalid("tls.certs.sni", format!("{:?}", c.sni), reason)
            })?;
            if self.certs[..i]
                .iter()
                .any(|o| o.sni.eq_ignore_ascii_case(&name))
            {
                return Err(ConfigError::invalid(
                    "tls.certs.sni",
                    format!("{:?}", c.sni),
                    "listed twice; each name gets one certificate",
                ));
            }
            require_file("tls.certs.cert", &c.cert)?;
            require_file("tls.certs.key", &c.key)?;
        }
        Ok(())
    }

    fn validate_client_auth(&self) -> Result<(), ConfigError> {
        if self.client_auth == ClientAuth::Off {
            // Each of these without client certificates is a configuration that looks
            // protected and is not: refuse it rather than run it.
            if let Some(ca) = &self.client_ca {
                return Err(ConfigError::invalid(
                    "tls.client_ca",
                    ca.display(),
                    "is set but `tls.client_auth` is \"off\": set client_auth = \"optional\" or \
                     \"required\", or remove client_ca",
                ));
            }
            if let Some(crl) = self.crls.first() {
                return Err(ConfigError::invalid(
                    "tls.crls",
                    crl.display(),
                    "CRLs check client certificates, but `tls.client_auth` is \"off\": set \
                     client_auth = \"optional\" or \"required\", or remove crls",
                ));
            }
            if let Some(rule) = self.identity_rules.first() {
                return Err(ConfigError::invalid(
                    "tls.identity_rules",
                    &rule.path_prefix,
                    "identity rules need client certificates, but `tls.client_auth` is \"off\" \
                     (every covered path would be refused): set client_auth = \"optional\" or \
                     \"required\", or remove the rules",
                ));
            }
            return Ok(());
        }
        let Some(ca) = &self.client_ca else {
            return Err(ConfigError::invalid(
                "tls.client_ca",
                "(missing)",
                format!(
                    "client_auth = \"{}\" needs the CA certificates client certificates chain \
                     to: set client_ca to a PEM file",
                    self.client_auth.name()
                ),
            ));
        };
        require_file("tls.client_ca", ca)?;
        for (i, crl) in self.crls.iter().enumerate() {
            require_file("tls.crls", crl)?;
            if self.crls[..i].contains(crl) {
                return Err(ConfigError::invalid(
                    "tls.crls",
                    crl.display(),
                    "listed twice",
                ));
            }
        }
        self.identity_rules()?;
        Ok(())
    }
}

fn require_file(key: &'static str, path: &std::path::Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            key,
            path.display(),
            "no such file; check the path",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> TlsSettings {
        toml::from_str(toml_text).unwrap()
    }

    fn err(s: &TlsSettings) -> String {
        s.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_both_versions_all_aead_suites_and_validate() {
        let s = TlsSettings::default();
        s.validate().unwrap();
        assert_eq!(s.versions, vec!["1.3", "1.2"]);
        assert_eq!(s.cipher_suites.len(), 9);
        assert_eq!(
            s.groups,
            vec!["X25519", "secp256r1", "secp384r1", "X25519MLKEM768"]
        );
        assert_eq!(s.client_auth, ClientAuth::Off);
        assert_eq!(s.resumption(), Resumption::Tickets);
        assert_eq!(
            s.summary(),
            "versions 1.3,1.2; 9 suites; groups X25519,secp256r1,secp384r1,X25519MLKEM768; \
             resumption tickets; 0 SNI certificate(s); client_auth off"
        );
        // An empty [tls] section is the defaults.
        let parsed = parse("");
        assert_eq!(parsed.versions, s.versions);
        assert_eq!(parsed.cipher_suites, s.cipher_suites);
    }

    #[test]
    fn every_key_parses_and_unknown_keys_are_refused() {
        let s = parse(
            r#"
            cert = "a.pem"
            key = "a.key"
            ktls = "off"
            ktls_key_limit_records = 100
            versions = ["1.3"]
            cipher_suites = ["TLS_AES_256_GCM_SHA384", "TLS13_CHACHA20_POLY1305_SHA256"]
            groups = ["X25519MLKEM768", "X25519"]
            resumption = "stateful"
            client_auth = "required"
            client_ca = "ca.pem"
            crls = ["ca.crl"]
            [[certs]]
            sni = "*.example.com"
            cert = "w.pem"
            key = "w.key"
            [[identity_rules]]
            path_prefix = "/trade"
            allow = ["spiffe://bank.example/trading/*", "cn:ops"]
            "#,
        );
        assert_eq!(s.ktls, KtlsMode::Off);
        assert_eq!(s.resumption(), Resumption::Stateful);
        assert_eq!(s.client_auth, ClientAuth::Required);
        assert_eq!(s.certs[0].sni, "*.example.com");
        assert_eq!(s.identity_rules[0].allow.len(), 2);
        for bad in [
            "versoins = [\"1.3\"]",
            "[[certs]]\nsni = \"a\"\ncert = \"c\"\nkey = \"k\"\nchain = \"x\"",
            "[[identity_rules]]\npath_prefix = \"/\"\nallow = []\ndeny = []",
            "client_auth = \"maybe\"",
            "resumption = \"sometimes\"",
        ] {
            let e = toml::from_str::<TlsSettings>(bad).unwrap_err().to_string();
            assert!(!e.is_empty(), "{bad}");
        }
    }

    #[test]
    fn required_client_auth_turns_default_resumption_off_unless_set() {
        let mut s = TlsSettings {
            client_auth: ClientAuth::Required,
            ..TlsSettings::default()
        };
        assert_eq!(s.resumption(), Resumption::Off);
        s.resumption = Some(Resumption::Tickets);
        assert_eq!(s.resumption(), Resumption::Tickets);
        s.client_auth = ClientAuth::Optional;
        s.resumption = None;
        assert_eq!(s.resumption(), Resumption::Tickets);
    }

    #[test]
    fn bad_names_are_refused_with_the_name() {
        let cases: &[(&str, &str, &str)] = &[
            ("versions", "1.1", "not supported"),
            ("versions", "1.4", "unknown"),
            (
                "cipher_suites",
                "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
                "AEAD",
            ),
            ("cipher_suites", "TLS_RSA_WITH_AES_128_GCM_SHA256", "AEAD"),
            ("cipher_suites", "NOT_A_SUITE", "AEAD"),
            ("groups", "ffdhe2048", "unknown"),
            ("groups", "X448", "unknown"),
        ];
        for (key, name, why) in cases {
            let mut s = TlsSettings::default();
            let list = vec![(*name).to_owned()];
            match *key {
                "versions" => s.versions = list,
                "cipher_suites" => s.cipher_suites = list,
                _ => s.groups = list,
            }
            let e = err(&s);
            assert!(
                e.contains(&format!("tls.{key}")) && e.contains(name) && e.contains(why),
                "{key} {name}: {e}"
            );
        }
        let s = TlsSettings {
            versions: vec![],
            ..TlsSettings::default()
        };
        assert!(err(&s).contains("at least one"));
        let s = TlsSettings {
            cipher_suites: vec![
                "TLS13_AES_128_GCM_SHA256".into(),
                "tls_aes_128_gcm_sha256".into(),
            ],
            ..TlsSettings::default()
        };
        assert!(err(&s).contains("listed twice"));
    }

    #[test]
    fn versions_suites_and_groups_must_fit_together() {
        let mut s = TlsSettings {
            versions: vec!["1.2".into()],
            cipher_suites: vec!["TLS13_AES_128_GCM_SHA256".into()],
            ..TlsSettings::default()
        };
        let e = err(&s);
        assert!(
            e.contains("tls.cipher_suites") && e.contains("TLS 1.2"),
            "{e}"
        );
        s.cipher_suites = vec!["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256".into()];
        s.groups = vec!["X25519MLKEM768".into()];
        let e = err(&s);
        assert!(e.contains("tls.groups") && e.contains("TLS 1.2"), "{e}");
        s.groups = vec!["X25519MLKEM768".into(), "secp256r1".into()];
        s.validate().unwrap();
    }

    #[test]
    fn client_auth_needs_a_ca_and_off_refuses_mtls_keys() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        let mut s = TlsSettings {
            client_auth: ClientAuth::Required,
            ..TlsSettings::default()
        };
        let e = err(&s);
        assert!(e.contains("tls.client_ca") && e.contains("PEM file"), "{e}");
        s.client_ca = Some(dir.path().join("nope.pem"));
        assert!(err(&s).contains("nope.pem"));
        s.client_ca = Some(ca.clone());
        s.validate().unwrap();
        s.crls = vec![dir.path().join("missing.crl")];
        let e = err(&s);
        assert!(e.contains("tls.crls") && e.contains("missing.crl"), "{e}");
        s.crls = vec![ca.clone()];
        s.identity_rules = vec![IdentityRule {
            path_prefix: "/a".into(),
            allow: vec!["nonsense".into()],
        }];
        assert!(err(&s).contains("tls.identity_rules.allow"));
        s.identity_rules.clear();
        s.validate().unwrap();

        let mut off = TlsSettings {
            client_ca: Some(ca.clone()),
            ..TlsSettings::default()
        };
        assert!(err(&off).contains("client_auth"));
        off.client_ca = None;
        off.crls = vec![ca.clone()];
        assert!(err(&off).contains("tls.crls"));
        off.crls.clear();
        off.identity_rules = vec![IdentityRule {
            path_prefix: "/a".into(),
            allow: vec!["any".into()],
        }];
        assert!(err(&off).contains("tls.identity_rules"));
    }

    #[test]
    fn sni_entries_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f.pem");
        std::fs::write(&f, "x").unwrap();
        let entry = |sni: &str| SniCert {
            sni: sni.into(),
            cert: f.clone(),
            key: f.clone(),
        };
        for (sni, why) in [
            ("*.com", "two labels"),
            ("a.*.example.com", "first label"),
            ("*example.com", "first label"),
            ("127.0.0.1", "IP"),
            ("bad name!", "host name"),
            ("", "host name"),
        ] {
            let s = TlsSettings {
                certs: vec![entry(sni)],
                ..TlsSettings::default()
            };
            let e = err(&s);
            assert!(e.contains("tls.certs.sni") && e.contains(why), "{sni}: {e}");
        }
        let s = TlsSettings {
            certs: vec![entry("API.example.com"), entry("api.example.com")],
            ..TlsSettings::default()
        };
        assert!(err(&s).contains("listed twice"));
        let s = TlsSettings {
            certs: vec![SniCert {
                sni: "a.example.com".into(),
                cert: dir.path().join("missing.pem"),
                key: f.clone(),
            }],
            ..TlsSettings::default()
        };
        let e = err(&s);
        assert!(
            e.contains("tls.certs.cert") && e.contains("missing.pem"),
            "{e}"
        );
        let s = TlsSettings {
            certs: vec![entry("*.example.com"), entry("example.com")],
            ..TlsSettings::default()
        };
        s.validate().unwrap();
    }

    #[test]
    fn cert_and_key_go_together() {
        let s = TlsSettings {
            cert: Some("/nonexistent/cert.pem".into()),
            ..TlsSettings::default()
        };
        assert!(err(&s).contains("tls.key"));
        let s = TlsSettings {
            cert: Some("/nonexistent/cert.pem".into()),
            key: Some("/nonexistent/key.pem".into()),
            ..TlsSettings::default()
        };
        assert!(err(&s).contains("/nonexistent/cert.pem"));
        let s = TlsSettings {
            ktls_key_limit_records: Some(3),
            ..TlsSettings::default()
        };
        assert!(err(&s).contains("at least 64"));
    }
}
