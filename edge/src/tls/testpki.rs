//! Test-only PKI: a CA (and intermediates) made with rcgen, server and client leaves, CRLs,
//! server configs over them (with or without required client certificates), and an in-memory
//! handshake between a rustls client and server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationList,
    CertificateRevocationListParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A certificate chain (leaf first, without the root) and its key.
pub struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    /// Writes `NAME.pem` (the chain) and `NAME.key`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, pem_certs(&self.chain)).unwrap();
        let key_pem = match &self.key {
            PrivateKeyDer::Pkcs8(k) => pem("PRIVATE KEY", k.secret_pkcs8_der()),
            _ => unreachable!("rcgen makes PKCS#8 keys"),
        };
        std::fs::write(&key, key_pem).unwrap();
        (cert, key)
    }
}

/// What a client certificate says.
pub struct ClientSpec {
    pub cn: Option<&'static str>,
    pub dns: &'static [&'static str],
    pub uris: &'static [&'static str],
    pub serial: u64,
}

impl Default for ClientSpec {
    fn default() -> Self {
        ClientSpec {
            cn: Some("test client"),
            dns: &[],
            uris: &[],
            serial: 1,
        }
    }
}

/// A CA (root or intermediate) that issues leaves and CRLs.
pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// Intermediates between this CA and the root, this CA first (empty for a root).
    above: Vec<CertificateDer<'static>>,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "wssedge tests");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl TestPki {
    pub fn new() -> TestPki {
        TestPki::new_named("wssedge test CA")
    }

    pub fn new_named(name: &str) -> TestPki {
        let params = ca_params(name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap().der().clone();
        TestPki {
            issuer: Issuer::new(params, key),
            cert,
            above: Vec::new(),
        }
    }

    /// An intermediate CA with `serial`, issued by this one.
    pub fn intermediate(&self, serial: u64) -> TestPki {
        let mut params = ca_params(&format!("intermediate {serial}"));
        params.serial_number = Some(SerialNumber::from(serial));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        let mut above = vec![cert.clone()];
        above.extend(self.above.iter().cloned());
        TestPki {
            issuer: Issuer::new(params, key),
            cert,
            above,
        }
    }

    /// The root of the chain (this CA when it is a root).
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.cert.clone()
    }

    /// Writes the CA certificate to `DIR/NAME` and returns the path.
    pub fn write_ca(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, pem_certs(std::slice::from_ref(&self.cert))).unwrap();
        path
    }

    fn leaf(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap().der().clone();
        let mut chain = vec![cert];
        chain.extend(self.above.iter().cloned());
        Leaf {
            chain,
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// A server certificate for `names` (DNS SANs; `*.` wildcards allowed).
    pub fn server(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.leaf(params)
    }

    pub fn client(&self, spec: ClientSpec) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        if let Some(cn) = spec.cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wssedge test clients");
        for d in spec.dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*d).try_into().unwrap()));
        }
        for u in spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().unwrap()));
        }
        params.serial_number = Some(SerialNumber::from(spec.serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.leaf(params)
    }

    /// A server config for `name` (a [`Self::server`] leaf) with the edge's own policy.
    pub fn server_config(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let leaf = self.server(&[name]);
        crate::tls::policy::server_config(leaf.chain, leaf.key).unwrap()
    }

    /// A server config for `name` that requires a client certificate issued by this CA.
    pub fn server_config_mtls(&self, name: &str) -> Arc<rustls::ServerConfig> {
        let leaf = self.server(&[name]);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.clone()).unwrap();
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
            .with_single_cert(leaf.chain, leaf.key)
            .unwrap();
        Arc::new(config)
    }

    /// A CRL of this CA revoking `serials`; `expired`: its nextUpdate was yesterday.
    pub fn crl(&self, serials: &[u64], expired: bool) -> CertificateRevocationList {
        // rcgen's time type is not re-exported; a closure infers it.
        let since_epoch = |t: SystemTime| {
            rcgen::date_time_ymd(1970, 1, 1) + t.duration_since(UNIX_EPOCH).unwrap()
        };
        let now = SystemTime::now();
        let day = Duration::from_secs(24 * 3600);
        let (this_update, next_update) = if expired {
            (now - 2 * day, now - day)
        } else {
            (now - Duration::from_secs(3600), now + day)
        };
        CertificateRevocationListParams {
            this_update: since_epoch(this_update),
            next_update: since_epoch(next_update),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: since_epoch(now - Duration::from_secs(60)),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .unwrap()
    }
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

fn pem_certs(chain: &[CertificateDer<'_>]) -> String {
    chain.iter().map(|c| pem("CERTIFICATE", c)).collect()
}

/// A client config trusting `server_root`, with `client` as its certificate if given.
pub fn client_config(
    server_root: &CertificateDer<'static>,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_root.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key())
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// The result of an in-memory handshake.
pub struct Handshake {
    pub client: rustls::ClientConnection,
    pub server: rustls::ServerConnection,
}

impl Handshake {
    /// The leaf certificate the server presented.
    pub fn served_leaf(&self) -> CertificateDer<'static> {
        self.client.peer_certificates().unwrap()[0].clone()
    }
}

/// Runs a full handshake in memory (buffered API, both sides), including the server's
/// post-handshake flight (TLS 1.3 tickets). `sni`: the name the client asks for (an IP
/// address sends no SNI). The error is the first either side raised.
pub fn handshake(
    client_config: Arc<rustls::ClientConfig>,
    server_config: Arc<rustls::ServerConfig>,
    sni: &str,
) -> Result<Handshake, rustls::Error> {
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    let mut client = rustls::ClientConnection::new(client_config, name).unwrap();
    let mut server = rustls::ServerConnection::new(server_config)?;
    for _ in 0..20 {
        let to_server = flush(&mut client, &mut server)?;
        let to_client = flush(&mut server, &mut client)?;
        if to_server == 0 && to_client == 0 && !client.is_handshaking() && !server.is_handshaking()
        {
            return Ok(Handshake { client, server });
        }
    }
    panic!("the handshake did not finish in 20 rounds");
}

/// Moves everything `from` has to send into `to`; returns the byte count.
fn flush<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
) -> Result<usize, rustls::Error> {
    let mut wire = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut wire).unwrap();
    }
    let mut rest = wire.as_slice();
    while !rest.is_empty() {
        to.read_tls(&mut rest).unwrap();
        to.process_new_packets()?;
    }
    Ok(wire.len())
}
