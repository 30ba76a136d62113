//! TLS: rustls policy and the owned-buffer driver of its unbuffered server API.
//!
//! - [`policy`] builds the edge's `rustls::ServerConfig` (secure defaults: TLS 1.2/1.3, AEAD
//!   suites only, no 0-RTT, ALPN `http/1.1`) and loads PEM files with errors that say what to fix.
//! - [`driver`] is [`TlsSession`]: a sans-IO driver of `rustls::server::UnbufferedServerConnection`
//!   that reads ciphertext into a pooled buffer and writes records into an owned output buffer,
//!   the shape io_uring wants.
//! - [`ktls`] hands a completed session to kernel TLS and is the record layer after that.

pub mod driver;
pub mod ktls;
pub mod policy;

pub use driver::{Negotiated, TlsError, TlsSession, MAX_RECORD_LEN};
pub use policy::{load_cert_chain, load_private_key, server_config, TlsConfigError};
