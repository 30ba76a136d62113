//! Userspace TLS records after the handshake, from the secrets rustls hands over: the twin of
//! the kTLS hand-off for the sessions the kernel does not take, so that a frame is copied once
//! — into its record — and sealed there.

pub mod protect;
pub mod session;

pub use session::SoftTls;

use crate::bufpool::BufPool;
use crate::tls::ktls::secrets::tls_version_of;
use crate::tls::ktls::session::record_limit;
use crate::tls::TlsSession;

/// Why the records stay with rustls (or the connection cannot go on).
#[derive(Debug)]
pub enum TakeOverError {
    /// Not now: records are still in flight, or the session is not one we can take (the
    /// session is given back, untouched).
    NotYet(Box<TlsSession>),
    /// The secrets were taken but could not be used: the connection must close.
    Broken(String),
}

/// Takes `tls`'s records over once its handshake is done and nothing is in flight.
/// `limit_override`: `[tls] ktls_key_limit_records` (testing), which bounds these keys too.
pub fn take_over(
    tls: TlsSession,
    pool: &mut BufPool,
    limit_override: Option<u64>,
) -> Result<SoftTls, TakeOverError> {
    let Some(negotiated) = tls.negotiated() else {
        return Err(TakeOverError::NotYet(Box::new(tls)));
    };
    let Some(version) = tls_version_of(negotiated.version) else {
        return Err(TakeOverError::NotYet(Box::new(tls)));
    };
    let conn = tls.into_connection(pool).map_err(TakeOverError::NotYet)?;
    let (secrets, kernel_conn) = conn
        .dangerous_into_kernel_connection()
        .map_err(|e| TakeOverError::Broken(e.to_string()))?;
    SoftTls::new(
        kernel_conn,
        version,
        secrets.tx,
        secrets.rx,
        record_limit(negotiated.suite, limit_override),
    )
    .map_err(TakeOverError::Broken)
}

#[cfg(test)]
mod tests;
