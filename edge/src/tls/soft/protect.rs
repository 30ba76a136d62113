//! One direction's TLS record protection in userspace, from the traffic secrets rustls hands
//! over (the same hand-off kTLS takes): RFC 8446 §5.2–5.3 for TLS 1.3, RFC 5288 (AES-GCM) and
//! RFC 7905 (ChaCha20-Poly1305) for TLS 1.2. Sans IO: it seals a record in place in a buffer the
//! caller filled, and opens one record in place.
//!
//! Why not rustls: its record path takes one contiguous plaintext and copies it twice (into a
//! fresh buffer to seal, then out), so a delivery of a shared publication was copied three
//! times. Here the caller copies the frames once, straight into the record, and the seal runs
//! over them in place.

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, NONCE_LEN};
use rustls::ConnectionTrafficSecrets;

use crate::tls::ktls::{Cipher, TlsVersion};
use crate::tls::wire::{CONTENT_APPLICATION_DATA, MAX_PLAINTEXT_PER_RECORD};

/// The record header: type, legacy version, length.
pub const HEADER_LEN: usize = 5;
/// The AEAD tag of every suite we offer.
pub const TAG_LEN: usize = 16;
/// TLS 1.2 AES-GCM carries the nonce's last 8 bytes in each record (RFC 5288 §3).
const EXPLICIT_NONCE_LEN: usize = 8;
/// The legacy version every record header carries (RFC 8446 §5.1).
const LEGACY_VERSION: [u8; 2] = [0x03, 0x03];

/// Why a record could not be protected or opened. Each is fatal for the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The AEAD refused the record (a forged or corrupted record): `bad_record_mac`.
    BadRecordMac,
    /// Longer than the protocol allows: `record_overflow`.
    Overflow,
    /// TLS 1.3: a record that is only padding, or a header type other than application data.
    Unexpected,
    /// The sequence number would wrap: the keys are spent.
    Exhausted,
}

/// What one opened record holds: its content type and where its plaintext is in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    pub content_type: u8,
    /// The plaintext is `record[start..end]`.
    pub start: usize,
    pub end: usize,
}

/// The key, static IV and next sequence number of one direction.
pub struct RecordKey {
    key: LessSafeKey,
    iv: [u8; NONCE_LEN],
    seq: u64,
    version: TlsVersion,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key or the IV.
        f.debug_struct("RecordKey")
            .field("version", &self.version)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RecordKey {
    /// One direction's protection from rustls' secrets, the next record being number `seq`.
    pub fn new(
        version: TlsVersion,
        secrets: &ConnectionTrafficSecrets,
        seq: u64,
    ) -> Result<Self, String> {
        let (algorithm, key, iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            #[allow(unreachable_patterns)]
            _ => return Err("a cipher suite wssedge does not offer".into()),
        };
        let key = UnboundKey::new(algorithm, key.as_ref())
            .map_err(|_| format!("a {algorithm:?} key of the wrong length"))?;
        let iv: [u8; NONCE_LEN] = iv
            .as_ref()
            .try_into()
            .map_err(|_| format!("an IV of {} bytes, not {NONCE_LEN}", iv.as_ref().len()))?;
        Ok(Self {
            key: LessSafeKey::new(key),
            iv,
            seq,
            version,
        })
    }

    /// The cipher, for the key budget.
    pub fn cipher(&self) -> Cipher {
        let alg = self.key.algorithm();
        if alg == &aead::AES_128_GCM {
            Cipher::Aes128Gcm
        } else if alg == &aead::AES_256_GCM {
            Cipher::Aes256Gcm
        } else {
            Cipher::Chacha20Poly1305
        }
    }

    /// Records protected (or opened) under these keys so far, counted from rustls' first.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    fn explicit_nonce(&self) -> bool {
        self.version == TlsVersion::Tls12 && self.cipher() != Cipher::Chacha20Poly1305
    }

    /// Bytes before a record's plaintext: the header, and TLS 1.2 AES-GCM's explicit nonce.
    pub fn prefix_len(&self) -> usize {
        HEADER_LEN
            + if self.explicit_nonce() {
                EXPLICIT_NONCE_LEN
            } else {
                0
            }
    }

    /// The per-record nonce: the static IV with the sequence number XORed into its last 8
    /// bytes (RFC 8446 §5.3; rustls builds TLS 1.2's the same way, and sends its last 8 bytes
    /// as the explicit part).
    fn nonce(&self, seq: u64) -> [u8; NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// Seals the record that starts at `out[start]`: the caller reserved
    /// [`prefix_len`](Self::prefix_len) bytes there and appended at most
    /// [`MAX_PLAINTEXT_PER_RECORD`] bytes of plaintext after them; `content_type` is what the
    /// plaintext is. On return the record is complete at the end of `out`.
    pub fn seal(
        &mut self,
        out: &mut Vec<u8>,
        start: usize,
        content_type: u8,
    ) -> Result<(), RecordError> {
        let prefix = self.prefix_len();
        debug_assert!(
            out.len() >= start + prefix,
            "the record's prefix was reserved"
        );
        let plain_len = out.len() - start - prefix;
        if plain_len > MAX_PLAINTEXT_PER_RECORD {
            return Err(RecordError::Overflow);
        }
        if self.seq == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let nonce = self.nonce(self.seq);
        let (outer_type, body_len) = match self.version {
            TlsVersion::Tls13 => {
                // The real type goes inside, after the plaintext (no padding).
                out.push(content_type);
                (CONTENT_APPLICATION_DATA, plain_len + 1 + TAG_LEN)
            }
            TlsVersion::Tls12 => (content_type, prefix - HEADER_LEN + plain_len + TAG_LEN),
        };
        let header = record_header(outer_type, body_len);
        out[start..start + HEADER_LEN].copy_from_slice(&header);
        let aad12;
        let aad: &[u8] = match self.version {
            TlsVersion::Tls13 => &header,
            TlsVersion::Tls12 => {
                aad12 = tls12_aad(self.seq, content_type, plain_len);
                &aad12
            }
        };
        if self.explicit_nonce() {
            out[start + HEADER_LEN..start + prefix].copy_from_slice(&nonce[4..]);
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[start + prefix..],
            )
            .map_err(|_| RecordError::Exhausted)?;
        out.extend_from_slice(tag.as_ref());
        self.seq += 1;
        Ok(())
    }

    /// Opens one whole record (header included) in place.
    pub fn open(&mut self, record: &mut [u8]) -> Result<Opened, RecordError> {
        let body_len = record.len() - HEADER_LEN;
        let max_body = match self.version {
            // RFC 8446 §5.2: 2^14 + 256.
            TlsVersion::Tls13 => MAX_PLAINTEXT_PER_RECORD + 256,
            // RFC 5246 §6.2.3: 2^14 + 2048.
            TlsVersion::Tls12 => MAX_PLAINTEXT_PER_RECORD + 2048,
        };
        if body_len > max_body {
            return Err(RecordError::Overflow);
        }
        if self.seq == u64::MAX {
            return Err(RecordError::Exhausted);
        }
        let header: [u8; HEADER_LEN] = record[..HEADER_LEN].try_into().expect("a header");
        let opened = match self.version {
            TlsVersion::Tls13 => {
                if header[0] != CONTENT_APPLICATION_DATA || body_len < TAG_LEN + 1 {
                    return Err(RecordError::Unexpected);
                }
                let nonce = self.nonce(self.seq);
                let plain = self
                    .key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&header),
                        &mut record[HEADER_LEN..],
                    )
                    .map_err(|_| RecordError::BadRecordMac)?;
                // Padding is zeros after the real content type (RFC 8446 §5.4).
                let Some(type_at) = plain.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::Unexpected);
                };
                Opened {
                    content_type: plain[type_at],
                    start: HEADER_LEN,
                    end: HEADER_LEN + type_at,
                }
            }
            TlsVersion::Tls12 => {
                let explicit = if self.explicit_nonce() {
                    EXPLICIT_NONCE_LEN
                } else {
                    0
                };
                if body_len < explicit + TAG_LEN {
                    return Err(RecordError::BadRecordMac);
                }
                let plain_len = body_len - explicit - TAG_LEN;
                let nonce = if explicit > 0 {
                    // The sender's explicit nonce, whatever it chose (RFC 5288 §3).
                    let mut n = self.iv;
                    n[4..].copy_from_slice(&record[HEADER_LEN..HEADER_LEN + explicit]);
                    n
                } else {
                    self.nonce(self.seq)
                };
                let aad = tls12_aad(self.seq, header[0], plain_len);
                self.key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&aad),
                        &mut record[HEADER_LEN + explicit..],
                    )
                    .map_err(|_| RecordError::BadRecordMac)?;
                Opened {
                    content_type: header[0],
                    start: HEADER_LEN + explicit,
                    end: HEADER_LEN + explicit + plain_len,
                }
            }
        };
        self.seq += 1;
        Ok(opened)
    }
}

fn record_header(content_type: u8, body_len: usize) -> [u8; HEADER_LEN] {
    let len = (body_len as u16).to_be_bytes();
    [
        content_type,
        LEGACY_VERSION[0],
        LEGACY_VERSION[1],
        len[0],
        len[1],
    ]
}

/// TLS 1.2's additional data: seq_num ‖ type ‖ version ‖ plaintext length (RFC 5246 §6.2.3.3).
fn tls12_aad(seq: u64, content_type: u8, plain_len: usize) -> [u8; 13] {
    let mut aad = [0u8; 13];
    aad[..8].copy_from_slice(&seq.to_be_bytes());
    aad[8] = content_type;
    aad[9..11].copy_from_slice(&LEGACY_VERSION);
    aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
    aad
}

/// The length of the whole record at the front of `buf` (header included), once its header
/// has arrived.
pub fn record_len(buf: &[u8]) -> Option<usize> {
    let h = buf.get(..HEADER_LEN)?;
    Some(HEADER_LEN + usize::from(u16::from_be_bytes([h[3], h[4]])))
}
