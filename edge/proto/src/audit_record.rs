//! What a record says. The envelope (`seq`, `ts`, `core`, `prev`, `mac`) is added by the chain;
//! these types are the event fields in between.
//!
//! Token rule: no field ever holds a bearer token. The only token-derived fields are `jti`,
//! `sub` and `token_sha256` of [`AuditEvent::Upgrade`]; the edge builds the hash
//! (`audit::token_sha256`).

use serde::Serialize;

/// A verified client certificate identity, as the audit trail writes it. The TLS room's own
/// identity type converts into this one; audit owns it so the record format stays stable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub subject_cn: Option<String>,
    /// DNS subject alternative names.
    pub dns: Vec<String>,
    /// URI subject alternative names (`spiffe://…` among them).
    pub uris: Vec<String>,
    /// Hex SHA-256 of the leaf certificate (DER).
    pub fingerprint_sha256: Option<String>,
}

/// One address's share of a [`AuditEvent::RefusalSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerRefusals {
    pub ip: String,
    pub refusals: u64,
}

/// One audited event. `peer` is the client's `ip:port` as text. The core that produced a record
/// is the envelope's `core` field (null for the control socket, reloads and the writer itself),
/// which is why `Accept` carries no core of its own: one JSON object must not have two `core`
/// keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A TCP connection was accepted by a core (before TLS).
    Accept { peer: String },
    /// The TLS handshake failed or timed out.
    TlsFailure { peer: String, reason: String },
    /// The upgrade decision: who (`identity`, `sub`, `jti`), what (`path`), and why (`status`,
    /// `reason`).
    Upgrade {
        peer: String,
        identity: Option<Identity>,
        path: String,
        allowed: bool,
        status: u16,
        reason: String,
        jti: Option<String>,
        sub: Option<String>,
        /// Hex SHA-256 of the token as presented, never the token.
        token_sha256: Option<String>,
    },
    /// An upgraded connection ended.
    Close {
        peer: String,
        identity: Option<Identity>,
        /// The close code sent or received; None when the transport died without one.
        code: Option<u16>,
        reason: String,
        bytes_in: u64,
        bytes_out: u64,
        duration_ms: u64,
    },
    /// A connection refused or closed for cause through the refusal path.
    Refusal {
        peer: String,
        reason: String,
        /// HTTP status, before the upgrade.
        status: Option<u16>,
        /// WebSocket close code, after the upgrade.
        code: Option<u16>,
    },
    /// A revocation took effect. `kind`: `jti`, `subject` or `certificate`; `source`: `file`,
    /// `control` or `crl`.
    Revocation {
        kind: String,
        value: String,
        source: String,
    },
    /// A reload of configuration, certificates, CRLs or revocation lists.
    Reload {
        what: String,
        ok: bool,
        detail: String,
    },
    /// A command on the control socket, with the caller's credentials (SO_PEERCRED).
    Control {
        uid: u32,
        pid: i32,
        command: String,
        ok: bool,
        detail: String,
    },
    /// A drain finished (SIGTERM/SIGINT, `wssedge ctl drain`, or the old process of a restart):
    /// what started it, the close code its sessions got (1001, or 1012 for a restart), how
    /// many live sessions it ordered closed, how many connections it took from the accept
    /// queue and closed unserved, how many were still open at the deadline, and how long it took.
    Drain {
        trigger: String,
        code: u16,
        sessions_closed: u64,
        queued_closed: u64,
        forced: u64,
        duration_ms: u64,
    },
    /// A restart handover (`wssedge ctl restart`, SIGUSR2): handed over to `new_pid`, or not
    /// (`detail` says why; this process keeps serving).
    Restart {
        trigger: String,
        ok: bool,
        new_pid: Option<u32>,
        detail: String,
    },
    /// Connections a core refused at accept (before TLS) while its audit queue was above the
    /// high-water mark: counted, not recorded one by one, so that refusing cannot itself grow
    /// the queue. One record per reason and episode, written by that core once its queue is
    /// back under the mark; it stands for all `count` refusals, from the first (`from`) to the
    /// last (`to`). `peers`: the addresses refused most (at most 8, each figure a lower bound,
    /// exact while no more than 8 addresses were refused); `unattributed`: the refusals not
    /// among them, so that the figures add up to `count`.
    RefusalSummary {
        reason: String,
        count: u64,
        from: String,
        to: String,
        peers: Vec<PeerRefusals>,
        unattributed: u64,
    },
    /// This node's link to its fleet's Redis came up or went down (`detail`: why, for a down).
    Fleet {
        state: String,
        node: String,
        redis: String,
        detail: String,
    },
    /// `wssedge ctl kick` took effect here: the subject's sessions on this node were ordered
    /// closed (1008 `kicked`); `asked_by`: the node whose control socket asked.
    Kick { subject: String, asked_by: String },
    /// Written by the trail itself when it starts.
    Start { version: String, pid: u32 },
    /// Written by the trail itself at a clean shutdown, just before the seal.
    Stop {},
}

/// Records the trail writes about itself; they carry the chain across files.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum TrailEvent<'a> {
    /// First record of every file.
    Open {
        /// The previous file's name as rotated; None for the very first file of a trail.
        prev_file: Option<&'a str>,
        /// The previous file's last intact seq; None at genesis.
        prev_seq: Option<u64>,
        /// The previous file's last intact MAC (equal to this record's `prev`).
        prev_mac: &'a str,
        /// How the previous file ended.
        prev_state: PrevState,
        /// Identifies the key without revealing it, so a verifier tells a wrong key from an edit.
        key_id: &'a str,
        writer: &'a str,
    },
    /// Last record of a file.
    Seal {
        reason: SealReason,
        /// The file that continues the chain (the live file's name).
        next: &'a str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PrevState {
    /// No previous file: this is the first record of a new trail.
    Genesis,
    Sealed,
    /// The previous file ended without a seal (the writer was killed); kept as it was.
    Unsealed,
    /// The previous file ended in a partial line (killed mid-write); kept as it was.
    Torn,
}

impl PrevState {
    pub fn as_str(self) -> &'static str {
        match self {
            PrevState::Genesis => "genesis",
            PrevState::Sealed => "sealed",
            PrevState::Unsealed => "unsealed",
            PrevState::Torn => "torn",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SealReason {
    Rotate,
    Shutdown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_serialize_flat_and_tagged() {
        let e = AuditEvent::Upgrade {
            peer: "192.0.2.1:5000".into(),
            identity: Some(Identity {
                subject_cn: Some("client".into()),
                dns: vec![],
                uris: vec!["spiffe://x/y".into()],
                fingerprint_sha256: None,
            }),
            path: "/feed".into(),
            allowed: false,
            status: 401,
            reason: "token_expired".into(),
            jti: Some("j1".into()),
            sub: None,
            token_sha256: Some(
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
            ),
        };
        let s = serde_json::to_string(&e).unwrap();
        assert!(
            s.starts_with(
                r#"{"event":"upgrade","peer":"192.0.2.1:5000","identity":{"subject_cn":"client""#
            ),
            "{s}"
        );
        assert!(s.contains(
            r#""token_sha256":"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad""#
        ));
        assert_eq!(
            serde_json::to_string(&AuditEvent::Stop {}).unwrap(),
            r#"{"event":"stop"}"#
        );
        assert_eq!(
            serde_json::to_string(&AuditEvent::TlsFailure {
                peer: "p".into(),
                reason: "r".into()
            })
            .unwrap(),
            r#"{"event":"tls_failure","peer":"p","reason":"r"}"#
        );
        // The summary's field names are as public as the events it stands for.
        assert_eq!(
            serde_json::to_string(&AuditEvent::RefusalSummary {
                reason: "audit_backpressure".into(),
                count: 3,
                from: "2024-05-06T07:08:09.000000000Z".into(),
                to: "2024-05-06T07:08:10.000000000Z".into(),
                peers: vec![PeerRefusals {
                    ip: "192.0.2.1".into(),
                    refusals: 2
                }],
                unattributed: 1,
            })
            .unwrap(),
            r#"{"event":"refusal_summary","reason":"audit_backpressure","count":3,"from":"2024-05-06T07:08:09.000000000Z","to":"2024-05-06T07:08:10.000000000Z","peers":[{"ip":"192.0.2.1","refusals":2}],"unattributed":1}"#
        );
    }
}
