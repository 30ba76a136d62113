//! The WebSocket protocol, sans-IO: no sockets, no runtime, no clock. Bytes in; events and
//! frames out.
//!
//! - [`handshake`]: the HTTP/1.1 upgrade request and the 101 response.
//! - [`upstream_101`]: the edge's client side of the upgrade: its key and the check of the
//!   upstream's 101.
//! - [`target`]: the request target's one normalisation (the path every rule sees) and the
//!   `Host` check.
//! - [`extensions`]: the `Sec-WebSocket-Extensions` list grammar.
//! - [`deflate`]: permessage-deflate's negotiation and payload transform.
//! - [`frame`]: the frame header codec.
//! - [`mask`]: in-place (un)masking, a `u64` at a time.
//! - [`mask_keys`]: where a client session's masking keys come from (injected).
//! - [`utf8`]: incremental UTF-8 validation across chunks and fragments.
//! - [`session`]: the connection state machine after the 101 (server or client [`Role`]).
//! - [`outbox`]: frames waiting for socket room, handed out in pieces of any size.

pub mod deflate;
pub mod extensions;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod mask_keys;
pub mod outbox;
pub mod session;
pub mod target;
pub mod upstream_101;
pub mod utf8;
pub mod violation;

pub use frame::{encode_header, parse_header, FrameHeader, HeaderError, OpCode};
pub use handshake::{
    parse_upgrade, write_response_101, HandshakeError, HandshakeLimits, UpgradeRequest,
};
pub use mask::{apply_mask, extend_masked};
pub use mask_keys::MaskKeySource;
pub use outbox::Outbox;
pub use session::{
    close_code, Deflated, Event, Heartbeat, Inflated, Message, MessageKind, OutFrame, Payload,
    Role, Session, SessionLimits, SessionState, Timeout,
};
pub use target::{valid_host, PathPrefix, RequestTarget, TargetError};
pub use utf8::{Utf8Error, Utf8Validator};
pub use violation::Violation;

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod diff_tests;
