//! rustls' negotiated suite, version and traffic secrets → the kernel layouts of
//! [`wssedge_proto::ktls_crypto_info`].

use rustls::{ConnectionTrafficSecrets, ProtocolVersion, SupportedCipherSuite};

use super::crypto_info::{Cipher, CryptoInfo, CryptoInfoError, TlsVersion};

/// The kernel cipher of a rustls suite, if the offload knows it.
pub fn cipher_of_suite(suite: SupportedCipherSuite) -> Option<Cipher> {
    use rustls::CipherSuite as S;
    match suite.suite() {
        S::TLS13_AES_128_GCM_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => Some(Cipher::Aes128Gcm),
        S::TLS13_AES_256_GCM_SHA384
        | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Cipher::Aes256Gcm),
        S::TLS13_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(Cipher::Chacha20Poly1305),
        _ => None,
    }
}

/// The kernel's TLS version of a negotiated rustls version, if the offload knows it.
pub fn tls_version_of(version: ProtocolVersion) -> Option<TlsVersion> {
    match version {
        ProtocolVersion::TLSv1_2 => Some(TlsVersion::Tls12),
        ProtocolVersion::TLSv1_3 => Some(TlsVersion::Tls13),
        _ => None,
    }
}

/// The crypto info for one direction's `secrets` at record sequence number `seq`.
pub fn crypto_info_of(
    version: TlsVersion,
    secrets: &ConnectionTrafficSecrets,
    seq: u64,
) -> Result<CryptoInfo, CryptoInfoError> {
    let (cipher, key, iv) = match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (Cipher::Aes128Gcm, key, iv),
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (Cipher::Aes256Gcm, key, iv),
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            (Cipher::Chacha20Poly1305, key, iv)
        }
        // The enum is non-exhaustive; anything newer is not offloaded.
        #[allow(unreachable_patterns)]
        _ => {
            return Err(CryptoInfoError::KeyLength {
                cipher: "an unknown cipher",
                got: 0,
            })
        }
    };
    CryptoInfo::from_parts(version, cipher, key.as_ref(), iv.as_ref(), seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::ktls::crypto_info as layout;

    #[test]
    fn every_suite_of_the_policy_maps_to_a_kernel_cipher() {
        for suite in crate::tls::policy::CIPHER_SUITES {
            assert!(
                cipher_of_suite(*suite).is_some(),
                "{:?} has no kernel cipher",
                suite.suite()
            );
        }
    }

    /// The protocol crate keeps `<linux/tls.h>`'s numbers as its own constants (it takes no
    /// libc); they must be libc's.
    #[test]
    fn the_layout_numbers_are_the_kernel_headers() {
        assert_eq!(layout::TLS_1_2_VERSION, libc::TLS_1_2_VERSION);
        assert_eq!(layout::TLS_1_3_VERSION, libc::TLS_1_3_VERSION);
        assert_eq!(layout::TLS_CIPHER_AES_GCM_128, libc::TLS_CIPHER_AES_GCM_128);
        assert_eq!(layout::TLS_CIPHER_AES_GCM_256, libc::TLS_CIPHER_AES_GCM_256);
        assert_eq!(
            layout::TLS_CIPHER_CHACHA20_POLY1305,
            libc::TLS_CIPHER_CHACHA20_POLY1305
        );
        let headers = [
            (
                Cipher::Aes128Gcm,
                libc::TLS_CIPHER_AES_GCM_128,
                libc::TLS_CIPHER_AES_GCM_128_KEY_SIZE,
                libc::TLS_CIPHER_AES_GCM_128_IV_SIZE,
                libc::TLS_CIPHER_AES_GCM_128_SALT_SIZE,
                libc::TLS_CIPHER_AES_GCM_128_REC_SEQ_SIZE,
            ),
            (
                Cipher::Aes256Gcm,
                libc::TLS_CIPHER_AES_GCM_256,
                libc::TLS_CIPHER_AES_GCM_256_KEY_SIZE,
                libc::TLS_CIPHER_AES_GCM_256_IV_SIZE,
                libc::TLS_CIPHER_AES_GCM_256_SALT_SIZE,
                libc::TLS_CIPHER_AES_GCM_256_REC_SEQ_SIZE,
            ),
            (
                Cipher::Chacha20Poly1305,
                libc::TLS_CIPHER_CHACHA20_POLY1305,
                libc::TLS_CIPHER_CHACHA20_POLY1305_KEY_SIZE,
                libc::TLS_CIPHER_CHACHA20_POLY1305_IV_SIZE,
                libc::TLS_CIPHER_CHACHA20_POLY1305_SALT_SIZE,
                libc::TLS_CIPHER_CHACHA20_POLY1305_REC_SEQ_SIZE,
            ),
        ];
        for (cipher, id, key, iv, salt, rec_seq) in headers {
            let name = cipher.name();
            assert_eq!(cipher.kernel_id(), id, "{name}");
            assert_eq!(cipher.key_len(), key, "{name}");
            assert_eq!(cipher.iv_len(), iv, "{name}");
            assert_eq!(cipher.salt_len(), salt, "{name}");
            assert_eq!(layout::REC_SEQ_LEN, rec_seq, "{name}");
            let info =
                CryptoInfo::from_parts(TlsVersion::Tls13, cipher, &vec![0; key], &[0; 12], 0)
                    .unwrap();
            assert_eq!(
                info.as_bytes().len(),
                4 + iv + key + salt + rec_seq,
                "{name}"
            );
        }
    }
}
