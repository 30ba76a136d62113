//! One identity's rate budget, held across cores without a lock on the data path.
//!
//! # Two sides
//!
//! - **Shared** ([`IdentityBudgets`], [`SharedBudget`]): one budget per identity with a live
//!   session (or whose budget has not refilled since its last), for the whole process. Each
//!   limited unit (messages, bytes) is two `AtomicU64`s. `tat` runs a GCRA over the tokens
//!   *spent*: `x(now)` = whole tokens the rate has produced since the budget
//!   was created, `tat` = how far along that timeline spent tokens reach, and the *level* is
//!   `burst − (max(tat, x) − x)`. `reserved` counts the tokens handed to cores' stashes and not
//!   yet recorded as spent nor handed back. A core may take `level − reserved`. Stashed tokens
//!   stay inside the level, so the refill never runs on behind a stash: handing a stash back
//!   only un-reserves it, and the level is never more than one bucket. All integers: `x` is
//!   computed from the absolute elapsed time, never accumulated, so nothing drifts. The map of
//!   identities is sharded and locked only when a core attaches the identity's first session
//!   or detaches its last.
//! - **Per core** ([`CoreBudgets`], [`IdentityHandle`]): each core keeps, per identity, a small
//!   *stash* of tokens reserved from the shared budget. The data path spends the stash (plain
//!   integers behind an `Rc`); only when it runs short does the core *visit* the shared budget.
//!   A visit records the tokens spent since the last one on the timeline — dated at the instant
//!   their stash was topped up, which the core remembers, so no clock is read and the date is
//!   at most [`STASH_TTL`] before the spend — hands back an idle stash, then tops up: a chunk
//!   sized to the core's recent demand (two intervals of it), at most half of what is there to
//!   take when other cores hold the identity too (all of it when alone), and at least what the
//!   message needs. A core flooding on its own drains a whole burst in a few visits (its chunks
//!   double); a quiet core holds little; cores that visit a scarce budget one after another
//!   split it rather than the first taking it all.
//!
//! # When a core visits
//!
//! - *On the cadence*: when its stash is short for a message (or idle, below) and its last
//!   visit is at least [`PULL_INTERVAL`] (10 ms) old.
//! - *Early*, when its stash is short and its last view of the shared budget says the visit
//!   would grant what the message needs and at least the smaller of what the core wants and
//!   10 ms of rate. The view is the budget as the core left it, plus the refill since, plus
//!   its own spends since; computing it touches no atomic. It is exact while no other core of
//!   the identity takes (a core alone waits for its cadence only when its budget is within
//!   10 ms of rate of refusing the message), an overestimate otherwise — a visit that finds
//!   less refreshes the view.
//!
//! So a core touches an identity's atomics at most once per 10 ms when the budget is short
//! (a flood over the limit), plus once per chunk it takes while the budget holds plenty (the
//! chunks double under demand: a few visits drain a whole burst), plus once each time another
//! core's takes made its view stale.
//!
//! # Tolerance
//!
//! *Never more, from the start.* Every take checks that the spends recorded so far, every
//! reservation and the take itself fit in one bucket at that instant, and a spent token is
//! recorded at the date of a take that counted it (its stash's last top-up); records that
//! arrive out of date order only overstate the spends. So the recorded history is one a
//! single bucket admits, and over all cores, from the identity's first session on, admitted
//! ≤ `burst + rate × T` (plus one oversized message, below). Across reconnects too: a budget
//! is kept after the identity's last session until it has refilled (see [`IdentityBudgets`]),
//! so ending every session and starting again buys no fresh burst.
//!
//! *In any window `W`*, at most 30 ms of rate more: admitted ≤ `burst + rate × (W + 30 ms)`,
//! plus one token of rounding, however many cores. A spend is recorded at its stash's last
//! top-up, and a stash is never spent [`STASH_TTL`] (30 ms) after that: a visit hands back a
//! stash as old as `STASH_TTL − PULL_INTERVAL`, and while a core spends, its visits are at
//! most `PULL_INTERVAL` apart; a stash smaller than the message it is gathered for is topped
//! up (re-dated) before it is spent. So the spends of a window were recorded within it or in
//! the 30 ms before, and the recorded history holds at most `burst + rate × (W + 30 ms)` there.
//!
//! *Less, sometimes.* A message is refused although one bucket would pass it only when:
//! - the core's stash is short, its last visit is less than 10 ms old, and the budget holds
//!   less than the message needs, or less than both what the core wants and 10 ms of rate
//!   (20 ms while other cores hold the identity, which get half of a scarce budget): an
//!   identity on one core whose client keeps 10 ms of rate in its bucket is never refused;
//! - tokens sit in another core's stash: they come back when that core spends them, hands them
//!   back (at its first message of the identity once the stash is 20 ms old and its last visit
//!   10 ms old) or ends the identity's last session there (spends recorded, the rest handed
//!   back). A stash is at most one chunk: two intervals of that core's recent demand, and at
//!   most half of the budget when shared;
//! - a core recorded its spends after other cores had recorded later ones (it went quiet
//!   after spending, and recorded at its next visit): they are charged after those, as if
//!   spent later — at most that core's last chunk, once.
//!
//! *Oversized messages* (more bytes than the whole `burst_bytes`) pass only when the shared
//! budget is full and no other core holds a reservation, and then push it into debt that the
//! refill repays before anything else passes — the average holds. Other cores of the same
//! identity draining the budget can keep it from ever being full; such a message then waits,
//! as it should under that load.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Rate, RateLimit, Unit};

/// On its cadence, a core visits an identity's shared budget at most this often; earlier
/// only when its view says the visit is worth it (see the module doc).
pub const PULL_INTERVAL: Duration = Duration::from_millis(10);
/// A stash is never spent after this age (see the module's tolerance).
pub const STASH_TTL: Duration = Duration::from_millis(30);
/// At a visit, a stash this old is handed back: it would pass [`STASH_TTL`] before the next.
const REFRESH_AGE: Duration = STASH_TTL.saturating_sub(PULL_INTERVAL);
/// Enough shards that cores attaching different identities rarely meet on one lock.
const SHARDS: usize = 16;

/// The shared side: every live identity's budget, for all cores (`Send + Sync`, behind an
/// `Arc`). Locked only to attach an identity's first session on a core or detach its last.
///
/// A budget outlives its identity's last session until it has refilled: a client that
/// reconnects finds what it left, rather than a fresh burst on top of what it just spent.
/// Such idle budgets are purged from their shard whenever the shard is locked (any attach or
/// detach there), so the map holds the live identities and those active within about one
/// bucket's refill time.
pub struct IdentityBudgets {
    limit: RateLimit,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

/// Each identity's budget; its `cores` count is the number of leases out, one per core with
/// a live session of the identity (changed only under the shard's lock).
#[derive(Default)]
struct Shard {
    budgets: HashMap<Box<str>, Arc<SharedBudget>>,
    /// Identities whose last lease went (each once, while its budget's `idle` is set): kept
    /// until refilled.
    idle: Vec<Box<str>>,
}

impl Shard {
    /// Drops the idle budgets that have refilled by `now` (a new session would get the same
    /// full budget), and forgets those a session took up again.
    fn purge_refilled(&mut self, now: Instant) {
        let budgets = &mut self.budgets;
        self.idle.retain(|identity| match budgets.get(identity) {
            Some(b) if !b.idle.load(Ordering::Relaxed) => false,
            Some(b) if b.is_refilled(now) => {
                budgets.remove(identity);
                false
            }
            Some(_) => true,
            None => false,
        });
    }
}

impl std::fmt::Debug for IdentityBudgets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityBudgets")
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl crate::metrics::PrometheusFamilies for IdentityBudgets {
    fn render_families(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = write!(
            out,
            "# HELP wssedge_identity_budgets Identities' shared rate budgets: with a live session, and all held (idle ones stay until refilled)\n\
             # TYPE wssedge_identity_budgets gauge\n\
             wssedge_identity_budgets{{state=\"live\"}} {}\n\
             wssedge_identity_budgets{{state=\"held\"}} {}\n",
            self.live_identities(),
            self.held_identities()
        );
    }
}

impl IdentityBudgets {
    pub fn new(limit: RateLimit) -> Arc<Self> {
        Arc::new(Self {
            limit,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        })
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn shard(&self, identity: &str) -> MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(identity) % SHARDS as u64) as usize;
        // Poisoned only by a panic elsewhere while the map was held; the map stays usable.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The identity's budget: the one it left if it has not refilled yet, else created full
    /// at `now`. [`CoreBudgets`] takes one lease per core.
    pub fn acquire(self: &Arc<Self>, identity: &str, now: Instant) -> IdentityLease {
        let mut shard = self.shard(identity);
        if let Some(left) = shard.budgets.get(identity) {
            // Taken up again: off the idle list at this purge, and not purged meanwhile.
            left.idle.store(false, Ordering::Relaxed);
        }
        shard.purge_refilled(now);
        let budget = shard
            .budgets
            .entry(identity.into())
            .or_insert_with(|| Arc::new(SharedBudget::new(self.limit, now)))
            .clone();
        budget.cores.fetch_add(1, Ordering::Relaxed);
        drop(shard);
        IdentityLease {
            budgets: self.clone(),
            identity: identity.into(),
            budget,
        }
    }

    /// Drops every idle budget that has refilled by `now`. Attaches and detaches purge their
    /// own shard; this is for when they stop (a quiet edge would otherwise keep the budgets of
    /// its last burst of identities until the next session of each shard). A core's ticker
    /// calls it about once a second.
    pub fn purge_refilled(&self, now: Instant) {
        for shard in self.shards.iter() {
            shard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .purge_refilled(now);
        }
    }

    /// Identities with a live lease.
    pub fn live_identities(&self) -> usize {
        self.count(|b| b.cores() > 0)
    }

    /// Budgets held: the live identities' and the idle ones not refilled (or not purged) yet.
    pub fn held_identities(&self) -> usize {
        self.count(|_| true)
    }

    fn count(&self, which: impl Fn(&SharedBudget) -> bool) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map_or(0, |s| s.budgets.values().filter(|b| which(b)).count())
            })
            .sum()
    }
}

/// A core's hold on one identity's shared budget; after the last drops, the budget stays
/// until it has refilled.
pub struct IdentityLease {
    budgets: Arc<IdentityBudgets>,
    identity: Box<str>,
    budget: Arc<SharedBudget>,
}

impl IdentityLease {
    pub fn budget(&self) -> &SharedBudget {
        &self.budget
    }
}

impl Drop for IdentityLease {
    fn drop(&mut self) {
        let mut shard = self.budgets.shard(&self.identity);
        if self.budget.cores.fetch_sub(1, Ordering::Relaxed) == 1 {
            // The last lease: nobody can acquire this budget now (that takes the lock held
            // here). It stays, idle, until it has refilled (gone at once if it has).
            if !self.budget.idle.swap(true, Ordering::Relaxed) {
                shard.idle.push(self.identity.clone());
            }
        }
        shard.purge_refilled(Instant::now());
    }
}

/// One identity's budget across cores: atomics only, refilled by elapsed time (see the
/// module doc for the timeline and the reservations).
pub struct SharedBudget {
    /// Where the token timelines start; instants before it count as it.
    epoch: Instant,
    /// Cores holding a lease on this budget: how many a scarce budget is shared among.
    cores: AtomicU32,
    /// No lease left: on its shard's idle list (set and cleared under the shard's lock).
    idle: AtomicBool,
    messages: Option<SharedUnit>,
    bytes: Option<SharedUnit>,
}

struct SharedUnit {
    rate: Rate,
    /// Spent tokens, as a position on the timeline (see the module doc).
    tat: AtomicU64,
    /// Tokens in stashes, or spent and not yet recorded on `tat`.
    reserved: AtomicU64,
}

impl SharedBudget {
    fn new(limit: RateLimit, now: Instant) -> Self {
        let unit = |rate| SharedUnit {
            rate,
            tat: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
        };
        Self {
            epoch: now,
            cores: AtomicU32::new(0),
            idle: AtomicBool::new(false),
            messages: limit.messages.map(unit),
            bytes: limit.bytes.map(unit),
        }
    }

    fn unit(&self, unit: Unit) -> Option<&SharedUnit> {
        match unit {
            Unit::Messages => self.messages.as_ref(),
            Unit::Bytes => self.bytes.as_ref(),
        }
    }

    /// Tokens of `unit` a core could take at `now` (the level less every reservation), or
    /// `None` when the unit is not limited.
    pub fn available(&self, unit: Unit, now: Instant) -> Option<u64> {
        let u = self.unit(unit)?;
        let x = u.rate.timeline(self.epoch, now);
        let reserved = u.reserved.load(Ordering::Acquire);
        Some(
            u.rate
                .level(u.tat.load(Ordering::Acquire), x)
                .saturating_sub(reserved),
        )
    }

    /// Cores holding a lease on this budget.
    pub fn cores(&self) -> u32 {
        self.cores.load(Ordering::Relaxed)
    }

    /// Full again at `now`, with nothing reserved: the same as a budget created then.
    fn is_refilled(&self, now: Instant) -> bool {
        [&self.messages, &self.bytes]
            .into_iter()
            .flatten()
            .all(|u| {
                u.reserved.load(Ordering::Acquire) == 0
                    && u.tat.load(Ordering::Acquire) <= u.rate.timeline(self.epoch, now)
            })
    }
}

/// What a visit found and did, for the core's view of the budget.
struct Settled {
    grant: u64,
    /// `tat` as the visit left it.
    tat: u64,
    /// Other cores' reservations, as the visit found them.
    others: u64,
}

impl SharedUnit {
    /// Records `spent` tokens on the timeline, dated at position `taken_x` (their stash's last
    /// top-up); returns `tat` after. Must come before those tokens are released from
    /// `reserved`, so a concurrent take never sees them in neither.
    fn record(&self, taken_x: u64, spent: u64) -> u64 {
        let update = |tat: u64| tat.max(taken_x).saturating_add(spent);
        match self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| Some(update(t)))
        {
            Ok(before) | Err(before) => update(before),
        }
    }

    /// Releases `release` of this core's reservation (tokens just recorded as spent, or a
    /// stash handed back), keeps `mine` reserved (the stash it keeps), and reserves a grant
    /// (see [`Rate::grant`]) at timeline position `x`. One compare-and-swap on
    /// `reserved` serialises it with every other core's takes and releases. A record puts
    /// spent tokens on `tat` before releasing them, and this reads `reserved` before `tat`
    /// (acquire after release), so it sees them in one or both, never in neither.
    fn settle(
        &self,
        x: u64,
        release: u64,
        mine: u64,
        short: u64,
        want: u64,
        shared: bool,
    ) -> Settled {
        let mut reserved = self.reserved.load(Ordering::Acquire);
        loop {
            let tat = self.tat.load(Ordering::Acquire);
            let others = reserved.saturating_sub(release + mine);
            let level = self.rate.level(tat, x);
            let available = level.saturating_sub(others + mine);
            let full = level == self.rate.burst() && others == 0;
            let grant = self.rate.grant(available, full, short, want, shared);
            if release == 0 && grant == 0 {
                return Settled { grant, tat, others };
            }
            let new = (reserved - release).saturating_add(grant);
            match self.reserved.compare_exchange_weak(
                reserved,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Settled { grant, tat, others },
                Err(now_reserved) => reserved = now_reserved,
            }
        }
    }
}

type LocalMap = RefCell<HashMap<Rc<str>, Weak<LocalEntry>>>;

/// The per-core side: this core's stash for every identity with a live session here. Not
/// `Send`: one per core, used only by that core's connections.
pub struct CoreBudgets {
    budgets: Arc<IdentityBudgets>,
    map: Rc<LocalMap>,
}

impl CoreBudgets {
    pub fn new(budgets: Arc<IdentityBudgets>) -> Self {
        Self {
            budgets,
            map: Rc::new(RefCell::new(HashMap::new())),
        }
    }

    /// The process-wide budgets this core's stashes draw on.
    pub fn shared(&self) -> &Arc<IdentityBudgets> {
        &self.budgets
    }

    /// The handle a session of `identity` checks its messages against; `None` when the
    /// identity limit is unlimited (nothing to check, nothing stored). Call at the upgrade:
    /// the first session of an identity on this core locks one shard of the shared map.
    pub fn attach(&self, identity: &str, now: Instant) -> Option<IdentityHandle> {
        if self.budgets.limit.is_unlimited() {
            return None;
        }
        let existing = self.map.borrow().get(identity).and_then(Weak::upgrade);
        if let Some(entry) = existing {
            return Some(IdentityHandle(entry));
        }
        let lease = self.budgets.acquire(identity, now);
        let key: Rc<str> = Rc::from(identity);
        let entry = Rc::new(LocalEntry {
            key: key.clone(),
            map: Rc::downgrade(&self.map),
            state: RefCell::new(LocalBudget::new(lease)),
        });
        self.map.borrow_mut().insert(key, Rc::downgrade(&entry));
        Some(IdentityHandle(entry))
    }

    /// Identities with a live session on this core.
    pub fn live_identities(&self) -> usize {
        self.map
            .borrow()
            .values()
            .filter(|w| w.strong_count() > 0)
            .count()
    }
}

/// One session's share of its identity's budget on this core. Sessions of the same identity
/// on the same core share one stash; the last one to drop removes it (recording what it
/// spent, handing back the rest) and this core's lease on the shared budget.
pub struct IdentityHandle(Rc<LocalEntry>);

impl IdentityHandle {
    /// Takes one message of `len` bytes from the identity's budget, or names the unit that
    /// is short; a refusal spends nothing (it may move tokens from the shared budget into
    /// this core's stash, where they stay for the next message).
    pub fn try_take(&self, now: Instant, len: u64) -> Result<(), Unit> {
        self.0.state.borrow_mut().try_take(now, len)
    }

    #[cfg(test)]
    pub(crate) fn visits(&self) -> u64 {
        self.0.state.borrow().visits
    }

    #[cfg(test)]
    pub(crate) fn stash(&self, unit: Unit) -> u64 {
        let state = self.0.state.borrow();
        match unit {
            Unit::Messages => state.messages.stash,
            Unit::Bytes => state.bytes.stash,
        }
    }

    #[cfg(test)]
    pub(crate) fn budget(&self) -> std::cell::Ref<'_, SharedBudget> {
        std::cell::Ref::map(self.0.state.borrow(), |s| s.lease.budget())
    }
}

struct LocalEntry {
    key: Rc<str>,
    map: Weak<LocalMap>,
    state: RefCell<LocalBudget>,
}

impl Drop for LocalEntry {
    fn drop(&mut self) {
        // The map is never borrowed while a session's handle drops (attach holds no borrow
        // across anything that could drop one); `try_` keeps a surprise from panicking in
        // a destructor — a dead entry left behind is replaced by the next attach.
        if let Some(map) = self.map.upgrade() {
            if let Ok(mut map) = map.try_borrow_mut() {
                if map.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                    map.remove(&self.key);
                }
            }
        }
    }
}

struct LocalBudget {
    lease: IdentityLease,
    messages: LocalUnit,
    bytes: LocalUnit,
    /// The last visit to the shared budget.
    visited: Option<Instant>,
    /// Visits so far: what the cadence and the early-visit rule bound.
    visits: u64,
    /// Other cores held the identity at the last visit (they get half of a scarce budget).
    /// Kept here so that between visits the data path reads nothing shared.
    crowded: bool,
}

#[derive(Default)]
struct LocalUnit {
    /// Tokens reserved from the shared budget, not yet spent.
    stash: u64,
    /// This core's part of the shared `reserved`: the stash, plus what was spent from it
    /// since the last visit (not yet recorded).
    reserved: u64,
    /// When the stash was last topped up, and the timeline position then: spends are
    /// recorded at that date.
    taken_at: Option<Instant>,
    taken_x: u64,
    /// Tokens asked for (passed or refused) since `demand_since`: sizes the next chunk.
    demand: u64,
    demand_since: Option<Instant>,
    /// The shared budget as the last visit left it: `tat`, and the other cores'
    /// reservations. What an early visit is predicted from.
    seen_tat: u64,
    seen_others: u64,
}

impl LocalBudget {
    fn new(lease: IdentityLease) -> Self {
        Self {
            lease,
            messages: LocalUnit::default(),
            bytes: LocalUnit::default(),
            visited: None,
            visits: 0,
            crowded: false,
        }
    }

    fn try_take(&mut self, now: Instant, len: u64) -> Result<(), Unit> {
        let budget = &*self.lease.budget;
        let units = [
            (
                Unit::Messages,
                budget.messages.as_ref(),
                &mut self.messages,
                1,
            ),
            (Unit::Bytes, budget.bytes.as_ref(), &mut self.bytes, len),
        ];
        let mut units = units.map(|(unit, shared, local, need)| {
            shared.map(|shared| {
                local.demand = local.demand.saturating_add(need);
                (unit, shared, local, need)
            })
        });

        let short = units
            .iter()
            .flatten()
            .any(|(_, _, local, need)| local.stash < *need);
        let due = self
            .visited
            .is_none_or(|v| now.saturating_duration_since(v) >= PULL_INTERVAL);
        // Without a visit, the unit a refusal names: the first whose budget is too low.
        let mut blocked = None;
        let visit = if due {
            short
                || units
                    .iter()
                    .flatten()
                    .any(|(_, _, local, need)| local.is_idle(now, *need))
        } else if short {
            // Early: only if every short unit would come back with what the message needs
            // and a worthwhile chunk.
            for (unit, shared, local, need) in units.iter().flatten() {
                if local.stash < *need
                    && blocked.is_none()
                    && !local.early_visit_pays(shared, budget.epoch, now, *need, self.crowded)
                {
                    blocked = Some(*unit);
                }
            }
            blocked.is_none()
        } else {
            false
        };
        if visit {
            self.visited = Some(now);
            self.visits += 1;
            self.crowded = budget.cores() > 1;
            for (_, shared, local, need) in units.iter_mut().flatten() {
                local.visit(shared, budget.epoch, now, *need, self.crowded);
            }
        }

        for (unit, _, local, need) in units.iter().flatten() {
            if local.stash < *need {
                return Err(blocked.unwrap_or(*unit));
            }
        }
        for (_, _, local, need) in units.iter_mut().flatten() {
            local.stash -= *need;
        }
        Ok(())
    }
}

impl Drop for LocalBudget {
    /// The identity's last session on this core ended: what the stash spent is recorded (at
    /// its top-up, like any spend: no clock needed), the rest handed back.
    fn drop(&mut self) {
        let budget = &*self.lease.budget;
        for (shared, local) in [
            (budget.messages.as_ref(), &mut self.messages),
            (budget.bytes.as_ref(), &mut self.bytes),
        ] {
            let Some(shared) = shared else { continue };
            let spent = local.reserved - local.stash;
            if spent > 0 {
                shared.record(local.taken_x, spent);
            }
            if local.reserved > 0 {
                shared.reserved.fetch_sub(local.reserved, Ordering::AcqRel);
            }
            local.reserved = 0;
            local.stash = 0;
        }
    }
}

impl LocalUnit {
    fn age(&self, now: Instant) -> Duration {
        self.taken_at
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// A stash that would outlive [`STASH_TTL`] before the next visit, and is not being
    /// gathered for a message bigger than it (that one is spent as soon as it is whole;
    /// handing it back would let another core take it and start the gathering over).
    fn is_idle(&self, now: Instant, need: u64) -> bool {
        self.stash > 0 && self.stash >= need && self.age(now) >= REFRESH_AGE
    }

    /// The chunk a visit at `now` asks for: recent demand scaled to two intervals, enough to
    /// last until the visit after next; at least `short`.
    fn want(&self, now: Instant, short: u64) -> u64 {
        let since = self
            .demand_since
            .map_or(PULL_INTERVAL, |t| now.saturating_duration_since(t))
            .max(PULL_INTERVAL);
        let horizon = 2 * PULL_INTERVAL;
        let expected = u128::from(self.demand) * horizon.as_nanos() / since.as_nanos();
        u64::try_from(expected).unwrap_or(u64::MAX).max(short)
    }

    /// Whether a visit before the cadence is due would pay: predicted from the budget as the
    /// last visit left it, the refill since and this core's own spends since (exact while no
    /// other core takes), it grants what the message needs and at least the smaller of what
    /// the core wants and [`PULL_INTERVAL`] of rate — so a flood over the limit still visits
    /// at most once per interval.
    fn early_visit_pays(
        &self,
        shared: &SharedUnit,
        epoch: Instant,
        now: Instant,
        need: u64,
        shared_with_others: bool,
    ) -> bool {
        let short = need.saturating_sub(self.stash);
        let x = shared.rate.timeline(epoch, now);
        let spent = self.reserved - self.stash;
        let tat = if spent > 0 {
            self.seen_tat.max(self.taken_x).saturating_add(spent)
        } else {
            self.seen_tat
        };
        let level = shared.rate.level(tat, x);
        let available = level.saturating_sub(self.seen_others + self.stash);
        let full = level == shared.rate.burst() && self.seen_others == 0;
        let want = self.want(now, short);
        let grant = shared
            .rate
            .grant(available, full, short, want, shared_with_others);
        let interval = shared.rate.tokens_in(PULL_INTERVAL.as_nanos()).max(1);
        grant >= short && grant >= want.min(interval)
    }

    /// Records what was spent since the last visit, hands back an idle stash (see
    /// [`is_idle`](Self::is_idle)), then tops up for `need`.
    fn visit(
        &mut self,
        shared: &SharedUnit,
        epoch: Instant,
        now: Instant,
        need: u64,
        shared_with_others: bool,
    ) {
        let x = shared.rate.timeline(epoch, now);
        let spent = self.reserved - self.stash;
        if spent > 0 {
            shared.record(self.taken_x, spent);
        }
        let mut release = spent;
        if self.is_idle(now, need) {
            release += self.stash;
            self.stash = 0;
        }
        let short = need.saturating_sub(self.stash);
        let want = if short > 0 { self.want(now, short) } else { 0 };
        let settled = shared.settle(x, release, self.stash, short, want, shared_with_others);
        self.reserved = self.stash + settled.grant;
        if settled.grant > 0 {
            self.stash += settled.grant;
            self.taken_at = Some(now);
            self.taken_x = x;
        }
        self.seen_tat = settled.tat;
        self.seen_others = settled.others;
        if short > 0 {
            self.demand = 0;
            self.demand_since = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn messages(per_s: u64, burst: u64) -> RateLimit {
        RateLimit {
            messages: Some(Rate::per_second(per_s, burst)),
            bytes: None,
        }
    }

    #[test]
    fn shared_side_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<IdentityBudgets>();
        check::<SharedBudget>();
        check::<IdentityLease>();
    }

    /// With no more sessions anywhere, a refilled budget goes at the ticker's purge, not at
    /// the next attach to its shard; the family says so.
    #[test]
    fn idle_budgets_go_when_refilled_without_new_sessions() {
        use crate::metrics::PrometheusFamilies;
        let t0 = Instant::now();
        let budgets = IdentityBudgets::new(messages(10, 10));
        let core = CoreBudgets::new(budgets.clone());
        let h = core.attach("carol", t0).unwrap();
        h.try_take(t0, 0).unwrap();
        drop(h);
        let mut text = String::new();
        budgets.render_families(&mut text);
        assert!(
            text.contains("wssedge_identity_budgets{state=\"live\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("wssedge_identity_budgets{state=\"held\"} 1\n"),
            "{text}"
        );
        assert!(text.lines().all(|l| !l.starts_with(' ')), "{text}");
        budgets.purge_refilled(t0 + ms(1));
        assert_eq!(budgets.held_identities(), 1, "not refilled yet");
        budgets.purge_refilled(t0 + ms(5_000));
        assert_eq!(budgets.held_identities(), 0);
    }

    #[test]
    fn entries_stay_after_the_last_session_until_refilled() {
        let t0 = Instant::now();
        let budgets = IdentityBudgets::new(messages(10, 10));
        let core_a = CoreBudgets::new(budgets.clone());
        let core_b = CoreBudgets::new(budgets.clone());
        let a1 = core_a.attach("alice", t0).unwrap();
        let a2 = core_a.attach("alice", t0).unwrap();
        let b1 = core_b.attach("alice", t0).unwrap();
        let bob = core_b.attach("bob", t0).unwrap();
        assert_eq!(budgets.live_identities(), 2);
        assert_eq!((core_a.live_identities(), core_b.live_identities()), (1, 2));
        // Sessions of one identity on one core share one stash.
        a1.try_take(t0, 0).unwrap();
        assert_eq!(a2.stash(Unit::Messages), a1.stash(Unit::Messages));

        drop(a1);
        assert_eq!(
            core_a.live_identities(),
            1,
            "a2 still holds alice on core A"
        );
        drop(a2);
        assert_eq!(core_a.live_identities(), 0);
        assert_eq!(budgets.live_identities(), 2, "core B still holds alice");
        drop(b1);
        assert_eq!(budgets.live_identities(), 1);
        drop(bob);
        assert_eq!(budgets.live_identities(), 0);
        assert_eq!(core_b.live_identities(), 0);
        assert!(core_b.map.borrow().is_empty(), "removed, not just dead");
        // bob spent nothing: his full budget went at once; alice's message is still owed.
        assert_eq!(budgets.held_identities(), 1);

        // A reconnect finds what alice left, not a fresh burst.
        let again = core_a.attach("alice", t0 + ms(1)).unwrap();
        assert_eq!(shared_of(&again, Unit::Messages, t0 + ms(1)), 9);
        drop(again);
        assert_eq!(budgets.held_identities(), 1);

        // Refilled (10/s: the one message is repaid after 100 ms), it goes at the next attach
        // in its shard, and a new session starts full.
        let later = core_a.attach("alice", t0 + ms(200)).unwrap();
        assert_eq!(shared_of(&later, Unit::Messages, t0 + ms(200)), 10);
        drop(later);
        let _someone = core_b.attach("alice", t0 + ms(300)).unwrap();
        assert_eq!(budgets.held_identities(), 1, "only the live one");
    }

    #[test]
    fn reconnecting_again_and_again_keeps_one_idle_entry() {
        let t0 = Instant::now();
        let budgets = IdentityBudgets::new(messages(10, 10));
        let core = CoreBudgets::new(budgets.clone());
        for i in 0..1000 {
            let s = core.attach("alice", t0 + ms(i)).unwrap();
            // Spending keeps the budget from ever refilling between sessions.
            let _ = s.try_take(t0 + ms(i), 0);
        }
        assert_eq!(budgets.held_identities(), 1);
        let idle: usize = budgets
            .shards
            .iter()
            .map(|s| s.lock().unwrap().idle.len())
            .sum();
        assert_eq!(idle, 1, "one idle entry, however many reconnects");
    }

    #[test]
    fn unlimited_identity_limit_stores_nothing() {
        let budgets = IdentityBudgets::new(RateLimit::UNLIMITED);
        let core = CoreBudgets::new(budgets.clone());
        assert!(core.attach("alice", Instant::now()).is_none());
        assert_eq!(budgets.live_identities(), 0);
    }

    fn shared_of(h: &IdentityHandle, unit: Unit, t: Instant) -> u64 {
        h.budget().available(unit, t).unwrap()
    }

    #[test]
    fn a_flood_over_the_limit_visits_at_most_every_10ms() {
        let t0 = Instant::now();
        let budgets = IdentityBudgets::new(messages(1000, 1000));
        let core = CoreBudgets::new(budgets.clone());
        let h = core.attach("alice", t0).unwrap();
        // First visit: a core with no history takes a small chunk (two messages).
        assert!(h.try_take(t0, 0).is_ok());
        assert_eq!(shared_of(&h, Unit::Messages, t0), 998);
        assert_eq!(h.visits(), 1);
        // A flood at the same instant gets the whole burst, as from one bucket: the chunks
        // double (2, 6, 14, 30, …), so a few early visits drain it.
        let mut passed = 1;
        while h.try_take(t0, 0).is_ok() {
            passed += 1;
        }
        assert_eq!(passed, 1000);
        let draining = h.visits();
        assert!(draining <= 10, "{draining} visits to drain the burst");
        // Over the limit now: the next 9 ms refill less than 10 ms of rate, so the atomics
        // stay untouched however hard the core floods.
        for i in 1..10 {
            while h.try_take(t0 + ms(i), 0).is_ok() {}
        }
        assert_eq!(h.visits(), draining);
        // On the cadence, the refill of the 10 ms (all of it: this core is alone).
        assert!(h.try_take(t0 + ms(10), 0).is_ok());
        assert_eq!(h.visits(), draining + 1);
        assert_eq!(shared_of(&h, Unit::Messages, t0 + ms(10)), 0);
        // A second of flooding every 100 µs: about one visit per 10 ms, and the rate.
        let mut passed = 1;
        for step in 1..10_000u32 {
            let now = t0 + ms(10) + Duration::from_micros(100) * step;
            while h.try_take(now, 0).is_ok() {
                passed += 1;
            }
        }
        let visits = h.visits() - draining - 1;
        assert!(visits <= 101, "{visits} visits in 1 s of flood");
        assert!((990..=1000).contains(&passed), "{passed} in 1 s at 1000/s");
    }

    #[test]
    fn idle_stashes_go_back_to_the_shared_budget() {
        let t0 = Instant::now();
        let budgets = IdentityBudgets::new(messages(100, 10_000));
        let core = CoreBudgets::new(budgets.clone());
        let h = core.attach("alice", t0).unwrap();
        // A quick run of messages grows the chunks; it stops right after a big one.
        let mut spent = 0;
        while h.stash(Unit::Messages) < 100 {
            assert!(h.try_take(t0, 0).is_ok());
            spent += 1;
        }
        let held = h.stash(Unit::Messages);
        let quiet = t0 + ms(50);
        // Reserved, not gone: the stash is inside the level, nobody else can take it.
        assert_eq!(
            shared_of(&h, Unit::Messages, quiet),
            10_000 - spent - held + 5,
            "the refill of 50 ms at 100/s is 5"
        );
        // The next message after the refresh age records what was spent, hands the stash
        // back and takes just one.
        let later = quiet + REFRESH_AGE;
        assert!(h.try_take(later, 0).is_ok());
        assert_eq!(h.stash(Unit::Messages), 0);
        assert_eq!(
            shared_of(&h, Unit::Messages, later),
            10_000 - spent - 1 + 7,
            "as one bucket: 70 ms of refill, the one message just taken"
        );
        // A stash held through a long quiet spell goes back into a budget that is full
        // again: never more than one bucket.
        let full = t0 + Duration::from_secs(200);
        while h.stash(Unit::Messages) < 100 {
            assert!(h.try_take(full, 0).is_ok());
        }
        let much_later = full + Duration::from_secs(200);
        assert!(h.try_take(much_later, 0).is_ok());
        assert_eq!(h.stash(Unit::Messages), 0);
        assert_eq!(shared_of(&h, Unit::Messages, much_later), 10_000 - 1);
    }

    #[test]
    fn the_last_session_on_a_core_records_its_spends() {
        let t0 = Instant::now();
        let budgets = IdentityBudgets::new(messages(1, 10));
        let (core_a, core_b) = (
            CoreBudgets::new(budgets.clone()),
            CoreBudgets::new(budgets.clone()),
        );
        let a = core_a.attach("alice", t0).unwrap();
        let b = core_b.attach("alice", t0).unwrap();
        for i in 0..4 {
            assert!(b.try_take(t0 + ms(i), 0).is_ok());
        }
        assert!(b.stash(Unit::Messages) > 0, "b holds some of its chunk");
        // B's last session ends: its 4 spends stay spent, its stash comes back.
        drop(b);
        assert_eq!(core_b.live_identities(), 0);
        assert_eq!(shared_of(&a, Unit::Messages, t0 + ms(5)), 6);
        let mut passed = 0;
        for i in 5..100 {
            if a.try_take(t0 + ms(i), 0).is_ok() {
                passed += 1;
            }
        }
        assert_eq!(passed, 6, "closing a session does not refill the identity");
    }

    #[test]
    fn oversized_needs_a_full_shared_budget_and_leave_a_debt() {
        let t0 = Instant::now();
        let limit = RateLimit {
            messages: None,
            bytes: Some(Rate::per_second(1000, 1000)),
        };
        let budgets = IdentityBudgets::new(limit);
        let core = CoreBudgets::new(budgets.clone());
        let h = core.attach("alice", t0).unwrap();
        assert!(h.try_take(t0, 10).is_ok());
        assert_eq!(h.try_take(t0 + ms(5), 3000), Err(Unit::Bytes), "not full");
        // Full again once the 10 spent are refilled (this core's own stash is inside the
        // level, as in one bucket): 3000 passes, 2000 in debt.
        assert!(h.try_take(t0 + ms(10), 3000).is_ok());
        // The debt is repaid first: 2 s of nothing.
        assert_eq!(h.try_take(t0 + ms(2000), 1), Err(Unit::Bytes));
        assert_eq!(h.try_take(t0 + ms(2010), 1), Err(Unit::Bytes));
        assert!(h.try_take(t0 + ms(2020), 1).is_ok());
    }
}
