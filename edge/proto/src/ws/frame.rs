//! The frame header codec (RFC 6455 §5.2): parse from and encode to bytes.
//!
//! Only the wire format lives here; protocol rules (masking required, reserved bits, control
//! frame limits, fragmentation order) are enforced by [`crate::ws::Session`].

/// Frame opcodes. Reserved values are kept so the session can refuse them precisely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
    /// 0x3–0x7 (data) or 0xB–0xF (control).
    Reserved(u8),
}

impl OpCode {
    /// Decodes the low 4 bits of `v`.
    pub fn from_u8(v: u8) -> Self {
        match v & 0x0f {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            other => Self::Reserved(other),
        }
    }

    /// The 4-bit wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
            Self::Reserved(v) => v & 0x0f,
        }
    }

    /// Control opcodes have the high bit of the nibble set (0x8–0xF).
    pub fn is_control(self) -> bool {
        self.as_u8() & 0x08 != 0
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1, RSV2, RSV3 as the 3 low bits (RSV1 = 0b100).
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

/// The only header that cannot be decoded at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// A 64-bit payload length must have its most significant bit clear (§5.2).
    #[error("64-bit payload length with the most significant bit set")]
    LengthMsbSet,
}

/// The largest header: 2 + 8 (length) + 4 (mask).
pub const MAX_HEADER_LEN: usize = 14;

/// The header length implied by the second header byte (mask bit and 7-bit length).
pub fn header_len(b1: u8) -> usize {
    let masked = b1 & 0x80 != 0;
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if masked { 4 } else { 0 }
}

/// Parses a header from the front of `buf`.
///
/// `Ok(None)`: not enough bytes yet. `Ok(Some((header, header_len)))`: the payload starts at
/// `buf[header_len]`.
pub fn parse_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, HeaderError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let hlen = header_len(buf[1]);
    if buf.len() < hlen {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let (payload_len, mut pos) = match b1 & 0x7f {
        126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(n);
            if len & (1 << 63) != 0 {
                return Err(HeaderError::LengthMsbSet);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if b1 & 0x80 != 0 {
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    debug_assert_eq!(pos, hlen);
    Ok(Some((
        FrameHeader {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 0x07,
            opcode: OpCode::from_u8(b0),
            mask,
            payload_len,
        },
        hlen,
    )))
}

/// The total length (header + payload) of the frame at the front of `buf`, as soon as the bytes
/// that carry it have arrived.
pub fn frame_len_hint(buf: &[u8]) -> Option<u64> {
    if buf.len() < 2 {
        return None;
    }
    let hlen = header_len(buf[1]) as u64;
    match buf[1] & 0x7f {
        126 if buf.len() >= 4 => Some(hlen + u64::from(u16::from_be_bytes([buf[2], buf[3]]))),
        127 if buf.len() >= 10 => {
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            hlen.checked_add(u64::from_be_bytes(n))
        }
        126 | 127 => None,
        n => Some(hlen + u64::from(n)),
    }
}

/// Encodes a header into `out`, returning its length (2, 4, 10, or +4 with a mask).
pub fn encode_header(
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: u64,
    out: &mut [u8; MAX_HEADER_LEN],
) -> usize {
    out[0] = (u8::from(fin) << 7) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut pos = if payload_len < 126 {
        out[1] = mask_bit | payload_len as u8;
        2
    } else if let Ok(n) = u16::try_from(payload_len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&n.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(m) = mask {
        out[pos..pos + 4].copy_from_slice(&m);
        pos += 4;
    }
    pos
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rfc_examples() {
        // Unmasked "Hello" from the server.
        let (h, n) = parse_header(&[0x81, 0x05, b'H']).unwrap().unwrap();
        assert_eq!(n, 2);
        assert!(h.fin);
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.payload_len, 5);
        assert_eq!(h.mask, None);
        // Masked, 256 bytes, 16-bit length.
        let b = [0x82, 0xFE, 0x01, 0x00, 1, 2, 3, 4];
        let (h, n) = parse_header(&b).unwrap().unwrap();
        assert_eq!((n, h.payload_len, h.mask), (8, 256, Some([1, 2, 3, 4])));
        assert_eq!(h.opcode, OpCode::Binary);
    }

    #[test]
    fn incomplete_headers() {
        assert_eq!(parse_header(&[]).unwrap(), None);
        assert_eq!(parse_header(&[0x81]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 0xFE, 0x01]).unwrap(), None);
        assert_eq!(parse_header(&[0x81, 0x85, 1, 2, 3]).unwrap(), None);
        assert_eq!(frame_len_hint(&[0x81]), None);
        assert_eq!(frame_len_hint(&[0x81, 0x85]), Some(11));
        assert_eq!(frame_len_hint(&[0x81, 0xFE, 0x01]), None);
        assert_eq!(frame_len_hint(&[0x81, 0xFE, 0x01, 0x00]), Some(264));
    }

    #[test]
    fn msb_length_refused() {
        let mut b = [0u8; 14];
        b[0] = 0x82;
        b[1] = 0xFF;
        b[2] = 0x80;
        assert_eq!(parse_header(&b), Err(HeaderError::LengthMsbSet));
    }

    #[test]
    fn rsv_and_reserved_opcodes() {
        let (h, _) = parse_header(&[0x73, 0x00]).unwrap().unwrap();
        assert_eq!(h.rsv, 0b111);
        assert!(!h.fin);
        assert_eq!(h.opcode, OpCode::Reserved(3));
        assert!(!h.opcode.is_control());
        assert!(OpCode::Reserved(0xB).is_control());
        assert!(OpCode::Ping.is_control());
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn encode_parse_round_trip(fin in any::<bool>(), op in 0u8..16,
                                   mask in proptest::option::of(any::<[u8; 4]>()),
                                   len in prop_oneof![0u64..130, 120u64..70000, 0u64..(1u64 << 63)]) {
            let mut out = [0u8; MAX_HEADER_LEN];
            let n = encode_header(fin, OpCode::from_u8(op), mask, len, &mut out);
            let expect = 2 + if len < 126 { 0 } else if len <= 0xffff { 2 } else { 8 }
                + if mask.is_some() { 4 } else { 0 };
            prop_assert_eq!(n, expect);
            let (h, hl) = parse_header(&out[..n]).unwrap().unwrap();
            prop_assert_eq!(hl, n);
            prop_assert_eq!(h, FrameHeader { fin, rsv: 0, opcode: OpCode::from_u8(op), mask, payload_len: len });
            prop_assert_eq!(frame_len_hint(&out[..n]), Some(n as u64 + len));
            // Every strict prefix is incomplete.
            for k in 0..n {
                prop_assert_eq!(parse_header(&out[..k]).unwrap(), None);
            }
        }
    }
}
