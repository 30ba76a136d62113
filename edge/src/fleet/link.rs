//! The fleet thread: one command connection (scripts, pipelined) and one subscription to
//! Redis, made again with backoff whenever either breaks. Nothing here blocks a core: asks come
//! in on a channel, answers and publications go out on the cores' lines.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::StreamExt as _;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Value};
use wssedge_proto::pubsub::Reason;

use super::wire;
use super::{
    FleetAsk, FleetConfig, FleetParts, FleetStatus, FleetVerdict, LaterAsks, SessionInfo,
    SessionList, LATER_WINDOW,
};
use crate::audit::{AuditEvent, AuditHandle};
use crate::auth::kicks::Kicks;
use crate::auth::revocation::{RevocationEntry, Revocations};
use crate::pubsub::lines::{CoreMsg, Lines};

/// Revocations kept while Redis is away; past it the oldest is dropped (and logged).
const MAX_PENDING_REVOCATIONS: usize = 65_536;
/// Asks sent to Redis in one pipeline at most.
const MAX_ASKS_PER_PIPELINE: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// A command (or the liveness PING) not answered in this long means the link is broken.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const PING_EVERY: Duration = Duration::from_secs(1);
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The link thread's nice value: above the cores' (0), far from starving it (CFS gives it a
/// third of a core's weight).
const LINK_NICE: i32 = 5;

/// Redis' client for `cfg`: address, database, password and TLS trust.
pub(super) fn client(cfg: &FleetConfig) -> Result<Client, String> {
    let target = cfg.target().map_err(|e| e.to_string())?;
    let mut info = cfg
        .redis
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("fleet.redis {}: {e}", cfg.redis))?;
    if let Some(password) = cfg.password().map_err(|e| e.to_string())? {
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    let client = match (&cfg.ca, target.tls) {
        (Some(ca), true) => {
            let pem = std::fs::read(ca).map_err(|e| format!("fleet.ca {}: {e}", ca.display()))?;
            Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
        }
        _ => Client::open(info),
    };
    client.map_err(|e| format!("fleet.redis {}: {e}", cfg.redis))
}

pub(super) struct Link {
    client: Client,
    status: Arc<FleetStatus>,
    lines: Option<Lines>,
    history: usize,
    revocations: Arc<arc_swap::ArcSwap<Revocations>>,
    kicks: Arc<arc_swap::ArcSwap<Kicks>>,
    audit: AuditHandle,
    /// For logs.
    redis: String,
    /// Revocations made while Redis was away, oldest first, sent when it is back.
    pending: VecDeque<(RevocationEntry, bool)>,
    /// This node's part of the fleet's state, kept here so that it can be written again
    /// whole at every connection: its sessions per identity, and its open sessions.
    identities: HashMap<String, u32>,
    sessions: HashMap<String, SessionInfo>,
    /// A node's keys expire this long after it stops renewing them (killed, cut off).
    lease: Duration,
    /// Asks nobody waits on, queued by the cores for the next pipeline.
    later: LaterAsks,
}

/// The scripts' hashes on the server they were loaded on.
struct Scripts {
    publish: String,
    sync: String,
    admit: String,
}

impl Link {
    pub fn new(
        client: Client,
        status: Arc<FleetStatus>,
        later: LaterAsks,
        parts: FleetParts,
        redis: String,
        lease: Duration,
    ) -> Self {
        Self {
            client,
            status,
            later,
            lines: parts.lines,
            history: parts.history,
            revocations: parts.revocations,
            kicks: parts.kicks,
            audit: parts.audit,
            redis,
            pending: VecDeque::new(),
            identities: HashMap::new(),
            sessions: HashMap::new(),
            lease,
        }
    }

    pub fn run(mut self, mut asks: UnboundedReceiver<FleetAsk>) {
        // Below the cores: where the link shares a CPU with a core, a wake of the link (an
        // ask, Redis' answer) does not preempt the core's loop pass; the link runs once the
        // core waits, and takes the asks of the whole pass in one pipeline.
        if let Err(e) = wssedge_sys::affinity::set_thread_nice(LINK_NICE) {
            tracing::debug!(error = %e, "fleet: the link thread keeps the cores' priority");
        }
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "fleet: cannot build the runtime; the fleet stays down");
                return;
            }
        };
        rt.block_on(async move {
            let mut backoff = BACKOFF_FIRST;
            // An outage retries every 5 s at most: one line a minute says how many failed.
            let unreachable = crate::repeats::Repeats::every(Duration::from_secs(60));
            loop {
                match self.connect().await {
                    Ok((mut conn, subscription, scripts)) => match self.resync(&mut conn).await {
                        Ok(()) => {
                            backoff = BACKOFF_FIRST;
                            self.status.connects.inc();
                            self.set_up(true, "");
                            tracing::info!(redis = %self.redis, node = %self.status.node, "fleet: connected to Redis");
                            let why = self.serve(conn, subscription, &scripts, &mut asks).await;
                            self.status.disconnects.inc();
                            self.set_up(false, &why);
                            tracing::warn!(redis = %self.redis, reason = %why, "fleet: lost Redis; reconnecting");
                        }
                        Err(e) => {
                            tracing::warn!(redis = %self.redis, error = %e, "fleet: resync with Redis failed");
                        }
                    },
                    Err(e) => {
                        if let Some(times) = unreachable.note(std::time::Instant::now()) {
                            tracing::warn!(redis = %self.redis, error = %e, times, retry_in_ms = backoff.as_millis() as u64, "fleet: cannot reach Redis (said once a minute while it lasts)");
                        }
                    }
                }
                if !self.wait_down(backoff, &mut asks).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        });
    }

    fn set_up(&self, up: bool, why: &str) {
        self.status.set_up(up);
        if let Some(lines) = &self.lines {
            for core in 0..lines.cores() {
                lines.send(core, CoreMsg::FleetState { up });
            }
        }
        self.audit.record(AuditEvent::Fleet {
            state: if up { "up" } else { "down" }.into(),
            node: self.status.node.clone(),
            redis: self.redis.clone(),
            detail: why.to_owned(),
        });
    }

    /// On every (re)connection, before anything else: the revocations made here while Redis
    /// was away go out first; then the fleet's set is read back and applied here (a node that
    /// starts later, or was away, learns what was decided meanwhile, lifted ones included), and
    /// what this node holds that Redis does not know (Redis lost its data) is announced again:
    /// a Redis that restarts empty never lifts a revocation.
    async fn resync(&mut self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        while let Some((entry, revoke)) = self.pending.front().cloned() {
            self.send_revocation(conn, &entry, revoke).await?;
            self.pending.pop_front();
            self.status.control_pending.add(-1);
        }
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(wire::REVOCATIONS)
            .query_async(conn)
            .await
            .map_err(|e| format!("HGETALL {}: {e}", wire::REVOCATIONS))?;
        let known: std::collections::HashMap<RevocationEntry, bool> = all
            .iter()
            .filter_map(|(field, by)| {
                Some((wire::parse_revocation_field(field)?, by != wire::LIFTED))
            })
            .collect();
        let mut changed: Vec<(RevocationEntry, bool)> = Vec::new();
        let mut unknown = Vec::new();
        self.revocations.rcu(|current| {
            let mut next = (**current).clone();
            changed.clear();
            for (entry, revoked) in &known {
                let moved = if *revoked {
                    next.revoke(entry)
                } else {
                    next.unrevoke(entry).unwrap_or(false)
                };
                if moved {
                    changed.push((entry.clone(), *revoked));
                }
            }
            unknown = next
                .command_entries()
                .into_iter()
                .filter(|e| !known.contains_key(e))
                .collect();
            next
        });
        for (entry, revoked) in changed {
            self.audit_revocation(&entry, if revoked { "" } else { "un" }, "fleet");
        }
        for entry in unknown {
            self.send_revocation(conn, &entry, true).await?;
        }
        self.rewrite_presence(conn).await
    }

    async fn send_revocation(
        &self,
        conn: &mut MultiplexedConnection,
        entry: &RevocationEntry,
        revoke: bool,
    ) -> Result<(), String> {
        let field = wire::revocation_field(entry);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if revoke {
            pipe.hset(wire::REVOCATIONS, &field, &self.status.node)
                .ignore();
        } else {
            pipe.hdel(wire::REVOCATIONS, &field).ignore();
        }
        let op = if revoke {
            wire::ControlOp::Revoke
        } else {
            wire::ControlOp::Unrevoke
        };
        pipe.publish(
            wire::CONTROL_CHANNEL,
            wire::encode_control(op, &field, &self.status.node),
        )
        .ignore();
        let done: Result<(), _> = pipe.query_async(conn).await;
        done.map_err(|e| format!("revocation: {e}"))?;
        self.status.control_sent.inc();
        Ok(())
    }

    fn audit_revocation(&self, entry: &RevocationEntry, prefix: &str, source: &str) {
        let (kind, value) = match entry {
            RevocationEntry::Jti(v) => ("jti", v),
            RevocationEntry::Sub(v) => ("subject", v),
        };
        self.audit.record(AuditEvent::Revocation {
            kind: format!("{prefix}{kind}"),
            value: value.clone(),
            source: source.to_owned(),
        });
    }

    /// A revocation or a kick another node announced.
    fn control_received(&self, payload: &[u8]) {
        let Some(c) = wire::parse_control(payload) else {
            self.status.bad_messages.inc();
            tracing::warn!(
                bytes = payload.len(),
                "fleet: dropped a message on the control channel"
            );
            return;
        };
        if c.node == self.status.node {
            return; // ours: applied when it was made
        }
        self.status.control_received.inc();
        let source = format!("fleet:{}", c.node);
        match c.op {
            wire::ControlOp::Kick => {
                self.revocations_kick(&c.value, &c.node);
            }
            op => {
                let Some(entry) = wire::parse_revocation_field(&c.value) else {
                    self.status.bad_messages.inc();
                    return;
                };
                let revoke = op == wire::ControlOp::Revoke;
                let mut changed = false;
                self.revocations.rcu(|current| {
                    let mut next = (**current).clone();
                    changed = if revoke {
                        next.revoke(&entry)
                    } else {
                        next.unrevoke(&entry).unwrap_or(false)
                    };
                    next
                });
                if changed {
                    self.audit_revocation(&entry, if revoke { "" } else { "un" }, &source);
                }
            }
        }
    }

    fn revocations_kick(&self, subject: &str, asked_by: &str) {
        self.kicks.rcu(|current| {
            let mut next = (**current).clone();
            next.kick(subject);
            next
        });
        self.audit.record(AuditEvent::Kick {
            subject: subject.to_owned(),
            asked_by: asked_by.to_owned(),
        });
    }

    async fn connect(
        &self,
    ) -> Result<(MultiplexedConnection, redis::aio::PubSubStream, Scripts), String> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())?;
        let load = |code: String| redis::cmd("SCRIPT").arg("LOAD").arg(code).clone();
        let scripts = Scripts {
            publish: load(wire::publish_script())
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("SCRIPT LOAD: {e}"))?,
            sync: load(wire::sync_script())
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("SCRIPT LOAD: {e}"))?,
            admit: load(wire::ADMIT_SCRIPT.to_owned())
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("SCRIPT LOAD: {e}"))?,
        };
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| "subscription: connect timed out".to_string())?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(
            RESPONSE_TIMEOUT,
            pubsub.subscribe(&[wire::CHANNEL, wire::CONTROL_CHANNEL]),
        )
        .await
        .map_err(|_| "SUBSCRIBE timed out".to_string())?
        .map_err(|e| format!("SUBSCRIBE: {e}"))?;
        Ok((conn, pubsub.into_on_message(), scripts))
    }

    /// Serves until the link breaks; why it did.
    async fn serve(
        &mut self,
        mut conn: MultiplexedConnection,
        mut subscription: redis::aio::PubSubStream,
        scripts: &Scripts,
        asks: &mut UnboundedReceiver<FleetAsk>,
    ) -> String {
        let mut ping = tokio::time::interval(PING_EVERY.min(self.lease / 3));
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the later asks go out (none waiting: never). Whatever waited while the link
        // was down or connecting goes out at once.
        let mut flush_at = Some(tokio::time::Instant::now());
        loop {
            let flush = flush_at.unwrap_or_else(|| tokio::time::Instant::now() + PING_EVERY);
            // A core behind on its inbox: leave the subscription in the socket a moment.
            if self.status.behind() {
                self.status.paused.inc();
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            tokio::select! {
                msg = subscription.next() => match msg {
                    Some(msg) if msg.get_channel_name() == wire::CONTROL_CHANNEL => {
                        self.control_received(msg.get_payload_bytes())
                    }
                    Some(msg) => self.received(msg.get_payload_bytes()),
                    None => return "the subscription closed".into(),
                },
                _ = tokio::time::sleep_until(flush), if flush_at.is_some() => {
                    flush_at = None;
                    let later = self.take_later();
                    if let Err(e) = self.run_batch(&mut conn, scripts, later).await {
                        return e;
                    }
                }
                ask = asks.next() => {
                    let Some(first) = ask else { return "the edge is stopping".into() };
                    let mut batch = Vec::new();
                    let mut next = Some(first);
                    while let Some(ask) = next {
                        if matches!(ask, FleetAsk::Later) {
                            flush_at.get_or_insert_with(|| tokio::time::Instant::now() + LATER_WINDOW);
                        } else {
                            self.note(&ask);
                            batch.push(ask);
                        }
                        next = if batch.len() < MAX_ASKS_PER_PIPELINE { asks.try_recv().ok() } else { None };
                    }
                    if batch.is_empty() {
                        continue; // only later asks: they go out at `flush_at`
                    }
                    // The later asks go first (they were made first: a count given back
                    // before a new one is asked), in the same pipeline when nothing needs
                    // them out before it.
                    flush_at = None;
                    let mut later = self.take_later();
                    // Revocations, kicks and listings one by one, in order; the rest in one
                    // pipeline.
                    let (control, batch): (Vec<FleetAsk>, Vec<FleetAsk>) = batch
                        .into_iter()
                        .partition(|a| matches!(a, FleetAsk::Revocation { .. } | FleetAsk::Kick { .. } | FleetAsk::ListSessions { .. }));
                    if !control.is_empty() {
                        // A listing sees the sessions opened before it was asked for.
                        if let Err(e) = self.run_batch(&mut conn, scripts, std::mem::take(&mut later)).await {
                            return e;
                        }
                    }
                    for ask in control {
                        if let Err(e) = self.send_control(&mut conn, ask).await {
                            return e;
                        }
                    }
                    later.extend(batch);
                    if let Err(e) = self.run_batch(&mut conn, scripts, later).await {
                        return e;
                    }
                }
                _ = ping.tick() => {
                    // The node's lease, renewed: also the link's liveness check.
                    if let Err(e) = self.renew_lease(&mut conn).await {
                        return e;
                    }
                }
            }
        }
    }

    /// A revocation or a kick made here; a revocation that cannot be sent is kept for the
    /// next connection (and breaks this one).
    async fn send_control(
        &mut self,
        conn: &mut MultiplexedConnection,
        ask: FleetAsk,
    ) -> Result<(), String> {
        match ask {
            FleetAsk::Revocation { entry, revoke } => {
                if let Err(e) = self.send_revocation(conn, &entry, revoke).await {
                    self.keep_for_later(entry, revoke);
                    return Err(e);
                }
            }
            FleetAsk::Kick { subject } => {
                let message =
                    wire::encode_control(wire::ControlOp::Kick, &subject, &self.status.node);
                let sent: Result<i64, _> = redis::cmd("PUBLISH")
                    .arg(wire::CONTROL_CHANNEL)
                    .arg(message)
                    .query_async(conn)
                    .await;
                sent.map_err(|e| format!("kick: {e}"))?;
                self.status.control_sent.inc();
            }
            FleetAsk::ListSessions { subject, reply } => {
                let sessions = self.fleet_sessions(conn).await?;
                let sessions = sessions
                    .into_iter()
                    .filter(|s| subject.is_none() || s.subject == subject)
                    .collect();
                let _ = reply.send(SessionList {
                    fleet: true,
                    sessions,
                });
            }
            other => self.answer(other, None),
        }
        Ok(())
    }

    /// Every live node's sessions (a node whose lease ran out is left out, whatever its keys
    /// still say).
    async fn fleet_sessions(
        &self,
        conn: &mut MultiplexedConnection,
    ) -> Result<Vec<SessionInfo>, String> {
        let nodes: Vec<String> = redis::cmd("SMEMBERS")
            .arg(wire::NODES)
            .query_async(conn)
            .await
            .map_err(|e| format!("SMEMBERS: {e}"))?;
        let mut out = Vec::new();
        for node in nodes {
            let alive: bool = redis::cmd("EXISTS")
                .arg(wire::node_key(&node, "alive"))
                .query_async(conn)
                .await
                .map_err(|e| format!("EXISTS: {e}"))?;
            if !alive {
                continue;
            }
            let all: Vec<(String, String)> = redis::cmd("HGETALL")
                .arg(wire::node_key(&node, "sessions"))
                .query_async(conn)
                .await
                .map_err(|e| format!("HGETALL: {e}"))?;
            out.extend(
                all.into_iter()
                    .filter_map(|(_, v)| serde_json::from_str::<SessionInfo>(&v).ok()),
            );
        }
        out.sort_by(|a, b| (a.since, &a.node, &a.peer).cmp(&(b.since, &b.node, &b.peer)));
        Ok(out)
    }

    /// This node's lease and what hangs on it: renewed every third of `lease`.
    async fn renew_lease(&self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let node = &self.status.node;
        let ms = self.lease.as_millis() as u64;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(wire::node_key(node, "alive"))
            .arg(1)
            .arg("PX")
            .arg(ms)
            .ignore()
            .sadd(wire::NODES, node)
            .ignore()
            .cmd("PEXPIRE")
            .arg(wire::node_key(node, "identities"))
            .arg(ms)
            .ignore()
            .cmd("PEXPIRE")
            .arg(wire::node_key(node, "sessions"))
            .arg(ms)
            .ignore();
        let done: Result<(), _> = pipe.query_async(conn).await;
        done.map_err(|e| format!("lease: {e}"))
    }

    /// This node's identities and sessions written whole (a new connection: Redis may have
    /// expired or lost them, or they changed while it was away).
    async fn rewrite_presence(&self, conn: &mut MultiplexedConnection) -> Result<(), String> {
        let node = &self.status.node;
        let (ids, sessions) = (
            wire::node_key(node, "identities"),
            wire::node_key(node, "sessions"),
        );
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.del(&ids).ignore().del(&sessions).ignore();
        for (identity, n) in &self.identities {
            pipe.hset(&ids, identity, *n).ignore();
        }
        for (id, info) in &self.sessions {
            let json = serde_json::to_string(info).unwrap_or_default();
            pipe.hset(&sessions, id, json).ignore();
        }
        let done: Result<(), _> = pipe.query_async(conn).await;
        done.map_err(|e| format!("presence: {e}"))?;
        self.renew_lease(conn).await
    }

    /// Keeps this node's copy of its presence (sessions, identity counts) as asks arrive.
    fn note(&mut self, ask: &FleetAsk) {
        match ask {
            FleetAsk::ReleaseIdentity { identity } => {
                if let Some(n) = self.identities.get_mut(identity) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.identities.remove(identity);
                    }
                }
            }
            FleetAsk::SessionOpened { id, info } => {
                self.sessions.insert(id.clone(), info.clone());
            }
            FleetAsk::SessionClosed { id } => {
                self.sessions.remove(id);
            }
            _ => {}
        }
    }

    /// The later asks queued so far, kept in this node's copy of its presence.
    fn take_later(&mut self) -> Vec<FleetAsk> {
        let later = std::mem::take(&mut *self.later.lock().unwrap_or_else(|e| e.into_inner()));
        for ask in &later {
            self.note(ask);
        }
        later
    }

    fn counted(&mut self, identity: &str) {
        *self.identities.entry(identity.to_owned()).or_insert(0) += 1;
    }

    fn keep_for_later(&mut self, entry: RevocationEntry, revoke: bool) {
        if self.pending.len() >= MAX_PENDING_REVOCATIONS {
            tracing::error!(
                kept = MAX_PENDING_REVOCATIONS,
                "fleet: too many revocations waiting for Redis; the oldest is dropped (it stays in force here)"
            );
            self.pending.pop_front();
            self.status.control_pending.add(-1);
        }
        self.pending.push_back((entry, revoke));
        self.status.control_pending.add(1);
    }

    /// One message on the publication channel: to its topic's owner core.
    fn received(&self, payload: &[u8]) {
        let Some(lines) = &self.lines else {
            return; // no pub/sub on this node
        };
        match wire::parse_publication(payload) {
            Ok(p) => {
                self.status.received.inc();
                let owner = lines.owner(&p.topic);
                self.status.sent(owner);
                lines.send(owner, CoreMsg::FleetPublication(p));
            }
            Err(e) => {
                self.status.bad_messages.inc();
                tracing::warn!(error = %e, bytes = payload.len(), "fleet: dropped a message on the publication channel");
            }
        }
    }

    /// Sends `batch` as one pipeline and hands out the answers, in order. An error that breaks
    /// the pipeline fails every ask in it and breaks the link.
    async fn run_batch(
        &mut self,
        conn: &mut MultiplexedConnection,
        scripts: &Scripts,
        batch: Vec<FleetAsk>,
    ) -> Result<(), String> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let history = self.history.to_string();
        let epoch = fresh_epoch();
        for ask in &batch {
            match ask {
                FleetAsk::Publish { topic, data, .. } => {
                    let [seq, ep, log] = wire::topic_keys(topic);
                    pipe.cmd("EVALSHA")
                        .arg(&scripts.publish)
                        .arg(3)
                        .arg(seq)
                        .arg(ep)
                        .arg(log)
                        .arg(&epoch)
                        .arg(&history)
                        .arg(&**topic)
                        .arg(&data[..]);
                }
                FleetAsk::Sync { topic } => {
                    let [seq, ep, log] = wire::topic_keys(topic);
                    pipe.cmd("EVALSHA")
                        .arg(&scripts.sync)
                        .arg(3)
                        .arg(seq)
                        .arg(ep)
                        .arg(log)
                        .arg(&epoch)
                        .arg(&history);
                }
                // A claim alone is a plain SET (cheaper for Redis than a script).
                FleetAsk::Admit {
                    claim: Some((key, ttl_ms)),
                    identity: None,
                    ..
                } => {
                    pipe.cmd("SET")
                        .arg(key)
                        .arg(&self.status.node)
                        .arg("NX")
                        .arg("PX")
                        .arg(*ttl_ms);
                }
                FleetAsk::Admit {
                    claim, identity, ..
                } => {
                    let (key, ttl_ms) = claim.as_ref().map_or(("", 0), |(k, t)| (k.as_str(), *t));
                    let (identity, limit) =
                        identity.as_ref().map_or(("", 0), |(i, l)| (i.as_str(), *l));
                    pipe.cmd("EVALSHA")
                        .arg(&scripts.admit)
                        .arg(0)
                        .arg(key)
                        .arg(ttl_ms)
                        .arg(&self.status.node)
                        .arg(identity)
                        .arg(limit)
                        .arg(self.lease.as_millis() as u64);
                }
                FleetAsk::ReleaseIdentity { identity } => {
                    pipe.hincr(
                        wire::node_key(&self.status.node, "identities"),
                        identity,
                        -1,
                    );
                }
                FleetAsk::SessionOpened { id, info } => {
                    let json = serde_json::to_string(info).unwrap_or_default();
                    pipe.hset(wire::node_key(&self.status.node, "sessions"), id, json);
                }
                FleetAsk::SessionClosed { id } => {
                    pipe.hdel(wire::node_key(&self.status.node, "sessions"), id);
                }
                // Sent one by one by `send_control` (or a marker, taken out before): never
                // batched; a PING would keep the answers in line if one were.
                FleetAsk::Revocation { .. }
                | FleetAsk::Kick { .. }
                | FleetAsk::ListSessions { .. }
                | FleetAsk::Later => {
                    pipe.cmd("PING");
                }
            }
        }
        let answers: Result<Vec<Value>, _> = pipe.query_async(conn).await;
        let (answers, broken) = match answers {
            Ok(a) if a.len() == batch.len() => (a.into_iter().map(Some).collect(), None),
            Ok(_) => (
                vec![None; batch.len()],
                Some("a pipeline answered short".to_string()),
            ),
            Err(e) => (vec![None; batch.len()], Some(e.to_string())),
        };
        for (ask, answer) in batch.into_iter().zip(answers) {
            self.answer(ask, answer.as_ref());
        }
        match broken {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn answer(&mut self, ask: FleetAsk, answer: Option<&Value>) {
        if let FleetAsk::Admit {
            claim,
            identity,
            admits_unanswered,
            reply,
        } = ask
        {
            let verdict = wire::parse_admit(answer, identity.is_some());
            if claim.is_some() {
                match verdict {
                    Ok(FleetVerdict::Admitted | FleetVerdict::AtIdentityLimit) => {
                        self.status.claims.inc()
                    }
                    Ok(FleetVerdict::Replayed) => self.status.claims_replayed.inc(),
                    Err(()) => self.status.claim_failures.inc(),
                }
            }
            if let Some((identity, _)) = identity {
                if verdict == Ok(FleetVerdict::Admitted) || (verdict.is_err() && admits_unanswered)
                {
                    self.counted(&identity);
                }
            }
            let _ = reply.send(verdict);
            return;
        }
        if let FleetAsk::ListSessions { subject, reply } = ask {
            let sessions = self
                .sessions
                .values()
                .filter(|s| subject.is_none() || s.subject == subject)
                .cloned()
                .collect();
            let _ = reply.send(SessionList {
                fleet: false,
                sessions,
            });
            return;
        }
        let Some(lines) = &self.lines else { return };
        match ask {
            FleetAsk::Publish { asker, request, .. } => {
                let result = match answer.map(wire::parse_published) {
                    Some(Ok((_, seq))) => {
                        self.status.published.inc();
                        Ok(seq)
                    }
                    other => {
                        self.status.publish_failures.inc();
                        if let Some(Err(e)) = other {
                            tracing::warn!(error = %e, "fleet: a publication was not sequenced");
                        }
                        Err(Reason::FleetUnavailable)
                    }
                };
                if let Some(asker) = asker {
                    lines.send(
                        asker.core,
                        CoreMsg::Published {
                            client: asker.client,
                            request,
                            result,
                        },
                    );
                }
            }
            FleetAsk::Sync { topic } => {
                let result = match answer.map(wire::parse_synced) {
                    Some(Ok(synced)) => {
                        self.status.syncs.inc();
                        Ok(synced)
                    }
                    other => {
                        if let Some(Err(e)) = other {
                            tracing::warn!(topic = %topic, error = %e, "fleet: a topic could not be read back");
                        }
                        Err(())
                    }
                };
                let owner = lines.owner(&topic);
                lines.send(owner, CoreMsg::FleetSynced { topic, result });
            }
            // Not answered: sent by `send_control`, kept or dropped by `wait_down`.
            FleetAsk::Revocation { .. } | FleetAsk::Kick { .. } => {}
            FleetAsk::Admit { .. } | FleetAsk::ListSessions { .. } => {} // answered above
            // Kept in `note`; nothing to answer.
            FleetAsk::ReleaseIdentity { .. }
            | FleetAsk::SessionOpened { .. }
            | FleetAsk::SessionClosed { .. }
            | FleetAsk::Later => {}
        }
    }

    /// The link is down for `backoff`: asks fail at once meanwhile (nothing waits on Redis).
    /// False when the edge is stopping.
    async fn wait_down(
        &mut self,
        backoff: Duration,
        asks: &mut UnboundedReceiver<FleetAsk>,
    ) -> bool {
        let sleep = tokio::time::sleep(backoff);
        tokio::pin!(sleep);
        // Kept in this node's copy of its presence, written to Redis when it is back.
        self.take_later();
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                ask = asks.next() => match ask {
                    Some(FleetAsk::Later) => {
                        self.take_later();
                    }
                    Some(FleetAsk::Revocation { entry, revoke }) => self.keep_for_later(entry, revoke),
                    Some(ask @ (FleetAsk::ReleaseIdentity { .. } | FleetAsk::SessionOpened { .. } | FleetAsk::SessionClosed { .. })) => self.note(&ask),
                    Some(FleetAsk::Kick { subject }) => {
                        tracing::warn!(subject = %subject, "fleet: Redis unreachable; the kick closed this node's sessions only");
                    }
                    Some(ask) => self.answer(ask, None),
                    None => return false,
                },
            }
        }
    }
}

/// A new epoch, for a topic Redis has none of: random, so that a topic made again after Redis
/// lost it never reuses one.
fn fresh_epoch() -> String {
    let mut epoch = crate::pubsub::owner::random_epoch_prefix();
    epoch.push('r');
    epoch
}
