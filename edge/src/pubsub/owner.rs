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
use wssedge_proto::pubsub::{Appended, Reason, TopicLog};

use super::lines::{Asker, Item, TopicAnswer};
use crate::fleet::wire::{Publication, Synced};

struct OwnedTopic {
    name: Arc<str>,
    log: TopicLog,
    epoch: Arc<str>,
    /// Cores with subscribers of the topic (as last told: a leave clears, a subscribe sets).
    cores: Vec<bool>,
    /// In a fleet: the log holds the fleet's epoch, seq and history as Redis has them (read
    /// back since the link was last made, and followed since without a gap). Subscribes to a
    /// topic that is not wait for a read.
    synced: bool,
    /// A read of the topic is out.
    sync_asked: bool,
    /// Subscribes waiting for that read.
    waiting: Vec<Waiting>,
    /// The epoch changed under subscribers: the next publication says so ([`Item::restart`]).
    restart_pending: bool,
    /// A subscribe was answered in the current epoch (someone may hold a position in it).
    answered: bool,
}

impl OwnedTopic {
    fn idle(&self) -> bool {
        self.log.kept() == 0 && !self.cores.iter().any(|&c| c) && self.waiting.is_empty()
    }

    /// The log starts a new epoch: what subscribers held belongs to the old one.
    fn new_epoch(&mut self, log: TopicLog, epoch: Arc<str>) {
        self.log = log;
        self.epoch = epoch;
        self.restart_pending |= std::mem::take(&mut self.answered);
    }

    /// The frame of publication `seq`, and whether it starts a new epoch for subscribers.
    fn frame(&mut self, seq: u64, data: &str) -> (bytes::Bytes, bool) {
        if std::mem::take(&mut self.restart_pending) {
            let frame = wssedge_proto::pubsub::protocol::encode_publication_new_epoch(
                &self.name,
                seq,
                &self.epoch,
                data,
            );
            (frame, true)
        } else {
            (encode_publication_json(&self.name, seq, data), false)
        }
    }

    /// Queues publication `seq` for every core with subscribers.
    fn fan_out(
        &self,
        seq: u64,
        frame: &bytes::Bytes,
        restart: bool,
        now: Instant,
        out: &mut Outgoing,
    ) {
        for (core, subscribed) in self.cores.iter().enumerate() {
            if *subscribed {
                out.per_core[core].push(Item {
                    topic: self.name.clone(),
                    seq,
                    frame: frame.clone(),
                    published_at: now,
                    restart,
                });
            }
        }
    }

    fn answer(&mut self, since: Option<&Since>, now: Instant) -> TopicAnswer {
        self.answered = true;
        let recovery = self
            .log
            .recover(since.map(|s| (s.epoch.as_str(), s.seq)), now);
        TopicAnswer {
            topic: self.name.clone(),
            epoch: self.epoch.clone(),
            last_seq: recovery.last_seq,
            recovered: recovery.recovered,
            replay: recovery.replay,
        }
    }
}

/// A subscribe that waits for its topic to be read back from the fleet.
#[derive(Debug)]
pub(crate) struct Waiting {
    pub since: Option<Since>,
    pub asker: Asker,
    pub request: u64,
}

/// A fleet subscribe's outcome.
#[derive(Debug)]
pub(crate) enum FleetSubscribe {
    Answer(TopicAnswer),
    /// Parked until the topic is read back; `ask`: nobody asked for that read yet.
    Wait {
        ask: bool,
    },
}

/// Answers owed to subscribes that waited.
pub(crate) type Owed = Vec<(Waiting, Result<TopicAnswer, Reason>)>;

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
    /// In a fleet: the link's state as last told.
    fleet_up: bool,
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
            fleet_up: false,
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
                synced: false,
                sync_asked: false,
                waiting: Vec::new(),
                restart_pending: false,
                answered: false,
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
        let Some(seq) = t.log.last_seq().checked_add(1) else {
            // A sequence at u64::MAX: a topic would need 5 centuries at 1G/s to get there.
            return Err(Reason::TooManyTopics);
        };
        let (frame, restart) = t.frame(seq, data);
        t.log
            .publish(now, |_| frame.clone())
            .map_err(|_| Reason::TooManyTopics)?;
        t.fan_out(seq, &frame, restart, now, out);
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
        Ok(t.answer(since, now))
    }

    // --- in a fleet: the sequence is Redis', this owner keeps and fans out ---

    /// A subscribe while the fleet's Redis is reachable: answered from the log once the topic
    /// is synced; parked until then. The core counts as subscribed at once (publications that
    /// reach it before the answer are filtered by the answer's seq, as for a local subscribe).
    pub fn subscribe_fleet(
        &mut self,
        topic: &str,
        since: Option<Since>,
        asker: Asker,
        request: u64,
        now: Instant,
    ) -> Result<FleetSubscribe, Reason> {
        let t = self.topic(topic)?;
        if let Some(c) = t.cores.get_mut(asker.core) {
            *c = true;
        }
        if t.synced {
            return Ok(FleetSubscribe::Answer(t.answer(since.as_ref(), now)));
        }
        t.waiting.push(Waiting {
            since,
            asker,
            request,
        });
        let ask = !t.sync_asked;
        t.sync_asked = true;
        Ok(FleetSubscribe::Wait { ask })
    }

    /// A publication the fleet sequenced: kept in this node's log and queued for every core
    /// with subscribers (one frame, encoded here). False when it was not taken (already had,
    /// or no room for another topic).
    pub fn fleet_publication(&mut self, p: &Publication, now: Instant, out: &mut Outgoing) -> bool {
        let (history, ttl) = (self.history, self.ttl);
        let Ok(t) = self.topic(&p.topic) else {
            return false;
        };
        if *t.epoch != *p.epoch {
            // The sequence started again in Redis (or this node served on its own epoch while
            // Redis was away): the log follows from this publication; what came before it is
            // read back on demand.
            let log = TopicLog::continuing(p.epoch.to_string(), p.seq - 1, history, ttl);
            t.new_epoch(log, p.epoch.clone());
            t.synced = false;
        }
        if p.seq <= t.log.last_seq() {
            return false;
        }
        let Ok(data) = std::str::from_utf8(&p.data) else {
            return false;
        };
        let (frame, restart) = t.frame(p.seq, data);
        if t.log.append(p.seq, now, frame.clone()) == Appended::Gap {
            // Missed while the link was down: the history has a hole until read back.
            t.synced = false;
        }
        t.fan_out(p.seq, &frame, restart, now, out);
        true
    }

    /// The topic as Redis has it (or `Err`: the read failed): the log takes it, and the
    /// subscribes that waited are answered.
    pub fn fleet_synced(&mut self, topic: &str, read: Result<&Synced, ()>, now: Instant) -> Owed {
        let (history, ttl) = (self.history, self.ttl);
        let Some(t) = self.topics.get_mut(topic) else {
            return Vec::new();
        };
        t.sync_asked = false;
        let waiting = std::mem::take(&mut t.waiting);
        let Ok(s) = read else {
            return waiting
                .into_iter()
                .map(|w| (w, Err(Reason::FleetUnavailable)))
                .collect();
        };
        if *t.epoch != *s.epoch {
            t.new_epoch(
                TopicLog::new(s.epoch.to_string(), history, ttl),
                s.epoch.clone(),
            );
        }
        let name = t.name.clone();
        let entries = s.entries.iter().filter_map(|e| {
            let data = std::str::from_utf8(&e.data).ok()?;
            let at = now
                .checked_sub(Duration::from_millis(e.age_ms))
                .unwrap_or(now);
            Some((e.seq, at, encode_publication_json(&name, e.seq, data)))
        });
        t.log.adopt(&s.epoch, s.last_seq, entries);
        t.synced = true;
        waiting
            .into_iter()
            .map(|w| {
                let answer = t.answer(w.since.as_ref(), now);
                (w, Ok(answer))
            })
            .collect()
    }

    /// The link to Redis came up or went down: nothing is synced any more (what happened
    /// meanwhile is read back on demand). Down, every topic goes on under a new local epoch
    /// (publications keep flowing here; a client that recovers across the break is told
    /// `recovered:false` rather than given a replay that misses what other nodes published),
    /// and the subscribes waiting for a read are answered `fleet_unavailable` by the link
    /// itself (their read fails).
    pub fn fleet_state(&mut self, up: bool) {
        self.fleet_up = up;
        let (history, ttl) = (self.history, self.ttl);
        for t in self.topics.values_mut() {
            t.synced = false;
            if !up {
                self.generation += 1;
                let epoch: Arc<str> = format!("{}{:x}", self.epoch_prefix, self.generation).into();
                t.new_epoch(TopicLog::new(epoch.to_string(), history, ttl), epoch);
            }
        }
    }

    /// Whether this owner last heard that the fleet's Redis is reachable (publications and
    /// subscribes then go through it).
    pub fn fleet_up(&self) -> bool {
        self.fleet_up
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

    fn fleet_pub(epoch: &str, seq: u64, data: &str) -> Publication {
        Publication {
            epoch: epoch.into(),
            seq,
            topic: "t".into(),
            data: bytes::Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    fn asker(core: usize, client: u64) -> Asker {
        Asker { core, client }
    }

    fn synced(epoch: &str, last: u64, kept: std::ops::RangeInclusive<u64>) -> Synced {
        Synced {
            epoch: epoch.into(),
            last_seq: last,
            entries: kept
                .map(|seq| crate::fleet::wire::Entry {
                    seq,
                    age_ms: 10,
                    data: bytes::Bytes::from(seq.to_string()),
                })
                .collect(),
        }
    }

    /// In a fleet a subscribe waits for the topic to be read back from Redis once; its answer
    /// carries Redis' epoch and replays from the history read back, merged with what came in
    /// on the channel meanwhile.
    #[test]
    fn a_fleet_subscribe_waits_for_the_read_back_and_recovers_from_it() {
        let mut o = owner();
        let now = Instant::now();
        // History 3: 4, 5 and 6 are kept.
        let since = Since {
            epoch: "R".into(),
            seq: 3,
        };
        let first = o
            .subscribe_fleet("t", Some(since), asker(1, 7), 1, now)
            .unwrap();
        assert!(matches!(first, FleetSubscribe::Wait { ask: true }));
        let second = o.subscribe_fleet("t", None, asker(0, 8), 2, now).unwrap();
        assert!(
            matches!(second, FleetSubscribe::Wait { ask: false }),
            "one read per topic"
        );
        // Publication 6 arrives on the channel before the read (which saw up to 5).
        let mut out = Outgoing::new(2);
        assert!(o.fleet_publication(&fleet_pub("R", 6, "6"), now, &mut out));
        assert_eq!(
            frames(&out.per_core[1]),
            ["{\"topic\":\"t\",\"seq\":6,\"data\":6}"]
        );
        let owed = o.fleet_synced("t", Ok(&synced("R", 5, 1..=5)), now);
        assert_eq!(owed.len(), 2);
        let (w, a) = &owed[0];
        let a = a.as_ref().unwrap();
        assert_eq!((w.asker, w.request), (asker(1, 7), 1));
        assert_eq!((&*a.epoch, a.last_seq, a.recovered), ("R", 6, true));
        assert_eq!(
            a.replay
                .iter()
                .map(|f| String::from_utf8(f.to_vec()).unwrap())
                .collect::<Vec<_>>(),
            (4..=6)
                .map(|s| format!("{{\"topic\":\"t\",\"seq\":{s},\"data\":{s}}}"))
                .collect::<Vec<_>>()
        );
        let (_, b) = &owed[1];
        assert!(
            !b.as_ref().unwrap().recovered,
            "no since: nothing to recover"
        );
        // Synced now: the next subscribe is answered at once.
        let third = o.subscribe_fleet("t", None, asker(0, 9), 3, now).unwrap();
        assert!(matches!(third, FleetSubscribe::Answer(a) if a.last_seq == 6));
    }

    /// Redis out of reach: the topic goes on under a local epoch, and the first publication of
    /// it tells the subscribers that were answered in the old one (and only that one does).
    #[test]
    fn a_lost_link_starts_a_local_epoch_that_the_next_publication_announces() {
        let mut o = owner();
        let now = Instant::now();
        o.fleet_state(true);
        o.subscribe_fleet("t", None, asker(0, 1), 1, now).unwrap();
        o.fleet_synced("t", Ok(&synced("R", 2, 1..=2)), now);
        o.fleet_state(false);
        assert!(!o.fleet_up());
        let mut out = Outgoing::new(2);
        assert_eq!(o.publish("t", "1", now, &mut out), Ok(1));
        assert_eq!(o.publish("t", "2", now, &mut out), Ok(2));
        let items = &out.per_core[0];
        assert!(items[0].restart && !items[1].restart);
        let first = frames(items)[0].clone();
        assert!(
            first.contains("\"epoch\":\"e.") && first.contains("\"seq\":1"),
            "{first}"
        );
        // Recovery across the break is refused: another epoch.
        let since = Since {
            epoch: "R".into(),
            seq: 2,
        };
        assert!(!o.subscribe("t", Some(&since), 0, now).unwrap().recovered);
        // A topic nobody was answered in gets no announcement.
        o.publish("quiet", "1", now, &mut out).unwrap();
        o.fleet_state(true);
        o.fleet_state(false);
        let mut out = Outgoing::new(2);
        o.subscribe("quiet", None, 1, now).unwrap();
        o.publish("quiet", "2", now, &mut out).unwrap();
        assert!(!out.per_core[1][0].restart);
    }

    #[test]
    fn fleet_publications_are_kept_once_and_a_gap_or_a_new_link_unsyncs() {
        let mut o = owner();
        let now = Instant::now();
        o.subscribe_fleet("t", None, asker(0, 1), 1, now).unwrap();
        o.fleet_synced("t", Ok(&synced("R", 2, 1..=2)), now);
        let mut out = Outgoing::new(2);
        assert!(o.fleet_publication(&fleet_pub("R", 3, "3"), now, &mut out));
        assert!(
            !o.fleet_publication(&fleet_pub("R", 3, "3"), now, &mut out),
            "a duplicate"
        );
        assert_eq!(out.per_core[0].len(), 1);
        // A gap (4 missed): kept, but the topic must be read back before the next answer.
        assert!(o.fleet_publication(&fleet_pub("R", 5, "5"), now, &mut out));
        let after_gap = o.subscribe_fleet("t", None, asker(1, 2), 2, now).unwrap();
        assert!(matches!(after_gap, FleetSubscribe::Wait { ask: true }));
        let owed = o.fleet_synced("t", Ok(&synced("R", 5, 1..=5)), now);
        assert_eq!(owed[0].1.as_ref().unwrap().last_seq, 5);
        // The link broke and came back: read back again.
        o.fleet_state(true);
        assert!(matches!(
            o.subscribe_fleet("t", None, asker(1, 3), 3, now).unwrap(),
            FleetSubscribe::Wait { ask: true }
        ));
        // A failed read answers the waiting subscribes fleet_unavailable.
        let owed = o.fleet_synced("t", Err(()), now);
        assert_eq!(owed[0].1.as_ref().err(), Some(&Reason::FleetUnavailable));
        // Another epoch (Redis lost the topic): the log follows it from there.
        assert!(o.fleet_publication(&fleet_pub("R2", 1, "1"), now, &mut out));
    }

    #[test]
    fn epoch_prefixes_differ_between_starts() {
        assert_ne!(random_epoch_prefix(), random_epoch_prefix());
    }
}
