//! Inputs shared by the micro benchmarks.

use wssedge_proto::ws::{apply_mask, encode_header, frame, OpCode};

pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A masked client frame carrying `payload`, as a browser would send it.
pub fn client_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut header = [0u8; frame::MAX_HEADER_LEN];
    let n = encode_header(true, opcode, Some(MASK), payload.len() as u64, &mut header);
    let mut out = header[..n].to_vec();
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], MASK, 0);
    out
}

/// About `len` bytes of valid UTF-8 mixing ASCII with 2-, 3- and 4-byte sequences, cut at a
/// character boundary.
pub fn text(len: usize) -> Vec<u8> {
    let unit = "trade:EUR/USD 1.0842 ✓ é 𝄞 ".as_bytes();
    let mut out: Vec<u8> = unit
        .iter()
        .copied()
        .cycle()
        .take(len.max(unit.len()))
        .collect();
    let mut cut = len.min(out.len());
    while std::str::from_utf8(&out[..cut]).is_err() {
        cut -= 1;
    }
    out.truncate(cut);
    out
}
