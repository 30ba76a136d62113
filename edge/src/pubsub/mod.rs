//! Market-data fan-out across the cores (the protocol, topic names, history and the
//! subscriber queue are sans-IO in `wssedge_proto::pubsub`).
//!
//! - A topic is owned by one core ([`lines::owner_of`]): it sequences the topic's
//!   publications, encodes each once into one shared frame, keeps the history, and knows which
//!   cores have subscribers ([`owner`]).
//! - Each core keeps its own subscribers ([`registry`]): a batch from an owner is one message
//!   per core per owner pass, and each subscriber is woken once per batch.
//! - A connection ([`session`]) asks the owners (subscribe, publish) over the cores' lines
//!   ([`lines`]) and drains its bounded queue ([`client`]) into its WebSocket session once per
//!   loop pass, as many publications per write as fit.
//! - [`feed`]: the edge's own subscriptions to upstream feeds, published like a client's.
//! - [`metrics`]: the `wssedge_pubsub_*` families.

pub(crate) mod client;
pub(crate) mod feed;
pub(crate) mod lines;
pub(crate) mod metrics;
pub(crate) mod owner;
pub(crate) mod registry;
pub(crate) mod session;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_channel::mpsc::UnboundedReceiver;
use futures_util::StreamExt as _;
use wssedge_proto::pubsub::PubsubConfig;

use self::client::Answer;
use self::lines::{CoreMsg, Lines};
use self::metrics::{CorePubsubMetrics, PubsubMetrics};
use self::owner::{Outgoing, Owner};
use self::registry::Registry;

/// Messages one owner pass handles before it sends its batches and lets the core's
/// connections run.
const MAX_MESSAGES_PER_PASS: usize = 1024;
/// How often an owner expires history and forgets idle topics.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// What every core's pub/sub is built from (all `Send`), made once at start.
#[derive(Debug, Clone)]
pub(crate) struct PubsubShared {
    pub cfg: Arc<PubsubConfig>,
    pub lines: Lines,
    pub metrics: Arc<PubsubMetrics>,
    /// Random per process start: a restarted edge's topics are new epochs.
    pub epoch_prefix: String,
    /// In a fleet: Redis sequences the publications and keeps the history.
    pub fleet: Option<crate::fleet::Fleet>,
}

/// One core's part, as handed to its thread.
pub(crate) struct CorePubsubStart {
    pub shared: PubsubShared,
    pub inbox: UnboundedReceiver<CoreMsg>,
    /// The feeds this core runs (feed `i` runs on core `i % cores`).
    pub feeds: Vec<feed::FeedStart>,
}

impl PubsubShared {
    /// What each core starts with, in core order. `feed_connect`: how feeds connect (the
    /// upstream room's options, with its TLS for wss://).
    /// `lines`: the cores' lines and inboxes ([`Lines::new`]); `fleet`: this node's link to
    /// its fleet, when it is in one (made with the same lines).
    pub fn starts(
        cfg: &PubsubConfig,
        (lines, inboxes): (Lines, Vec<UnboundedReceiver<CoreMsg>>),
        feed_connect: &crate::upstream::ConnectOptions,
        fleet: Option<crate::fleet::Fleet>,
    ) -> Result<(Self, Vec<CorePubsubStart>), crate::config_error::ConfigError> {
        let cores = lines.cores();
        let urls = cfg.feed_urls()?;
        let names: Vec<String> = cfg.feeds.iter().map(|f| f.url.clone()).collect();
        let shared = Self {
            cfg: Arc::new(cfg.clone()),
            lines,
            metrics: Arc::new(PubsubMetrics::new(cores, &names)),
            epoch_prefix: owner::random_epoch_prefix(),
            fleet,
        };
        let mut starts: Vec<CorePubsubStart> = inboxes
            .into_iter()
            .map(|inbox| CorePubsubStart {
                shared: shared.clone(),
                inbox,
                feeds: Vec::new(),
            })
            .collect();
        for (i, (name, url)) in names.iter().zip(&urls).enumerate() {
            let start = feed::FeedStart::new(i, name, url, feed_connect.clone());
            starts[i % cores].feeds.push(start);
        }
        Ok((shared, starts))
    }
}

/// One core's pub/sub: the topics it owns, its subscribers, its lines to the other cores.
pub(crate) struct CorePubsub {
    pub index: usize,
    pub cfg: Arc<PubsubConfig>,
    pub lines: Lines,
    pub registry: Registry,
    owner: RefCell<Owner>,
    metrics: Arc<PubsubMetrics>,
    fleet: Option<crate::fleet::Fleet>,
}

impl CorePubsub {
    pub fn new(shared: &PubsubShared, index: usize) -> Self {
        let cores = shared.lines.cores();
        let max_topics = shared.cfg.max_topics.div_ceil(cores).max(1);
        Self {
            index,
            cfg: shared.cfg.clone(),
            lines: shared.lines.clone(),
            registry: Registry::default(),
            owner: RefCell::new(Owner::new(
                cores,
                shared.cfg.history,
                shared.cfg.history_ttl(),
                max_topics,
                shared.epoch_prefix.clone(),
            )),
            metrics: shared.metrics.clone(),
            fleet: shared.fleet.clone(),
        }
    }

    /// This core's counters.
    pub fn m(&self) -> &CorePubsubMetrics {
        &self.metrics.cores[self.index]
    }

    /// This core has no subscriber of `topic` left: its owner stops sending it here.
    pub fn left(&self, topic: Arc<str>) {
        let owner = self.lines.owner(&topic);
        self.lines.send(
            owner,
            CoreMsg::Leave {
                topic,
                core: self.index,
            },
        );
    }

    /// Every feed's state (a feed writes its own).
    pub fn feed_metrics(&self) -> &[metrics::FeedState] {
        &self.metrics.feeds
    }

    /// The core's pub/sub task: its inbox, in passes of at most [`MAX_MESSAGES_PER_PASS`];
    /// each pass ends with one batch per destination core.
    pub async fn serve(self: Rc<Self>, mut inbox: UnboundedReceiver<CoreMsg>) {
        monoio::spawn(self.clone().sweep());
        let mut out = Outgoing::new(self.lines.cores());
        while let Some(first) = inbox.next().await {
            let now = Instant::now();
            self.handle(first, now, &mut out);
            let mut handled = 1;
            while handled < MAX_MESSAGES_PER_PASS {
                match inbox.try_recv() {
                    Ok(msg) => self.handle(msg, now, &mut out),
                    _ => break,
                }
                handled += 1;
            }
            self.flush(&mut out);
            self.m().topics.add(self.owned_change());
            if handled >= MAX_MESSAGES_PER_PASS {
                // More may be waiting: the core's connections get their turn first.
                crate::server::yield_turn().await;
            }
        }
    }

    /// The change in owned topics since the gauge was last set.
    fn owned_change(&self) -> i64 {
        self.owner.borrow().topics() as i64 - self.m().topics.get()
    }

    async fn sweep(self: Rc<Self>) {
        loop {
            monoio::time::sleep(SWEEP_EVERY).await;
            self.owner.borrow_mut().sweep(Instant::now());
            self.m().topics.add(self.owned_change());
        }
    }

    fn flush(&self, out: &mut Outgoing) {
        for (core, items) in out.per_core.iter_mut().enumerate() {
            if items.is_empty() {
                continue;
            }
            let batch = std::mem::take(items);
            if core == self.index {
                // Our own subscribers: no line to cross.
                self.registry.deliver(&batch, self.m());
            } else {
                self.lines.send(core, CoreMsg::Batch(batch));
            }
        }
    }

    /// An answer to `core`. Our own core's is taken at once, before this pass's batch is
    /// delivered here (in `flush`): the same order a line keeps for the other cores.
    fn reply(&self, core: usize, answer: CoreMsg, now: Instant, out: &mut Outgoing) {
        if core == self.index {
            self.handle(answer, now, out);
        } else {
            self.lines.send(core, answer);
        }
    }

    /// Publications this pass sequenced before the subscribe go out in the batch after this
    /// answer: the subscriber's start (the answer's seq) filters them.
    fn answer_subscribe(
        &self,
        asker: lines::Asker,
        request: u64,
        topic: &str,
        answer: Result<lines::TopicAnswer, wssedge_proto::pubsub::Reason>,
        now: Instant,
        out: &mut Outgoing,
    ) {
        let answer = CoreMsg::Subscribed {
            client: asker.client,
            request,
            topic: match &answer {
                Ok(a) => a.topic.clone(),
                Err(_) => topic.into(),
            },
            answer,
        };
        self.reply(asker.core, answer, now, out);
    }

    /// In a fleet whose Redis this owner last heard was reachable: publications and subscribes
    /// go through it. Otherwise (no fleet, or Redis away) the owner sequences itself, under a
    /// local epoch.
    fn through_fleet(&self) -> bool {
        self.fleet.is_some() && self.owner.borrow().fleet_up()
    }

    /// In a fleet Redis sequences: the publication goes to the link, and comes back to this
    /// owner (and every other node's) on the fleet's channel. A link that went down meanwhile
    /// answers `fleet_unavailable`.
    fn publish_fleet(
        &self,
        topic: String,
        data: bytes::Bytes,
        asker: Option<lines::Asker>,
        request: u64,
        now: Instant,
        out: &mut Outgoing,
    ) {
        let Some(fleet) = &self.fleet else { return };
        if std::str::from_utf8(&data).is_ok() {
            fleet.ask(crate::fleet::FleetAsk::Publish {
                topic: topic.into(),
                data,
                asker,
                request,
            });
            return;
        }
        let result = Err(wssedge_proto::pubsub::Reason::BadRequest);
        self.answer_publish(asker, request, result, now, out);
    }

    /// Tells the publisher (if it asked) how its publication went.
    fn answer_publish(
        &self,
        asker: Option<lines::Asker>,
        request: u64,
        result: Result<u64, wssedge_proto::pubsub::Reason>,
        now: Instant,
        out: &mut Outgoing,
    ) {
        if let Some(asker) = asker {
            let answer = CoreMsg::Published {
                client: asker.client,
                request,
                result,
            };
            self.reply(asker.core, answer, now, out);
        }
    }

    fn subscribe_fleet(
        &self,
        topic: String,
        since: Option<wssedge_proto::pubsub::protocol::Since>,
        asker: lines::Asker,
        request: u64,
        now: Instant,
        out: &mut Outgoing,
    ) {
        let outcome = self
            .owner
            .borrow_mut()
            .subscribe_fleet(&topic, since, asker, request, now);
        match outcome {
            Ok(owner::FleetSubscribe::Answer(a)) => {
                self.answer_subscribe(asker, request, &topic, Ok(a), now, out)
            }
            Ok(owner::FleetSubscribe::Wait { ask }) => {
                if let (true, Some(fleet)) = (ask, &self.fleet) {
                    fleet.ask(crate::fleet::FleetAsk::Sync {
                        topic: topic.into(),
                    });
                }
            }
            Err(reason) => self.answer_subscribe(asker, request, &topic, Err(reason), now, out),
        }
    }

    fn handle(&self, msg: CoreMsg, now: Instant, out: &mut Outgoing) {
        match msg {
            CoreMsg::Publish {
                topic,
                data,
                asker,
                request,
            } if self.through_fleet() => self.publish_fleet(topic, data, asker, request, now, out),
            CoreMsg::Subscribe {
                topic,
                since,
                asker,
                request,
            } if self.through_fleet() => {
                self.subscribe_fleet(topic, since, asker, request, now, out)
            }
            CoreMsg::FleetPublication(p) => {
                if let Some(fleet) = &self.fleet {
                    fleet.status.taken(self.index);
                }
                if self.owner.borrow_mut().fleet_publication(&p, now, out) {
                    self.m().publications.inc();
                }
            }
            CoreMsg::FleetSynced { topic, result } => {
                let owed = self.owner.borrow_mut().fleet_synced(
                    &topic,
                    result.as_ref().map_err(|_| ()),
                    now,
                );
                for (w, answer) in owed {
                    self.answer_subscribe(w.asker, w.request, &topic, answer, now, out);
                }
            }
            CoreMsg::FleetState { up } => self.owner.borrow_mut().fleet_state(up),
            CoreMsg::Publish {
                topic,
                data,
                asker,
                request,
            } => {
                let result = match std::str::from_utf8(&data) {
                    Ok(data) => self.owner.borrow_mut().publish(&topic, data, now, out),
                    Err(_) => Err(wssedge_proto::pubsub::Reason::BadRequest),
                };
                if result.is_ok() {
                    self.m().publications.inc();
                }
                self.answer_publish(asker, request, result, now, out);
            }
            CoreMsg::Subscribe {
                topic,
                since,
                asker,
                request,
            } => {
                let answer =
                    self.owner
                        .borrow_mut()
                        .subscribe(&topic, since.as_ref(), asker.core, now);
                self.answer_subscribe(asker, request, &topic, answer, now, out);
            }
            CoreMsg::Leave { topic, core } => self.owner.borrow_mut().leave(&topic, core),
            CoreMsg::Batch(items) => self.registry.deliver(&items, self.m()),
            CoreMsg::Subscribed {
                client,
                request,
                topic,
                answer,
            } => {
                let Some(c) = self.registry.client(client) else {
                    return;
                };
                if let Ok(a) = &answer {
                    // From here on the topic's publications are taken: every one sequenced
                    // after this answer arrives after it on this line.
                    if let Some(id) = self.registry.topic_id(&a.topic) {
                        c.activate(id, a.last_seq);
                    }
                }
                c.post(Answer::Subscribed {
                    request,
                    topic,
                    answer,
                });
            }
            CoreMsg::Published {
                client,
                request,
                result,
            } => {
                if let Some(c) = self.registry.client(client) {
                    c.post(Answer::Published { request, result });
                }
            }
        }
    }
}
