//! A connection whose records the kernel encrypts and decrypts.
//!
//! [`KernelTls`] keeps what is left of rustls after the hand-off (the [`KernelConnection`] that
//! derives new traffic secrets), a pooled read buffer only while there is something to read,
//! the plaintext queued for the socket, and the record counts the kernel does not keep:
//! nothing in the kernel enforces a suite's confidentiality limit, so we count records per
//! direction and rekey (TLS 1.3 on kernels that can) or close before the limit.
//! When to rekey, ask for the client's new keys or close is [`KeyBudget`]'s to say.
//!
//! Counting: the counts start at the sequence numbers carried over from rustls. Between checks
//! they are estimates — a write of `n` bytes is at least `ceil(n / 2^14)` records (the kernel
//! cuts at 2^14 and closes the last record at the end of the call; short writes can add one),
//! and a read of `n` bytes at least `ceil(n / 2^14)` (the kernel merges records into one read, so
//! a client sending tiny records is undercounted). Every [`SYNC_EVERY`] reads and writes, and
//! whenever an estimate reaches the threshold, the counts are replaced by the kernel's own
//! record sequence numbers (`getsockopt(SOL_TLS, TLS_TX/TLS_RX)`), which are exact.

use std::io;
use std::os::fd::BorrowedFd;

use bytes::BytesMut;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;

use super::crypto_info::{Cipher, TlsVersion};
use super::key_budget::KeyBudget;
use super::secrets::crypto_info_of;
use super::sys::{self, Direction};
use crate::bufpool::BufPool;
use crate::reason::Reason;
use crate::tls::pooled_input::{free_if_empty, PooledInput};
use crate::tls::wire::{
    ALERT_CLOSE_NOTIFY, ALERT_FATAL, ALERT_WARNING, CONTENT_ALERT, CONTENT_APPLICATION_DATA,
    CONTENT_HANDSHAKE, HANDSHAKE_KEY_UPDATE, KEY_UPDATE_NOT_REQUESTED, KEY_UPDATE_REQUESTED,
    MAX_PLAINTEXT_PER_RECORD,
};
use crate::tls::TlsError;

/// Reads plus writes between two exact counts from the kernel.
pub const SYNC_EVERY: u32 = 64;

/// Plaintext bytes per TLS record, as the counts need them.
const MAX_RECORD_PLAINTEXT: u64 = MAX_PLAINTEXT_PER_RECORD as u64;

/// What the kernel session needs to know about the connection it takes over.
#[derive(Debug, Clone, Copy)]
pub struct KernelParams {
    pub version: TlsVersion,
    pub cipher: Cipher,
    /// Records per key before the connection must rekey or close.
    pub record_limit: u64,
    /// The kernel can set TLS 1.3 keys again on a live socket.
    pub kernel_rekey: bool,
}

/// What a non-data record meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRecord {
    /// Handled (application data found after all); keep reading.
    Handled,
    /// The client's KeyUpdate, followed on RX; `requested`: it asked for ours in return.
    KeyUpdate { requested: bool },
    /// close_notify: the client sends nothing more.
    CloseNotify,
    /// A fatal alert or a record that cannot be taken: close at once. The reason is a counter
    /// label.
    Fatal(Reason),
    /// The client updated its keys and the kernel cannot follow: close with 1001.
    RekeyUnsupported,
}

impl ControlRecord {
    /// The label of `wssedge_ktls_alerts_total` when the record was an alert.
    pub fn alert_kind(&self) -> Option<&'static str> {
        match self {
            ControlRecord::CloseNotify => Some("close_notify"),
            ControlRecord::Fatal(Reason::TlsAlertReceived) => Some("fatal"),
            ControlRecord::Fatal(Reason::TlsAlertUnexpected) => Some("other"),
            _ => None,
        }
    }
}

/// The record layer of a connection after the kTLS hand-off.
pub struct KernelTls {
    conn: KernelConnection<ServerConnectionData>,
    params: KernelParams,
    /// Records under the current keys, and what they call for.
    budget: KeyBudget,
    /// Plaintext read from the socket.
    input: PooledInput,
    /// Plaintext queued for the socket.
    outgoing: Vec<u8>,
    /// No more data may be queued (close_notify is next).
    sent_close_notify: bool,
    /// Our close_notify is on the wire.
    close_notify_sent: bool,
    /// Reads and writes since the counts were last taken from the kernel.
    ops_since_sync: u32,
}

/// Why our key update failed.
#[derive(Debug)]
pub enum RekeyError {
    /// Nothing was sent (the socket is full: wait until writable and retry, or another error).
    NotSent(io::Error),
    /// Our KeyUpdate went out but the kernel refused the new keys: the peer already expects
    /// them, so nothing more may be written.
    AfterSend(io::Error),
}

impl KernelTls {
    /// Takes over `conn` whose keys start at the carried-over sequence numbers `tx_seq` and
    /// `rx_seq` (records already protected by them).
    pub fn new(
        conn: KernelConnection<ServerConnectionData>,
        params: KernelParams,
        tx_seq: u64,
        rx_seq: u64,
    ) -> Self {
        Self {
            conn,
            params,
            budget: KeyBudget::new(
                params.record_limit,
                params.kernel_rekey && params.version == TlsVersion::Tls13,
                tx_seq,
                rx_seq,
            ),
            ops_since_sync: 0,
            input: PooledInput::default(),
            outgoing: Vec::new(),
            sent_close_notify: false,
            close_notify_sent: false,
        }
    }

    pub fn params(&self) -> &KernelParams {
        &self.params
    }

    /// Space to read plaintext into (a buffer from the pool while none is held).
    pub fn recv_space(&mut self, pool: &mut BufPool) -> &mut [u8] {
        self.input.space(pool)
    }

    /// `n` bytes were read into [`recv_space`](Self::recv_space). Returns the records that
    /// read is counted as.
    pub fn commit_recv(&mut self, n: usize) -> u64 {
        self.input.commit(n);
        let records = (n as u64).div_ceil(MAX_RECORD_PLAINTEXT);
        self.budget.received(records);
        self.ops_since_sync += 1;
        records
    }

    /// Moves what was read into the connection's plaintext.
    pub fn drain_into(&mut self, plaintext: &mut BytesMut) {
        self.input.drain_into(plaintext);
    }

    /// Gives the read buffer back to the pool when it holds nothing, and frees an empty
    /// output buffer: an idle connection keeps neither.
    pub fn release_idle(&mut self, pool: &mut BufPool) {
        self.input.release_idle(pool);
        free_if_empty(&mut self.outgoing);
    }

    pub fn holds_read_buffer(&self) -> bool {
        self.input.is_held()
    }

    /// An output buffer is allocated (kept between writes of a burst, freed when idle).
    pub fn holds_output_buffer(&self) -> bool {
        self.outgoing.capacity() > 0
    }

    /// Queues plaintext for the socket; refused after our close_notify (TLS allows nothing
    /// after it).
    pub fn queue(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        if self.sent_close_notify {
            return Err(TlsError::Closed);
        }
        self.outgoing.extend_from_slice(plaintext);
        Ok(())
    }

    pub fn has_pending_output(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The plaintext waiting for the socket (the kernel encrypts it), for a non-blocking send.
    pub fn pending_output(&self) -> &[u8] {
        &self.outgoing
    }

    /// `n` bytes from the front of [`Self::pending_output`] were written; returns the records
    /// that write is counted as.
    pub fn consume_output(&mut self, n: usize) -> u64 {
        let records = (n as u64).div_ceil(MAX_RECORD_PLAINTEXT);
        self.budget.sent(records);
        self.ops_since_sync += 1;
        if n >= self.outgoing.len() {
            self.outgoing.clear();
        } else {
            self.outgoing.drain(..n);
        }
        records
    }

    /// `n` bytes went to the socket straight from the caller's frames (nothing was queued
    /// here); returns the records that write is counted as.
    pub fn sent_directly(&mut self, n: usize) -> u64 {
        let records = (n as u64).div_ceil(MAX_RECORD_PLAINTEXT);
        self.budget.sent(records);
        self.ops_since_sync += 1;
        records
    }

    /// Whether bytes may go to the socket now (our close_notify is not sent yet).
    pub fn may_send(&self) -> bool {
        !self.sent_close_notify
    }

    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// The buffer of a completed write of `written` bytes comes back (emptied, capacity kept
    /// within bounds); the records it made are counted and returned.
    pub fn restore_output(&mut self, mut buf: Vec<u8>, written: usize) -> u64 {
        let records = (written as u64).div_ceil(MAX_RECORD_PLAINTEXT);
        self.budget.sent(records);
        self.ops_since_sync += 1;
        buf.clear();
        if buf.capacity() <= crate::tls::driver::MAX_RETAINED_OUTPUT && self.outgoing.is_empty() {
            self.outgoing = buf;
        }
        records
    }

    /// The estimates are stale or near the threshold: take the exact counts from the kernel.
    pub fn wants_sync(&self) -> bool {
        self.ops_since_sync >= SYNC_EVERY || (self.ops_since_sync > 0 && self.budget.at_a_trigger())
    }

    /// Replaces the estimates by the kernel's record sequence numbers (exact).
    pub fn sync_with_kernel(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // Retried after SYNC_EVERY more operations when the kernel says no, not on every pass.
        self.ops_since_sync = 0;
        let cipher = self.params.cipher;
        let tx = kernel_rec_seq(fd, Direction::Tx, cipher)?;
        let rx = kernel_rec_seq(fd, Direction::Rx, cipher)?;
        self.budget.set_exact(tx, rx);
        Ok(())
    }

    /// Records under the current keys (exact after [`Self::sync_with_kernel`]).
    pub fn records(&self) -> (u64, u64) {
        self.budget.records()
    }

    /// TLS 1.3 on a kernel that can set keys again: client KeyUpdates are followed.
    pub fn can_rekey(&self) -> bool {
        self.budget.can_rekey()
    }

    /// Close now (1001, `tls_key_limit`): see [`KeyBudget::limit_reached`].
    pub fn key_limit_reached(&self) -> bool {
        self.budget.limit_reached()
    }

    /// Our KeyUpdate should go out now: see [`KeyBudget::tx_rekey_due`].
    pub fn tx_rekey_due(&self) -> bool {
        self.budget.tx_rekey_due()
    }

    /// Sends our KeyUpdate under the old keys, then gives the kernel the next TX keys. Call
    /// with no write in flight: plaintext still queued here goes out afterwards, under the new
    /// keys, as RFC 8446 §4.6.3 asks after a client's `update_requested`. Returns whether the
    /// KeyUpdate asked the client for new keys too.
    pub fn rekey_tx(&mut self, fd: BorrowedFd<'_>) -> Result<bool, RekeyError> {
        let request = self.budget.ask_with_next_key_update();
        let request_byte = if request {
            KEY_UPDATE_REQUESTED
        } else {
            KEY_UPDATE_NOT_REQUESTED
        };
        let key_update = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, request_byte];
        match sys::send_record(fd, CONTENT_HANDSHAKE, &key_update) {
            Ok(n) if n == key_update.len() => {}
            Ok(_) => {
                return Err(RekeyError::AfterSend(io::Error::other(
                    "the KeyUpdate record was cut short",
                )))
            }
            Err(e) => return Err(RekeyError::NotSent(e)),
        }
        let after = RekeyError::AfterSend;
        let (seq, secrets) = self
            .conn
            .update_tx_secret()
            .map_err(|e| after(io::Error::other(e)))?;
        let info = crypto_info_of(self.params.version, &secrets, seq)
            .map_err(|e| after(io::Error::other(e)))?;
        sys::set_crypto(fd, Direction::Tx, &info).map_err(after)?;
        self.budget.tx_rekeyed(seq, request);
        Ok(request)
    }

    /// Takes the non-data record waiting at the head of the socket (a plain read failed with
    /// EIO) and acts on it. Application data found instead (a race) is kept as received data:
    /// the caller processes what was received after a `Handled`.
    pub fn take_control_record(
        &mut self,
        fd: BorrowedFd<'_>,
        pool: &mut BufPool,
    ) -> io::Result<Option<ControlRecord>> {
        let space = self.input.space(pool);
        let Some(record) = sys::recv_record(fd, space)? else {
            return Ok(None);
        };
        if record.content_type == CONTENT_APPLICATION_DATA {
            self.commit_recv(record.len);
            return Ok(Some(ControlRecord::Handled));
        }
        // Control records are a few bytes; copy so the read buffer can be let go.
        let body = space[..record.len].to_vec();
        Ok(Some(match record.content_type {
            CONTENT_ALERT => interpret_alert(&body),
            CONTENT_HANDSHAKE => self.on_handshake(fd, &body),
            _ => ControlRecord::Fatal(Reason::TlsUnexpectedRecord),
        }))
    }

    /// A post-handshake handshake record: only KeyUpdate is allowed from a client.
    fn on_handshake(&mut self, fd: BorrowedFd<'_>, body: &[u8]) -> ControlRecord {
        let request = match parse_key_update(body) {
            Ok(request) => request,
            Err(reason) => return ControlRecord::Fatal(reason),
        };
        if !self.budget.can_rekey() {
            return ControlRecord::RekeyUnsupported;
        }
        // A client sending only KeyUpdates is refused, as rustls refuses such a peer.
        if self.budget.client_key_update().is_err() {
            return ControlRecord::Fatal(Reason::TlsProtocolError);
        }
        let rx = self
            .conn
            .update_rx_secret()
            .map_err(io::Error::other)
            .and_then(|(seq, secrets)| {
                let info =
                    crypto_info_of(self.params.version, &secrets, seq).map_err(io::Error::other)?;
                sys::set_crypto(fd, Direction::Rx, &info).map(|()| seq)
            });
        match rx {
            Ok(seq) => {
                let requested = request == KEY_UPDATE_REQUESTED;
                self.budget.rx_rekeyed(seq, requested);
                ControlRecord::KeyUpdate { requested }
            }
            Err(e) => {
                tracing::warn!(error = %e, "the kernel refused the client's new TLS keys");
                ControlRecord::RekeyUnsupported
            }
        }
    }

    /// Sends our close_notify (once), without blocking; best effort like any last record.
    pub fn send_close_notify(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        if self.close_notify_sent {
            return Ok(());
        }
        // From here on nothing more is queued, whether or not the record goes out right now.
        self.sent_close_notify = true;
        sys::send_record(fd, CONTENT_ALERT, &[ALERT_WARNING, ALERT_CLOSE_NOTIFY])?;
        self.close_notify_sent = true;
        Ok(())
    }
}

impl std::fmt::Debug for KernelTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelTls")
            .field("params", &self.params)
            .field("records", &self.budget.records())
            .field("pending_output", &self.outgoing.len())
            .finish_non_exhaustive()
    }
}

/// The kernel's next record sequence number for one direction: the records under its key.
fn kernel_rec_seq(fd: BorrowedFd<'_>, dir: Direction, cipher: Cipher) -> io::Result<u64> {
    let mut info = [0u8; crate::tls::ktls::crypto_info::CryptoInfo::MAX_LEN];
    let exact = &mut info[..cipher.info_len()];
    let result = sys::get_crypto(fd, dir, exact);
    let seq = result.and_then(|len| {
        crate::tls::ktls::crypto_info::rec_seq_of(&exact[..len.min(exact.len())])
            .ok_or_else(|| io::Error::other("the kernel returned a short crypto info"))
    });
    // The kernel hands the key back too: wipe it.
    zeroize::Zeroize::zeroize(&mut info);
    seq
}

/// An alert record: close_notify ends the stream cleanly; anything else ends the connection.
fn interpret_alert(body: &[u8]) -> ControlRecord {
    match body {
        [_, ALERT_CLOSE_NOTIFY] => ControlRecord::CloseNotify,
        // TLS 1.3 treats every alert but close_notify and user_canceled as fatal; a warning
        // level user_canceled is followed by close_notify, so it is safe to end here too.
        [ALERT_FATAL, _] => ControlRecord::Fatal(Reason::TlsAlertReceived),
        _ => ControlRecord::Fatal(Reason::TlsAlertUnexpected),
    }
}

/// A KeyUpdate handshake message: its `request_update` byte, or why the record is refused.
fn parse_key_update(body: &[u8]) -> Result<u8, Reason> {
    match body {
        [HANDSHAKE_KEY_UPDATE, 0, 0, 1, request]
            if *request == KEY_UPDATE_NOT_REQUESTED || *request == KEY_UPDATE_REQUESTED =>
        {
            Ok(*request)
        }
        [HANDSHAKE_KEY_UPDATE, ..] => Err(Reason::TlsProtocolError),
        _ => Err(Reason::TlsUnexpectedHandshake),
    }
}

/// The records one key may protect before it must be replaced: the suite's confidentiality
/// limit, lowered by `override_limit` (a testing knob).
pub fn record_limit(suite: rustls::SupportedCipherSuite, override_limit: Option<u64>) -> u64 {
    let suite_limit = match suite {
        rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
        rustls::SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
    };
    override_limit
        .map_or(suite_limit, |o| o.min(suite_limit))
        .max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts() {
        assert_eq!(interpret_alert(&[1, 0]), ControlRecord::CloseNotify);
        assert_eq!(
            interpret_alert(&[2, 20]).alert_kind(),
            Some("fatal"),
            "bad_record_mac"
        );
        assert_eq!(interpret_alert(&[1, 90]).alert_kind(), Some("other"));
        assert_eq!(interpret_alert(&[]).alert_kind(), Some("other"));
    }

    #[test]
    fn key_updates() {
        assert_eq!(parse_key_update(&[24, 0, 0, 1, 0]), Ok(0));
        assert_eq!(parse_key_update(&[24, 0, 0, 1, 1]), Ok(1));
        assert_eq!(
            parse_key_update(&[24, 0, 0, 1, 2]),
            Err(Reason::TlsProtocolError)
        );
        assert_eq!(
            parse_key_update(&[24, 0, 0, 2, 0, 0]),
            Err(Reason::TlsProtocolError)
        );
        assert_eq!(
            parse_key_update(&[4, 0, 0, 1, 0]),
            Err(Reason::TlsUnexpectedHandshake),
            "a NewSessionTicket from a client"
        );
    }

    #[test]
    fn record_limits_follow_the_suite_and_only_go_down() {
        use crate::tls::ktls::secrets::cipher_of_suite;
        use crate::tls::policy::CIPHER_SUITES;
        for suite in CIPHER_SUITES {
            let limit = record_limit(*suite, None);
            match cipher_of_suite(*suite).unwrap() {
                Cipher::Chacha20Poly1305 => assert_eq!(limit, u64::MAX),
                _ => assert!(limit > 1 << 23 && limit < 1 << 25, "{limit}"),
            }
            assert_eq!(record_limit(*suite, Some(1000)), 1000);
            assert_eq!(record_limit(*suite, Some(u64::MAX)), limit);
        }
    }
}
