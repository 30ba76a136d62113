//! The fallback when eBPF cannot load: the same rules, enforced at accept (before any TLS
//! byte is sent).
//!
//! A lock is acceptable here: it is taken once per accepted connection and once per close,
//! never per message, and it is sharded (16 mutexes by address hash) so cores rarely meet on
//! one. A mutex makes the check and the increment one step, which is what keeps the limit
//! exact under a burst (no overshoot), and the held section is a hash lookup and two adds.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use arc_swap::ArcSwap;

use super::rules::{addr_of, key_of, Limit, LimitConfig, LimitConfigError, RuleTable};
use super::{IpStats, LimiterStats};
use crate::reason::Reason;

const SHARDS: usize = 16;
/// Addresses tracked per shard; idle ones (no open connection) are forgotten when full.
const SHARD_CAP: usize = 16_384;

/// The reasons the refusal path counts the limiter's refusals under.
pub const IP_LIMIT: Reason = Reason::IpLimit;
pub const IP_BLOCKED: Reason = Reason::IpBlocked;

/// A connection refused by the limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused: {reason}")]
pub struct Refused {
    /// [`IP_LIMIT`] or [`IP_BLOCKED`].
    pub reason: Reason,
}

#[derive(Default)]
struct Counters {
    seen: AtomicU64,
    refused_limit: AtomicU64,
    refused_blocked: AtomicU64,
    accepted: AtomicU64,
    released: AtomicU64,
    table_full: AtomicU64,
}

/// Per-IP limits at accept, shared by all cores (`Arc<UserspaceLimiter>`).
pub struct UserspaceLimiter {
    rules: ArcSwap<RuleTable>,
    shards: [Mutex<HashMap<[u8; 16], IpStats>>; SHARDS],
    hasher: std::collections::hash_map::RandomState,
    counters: Counters,
}

impl std::fmt::Debug for UserspaceLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserspaceLimiter")
            .field("rules", &self.rules.load())
            .finish_non_exhaustive()
    }
}

/// Holds one slot; releases it on drop.
#[derive(Debug)]
pub struct LimitGuard {
    limiter: Arc<UserspaceLimiter>,
    key: [u8; 16],
}

impl Drop for LimitGuard {
    fn drop(&mut self) {
        self.limiter.release(&self.key);
    }
}

impl UserspaceLimiter {
    pub fn new(cfg: &LimitConfig) -> Result<Arc<Self>, LimitConfigError> {
        Ok(Arc::new(UserspaceLimiter {
            rules: ArcSwap::from_pointee(cfg.validate()?),
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            hasher: Default::default(),
            counters: Counters::default(),
        }))
    }

    /// New rules apply to the next acquire; open connections keep their slots (an address now
    /// over a lowered limit gets no new one until it is under it again).
    pub fn update(&self, cfg: &LimitConfig) -> Result<(), LimitConfigError> {
        self.rules.store(Arc::new(cfg.validate()?));
        Ok(())
    }

    fn shard(&self, key: &[u8; 16]) -> MutexGuard<'_, HashMap<[u8; 16], IpStats>> {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        let i = (h.finish() as usize) % SHARDS;
        // A poisoned shard only means another thread panicked between two integer updates.
        self.shards[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot for `ip`, or says why not. Exact: the check and the increment happen
    /// under the shard's lock.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<LimitGuard, Refused> {
        self.counters.seen.fetch_add(1, Ordering::Relaxed);
        let key = key_of(ip);
        let limit = self.rules.load().limit_of(ip);
        let mut shard = self.shard(&key);
        if !shard.contains_key(&key) && shard.len() >= SHARD_CAP {
            shard.retain(|_, s| s.current > 0);
            if shard.len() >= SHARD_CAP {
                self.counters.table_full.fetch_add(1, Ordering::Relaxed);
                return Err(Refused { reason: IP_LIMIT });
            }
        }
        let st = shard.entry(key).or_default();
        let refused = match limit {
            Limit::Blocked => Some((IP_BLOCKED, &self.counters.refused_blocked)),
            Limit::Max(n) if st.current >= n => Some((IP_LIMIT, &self.counters.refused_limit)),
            _ => None,
        };
        if let Some((reason, counter)) = refused {
            st.refused += 1;
            counter.fetch_add(1, Ordering::Relaxed);
            return Err(Refused { reason });
        }
        st.current += 1;
        st.accepted += 1;
        drop(shard);
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(LimitGuard {
            limiter: Arc::clone(self),
            key,
        })
    }

    fn release(&self, key: &[u8; 16]) {
        let mut shard = self.shard(key);
        if let Some(st) = shard.get_mut(key) {
            st.current = st.current.saturating_sub(1);
        }
        drop(shard);
        self.counters.released.fetch_add(1, Ordering::Relaxed);
    }

    /// Open connections (slots held) of `ip`.
    pub fn connections_of(&self, ip: IpAddr) -> u32 {
        let key = key_of(ip);
        self.shard(&key).get(&key).map_or(0, |s| s.current)
    }

    /// The same shape as the kernel's counters (`syns_seen` = acquire attempts).
    pub fn stats(&self) -> LimiterStats {
        let c = &self.counters;
        LimiterStats {
            syns_seen: c.seen.load(Ordering::Relaxed),
            refused_limit: c.refused_limit.load(Ordering::Relaxed),
            refused_blocked: c.refused_blocked.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            released: c.released.load(Ordering::Relaxed),
            table_full: c.table_full.load(Ordering::Relaxed),
            ..LimiterStats::default()
        }
    }

    /// The `n` addresses with the most refusals.
    pub fn top_refused(&self, n: usize) -> Vec<(IpAddr, IpStats)> {
        let mut all = Vec::new();
        for s in &self.shards {
            let s = s.lock().unwrap_or_else(|p| p.into_inner());
            all.extend(
                s.iter()
                    .filter(|(_, v)| v.refused > 0)
                    .map(|(k, v)| (addr_of(*k), *v)),
            );
        }
        super::top_n(all, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limiter(default: u32, o: &[(&str, u32)]) -> Arc<UserspaceLimiter> {
        UserspaceLimiter::new(&LimitConfig::for_tests(default, o)).unwrap()
    }

    #[test]
    fn same_rule_table_as_the_kernel() {
        let l = limiter(3, &[("127.0.0.4/32", 0), ("127.0.0.5", 6), ("::1", 2)]);
        let a: Vec<_> = (0..3)
            .map(|_| l.try_acquire(ip("127.0.0.2")).unwrap())
            .collect();
        assert_eq!(
            l.try_acquire(ip("127.0.0.2")).unwrap_err(),
            Refused { reason: IP_LIMIT }
        );
        let _b = l.try_acquire(ip("127.0.0.3")).unwrap();
        assert_eq!(
            l.try_acquire(ip("127.0.0.4")).unwrap_err().reason,
            "ip_blocked"
        );
        let c: Vec<_> = (0..6)
            .map(|_| l.try_acquire(ip("127.0.0.5")).unwrap())
            .collect();
        assert!(l.try_acquire(ip("127.0.0.5")).is_err());
        let d: Vec<_> = (0..2).map(|_| l.try_acquire(ip("::1")).unwrap()).collect();
        assert!(l.try_acquire(ip("::1")).is_err());
        assert_eq!(l.connections_of(ip("127.0.0.2")), 3);
        assert_eq!(l.connections_of(ip("::ffff:127.0.0.2")), 3);
        let s = l.stats();
        assert_eq!(
            (
                s.syns_seen,
                s.accepted,
                s.refused_limit,
                s.refused_blocked,
                s.released
            ),
            (16, 12, 3, 1, 0)
        );
        let top = l.top_refused(10);
        assert_eq!(top.len(), 4);
        drop((a, c, d));
        assert_eq!(l.stats().released, 11);
        assert_eq!(l.connections_of(ip("127.0.0.2")), 0);
        // Live update: a lowered default applies to the next acquire.
        l.update(&LimitConfig {
            per_ip_connections: 1,
            ip_overrides: vec![],
        })
        .unwrap();
        let _one = l.try_acquire(ip("127.0.0.2")).unwrap();
        assert!(l.try_acquire(ip("127.0.0.2")).is_err());
        assert!(
            limiter(0, &[]).try_acquire(ip("1.1.1.1")).is_ok(),
            "0 = unlimited"
        );
    }

    #[test]
    fn guard_releases_on_drop() {
        let l = limiter(1, &[]);
        let g = l.try_acquire(ip("10.0.0.1")).unwrap();
        assert!(l.try_acquire(ip("10.0.0.1")).is_err());
        drop(g);
        assert_eq!(l.connections_of(ip("10.0.0.1")), 0);
        assert!(l.try_acquire(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn never_overshoots_under_concurrency() {
        const LIMIT: u32 = 5;
        let l = limiter(LIMIT, &[]);
        let held = Arc::new(AtomicU32::new(0));
        let max_seen = Arc::new(AtomicU32::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (l, held, max_seen) = (l.clone(), held.clone(), max_seen.clone());
                std::thread::spawn(move || {
                    let mut ok = 0u64;
                    for i in 0..20_000u32 {
                        if let Ok(g) = l.try_acquire(ip("192.0.2.7")) {
                            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
                            max_seen.fetch_max(now, Ordering::SeqCst);
                            if i % 7 == 0 {
                                std::thread::yield_now();
                            }
                            held.fetch_sub(1, Ordering::SeqCst);
                            drop(g);
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let ok: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(max_seen.load(Ordering::SeqCst) <= LIMIT);
        assert!(ok > 0);
        assert_eq!(l.connections_of(ip("192.0.2.7")), 0);
        let s = l.stats();
        assert_eq!(s.accepted, ok);
        assert_eq!(s.released, ok);
        assert_eq!(s.accepted + s.refused_limit, 8 * 20_000);
    }
}
