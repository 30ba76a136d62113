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
//! `MAX_ASKS_IN_FLIGHT` publishes and subscribes out, an upgrade one admission (token claim and
//! identity count together), a session one open and one close, the control socket one command at a time — and
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
    /// An upgrade's fleet checks, in one round trip: claim a single-use token id fleet-wide
    /// (its claim key, for `ttl_ms`), then count one more session of an identity if the fleet
    /// holds fewer than its limit. `Err`: Redis did not answer; the session's identity is then
    /// counted here (and in Redis once it is back) if `admits_unanswered` — the upgrade goes on.
    Admit {
        claim: Option<(String, u64)>,
        identity: Option<(String, u32)>,
        admits_unanswered: bool,
        reply: futures_channel::oneshot::Sender<Result<FleetVerdict, ()>>,
    },
    /// Asks are waiting in [`Fleet`]'s later queue (sent when the queue stops being empty).
    Later,
    /// A session counted by `Admit` ended.
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
}

/// What the fleet said of an upgrade ([`FleetAsk::Admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FleetVerdict {
    /// The token id was free (now claimed) and the identity below its limit (now counted).
    Admitted,
    /// Another upgrade, on some node, used the token id already.
    Replayed,
    /// The fleet holds the identity's limit of sessions already (the token id is claimed).
    AtIdentityLimit,
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
            self.fleet.ask_later(FleetAsk::ReleaseIdentity { identity });
        }
        self.fleet.ask_later(FleetAsk::SessionClosed {
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
            self.fleet.ask_later(FleetAsk::ReleaseIdentity { identity });
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
    /// Asks the fleet about an upgrade: `claim` a single-use token id (its replay-store key)
    /// for `ttl_ms`, count a session of `identity` against its limit — both in one round trip.
    /// `Err`: Redis did not answer (it is away: at once).
    pub async fn admit(
        &self,
        claim: Option<(&[u8; 16], u64)>,
        identity: Option<(&str, u32)>,
    ) -> Result<FleetVerdict, ()> {
        let (reply, answer) = futures_channel::oneshot::channel();
        self.fleet.ask(FleetAsk::Admit {
            claim: claim.map(|(key, ttl_ms)| (wire::claim_key(key), ttl_ms)),
            identity: identity.map(|(id, limit)| (id.to_owned(), limit)),
            admits_unanswered: self.admits_unanswered(claim.is_some()),
            reply,
        });
        answer.await.unwrap_or(Err(()))
    }

    /// Whether an upgrade goes on without the fleet's answer: always, unless it must claim a
    /// single-use token and `single_use_down` says to fail closed.
    pub fn admits_unanswered(&self, claims: bool) -> bool {
        !claims || self.single_use_down == SingleUseDown::Local
    }

    /// A session of `identity` counted against its limit (by the fleet, or here while the
    /// fleet does not answer): given back when dropped.
    pub fn hold(&self, identity: &str) -> IdentityHold {
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
        self.fleet.ask_later(FleetAsk::SessionOpened {
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

/// Asks nobody waits on (a session listed or unlisted, an identity's count given back): they
/// wait here and go out with the next pipeline — at most [`LATER_WINDOW`] after the first of
/// them, sooner with an ask that is answered — rather than wake the link once each. On a host
/// where the link shares a CPU with the cores, each wake is a context switch or two.
pub(crate) type LaterAsks = Arc<std::sync::Mutex<Vec<FleetAsk>>>;

/// How long the first of the later asks may wait for others to join it.
pub(crate) const LATER_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// This node's link to the fleet: cheap to clone, `Send`.
#[derive(Debug, Clone)]
pub(crate) struct Fleet {
    asks: UnboundedSender<FleetAsk>,
    later: LaterAsks,
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
        let later = LaterAsks::default();
        let link = link::Link::new(
            client,
            status.clone(),
            later.clone(),
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
        Ok(Self {
            asks,
            later,
            status,
        })
    }

    pub fn ask(&self, ask: FleetAsk) {
        // The thread only ends with the process.
        let _ = self.asks.unbounded_send(ask);
    }

    /// An ask nobody waits on: queued for the next pipeline (see [`LaterAsks`]); the link is
    /// woken only when the queue stops being empty.
    pub fn ask_later(&self, ask: FleetAsk) {
        let first = {
            let mut later = self.later.lock().unwrap_or_else(|e| e.into_inner());
            later.push(ask);
            later.len() == 1
        };
        if first {
            self.ask(FleetAsk::Later);
        }
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
