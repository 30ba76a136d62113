//! One identity's rate budget, held across cores without a lock on the data path.
//!
//! # Two sides
//!
//! - **Shared** ([`IdentityBudgets`], [`SharedBudget`]): one budget per live identity, for the
//!   whole process. Each limited unit (messages, bytes) is one `AtomicU64` run as a GCRA on a
//!   token timeline: `x(now)` = whole tokens the rate has produced since the budget was
//!   created, `tat` = how far along that timeline tokens have been handed out. Available =
//!   `burst − (max(tat, x) − x)`; handing out `k` moves `tat` to `max(tat, x) + k` with one
//!   compare-and-swap. All integers: `x` is computed from the absolute elapsed time, never
//!   accumulated, so nothing drifts. The map of identities is sharded and locked only when a
//!   core attaches the identity's first session or detaches its last.
//! - **Per core** ([`CoreBudgets`], [`IdentityHandle`]): each core keeps, per identity, a
//!   small *stash* of tokens taken from the shared budget. The data path spends the stash
//!   (plain integers behind an `Rc`); only when it runs short does the core *visit* the shared
//!   budget, and at most once per [`PULL_INTERVAL`] (10 ms) per identity per core. A visit
//!   takes a chunk sized to the core's recent demand (about two intervals' worth) but at most
//!   half of what the shared budget holds, and at least what the message needs: a core
//!   flooding on its own drains the whole burst within a few visits, a quiet core holds
//!   little, and cores that visit a scarce budget one after another split it rather than the
//!   first taking it all.
//!
//! # Tolerance
//!
//! *Never more, from the start.* Tokens reach a message only through a stash, and a stash
//! only through the shared budget, which hands out at most `burst + rate × T` in the `T` since
//! it was created. So over all cores, from the identity's first session on, admitted ≤
//! `burst + rate × T` — exactly, not approximately (plus one oversized message, below).
//!
//! *In a window starting later*, a little more. Call the identity's level the shared
//! budget's tokens plus every core's stash. A visit only moves tokens between the two (a
//! hand-back into a full budget is lost, never added past `burst`), so the level grows only
//! by the refill; but the shared part refills behind tokens already stashed, so the level can
//! exceed `burst`. A stash is never spent after [`STASH_TTL`] (30 ms): a visit hands back
//! stashes older than `STASH_TTL − PULL_INTERVAL`, and the next visit is at most
//! `PULL_INTERVAL` away. So whatever is stashed was taken within the last 30 ms, out of a
//! shared budget that held at most `burst` plus the refill since. The one exception is a stash
//! smaller than the message it is being gathered for, kept until it is whole. Hence the level
//! is at most `burst + rate × 30 ms` + one message per core, and in any window `W`: admitted ≤
//! `burst + rate × (W + 30 ms)` + one message per core — 3 % of one second's rate beyond a
//! single bucket, however many cores.
//!
//! *Less, sometimes.* A core whose stash is empty waits up to 10 ms for its next visit even
//! when the shared budget has tokens (and a visit leaves half of them behind); tokens in one
//! core's stash are not available to another until that core spends them or hands them back
//! (within 30 ms of going idle); a core's stash is dropped (not returned: nothing here reads
//! the clock to age it) when the identity's last session on that core ends.
//!
//! *Oversized messages* (more bytes than the whole `burst_bytes`) pass only when the shared
//! budget is full, and then push it into debt that the refill repays before anything else
//! passes — the average holds. Other cores of the same identity draining the budget can keep
//! it from ever being full; such a message then waits, as it should under that load.

use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{Rate, RateLimit, Unit};

/// A core touches an identity's shared atomics at most this often.
pub const PULL_INTERVAL: Duration = Duration::from_millis(10);
/// A stash is never spent after this age (see the module's tolerance).
pub const STASH_TTL: Duration = Duration::from_millis(30);
/// At a visit, a stash this old is handed back: it would pass [`STASH_TTL`] before the next.
const REFRESH_AGE: Duration = STASH_TTL.saturating_sub(PULL_INTERVAL);
/// Enough shards that cores attaching different identities rarely meet on one lock.
const SHARDS: usize = 16;

/// The shared side: every live identity's budget, for all cores (`Send + Sync`, behind an
/// `Arc`). Locked only to attach an identity's first session on a core or detach its last.
pub struct IdentityBudgets {
    limit: RateLimit,
    hasher: RandomState,
    shards: Box<[Shard]>,
}

type Shard = Mutex<HashMap<Box<str>, Entry>>;

struct Entry {
    budget: Arc<SharedBudget>,
    /// Leases out: one per core with a live session of this identity.
    leases: u32,
}

impl IdentityBudgets {
    pub fn new(limit: RateLimit) -> Arc<Self> {
        Arc::new(Self {
            limit,
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    fn shard(&self, identity: &str) -> MutexGuard<'_, HashMap<Box<str>, Entry>> {
        let i = (self.hasher.hash_one(identity) % SHARDS as u64) as usize;
        // Poisoned only by a panic elsewhere while the map was held; the map stays usable.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The identity's budget, created full at `now` if it has no live lease. [`CoreBudgets`]
    /// takes one lease per core; the entry goes when the last lease drops.
    pub fn acquire(self: &Arc<Self>, identity: &str, now: Instant) -> IdentityLease {
        let mut shard = self.shard(identity);
        let entry = shard.entry(identity.into()).or_insert_with(|| Entry {
            budget: Arc::new(SharedBudget::new(self.limit, now)),
            leases: 0,
        });
        entry.leases += 1;
        let budget = entry.budget.clone();
        drop(shard);
        IdentityLease {
            budgets: self.clone(),
            identity: identity.into(),
            budget,
        }
    }

    /// Identities with a live lease: what this map's memory is bounded by.
    pub fn live_identities(&self) -> usize {
        (0..SHARDS)
            .map(|i| self.shards[i].lock().map_or(0, |s| s.len()))
            .sum()
    }
}

/// A core's hold on one identity's shared budget; dropping the last removes the entry.
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
        if let Some(entry) = shard.get_mut(&*self.identity) {
            entry.leases -= 1;
            if entry.leases == 0 {
                shard.remove(&*self.identity);
            }
        }
    }
}

/// One identity's budget across cores: atomics only, refilled by elapsed time (see the
/// module doc for the GCRA timeline).
pub struct SharedBudget {
    /// Where the token timelines start; instants before it count as it.
    epoch: Instant,
    messages: Option<SharedUnit>,
    bytes: Option<SharedUnit>,
}

struct SharedUnit {
    rate: Rate,
    /// Tokens handed out, as a position on the timeline (see the module doc).
    tat: AtomicU64,
}

impl SharedBudget {
    fn new(limit: RateLimit, now: Instant) -> Self {
        let unit = |rate| SharedUnit {
            rate,
            tat: AtomicU64::new(0),
        };
        Self {
            epoch: now,
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

    /// Tokens of `unit` available at `now`, or `None` when the unit is not limited.
    pub fn available(&self, unit: Unit, now: Instant) -> Option<u64> {
        let u = self.unit(unit)?;
        let x = u.timeline(self.epoch, now);
        Some(u.available(u.tat.load(Ordering::Relaxed), x))
    }
}

impl SharedUnit {
    fn timeline(&self, epoch: Instant, now: Instant) -> u64 {
        self.rate
            .tokens_in(now.saturating_duration_since(epoch).as_nanos())
    }

    fn available(&self, tat: u64, x: u64) -> u64 {
        let owed = tat.max(x) - x;
        self.rate.burst().saturating_sub(owed)
    }

    /// Hands out up to `want` tokens, at most half of those available, at least `short` (or
    /// none) at timeline position `x`. `short` beyond the burst is the oversized case: all
    /// of it, and only from full.
    ///
    /// Relaxed ordering: `tat` is the only thing shared, and a compare-and-swap on one atomic
    /// is consistent in every ordering; nothing else is published through it.
    fn take(&self, x: u64, short: u64, want: u64) -> u64 {
        let burst = self.rate.burst();
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(x);
            let available = self.available(tat, x);
            let grant = if short > burst {
                if available == burst {
                    short
                } else {
                    0
                }
            } else {
                // At most half of what is there (unless the message needs more): cores that
                // visit one after another split a scarce budget instead of the first taking
                // it all, and a core alone still drains a full burst in a few visits.
                want.min(available.div_ceil(2)).max(short).min(available)
            };
            if grant == 0 {
                return 0;
            }
            match self.tat.compare_exchange_weak(
                tat,
                base.saturating_add(grant),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return grant,
                Err(now_tat) => tat = now_tat,
            }
        }
    }

    /// Returns `tokens` that were handed out but not spent, never past full (`tat` ≥ `x`):
    /// what does not fit is lost, as it would be in a single bucket.
    fn give_back(&self, x: u64, tokens: u64) {
        if tokens == 0 {
            return;
        }
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                (tat > x).then(|| tat.saturating_sub(tokens).max(x))
            });
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
/// on the same core share one stash; the last one to drop removes it (and this core's lease
/// on the shared budget).
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
    /// Visits so far: what the 10 ms cadence bounds.
    visits: u64,
}

#[derive(Default)]
struct LocalUnit {
    /// Tokens taken from the shared budget, not yet spent.
    stash: u64,
    /// When the stash was last topped up.
    taken_at: Option<Instant>,
    /// Tokens asked for (passed or refused) since `demand_since`: sizes the next chunk.
    demand: u64,
    demand_since: Option<Instant>,
}

impl LocalBudget {
    fn new(lease: IdentityLease) -> Self {
        Self {
            lease,
            messages: LocalUnit::default(),
            bytes: LocalUnit::default(),
            visited: None,
            visits: 0,
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

        let due = self
            .visited
            .is_none_or(|v| now.saturating_duration_since(v) >= PULL_INTERVAL);
        if due {
            let wants_visit = units
                .iter()
                .flatten()
                .any(|(_, _, local, need)| local.stash < *need || local.is_idle(now, *need));
            if wants_visit {
                self.visited = Some(now);
                self.visits += 1;
                for (_, shared, local, need) in units.iter_mut().flatten() {
                    local.visit(shared, budget.epoch, now, *need);
                }
            }
        }

        for (unit, _, local, need) in units.iter().flatten() {
            if local.stash < *need {
                return Err(*unit);
            }
        }
        for (_, _, local, need) in units.iter_mut().flatten() {
            local.stash -= *need;
        }
        Ok(())
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

    /// Hands back an idle stash (see [`is_idle`](Self::is_idle)), then tops up for `need`.
    fn visit(&mut self, shared: &SharedUnit, epoch: Instant, now: Instant, need: u64) {
        let x = shared.timeline(epoch, now);
        if self.is_idle(now, need) {
            shared.give_back(x, self.stash);
            self.stash = 0;
        }
        let short = need.saturating_sub(self.stash);
        if short == 0 {
            return;
        }
        // Recent demand scaled to two intervals: enough to last until the visit after next.
        let since = self
            .demand_since
            .map_or(PULL_INTERVAL, |t| now.saturating_duration_since(t))
            .max(PULL_INTERVAL);
        let horizon = 2 * PULL_INTERVAL;
        let expected = u128::from(self.demand) * horizon.as_nanos() / since.as_nanos();
        let expected = u64::try_from(expected).unwrap_or(u64::MAX);
        let want = expected.max(short);
        let grant = shared.take(x, short, want);
        if grant > 0 {
            self.stash += grant;
            self.taken_at = Some(now);
        }
        self.demand = 0;
        self.demand_since = Some(now);
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

    #[test]
    fn entries_go_when_the_last_session_ends() {
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

        // A new session starts a fresh, full budget.
        let again = core_a.attach("alice", t0 + ms(1)).unwrap();
        assert_eq!(
            again
                .0
                .state
                .borrow()
                .lease
                .budget()
                .available(Unit::Messages, t0 + ms(1)),
            Some(10)
        );
    }

    #[test]
    fn unlimited_identity_limit_stores_nothing() {
        let budgets = IdentityBudgets::new(RateLimit::UNLIMITED);
        let core = CoreBudgets::new(budgets.clone());
        assert!(core.attach("alice", Instant::now()).is_none());
        assert_eq!(budgets.live_identities(), 0);
    }

    #[test]
    fn the_atomic_is_visited_at_most_every_10ms() {
        let t0 = Instant::now();
        let budgets = IdentityBudgets::new(messages(1000, 1000));
        let core = CoreBudgets::new(budgets.clone());
        let h = core.attach("alice", t0).unwrap();
        let shared = |t| {
            h.0.state
                .borrow()
                .lease
                .budget()
                .available(Unit::Messages, t)
                .unwrap()
        };
        // First visit: a core with no history takes a small chunk (two messages).
        assert!(h.try_take(t0, 0).is_ok());
        assert_eq!(shared(t0), 998);
        assert_eq!(h.visits(), 1);
        // Flooding for the next 9 ms: the stash runs dry and stays dry, the atomic untouched.
        for i in 1..10 {
            while h.try_take(t0 + ms(i), 0).is_ok() {}
        }
        assert_eq!(h.visits(), 1);
        assert_eq!(shared(t0 + ms(9)), 1000, "refilled, nothing new taken");
        // 10 ms on, the next visit, sized by the demand it saw since the last (1 passed,
        // 9 refused, and this one: 11 in 10 ms, so 22 for the next two intervals).
        assert!(h.try_take(t0 + ms(10), 0).is_ok());
        assert_eq!(h.visits(), 2);
        assert_eq!(shared(t0 + ms(10)), 1000 - 22);
    }

    #[test]
    fn idle_stashes_go_back_to_the_shared_budget() {
        let t0 = Instant::now();
        let budgets = IdentityBudgets::new(messages(100, 10_000));
        let core = CoreBudgets::new(budgets.clone());
        let h = core.attach("alice", t0).unwrap();
        // Flooding for 50 ms grows the chunks...
        for i in 0..50 {
            while h.try_take(t0 + ms(i), 0).is_ok() {}
        }
        // ...then one message takes a big chunk at the next visit, and the core goes quiet.
        let quiet = t0 + ms(50);
        assert!(h.try_take(quiet, 0).is_ok());
        let held = h.stash(Unit::Messages);
        assert!(held > 100, "{held}");
        let shared = |t| {
            h.0.state
                .borrow()
                .lease
                .budget()
                .available(Unit::Messages, t)
                .unwrap()
        };
        let before = shared(quiet);
        // The next message after the refresh age hands the stash back and takes just one
        // (the refill meanwhile: 20 ms at 100/s = 2).
        let later = quiet + REFRESH_AGE;
        assert!(h.try_take(later, 0).is_ok());
        assert_eq!(h.stash(Unit::Messages), 0);
        assert_eq!(shared(later), before + 2 + held - 1);
        // Handed back into a full budget, the surplus is lost, as in a single bucket.
        let full = t0 + Duration::from_secs(200);
        for i in 0..50 {
            while h.try_take(full + ms(i), 0).is_ok() {}
        }
        assert!(h.try_take(full + ms(50), 0).is_ok());
        assert!(h.stash(Unit::Messages) > 100);
        let much_later = full + Duration::from_secs(200);
        assert!(h.try_take(much_later, 0).is_ok());
        assert_eq!(shared(much_later), 10_000 - 1);
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
        assert_eq!(h.try_take(t0 + ms(10), 3000), Err(Unit::Bytes), "not full");
        // Full again once the 10 taken (and the stash's tokens) are back: 3000 passes.
        assert!(h.try_take(t0 + ms(1100), 3000).is_ok());
        // The debt of 2000 is repaid first: 2 s of nothing.
        assert_eq!(h.try_take(t0 + ms(2000), 1), Err(Unit::Bytes));
        assert_eq!(h.try_take(t0 + ms(3050), 1), Err(Unit::Bytes));
        assert!(h.try_take(t0 + ms(3200), 1).is_ok());
    }
}
