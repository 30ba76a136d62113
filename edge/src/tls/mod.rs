//! TLS: rustls policy and the owned-buffer driver of its unbuffered server API.
//!
//! - [`policy`] builds the edge's `rustls::ServerConfig` (secure defaults: TLS 1.2/1.3, AEAD
//!   suites only, no 0-RTT, ALPN `http/1.1`) and loads PEM files with errors that say what to fix.
//! - [`driver`] is [`TlsSession`]: a sans-IO driver of `rustls::server::UnbufferedServerConnection`
//!   that reads ciphertext into a pooled buffer and writes records into an owned output buffer,
//!   the shape io_uring wants.
//! - [`ktls`] hands a completed session to kernel TLS and is the record layer after that.
//! - [`record_layer`] is one connection's record layer either way: the hand-off and the kernel
//!   keys' life.
//! - [`settings`] is the `[tls]` section; [`sni`] picks a certificate by SNI.
//! - [`identity`] is the verified client identity of mutual TLS, [`identity::rules`] the
//!   rules mapping identities to paths;
//!   [`crl`] loads and watches the CRLs the client verifier and live sessions are checked
//!   against.
//! - [`devcert`] is the development certificate: a local CA and the `localhost` leaf it signs,
//!   kept in the state directory.

pub mod crl;
pub mod devcert;
pub mod driver;
#[cfg(test)]
pub(crate) mod handshaken;
pub mod identity;
pub mod ktls;
pub mod policy;
pub(crate) mod pooled_input;
pub(crate) mod record_layer;
pub mod settings;
pub mod sni;
pub mod soft;
#[cfg(test)]
pub(crate) mod testpki;
pub use wssedge_proto::tls_wire as wire;

pub use crl::{CrlSet, CrlWatcher};
pub use driver::{Negotiated, TlsError, TlsSession, MAX_RECORD_LEN};
pub use identity::{ClientIdentity, IdentityRefusal, IdentityRules};
pub use policy::{
    build_server_config, load_cert_chain, load_private_key, server_config, TlsConfigError,
};
pub use settings::{ClientAuth, Resumption, SniCert, TlsSettings};
