//! TLS wire numbers (RFC 8446 / RFC 5246) shared by the userspace driver and the kernel
//! record layer: record content types, alert levels and descriptions, handshake types,
//! versions, and the record size limit.

/// Record content types.
pub const CONTENT_ALERT: u8 = 21;
pub const CONTENT_HANDSHAKE: u8 = 22;
pub const CONTENT_APPLICATION_DATA: u8 = 23;

/// Alert levels and the descriptions the edge sends or recognises.
pub const ALERT_WARNING: u8 = 1;
pub const ALERT_FATAL: u8 = 2;
pub const ALERT_CLOSE_NOTIFY: u8 = 0;
pub const ALERT_PROTOCOL_VERSION: u8 = 70;

/// Handshake message types.
pub const HANDSHAKE_CLIENT_HELLO: u8 = 1;
pub const HANDSHAKE_KEY_UPDATE: u8 = 24;

/// `KeyUpdate.request_update`.
pub const KEY_UPDATE_NOT_REQUESTED: u8 = 0;
pub const KEY_UPDATE_REQUESTED: u8 = 1;

/// Protocol versions as they appear on the wire (and in `<linux/tls.h>`).
pub const TLS12: u16 = 0x0303;
pub const TLS13: u16 = 0x0304;

/// Plaintext bytes per record (2^14): larger writes are split into records of this size.
pub const MAX_PLAINTEXT_PER_RECORD: usize = 16 * 1024;
