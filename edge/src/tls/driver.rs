//! The owned-buffer driver of rustls' unbuffered server API (sans-IO).
//!
//! [`TlsSession`] owns an `UnbufferedServerConnection`, an incoming ciphertext buffer taken from
//! the core's [`BufPool`] only while there is something to read or keep, and an outgoing buffer.
//! The connection reaches it through [`super::record_layer::RecordLayer`], which runs:
//!
//! ```text
//! readable ─► recv_space(pool) ─► recv (non-blocking) ─► commit_recv(n) ─► process(&mut plaintext)
//!          ─► encrypt(..) ─► pending_output() ─► send (non-blocking) ─► consume_output(n)
//!          ─► release_idle(pool)
//! ```
//!
//! rustls decrypts the records it is given and encodes records into our buffers; its states map
//! onto this loop: `EncodeTlsData` appends to the outgoing buffer, `TransmitTlsData` is
//! acknowledged at once (the outgoing buffer keeps order and is flushed before the next wait),
//! `ReadTraffic` appends plaintext, `BlockedHandshake` / `WriteTraffic` mean "need more input".
//!
//! Alerts: when rustls fails it has already queued the alert it wants to send (for example
//! protocol_version for a TLS 1.1 client) but only hands it out through further
//! `EncodeTlsData` states. [`TlsSession::process`] collects them into the outgoing buffer before
//! returning the error, so the server can flush them and close.

use crate::reason::Reason;
use std::sync::Arc;

use bytes::BytesMut;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};

use super::wire::{ALERT_FATAL, ALERT_PROTOCOL_VERSION, CONTENT_ALERT};
use crate::bufpool::BufPool;
use wssedge_proto::tls_hello::{HelloSniffer, NotTls, Sniffed};

/// The largest TLS record on the wire: 5-byte header + 2^14 bytes + 2048 bytes of expansion
/// (the TLS 1.2 limit; TLS 1.3 allows 256). `recv_space` always leaves room for one.
pub const MAX_RECORD_LEN: usize = 5 + 16 * 1024 + 2 * 1024;

/// Plaintext bytes per record (rustls splits larger writes).
pub use super::wire::MAX_PLAINTEXT_PER_RECORD;

/// An outgoing buffer given back with more capacity than this is freed instead of kept.
pub const MAX_RETAINED_OUTPUT: usize = 64 * 1024;

/// What a completed handshake agreed on.
#[derive(Debug, Clone)]
pub struct Negotiated {
    pub version: rustls::ProtocolVersion,
    pub suite: rustls::SupportedCipherSuite,
    /// The ALPN protocol, when the client offered one we accept.
    pub alpn: Option<Vec<u8>>,
    /// The DNS name the client asked for (SNI), lower-cased; `None` without SNI or for an IP.
    pub sni: Option<String>,
    /// The client's certificate chain, leaf first (empty without client authentication). Kept
    /// here because the kernel hand-off gives the rustls connection up.
    pub peer_certificates: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Why a TLS session failed. [`TlsError::reason`] gives a stable counter label.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// The first bytes received are not a TLS handshake record (plain HTTP, a scanner, garbage).
    #[error("not TLS: the first bytes received are not a TLS handshake record")]
    NotTls,
    /// The ClientHello offers no version we accept (TLS 1.1 or older only).
    #[error("the client offers only TLS version {offered:#06x}; TLS 1.2 or 1.3 is required")]
    ProtocolVersion { offered: u16 },
    /// Application data or close_notify asked for before the handshake completed.
    #[error("the TLS handshake is not complete")]
    HandshakeNotComplete,
    /// Application data asked for after close_notify went both ways.
    #[error("the TLS connection is closed")]
    Closed,
    /// The record sequence space of the current keys is used up.
    #[error("the TLS encryption keys are exhausted")]
    EncryptExhausted,
    /// A driver invariant did not hold (a bug, reported rather than panicking).
    #[error("TLS driver error: {0}")]
    Internal(&'static str),
    /// rustls refused the peer (or failed itself).
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// A snake_case code for counters and audit records.
    pub fn reason(&self) -> Reason {
        use rustls::{Error as E, PeerIncompatible as P};
        match self {
            TlsError::NotTls => Reason::NotTls,
            TlsError::ProtocolVersion { .. } => Reason::TlsProtocolVersion,
            TlsError::HandshakeNotComplete => Reason::TlsHandshakeIncomplete,
            TlsError::Closed => Reason::TlsClosed,
            TlsError::EncryptExhausted => Reason::TlsKeysExhausted,
            TlsError::Internal(_) => Reason::TlsInternal,
            TlsError::Rustls(e) => match e {
                E::PeerIncompatible(
                    P::Tls12NotOffered
                    | P::Tls12NotOfferedOrEnabled
                    | P::SupportedVersionsExtensionRequired
                    | P::ServerDoesNotSupportTls12Or13,
                ) => Reason::TlsProtocolVersion,
                E::PeerIncompatible(
                    P::NoCipherSuitesInCommon
                    | P::NoKxGroupsInCommon
                    | P::NoSignatureSchemesInCommon,
                ) => Reason::TlsNoSharedCipher,
                E::PeerIncompatible(_) => Reason::TlsIncompatible,
                E::NoApplicationProtocol => Reason::TlsNoApplicationProtocol,
                E::InvalidCertificate(_)
                | E::NoCertificatesPresented
                | E::InvalidCertRevocationList(_) => {
                    crate::tls::identity::client_cert_failure_reason(e)
                        .unwrap_or(Reason::TlsBadCertificate)
                }
                E::AlertReceived(_) => Reason::TlsAlertReceived,
                E::DecryptError => Reason::TlsDecryptError,
                E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::InvalidMessage(_)
                | E::PeerMisbehaved(_)
                | E::PeerSentOversizedRecord
                | E::InvalidEncryptedClientHello(_) => Reason::TlsProtocolError,
                _ => Reason::TlsInternal,
            },
        }
    }
}

/// Progress of reading the client's first flight before rustls sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hello {
    /// Nothing judged yet: the first record must be a TLS handshake record.
    Pending,
    /// The ClientHello has been looked at (SNI read); rustls drives from here.
    Done,
}

/// One TLS server session over owned buffers. See the module docs for the loop.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Received ciphertext lives in `incoming[start..end]`; held only while needed.
    incoming: Option<Vec<u8>>,
    start: usize,
    end: usize,
    /// `incoming[start..seen]` has already been examined by rustls (whatever is left there is
    /// a partial record or a partial handshake message rustls keeps in place).
    seen: usize,
    outgoing: Vec<u8>,
    hello: Hello,
    /// Reads the ClientHello's server name before rustls; resumes where it stopped.
    sniffer: HelloSniffer,
    sni: Option<String>,
    /// `WriteTraffic` has been reached: the handshake is over on our side.
    traffic: bool,
    peer_closed: bool,
    sent_close_notify: bool,
    failed: Option<TlsError>,
}

/// What the loop does after one rustls state.
enum Step<R> {
    Again,
    Stop(R),
}

impl TlsSession {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Result<Self, TlsError> {
        Ok(Self {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: None,
            start: 0,
            end: 0,
            seen: 0,
            outgoing: Vec::new(),
            hello: Hello::Pending,
            sniffer: HelloSniffer::new(),
            sni: None,
            traffic: false,
            peer_closed: false,
            sent_close_notify: false,
            failed: None,
        })
    }

    /// Free space to receive ciphertext into; takes a buffer from the pool if none is held;
    /// grows (compacting first) so at least one full record ([`MAX_RECORD_LEN`]) fits.
    pub fn recv_space(&mut self, pool: &mut BufPool) -> &mut [u8] {
        let buf = self.incoming.get_or_insert_with(|| {
            let mut buf = pool.take();
            buf.resize(buf.capacity().max(MAX_RECORD_LEN), 0);
            buf
        });
        if buf.len() - self.end < MAX_RECORD_LEN {
            if self.start > 0 {
                buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.seen -= self.start;
                self.start = 0;
            }
            if buf.len() - self.end < MAX_RECORD_LEN {
                buf.resize(self.end + MAX_RECORD_LEN, 0);
            }
        }
        &mut buf[self.end..]
    }

    /// Records that `n` bytes were received into the space [`recv_space`](Self::recv_space)
    /// returned.
    pub fn commit_recv(&mut self, n: usize) {
        let room = self.incoming.as_ref().map_or(0, |b| b.len() - self.end);
        debug_assert!(
            n <= room,
            "commit_recv({n}) beyond the receive space ({room})"
        );
        self.end += n.min(room);
        if self.peer_closed {
            // rustls reads nothing after the client's close_notify: drop what follows it
            // rather than letting it pile up in the buffer.
            self.end = self.start.max(self.seen.min(self.end));
        }
    }

    /// Runs the state machine over the buffered records: handshake output goes to the outgoing
    /// buffer, decrypted application data is appended to `plaintext`, consumed ciphertext is
    /// discarded. Returns when more input is needed.
    ///
    /// On a fatal error the alert rustls sends (if any) is already in the outgoing buffer:
    /// flush it, then close. Later calls return the same error.
    pub fn process(&mut self, plaintext: &mut BytesMut) -> Result<(), TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.hello == Hello::Pending {
            match self.sniff_client_hello() {
                Ok(true) => {
                    self.hello = Hello::Done;
                    self.sniffer = HelloSniffer::new();
                }
                Ok(false) => return Ok(()),
                Err(e) => {
                    self.failed = Some(e.clone());
                    return Err(e);
                }
            }
        }
        let result = self.run(plaintext);
        if self.start == self.end {
            (self.start, self.end, self.seen) = (0, 0, 0);
        }
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.collect_alerts();
        }
        result
    }

    fn run(&mut self, plaintext: &mut BytesMut) -> Result<(), TlsError> {
        loop {
            let incoming: &mut [u8] = match &mut self.incoming {
                Some(buf) => &mut buf[self.start..self.end],
                None => &mut [],
            };
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(incoming);
            let step = match state {
                Err(e) => Err(TlsError::from(e)),
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(&mut data, &mut self.outgoing).map(|()| Step::Again)
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    // Our outgoing buffer keeps order and is flushed before the next wait.
                    data.done();
                    Ok(Step::Again)
                }
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    let mut result = Ok(Step::Again);
                    while let Some(record) = traffic.next_record() {
                        match record {
                            Ok(record) => {
                                discard += record.discard;
                                plaintext.extend_from_slice(record.payload);
                            }
                            Err(e) => {
                                result = Err(e.into());
                                break;
                            }
                        }
                    }
                    result
                }
                Ok(ConnectionState::ReadEarlyData(_)) => {
                    // max_early_data_size is 0: rustls never accepts 0-RTT data for us.
                    Err(TlsError::Internal(
                        "0-RTT data offered despite max_early_data_size = 0",
                    ))
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(Step::Again)
                }
                Ok(ConnectionState::WriteTraffic(_)) => {
                    self.traffic = true;
                    Ok(Step::Stop(()))
                }
                Ok(ConnectionState::BlockedHandshake | ConnectionState::Closed) => {
                    Ok(Step::Stop(()))
                }
                Ok(_) => Err(TlsError::Internal("unknown rustls connection state")),
            };
            self.start += discard;
            self.seen = self.seen.max(self.start);
            match step? {
                Step::Again => continue,
                Step::Stop(()) => {
                    self.seen = self.end;
                    return Ok(());
                }
            }
        }
    }

    /// After a failure rustls keeps its alert in its own queue and yields it only through
    /// further `EncodeTlsData` states: move it into the outgoing buffer.
    fn collect_alerts(&mut self) {
        // rustls checks its send queue before looking at input, so an empty slice is safe here.
        for _ in 0..16 {
            if !self.conn.wants_write() {
                break;
            }
            match self.conn.process_tls_records(&mut []).state {
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    if encode_into(&mut data, &mut self.outgoing).is_err() {
                        break;
                    }
                }
                Ok(ConnectionState::TransmitTlsData(data)) => data.done(),
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while traffic.next_record().is_some() {}
                }
                _ => break,
            }
        }
    }

    /// Checks the first record before rustls sees anything, and reads the SNI of the
    /// ClientHello (the unbuffered server API does not expose it). `Ok(false)`: need more bytes.
    fn sniff_client_hello(&mut self) -> Result<bool, TlsError> {
        let Some(buf) = &self.incoming else {
            return Ok(false);
        };
        let info = match self.sniffer.sniff(&buf[self.start..self.end]) {
            Err(NotTls) => return Err(TlsError::NotTls),
            Ok(Sniffed::NeedMore) => return Ok(false),
            Ok(Sniffed::HandOver) => return Ok(true),
            Ok(Sniffed::Hello(info)) => info,
        };
        if !info.offers_tls12_or_later {
            // rustls would refuse this too, but depending on which extensions an old client
            // omits it may report e.g. a missing signature_algorithms extension with a
            // handshake_failure alert. Say what is really wrong.
            let minor = info.legacy_version.to_be_bytes()[1].min(3);
            self.outgoing.extend_from_slice(&[
                CONTENT_ALERT,
                3,
                minor,
                0,
                2,
                ALERT_FATAL,
                ALERT_PROTOCOL_VERSION,
            ]);
            return Err(TlsError::ProtocolVersion {
                offered: info.legacy_version,
            });
        }
        self.sni = info.sni;
        Ok(true)
    }

    /// True until the handshake is complete on both sides (our Finished queued, the client's
    /// verified) and this driver has reached rustls' `WriteTraffic` state.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking() || !self.traffic
    }

    /// The client sent close_notify: no more application data will arrive.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// True when the session could be handed to kTLS: handshake done, no received byte left
    /// unprocessed (no partial record), nothing queued inside rustls, no failure. Pending
    /// output (e.g. session tickets) must still be flushed with the userspace keys first.
    pub fn is_quiescent(&self) -> bool {
        !self.is_handshaking()
            && self.buffered_ciphertext() == 0
            && !self.conn.wants_write()
            && self.failed.is_none()
            && !self.peer_closed
    }

    /// Gives up the rustls connection (for `dangerous_into_kernel_connection`) once
    /// [`is_quiescent`](Self::is_quiescent) holds and all output has been taken; otherwise
    /// returns the session unchanged.
    pub fn into_connection(
        mut self,
        pool: &mut BufPool,
    ) -> Result<UnbufferedServerConnection, Box<Self>> {
        if !self.is_quiescent() || self.has_pending_output() {
            return Err(Box::new(self));
        }
        self.release_idle(pool);
        Ok(self.conn)
    }

    /// Encrypts application data into the outgoing buffer (rustls splits it into records of
    /// at most 16 KiB of plaintext). Only valid after the handshake.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        if plaintext.is_empty() {
            return self.failed.clone().map_or(Ok(()), Err);
        }
        // rustls would still encrypt after our close_notify; TLS forbids data after it.
        if self.sent_close_notify {
            return Err(TlsError::Closed);
        }
        self.with_write_traffic(|traffic, out| {
            append_with(out, estimate_sealed_len(plaintext.len()), |space| {
                traffic.encrypt(plaintext, space)
            })
        })
    }

    /// Queues our close_notify alert in the outgoing buffer (once; later calls do nothing).
    /// Before the handshake completes rustls has no way to send it: `HandshakeNotComplete`
    /// (just close the socket).
    pub fn queue_close_notify(&mut self) -> Result<(), TlsError> {
        if self.sent_close_notify {
            return Ok(());
        }
        self.with_write_traffic(|traffic, out| {
            append_with(out, 64, |space| traffic.queue_close_notify(space))
        })?;
        self.sent_close_notify = true;
        Ok(())
    }

    /// Reaches rustls' `WriteTraffic` state without feeding it new input and runs `f` in it.
    ///
    /// rustls has to be called with input to produce a state. An empty slice is only safe when
    /// rustls keeps no partial handshake message in our buffer (it records offsets into it),
    /// so we give it exactly what it has already examined: the same bytes, nothing new, so no
    /// record is processed twice and none is processed early.
    fn with_write_traffic<R>(
        &mut self,
        f: impl FnOnce(&mut WriteTraffic<'_, ServerConnectionData>, &mut Vec<u8>) -> Result<R, TlsError>,
    ) -> Result<R, TlsError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut f = Some(f);
        loop {
            let seen: &mut [u8] = match &mut self.incoming {
                Some(buf) => &mut buf[self.start..self.seen],
                None => &mut [],
            };
            let UnbufferedStatus { discard, state } = self.conn.process_tls_records(seen);
            let step = match state {
                Err(e) => Err(TlsError::from(e)),
                Ok(ConnectionState::WriteTraffic(mut traffic)) => match f.take() {
                    Some(f) => f(&mut traffic, &mut self.outgoing).map(Step::Stop),
                    None => Err(TlsError::Internal("write traffic reached twice")),
                },
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode_into(&mut data, &mut self.outgoing).map(|()| Step::Again)
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    data.done();
                    Ok(Step::Again)
                }
                Ok(ConnectionState::PeerClosed) => {
                    self.peer_closed = true;
                    Ok(Step::Again)
                }
                Ok(ConnectionState::BlockedHandshake) => Err(TlsError::HandshakeNotComplete),
                Ok(ConnectionState::Closed) => Err(TlsError::Closed),
                Ok(_) => Err(TlsError::Internal(
                    "received data left unprocessed: call process() first",
                )),
            };
            self.start += discard;
            self.seen = self.seen.max(self.start);
            match step {
                Ok(Step::Again) => continue,
                Ok(Step::Stop(r)) => return Ok(r),
                // Misuse (too early, too late) leaves the session usable.
                Err(
                    e @ (TlsError::HandshakeNotComplete | TlsError::Closed | TlsError::Internal(_)),
                ) => return Err(e),
                Err(e) => {
                    self.failed = Some(e.clone());
                    self.collect_alerts();
                    return Err(e);
                }
            }
        }
    }

    /// Whether there are bytes to write to the socket.
    pub fn has_pending_output(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// The bytes waiting for the socket, for a non-blocking send.
    pub fn pending_output(&self) -> &[u8] {
        &self.outgoing
    }

    /// `n` bytes from the front of [`Self::pending_output`] were written.
    pub fn consume_output(&mut self, n: usize) {
        if n >= self.outgoing.len() {
            self.outgoing.clear();
        } else {
            self.outgoing.drain(..n);
        }
    }

    /// The bytes to write, as an owned buffer for io_uring; an empty `Vec` is left behind.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outgoing)
    }

    /// Gives a written buffer back for reuse (cleared here). Kept only if nothing new was
    /// queued meanwhile and it is not larger than [`MAX_RETAINED_OUTPUT`].
    pub fn restore_output(&mut self, mut buf: Vec<u8>) {
        if self.outgoing.is_empty()
            && buf.capacity() <= MAX_RETAINED_OUTPUT
            && buf.capacity() > self.outgoing.capacity()
        {
            buf.clear();
            self.outgoing = buf;
        }
    }

    /// Gives the incoming buffer back to the pool when nothing is left in it (an idle
    /// connection holds no read buffer); a buffer with a partial record stays. An empty
    /// outgoing buffer is freed too.
    pub fn release_idle(&mut self, pool: &mut BufPool) {
        if self.start == self.end {
            if let Some(buf) = self.incoming.take() {
                pool.give(buf);
            }
            (self.start, self.end, self.seen) = (0, 0, 0);
        }
        if self.outgoing.is_empty() && self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
        }
    }

    /// Whether a read buffer is held.
    pub fn holds_read_buffer(&self) -> bool {
        self.incoming.is_some()
    }

    /// Received bytes not yet consumed by rustls (a partial record, or a handshake message
    /// still being reassembled).
    pub fn buffered_ciphertext(&self) -> usize {
        self.end - self.start
    }

    /// How many more bytes complete the partial record held (`0`: the buffer ends on a record
    /// boundary). Before a hand-off to the kernel, reads are cut to this so the kernel never
    /// starts in the middle of a record a pipelining client sent right after its Finished.
    pub fn bytes_to_record_boundary(&self) -> usize {
        let held = self.buffered_ciphertext();
        if held == 0 {
            return 0;
        }
        let Some(buf) = self.incoming.as_deref() else {
            return 0;
        };
        let header = &buf[self.start..self.end];
        if header.len() < 5 {
            return 5 - header.len();
        }
        let record = 5 + usize::from(u16::from_be_bytes([header[3], header[4]]));
        record.saturating_sub(held)
    }

    /// What the handshake agreed on, once it is complete.
    pub fn negotiated(&self) -> Option<Negotiated> {
        if self.is_handshaking() {
            return None;
        }
        Some(Negotiated {
            version: self.conn.protocol_version()?,
            suite: self.conn.negotiated_cipher_suite()?,
            alpn: self.conn.alpn_protocol().map(<[u8]>::to_vec),
            sni: self.sni.clone(),
            peer_certificates: self
                .conn
                .peer_certificates()
                .map(<[_]>::to_vec)
                .unwrap_or_default(),
        })
    }
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.is_handshaking())
            .field("buffered_ciphertext", &self.buffered_ciphertext())
            .field("pending_output", &self.outgoing.len())
            .field("peer_closed", &self.peer_closed)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Ciphertext size for `n` plaintext bytes, generously (header, TLS 1.3 inner type, TLS 1.2
/// explicit nonce, tag), so a retry is rare.
fn estimate_sealed_len(n: usize) -> usize {
    let records = n.div_ceil(MAX_PLAINTEXT_PER_RECORD).max(1);
    n + records * 48
}

/// Lets `write` fill the tail of `out`, growing it when rustls says it needs more room.
fn append_with(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, EncryptError>,
) -> Result<(), TlsError> {
    let len = out.len();
    out.resize(len + guess, 0);
    loop {
        match write(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.resize(len + required_size, 0);
            }
            Err(EncryptError::EncryptExhausted) => {
                out.truncate(len);
                return Err(TlsError::EncryptExhausted);
            }
        }
    }
}

/// Appends one handshake record (or alert) rustls wants to send.
fn encode_into(
    data: &mut EncodeTlsData<'_, ServerConnectionData>,
    out: &mut Vec<u8>,
) -> Result<(), TlsError> {
    let len = out.len();
    out.resize(len + 4096, 0);
    loop {
        match data.encode(&mut out[len..]) {
            Ok(n) => {
                out.truncate(len + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.resize(len + required_size, 0);
            }
            Err(EncodeError::AlreadyEncoded) => {
                out.truncate(len);
                return Err(TlsError::Internal("handshake record encoded twice"));
            }
        }
    }
}

#[cfg(test)]
#[path = "driver_tests.rs"]
mod tests;
