//! The trail's HMAC key and what only a real key can do; the line format itself is
//! [`wssedge_proto::audit_chain`].

use aws_lc_rs::{digest, hmac};

pub(crate) use wssedge_proto::audit_chain::{hex, parse_line, Mac, ParsedLine, GENESIS};
use wssedge_proto::audit_chain::{ChainMac, RecordTime};

use crate::audit::time::Timestamp;

/// The chain's writer under the edge's key.
pub(crate) type ChainWriter = wssedge_proto::audit_chain::ChainWriter<ChainKey>;

/// The trail's HMAC-SHA256 key.
pub(crate) struct ChainKey(hmac::Key);

impl ChainMac for ChainKey {
    fn mac(&self, prev: &Mac, prefix: &[u8]) -> Mac {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(prev);
        ctx.update(prefix);
        let mut out = [0; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    fn verify(&self, prev: &Mac, prefix: &[u8], mac: &Mac) -> bool {
        let expected = self.mac(prev, prefix);
        aws_lc_rs::constant_time::verify_slices_are_equal(&expected, mac).is_ok()
    }
}

impl RecordTime for Timestamp {
    fn write_rfc3339(&self, out: &mut Vec<u8>) {
        Timestamp::write_rfc3339(self, out)
    }
}

pub(crate) fn new_key(bytes: &[u8]) -> ChainKey {
    ChainKey(hmac::Key::new(hmac::HMAC_SHA256, bytes))
}

/// Names a key without revealing it: the first 8 bytes of HMAC(key, a fixed label), in hex.
/// Written into every `open` record so a verifier can say "wrong key" rather than "edited".
pub(crate) fn key_id(key: &ChainKey) -> String {
    hex(&hmac::sign(&key.0, b"wssedge audit key id v1").as_ref()[..8])
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
}
