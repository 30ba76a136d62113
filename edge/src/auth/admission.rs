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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_channel::{mpsc, oneshot};

use crate::auth::jwt::{JwtConfig, JwtRefusal, JwtVerifier, VerifiedToken};
use crate::auth::origin::{OriginConfig, OriginPolicy};
use crate::auth::replay::{
    jti_key, owner_of_key, HandedEntry, ImportOutcome, JtiKey, ReplayRefusal, ReplayStore,
};
use crate::auth::revocation::Revocations;
use crate::config_error::ConfigError;
use crate::reason::Reason;
use crate::refuse::Refusal;
use crate::tls::crl::CrlSet;
use crate::tls::identity::{ClientIdentity, IdentityRules};
use crate::ws::{RequestTarget, UpgradeRequest};

use crate::limits::identity_slots::{IdentitySlot, IdentitySlots};

/// The process-wide admission policy (shared by every core, read-only but for the swappable
/// revocation list).
pub(crate) struct Admission {
    origin: OriginPolicy,
    /// Which client certificate identities may open which paths.
    identity_rules: IdentityRules,
    jwt: Option<JwtVerifier>,
    pub revocations: Arc<ArcSwap<Revocations>>,
    /// Subjects whose live sessions are to close (`wssedge ctl kick`).
    pub kicks: Arc<ArcSwap<crate::auth::kicks::Kicks>>,
    /// `per_identity_connections`, when set.
    identity_slots: Option<Arc<IdentitySlots>>,
    /// Non-zero in a restart's new process that did not receive the whole replay store (see
    /// [`Admission::distrust_tokens_before`]): the UNIX second it took over.
    replay_unproven_before: AtomicU64,
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
    /// The jti as the store keys it (hashed once, here).
    pub key: JtiKey,
    pub exp: u64,
}

impl Admission {
    pub fn from_config(
        origin: &OriginConfig,
        jwt: Option<&JwtConfig>,
        identity_rules: IdentityRules,
    ) -> Result<Self, ConfigError> {
        let origin = OriginPolicy::from_config(origin)?;
        let verifier = jwt.map(crate::auth::jwt::load_verifier).transpose()?;
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
            kicks: Arc::new(ArcSwap::from_pointee(Default::default())),
            identity_slots: None,
            replay_unproven_before: AtomicU64::new(0),
        })
    }

    /// A restart's new process that did not receive every live entry of its predecessor's
    /// replay store (a predecessor from before the handover carried it, a core of it that did
    /// not answer, a broken transfer, more entries than this process's capacity) cannot tell
    /// which older single-use tokens were used: from now on it refuses, with 401
    /// `replay_unproven`, every single-use token that could have been — issued (`iat`, else
    /// `nbf`) no later than `took_over_unix` plus the leeway, or carrying neither. Tokens issued
    /// after are checked as usual; the refused ones expire by themselves.
    pub fn distrust_tokens_before(&self, took_over_unix: u64) {
        self.replay_unproven_before
            .store(took_over_unix.max(1), Ordering::Release);
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
            .ok_or_else(|| http(429, Reason::IdentityConnectionLimit, RETRY))
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
            .map_err(|e| http(e.status(), e.into(), &[]))?;
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
            |e: crate::auth::jwt::JwtRefusal| http(e.status(), Reason::from(&e), e.extra_headers());
        let extracted = jwt
            .extract_required(
                request.authorization.as_deref(),
                &request.protocols,
                request.path.query(),
            )
            .map_err(refuse)?;
        let token = jwt.verify(&extracted.token, now_unix).map_err(refuse)?;
        jwt.check_revocation(&**self.revocations.load(), &token)
            .map_err(refuse)?;
        jwt.check_scope(&request.path, &token).map_err(refuse)?;
        let replay = match (jwt.single_use(), &token.jti, token.exp) {
            (true, Some(jti), Some(exp)) => {
                let since = self.replay_unproven_before.load(Ordering::Acquire);
                let issued = token.iat.or(token.nbf);
                if since != 0 && issued.is_none_or(|at| at <= since.saturating_add(jwt.leeway_s()))
                {
                    return Err(refuse(JwtRefusal::ReplayUnproven));
                }
                let key = jti_key(jti);
                Some(ReplayCheck {
                    owner: owner_of_key(&key, cores),
                    key,
                    exp,
                })
            }
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
    reason: Reason,
    extra_headers: &'static [(&'static str, &'static str)],
) -> Refusal {
    Refusal::Http {
        status,
        reason,
        extra_headers,
    }
}

/// A message to a core's replay shard: a replay question for the jti's owner core, or (from
/// the main thread, in a restart) the shard's handover out of the old process and into the
/// new one.
pub(crate) enum ReplayAsk {
    Check {
        key: JtiKey,
        exp: u64,
        now_unix: u64,
        reply: oneshot::Sender<Result<(), ReplayRefusal>>,
    },
    /// Seal the shard and send its live entries.
    Export {
        now_unix: u64,
        reply: std::sync::mpsc::Sender<Vec<HandedEntry>>,
    },
    /// Remember these entries (this shard's, handed over by the old process).
    Import {
        entries: Vec<HandedEntry>,
        now_unix: u64,
        reply: std::sync::mpsc::Sender<ImportOutcome>,
    },
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
                .check_and_insert_key(check.key, check.exp, now_unix)
        } else {
            let (reply, answer) = oneshot::channel();
            let ask = ReplayAsk::Check {
                key: check.key,
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
                    Err(_) => return Err(http(503, Reason::ReplayStoreUnavailable, RETRY)),
                },
                _ => return Err(http(503, Reason::ReplayStoreBusy, RETRY)),
            }
        };
        answer.map_err(|e| {
            // As a token refusal: a replayed jti's 401 carries the Bearer challenge, a full
            // store's 503 its Retry-After.
            let e = JwtRefusal::from(e);
            http(e.status(), Reason::from(&e), e.extra_headers())
        })
    }

    /// Serves the other cores' questions for this core's shard, and a restart's export or
    /// import of it (a task on this core).
    pub async fn serve(self: std::rc::Rc<Self>, mut questions: mpsc::Receiver<ReplayAsk>) {
        use futures_util::StreamExt;
        while let Some(ask) = questions.next().await {
            let mut store = self.store.borrow_mut();
            match ask {
                ReplayAsk::Check {
                    key,
                    exp,
                    now_unix,
                    reply,
                } => {
                    let _ = reply.send(store.check_and_insert_key(key, exp, now_unix));
                }
                ReplayAsk::Export { now_unix, reply } => {
                    let _ = reply.send(store.seal_and_export(now_unix));
                }
                ReplayAsk::Import {
                    entries,
                    now_unix,
                    reply,
                } => {
                    let _ = reply.send(store.import(entries, now_unix));
                }
            }
        }
    }

    /// Entries this core's shard remembers.
    pub fn len(&self) -> usize {
        self.store.borrow().len()
    }

    /// Forgets expired entries (the core's ticker calls this now and then).
    pub fn purge(&self, now_unix: u64) -> usize {
        self.store.borrow_mut().purge(now_unix)
    }
}

const RETRY: &[(&str, &str)] = &[("Retry-After", "1")];

/// Sends `ask` to a core's shard from a thread outside the cores (the main thread). A fresh
/// clone of a line always has room for one message; a core whose line is closed has stopped.
fn send_from_outside(line: &mpsc::Sender<ReplayAsk>, ask: ReplayAsk) -> bool {
    line.clone().try_send(ask).is_ok()
}

/// A restart's old process, once it accepts no more: seals every core's shard and collects
/// their live entries (waiting at most `timeout` in all). `complete` is false when a core did
/// not answer (its entries are missing: the new process then distrusts older tokens).
pub(crate) fn export_shards(
    lines: &[mpsc::Sender<ReplayAsk>],
    now_unix: u64,
    timeout: Duration,
) -> (Vec<HandedEntry>, bool) {
    let deadline = Instant::now() + timeout;
    let (reply, answers) = std::sync::mpsc::channel();
    let asked = lines
        .iter()
        .filter(|line| {
            send_from_outside(
                line,
                ReplayAsk::Export {
                    now_unix,
                    reply: reply.clone(),
                },
            )
        })
        .count();
    drop(reply);
    let mut entries = Vec::new();
    let mut answered = 0;
    while answered < asked {
        let left = deadline.saturating_duration_since(Instant::now());
        match answers.recv_timeout(left) {
            Ok(mut part) => {
                entries.append(&mut part);
                answered += 1;
            }
            Err(_) => break,
        }
    }
    (entries, answered == lines.len())
}

/// What a restart's new process did with the entries it was handed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ImportSummary {
    pub outcome: ImportOutcome,
    /// Every core answered (a core that did not may have kept nothing).
    pub all_cores: bool,
}

/// A restart's new process, before its cores accept: hands each core's shard its entries
/// (re-sharded by key onto this process's cores) and waits for every core (at most `timeout`
/// in all).
pub(crate) fn import_shards(
    lines: &[mpsc::Sender<ReplayAsk>],
    entries: Vec<HandedEntry>,
    now_unix: u64,
    timeout: Duration,
) -> ImportSummary {
    let deadline = Instant::now() + timeout;
    let mut per_core: Vec<Vec<HandedEntry>> = vec![Vec::new(); lines.len()];
    for e in entries {
        if let Some(shard) = per_core.get_mut(owner_of_key(&e.key, lines.len())) {
            shard.push(e);
        }
    }
    let (reply, answers) = std::sync::mpsc::channel();
    let mut asked = 0;
    for (line, entries) in lines.iter().zip(per_core) {
        let ask = ReplayAsk::Import {
            entries,
            now_unix,
            reply: reply.clone(),
        };
        if send_from_outside(line, ask) {
            asked += 1;
        }
    }
    drop(reply);
    let mut summary = ImportSummary::default();
    let mut answered = 0;
    while answered < asked {
        let left = deadline.saturating_duration_since(Instant::now());
        match answers.recv_timeout(left) {
            Ok(o) => {
                summary.outcome.kept += o.kept;
                summary.outcome.expired += o.expired;
                summary.outcome.dropped += o.dropped;
                answered += 1;
            }
            Err(_) => break,
        }
    }
    summary.all_cores = answered == lines.len();
    summary
}

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

    /// Admission with a JWT section: an HS256 secret written (mode 0600) in `dir`.
    fn hs_admission(dir: &std::path::Path) -> Admission {
        hs_admission_with(dir, JwtConfig::default())
    }

    /// The same with `jwt`'s other settings.
    fn hs_admission_with(dir: &std::path::Path, jwt: JwtConfig) -> Admission {
        let secret = dir.join("hs.key");
        std::fs::write(&secret, [7u8; 32]).unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let jwt = JwtConfig {
            hs_secret_file: Some(secret),
            ..jwt
        };
        Admission::from_config(&OriginConfig::default(), Some(&jwt), no_rules()).unwrap()
    }

    #[test]
    fn a_missing_token_is_401() {
        let dir = tempfile::tempdir().unwrap();
        let a = hs_admission(dir.path());
        match a
            .decide(&request("/", "h", None), None, &CrlSet::empty(), 0, 2)
            .unwrap_err()
        {
            Refusal::Http { status, reason, .. } => {
                assert_eq!((status, reason), (401, Reason::TokenMissing))
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
            Err((403, Reason::ClientCertExpired))
        );
        assert_eq!(
            decide(&id, &CrlSet::empty(), now - 61),
            Err((403, Reason::ClientCertNotYetValid))
        );
        // The CRL was made valid until tomorrow (real time); at `now` (2030) it has expired.
        let real_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        let mut today = id.clone();
        today.not_before_unix = real_now as i64 - 60;
        today.not_after_unix = real_now as i64 + 3 * 24 * 3600;
        assert_eq!(decide(&today, &fresh, real_now), Ok(()));
        assert_eq!(
            decide(&today, &fresh, real_now + 2 * 24 * 3600),
            Err((403, Reason::CrlExpired))
        );
        let revoking = CrlSet::from_ders("mem", vec![pki.crl(&[1], false).der().clone()]).unwrap();
        assert_eq!(
            decide(&today, &revoking, real_now),
            Err((403, Reason::CertificateRevoked))
        );
    }

    /// An HS256 token over `claims` with the secret `[7; 32]`.
    fn hs256(claims: serde_json::Value) -> String {
        use base64::Engine as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let input = format!(
            "{}.{}",
            b64(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes())
        );
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[7u8; 32]);
        let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    }

    fn single_use_admission(dir: &std::path::Path) -> Admission {
        hs_admission_with(
            dir,
            JwtConfig {
                single_use: true,
                leeway_s: 5,
                ..JwtConfig::default()
            },
        )
    }

    fn with_token(token: &str) -> UpgradeRequest {
        let raw = format!(
            "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        crate::ws::parse_upgrade(raw.as_bytes(), &crate::ws::HandshakeLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    /// A restart's new process that did not get the whole replay store refuses the single-use
    /// tokens that could have been used before (issued up to its takeover plus the leeway, or
    /// with no `iat`/`nbf`) with 401 `replay_unproven`; later ones are checked as usual.
    #[test]
    fn after_an_incomplete_handover_older_single_use_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = single_use_admission(dir.path());
        let took_over = 1_800_000_000u64;
        let token = |iat: Option<u64>, nbf: Option<u64>, jti: &str| {
            let mut c = serde_json::json!({"sub": "alice", "jti": jti, "exp": took_over + 600});
            if let Some(iat) = iat {
                c["iat"] = iat.into();
            }
            if let Some(nbf) = nbf {
                c["nbf"] = nbf.into();
            }
            with_token(&hs256(c))
        };
        let decide = |req: &UpgradeRequest| {
            a.decide(req, None, &CrlSet::empty(), took_over + 10, 2)
                .map(|adm| adm.replay.is_some())
                .map_err(|r| match r {
                    Refusal::Http { status, reason, .. } => (status, reason),
                    other => panic!("{other:?}"),
                })
        };
        let old = token(Some(took_over - 100), None, "old");
        assert_eq!(decide(&old), Ok(true), "trusted before the distrust");
        a.distrust_tokens_before(took_over);
        assert_eq!(decide(&old), Err((401, Reason::ReplayUnproven)));
        assert_eq!(
            decide(&token(None, None, "no-iat")),
            Err((401, Reason::ReplayUnproven))
        );
        assert_eq!(
            decide(&token(Some(took_over + 5), None, "within-leeway")),
            Err((401, Reason::ReplayUnproven))
        );
        assert_eq!(
            decide(&token(None, Some(took_over - 1), "nbf-old")),
            Err((401, Reason::ReplayUnproven))
        );
        assert_eq!(decide(&token(Some(took_over + 6), None, "new")), Ok(true));
        assert_eq!(
            decide(&token(None, Some(took_over + 6), "nbf-new")),
            Ok(true)
        );
        let e = JwtRefusal::ReplayUnproven;
        assert_eq!(
            e.extra_headers(),
            &[("WWW-Authenticate", "Bearer error=\"invalid_token\"")]
        );
    }

    /// A thread per "core" serving a replay shard, as a core's task does.
    struct Shards {
        lines: Vec<mpsc::Sender<ReplayAsk>>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    impl Shards {
        fn start(cores: usize, capacity: usize) -> Shards {
            let (lines, questions) = replay_lines(cores);
            let threads = questions
                .into_iter()
                .enumerate()
                .map(|(i, q)| {
                    std::thread::spawn(move || {
                        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                            .build()
                            .unwrap();
                        rt.block_on(async move {
                            let shard = std::rc::Rc::new(ReplayShards::new(
                                i,
                                ReplayStore::new(capacity, 0),
                                Vec::new(),
                            ));
                            shard.serve(q).await
                        })
                    })
                })
                .collect();
            Shards { lines, threads }
        }

        /// The owner core's answer about `jti` (as another core would ask it).
        fn check(&self, jti: &str, exp: u64, now: u64) -> Result<(), ReplayRefusal> {
            let key = jti_key(jti);
            let owner = owner_of_key(&key, self.lines.len());
            let (reply, mut answer) = oneshot::channel();
            let ask = ReplayAsk::Check {
                key,
                exp,
                now_unix: now,
                reply,
            };
            assert!(send_from_outside(&self.lines[owner], ask));
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(a)) = answer.try_recv() {
                    return a;
                }
                assert!(Instant::now() < deadline, "no answer from core {owner}");
                std::thread::sleep(Duration::from_millis(1));
            }
        }

        fn stop(self) {
            drop(self.lines);
            for t in self.threads {
                t.join().unwrap();
            }
        }
    }

    /// The restart's path for single-use token ids: the old process's cores seal and export,
    /// the new process (another core count) imports by key; every used jti stays used, a new
    /// one is admitted once, the old shards refuse new ids with 503 and the capacity holds.
    #[test]
    fn shards_hand_their_entries_to_a_process_with_another_core_count() {
        let now = 1_000;
        let old = Shards::start(2, 100);
        let used: Vec<String> = (0..20).map(|i| format!("used-{i}")).collect();
        for j in &used {
            old.check(j, 2_000, now).unwrap();
        }
        old.check("short-lived", now + 1, now).unwrap();
        let (entries, complete) = export_shards(&old.lines, now + 1, Duration::from_secs(5));
        assert!(complete);
        assert_eq!(entries.len(), used.len(), "the expired entry is not sent");
        assert_eq!(
            old.check("late", 2_000, now + 2),
            Err(ReplayRefusal::HandedOver),
            "a sealed shard takes no new jti"
        );
        assert_eq!(
            old.check(&used[0], 2_000, now + 2),
            Err(ReplayRefusal::Replayed)
        );
        old.stop();

        let new = Shards::start(3, 100);
        let summary = import_shards(&new.lines, entries.clone(), now + 2, Duration::from_secs(5));
        assert!(summary.all_cores);
        assert_eq!(summary.outcome.kept, used.len());
        for j in &used {
            assert_eq!(
                new.check(j, 2_000, now + 3),
                Err(ReplayRefusal::Replayed),
                "{j}"
            );
        }
        assert_eq!(new.check("fresh", 2_000, now + 3), Ok(()));
        assert_eq!(
            new.check("fresh", 2_000, now + 3),
            Err(ReplayRefusal::Replayed)
        );
        new.stop();

        // A smaller store keeps what fits and says what it dropped.
        let small = Shards::start(3, 2);
        let summary = import_shards(&small.lines, entries, now + 2, Duration::from_secs(5));
        assert!(summary.all_cores);
        assert!(summary.outcome.kept <= 6, "{summary:?}");
        assert_eq!(summary.outcome.kept + summary.outcome.dropped, used.len());
        small.stop();

        // A core that is gone: the export says it is not complete.
        let (mut lines, mut questions) = replay_lines(2);
        drop(questions.pop());
        let dead = lines.pop().unwrap();
        let (_, complete) = export_shards(&[dead], now, Duration::from_millis(50));
        assert!(!complete);
        drop(lines);
    }

    #[test]
    fn records_show_the_normalised_target_without_a_query_token() {
        let dir = tempfile::tempdir().unwrap();
        let a = hs_admission(dir.path());
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
