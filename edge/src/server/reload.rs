//! Reload (SIGHUP, `wssedge ctl reload`): the whole `--config` file and every certificate are
//! read again and applied where they can change while serving.
//!
//! Everything is read, validated and built first — the file, the default certificate and key,
//! every `[[tls.certs]]` chain, the CRLs, the revocations file, the per-IP rules — and only then
//! applied, so a bad file (parse error, unreadable key, a key that does not match its
//! certificate) changes nothing: the reason is returned (and logged, and audited) and the
//! running configuration keeps serving. Applied live:
//! - the TLS config (`[tls]` except kTLS, certificates, SNI chains, client auth, CRLs): new
//!   handshakes use it at once; live connections keep the config they started with;
//! - per-IP limits (`per_ip_connections`, `ip_overrides`);
//! - the JWT revocations file.
//!
//! Everything else is fixed when the edge starts (listeners, cores, admin, the other limits,
//! Origin and JWT rules, the audit trail, kTLS): a changed value there is reported as
//! "needs restart" (`wssedge ctl restart` hands over to a process that reads it), never
//! silently ignored.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

use crate::audit::{AuditEvent, AuditHandle};
use crate::auth::revocation::{RevocationError, Revocations};
use crate::config::{Config, ConfigError, Limits};
use crate::tls::crl::{CrlError, CrlSet};
use crate::tls::devcert::DevCertError;
use crate::tls::policy::{self, TlsConfigError};

use super::tls_state::{Material, TlsState};
use crate::auth::admission::Admission;
use crate::limits::ip_limit::{IpLimitError, IpLimiter};

/// The default certificate chain and key a config names (`[tls] cert/key` or the flags), or
/// the development certificate in `state_dir` (with its CA file to trust).
pub(crate) type DefaultCertificate = (
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    Option<PathBuf>,
);

/// Why the default certificate cannot be read (or the development one made).
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(transparent)]
    Files(#[from] TlsConfigError),
    #[error(transparent)]
    DevCert(#[from] DevCertError),
}

/// Reads the default certificate of `cfg` (see [`DefaultCertificate`]).
pub(crate) fn default_certificate(cfg: &Config) -> Result<DefaultCertificate, CertificateError> {
    match (&cfg.tls.cert, &cfg.tls.key) {
        (Some(cert), Some(key)) => Ok((
            policy::load_cert_chain(cert)?,
            policy::load_private_key(key)?,
            None,
        )),
        _ => {
            let dev = crate::tls::devcert::ensure_dev_cert(&cfg.server.state_dir)?;
            Ok((dev.chain, dev.key, Some(dev.ca_pem_path)))
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Reloaded {
    /// What now serves, one line per part.
    pub applied: Vec<String>,
    /// Keys whose new value differs from the running one but only takes effect at a restart.
    pub needs_restart: Vec<String>,
}

impl Reloaded {
    fn summary(&self) -> String {
        let mut s = self.applied.join("; ");
        if !self.needs_restart.is_empty() {
            s.push_str(&format!(
                "; needs restart (not applied): {}",
                self.needs_restart.join(", ")
            ));
        }
        s
    }
}

/// Why a reload changed nothing (the running configuration keeps serving).
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("the edge was started without --config: there is no file to reload")]
    NoConfigFile,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    IpLimit(#[from] IpLimitError),
    #[error(transparent)]
    Revocations(#[from] RevocationError),
    #[error(transparent)]
    Crls(#[from] CrlError),
    #[error(transparent)]
    Certificate(#[from] CertificateError),
    #[error(transparent)]
    Tls(#[from] TlsConfigError),
}

/// Re-reads and applies the configuration; shared by the control socket and the SIGHUP path.
pub(crate) struct Reloader {
    /// The configuration the edge started with (flags applied): what fixed settings are
    /// compared against, and where the file and the flags come from.
    pub started: Config,
    pub tls: Arc<TlsState>,
    pub admission: Arc<Admission>,
    pub ip_limiter: Arc<IpLimiter>,
    pub audit: AuditHandle,
    /// One reload at a time (a SIGHUP and a `ctl reload` together).
    pub one_at_a_time: Mutex<()>,
    /// systemd hears RELOADING=1, then READY=1 (refused or not: the edge serves on).
    pub notifier: Arc<crate::systemd::Notifier>,
}

impl Reloader {
    /// Reloads, logs and audits the outcome (`trigger`: "control", "SIGHUP").
    pub fn reload(&self, trigger: &str) -> Result<Reloaded, ReloadError> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        self.notifier.reloading();
        let outcome = self.reload_now();
        self.notifier.reloaded();
        match &outcome {
            Ok(done) => {
                tracing::info!(trigger, applied = %done.applied.join("; "), "configuration reloaded");
                if !done.needs_restart.is_empty() {
                    tracing::warn!(
                        trigger,
                        keys = %done.needs_restart.join(", "),
                        "changed settings that only a restart applies (wssedge ctl restart)"
                    );
                }
            }
            Err(e) => tracing::error!(
                trigger,
                reason = %e,
                "reload refused; the running configuration keeps serving"
            ),
        }
        self.tls
            .reloads
            .note(super::reload_stats::Reloaded::Config, outcome.is_ok());
        self.audit.record(AuditEvent::Reload {
            what: "config".into(),
            ok: outcome.is_ok(),
            detail: match &outcome {
                Ok(done) => format!("{trigger}: {}", done.summary()),
                Err(e) => format!("{trigger}: refused: {e}"),
            },
        });
        outcome
    }

    fn reload_now(&self) -> Result<Reloaded, ReloadError> {
        let path = self
            .started
            .source
            .as_ref()
            .ok_or(ReloadError::NoConfigFile)?;
        let mut cfg = Config::from_file(path)?;
        cfg.apply(self.started.overrides.clone());
        cfg.validate()?;

        // Read and build everything first.
        let limits = cfg.limits.ip_limits();
        if matches!(*self.ip_limiter, IpLimiter::Off)
            && (limits.per_ip_connections > 0 || !limits.ip_overrides.is_empty())
        {
            return Err(IpLimitError::OffAtStart.into());
        }
        let revocations = match cfg.jwt.as_ref().and_then(|j| j.revocations_file.as_ref()) {
            Some(file) => Some((file.clone(), Revocations::read_file(file)?)),
            None => None,
        };
        let crls = CrlSet::load(&cfg.tls.crls)?;
        let (chain, key, _) = default_certificate(&cfg)?;
        let certificate = match &cfg.tls.cert {
            Some(cert) => format!("certificate {}", cert.display()),
            None => "the development certificate".to_owned(),
        };
        let material = Material {
            settings: cfg.tls.clone(),
            chain,
            key,
        };
        let prepared = self.tls.prepare(material, crls)?;

        // Then apply: the step that can still fail (kernel map updates) goes first.
        let mut done = Reloaded {
            needs_restart: needs_restart(&self.started, &cfg),
            ..Reloaded::default()
        };
        self.ip_limiter.update(&limits)?;
        done.applied.push(format!(
            "per-IP limit {} with {} override(s)",
            limits.per_ip_connections,
            limits.ip_overrides.len()
        ));
        self.tls.install(prepared);
        done.applied.push(format!(
            "TLS: {certificate}, {} SNI certificate(s), {} CRL(s) for new handshakes",
            cfg.tls.certs.len(),
            cfg.tls.crls.len()
        ));
        if let Some((file, entries)) = revocations {
            self.admission.revocations.rcu(|current| {
                let mut next = (**current).clone();
                next.replace_file_entries(&entries);
                next
            });
            done.applied.push(format!(
                "{} revocation(s) from {}",
                entries.len(),
                file.display()
            ));
        }
        Ok(done)
    }
}

/// The limits that apply live (the per-IP ones) blanked out, for comparing the rest.
fn fixed_limits(l: &Limits) -> String {
    let mut l = l.clone();
    l.per_ip_connections = 0;
    l.ip_overrides.clear();
    format!("{l:?}")
}

/// The keys whose value in `new` differs from the running one and that apply only at start.
fn needs_restart(running: &Config, new: &Config) -> Vec<String> {
    type Key = (&'static str, fn(&Config) -> String);
    let keys: [Key; 15] = [
        ("server.listen", |c| format!("{:?}", c.server.listen)),
        ("server.cores", |c| format!("{:?}", c.server.cores)),
        ("server.cpus", |c| format!("{:?}", c.server.cpus)),
        ("server.admin", |c| c.server.admin.to_string()),
        ("server.state_dir", |c| format!("{:?}", c.server.state_dir)),
        ("server.control", |c| format!("{:?}", c.server.control)),
        ("server.user", |c| format!("{:?}", c.server.user)),
        ("server.drain_timeout_ms", |c| {
            c.server.drain_timeout_ms.to_string()
        }),
        ("server.busy_poll_us", |c| c.server.busy_poll_us.to_string()),
        ("tls.ktls", |c| format!("{:?}", c.tls.ktls)),
        ("tls.ktls_key_limit_records", |c| {
            format!("{:?}", c.tls.ktls_key_limit_records)
        }),
        ("limits", |c| fixed_limits(&c.limits)),
        ("origin", |c| format!("{:?}", c.origin)),
        ("jwt", |c| {
            let mut jwt = c.jwt.clone();
            if let Some(j) = jwt.as_mut() {
                j.revocations_file = None;
            }
            format!("{jwt:?}")
        }),
        ("audit", |c| format!("{:?}", c.audit)),
    ];
    keys.iter()
        .filter(|(_, value)| value(running) != value(new))
        .map(|(key, _)| (*key).to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::OriginConfig;

    struct Fixture {
        dir: tempfile::TempDir,
        reloader: Reloader,
        trail: crate::audit::AuditTrail,
    }

    /// A certificate and key (PEM) issued by a fresh development CA.
    fn issue(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
        let state = dir.join(name);
        let dev = crate::tls::devcert::ensure_dev_cert(&state).unwrap();
        let cert = state.join("cert.pem");
        let key = state.join("key.pem");
        let pem = |der: &[u8], label: &str| {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::STANDARD.encode(der);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                lines.join("\n")
            )
        };
        let chain: String = dev.chain.iter().map(|c| pem(c, "CERTIFICATE")).collect();
        std::fs::write(&cert, chain).unwrap();
        std::fs::write(&key, pem(dev.key.secret_der(), "PRIVATE KEY")).unwrap();
        (cert, key)
    }

    fn config_text(cert: &std::path::Path, key: &std::path::Path, extra: &str) -> String {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n\n[tls]\ncert = {:?}\nkey = {:?}\n{extra}",
            cert.display().to_string(),
            key.display().to_string()
        )
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = issue(dir.path(), "a");
        let path = dir.path().join("edge.toml");
        std::fs::write(&path, config_text(&cert, &key, "")).unwrap();
        let started = Config::from_file(&path).unwrap();
        started.validate().unwrap();
        let (chain, key, _) = default_certificate(&started).unwrap();
        let tls = TlsState::new(started.tls.clone(), chain, key, CrlSet::empty()).unwrap();
        let (trail, _) = crate::audit::AuditTrail::start(&Default::default(), 1).unwrap();
        let reloader = Reloader {
            started,
            tls: Arc::new(tls),
            admission: Arc::new(
                Admission::from_config(
                    &OriginConfig::default(),
                    None,
                    crate::tls::identity::IdentityRules::new(&[]).unwrap(),
                )
                .unwrap(),
            ),
            ip_limiter: Arc::new(IpLimiter::Off),
            audit: trail.handle(),
            one_at_a_time: Mutex::new(()),
            notifier: Arc::new(crate::systemd::Notifier::none()),
        };
        Fixture {
            dir,
            reloader,
            trail,
        }
    }

    impl Fixture {
        fn path(&self) -> PathBuf {
            self.dir.path().join("edge.toml")
        }
        fn write(&self, text: &str) {
            std::fs::write(self.path(), text).unwrap();
        }
        /// The leaf new handshakes are served with.
        fn leaf(&self) -> Vec<u8> {
            let m = self.reloader.tls.material.lock().unwrap();
            m.chain[0].to_vec()
        }
    }

    #[test]
    fn a_new_certificate_serves_new_handshakes() {
        let f = fixture();
        let before = f.leaf();
        let config_before = f.reloader.tls.config.load_full();
        let (cert, key) = issue(f.dir.path(), "b");
        f.write(&config_text(&cert, &key, ""));
        let done = f.reloader.reload("test").expect("reload");
        assert!(done.needs_restart.is_empty(), "{done:?}");
        assert_ne!(f.leaf(), before, "the new chain is in place");
        assert!(
            !Arc::ptr_eq(&config_before, &f.reloader.tls.config.load_full()),
            "a new rustls config serves new handshakes"
        );
        drop(f.trail);
    }

    /// Each bad file is refused with its reason, and the running config stays.
    #[test]
    fn a_bad_file_is_refused_with_its_reason_and_nothing_changes() {
        let f = fixture();
        let before = f.reloader.tls.config.load_full();
        let leaf = f.leaf();
        let (cert_b, key_b) = issue(f.dir.path(), "b");
        let (cert_c, key_c) = issue(f.dir.path(), "c");
        let garbage = f.dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a pem file\n").unwrap();
        let missing = f.dir.path().join("missing.key");
        let cases: Vec<(String, &str)> = vec![
            ("[server\nlisten = 1".to_owned(), "edge.toml"),
            (
                "[limits]\nmax_frame_bytes = 0\n".to_owned(),
                "max_frame_bytes",
            ),
            (config_text(&cert_b, &missing, ""), "missing.key"),
            (config_text(&cert_b, &garbage, ""), "garbage.pem"),
            (config_text(&garbage, &key_b, ""), "garbage.pem"),
            // b's certificate with c's key.
            (config_text(&cert_b, &key_c, ""), "match"),
        ];
        let _ = cert_c;
        for (text, reason) in cases {
            f.write(&text);
            let e = f.reloader.reload("test").expect_err(&text).to_string();
            assert!(
                e.contains(reason),
                "refusal of {text:?} should name {reason:?}: {e}"
            );
            assert!(
                Arc::ptr_eq(&before, &f.reloader.tls.config.load_full()),
                "a refused reload leaves the running config"
            );
            assert_eq!(f.leaf(), leaf);
        }
    }

    #[test]
    fn fixed_settings_are_reported_as_needing_a_restart() {
        let f = fixture();
        let m = f.reloader.tls.material.lock().unwrap();
        let (cert, key) = (
            m.settings.cert.clone().unwrap(),
            m.settings.key.clone().unwrap(),
        );
        drop(m);
        let text = config_text(&cert, &key, "").replace(
            "listen = [\"127.0.0.1:0\"]",
            "listen = [\"127.0.0.1:1\"]\ncores = 1\ndrain_timeout_ms = 10",
        );
        f.write(&format!(
            "{text}\n[limits]\nper_ip_connections = 0\nidle_timeout_ms = 1000\n"
        ));
        let done = f.reloader.reload("test").expect("reload");
        assert_eq!(
            done.needs_restart,
            [
                "server.listen",
                "server.cores",
                "server.drain_timeout_ms",
                "limits"
            ]
        );
        assert!(
            done.summary().contains("needs restart"),
            "{}",
            done.summary()
        );
    }

    #[test]
    fn without_a_config_file_there_is_nothing_to_reload() {
        let mut f = fixture();
        f.reloader.started.source = None;
        let e = f.reloader.reload("test").unwrap_err().to_string();
        assert!(e.contains("without --config"), "{e}");
    }
}
