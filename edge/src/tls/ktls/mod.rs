//! Kernel TLS: once rustls has completed a handshake, the connection's record encryption and
//! decryption move into the kernel (`TCP_ULP "tls"`, `TLS_TX`, `TLS_RX`) and the edge reads and
//! writes plaintext with the same io_uring/readiness path as before.
//!
//! - [`probe`]: what the running kernel can offload, found once at start.
//! - [`crypto_info`]: the kernel's `tls12_crypto_info_*` layouts (in `wssedge-proto`).
//! - [`secrets`]: rustls' suite, version and secrets → those layouts.
//! - [`sys`]: the socket options and record-typed `recvmsg`/`sendmsg`, over `wssedge_sys::ktls`.
//! - [`key_budget`]: records per key, and when to rekey, ask for the client's keys or close.
//! - [`session`]: [`KernelTls`], the record layer after the hand-off (record counts, key limits,
//!   alerts, KeyUpdate).
//! - [`offload`]: the hand-off itself.
//!
//! We use rustls' own `dangerous_into_kernel_connection` rather than the `ktls-core` crate: it
//! is the entry point rustls maintains for exactly this (secrets with their sequence numbers
//! and a [`rustls::kernel::KernelConnection`] that derives KeyUpdate secrets), it needs no
//! second TLS dependency, and the few lines of `setsockopt` glue are easier to audit in one
//! room of ours than behind another crate's I/O abstraction (which is built around tokio).

pub mod key_budget;
pub mod offload;
pub mod probe;
pub mod secrets;
pub mod session;
pub mod sys;

pub use wssedge_proto::ktls_crypto_info as crypto_info;

pub use crypto_info::{Cipher, TlsVersion};
pub use offload::{offload, OffloadError};
pub use probe::KtlsSupport;
pub use session::{ControlRecord, KernelParams, KernelTls, RekeyError};

/// `[tls] ktls`: whether connections are handed to the kernel after their handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KtlsMode {
    /// Offload where the kernel can; otherwise userspace rustls, said once at start.
    #[default]
    Auto,
    /// Refuse to start without a complete kernel offload; a connection that cannot be
    /// offloaded is closed.
    Required,
    /// Never offload.
    Off,
}

impl KtlsMode {
    pub fn name(self) -> &'static str {
        match self {
            KtlsMode::Auto => "auto",
            KtlsMode::Required => "required",
            KtlsMode::Off => "off",
        }
    }
}

/// `[tls] ktls = "required"` on a kernel that cannot offload everything the edge negotiates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "[tls] ktls = \"required\" but this kernel cannot offload every TLS version and cipher the \
     edge negotiates: {support}. Run on a kernel with kTLS (CONFIG_TLS, the tls module loaded) \
     or set [tls] ktls = \"auto\""
)]
pub struct KtlsRequiredError {
    /// What the kernel can and cannot offload ([`KtlsSupport::describe`]).
    pub support: String,
}

/// The process-wide kTLS decision: the configured mode and what the kernel can do.
#[derive(Debug, Clone)]
pub struct KtlsPolicy {
    pub mode: KtlsMode,
    pub support: KtlsSupport,
    /// `[tls] ktls_key_limit_records` (testing only).
    pub key_limit_override: Option<u64>,
}

impl KtlsPolicy {
    /// Probes the kernel (unless the mode is off). `required` without a complete offload is an
    /// error that names what is missing.
    pub fn decide(
        mode: KtlsMode,
        key_limit_override: Option<u64>,
    ) -> Result<Self, KtlsRequiredError> {
        let support = match mode {
            KtlsMode::Off => KtlsSupport::none("off by configuration ([tls] ktls = \"off\")"),
            KtlsMode::Auto | KtlsMode::Required => KtlsSupport::probe(),
        };
        if mode == KtlsMode::Required && !support.complete() {
            return Err(KtlsRequiredError {
                support: support.describe(),
            });
        }
        Ok(Self {
            mode,
            support,
            key_limit_override,
        })
    }

    /// Connections are handed to the kernel after their handshake.
    pub fn offloads(&self) -> bool {
        self.mode != KtlsMode::Off && self.support.available()
    }

    /// The start-up line: which record layer serves and why.
    pub fn log_start(&self) {
        let why = self.support.describe();
        match (self.mode, self.offloads()) {
            (KtlsMode::Off, _) => {
                tracing::info!("kTLS off: TLS records are encrypted in userspace (wssedge's record layer); {why}")
            }
            (_, true) => tracing::info!(mode = self.mode.name(), "kTLS active: {why}"),
            (_, false) => tracing::warn!(
                "kTLS unavailable, TLS records are encrypted in userspace (wssedge's record layer): {why}"
            ),
        }
    }
}

#[cfg(test)]
mod tests;
