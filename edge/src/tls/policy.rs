//! The edge's rustls configuration: the policy `[tls]` selects from, and PEM loading with
//! errors that say what to fix.
//!
//! Policy: TLS 1.2 and 1.3 only; AEAD suites only (AES-GCM and ChaCha20-Poly1305, with ECDHE in
//! TLS 1.2) — `[tls] versions`, `cipher_suites` and `groups` can only narrow these; ALPN
//! `http/1.1`; no 0-RTT; no half-RTT data (so `WriteTraffic` only appears once the client's
//! Finished is verified, which kTLS conversion needs).
//!
//! [`build_server_config`] turns [`TlsSettings`] into a `ServerConfig`:
//! - certificates: the default chain plus `[[tls.certs]]` by SNI ([`crate::tls::sni`]);
//! - client certificates: rustls' WebPKI verifier over `client_ca`, with the CRLs of a
//!   [`CrlSet`]. Revocation is checked along the **whole chain** (every intermediate too, not
//!   only the leaf), an **unknown status is refused** (a certificate whose issuer has no CRL in
//!   the set fails once any CRL is configured — so every client CA needs its CRL; start refuses
//!   a client CA without one) and **expired CRLs are enforced** (fail closed);
//! - resumption: fresh state per call. Rebuilding the config (on a CRL change, a reload)
//!   therefore invalidates every earlier ticket and session ID: the next connection of each
//!   client is a full handshake, verified against the current CRLs.
//!
//! What rustls does *not* do: re-verify the certificates of a resumed session. With
//! `client_auth = "required"` resumption is off unless set; when it is on (and with
//! `"optional"`, where it is on by default) the upgrade re-checks the identity instead of
//! turning resumption off: [`crate::tls::identity::ClientIdentity::recheck`] — revocation by
//! the CRLs in force, every certificate's validity, the chain's CRLs' `nextUpdate` — cheap
//! enough to do for every connection, resumed or not.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self, cipher_suite};
use rustls::crypto::{CryptoProvider, SupportedKxGroup};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{ProtocolVersion, ServerConfig, SupportedCipherSuite, SupportedProtocolVersion};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config_error::ConfigError;
use crate::tls::crl::{CrlError, CrlSet};
use crate::tls::settings::{ClientAuth, Resumption, TlsSettings};
use crate::tls::sni::{certified_key, SniResolver};

/// The cipher suites the edge offers (rustls follows the client's order among them).
pub static CIPHER_SUITES: &[SupportedCipherSuite] = &[
    // TLS 1.3
    cipher_suite::TLS13_AES_128_GCM_SHA256,
    cipher_suite::TLS13_AES_256_GCM_SHA384,
    cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    // TLS 1.2: ECDHE + AEAD only
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    cipher_suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// The protocol versions the edge accepts.
pub static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The only application protocol: WebSocket upgrades ride on HTTP/1.1.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why a certificate, key or TLS configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// The file does not exist.
    #[error("{}: file not found; check the path (or generate a development certificate)", .path.display())]
    Missing { path: PathBuf },
    /// The file exists but could not be read.
    #[error("{}: cannot read: {source}; check its permissions", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file holds no `CERTIFICATE` PEM section.
    #[error("{}: no PEM certificate in it; expected one or more '-----BEGIN CERTIFICATE-----' sections, leaf first", .path.display())]
    NoCertificate { path: PathBuf },
    /// The file holds no private key PEM section.
    #[error("{}: no private key in it; expected a '-----BEGIN PRIVATE KEY-----' (PKCS#8), 'RSA PRIVATE KEY' or 'EC PRIVATE KEY' section", .path.display())]
    NoPrivateKey { path: PathBuf },
    /// The file is not valid PEM.
    #[error("{}: malformed PEM ({detail}); re-export the file in PEM format", .path.display())]
    BadPem { path: PathBuf, detail: String },
    /// The certificate chain given to [`server_config`] is empty.
    #[error(
        "the certificate chain is empty; give the leaf certificate first, then its intermediates"
    )]
    EmptyChain,
    /// The private key is not the key of the leaf certificate.
    #[error("the private key doesn't match the certificate (the first certificate in the chain must be the one issued for this key); pair the right key and certificate files")]
    KeyMismatch,
    /// The same, when the files are known.
    #[error("{}: this private key doesn't match the certificate in {} (its first certificate must be the one issued for this key); pair the right files", .key.display(), .cert.display())]
    KeyMismatchFiles { cert: PathBuf, key: PathBuf },
    /// The key could not be used by the crypto provider (unsupported algorithm, bad encoding).
    #[error(
        "the private key cannot be used: {0}; use an ECDSA P-256/P-384, Ed25519 or RSA (2048+) key"
    )]
    UnusableKey(rustls::Error),
    /// The same, when the key file is known.
    #[error("{}: the private key cannot be used: {source}; use an ECDSA P-256/P-384, Ed25519 or RSA (2048+) key", .key.display())]
    UnusableKeyFile { key: PathBuf, source: rustls::Error },
    /// A `[tls]` value is invalid (the same message as at config validation).
    #[error(transparent)]
    Setting(#[from] ConfigError),
    /// A `[[tls.certs]]` certificate is not valid for the name that routes to it.
    #[error("{}: this certificate is not valid for tls.certs sni = {sni:?} (its DNS names: {names:?}); pair the name with a certificate issued for it", .cert.display())]
    SniNameMismatch {
        sni: String,
        cert: PathBuf,
        names: Vec<String>,
    },
    /// `tls.client_ca` holds a certificate the verifier can't use as a trust anchor.
    #[error("{}: cannot use as tls.client_ca: {detail}; it must hold the PEM CA certificates client certificates chain to", .path.display())]
    ClientCa { path: PathBuf, detail: String },
    /// CRLs are configured, but none is from this client CA: with whole-chain checking and
    /// unknown status refused, every certificate it issued would fail.
    #[error("{}: no CRL in tls.crls is issued by the client CA {ca:?}; every client certificate it vouches for would be refused (revocation status unknown) — add that CA's CRL to tls.crls", .path.display())]
    CaWithoutCrl { path: PathBuf, ca: String },
    /// A CRL file could not be loaded.
    #[error(transparent)]
    Crl(#[from] CrlError),
    /// The stateless ticket keys could not be made.
    #[error(
        "cannot create session ticket keys: {0}; set tls.resumption = \"stateful\" or \"off\""
    )]
    Ticketer(rustls::Error),
    /// Anything else rustls refused.
    #[error("invalid TLS configuration: {0}")]
    Rustls(rustls::Error),
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => TlsConfigError::Missing {
            path: path.to_owned(),
        },
        _ => TlsConfigError::Unreadable {
            path: path.to_owned(),
            source,
        },
    })
}

fn bad_pem(path: &Path, err: rustls::pki_types::pem::Error) -> TlsConfigError {
    TlsConfigError::BadPem {
        path: path.to_owned(),
        detail: err.to_string(),
    }
}

/// Loads every certificate of a PEM file, in file order (leaf first, then intermediates).
pub fn load_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, e))?;
    if chain.is_empty() {
        return Err(TlsConfigError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

/// Loads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsConfigError> {
    let pem = read_file(path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsConfigError::NoPrivateKey {
            path: path.to_owned(),
        }),
        Err(e) => Err(bad_pem(path, e)),
    }
}

/// The crypto provider of the policy: aws-lc-rs restricted to [`CIPHER_SUITES`].
pub fn crypto_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::CryptoProvider {
        cipher_suites: CIPHER_SUITES.to_vec(),
        ..aws_lc_rs::default_provider()
    }
}

/// The edge's server configuration for one certificate chain and its key, with the default
/// `[tls]` policy (no SNI entries, no client certificates, ticket resumption).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    build_server_config(&TlsSettings::default(), chain, key, &CrlSet::empty())
}

/// The in-memory session cache of `resumption = "stateful"`, in sessions. An entry is a few
/// hundred bytes, plus the client's certificate chain under mutual TLS.
pub const SESSION_CACHE_SIZE: usize = 4096;

/// The server configuration `settings` describe.
///
/// `default_chain`/`default_key` serve handshakes whose SNI matches no `[[tls.certs]]` entry
/// (`tls.cert`/`tls.key`, `--cert/--key`, or the development certificate); `crls` are the
/// client CAs' CRLs ([`CrlSet::load`] of `settings.crls`). `enable_secret_extraction` is left
/// off: the caller sets it (the server's state does, for the records' hand-off).
///
/// Each call makes fresh resumption state (see the module).
pub fn build_server_config(
    settings: &TlsSettings,
    default_chain: Vec<CertificateDer<'static>>,
    default_key: PrivateKeyDer<'static>,
    crls: &CrlSet,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = Arc::new(crypto_provider_for(settings)?);
    let versions = protocol_versions(&settings.versions)?;
    let default_files = match (&settings.cert, &settings.key) {
        (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
        _ => None,
    };
    let default = certified_key(default_chain, default_key, &provider, default_files)?;
    let resolver = SniResolver::new(default, &settings.certs, &provider)?;
    let verifier = client_verifier(settings, &provider, crls)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions)
        .map_err(TlsConfigError::Rustls)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(resolver));
    apply_resumption(&mut config, settings.resumption())?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    Ok(Arc::new(config))
}

fn apply_resumption(
    config: &mut ServerConfig,
    resumption: Resumption,
) -> Result<(), TlsConfigError> {
    match resumption {
        Resumption::Tickets => {
            // Stateless: nothing stored per session; a new key every 6 hours, tickets valid
            // for 12 (the current and the previous key decrypt). No session-ID cache next to
            // it, so memory stays flat whatever the client count.
            config.ticketer = aws_lc_rs::Ticketer::new().map_err(TlsConfigError::Ticketer)?;
            config.session_storage = Arc::new(NoServerSessionStorage {});
        }
        Resumption::Stateful => {
            // The builder's ticketer never issues stateless tickets; TLS 1.3 tickets are then
            // IDs into this cache.
            config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
        }
        Resumption::Off => {
            config.session_storage = Arc::new(NoServerSessionStorage {});
            // No ticket flight after the handshake at all: nothing a client could resume with.
            config.send_tls13_tickets = 0;
        }
    }
    Ok(())
}

/// The client certificate verifier of `settings.client_auth` (see the module for the
/// revocation policy).
fn client_verifier(
    settings: &TlsSettings,
    provider: &Arc<CryptoProvider>,
    crls: &CrlSet,
) -> Result<Arc<dyn ClientCertVerifier>, TlsConfigError> {
    if settings.client_auth == ClientAuth::Off {
        return Ok(WebPkiClientVerifier::no_client_auth());
    }
    let path = settings.client_ca.as_deref().ok_or_else(|| {
        ConfigError::invalid(
            "tls.client_ca",
            "(missing)",
            format!(
                "client_auth = \"{}\" needs the CA certificates client certificates chain to: \
                 set client_ca to a PEM file",
                settings.client_auth.name()
            ),
        )
    })?;
    let cas = load_cert_chain(path)?;
    let mut roots = rustls::RootCertStore::empty();
    for (i, ca) in cas.into_iter().enumerate() {
        let subject = match X509Certificate::from_der(&ca) {
            Ok((_, cert)) => (cert.subject().as_raw().to_vec(), cert.subject().to_string()),
            Err(e) => {
                return Err(TlsConfigError::ClientCa {
                    path: path.to_owned(),
                    detail: format!("certificate #{i} cannot be parsed: {e}"),
                })
            }
        };
        if !crls.is_empty() && !crls.has_issuer(&subject.0) {
            return Err(TlsConfigError::CaWithoutCrl {
                path: path.to_owned(),
                ca: subject.1,
            });
        }
        roots.add(ca).map_err(|e| TlsConfigError::ClientCa {
            path: path.to_owned(),
            detail: format!("certificate #{i}: {e}"),
        })?;
    }
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .with_crls(crls.ders())
            .enforce_revocation_expiration();
    if settings.client_auth == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| match e {
        // Not expected: CrlSet::load asked webpki already, naming the file.
        rustls::server::VerifierBuilderError::InvalidCrl(e) => {
            TlsConfigError::Rustls(rustls::Error::InvalidCertRevocationList(e))
        }
        e => TlsConfigError::ClientCa {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    })
}

// ---------------------------------------------------------------------------------------------
// Names in `[tls]`

fn suite_name(suite: SupportedCipherSuite) -> &'static str {
    suite.suite().as_str().unwrap_or("unknown")
}

/// The IANA name: TLS 1.3 suites are `TLS_AES_…` there, `TLS13_AES_…` in rustls.
fn suite_iana_name(suite: SupportedCipherSuite) -> String {
    let name = suite_name(suite);
    match name.strip_prefix("TLS13_") {
        Some(rest) => format!("TLS_{rest}"),
        None => name.to_owned(),
    }
}

fn group_name(group: &dyn SupportedKxGroup) -> &'static str {
    group.name().as_str().unwrap_or("unknown")
}

/// `cipher_suites` by default: all of [`CIPHER_SUITES`], rustls names.
pub fn default_cipher_suite_names() -> Vec<String> {
    CIPHER_SUITES
        .iter()
        .map(|s| suite_name(*s).to_owned())
        .collect()
}

/// `groups` by default: aws-lc-rs' defaults (X25519, P-256, P-384, X25519MLKEM768).
pub fn default_group_names() -> Vec<String> {
    aws_lc_rs::DEFAULT_KX_GROUPS
        .iter()
        .map(|g| group_name(*g).to_owned())
        .collect()
}

fn check_list(key: &'static str, names: &[String]) -> Result<(), ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::invalid(key, "[]", "list at least one"));
    }
    Ok(())
}

fn twice(key: &'static str, name: &str) -> ConfigError {
    ConfigError::invalid(key, format!("{name:?}"), "listed twice")
}

/// `versions`: "1.2" and/or "1.3" ("TLSv1.3" and "TLS1.3" are accepted too).
pub fn protocol_versions(
    names: &[String],
) -> Result<Vec<&'static SupportedProtocolVersion>, ConfigError> {
    check_list("tls.versions", names)?;
    let mut out: Vec<&'static SupportedProtocolVersion> = Vec::new();
    for name in names {
        let lower = name.trim().to_ascii_lowercase();
        let bare = lower
            .strip_prefix("tlsv")
            .or_else(|| lower.strip_prefix("tls"))
            .unwrap_or(&lower);
        let v = match bare {
            "1.2" => &rustls::version::TLS12,
            "1.3" => &rustls::version::TLS13,
            "1.0" | "1.1" | "1" => {
                return Err(ConfigError::invalid(
                    "tls.versions",
                    format!("{name:?}"),
                    "TLS 1.0 and 1.1 are not supported (deprecated by RFC 8996); use \"1.2\" and/or \"1.3\"",
                ))
            }
            _ => {
                return Err(ConfigError::invalid(
                    "tls.versions",
                    format!("{name:?}"),
                    "unknown TLS version; use \"1.2\" and/or \"1.3\"",
                ))
            }
        };
        if out.iter().any(|o| o.version == v.version) {
            return Err(twice("tls.versions", name));
        }
        out.push(v);
    }
    Ok(out)
}

/// `cipher_suites`: names from [`CIPHER_SUITES`] (rustls or IANA spelling, any case), in
/// preference order. Anything else — CBC, RSA key exchange, NULL, unknown — is refused.
pub fn cipher_suites(names: &[String]) -> Result<Vec<SupportedCipherSuite>, ConfigError> {
    check_list("tls.cipher_suites", names)?;
    let mut out: Vec<SupportedCipherSuite> = Vec::new();
    for name in names {
        let n = name.trim();
        let suite = CIPHER_SUITES
            .iter()
            .find(|s| {
                suite_name(**s).eq_ignore_ascii_case(n)
                    || suite_iana_name(**s).eq_ignore_ascii_case(n)
            })
            .copied()
            .ok_or_else(|| {
                ConfigError::invalid(
                    "tls.cipher_suites",
                    format!("{name:?}"),
                    format!(
                        "not one of the edge's AEAD suites (only ECDHE/TLS 1.3 with AES-GCM or \
                         ChaCha20-Poly1305 are offered); choose from {}",
                        default_cipher_suite_names().join(", ")
                    ),
                )
            })?;
        if out.iter().any(|o| o.suite() == suite.suite()) {
            return Err(twice("tls.cipher_suites", name));
        }
        out.push(suite);
    }
    Ok(out)
}

/// `groups`: key-exchange groups aws-lc-rs offers (any case), in preference order.
pub fn kx_groups(names: &[String]) -> Result<Vec<&'static dyn SupportedKxGroup>, ConfigError> {
    check_list("tls.groups", names)?;
    let mut out: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    for name in names {
        let n = name.trim();
        let group = aws_lc_rs::ALL_KX_GROUPS
            .iter()
            .find(|g| group_name(**g).eq_ignore_ascii_case(n))
            .copied()
            .ok_or_else(|| {
                let known: Vec<&str> = aws_lc_rs::ALL_KX_GROUPS
                    .iter()
                    .map(|g| group_name(*g))
                    .collect();
                ConfigError::invalid(
                    "tls.groups",
                    format!("{name:?}"),
                    format!(
                        "unknown key-exchange group; choose from {}",
                        known.join(", ")
                    ),
                )
            })?;
        if out.iter().any(|o| o.name() == group.name()) {
            return Err(twice("tls.groups", name));
        }
        out.push(group);
    }
    Ok(out)
}

/// aws-lc-rs restricted to the configured suites and groups, after checking they fit the
/// configured versions: a suite for each version, and a group TLS 1.2 can use when it is on.
pub fn crypto_provider_for(settings: &TlsSettings) -> Result<CryptoProvider, ConfigError> {
    let versions = protocol_versions(&settings.versions)?;
    let suites = cipher_suites(&settings.cipher_suites)?;
    let groups = kx_groups(&settings.groups)?;
    for v in &versions {
        let label = if v.version == ProtocolVersion::TLSv1_3 {
            "TLS 1.3"
        } else {
            "TLS 1.2"
        };
        if !suites.iter().any(|s| s.version().version == v.version) {
            return Err(ConfigError::invalid(
                "tls.cipher_suites",
                format!("{:?}", settings.cipher_suites),
                format!(
                    "no suite for {label}, which tls.versions enables; add one (TLS 1.3 suites \
                     start with TLS13_, TLS 1.2 ones with TLS_ECDHE_) or drop the version"
                ),
            ));
        }
        if !groups.iter().any(|g| g.usable_for_version(v.version)) {
            return Err(ConfigError::invalid(
                "tls.groups",
                format!("{:?}", settings.groups),
                format!(
                    "no group usable with {label}, which tls.versions enables (post-quantum \
                     groups are TLS 1.3 only); add X25519 or secp256r1"
                ),
            ));
        }
    }
    Ok(CryptoProvider {
        cipher_suites: suites,
        kx_groups: groups,
        ..aws_lc_rs::default_provider()
    })
}

/// Loads `cert_path` and `key_path` and builds [`server_config`], naming both files when they
/// don't belong together.
pub fn server_config_from_files(
    cert_path: &Path,
    key_path: &Path,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let chain = load_cert_chain(cert_path)?;
    let key = load_private_key(key_path)?;
    server_config(chain, key).map_err(|e| match e {
        TlsConfigError::KeyMismatch => TlsConfigError::KeyMismatchFiles {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        },
        e => e,
    })
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod handshake_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CipherSuite, ProtocolVersion};

    fn dev() -> (tempfile::TempDir, crate::tls::devcert::DevCert) {
        let dir = tempfile::tempdir().unwrap();
        let cert = crate::tls::devcert::ensure_dev_cert(&dir.path().join("state")).unwrap();
        (dir, cert)
    }

    #[test]
    fn offers_exactly_the_aead_suites_and_tls12_13() {
        let (_dir, cert) = dev();
        let config = server_config(cert.chain.clone(), cert.key.clone_key()).unwrap();
        let suites: Vec<CipherSuite> = config
            .crypto_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            suites,
            vec![
                CipherSuite::TLS13_AES_128_GCM_SHA256,
                CipherSuite::TLS13_AES_256_GCM_SHA384,
                CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
                CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]
        );
        // Versions are not readable back from a ServerConfig: prove them by handshakes (the
        // driver's tests prove a TLS 1.1 ClientHello is refused).
        for (version, expect) in [
            (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
            (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
        ] {
            assert_eq!(handshake_version(&cert, config.clone(), version), expect);
        }
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        assert_eq!(config.max_early_data_size, 0);
        assert!(!config.send_half_rtt_data);
    }

    /// A buffered in-memory handshake with a client limited to `version`.
    fn handshake_version(
        cert: &crate::tls::devcert::DevCert,
        config: Arc<ServerConfig>,
        version: &'static rustls::SupportedProtocolVersion,
    ) -> ProtocolVersion {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.chain[1].clone()).unwrap();
        let client_config =
            rustls::ClientConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(client_config), name).unwrap();
        let mut server = rustls::ServerConnection::new(config).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets().unwrap();
            let mut buf = Vec::new();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets().unwrap();
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        server.protocol_version().unwrap()
    }

    #[test]
    fn refuses_a_key_that_does_not_match_the_certificate() {
        let (dir, cert) = dev();
        // dev-ca.key is a valid key, but not the leaf's.
        let wrong = load_private_key(&dir.path().join("state/dev-ca.key")).unwrap();
        let err = server_config(cert.chain.clone(), wrong).unwrap_err();
        assert!(matches!(err, TlsConfigError::KeyMismatch), "{err}");
        let err = server_config_from_files(
            &dir.path().join("state/dev-leaf.pem"),
            &dir.path().join("state/dev-ca.key"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("dev-ca.key")
                && msg.contains("dev-leaf.pem")
                && msg.contains("doesn't match"),
            "{msg}"
        );
        server_config_from_files(
            &dir.path().join("state/dev-leaf.pem"),
            &dir.path().join("state/dev-leaf.key"),
        )
        .expect("the matching pair is accepted");
    }

    #[test]
    fn file_errors_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = load_cert_chain(&missing).unwrap_err();
        assert!(matches!(err, TlsConfigError::Missing { .. }));
        assert!(err.to_string().contains("nope.pem"));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "just some text\n").unwrap();
        let err = load_cert_chain(&empty).unwrap_err();
        assert!(matches!(err, TlsConfigError::NoCertificate { .. }), "{err}");
        assert!(
            err.to_string().contains("empty.pem") && err.to_string().contains("BEGIN CERTIFICATE")
        );
        let err = load_private_key(&empty).unwrap_err();
        assert!(matches!(err, TlsConfigError::NoPrivateKey { .. }), "{err}");
        assert!(err.to_string().contains("empty.pem"));

        let (sdir, _cert) = dev();
        // A certificate file is not a key file.
        let err = load_private_key(&sdir.path().join("state/dev-leaf.pem")).unwrap_err();
        assert!(matches!(err, TlsConfigError::NoPrivateKey { .. }), "{err}");
        assert!(matches!(
            server_config(Vec::new(), _cert.key.clone_key()),
            Err(TlsConfigError::EmptyChain)
        ));
    }
}
