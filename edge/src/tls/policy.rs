//! The edge's rustls configuration: secure defaults, and PEM loading with errors that say what
//! to fix.
//!
//! Policy: TLS 1.2 and 1.3 only; AEAD suites only (AES-GCM and ChaCha20-Poly1305, with ECDHE in
//! TLS 1.2); ALPN `http/1.1`; no 0-RTT; no half-RTT data (so `WriteTraffic` only appears once the
//! client's Finished is verified, which kTLS conversion needs); no client authentication yet.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::aws_lc_rs::{self, cipher_suite};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, SupportedCipherSuite};

/// The cipher suites the edge offers, in server preference order.
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

/// The edge's server configuration for one certificate chain and its key.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    if chain.is_empty() {
        return Err(TlsConfigError::EmptyChain);
    }
    let builder = ServerConfig::builder_with_provider(Arc::new(crypto_provider()))
        .with_protocol_versions(PROTOCOL_VERSIONS)
        .map_err(TlsConfigError::Rustls)?
        .with_no_client_auth();
    let mut config = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsConfigError::KeyMismatch
        }
        e @ rustls::Error::General(_) => TlsConfigError::UnusableKey(e),
        e => TlsConfigError::Rustls(e),
    })?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    Ok(Arc::new(config))
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
mod tests {
    use super::*;
    use rustls::{CipherSuite, ProtocolVersion};

    fn dev() -> (tempfile::TempDir, crate::devcert::DevCert) {
        let dir = tempfile::tempdir().unwrap();
        let cert = crate::devcert::ensure_dev_cert(&dir.path().join("state")).unwrap();
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
        cert: &crate::devcert::DevCert,
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
