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

use aws_lc_rs::{digest, hmac};
use serde::Serialize;

use crate::audit::time::Timestamp;

pub(crate) type Mac = [u8; 32];

/// The `prev` of the first record of a new trail.
pub(crate) const GENESIS: Mac = [0; 32];

const MAC_FIELD: &[u8] = b",\"mac\":\"";
const PREV_FIELD: &[u8] = b",\"prev\":\"";

pub(crate) fn new_key(bytes: &[u8]) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, bytes)
}

/// Names a key without revealing it: the first 8 bytes of HMAC(key, a fixed label), in hex.
/// Written into every `open` record so a verifier can say "wrong key" rather than "edited".
pub(crate) fn key_id(key: &hmac::Key) -> String {
    hex(&hmac::sign(key, b"wssedge audit key id v1").as_ref()[..8])
}

pub(crate) fn mac(key: &hmac::Key, prev: &Mac, prefix: &[u8]) -> Mac {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(prev);
    ctx.update(prefix);
    let mut out = [0; 32];
    out.copy_from_slice(ctx.sign().as_ref());
    out
}

/// What a forger without the key might compute instead: plain SHA-256 over the same input.
pub(crate) fn unkeyed_candidates(prev: &Mac, prefix: &[u8]) -> [Mac; 2] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(prev);
    ctx.update(prefix);
    let chained = ctx.finish();
    let alone = digest::digest(&digest::SHA256, prefix);
    let mut out = [[0; 32]; 2];
    out[0].copy_from_slice(chained.as_ref());
    out[1].copy_from_slice(alone.as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
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
pub(crate) fn unhex_mac(text: &[u8]) -> Option<Mac> {
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
pub(crate) struct ChainWriter {
    key: hmac::Key,
    next_seq: u64,
    prev: Mac,
}

impl ChainWriter {
    pub(crate) fn new(key: hmac::Key, next_seq: u64, prev: Mac) -> Self {
        ChainWriter {
            key,
            next_seq,
            prev,
        }
    }

    pub(crate) fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub(crate) fn last_mac(&self) -> &Mac {
        &self.prev
    }

    /// Appends one complete line (with its `\n`) to `out` and advances the chain.
    pub(crate) fn append(
        &mut self,
        out: &mut Vec<u8>,
        ts: Timestamp,
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
        let m = mac(&self.key, &self.prev, &out[start..]);
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
pub(crate) struct ParsedLine<'a> {
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
    pub(crate) fn str_field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).and_then(|v| v.as_str())
    }

    pub(crate) fn u64_field(&self, name: &str) -> Option<u64> {
        self.fields.get(name).and_then(|v| v.as_u64())
    }

    pub(crate) fn mac_ok(&self, key: &hmac::Key) -> bool {
        let expected = mac(key, &self.prev, self.prefix);
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &self.mac).is_ok()
    }
}

/// Takes a line apart, or says in a few words why it is not an audit record. Never panics.
pub(crate) fn parse_line(line: &[u8]) -> Result<ParsedLine<'_>, &'static str> {
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
    use crate::audit::record::AuditEvent;

    #[test]
    fn a_line_round_trips_and_verifies_from_its_text_alone() {
        let mut w = ChainWriter::new(new_key(&[7; 32]), 41, [9; 32]);
        let mut out = Vec::new();
        let ev = AuditEvent::Accept {
            peer: "192.0.2.1:5000".into(),
        };
        w.append(
            &mut out,
            Timestamp::from_parts(1_700_000_000, 5),
            Some(3),
            &ev,
        );
        w.append(
            &mut out,
            Timestamp::from_parts(1_700_000_000, 6),
            None,
            &AuditEvent::Stop {},
        );
        let text = String::from_utf8(out.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with(r#"{"seq":41,"ts":"2023-11-14T22:13:20.000000005Z","core":3,"event":"accept","peer":"192.0.2.1:5000","prev":"0909"#), "{}", lines[0]);
        assert!(lines[1].contains(r#""core":null,"event":"stop","prev":""#));
        let key = new_key(&[7; 32]);
        let a = parse_line(lines[0].as_bytes()).unwrap();
        let b = parse_line(lines[1].as_bytes()).unwrap();
        assert!(a.mac_ok(&key) && b.mac_ok(&key));
        assert_eq!((a.seq, b.seq), (41, 42));
        assert_eq!(a.prev, [9; 32]);
        assert_eq!(b.prev, a.mac);
        assert_eq!(&b.mac, w.last_mac());
        assert_eq!(a.event, "accept");
        // Each line is valid JSON as a whole, too.
        for l in &lines {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            assert_eq!(v["mac"].as_str().unwrap().len(), 64);
        }
        assert!(!a.mac_ok(&new_key(&[8; 32])));
    }

    #[test]
    fn malformed_lines_are_refused_without_panicking() {
        let good = {
            let mut w = ChainWriter::new(new_key(&[1; 32]), 0, GENESIS);
            let mut out = Vec::new();
            w.append(
                &mut out,
                Timestamp::from_parts(0, 0),
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
