//! Minimal client-side WebSocket framing (RFC 6455) and the raw "message" codec of the
//! `tls`/`tcp` floors. Kept deliberately small: the load generator must cost less per
//! message than any server it measures.

use base64::Engine as _;
use sha1::{Digest, Sha1};

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Largest server frame we accept (bounded buffers).
const MAX_FRAME: usize = 16 << 20;
/// Largest upgrade response head we accept.
pub const MAX_RESPONSE_HEAD: usize = 16 << 10;

/// The `Sec-WebSocket-Accept` value the server must answer for `key`.
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// A fresh random `Sec-WebSocket-Key`.
pub fn new_key(rng: &mut Rng) -> String {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&rng.next().to_le_bytes());
    k[8..].copy_from_slice(&rng.next().to_le_bytes());
    base64::engine::general_purpose::STANDARD.encode(k)
}

pub fn upgrade_request(host: &str, path: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: wssbench\r\n\r\n"
    )
    .into_bytes()
}

/// Checks a complete-or-partial upgrade response. `Ok(Some(n))`: a valid 101 whose head is
/// `n` bytes long; `Ok(None)`: need more bytes; `Err(reason)`: refused or malformed.
pub fn check_response(buf: &[u8], accept: &str) -> Result<Option<usize>, String> {
    let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err("upgrade: response head too large".into());
        }
        return Ok(None);
    };
    let head =
        std::str::from_utf8(&buf[..pos]).map_err(|_| "upgrade: non-utf8 head".to_string())?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split(' ').nth(1).unwrap_or("?");
    if !status.starts_with("HTTP/1.1 ") || code != "101" {
        return Err(format!("upgrade: status {code}"));
    }
    let ok = lines.any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == accept
        })
    });
    if !ok {
        return Err("upgrade: bad Sec-WebSocket-Accept".into());
    }
    Ok(Some(pos + 4))
}

/// splitmix64: cheap, good enough for masks and keys (not for secrets).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ t)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn tag_len(text: bool) -> usize {
    if text {
        16
    } else {
        8
    }
}

fn encode_tag(tag: u64, text: bool, out: &mut [u8; 16]) -> usize {
    if text {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for (i, o) in out.iter_mut().enumerate() {
            *o = HEX[((tag >> (60 - 4 * i)) & 0xf) as usize];
        }
        16
    } else {
        out[..8].copy_from_slice(&tag.to_le_bytes());
        8
    }
}

fn decode_tag(b: &[u8], text: bool) -> Result<u64, &'static str> {
    if text {
        let s = std::str::from_utf8(&b[..16]).map_err(|_| "tag: not utf8")?;
        u64::from_str_radix(s, 16).map_err(|_| "tag: not hex")
    } else {
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[..8]);
        Ok(u64::from_le_bytes(t))
    }
}

/// One pre-built (pre-masked) message; only the tag bytes are rewritten per send.
pub struct FrameTemplate {
    buf: Vec<u8>,
    hdr: usize,
    mask: [u8; 4],
    text: bool,
}

impl FrameTemplate {
    pub fn new(ws: bool, payload: usize, text: bool, mask: [u8; 4]) -> Self {
        let mask = if ws { mask } else { [0; 4] };
        let mut buf = Vec::with_capacity(payload + 14);
        if ws {
            buf.push(0x80 | if text { 0x1 } else { 0x2 });
            push_len(&mut buf, payload, true);
            buf.extend_from_slice(&mask);
        }
        let hdr = buf.len();
        buf.extend((0..payload).map(|i| (b'a' + (i % 26) as u8) ^ mask[i & 3]));
        FrameTemplate {
            buf,
            hdr,
            mask,
            text,
        }
    }

    /// The whole wire message carrying `tag` in its first payload bytes.
    pub fn with_tag(&mut self, tag: u64) -> &[u8] {
        let mut t = [0u8; 16];
        let n = encode_tag(tag, self.text, &mut t);
        for (i, b) in t[..n].iter().enumerate() {
            self.buf[self.hdr + i] = b ^ self.mask[i & 3];
        }
        &self.buf
    }
}

fn push_len(buf: &mut Vec<u8>, len: usize, masked: bool) {
    let m = if masked { 0x80 } else { 0 };
    if len < 126 {
        buf.push(m | len as u8);
    } else if len <= 0xffff {
        buf.push(m | 126);
        buf.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        buf.push(m | 127);
        buf.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// A masked control frame (pong, close); `payload` ≤ 125 bytes.
pub fn control_frame(op: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    let p = &payload[..payload.len().min(125)];
    out.push(0x80 | op);
    push_len(out, p.len(), true);
    out.extend_from_slice(&mask);
    out.extend(p.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

pub const OP_CLOSE: u8 = 0x8;
pub const OP_PONG: u8 = 0xA;

#[derive(Debug)]
pub enum Ev {
    /// A complete echoed message and its tag.
    Msg(u64),
    Ping(Vec<u8>),
    Close(Option<u16>),
}

struct Frag {
    tag: [u8; 16],
    have: usize,
    len: usize,
}

/// Incoming byte buffer plus the server-frame parser.
pub struct Reader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    ws: bool,
    payload: usize,
    text: bool,
    frag: Option<Frag>,
}

impl Reader {
    pub fn new(ws: bool, payload: usize, text: bool, cap: usize) -> Self {
        Reader {
            buf: vec![0; cap.max(64)],
            start: 0,
            end: 0,
            ws,
            payload,
            text,
            frag: None,
        }
    }

    /// Free space to read into (compacts or grows as needed, bounded).
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() && self.buf.len() < MAX_FRAME + 16 {
            let n = (self.buf.len() * 2).min(MAX_FRAME + 16);
            self.buf.resize(n, 0);
        }
        &mut self.buf[self.end..]
    }

    pub fn filled(&mut self, n: usize) {
        self.end += n;
    }

    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
    }

    /// Next complete event, if the buffer holds one.
    pub fn next_event(&mut self) -> Result<Option<Ev>, &'static str> {
        loop {
            let avail = &self.buf[self.start..self.end];
            if !self.ws {
                if avail.len() < self.payload {
                    return Ok(None);
                }
                let tag = decode_tag(avail, self.text)?;
                self.start += self.payload;
                return Ok(Some(Ev::Msg(tag)));
            }
            if avail.len() < 2 {
                return Ok(None);
            }
            let (b0, b1) = (avail[0], avail[1]);
            if b1 & 0x80 != 0 {
                return Err("masked server frame");
            }
            if b0 & 0x70 != 0 {
                return Err("reserved bits set");
            }
            let (len, hl) = match b1 & 0x7f {
                126 => {
                    if avail.len() < 4 {
                        return Ok(None);
                    }
                    (u16::from_be_bytes([avail[2], avail[3]]) as usize, 4)
                }
                127 => {
                    if avail.len() < 10 {
                        return Ok(None);
                    }
                    let mut l = [0u8; 8];
                    l.copy_from_slice(&avail[2..10]);
                    let l = u64::from_be_bytes(l);
                    if l > MAX_FRAME as u64 {
                        return Err("frame too large");
                    }
                    (l as usize, 10)
                }
                n => (n as usize, 2),
            };
            if len > MAX_FRAME {
                return Err("frame too large");
            }
            if avail.len() < hl + len {
                return Ok(None);
            }
            let fin = b0 & 0x80 != 0;
            let op = b0 & 0x0f;
            let d0 = self.start + hl;
            self.start += hl + len;
            let data = &self.buf[d0..d0 + len];
            let tl = tag_len(self.text);
            match op {
                0x0..=0x2 => {
                    if op != 0 && self.frag.is_some() {
                        return Err("data frame inside a fragmented message");
                    }
                    let mut f = match (op, self.frag.take()) {
                        (0, Some(f)) => f,
                        (0, None) => return Err("continuation without a message"),
                        _ => Frag {
                            tag: [0; 16],
                            have: 0,
                            len: 0,
                        },
                    };
                    let take = (tl - f.have).min(len);
                    f.tag[f.have..f.have + take].copy_from_slice(&data[..take]);
                    f.have += take;
                    f.len += len;
                    if !fin {
                        self.frag = Some(f);
                        continue;
                    }
                    if f.len != self.payload {
                        return Err("echo length mismatch");
                    }
                    return Ok(Some(Ev::Msg(decode_tag(&f.tag, self.text)?)));
                }
                0x8 => {
                    let code = (len >= 2).then(|| u16::from_be_bytes([data[0], data[1]]));
                    return Ok(Some(Ev::Close(code)));
                }
                0x9 => return Ok(Some(Ev::Ping(data.to_vec()))),
                0xA => continue,
                _ => return Err("unknown opcode"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unmask(frame: &[u8]) -> Vec<u8> {
        // server-side view: strip header, unmask, re-frame unmasked
        let (len, hl) = match frame[1] & 0x7f {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            n => (n as usize, 2),
        };
        let mask = &frame[hl..hl + 4];
        let p: Vec<u8> = frame[hl + 4..hl + 4 + len]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        let mut out = vec![frame[0]];
        push_len(&mut out, len, false);
        out.extend(p);
        out
    }

    #[test]
    fn rfc_accept_example() {
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn roundtrip_binary_text_and_raw() {
        for (ws, text, payload) in [(true, false, 64), (true, true, 300), (false, false, 16)] {
            let mut t = FrameTemplate::new(ws, payload, text, [1, 2, 3, 4]);
            let wire = t.with_tag(0xdead_beef_1234).to_vec();
            let echoed = if ws { unmask(&wire) } else { wire };
            let mut r = Reader::new(ws, payload, text, 64);
            let mut fed = 0;
            // feed byte by byte: partial frames must wait
            loop {
                if let Some(ev) = r.next_event().unwrap() {
                    assert!(matches!(ev, Ev::Msg(0xdead_beef_1234)));
                    break;
                }
                let s = r.spare();
                s[0] = echoed[fed];
                r.filled(1);
                fed += 1;
            }
            assert_eq!(fed, echoed.len());
        }
    }

    #[test]
    fn control_and_fragments() {
        let mut r = Reader::new(true, 20, false, 64);
        let mut input = vec![0x89, 2, b'h', b'i']; // ping
        let tag = 77u64.to_le_bytes();
        input.extend([0x02, 5]);
        input.extend(&tag[..5]);
        input.extend([0x8A, 0]); // pong between fragments
        input.extend([0x80, 15]);
        input.extend(&tag[5..]);
        input.extend([0u8; 12]);
        input.extend([0x88, 2, 0x03, 0xe8]);
        r.spare()[..input.len()].copy_from_slice(&input);
        r.filled(input.len());
        assert!(matches!(r.next_event().unwrap(), Some(Ev::Ping(p)) if p == b"hi"));
        assert!(matches!(r.next_event().unwrap(), Some(Ev::Msg(77))));
        assert!(matches!(
            r.next_event().unwrap(),
            Some(Ev::Close(Some(1000)))
        ));
        assert!(r.next_event().unwrap().is_none());
    }

    #[test]
    fn response_check() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let acc = accept_for(key);
        let ok = format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-accept: {acc}\r\n\r\nXY");
        assert_eq!(check_response(ok.as_bytes(), &acc), Ok(Some(ok.len() - 2)));
        assert_eq!(check_response(&ok.as_bytes()[..20], &acc), Ok(None));
        let bad = "HTTP/1.1 429 Too Many\r\n\r\n";
        assert_eq!(
            check_response(bad.as_bytes(), &acc),
            Err("upgrade: status 429".into())
        );
        let wrong = "HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(check_response(wrong.as_bytes(), &acc).is_err());
    }
}
