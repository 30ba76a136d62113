//! A fleet of edges on one Redis: what the nodes share, and the thread that talks to Redis.
//!
//! The Redis client runs off the cores, on its own thread with its own (tokio) runtime; the
//! cores talk to it by message ([`FleetAsk`] in, [`crate::pubsub::lines::CoreMsg`] out) and never
//! wait on it. One subscription per node carries every publication of the fleet
//! ([`wire::CHANNEL`]); each is handed to the core that owns its topic, which keeps it and
//! fans it out like a local one.
//!
//! - [`config`]: the `[fleet]` section.
//! - [`wire`]: keys, scripts and the channel's messages (no I/O).
//! - [`link`]: the thread: connections, reconnects with backoff, the scripts in pipelines.
//!
//! Bounds: the asks channel is unbounded but bounded by who asks — a connection has at most
//! `MAX_ASKS_IN_FLIGHT` publishes and subscribes out, an upgrade one claim and one identity
//! count, a session one open and one close, the control socket one command at a time — and
//! the link answers every ask at once while Redis is away. Publications from Redis to a core
//! stop being read past [`MAX_PENDING_PER_CORE`]; revocations kept for a returning Redis stop
//! at 65,536 (the oldest then go, logged; they stay in force where they were made).

pub mod config;
mod link;
pub(crate) mod wire;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures_channel::mpsc::UnboundedSender;

pub use config::{DownMode, FleetConfig, SingleUseDown};

use crate::audit::AuditHandle;
use crate::auth::revocation::{RevocationEntry, Revocations};
use crate::metrics::{Counter, PrometheusFamilies};
use crate::pubsub::lines::{Asker, Lines};

/// Publications from Redis waiting in one core's inbox beyond which the link stops reading the
/// subscription (Redis buffers, then drops the link past its own output limit; the node then
/// resyncs) rather than queue without bound.
pub(crate) const MAX_PENDING_PER_CORE: usize = 1 << 16;

/// What a core asks of the fleet.
#[derive(Debug)]
pub(crate) enum FleetAsk {
    /// Sequence, keep and announce a publication fleet-wide; `asker` is told its seq.
    Publish {
        topic: Arc<str>,
        data: Bytes,
        asker: Option<Asker>,
        request: u64,
    },
    /// The topic's epoch, last seq and history, for its owner core.
    Sync {
        topic: Arc<str>,
    },
    /// A revocation (or its lifting) made on this node: stored in Redis and announced to every
    /// node; kept until Redis is back while it is not.
    Revocation {
        entry: RevocationEntry,
        revoke: bool,
    },
    /// Close the subject's sessions on every node (ephemeral: dropped while Redis is away).
    Kick {
        subject: String,
    },
    /// Count one more session of `identity` fleet-wide if the fleet holds fewer than `limit`
    /// (`Ok(true)`); `Ok(false)`: at the limit; `Err`: Redis did not answer (the session is then
    /// counted here and in Redis once it is back).
    AcquireIdentity {
        identity: String,
        limit: u32,
        reply: futures_channel::oneshot::Sender<Result<bool, ()>>,
    },
    /// A session counted by `AcquireIdentity` ended.
    ReleaseIdentity {
        identity: String,
    },
    /// A session opened on this node (for `wssedge ctl sessions`).
    SessionOpened {
        id: String,
        info: SessionInfo,
    },
    SessionClosed {
        id: String,
    },
    /// The fleet's sessions (of `subject`, if given), for the control socket.
    ListSessions {
        subject: Option<String>,
        reply: std::sync::mpsc::Sender<SessionList>,
    },
    /// Claim a single-use token id fleet-wide for `ttl_ms`: `Ok(true)` if this was its first
    /// use anywhere, `Ok(false)` if a node had it, `Err` if Redis did not answer.
    Claim {
        key: String,
        ttl_ms: u64,
        reply: futures_channel::oneshot::Sender<Result<bool, ()>>,
    },
}

/// One session as `wssedge ctl sessions` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    pub node: String,
    pub peer: String,
    pub subject: Option<String>,
    pub path: String,
    /// UNIX seconds.
    pub since: u64,
}

/// The answer to [`FleetAsk::ListSessions`]: the sessions, and whether they are the whole
/// fleet's (`false`: Redis was unreachable, this node's only).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionList {
    pub fleet: bool,
    pub sessions: Vec<SessionInfo>,
}

/// An open session's part in the fleet: listed while it lives, and its identity counted;
/// dropping it (the session ended) takes both back.
pub(crate) struct FleetSession {
    fleet: Fleet,
    id: String,
    identity: Option<String>,
}

impl Drop for FleetSession {
    fn drop(&mut self) {
        if let Some(identity) = self.identity.take() {
            self.fleet.ask(FleetAsk::ReleaseIdentity { identity });
        }
        self.fleet.ask(FleetAsk::SessionClosed {
            id: std::mem::take(&mut self.id),
        });
    }
}

/// A session counted against its identity's fleet-wide limit before its 101; moved into the
/// [`FleetSession`] once it opens, or given back when dropped (the upgrade failed after all).
pub(crate) struct IdentityHold {
    fleet: Fleet,
    identity: Option<String>,
}

impl Drop for IdentityHold {
    fn drop(&mut self) {
        if let Some(identity) = self.identity.take() {
            self.fleet.ask(FleetAsk::ReleaseIdentity { identity });
        }
    }
}

/// What an upgrade on a core asks of the fleet: the link, and what to do while it is down.
#[derive(Debug, Clone)]
pub(crate) struct FleetAdmission {
    pub fleet: Fleet,
    pub down: DownMode,
    pub single_use_down: SingleUseDown,
}

impl FleetAdmission {
    /// Counts a session of `identity` fleet-wide: `None` when the fleet holds `limit` of them
    /// already. Redis out of reach: counted here (and in Redis when it is back), admitted on
    /// the local count as `down = "local"` says.
    pub async fn acquire_identity(&self, identity: &str, limit: u32) -> Option<IdentityHold> {
        let (reply, answer) = futures_channel::oneshot::channel();
        self.fleet.ask(FleetAsk::AcquireIdentity {
            identity: identity.to_owned(),
            limit,
            reply,
        });
        match answer.await.unwrap_or(Err(())) {
            Ok(false) => None,
            Ok(true) | Err(()) => Some(IdentityHold {
                fleet: self.fleet.clone(),
                identity: Some(identity.to_owned()),
            }),
        }
    }

    /// A session admitted without the fleet's answer (it did not come in time): counted here,
    /// and in Redis by the link when it can (the count's release goes the same way).
    pub fn unchecked_hold(&self, identity: &str) -> IdentityHold {
        IdentityHold {
            fleet: self.fleet.clone(),
            identity: Some(identity.to_owned()),
        }
    }

    /// The session opened: listed fleet-wide until the returned guard drops.
    pub fn opened(
        &self,
        id: String,
        mut info: SessionInfo,
        hold: Option<IdentityHold>,
    ) -> FleetSession {
        info.node = self.fleet.status.node.clone();
        self.fleet.ask(FleetAsk::SessionOpened {
            id: id.clone(),
            info,
        });
        FleetSession {
            fleet: self.fleet.clone(),
            id,
            identity: hold.and_then(|mut h| h.identity.take()),
        }
    }

    /// New upgrades are refused (503 `fleet_unavailable`) right now.
    pub fn refuses_new(&self) -> bool {
        self.down == DownMode::RefuseNew && !self.fleet.is_up()
    }

    /// Claims a single-use token id (its replay-store key) until `exp_unix` (+ leeway) on every
    /// node; see [`FleetAsk::Claim`].
    pub async fn claim(&self, key: &[u8; 16], ttl_ms: u64) -> Result<bool, ()> {
        if !self.fleet.is_up() {
            return Err(());
        }
        let (reply, answer) = futures_channel::oneshot::channel();
        let mut hex = String::with_capacity(32);
        for b in key {
            let _ = write!(hex, "{b:02x}");
        }
        self.fleet.ask(FleetAsk::Claim {
            key: hex,
            ttl_ms,
            reply,
        });
        answer.await.unwrap_or(Err(()))
    }
}

/// What the link works with besides Redis.
pub(crate) struct FleetParts {
    /// The cores' pub/sub lines (none: this node serves no pub/sub).
    pub lines: Option<Lines>,
    /// `[pubsub] history`: entries a topic's stream keeps.
    pub history: usize,
    /// The admission's revocation set: fleet revocations are applied to it.
    pub revocations: Arc<arc_swap::ArcSwap<Revocations>>,
    /// The admission's kicks: other nodes' kicks are applied to them.
    pub kicks: Arc<arc_swap::ArcSwap<crate::auth::kicks::Kicks>>,
    /// The link's state changes and the revocations it applies are audited.
    pub audit: AuditHandle,
}

/// The fleet link's state and counters, shared with `/metrics` and the cores.
#[derive(Debug)]
pub struct FleetStatus {
    pub node: String,
    /// `[fleet] down`, for `/healthz`.
    pub down_mode: DownMode,
    up: AtomicBool,
    pub connects: Counter,
    pub disconnects: Counter,
    pub published: Counter,
    pub publish_failures: Counter,
    pub received: Counter,
    pub bad_messages: Counter,
    /// Revocations and kicks this node sent to the fleet, and received from it.
    pub control_sent: Counter,
    pub control_received: Counter,
    /// Revocations made while Redis was away, waiting to be sent.
    pub control_pending: crate::metrics::Gauge,
    pub syncs: Counter,
    /// Single-use token ids claimed fleet-wide: first uses, replays, checks Redis did not answer.
    pub claims: Counter,
    pub claims_replayed: Counter,
    pub claim_failures: Counter,
    /// Times the link paused reading the subscription for a core behind on its inbox.
    pub paused: Counter,
    /// Per core: publications sent to it and not yet taken.
    pending: Vec<AtomicUsize>,
}

impl FleetStatus {
    fn new(node: String, cores: usize, down_mode: DownMode) -> Self {
        Self {
            node,
            down_mode,
            up: AtomicBool::new(false),
            connects: Counter::default(),
            disconnects: Counter::default(),
            published: Counter::default(),
            publish_failures: Counter::default(),
            received: Counter::default(),
            bad_messages: Counter::default(),
            control_sent: Counter::default(),
            control_received: Counter::default(),
            control_pending: crate::metrics::Gauge::default(),
            syncs: Counter::default(),
            claims: Counter::default(),
            claims_replayed: Counter::default(),
            claim_failures: Counter::default(),
            paused: Counter::default(),
            pending: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// `/healthz`'s line about the fleet.
    pub fn health_line(&self) -> String {
        match (self.is_up(), self.down_mode) {
            (true, _) => format!("fleet: up (node {})\n", self.node),
            (false, DownMode::Local) => format!(
                "fleet: down (node {}): Redis unreachable, serving on local state\n",
                self.node
            ),
            (false, DownMode::RefuseNew) => format!(
                "fleet: down (node {}): Redis unreachable, refusing new upgrades\n",
                self.node
            ),
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
    }

    /// A core took one publication the link sent it.
    pub fn taken(&self, core: usize) {
        if let Some(p) = self.pending.get(core) {
            p.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn sent(&self, core: usize) {
        if let Some(p) = self.pending.get(core) {
            p.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn behind(&self) -> bool {
        self.pending
            .iter()
            .any(|p| p.load(Ordering::Relaxed) >= MAX_PENDING_PER_CORE)
    }
}

impl PrometheusFamilies for FleetStatus {
    fn render_families(&self, out: &mut String) {
        let node = &self.node;
        let _ = writeln!(
            out,
            "# HELP wssedge_fleet_up Whether this node reaches the fleet's Redis (1) or serves on local state (0)\n\
             # TYPE wssedge_fleet_up gauge\nwssedge_fleet_up{{node=\"{node}\"}} {}",
            u8::from(self.is_up())
        );
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            "wssedge_fleet_connects_total",
            "Connections made to the fleet's Redis",
            self.connects.get(),
        );
        counter(
            "wssedge_fleet_disconnects_total",
            "Times the link to the fleet's Redis broke",
            self.disconnects.get(),
        );
        counter(
            "wssedge_fleet_published_total",
            "Publications this node sequenced through Redis",
            self.published.get(),
        );
        counter(
            "wssedge_fleet_publish_failures_total",
            "Publications refused because Redis could not sequence them (fleet_unavailable)",
            self.publish_failures.get(),
        );
        counter(
            "wssedge_fleet_received_total",
            "Publications received from the fleet's channel",
            self.received.get(),
        );
        counter(
            "wssedge_fleet_bad_messages_total",
            "Messages on the fleet's channel that were not a valid publication (dropped)",
            self.bad_messages.get(),
        );
        counter(
            "wssedge_fleet_control_sent_total",
            "Revocations and kicks this node announced to the fleet",
            self.control_sent.get(),
        );
        counter(
            "wssedge_fleet_control_received_total",
            "Revocations and kicks other nodes announced",
            self.control_received.get(),
        );
        counter(
            "wssedge_fleet_syncs_total",
            "Topics read back from Redis (epoch, seq, history)",
            self.syncs.get(),
        );
        counter(
            "wssedge_fleet_paused_total",
            "Times the subscription was left unread while a core caught up",
            self.paused.get(),
        );
        let _ = writeln!(
            out,
            "# HELP wssedge_fleet_control_pending Revocations made while Redis was away, to be sent on its return\n\
             # TYPE wssedge_fleet_control_pending gauge\nwssedge_fleet_control_pending {}",
            self.control_pending.get().max(0)
        );
        let _ = writeln!(
            out,
            "# HELP wssedge_fleet_replay_checks_total Single-use token ids checked against the fleet, by result\n\
             # TYPE wssedge_fleet_replay_checks_total counter\n\
             wssedge_fleet_replay_checks_total{{result=\"first_use\"}} {}\n\
             wssedge_fleet_replay_checks_total{{result=\"replayed\"}} {}\n\
             wssedge_fleet_replay_checks_total{{result=\"unavailable\"}} {}",
            self.claims.get(),
            self.claims_replayed.get(),
            self.claim_failures.get()
        );
    }
}

/// This node's link to the fleet: cheap to clone, `Send`.
#[derive(Debug, Clone)]
pub(crate) struct Fleet {
    asks: UnboundedSender<FleetAsk>,
    pub status: Arc<FleetStatus>,
}

impl Fleet {
    /// Starts the link's thread. Fails only on a configuration Redis' client refuses.
    pub fn start(cfg: &FleetConfig, node: String, parts: FleetParts) -> Result<Self, String> {
        let client = link::client(cfg)?;
        let cores = parts.lines.as_ref().map_or(0, Lines::cores);
        let lines = parts.lines.clone();
        let status = Arc::new(FleetStatus::new(node, cores, cfg.down));
        let (asks, inbox) = futures_channel::mpsc::unbounded();
        let link = link::Link::new(
            client,
            status.clone(),
            parts,
            cfg.redis.clone(),
            std::time::Duration::from_millis(cfg.lease_ms),
        );
        let watched = status.clone();
        std::thread::Builder::new()
            .name("wssedge-fleet".into())
            .spawn(move || {
                let run = std::panic::AssertUnwindSafe(move || link.run(inbox));
                if std::panic::catch_unwind(run).is_err() {
                    // A bug in the link: the node goes on as with Redis away, for good, and
                    // says so (every ask fails from now on: its receiver is gone).
                    watched.set_up(false);
                    if let Some(lines) = lines {
                        for core in 0..lines.cores() {
                            lines.send(core, crate::pubsub::lines::CoreMsg::FleetState { up: false });
                        }
                    }
                    tracing::error!("fleet: the link to Redis failed (a bug); serving on local state until restarted");
                }
            })
            .map_err(|e| format!("cannot start the fleet thread: {e}"))?;
        Ok(Self { asks, status })
    }

    pub fn ask(&self, ask: FleetAsk) {
        // The thread only ends with the process.
        let _ = self.asks.unbounded_send(ask);
    }

    pub fn is_up(&self) -> bool {
        self.status.is_up()
    }

    /// The fleet's sessions (of `subject`), for the control socket (waits up to `timeout`).
    pub fn list_sessions(
        &self,
        subject: Option<String>,
        timeout: std::time::Duration,
    ) -> Result<SessionList, String> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.ask(FleetAsk::ListSessions { subject, reply });
        answer
            .recv_timeout(timeout)
            .map_err(|_| "the fleet link did not answer in time".to_owned())
    }
}
