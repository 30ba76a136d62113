//! The pub/sub wire protocol: what a client asks in its text frames, and the exact JSON the
//! edge answers with.
//!
//! Client → edge:
//! - `{"op":"subscribe","id":1,"topics":["t"],"since":{"t":{"epoch":"…","seq":41}}}`
//!   (`since` optional; each of its topics must be among `topics`)
//! - `{"op":"unsubscribe","id":2,"topics":["t"]}`
//! - `{"op":"publish","id":3,"topic":"t","data":<any JSON value>}`
//!
//! Feed → edge: `{"topic":"t","data":<any JSON value>}` ([`parse_feed_publication`]).
//!
//! Edge → client: `subscribed`, `unsubscribed`, `published`, `error` (see the encoders) and the
//! publications themselves, `{"topic":"t","seq":58,"data":<the publisher's bytes>}`.
//!
//! A request is read in two passes: first the object's members as raw JSON (so the `id` can be
//! echoed in an error whatever else is wrong with the request), then each member for its op.
//! `data` is never decoded into values and re-encoded: the publisher's bytes (validated as JSON)
//! are what every subscriber receives.

use std::fmt;

use bytes::Bytes;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::topic::{check_topic, TopicError};

/// The bounds a request is checked against (from `[pubsub]` and the route's message limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Topics one subscribe or unsubscribe may name.
    pub max_topics: usize,
    /// Bytes of a publication's `data`, as the publisher wrote them.
    pub max_data_bytes: usize,
}

/// Where a client's copy of a topic stopped: the topic's epoch and the last seq it received.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Since {
    pub epoch: String,
    pub seq: u64,
}

/// One topic of a subscribe request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeTopic {
    pub topic: String,
    /// Present when the client asks for the publications it missed.
    pub since: Option<Since>,
}

/// A client's request, checked against the protocol and the [`RequestLimits`].
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// Topics in the client's order, each named once.
    Subscribe {
        id: u64,
        topics: Vec<SubscribeTopic>,
    },
    /// Topics in the client's order, each named once.
    Unsubscribe { id: u64, topics: Vec<String> },
    /// `data` borrows the frame: the publisher's bytes, a complete JSON value.
    Publish {
        id: u64,
        topic: String,
        data: &'a RawValue,
    },
}

/// `data` compares byte for byte (RawValue has no equality of its own: `1.0` and `1.00` are
/// one number to JSON, two publications here).
impl PartialEq for Request<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Request::Subscribe { id, topics },
                Request::Subscribe {
                    id: id2,
                    topics: topics2,
                },
            ) => id == id2 && topics == topics2,
            (
                Request::Unsubscribe { id, topics },
                Request::Unsubscribe {
                    id: id2,
                    topics: topics2,
                },
            ) => id == id2 && topics == topics2,
            (
                Request::Publish { id, topic, data },
                Request::Publish {
                    id: id2,
                    topic: topic2,
                    data: data2,
                },
            ) => id == id2 && topic == topic2 && data.get() == data2.get(),
            _ => false,
        }
    }
}

impl Eq for Request<'_> {}

/// Why a request is refused; [`Reason::as_str`] is the `reason` the client reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not JSON, not an object, an unknown op, a missing, repeated or unexpected member, or a
    /// member of the wrong type.
    BadRequest,
    /// A topic name breaks the rules of [`super::topic`].
    TopicInvalid,
    /// More topics than the request (or the connection) may hold.
    TooManyTopics,
    /// A publication's `data` is larger than allowed.
    DataTooLarge,
    /// The client may not do this (no publish scope, no admission to the topic).
    NotAllowed,
    /// The fleet's Redis, which sequences publications across edges, cannot be reached.
    FleetUnavailable,
}

impl Reason {
    /// The stable wire spelling; also a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::BadRequest => "bad_request",
            Reason::TopicInvalid => "topic_invalid",
            Reason::TooManyTopics => "too_many_topics",
            Reason::DataTooLarge => "data_too_large",
            Reason::NotAllowed => "not_allowed",
            Reason::FleetUnavailable => "fleet_unavailable",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: the id to echo (when it could be read), the wire reason, and a detail for
/// the edge's logs (never sent: the reason is the contract, the detail may change).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Refusal {
    pub id: Option<u64>,
    pub reason: Reason,
    pub detail: String,
}

impl Refusal {
    /// Also for the edge's own refusals (`not_allowed`, `too_many_topics` over the connection's
    /// total).
    pub fn new(id: Option<u64>, reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            id,
            reason,
            detail: detail.into(),
        }
    }

    fn topic(id: u64, topic: &str, e: TopicError) -> Self {
        // Only a bounded, escaped prefix of the hostile name goes to the log.
        let shown: String = topic.chars().take(32).collect();
        Self::new(
            Some(id),
            Reason::TopicInvalid,
            format!("topic {shown:?}: {e}"),
        )
    }

    /// The `{"op":"error",…}` text for the client.
    pub fn encode(&self) -> String {
        encode_error(self.id, self.reason)
    }
}

/// The members a request may have, each kept as raw JSON for the second pass.
#[derive(Default)]
struct Members<'a> {
    op: Option<&'a RawValue>,
    id: Option<&'a RawValue>,
    topics: Option<&'a RawValue>,
    since: Option<&'a RawValue>,
    topic: Option<&'a RawValue>,
    data: Option<&'a RawValue>,
    /// The first member name that is no member of any request, or given twice.
    stray: Option<String>,
}

enum Member {
    Op,
    Id,
    Topics,
    Since,
    Topic,
    Data,
    Other(String),
}

impl<'de> Deserialize<'de> for Member {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl Visitor<'_> for NameVisitor {
            type Value = Member;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Member, E> {
                Ok(match name {
                    "op" => Member::Op,
                    "id" => Member::Id,
                    "topics" => Member::Topics,
                    "since" => Member::Since,
                    "topic" => Member::Topic,
                    "data" => Member::Data,
                    other => Member::Other(other.chars().take(32).collect()),
                })
            }
        }
        d.deserialize_identifier(NameVisitor)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Members<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut m = Members::default();
                while let Some(name) = map.next_key::<Member>()? {
                    let value: &'de RawValue = map.next_value()?;
                    let (slot, name) = match name {
                        Member::Op => (&mut m.op, "op"),
                        Member::Id => (&mut m.id, "id"),
                        Member::Topics => (&mut m.topics, "topics"),
                        Member::Since => (&mut m.since, "since"),
                        Member::Topic => (&mut m.topic, "topic"),
                        Member::Data => (&mut m.data, "data"),
                        Member::Other(name) => {
                            m.stray.get_or_insert(name);
                            continue;
                        }
                    };
                    if slot.is_some() {
                        m.stray.get_or_insert_with(|| format!("{name} (twice)"));
                    }
                    *slot = Some(value);
                }
                Ok(m)
            }
        }
        d.deserialize_map(MembersVisitor)
    }
}

/// The ops a client may send.
enum Op {
    Subscribe,
    Unsubscribe,
    Publish,
}

/// Parses and checks one client text frame.
pub fn parse_request<'a>(frame: &'a [u8], limits: &RequestLimits) -> Result<Request<'a>, Refusal> {
    let m: Members<'a> = serde_json::from_slice(frame)
        .map_err(|e| Refusal::new(None, Reason::BadRequest, format!("not a JSON object: {e}")))?;
    let id = match m.id {
        None => return Err(Refusal::new(None, Reason::BadRequest, "no \"id\"")),
        Some(raw) => serde_json::from_str::<u64>(raw.get()).map_err(|_| {
            Refusal::new(
                None,
                Reason::BadRequest,
                "\"id\" must be an integer 0..2^64",
            )
        })?,
    };
    let bad = |detail: &str| Refusal::new(Some(id), Reason::BadRequest, detail);
    if let Some(stray) = &m.stray {
        return Err(bad(&format!("unexpected member {stray:?}")));
    }
    // A String, not a &str: a name spelled with escapes ("\u0070ublish") is still JSON.
    let op = m.op.map(|raw| serde_json::from_str::<String>(raw.get()));
    let op = match op.as_ref().map(|r| r.as_deref()) {
        None => return Err(bad("no \"op\"")),
        Some(Ok("subscribe")) => Op::Subscribe,
        Some(Ok("unsubscribe")) => Op::Unsubscribe,
        Some(Ok("publish")) => Op::Publish,
        Some(_) => {
            return Err(bad(
                "\"op\" must be \"subscribe\", \"unsubscribe\" or \"publish\"",
            ))
        }
    };
    match op {
        Op::Subscribe => {
            refuse_members(id, &[("topic", m.topic), ("data", m.data)])?;
            let names = topic_list(id, m.topics, limits)?;
            let mut since = match m.since {
                None => Vec::new(),
                Some(raw) => {
                    serde_json::from_str::<SinceMap>(raw.get())
                        .map_err(|e| bad(&format!("\"since\": {e}")))?
                        .0
                }
            };
            let mut topics = Vec::with_capacity(names.len());
            for topic in names {
                let pos = since.iter().position(|(t, _)| *t == topic);
                let since = pos.map(|i| since.swap_remove(i).1);
                topics.push(SubscribeTopic { topic, since });
            }
            if let Some((t, _)) = since.first() {
                let shown: String = t.chars().take(32).collect();
                return Err(bad(&format!(
                    "\"since\" names {shown:?}, which is not among \"topics\""
                )));
            }
            Ok(Request::Subscribe { id, topics })
        }
        Op::Unsubscribe => {
            refuse_members(
                id,
                &[("since", m.since), ("topic", m.topic), ("data", m.data)],
            )?;
            let topics = topic_list(id, m.topics, limits)?;
            Ok(Request::Unsubscribe { id, topics })
        }
        Op::Publish => {
            refuse_members(id, &[("topics", m.topics), ("since", m.since)])?;
            let topic = match m.topic.map(|raw| serde_json::from_str::<String>(raw.get())) {
                None => return Err(bad("no \"topic\"")),
                Some(Err(_)) => return Err(bad("\"topic\" must be a string")),
                Some(Ok(t)) => t,
            };
            check_topic(&topic).map_err(|e| Refusal::topic(id, &topic, e))?;
            let data = m.data.ok_or_else(|| bad("no \"data\""))?;
            let len = data.get().len();
            if len > limits.max_data_bytes {
                return Err(Refusal::new(
                    Some(id),
                    Reason::DataTooLarge,
                    format!(
                        "\"data\" is {len} bytes, at most {} allowed",
                        limits.max_data_bytes
                    ),
                ));
            }
            Ok(Request::Publish { id, topic, data })
        }
    }
}

fn refuse_members(id: u64, present: &[(&str, Option<&RawValue>)]) -> Result<(), Refusal> {
    match present.iter().find(|(_, v)| v.is_some()) {
        Some((name, _)) => Err(Refusal::new(
            Some(id),
            Reason::BadRequest,
            format!("unexpected member {name:?} for this op"),
        )),
        None => Ok(()),
    }
}

/// `topics`: a non-empty array of distinct, valid topic names, at most `max_topics`.
fn topic_list(
    id: u64,
    raw: Option<&RawValue>,
    limits: &RequestLimits,
) -> Result<Vec<String>, Refusal> {
    let bad = |detail: &str| Refusal::new(Some(id), Reason::BadRequest, detail);
    let raw = raw.ok_or_else(|| bad("no \"topics\""))?;
    let topics: Vec<String> = serde_json::from_str(raw.get())
        .map_err(|_| bad("\"topics\" must be an array of strings"))?;
    if topics.is_empty() {
        return Err(bad("\"topics\" is empty"));
    }
    if topics.len() > limits.max_topics {
        return Err(Refusal::new(
            Some(id),
            Reason::TooManyTopics,
            format!(
                "{} topics, at most {} allowed",
                topics.len(),
                limits.max_topics
            ),
        ));
    }
    for (i, t) in topics.iter().enumerate() {
        check_topic(t).map_err(|e| Refusal::topic(id, t, e))?;
        if topics[..i].contains(t) {
            return Err(bad(&format!("topic {t:?} is named twice")));
        }
    }
    Ok(topics)
}

/// `since`: topic → position, each topic once (a JSON object may repeat a name; serde's maps
/// would keep the last silently).
struct SinceMap(Vec<(String, Since)>);

impl<'de> Deserialize<'de> for SinceMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct SinceVisitor;
        impl<'de> Visitor<'de> for SinceVisitor {
            type Value = SinceMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of topic: {\"epoch\": string, \"seq\": integer}")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<SinceMap, A::Error> {
                let mut out: Vec<(String, Since)> = Vec::new();
                while let Some(topic) = map.next_key::<String>()? {
                    let since: Since = map.next_value()?;
                    if out.iter().any(|(t, _)| *t == topic) {
                        return Err(de::Error::custom("a topic is named twice"));
                    }
                    out.push((topic, since));
                }
                Ok(SinceMap(out))
            }
        }
        d.deserialize_map(SinceVisitor)
    }
}

/// A publication read from an upstream feed's text frame.
#[derive(Debug, Clone)]
pub struct FeedPublication<'a> {
    pub topic: String,
    /// Borrows the frame: the feed's bytes, a complete JSON value.
    pub data: &'a RawValue,
}

/// Why a feed's frame is not published (logged and counted; the feed is not told).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeedFrameError {
    #[error("not a JSON object: {0}")]
    NotJson(String),
    #[error("member {0:?} is not part of a feed publication ({{\"topic\":…,\"data\":…}})")]
    UnexpectedMember(String),
    #[error("no {0:?} member")]
    Missing(&'static str),
    #[error("\"topic\" must be a string")]
    TopicNotString,
    #[error("topic {topic:?}: {reason}")]
    Topic { topic: String, reason: TopicError },
    #[error("\"data\" is {len} bytes, at most {max} allowed")]
    DataTooLarge { len: usize, max: usize },
}

/// Parses one feed frame, `{"topic":"t","data":<JSON>}`, with the same topic rules and data
/// bound as a client's publish.
pub fn parse_feed_publication(
    frame: &[u8],
    max_data_bytes: usize,
) -> Result<FeedPublication<'_>, FeedFrameError> {
    let m: Members<'_> =
        serde_json::from_slice(frame).map_err(|e| FeedFrameError::NotJson(e.to_string()))?;
    if let Some(stray) = m.stray {
        return Err(FeedFrameError::UnexpectedMember(stray));
    }
    let others = [
        ("op", m.op),
        ("id", m.id),
        ("topics", m.topics),
        ("since", m.since),
    ];
    if let Some((name, _)) = others.iter().find(|(_, v)| v.is_some()) {
        return Err(FeedFrameError::UnexpectedMember((*name).to_owned()));
    }
    let raw_topic = m.topic.ok_or(FeedFrameError::Missing("topic"))?;
    let topic: String =
        serde_json::from_str(raw_topic.get()).map_err(|_| FeedFrameError::TopicNotString)?;
    if let Err(reason) = check_topic(&topic) {
        let topic = topic.chars().take(32).collect();
        return Err(FeedFrameError::Topic { topic, reason });
    }
    let data = m.data.ok_or(FeedFrameError::Missing("data"))?;
    let len = data.get().len();
    if len > max_data_bytes {
        return Err(FeedFrameError::DataTooLarge {
            len,
            max: max_data_bytes,
        });
    }
    Ok(FeedPublication { topic, data })
}

/// One topic of a `subscribed` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscribedTopic<'a> {
    pub topic: &'a str,
    pub epoch: &'a str,
    /// The topic's last sequence number (0: nothing published yet in this epoch).
    pub seq: u64,
    pub recovered: bool,
}

/// `{"op":"subscribed","id":1,"topics":[{"topic":"…","epoch":"…","seq":57,"recovered":true}]}`
pub fn encode_subscribed(id: u64, topics: &[SubscribedTopic<'_>]) -> String {
    let mut out = String::with_capacity(40 + topics.len() * 64);
    out.push_str("{\"op\":\"subscribed\",\"id\":");
    push_u64(&mut out, id);
    out.push_str(",\"topics\":[");
    for (i, t) in topics.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"topic\":");
        push_json_string(&mut out, t.topic);
        out.push_str(",\"epoch\":");
        push_json_string(&mut out, t.epoch);
        out.push_str(",\"seq\":");
        push_u64(&mut out, t.seq);
        out.push_str(",\"recovered\":");
        out.push_str(if t.recovered { "true" } else { "false" });
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `{"op":"unsubscribed","id":2}`
pub fn encode_unsubscribed(id: u64) -> String {
    let mut out = String::from("{\"op\":\"unsubscribed\",\"id\":");
    push_u64(&mut out, id);
    out.push('}');
    out
}

/// `{"op":"published","id":3,"seq":58}`
pub fn encode_published(id: u64, seq: u64) -> String {
    let mut out = String::from("{\"op\":\"published\",\"id\":");
    push_u64(&mut out, id);
    out.push_str(",\"seq\":");
    push_u64(&mut out, seq);
    out.push('}');
    out
}

/// `{"op":"error","id":3,"reason":"not_allowed"}`; `"id":null` when the request's id could not
/// be read.
pub fn encode_error(id: Option<u64>, reason: Reason) -> String {
    let mut out = String::from("{\"op\":\"error\",\"id\":");
    match id {
        Some(id) => push_u64(&mut out, id),
        None => out.push_str("null"),
    }
    out.push_str(",\"reason\":\"");
    out.push_str(reason.as_str());
    out.push_str("\"}");
    out
}

/// `{"topic":"…","seq":58,"data":<data, byte for byte>}`: the body of the one text frame every
/// subscriber of the topic is sent (the WebSocket header is the codec's).
pub fn encode_publication(topic: &str, seq: u64, data: &RawValue) -> Bytes {
    encode_publication_json(topic, seq, data.get())
}

/// [`encode_publication`] for `data` that was a [`RawValue`] when it was checked (it crossed a
/// core as bytes): a complete JSON value, written as is.
pub fn encode_publication_json(topic: &str, seq: u64, data: &str) -> Bytes {
    let mut out = String::with_capacity(32 + topic.len() + data.len());
    out.push_str("{\"topic\":");
    push_json_string(&mut out, topic);
    out.push_str(",\"seq\":");
    push_u64(&mut out, seq);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
    Bytes::from(out)
}

/// The first publication of a new epoch (the topic's sequence started again: its Redis lost
/// it, or the edge serves on local state while its fleet is out of reach):
/// `{"topic":"…","seq":1,"epoch":"…","data":…}`. A subscriber that sees `epoch` knows that its
/// position belongs to the old sequence: seqs start again from here.
pub fn encode_publication_new_epoch(topic: &str, seq: u64, epoch: &str, data: &str) -> Bytes {
    let mut out = String::with_capacity(48 + topic.len() + epoch.len() + data.len());
    out.push_str("{\"topic\":");
    push_json_string(&mut out, topic);
    out.push_str(",\"seq\":");
    push_u64(&mut out, seq);
    out.push_str(",\"epoch\":");
    push_json_string(&mut out, epoch);
    out.push_str(",\"data\":");
    out.push_str(data);
    out.push('}');
    Bytes::from(out)
}

fn push_u64(out: &mut String, n: u64) {
    use fmt::Write;
    // Writing to a String cannot fail.
    let _ = write!(out, "{n}");
}

/// `s` as a JSON string (RFC 8259 §7): `"` and `\` escaped, control bytes as `\n`-style or
/// `\u00XX`; everything else as is (the output is UTF-8 text, as a text frame must be).
fn push_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut plain_from = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[plain_from..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push_str(escape);
        }
        plain_from = i + 1;
    }
    out.push_str(&s[plain_from..]);
    out.push('"');
}

#[cfg(test)]
#[path = "protocol_tests.rs"]
mod tests;
