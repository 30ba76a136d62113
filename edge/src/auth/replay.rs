//! Single-use tokens: the `jti`s one owner core has seen, until their tokens expire.
//!
//! The store is sharded by `jti` ([`owner_core`]): the upgrading core sends one message to the
//! owner and waits for its answer, so the data path never touches it and it needs no lock.
//!
//! - A `jti` is remembered until `exp + leeway` — exactly as long as `verify` would accept
//!   its token — then forgotten, so a replay within the token's life is always caught.
//! - An unexpired entry is never evicted: when the store is full of live entries it refuses
//!   new tokens (`replay_store_full`, 503) rather than forget one and allow a replay.
//! - Expired entries leave through a min-heap keyed by expiry: every insert first pops up to
//!   [`PURGE_BATCH`] expired entries (amortised O(log n), bounded latency per upgrade), and a
//!   full store purges everything expired before refusing. [`ReplayStore::purge`] can also
//!   run from the core's timer.
//! - The store is in memory: a restart forgets every `jti`. Keep `max_token_lifetime_s`
//!   short where that matters.
//!
//! # Memory per entry
//!
//! A `jti` is stored as the first 16 bytes of its SHA-256 (fixed size whatever the `jti`'s
//! length; collisions at 2^-64 after four billion entries). The map entry is 24 bytes
//! (`[u8; 16]` + `u64` expiry) plus one control byte, at a load factor between 7/16 and 7/8:
//! 29–57 bytes. The heap entry is 24 bytes in a `Vec` that grows by doubling: 24–48 bytes.
//! In all, 53–105 bytes per tracked `jti`: at the default 1 000 000 across the process,
//! 53–105 MB at the cap, nothing when idle (nothing is reserved up front).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use aws_lc_rs::digest;

use super::jwt::JwtRefusal;

/// Expired entries popped per insert at most: enough to outpace inserts, small enough that
/// one upgrade never pays for a large purge.
pub const PURGE_BATCH: usize = 64;

type Key = [u8; 16];

/// Why the owner core refused a `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayRefusal {
    #[error("token was already used (jti replayed)")]
    Replayed,
    #[error("replay store is full of unexpired tokens")]
    Full,
}

impl ReplayRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            ReplayRefusal::Replayed => "replayed",
            ReplayRefusal::Full => "replay_store_full",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ReplayRefusal::Replayed => 401,
            ReplayRefusal::Full => 503,
        }
    }
}

impl From<ReplayRefusal> for JwtRefusal {
    fn from(r: ReplayRefusal) -> Self {
        match r {
            ReplayRefusal::Replayed => JwtRefusal::Replayed,
            ReplayRefusal::Full => JwtRefusal::ReplayStoreFull,
        }
    }
}

/// The `jti`s of one owner core.
#[derive(Debug)]
pub struct ReplayStore {
    capacity: usize,
    leeway_s: u64,
    /// `jti` digest → the first second it may be forgotten (`exp + leeway`).
    seen: HashMap<Key, u64>,
    by_expiry: BinaryHeap<Reverse<(u64, Key)>>,
}

impl ReplayStore {
    /// `capacity` entries at most (see `JwtVerifier::replay_capacity_per_core`); `leeway_s`
    /// the same leeway the verifier accepts expired tokens with.
    pub fn new(capacity: usize, leeway_s: u64) -> Self {
        Self {
            capacity,
            leeway_s,
            seen: HashMap::new(),
            by_expiry: BinaryHeap::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Accepts `jti` once while its token lives; `Replayed` if it was seen and has not yet
    /// expired, `Full` if remembering it would need evicting a live entry.
    pub fn check_and_insert(
        &mut self,
        jti: &str,
        exp_unix: u64,
        now_unix: u64,
    ) -> Result<(), ReplayRefusal> {
        self.purge_some(now_unix, PURGE_BATCH);
        let key = key(jti);
        if let Some(&until) = self.seen.get(&key) {
            if now_unix < until {
                return Err(ReplayRefusal::Replayed);
            }
            // Expired but not yet purged: forget it now, the token is new again.
            self.seen.remove(&key);
        }
        let until = exp_unix.saturating_add(self.leeway_s);
        if now_unix >= until {
            // `verify` refuses such a token as expired; nothing to remember.
            return Ok(());
        }
        if self.seen.len() >= self.capacity {
            self.purge(now_unix);
            if self.seen.len() >= self.capacity {
                return Err(ReplayRefusal::Full);
            }
        }
        self.seen.insert(key, until);
        self.by_expiry.push(Reverse((until, key)));
        Ok(())
    }

    /// Forgets every entry expired at `now_unix`; returns how many.
    pub fn purge(&mut self, now_unix: u64) -> usize {
        self.purge_some(now_unix, usize::MAX)
    }

    fn purge_some(&mut self, now_unix: u64, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.by_expiry.peek() {
                Some(Reverse((until, _))) if *until <= now_unix => {}
                _ => break,
            }
            let Some(Reverse((until, key))) = self.by_expiry.pop() else {
                break;
            };
            // Only if the map still holds this very entry (it may have been dropped early
            // as expired and the jti inserted again with a later expiry).
            if self.seen.get(&key) == Some(&until) {
                self.seen.remove(&key);
                n += 1;
            }
        }
        n
    }
}

fn key(jti: &str) -> Key {
    let d = digest::digest(&digest::SHA256, jti.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    k
}

/// The core that owns `jti` among `cores` (0 when `cores` is 0).
///
/// FNV-1a 64 over the bytes, then the murmur3 finaliser to spread FNV's weak high bits, then
/// Lemire's multiply-shift onto `0..cores`. Fixed constants: every core, every build and
/// every restart compute the same owner, which the sharding needs and a randomly keyed
/// SipHash would break. Hash flooding is not a concern: a `jti` only reaches this function
/// inside a token whose signature has verified, so clients cannot choose it.
pub fn owner_core(jti: &str, cores: usize) -> usize {
    if cores == 0 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in jti.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    ((u128::from(h) * cores as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_refused_within_its_life_and_accepted_after() {
        let mut s = ReplayStore::new(10, 30);
        assert_eq!(s.check_and_insert("a", 1_000, 900), Ok(()));
        assert_eq!(
            s.check_and_insert("a", 1_000, 901),
            Err(ReplayRefusal::Replayed)
        );
        // Within the leeway the token is still accepted by verify, so still a replay.
        assert_eq!(
            s.check_and_insert("a", 1_000, 1_029),
            Err(ReplayRefusal::Replayed)
        );
        // At exp + leeway verify refuses it as expired, and the store has forgotten it.
        assert_eq!(s.check_and_insert("a", 2_000, 1_030), Ok(()));
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.check_and_insert("a", 2_000, 1_031),
            Err(ReplayRefusal::Replayed)
        );
    }

    #[test]
    fn different_jtis_do_not_collide() {
        let mut s = ReplayStore::new(1_000, 0);
        for i in 0..1_000 {
            assert_eq!(s.check_and_insert(&format!("jti-{i}"), 100, 0), Ok(()));
        }
        assert_eq!(
            s.check_and_insert("jti-7", 100, 1),
            Err(ReplayRefusal::Replayed)
        );
    }

    #[test]
    fn full_refuses_and_never_evicts_a_live_entry() {
        let mut s = ReplayStore::new(3, 0);
        for j in ["a", "b", "c"] {
            s.check_and_insert(j, 100, 0).unwrap();
        }
        assert_eq!(s.check_and_insert("d", 100, 10), Err(ReplayRefusal::Full));
        // Still remembered, all three.
        for j in ["a", "b", "c"] {
            assert_eq!(
                s.check_and_insert(j, 100, 10),
                Err(ReplayRefusal::Replayed),
                "{j}"
            );
        }
        assert_eq!(
            JwtRefusal::from(ReplayRefusal::Full).reason(),
            "replay_store_full"
        );
        assert_eq!(ReplayRefusal::Full.status(), 503);
    }

    #[test]
    fn full_purges_expired_entries_before_refusing() {
        let mut s = ReplayStore::new(2, 0);
        s.check_and_insert("short", 10, 0).unwrap();
        s.check_and_insert("long", 100, 0).unwrap();
        assert_eq!(s.check_and_insert("new", 100, 5), Err(ReplayRefusal::Full));
        assert_eq!(s.check_and_insert("new", 100, 10), Ok(()));
        assert_eq!(
            s.check_and_insert("long", 100, 10),
            Err(ReplayRefusal::Replayed)
        );
    }

    #[test]
    fn purging_is_amortised_and_complete() {
        let mut s = ReplayStore::new(10_000, 0);
        for i in 0..5_000u64 {
            s.check_and_insert(&i.to_string(), i, 0).unwrap();
        }
        // One insert pops at most a batch of expired entries.
        s.check_and_insert("x", 10_000, 4_000).unwrap();
        // Entries 1..=4999 (exp 0 was expired on arrival), 64 of them purged, plus "x".
        assert_eq!(s.len(), 5_000 - PURGE_BATCH);
        assert_eq!(s.purge(4_000), 4_000 - PURGE_BATCH);
        assert_eq!(s.len(), 1_000);
        assert_eq!(s.purge(u64::MAX), 1_000);
        assert!(s.is_empty());
    }

    #[test]
    fn already_expired_tokens_are_not_remembered() {
        let mut s = ReplayStore::new(1, 5);
        assert_eq!(s.check_and_insert("old", 10, 15), Ok(()));
        assert!(s.is_empty());
    }

    #[test]
    fn entry_sizes_match_the_documented_memory() {
        assert_eq!(std::mem::size_of::<(Key, u64)>(), 24);
        assert_eq!(std::mem::size_of::<Reverse<(u64, Key)>>(), 24);
    }

    #[test]
    fn owner_core_is_stable_and_spread() {
        // Fixed values: a change of hash would split owners during a rolling change.
        assert_eq!(owner_core("", 8), owner_core("", 8));
        assert_eq!(owner_core("anything", 0), 0);
        assert_eq!(owner_core("anything", 1), 0);
        let pinned: Vec<usize> = ["a", "b", "jti-1", "jti-2"]
            .iter()
            .map(|j| owner_core(j, 16))
            .collect();
        assert_eq!(pinned, PINNED_OWNERS);
        // A uniform hash gives binomial counts: each within 5 standard deviations of the mean.
        for cores in [2usize, 3, 8, 64] {
            let mut counts = vec![0usize; cores];
            let n = 64_000;
            for i in 0..n {
                let o = owner_core(&format!("jti-{i}"), cores);
                assert!(o < cores);
                counts[o] += 1;
            }
            let mean = n / cores;
            let bound = 5.0 * (mean as f64).sqrt();
            for (core, c) in counts.iter().enumerate() {
                assert!(
                    (c.abs_diff(mean) as f64) <= bound,
                    "{cores} cores: core {core} got {c}, mean {mean}"
                );
            }
        }
    }

    const PINNED_OWNERS: [usize; 4] = [8, 6, 3, 4];
}
