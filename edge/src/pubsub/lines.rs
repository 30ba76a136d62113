//! What the cores tell each other about pub/sub, and the lines they say it on.
//!
//! Every core has one inbox. A topic's owner core (`hash(topic) % cores`) gets the publishes,
//! subscribes and leaves of that topic; the cores with subscribers get the owner's answers and
//! its batches of publications. One inbox per core, written by every core: what one core sends
//! another arrives in the order it was sent, which is what makes a subscribe's answer (with the
//! topic's last seq) arrive before any publication sequenced after it.
//!
//! The channels are unbounded, and bounded by who may send: a connection has at most
//! [`super::client::MAX_ASKS_IN_FLIGHT`] asks out (it stops reading its socket beyond that), a
//! feed at most as many publishes, and each ask yields at most one answer and one batch entry
//! per core.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use wssedge_proto::pubsub::protocol::Since;
use wssedge_proto::pubsub::Reason;

/// A connection (or a feed) that asked something, by its core and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Asker {
    pub core: usize,
    pub client: u64,
}

/// One publication for the subscribers on a core.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    pub topic: Arc<str>,
    pub seq: u64,
    /// The shared frame body.
    pub frame: Bytes,
    pub published_at: Instant,
    /// The first publication of a new epoch (its frame says which): subscribers take it
    /// whatever seq they had reached in the old one.
    pub restart: bool,
}

/// The owner's answer to one topic of a subscribe.
#[derive(Debug, Clone)]
pub(crate) struct TopicAnswer {
    pub topic: Arc<str>,
    pub epoch: Arc<str>,
    /// The topic's last seq when the owner answered.
    pub last_seq: u64,
    pub recovered: bool,
    /// The missed frames `since+1 ..= last_seq`, oldest first (empty unless `recovered`).
    pub replay: Vec<Bytes>,
}

/// A message between cores.
#[derive(Debug)]
pub(crate) enum CoreMsg {
    /// To the owner: sequence and fan out `data` (a checked JSON value, as its publisher wrote
    /// it). `asker`: who is told the seq (`None`: nobody).
    Publish {
        topic: String,
        data: Bytes,
        asker: Option<Asker>,
        request: u64,
    },
    /// To the owner: `asker`'s core has a subscriber for `topic` now; answer it with the
    /// topic's position and what `since` missed.
    Subscribe {
        topic: String,
        since: Option<Since>,
        asker: Asker,
        request: u64,
    },
    /// To the owner: `core` has no subscriber of `topic` left.
    Leave { topic: Arc<str>, core: usize },
    /// To a subscriber core: publications, in each topic's seq order.
    Batch(Vec<Item>),
    /// To the asker's core.
    Subscribed {
        client: u64,
        request: u64,
        topic: Arc<str>,
        answer: Result<TopicAnswer, Reason>,
    },
    /// To the asker's core: the seq given, or why not.
    Published {
        client: u64,
        request: u64,
        result: Result<u64, Reason>,
    },
    /// From the fleet link, to the owner: a publication the fleet sequenced.
    FleetPublication(crate::fleet::wire::Publication),
    /// From the fleet link, to the owner: the topic as Redis has it (`Err`: not readable).
    FleetSynced {
        topic: Arc<str>,
        result: Result<crate::fleet::wire::Synced, ()>,
    },
    /// From the fleet link, to every core: Redis became reachable, or stopped being.
    FleetState { up: bool },
}

/// Every core's sending end, shared by the cores.
#[derive(Debug, Clone)]
pub(crate) struct Lines {
    inboxes: Arc<Vec<UnboundedSender<CoreMsg>>>,
}

impl Lines {
    /// The lines and each core's inbox, in core order.
    pub fn new(cores: usize) -> (Self, Vec<UnboundedReceiver<CoreMsg>>) {
        let (senders, receivers) = (0..cores.max(1))
            .map(|_| futures_channel::mpsc::unbounded())
            .unzip();
        (
            Self {
                inboxes: Arc::new(senders),
            },
            receivers,
        )
    }

    pub fn cores(&self) -> usize {
        self.inboxes.len()
    }

    /// The core that owns `topic`.
    pub fn owner(&self, topic: &str) -> usize {
        owner_of(topic, self.cores())
    }

    /// Sends to `core`. A core whose inbox is gone has stopped: there is nobody to tell.
    pub fn send(&self, core: usize, msg: CoreMsg) {
        if let Some(line) = self.inboxes.get(core) {
            let _ = line.unbounded_send(msg);
        }
    }
}

/// `hash(topic) % cores`, with a hasher that is the same in every process of a fleet (no
/// random seed): FNV-1a.
pub(crate) fn owner_of(topic: &str, cores: usize) -> usize {
    let mut h = Fnv1a::default();
    topic.hash(&mut h);
    (h.finish() % cores.max(1) as u64) as usize
}

struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_spread_over_the_cores_and_stay_put() {
        let mut seen = [0usize; 4];
        for i in 0..1000 {
            let t = format!("trades.SYM{i}");
            let o = owner_of(&t, 4);
            assert_eq!(o, owner_of(&t, 4));
            seen[o] += 1;
        }
        assert!(seen.iter().all(|&n| n > 150), "{seen:?}");
        assert_eq!(owner_of("anything", 1), 0);
    }

    #[test]
    fn a_line_keeps_the_order_it_was_written_in() {
        let (lines, mut inboxes) = Lines::new(2);
        for seq in 1..=3 {
            lines.send(
                1,
                CoreMsg::Published {
                    client: 7,
                    request: seq,
                    result: Ok(seq),
                },
            );
        }
        let got: Vec<u64> = std::iter::from_fn(|| inboxes[1].try_recv().ok())
            .map(|m| match m {
                CoreMsg::Published { request, .. } => request,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(got, [1, 2, 3]);
        assert!(inboxes[0].try_recv().is_err(), "nothing for core 0");
    }
}
