//! One core's subscribers: topic → its number here, its slow-consumer policy and the
//! connections subscribed to it; and every pub/sub connection by its number (owners answer to
//! numbers, not to tasks).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use wssedge_proto::pubsub::{PubsubConfig, Pushed, SlowPolicy, TopicId};

use super::client::{Client, Offered};
use super::lines::Item;
use super::metrics::{CorePubsubMetrics, DropReason};

struct LocalTopic {
    id: TopicId,
    name: Arc<str>,
    policy: SlowPolicy,
    subscribers: Subscribers,
}

/// A topic's subscribers on this core. Every delivery walks them, so they sit in a `Vec`;
/// leaving is a swap-remove through a position index, O(1): a client churning subscriptions on
/// a topic that 100,000 others hold must not cost a scan of them each time (it did: `retain`).
#[derive(Default)]
struct Subscribers {
    list: Vec<Rc<Client>>,
    /// Client key → its place in `list`.
    at: HashMap<u64, usize>,
}

impl Subscribers {
    fn push(&mut self, client: Rc<Client>) {
        self.at.insert(client.key, self.list.len());
        self.list.push(client);
    }

    fn remove(&mut self, key: u64) {
        let Some(i) = self.at.remove(&key) else {
            return;
        };
        self.list.swap_remove(i);
        if let Some(moved) = self.list.get(i) {
            self.at.insert(moved.key, i);
        }
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn iter(&self) -> std::slice::Iter<'_, Rc<Client>> {
        self.list.iter()
    }
}

/// What joining a topic on this core means for its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Joined {
    pub id: TopicId,
    pub name: Arc<str>,
    /// False when the client already had (or was asking for) the topic.
    pub new_for_client: bool,
}

#[derive(Default)]
pub(crate) struct Registry {
    next_topic: Cell<u32>,
    next_client: Cell<u64>,
    topics: RefCell<HashMap<Arc<str>, LocalTopic>>,
    names: RefCell<HashMap<TopicId, Arc<str>>>,
    clients: RefCell<HashMap<u64, Weak<Client>>>,
}

impl Registry {
    /// A new client, numbered.
    pub fn add_client(&self, queue_messages: usize) -> Rc<Client> {
        let key = self.next_client.get().wrapping_add(1);
        self.next_client.set(key);
        let client = Rc::new(Client::new(key, queue_messages));
        self.clients
            .borrow_mut()
            .insert(key, Rc::downgrade(&client));
        client
    }

    pub fn client(&self, key: u64) -> Option<Rc<Client>> {
        self.clients.borrow().get(&key).and_then(Weak::upgrade)
    }

    pub fn topic_id(&self, name: &str) -> Option<TopicId> {
        self.topics.borrow().get(name).map(|t| t.id)
    }

    /// `client` subscribes to `name` (pending until the owner answers).
    pub fn join(&self, client: &Rc<Client>, name: &str, cfg: &PubsubConfig) -> Joined {
        let mut topics = self.topics.borrow_mut();
        let topic = match topics.get_mut(name) {
            Some(t) => t,
            None => {
                let policy = cfg.policy_for(name);
                let id = TopicId(self.next_topic.get());
                self.next_topic.set(id.0.wrapping_add(1));
                let name: Arc<str> = name.into();
                self.names.borrow_mut().insert(id, name.clone());
                topics.entry(name.clone()).or_insert(LocalTopic {
                    id,
                    name,
                    policy,
                    subscribers: Subscribers::default(),
                })
            }
        };
        let new_for_client = client.add_pending(topic.id);
        if new_for_client {
            topic.subscribers.push(client.clone());
        }
        Joined {
            id: topic.id,
            name: topic.name.clone(),
            new_for_client,
        }
    }

    /// `client` leaves topic `id`; the topic's name when it was the core's last subscriber
    /// (the owner is told).
    pub fn leave(&self, client: &Client, id: TopicId) -> Option<Arc<str>> {
        client.remove(id)?;
        let name = self.names.borrow().get(&id).cloned()?;
        let mut topics = self.topics.borrow_mut();
        let topic = topics.get_mut(&name)?;
        topic.subscribers.remove(client.key);
        if !topic.subscribers.is_empty() {
            return None;
        }
        topics.remove(&name);
        self.names.borrow_mut().remove(&id);
        Some(name)
    }

    /// The client is gone: every topic it held; those no subscriber on this core holds any
    /// more are returned (their owners are told).
    pub fn remove_client(&self, client: &Client) -> Vec<Arc<str>> {
        self.clients.borrow_mut().remove(&client.key);
        client
            .topic_ids()
            .into_iter()
            .filter_map(|id| self.leave(client, id))
            .collect()
    }

    /// A batch from an owner: each publication to each of its topic's subscribers here, each
    /// woken once.
    pub fn deliver(&self, items: &[Item], metrics: &CorePubsubMetrics) {
        let topics = self.topics.borrow();
        for item in items {
            let Some(topic) = topics.get(&item.topic) else {
                continue;
            };
            for client in topic.subscribers.iter() {
                match client.offer(topic.id, topic.policy, item) {
                    Offered::Ignored => continue,
                    Offered::Pushed(Pushed::Queued) => {
                        metrics.note_high_water(client.high_water());
                    }
                    Offered::Pushed(Pushed::Conflated) => metrics.conflated.inc(),
                    Offered::Pushed(Pushed::Dropped) => metrics.dropped(DropReason::QueueFull, 1),
                    Offered::Pushed(Pushed::Overflow) => {
                        metrics.dropped(DropReason::SlowConsumer, 1)
                    }
                }
                // A no-op once the client is marked: one wake-up per batch, not per item.
                client.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use bytes::Bytes;

    use super::*;

    fn item(topic: &str, seq: u64) -> Item {
        Item {
            topic: topic.into(),
            seq,
            frame: Bytes::from(format!("{topic}{seq}")),
            published_at: Instant::now(),
            restart: false,
        }
    }

    #[test]
    fn a_batch_reaches_the_active_subscribers_of_its_topics() {
        let r = Registry::default();
        let cfg = PubsubConfig::default();
        let m = CorePubsubMetrics::default();
        let (a, b) = (r.add_client(8), r.add_client(8));
        let ja = r.join(&a, "t", &cfg);
        assert!(ja.new_for_client);
        let jb = r.join(&b, "t", &cfg);
        assert_eq!(ja.id, jb.id);
        assert!(!r.join(&a, "t", &cfg).new_for_client);
        a.activate(ja.id, 0);
        r.deliver(&[item("t", 1), item("u", 1)], &m);
        assert_eq!((a.queued(), b.queued()), (1, 0), "b is still pending");
        assert_eq!(r.client(a.key).unwrap().key, a.key);
    }

    #[test]
    fn the_last_subscriber_to_leave_tells_the_owner() {
        let r = Registry::default();
        let cfg = PubsubConfig::default();
        let (a, b) = (r.add_client(8), r.add_client(8));
        let id = r.join(&a, "t", &cfg).id;
        r.join(&b, "t", &cfg);
        assert_eq!(r.leave(&a, id), None);
        assert_eq!(r.leave(&a, id), None, "not subscribed twice");
        assert_eq!(r.remove_client(&b).len(), 1);
        assert_eq!(r.topic_id("t"), None);
        assert!(
            r.client(b.key).is_none(),
            "owners' answers for b find nobody"
        );
        let c = r.add_client(8);
        drop(c);
        assert!(r.client(3).is_none(), "a dropped client is not upgraded");
    }

    /// Leaving from the middle of a topic's subscribers (a swap-remove) keeps every other
    /// subscriber reachable, and each one once, through later leaves too.
    #[test]
    fn leaving_in_any_order_keeps_the_others_subscribed() {
        let r = Registry::default();
        let cfg = PubsubConfig::default();
        let m = CorePubsubMetrics::default();
        let clients: Vec<_> = (0..6).map(|_| r.add_client(64)).collect();
        let id = clients
            .iter()
            .map(|c| r.join(c, "t", &cfg).id)
            .last()
            .unwrap();
        clients.iter().for_each(|c| c.activate(id, 0));
        for (seq, leaving) in [(1, 2), (2, 0), (3, 5)] {
            assert_eq!(r.leave(&clients[leaving], id), None);
            r.deliver(&[item("t", seq)], &m);
        }
        let queued: Vec<usize> = clients.iter().map(|c| c.queued()).collect();
        assert_eq!(
            queued,
            [1, 3, 0, 3, 3, 2],
            "one delivery per publication while subscribed"
        );
        for c in [1, 3] {
            assert_eq!(r.leave(&clients[c], id), None);
        }
        assert_eq!(
            r.leave(&clients[4], id).as_deref(),
            Some("t"),
            "the last one out"
        );
    }
}
