//! A handler that records what reached it and answers each command in a fixed way.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::control::{
    ControlHandler, ControlOptions, ControlServer, PeerCred, Request, Response, RevocationChange,
    RevocationList, Status,
};

/// A revoke of this value makes the mock panic, to prove a handler bug stays contained.
pub(super) const PANIC_VALUE: &str = "please-panic";

#[derive(Default)]
pub(super) struct Mock {
    pub(super) handled: Mutex<Vec<(Request, PeerCred)>>,
    pub(super) refused: Mutex<Vec<(PeerCred, String)>>,
}

impl Mock {
    pub(super) fn handled(&self) -> Vec<(Request, PeerCred)> {
        self.handled.lock().unwrap().clone()
    }

    pub(super) fn refused(&self) -> Vec<(PeerCred, String)> {
        self.refused.lock().unwrap().clone()
    }
}

impl ControlHandler for Mock {
    fn handle(&self, request: &Request, peer: &PeerCred) -> Response {
        self.handled.lock().unwrap().push((request.clone(), *peer));
        match request {
            Request::Revoke { value, .. } if value == PANIC_VALUE => panic!("mock handler bug"),
            Request::Revoke { kind, value } | Request::Unrevoke { kind, value } => {
                Response::ok(&RevocationChange {
                    kind: *kind,
                    value: value.clone(),
                    changed: matches!(request, Request::Revoke { .. }),
                })
            }
            Request::Revocations => Response::ok(&RevocationList {
                jti: vec!["j-1".into()],
                subject: vec!["alice".into()],
            }),
            Request::Status => Response::ok(&Status::current(Duration::from_secs(42), 7)),
            Request::Reload => Response::not_supported_yet(request),
            Request::Drain
            | Request::CrlReload
            | Request::Restart
            | Request::Kick { .. }
            | Request::Sessions { .. } => Response::done(),
        }
    }

    fn refused(&self, peer: &PeerCred, reason: &str) {
        self.refused
            .lock()
            .unwrap()
            .push((*peer, reason.to_owned()));
    }
}

/// A server on a fresh temporary directory. Keep the `TempDir` alive as long as the server.
pub(super) struct Fixture {
    pub(super) dir: tempfile::TempDir,
    pub(super) path: PathBuf,
    pub(super) mock: Arc<Mock>,
    /// Held for the test's length; dropping it stops the server.
    pub(super) _server: ControlServer,
}

pub(super) fn fast_options() -> ControlOptions {
    ControlOptions {
        max_clients: 4,
        read_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_secs(2),
    }
}

pub(super) fn start(options: ControlOptions) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ctl.sock");
    let mock = Arc::new(Mock::default());
    let server = ControlServer::start_with(&path, mock.clone(), options).unwrap();
    Fixture {
        dir,
        path,
        mock,
        _server: server,
    }
}
