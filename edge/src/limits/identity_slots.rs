//! `per_identity_connections`: how many sessions one identity (a token's subject, else the
//! client certificate's identity) may hold at once, over all cores.
//!
//! The count is shared by the cores and taken only at the upgrade and at a session's end —
//! never on the data path — so a few mutex-guarded shards (picked by a hash of the identity)
//! are cheap and keep the count exact: no burst across cores can overshoot it.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

pub(crate) struct IdentitySlots {
    limit: u32,
    hasher: std::collections::hash_map::RandomState,
    shards: Vec<Mutex<HashMap<String, u32>>>,
}

/// One held session of an identity; dropping it gives the slot back.
pub(crate) struct IdentitySlot {
    slots: Arc<IdentitySlots>,
    identity: String,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut shard = self.slots.shard(&self.identity);
        if let Some(n) = shard.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                shard.remove(&self.identity);
            }
        }
    }
}

impl IdentitySlots {
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(Self {
            limit,
            hasher: Default::default(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    fn shard(&self, identity: &str) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        let shard = &self.shards[(self.hasher.hash_one(identity) as usize) % SHARDS];
        // A poisoned shard only means a panic elsewhere while counting; the counts stay usable.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for `identity`, or `None` when it holds `limit` sessions already.
    pub fn try_take(self: &Arc<Self>, identity: &str) -> Option<IdentitySlot> {
        let mut shard = self.shard(identity);
        let n = shard.entry(identity.to_owned()).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        drop(shard);
        Some(IdentitySlot {
            slots: self.clone(),
            identity: identity.to_owned(),
        })
    }

    #[cfg(test)]
    fn held(&self, identity: &str) -> u32 {
        self.shard(identity).get(identity).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_and_slots_come_back() {
        let slots = IdentitySlots::new(2);
        let a = slots.try_take("alice").unwrap();
        let _b = slots.try_take("alice").unwrap();
        assert!(slots.try_take("alice").is_none());
        assert!(slots.try_take("bob").is_some(), "per identity");
        drop(a);
        assert_eq!(slots.held("alice"), 1);
        assert!(slots.try_take("alice").is_some());
    }

    #[test]
    fn concurrent_takers_never_overshoot() {
        let slots = IdentitySlots::new(3);
        let peak = Arc::new(std::sync::atomic::AtomicU32::new(0));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let slots = slots.clone();
                let peak = peak.clone();
                s.spawn(move || {
                    for _ in 0..2000 {
                        if let Some(slot) = slots.try_take("x") {
                            peak.fetch_max(slots.held("x"), std::sync::atomic::Ordering::Relaxed);
                            drop(slot);
                        }
                    }
                });
            }
        });
        assert!(peak.load(std::sync::atomic::Ordering::Relaxed) <= 3);
        assert_eq!(slots.held("x"), 0);
    }
}
