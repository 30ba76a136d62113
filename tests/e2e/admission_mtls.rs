//! Mutual TLS over the wire: client certificates made here with rcgen (a CA, leaves with CN,
//! DNS and SPIFFE URI SANs, a rogue CA, CRLs), presented by tokio-rustls clients.
//!
//! - required: no certificate, an untrusted one and a revoked one (CRL) fail the handshake and
//!   are counted as failed handshakes; a good one upgrades, and the identity rules decide per
//!   path (403 `identity_not_allowed`);
//! - optional: no certificate upgrades where no rule applies, 403 `identity_required` where one
//!   does; a bad certificate still fails;
//! - the verified identity (CN, SANs, fingerprint) reaches the audit record;
//! - a CRL rewritten while a session is live closes that session with 1008
//!   "certificate_revoked" and refuses the certificate's new handshakes.
//!
//! Under TLS 1.3 the client finishes its side of the handshake before the server has checked
//! the client's certificate, so a refused certificate shows up as an alert (or EOF) on the
//! first read; under TLS 1.2 the client's connect itself fails. Both count as "no upgrade".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig};

use crate::audit::{sha256_hex, trail};
use crate::harness::*;

// ---------------------------------------------------------------------------------------------
// A small PKI
// ---------------------------------------------------------------------------------------------

/// A CA that issues client certificates and CRLs.
pub(crate) struct Ca {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

/// A client certificate (leaf only; the CA is the trust anchor) and its key.
pub(crate) struct Leaf {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Leaf {
    pub(crate) fn fingerprint_hex(&self) -> String {
        sha256_hex(self.chain[0].as_ref())
    }
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "wssedge e2e");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let der = params.self_signed(&key).expect("self-sign").der().clone();
        Ca {
            issuer: Issuer::new(params, key),
            der,
        }
    }

    pub(crate) fn write_pem(&self, path: &Path) {
        std::fs::write(path, pem_cert(&self.der)).expect("write CA");
    }

    /// A client certificate: `cn`, DNS SANs, URI SANs (SPIFFE IDs), `serial`.
    pub(crate) fn client(&self, cn: &str, dns: &[&str], uris: &[&str], serial: u64) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "wssedge e2e clients");
        for d in dns {
            params
                .subject_alt_names
                .push(SanType::DnsName((*d).try_into().expect("DNS name")));
        }
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().expect("URI")));
        }
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign leaf")
            .der()
            .clone();
        Leaf {
            chain: vec![cert],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// A CRL (PEM) revoking `serials`, valid from an hour ago until tomorrow.
    pub(crate) fn crl_pem(&self, serials: &[u64], number: u64) -> String {
        // rcgen's time type is not re-exported; a closure infers it.
        let rcgen_time = |t: SystemTime| {
            rcgen::date_time_ymd(1970, 1, 1) + t.duration_since(UNIX_EPOCH).expect("after 1970")
        };
        let now = SystemTime::now();
        CertificateRevocationListParams {
            this_update: rcgen_time(now - Duration::from_secs(3600)),
            next_update: rcgen_time(now + Duration::from_secs(24 * 3600)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: rcgen_time(now - Duration::from_secs(60)),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("sign CRL")
        .pem()
        .expect("CRL PEM")
    }
}

fn pem_cert(der: &CertificateDer<'_>) -> String {
    crate::admission_jwt::pem("CERTIFICATE", der.as_ref())
}

/// Replaces `path`'s content at once (write a sibling, rename over): the watcher never reads a
/// half-written CRL.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

/// A client config trusting the server's dev CA, presenting `client` if given.
fn client_config(
    srv: &Server,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let ca = srv.ca_pem.as_ref().expect("dev certificate");
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots_trusting(ca));
    let cfg = match client {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    Arc::new(cfg)
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

/// An upgrade attempt with a client certificate (or none); `Err` when TLS failed.
async fn mtls_attempt(
    srv: &Server,
    client: Option<&Leaf>,
    versions: &[&'static rustls::SupportedProtocolVersion],
    target: &str,
) -> Result<Outcome, String> {
    mtls_attempt_with(srv, client_config(srv, client, versions), target).await
}

/// [`mtls_attempt`] with a given client config (whose session cache may resume).
async fn mtls_attempt_with(
    srv: &Server,
    cfg: Arc<ClientConfig>,
    target: &str,
) -> Result<Outcome, String> {
    let tls = try_tls_connect(srv.addr, cfg)
        .await
        .map_err(|e| format!("handshake failed: {e}"))?;
    try_attempt_over(tls, &ws_request(target, &[]))
        .await
        .map_err(|e| format!("failed after the client's handshake: {e}"))
}

async fn expect_mtls_upgrade(srv: &Server, client: Option<&Leaf>, target: &str) -> RawWs {
    match mtls_attempt(srv, client, TLS13, target).await {
        Ok(o) => {
            let (head, mut ws) = o.upgraded(target);
            assert_eq!(header(&head, "sec-websocket-accept"), Some(WS_ACCEPT));
            expect_echo(&mut ws, target).await;
            ws
        }
        Err(e) => panic!("{target}: expected an upgrade, TLS failed: {e}"),
    }
}

async fn expect_mtls_refused(
    srv: &Server,
    client: Option<&Leaf>,
    target: &str,
    status: u16,
    reason: &str,
) {
    match mtls_attempt(srv, client, TLS13, target).await {
        Ok(o) => {
            let r = o.refused(target);
            check_refused(&r, status, reason, target);
        }
        Err(e) => panic!("{target}: expected {status} {reason}, TLS failed: {e}"),
    }
}

/// Failed handshakes counted under any of `reasons`.
async fn failed_handshakes(srv: &Server, reasons: &[&str]) -> f64 {
    let body = srv.metrics().await;
    reasons
        .iter()
        .map(|r| {
            metric_sum(
                &body,
                "wssedge_handshakes_total",
                &[("result", "failed"), ("reason", r)],
            )
        })
        .sum()
}

/// Expects the certificate case `what` to fail TLS (both TLS 1.3 and 1.2) and each failure to
/// be counted as a failed handshake under one of `reasons` (the fine `client_cert_*` reason or
/// the driver's `tls_bad_certificate`).
async fn expect_tls_refused(srv: &Server, client: Option<&Leaf>, what: &str, reasons: &[&str]) {
    for versions in [TLS13, TLS12] {
        let before = failed_handshakes(srv, reasons).await;
        let got = mtls_attempt(srv, client, versions, "/").await;
        if let Ok(o) = got {
            match o {
                Outcome::Upgraded { head, .. } => panic!("{what}: upgraded:\n{head}"),
                Outcome::Refused(r) => {
                    panic!(
                        "{what}: expected a failed handshake, got HTTP {}: {}",
                        r.status, r.body
                    )
                }
            }
        }
        let t0 = Instant::now();
        loop {
            if failed_handshakes(srv, reasons).await >= before + 1.0 {
                break;
            }
            assert!(
                t0.elapsed() < WAIT,
                "{what}: failure not counted under {reasons:?}; samples: {:?}",
                srv.metrics()
                    .await
                    .lines()
                    .filter(|l| l.starts_with("wssedge_handshakes_total"))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The CA, its CRL file, and the client certificates of these tests.
struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    ca_path: PathBuf,
    crl_path: PathBuf,
    /// spiffe://bank.test/trading/desk-1, CN trader-1, serial 0x10.
    trader: Leaf,
    /// CN ops-admin, serial 0x12.
    ops: Leaf,
    /// DNS a.clients.test, serial 0x13.
    dns: Leaf,
    /// Revoked by the initial CRL (serial 0x11).
    revoked: Leaf,
    /// Issued by another CA.
    rogue: Leaf,
}

const TRADER_SPIFFE: &str = "spiffe://bank.test/trading/desk-1";

fn pki() -> Pki {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("wssedge e2e client CA");
    let ca_path = dir.path().join("client-ca.pem");
    ca.write_pem(&ca_path);
    let crl_path = dir.path().join("client-ca.crl.pem");
    std::fs::write(&crl_path, ca.crl_pem(&[0x11], 1)).expect("write CRL");
    let trader = ca.client("trader-1", &[], &[TRADER_SPIFFE], 0x10);
    let revoked = ca.client(
        "trader-2",
        &[],
        &["spiffe://bank.test/trading/desk-2"],
        0x11,
    );
    let ops = ca.client("ops-admin", &[], &[], 0x12);
    let dns = ca.client("dns-client", &["a.clients.test"], &[], 0x13);
    let rogue = Ca::new("rogue CA").client("trader-1", &[], &[TRADER_SPIFFE], 0x10);
    Pki {
        _dir: dir,
        ca,
        ca_path,
        crl_path,
        trader,
        ops,
        dns,
        revoked,
        rogue,
    }
}

impl Pki {
    fn tls_section(&self, client_auth: &str) -> String {
        format!(
            "[tls]\nclient_auth = \"{client_auth}\"\nclient_ca = {}\ncrls = [{}]\n\
             [[tls.identity_rules]]\npath_prefix = \"/trade\"\nallow = [\"spiffe://bank.test/trading/*\"]\n\
             [[tls.identity_rules]]\npath_prefix = \"/ops\"\nallow = [\"cn:ops-admin\"]\n\
             [[tls.identity_rules]]\npath_prefix = \"/dns\"\nallow = [\"dns:*.clients.test\"]\n",
            toml_path(&self.ca_path),
            toml_path(&self.crl_path)
        )
    }
}

const NO_CERT: &[&str] = &["client_cert_missing", "tls_bad_certificate"];
const UNTRUSTED: &[&str] = &["client_cert_untrusted", "tls_bad_certificate"];
const REVOKED: &[&str] = &["client_cert_revoked", "tls_bad_certificate"];

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn required_client_auth_refuses_missing_untrusted_and_revoked_certificates() {
    let p = pki();
    let srv = Server::with_config(&p.tls_section("required"));

    expect_tls_refused(&srv, None, "no certificate", NO_CERT).await;
    expect_tls_refused(&srv, Some(&p.rogue), "untrusted certificate", UNTRUSTED).await;
    expect_tls_refused(&srv, Some(&p.revoked), "revoked certificate", REVOKED).await;

    // Good certificates upgrade; the identity rules decide per path.
    expect_mtls_upgrade(&srv, Some(&p.trader), "/").await;
    expect_mtls_upgrade(&srv, Some(&p.trader), "/trade/orders").await;
    expect_mtls_refused(&srv, Some(&p.trader), "/ops", 403, "identity_not_allowed").await;
    expect_mtls_upgrade(&srv, Some(&p.ops), "/ops").await;
    expect_mtls_refused(&srv, Some(&p.ops), "/trade", 403, "identity_not_allowed").await;
    // TLS 1.2 with a good certificate works too.
    let (_, mut ws) = mtls_attempt(&srv, Some(&p.trader), TLS12, "/trade")
        .await
        .expect("TLS 1.2 with a good certificate")
        .upgraded("TLS 1.2");
    expect_echo(&mut ws, "tls12").await;
    expect_refusals_counted(&srv, "identity_not_allowed", 2).await;

    let body = srv.metrics().await;
    let seen: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("wssedge_handshakes_total") && l.contains("result=\"failed\""))
        .collect();
    visible_line(&format!("mTLS refusals counted as: {seen:?}"));
}

#[tokio::test]
async fn optional_client_auth_admits_anonymous_clients_only_where_no_rule_applies() {
    let p = pki();
    let srv = Server::with_config(&p.tls_section("optional"));
    expect_mtls_upgrade(&srv, None, "/").await;
    expect_mtls_upgrade(&srv, None, "/quotes").await;
    expect_mtls_refused(&srv, None, "/trade", 403, "identity_required").await;
    expect_mtls_refused(&srv, None, "/ops/x", 403, "identity_required").await;
    expect_mtls_upgrade(&srv, Some(&p.trader), "/trade").await;
    expect_mtls_upgrade(&srv, Some(&p.dns), "/dns").await;
    expect_mtls_refused(&srv, Some(&p.trader), "/dns", 403, "identity_not_allowed").await;
    // A path that could normalise differently upstream is refused at the upgrade.
    expect_mtls_refused(
        &srv,
        Some(&p.ops),
        "/quotes/../trade",
        400,
        "path_dot_segment",
    )
    .await;
    expect_mtls_refused(
        &srv,
        None,
        "/trade%2f..%2fquotes",
        400,
        "path_encoded_delimiter",
    )
    .await;
    // A bad certificate is not "no certificate": it still fails the handshake.
    expect_tls_refused(&srv, Some(&p.rogue), "untrusted certificate", UNTRUSTED).await;
    expect_tls_refused(&srv, Some(&p.revoked), "revoked certificate", REVOKED).await;
    expect_refusals_counted(&srv, "identity_required", 2).await;
    expect_refusals_counted(&srv, "identity_not_allowed", 1).await;
    expect_refusals_counted(&srv, "path_dot_segment", 1).await;
    expect_refusals_counted(&srv, "path_encoded_delimiter", 1).await;
}

/// The verified identity travels into the upgrade and close records (CN, SPIFFE URI, the
/// leaf's SHA-256 fingerprint); a refused certificate leaves a `tls_failure` record.
#[tokio::test]
async fn the_verified_identity_reaches_the_audit_record() {
    let p = pki();
    let t = trail();
    let srv = Server::with_config(&format!("{}{}", p.tls_section("required"), t.section(None)));
    let mut ws = expect_mtls_upgrade(&srv, Some(&p.trader), "/trade/book").await;
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));
    drop(ws);
    expect_mtls_refused(&srv, Some(&p.trader), "/ops", 403, "identity_not_allowed").await;
    expect_tls_refused(&srv, Some(&p.revoked), "revoked certificate", REVOKED).await;

    let fingerprint = p.trader.fingerprint_hex();
    let records = t
        .wait_for("upgrades, close and TLS failures", |r| {
            r.iter().filter(|x| x["event"] == "upgrade").count() >= 2
                && r.iter().any(|x| x["event"] == "close")
                && r.iter().filter(|x| x["event"] == "tls_failure").count() >= 2
        })
        .await;
    let check_identity = |r: &serde_json::Value| {
        let id = &r["identity"];
        assert_eq!(id["subject_cn"], "trader-1", "{r}");
        assert!(
            id["uris"]
                .as_array()
                .is_some_and(|u| u.iter().any(|x| x == TRADER_SPIFFE)),
            "{r}"
        );
        assert_eq!(
            id["fingerprint_sha256"]
                .as_str()
                .map(|s| s.to_ascii_lowercase().replace(':', "")),
            Some(fingerprint.clone()),
            "{r}"
        );
    };
    let allowed = records
        .iter()
        .find(|r| r["event"] == "upgrade" && r["allowed"] == true)
        .expect("allowed upgrade record");
    assert_eq!(allowed["path"], "/trade/book");
    check_identity(allowed);
    let refused = records
        .iter()
        .find(|r| r["event"] == "upgrade" && r["allowed"] == false)
        .expect("refused upgrade record");
    assert_eq!(refused["reason"], "identity_not_allowed");
    assert_eq!(refused["status"], 403);
    check_identity(refused);
    let close = records
        .iter()
        .find(|r| r["event"] == "close")
        .expect("close record");
    check_identity(close);
    for f in records.iter().filter(|r| r["event"] == "tls_failure") {
        let reason = f["reason"].as_str().unwrap_or("");
        assert!(
            REVOKED.contains(&reason),
            "tls_failure reason {reason}: {f}"
        );
    }
}

/// Rewriting the CRL file while sessions are live: the session of the newly revoked
/// certificate closes with 1008 "certificate_revoked" (the watcher polls every second), the
/// others go on, and the revoked certificate's new handshakes fail.
#[tokio::test]
async fn a_crl_rewritten_while_connected_closes_the_revoked_session_with_1008() {
    let p = pki();
    let srv = Server::with_config(&p.tls_section("required"));
    let doomed = p.ca.client(
        "trader-3",
        &[],
        &["spiffe://bank.test/trading/desk-3"],
        0x20,
    );
    let kept = p.ca.client(
        "trader-4",
        &[],
        &["spiffe://bank.test/trading/desk-4"],
        0x21,
    );
    let ws = expect_mtls_upgrade(&srv, Some(&doomed), "/trade").await;
    let mut other = expect_mtls_upgrade(&srv, Some(&kept), "/trade").await;
    let RawWs { mut rd, wr: _wr } = ws;
    let watch = tokio::spawn(async move {
        let f = rd.expect_close_frame().await;
        (f, Instant::now())
    });

    // Let at least one watcher poll pass over the old file, so the rewrite is a change.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let written = Instant::now();
    replace_file(&p.crl_path, &p.ca.crl_pem(&[0x11, 0x20], 2));
    let (frame, at) = within(WAIT, "close of the revoked session", watch)
        .await
        .expect("reader task");
    assert_eq!(
        (frame.close_code(), frame.close_reason().as_str()),
        (Some(1008), "certificate_revoked")
    );
    let took = at.saturating_duration_since(written);
    visible_line(&format!(
        "CRL rewrite: the revoked session closed with 1008 {took:?} after the file was replaced"
    ));
    assert!(
        took <= Duration::from_millis(2500),
        "closed {took:?} after the CRL was rewritten (the watcher polls 4 times a second)"
    );
    expect_echo(&mut other, "not revoked").await;
    expect_closed_1008(&srv, "certificate_revoked", 1.0).await;
    expect_tls_refused(
        &srv,
        Some(&doomed),
        "certificate revoked by the new CRL",
        REVOKED,
    )
    .await;
    expect_mtls_upgrade(&srv, Some(&kept), "/trade").await;
}

/// Chaos on the CRL file while serving: replaced by garbage, then removed. Clients see
/// nothing: live sessions go on, the revoked certificate stays refused, others are admitted.
/// Each broken state is refused once (counted in `wssedge_reloads_total`, logged, audited as a
/// failed CRL reload) and the CRLs loaded before stay in force; a good file again is applied.
#[tokio::test]
async fn a_crl_file_replaced_by_garbage_or_removed_keeps_the_crls_in_force() {
    let p = pki();
    let srv = Server::with_config(&p.tls_section("required"));
    let revoked = p.ca.client(
        "trader-1",
        &[],
        &["spiffe://bank.test/trading/desk-1"],
        0x11,
    );
    let kept = p.ca.client(
        "trader-5",
        &[],
        &["spiffe://bank.test/trading/desk-5"],
        0x25,
    );
    let mut live = expect_mtls_upgrade(&srv, Some(&kept), "/trade").await;
    let crl_reloads = |result: &str| {
        let srv = &srv;
        let result = result.to_owned();
        async move {
            srv.metric(
                "wssedge_reloads_total",
                &[("what", "crls"), ("result", &result)],
            )
            .await
        }
    };
    // Let a watcher poll pass over the good file, so each replacement is a change.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    replace_file(
        &p.crl_path,
        "-----BEGIN X509 CRL-----\nnot a CRL at all\n-----END X509 CRL-----\n",
    );
    srv.wait_metric_eq(
        "wssedge_reloads_total",
        &[("what", "crls"), ("result", "refused")],
        1.0,
    )
    .await;
    expect_echo(&mut live, "through a garbage CRL").await;
    expect_tls_refused(
        &srv,
        Some(&revoked),
        "still revoked by the CRLs in force",
        REVOKED,
    )
    .await;
    expect_mtls_upgrade(&srv, Some(&kept), "/trade").await;

    std::fs::remove_file(&p.crl_path).expect("remove the CRL file");
    srv.wait_metric_eq(
        "wssedge_reloads_total",
        &[("what", "crls"), ("result", "refused")],
        2.0,
    )
    .await;
    expect_echo(&mut live, "through a missing CRL").await;
    expect_tls_refused(
        &srv,
        Some(&revoked),
        "still revoked with the file gone",
        REVOKED,
    )
    .await;
    assert_eq!(
        crl_reloads("applied").await,
        0.0,
        "nothing was applied meanwhile"
    );

    // Back: a good CRL that revokes nothing more is applied.
    replace_file(&p.crl_path, &p.ca.crl_pem(&[0x11], 2));
    srv.wait_metric_eq(
        "wssedge_reloads_total",
        &[("what", "crls"), ("result", "applied")],
        1.0,
    )
    .await;
    expect_echo(&mut live, "after the CRL came back").await;
    assert_eq!(
        crl_reloads("refused").await,
        2.0,
        "each broken state refused once"
    );
    let log = srv.proc.stderr();
    assert!(
        log.contains("new CRLs refused; the previous ones stay in force"),
        "{log}"
    );
}

/// Resumption does not skip revocation: with `resumption = "tickets"` and required client
/// certificates, a client resumes (no certificate sent again); once its certificate is revoked
/// (`ctl crl-reload` after the CRL file is rewritten) its live session closes with 1008 within
/// a second of the command returning, and resuming again gets no WebSocket.
#[tokio::test]
async fn a_resumed_session_does_not_outlive_a_crl_revocation() {
    let p = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("ctl.sock");
    let srv = ServerBuilder::new()
        .config(&p.tls_section("required").replacen(
            "[tls]\n",
            "[tls]\nresumption = \"tickets\"\n",
            1,
        ))
        .arg("--control")
        .arg(socket.to_str().expect("UTF-8"))
        .start();
    let doomed = p.ca.client(
        "trader-5",
        &[],
        &["spiffe://bank.test/trading/desk-5"],
        0x30,
    );
    let cfg = client_config(&srv, Some(&doomed), TLS13);

    // A full handshake; its tickets arrive with the 101.
    let (_, mut first) = mtls_attempt_with(&srv, cfg.clone(), "/trade")
        .await
        .expect("first handshake")
        .upgraded("first connection");
    expect_echo(&mut first, "full handshake").await;
    drop(first);

    // The same client resumes.
    let tls = try_tls_connect(srv.addr, cfg.clone())
        .await
        .expect("resumed handshake");
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the second connection did not resume; the test needs resumption to mean anything"
    );
    let (_, ws) = attempt_over(tls, &ws_request("/trade", &[]))
        .await
        .upgraded("resumed connection");
    let RawWs { mut rd, mut wr } = ws;
    send_all(&mut wr, &cframe(true, OP_TEXT, b"resumed"))
        .await
        .expect("write");
    assert_eq!(rd.message().await, (OP_TEXT, b"resumed".to_vec()));
    let watch = tokio::spawn(async move {
        let f = rd.expect_close_frame().await;
        (f, Instant::now())
    });

    std::fs::write(&p.crl_path, p.ca.crl_pem(&[0x11, 0x30], 2)).expect("rewrite CRL");
    let out = ctl(&socket, &["crl-reload"]).await;
    assert_eq!(out.code, Some(0), "crl-reload: {out:?}");
    let (frame, at) = within(WAIT, "close of the revoked resumed session", watch)
        .await
        .expect("reader task");
    assert_eq!(
        (frame.close_code(), frame.close_reason().as_str()),
        (Some(1008), "certificate_revoked")
    );
    let took = at.saturating_duration_since(out.ended);
    visible_line(&format!(
        "crl-reload: the revoked session closed with 1008 {took:?} after the command returned"
    ));
    assert!(
        took <= Duration::from_millis(1500),
        "closed {took:?} after crl-reload returned (bound: a second, plus margin)"
    );

    // Resuming again (if the server still honours the ticket) gets no WebSocket either.
    match mtls_attempt_with(&srv, cfg, "/trade").await {
        Err(_) => {}
        Ok(Outcome::Refused(r)) => check_refused(&r, 403, "certificate_revoked", "/trade"),
        Ok(Outcome::Upgraded { head, .. }) => {
            panic!("a revoked certificate upgraded by resuming:\n{head}")
        }
    }
}

/// A reload that names another CRL file moves the watch to it: rewriting the new file closes
/// the session it revokes, as rewriting the file named at start did before.
#[tokio::test]
async fn a_crl_file_named_by_a_reload_is_watched_from_then_on() {
    let p = pki();
    let srv = Server::with_config(&p.tls_section("required"));
    let moved = p.crl_path.with_file_name("moved.crl.pem");
    replace_file(&moved, &p.ca.crl_pem(&[0x11], 3));
    let text = std::fs::read_to_string(srv.config_path()).expect("config");
    let renamed = text.replace(&toml_path(&p.crl_path), &toml_path(&moved));
    assert_ne!(renamed, text, "the config names the CRL file");
    std::fs::write(srv.config_path(), renamed).expect("config");
    // SAFETY: kill(2) on the pid of the server this test started.
    let sent = unsafe { libc::kill(srv.proc.pid() as i32, libc::SIGHUP) };
    assert_eq!(sent, 0, "SIGHUP");
    srv.proc
        .wait_stderr("the reload is logged", "configuration reloaded")
        .await;

    let doomed = p.ca.client(
        "trader-5",
        &[],
        &["spiffe://bank.test/trading/desk-5"],
        0x30,
    );
    let ws = expect_mtls_upgrade(&srv, Some(&doomed), "/trade").await;
    let RawWs { mut rd, wr: _wr } = ws;
    let watch = tokio::spawn(async move { rd.expect_close_frame().await });
    // Let a watcher poll pass over the reloaded set first, so the rewrite is a change.
    tokio::time::sleep(Duration::from_millis(600)).await;
    replace_file(&moved, &p.ca.crl_pem(&[0x11, 0x30], 4));
    let frame = within(WAIT, "close of the session the new file revokes", watch)
        .await
        .expect("reader task");
    assert_eq!(
        (frame.close_code(), frame.close_reason().as_str()),
        (Some(1008), "certificate_revoked")
    );
}
