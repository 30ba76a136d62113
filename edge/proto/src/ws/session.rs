//! The connection after the 101: a sans-IO WebSocket session, in the server role (the edge's
//! clients) or the client role (the edge's upstreams, see [`Role`]).
//!
//! Bytes go in through [`Session::receive`]; events come out of [`Session::poll_event`] and
//! frames to send out of [`Session::poll_transmit`]. Payloads are split off the caller's
//! `BytesMut` as `Bytes` (never copied) and handed back out the same way.
//!
//! A frame is decided from its header before its payload arrives (opcode, reserved bits,
//! masking, control-frame rules, fragmentation order, size limits). Payload bytes are unmasked
//! in place as they arrive and — for text — UTF-8-validated at once, so an invalid byte fails the
//! connection (1007) without waiting for the rest of a large frame. Per-frame progress records
//! how many payload bytes are already unmasked, so each byte is touched exactly once.
//!
//! In the client role incoming frames arrive unmasked (nothing to undo) and outgoing frames are
//! masked: the payload is copied and masked in one pass, since the caller's `Bytes` may be
//! shared (a fan-out message) and must not change. The server role stays zero-copy.
//!
//! Time goes in as an argument: a session says when it next wants the time
//! ([`Session::poll_timeout`]) and acts on it ([`Session::handle_timeout`]); the caller keeps
//! the timer. Its timers are the [`Heartbeat`] while open and, once our close is out, the wait
//! for the peer's close reply ([`Session::await_close_reply_until`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::deflate::{DeflateParams, InflateError, MessageDeflater, MessageInflater};
use super::frame::{self, FrameHeader, OpCode};
use super::mask::{apply_mask, extend_masked};
use super::mask_keys::MaskKeySource;
use super::utf8::Utf8Validator;
use super::violation::Violation;

/// Close codes of RFC 6455 §7.4.1 and the IANA registry that we use.
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
    pub const SERVICE_RESTART: u16 = 1012;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const BAD_GATEWAY: u16 = 1014;

    /// Codes a peer may put on the wire: 1000–1003, 1007–1014, 3000–4999.
    pub fn is_valid_on_wire(code: u16) -> bool {
        matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }
}

/// Which end of the connection a [`Session`] is (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// The edge facing its clients: incoming frames must be masked, outgoing ones are not.
    #[default]
    Server,
    /// The edge facing an upstream: incoming frames must not be masked (a masked one fails the
    /// connection with 1002), outgoing frames get a fresh mask each, from the session's
    /// [`MaskKeySource`].
    Client,
}

/// Bounds on what a peer may make us hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// The largest payload of one frame.
    pub max_frame_bytes: usize,
    /// The largest payload of one (possibly fragmented) message.
    pub max_message_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 << 20,
            max_message_bytes: 16 << 20,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

impl MessageKind {
    /// The opcode of a message's first frame.
    fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// A message payload: one slice, or the slices of its fragments in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Single(Bytes),
    Fragmented(Vec<Bytes>),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Self::Single(b) => b.len(),
            Self::Fragmented(v) => v.iter().map(Bytes::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A contiguous copy (tests, logging).
    pub fn to_vec(&self) -> Vec<u8> {
        match self {
            Self::Single(b) => b.to_vec(),
            Self::Fragmented(v) => v.concat(),
        }
    }

    /// The slices, in order.
    pub fn chunks(&self) -> &[Bytes] {
        match self {
            Self::Single(b) => std::slice::from_ref(b),
            Self::Fragmented(v) => v,
        }
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        Self::Single(b)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: MessageKind,
    pub payload: Payload,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message(Message),
    /// A pong with the same payload is already queued.
    Ping(Bytes),
    Pong(Bytes),
    /// The client's close was received; our reply is queued (unless we had sent close already).
    PeerClosed {
        code: Option<u16>,
        reason: String,
    },
    /// Protocol violation; our close frame (code + `reason` as its text) is queued unless one was
    /// already queued or sent. The transport flushes, then closes TCP.
    Failed {
        code: u16,
        reason: Violation,
    },
}

/// One frame to send: header bytes plus the payload slices. Server frames carry the caller's
/// slices unchanged; client frames carry one masked copy (the header then holds the key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutFrame {
    header: [u8; frame::MAX_HEADER_LEN],
    header_len: u8,
    /// The payload as given (client frames too: masking happens while it is written out).
    payload: Payload,
    /// Client role: the frame's masking key, applied by [`OutFrame::append_to`].
    mask: Option<[u8; 4]>,
    is_close: bool,
}

impl OutFrame {
    fn new(opcode: OpCode, payload: Payload) -> Self {
        let mut h = [0u8; frame::MAX_HEADER_LEN];
        let n = frame::encode_header(true, opcode, None, payload.len() as u64, &mut h);
        Self {
            header: h,
            header_len: n as u8,
            payload,
            mask: None,
            is_close: opcode == OpCode::Close,
        }
    }

    /// Marks the frame's payload as compressed (RSV1, permessage-deflate).
    fn compressed(mut self) -> Self {
        self.header[0] |= 0x40;
        self
    }

    /// A client frame: the payload stays shared; it is masked with `mask` as it is copied out
    /// by [`OutFrame::append_to`] (one pass, into the transport's buffer).
    fn masked(opcode: OpCode, payload: &Payload, mask: [u8; 4]) -> Self {
        let mut h = [0u8; frame::MAX_HEADER_LEN];
        let len = payload.len();
        let n = frame::encode_header(true, opcode, Some(mask), len as u64, &mut h);
        Self {
            header: h,
            header_len: n as u8,
            payload: payload.clone(),
            mask: Some(mask),
            is_close: opcode == OpCode::Close,
        }
    }

    fn close(code: Option<u16>, reason: &str) -> Self {
        Self::new(OpCode::Close, Payload::Single(close_payload(code, reason)))
    }

    pub fn header(&self) -> &[u8] {
        &self.header[..usize::from(self.header_len)]
    }

    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    pub fn is_close(&self) -> bool {
        self.is_close
    }

    /// A close frame carrying `code` and `reason` (cut at a character boundary to fit), for a
    /// transport that must close without a trustworthy session (after a caught panic).
    pub fn close_with(code: u16, reason: &str) -> Self {
        Self::close(Some(code), reason)
    }

    /// The wire bytes `from .. from + max` (clamped to the frame) as unmasked pieces, in order:
    /// each with its offset into the payload (`None` for header bytes). The one walk over a
    /// frame's header and payload chunks that copying and gathering share.
    fn pieces(&self, from: usize, max: usize) -> impl Iterator<Item = (Option<usize>, &[u8])> {
        let header = self.header();
        let end = self.wire_len().min(from.saturating_add(max));
        let head = (from < header.len() && from < end)
            .then(|| (None, &header[from..end.min(header.len())]));
        let mut chunk_start = header.len();
        let body = self.payload.chunks().iter().filter_map(move |c| {
            let (start, stop) = (chunk_start, chunk_start + c.len());
            chunk_start = stop;
            let (lo, hi) = (from.max(start), end.min(stop));
            (lo < hi).then(|| (Some(lo - header.len()), &c[lo - start..hi - start]))
        });
        head.into_iter().chain(body)
    }

    /// The wire bytes from byte `from` on, at most `max` of them, as slices of the header and
    /// the payload's own `Bytes` (no copy), pushed onto `out`; how many bytes they cover.
    /// `None` for a masked (client) frame, whose wire bytes exist only once masked.
    pub fn gather<'a>(
        &'a self,
        from: usize,
        max: usize,
        out: &mut Vec<std::io::IoSlice<'a>>,
    ) -> Option<usize> {
        if self.mask.is_some() {
            return None;
        }
        let mut given = 0;
        for (_, piece) in self.pieces(from, max) {
            out.push(std::io::IoSlice::new(piece));
            given += piece.len();
        }
        Some(given)
    }

    /// Appends header and payload to `out`: how a transport gathers frames for one write.
    pub fn append_to(&self, out: &mut Vec<u8>) {
        self.append_range(out, 0, usize::MAX);
    }

    /// Bytes this frame puts on the wire: header plus payload.
    pub fn wire_len(&self) -> usize {
        usize::from(self.header_len) + self.payload.len()
    }

    /// Appends at most `max` bytes of this frame's wire form, starting at byte `from` of it
    /// (the header first, then the payload, masked as it is copied for client frames). Returns
    /// how many were appended: how a transport hands a large frame to its socket in pieces.
    pub fn append_range(&self, out: &mut Vec<u8>, from: usize, max: usize) -> usize {
        let end = self.wire_len().min(from.saturating_add(max));
        if from >= end {
            return 0;
        }
        out.reserve(end - from);
        for (payload_at, piece) in self.pieces(from, max) {
            match (payload_at, self.mask) {
                (Some(at), Some(mask)) => extend_masked(out, piece, mask, at),
                _ => out.extend_from_slice(piece),
            }
        }
        end - from
    }

    /// Header and payload as one contiguous buffer (tests, simple transports).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.header().len() + self.payload.len());
        self.append_to(&mut v);
        v
    }
}

/// A close payload: the code and `reason` cut at a character boundary to fit 125 bytes.
fn close_payload(code: Option<u16>, reason: &str) -> Bytes {
    match code {
        None => Bytes::new(),
        Some(code) => {
            let reason = truncate_utf8(reason, 123);
            let mut p = Vec::with_capacity(2 + reason.len());
            p.extend_from_slice(&code.to_be_bytes());
            p.extend_from_slice(reason.as_bytes());
            Bytes::from(p)
        }
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    /// Messages flow both ways.
    Open,
    /// Our close frame is queued or sent; waiting for it to be handed out and/or for the peer's.
    CloseSent,
    /// The close handshake is complete, or the connection failed and our close frame was handed
    /// out. Nothing more will be read or sent.
    Closed,
}

/// The frame at the front of the caller's buffer whose payload has not fully arrived.
#[derive(Debug, Clone, Copy)]
struct Partial {
    header: FrameHeader,
    header_len: usize,
    /// Payload bytes already unmasked (and, for text, validated).
    done: usize,
    /// The payload is text to validate (a Text frame, or a continuation of a text message).
    text: bool,
}

/// Fragments below this size are copied together rather than kept as slices: a client
/// sending thousands of tiny fragments must not make the edge hold a slice (and the receive
/// buffer it points into) per byte.
const COALESCE_BELOW: usize = 4096;

/// What each kept slice costs beyond its bytes, charged to the buffer budget.
const PART_OVERHEAD: usize = 64;

/// A fragmented message being reassembled: large fragments kept as zero-copy slices, runs of
/// small ones copied into `small`.
#[derive(Debug)]
struct Reassembly {
    kind: MessageKind,
    parts: Vec<Bytes>,
    small: BytesMut,
    /// Payload bytes so far (the message size limit counts these).
    len: usize,
    /// A compressed message: its payload goes to the inflater as it arrives, nothing is kept
    /// here (`len` still counts the compressed bytes against the limit).
    compressed: bool,
}

impl Reassembly {
    fn new(kind: MessageKind) -> Self {
        Self {
            kind,
            parts: Vec::new(),
            small: BytesMut::new(),
            len: 0,
            compressed: false,
        }
    }

    fn push(&mut self, payload: Bytes) {
        self.len += payload.len();
        if payload.len() < COALESCE_BELOW {
            self.small.extend_from_slice(&payload);
        } else {
            self.flush_small();
            self.parts.push(payload);
        }
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
    }

    /// Memory held: payload bytes plus what each kept slice costs (a compressed message
    /// keeps nothing here: its inflater holds the inflated bytes and counts them).
    fn held(&self) -> usize {
        if self.compressed {
            return 0;
        }
        self.len + self.parts.len() * PART_OVERHEAD
    }

    fn into_payload(mut self) -> Payload {
        self.flush_small();
        match self.parts.len() {
            0 => Payload::Single(Bytes::new()),
            1 => Payload::Single(self.parts.pop().unwrap_or_default()),
            _ => Payload::Fragmented(self.parts),
        }
    }
}

/// Fresh masking keys for the client role, drawn from its [`MaskKeySource`] 16 at a time.
struct MaskKeys<S: ?Sized = dyn MaskKeySource> {
    pool: [u8; 64],
    used: usize,
    source: S,
}

impl<S: MaskKeySource> MaskKeys<S> {
    fn new(source: S) -> Self {
        Self {
            pool: [0; 64],
            used: 64,
            source,
        }
    }
}

impl MaskKeys {
    fn next(&mut self) -> [u8; 4] {
        if self.used == self.pool.len() {
            self.source.fill(&mut self.pool);
            self.used = 0;
        }
        let k = [
            self.pool[self.used],
            self.pool[self.used + 1],
            self.pool[self.used + 2],
            self.pool[self.used + 3],
        ];
        self.used += 4;
        k
    }
}

impl std::fmt::Debug for MaskKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskKeys")
            .field("used", &self.used)
            .finish_non_exhaustive()
    }
}

/// The server's heartbeat: a ping after `interval` without a byte from the peer, and a close when
/// nothing at all arrives within `pong_timeout` of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    pub interval: Duration,
    pub pong_timeout: Duration,
}

/// What a session timer did ([`Session::handle_timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A ping is queued (the peer was silent for the heartbeat's interval).
    PingSent,
    /// Nothing arrived within the pong timeout of our ping: the caller closes the session
    /// (1001 `pong_timeout`).
    PongTimeout,
    /// Our close is out and the peer's close reply did not come by its deadline: the caller
    /// closes the transport all the same.
    CloseReplyMissed,
}

/// A heartbeat's state: re-armed lazily from the time of the last input, so input never
/// touches the caller's timer.
#[derive(Debug)]
struct HeartbeatState {
    config: Heartbeat,
    /// When the peer last sent anything (any byte proves it alive).
    last_rx: Instant,
    /// When our unanswered ping went out.
    ping_sent: Option<Instant>,
    /// When the heartbeat wants the time next (`None`: not armed).
    next: Option<Instant>,
}

/// One end of a WebSocket connection, sans IO.
#[derive(Debug)]
pub struct Session {
    limits: SessionLimits,
    role: Role,
    /// Only the client role draws keys; a server session never touches the pool.
    keys: Option<Box<MaskKeys>>,
    /// Events not yet polled, each with the frame it makes us send (a pong, our close). The
    /// frame is queued only when its event is polled, so whatever the application sends in
    /// answer to the events before it goes out first: an echo of the message that preceded a
    /// protocol error is sent before the close.
    events: VecDeque<(Event, Option<OutFrame>)>,
    out: VecDeque<OutFrame>,
    partial: Option<Partial>,
    reassembly: Option<Reassembly>,
    /// Data messages completed so far (see [`Session::messages_received`]).
    messages_received: u64,
    utf8: Utf8Validator,
    wanted: Option<usize>,
    /// Our close frame is queued (or already handed out).
    close_queued: bool,
    /// Our close frame waits behind an unpolled event.
    close_pending: bool,
    /// Our close frame was handed out by `poll_transmit`.
    close_handed_out: bool,
    /// The peer's close arrived.
    peer_closed: bool,
    /// The connection failed.
    failed: bool,
    /// The code of the first close, whichever side sent it (1005 for a peer close without
    /// one): what the session ended with, for logs and audit records.
    first_close: Option<u16>,
    /// Empty non-final data frames received since the caller last took the count: they cost
    /// a parse each and complete nothing, so the caller counts them like control frames.
    empty_fragments: u32,
    /// Inflated bytes the current receive call may still produce.
    inflate_budget: usize,
    /// The server's heartbeat, when it sends one.
    heartbeat: Option<HeartbeatState>,
    /// Until when the peer's close reply is awaited once our close is out (`None`: no
    /// deadline given, or its timer consumed).
    close_reply_by: Option<Instant>,
    /// permessage-deflate, when the upgrade agreed to it (boxed: most sessions have none).
    deflate: Option<Box<DeflateState>>,
}

/// A session's permessage-deflate state. Neither codec exists while the connection is idle
/// unless a side keeps its context: the inflater is made at a compressed message's first frame
/// and dropped at its end when the peer resets after every message; our own compressor exists
/// only when we keep our context (otherwise the caller's shared one is used).
#[derive(Debug)]
struct DeflateState {
    params: DeflateParams,
    inflater: Option<Box<MessageInflater>>,
    /// The kind of the compressed message being received (the inflater holds its bytes).
    inflating: Option<MessageKind>,
    /// A compressed frame's payload not inflated yet, and whether it ends its message: a
    /// receive call stops after [`INFLATE_PER_RECEIVE`] inflated bytes and the next one goes
    /// on from here before any later frame.
    paused: Option<(Bytes, bool)>,
    deflater: Option<Box<MessageDeflater>>,
    /// Compressed messages received since the caller last took the counts.
    inflated: Inflated,
}

/// Compressed messages a session received and inflated (see [`Session::take_inflated`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Inflated {
    pub messages: u64,
    /// Their payload bytes on the wire.
    pub compressed_bytes: u64,
    /// Their bytes once inflated.
    pub inflated_bytes: u64,
}

/// What [`Session::send_deflated`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deflated {
    /// Nothing compressed: no agreement (sent as it is), or our close is queued (not sent).
    NotRun,
    /// Deflate ran and did not shrink the message: it went out as it is.
    SentPlain,
    /// Deflate ran and the message went out compressed, in this many payload bytes.
    SentCompressed(usize),
}

/// What an inflater's state costs while it exists (zlib's inflate state and its 32 KiB
/// window), charged to the buffer budget.
pub const INFLATER_BYTES: usize = 40 << 10;

/// Inflated bytes one [`Session::receive`] call produces at most (within one zlib step): 16 KiB
/// of DEFLATE can stand for 16 MiB, tens of milliseconds of one core, and its other
/// connections must not wait that long. The rest waits for the next call
/// ([`Session::inflate_paused`]); about 0.2-1 ms of inflating.
pub const INFLATE_PER_RECEIVE: usize = 256 << 10;

/// What a compressor a session keeps for itself (context takeover on its side) costs: zlib's
/// deflate state is a window of twice `2^bits` bytes with as many two-byte chain links
/// (`4 × 2^bits`), the hash heads and pending-output buffer (128 KiB at memLevel 8), and its
/// fixed state.
/// Charged to the buffer budget, so a core holds only as many of these as its budget allows.
pub fn deflater_bytes(window_bits: u8) -> usize {
    (2usize << window_bits.clamp(9, 15)) * 2 + (128 << 10) + (6 << 10)
}

impl Session {
    /// A server-role session.
    pub fn new(limits: SessionLimits) -> Self {
        Self::with_keys(limits, Role::Server, None)
    }

    /// A client-role session; its masking keys come from `keys`.
    pub fn client(limits: SessionLimits, keys: impl MaskKeySource + 'static) -> Self {
        Self::with_keys(limits, Role::Client, Some(Box::new(MaskKeys::new(keys))))
    }

    fn with_keys(limits: SessionLimits, role: Role, keys: Option<Box<MaskKeys>>) -> Self {
        Self {
            limits,
            role,
            keys,
            events: VecDeque::new(),
            out: VecDeque::new(),
            partial: None,
            reassembly: None,
            messages_received: 0,
            utf8: Utf8Validator::new(),
            wanted: None,
            close_queued: false,
            close_pending: false,
            close_handed_out: false,
            peer_closed: false,
            failed: false,
            first_close: None,
            empty_fragments: 0,
            inflate_budget: 0,
            heartbeat: None,
            close_reply_by: None,
            deflate: None,
        }
    }

    /// Applies the permessage-deflate agreement of the upgrade: compressed messages (RSV1) are
    /// accepted and inflated, and [`Session::send_deflated`] may compress.
    pub fn with_deflate(mut self, params: DeflateParams) -> Self {
        self.deflate = Some(Box::new(DeflateState {
            params,
            inflater: None,
            inflating: None,
            paused: None,
            deflater: None,
            inflated: Inflated::default(),
        }));
        self
    }

    /// The compressed messages received since the last call (then zero).
    pub fn take_inflated(&mut self) -> Inflated {
        self.deflate
            .as_deref_mut()
            .map(|d| std::mem::take(&mut d.inflated))
            .unwrap_or_default()
    }

    /// The permessage-deflate agreement in force, if any.
    pub fn deflate_params(&self) -> Option<DeflateParams> {
        self.deflate.as_ref().map(|d| d.params)
    }

    /// Adds the heartbeat, started at `now`: the first ping is due an interval from it.
    pub fn with_heartbeat(mut self, config: Heartbeat, now: Instant) -> Self {
        self.heartbeat = Some(HeartbeatState {
            config,
            last_rx: now,
            ping_sent: None,
            next: Some(now + config.interval),
        });
        self
    }

    /// The peer sent something at `now` (any byte proves it alive).
    pub fn note_received(&mut self, now: Instant) {
        if let Some(hb) = self.heartbeat.as_mut() {
            hb.last_rx = now;
        }
    }

    /// Once our close is out, the peer's close reply is awaited until `at` (the caller's one
    /// deadline for the whole close): from then [`Self::poll_timeout`] says `at`, and
    /// [`Self::handle_timeout`] at or after it reports [`Timeout::CloseReplyMissed`].
    pub fn await_close_reply_until(&mut self, at: Instant) {
        self.close_reply_by = Some(at);
    }

    /// Our close is queued and the peer's close (or a failure) has not ended the input.
    fn awaiting_close_reply(&self) -> bool {
        self.close_queued && !self.input_done()
    }

    /// When the session next wants [`Self::handle_timeout`]: while open, the heartbeat's next
    /// instant (`None` without one); once our close is out, the close reply's deadline while
    /// the reply is awaited (`None` without one).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state() != SessionState::Open {
            return self.close_reply_by.filter(|_| self.awaiting_close_reply());
        }
        self.heartbeat.as_ref().and_then(|hb| hb.next)
    }

    /// The time from [`Self::poll_timeout`] came (`now`). While open: a ping when the peer was
    /// silent for the interval, a close when our last ping went unanswered; otherwise the
    /// heartbeat is re-armed an interval after the last input. Once our close is out: the
    /// heartbeat stops, and a close reply still missing at its deadline is reported. A timer
    /// that fires is consumed: [`Self::poll_timeout`] says when the time is wanted next.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Timeout> {
        if self.state() != SessionState::Open {
            if let Some(hb) = self.heartbeat.as_mut() {
                hb.next = None;
            }
            return self.close_reply_timeout(now);
        }
        let hb = self.heartbeat.as_mut()?;
        hb.next = None;
        if let Some(sent) = hb.ping_sent.take() {
            if hb.last_rx < sent {
                return Some(Timeout::PongTimeout);
            }
        }
        let due = hb.last_rx + hb.config.interval;
        if now < due {
            hb.next = Some(due);
            return None;
        }
        hb.ping_sent = Some(now);
        hb.next = Some(now + hb.config.pong_timeout);
        self.send_ping(Bytes::new());
        Some(Timeout::PingSent)
    }

    fn close_reply_timeout(&mut self, now: Instant) -> Option<Timeout> {
        let at = self
            .close_reply_by
            .filter(|_| self.awaiting_close_reply())?;
        if now < at {
            return None;
        }
        self.close_reply_by = None;
        Some(Timeout::CloseReplyMissed)
    }

    /// No more input will be processed.
    fn input_done(&self) -> bool {
        self.peer_closed || self.failed
    }

    /// Parses as much of `buf` as possible. Complete frames are removed from the front of `buf`
    /// (payloads split off as `Bytes`, never copied). A partial frame stays in `buf`, its arrived
    /// prefix already unmasked in place and, for text, UTF-8-validated. CONTRACT: between calls
    /// the caller only APPENDS to `buf`. Returns the number of events queued.
    ///
    /// After the peer's close or a failure, input is ignored (and `buf` cleared).
    pub fn receive(&mut self, buf: &mut BytesMut) -> usize {
        let before = self.events.len();
        self.inflate_budget = INFLATE_PER_RECEIVE;
        self.resume_inflating();
        loop {
            if self.inflate_paused() {
                // Frames after a paused one wait: their order is the peer's.
                break;
            }
            if self.input_done() {
                buf.clear();
                self.partial = None;
                self.wanted = None;
                break;
            }
            let mut p = match self.partial {
                Some(p) => p,
                None => match frame::parse_header(buf) {
                    Ok(None) => {
                        self.wanted = frame::frame_len_hint(buf)
                            .and_then(|n| usize::try_from(n).ok())
                            .map(|n| n - buf.len());
                        break;
                    }
                    Err(frame::HeaderError::LengthMsbSet) => {
                        self.fail(close_code::PROTOCOL_ERROR, Violation::BadLength);
                        continue;
                    }
                    Ok(Some((header, header_len))) => match self.check_header(&header) {
                        Ok(text) => {
                            if header.opcode == OpCode::Text {
                                self.utf8.reset();
                            }
                            Partial {
                                header,
                                header_len,
                                done: 0,
                                text,
                            }
                        }
                        Err((code, reason)) => {
                            self.fail(code, reason);
                            continue;
                        }
                    },
                },
            };
            // check_header bounded the length by max_frame_bytes (a usize) or 125.
            let len = p.header.payload_len as usize;
            let arrived = buf.len().saturating_sub(p.header_len).min(len);
            if arrived > p.done {
                let fresh = &mut buf[p.header_len + p.done..p.header_len + arrived];
                if let Some(mask) = p.header.mask {
                    apply_mask(fresh, mask, p.done);
                }
                if p.text && self.utf8.feed(fresh).is_err() {
                    self.fail(close_code::INVALID_PAYLOAD, Violation::InvalidUtf8);
                    continue;
                }
                p.done = arrived;
            }
            if p.done < len {
                self.wanted = Some(len - p.done);
                self.partial = Some(p);
                break;
            }
            self.partial = None;
            buf.advance(p.header_len);
            let payload = buf.split_to(len).freeze();
            self.complete_frame(&p, payload);
        }
        self.events.len() - before
    }

    /// Applies every rule decidable from the header. Ok(is_text_payload).
    fn check_header(&self, h: &FrameHeader) -> Result<bool, (u16, Violation)> {
        use close_code::{PROTOCOL_ERROR as PE, TOO_BIG};
        let len = h.payload_len;
        // The frame size first (as tungstenite does): a huge length is refused whatever else.
        if len > self.limits.max_frame_bytes as u64 {
            return Err((TOO_BIG, Violation::FrameTooLarge));
        }
        // RSV1 marks a compressed message, on its first frame only (RFC 7692 §6): never on a
        // continuation or a control frame, never without the extension.
        let compressed = h.rsv & 0b100 != 0;
        let rsv1_allowed =
            self.deflate.is_some() && matches!(h.opcode, OpCode::Text | OpCode::Binary);
        if h.rsv & 0b011 != 0 || (compressed && !rsv1_allowed) {
            return Err((PE, Violation::ReservedBits));
        }
        match (self.role, h.mask) {
            (Role::Server, None) => return Err((PE, Violation::UnmaskedFrame)),
            (Role::Client, Some(_)) => return Err((PE, Violation::MaskedFrame)),
            _ => {}
        }
        match h.opcode {
            OpCode::Reserved(_) => Err((PE, Violation::BadOpcode)),
            OpCode::Close | OpCode::Ping | OpCode::Pong => {
                if !h.fin {
                    Err((PE, Violation::FragmentedControl))
                } else if len > 125 {
                    Err((PE, Violation::ControlTooLong))
                } else {
                    Ok(false)
                }
            }
            OpCode::Text | OpCode::Binary => {
                if self.reassembly.is_some() {
                    Err((PE, Violation::ExpectedContinuation))
                } else if len > self.limits.max_message_bytes as u64 {
                    Err((TOO_BIG, Violation::MessageTooLarge))
                } else {
                    // A compressed text message is validated once inflated.
                    Ok(h.opcode == OpCode::Text && !compressed)
                }
            }
            OpCode::Continuation => match &self.reassembly {
                None => Err((PE, Violation::UnexpectedContinuation)),
                Some(r)
                    if (r.len as u64).saturating_add(len)
                        > self.limits.max_message_bytes as u64 =>
                {
                    Err((TOO_BIG, Violation::MessageTooLarge))
                }
                Some(r) => Ok(r.kind == MessageKind::Text && !r.compressed),
            },
        }
    }

    /// Handles a frame whose payload has fully arrived, unmasked and (text) validated so far.
    fn complete_frame(&mut self, p: &Partial, payload: Bytes) {
        let fin = p.header.fin;
        if !fin && payload.is_empty() {
            self.empty_fragments = self.empty_fragments.saturating_add(1);
        }
        match p.header.opcode {
            OpCode::Text | OpCode::Binary => {
                let kind = if p.header.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                if p.header.rsv & 0b100 != 0 {
                    self.inflate_start(kind);
                    if !fin {
                        let mut r = Reassembly::new(kind);
                        r.compressed = true;
                        r.len = payload.len();
                        self.reassembly = Some(r);
                    }
                    self.inflate_piece(payload, fin);
                } else if fin {
                    if kind == MessageKind::Text && self.utf8.finish().is_err() {
                        self.fail(close_code::INVALID_PAYLOAD, Violation::InvalidUtf8);
                        return;
                    }
                    self.messages_received += 1;
                    self.push_event(Event::Message(Message {
                        kind,
                        payload: Payload::Single(payload),
                    }));
                } else {
                    let mut r = Reassembly::new(kind);
                    r.push(payload);
                    self.reassembly = Some(r);
                }
            }
            OpCode::Continuation => {
                let Some(r) = self.reassembly.as_mut() else {
                    return; // unreachable: check_header refused it
                };
                if r.compressed {
                    r.len += payload.len();
                    if fin {
                        self.reassembly = None;
                    }
                    self.inflate_piece(payload, fin);
                    return;
                }
                r.push(payload);
                if fin {
                    let Some(r) = self.reassembly.take() else {
                        return;
                    };
                    if r.kind == MessageKind::Text && self.utf8.finish().is_err() {
                        self.fail(close_code::INVALID_PAYLOAD, Violation::InvalidUtf8);
                        return;
                    }
                    let kind = r.kind;
                    let payload = r.into_payload();
                    self.messages_received += 1;
                    self.push_event(Event::Message(Message { kind, payload }));
                }
            }
            OpCode::Ping => {
                let pong = self.frame(OpCode::Pong, Payload::Single(payload.clone()));
                self.events.push_back((Event::Ping(payload), Some(pong)));
            }
            OpCode::Pong => self.push_event(Event::Pong(payload)),
            OpCode::Close => self.peer_close(&payload),
            OpCode::Reserved(_) => {} // unreachable: check_header refused it
        }
    }

    /// A compressed message begins: its inflater is made if none is kept.
    fn inflate_start(&mut self, kind: MessageKind) {
        let Some(d) = self.deflate.as_deref_mut() else {
            return; // unreachable: check_header refused RSV1 without the extension
        };
        let peer_resets = d.params.peer_no_context_takeover;
        d.inflater
            .get_or_insert_with(|| Box::new(MessageInflater::new(peer_resets)));
        d.inflating = Some(kind);
    }

    /// Goes on with a compressed frame a previous receive call paused.
    fn resume_inflating(&mut self) {
        if let Some((rest, fin)) = self.deflate.as_deref_mut().and_then(|d| d.paused.take()) {
            self.inflate_piece(rest, fin);
        }
    }

    /// Whether a compressed frame that arrived is not all inflated yet: the next
    /// [`Session::receive`] goes on with it (with or without new input), and reading more
    /// before it would only queue bytes behind it.
    pub fn inflate_paused(&self) -> bool {
        self.deflate.as_deref().is_some_and(|d| d.paused.is_some())
    }

    /// Inflates a compressed message's frame payload as it completes, up to what this receive
    /// call may still produce (the rest is paused); at the final frame the message is
    /// delivered. The message cap holds on the inflated size as it grows (1009), the text is
    /// validated as it is inflated (1007), and bad DEFLATE data fails with 1007.
    fn inflate_piece(&mut self, payload: Bytes, fin: bool) {
        let max = self.limits.max_message_bytes;
        let budget = self.inflate_budget;
        let Some(d) = self.deflate.as_deref_mut() else {
            return;
        };
        let (Some(inflater), Some(kind)) = (d.inflater.as_deref_mut(), d.inflating) else {
            return; // unreachable: inflate_start came first
        };
        let before = inflater.message().len();
        let mut done = inflater.inflate_some(&payload, max, budget);
        let mut rest = None;
        if let Ok(progress) = done {
            d.inflated.compressed_bytes += progress.consumed as u64;
            if !progress.finished {
                rest = Some(payload.slice(progress.consumed..));
            } else if fin {
                done = inflater.finish_message(max).map(|_| progress);
            }
        }
        let fresh = inflater.message().get(before..).unwrap_or_default();
        self.inflate_budget = budget.saturating_sub(fresh.len());
        let text_ok = kind != MessageKind::Text || self.utf8.feed(fresh).is_ok();
        match done {
            Err(InflateError::TooBig) => {
                return self.fail(close_code::TOO_BIG, Violation::InflatedTooLarge)
            }
            Err(InflateError::Corrupt) => {
                return self.fail(close_code::INVALID_PAYLOAD, Violation::BadCompressedData)
            }
            Ok(_) if !text_ok => {
                return self.fail(close_code::INVALID_PAYLOAD, Violation::InvalidUtf8)
            }
            Ok(_) => {}
        }
        let Some(d) = self.deflate.as_deref_mut() else {
            return;
        };
        if let Some(rest) = rest {
            d.paused = Some((rest, fin));
            return;
        }
        if !fin {
            return;
        }
        if kind == MessageKind::Text && self.utf8.finish().is_err() {
            return self.fail(close_code::INVALID_PAYLOAD, Violation::InvalidUtf8);
        }
        d.inflating = None;
        let Some(inflater) = d.inflater.as_deref_mut() else {
            return;
        };
        let out = inflater.take_message();
        if d.params.peer_no_context_takeover {
            d.inflater = None;
        }
        d.inflated.messages += 1;
        d.inflated.inflated_bytes += out.len() as u64;
        self.messages_received += 1;
        self.push_event(Event::Message(Message {
            kind,
            payload: Payload::Single(Bytes::from(out)),
        }));
    }

    fn drop_inflating(&mut self) {
        if let Some(d) = self.deflate.as_deref_mut() {
            d.paused = None;
            if d.inflating.take().is_some() {
                // Its inflater is mid-stream: useless for any later message.
                d.inflater = None;
            }
        }
    }

    fn peer_close(&mut self, payload: &[u8]) {
        let (code, reason) = match payload.len() {
            0 => (None, String::new()),
            1 => return self.fail(close_code::PROTOCOL_ERROR, Violation::BadClosePayload),
            _ => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                let Ok(reason) = std::str::from_utf8(&payload[2..]) else {
                    return self.fail(close_code::INVALID_PAYLOAD, Violation::InvalidUtf8);
                };
                if !close_code::is_valid_on_wire(code) {
                    return self.fail(close_code::PROTOCOL_ERROR, Violation::BadCloseCode);
                }
                (Some(code), reason.to_owned())
            }
        };
        self.peer_closed = true;
        self.first_close.get_or_insert(code.unwrap_or(1005));
        self.reassembly = None;
        self.drop_inflating();
        let reply = self.pending_close(code, "");
        self.events
            .push_back((Event::PeerClosed { code, reason }, reply));
    }

    /// A frame as this role sends it: the caller's slices as they are (server), or a masked copy
    /// under a fresh key (client).
    fn frame(&mut self, opcode: OpCode, payload: Payload) -> OutFrame {
        match self.keys.as_mut() {
            None => OutFrame::new(opcode, payload),
            Some(keys) => OutFrame::masked(opcode, &payload, keys.next()),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// Fails the connection: queue our close (unless one is queued already) and an event.
    fn fail(&mut self, code: u16, reason: Violation) {
        if self.input_done() {
            return;
        }
        self.failed = true;
        self.first_close.get_or_insert(code);
        self.partial = None;
        self.reassembly = None;
        self.drop_inflating();
        let close = self.pending_close(Some(code), reason.as_str());
        self.events
            .push_back((Event::Failed { code, reason }, close));
    }

    fn push_event(&mut self, event: Event) {
        self.events.push_back((event, None));
    }

    /// Our close frame, unless one is queued or pending already.
    fn pending_close(&mut self, code: Option<u16>, reason: &str) -> Option<OutFrame> {
        if self.close_queued || self.close_pending {
            return None;
        }
        self.close_pending = true;
        Some(self.frame(OpCode::Close, Payload::Single(close_payload(code, reason))))
    }

    /// The next event. Its frame (a pong, our close reply or failure close) is queued for
    /// sending now, behind whatever was sent in answer to earlier events: poll every event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let (event, frame) = self.events.pop_front()?;
        if let Some(frame) = frame {
            if frame.is_close {
                self.close_pending = false;
                if !self.close_queued {
                    self.close_queued = true;
                    self.out.push_back(frame);
                }
            } else if !self.close_queued {
                self.out.push_back(frame);
            }
        }
        Some(event)
    }

    /// Queues one unfragmented data frame (FIN set) carrying `payload` (zero-copy: the `Bytes`
    /// are kept). Ignored once our close is queued.
    pub fn send(&mut self, kind: MessageKind, payload: Payload) {
        if self.close_queued {
            return;
        }
        let f = self.frame(kind.opcode(), payload);
        self.out.push_back(f);
    }

    /// Queues `original` as one unfragmented compressed data frame (RSV1 set) carrying
    /// `compressed`, a message already deflated under this session's agreement (a publication
    /// compressed once for every subscriber with the same window). `original` goes out as it
    /// is instead when the peer could not read it (no agreement), or when deflate did not
    /// shrink it and this session keeps no compression context of its own (RFC 7692 lets each
    /// message choose; a compressor that keeps one has put the message in its window, and the
    /// peer's must see it too). Returns whether the compressed frame was queued. Ignored once
    /// our close is queued.
    pub fn send_compressed(
        &mut self,
        kind: MessageKind,
        original: Payload,
        compressed: Bytes,
    ) -> bool {
        if self.close_queued {
            return false;
        }
        let plain = self
            .deflate
            .as_deref()
            .is_none_or(|d| d.params.own_no_context_takeover && compressed.len() >= original.len());
        if plain {
            self.send(kind, original);
            return false;
        }
        let f = self
            .frame(kind.opcode(), Payload::Single(compressed))
            .compressed();
        self.out.push_back(f);
        true
    }

    /// Queues `payload` compressed under the agreement: with this session's own compressor
    /// when it keeps its context, else with `shared` (the caller's, for this session's
    /// window: see [`DeflateParams::own_window_bits`]); see [`Session::send_compressed`] for
    /// when it goes out as it is instead. Says whether deflate ran and what went out.
    pub fn send_deflated(
        &mut self,
        kind: MessageKind,
        payload: &Payload,
        shared: &mut MessageDeflater,
    ) -> Deflated {
        let Some(d) = self.deflate.as_deref_mut() else {
            self.send(kind, payload.clone());
            return Deflated::NotRun;
        };
        if self.close_queued {
            return Deflated::NotRun;
        }
        let deflater = if d.params.own_no_context_takeover {
            shared
        } else {
            let p = d.params;
            d.deflater.get_or_insert_with(|| {
                Box::new(MessageDeflater::new(p.level, p.own_window_bits, false))
            })
        };
        let mut out = Vec::with_capacity(payload.len() / 2 + 16);
        deflater.compress_parts(payload.chunks().iter().map(|c| &c[..]), &mut out);
        let len = out.len();
        if self.send_compressed(kind, payload.clone(), Bytes::from(out)) {
            Deflated::SentCompressed(len)
        } else {
            Deflated::SentPlain
        }
    }

    /// Queues a ping. Payloads longer than 125 bytes are truncated. Ignored once our close is queued.
    pub fn send_ping(&mut self, mut payload: Bytes) {
        if self.close_queued {
            return;
        }
        payload.truncate(125);
        let f = self.frame(OpCode::Ping, Payload::Single(payload));
        self.out.push_back(f);
    }

    /// Initiates a close (e.g. 1001 going away, 1013 try again later). The reason is truncated
    /// (at a character boundary) to fit 125 bytes with the code. Ignored if a close is queued.
    pub fn close(&mut self, code: u16, reason: &str) {
        self.close_with(Some(code), reason);
    }

    /// Initiates a close with `code`, or with an empty close frame (no code, no reason) for
    /// `None`: how a peer's close is passed on unchanged, an empty one included (1005 is never
    /// put on the wire). Ignored if a close is queued.
    pub fn close_with(&mut self, code: Option<u16>, reason: &str) {
        if self.close_queued || self.input_done() {
            return;
        }
        self.close_queued = true;
        self.first_close.get_or_insert(code.unwrap_or(1005));
        let f = self.frame(OpCode::Close, Payload::Single(close_payload(code, reason)));
        self.out.push_back(f);
    }

    /// The code the session ended (or is ending) with: the first close either side sent.
    pub fn close_code(&self) -> Option<u16> {
        self.first_close
    }

    /// Frees the event and frame queues once drained: an idle session keeps no storage for
    /// them.
    pub fn release_idle(&mut self) {
        super::outbox::release_if_empty(&mut self.events);
        super::outbox::release_if_empty(&mut self.out);
    }

    /// Storage the session's queues hold, in bytes (0 for an idle session after
    /// [`release_idle`](Self::release_idle)).
    pub fn queue_storage(&self) -> usize {
        self.events.capacity() * std::mem::size_of::<(Event, Option<OutFrame>)>()
            + self.out.capacity() * std::mem::size_of::<OutFrame>()
    }

    pub fn poll_transmit(&mut self) -> Option<OutFrame> {
        let f = self.out.pop_front()?;
        if f.is_close {
            self.close_handed_out = true;
        }
        Some(f)
    }

    pub fn state(&self) -> SessionState {
        if self.close_handed_out && self.input_done() {
            SessionState::Closed
        } else if self.close_queued {
            SessionState::CloseSent
        } else {
            SessionState::Open
        }
    }

    /// Bytes held in reassembly of a fragmented message (excludes the caller's buf), including
    /// what each kept fragment slice costs, and the permessage-deflate codecs the session holds.
    pub fn buffered_bytes(&self) -> usize {
        let codecs = self.deflate.as_deref().map_or(0, |d| {
            let inflating = d
                .inflater
                .as_ref()
                .map_or(0, |i| INFLATER_BYTES + i.held_bytes())
                + d.paused.as_ref().map_or(0, |(rest, _)| rest.len());
            let deflating = d
                .deflater
                .as_ref()
                .map_or(0, |_| deflater_bytes(d.params.own_window_bits));
            inflating + deflating
        });
        self.reassembly.as_ref().map_or(0, Reassembly::held) + codecs
    }

    /// Data messages the peer completed so far. A peer that streams message after message is
    /// making progress even when every read ends inside a frame; fragments and control frames
    /// do not count (a message that never ends is no progress).
    pub fn messages_received(&self) -> u64 {
        self.messages_received
    }

    /// Whether a frame or a fragmented message has begun and not completed: something the
    /// peer must finish (even a message of empty fragments, which holds no bytes).
    pub fn in_message(&self) -> bool {
        self.partial.is_some() || self.reassembly.is_some()
    }

    /// How many empty non-final data frames arrived since the last call (then zero).
    pub fn take_empty_fragments(&mut self) -> u32 {
        std::mem::take(&mut self.empty_fragments)
    }

    /// Bytes still missing to complete the frame at the front of the last buf seen, if known
    /// (from the first 2, 4 or 10 header bytes on).
    pub fn bytes_wanted(&self) -> Option<usize> {
        self.wanted
    }

    /// The arrived, already unmasked prefix of the partial frame at the front of `buf`, if any.
    pub fn partial_payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        match self.partial {
            Some(p) => buf
                .get(p.header_len..p.header_len + p.done)
                .unwrap_or_default(),
            None => &[],
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "session_deflate_tests.rs"]
mod deflate_tests;
