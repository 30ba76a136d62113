//! One pub/sub connection as its core sees it: its subscriptions, its bounded queue of shared
//! publications, the owners' answers waiting for it, and the wake-up of its task.
//!
//! Shared (`Rc`) between the connection's task and the core's pub/sub task, on one thread; no
//! borrow is held across an await.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use wssedge_proto::pubsub::{Delivery, Pushed, Reason, SlowPolicy, SubscriberQueue, TopicId};

use super::lines::{Item, TopicAnswer};

/// Asks (publishes, subscribes per topic) one connection may have out at once; beyond it the
/// connection's socket is not read until answers come back.
pub(crate) const MAX_ASKS_IN_FLIGHT: u32 = 64;

/// Where a subscription is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubState {
    /// Asked; the owner's answer has not arrived. Publications are not taken yet.
    Pending,
    /// Answered at `start` (the topic's last seq then): publications after it are taken;
    /// `highest` is the newest taken (a publication is never taken twice).
    Active { start: u64, highest: u64 },
}

#[derive(Debug, Clone)]
pub(crate) struct Subscription {
    pub state: SubState,
}

/// An owner's answer, for the connection to pick up.
#[derive(Debug)]
pub(crate) enum Answer {
    Subscribed {
        request: u64,
        topic: Arc<str>,
        answer: Result<TopicAnswer, Reason>,
    },
    Published {
        request: u64,
        result: Result<u64, Reason>,
    },
}

/// What became of one publication offered to this client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offered {
    /// Not subscribed (yet, or any more), or already taken.
    Ignored,
    Pushed(Pushed),
}

/// Hashes a [`TopicId`] with one multiplication. A client's subscriptions are looked up twice
/// per delivery (offered, then taken); SipHash's resistance to chosen keys buys nothing for
/// numbers the core hands out itself, and cost more than the rest of the lookup.
#[derive(Default)]
struct TopicIdHasher(u64);

impl Hasher for TopicIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: spreads consecutive ids over the high bits the table probes with.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type TopicMap<V> = HashMap<TopicId, V, BuildHasherDefault<TopicIdHasher>>;

pub(crate) struct Client {
    /// Its number on the core (owners answer to it).
    pub key: u64,
    queue: RefCell<SubscriberQueue>,
    subs: RefCell<TopicMap<Subscription>>,
    answers: RefCell<VecDeque<Answer>>,
    asks: Cell<u32>,
    /// A publication found the queue full under `disconnect`.
    overflowed: Cell<bool>,
    ready: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl Client {
    pub fn new(key: u64, queue_messages: usize) -> Self {
        Self {
            key,
            queue: RefCell::new(SubscriberQueue::new(queue_messages)),
            subs: RefCell::new(TopicMap::default()),
            answers: RefCell::new(VecDeque::new()),
            asks: Cell::new(0),
            overflowed: Cell::new(false),
            ready: Cell::new(false),
            waker: Cell::new(None),
        }
    }

    // --- subscriptions ---

    pub fn subscription_count(&self) -> usize {
        self.subs.borrow().len()
    }

    pub fn subscription(&self, id: TopicId) -> Option<Subscription> {
        self.subs.borrow().get(&id).cloned()
    }

    /// Adds a pending subscription; false if the topic is already subscribed (or pending).
    pub fn add_pending(&self, id: TopicId) -> bool {
        let mut subs = self.subs.borrow_mut();
        if subs.contains_key(&id) {
            return false;
        }
        subs.insert(
            id,
            Subscription {
                state: SubState::Pending,
            },
        );
        true
    }

    /// The owner answered at `last_seq`: a pending subscription takes what follows it.
    pub fn activate(&self, id: TopicId, last_seq: u64) {
        if let Some(sub) = self.subs.borrow_mut().get_mut(&id) {
            if sub.state == SubState::Pending {
                sub.state = SubState::Active {
                    start: last_seq,
                    highest: last_seq,
                };
            }
        }
    }

    pub fn remove(&self, id: TopicId) -> Option<Subscription> {
        self.subs.borrow_mut().remove(&id)
    }

    pub fn topic_ids(&self) -> Vec<TopicId> {
        self.subs.borrow().keys().copied().collect()
    }

    // --- publications ---

    /// Offers a publication under its topic's policy.
    pub fn offer(&self, id: TopicId, policy: SlowPolicy, item: &Item) -> Offered {
        {
            let mut subs = self.subs.borrow_mut();
            let Some(sub) = subs.get_mut(&id) else {
                return Offered::Ignored;
            };
            match &mut sub.state {
                // A new epoch: the seqs start again; everything of it is taken from here.
                SubState::Active { start, highest } if item.restart => {
                    *start = 0;
                    *highest = item.seq;
                }
                SubState::Active { highest, .. } if item.seq > *highest => *highest = item.seq,
                _ => return Offered::Ignored,
            }
        }
        let pushed = self.queue.borrow_mut().push(
            Delivery {
                topic: id,
                seq: item.seq,
                frame: item.frame.clone(),
                published_at: item.published_at,
            },
            policy,
        );
        if pushed == Pushed::Overflow {
            self.overflowed.set(true);
        }
        Offered::Pushed(pushed)
    }

    /// The oldest queued publications worth `max_bytes` that the client still subscribes to
    /// (a publication queued before an unsubscribe, or before a resubscribe's start, is skipped).
    pub fn take(&self, max_bytes: usize, out: &mut Vec<Delivery>) {
        let subs = self.subs.borrow();
        let mut queue = self.queue.borrow_mut();
        for d in queue.drain(max_bytes) {
            if let Some(Subscription {
                state: SubState::Active { start, .. },
                ..
            }) = subs.get(&d.topic)
            {
                if d.seq > *start {
                    out.push(d);
                }
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.borrow().len()
    }

    pub fn high_water(&self) -> usize {
        self.queue.borrow().high_water()
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.get()
    }

    // --- asks and answers ---

    pub fn asks_in_flight(&self) -> u32 {
        self.asks.get()
    }

    pub fn asked(&self) {
        self.asks.set(self.asks.get() + 1);
    }

    /// An owner's answer arrived.
    pub fn post(&self, answer: Answer) {
        self.asks.set(self.asks.get().saturating_sub(1));
        self.answers.borrow_mut().push_back(answer);
        self.wake();
    }

    pub fn take_answer(&self) -> Option<Answer> {
        self.answers.borrow_mut().pop_front()
    }

    // --- the connection's wake-up ---

    /// Something arrived: the connection's task runs its next pass (once per batch, however
    /// many publications it brought).
    pub fn wake(&self) {
        if !self.ready.replace(true) {
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }

    /// Resolves once something arrived since the last time it resolved.
    pub fn ready(&self) -> Ready<'_> {
        Ready { client: self }
    }
}

/// See [`Client::ready`].
pub(crate) struct Ready<'a> {
    client: &'a Client,
}

impl Future for Ready<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.client.ready.replace(false) {
            return Poll::Ready(());
        }
        self.client.waker.set(Some(cx.waker().clone()));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::*;

    fn item(seq: u64) -> Item {
        Item {
            topic: "t".into(),
            seq,
            frame: Bytes::from(format!("f{seq}")),
            published_at: Instant::now(),
            restart: false,
        }
    }

    fn taken(c: &Client) -> Vec<u64> {
        let mut out = Vec::new();
        c.take(usize::MAX, &mut out);
        out.iter().map(|d| d.seq).collect()
    }

    #[test]
    fn a_pending_subscription_takes_nothing_and_an_active_one_only_what_follows() {
        let c = Client::new(1, 8);
        let id = TopicId(1);
        assert!(c.add_pending(id));
        assert!(!c.add_pending(id));
        assert_eq!(
            c.offer(id, SlowPolicy::Disconnect, &item(5)),
            Offered::Ignored
        );
        c.activate(id, 5);
        assert_eq!(
            c.offer(id, SlowPolicy::Disconnect, &item(5)),
            Offered::Ignored
        );
        for seq in [6, 7, 7, 6, 8] {
            c.offer(id, SlowPolicy::Disconnect, &item(seq));
        }
        assert_eq!(taken(&c), [6, 7, 8], "no duplicate, no step back");
    }

    /// A new epoch's first publication is taken whatever seq the old epoch had reached, and
    /// the new seqs follow it; what was queued from the old epoch still goes out first.
    #[test]
    fn a_new_epoch_starts_the_seqs_again() {
        let c = Client::new(1, 8);
        let id = TopicId(1);
        c.add_pending(id);
        c.activate(id, 40);
        c.offer(id, SlowPolicy::Disconnect, &item(41));
        let restart = Item {
            restart: true,
            ..item(1)
        };
        assert!(matches!(
            c.offer(id, SlowPolicy::Disconnect, &restart),
            Offered::Pushed(_)
        ));
        c.offer(id, SlowPolicy::Disconnect, &item(1));
        c.offer(id, SlowPolicy::Disconnect, &item(2));
        assert_eq!(taken(&c), [41, 1, 2]);
    }

    #[test]
    fn what_was_queued_before_an_unsubscribe_is_not_delivered() {
        let c = Client::new(1, 8);
        let id = TopicId(1);
        c.add_pending(id);
        c.activate(id, 0);
        c.offer(id, SlowPolicy::Drop, &item(1));
        c.remove(id);
        assert_eq!(taken(&c), Vec::<u64>::new());
        // Resubscribed at 3: the old queued 2 is skipped.
        c.offer(id, SlowPolicy::Drop, &item(2));
        c.add_pending(id);
        c.activate(id, 3);
        c.offer(id, SlowPolicy::Drop, &item(4));
        assert_eq!(taken(&c), [4]);
    }

    #[test]
    fn a_full_queue_under_disconnect_marks_the_client() {
        let c = Client::new(1, 2);
        let id = TopicId(1);
        c.add_pending(id);
        c.activate(id, 0);
        for seq in 1..=2 {
            c.offer(id, SlowPolicy::Disconnect, &item(seq));
        }
        assert!(!c.overflowed());
        assert_eq!(
            c.offer(id, SlowPolicy::Disconnect, &item(3)),
            Offered::Pushed(Pushed::Overflow)
        );
        assert!(c.overflowed());
        assert_eq!(c.queued(), 2);
    }

    #[test]
    fn answers_are_counted_against_the_asks() {
        let c = Client::new(1, 2);
        c.asked();
        c.asked();
        assert_eq!(c.asks_in_flight(), 2);
        c.post(Answer::Published {
            request: 1,
            result: Ok(1),
        });
        assert_eq!(c.asks_in_flight(), 1);
        assert!(matches!(
            c.take_answer(),
            Some(Answer::Published { request: 1, .. })
        ));
        assert!(c.take_answer().is_none());
    }
}
