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
//! - The store is in memory, and `wssedge ctl restart` hands it to the new process: each core
//!   seals its shard once the old process has stopped accepting ([`ReplayStore::seal_and_export`]:
//!   later checks there answer 503 `replay_store_unavailable`, the client retries on the new
//!   process) and its live entries travel with the handover ([`HandedEntry`]; expired ones are
//!   not sent) into the new process's shards ([`ReplayStore::import`], re-sharded by
//!   [`owner_of_key`], its own capacity holding). A process started cold (not by a restart)
//!   begins empty: keep `max_token_lifetime_s` short where that matters.
//!
//! # Memory per entry
//!
//! A `jti` is stored as the first 16 bytes of its SHA-256 (fixed size whatever the `jti`'s
//! length; collisions at 2^-64 after four billion entries). The map entry is 24 bytes
//! (`[u8; 16]` + `u64` expiry) plus one control byte, at a load factor between 7/16 and 7/8:
//! 29–57 bytes. The heap entry is 24 bytes in a `Vec` that grows by doubling: 24–48 bytes.
//! In all, 53–105 bytes per tracked `jti`: at the default 1 000 000 across the process,
//! 53–105 MB at the cap, nothing when idle (nothing is reserved up front).

use crate::reason::Reason;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use aws_lc_rs::digest;

use super::jwt::JwtRefusal;

/// Expired entries popped per insert at most: enough to outpace inserts, small enough that
/// one upgrade never pays for a large purge.
pub const PURGE_BATCH: usize = 64;

/// A `jti` as the store keeps it: the first 16 bytes of its SHA-256.
pub type JtiKey = [u8; 16];

/// Why the owner core refused a `jti`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayRefusal {
    #[error("token was already used (jti replayed)")]
    Replayed,
    #[error("replay store is full of unexpired tokens")]
    Full,
    /// The shard was sealed and handed to a restart's new process; retry there.
    #[error("replay store handed over to the new process")]
    HandedOver,
}

impl ReplayRefusal {
    pub fn reason(self) -> Reason {
        match self {
            ReplayRefusal::Replayed => Reason::Replayed,
            ReplayRefusal::Full => Reason::ReplayStoreFull,
            ReplayRefusal::HandedOver => Reason::ReplayStoreUnavailable,
        }
    }

    pub fn status(self) -> u16 {
        match self {
            ReplayRefusal::Replayed => 401,
            ReplayRefusal::Full | ReplayRefusal::HandedOver => 503,
        }
    }
}

impl From<ReplayRefusal> for JwtRefusal {
    fn from(r: ReplayRefusal) -> Self {
        match r {
            ReplayRefusal::Replayed => JwtRefusal::Replayed,
            ReplayRefusal::Full => JwtRefusal::ReplayStoreFull,
            ReplayRefusal::HandedOver => JwtRefusal::ReplayStoreUnavailable,
        }
    }
}

/// One live entry as a restart hands it over: the key and the token's `exp` (the receiving
/// store adds its own leeway, as it would for the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandedEntry {
    pub key: JtiKey,
    pub exp: u64,
}

impl HandedEntry {
    /// Bytes per entry on the wire: the key, then `exp` little-endian.
    pub const WIRE_BYTES: usize = 24;

    pub fn to_wire(self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.exp.to_le_bytes());
    }

    /// Entries from `bytes` (a whole number of them, or `None`).
    pub fn from_wire(bytes: &[u8]) -> Option<Vec<HandedEntry>> {
        if bytes.len() % Self::WIRE_BYTES != 0 {
            return None;
        }
        Some(
            bytes
                .chunks_exact(Self::WIRE_BYTES)
                .map(|c| {
                    let mut key = [0u8; 16];
                    key.copy_from_slice(&c[..16]);
                    let mut exp = [0u8; 8];
                    exp.copy_from_slice(&c[16..]);
                    HandedEntry {
                        key,
                        exp: u64::from_le_bytes(exp),
                    }
                })
                .collect(),
        )
    }
}

/// What [`ReplayStore::import`] did with the entries it was handed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ImportOutcome {
    /// Now remembered here.
    pub kept: usize,
    /// Expired by now (or at once): nothing to remember.
    pub expired: usize,
    /// Live, but the store was full: these `jti`s are *not* remembered (the caller must then
    /// refuse the tokens they could belong to; see `auth::admission`).
    pub dropped: usize,
}

/// The `jti`s of one owner core.
#[derive(Debug)]
pub struct ReplayStore {
    capacity: usize,
    leeway_s: u64,
    /// `jti` digest → the first second it may be forgotten (`exp + leeway`).
    seen: HashMap<JtiKey, u64>,
    by_expiry: BinaryHeap<Reverse<(u64, JtiKey)>>,
    /// Handed to a restart's new process: new `jti`s are refused ([`ReplayRefusal::HandedOver`]).
    sealed: bool,
    /// `max_token_lifetime_s`: no token this edge admits expires later than this after now, so
    /// no handed-over entry may either (a broken predecessor cannot pin entries for ever).
    max_lifetime_s: Option<u64>,
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
            sealed: false,
            max_lifetime_s: None,
        }
    }

    /// Bounds handed-over entries' expiry by `max_token_lifetime_s` (when one is set).
    pub fn with_max_lifetime(mut self, max_lifetime_s: Option<u64>) -> Self {
        self.max_lifetime_s = max_lifetime_s;
        self
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
        self.check_and_insert_key(jti_key(jti), exp_unix, now_unix)
    }

    /// [`Self::check_and_insert`] of a `jti` already hashed ([`jti_key`]).
    pub fn check_and_insert_key(
        &mut self,
        key: JtiKey,
        exp_unix: u64,
        now_unix: u64,
    ) -> Result<(), ReplayRefusal> {
        self.purge_some(now_unix, PURGE_BATCH);
        if let Some(&until) = self.seen.get(&key) {
            if now_unix < until {
                return Err(ReplayRefusal::Replayed);
            }
            // Expired but not yet purged: forget it now, the token is new again.
            self.seen.remove(&key);
        }
        if self.sealed {
            // What it remembers went to the new process: it must not remember more.
            return Err(ReplayRefusal::HandedOver);
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

    /// Seals the store (every later new `jti` is refused with [`ReplayRefusal::HandedOver`];
    /// known ones are still refused as replayed) and returns its live entries for a restart's
    /// new process. Entries expired at `now_unix` are not exported.
    pub fn seal_and_export(&mut self, now_unix: u64) -> Vec<HandedEntry> {
        self.sealed = true;
        self.purge(now_unix);
        self.seen
            .iter()
            .filter(|(_, &until)| until > now_unix)
            .map(|(&key, &until)| HandedEntry {
                key,
                exp: until.saturating_sub(self.leeway_s),
            })
            .collect()
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed
    }

    /// Remembers entries a restart's old process handed over (this store's leeway added to
    /// each `exp`, which is first bounded by `now + max_token_lifetime_s` when that is set).
    /// The capacity holds: live entries beyond it are counted as dropped, never stored;
    /// expired ones are skipped; a key already here keeps the later expiry.
    pub fn import(
        &mut self,
        entries: impl IntoIterator<Item = HandedEntry>,
        now_unix: u64,
    ) -> ImportOutcome {
        let mut outcome = ImportOutcome::default();
        let latest = self
            .max_lifetime_s
            .map_or(u64::MAX, |max| now_unix.saturating_add(max));
        for e in entries {
            let until = e.exp.min(latest).saturating_add(self.leeway_s);
            if until <= now_unix {
                outcome.expired += 1;
                continue;
            }
            let full = self.seen.len() >= self.capacity;
            match self.seen.get_mut(&e.key) {
                Some(known) => {
                    if until > *known {
                        *known = until;
                        self.by_expiry.push(Reverse((until, e.key)));
                    }
                    outcome.kept += 1;
                }
                None if full => outcome.dropped += 1,
                None => {
                    self.seen.insert(e.key, until);
                    self.by_expiry.push(Reverse((until, e.key)));
                    outcome.kept += 1;
                }
            }
        }
        outcome
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

/// The store's key of `jti`: the first 16 bytes of its SHA-256.
pub fn jti_key(jti: &str) -> JtiKey {
    let d = digest::digest(&digest::SHA256, jti.as_bytes());
    let mut k = [0u8; 16];
    k.copy_from_slice(&d.as_ref()[..16]);
    k
}

/// The core that owns `jti` among `cores` (0 when `cores` is 0): [`owner_of_key`] of its
/// [`jti_key`].
pub fn owner_core(jti: &str, cores: usize) -> usize {
    owner_of_key(&jti_key(jti), cores)
}

/// The core that owns a key among `cores` (0 when `cores` is 0): the key's first 8 bytes
/// (SHA-256, so uniform) mapped onto `0..cores` by Lemire's multiply-shift.
///
/// Derived from the stored key, not the `jti` text, so that a restart's new process can
/// re-shard the entries it is handed (it never sees the `jti`s) onto however many cores it
/// has. Fixed: every core, every build and every restart compute the same owner, which the
/// sharding needs and a randomly keyed hash would break. Hash flooding is not a concern: a
/// `jti` only reaches the store inside a token whose signature has verified.
pub fn owner_of_key(key: &JtiKey, cores: usize) -> usize {
    if cores == 0 {
        return 0;
    }
    let mut first = [0u8; 8];
    first.copy_from_slice(&key[..8]);
    let h = u64::from_le_bytes(first);
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
        assert_eq!(std::mem::size_of::<(JtiKey, u64)>(), 24);
        assert_eq!(std::mem::size_of::<Reverse<(u64, JtiKey)>>(), 24);
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

    /// Owners of "a", "b", "jti-1", "jti-2" among 16 cores since the owner is derived from the
    /// stored key (so a restart can re-shard what it is handed).
    const PINNED_OWNERS: [usize; 4] = [12, 4, 15, 9];

    #[test]
    fn a_sealed_store_exports_its_live_entries_and_takes_no_new_jti() {
        let mut s = ReplayStore::new(10, 30);
        s.check_and_insert("live", 1_000, 900).unwrap();
        s.check_and_insert("gone", 880, 800).unwrap(); // until 910
        let mut out = s.seal_and_export(910);
        out.sort_by_key(|e| e.exp);
        assert_eq!(
            out,
            vec![HandedEntry {
                key: jti_key("live"),
                exp: 1_000
            }],
            "expired entries are not exported; exp is handed without the leeway"
        );
        assert!(s.is_sealed());
        assert_eq!(
            s.check_and_insert("live", 1_000, 911),
            Err(ReplayRefusal::Replayed),
            "a known jti is still a replay"
        );
        assert_eq!(
            s.check_and_insert("new", 1_000, 911),
            Err(ReplayRefusal::HandedOver)
        );
        let e = JwtRefusal::from(ReplayRefusal::HandedOver);
        assert_eq!(
            (Reason::from(&e), e.status()),
            (Reason::ReplayStoreUnavailable, 503)
        );
        assert_eq!(e.extra_headers(), &[("Retry-After", "1")]);
    }

    #[test]
    fn an_import_bounds_expiry_by_the_token_lifetime_cap() {
        // A broken predecessor's exp = u64::MAX would pin the entry for ever.
        let pinned = HandedEntry {
            key: jti_key("pinned"),
            exp: u64::MAX,
        };
        let mut s = ReplayStore::new(10, 5).with_max_lifetime(Some(3600));
        assert_eq!(s.import([pinned], 1_000).kept, 1);
        assert_eq!(s.purge(1_000 + 3600 + 4), 0);
        assert_eq!(
            s.purge(1_000 + 3600 + 5),
            1,
            "gone at now + lifetime + leeway"
        );
        // Without a lifetime cap the expiry is taken as sent.
        let mut open = ReplayStore::new(10, 0);
        assert_eq!(open.import([pinned], 1_000).kept, 1);
        assert_eq!(open.purge(u64::MAX - 1), 0);
    }

    #[test]
    fn an_import_keeps_live_entries_within_the_capacity() {
        let entries: Vec<HandedEntry> = (0..5u64)
            .map(|i| HandedEntry {
                key: jti_key(&format!("j{i}")),
                exp: 100 * (i + 1),
            })
            .collect();
        // Leeway 10: entry 0 (exp 100) lives until 110, so is expired at 150.
        let mut s = ReplayStore::new(3, 10);
        let got = s.import(entries.iter().copied(), 150);
        assert_eq!(
            got,
            ImportOutcome {
                kept: 3,
                expired: 1,
                dropped: 1
            }
        );
        assert_eq!(s.len(), 3, "the capacity holds on the receiving side");
        for i in 1..4 {
            assert_eq!(
                s.check_and_insert(&format!("j{i}"), 100 * (i + 1), 151),
                Err(ReplayRefusal::Replayed),
                "j{i}"
            );
        }
        // Imported entries leave when they expire, like any other.
        assert_eq!(s.purge(210), 1);
        // A duplicate keeps the later expiry.
        let mut d = ReplayStore::new(3, 0);
        d.check_and_insert("x", 100, 0).unwrap();
        let got = d.import(
            [HandedEntry {
                key: jti_key("x"),
                exp: 500,
            }],
            0,
        );
        assert_eq!(got.kept, 1);
        assert_eq!(d.len(), 1);
        assert_eq!(d.purge(200), 0);
        assert_eq!(
            d.check_and_insert("x", 500, 300),
            Err(ReplayRefusal::Replayed)
        );
    }

    #[test]
    fn handed_entries_cross_the_wire_unchanged_and_reshard_by_key() {
        let entries: Vec<HandedEntry> = (0..100u64)
            .map(|i| HandedEntry {
                key: jti_key(&format!("w{i}")),
                exp: u64::MAX - i,
            })
            .collect();
        let mut wire = Vec::new();
        for e in &entries {
            e.to_wire(&mut wire);
        }
        assert_eq!(wire.len(), 100 * HandedEntry::WIRE_BYTES);
        assert_eq!(HandedEntry::from_wire(&wire).unwrap(), entries);
        assert!(HandedEntry::from_wire(&wire[..23]).is_none());
        // The owner of an entry is computed from its key alone: a new process with another
        // core count finds every jti's owner without the jti.
        for cores in [1usize, 2, 3, 8] {
            for i in 0..100 {
                let jti = format!("w{i}");
                assert_eq!(owner_core(&jti, cores), owner_of_key(&jti_key(&jti), cores));
            }
        }
    }
}
