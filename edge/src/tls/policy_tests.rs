//! [`build_server_config`] driven through real in-memory handshakes (rustls client and server,
//! buffered API): every supported combination, SNI selection, client certificates with CRLs,
//! resumption.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::{CertificateError, Error, HandshakeKind, ProtocolVersion};

use super::*;
use crate::reason::Reason;
use crate::tls::identity::{client_cert_failure_reason as reason, ClientIdentity};
use crate::tls::settings::SniCert;
use crate::tls::testpki::{client_config, handshake, ClientSpec, Leaf, TestPki};

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A server PKI, a client PKI (with its CA file written), and a directory for files.
struct Fixture {
    dir: tempfile::TempDir,
    servers: TestPki,
    server: Leaf,
    clients: TestPki,
    client_ca: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let servers = TestPki::new_named("server CA");
        let server = servers.server(&[
            "default.test",
            "unknown.test",
            "a.b.example.com",
            "127.0.0.1",
        ]);
        let clients = TestPki::new_named("client CA");
        let client_ca = clients.write_ca(dir.path(), "client-ca.pem");
        Fixture {
            dir,
            servers,
            server,
            clients,
            client_ca,
        }
    }

    fn settings(&self, client_auth: ClientAuth) -> TlsSettings {
        TlsSettings {
            client_auth,
            client_ca: (client_auth != ClientAuth::Off).then(|| self.client_ca.clone()),
            ..TlsSettings::default()
        }
    }

    fn build(
        &self,
        settings: &TlsSettings,
        crls: &CrlSet,
    ) -> Result<Arc<ServerConfig>, TlsConfigError> {
        build_server_config(settings, self.server.chain.clone(), self.server.key(), crls)
    }

    fn connect(
        &self,
        config: &Arc<ServerConfig>,
        client: Option<&Leaf>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Result<crate::tls::testpki::Handshake, Error> {
        let cc = client_config(&self.servers.root_der(), client, versions);
        handshake(cc, config.clone(), "default.test")
    }

    fn crls(&self, revoked: &[u64], expired: bool) -> CrlSet {
        CrlSet::from_ders(
            "test.crl",
            vec![self.clients.crl(revoked, expired).der().clone()],
        )
        .unwrap()
    }
}

fn good_client(pki: &TestPki) -> Leaf {
    pki.client(ClientSpec {
        cn: Some("desk-7"),
        dns: &["desk-7.trading.example.com"],
        uris: &["spiffe://bank.example/trading/desk-7"],
        serial: 0x7007,
    })
}

#[test]
fn every_supported_combination_builds_and_handshakes() {
    let f = Fixture::new();
    let client = good_client(&f.clients);
    for (versions, client_versions, want) in [
        (vec!["1.2"], TLS12, ProtocolVersion::TLSv1_2),
        (vec!["1.3"], TLS13, ProtocolVersion::TLSv1_3),
        (vec!["1.3", "1.2"], BOTH, ProtocolVersion::TLSv1_3),
    ] {
        for resumption in [
            None,
            Some(Resumption::Tickets),
            Some(Resumption::Stateful),
            Some(Resumption::Off),
        ] {
            for auth in [ClientAuth::Off, ClientAuth::Optional, ClientAuth::Required] {
                let settings = TlsSettings {
                    versions: versions.iter().map(|v| (*v).to_owned()).collect(),
                    resumption,
                    ..f.settings(auth)
                };
                settings.validate().unwrap();
                let label = format!("{versions:?} {resumption:?} {auth:?}");
                let config = f
                    .build(&settings, &f.crls(&[], false))
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()], "{label}");
                assert_eq!(config.max_early_data_size, 0, "{label}");
                assert!(!config.send_half_rtt_data, "{label}");
                assert!(!config.enable_secret_extraction, "{label}");
                let hs = f
                    .connect(
                        &config,
                        (auth != ClientAuth::Off).then_some(&client),
                        client_versions,
                    )
                    .unwrap_or_else(|e| panic!("{label}: {e}"));
                assert_eq!(hs.server.protocol_version(), Some(want), "{label}");
                assert_eq!(hs.server.alpn_protocol(), Some(&b"http/1.1"[..]), "{label}");
                assert_eq!(
                    hs.server.peer_certificates().is_some(),
                    auth != ClientAuth::Off,
                    "{label}"
                );
            }
        }
    }
}

#[test]
fn each_configured_suite_and_group_is_the_one_negotiated() {
    let f = Fixture::new();
    // The test CA issues ECDSA certificates, so the ECDHE_RSA suites can't be negotiated here;
    // they are proven to build.
    for suite in CIPHER_SUITES {
        let name = suite.suite().as_str().unwrap();
        let tls13 = name.starts_with("TLS13_");
        let settings = TlsSettings {
            versions: vec![if tls13 { "1.3" } else { "1.2" }.into()],
            cipher_suites: vec![name.to_owned()],
            ..TlsSettings::default()
        };
        let config = f.build(&settings, &CrlSet::empty()).unwrap();
        if name.contains("_RSA_") {
            continue;
        }
        let hs = f
            .connect(&config, None, if tls13 { TLS13 } else { TLS12 })
            .unwrap();
        assert_eq!(
            hs.server.negotiated_cipher_suite().unwrap().suite(),
            suite.suite()
        );
    }
    // A client offering every group aws-lc-rs has, so each single server group can be met
    // (after a HelloRetryRequest when the client's first key share is another group).
    let all_groups = rustls::crypto::CryptoProvider {
        kx_groups: aws_lc_rs::ALL_KX_GROUPS.to_vec(),
        ..aws_lc_rs::default_provider()
    };
    for group in aws_lc_rs::ALL_KX_GROUPS {
        let name = group.name().as_str().unwrap();
        let settings = TlsSettings {
            versions: vec!["1.3".into()],
            groups: vec![name.to_owned()],
            ..TlsSettings::default()
        };
        let config = f.build(&settings, &CrlSet::empty()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(f.servers.root_der()).unwrap();
        let cc = rustls::ClientConfig::builder_with_provider(Arc::new(all_groups.clone()))
            .with_protocol_versions(TLS13)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let hs = handshake(Arc::new(cc), config, "default.test").unwrap();
        assert_eq!(
            hs.server.negotiated_key_exchange_group().unwrap().name(),
            group.name(),
            "{name}"
        );
    }
}

#[test]
fn refused_names_reach_build_server_config_too() {
    let f = Fixture::new();
    let settings = TlsSettings {
        cipher_suites: vec!["TLS_RSA_WITH_AES_256_CBC_SHA".into()],
        ..TlsSettings::default()
    };
    let e = f
        .build(&settings, &CrlSet::empty())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TLS_RSA_WITH_AES_256_CBC_SHA") && e.contains("AEAD"),
        "{e}"
    );
    let settings = TlsSettings {
        client_auth: ClientAuth::Required,
        ..TlsSettings::default()
    };
    let e = f
        .build(&settings, &CrlSet::empty())
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.client_ca"), "{e}");
}

#[test]
fn sni_picks_exact_then_wildcard_then_default() {
    let f = Fixture::new();
    let api = f.servers.server(&["api.example.com"]);
    let wild = f.servers.server(&["*.example.com"]);
    let (api_cert, api_key) = api.write(f.dir.path(), "api");
    let (wild_cert, wild_key) = wild.write(f.dir.path(), "wild");
    let settings = TlsSettings {
        certs: vec![
            SniCert {
                sni: "*.example.com".into(),
                cert: wild_cert.clone(),
                key: wild_key.clone(),
            },
            SniCert {
                sni: "API.example.com".into(),
                cert: api_cert.clone(),
                key: api_key.clone(),
            },
        ],
        ..TlsSettings::default()
    };
    settings.validate().unwrap();
    let config = f.build(&settings, &CrlSet::empty()).unwrap();
    for (sni, want) in [
        ("api.example.com", &api),
        ("x.example.com", &wild),
        // A wildcard covers one label only.
        ("a.b.example.com", &f.server),
        ("unknown.test", &f.server),
        // An IP address: no SNI at all.
        ("127.0.0.1", &f.server),
    ] {
        for versions in [TLS12, TLS13] {
            let cc = client_config(&f.servers.root_der(), None, versions);
            let hs = handshake(cc, config.clone(), sni).unwrap_or_else(|e| panic!("{sni}: {e}"));
            assert_eq!(hs.served_leaf(), want.chain[0], "{sni}");
        }
    }

    // A certificate that isn't valid for its name, and a key that isn't the certificate's,
    // are refused at start with the files named.
    let wrong_name = TlsSettings {
        certs: vec![SniCert {
            sni: "other.example.org".into(),
            cert: api_cert.clone(),
            key: api_key.clone(),
        }],
        ..TlsSettings::default()
    };
    let e = f
        .build(&wrong_name, &CrlSet::empty())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("api.pem") && e.contains("other.example.org") && e.contains("api.example.com"),
        "{e}"
    );
    let wrong_key = TlsSettings {
        certs: vec![SniCert {
            sni: "api.example.com".into(),
            cert: api_cert.clone(),
            key: wild_key.clone(),
        }],
        ..TlsSettings::default()
    };
    let e = f
        .build(&wrong_key, &CrlSet::empty())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("api.pem") && e.contains("wild.key") && e.contains("doesn't match"),
        "{e}"
    );
    let missing = TlsSettings {
        certs: vec![SniCert {
            sni: "api.example.com".into(),
            cert: f.dir.path().join("nope.pem"),
            key: api_key,
        }],
        ..TlsSettings::default()
    };
    let e = f.build(&missing, &CrlSet::empty()).unwrap_err().to_string();
    assert!(e.contains("nope.pem"), "{e}");
}

fn cert_error(e: Error) -> CertificateError {
    match e {
        Error::InvalidCertificate(c) => c,
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[test]
fn required_client_auth_refuses_missing_untrusted_and_revoked_certificates() {
    let f = Fixture::new();
    let good = good_client(&f.clients);
    let revoked = f.clients.client(ClientSpec {
        serial: 0xdead,
        ..ClientSpec::default()
    });
    let stranger = TestPki::new_named("stranger CA").client(ClientSpec::default());
    let crls = f.crls(&[0xdead], false);
    let config = f.build(&f.settings(ClientAuth::Required), &crls).unwrap();
    for versions in [TLS12, TLS13] {
        let e = f
            .connect(&config, None, versions)
            .err()
            .expect("no certificate");
        assert!(matches!(e, Error::NoCertificatesPresented), "{e:?}");
        assert_eq!(reason(&e), Some(Reason::ClientCertMissing));
        let e = f
            .connect(&config, Some(&stranger), versions)
            .err()
            .expect("untrusted");
        assert_eq!(reason(&e), Some(Reason::ClientCertUntrusted));
        assert_eq!(cert_error(e), CertificateError::UnknownIssuer);
        let e = f
            .connect(&config, Some(&revoked), versions)
            .err()
            .expect("revoked");
        assert_eq!(reason(&e), Some(Reason::ClientCertRevoked));
        assert_eq!(cert_error(e), CertificateError::Revoked);

        let hs = f.connect(&config, Some(&good), versions).unwrap();
        let presented = hs.server.peer_certificates().unwrap();
        let id = ClientIdentity::from_chain(presented).unwrap();
        assert_eq!(id.subject_cn.as_deref(), Some("desk-7"));
        assert_eq!(id.dns, vec!["desk-7.trading.example.com"]);
        assert_eq!(id.uris, vec!["spiffe://bank.example/trading/desk-7"]);
        assert_eq!(
            id.spiffe_id.as_deref(),
            Some("spiffe://bank.example/trading/desk-7")
        );
        assert_eq!(id.serial_hex, "7007");
        assert!(id.issuer.contains("client CA"));
        let want = crate::tls::identity::hex(
            ::aws_lc_rs::digest::digest(&::aws_lc_rs::digest::SHA256, &good.chain[0]).as_ref(),
        );
        assert_eq!(id.fingerprint_sha256, want);
        assert!(!crls.is_revoked(&id));
    }
}

#[test]
fn optional_client_auth_admits_no_certificate_but_not_a_bad_one() {
    let f = Fixture::new();
    let crls = f.crls(&[0xdead], false);
    let config = f.build(&f.settings(ClientAuth::Optional), &crls).unwrap();
    let revoked = f.clients.client(ClientSpec {
        serial: 0xdead,
        ..ClientSpec::default()
    });
    let stranger = TestPki::new_named("stranger CA").client(ClientSpec::default());
    for versions in [TLS12, TLS13] {
        let hs = f.connect(&config, None, versions).unwrap();
        assert!(hs.server.peer_certificates().is_none());
        let hs = f
            .connect(&config, Some(&good_client(&f.clients)), versions)
            .unwrap();
        assert!(hs.server.peer_certificates().is_some());
        assert!(f.connect(&config, Some(&stranger), versions).is_err());
        assert_eq!(
            cert_error(f.connect(&config, Some(&revoked), versions).err().unwrap()),
            CertificateError::Revoked
        );
    }
}

#[test]
fn an_expired_crl_fails_closed() {
    let f = Fixture::new();
    let crls = f.crls(&[], true);
    assert_eq!(crls.expired_at(std::time::SystemTime::now()).len(), 1);
    let config = f.build(&f.settings(ClientAuth::Required), &crls).unwrap();
    let e = f
        .connect(&config, Some(&good_client(&f.clients)), TLS13)
        .err()
        .unwrap();
    assert_eq!(reason(&e), Some(Reason::CrlExpired));
    assert!(
        matches!(
            cert_error(e),
            CertificateError::ExpiredRevocationList
                | CertificateError::ExpiredRevocationListContext { .. }
        ),
        "an expired CRL refuses the certificates of its issuer"
    );
}

#[test]
fn revocation_is_checked_along_the_whole_chain() {
    let f = Fixture::new();
    let inter = f.clients.intermediate(0x1a);
    let leaf = inter.client(ClientSpec {
        serial: 0x2b,
        ..ClientSpec::default()
    });
    let settings = f.settings(ClientAuth::Required);
    let root_crl = |revoked: &[u64]| f.clients.crl(revoked, false).der().clone();
    let inter_crl = |revoked: &[u64]| inter.crl(revoked, false).der().clone();
    let connect = |ders: Vec<_>| {
        let crls = CrlSet::from_ders("mem", ders).unwrap();
        let config = f.build(&settings, &crls).unwrap();
        f.connect(&config, Some(&leaf), TLS13).map(drop)
    };
    connect(vec![root_crl(&[]), inter_crl(&[])]).unwrap();
    // The intermediate's CRL is missing: its leaf's status is unknown, and unknown is refused.
    assert_eq!(
        cert_error(connect(vec![root_crl(&[])]).unwrap_err()),
        CertificateError::UnknownRevocationStatus
    );
    // A revoked intermediate refuses the leaves below it, not only a revoked leaf.
    assert_eq!(
        cert_error(connect(vec![root_crl(&[0x1a]), inter_crl(&[])]).unwrap_err()),
        CertificateError::Revoked
    );
    assert_eq!(
        cert_error(connect(vec![root_crl(&[]), inter_crl(&[0x2b])]).unwrap_err()),
        CertificateError::Revoked
    );
    // With CRLs configured, a client CA that has none is refused at start.
    let foreign = CrlSet::from_ders(
        "mem",
        vec![TestPki::new_named("x").crl(&[], false).der().clone()],
    )
    .unwrap();
    let e = f.build(&settings, &foreign).unwrap_err().to_string();
    assert!(
        e.contains("client-ca.pem") && e.contains("client CA") && e.contains("tls.crls"),
        "{e}"
    );
}

#[test]
fn a_broken_client_ca_file_is_named() {
    let f = Fixture::new();
    let bad = f.dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello\n").unwrap();
    let settings = TlsSettings {
        client_ca: Some(bad),
        ..f.settings(ClientAuth::Required)
    };
    let e = f
        .build(&settings, &CrlSet::empty())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not-a-ca.pem"), "{e}");
}

#[test]
fn resumption_modes_configure_rustls_as_intended() {
    let f = Fixture::new();
    let build = |auth: ClientAuth, r: Option<Resumption>| {
        let settings = TlsSettings {
            resumption: r,
            ..f.settings(auth)
        };
        f.build(&settings, &f.crls(&[], false)).unwrap()
    };
    let tickets = build(ClientAuth::Off, Some(Resumption::Tickets));
    assert!(tickets.ticketer.enabled());
    assert!(!tickets.session_storage.can_cache());
    assert_eq!(tickets.send_tls13_tickets, 2);
    let stateful = build(ClientAuth::Off, Some(Resumption::Stateful));
    assert!(!stateful.ticketer.enabled());
    assert!(stateful.session_storage.can_cache());
    let off = build(ClientAuth::Off, Some(Resumption::Off));
    assert!(!off.ticketer.enabled());
    assert!(!off.session_storage.can_cache());
    assert_eq!(off.send_tls13_tickets, 0);
    // Defaults: tickets, except with required client certificates.
    assert!(build(ClientAuth::Off, None).ticketer.enabled());
    assert!(build(ClientAuth::Optional, None).ticketer.enabled());
    let required = build(ClientAuth::Required, None);
    assert!(!required.ticketer.enabled() && !required.session_storage.can_cache());
    assert_eq!(required.send_tls13_tickets, 0);
    // aws-lc-rs' rotating ticketer: a new key every 6 hours, tickets valid for two periods.
    assert_eq!(tickets.ticketer.lifetime(), 12 * 60 * 60);
}

#[test]
fn resumption_resumes_or_not_as_configured() {
    let f = Fixture::new();
    for (r, versions, resumes) in [
        (Resumption::Tickets, TLS13, true),
        (Resumption::Tickets, TLS12, true),
        (Resumption::Stateful, TLS13, true),
        (Resumption::Stateful, TLS12, true),
        (Resumption::Off, TLS13, false),
        (Resumption::Off, TLS12, false),
    ] {
        let settings = TlsSettings {
            resumption: Some(r),
            ..TlsSettings::default()
        };
        let config = f.build(&settings, &CrlSet::empty()).unwrap();
        let cc = client_config(&f.servers.root_der(), None, versions);
        let first = handshake(cc.clone(), config.clone(), "default.test").unwrap();
        assert_eq!(first.server.handshake_kind(), Some(HandshakeKind::Full));
        let second = handshake(cc, config, "default.test").unwrap();
        let want = if resumes {
            HandshakeKind::Resumed
        } else {
            HandshakeKind::Full
        };
        assert_eq!(
            second.server.handshake_kind(),
            Some(want),
            "{r:?} {versions:?}"
        );
    }
}

/// Why `required` turns resumption off by default: a resumed session brings back the
/// certificate of the full handshake without verifying it again. The two defences for an
/// explicit `resumption` with `required`: a rebuilt config (new CRLs) has fresh ticket keys,
/// so old tickets no longer resume; and `CrlSet::is_revoked` at the upgrade catches what
/// resumes within one config.
#[test]
fn resumed_sessions_skip_crl_checks_so_the_upgrade_rechecks() {
    let f = Fixture::new();
    let victim = f.clients.client(ClientSpec {
        serial: 0x99,
        ..ClientSpec::default()
    });
    let settings = TlsSettings {
        resumption: Some(Resumption::Tickets),
        ..f.settings(ClientAuth::Required)
    };
    let before = f.build(&settings, &f.crls(&[], false)).unwrap();
    let cc = client_config(&f.servers.root_der(), Some(&victim), TLS13);
    handshake(cc.clone(), before.clone(), "default.test").unwrap();

    // The certificate is revoked. Within the same config the session still resumes, with
    // the old certificate restored: only the upgrade's re-check can catch it.
    let revoked = f.crls(&[0x99], false);
    let resumed = handshake(cc.clone(), before, "default.test").unwrap();
    assert_eq!(
        resumed.server.handshake_kind(),
        Some(HandshakeKind::Resumed)
    );
    let id = ClientIdentity::from_chain(resumed.server.peer_certificates().unwrap()).unwrap();
    assert!(revoked.is_revoked(&id), "the upgrade re-check refuses it");

    // The rebuilt config (what a CRL change triggers) doesn't accept the old ticket: a full
    // handshake, which the verifier refuses.
    let after = f.build(&settings, &revoked).unwrap();
    let e = handshake(cc, after, "default.test").err().unwrap();
    assert_eq!(cert_error(e), CertificateError::Revoked);
}
