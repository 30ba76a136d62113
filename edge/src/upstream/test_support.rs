//! Test-only PKI for upstream TLS: a CA made with rcgen, a server certificate for a name, a
//! client certificate, and configs built the way production builds them.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::config::UpstreamTls;

pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca: CertificateDer<'static>,
    pub dir: tempfile::TempDir,
}

pub struct Leaf {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap().der().clone();
        Pki {
            issuer: Issuer::new(params, key),
            ca,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn leaf(&self, names: &[&str], cn: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        Leaf {
            cert,
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    pub fn server_leaf(&self, name: &str) -> Leaf {
        self.leaf(&[name], name, ExtendedKeyUsagePurpose::ServerAuth)
    }

    pub fn client_leaf(&self, cn: &str) -> Leaf {
        self.leaf(&[], cn, ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A server config for `name`, with the edge's own policy.
    pub fn server_config(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let leaf = self.server_leaf(name);
        crate::tls::policy::server_config(vec![leaf.cert], leaf.key).unwrap()
    }

    /// A server config for `name` that requires a client certificate from this CA.
    pub fn server_config_mtls(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let leaf = self.server_leaf(name);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let provider = Arc::new(crate::tls::policy::crypto_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(crate::tls::policy::PROTOCOL_VERSIONS)
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![leaf.cert], leaf.key)
            .unwrap();
        Arc::new(config)
    }

    /// `[upstream.tls]` trusting this CA, with `client` as the client certificate; the files
    /// live in this PKI's temporary directory.
    pub fn upstream_tls(&self, client: Option<&Leaf>) -> UpstreamTls {
        let ca = self.dir.path().join("ca.pem");
        std::fs::write(&ca, pem("CERTIFICATE", &self.ca)).unwrap();
        let (cert, key) = match client {
            None => (None, None),
            Some(c) => {
                let cert: PathBuf = self.dir.path().join("client.pem");
                let key: PathBuf = self.dir.path().join("client.key");
                std::fs::write(&cert, pem("CERTIFICATE", &c.cert)).unwrap();
                let PrivateKeyDer::Pkcs8(k) = &c.key else {
                    unreachable!("rcgen makes PKCS#8 keys")
                };
                std::fs::write(&key, pem("PRIVATE KEY", k.secret_pkcs8_der())).unwrap();
                (Some(cert), Some(key))
            }
        };
        UpstreamTls { ca, cert, key }
    }

    /// The production client config over [`Self::upstream_tls`].
    pub fn client_config(&self, client: Option<&Leaf>) -> Arc<rustls::ClientConfig> {
        super::client_config(&self.upstream_tls(client)).unwrap()
    }
}
