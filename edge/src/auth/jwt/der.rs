//! Just enough DER to hand aws-lc-rs an RSA key given as JWK `n` and `e`: the PKCS#1
//! `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017 A.1.1).
//! Every RSA key, from PEM or JWKS, goes through [`rsa_public_key`], so one path checks them.

/// Big-endian unsigned bytes without leading zeros (JWK allows none; DER parsers may give one).
pub fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

/// The bit length of an unsigned big-endian integer.
pub fn bit_len(b: &[u8]) -> usize {
    let b = strip_leading_zeros(b);
    match b.first() {
        None => 0,
        Some(&top) => b.len() * 8 - top.leading_zeros() as usize,
    }
}

/// PKCS#1 `RSAPublicKey` DER from unsigned big-endian `n` and `e`.
pub fn rsa_public_key(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(0x30);
    length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn integer(out: &mut Vec<u8>, unsigned: &[u8]) {
    let v = strip_leading_zeros(unsigned);
    // A set top bit would read as negative: DER prefixes one zero byte.
    let pad = v.first().is_none_or(|&b| b & 0x80 != 0);
    out.push(0x02);
    length(out, v.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

fn length(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let sig = strip_leading_zeros(&bytes);
        out.push(0x80 | sig.len() as u8);
        out.extend_from_slice(sig);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_integers_encode_minimally() {
        assert_eq!(
            rsa_public_key(&[0x00, 0x81], &[0x01, 0x00, 0x01]),
            vec![0x30, 0x09, 0x02, 0x02, 0x00, 0x81, 0x02, 0x03, 0x01, 0x00, 0x01]
        );
    }

    #[test]
    fn long_lengths_use_the_long_form() {
        let n = vec![0xC0; 256];
        let der = rsa_public_key(&n, &[3]);
        // SEQUENCE, 0x82 + two length bytes; INTEGER, 0x82 0x01 0x01 (256 + pad byte).
        assert_eq!(&der[..2], &[0x30, 0x82]);
        assert_eq!(&der[4..8], &[0x02, 0x82, 0x01, 0x01]);
        assert_eq!(bit_len(&n), 2048);
        assert_eq!(bit_len(&[0, 0, 1]), 1);
        assert_eq!(bit_len(&[]), 0);
    }
}
