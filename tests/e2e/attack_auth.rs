//! Authentication attacks of issue 12 (items 5, 8 and 10), each tried on the real binary:
//!
//! - a TLS session resumed after the client certificate expired, or after the CRL's
//!   `nextUpdate` passed, must not upgrade: rustls does not verify a resumed session's
//!   certificate again, so the upgrade re-checks it (403 `client_cert_expired` / `crl_expired`);
//! - a single-use token used before `wssedge ctl restart` stays used after it: the replay store
//!   travels with the handover (401 `replayed` from the successor);
//! - a `sub` or `jti` that could never be revoked (surrounding whitespace, control or invisible
//!   characters) is refused at verification (401 `identifier_invalid`), the revocation file and
//!   `ctl revoke-*` apply the same rule, and a subject that is admitted can be revoked.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, CertificateRevocationListParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, KeyIdMethod, KeyPair, SanType, SerialNumber,
};
use serde_json::{json, Value};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, HandshakeKind};

use crate::admission_jwt::{claims, hs, jwt_config, key_files, with, with_header_token};
use crate::admission_mtls::Ca;
use crate::audit::trail;
use crate::control::controlled;
use crate::harness::*;
use crate::lifecycle::Successor;

// ---------------------------------------------------------------------------------------------
// Item 5: resumed sessions and certificate / CRL expiry
// ---------------------------------------------------------------------------------------------

/// rcgen's time type is not re-exported; a closure infers it.
macro_rules! rcgen_time {
    ($t:expr) => {
        rcgen::date_time_ymd(1970, 1, 1) + ($t).duration_since(UNIX_EPOCH).expect("after 1970")
    };
}

fn at_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// A client CA (the mTLS tests' [`Ca`]) that issues leaves and CRLs with the validity the test
/// asks for.
struct ClientCa(Ca);

struct ClientLeaf {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

const DESK: &str = "spiffe://bank.test/trading/desk-9";

impl ClientCa {
    fn new() -> ClientCa {
        ClientCa(Ca::new("attack_auth client CA"))
    }

    fn write(&self, path: &Path) {
        self.0.write_pem(path);
    }

    /// A client certificate for [`DESK`] valid from an hour ago until `not_after` (UNIX s).
    fn leaf_until(&self, serial: u64, not_after: u64) -> ClientLeaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("desk-9-{serial}"));
        params
            .subject_alt_names
            .push(SanType::URI(DESK.try_into().expect("URI")));
        params.serial_number = Some(SerialNumber::from(serial));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen_time!(SystemTime::now() - Duration::from_secs(3600));
        params.not_after = rcgen_time!(at_unix(not_after));
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.0.issuer)
            .expect("sign leaf")
            .der()
            .clone();
        ClientLeaf {
            chain: vec![cert],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        }
    }

    /// An empty CRL whose `nextUpdate` is `next_update` (UNIX s).
    fn crl_until(&self, next_update: u64) -> String {
        CertificateRevocationListParams {
            this_update: rcgen_time!(SystemTime::now() - Duration::from_secs(60)),
            next_update: rcgen_time!(at_unix(next_update)),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: Vec::new(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.0.issuer)
        .expect("sign CRL")
        .pem()
        .expect("CRL PEM")
    }
}

/// A server with optional client certificates, ticket resumption, an identity rule on
/// `/trade`, the CA's CRL (`crl_pem`) and an audit trail.
struct MtlsServer {
    srv: Server,
    trail: crate::audit::Trail,
    _dir: tempfile::TempDir,
}

fn mtls_server(ca: &ClientCa, crl_pem: &str) -> MtlsServer {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_path = dir.path().join("client-ca.pem");
    ca.write(&ca_path);
    let crl_path = dir.path().join("client-ca.crl.pem");
    std::fs::write(&crl_path, crl_pem).expect("write CRL");
    let t = trail();
    let srv = Server::with_config(&format!(
        "[tls]\nclient_auth = \"optional\"\nresumption = \"tickets\"\nclient_ca = {}\ncrls = [{}]\n\
         [[tls.identity_rules]]\npath_prefix = \"/trade\"\nallow = [\"spiffe://bank.test/trading/*\"]\n{}",
        toml_path(&ca_path),
        toml_path(&crl_path),
        t.section(None)
    ));
    MtlsServer {
        srv,
        trail: t,
        _dir: dir,
    }
}

/// TLS 1.3, trusting the server's development CA, presenting `leaf`. The config keeps the
/// tickets it receives: reusing it resumes.
fn client_config(srv: &Server, leaf: &ClientLeaf) -> Arc<ClientConfig> {
    let ca = srv.ca_pem.as_ref().expect("dev certificate");
    let cfg = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("versions")
    .with_root_certificates(roots_trusting(ca))
    .with_client_auth_cert(leaf.chain.clone(), leaf.key.clone_key())
    .expect("client certificate");
    Arc::new(cfg)
}

/// A connection with `cfg` that must be of `kind`; then the upgrade to `target`.
async fn connect_as(
    srv: &Server,
    cfg: &Arc<ClientConfig>,
    kind: HandshakeKind,
    target: &str,
) -> Outcome {
    let tls = try_tls_connect(srv.addr, cfg.clone())
        .await
        .unwrap_or_else(|e| panic!("{target}: TLS failed: {e}"));
    assert_eq!(
        tls.get_ref().1.handshake_kind(),
        Some(kind),
        "{target}: the connection was not the handshake the test needs"
    );
    attempt_over(tls, &ws_request(target, &[])).await
}

/// A full handshake and an upgrade on the identity-gated path; the session echoes and closes,
/// and the config now holds tickets.
async fn first_session(srv: &Server, cfg: &Arc<ClientConfig>) {
    let (_, mut ws) = connect_as(srv, cfg, HandshakeKind::Full, "/trade")
        .await
        .upgraded("full handshake with a valid certificate");
    expect_echo(&mut ws, "valid").await;
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));
}

/// Sleeps until the UNIX clock reads `unix` (bounded: the tests only wait seconds).
async fn sleep_until_unix(unix: u64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock");
    let target = Duration::from_secs(unix);
    assert!(
        target.saturating_sub(now) <= Duration::from_secs(10),
        "the test waits at most 10 s"
    );
    tokio::time::sleep(target.saturating_sub(now) + Duration::from_millis(50)).await;
}

/// The refused upgrade's audit record names the reason, the status and the identity.
async fn expect_audited_refusal(t: &crate::audit::Trail, reason: &str) {
    let records = t
        .wait_for(&format!("the {reason} upgrade record"), |r| {
            r.iter()
                .any(|x| x["event"] == "upgrade" && x["reason"] == reason)
        })
        .await;
    let rec = records
        .iter()
        .find(|x| x["event"] == "upgrade" && x["reason"] == reason)
        .expect("record");
    assert_eq!(rec["allowed"], false, "{rec}");
    assert_eq!(rec["status"], 403, "{rec}");
    assert!(
        rec["identity"]["uris"]
            .as_array()
            .is_some_and(|u| u.iter().any(|x| x == DESK)),
        "{rec}"
    );
}

/// A client certificate valid for ~3 s upgrades on a full handshake; resumed after it expired
/// (no certificate is verified on resumption) the upgrade is refused 403 `client_cert_expired`
/// on the gated path and on an ungated one, counted and audited — as a full handshake with the
/// same certificate is refused at TLS.
#[tokio::test]
async fn a_session_resumed_after_the_client_certificate_expired_is_refused() {
    let ca = ClientCa::new();
    let s = mtls_server(&ca, &ca.crl_until(unix_now() + 24 * 3600));
    let not_after = unix_now() + 3;
    let leaf = ca.leaf_until(0x51, not_after);
    let cfg = client_config(&s.srv, &leaf);
    first_session(&s.srv, &cfg).await;

    sleep_until_unix(not_after + 1).await;
    for target in ["/trade", "/"] {
        let outcome = connect_as(&s.srv, &cfg, HandshakeKind::Resumed, target).await;
        let r = outcome.refused(&format!("{target} resumed after the certificate expired"));
        check_refused(&r, 403, "client_cert_expired", target);
    }
    expect_refusals_counted(&s.srv, "client_cert_expired", 2).await;
    expect_audited_refusal(&s.trail, "client_cert_expired").await;

    // The same certificate on a full handshake: refused by TLS itself.
    let fresh = client_config(&s.srv, &leaf);
    let full = match try_tls_connect(s.srv.addr, fresh).await {
        Err(e) => Err(e.to_string()),
        Ok(tls) => try_attempt_over(tls, &ws_request("/trade", &[]))
            .await
            .map_err(|e| e.to_string()),
    };
    assert!(
        full.is_err(),
        "a full handshake with the expired certificate must fail at TLS"
    );
    s.srv
        .wait_metric(
            "wssedge_handshakes_total",
            &[("result", "failed"), ("reason", "client_cert_expired")],
            3.0,
        )
        .await;
    visible_line(
        "attack_auth: a session resumed after its certificate expired: 403 client_cert_expired",
    );
}

/// The CRL's `nextUpdate` passes between a full handshake and its resumption: the resumed
/// upgrade is refused 403 `crl_expired` (the verifier refuses full handshakes then too).
#[tokio::test]
async fn a_session_resumed_after_the_crl_expired_is_refused() {
    let ca = ClientCa::new();
    let next_update = unix_now() + 4;
    let s = mtls_server(&ca, &ca.crl_until(next_update));
    let leaf = ca.leaf_until(0x52, unix_now() + 24 * 3600);
    let cfg = client_config(&s.srv, &leaf);
    assert!(
        unix_now() < next_update,
        "the server took too long to start; the CRL expired before the first handshake"
    );
    first_session(&s.srv, &cfg).await;

    sleep_until_unix(next_update).await;
    let r = connect_as(&s.srv, &cfg, HandshakeKind::Resumed, "/trade")
        .await
        .refused("resumed after the CRL expired");
    check_refused(&r, 403, "crl_expired", "/trade");
    expect_refusals_counted(&s.srv, "crl_expired", 1).await;
    expect_audited_refusal(&s.trail, "crl_expired").await;
    visible_line("attack_auth: a session resumed after the CRL's nextUpdate: 403 crl_expired");
}

// ---------------------------------------------------------------------------------------------
// Item 8: the replay store across `ctl restart`
// ---------------------------------------------------------------------------------------------

async fn status_pid(socket: &Path) -> Option<u32> {
    let out = ctl(socket, &["status"]).await;
    if out.code != Some(0) {
        return None;
    }
    let v: Value = serde_json::from_str(&out.stdout).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

/// Single-use tokens used on both cores before `ctl restart` are refused 401 `replayed` by the
/// new process; a new token is admitted there once, then refused as replayed too.
#[tokio::test]
async fn single_use_tokens_stay_used_across_ctl_restart() {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) only changes who adopts this process's orphans.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(rc, 0, "PR_SET_CHILD_SUBREAPER");
    let mut c = controlled(2, &[("single_use", "true")], "");
    // One jti per owner core (the server's own sharding function).
    let mut by_owner: [Option<String>; 2] = [None, None];
    for i in 0..1000 {
        let jti = format!("restart-{}-{i}", std::process::id());
        let owner = wssedge::auth::owner_core(&jti, 2);
        by_owner[owner].get_or_insert(jti);
        if by_owner.iter().all(Option::is_some) {
            break;
        }
    }
    let requests: Vec<String> = by_owner
        .iter()
        .map(|j| with_header_token("/", &hs(claims("alice", j.as_deref().expect("jti")))))
        .collect();
    for req in &requests {
        let (_, mut ws) = expect_upgraded(&c.srv, req).await;
        expect_echo(&mut ws, "first use").await;
        expect_refused(&c.srv, req, 401, "replayed").await;
    }

    let old_pid = c.srv.proc.pid();
    let out = ctl(&c.socket, &["restart"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}\n{}", c.srv.proc.stderr());
    let v: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let new_pid = v["new_pid"].as_u64().expect("new_pid") as u32;
    assert_ne!(new_pid, old_pid);
    let _successor = Successor::adopt(new_pid);
    let asked = Instant::now();
    while status_pid(&c.socket).await != Some(new_pid) {
        assert!(
            asked.elapsed() < WAIT,
            "the new process never took the control socket"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Both processes answer on the admin listener they share until the old one exits: the
    // counters below are the new process's only once it is alone.
    assert!(
        c.srv.proc.exited_within(WAIT).await.is_some(),
        "the old process exits after handing over"
    );

    for req in &requests {
        expect_refused(&c.srv, req, 401, "replayed").await;
    }
    // The new process took the entries over (it did not fall back to distrusting old tokens).
    let log = c.srv.proc.stderr();
    assert!(
        log.contains("single-use token ids taken over from the previous process")
            && log.contains(&format!("kept={}", requests.len())),
        "{log}"
    );
    let fresh = with_header_token(
        "/",
        &hs(claims("alice", &format!("after-{}", std::process::id()))),
    );
    expect_upgraded(&c.srv, &fresh).await;
    expect_refused(&c.srv, &fresh, 401, "replayed").await;
    expect_refusals_counted(&c.srv, "replayed", requests.len() as u64 + 1).await;
    visible_line(&format!(
        "attack_auth: {} single-use tokens used before ctl restart: 401 replayed from the new process",
        requests.len()
    ));
    let out = ctl(&c.socket, &["drain"]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
}

// ---------------------------------------------------------------------------------------------
// Item 10: subjects and jtis that could never be revoked
// ---------------------------------------------------------------------------------------------

/// Values no revocation could name exactly: padded with whitespace, holding a control or an
/// invisible character, a look-alike space.
const UNREVOCABLE: &[&str] = &[
    " alice",
    "alice ",
    "alice\t",
    "ali\u{7}ce",
    "alice\n",
    "alice\u{200b}",
    "al\u{202e}ice",
    "alice\u{a0}",
    "\u{feff}alice",
    "",
];

#[tokio::test]
async fn subjects_and_jtis_that_could_not_be_revoked_are_refused_at_verification() {
    let t = trail();
    let c = controlled(1, &[], &t.section(None));
    let mut refused = 0u64;
    for (i, bad) in UNREVOCABLE.iter().enumerate() {
        for claim in ["sub", "jti"] {
            let mut cl = claims("bob", &format!("id-{i}-{}", std::process::id()));
            cl = with(cl, claim, json!(bad));
            let req = with_header_token("/", &hs(cl));
            let r = expect_refused(&c.srv, &req, 401, "identifier_invalid").await;
            assert_eq!(
                header(&r.head, "www-authenticate"),
                Some("Bearer error=\"invalid_token\""),
                "{}",
                r.head
            );
            refused += 1;
        }
        // The control socket refuses the same values, with the same rule's words.
        if !bad.is_empty() {
            for cmd in ["revoke-subject", "revoke-jti"] {
                let out = ctl(&c.socket, &[cmd, bad]).await;
                assert_ne!(out.code, Some(0), "ctl {cmd} {bad:?} accepted: {out:#?}");
                assert!(
                    out.stderr.contains("exact identifier"),
                    "ctl {cmd} {bad:?}: {out:#?}"
                );
            }
        }
    }
    expect_refusals_counted(&c.srv, "identifier_invalid", refused).await;
    t.wait_for("identifier_invalid upgrade records", |r| {
        r.iter()
            .filter(|x| x["event"] == "upgrade" && x["reason"] == "identifier_invalid")
            .count() as u64
            >= refused
    })
    .await;

    // What is admitted can be revoked: a subject with inner spaces, revoked by `ctl`.
    let spaced = "svc account 7";
    let req = with_header_token(
        "/",
        &hs(claims(spaced, &format!("svc-{}", std::process::id()))),
    );
    let (_, mut ws) = expect_upgraded(&c.srv, &req).await;
    expect_echo(&mut ws, "admitted").await;
    let out = ctl(&c.socket, &["revoke-subject", spaced]).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(ws.expect_close().await, Some(1008));
    let again = with_header_token(
        "/",
        &hs(claims(spaced, &format!("svc2-{}", std::process::id()))),
    );
    expect_refused(&c.srv, &again, 401, "revoked").await;
    visible_line(&format!(
        "attack_auth: {refused} tokens whose sub/jti no revocation could name: 401 identifier_invalid"
    ));
}

/// The revocations file follows the same rule: a value with a look-alike space or an invisible
/// character is refused at start, naming the file and the line, instead of being trimmed or
/// kept as something no token can carry.
#[tokio::test]
async fn a_revocations_file_line_no_token_could_match_is_refused_with_its_line() {
    let files = key_files();
    for (n, line) in ["sub alice\u{a0}", "jti j-1\u{200b}"].iter().enumerate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path: PathBuf = dir.path().join("revoked.txt");
        std::fs::write(&path, format!("# revoked\nsub fine\n{line}\n")).expect("write");
        let (status, _, stderr) = ServerBuilder::new()
            .config(&jwt_config(
                &files,
                &[("revocations_file", &toml_path(&path))],
                "",
            ))
            .run_expect_exit();
        assert!(!status.success(), "case {n}: {line:?} accepted:\n{stderr}");
        assert!(
            stderr.contains("revoked.txt")
                && stderr.contains("line 3")
                && stderr.contains("exact identifier"),
            "case {n}: {stderr}"
        );
    }
}
