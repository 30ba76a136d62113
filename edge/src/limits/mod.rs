//! Rate limits on WebSocket messages, sans-IO: per connection and per identity, in messages
//! per second and payload bytes per second, each with a burst.
//!
//! Nothing here reads a clock or a socket: the caller passes the `Instant` it already has
//! (the core's loop time) and the message's payload length, and gets a [`Verdict`].
//!
//! # For the caller (wiring)
//!
//! ```ignore
//! // Load: two `RateConfig`s (every key optional; nothing set = no limit), validated with
//! // the section they sit in so errors name the full key.
//! let conn: RateLimit = cfg.connection_rate.compile_at(&rate_keys!("limits.connection_rate"))?;
//! let ident: RateLimit = cfg.identity_rate.compile_at(&rate_keys!("limits.identity_rate"))?;
//!
//! // Once per process (Send + Sync), then one CoreBudgets per core thread (not Send).
//! let budgets: Arc<IdentityBudgets> = IdentityBudgets::new(ident);
//! let core_budgets = CoreBudgets::new(budgets.clone());
//!
//! // At the upgrade, with the session's identity (None: no identity limit, or no identity).
//! let identity: Option<IdentityHandle> = core_budgets.attach(&identity_str, now);
//! let mut limiter = ConnectionLimiter::new(&conn, identity, now);
//!
//! // For each complete data message (not per frame, not control frames):
//! match limiter.check(now, payload.len()) {
//!     Verdict::Pass => { /* deliver */ }
//!     Verdict::Exceeded { which, unit } => match policy {   // RatePolicy, per route
//!         RatePolicy::Close => { /* policy.refusal(): close 1008 "rate_limited" */ }
//!         RatePolicy::Drop => { /* drop the whole message, count (which, unit) */ }
//!     },
//! }
//! // Dropping the limiter (the connection) releases the identity: the last session of an
//! // identity removes its entries, per core and shared.
//! ```
//!
//! - [`TokenBucket`]: one bucket, integer pico-tokens, fed instants; oversized takes pass only
//!   from full and leave a debt.
//! - [`ConnectionLimiter`]: owned by one connection; checks the connection's buckets, then
//!   the identity's, and takes from both or from neither.
//! - [`IdentityBudgets`] / [`SharedBudget`] (shared, atomics) and [`CoreBudgets`] /
//!   [`IdentityHandle`] (per core, no locks): the identity budget across cores. Its
//!   tolerance is in the [`identity`] module doc: never more than `burst + rate × T` since the
//!   identity's first session; in any window `W`, at most `burst + rate × (W + 30 ms)` (plus a
//!   token of rounding), however many cores; and an identity on one core that keeps 10 ms of
//!   rate in its bucket is never refused (20 ms, and what other cores' stashes hold, when
//!   several cores hold it).
//!
//! Connection counts live here too, with the runtime they need: [`ip_limit`] (per source IP,
//! eBPF at the SYN or userspace at accept, with its sweep thread) and [`identity_slots`]
//! (`per_identity_connections`, one count over all cores).

#![forbid(unsafe_code)]

mod config;
pub mod identity;
pub(crate) mod identity_slots;
pub(crate) mod ip_limit;

#[cfg(test)]
mod tests;

use std::time::Instant;

use serde::Deserialize;

pub use wssedge_proto::limits::TokenBucket;
// The section-key macro for whoever embeds a `RateConfig` (`rate_keys!("limits.…")`).
#[allow(unused_imports)]
pub(crate) use config::rate_keys;
pub use config::{Rate, RateConfig, RateKeys, RateLimit};
pub use identity::{CoreBudgets, IdentityBudgets, IdentityHandle, IdentityLease, SharedBudget};

use crate::reason::Reason;
use crate::refuse::Refusal;

/// The close code and reason of a connection closed for its rate (RFC 6455 1008: policy
/// violation).
pub const RATE_LIMITED_CODE: u16 = 1008;
pub const RATE_LIMITED_REASON: Reason = Reason::RateLimited;

/// Which limit a message exceeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Connection,
    Identity,
    /// The connection's pings and pongs (`control_rate`), counted apart from its messages.
    Control,
}

impl Scope {
    /// Stable label for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Connection => "connection",
            Scope::Identity => "identity",
            Scope::Control => "control",
        }
    }
}

/// Which unit of a limit ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Messages,
    Bytes,
}

impl Unit {
    /// Stable label for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Unit::Messages => "messages",
            Unit::Bytes => "bytes",
        }
    }
}

/// What [`ConnectionLimiter::check`] decided about one message.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within every limit; its tokens are taken.
    Pass,
    /// Over a limit; nothing was taken from any bucket.
    Exceeded { which: Scope, unit: Unit },
}

/// What to do with a message over its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RatePolicy {
    /// Close the connection with 1008 `rate_limited`. The default: a client over its limit
    /// learns it, and nothing is lost silently.
    #[default]
    Close,
    /// Drop the whole message (never part of one) and count it; the connection stays open.
    /// Only for lossy routes, where a dropped message is part of the contract.
    Drop,
}

impl RatePolicy {
    /// The refusal to send for an exceeded message: a 1008 close, or none when dropping.
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            RatePolicy::Close => Some(Refusal::Close {
                code: RATE_LIMITED_CODE,
                reason: RATE_LIMITED_REASON,
            }),
            RatePolicy::Drop => None,
        }
    }
}

/// One connection's limits: its own buckets, plus its share of its identity's budget.
/// Owned by the connection, never shared; dropping it releases the identity.
pub struct ConnectionLimiter {
    /// The connection's own messages and payload bytes.
    own: Allowance,
    identity: Option<IdentityHandle>,
    /// Control frames (pings, pongs, empty fragments), apart from messages: each costs the
    /// edge a parse and (a ping) a pong, whatever the message limits say.
    control: Allowance,
}

/// A count bucket and a byte bucket, either optional, checked together and taken together.
struct Allowance {
    count: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl Allowance {
    fn new(limit: &RateLimit, now: Instant) -> Self {
        Self {
            count: limit.messages.map(|r| TokenBucket::new(r, now)),
            bytes: limit.bytes.map(|r| TokenBucket::new(r, now)),
        }
    }

    fn is_unlimited(&self) -> bool {
        self.count.is_none() && self.bytes.is_none()
    }

    /// Refills both to `now`; the unit that cannot give `count` and `len` now, if one cannot.
    /// Nothing is taken.
    fn short_of(&mut self, now: Instant, count: u64, len: u64) -> Option<Unit> {
        if let Some(b) = &mut self.count {
            b.refill(now);
            if !b.can_take(count) {
                return Some(Unit::Messages);
            }
        }
        if let Some(b) = &mut self.bytes {
            b.refill(now);
            if !b.can_take(len) {
                return Some(Unit::Bytes);
            }
        }
        None
    }

    /// Takes what [`short_of`](Self::short_of) found there.
    fn take(&mut self, count: u64, len: u64) {
        if let Some(b) = &mut self.count {
            b.take(count);
        }
        if let Some(b) = &mut self.bytes {
            b.take(len);
        }
    }
}

impl ConnectionLimiter {
    /// Buckets for `limit`, full at `now`; `identity` from [`CoreBudgets::attach`].
    pub fn new(limit: &RateLimit, identity: Option<IdentityHandle>, now: Instant) -> Self {
        Self {
            own: Allowance::new(limit, now),
            identity,
            control: Allowance::new(&RateLimit::UNLIMITED, now),
        }
    }

    /// Adds the allowance for the connection's control frames, full at `now`.
    pub fn with_control(mut self, control: &RateLimit, now: Instant) -> Self {
        self.control = Allowance::new(control, now);
        self
    }

    /// Nothing to check: the caller may skip [`check`](Self::check) and
    /// [`check_control`](Self::check_control) altogether.
    pub fn is_unlimited(&self) -> bool {
        self.own.is_unlimited() && self.identity.is_none() && self.control.is_unlimited()
    }

    /// Checks one control frame (a ping, a pong, an empty fragment) of `payload_len` bytes at
    /// `now` against the control allowance only: control frames never take from the message
    /// budgets, so a client's heartbeat cannot push its data over its limit. One at a time:
    /// a bucket lets an oversized take pass from full, so frames counted in bulk would slip
    /// through.
    pub fn check_control(&mut self, now: Instant, payload_len: usize) -> Verdict {
        let len = payload_len as u64;
        if let Some(unit) = self.control.short_of(now, 1, len) {
            return exceeded(Scope::Control, unit);
        }
        self.control.take(1, len);
        Verdict::Pass
    }

    /// Checks one message of `payload_len` bytes at `now`: the connection's limits first,
    /// then the identity's. On [`Verdict::Pass`] its tokens are taken from both; on
    /// [`Verdict::Exceeded`] from neither.
    pub fn check(&mut self, now: Instant, payload_len: usize) -> Verdict {
        let len = payload_len as u64;
        if let Some(unit) = self.own.short_of(now, 1, len) {
            return exceeded(Scope::Connection, unit);
        }
        // Last, because it is the only step that takes as it checks: once it passes, the
        // connection's take below cannot fail.
        if let Some(identity) = &self.identity {
            if let Err(unit) = identity.try_take(now, len) {
                return exceeded(Scope::Identity, unit);
            }
        }
        self.own.take(1, len);
        Verdict::Pass
    }
}

fn exceeded(which: Scope, unit: Unit) -> Verdict {
    Verdict::Exceeded { which, unit }
}
