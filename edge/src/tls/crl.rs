//! Certificate revocation lists: loading (`[tls] crls`), lookups for live sessions, and a
//! watcher that re-reads the files when they change.
//!
//! The same [`CrlSet`] serves two checks:
//! - at the handshake, rustls' WebPKI client verifier gets [`CrlSet::ders`] (through
//!   [`crate::tls::policy::build_server_config`]) and enforces revocation and CRL expiry;
//! - after it, [`CrlSet::is_revoked`] answers for an identity already admitted: sessions that
//!   were live when a new CRL arrived, and resumed sessions (rustls restores the peer
//!   certificates of a resumed session without verifying them again); [`CrlSet::expired_for`]
//!   says whether a CRL of the identity's issuers has passed its `nextUpdate` since (see
//!   [`ClientIdentity::recheck`]).
//!
//! An expired CRL (its `nextUpdate` in the past) is loaded — it still lists what it revoked —
//! but logged as an error naming the file, and the verifier then refuses every certificate
//! the CRL's issuer vouches for until a fresh CRL arrives (fail closed).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateRevocationListDer;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::tls::identity::{serial_hex, ClientIdentity};

/// Why a CRL file was refused. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    #[error("{}: CRL file not found; check `tls.crls`", .path.display())]
    Missing { path: PathBuf },
    #[error("{}: cannot read the CRL: {source}; check its permissions", .path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: malformed PEM ({detail}); expected '-----BEGIN X509 CRL-----' sections, or one DER CRL", .path.display())]
    BadPem { path: PathBuf, detail: String },
    #[error("{}: no CRL in it; expected '-----BEGIN X509 CRL-----' sections, or one DER CRL", .path.display())]
    NoCrl { path: PathBuf },
    #[error("{}: CRL #{index} cannot be parsed: {detail}; re-export it from the CA (PEM or DER)", .path.display())]
    Parse {
        path: PathBuf,
        index: usize,
        detail: String,
    },
    #[error("{}: CRL #{index} has no nextUpdate; the verifier needs one to know when the CRL expires — have the CA issue CRLs with nextUpdate", .path.display())]
    NoNextUpdate { path: PathBuf, index: usize },
}

/// A CRL whose `nextUpdate` has passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredCrl {
    pub path: PathBuf,
    pub issuer: String,
    pub next_update_unix: i64,
    /// `nextUpdate` as a date, for messages.
    pub next_update: String,
}

impl fmt::Display for ExpiredCrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: the CRL of {} expired at {} (its nextUpdate); every client certificate this \
             issuer vouches for is refused until a fresh CRL is installed",
            self.path.display(),
            self.issuer,
            self.next_update
        )
    }
}

#[derive(Debug, Clone)]
struct LoadedCrl {
    path: PathBuf,
    der: CertificateRevocationListDer<'static>,
    issuer: String,
    /// The issuer DN's DER (what certificates are matched on, byte-exact as webpki does).
    issuer_der: Vec<u8>,
    next_update_unix: i64,
    next_update: String,
}

/// What a file looked like when it was read, to notice a rewrite, a replacement (rename over
/// it: new inode) or an in-place edit (size, mtime or ctime change).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        ctime_ns: i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()),
    })
}

/// The configured CRLs, parsed, with an index of revoked serials per issuer.
#[derive(Debug, Clone, Default)]
pub struct CrlSet {
    crls: Vec<LoadedCrl>,
    /// Issuer DN (DER) → revoked serials (hex, as [`ClientIdentity::serial_hex`]).
    revoked: HashMap<Vec<u8>, HashSet<String>>,
    /// The files and their stamps as they were read, for [`CrlWatcher`].
    files: Vec<(PathBuf, Option<FileStamp>)>,
    version: u64,
}

/// Each loaded set gets the next number, so "has the set changed?" is one comparison.
static NEXT_VERSION: AtomicU64 = AtomicU64::new(1);

impl CrlSet {
    /// No CRLs: the verifier checks no revocation, `is_revoked` is always false. Version 0.
    pub fn empty() -> CrlSet {
        CrlSet::default()
    }

    /// Reads every file (PEM with one or more `X509 CRL` sections, or one DER CRL). Errors
    /// name the file; expired CRLs are loaded and logged (see the module).
    pub fn load(paths: &[PathBuf]) -> Result<CrlSet, CrlError> {
        let mut set = CrlSet {
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            ..CrlSet::default()
        };
        for path in paths {
            // Stamp before reading: a change racing the read is seen again on the next poll.
            set.files.push((path.clone(), stamp(path)));
            let bytes = std::fs::read(path).map_err(|source| match source.kind() {
                std::io::ErrorKind::NotFound => CrlError::Missing { path: path.clone() },
                _ => CrlError::Unreadable {
                    path: path.clone(),
                    source,
                },
            })?;
            for (index, der) in split_crls(path, &bytes)?.into_iter().enumerate() {
                set.add(path, index, der)?;
            }
        }
        let now = SystemTime::now();
        for e in set.expired_at(now) {
            tracing::error!("{e}");
        }
        Ok(set)
    }

    /// A set from DER CRLs already in memory (tests, benches); `name` stands in for a path.
    pub fn from_ders(
        name: &str,
        ders: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<CrlSet, CrlError> {
        let mut set = CrlSet {
            version: NEXT_VERSION.fetch_add(1, Ordering::Relaxed),
            ..CrlSet::default()
        };
        for (index, der) in ders.into_iter().enumerate() {
            set.add(Path::new(name), index, der)?;
        }
        Ok(set)
    }

    fn add(
        &mut self,
        path: &Path,
        index: usize,
        der: CertificateRevocationListDer<'static>,
    ) -> Result<(), CrlError> {
        let parse_err = |detail: String| CrlError::Parse {
            path: path.to_owned(),
            index,
            detail,
        };
        let crl = match CertificateRevocationList::from_der(der.as_ref()) {
            Ok(([], crl)) => crl,
            Ok(_) => return Err(parse_err("trailing bytes after the CRL".into())),
            Err(e) => return Err(parse_err(e.to_string())),
        };
        let next_update = crl.next_update().ok_or_else(|| CrlError::NoNextUpdate {
            path: path.to_owned(),
            index,
        })?;
        // x509-parser is more lenient than webpki; a CRL only webpki refuses would fail the
        // verifier's build later with no file name, so ask webpki now.
        webpki_accepts(&der).map_err(|e| parse_err(format!("the TLS verifier refuses it: {e}")))?;
        let serials = self
            .revoked
            .entry(crl.issuer().as_raw().to_vec())
            .or_default();
        for r in crl.iter_revoked_certificates() {
            serials.insert(serial_hex(r.raw_serial()));
        }
        self.crls.push(LoadedCrl {
            path: path.to_owned(),
            issuer: crl.issuer().to_string(),
            issuer_der: crl.issuer().as_raw().to_vec(),
            next_update_unix: next_update.timestamp(),
            next_update: next_update.to_string(),
            der,
        });
        Ok(())
    }

    /// Changes with every load: compare to know whether live sessions need a re-check.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_empty(&self) -> bool {
        self.crls.is_empty()
    }

    /// The number of CRLs (a file may hold several).
    pub fn len(&self) -> usize {
        self.crls.len()
    }

    /// The files the set was read from.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// The CRLs for rustls' verifier.
    pub fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.crls.iter().map(|c| c.der.clone()).collect()
    }

    /// The serials (hex) the CRLs of `issuer_der` (an issuer DN's DER) revoke.
    pub fn revoked_serials(&self, issuer_der: &[u8]) -> impl Iterator<Item = &str> {
        self.revoked
            .get(issuer_der)
            .into_iter()
            .flatten()
            .map(String::as_str)
    }

    /// Whether some CRL of the set is issued by `issuer_der` (a DN's DER).
    pub fn has_issuer(&self, issuer_der: &[u8]) -> bool {
        self.revoked.contains_key(issuer_der)
    }

    /// Whether the certificate `serial_hex` of `issuer_der` (an issuer DN's DER) is revoked —
    /// for a caller that keeps only the leaf's two fields ([`ClientIdentity::issuer_der`],
    /// [`ClientIdentity::serial_hex`]) with a live session.
    pub fn is_revoked_cert(&self, issuer_der: &[u8], serial_hex: &str) -> bool {
        self.revoked
            .get(issuer_der)
            .is_some_and(|set| set.contains(serial_hex))
    }

    /// Whether the identity's leaf, or an intermediate of its chain, is on a CRL of its issuer.
    /// A hash lookup per certificate: cheap enough to run on every upgrade and over every live
    /// session when a new set arrives.
    pub fn is_revoked(&self, identity: &ClientIdentity) -> bool {
        identity
            .cert_refs()
            .any(|(issuer, serial)| self.is_revoked_cert(issuer, serial))
    }

    /// Whether the CRL a verifier consults for an issuer on the identity's verified path (the
    /// leaf's, an intermediate's) is past its `nextUpdate` at `now_unix`: the verifier refuses
    /// a full handshake then (`crl_expired`, fail closed), and a resumed session must not get
    /// further. Per issuer, the first CRL of the set counts, as webpki takes the first
    /// authoritative one in the order the set gives them (so an old CRL loaded behind its
    /// replacement during a rotation refuses nothing).
    pub fn expired_for(&self, identity: &ClientIdentity, now_unix: i64) -> bool {
        identity.path_issuers(now_unix).into_iter().any(|issuer| {
            self.crls
                .iter()
                .find(|c| c.issuer_der.as_slice() == issuer)
                .is_some_and(|c| c.next_update_unix <= now_unix)
        })
    }

    /// The CRLs whose `nextUpdate` is at or before `now`.
    pub fn expired_at(&self, now: SystemTime) -> Vec<ExpiredCrl> {
        let now = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.crls
            .iter()
            .filter(|c| c.next_update_unix <= now)
            .map(|c| ExpiredCrl {
                path: c.path.clone(),
                issuer: c.issuer.clone(),
                next_update_unix: c.next_update_unix,
                next_update: c.next_update.clone(),
            })
            .collect()
    }

    /// Same CRLs, byte for byte (a `touch` is no change).
    fn same_content(&self, other: &CrlSet) -> bool {
        self.crls.len() == other.crls.len()
            && self
                .crls
                .iter()
                .zip(&other.crls)
                .all(|(a, b)| a.der.as_ref() == b.der.as_ref())
    }
}

/// PEM (one or more `X509 CRL` sections) or a single DER CRL.
fn split_crls(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, CrlError> {
    let looks_pem = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'-');
    if !looks_pem {
        if bytes.is_empty() {
            return Err(CrlError::NoCrl {
                path: path.to_owned(),
            });
        }
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    let crls = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CrlError::BadPem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(CrlError::NoCrl {
            path: path.to_owned(),
        });
    }
    Ok(crls)
}

/// Whether rustls' verifier would accept the CRL. rustls only parses CRLs when a verifier is
/// built, and that needs a trust anchor: a placeholder anchor is enough, it is never used.
fn webpki_accepts(
    der: &CertificateRevocationListDer<'static>,
) -> Result<(), rustls::server::VerifierBuilderError> {
    use rustls::pki_types::{Der, TrustAnchor};
    let roots = rustls::RootCertStore {
        roots: vec![TrustAnchor {
            subject: Der::from_slice(&[]),
            subject_public_key_info: Der::from_slice(&[]),
            name_constraints: None,
        }],
    };
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
    )
    .with_crls([der.clone()])
    .build()
    .map(drop)
}

// ---------------------------------------------------------------------------------------------
// Watching

/// How often the watcher looks at the files: a few stats, four times a second, so a session
/// whose certificate a new CRL revokes closes well within a second of the file changing.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A thread that re-reads the CRL files when they change and hands the new set to a callback.
/// Dropping it stops the thread (within one poll interval at most; usually at once).
#[derive(Debug)]
pub struct CrlWatcher {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl CrlWatcher {
    /// Watches the files of the set in force (`in_force` says which it is), starting from
    /// their state when they were read (so a change between the load and this call is not
    /// missed). Every [`POLL_INTERVAL`] it stats each file (inode, size, mtime, ctime); on a
    /// change it re-reads all of them and calls `on_change` with the new set — unless the
    /// content is byte-identical (a `touch`). On a read or parse error it calls `on_change`
    /// with the error once (the caller keeps the set in force, and says so); the next change
    /// to the files is tried again.
    ///
    /// A set put in force by someone else (a reload, which may name other files or none)
    /// becomes the one watched from then on. `on_change` also gets the version of the set in
    /// force the new one was read for: it must not replace another that came meanwhile.
    pub fn spawn(
        in_force: impl Fn() -> Arc<CrlSet> + Send + 'static,
        on_change: impl Fn(Result<CrlSet, CrlError>, u64) + Send + 'static,
    ) -> std::io::Result<CrlWatcher> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("crl-watcher".into())
            .spawn(move || watch(in_force, stopped, on_change))?;
        Ok(CrlWatcher {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// A panicking callback must not end the watching silently.
fn call_guarded(
    on_change: &impl Fn(Result<CrlSet, CrlError>, u64),
    loaded: Result<CrlSet, CrlError>,
    based_on: u64,
) {
    let call = std::panic::AssertUnwindSafe(|| on_change(loaded, based_on));
    if std::panic::catch_unwind(call).is_err() {
        tracing::error!("the CRL change callback panicked; still watching");
    }
}

impl Drop for CrlWatcher {
    fn drop(&mut self) {
        // Closing the channel wakes the thread out of its wait.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(
    in_force: impl Fn() -> Arc<CrlSet>,
    stopped: mpsc::Receiver<()>,
    on_change: impl Fn(Result<CrlSet, CrlError>, u64),
) {
    let mut last = CrlSet::clone(&in_force());
    // The version last seen in force: a change that is not the watcher's own set is a reload's.
    let mut seen_in_force = last.version();
    let mut files = last.files.clone();
    let mut paths: Vec<PathBuf> = files.iter().map(|(p, _)| p.clone()).collect();
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(POLL_INTERVAL) {
        let current = in_force();
        if current.version() != seen_in_force {
            seen_in_force = current.version();
            if current.version() != last.version() {
                last = CrlSet::clone(&current);
                files = last.files.clone();
                paths = files.iter().map(|(p, _)| p.clone()).collect();
                tracing::info!(
                    files = paths.len(),
                    "CRL watcher: following the reloaded set"
                );
                continue;
            }
        }
        let now: Vec<Option<FileStamp>> = paths.iter().map(|p| stamp(p)).collect();
        if files.iter().zip(&now).all(|((_, old), new)| old == new) {
            continue;
        }
        match CrlSet::load(&paths) {
            Ok(set) => {
                files = set.files.clone();
                if set.same_content(&last) {
                    continue;
                }
                tracing::info!(
                    crls = set.len(),
                    version = set.version(),
                    "CRLs changed; re-read"
                );
                last = set.clone();
                call_guarded(&on_change, Ok(set), seen_in_force);
            }
            Err(e) => {
                // Remember this state so one broken file is reported once, not every second;
                // the next write to any file is tried again. The callback refuses it (the
                // set in force stays), logs, counts and audits it.
                for ((_, old), new) in files.iter_mut().zip(now) {
                    *old = new;
                }
                tracing::warn!(
                    "CRL files changed but do not load; keeping version {}",
                    last.version()
                );
                call_guarded(&on_change, Err(e), seen_in_force);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testpki::{ClientSpec, TestPki};
    use std::sync::Mutex;
    use std::time::Instant;

    #[test]
    fn loads_pem_and_der_and_answers_is_revoked() {
        let pki = TestPki::new();
        let good = pki.client(ClientSpec {
            serial: 0x10,
            ..ClientSpec::default()
        });
        let bad = pki.client(ClientSpec {
            serial: 0x0bad,
            ..ClientSpec::default()
        });
        let good_id = ClientIdentity::from_chain(&good.chain).unwrap();
        let bad_id = ClientIdentity::from_chain(&bad.chain).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.crl.pem");
        let der = dir.path().join("ca.crl");
        std::fs::write(&pem, pki.crl(&[0x0bad], false).pem().unwrap()).unwrap();
        std::fs::write(&der, pki.crl(&[], false).der().as_ref()).unwrap();

        let set = CrlSet::load(std::slice::from_ref(&pem)).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.is_revoked(&bad_id));
        assert!(!set.is_revoked(&good_id));
        assert_eq!(
            set.revoked_serials(&bad_id.issuer_der).collect::<Vec<_>>(),
            vec!["0bad"]
        );
        assert!(set.expired_at(SystemTime::now()).is_empty());

        let der_only = CrlSet::load(std::slice::from_ref(&der)).unwrap();
        assert_eq!(der_only.len(), 1);
        assert!(!der_only.is_revoked(&bad_id));
        assert!(der_only.version() > set.version());

        // Another issuer's CRL listing the same serial doesn't revoke our certificate.
        let other = TestPki::new_named("another CA");
        let foreign =
            CrlSet::from_ders("mem", vec![other.crl(&[0x0bad], false).der().clone()]).unwrap();
        assert!(!foreign.is_revoked(&bad_id));
        assert!(!CrlSet::empty().is_revoked(&bad_id));
        assert_eq!(CrlSet::empty().version(), 0);
    }

    #[test]
    fn a_revoked_intermediate_revokes_the_identity() {
        let pki = TestPki::new();
        let inter = pki.intermediate(0x77);
        let leaf = inter.client(ClientSpec::default());
        let id = ClientIdentity::from_chain(&leaf.chain).unwrap();
        assert_eq!(id.intermediates.len(), 1);
        let set = CrlSet::from_ders("mem", vec![pki.crl(&[0x77], false).der().clone()]).unwrap();
        assert!(set.is_revoked(&id));
    }

    #[test]
    fn errors_name_the_file_and_expired_crls_are_reported() {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.crl");
        let e = CrlSet::load(std::slice::from_ref(&missing)).unwrap_err();
        assert!(matches!(e, CrlError::Missing { .. }) && e.to_string().contains("missing.crl"));

        let garbage = dir.path().join("garbage.crl");
        std::fs::write(&garbage, b"\x30\x03\x01\x01\xff trailing").unwrap();
        let e = CrlSet::load(std::slice::from_ref(&garbage)).unwrap_err();
        assert!(
            matches!(e, CrlError::Parse { .. }) && e.to_string().contains("garbage.crl"),
            "{e}"
        );

        let text = dir.path().join("text.pem");
        std::fs::write(
            &text,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = CrlSet::load(std::slice::from_ref(&text)).unwrap_err();
        assert!(
            matches!(e, CrlError::NoCrl { .. }) && e.to_string().contains("text.pem"),
            "{e}"
        );

        let empty = dir.path().join("empty.crl");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            CrlSet::load(std::slice::from_ref(&empty)),
            Err(CrlError::NoCrl { .. })
        ));

        let expired = dir.path().join("expired.crl.pem");
        std::fs::write(&expired, pki.crl(&[], true).pem().unwrap()).unwrap();
        let set = CrlSet::load(std::slice::from_ref(&expired)).unwrap();
        let e = set.expired_at(SystemTime::now());
        assert_eq!(e.len(), 1);
        let msg = e[0].to_string();
        assert!(
            msg.contains("expired.crl.pem") && msg.contains("expired") && msg.contains("test CA"),
            "{msg}"
        );
    }

    /// What a watcher reported: the sets it read, and the errors of files that did not load.
    type Reported = (Arc<Mutex<Vec<CrlSet>>>, Arc<Mutex<Vec<String>>>);

    /// A watcher whose set in force stays `initial` (nothing installs what it finds), and what
    /// it reported.
    fn watch_fixed(initial: CrlSet) -> (CrlWatcher, Reported) {
        let seen = Arc::new(Mutex::new(Vec::<CrlSet>::new()));
        let errors = Arc::new(Mutex::new(Vec::<String>::new()));
        let (sink, error_sink) = (seen.clone(), errors.clone());
        let fixed = Arc::new(initial);
        let watcher = CrlWatcher::spawn(
            move || fixed.clone(),
            move |set, _| match set {
                Ok(set) => sink.lock().unwrap().push(set),
                Err(e) => error_sink.lock().unwrap().push(e.to_string()),
            },
        )
        .unwrap();
        (watcher, (seen, errors))
    }

    fn identity_with_serial(pki: &TestPki, serial: u64) -> ClientIdentity {
        let client = pki.client(ClientSpec {
            serial,
            ..ClientSpec::default()
        });
        ClientIdentity::from_chain(&client.chain).unwrap()
    }

    fn wait_for(seen: &Mutex<Vec<CrlSet>>, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if seen.lock().unwrap().len() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    #[test]
    fn watcher_notices_a_rewrite_and_keeps_the_old_set_on_a_broken_file() {
        let pki = TestPki::new();
        let id = identity_with_serial(&pki, 0x42);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crl.pem");
        std::fs::write(&path, pki.crl(&[], false).pem().unwrap()).unwrap();
        let initial = CrlSet::load(std::slice::from_ref(&path)).unwrap();
        assert!(!initial.is_revoked(&id));

        let (watcher, (seen, errors)) = watch_fixed(initial.clone());

        // Replaced atomically (write + rename: a new inode), as CRL publishers do.
        let tmp = dir.path().join("ca.crl.pem.tmp");
        std::fs::write(&tmp, pki.crl(&[0x42], false).pem().unwrap()).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert!(
            wait_for(&seen, 1, Duration::from_millis(2500)),
            "the rewrite was noticed within ~2 s"
        );
        {
            let got = seen.lock().unwrap();
            assert!(got[0].is_revoked(&id));
            assert!(got[0].version() > initial.version());
        }

        // A broken file: reported once as an error (the caller keeps the old set), no new set.
        // Then a good file again.
        std::fs::write(&path, "-----BEGIN X509 CRL-----\nnot base64!\n").unwrap();
        assert!(!wait_for(&seen, 2, Duration::from_millis(2500)));
        {
            let errors = errors.lock().unwrap();
            assert_eq!(errors.len(), 1, "reported once, not every poll: {errors:?}");
            assert!(errors[0].contains("ca.crl.pem"), "{errors:?}");
        }
        std::fs::write(&path, pki.crl(&[0x42, 0x43], false).pem().unwrap()).unwrap();
        assert!(wait_for(&seen, 2, Duration::from_millis(2500)));
        assert_eq!(
            seen.lock().unwrap()[1]
                .revoked_serials(&id.issuer_der)
                .count(),
            2
        );

        // Dropping the watcher stops its thread promptly.
        let t = Instant::now();
        drop(watcher);
        assert!(t.elapsed() < Duration::from_millis(500));
    }

    #[test]
    fn watcher_ignores_a_touch() {
        let pki = TestPki::new();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.crl.pem");
        let pem = pki.crl(&[1], false).pem().unwrap();
        std::fs::write(&path, &pem).unwrap();
        let initial = CrlSet::load(std::slice::from_ref(&path)).unwrap();
        let (_watcher, (seen, errors)) = watch_fixed(initial);
        std::thread::sleep(Duration::from_millis(50));
        std::fs::write(&path, &pem).unwrap();
        assert!(!wait_for(&seen, 1, Duration::from_millis(2200)));
        assert!(errors.lock().unwrap().is_empty());
    }

    /// A reload that names another file (or adds CRLs where there were none) moves the watch
    /// to it; the watcher's own sets put in force do not restart it, and the old file is left.
    #[test]
    fn watcher_follows_a_reloaded_set_to_its_files() {
        let pki = TestPki::new();
        let id = identity_with_serial(&pki, 0x42);
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (
            dir.path().join("old.crl.pem"),
            dir.path().join("new.crl.pem"),
        );
        std::fs::write(&old, pki.crl(&[], false).pem().unwrap()).unwrap();
        std::fs::write(&new, pki.crl(&[], false).pem().unwrap()).unwrap();
        // As the server wires it: the callback puts the set in force.
        let in_force = Arc::new(arc_swap::ArcSwap::from_pointee(CrlSet::empty()));
        let seen = Arc::new(Mutex::new(Vec::<CrlSet>::new()));
        let (reader, writer, sink) = (in_force.clone(), in_force.clone(), seen.clone());
        let _watcher = CrlWatcher::spawn(
            move || reader.load_full(),
            move |set, _| {
                let set = set.expect("every file the test writes loads");
                sink.lock().unwrap().push(set.clone());
                writer.store(Arc::new(set));
            },
        )
        .unwrap();

        // No CRLs at start; a reload brings `old`, then its change is noticed.
        in_force.store(Arc::new(CrlSet::load(std::slice::from_ref(&old)).unwrap()));
        std::thread::sleep(POLL_INTERVAL * 2);
        std::fs::write(&old, pki.crl(&[0x42], false).pem().unwrap()).unwrap();
        assert!(
            wait_for(&seen, 1, Duration::from_millis(2500)),
            "old watched"
        );
        assert!(in_force.load().is_revoked(&id));

        // A reload moves to `new`: changes there count, changes to `old` no longer do.
        in_force.store(Arc::new(CrlSet::load(std::slice::from_ref(&new)).unwrap()));
        std::thread::sleep(POLL_INTERVAL * 2);
        std::fs::write(&old, pki.crl(&[0x42, 0x43], false).pem().unwrap()).unwrap();
        assert!(
            !wait_for(&seen, 2, Duration::from_millis(1000)),
            "the old file is not watched any more"
        );
        std::fs::write(&new, pki.crl(&[0x42], false).pem().unwrap()).unwrap();
        assert!(
            wait_for(&seen, 2, Duration::from_millis(2500)),
            "new watched"
        );
        assert!(in_force.load().is_revoked(&id));
        assert_eq!(in_force.load().files.len(), 1);
        assert_eq!(in_force.load().files[0].0, new);
    }
}
