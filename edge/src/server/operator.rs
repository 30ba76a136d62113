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

use super::tls_state::TlsState;
use crate::auth::admission::Admission;
use crate::tls::crl::CrlSet;

pub(crate) struct Operator {
    pub admission: Arc<Admission>,
    /// `crl-reload` re-reads the CRL files into it.
    pub tls: Arc<TlsState>,
    /// `reload` re-reads the configuration file and the certificates.
    pub reloader: Arc<super::reload::Reloader>,
    /// Every command (and every refused attempt) goes into the audit trail.
    pub audit: AuditHandle,
    pub metrics: Registry,
    pub started: Instant,
    /// `drain` (and `restart`) are carried out by the main thread.
    pub commands: super::Commands,
    pub draining: Arc<super::Lifecycle>,
    pub drain_timeout: std::time::Duration,
    /// In a fleet, revocations and kicks go to every node.
    pub fleet: Option<crate::fleet::Fleet>,
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
        if let (Ok(true), Some(fleet)) = (&outcome, &self.fleet) {
            fleet.ask(crate::fleet::FleetAsk::Revocation {
                entry: entry.clone(),
                revoke,
            });
        }
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

    /// Re-reads the configuration file and the certificates and applies what can change while
    /// serving (see [`super::reload`]); a bad file changes nothing and the reason is returned.
    fn reload(&self) -> Response {
        match self.reloader.reload("control") {
            Ok(done) => Response::ok(&done),
            Err(e) => Response::error(format!(
                "not reloaded, the running configuration stays: {e}"
            )),
        }
    }

    /// Re-reads the configured CRL files now (the watcher also does on any change).
    fn reload_crls(&self) -> Response {
        let in_force = self.tls.crls.load_full();
        let paths: Vec<std::path::PathBuf> =
            in_force.paths().map(std::path::Path::to_path_buf).collect();
        if paths.is_empty() {
            return Response::error("no CRLs are configured ([tls] crls)");
        }
        let loaded = CrlSet::load(&paths);
        match self
            .tls
            .replace_crls(in_force.version(), loaded, &self.audit)
        {
            Ok(detail) => Response::ok(&serde_json::json!({ "crls": detail })),
            Err(e) => Response::error(format!("CRLs not reloaded, the previous ones stay: {e}")),
        }
    }

    /// Asks the main thread to drain; answers at once (the drain runs on, `status` follows it
    /// and the process exits 0 when it is done).
    fn drain(&self) -> Response {
        if self.draining.is_draining() {
            return Response::error("already draining");
        }
        match self
            .commands
            .send(super::Command::Drain { trigger: "control" })
        {
            Ok(()) => Response::ok(&serde_json::json!({
                "draining": true,
                "open_connections": self.connections(),
                "drain_timeout_ms": self.drain_timeout.as_millis() as u64,
            })),
            Err(_) => Response::error("the edge is stopping already"),
        }
    }

    /// Asks the main thread to hand over to a new process and answers once the new process
    /// serves (with its pid) or the handover failed (this process then keeps serving).
    fn restart(&self) -> Response {
        if self.draining.is_draining() {
            return Response::error(super::lifecycle::RestartError::Draining.to_string());
        }
        let (reply, answer) = std::sync::mpsc::channel();
        let asked = super::Command::Restart {
            trigger: "control",
            reply: Some(reply),
        };
        if self.commands.send(asked).is_err() {
            return Response::error("the edge is stopping already");
        }
        match answer.recv_timeout(std::time::Duration::from_secs(60)) {
            Ok(Ok(pid)) => Response::ok(&serde_json::json!({
                "old_pid": std::process::id(),
                "new_pid": pid,
                "old_drains_with": 1012,
                "drain_timeout_ms": self.drain_timeout.as_millis() as u64,
            })),
            Ok(Err(e)) => {
                Response::error(format!("not restarted, this process keeps serving: {e}"))
            }
            Err(_) => Response::error("no answer from the handover within 60 s; see the log"),
        }
    }

    /// Closes the subject's sessions here (each core within a tick) and, in a fleet, asks
    /// every other node to.
    fn kick(&self, subject: &str) -> Response {
        self.admission.kicks.rcu(|current| {
            let mut next = (**current).clone();
            next.kick(subject);
            next
        });
        let fleet = match &self.fleet {
            None => "none",
            Some(f) if f.is_up() => {
                f.ask(crate::fleet::FleetAsk::Kick {
                    subject: subject.to_owned(),
                });
                "sent"
            }
            Some(_) => "unreachable: this node only",
        };
        self.audit.record(AuditEvent::Kick {
            subject: subject.to_owned(),
            asked_by: self
                .fleet
                .as_ref()
                .map_or_else(|| "control".to_owned(), |f| f.status.node.clone()),
        });
        Response::ok(&serde_json::json!({ "subject": subject, "fleet": fleet }))
    }

    /// The fleet's sessions; Redis out of reach: this node's, and the answer says so.
    fn sessions(&self, subject: Option<String>) -> Response {
        let Some(fleet) = &self.fleet else {
            return Response::error(
                "sessions are listed fleet-wide: this edge has no [fleet] (see `status` for its connection count)",
            );
        };
        match fleet.list_sessions(subject, std::time::Duration::from_secs(5)) {
            Ok(list) => Response::ok(&list),
            Err(e) => Response::error(e),
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
            Request::Drain => self.drain(),
            Request::Restart => self.restart(),
            Request::Kick { subject } => self.kick(subject),
            Request::Sessions { subject } => self.sessions(subject.clone()),
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
        Request::Kick { subject } => format!("subject {subject}"),
        Request::Sessions {
            subject: Some(subject),
        } => format!("subject {subject}"),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::OriginConfig;

    fn operator() -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let dev = crate::tls::devcert::ensure_dev_cert(dir.path()).unwrap();
        let tls = Arc::new(
            TlsState::new(Default::default(), dev.chain, dev.key, CrlSet::empty()).unwrap(),
        );
        let admission = Arc::new(
            Admission::from_config(
                &OriginConfig::default(),
                None,
                crate::tls::identity::IdentityRules::new(&[]).unwrap(),
            )
            .unwrap(),
        );
        let audit = crate::audit::AuditTrail::start(&Default::default(), 1)
            .unwrap()
            .0
            .handle();
        Operator {
            tls: tls.clone(),
            reloader: Arc::new(super::super::reload::Reloader {
                started: Default::default(),
                tls,
                admission: admission.clone(),
                ip_limiter: Arc::new(crate::limits::ip_limit::IpLimiter::Off),
                audit: audit.clone(),
                one_at_a_time: Default::default(),
                notifier: Arc::new(crate::systemd::Notifier::none()),
            }),
            admission,
            audit,
            metrics: Registry::default(),
            started: Instant::now(),
            commands: std::sync::mpsc::channel().0,
            draining: Default::default(),
            drain_timeout: std::time::Duration::from_secs(5),
            fleet: None,
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
