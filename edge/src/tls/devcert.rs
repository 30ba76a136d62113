//! The development certificate: a local CA and a `localhost` leaf it signs.
//!
//! [`ensure_dev_cert`] creates them once in a state directory and reuses them afterwards, so a
//! client told to trust `dev-ca.pem` keeps working across restarts. The leaf is re-issued from
//! the same CA when it is unreadable, no longer chains to the CA, or expires within a day.
//!
//! Files (keys are created with mode 0600 from the start; every file is written atomically):
//! - `dev-ca.pem`, `dev-ca.key`: the CA ("wssedge development CA"),
//! - `dev-leaf.pem` (leaf, then CA), `dev-leaf.key`: what the server presents.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use super::policy::{load_cert_chain, load_private_key};

/// The CA certificate clients are told to trust.
pub const CA_CERT_FILE: &str = "dev-ca.pem";
/// The CA's private key.
pub const CA_KEY_FILE: &str = "dev-ca.key";
/// The leaf certificate, followed by the CA certificate.
pub const LEAF_CERT_FILE: &str = "dev-leaf.pem";
/// The leaf's private key.
pub const LEAF_KEY_FILE: &str = "dev-leaf.key";
/// The CA's common name.
pub const CA_COMMON_NAME: &str = "wssedge development CA";
/// The names the leaf is valid for.
pub const LEAF_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

const DAY: Duration = Duration::from_secs(24 * 3600);
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// A leaf that expires sooner than this is re-issued.
const RENEW_BEFORE: Duration = DAY;
/// Tolerated clock skew between this host and its clients.
const BACKDATE: Duration = Duration::from_secs(3600);

/// The development certificate chain and key, ready for [`crate::tls::server_config`].
#[derive(Debug)]
pub struct DevCert {
    /// Where the CA certificate is: point clients at it.
    pub ca_pem_path: PathBuf,
    /// The leaf, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key (PKCS#8).
    pub key: PrivateKeyDer<'static>,
}

/// Why the development certificate could not be provided.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// A file or directory operation failed.
    #[error("{}: {source}; check that the state directory is writable by this user", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// rcgen refused to generate a key or certificate.
    #[error("generating the development certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The existing CA cannot be used; it is never replaced silently because clients trust it.
    #[error("{}: the development CA is unusable ({detail}); delete {CA_CERT_FILE} and {CA_KEY_FILE} in that directory to create a new CA (clients must then trust the new {CA_CERT_FILE})", .dir.display())]
    UnusableCa { dir: PathBuf, detail: String },
}

/// Why a client trusting only the development CA would refuse its leaf.
#[derive(Debug, thiserror::Error)]
enum LeafCheckError {
    #[error("CA certificate: {0}")]
    Ca(#[source] rustls::Error),
    #[error(transparent)]
    Verifier(#[from] rustls::client::VerifierBuilderError),
    #[error(transparent)]
    Name(#[from] rustls::pki_types::InvalidDnsNameError),
    #[error("leaf for {name}: {source}")]
    Leaf {
        name: &'static str,
        source: rustls::Error,
    },
}

/// Creates (first run) or reuses (later runs) the development CA and leaf in `state_dir`.
pub fn ensure_dev_cert(state_dir: &Path) -> Result<DevCert, DevCertError> {
    ensure_dev_cert_at(state_dir, SystemTime::now())
}

/// [`ensure_dev_cert`] with an explicit "now" (tests move the clock).
fn ensure_dev_cert_at(dir: &Path, now: SystemTime) -> Result<DevCert, DevCertError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| DevCertError::Io {
            path: dir.to_owned(),
            source,
        })?;
    let ca_pem_path = dir.join(CA_CERT_FILE);
    let (ca_der, ca_key) = load_or_create_ca(dir, now)?;

    if let Some((chain, key)) = usable_leaf(dir, &ca_der, now) {
        return Ok(DevCert {
            ca_pem_path,
            chain,
            key,
        });
    }

    // (Re-)issue the leaf from the existing CA.
    tracing::info!(dir = %dir.display(), "issuing a new development leaf certificate");
    let issuer = Issuer::new(ca_params(now), ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params(now)?.signed_by(&leaf_key, &issuer)?;
    let chain = vec![leaf.der().clone(), ca_der.clone()];
    if let Err(why) = verify_leaf(&chain, &ca_der, now) {
        return Err(DevCertError::UnusableCa {
            dir: dir.to_owned(),
            detail: why.to_string(),
        });
    }
    write_atomic(
        &dir.join(LEAF_KEY_FILE),
        leaf_key.serialize_pem().as_bytes(),
        0o600,
    )?;
    let mut pem = leaf.pem();
    pem.push_str(&pem_cert(&ca_der));
    write_atomic(&dir.join(LEAF_CERT_FILE), pem.as_bytes(), 0o644)?;
    let key = PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    Ok(DevCert {
        ca_pem_path,
        chain,
        key,
    })
}

/// Sets `not_before` (backdated for clock skew) and `not_after` relative to `now`.
fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    params.not_before = epoch + since.saturating_sub(BACKDATE);
    params.not_after = epoch + since + validity;
}

fn ca_params(now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, CA_COMMON_NAME);
    params
        .distinguished_name
        .push(DnType::OrganizationName, "wssedge");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    // Whoever trusts this CA (a developer's browser, say) trusts it for loopback names only:
    // a leaked dev-ca.key cannot mint a certificate for any real site.
    params.name_constraints = Some(rcgen::NameConstraints {
        permitted_subtrees: vec![
            rcgen::GeneralSubtree::DnsName("localhost".into()),
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V4([127, 0, 0, 1], [255; 4])),
            rcgen::GeneralSubtree::IpAddress(rcgen::CidrSubnet::V6(
                std::net::Ipv6Addr::LOCALHOST.octets(),
                [255; 16],
            )),
        ],
        excluded_subtrees: Vec::new(),
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, now, CA_VALIDITY);
    params
}

fn leaf_params(now: SystemTime) -> Result<CertificateParams, rcgen::Error> {
    let mut params =
        CertificateParams::new(LEAF_NAMES.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, LEAF_VALIDITY);
    Ok(params)
}

/// Loads the CA (certificate and key), or creates it when `dev-ca.pem` does not exist yet.
fn load_or_create_ca(
    dir: &Path,
    now: SystemTime,
) -> Result<(CertificateDer<'static>, KeyPair), DevCertError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    let unusable = |detail: String| DevCertError::UnusableCa {
        dir: dir.to_owned(),
        detail,
    };
    match std::fs::symlink_metadata(&cert_path) {
        Ok(_) => {
            let chain = load_cert_chain(&cert_path).map_err(|e| unusable(e.to_string()))?;
            let key_pem = std::fs::read_to_string(&key_path)
                .map_err(|e| unusable(format!("{}: {e}", key_path.display())))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|e| {
                unusable(format!(
                    "{}: not a usable private key: {e}",
                    key_path.display()
                ))
            })?;
            let ca = chain
                .into_iter()
                .next()
                .ok_or_else(|| unusable("no certificate".into()))?;
            Ok((ca, key))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The key is written first: a crash in between leaves a key without a certificate,
            // which no client can trust yet, so it is simply replaced on the next run.
            tracing::info!(dir = %dir.display(), "creating the wssedge development CA");
            let key = KeyPair::generate()?;
            let cert = ca_params(now).self_signed(&key)?;
            write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
            write_atomic(&cert_path, cert.pem().as_bytes(), 0o644)?;
            Ok((cert.der().clone(), key))
        }
        Err(source) => Err(DevCertError::Io {
            path: cert_path,
            source,
        }),
    }
}

/// The existing leaf and key, if they are readable, belong together, chain to `ca` and stay
/// valid for at least [`RENEW_BEFORE`].
fn usable_leaf(
    dir: &Path,
    ca: &CertificateDer<'static>,
    now: SystemTime,
) -> Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = load_cert_chain(&dir.join(LEAF_CERT_FILE)).ok()?;
    let key = load_private_key(&dir.join(LEAF_KEY_FILE)).ok()?;
    if chain.len() != 2 || chain[1] != *ca {
        return None;
    }
    if let Err(why) = verify_leaf(&chain, ca, now + RENEW_BEFORE) {
        tracing::info!(%why, "the development leaf certificate must be re-issued");
        return None;
    }
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).ok()?;
    Some((chain, key))
}

/// Verifies `chain` (leaf first) for every name in [`LEAF_NAMES`] as a client trusting only
/// `ca` would, at time `at`.
fn verify_leaf(
    chain: &[CertificateDer<'static>],
    ca: &CertificateDer<'static>,
    at: SystemTime,
) -> Result<(), LeafCheckError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).map_err(LeafCheckError::Ca)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()?;
    let at = UnixTime::since_unix_epoch(at.duration_since(UNIX_EPOCH).unwrap_or_default());
    for name in LEAF_NAMES {
        let server_name = ServerName::try_from(name)?;
        verifier
            .verify_server_cert(&chain[0], &chain[1..], &server_name, &[], at)
            .map_err(|source| LeafCheckError::Leaf { name, source })?;
    }
    Ok(())
}

/// PEM text of one DER certificate.
fn pem_cert(der: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).unwrap_or_default());
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// Writes `bytes` to `path` atomically: a temporary file created with `mode` (so a key is
/// never readable by others, not even briefly), synced, then renamed over `path`.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), DevCertError> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevCertError + '_ {
        move |source| DevCertError::Io {
            path: path.to_owned(),
            source,
        }
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&tmp)(e)),
        _ => {}
    }
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn first_run_creates_the_files_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state/nested");
        let dev = ensure_dev_cert(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
        assert_eq!(mode(&dir.join(LEAF_KEY_FILE)), 0o600);
        assert!(dir.join(CA_CERT_FILE).is_file() && dir.join(LEAF_CERT_FILE).is_file());
        assert_eq!(dev.ca_pem_path, dir.join(CA_CERT_FILE));
        let ca = load_cert_chain(&dev.ca_pem_path).unwrap();
        assert_eq!(ca.len(), 1);
        let leaf_file = load_cert_chain(&dir.join(LEAF_CERT_FILE)).unwrap();
        assert_eq!(
            leaf_file, dev.chain,
            "dev-leaf.pem holds the leaf then the CA"
        );
        assert_eq!(dev.chain.len(), 2);
        assert_eq!(dev.chain[1], ca[0]);
        assert_eq!(load_private_key(&dir.join(LEAF_KEY_FILE)).unwrap(), dev.key);
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn later_runs_reuse_the_ca_and_the_leaf() {
        let tmp = tempfile::tempdir().unwrap();
        let first = ensure_dev_cert(tmp.path()).unwrap();
        let ca_pem = std::fs::read(tmp.path().join(CA_CERT_FILE)).unwrap();
        let ca_key = std::fs::read(tmp.path().join(CA_KEY_FILE)).unwrap();
        let second = ensure_dev_cert(tmp.path()).unwrap();
        assert_eq!(
            std::fs::read(tmp.path().join(CA_CERT_FILE)).unwrap(),
            ca_pem
        );
        assert_eq!(std::fs::read(tmp.path().join(CA_KEY_FILE)).unwrap(), ca_key);
        assert_eq!(first.chain, second.chain);
        assert_eq!(first.key, second.key);
    }

    #[test]
    fn an_unreadable_or_expiring_leaf_is_reissued_from_the_same_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let first = ensure_dev_cert_at(tmp.path(), now).unwrap();

        std::fs::write(tmp.path().join(LEAF_CERT_FILE), "garbage").unwrap();
        let second = ensure_dev_cert_at(tmp.path(), now).unwrap();
        assert_ne!(second.chain[0], first.chain[0], "a new leaf");
        assert_eq!(second.chain[1], first.chain[1], "the same CA");
        assert_eq!(mode(&tmp.path().join(LEAF_KEY_FILE)), 0o600);

        // Still valid for a while: kept.
        let later = now + LEAF_VALIDITY - 3 * DAY;
        assert_eq!(
            ensure_dev_cert_at(tmp.path(), later).unwrap().chain,
            second.chain
        );
        // Expires within a day: re-issued, and the new one verifies at that time.
        let near_expiry = now + LEAF_VALIDITY - DAY / 2;
        let third = ensure_dev_cert_at(tmp.path(), near_expiry).unwrap();
        assert_ne!(third.chain[0], second.chain[0]);
        assert_eq!(third.chain[1], first.chain[1]);
        verify_leaf(&third.chain, &third.chain[1], near_expiry + DAY).unwrap();
        assert!(verify_leaf(&second.chain, &second.chain[1], near_expiry + DAY).is_err());
    }

    #[test]
    fn a_ca_without_its_key_is_refused_not_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        ensure_dev_cert(tmp.path()).unwrap();
        std::fs::remove_file(tmp.path().join(CA_KEY_FILE)).unwrap();
        std::fs::remove_file(tmp.path().join(LEAF_CERT_FILE)).unwrap();
        let err = ensure_dev_cert(tmp.path()).unwrap_err();
        assert!(matches!(err, DevCertError::UnusableCa { .. }), "{err}");
        assert!(
            err.to_string().contains("delete dev-ca.pem and dev-ca.key"),
            "{err}"
        );
    }

    #[test]
    fn a_client_trusting_dev_ca_pem_verifies_the_leaf() {
        let tmp = tempfile::tempdir().unwrap();
        let dev = ensure_dev_cert(tmp.path()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for ca in load_cert_chain(&dev.ca_pem_path).unwrap() {
            roots.add(ca).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        let now = UnixTime::now();
        for name in ["localhost", "127.0.0.1", "::1"] {
            let name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&dev.chain[0], &dev.chain[1..], &name, &[], now)
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
        }
        let other = ServerName::try_from("example.com").unwrap();
        assert!(verifier
            .verify_server_cert(&dev.chain[0], &dev.chain[1..], &other, &[], now)
            .is_err());
        // The CA itself is not accepted as a server certificate.
        let localhost = ServerName::try_from("localhost").unwrap();
        assert!(verifier
            .verify_server_cert(&dev.chain[1], &[], &localhost, &[], now)
            .is_err());
        // And the pair makes a working server configuration.
        crate::tls::server_config(dev.chain.clone(), dev.key.clone_key()).unwrap();
    }
}
