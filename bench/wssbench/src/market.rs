//! `--market-data`: payloads shaped like an exchange's book snapshot (JSON, a few hundred bytes:
//! type, symbol, sequence, price levels with quantities). Compression figures measured on
//! repeated filler or random bytes say nothing about a real feed; these compress the way
//! market data does (keys and price prefixes repeat, quantities do not).
//!
//! Every number has a fixed width, so the layout for a size is fixed and each message is written
//! in one pass; what varies per message (the echo tag, the publication's stamp, quantities and
//! the price base) changes bytes, not lengths, but for the stamp, which the pad absorbs.

use std::io::Write as _;

/// Echo: where the 16 hex digits of the tag start (`{"tag":"` comes before them).
pub const TAG_OFFSET: usize = 8;
const TAG_HEAD: &str = r#"{"tag":""#;
const TAG_DIGITS: usize = 16;

/// After the head: the fixed fields, then the levels.
const FIELDS: &str = r#","type":"book","symbol":"BTC-USD","venue":"wssbench","bids":["#;
const MID: &str = r#"],"asks":["#;
/// The pad field closes the object; its value fills the message to the exact size.
const PAD_OPEN: &str = r#"],"src":""#;
const TAIL: &str = "\"}";
/// `["43251.50","1.125"]`: price with 2 decimals (8 chars), quantity with 3 (5 chars).
const LEVEL: usize = 20;
const PAD_TEXT: &[u8] = b"coinbase.binance.kraken.bitstamp.okx.bybit.";

/// Bytes of a message with `levels` price levels per side and a head of `head` bytes, pad
/// empty.
fn skeleton(head: usize, levels: usize) -> usize {
    let side = if levels == 0 {
        0
    } else {
        levels * LEVEL + (levels - 1)
    };
    head + FIELDS.len() + side + MID.len() + side + PAD_OPEN.len() + TAIL.len()
}

/// The most levels per side that fit `size` with a head of at most `head_max` bytes.
fn levels_for(size: usize, head_max: usize) -> usize {
    let mut k = 0;
    while skeleton(head_max, k + 1) <= size {
        k += 1;
    }
    k
}

/// splitmix64 step: quantities that differ per message without a generator's state.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The levels and the pad after a head already in `out` (whose message starts at `start`),
/// to exactly `size` bytes when the head leaves room.
fn body(levels: usize, seed: u64, size: usize, start: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(FIELDS.as_bytes());
    // A price base in cents between 43000.00 and 43499.99: 8 characters on both sides.
    let base = 4_300_000 + mix(seed) % 50_000;
    let level = |i: usize, ask: bool, out: &mut Vec<u8>| {
        let cents = if ask {
            base + 50 * (i as u64 + 1)
        } else {
            base - 50 * i as u64
        };
        let q = mix(seed ^ ((i as u64) << 1 | ask as u64)) % 10_000;
        let _ = write!(
            out,
            "[\"{}.{:02}\",\"{}.{:03}\"]",
            cents / 100,
            cents % 100,
            q / 1000,
            q % 1000
        );
    };
    for ask in [false, true] {
        if ask {
            out.extend_from_slice(MID.as_bytes());
        }
        for i in 0..levels {
            if i > 0 {
                out.push(b',');
            }
            level(i, ask, out);
        }
    }
    out.extend_from_slice(PAD_OPEN.as_bytes());
    let pad = size.saturating_sub(out.len() - start + TAIL.len());
    out.extend(PAD_TEXT.iter().cycle().take(pad));
    out.extend_from_slice(TAIL.as_bytes());
}

/// The smallest echo message (no levels).
pub fn echo_min() -> usize {
    skeleton(TAG_HEAD.len() + TAG_DIGITS + 1, 0)
}

/// An echo message of exactly `size` bytes (≥ [`echo_min`]), its tag zero: the caller writes
/// the tag's hex digits at [`TAG_OFFSET`].
pub fn echo_message(size: usize, seed: u64) -> Vec<u8> {
    let head = TAG_HEAD.len() + TAG_DIGITS + 1;
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(TAG_HEAD.as_bytes());
    out.extend_from_slice(&[b'0'; TAG_DIGITS]);
    out.push(b'"');
    body(levels_for(size, head), seed, size, 0, &mut out);
    out
}

/// The fan-out `data` head: `{"t":T,"n":N` (what `scan::stamp` reads).
fn stamp_head(t: u64, n: u64, out: &mut Vec<u8>) {
    let _ = write!(out, "{{\"t\":{t},\"n\":{n}");
}

/// The longest stamp head of a run whose `t` and `n` stay below these.
fn stamp_head_max(t_max: u64, n_max: u64) -> usize {
    let digits = |v: u64| v.checked_ilog10().unwrap_or(0) as usize + 1;
    r#"{"t":,"n":"#.len() + digits(t_max) + digits(n_max)
}

/// The smallest fan-out `data` for these largest `t` and `n` (the counterpart of
/// `scan::data_min`).
pub fn data_min(t_max: u64, n_max: u64) -> usize {
    skeleton(stamp_head_max(t_max, n_max), 0)
}

/// A publication's `data`: exactly `size` bytes when `size` ≥ [`data_min`] (the levels are
/// sized for the longest stamp a 100-year run could carry, so the layout never shifts).
pub fn write_data(t: u64, n: u64, size: usize, out: &mut Vec<u8>) {
    let start = out.len();
    stamp_head(t, n, out);
    let levels = levels_for(size, stamp_head_max(u64::MAX, u64::MAX));
    body(levels, n, size, start, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scan;

    #[test]
    fn echo_messages_are_json_of_the_asked_size() {
        for size in [echo_min(), 128, 300, 512, 1024, 4096] {
            let m = echo_message(size, 7);
            assert_eq!(m.len(), size, "{}", String::from_utf8_lossy(&m));
            let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
            assert_eq!(v["tag"], "0".repeat(16));
            assert_eq!(&m[TAG_OFFSET..TAG_OFFSET + 16], b"0000000000000000");
            assert_eq!(v["symbol"], "BTC-USD");
        }
        let m = echo_message(512, 7);
        let v: serde_json::Value = serde_json::from_slice(&m).unwrap();
        let bids = v["bids"].as_array().unwrap();
        assert!(bids.len() >= 8, "{v}");
        assert_eq!(bids[0][0].as_str().unwrap().len(), 8);
        // Another connection's book differs, its length does not.
        assert_ne!(echo_message(512, 8), m);
    }

    #[test]
    fn fanout_data_carries_the_stamp_at_any_size() {
        for (t, n, size) in [(0, 1, 256), (123_456_789_012, 99_999, 512), (9, 9, 1024)] {
            let mut d = Vec::new();
            write_data(t, n, size, &mut d);
            assert_eq!(d.len(), size, "{}", String::from_utf8_lossy(&d));
            let v: serde_json::Value = serde_json::from_slice(&d).unwrap();
            assert_eq!((v["t"].as_u64(), v["n"].as_u64()), (Some(t), Some(n)));
            assert_eq!(scan::stamp(&d), Some(scan::Stamp { t, n }));
        }
        // Below the room for one level: still valid JSON, exact when ≥ data_min.
        let min = data_min(10_000_000_000, 1000);
        let mut d = Vec::new();
        write_data(9_999_999_999, 999, min, &mut d);
        assert_eq!(d.len(), min);
        assert!(serde_json::from_slice::<serde_json::Value>(&d).is_ok());
    }

    #[test]
    fn compresses_like_market_data_not_like_filler() {
        use wssedge_proto::ws::deflate::MessageDeflater;
        let mut z = MessageDeflater::new(3, 15, true);
        let mut out = Vec::new();
        let m = echo_message(512, 1);
        z.compress_message(&m, &mut out);
        // Repeated keys and price prefixes: well under half; varied quantities: far from the
        // few dozen bytes a run of one letter gives.
        assert!(
            out.len() < m.len() / 2 && out.len() > m.len() / 8,
            "{}",
            out.len()
        );
    }
}
