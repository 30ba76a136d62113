//! Minimal client-side WebSocket framing (RFC 6455) and the raw "message" codec of the
//! `tls`/`tcp` floors. Kept deliberately small: the load generator must cost less per
//! message than any server it measures.

use base64::Engine as _;
use sha1::{Digest, Sha1};
use wssedge_proto::ws::deflate::MessageInflater;

use crate::net::{Wire, WIRE};

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

/// `headers`: extra header lines, each ending in CRLF (e.g. `Authorization: Bearer …\r\n`).
pub fn upgrade_request(host: &str, path: &str, key: &str, headers: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: wssbench\r\n{headers}\r\n"
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

/// The values of every `name` header in a response head (case-insensitive), in order.
pub fn header_values<'a>(head: &'a [u8], name: &str) -> Vec<&'a str> {
    let Ok(head) = std::str::from_utf8(head) else {
        return Vec::new();
    };
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .collect()
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
    /// Where the tag starts in the payload.
    tag_off: usize,
    /// Compression agreed: each send deflates the message anew (the tag changes it).
    deflate: Option<Deflating>,
    counters: &'static Wire,
}

struct Deflating {
    /// The message in plaintext, tag rewritten in place.
    plain: Vec<u8>,
    window_bits: u8,
    frame: Vec<u8>,
    scratch: Vec<u8>,
}

impl FrameTemplate {
    /// A message of `payload` bytes of filler, the tag first.
    pub fn new(ws: bool, payload: usize, text: bool, mask: [u8; 4]) -> Self {
        let body = (0..payload).map(|i| b'a' + (i % 26) as u8).collect();
        Self::with_body(ws, body, 0, text, mask, None)
    }

    /// A message of `body` whose tag goes at `tag_off`; with `deflate_window` (ws only) every
    /// send is compressed for that window, RSV1 set.
    pub fn with_body(
        ws: bool,
        body: Vec<u8>,
        tag_off: usize,
        text: bool,
        mask: [u8; 4],
        deflate_window: Option<u8>,
    ) -> Self {
        let mask = if ws { mask } else { [0; 4] };
        let mut buf = Vec::with_capacity(body.len() + 14);
        if ws {
            buf.push(0x80 | if text { 0x1 } else { 0x2 });
            push_len(&mut buf, body.len(), true);
            buf.extend_from_slice(&mask);
        }
        let hdr = buf.len();
        buf.extend(body.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        let deflate = deflate_window.filter(|_| ws).map(|window_bits| Deflating {
            frame: Vec::with_capacity(body.len() + 14),
            scratch: Vec::with_capacity(body.len()),
            plain: body,
            window_bits,
        });
        FrameTemplate {
            buf,
            hdr,
            mask,
            text,
            tag_off,
            deflate,
            counters: &WIRE[0],
        }
    }

    /// Count sends into these counters.
    pub fn set_counters(&mut self, w: &'static Wire) {
        self.counters = w;
    }

    /// The whole wire message carrying `tag` at its tag offset.
    pub fn with_tag(&mut self, tag: u64) -> &[u8] {
        let mut t = [0u8; 16];
        let n = encode_tag(tag, self.text, &mut t);
        let off = self.tag_off;
        self.counters.message_sent();
        if let Some(d) = &mut self.deflate {
            d.plain[off..off + n].copy_from_slice(&t[..n]);
            d.scratch.clear();
            if crate::deflate::compress(&d.plain, d.window_bits, &mut d.scratch) {
                d.frame.clear();
                let op = if self.text { 0x1 } else { 0x2 };
                data_frame(op, true, &d.scratch, self.mask, &mut d.frame);
                return &d.frame;
            }
        }
        for (i, b) in t[..n].iter().enumerate() {
            self.buf[self.hdr + off + i] = b ^ self.mask[(off + i) & 3];
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

/// Appends one masked, final text frame carrying `payload`.
pub fn text_frame(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    data_frame(0x1, false, payload, mask, out);
}

/// Appends one masked, final data frame; `rsv1`: its payload is compressed (RFC 7692).
pub fn data_frame(op: u8, rsv1: bool, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 14);
    out.push(0x80 | if rsv1 { 0x40 } else { 0 } | op);
    push_len(out, payload.len(), true);
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
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

/// One server message as it arrived (fan-out mode: the payload is scanned, not a tag).
#[derive(Debug)]
pub enum Frame<'a> {
    Data(&'a [u8]),
    Ping(Vec<u8>),
    Close(Option<u16>),
}

/// A server frame's header.
struct Header {
    fin: bool,
    /// Compressed message (its first frame).
    rsv1: bool,
    op: u8,
    hl: usize,
    len: usize,
}

/// A server frame's header; `None`: incomplete. `rsv1_ok`: compression was agreed, so RSV1 may
/// mark a data message's first frame (never a control frame or a continuation).
fn frame_header(avail: &[u8], rsv1_ok: bool) -> Result<Option<Header>, &'static str> {
    if avail.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (avail[0], avail[1]);
    if b1 & 0x80 != 0 {
        return Err("masked server frame");
    }
    let rsv1 = b0 & 0x40 != 0;
    if b0 & 0x30 != 0 || (rsv1 && !(rsv1_ok && matches!(b0 & 0x0f, 0x1 | 0x2))) {
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
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        rsv1,
        op: b0 & 0x0f,
        hl,
        len,
    }))
}

/// An uncompressed echo arriving in pieces: its first bytes up to the end of the tag.
struct Frag {
    tag: [u8; 32],
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
    /// Fan-out mode: a fragmented message being put together (bounded by MAX_FRAME).
    assembly: Vec<u8>,
    assembling: bool,
    /// Where the echo's tag starts in its payload.
    tag_off: usize,
    /// Compression agreed: RSV1 messages are inflated here.
    inflater: Option<Box<MessageInflater>>,
    /// A compressed message's first frame arrived, its last not yet.
    inflating: bool,
    counters: &'static Wire,
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
            assembly: Vec::new(),
            assembling: false,
            tag_off: 0,
            inflater: None,
            inflating: false,
            counters: &WIRE[0],
        }
    }

    /// The echo's tag starts `off` bytes into its payload (at most 16).
    pub fn set_tag_offset(&mut self, off: usize) {
        self.tag_off = off.min(16);
    }

    /// Compression was agreed: accept RSV1 messages and inflate them; `reset_each`: the server
    /// keeps no context between messages.
    pub fn set_inflater(&mut self, reset_each: bool) {
        self.inflater = Some(Box::new(MessageInflater::new(reset_each)));
    }

    /// Count messages into these counters (the publisher's apart from the subscribers').
    pub fn set_counters(&mut self, w: &'static Wire) {
        self.counters = w;
    }

    /// A compressed message's next piece; `Some(message)` once `fin` ends it.
    fn inflate(
        inflater: &mut Option<Box<MessageInflater>>,
        counters: &Wire,
        data: &[u8],
        fin: bool,
    ) -> Result<Option<Vec<u8>>, &'static str> {
        let inf = inflater.as_mut().ok_or("reserved bits set")?;
        inf.inflate(data, MAX_FRAME)
            .map_err(|_| "bad compressed message")?;
        if !fin {
            return Ok(None);
        }
        inf.finish_message(MAX_FRAME)
            .map_err(|_| "bad compressed message")?;
        let m = inf.take_message();
        counters.message(Some(m.len()));
        Ok(Some(m))
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

    /// Takes the next complete frame off the buffer: its header and where its payload lies.
    fn take_frame(&mut self) -> Result<Option<(Header, std::ops::Range<usize>)>, &'static str> {
        let avail = &self.buf[self.start..self.end];
        let Some(h) = frame_header(avail, self.inflater.is_some())? else {
            return Ok(None);
        };
        let d0 = self.start + h.hl;
        self.start += h.hl + h.len;
        let payload = d0..d0 + h.len;
        Ok(Some((h, payload)))
    }

    /// Next complete server message, payload borrowed (fan-out mode; ws only).
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, &'static str> {
        loop {
            let Some((
                Header {
                    fin, rsv1, op, len, ..
                },
                data,
            )) = self.take_frame()?
            else {
                return Ok(None);
            };
            match op {
                0x1 | 0x2 if self.assembling || self.inflating => {
                    return Err("data frame inside a fragmented message")
                }
                0x0..=0x2 if rsv1 || (op == 0 && self.inflating) => {
                    self.inflating = !fin;
                    let piece = &self.buf[data];
                    if let Some(m) = Self::inflate(&mut self.inflater, self.counters, piece, fin)? {
                        self.assembly = m;
                        return Ok(Some(Frame::Data(&self.assembly)));
                    }
                }
                0x1 | 0x2 if fin => {
                    self.counters.message(None);
                    return Ok(Some(Frame::Data(&self.buf[data])));
                }
                0x0..=0x2 => {
                    if op == 0 && !self.assembling {
                        return Err("continuation without a message");
                    }
                    if op != 0 {
                        self.assembly.clear();
                    }
                    if self.assembly.len() + len > MAX_FRAME {
                        return Err("message too large");
                    }
                    self.assembly.extend_from_slice(&self.buf[data]);
                    self.assembling = !fin;
                    if fin {
                        self.counters.message(None);
                        return Ok(Some(Frame::Data(&self.assembly)));
                    }
                }
                0x8 => {
                    let d = &self.buf[data];
                    let code = (d.len() >= 2).then(|| u16::from_be_bytes([d[0], d[1]]));
                    return Ok(Some(Frame::Close(code)));
                }
                0x9 => return Ok(Some(Frame::Ping(self.buf[data].to_vec()))),
                0xA => {}
                _ => return Err("unknown opcode"),
            }
        }
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
            let Some((
                Header {
                    fin, rsv1, op, len, ..
                },
                data,
            )) = self.take_frame()?
            else {
                return Ok(None);
            };
            let data = &self.buf[data];
            let need = self.tag_off + tag_len(self.text);
            match op {
                0x0..=0x2 if rsv1 || (op == 0 && self.inflating) => {
                    if op != 0 && (self.frag.is_some() || self.inflating) {
                        return Err("data frame inside a fragmented message");
                    }
                    self.inflating = !fin;
                    let Some(m) = Self::inflate(&mut self.inflater, self.counters, data, fin)?
                    else {
                        continue;
                    };
                    if m.len() != self.payload || m.len() < need {
                        return Err("echo length mismatch");
                    }
                    return Ok(Some(Ev::Msg(decode_tag(&m[self.tag_off..], self.text)?)));
                }
                0x0..=0x2 => {
                    if op != 0 && (self.frag.is_some() || self.inflating) {
                        return Err("data frame inside a fragmented message");
                    }
                    let mut f = match (op, self.frag.take()) {
                        (0, Some(f)) => f,
                        (0, None) => return Err("continuation without a message"),
                        _ => Frag {
                            tag: [0; 32],
                            have: 0,
                            len: 0,
                        },
                    };
                    let take = need.saturating_sub(f.have).min(len);
                    f.tag[f.have..f.have + take].copy_from_slice(&data[..take]);
                    f.have += take;
                    f.len += len;
                    if !fin {
                        self.frag = Some(f);
                        continue;
                    }
                    self.counters.message(None);
                    if f.len != self.payload || f.have < need {
                        return Err("echo length mismatch");
                    }
                    return Ok(Some(Ev::Msg(decode_tag(
                        &f.tag[self.tag_off..],
                        self.text,
                    )?)));
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
    fn frames_for_fanout() {
        let mut r = Reader::new(true, 0, true, 64);
        let mut input = vec![0x81, 3];
        input.extend(b"abc");
        input.extend([0x01, 2]);
        input.extend(b"de");
        input.extend([0x89, 1, b'p']); // ping between fragments
        input.extend([0x80, 1, b'f']);
        input.extend([0x01, 1, b'g']); // a second fragmented message starts afresh
        input.extend([0x80, 1, b'h']);
        input.extend([0x81, 126, 0, 200]);
        input.extend([b'z'; 200]);
        input.extend([0x88, 2, 0x03, 0xf0]);
        input.extend([0x81, 5, b'x']); // incomplete
        let mut fed = 0;
        let mut got = Vec::new();
        while fed < input.len() {
            let s = r.spare();
            let n = s.len().min(input.len() - fed).min(7);
            s[..n].copy_from_slice(&input[fed..fed + n]);
            r.filled(n);
            fed += n;
            while let Some(f) = r.next_frame().unwrap() {
                got.push(match f {
                    Frame::Data(d) => String::from_utf8(d.to_vec()).unwrap(),
                    Frame::Ping(p) => format!("ping {}", String::from_utf8(p).unwrap()),
                    Frame::Close(c) => format!("close {c:?}"),
                });
            }
        }
        let want: Vec<String> = [
            "abc",
            "ping p",
            "def",
            "gh",
            &"z".repeat(200),
            "close Some(1008)",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(got, want);
        let mut bad = Reader::new(true, 0, true, 64);
        bad.spare()[..3].copy_from_slice(&[0x80, 1, b'x']);
        bad.filled(3);
        assert!(bad.next_frame().is_err(), "continuation without a message");
    }

    /// A server's compressed frame(s) of `m`: RSV1 on the first, split in `pieces`.
    fn server_compressed(op: u8, m: &[u8], pieces: usize) -> Vec<u8> {
        let mut z = wssedge_proto::ws::deflate::MessageDeflater::new(3, 15, true);
        let mut c = Vec::new();
        z.compress_message(m, &mut c);
        let step = c.len().div_ceil(pieces);
        let mut out = Vec::new();
        for (i, chunk) in c.chunks(step).enumerate() {
            let last = (i + 1) * step >= c.len();
            let b0 = if i == 0 { 0x40 | op } else { 0 };
            out.push(if last { 0x80 | b0 } else { b0 });
            push_len(&mut out, chunk.len(), false);
            out.extend_from_slice(chunk);
        }
        out
    }

    fn feed(r: &mut Reader, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let s = r.spare();
            let n = s.len().min(bytes.len());
            s[..n].copy_from_slice(&bytes[..n]);
            r.filled(n);
            bytes = &bytes[n..];
        }
    }

    #[test]
    fn compressed_echo_with_its_tag_inside_market_data() {
        let body = crate::market::echo_message(512, 9);
        let mut t = FrameTemplate::with_body(true, body, 8, true, [5, 6, 7, 8], Some(15));
        let wire = t.with_tag(0x1234_5678_9abc_def0).to_vec();
        // RSV1 + text, and smaller than the message
        assert_eq!(wire[0], 0xC1);
        assert!(wire.len() < 300, "{}", wire.len());
        // the server's view: unmask, inflate, find the tag, echo it compressed
        let plain = unmask(&wire);
        let mut inf = MessageInflater::new(true);
        inf.inflate(&plain[4..], 1 << 20).unwrap();
        inf.finish_message(1 << 20).unwrap();
        let m = inf.take_message();
        assert_eq!(&m[8..24], b"123456789abcdef0");
        for pieces in [1, 3] {
            let mut r = Reader::new(true, 512, true, 64);
            r.set_tag_offset(8);
            r.set_inflater(true);
            let echo = server_compressed(0x1, &m, pieces);
            let mut fed = 0;
            while fed < echo.len() {
                let n = 5.min(echo.len() - fed);
                feed(&mut r, &echo[fed..fed + n]);
                fed += n;
                if let Some(ev) = r.next_event().unwrap() {
                    assert!(matches!(ev, Ev::Msg(0x1234_5678_9abc_def0)), "{ev:?}");
                    assert_eq!(fed, echo.len());
                }
            }
        }
        // an uncompressed echo of the same message still reads, tag at its offset
        let mut r = Reader::new(true, 512, true, 64);
        r.set_tag_offset(8);
        r.set_inflater(true);
        let mut plain_echo = vec![0x01, 126, 0, 10];
        plain_echo.extend_from_slice(&m[..10]);
        plain_echo.extend([0x80, 126, 0x01, 0xf6]);
        plain_echo.extend_from_slice(&m[10..]);
        feed(&mut r, &plain_echo);
        assert!(matches!(
            r.next_event().unwrap(),
            Some(Ev::Msg(0x1234_5678_9abc_def0))
        ));
    }

    #[test]
    fn rsv1_only_where_the_rfc_allows_it() {
        let m = br#"{"topic":"t","seq":1,"data":{"t":5,"n":1}}"#;
        // not agreed: refused
        let mut r = Reader::new(true, 0, true, 64);
        feed(&mut r, &server_compressed(0x1, m, 1));
        assert_eq!(r.next_frame().unwrap_err(), "reserved bits set");
        // agreed: inflated, fragments and a ping between them included
        let mut r = Reader::new(true, 0, true, 256);
        r.set_inflater(true);
        let two = server_compressed(0x1, m, 2);
        let first_len = 2 + usize::from(two[1]);
        feed(&mut r, &two[..first_len]);
        feed(&mut r, &[0x89, 1, b'p']);
        feed(&mut r, &two[first_len..]);
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Ping(_))));
        assert!(matches!(r.next_frame().unwrap(), Some(Frame::Data(d)) if d == m));
        assert!(r.next_frame().unwrap().is_none());
        // on a control frame, on a continuation, and RSV2 anywhere: refused
        for bad in [
            vec![0xC9, 0],
            vec![0x01, 1, b'a', 0xC0, 1, b'b'],
            vec![0xA1, 1, b'a'],
        ] {
            let mut r = Reader::new(true, 0, true, 64);
            r.set_inflater(true);
            feed(&mut r, &bad);
            let mut res = r.next_frame();
            while let Ok(Some(_)) = res {
                res = r.next_frame();
            }
            assert!(res.is_err(), "{bad:?}");
        }
        // not DEFLATE data
        let mut r = Reader::new(true, 0, true, 64);
        r.set_inflater(true);
        feed(&mut r, &[0xC1, 2, 0xff, 0xff]);
        assert_eq!(r.next_frame().unwrap_err(), "bad compressed message");
    }

    #[test]
    fn extension_answers_in_the_head() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-extensions: permessage-deflate; server_no_context_takeover\r\nX: y\r\n\r\n";
        assert_eq!(
            header_values(head, "Sec-WebSocket-Extensions"),
            ["permessage-deflate; server_no_context_takeover"]
        );
        assert!(header_values(head, "sec-websocket-protocol").is_empty());
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
