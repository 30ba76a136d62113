//! permessage-deflate at the edge (RFC 7692): `[compression]`, which paths negotiate it, and a
//! core's compressors.
//!
//! The protocol half (the offers, the codec, RSV1 in the session) is `wssedge_proto::ws::deflate`;
//! this room decides where it applies and owns the compressors a core shares. Every session
//! whose agreement keeps no server context (the default) compresses with its core's compressor
//! for its window: one zlib state per window size per core, however many sessions, so an idle
//! connection costs nothing more with compression than without.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use wssedge_proto::ws::deflate::{
    negotiate, ContextTakeover, DeflateAgreement, DeflateOfferError, MessageDeflater,
};
use wssedge_proto::ws::extensions::parse_extension_list;
use wssedge_proto::ws::{Deflated, MessageKind, Payload, Session, UpgradeRequest};

use crate::config_error::ConfigError;
use crate::metrics::CoreMetrics;
use crate::reason::Reason;

/// `[compression]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompressionConfig {
    /// Negotiate permessage-deflate. Absent: on for pub/sub routes, off elsewhere (a route's
    /// own `compression` decides over both).
    pub enabled: Option<bool>,
    /// Messages shorter than this go out uncompressed (RSV1 clear): below it deflate's own
    /// framing eats the gain and the CPU is spent for nothing.
    pub min_bytes: usize,
    /// Messages longer than this go out uncompressed too: a message is deflated in one go on
    /// its core, and 16 MiB at level 3 holds the core's other connections for tens of
    /// milliseconds (1 MiB: about one).
    pub max_bytes: usize,
    /// zlib level 0..=9 for what the edge sends.
    pub level: u32,
    /// Which side keeps its compression context between messages: `"none"` (no state kept, a
    /// publication compressed once for all), `"client"` or `"both"`.
    pub context_takeover: ContextTakeover,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            min_bytes: 128,
            max_bytes: 1 << 20,
            // JSON market data gets most of deflate's ratio at level 3 for a third of level
            // 6's CPU; compress-once pays it once per publication anyway.
            level: 3,
            context_takeover: ContextTakeover::None,
        }
    }
}

impl CompressionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.level > 9 {
            return Err(ConfigError::invalid(
                "compression.level",
                self.level,
                "must be 0 (store only) to 9 (smallest)",
            ));
        }
        if self.max_bytes < self.min_bytes {
            return Err(ConfigError::invalid(
                "compression.max_bytes",
                self.max_bytes,
                "must be at least compression.min_bytes (nothing would be compressed)",
            ));
        }
        Ok(())
    }

    /// Whether a path negotiates compression: its route's `compression` if it says, else
    /// `enabled` if set, else only on pub/sub routes.
    pub fn enabled_for(&self, route_says: Option<bool>, pubsub: bool) -> bool {
        route_says.or(self.enabled).unwrap_or(pubsub)
    }
}

/// The upgrade's permessage-deflate answer: `Ok(None)` when compression is off for the path, or
/// nothing acceptable was offered; a refusal (400) for an extension header that breaks the list
/// grammar or a malformed permessage-deflate offer. Off for the path, the header is not read.
pub fn negotiate_upgrade(
    cfg: &CompressionConfig,
    enabled: bool,
    request: &UpgradeRequest,
) -> Result<Option<DeflateAgreement>, Reason> {
    if !enabled || request.extensions.is_empty() {
        return Ok(None);
    }
    let offers = parse_extension_list(request.extensions.iter().map(String::as_str))
        .map_err(|_| Reason::BadExtensionHeader)?;
    negotiate(&offers, cfg.context_takeover).map_err(|e| match e {
        DeflateOfferError::UnknownParameter(_) => Reason::DeflateUnknownParameter,
        DeflateOfferError::RepeatedParameter(_) => Reason::DeflateRepeatedParameter,
        DeflateOfferError::UnexpectedValue(_) => Reason::DeflateUnexpectedValue,
        DeflateOfferError::MissingValue => Reason::DeflateMissingValue,
        DeflateOfferError::BadWindowBits(_) => Reason::DeflateBadWindowBits,
    })
}

/// How a core sends a message on a session that may have agreed to compression: the one call
/// echo, proxy and pub/sub make. Cheap to clone (a core's sessions share its compressors).
#[derive(Debug, Clone)]
pub struct Outgoing {
    compressors: Rc<RefCell<Compressors>>,
    /// Sizes that go out compressed, both ends included (`min_bytes..=max_bytes`).
    sizes: std::ops::RangeInclusive<usize>,
    metrics: Arc<CoreMetrics>,
}

impl Outgoing {
    pub fn new(cfg: &CompressionConfig, metrics: Arc<CoreMetrics>) -> Self {
        Self {
            compressors: Rc::new(RefCell::new(Compressors::new(cfg.level))),
            sizes: cfg.min_bytes..=cfg.max_bytes,
            metrics,
        }
    }

    /// Sends `payload` compressed when the session agreed to it and its size is in
    /// `min_bytes..=max_bytes`, else as it is.
    pub fn send(&self, session: &mut Session, kind: MessageKind, payload: Payload) {
        match session.deflate_params() {
            Some(p) if self.sizes.contains(&payload.len()) => {
                let mut c = self.compressors.borrow_mut();
                match session.send_deflated(kind, &payload, c.for_window(p.own_window_bits)) {
                    Deflated::NotRun => {}
                    Deflated::SentPlain => self.metrics.deflate_runs.inc(),
                    Deflated::SentCompressed(compressed) => {
                        self.metrics.deflate_runs.inc();
                        self.count(payload.len(), compressed);
                    }
                }
            }
            _ => session.send(kind, payload),
        }
    }

    fn count(&self, uncompressed: usize, compressed: usize) {
        let m = &self.metrics;
        m.deflate_out_messages.inc();
        m.deflate_out_uncompressed.add(uncompressed as u64);
        m.deflate_out_compressed.add(compressed as u64);
        m.deflate_ratio.observe(uncompressed, compressed);
    }

    /// [`Self::send`] for a frame many sessions send (a publication): compressed once per
    /// window and the compressed bytes shared, when the session keeps no context of its own.
    pub fn send_shared(&self, session: &mut Session, kind: MessageKind, frame: Bytes) {
        match session.deflate_params() {
            Some(p) if p.own_no_context_takeover && self.sizes.contains(&frame.len()) => {
                let (compressed, ran) = self
                    .compressors
                    .borrow_mut()
                    .compressed_once(&frame, p.own_window_bits);
                if ran {
                    self.metrics.deflate_runs.inc();
                }
                let len = (frame.len(), compressed.len());
                if session.send_compressed(kind, Payload::Single(frame), compressed) {
                    self.count(len.0, len.1);
                }
            }
            _ => self.send(session, kind, Payload::Single(frame)),
        }
    }
}

/// How many recently compressed shared frames a core remembers, and how many bytes they may
/// hold (originals and compressed forms): a delivery round sends each subscriber a batch of
/// publications (up to a queue's worth, `[pubsub] queue_messages` 4096 by default) and a
/// recovery replays history, so the cache must span a batch, not a frame — within a bound.
const SHARED_CACHE: usize = 4096;
const SHARED_CACHE_BYTES: usize = 32 << 20;

/// A core's shared compressors, one per window size (9..=15), made at first use. Each resets
/// after every message (no context), so any session may use it between two of its own.
#[derive(Debug)]
pub struct Compressors {
    level: u32,
    by_window: [Option<MessageDeflater>; 7],
    /// Shared frames compressed lately, by (address, length, window): the original is held
    /// with its compressed form, so its address cannot be reused by another frame meanwhile.
    shared: HashMap<(usize, usize, u8), (Bytes, Bytes)>,
    shared_order: VecDeque<(usize, usize, u8)>,
    /// Bytes the cache holds: originals and compressed forms.
    shared_bytes: usize,
}

impl Compressors {
    pub fn new(level: u32) -> Self {
        Self {
            level,
            by_window: Default::default(),
            shared: HashMap::new(),
            shared_order: VecDeque::new(),
            shared_bytes: 0,
        }
    }

    /// `frame` compressed for `window_bits`, from the cache when this core compressed it
    /// lately; and whether it was compressed now.
    fn compressed_once(&mut self, frame: &Bytes, window_bits: u8) -> (Bytes, bool) {
        let key = (frame.as_ptr() as usize, frame.len(), window_bits);
        if let Some((_, z)) = self.shared.get(&key) {
            return (z.clone(), false);
        }
        let mut out = Vec::with_capacity(frame.len() / 2 + 16);
        self.for_window(window_bits)
            .compress_message(frame, &mut out);
        let z = Bytes::from(out);
        let cost = frame.len() + z.len();
        while self.shared_order.len() >= SHARED_CACHE
            || (self.shared_bytes + cost > SHARED_CACHE_BYTES && !self.shared_order.is_empty())
        {
            let Some(old) = self.shared_order.pop_front() else {
                break;
            };
            if let Some((f, z)) = self.shared.remove(&old) {
                self.shared_bytes -= f.len() + z.len();
            }
        }
        if cost <= SHARED_CACHE_BYTES {
            self.shared.insert(key, (frame.clone(), z.clone()));
            self.shared_order.push_back(key);
            self.shared_bytes += cost;
        }
        (z, true)
    }

    /// The compressor for `window_bits` (clamped to 9..=15).
    pub fn for_window(&mut self, window_bits: u8) -> &mut MessageDeflater {
        let bits = window_bits.clamp(9, 15);
        let level = self.level;
        self.by_window[usize::from(bits - 9)]
            .get_or_insert_with(|| MessageDeflater::new(level, bits, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_route_decides_then_the_section_then_pubsub() {
        let mut c = CompressionConfig::default();
        assert!(c.enabled_for(None, true));
        assert!(!c.enabled_for(None, false));
        assert!(!c.enabled_for(Some(false), true));
        assert!(c.enabled_for(Some(true), false));
        c.enabled = Some(true);
        assert!(c.enabled_for(None, false));
        assert!(!c.enabled_for(Some(false), false));
        c.enabled = Some(false);
        assert!(!c.enabled_for(None, true));
    }

    #[test]
    fn levels_beyond_nine_are_refused() {
        let c: CompressionConfig = toml::from_str("level = 10").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("compression.level"), "{e}");
        let c: CompressionConfig =
            toml::from_str("level = 9\nmin_bytes = 0\ncontext_takeover = \"both\"").unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(c.context_takeover, ContextTakeover::Both);
        assert!(toml::from_str::<CompressionConfig>("context_takeover = \"server\"").is_err());
    }

    #[test]
    fn a_size_window_that_holds_nothing_is_refused() {
        let c: CompressionConfig = toml::from_str("min_bytes = 4096\nmax_bytes = 1024").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("compression.max_bytes"), "{e}");
        assert!(e.contains("min_bytes"), "{e}");
        let c = CompressionConfig::default();
        assert_eq!((c.min_bytes, c.max_bytes), (128, 1 << 20));
        assert!(c.validate().is_ok());
    }

    fn request(extensions: &[&str]) -> UpgradeRequest {
        let mut text = String::from(
            "GET /md HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
        );
        for e in extensions {
            text.push_str(&format!("Sec-WebSocket-Extensions: {e}\r\n"));
        }
        text.push_str("\r\n");
        let limits = wssedge_proto::ws::HandshakeLimits::default();
        wssedge_proto::ws::parse_upgrade(text.as_bytes(), &limits)
            .unwrap()
            .unwrap()
            .0
    }

    #[test]
    fn the_upgrade_is_answered_refused_or_left_alone() {
        let c = CompressionConfig::default();
        let pd = request(&["permessage-deflate; client_max_window_bits"]);
        let a = negotiate_upgrade(&c, true, &pd).unwrap().unwrap();
        assert_eq!(
            a.response_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(negotiate_upgrade(&c, false, &pd), Ok(None));
        // Several headers, quoted values.
        let two = request(&["x-foo", "permessage-deflate; server_max_window_bits=\"10\""]);
        let a = negotiate_upgrade(&c, true, &two).unwrap().unwrap();
        assert_eq!(a.server_window_bits, 10);
        for (header, reason) in [
            ("permessage-deflate; x", Reason::DeflateUnknownParameter),
            (
                "permessage-deflate; server_max_window_bits=99",
                Reason::DeflateBadWindowBits,
            ),
            ("permessage-deflate;", Reason::BadExtensionHeader),
        ] {
            assert_eq!(
                negotiate_upgrade(&c, true, &request(&[header])),
                Err(reason)
            );
            // Off for the path: not even read.
            assert_eq!(negotiate_upgrade(&c, false, &request(&[header])), Ok(None));
        }
        assert_eq!(negotiate_upgrade(&c, true, &request(&[])), Ok(None));
    }

    #[test]
    fn one_compressor_per_window() {
        let mut c = Compressors::new(3);
        let mut a = Vec::new();
        c.for_window(9).compress_message(b"abcabcabc", &mut a);
        let mut b = Vec::new();
        c.for_window(9).compress_message(b"abcabcabc", &mut b);
        assert_eq!(a, b, "no context kept between messages");
        assert_eq!(c.by_window.iter().flatten().count(), 1);
        c.for_window(8);
        c.for_window(15);
        assert_eq!(c.by_window.iter().flatten().count(), 2);
    }

    #[test]
    fn a_shared_frame_is_compressed_once_per_window() {
        let mut c = Compressors::new(3);
        let frame = Bytes::from("{\"topic\":\"trades\"}".repeat(20));
        let (a, ran) = c.compressed_once(&frame, 15);
        assert!(ran);
        let (b, ran) = c.compressed_once(&frame.clone(), 15);
        assert!(!ran);
        assert_eq!(a.as_ptr(), b.as_ptr(), "the same compressed bytes, shared");
        let (other, _) = c.compressed_once(&frame, 10);
        assert_ne!(a.as_ptr(), other.as_ptr());
        // The cache is bounded; the oldest go first.
        let frames: Vec<Bytes> = (0..SHARED_CACHE + 10)
            .map(|i| Bytes::from(format!("{i}").repeat(50)))
            .collect();
        for f in &frames {
            c.compressed_once(f, 15);
        }
        assert_eq!(c.shared.len(), SHARED_CACHE);
        assert_eq!(c.shared_order.len(), SHARED_CACHE);
        // And by bytes: frames of 1 MiB each, at most 32 MiB held.
        let mut c = Compressors::new(1);
        for i in 0..40u8 {
            c.compressed_once(&Bytes::from(vec![i; 1 << 20]), 15);
        }
        assert!(c.shared_bytes <= SHARED_CACHE_BYTES, "{}", c.shared_bytes);
        assert!(c.shared.len() >= 20, "{}", c.shared.len());
        let held: usize = c.shared.values().map(|(f, z)| f.len() + z.len()).sum();
        assert_eq!(held, c.shared_bytes);
    }
}
