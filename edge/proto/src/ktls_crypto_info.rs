//! The `struct tls12_crypto_info_*` byte layouts `setsockopt(SOL_TLS, TLS_TX | TLS_RX)` takes,
//! built from a traffic key, its IV and the next record's sequence number.
//!
//! Every layout is a 4-byte header (`version`, `cipher_type`, native endian) followed by byte
//! arrays, so there is no padding and a byte buffer is exactly the C struct:
//!
//! | cipher            | iv | key | salt | rec_seq | total |
//! |-------------------|----|-----|------|---------|-------|
//! | AES-128-GCM       | 8  | 16  | 4    | 8       | 40    |
//! | AES-256-GCM       | 8  | 32  | 4    | 8       | 56    |
//! | ChaCha20-Poly1305 | 12 | 32  | 0    | 8       | 56    |
//!
//! For AES-GCM the 12-byte TLS IV is split: the first 4 bytes are the kernel's `salt`, the last
//! 8 its `iv`. ChaCha20-Poly1305 takes the whole IV and no salt. `rec_seq` is the next record's
//! sequence number, big-endian.

/// `TLS_1_2_VERSION` / `TLS_1_3_VERSION` of `<linux/tls.h>`: the wire versions.
pub const TLS_1_2_VERSION: u16 = crate::tls_wire::TLS12;
pub const TLS_1_3_VERSION: u16 = crate::tls_wire::TLS13;

/// `TLS_CIPHER_*` of `<linux/tls.h>` (the edge's tests hold them against libc's).
pub const TLS_CIPHER_AES_GCM_128: u16 = 51;
pub const TLS_CIPHER_AES_GCM_256: u16 = 52;
pub const TLS_CIPHER_CHACHA20_POLY1305: u16 = 54;

/// `rec_seq`'s length in every layout.
pub const REC_SEQ_LEN: usize = 8;

/// The record ciphers the kernel offload is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    Aes128Gcm,
    Aes256Gcm,
    Chacha20Poly1305,
}

impl Cipher {
    pub const ALL: [Cipher; 3] = [
        Cipher::Aes128Gcm,
        Cipher::Aes256Gcm,
        Cipher::Chacha20Poly1305,
    ];

    /// A stable label for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Gcm => "aes-128-gcm",
            Cipher::Aes256Gcm => "aes-256-gcm",
            Cipher::Chacha20Poly1305 => "chacha20-poly1305",
        }
    }

    /// Its `TLS_CIPHER_*` number.
    pub fn kernel_id(self) -> u16 {
        match self {
            Cipher::Aes128Gcm => TLS_CIPHER_AES_GCM_128,
            Cipher::Aes256Gcm => TLS_CIPHER_AES_GCM_256,
            Cipher::Chacha20Poly1305 => TLS_CIPHER_CHACHA20_POLY1305,
        }
    }

    /// The key's length in bytes (`TLS_CIPHER_*_KEY_SIZE`).
    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm => 16,
            Cipher::Aes256Gcm | Cipher::Chacha20Poly1305 => 32,
        }
    }

    /// Bytes of the 12-byte TLS IV that go into the kernel's `salt` (`TLS_CIPHER_*_SALT_SIZE`).
    pub fn salt_len(self) -> usize {
        match self {
            Cipher::Aes128Gcm | Cipher::Aes256Gcm => 4,
            Cipher::Chacha20Poly1305 => 0,
        }
    }

    /// Bytes of the 12-byte TLS IV that go into the kernel's `iv` (`TLS_CIPHER_*_IV_SIZE`).
    pub fn iv_len(self) -> usize {
        12 - self.salt_len()
    }

    /// The size of this cipher's `tls12_crypto_info_*` struct: the kernel's `getsockopt`
    /// refuses (EINVAL) any other length, larger buffers included.
    pub fn info_len(self) -> usize {
        4 + self.iv_len() + self.key_len() + self.salt_len() + REC_SEQ_LEN
    }
}

/// The TLS versions the kernel offload is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

impl TlsVersion {
    pub const ALL: [TlsVersion; 2] = [TlsVersion::Tls12, TlsVersion::Tls13];

    pub fn name(self) -> &'static str {
        match self {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        }
    }

    /// Its `TLS_1_*_VERSION` number.
    pub fn kernel_id(self) -> u16 {
        match self {
            TlsVersion::Tls12 => TLS_1_2_VERSION,
            TlsVersion::Tls13 => TLS_1_3_VERSION,
        }
    }
}

/// Why secrets cannot become a kernel crypto info.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoInfoError {
    #[error("the {got}-byte key does not fit {cipher}")]
    KeyLength { cipher: &'static str, got: usize },
}

/// One direction's `tls12_crypto_info_*`, ready for `setsockopt`. Key material is wiped when it
/// is dropped.
pub struct CryptoInfo {
    bytes: [u8; CryptoInfo::MAX_LEN],
    len: usize,
}

impl CryptoInfo {
    /// The longest layout (AES-256-GCM, ChaCha20-Poly1305).
    pub const MAX_LEN: usize = 56;

    /// The layout for `key` and the 12-byte TLS IV at record sequence number `seq` (the
    /// start-up probe passes a dummy key).
    pub fn from_parts(
        version: TlsVersion,
        cipher: Cipher,
        key: &[u8],
        iv12: &[u8],
        seq: u64,
    ) -> Result<Self, CryptoInfoError> {
        if key.len() != cipher.key_len() {
            return Err(CryptoInfoError::KeyLength {
                cipher: cipher.name(),
                got: key.len(),
            });
        }
        let mut info = Self {
            bytes: [0; Self::MAX_LEN],
            len: 0,
        };
        let (salt, iv) = iv12.split_at(cipher.salt_len().min(iv12.len()));
        info.push(&version.kernel_id().to_ne_bytes());
        info.push(&cipher.kernel_id().to_ne_bytes());
        info.push(iv);
        info.push(key);
        info.push(salt);
        info.push(&seq.to_be_bytes());
        Ok(info)
    }

    fn push(&mut self, part: &[u8]) {
        self.bytes[self.len..self.len + part.len()].copy_from_slice(part);
        self.len += part.len();
    }

    /// The struct's bytes, exactly as long as the C struct.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The `rec_seq` of a crypto info read back from the kernel: its last 8 bytes, big-endian
/// (every layout ends with it). `None` for a buffer too short to be one.
pub fn rec_seq_of(info: &[u8]) -> Option<u64> {
    if info.len() < 4 + REC_SEQ_LEN {
        return None;
    }
    let tail: [u8; REC_SEQ_LEN] = info[info.len() - REC_SEQ_LEN..].try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

impl Drop for CryptoInfo {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.bytes);
    }
}

impl std::fmt::Debug for CryptoInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CryptoInfo")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IV: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn info_len_is_the_length_of_the_layout() {
        assert_eq!(
            Cipher::ALL.map(Cipher::info_len),
            [40, 56, 56],
            "sizeof(tls12_crypto_info_aes_gcm_128 / _aes_gcm_256 / _chacha20_poly1305)"
        );
        for cipher in Cipher::ALL {
            let key = vec![7; cipher.key_len()];
            let info = CryptoInfo::from_parts(TlsVersion::Tls13, cipher, &key, &IV, 9).unwrap();
            assert_eq!(info.as_bytes().len(), cipher.info_len(), "{cipher:?}");
        }
    }

    #[test]
    fn aes_128_gcm_splits_the_iv_into_salt_and_iv() {
        let key = [0xaa; 16];
        let info =
            CryptoInfo::from_parts(TlsVersion::Tls13, Cipher::Aes128Gcm, &key, &IV, 1).unwrap();
        let b = info.as_bytes();
        assert_eq!(b.len(), 40);
        assert_eq!(&b[0..2], &0x0304u16.to_ne_bytes());
        assert_eq!(&b[2..4], &51u16.to_ne_bytes());
        assert_eq!(&b[4..12], &IV[4..12], "iv = the last 8 bytes");
        assert_eq!(&b[12..28], &key);
        assert_eq!(&b[28..32], &IV[0..4], "salt = the first 4 bytes");
        assert_eq!(&b[32..40], &[0, 0, 0, 0, 0, 0, 0, 1], "rec_seq big-endian");
    }

    #[test]
    fn aes_256_gcm_layout() {
        let key = [0xbb; 32];
        let info = CryptoInfo::from_parts(TlsVersion::Tls12, Cipher::Aes256Gcm, &key, &IV, 0x0102)
            .unwrap();
        let b = info.as_bytes();
        assert_eq!(b.len(), 56);
        assert_eq!(&b[0..2], &0x0303u16.to_ne_bytes());
        assert_eq!(&b[2..4], &52u16.to_ne_bytes());
        assert_eq!(&b[4..12], &IV[4..12]);
        assert_eq!(&b[12..44], &key);
        assert_eq!(&b[44..48], &IV[0..4]);
        assert_eq!(&b[48..56], &0x0102u64.to_be_bytes());
    }

    #[test]
    fn chacha20_poly1305_takes_the_whole_iv_and_no_salt() {
        let key = [0xcc; 32];
        let info =
            CryptoInfo::from_parts(TlsVersion::Tls13, Cipher::Chacha20Poly1305, &key, &IV, 7)
                .unwrap();
        let b = info.as_bytes();
        assert_eq!(b.len(), 56);
        assert_eq!(&b[2..4], &54u16.to_ne_bytes());
        assert_eq!(&b[4..16], &IV);
        assert_eq!(&b[16..48], &key);
        assert_eq!(&b[48..56], &7u64.to_be_bytes());
    }

    #[test]
    fn rec_seq_reads_back_from_every_layout() {
        for (cipher, key) in [
            (Cipher::Aes128Gcm, &[1u8; 16][..]),
            (Cipher::Aes256Gcm, &[2u8; 32][..]),
            (Cipher::Chacha20Poly1305, &[3u8; 32][..]),
        ] {
            let info =
                CryptoInfo::from_parts(TlsVersion::Tls13, cipher, key, &IV, 123_456).unwrap();
            assert_eq!(rec_seq_of(info.as_bytes()), Some(123_456));
        }
        assert_eq!(rec_seq_of(&[0; 8]), None);
    }

    #[test]
    fn a_key_of_the_wrong_length_is_refused() {
        let err = CryptoInfo::from_parts(TlsVersion::Tls13, Cipher::Aes256Gcm, &[0; 16], &IV, 0)
            .unwrap_err();
        assert!(err.to_string().contains("aes-256-gcm"), "{err}");
    }
}
