//! permessage-deflate negotiation (RFC 7692 §7.1): the client's offers in, the one the edge
//! accepts (and the exact `Sec-WebSocket-Extensions` answer) out.
//!
//! Policy, where the RFC lets the server choose:
//! - **A malformed offer is refused** (400 with the reason), though §7 lets a server merely
//!   decline it: an unknown or repeated parameter or an out-of-range value is a client bug or a
//!   probe, and a precise refusal tells its developer what to fix, where a silent decline would
//!   leave them wondering why nothing is compressed.
//! - **A valid offer the edge cannot honour is declined** and the next offer tried:
//!   `server_max_window_bits=8` (zlib, and so every zlib-compatible backend, cannot deflate a raw
//!   stream with a 256-byte window since zlib 1.2.9).
//! - **The server keeps no deflate context** unless `context_takeover = "both"`: every message
//!   is its own stream, so a publication is compressed once and the same bytes go to every
//!   subscriber with the same window, and an idle connection holds no compressor. The answer
//!   then states `server_no_context_takeover`.
//! - **The client is asked to keep none** with `context_takeover = "none"` (the default): the
//!   answer states `client_no_context_takeover` (§7.1.1.2 allows it in an answer to any offer),
//!   so no inflate state outlives a message either.
//! - `server_max_window_bits` is echoed when offered (the edge then deflates with that window);
//!   `client_max_window_bits` is never limited: the edge inflates with the largest window, which
//!   reads a stream written with any smaller one.

use super::super::extensions::Extension;

/// The extension's registered name.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// Which side keeps its compression context from one message to the next
/// (`[compression] context_takeover`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextTakeover {
    /// Neither: no deflate or inflate state is kept between messages.
    #[default]
    None,
    /// The client keeps its deflate context (better ratio on its messages); the edge keeps an
    /// inflater per connection for it, and none of its own.
    Client,
    /// Both sides keep theirs (the best ratio, the most memory: a compressor per connection).
    Both,
}

/// What the edge agreed to for one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateAgreement {
    /// The edge resets its compressor after every message.
    pub server_no_context_takeover: bool,
    /// The client resets its compressor after every message (so the edge's inflater may too).
    pub client_no_context_takeover: bool,
    /// The window the edge deflates with (9..=15).
    pub server_window_bits: u8,
    /// The client offered `server_max_window_bits`: the answer states the window used.
    state_server_window: bool,
}

/// Why a permessage-deflate offer is refused. Each is one precise cause, answered with 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeflateOfferError {
    #[error("permessage-deflate offer: unknown parameter {0:?} (RFC 7692 §7.1)")]
    UnknownParameter(String),
    #[error("permessage-deflate offer: parameter {0} given twice")]
    RepeatedParameter(&'static str),
    #[error("permessage-deflate offer: {0} takes no value")]
    UnexpectedValue(&'static str),
    #[error("permessage-deflate offer: server_max_window_bits needs a value from 8 to 15")]
    MissingValue,
    #[error("permessage-deflate offer: {0} must be a number from 8 to 15")]
    BadWindowBits(&'static str),
}

impl DeflateOfferError {
    /// A snake_case reason code for counters, audit events and the 400's body.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::UnknownParameter(_) => "deflate_unknown_parameter",
            Self::RepeatedParameter(_) => "deflate_repeated_parameter",
            Self::UnexpectedValue(_) => "deflate_unexpected_value",
            Self::MissingValue => "deflate_missing_value",
            Self::BadWindowBits(_) => "deflate_bad_window_bits",
        }
    }
}

/// `client_max_window_bits` in an offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientWindow {
    NotOffered,
    /// Offered without a value: the client can use whatever the server answers.
    Any,
    AtMost(u8),
}

/// One permessage-deflate offer's parameters, each checked against §7.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: ClientWindow,
}

fn window_bits(name: &'static str, v: &str) -> Result<u8, DeflateOfferError> {
    // §7.1.2: a decimal integer from 8 to 15 with no leading zeros.
    match v.parse::<u8>() {
        Ok(n @ 8..=15) if !v.starts_with('0') && v.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(DeflateOfferError::BadWindowBits(name)),
    }
}

impl Offer {
    fn parse(ext: &Extension) -> Result<Self, DeflateOfferError> {
        use DeflateOfferError as E;
        let mut offer = Offer {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: None,
            client_max_window_bits: ClientWindow::NotOffered,
        };
        let mut seen = [false; 4];
        for (name, value) in &ext.params {
            const NAMES: [&str; 4] = [
                "server_no_context_takeover",
                "client_no_context_takeover",
                "server_max_window_bits",
                "client_max_window_bits",
            ];
            let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) else {
                return Err(E::UnknownParameter(name.clone()));
            };
            if std::mem::replace(&mut seen[i], true) {
                return Err(E::RepeatedParameter(NAMES[i]));
            }
            match (i, value) {
                (0 | 1, Some(_)) => return Err(E::UnexpectedValue(NAMES[i])),
                (0, None) => offer.server_no_context_takeover = true,
                (1, None) => offer.client_no_context_takeover = true,
                (2, None) => return Err(E::MissingValue),
                (2, Some(v)) => offer.server_max_window_bits = Some(window_bits(NAMES[i], v)?),
                (_, None) => offer.client_max_window_bits = ClientWindow::Any,
                (_, Some(v)) => {
                    offer.client_max_window_bits = ClientWindow::AtMost(window_bits(NAMES[i], v)?)
                }
            }
        }
        Ok(offer)
    }

    /// The agreement for this offer under `policy`, or `None` when the edge declines it.
    fn accept(&self, policy: ContextTakeover) -> Option<DeflateAgreement> {
        let server_window_bits = match self.server_max_window_bits {
            Some(8) => return None,
            Some(n) => n,
            None => 15,
        };
        let _ = self.client_max_window_bits; // never limited: see the module's notes
        Some(DeflateAgreement {
            server_no_context_takeover: policy != ContextTakeover::Both
                || self.server_no_context_takeover,
            client_no_context_takeover: policy == ContextTakeover::None
                || self.client_no_context_takeover,
            server_window_bits,
            state_server_window: self.server_max_window_bits.is_some(),
        })
    }
}

/// The first permessage-deflate offer among `offers` the edge accepts under `policy`;
/// `Ok(None)` when none was made or every one was declined. Offers are read in the client's
/// order of preference up to the accepted one; a malformed one before it refuses the upgrade.
pub fn negotiate(
    offers: &[Extension],
    policy: ContextTakeover,
) -> Result<Option<DeflateAgreement>, DeflateOfferError> {
    for ext in offers {
        if !ext.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE) {
            continue;
        }
        if let Some(agreed) = Offer::parse(ext)?.accept(policy) {
            return Ok(Some(agreed));
        }
    }
    Ok(None)
}

/// An agreement seen from one end of the connection: what a session needs to apply it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeflateParams {
    /// The peer resets its compressor after every message: our inflater may be dropped.
    pub peer_no_context_takeover: bool,
    /// We reset our compressor after every message (and may share one across connections).
    pub own_no_context_takeover: bool,
    /// The window we deflate with (9..=15).
    pub own_window_bits: u8,
    /// Our compression level (0..=9).
    pub level: u32,
}

impl DeflateAgreement {
    /// The agreement as the server (the edge facing its clients) applies it.
    pub fn server_params(&self, level: u32) -> DeflateParams {
        DeflateParams {
            peer_no_context_takeover: self.client_no_context_takeover,
            own_no_context_takeover: self.server_no_context_takeover,
            own_window_bits: self.server_window_bits,
            level,
        }
    }

    /// The `Sec-WebSocket-Extensions` value of the 101: exactly what was agreed.
    pub fn response_value(&self) -> String {
        let mut v = String::from(PERMESSAGE_DEFLATE);
        if self.server_no_context_takeover {
            v.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            v.push_str("; client_no_context_takeover");
        }
        if self.state_server_window {
            v.push_str("; server_max_window_bits=");
            v.push_str(&self.server_window_bits.to_string());
        }
        v
    }
}
