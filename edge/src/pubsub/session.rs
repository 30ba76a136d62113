//! One connection's pub/sub protocol: its requests to the topics' owners, its answers in the
//! order it asked, and its publications, drained into the WebSocket session once per pass.
//!
//! Order, for a client: answers come in request order; a topic's `subscribed` comes before
//! the publications it recovers, which come before anything newer. While a subscribe waits
//! for its owners, nothing live is written (it stays queued, bounded by the queue's cap), so
//! no publication of a topic can overtake its `subscribed`.

use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use wssedge_proto::pubsub::protocol::{
    encode_error, encode_published, encode_subscribed, encode_unsubscribed, SubscribedTopic,
};
use wssedge_proto::pubsub::{parse_request, Delivery, Reason, Request, RequestLimits, TopicId};

use super::client::{Answer, Client, MAX_ASKS_IN_FLIGHT};
use super::lines::{Asker, CoreMsg, TopicAnswer};
use super::CorePubsub;
use crate::ws::{Message, MessageKind, Payload, Session};

/// One topic of a subscribe in flight.
struct Part {
    topic: Arc<str>,
    id: TopicId,
    /// The client did not hold the topic before this request (its recovery is sent).
    new_for_client: bool,
    answer: Option<TopicAnswer>,
}

/// An answer owed to the client, in request order.
enum Owed {
    /// Ready to send.
    Text(String),
    Subscribe {
        id: u64,
        request: u64,
        parts: Vec<Part>,
        waiting: usize,
        failed: Option<Reason>,
    },
    Publish {
        id: u64,
        request: u64,
        result: Option<Result<u64, Reason>>,
    },
}

impl Owed {
    fn ready(&self) -> bool {
        match self {
            Owed::Text(_) => true,
            Owed::Subscribe { waiting, .. } => *waiting == 0,
            Owed::Publish { result, .. } => result.is_some(),
        }
    }
}

/// What one pump did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pumped {
    /// Frames handed to the session (answers and publications).
    pub frames: u64,
    /// A publication found the queue full under `disconnect`: close 1008 `slow_consumer`.
    pub slow_consumer: bool,
}

pub(crate) struct PubsubSession {
    hub: Rc<CorePubsub>,
    client: Rc<Client>,
    /// The client's token carries `[pubsub] publish_scope`.
    may_publish: bool,
    limits: RequestLimits,
    next_request: u64,
    owed: VecDeque<Owed>,
    /// Subscribes among `owed` (live publications wait while there are any).
    subscribes_owed: usize,
    scratch: Vec<Delivery>,
    /// Sends publications compressed once per window where the client agreed to it.
    outgoing: crate::compression::Outgoing,
}

impl PubsubSession {
    /// `max_data_bytes`: the largest publication `data` (the session's message limit).
    pub fn new(
        hub: Rc<CorePubsub>,
        may_publish: bool,
        max_data_bytes: usize,
        outgoing: crate::compression::Outgoing,
    ) -> Self {
        let client = hub.registry.add_client(hub.cfg.queue_messages);
        let limits = hub.cfg.request_limits(max_data_bytes);
        Self {
            hub,
            client,
            may_publish,
            limits,
            next_request: 0,
            owed: VecDeque::new(),
            subscribes_owed: 0,
            scratch: Vec::new(),
            outgoing,
        }
    }

    /// Whether the client's socket may be read: not while it has as many asks out as allowed.
    pub fn accepts_input(&self) -> bool {
        self.client.asks_in_flight() < MAX_ASKS_IN_FLIGHT
    }

    /// Publications queued that a pump would take now (none while a subscribe waits for its
    /// owners: its answer wakes the connection).
    pub fn has_queued(&self) -> bool {
        self.subscribes_owed == 0 && self.client.queued() > 0
    }

    /// The next wait resolves at once: what is still queued is taken in the next pass.
    pub fn rearm(&self) {
        self.client.wake();
    }

    /// Resolves when an owner's answer or a publication arrived for this client.
    pub async fn ready(&self) {
        self.client.ready().await
    }

    fn asker(&self) -> Asker {
        Asker {
            core: self.hub.index,
            client: self.client.key,
        }
    }

    fn refuse(&mut self, id: Option<u64>, reason: Reason, detail: &str) {
        tracing::debug!(
            client = self.client.key,
            reason = reason.as_str(),
            detail,
            "pub/sub request refused"
        );
        self.hub.m().refused(reason);
        self.owed.push_back(Owed::Text(encode_error(id, reason)));
    }

    /// A whole message from the client.
    pub fn on_message(&mut self, session: &mut Session, message: Message) {
        if message.kind == MessageKind::Binary {
            self.refuse(
                None,
                Reason::BadRequest,
                "binary frame: requests are JSON text",
            );
            self.emit(session);
            return;
        }
        let frame = match message.payload {
            Payload::Single(b) => b,
            Payload::Fragmented(parts) => Bytes::from(parts.concat()),
        };
        match parse_request(&frame, &self.limits) {
            Err(refusal) => self.refuse(refusal.id, refusal.reason, &refusal.detail),
            Ok(Request::Subscribe { id, topics }) => self.subscribe(id, topics),
            Ok(Request::Unsubscribe { id, topics }) => {
                for topic in &topics {
                    self.unsubscribe(topic);
                }
                self.owed.push_back(Owed::Text(encode_unsubscribed(id)));
            }
            Ok(Request::Publish { id, topic, data }) => {
                if !self.may_publish {
                    self.refuse(Some(id), Reason::NotAllowed, "no publish scope");
                } else {
                    let data = frame.slice_ref(data.get().as_bytes());
                    self.publish(id, topic, data);
                }
            }
        }
        self.emit(session);
    }

    fn subscribe(&mut self, id: u64, topics: Vec<wssedge_proto::pubsub::protocol::SubscribeTopic>) {
        let registry = &self.hub.registry;
        let new = topics
            .iter()
            .filter(|t| {
                registry
                    .topic_id(&t.topic)
                    .and_then(|tid| self.client.subscription(tid))
                    .is_none()
            })
            .count();
        if self.client.subscription_count() + new > self.hub.cfg.max_topics_per_connection {
            self.refuse(
                Some(id),
                Reason::TooManyTopics,
                "over max_topics_per_connection",
            );
            return;
        }
        self.next_request += 1;
        let request = self.next_request;
        let mut parts = Vec::with_capacity(topics.len());
        for t in topics {
            let joined = registry.join(&self.client, &t.topic, &self.hub.cfg);
            if joined.new_for_client {
                self.hub.m().subscriptions.add(1);
            }
            let owner = self.hub.lines.owner(&t.topic);
            self.client.asked();
            self.hub.lines.send(
                owner,
                CoreMsg::Subscribe {
                    topic: t.topic,
                    since: t.since,
                    asker: self.asker(),
                    request,
                },
            );
            parts.push(Part {
                topic: joined.name,
                id: joined.id,
                new_for_client: joined.new_for_client,
                answer: None,
            });
        }
        self.subscribes_owed += 1;
        self.owed.push_back(Owed::Subscribe {
            id,
            request,
            waiting: parts.len(),
            parts,
            failed: None,
        });
    }

    fn unsubscribe(&mut self, topic: &str) {
        let Some(tid) = self.hub.registry.topic_id(topic) else {
            return;
        };
        if self.client.subscription(tid).is_none() {
            return;
        }
        self.hub.m().subscriptions.add(-1);
        if let Some(name) = self.hub.registry.leave(&self.client, tid) {
            self.hub.left(name);
        }
    }

    fn publish(&mut self, id: u64, topic: String, data: Bytes) {
        self.next_request += 1;
        let request = self.next_request;
        let owner = self.hub.lines.owner(&topic);
        self.client.asked();
        self.hub.lines.send(
            owner,
            CoreMsg::Publish {
                topic,
                data,
                asker: Some(self.asker()),
                request,
            },
        );
        self.owed.push_back(Owed::Publish {
            id,
            request,
            result: None,
        });
    }

    /// Takes the owners' answers, writes what is owed in order, then as many queued
    /// publications as `room` bytes allow.
    pub fn pump(&mut self, session: &mut Session, room: usize, now: Instant) -> Pumped {
        while let Some(answer) = self.client.take_answer() {
            self.take(answer);
        }
        let mut pumped = Pumped {
            frames: self.emit(session),
            ..Pumped::default()
        };
        // No room: the queue holds them (its policy decides once it is full), not the session.
        if self.subscribes_owed == 0 && room > 0 {
            self.scratch.clear();
            self.client.take(room, &mut self.scratch);
            let m = self.hub.m();
            let delivered = self.scratch.len() as u64;
            for d in self.scratch.drain(..) {
                m.delivery
                    .observe(now.saturating_duration_since(d.published_at));
                self.outgoing
                    .send_shared(session, MessageKind::Text, d.frame);
            }
            m.deliveries.add(delivered);
            pumped.frames += delivered;
        }
        pumped.slow_consumer = self.client.overflowed();
        pumped
    }

    fn take(&mut self, answer: Answer) {
        match answer {
            Answer::Subscribed {
                request: r,
                topic,
                answer,
            } => {
                let Some(Owed::Subscribe {
                    parts,
                    waiting,
                    failed,
                    ..
                }) = self
                    .owed
                    .iter_mut()
                    .find(|o| matches!(o, Owed::Subscribe { request, .. } if *request == r))
                else {
                    return;
                };
                let Some(part) = parts
                    .iter_mut()
                    .find(|p| p.answer.is_none() && *p.topic == *topic)
                else {
                    return;
                };
                *waiting = waiting.saturating_sub(1);
                match answer {
                    Ok(a) => part.answer = Some(a),
                    Err(reason) => *failed = Some(reason),
                }
            }
            Answer::Published { request: r, result } => {
                if let Some(Owed::Publish { result: slot, .. }) = self
                    .owed
                    .iter_mut()
                    .find(|o| matches!(o, Owed::Publish { request, .. } if *request == r))
                {
                    *slot = Some(result);
                }
            }
        }
    }

    /// Writes the owed answers that are ready, in order; frames written.
    fn emit(&mut self, session: &mut Session) -> u64 {
        let mut frames = 0;
        while self.owed.front().is_some_and(Owed::ready) {
            let Some(owed) = self.owed.pop_front() else {
                break;
            };
            match owed {
                Owed::Text(text) => {
                    self.outgoing.send(
                        session,
                        MessageKind::Text,
                        Payload::Single(Bytes::from(text)),
                    );
                    frames += 1;
                }
                Owed::Publish { id, result, .. } => {
                    let text = match result {
                        Some(Ok(seq)) => encode_published(id, seq),
                        Some(Err(reason)) => {
                            self.hub.m().refused(reason);
                            encode_error(Some(id), reason)
                        }
                        None => continue,
                    };
                    self.outgoing.send(
                        session,
                        MessageKind::Text,
                        Payload::Single(Bytes::from(text)),
                    );
                    frames += 1;
                }
                Owed::Subscribe {
                    id, parts, failed, ..
                } => {
                    self.subscribes_owed -= 1;
                    frames += self.answer_subscribe(session, id, parts, failed);
                }
            }
        }
        frames
    }

    fn answer_subscribe(
        &mut self,
        session: &mut Session,
        id: u64,
        parts: Vec<Part>,
        failed: Option<Reason>,
    ) -> u64 {
        if let Some(reason) = failed {
            // All or nothing: the topics this request added are left again.
            for p in parts.iter().filter(|p| p.new_for_client) {
                if self.client.subscription(p.id).is_some() {
                    self.unsubscribe(&p.topic);
                }
            }
            self.hub.m().refused(reason);
            let text = encode_error(Some(id), reason);
            self.outgoing.send(
                session,
                MessageKind::Text,
                Payload::Single(Bytes::from(text)),
            );
            return 1;
        }
        let topics: Vec<SubscribedTopic<'_>> = parts
            .iter()
            .filter_map(|p| {
                let a = p.answer.as_ref()?;
                Some(SubscribedTopic {
                    topic: &a.topic,
                    epoch: &a.epoch,
                    seq: a.last_seq,
                    recovered: a.recovered,
                })
            })
            .collect();
        let text = encode_subscribed(id, &topics);
        self.outgoing.send(
            session,
            MessageKind::Text,
            Payload::Single(Bytes::from(text)),
        );
        let mut frames = 1;
        for p in parts.into_iter().filter(|p| p.new_for_client) {
            for frame in p.answer.into_iter().flat_map(|a| a.replay) {
                self.outgoing.send_shared(session, MessageKind::Text, frame);
                frames += 1;
            }
        }
        self.hub.m().deliveries.add(frames - 1);
        frames
    }
}

impl Drop for PubsubSession {
    fn drop(&mut self) {
        let held = self.client.subscription_count() as i64;
        self.hub.m().subscriptions.add(-held);
        for name in self.hub.registry.remove_client(&self.client) {
            self.hub.left(name);
        }
    }
}
