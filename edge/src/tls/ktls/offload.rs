//! The hand-off of a completed rustls session to the kernel.
//!
//! The order matters. The `tls` ULP goes on first: until a direction has keys the socket still
//! carries plain bytes, so if the ULP is refused the session stays in userspace, untouched.
//! Only then are the secrets extracted (which consumes the rustls connection) and both
//! directions keyed; a kernel that refuses keys at that point leaves a connection nobody can
//! continue, and it is closed.

use std::os::fd::BorrowedFd;

use super::probe::KtlsSupport;
use super::secrets::{cipher_of_suite, crypto_info_of, tls_version_of};
use super::session::{record_limit, KernelParams, KernelTls};
use super::sys::{self, Direction};
use crate::bufpool::BufPool;
use crate::reason::KtlsFallback;
use crate::tls::TlsSession;

/// Why a session was not handed to the kernel.
#[derive(Debug)]
pub enum OffloadError {
    /// The session stays in userspace and goes on; `reason` is a counter label.
    Fallback {
        tls: Box<TlsSession>,
        reason: KtlsFallback,
        detail: String,
    },
    /// The secrets are gone but the kernel refused them: the connection must close.
    Broken {
        reason: KtlsFallback,
        detail: String,
    },
}

/// Hands `tls` to the kernel. The caller has checked [`TlsSession::is_quiescent`] and written
/// all output.
pub fn offload(
    tls: TlsSession,
    fd: BorrowedFd<'_>,
    pool: &mut BufPool,
    support: &KtlsSupport,
    limit_override: Option<u64>,
) -> Result<KernelTls, OffloadError> {
    let fallback = |tls, reason, detail: String| OffloadError::Fallback {
        tls: Box::new(tls),
        reason,
        detail,
    };
    let Some(negotiated) = tls.negotiated() else {
        return Err(fallback(
            tls,
            KtlsFallback::Handshaking,
            "the handshake is not complete".into(),
        ));
    };
    let (Some(version), Some(cipher)) = (
        tls_version_of(negotiated.version),
        cipher_of_suite(negotiated.suite),
    ) else {
        let detail = format!("{:?} is not offloaded", negotiated.suite.suite());
        return Err(fallback(tls, KtlsFallback::CipherUnsupported, detail));
    };
    if !support.supports(version, cipher) {
        let detail = format!(
            "the kernel does not offload TLS {} {}",
            version.name(),
            cipher.name()
        );
        return Err(fallback(tls, KtlsFallback::CipherUnsupported, detail));
    }
    if let Err(e) = sys::set_ulp_tls(fd) {
        return Err(fallback(
            tls,
            KtlsFallback::UlpFailed,
            format!("TCP_ULP tls: {e}"),
        ));
    }
    let conn = match tls.into_connection(pool) {
        Ok(conn) => conn,
        Err(tls) => {
            let detail = "the session still has records in flight".to_owned();
            return Err(fallback(*tls, KtlsFallback::NotQuiescent, detail));
        }
    };
    let broken = |reason, detail: String| OffloadError::Broken { reason, detail };
    let (secrets, kernel_conn) = conn
        .dangerous_into_kernel_connection()
        .map_err(|e| broken(KtlsFallback::SecretsUnavailable, e.to_string()))?;
    let (tx_seq, tx) = &secrets.tx;
    let (rx_seq, rx) = &secrets.rx;
    let tx = crypto_info_of(version, tx, *tx_seq)
        .map_err(|e| broken(KtlsFallback::CryptoInfo, e.to_string()))?;
    let rx = crypto_info_of(version, rx, *rx_seq)
        .map_err(|e| broken(KtlsFallback::CryptoInfo, e.to_string()))?;
    sys::set_crypto(fd, Direction::Tx, &tx)
        .map_err(|e| broken(KtlsFallback::SetsockoptFailed, format!("TLS_TX: {e}")))?;
    sys::set_crypto(fd, Direction::Rx, &rx)
        .map_err(|e| broken(KtlsFallback::SetsockoptFailed, format!("TLS_RX: {e}")))?;
    let params = KernelParams {
        version,
        cipher,
        record_limit: record_limit(negotiated.suite, limit_override),
        kernel_rekey: support.tx_rekey,
    };
    Ok(KernelTls::new(kernel_conn, params, *tx_seq, *rx_seq))
}
