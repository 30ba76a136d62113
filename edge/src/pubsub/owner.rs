//! The topics one core owns: each topic's sequence, epoch and history, and which cores have
//! subscribers of it. No I/O: the core's pub/sub task feeds it asks and sends what it returns.
//!
//! A topic comes to life at its first publish or subscribe and is forgotten once no core
//! subscribes to it and its history is empty (expired or never kept): the next publication
//! starts seq 1 again, under a new epoch, which is what tells a reconnecting client that its
//! position does not belong to this sequence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wssedge_proto::pubsub::protocol::{encode_publication_json, Since};
use wssedge_proto::pubsub::{Reason, TopicLog};

use super::lines::{Item, TopicAnswer};

struct OwnedTopic {
    name: Arc<str>,
    log: TopicLog,
    epoch: Arc<str>,
    /// Cores with subscribers of the topic (as last told: a leave clears, a subscribe sets).
    cores: Vec<bool>,
}

impl OwnedTopic {
    fn idle(&self) -> bool {
        self.log.kept() == 0 && !self.cores.iter().any(|&c| c)
    }
}

/// The publications one owner pass sequenced, per destination core (one message each).
#[derive(Debug, Default)]
pub(crate) struct Outgoing {
    pub per_core: Vec<Vec<Item>>,
}

impl Outgoing {
    pub fn new(cores: usize) -> Self {
        Self {
            per_core: (0..cores).map(|_| Vec::new()).collect(),
        }
    }
}

/// This core's share of the topics.
pub(crate) struct Owner {
    cores: usize,
    history: usize,
    ttl: Duration,
    /// Topics this core may own at once.
    max_topics: usize,
    /// This process's epoch prefix (random per start) and the topics made since.
    epoch_prefix: String,
    generation: u64,
    topics: HashMap<Arc<str>, OwnedTopic>,
}

impl Owner {
    pub fn new(
        cores: usize,
        history: usize,
        ttl: Duration,
        max_topics: usize,
        epoch_prefix: String,
    ) -> Self {
        Self {
            cores,
            history,
            ttl,
            max_topics,
            epoch_prefix,
            generation: 0,
            topics: HashMap::new(),
        }
    }

    pub fn topics(&self) -> usize {
        self.topics.len()
    }

    fn topic(&mut self, name: &str) -> Result<&mut OwnedTopic, Reason> {
        if !self.topics.contains_key(name) {
            if self.topics.len() >= self.max_topics {
                return Err(Reason::TooManyTopics);
            }
            self.generation += 1;
            let epoch: Arc<str> = format!("{}{:x}", self.epoch_prefix, self.generation).into();
            let name: Arc<str> = name.into();
            let topic = OwnedTopic {
                name: name.clone(),
                log: TopicLog::new(epoch.to_string(), self.history, self.ttl),
                epoch,
                cores: vec![false; self.cores],
            };
            self.topics.insert(name, topic);
        }
        // Inserted above when missing.
        self.topics.get_mut(name).ok_or(Reason::BadRequest)
    }

    /// Sequences a publication, keeps it, and queues it for every core with subscribers.
    /// `data`: a complete JSON value (checked by whoever read it).
    pub fn publish(
        &mut self,
        topic: &str,
        data: &str,
        now: Instant,
        out: &mut Outgoing,
    ) -> Result<u64, Reason> {
        let t = self.topic(topic)?;
        let name = t.name.clone();
        let (seq, frame) = t
            .log
            .publish(now, |seq| encode_publication_json(&name, seq, data))
            // A sequence at u64::MAX: a topic would need 5 centuries at 1G/s to get there.
            .map_err(|_| Reason::TooManyTopics)?;
        for (core, subscribed) in t.cores.iter().enumerate() {
            if *subscribed {
                out.per_core[core].push(Item {
                    topic: name.clone(),
                    seq,
                    frame: frame.clone(),
                    published_at: now,
                });
            }
        }
        Ok(seq)
    }

    /// `core` has a subscriber of `topic` from now on: its position and what `since` missed.
    pub fn subscribe(
        &mut self,
        topic: &str,
        since: Option<&Since>,
        core: usize,
        now: Instant,
    ) -> Result<TopicAnswer, Reason> {
        let t = self.topic(topic)?;
        if let Some(c) = t.cores.get_mut(core) {
            *c = true;
        }
        let recovery = t.log.recover(since.map(|s| (s.epoch.as_str(), s.seq)), now);
        Ok(TopicAnswer {
            topic: t.name.clone(),
            epoch: t.epoch.clone(),
            last_seq: recovery.last_seq,
            recovered: recovery.recovered,
            replay: recovery.replay,
        })
    }

    /// `core` has no subscriber of `topic` left.
    pub fn leave(&mut self, topic: &str, core: usize) {
        if let Some(t) = self.topics.get_mut(topic) {
            if let Some(c) = t.cores.get_mut(core) {
                *c = false;
            }
            if t.idle() {
                self.topics.remove(topic);
            }
        }
    }

    /// Expires history and forgets idle topics; how many were forgotten.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let before = self.topics.len();
        self.topics.retain(|_, t| {
            t.log.expire(now);
            !t.idle()
        });
        before - self.topics.len()
    }
}

/// A fresh epoch prefix: 64 random bits in hex and a dot (a topic's epoch adds its generation).
pub(crate) fn random_epoch_prefix() -> String {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // No OS randomness: the start time still differs between restarts.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = nanos.to_be_bytes();
    }
    format!("{:016x}.", u64::from_be_bytes(bytes))
}

/// Only for tests and the bench: the frames a batch carries, as text.
#[cfg(test)]
pub(crate) fn frames(items: &[Item]) -> Vec<String> {
    items
        .iter()
        .map(|i| String::from_utf8(i.frame.to_vec()).unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> Owner {
        Owner::new(2, 3, Duration::from_secs(60), 4, "e.".into())
    }

    #[test]
    fn publications_are_sequenced_once_and_reach_only_subscribed_cores() {
        let mut o = owner();
        let now = Instant::now();
        let mut out = Outgoing::new(2);
        assert_eq!(o.publish("t", "1", now, &mut out), Ok(1));
        assert!(out.per_core.iter().all(Vec::is_empty), "nobody subscribed");
        let a = o.subscribe("t", None, 1, now).unwrap();
        assert_eq!((a.last_seq, a.recovered, &*a.epoch), (1, false, "e.1"));
        assert_eq!(o.publish("t", "{\"p\":2}", now, &mut out), Ok(2));
        assert!(out.per_core[0].is_empty());
        assert_eq!(
            frames(&out.per_core[1]),
            ["{\"topic\":\"t\",\"seq\":2,\"data\":{\"p\":2}}"]
        );
        // The same frame for every core: one allocation.
        o.subscribe("t", None, 0, now).unwrap();
        let mut out = Outgoing::new(2);
        o.publish("t", "3", now, &mut out).unwrap();
        assert_eq!(
            out.per_core[0][0].frame.as_ptr(),
            out.per_core[1][0].frame.as_ptr()
        );
    }

    #[test]
    fn a_subscribe_with_since_gets_the_gap_from_the_history() {
        let mut o = owner();
        let now = Instant::now();
        let mut out = Outgoing::new(2);
        for i in 1..=5 {
            o.publish("t", &i.to_string(), now, &mut out).unwrap();
        }
        let since = Since {
            epoch: "e.1".into(),
            seq: 3,
        };
        let a = o.subscribe("t", Some(&since), 0, now).unwrap();
        assert!(a.recovered);
        assert_eq!(a.replay.len(), 2);
        // Beyond the history (3 kept: 3, 4, 5; seq 1 missed 2..5).
        let old = Since {
            epoch: "e.1".into(),
            seq: 1,
        };
        let a = o.subscribe("t", Some(&old), 0, now).unwrap();
        assert!(!a.recovered && a.replay.is_empty());
        // Another epoch.
        let other = Since {
            epoch: "x".into(),
            seq: 5,
        };
        assert!(!o.subscribe("t", Some(&other), 0, now).unwrap().recovered);
    }

    #[test]
    fn an_idle_topic_is_forgotten_and_comes_back_under_a_new_epoch() {
        let mut o = Owner::new(1, 0, Duration::from_secs(60), 4, "e.".into());
        let now = Instant::now();
        let a = o.subscribe("t", None, 0, now).unwrap();
        o.leave("t", 0);
        assert_eq!(o.topics(), 0);
        let b = o.subscribe("t", None, 0, now).unwrap();
        assert_ne!(a.epoch, b.epoch);
    }

    #[test]
    fn history_keeps_a_topic_until_it_expires() {
        let mut o = Owner::new(1, 10, Duration::from_secs(1), 4, "e.".into());
        let now = Instant::now();
        o.publish("t", "1", now, &mut Outgoing::new(1)).unwrap();
        assert_eq!(o.sweep(now), 0);
        assert_eq!(o.sweep(now + Duration::from_secs(2)), 1);
    }

    #[test]
    fn the_number_of_topics_is_capped() {
        let mut o = owner();
        let now = Instant::now();
        for i in 0..4 {
            o.publish(&format!("t{i}"), "1", now, &mut Outgoing::new(2))
                .unwrap();
        }
        assert_eq!(
            o.publish("t9", "1", now, &mut Outgoing::new(2)),
            Err(Reason::TooManyTopics)
        );
        assert_eq!(
            o.subscribe("t9", None, 0, now).err(),
            Some(Reason::TooManyTopics)
        );
        // Known topics go on.
        assert_eq!(o.publish("t0", "2", now, &mut Outgoing::new(2)), Ok(2));
    }

    #[test]
    fn epoch_prefixes_differ_between_starts() {
        assert_ne!(random_epoch_prefix(), random_epoch_prefix());
    }
}
