//! What the control socket's commands do to the running edge.
//!
//! The control room ([`crate::control`]) owns the socket, peer credentials and the wire
//! protocol; this handler applies a command to live state. Revocations are copy-on-write
//! behind an `ArcSwap`: a command builds the next set and swaps it in, and every core's ticker
//! notices the new version within a tick and closes the sessions it names (1008). Every
//! command, refused ones included, is logged with the caller's uid and pid (and written to
//! the audit trail once it exists).

use std::sync::Arc;
use std::time::Instant;

use crate::audit::{AuditEvent, AuditHandle};
use crate::auth::revocation::RevocationEntry;
use crate::control::protocol::{RevocationChange, RevocationKind, RevocationList, Status};
use crate::control::{ControlHandler, PeerCred, Request, Response};
use crate::metrics::Registry;

use super::admission::Admission;
use super::ip_limit::IpLimiter;
use super::tls_state::TlsState;
use crate::auth::revocation::Revocations;
use crate::tls::crl::CrlSet;

pub(crate) struct Operator {
    pub admission: Arc<Admission>,
    /// `crl-reload` re-reads the CRL files into it.
    pub tls: Arc<TlsState>,
    /// `reload` re-reads this file and applies what can change live.
    pub config_source: Option<std::path::PathBuf>,
    pub ip_limiter: Arc<IpLimiter>,
    /// Every command (and every refused attempt) goes into the audit trail.
    pub audit: AuditHandle,
    pub metrics: Registry,
    pub started: Instant,
}

impl Operator {
    fn entry(kind: RevocationKind, value: &str) -> RevocationEntry {
        match kind {
            RevocationKind::Jti => RevocationEntry::Jti(value.to_owned()),
            RevocationKind::Subject => RevocationEntry::Sub(value.to_owned()),
        }
    }

    fn revoke(&self, kind: RevocationKind, value: &str, revoke: bool) -> Response {
        let entry = Self::entry(kind, value);
        let mut outcome = Ok(false);
        // rcu: retried if another command swapped in between (each try starts afresh).
        self.admission.revocations.rcu(|current| {
            let mut next = (**current).clone();
            outcome = if revoke {
                Ok(next.revoke(&entry))
            } else {
                next.unrevoke(&entry)
            };
            next
        });
        if let Ok(true) = outcome {
            self.audit.record(AuditEvent::Revocation {
                kind: format!("{}{}", if revoke { "" } else { "un" }, kind.as_str()),
                value: value.to_owned(),
                source: "control".into(),
            });
        }
        match outcome {
            Ok(changed) => Response::ok(&RevocationChange {
                kind,
                value: value.to_owned(),
                changed,
            }),
            Err(e) => Response::error(e.to_string()),
        }
    }

    /// Re-reads the configuration file and applies what can change while serving: the per-IP
    /// limits, the revocations file and the CRLs. A bad file changes nothing (the reason is
    /// returned); every attempt is audited.
    fn reload(&self) -> Response {
        let outcome = self.reload_config();
        self.audit.record(AuditEvent::Reload {
            what: "config".into(),
            ok: outcome.is_ok(),
            detail: outcome.clone().unwrap_or_else(|e| e),
        });
        match outcome {
            Ok(detail) => Response::ok(&serde_json::json!({ "applied": detail })),
            Err(e) => Response::error(format!(
                "not reloaded, the running configuration stays: {e}"
            )),
        }
    }

    /// Everything is read and checked before anything changes; the one step that can still
    /// fail (building the TLS config around new CRLs) goes first.
    fn reload_config(&self) -> Result<String, String> {
        let path = self
            .config_source
            .as_ref()
            .ok_or("the edge was started without --config: there is no file to reload")?;
        let cfg = crate::config::Config::from_file(path).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())?;
        let limits = cfg.limits.ip_limits();
        if matches!(*self.ip_limiter, IpLimiter::Off)
            && (limits.per_ip_connections > 0 || !limits.ip_overrides.is_empty())
        {
            return Err("per-IP limits were off at start; restart the edge to turn them on".into());
        }
        let revocations = match cfg.jwt.as_ref().and_then(|j| j.revocations_file.as_ref()) {
            Some(file) => Some((
                file.clone(),
                Revocations::read_file(file).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let crls = match cfg.tls.crls.is_empty() {
            true => None,
            false => Some(CrlSet::load(&cfg.tls.crls).map_err(|e| e.to_string())?),
        };
        let mut applied = Vec::new();
        if let Some(crls) = crls {
            applied.push(format!("{} CRL(s)", crls.len()));
            self.tls.apply_crls(crls).map_err(|e| e.to_string())?;
        }
        self.ip_limiter.update(&limits)?;
        applied.push(format!(
            "per-IP limit {} with {} override(s)",
            limits.per_ip_connections,
            limits.ip_overrides.len()
        ));
        if let Some((file, entries)) = revocations {
            self.admission.revocations.rcu(|current| {
                let mut next = (**current).clone();
                next.replace_file_entries(&entries);
                next
            });
            applied.push(format!(
                "{} revocation(s) from {}",
                entries.len(),
                file.display()
            ));
        }
        Ok(applied.join("; "))
    }

    /// Re-reads the configured CRL files now (the watcher also does on any change).
    fn reload_crls(&self) -> Response {
        let paths: Vec<std::path::PathBuf> = self
            .tls
            .crls
            .load()
            .paths()
            .map(std::path::Path::to_path_buf)
            .collect();
        if paths.is_empty() {
            return Response::error("no CRLs are configured ([tls] crls)");
        }
        let loaded = CrlSet::load(&paths).map_err(|e| e.to_string());
        match self.tls.replace_crls(loaded, &self.audit) {
            Ok(detail) => Response::ok(&serde_json::json!({ "crls": detail })),
            Err(e) => Response::error(format!("CRLs not reloaded, the previous ones stay: {e}")),
        }
    }

    fn connections(&self) -> u64 {
        self.metrics
            .cores
            .iter()
            .map(|c| (c.handshaking.get() + c.open.get()).max(0) as u64)
            .sum()
    }
}

impl ControlHandler for Operator {
    fn handle(&self, request: &Request, peer: &PeerCred) -> Response {
        let response = match request {
            Request::Revoke { kind, value } => self.revoke(*kind, value, true),
            Request::Unrevoke { kind, value } => self.revoke(*kind, value, false),
            Request::Revocations => {
                let (jti, subject) = self.admission.revocations.load().entries();
                Response::ok(&RevocationList { jti, subject })
            }
            Request::Status => {
                Response::ok(&Status::current(self.started.elapsed(), self.connections()))
            }
            Request::CrlReload => self.reload_crls(),
            Request::Reload => self.reload(),
            Request::Drain => Response::not_supported_yet(request),
        };
        tracing::info!(
            uid = peer.uid,
            pid = peer.pid,
            command = request.name(),
            ok = response.is_ok(),
            "control command"
        );
        self.audit.record(AuditEvent::Control {
            uid: peer.uid,
            pid: peer.pid as i32,
            command: request.name().to_owned(),
            ok: response.is_ok(),
            detail: command_detail(request),
        });
        response
    }

    fn refused(&self, peer: &PeerCred, reason: &str) {
        tracing::warn!(
            uid = peer.uid,
            pid = peer.pid,
            reason,
            "control command refused"
        );
        self.audit.record(AuditEvent::Control {
            uid: peer.uid,
            pid: peer.pid as i32,
            command: "refused".into(),
            ok: false,
            detail: reason.to_owned(),
        });
    }
}

/// What a command was about, for its audit record (never more than the wire request had).
fn command_detail(request: &Request) -> String {
    match request {
        Request::Revoke { kind, value } | Request::Unrevoke { kind, value } => {
            format!("{} {value}", kind.as_str())
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::OriginConfig;

    fn operator() -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::devcert::ensure_dev_cert(dir.path()).unwrap();
        let tls = TlsState::new(
            Default::default(),
            dev.chain,
            dev.key,
            CrlSet::empty(),
            false,
        )
        .unwrap();
        Operator {
            tls: Arc::new(tls),
            config_source: None,
            ip_limiter: Arc::new(IpLimiter::Off),
            admission: Arc::new(
                Admission::from_config(
                    &OriginConfig::default(),
                    None,
                    crate::tls::identity::IdentityRules::new(&[]).unwrap(),
                )
                .unwrap(),
            ),
            audit: crate::audit::AuditTrail::start(&Default::default(), 1)
                .unwrap()
                .0
                .handle(),
            metrics: Registry::default(),
            started: Instant::now(),
        }
    }

    const PEER: PeerCred = PeerCred {
        uid: 0,
        gid: 0,
        pid: 1,
    };

    #[test]
    fn revoke_swaps_in_a_new_version_and_lists_it() {
        let op = operator();
        let before = op.admission.revocations.load().version();
        let r = op.handle(
            &Request::Revoke {
                kind: RevocationKind::Subject,
                value: "alice".into(),
            },
            &PEER,
        );
        assert!(r.is_ok());
        let now = op.admission.revocations.load();
        assert!(now.version() > before);
        assert!(now.is_revoked(Some("alice"), None).is_some());
        let listed = op.handle(&Request::Revocations, &PEER);
        assert!(String::from_utf8(listed.to_line())
            .unwrap()
            .contains("alice"));
        let undone = op.handle(
            &Request::Unrevoke {
                kind: RevocationKind::Subject,
                value: "alice".into(),
            },
            &PEER,
        );
        assert!(undone.is_ok());
        assert!(op
            .admission
            .revocations
            .load()
            .is_revoked(Some("alice"), None)
            .is_none());
    }

    #[test]
    fn crl_reload_without_crls_says_what_is_missing() {
        let r = op_line(&operator().handle(&Request::CrlReload, &PEER));
        assert!(r.contains("no CRLs are configured"), "{r}");
    }

    fn op_line(r: &Response) -> String {
        String::from_utf8(r.to_line()).unwrap()
    }
}
