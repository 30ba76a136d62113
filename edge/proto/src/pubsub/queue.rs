//! A subscriber connection's bounded queue of shared publications.
//!
//! Every subscriber of a topic holds a reference to the same frame body ([`Bytes`]); the queue
//! never holds more than its cap (`[pubsub] queue_messages`) of them. When a publication finds
//! the queue full, the topic's [`SlowPolicy`] decides:
//!
//! - `disconnect`: [`Pushed::Overflow`]; nothing is queued and the edge closes the connection
//!   (1008 `slow_consumer`), so the client never misses a message silently.
//! - `drop`: [`Pushed::Dropped`]; the new publication is skipped for this subscriber, and the
//!   gap in the topic's `seq` tells the client.
//! - `conflate`: the newest publication of a topic replaces its older queued one **in place**
//!   ([`Pushed::Conflated`]), whether or not the queue is full. In place, not moved to the back:
//!   the topic keeps the turn its oldest pending update had, so a topic updated faster than the
//!   client reads is still delivered as often as the queue drains, instead of being pushed back
//!   behind everything queued since (which could delay it without bound). Order within a topic
//!   holds trivially (one queued item). If the queue is full of other topics' items and holds
//!   nothing of this topic, there is nothing to replace: the publication is skipped
//!   ([`Pushed::Dropped`], the seq gap shows it); the queue never grows past its cap.
//!
//! Below the cap every publication is queued, whatever the policy, except that `conflate`
//! replaces in place as above (only the latest state matters to such a topic's clients).
//! Across topics the queue is in arrival order, except for the in-place replacement.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;

use super::config::SlowPolicy;

/// A topic as the per-core registry numbers it (cheap to copy and compare, unlike its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicId(pub u32);

/// One publication queued for one subscriber.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: TopicId,
    pub seq: u64,
    /// The shared frame body (one allocation for every subscriber).
    pub frame: Bytes,
    /// When the owner sequenced it (the start of the publish → write latency).
    pub published_at: Instant,
}

/// What became of a pushed publication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// Appended.
    Queued,
    /// Skipped for this subscriber (`drop` when full, or `conflate` with nothing to replace).
    Dropped,
    /// Replaced the topic's older queued publication (that one is never delivered).
    Conflated,
    /// The queue is full and the topic's policy is `disconnect`: close the connection.
    Overflow,
}

#[derive(Debug, Clone)]
pub struct SubscriberQueue {
    items: VecDeque<Delivery>,
    cap: usize,
    /// Items popped since creation: the absolute position of `items[i]` is `popped + i`.
    popped: u64,
    /// The absolute position of each topic's queued item that may be replaced in place (the
    /// topic's newest queued item, pushed under `conflate`). A BTreeMap: no hasher, no
    /// random seed.
    conflatable: BTreeMap<TopicId, u64>,
    queued_bytes: usize,
    high_water: usize,
}

impl SubscriberQueue {
    /// An empty queue of at most `cap` publications (a cap of 0 is taken as 1: a queue that
    /// holds nothing would close or starve every subscriber on its first publication).
    pub fn new(cap: usize) -> Self {
        Self {
            items: VecDeque::new(),
            cap: cap.max(1),
            popped: 0,
            conflatable: BTreeMap::new(),
            queued_bytes: 0,
            high_water: 0,
        }
    }

    /// Offers a publication under its topic's policy (see the module's note).
    pub fn push(&mut self, item: Delivery, policy: SlowPolicy) -> Pushed {
        if policy == SlowPolicy::Conflate {
            let new_len = item.frame.len();
            if let Some(slot) = self.conflatable_slot(item.topic) {
                let old_len = std::mem::replace(slot, item).frame.len();
                self.queued_bytes = self.queued_bytes - old_len + new_len;
                return Pushed::Conflated;
            }
        }
        if self.items.len() >= self.cap {
            return match policy {
                SlowPolicy::Disconnect => Pushed::Overflow,
                SlowPolicy::Drop | SlowPolicy::Conflate => Pushed::Dropped,
            };
        }
        let position = self.popped + self.items.len() as u64;
        if policy == SlowPolicy::Conflate {
            self.conflatable.insert(item.topic, position);
        } else {
            // A newer item of this topic now follows the tracked one: replacing the tracked
            // one would put this topic out of order.
            self.conflatable.remove(&item.topic);
        }
        self.queued_bytes += item.frame.len();
        self.items.push_back(item);
        self.high_water = self.high_water.max(self.items.len());
        Pushed::Queued
    }

    fn conflatable_slot(&mut self, topic: TopicId) -> Option<&mut Delivery> {
        let position = *self.conflatable.get(&topic)?;
        let index = usize::try_from(position.checked_sub(self.popped)?).ok()?;
        self.items.get_mut(index)
    }

    /// Takes the oldest publication.
    pub fn pop(&mut self) -> Option<Delivery> {
        let item = self.items.pop_front()?;
        if self.conflatable.get(&item.topic) == Some(&self.popped) {
            self.conflatable.remove(&item.topic);
        }
        self.popped += 1;
        self.queued_bytes -= item.frame.len();
        Some(item)
    }

    /// The publications for one write, oldest first: as many as fit in `max_bytes` of frame
    /// bodies (WebSocket headers not counted), and always at least one if any is queued, so a
    /// publication larger than `max_bytes` still goes out. Items the caller does not take stay
    /// queued.
    pub fn drain(&mut self, max_bytes: usize) -> Drain<'_> {
        Drain {
            queue: self,
            budget: max_bytes,
            first: true,
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Frame bytes referenced by the queued publications (shared with other subscribers).
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// The most publications this queue has held at once.
    pub fn high_water(&self) -> usize {
        self.high_water
    }
}

/// One write's worth of publications; see [`SubscriberQueue::drain`].
pub struct Drain<'q> {
    queue: &'q mut SubscriberQueue,
    budget: usize,
    first: bool,
}

impl Iterator for Drain<'_> {
    type Item = Delivery;

    fn next(&mut self) -> Option<Delivery> {
        let len = self.queue.items.front()?.frame.len();
        if !self.first && len > self.budget {
            return None;
        }
        self.first = false;
        self.budget = self.budget.saturating_sub(len);
        self.queue.pop()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn item(topic: u32, seq: u64) -> Delivery {
        Delivery {
            topic: TopicId(topic),
            seq,
            frame: Bytes::from(format!("t{topic}s{seq}")),
            published_at: Instant::now(),
        }
    }

    fn seqs(q: &mut SubscriberQueue) -> Vec<(u32, u64)> {
        q.drain(usize::MAX).map(|d| (d.topic.0, d.seq)).collect()
    }

    #[test]
    fn below_the_cap_everything_is_queued_in_order() {
        let mut q = SubscriberQueue::new(4);
        for (i, policy) in [
            SlowPolicy::Disconnect,
            SlowPolicy::Drop,
            SlowPolicy::Disconnect,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(q.push(item(i as u32, 1), policy), Pushed::Queued);
        }
        assert_eq!((q.len(), q.high_water()), (3, 3));
        assert_eq!(seqs(&mut q), [(0, 1), (1, 1), (2, 1)]);
        assert!(q.is_empty());
        assert_eq!((q.queued_bytes(), q.high_water()), (0, 3));
    }

    #[test]
    fn disconnect_overflows_and_drop_skips_when_full() {
        let mut q = SubscriberQueue::new(2);
        q.push(item(1, 1), SlowPolicy::Drop);
        q.push(item(1, 2), SlowPolicy::Drop);
        assert_eq!(q.push(item(1, 3), SlowPolicy::Drop), Pushed::Dropped);
        assert_eq!(q.push(item(2, 1), SlowPolicy::Disconnect), Pushed::Overflow);
        assert_eq!(q.len(), 2);
        q.pop();
        assert_eq!(q.push(item(1, 4), SlowPolicy::Drop), Pushed::Queued);
        assert_eq!(
            seqs(&mut q),
            [(1, 2), (1, 4)],
            "the gap at 3 shows the drop"
        );
    }

    #[test]
    fn conflate_replaces_in_place_and_keeps_only_the_newest() {
        let mut q = SubscriberQueue::new(8);
        q.push(item(1, 1), SlowPolicy::Conflate);
        q.push(item(2, 1), SlowPolicy::Disconnect);
        assert_eq!(q.push(item(1, 2), SlowPolicy::Conflate), Pushed::Conflated);
        assert_eq!(q.push(item(1, 3), SlowPolicy::Conflate), Pushed::Conflated);
        q.push(item(3, 1), SlowPolicy::Conflate);
        assert_eq!(q.len(), 3);
        assert_eq!(q.queued_bytes(), "t1s3".len() + "t2s1".len() + "t3s1".len());
        assert_eq!(seqs(&mut q), [(1, 3), (2, 1), (3, 1)]);
    }

    #[test]
    fn conflate_works_when_full_and_skips_with_nothing_to_replace() {
        let mut q = SubscriberQueue::new(2);
        q.push(item(1, 1), SlowPolicy::Conflate);
        q.push(item(2, 1), SlowPolicy::Disconnect);
        assert_eq!(q.push(item(1, 2), SlowPolicy::Conflate), Pushed::Conflated);
        assert_eq!(q.push(item(3, 1), SlowPolicy::Conflate), Pushed::Dropped);
        assert_eq!(seqs(&mut q), [(1, 2), (2, 1)]);
    }

    #[test]
    fn a_popped_item_is_never_replaced() {
        let mut q = SubscriberQueue::new(4);
        q.push(item(1, 1), SlowPolicy::Conflate);
        assert_eq!(q.pop().map(|d| d.seq), Some(1));
        assert_eq!(q.push(item(1, 2), SlowPolicy::Conflate), Pushed::Queued);
        q.push(item(2, 1), SlowPolicy::Conflate);
        assert_eq!(q.push(item(1, 3), SlowPolicy::Conflate), Pushed::Conflated);
        assert_eq!(seqs(&mut q), [(1, 3), (2, 1)]);
    }

    #[test]
    fn a_policy_change_never_reorders_a_topic() {
        let mut q = SubscriberQueue::new(8);
        q.push(item(1, 1), SlowPolicy::Conflate);
        q.push(item(1, 2), SlowPolicy::Drop);
        assert_eq!(q.push(item(1, 3), SlowPolicy::Conflate), Pushed::Queued);
        assert_eq!(q.push(item(1, 4), SlowPolicy::Conflate), Pushed::Conflated);
        assert_eq!(seqs(&mut q), [(1, 1), (1, 2), (1, 4)]);
    }

    #[test]
    fn drain_fills_one_write_and_always_takes_one() {
        let mut q = SubscriberQueue::new(8);
        for seq in 1..=5 {
            q.push(item(1, seq), SlowPolicy::Disconnect); // 4 bytes each
        }
        let batch: Vec<u64> = q.drain(9).map(|d| d.seq).collect();
        assert_eq!(batch, [1, 2]);
        let batch: Vec<u64> = q.drain(0).map(|d| d.seq).collect();
        assert_eq!(batch, [3], "one even over the budget");
        assert_eq!(q.drain(usize::MAX).next().map(|d| d.seq), Some(4));
        assert_eq!(q.len(), 1, "what the caller did not take stays queued");
        assert_eq!(q.drain(100).count(), 1);
        assert_eq!(q.drain(100).count(), 0);
    }

    #[test]
    fn a_zero_cap_is_taken_as_one() {
        let mut q = SubscriberQueue::new(0);
        assert_eq!(q.cap(), 1);
        assert_eq!(q.push(item(1, 1), SlowPolicy::Disconnect), Pushed::Queued);
        assert_eq!(q.push(item(1, 2), SlowPolicy::Disconnect), Pushed::Overflow);
    }

    fn arb_policy() -> impl Strategy<Value = SlowPolicy> {
        prop_oneof![
            Just(SlowPolicy::Disconnect),
            Just(SlowPolicy::Drop),
            Just(SlowPolicy::Conflate),
        ]
    }

    #[derive(Debug, Clone)]
    enum Step {
        Push(u32, SlowPolicy),
        Drain(usize),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (0u32..4, arb_policy()).prop_map(|(t, p)| Step::Push(t, p)),
            1 => (0usize..20).prop_map(Step::Drain),
        ]
    }

    proptest! {
        #[test]
        fn the_cap_holds_and_each_topic_stays_in_order(
            cap in 1usize..6,
            // One fixed policy per topic, as the configuration gives.
            policies in proptest::collection::vec(arb_policy(), 4),
            steps in proptest::collection::vec(arb_step(), 0..200),
            // Sometimes the policy changes mid-way (a reload).
            mixed in any::<bool>(),
        ) {
            let mut q = SubscriberQueue::new(cap);
            let mut next_seq = [1u64; 4];
            let mut delivered_last = [0u64; 4];
            let mut queued_last = [0u64; 4];
            let mut out = Vec::new();
            for step in steps {
                match step {
                    Step::Push(t, p) => {
                        let policy = if mixed { p } else { policies[t as usize] };
                        let seq = next_seq[t as usize];
                        next_seq[t as usize] += 1;
                        let before = q.len();
                        let r = q.push(item(t, seq), policy);
                        match r {
                            Pushed::Queued => {
                                prop_assert_eq!(q.len(), before + 1);
                                queued_last[t as usize] = seq;
                            }
                            Pushed::Conflated => {
                                prop_assert_eq!(policy, SlowPolicy::Conflate);
                                prop_assert_eq!(q.len(), before);
                                queued_last[t as usize] = seq;
                            }
                            Pushed::Dropped => {
                                prop_assert_ne!(policy, SlowPolicy::Disconnect);
                                prop_assert_eq!(before, cap);
                            }
                            Pushed::Overflow => {
                                prop_assert_eq!(policy, SlowPolicy::Disconnect);
                                prop_assert_eq!(before, cap);
                            }
                        }
                    }
                    Step::Drain(max) => out.extend(q.drain(max)),
                }
                prop_assert!(q.len() <= cap);
                prop_assert!(q.high_water() <= cap);
                let bytes: usize = q.items.iter().map(|d| d.frame.len()).sum();
                prop_assert_eq!(q.queued_bytes(), bytes);
                if !mixed {
                    // Under a fixed conflate policy a topic has at most one queued item.
                    for (t, p) in policies.iter().enumerate() {
                        if *p == SlowPolicy::Conflate {
                            let n = q.items.iter().filter(|d| d.topic.0 == t as u32).count();
                            prop_assert!(n <= 1);
                        }
                    }
                }
            }
            out.extend(q.drain(usize::MAX));
            for d in &out {
                let t = d.topic.0 as usize;
                prop_assert!(d.seq > delivered_last[t], "topic {} out of order", t);
                prop_assert_eq!(d.frame.clone(), item(d.topic.0, d.seq).frame);
                delivered_last[t] = d.seq;
            }
            for t in 0..4 {
                prop_assert_eq!(delivered_last[t], queued_last[t], "the newest queued is delivered");
            }
        }
    }
}
