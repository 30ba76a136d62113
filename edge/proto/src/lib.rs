//! wssedge-proto: the edge's sans-IO core. Bytes, instants and configuration go in; events,
//! bytes to send and verdicts come out. No sockets, no runtime, no clock reads, no randomness
//! (a client session's masking keys come from a source its caller hands in).
//!
//! - [`audit_chain`]: the audit trail's HMAC chain — how a line is built and taken apart.
//! - [`audit_record`]: what an audit record says (the event fields inside the chain's
//!   envelope).
//! - [`jwt`]: bearer tokens at the upgrade — where they are found, compact JWS verification
//!   on aws-lc-rs, claims, scopes per path, keys from the bytes of their files.
//! - [`ws_url`]: the `ws://`/`wss://` URLs the edge connects to (upstream members, feeds).
//! - [`ws`]: the WebSocket protocol — upgrade parsing, frame codec, the session (both roles).
//! - [`ktls_crypto_info`]: the kernel's `tls12_crypto_info_*` layouts for `setsockopt(SOL_TLS)`.
//! - [`limits`]: rates and token buckets in integers, fed instants by their caller.
//! - [`origin`]: the `Host` and `Origin` allow-lists.
//! - [`pubsub`]: market-data pub/sub — `[pubsub]`, topic names, the client protocol, each
//!   topic's sequence and history ring, a subscriber's bounded queue of shared frames.
//! - [`tls_wire`]: TLS wire numbers shared by the userspace driver and the kernel record layer.
//! - [`trace_context`]: W3C `traceparent`, read from the upgrade request and sent upstream.
//!
//! `attack_spellings` (hidden) is a test corpus, public only so that the end-to-end suite
//! shares it.

#![forbid(unsafe_code)]
// Clock reads are refused by this crate's clippy.toml; tests may take an instant to start from.
#![cfg_attr(test, allow(clippy::disallowed_methods))]

#[doc(hidden)]
pub mod attack_spellings;
pub mod audit_chain;
pub mod audit_record;
pub mod config_list;
pub mod jwt;
pub mod ktls_crypto_info;
pub mod limits;
pub mod origin;
pub mod pubsub;
pub mod tls_hello;
pub mod tls_wire;
pub mod trace_context;
pub mod ws;
pub mod ws_url;
