//! The HMAC chain: how a line is built, and how a verifier takes one apart.
//!
//! A line is one JSON object and a newline:
//!
//! ```text
//! {"seq":7,"ts":"2024-05-06T07:08:09.123456789Z","core":0,"event":"accept","peer":"192.0.2.1:5000","prev":"<64 hex>","mac":"<64 hex>"}
//! └──────────────────────────────── covered bytes (the "prefix") ─────────────────────────────────────────┘
//! ```
//!
//! `mac` = HMAC-SHA256(key, prev_mac_bytes || prefix), where the prefix is the line up to and
//! including the `"prev":"…"` field. The writer appends `,"mac":"<hex>"}` and `\n`. A verifier
//! needs nothing but the line text: find the last `,"mac":"`, everything before it is the
//! prefix. (`,"mac":"` cannot occur inside a JSON string: its quotes would be escaped.) `prev`
//! sits inside the covered bytes, so moving a record to another place in the chain breaks its
//! own MAC as well as the linkage. The first record of a trail chains from 32 zero bytes.
//!
//! Sans-IO: the HMAC comes in as a [`ChainMac`] (the edge's is aws-lc-rs' `hmac::Key`) and each
//! record's time as a [`RecordTime`] its caller read.

use serde::Serialize;

pub type Mac = [u8; 32];

/// The `prev` of the first record of a new trail.
pub const GENESIS: Mac = [0; 32];

const MAC_FIELD: &[u8] = b",\"mac\":\"";
const PREV_FIELD: &[u8] = b",\"prev\":\"";

/// The chain's keyed MAC: HMAC-SHA256 under the trail's key.
pub trait ChainMac {
    /// HMAC(key, `prev` || `prefix`).
    fn mac(&self, prev: &Mac, prefix: &[u8]) -> Mac;

    /// Whether `mac` is HMAC(key, `prev` || `prefix`), compared in constant time.
    fn verify(&self, prev: &Mac, prefix: &[u8], mac: &Mac) -> bool;
}

/// A record's `ts`: the wall-clock time its caller took when the event happened.
pub trait RecordTime {
    /// Appends the time as RFC 3339 UTC with nanoseconds: `2024-05-06T07:08:09.123456789Z`.
    fn write_rfc3339(&self, out: &mut Vec<u8>);
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    push_hex(bytes, &mut s);
    s
}

fn push_hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
}

/// Strict: exactly 64 lowercase hex digits. Accepting upper case would let a byte of a line
/// change without the verifier noticing.
pub fn unhex_mac(text: &[u8]) -> Option<Mac> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    if text.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

/// The writer's end of the chain: the next seq and the last MAC.
pub struct ChainWriter<K> {
    key: K,
    next_seq: u64,
    prev: Mac,
}

impl<K: ChainMac> ChainWriter<K> {
    pub fn new(key: K, next_seq: u64, prev: Mac) -> Self {
        ChainWriter {
            key,
            next_seq,
            prev,
        }
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn last_mac(&self) -> &Mac {
        &self.prev
    }

    /// Appends one complete line (with its `\n`) to `out` and advances the chain.
    pub fn append(
        &mut self,
        out: &mut Vec<u8>,
        ts: impl RecordTime,
        core: Option<usize>,
        event: &impl Serialize,
    ) {
        use std::io::Write;
        let start = out.len();
        // Writes into a Vec cannot fail.
        let _ = write!(out, "{{\"seq\":{},\"ts\":\"", self.next_seq);
        ts.write_rfc3339(out);
        match core {
            Some(c) => {
                let _ = write!(out, "\",\"core\":{c},");
            }
            None => out.extend_from_slice(b"\",\"core\":null,"),
        }
        // The event serializes as `{"event":"…",…}`; keep what is between the braces.
        let body = out.len();
        if serde_json::to_writer(&mut *out, event).is_ok() && out.len() >= body + 2 {
            out.remove(body);
            out.pop();
        } else {
            // Our event types always serialize; should one ever not, the record still says
            // that something happened rather than vanishing.
            out.truncate(body);
            out.extend_from_slice(b"\"event\":\"unserializable\"");
        }
        out.extend_from_slice(PREV_FIELD);
        let mut text = String::with_capacity(64);
        push_hex(&self.prev, &mut text);
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
        let m = self.key.mac(&self.prev, &out[start..]);
        out.extend_from_slice(MAC_FIELD);
        text.clear();
        push_hex(&m, &mut text);
        out.extend_from_slice(text.as_bytes());
        out.extend_from_slice(b"\"}\n");
        self.prev = m;
        self.next_seq += 1;
    }
}

/// One line taken apart (without its `\n`).
#[derive(Debug)]
pub struct ParsedLine<'a> {
    /// The covered bytes.
    pub prefix: &'a [u8],
    pub mac: Mac,
    pub prev: Mac,
    pub seq: u64,
    pub event: String,
    /// All fields of the record except `mac`.
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl ParsedLine<'_> {
    pub fn str_field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(|v| v.as_str())
    }

    pub fn u64_field(&self, name: &str) -> Option<u64> {
        self.fields.get(name).and_then(|v| v.as_u64())
    }

    pub fn mac_ok(&self, key: &impl ChainMac) -> bool {
        key.verify(&self.prev, self.prefix, &self.mac)
    }
}

/// Takes a line apart, or says in a few words why it is not an audit record. Never panics.
pub fn parse_line(line: &[u8]) -> Result<ParsedLine<'_>, &'static str> {
    let Some(body) = line.strip_suffix(b"\"}") else {
        return Err("does not end with the `mac` field");
    };
    let at = find_last(body, MAC_FIELD).ok_or("has no `mac` field")?;
    let mac =
        unhex_mac(&body[at + MAC_FIELD.len()..]).ok_or("`mac` is not 64 lowercase hex digits")?;
    let prefix = &line[..at];
    // The covered bytes end with the `prev` field; read it from the text itself.
    let prev_text = prefix
        .strip_suffix(b"\"")
        .filter(|p| p.len() >= 64 + PREV_FIELD.len())
        .map(|p| p.split_at(p.len() - 64))
        .filter(|(head, _)| head.ends_with(PREV_FIELD))
        .map(|(_, hex)| hex)
        .ok_or("the field before `mac` is not `prev`")?;
    let prev = unhex_mac(prev_text).ok_or("`prev` is not 64 lowercase hex digits")?;
    let mut object = Vec::with_capacity(prefix.len() + 1);
    object.extend_from_slice(prefix);
    object.push(b'}');
    let fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&object).map_err(|_| "is not a JSON object")?;
    let seq = fields
        .get("seq")
        .and_then(|v| v.as_u64())
        .ok_or("has no numeric `seq`")?;
    let event = fields
        .get("event")
        .and_then(|v| v.as_str())
        .ok_or("has no `event`")?
        .to_owned();
    Ok(ParsedLine {
        prefix,
        mac,
        prev,
        seq,
        event,
        fields,
    })
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit_record::AuditEvent;

    /// A stand-in keyed digest (the edge's tests use the real HMAC).
    struct TestMac(u8);

    impl ChainMac for TestMac {
        fn mac(&self, prev: &Mac, prefix: &[u8]) -> Mac {
            use sha1::{Digest, Sha1};
            let mut h = Sha1::new();
            h.update([self.0]);
            h.update(prev);
            h.update(prefix);
            let mut out = [0; 32];
            out[..20].copy_from_slice(&h.finalize());
            out
        }

        fn verify(&self, prev: &Mac, prefix: &[u8], mac: &Mac) -> bool {
            self.mac(prev, prefix) == *mac
        }
    }

    struct At(&'static str);

    impl RecordTime for At {
        fn write_rfc3339(&self, out: &mut Vec<u8>) {
            out.extend_from_slice(self.0.as_bytes());
        }
    }

    #[test]
    fn the_writer_chains_lines_under_the_injected_mac_and_time() {
        let mut w = ChainWriter::new(TestMac(1), 5, [9; 32]);
        let mut out = Vec::new();
        w.append(&mut out, At("T1"), Some(2), &AuditEvent::Stop {});
        w.append(&mut out, At("T2"), None, &AuditEvent::Stop {});
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(r#"{"seq":5,"ts":"T1","core":2,"event":"stop","prev":"0909"#));
        let (a, b) = (
            parse_line(lines[0].as_bytes()).unwrap(),
            parse_line(lines[1].as_bytes()).unwrap(),
        );
        assert!(a.mac_ok(&TestMac(1)) && b.mac_ok(&TestMac(1)));
        assert!(!a.mac_ok(&TestMac(2)));
        assert_eq!((b.seq, b.prev, w.next_seq()), (6, a.mac, 7));
        assert_eq!(&b.mac, w.last_mac());
    }

    #[test]
    fn malformed_lines_are_refused_without_panicking() {
        let good = {
            let mut w = ChainWriter::new(TestMac(1), 0, GENESIS);
            let mut out = Vec::new();
            w.append(
                &mut out,
                At("1970-01-01T00:00:00.000000000Z"),
                None,
                &AuditEvent::Stop {},
            );
            out.pop();
            out
        };
        assert!(parse_line(&good).is_ok());
        for cut in 0..good.len() {
            assert!(parse_line(&good[..cut]).is_err(), "cut at {cut}");
        }
        let upper = String::from_utf8(good.clone())
            .unwrap()
            .replace("\"mac\":\"", "\"mac\":\"A");
        assert!(parse_line(upper.as_bytes()).is_err());
        for junk in [
            &b""[..],
            b"\"}",
            b"{\"mac\":\"\"}",
            b"\xff\xfe\"}",
            b"{,\"mac\":\"0000000000000000000000000000000000000000000000000000000000000000\"}",
        ] {
            assert!(parse_line(junk).is_err());
        }
    }

    #[test]
    fn hex_is_strict() {
        let m = [0xab; 32];
        assert_eq!(unhex_mac(hex(&m).as_bytes()), Some(m));
        assert_eq!(unhex_mac(hex(&m).to_uppercase().as_bytes()), None);
        assert_eq!(unhex_mac(b"00"), None);
    }
}
