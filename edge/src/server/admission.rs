//! The decision at the upgrade: who may have a WebSocket, on which path, with which protocol.
//!
//! Synchronous and side-effect free except for the replay check, which belongs to the token
//! id's owner core: [`Admission::decide`] says which core that is, and the connection asks it
//! (locally, or with one cross-core message — see [`ReplayShards`]).
//!
//! Order of the checks: Host and Origin (cheap, no secrets), then the client certificate's
//! identity — still valid now (revocation by the current CRLs, every certificate's validity,
//! its CRLs' `nextUpdate`: what rustls does not verify again on a resumed session) and allowed
//! by the identity rules — then the token (extract, verify, revocation, scope), then replay.
//! The first refusal wins and names its reason.

use std::cell::RefCell;
use std::sync::Arc;

use arc_swap::ArcSwap;
use futures_channel::{mpsc, oneshot};

use crate::auth::jwt::{JwtConfig, JwtRefusal, JwtVerifier, VerifiedToken};
use crate::auth::origin::{OriginConfig, OriginPolicy};
use crate::auth::replay::{owner_core, ReplayRefusal, ReplayStore};
use crate::auth::revocation::Revocations;
use crate::config::ConfigError;
use crate::refuse::Refusal;
use crate::tls::crl::CrlSet;
use crate::tls::identity::{ClientIdentity, IdentityRules};
use crate::ws::{RequestTarget, UpgradeRequest};

use super::identity_slots::{IdentitySlot, IdentitySlots};

/// The process-wide admission policy (shared by every core, read-only but for the swappable
/// revocation list).
pub(crate) struct Admission {
    origin: OriginPolicy,
    /// Which client certificate identities may open which paths.
    identity_rules: IdentityRules,
    jwt: Option<JwtVerifier>,
    pub revocations: Arc<ArcSwap<Revocations>>,
    /// `per_identity_connections`, when set.
    identity_slots: Option<Arc<IdentitySlots>>,
}

/// A request that passed every synchronous check.
#[derive(Debug, Default)]
pub(crate) struct Admitted {
    /// The subprotocol the 101 selects (the application's, never a token offer).
    pub protocol: Option<String>,
    pub token: Option<VerifiedToken>,
    /// The UNIX second the session must close at (token expiry), when configured.
    pub close_at_unix: Option<u64>,
    /// The replay check still to do: the owner core, the jti and its expiry.
    pub replay: Option<ReplayCheck>,
}

#[derive(Debug, Clone)]
pub(crate) struct ReplayCheck {
    pub owner: usize,
    pub jti: String,
    pub exp: u64,
}

impl Admission {
    pub fn from_config(
        origin: &OriginConfig,
        jwt: Option<&JwtConfig>,
        identity_rules: IdentityRules,
    ) -> Result<Self, ConfigError> {
        let origin = OriginPolicy::from_config(origin)?;
        let verifier = jwt.map(JwtVerifier::from_config).transpose()?;
        let mut revocations = Revocations::new();
        if let Some(path) = jwt.and_then(|j| j.revocations_file.as_ref()) {
            let entries = Revocations::read_file(path).map_err(|e| {
                ConfigError::invalid("jwt.revocations_file", path.display(), e.to_string())
            })?;
            revocations.replace_file_entries(&entries);
        }
        Ok(Self {
            origin,
            identity_rules,
            jwt: verifier,
            revocations: Arc::new(ArcSwap::from_pointee(revocations)),
            identity_slots: None,
        })
    }

    /// Limits the sessions of one identity over all cores.
    pub fn with_identity_limit(mut self, limit: Option<u32>) -> Self {
        self.identity_slots = limit.map(IdentitySlots::new);
        self
    }

    /// A slot for the session about to open, when identities are limited: `Ok(None)` when
    /// no limit applies (no limit set, or an anonymous client), 429 when the identity holds
    /// its limit already.
    pub fn take_identity_slot(
        &self,
        admitted: &Admitted,
        identity: Option<&ClientIdentity>,
    ) -> Result<Option<IdentitySlot>, Refusal> {
        let Some(slots) = &self.identity_slots else {
            return Ok(None);
        };
        let Some(key) = identity_key(admitted, identity) else {
            return Ok(None);
        };
        slots
            .try_take(&key)
            .map(Some)
            .ok_or_else(|| http(429, "identity_connection_limit", RETRY))
    }

    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    /// The request target as logs and audit records show it: the normalised path, and the
    /// query without a token.
    pub fn redact_target(&self, target: &RequestTarget) -> String {
        match &self.jwt {
            Some(jwt) => jwt.redact_target(target.as_str()).into_owned(),
            None => target.as_str().to_owned(),
        }
    }

    /// Every synchronous check, in order; the refusal names its status and reason.
    pub fn decide(
        &self,
        request: &UpgradeRequest,
        identity: Option<&ClientIdentity>,
        crls: &CrlSet,
        now_unix: u64,
        cores: usize,
    ) -> Result<Admitted, Refusal> {
        self.origin
            .check(&request.host, request.origin.as_deref())
            .map_err(|e| http(e.status(), e.reason(), &[]))?;
        // A resumed TLS session skips certificate verification: revocation by the current
        // CRLs, the chain's validity and its CRLs' freshness are checked again here for every
        // upgrade (a full handshake may straddle the instant too).
        if let Some(id) = identity {
            let now = i64::try_from(now_unix).unwrap_or(i64::MAX);
            id.recheck(crls, now)
                .map_err(|lapse| http(403, lapse.reason(), &[]))?;
        }
        self.identity_rules
            .allows(&request.path, identity)
            .map_err(|e| http(e.status(), e.reason(), &[]))?;
        let Some(jwt) = &self.jwt else {
            return Ok(Admitted {
                protocol: None,
                ..Admitted::default()
            });
        };
        let refuse =
            |e: crate::auth::jwt::JwtRefusal| http(e.status(), e.reason(), e.extra_headers());
        let extracted = jwt
            .extract_required(
                request.authorization.as_deref(),
                &request.protocols,
                request.path.query(),
            )
            .map_err(refuse)?;
        let token = jwt.verify(&extracted.token, now_unix).map_err(refuse)?;
        jwt.check_revocation(&self.revocations.load(), &token)
            .map_err(refuse)?;
        jwt.check_scope(&request.path, &token).map_err(refuse)?;
        let replay = match (jwt.single_use(), &token.jti, token.exp) {
            (true, Some(jti), Some(exp)) => Some(ReplayCheck {
                owner: owner_core(jti, cores),
                jti: jti.clone(),
                exp,
            }),
            _ => None,
        };
        // A token offered as a subprotocol selects the application's protocol beside it; the
        // 101 never echoes a token offer.
        let protocol = extracted.app_protocol().map(str::to_owned);
        Ok(Admitted {
            protocol,
            close_at_unix: jwt.session_deadline(&token),
            token: Some(token),
            replay,
        })
    }
}

/// A refusal before the upgrade.
fn http(
    status: u16,
    reason: &'static str,
    extra_headers: &'static [(&'static str, &'static str)],
) -> Refusal {
    Refusal::Http {
        status,
        reason,
        extra_headers,
    }
}

/// A replay question for the jti's owner core.
pub(crate) struct ReplayAsk {
    jti: String,
    exp: u64,
    now_unix: u64,
    reply: oneshot::Sender<Result<(), ReplayRefusal>>,
}

/// One core's part of the replay store and its lines to the other cores' parts.
pub(crate) struct ReplayShards {
    index: usize,
    store: RefCell<ReplayStore>,
    peers: RefCell<Vec<mpsc::Sender<ReplayAsk>>>,
}

/// Questions a core's replay shard may have waiting before askers get 503 (a core that
/// falls this far behind is overloaded; the client retries).
const REPLAY_QUEUE: usize = 1024;

/// Builds every core's lines: for each core its receiver, and for all of them every sender.
pub(crate) fn replay_lines(
    cores: usize,
) -> (Vec<mpsc::Sender<ReplayAsk>>, Vec<mpsc::Receiver<ReplayAsk>>) {
    (0..cores).map(|_| mpsc::channel(REPLAY_QUEUE)).unzip()
}

impl ReplayShards {
    pub fn new(index: usize, store: ReplayStore, peers: Vec<mpsc::Sender<ReplayAsk>>) -> Self {
        Self {
            index,
            store: RefCell::new(store),
            peers: RefCell::new(peers),
        }
    }

    /// Checks and records `check.jti` on its owner core: here, or by one message there.
    pub async fn check(&self, check: &ReplayCheck, now_unix: u64) -> Result<(), Refusal> {
        let answer = if check.owner == self.index {
            self.store
                .borrow_mut()
                .check_and_insert(&check.jti, check.exp, now_unix)
        } else {
            let (reply, answer) = oneshot::channel();
            let ask = ReplayAsk {
                jti: check.jti.clone(),
                exp: check.exp,
                now_unix,
                reply,
            };
            let sent = self
                .peers
                .borrow_mut()
                .get_mut(check.owner)
                .map(|line| line.try_send(ask));
            match sent {
                Some(Ok(())) => match answer.await {
                    Ok(answer) => answer,
                    Err(_) => return Err(http(503, "replay_store_unavailable", RETRY)),
                },
                _ => return Err(http(503, "replay_store_busy", RETRY)),
            }
        };
        answer.map_err(|e| {
            // As a token refusal: a replayed jti's 401 carries the Bearer challenge, a full
            // store's 503 its Retry-After.
            let e = JwtRefusal::from(e);
            http(e.status(), e.reason(), e.extra_headers())
        })
    }

    /// Serves the other cores' questions for this core's shard (a task on this core).
    pub async fn serve(self: std::rc::Rc<Self>, mut questions: mpsc::Receiver<ReplayAsk>) {
        use futures_util::StreamExt;
        while let Some(ask) = questions.next().await {
            let answer = self
                .store
                .borrow_mut()
                .check_and_insert(&ask.jti, ask.exp, ask.now_unix);
            let _ = ask.reply.send(answer);
        }
    }

    /// Forgets expired entries (the core's ticker calls this now and then).
    pub fn purge(&self, now_unix: u64) -> usize {
        self.store.borrow_mut().purge(now_unix)
    }
}

const RETRY: &[(&str, &str)] = &[("Retry-After", "1")];

/// Who a session is for the per-identity limits (connections, rates): the token's subject,
/// else the client certificate's SPIFFE ID, else its fingerprint. None: anonymous.
pub(crate) fn identity_key(
    admitted: &Admitted,
    identity: Option<&ClientIdentity>,
) -> Option<String> {
    match (
        admitted.token.as_ref().and_then(|t| t.sub.as_deref()),
        identity,
    ) {
        (Some(sub), _) => Some(format!("sub:{sub}")),
        (None, Some(id)) => Some(match &id.spiffe_id {
            Some(spiffe) => spiffe.clone(),
            None => format!("cert:{}", id.fingerprint_sha256),
        }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, host: &str, origin: Option<&str>) -> UpgradeRequest {
        let raw =
            format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
            origin.map(|o| format!("Origin: {o}\r\n")).unwrap_or_default()
        );
        crate::ws::parse_upgrade(raw.as_bytes(), &crate::ws::HandshakeLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn no_rules() -> IdentityRules {
        IdentityRules::new(&[]).unwrap()
    }

    #[test]
    fn without_policies_everyone_is_admitted_with_no_protocol() {
        let a = Admission::from_config(&OriginConfig::default(), None, no_rules()).unwrap();
        let admitted = a
            .decide(&request("/", "h", None), None, &CrlSet::empty(), 0, 2)
            .unwrap();
        assert!(admitted.protocol.is_none() && admitted.token.is_none());
    }

    #[test]
    fn origin_refusals_are_http_with_their_reason() {
        let origin = OriginConfig {
            allowed_origins: vec!["https://app.example.com".into()],
            ..OriginConfig::default()
        };
        let a = Admission::from_config(&origin, None, no_rules()).unwrap();
        let refusal = a
            .decide(
                &request("/", "h", Some("https://evil.example")),
                None,
                &CrlSet::empty(),
                0,
                2,
            )
            .unwrap_err();
        assert_eq!(refusal.reason(), "origin_not_allowed");
        assert!(a
            .decide(
                &request("/", "h", Some("https://app.example.com")),
                None,
                &CrlSet::empty(),
                0,
                2
            )
            .is_ok());
    }

    #[test]
    fn a_missing_token_is_401() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hs.key");
        std::fs::write(&secret, [7u8; 32]).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let jwt = JwtConfig {
            hs_secret_file: Some(secret),
            ..JwtConfig::default()
        };
        let a = Admission::from_config(&OriginConfig::default(), Some(&jwt), no_rules()).unwrap();
        match a
            .decide(&request("/", "h", None), None, &CrlSet::empty(), 0, 2)
            .unwrap_err()
        {
            Refusal::Http { status, reason, .. } => {
                assert_eq!((status, reason), (401, "token_missing"))
            }
            other => panic!("{other:?}"),
        }
    }

    /// The identity is checked again at the upgrade (a resumed session's certificate is not
    /// verified by rustls): expired, not yet valid, revoked, or its CRL past `nextUpdate`.
    #[test]
    fn an_identity_that_lapsed_since_its_handshake_is_refused_403() {
        use crate::tls::testpki::{ClientSpec, TestPki};
        let pki = TestPki::new();
        let leaf = pki.client(ClientSpec::default());
        let mut id = ClientIdentity::from_chain(&leaf.chain).unwrap();
        let now: u64 = 1_900_000_000;
        id.not_before_unix = now as i64 - 60;
        id.not_after_unix = now as i64 + 20;
        let a = Admission::from_config(&OriginConfig::default(), None, no_rules()).unwrap();
        let fresh = CrlSet::from_ders("mem", vec![pki.crl(&[], false).der().clone()]).unwrap();
        let decide = |id: &ClientIdentity, crls: &CrlSet, at: u64| {
            a.decide(&request("/", "h", None), Some(id), crls, at, 2)
                .map(|_| ())
                .map_err(|r| match r {
                    Refusal::Http { status, reason, .. } => (status, reason),
                    other => panic!("{other:?}"),
                })
        };
        assert_eq!(decide(&id, &CrlSet::empty(), now), Ok(()));
        assert_eq!(decide(&id, &CrlSet::empty(), now + 20), Ok(()));
        assert_eq!(
            decide(&id, &CrlSet::empty(), now + 25),
            Err((403, "client_cert_expired"))
        );
        assert_eq!(
            decide(&id, &CrlSet::empty(), now - 61),
            Err((403, "client_cert_not_yet_valid"))
        );
        // The CRL was made valid until tomorrow (real time); at `now` (2030) it has expired.
        let real_now = crate::server::core::unix_now();
        let mut today = id.clone();
        today.not_before_unix = real_now as i64 - 60;
        today.not_after_unix = real_now as i64 + 3 * 24 * 3600;
        assert_eq!(decide(&today, &fresh, real_now), Ok(()));
        assert_eq!(
            decide(&today, &fresh, real_now + 2 * 24 * 3600),
            Err((403, "crl_expired"))
        );
        let revoking = CrlSet::from_ders("mem", vec![pki.crl(&[1], false).der().clone()]).unwrap();
        assert_eq!(
            decide(&today, &revoking, real_now),
            Err((403, "certificate_revoked"))
        );
    }

    #[test]
    fn records_show_the_normalised_target_without_a_query_token() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hs.key");
        std::fs::write(&secret, [7u8; 32]).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let jwt = JwtConfig {
            hs_secret_file: Some(secret),
            ..JwtConfig::default()
        };
        let a = Admission::from_config(&OriginConfig::default(), Some(&jwt), no_rules()).unwrap();
        let r = request("/%61pi/Feed?x=1&access_token=a.b.c&y", "h", None);
        assert_eq!(a.redact_target(&r.path), "/api/Feed?x=1&y");
        let plain = Admission::from_config(&OriginConfig::default(), None, no_rules()).unwrap();
        assert_eq!(
            plain.redact_target(&r.path),
            "/api/Feed?x=1&access_token=a.b.c&y"
        );
    }

    #[test]
    fn identity_rules_see_the_normalised_path() {
        let rules = IdentityRules::new(&[crate::tls::identity::IdentityRule {
            path_prefix: "/api/admin".into(),
            allow: vec!["any".into()],
        }])
        .unwrap();
        let a = Admission::from_config(&OriginConfig::default(), None, rules).unwrap();
        for path in ["/api/admin", "/api/%61dmin/x", "/API/Admin?x"] {
            let refusal = a
                .decide(&request(path, "h", None), None, &CrlSet::empty(), 0, 2)
                .unwrap_err();
            assert_eq!(refusal.reason(), "identity_required", "{path}");
        }
        assert!(a
            .decide(
                &request("/api/other", "h", None),
                None,
                &CrlSet::empty(),
                0,
                2
            )
            .is_ok());
    }
}
