//! What the edges of a fleet keep in Redis and say on its pub/sub channel. No I/O.
//!
//! Per topic, three keys in one hash slot (`{topic}`, so a Redis Cluster keeps a topic's keys
//! together and its scripts run on one shard):
//! - `wssedge:{T}:epoch`: the topic's epoch, made by whichever node first needs the topic;
//! - `wssedge:{T}:seq`: the last seq given out in that epoch;
//! - `wssedge:{T}:log`: the history, a stream capped at `history` entries, entry id `<seq>-0`,
//!   fields `t` (Redis' clock, ms) and `d` (the publication's JSON).
//!
//! A publication is one script run (sequence, keep, announce: atomic, so the channel carries
//! the seqs of a topic in order) and one message on [`CHANNEL`], which every node subscribes to
//! once: `epoch \n seq \n topic \n data`.

use std::sync::Arc;

use bytes::Bytes;
use redis::Value;
use wssedge_proto::pubsub::check_topic;

use crate::auth::revocation::RevocationEntry;

/// The channel every node subscribes to: all publications of the fleet.
pub(crate) const CHANNEL: &str = "wssedge:publications";

/// Revocations and kicks, announced to every node: `op \n value \n node`.
pub(crate) const CONTROL_CHANNEL: &str = "wssedge:control";
/// The fleet's revocations (made with `wssedge ctl` on any node): a hash, field `jti:<id>` or
/// `sub:<subject>`, value the node that made it, or [`LIFTED`] once unrevoked. A node reads it
/// whole at every connection.
pub(crate) const REVOCATIONS: &str = "wssedge:revocations";
/// A used single-use token id: `wssedge:jti:<hex of its replay-store key>`, value the node,
/// expiring with the token (set if absent: the first node wins).
pub(crate) const JTI_PREFIX: &str = "wssedge:jti:";
/// The value of a lifted revocation (node names cannot be `-`).
pub(crate) const LIFTED: &str = "-";

/// What a control message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ControlOp {
    /// `value`: a revocation field.
    Revoke,
    Unrevoke,
    /// `value`: a subject.
    Kick,
}

impl ControlOp {
    fn as_str(self) -> &'static str {
        match self {
            ControlOp::Revoke => "revoke",
            ControlOp::Unrevoke => "unrevoke",
            ControlOp::Kick => "kick",
        }
    }
}

/// A control message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Control {
    pub op: ControlOp,
    pub value: String,
    pub node: String,
}

pub(crate) fn encode_control(op: ControlOp, value: &str, node: &str) -> String {
    format!("{}\n{value}\n{node}", op.as_str())
}

/// `None` for anything else: values are exact identifiers, nodes checked names.
pub(crate) fn parse_control(payload: &[u8]) -> Option<Control> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut parts = text.split('\n');
    let (op, value, node) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || node.is_empty() {
        return None;
    }
    let op = match op {
        "revoke" => ControlOp::Revoke,
        "unrevoke" => ControlOp::Unrevoke,
        "kick" => ControlOp::Kick,
        _ => return None,
    };
    match op {
        ControlOp::Kick => crate::auth::check_identifier(value).ok()?,
        _ => {
            parse_revocation_field(value)?;
        }
    }
    Some(Control {
        op,
        value: value.to_owned(),
        node: node.to_owned(),
    })
}

/// A revocation as a field of [`REVOCATIONS`].
pub(crate) fn revocation_field(entry: &RevocationEntry) -> String {
    match entry {
        RevocationEntry::Jti(v) => format!("jti:{v}"),
        RevocationEntry::Sub(v) => format!("sub:{v}"),
    }
}

pub(crate) fn parse_revocation_field(field: &str) -> Option<RevocationEntry> {
    let (kind, value) = field.split_once(':')?;
    crate::auth::check_identifier(value).ok()?;
    match kind {
        "jti" => Some(RevocationEntry::Jti(value.to_owned())),
        "sub" => Some(RevocationEntry::Sub(value.to_owned())),
        _ => None,
    }
}

/// The nodes that ever joined (a node counts while its `alive` key lives).
pub(crate) const NODES: &str = "wssedge:nodes";

/// A node's keys, all expiring with its lease: `alive`, `identities` (a hash: identity →
/// sessions), `sessions` (a hash: session id → [`super::SessionInfo`] as JSON).
pub(crate) fn node_key(node: &str, what: &str) -> String {
    format!("wssedge:node:{node}:{what}")
}

/// An upgrade's admission in one round trip. ARGV: the token id's claim key (`""`: no
/// `single_use`), its time to live (ms), this node, the identity (`""`: not counted), its limit,
/// the lease (ms). The claim comes first — set if absent, else 2 (replayed) — then the count:
/// the identity's sessions summed over the nodes whose lease lives; at the limit 0, else one
/// more for this node and 1. A claimed token stays claimed when the count then refuses, as a
/// token checked on one node alone is used up by a refused upgrade too.
/// (Keys named at run time: a single Redis, not a Cluster, holds a fleet's counts.)
pub(crate) const ADMIT_SCRIPT: &str = r"
if ARGV[1] ~= '' then
  if not redis.call('SET', ARGV[1], ARGV[3], 'NX', 'PX', ARGV[2]) then
    return 2
  end
end
if ARGV[4] == '' then
  return 1
end
local total = 0
for _, n in ipairs(redis.call('SMEMBERS', 'wssedge:nodes')) do
  if redis.call('EXISTS', 'wssedge:node:' .. n .. ':alive') == 1 then
    total = total + tonumber(redis.call('HGET', 'wssedge:node:' .. n .. ':identities', ARGV[4]) or '0')
  end
end
if total >= tonumber(ARGV[5]) then
  return 0
end
local mine = 'wssedge:node:' .. ARGV[3] .. ':identities'
redis.call('HINCRBY', mine, ARGV[4], 1)
redis.call('PEXPIRE', mine, ARGV[6])
return 1
";

/// The claim key of a single-use token id (its replay-store key, in hex).
pub(crate) fn claim_key(key: &[u8; 16]) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(JTI_PREFIX.len() + 32);
    out.push_str(JTI_PREFIX);
    for b in key {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A topic's keys: seq, epoch, log.
pub(crate) fn topic_keys(topic: &str) -> [String; 3] {
    [
        format!("wssedge:{{{topic}}}:seq"),
        format!("wssedge:{{{topic}}}:epoch"),
        format!("wssedge:{{{topic}}}:log"),
    ]
}

/// Makes the topic's epoch when it has none (or lost its seq): one shared prologue.
const ENSURE_EPOCH: &str = r"
local epoch = redis.call('GET', KEYS[2])
if (not epoch) or redis.call('EXISTS', KEYS[1]) == 0 then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
  redis.call('SET', KEYS[1], 0)
  redis.call('DEL', KEYS[3])
end
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
";

/// KEYS: seq, epoch, log. ARGV: a fresh epoch (used only if the topic has none), history,
/// topic, data. Returns `{epoch, seq}`.
pub(crate) fn publish_script() -> String {
    format!(
        "{ENSURE_EPOCH}
local seq = redis.call('INCR', KEYS[1])
if tonumber(ARGV[2]) > 0 then
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[2], seq .. '-0', 't', now, 'd', ARGV[4])
end
redis.call('PUBLISH', '{CHANNEL}', epoch .. '\\n' .. seq .. '\\n' .. ARGV[3] .. '\\n' .. ARGV[4])
return {{epoch, seq}}
"
    )
}

/// KEYS: seq, epoch, log. ARGV: a fresh epoch, how many entries. Returns
/// `{epoch, seq, now_ms, entries newest first}`.
pub(crate) fn sync_script() -> String {
    format!(
        "{ENSURE_EPOCH}
local seq = tonumber(redis.call('GET', KEYS[1]))
local entries = {{}}
if tonumber(ARGV[2]) > 0 then
  entries = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', ARGV[2])
end
return {{epoch, seq, now, entries}}
"
    )
}

/// A publication as every node receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Publication {
    pub epoch: Arc<str>,
    pub seq: u64,
    pub topic: Arc<str>,
    /// The publisher's JSON value, byte for byte.
    pub data: Bytes,
}

/// Why a message on the channel (or a script's answer) is not what an edge sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("not `epoch\\nseq\\ntopic\\ndata`")]
    Shape,
    #[error("bad seq")]
    Seq,
    #[error("bad topic: {0}")]
    Topic(String),
    #[error("data is not one JSON value")]
    Data,
    #[error("unexpected script answer: {0}")]
    Answer(&'static str),
}

/// What the publish script sends (written there in Lua; here for the tests).
#[cfg(test)]
pub(crate) fn encode_publication(epoch: &str, seq: u64, topic: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(epoch.len() + topic.len() + data.len() + 24);
    out.extend_from_slice(epoch.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(seq.to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(topic.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(data);
    out
}

/// Checks everything a frame will be built from: Redis is shared infrastructure, and a message
/// another program wrote on the channel must not become a broken frame.
pub(crate) fn parse_publication(payload: &[u8]) -> Result<Publication, WireError> {
    let mut parts = payload.splitn(4, |&b| b == b'\n');
    let (Some(epoch), Some(seq), Some(topic), Some(data)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(WireError::Shape);
    };
    let epoch = std::str::from_utf8(epoch).map_err(|_| WireError::Shape)?;
    if epoch.is_empty() {
        return Err(WireError::Shape);
    }
    let seq = parse_seq(seq)?;
    let topic = std::str::from_utf8(topic).map_err(|_| WireError::Shape)?;
    check_topic(topic).map_err(|e| WireError::Topic(e.to_string()))?;
    check_json(data)?;
    Ok(Publication {
        epoch: epoch.into(),
        seq,
        topic: topic.into(),
        data: Bytes::copy_from_slice(data),
    })
}

fn parse_seq(bytes: &[u8]) -> Result<u64, WireError> {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .ok_or(WireError::Seq)
}

fn check_json(data: &[u8]) -> Result<(), WireError> {
    serde_json::from_slice::<&serde_json::value::RawValue>(data)
        .map(drop)
        .map_err(|_| WireError::Data)
}

/// The publish script's answer: the topic's epoch and the seq given.
/// The answer to an admission: a plain `SET NX` when only a claim was asked (`scripted`
/// false), else [`ADMIT_SCRIPT`]'s number. `Err`: no answer, or one that is neither.
pub(crate) fn parse_admit(
    answer: Option<&Value>,
    scripted: bool,
) -> Result<super::FleetVerdict, ()> {
    use super::FleetVerdict::{Admitted, AtIdentityLimit, Replayed};
    match (answer, scripted) {
        (Some(Value::Okay), false) => Ok(Admitted),
        (Some(Value::SimpleString(s)), false) if s == "OK" => Ok(Admitted),
        (Some(Value::Nil), false) => Ok(Replayed),
        (Some(Value::Int(1)), true) => Ok(Admitted),
        (Some(Value::Int(2)), true) => Ok(Replayed),
        (Some(Value::Int(0)), true) => Ok(AtIdentityLimit),
        _ => Err(()),
    }
}

pub(crate) fn parse_published(v: &Value) -> Result<(Arc<str>, u64), WireError> {
    match v {
        Value::Array(items) if items.len() == 2 => Ok((text(&items[0])?.into(), int(&items[1])?)),
        _ => Err(WireError::Answer("publish: not {epoch, seq}")),
    }
}

/// One history entry read back: its seq, how long ago it was published, its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub seq: u64,
    pub age_ms: u64,
    pub data: Bytes,
}

/// The sync script's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Synced {
    pub epoch: Arc<str>,
    pub last_seq: u64,
    /// Oldest first.
    pub entries: Vec<Entry>,
}

pub(crate) fn parse_synced(v: &Value) -> Result<Synced, WireError> {
    let Value::Array(items) = v else {
        return Err(WireError::Answer("sync: not an array"));
    };
    let [epoch, seq, now, entries] = items.as_slice() else {
        return Err(WireError::Answer("sync: not {epoch, seq, now, entries}"));
    };
    let now = int(now)?;
    let mut out = Vec::new();
    if let Value::Array(entries) = entries {
        for e in entries.iter().rev() {
            out.push(parse_entry(e, now)?);
        }
    }
    Ok(Synced {
        epoch: text(epoch)?.into(),
        last_seq: int(seq)?,
        entries: out,
    })
}

fn parse_entry(e: &Value, now: u64) -> Result<Entry, WireError> {
    let Value::Array(pair) = e else {
        return Err(WireError::Answer("entry: not [id, fields]"));
    };
    let [id, Value::Array(fields)] = pair.as_slice() else {
        return Err(WireError::Answer("entry: not [id, fields]"));
    };
    let id = text(id)?;
    let seq = parse_seq(id.strip_suffix("-0").unwrap_or(id).as_bytes())?;
    let (mut t, mut d) = (None, None);
    for kv in fields.chunks(2) {
        match kv {
            [k, v] if text(k)? == "t" => t = Some(int(v)?),
            [k, Value::BulkString(v)] if text(k)? == "d" => d = Some(v.as_slice()),
            _ => {}
        }
    }
    let (Some(t), Some(d)) = (t, d) else {
        return Err(WireError::Answer("entry: no t or d"));
    };
    check_json(d)?;
    Ok(Entry {
        seq,
        age_ms: now.saturating_sub(t),
        data: Bytes::copy_from_slice(d),
    })
}

fn text(v: &Value) -> Result<&str, WireError> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).map_err(|_| WireError::Answer("not UTF-8")),
        Value::SimpleString(s) => Ok(s),
        _ => Err(WireError::Answer("not a string")),
    }
}

fn int(v: &Value) -> Result<u64, WireError> {
    match v {
        Value::Int(i) if *i >= 0 => Ok(*i as u64),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(WireError::Answer("not an integer")),
        _ => Err(WireError::Answer("not an integer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn admission_answers() {
        use crate::fleet::FleetVerdict::{Admitted, AtIdentityLimit, Replayed};
        assert_eq!(parse_admit(Some(&Value::Okay), false), Ok(Admitted));
        assert_eq!(
            parse_admit(Some(&Value::SimpleString("OK".into())), false),
            Ok(Admitted)
        );
        assert_eq!(parse_admit(Some(&Value::Nil), false), Ok(Replayed));
        assert_eq!(parse_admit(Some(&Value::Int(1)), true), Ok(Admitted));
        assert_eq!(parse_admit(Some(&Value::Int(2)), true), Ok(Replayed));
        assert_eq!(parse_admit(Some(&Value::Int(0)), true), Ok(AtIdentityLimit));
        // No answer, an error, or an answer of the other kind: not a verdict.
        assert_eq!(parse_admit(None, true), Err(()));
        assert_eq!(parse_admit(Some(&Value::Int(1)), false), Err(()));
        assert_eq!(parse_admit(Some(&Value::Okay), true), Err(()));
        assert_eq!(parse_admit(Some(&Value::Int(7)), true), Err(()));
        assert_eq!(
            claim_key(&[0xab; 16]),
            format!("{JTI_PREFIX}{}", "ab".repeat(16))
        );
    }

    #[test]
    fn publications_round_trip_and_bad_ones_are_refused() {
        let wire = encode_publication("e.1", 42, "trades.BTC-USD", b"{\"p\":\"a\\nb\"}");
        let p = parse_publication(&wire).unwrap();
        assert_eq!(
            (&*p.epoch, p.seq, &*p.topic, &p.data[..]),
            ("e.1", 42, "trades.BTC-USD", &b"{\"p\":\"a\\nb\"}"[..])
        );
        // Data may hold newlines of its own (JSON whitespace): only the first three split.
        let p = parse_publication(b"e\n1\nt\n[1,\n2]").unwrap();
        assert_eq!(&p.data[..], b"[1,\n2]");
        for (bad, want) in [
            (&b"e\n1\nt"[..], WireError::Shape),
            (b"\n1\nt\n1", WireError::Shape),
            (b"e\n0\nt\n1", WireError::Seq),
            (b"e\n-1\nt\n1", WireError::Seq),
            (b"e\n1\nt\n{", WireError::Data),
            (b"e\n1\nt\n1 2", WireError::Data),
        ] {
            assert_eq!(parse_publication(bad), Err(want), "{bad:?}");
        }
        assert!(matches!(
            parse_publication(b"e\n1\nbad topic\n1"),
            Err(WireError::Topic(_))
        ));
    }

    #[test]
    fn script_answers_are_read_and_checked() {
        let v = Value::Array(vec![bulk("e"), Value::Int(7)]);
        assert_eq!(parse_published(&v).unwrap(), ("e".into(), 7));
        assert!(parse_published(&Value::Nil).is_err());
        let entry = |seq: u64, t: i64, d: &str| {
            Value::Array(vec![
                bulk(&format!("{seq}-0")),
                Value::Array(vec![bulk("t"), bulk(&t.to_string()), bulk("d"), bulk(d)]),
            ])
        };
        let v = Value::Array(vec![
            bulk("e"),
            Value::Int(9),
            Value::Int(10_000),
            Value::Array(vec![entry(9, 9_900, "9"), entry(8, 9_000, "\"x\"")]),
        ]);
        let s = parse_synced(&v).unwrap();
        assert_eq!((&*s.epoch, s.last_seq), ("e", 9));
        assert_eq!(
            s.entries,
            [
                Entry {
                    seq: 8,
                    age_ms: 1000,
                    data: Bytes::from_static(b"\"x\"")
                },
                Entry {
                    seq: 9,
                    age_ms: 100,
                    data: Bytes::from_static(b"9")
                },
            ]
        );
        let broken = Value::Array(vec![
            bulk("e"),
            Value::Int(9),
            Value::Int(10_000),
            Value::Array(vec![entry(9, 1, "{")]),
        ]);
        assert_eq!(parse_synced(&broken), Err(WireError::Data));
    }

    #[test]
    fn control_messages_round_trip_and_bad_ones_are_dropped() {
        let field = revocation_field(&RevocationEntry::Sub("alice".into()));
        let wire = encode_control(ControlOp::Revoke, &field, "edge-a");
        let c = parse_control(wire.as_bytes()).unwrap();
        assert_eq!((c.op, c.node.as_str()), (ControlOp::Revoke, "edge-a"));
        assert_eq!(
            parse_revocation_field(&c.value),
            Some(RevocationEntry::Sub("alice".into()))
        );
        let kick = parse_control(b"kick\nbob\nedge-b").unwrap();
        assert_eq!((kick.op, kick.value.as_str()), (ControlOp::Kick, "bob"));
        for bad in [
            &b"revoke\nalice\nedge"[..],
            b"revoke\nsub:alice",
            b"revoke\nsub:alice\nedge\nmore",
            b"revoke\nsub:al\tice\nedge",
            b"delete\nsub:alice\nedge",
            b"kick\n\nedge",
            b"revoke\nsub:alice\n",
        ] {
            assert_eq!(parse_control(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_topic_keys_share_one_hash_slot() {
        let keys = topic_keys("book.X");
        assert!(keys.iter().all(|k| k.contains("{book.X}")), "{keys:?}");
    }
}
