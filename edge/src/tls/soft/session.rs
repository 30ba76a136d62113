//! A connection's TLS records after the hand-off to userspace protection ([`super::protect`]):
//! received records opened in place into the session's plaintext, frames sealed straight from
//! the outbox into records, KeyUpdates both ways and the key budget ([`KeyBudget`], the rules
//! the kTLS session follows).
//!
//! What rustls did for these sessions before, done here the way the kernel does it for kTLS:
//! after the handshake a server receives only application data, alerts and (TLS 1.3)
//! KeyUpdates; anything else ends the connection.

use bytes::BytesMut;
use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use rustls::{AlertDescription, ConnectionTrafficSecrets, InvalidMessage, PeerMisbehaved};

use super::protect::{record_len, RecordError, RecordKey, HEADER_LEN};
use crate::bufpool::BufPool;
use crate::tls::ktls::key_budget::KeyBudget;
use crate::tls::ktls::TlsVersion;
use crate::tls::pooled_input::{free_if_empty, PooledInput};
use crate::tls::wire::{
    ALERT_CLOSE_NOTIFY, ALERT_WARNING, CONTENT_ALERT, CONTENT_APPLICATION_DATA, CONTENT_HANDSHAKE,
    HANDSHAKE_KEY_UPDATE, KEY_UPDATE_NOT_REQUESTED, KEY_UPDATE_REQUESTED, MAX_PLAINTEXT_PER_RECORD,
};
use crate::tls::TlsError;
use crate::ws::Outbox;

/// A KeyUpdate message: type, 24-bit length 1, the request flag.
const KEY_UPDATE_LEN: usize = 5;

/// The record layer of a connection whose records are protected here, in userspace.
pub struct SoftTls {
    conn: KernelConnection<ServerConnectionData>,
    version: TlsVersion,
    tx: RecordKey,
    rx: RecordKey,
    budget: KeyBudget,
    /// Ciphertext read from the socket.
    input: PooledInput,
    /// Records sealed for the socket, `outgoing[sent..]` not written yet.
    outgoing: Vec<u8>,
    sent: usize,
    peer_closed: bool,
    /// Our close_notify is queued: nothing more may be.
    sent_close_notify: bool,
}

impl std::fmt::Debug for SoftTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftTls")
            .field("version", &self.version)
            .field("tx", &self.tx)
            .field("rx", &self.rx)
            .field("filled", &self.input.len())
            .field("pending", &self.pending_output().len())
            .finish_non_exhaustive()
    }
}

fn protocol_error(e: InvalidMessage) -> TlsError {
    TlsError::Rustls(rustls::Error::InvalidMessage(e))
}

fn record_error(e: RecordError) -> TlsError {
    match e {
        RecordError::BadRecordMac => TlsError::Rustls(rustls::Error::DecryptError),
        RecordError::Overflow => TlsError::Rustls(rustls::Error::PeerSentOversizedRecord),
        RecordError::Unexpected => protocol_error(InvalidMessage::InvalidContentType),
        RecordError::Exhausted => TlsError::EncryptExhausted,
    }
}

impl SoftTls {
    /// Takes over `conn`'s records with the secrets rustls extracted (`tx`/`rx`: the next
    /// record's sequence number and the traffic secrets). `record_limit`: records per key.
    pub fn new(
        conn: KernelConnection<ServerConnectionData>,
        version: TlsVersion,
        tx: (u64, ConnectionTrafficSecrets),
        rx: (u64, ConnectionTrafficSecrets),
        record_limit: u64,
    ) -> Result<Self, String> {
        let budget = KeyBudget::new(record_limit, version == TlsVersion::Tls13, tx.0, rx.0);
        Ok(Self {
            tx: RecordKey::new(version, &tx.1, tx.0)?,
            rx: RecordKey::new(version, &rx.1, rx.0)?,
            conn,
            version,
            budget,
            input: PooledInput::default(),
            outgoing: Vec::new(),
            sent: 0,
            peer_closed: false,
            sent_close_notify: false,
        })
    }

    pub fn version(&self) -> TlsVersion {
        self.version
    }

    // --- receiving ---

    pub fn recv_space(&mut self, pool: &mut BufPool) -> &mut [u8] {
        self.input.space(pool)
    }

    pub fn commit_recv(&mut self, n: usize) {
        self.input.commit(n);
    }

    /// Opens every whole record received: application data into `plaintext`, KeyUpdates and
    /// alerts acted on. A partial record stays for the next read.
    pub fn process(&mut self, plaintext: &mut BytesMut) -> Result<(), TlsError> {
        let mut input = std::mem::take(&mut self.input);
        let result = self.open_records(&mut input, plaintext);
        self.input = input;
        result
    }

    fn open_records(
        &mut self,
        input: &mut PooledInput,
        plaintext: &mut BytesMut,
    ) -> Result<(), TlsError> {
        let buf = input.filled_mut();
        let mut at = 0;
        while !self.peer_closed {
            let Some(len) = record_len(&buf[at..]) else {
                break;
            };
            if len - HEADER_LEN > MAX_PLAINTEXT_PER_RECORD + 2048 {
                // Refused on the header: no waiting for 64 KiB that can never be a record.
                return Err(record_error(RecordError::Overflow));
            }
            if at + len > buf.len() {
                break;
            }
            let record = &mut buf[at..at + len];
            let opened = self.rx.open(record).map_err(record_error)?;
            let body = &record[opened.start..opened.end];
            match opened.content_type {
                CONTENT_APPLICATION_DATA => {
                    self.budget.received(1);
                    plaintext.extend_from_slice(body);
                }
                CONTENT_ALERT => {
                    self.budget.received_control();
                    self.alert(body)?;
                }
                CONTENT_HANDSHAKE if self.version == TlsVersion::Tls13 => {
                    // Not data: a run of these is a flood (`key_updates` bounds it).
                    self.budget.received_control();
                    self.key_updates(body)?;
                }
                // TLS 1.2 renegotiation, a ChangeCipherSpec, anything else: never after the
                // handshake.
                _ => return Err(protocol_error(InvalidMessage::InvalidContentType)),
            }
            at += len;
            if self.budget.limit_reached() {
                return Err(TlsError::EncryptExhausted);
            }
        }
        // What is left (a partial record) moves to the front.
        input.consume(at);
        if self.peer_closed {
            input.clear(); // nothing after close_notify counts
        }
        // A client that only sends still gets asked for new keys before its key wears out
        // (our KeyUpdate with update_requested), not closed at the limit.
        if self.budget.tx_rekey_due() && !self.sent_close_notify {
            self.rekey_if_due()?;
        }
        Ok(())
    }

    fn alert(&mut self, body: &[u8]) -> Result<(), TlsError> {
        match body {
            [_, ALERT_CLOSE_NOTIFY] => {
                self.peer_closed = true;
                Ok(())
            }
            // TLS 1.2 warnings other than close_notify are ignored (RFC 5246 §7.2); TLS 1.3
            // has none but close_notify and user_canceled (RFC 8446 §6).
            [ALERT_WARNING, _] if self.version == TlsVersion::Tls12 => Ok(()),
            [_, 90] => Ok(()), // user_canceled: a close_notify follows
            [_, desc] => Err(TlsError::Rustls(rustls::Error::AlertReceived(
                AlertDescription::from(*desc),
            ))),
            _ => Err(protocol_error(InvalidMessage::MessageTooShort)),
        }
    }

    /// One record of TLS 1.3 handshake messages: KeyUpdates only, whole ones.
    fn key_updates(&mut self, mut body: &[u8]) -> Result<(), TlsError> {
        if body.is_empty() {
            return Err(protocol_error(InvalidMessage::MessageTooShort));
        }
        while !body.is_empty() {
            let Some(msg) = body.get(..KEY_UPDATE_LEN) else {
                return Err(protocol_error(InvalidMessage::MessageTooShort));
            };
            let requested = match msg {
                [HANDSHAKE_KEY_UPDATE, 0, 0, 1, KEY_UPDATE_NOT_REQUESTED] => false,
                [HANDSHAKE_KEY_UPDATE, 0, 0, 1, KEY_UPDATE_REQUESTED] => true,
                [HANDSHAKE_KEY_UPDATE, ..] => {
                    return Err(protocol_error(InvalidMessage::InvalidKeyUpdate))
                }
                _ => {
                    return Err(TlsError::Rustls(
                        rustls::Error::InappropriateHandshakeMessage {
                            expect_types: vec![rustls::HandshakeType::KeyUpdate],
                            got_type: rustls::HandshakeType::from(msg[0]),
                        },
                    ))
                }
            };
            self.budget.client_key_update().map_err(|_| {
                TlsError::Rustls(rustls::Error::PeerMisbehaved(
                    PeerMisbehaved::TooManyKeyUpdateRequests,
                ))
            })?;
            let (seq, secrets) = self.conn.update_rx_secret().map_err(TlsError::Rustls)?;
            self.rx = RecordKey::new(self.version, &secrets, seq)
                .map_err(|_| TlsError::Internal("new RX keys"))?;
            self.budget.rx_rekeyed(seq, requested);
            body = &body[KEY_UPDATE_LEN..];
        }
        // Our answer (and any update our own counts call for) goes out at once, before more
        // data: the client may already be waiting for it.
        self.rekey_if_due()
    }

    /// Whether a partial record is held.
    pub fn holds_partial_record(&self) -> bool {
        self.input.len() > 0
    }

    pub fn holds_read_buffer(&self) -> bool {
        self.input.is_held()
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    // --- sending ---

    /// Our KeyUpdate when the budget calls for one (TLS 1.3): sealed under the old keys, then
    /// the new ones take over. Where keys cannot be updated (TLS 1.2) the limit closes.
    fn rekey_if_due(&mut self) -> Result<(), TlsError> {
        while self.budget.tx_rekey_due() {
            let requested = self.budget.ask_with_next_key_update();
            let flag = if requested {
                KEY_UPDATE_REQUESTED
            } else {
                KEY_UPDATE_NOT_REQUESTED
            };
            self.seal(&[HANDSHAKE_KEY_UPDATE, 0, 0, 1, flag], CONTENT_HANDSHAKE)?;
            let (seq, secrets) = self.conn.update_tx_secret().map_err(TlsError::Rustls)?;
            self.tx = RecordKey::new(self.version, &secrets, seq)
                .map_err(|_| TlsError::Internal("new TX keys"))?;
            self.budget.tx_rekeyed(seq, requested);
        }
        if self.budget.limit_reached() {
            return Err(TlsError::EncryptExhausted);
        }
        Ok(())
    }

    /// Seals `plaintext` (at most one record's worth) of `content_type` into the output.
    fn seal(&mut self, plaintext: &[u8], content_type: u8) -> Result<(), TlsError> {
        let start = self.reserve();
        self.outgoing.extend_from_slice(plaintext);
        self.finish(start, content_type)
    }

    /// Reserves a record's prefix at the end of the output; its start.
    fn reserve(&mut self) -> usize {
        let start = self.outgoing.len();
        self.outgoing.resize(start + self.tx.prefix_len(), 0);
        start
    }

    fn finish(&mut self, start: usize, content_type: u8) -> Result<(), TlsError> {
        self.tx
            .seal(&mut self.outgoing, start, content_type)
            .map_err(record_error)?;
        self.budget.sent(1);
        Ok(())
    }

    /// Encrypts application data (in records of at most 16 KiB).
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<(), TlsError> {
        if self.sent_close_notify {
            return Err(TlsError::Closed);
        }
        for chunk in plaintext.chunks(MAX_PLAINTEXT_PER_RECORD) {
            self.rekey_if_due()?;
            self.seal(chunk, CONTENT_APPLICATION_DATA)?;
        }
        Ok(())
    }

    /// Seals up to `max` bytes of `outbox`'s frames into records, copied once — straight into
    /// the record — and returns how many plaintext bytes it took.
    pub fn encrypt_from(&mut self, outbox: &mut Outbox, max: usize) -> Result<usize, TlsError> {
        if self.sent_close_notify {
            return Err(TlsError::Closed);
        }
        let mut taken = 0;
        while taken < max && !outbox.is_empty() {
            self.rekey_if_due()?;
            let start = self.reserve();
            let n = outbox.fill(
                &mut self.outgoing,
                (max - taken).min(MAX_PLAINTEXT_PER_RECORD),
            );
            self.finish(start, CONTENT_APPLICATION_DATA)?;
            taken += n;
        }
        Ok(taken)
    }

    /// Queues our close_notify (once); nothing may follow it.
    pub fn queue_close_notify(&mut self) -> Result<(), TlsError> {
        if self.sent_close_notify {
            return Ok(());
        }
        self.seal(&[ALERT_WARNING, ALERT_CLOSE_NOTIFY], CONTENT_ALERT)?;
        self.sent_close_notify = true;
        Ok(())
    }

    pub fn pending_output(&self) -> &[u8] {
        &self.outgoing[self.sent..]
    }

    pub fn has_pending_output(&self) -> bool {
        self.sent < self.outgoing.len()
    }

    /// `n` bytes of the pending output were written.
    pub fn consume_output(&mut self, n: usize) {
        self.sent += n;
        if self.sent >= self.outgoing.len() {
            self.outgoing.clear();
            self.sent = 0;
        }
    }

    /// Gives the read buffer back when it holds nothing and frees an empty output buffer: an
    /// idle connection keeps neither.
    pub fn release_idle(&mut self, pool: &mut BufPool) {
        self.input.release_idle(pool);
        free_if_empty(&mut self.outgoing);
    }
}
