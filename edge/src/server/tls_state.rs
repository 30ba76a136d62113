//! The TLS configuration new handshakes start from, and the CRLs live sessions are checked
//! against — both swappable without a lock on the accept path (`ArcSwap`: a load is a few
//! atomic operations).
//!
//! When a CRL file changes, the watcher thread builds a new rustls config around the new set
//! and swaps both in: new handshakes are verified against it at once, and every core's
//! ticker sees the new CRL version within a tick and closes the sessions whose certificate is
//! now revoked (1008). Rebuilding also replaces the ticket keys and session cache, so a
//! session resumed from before the change cannot skip the new CRLs.

use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::audit::{AuditEvent, AuditHandle};
use crate::tls::crl::{CrlError, CrlSet};
use crate::tls::policy::{build_server_config, TlsConfigError};
use crate::tls::settings::TlsSettings;

pub(crate) struct TlsState {
    /// What the current config was built from (a CRL change rebuilds around new CRLs; a
    /// reload replaces all of it). Locked only by those rebuilds, never on the accept path.
    pub(super) material: Mutex<Material>,
    pub config: ArcSwap<ServerConfig>,
    pub crls: ArcSwap<CrlSet>,
    /// Reloads applied and refused (CRLs counted here, the configuration by the reloader).
    pub reloads: Arc<super::reload_stats::ReloadStats>,
}

/// The `[tls]` settings and the default certificate a config is built from.
pub(crate) struct Material {
    pub settings: TlsSettings,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// A config built from new material and CRLs, checked and ready to serve: [`TlsState::install`]
/// swaps it in. Built first, so a reload can refuse before anything changes.
pub(crate) struct Prepared {
    material: Material,
    config: Arc<ServerConfig>,
    crls: CrlSet,
}

/// Why new CRLs were not put in force (the previous ones stay).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CrlReplaceError {
    #[error(transparent)]
    Load(#[from] CrlError),
    #[error(
        "a reload put other CRLs in force meanwhile (version {in_force}); these were read from the files before it"
    )]
    Superseded { in_force: u64 },
    #[error(transparent)]
    Build(#[from] TlsConfigError),
}

impl TlsState {
    pub fn new(
        settings: TlsSettings,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        crls: CrlSet,
    ) -> Result<Self, TlsConfigError> {
        let config = build(&settings, &chain, &key, &crls)?;
        Ok(Self {
            material: Mutex::new(Material {
                settings,
                chain,
                key,
            }),
            config: ArcSwap::new(config),
            crls: ArcSwap::from_pointee(crls),
            reloads: Arc::default(),
        })
    }

    /// New CRLs from the watcher or `ctl crl-reload` (`loaded`, or why they could not be
    /// read), re-read from the files of the set `based_on` (its version): applied when they
    /// load and build and that set is still in force, logged, and audited either way. A
    /// reload that put another set in force meanwhile wins (the watcher then follows it).
    /// Returns what was applied, or why nothing changed.
    pub fn replace_crls(
        &self,
        based_on: u64,
        loaded: Result<CrlSet, CrlError>,
        audit: &AuditHandle,
    ) -> Result<String, CrlReplaceError> {
        let outcome = loaded.map_err(CrlReplaceError::from).and_then(|crls| {
            let detail = format!("{} CRL(s), version {}", crls.len(), crls.version());
            self.apply_crls_over(based_on, crls).map(|()| detail)
        });
        match &outcome {
            Ok(detail) => {
                tracing::info!("{detail}: new handshakes and live sessions checked against them")
            }
            Err(e) => {
                tracing::error!(error = %e, "new CRLs refused; the previous ones stay in force")
            }
        }
        self.reloads
            .note(super::reload_stats::Reloaded::Crls, outcome.is_ok());
        audit.record(AuditEvent::Reload {
            what: "crls".into(),
            ok: outcome.is_ok(),
            detail: match &outcome {
                Ok(detail) => detail.clone(),
                Err(e) => e.to_string(),
            },
        });
        outcome
    }

    /// The server config `material` and `crls` describe.
    fn build_for(
        &self,
        material: &Material,
        crls: &CrlSet,
    ) -> Result<Arc<rustls::ServerConfig>, TlsConfigError> {
        build(&material.settings, &material.chain, &material.key, crls)
    }

    fn material(&self) -> MutexGuard<'_, Material> {
        // A panic while rebuilding leaves the previous material intact (it is only replaced
        // after a successful build).
        self.material.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// New CRLs in place of the set `based_on` (under the lock a reload installs under, so
    /// neither undoes the other): a config verifying against them, then the set itself for
    /// live sessions.
    fn apply_crls_over(&self, based_on: u64, crls: CrlSet) -> Result<(), CrlReplaceError> {
        let material = self.material();
        let in_force = self.crls.load().version();
        if in_force != based_on {
            return Err(CrlReplaceError::Superseded { in_force });
        }
        let config = self.build_for(&material, &crls)?;
        self.config.store(config);
        self.crls.store(Arc::new(crls));
        Ok(())
    }

    /// Builds the config new settings, a new default certificate and CRLs describe (every
    /// `[[tls.certs]]` file is read again), without changing anything yet.
    pub fn prepare(&self, material: Material, crls: CrlSet) -> Result<Prepared, TlsConfigError> {
        let config = self.build_for(&material, &crls)?;
        Ok(Prepared {
            material,
            config,
            crls,
        })
    }

    /// Serves a prepared config: handshakes from now on use it; live connections keep the
    /// config they started with.
    pub fn install(&self, prepared: Prepared) {
        let mut material = self.material();
        self.config.store(prepared.config);
        self.crls.store(Arc::new(prepared.crls));
        *material = prepared.material;
    }
}

fn build(
    settings: &TlsSettings,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    crls: &CrlSet,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let config = build_server_config(settings, chain.to_vec(), key.clone_key(), crls)?;
    // Every session's records leave rustls after the handshake (to the kernel, or to our own
    // userspace records): both need its traffic secrets.
    let mut with_extraction = (*config).clone();
    with_extraction.enable_secret_extraction = true;
    Ok(Arc::new(with_extraction))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crls_read_for_a_set_no_longer_in_force_are_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::tls::devcert::ensure_dev_cert(dir.path()).unwrap();
        let tls = TlsState::new(Default::default(), dev.chain, dev.key, CrlSet::empty()).unwrap();
        let audit = AuditHandle::disabled();
        let at_start = tls.crls.load().version();
        // The watcher reads its files; meanwhile a reload puts another set in force.
        let read_by_watcher = CrlSet::load(&[]).unwrap();
        let reloaded = CrlSet::load(&[]).unwrap();
        let reloaded_version = reloaded.version();
        tls.replace_crls(at_start, Ok(reloaded), &audit).unwrap();
        let refused = tls
            .replace_crls(at_start, Ok(read_by_watcher), &audit)
            .unwrap_err();
        assert!(refused.to_string().contains("reload"), "{refused}");
        assert_eq!(
            tls.crls.load().version(),
            reloaded_version,
            "the reload's set stays"
        );
        // Read for the set in force, it applies.
        let next = CrlSet::load(&[]).unwrap();
        let next_version = next.version();
        tls.replace_crls(reloaded_version, Ok(next), &audit)
            .unwrap();
        assert_eq!(tls.crls.load().version(), next_version);
    }
}
