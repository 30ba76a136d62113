//! In-place (un)masking of WebSocket payloads (RFC 6455 §5.3).
//!
//! Masking is a XOR with a 4-byte key repeated over the payload. A frame's payload may arrive in
//! pieces, so [`apply_mask`] takes the offset of `buf` inside the payload and rotates the key to
//! match. The bulk of the work is done a `u64` at a time, in safe code.

/// The key as it applies from payload byte number `offset` on, and the same repeated over a
/// `u64` for the bulk of the work.
fn key_at(mask: [u8; 4], offset: usize) -> ([u8; 4], u64) {
    let rot = offset % 4;
    let key = [
        mask[rot],
        mask[(rot + 1) % 4],
        mask[(rot + 2) % 4],
        mask[(rot + 3) % 4],
    ];
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    (key, wide)
}

/// XORs `buf` in place with `mask`, where `buf[0]` is payload byte number `offset` of the frame.
///
/// Masking and unmasking are the same operation.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let (key, wide) = key_at(mask, offset);
    let mut chunks = buf.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_ne_bytes(word) ^ wide;
        chunk.copy_from_slice(&x.to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, hence of 4: the key phase is unchanged.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i % 4];
    }
}

/// Appends `src` masked with `mask` to `out` in one pass (copy and XOR together), where `src[0]`
/// is payload byte number `offset` of the frame.
///
/// The client role needs this: its payloads are shared `Bytes` that must not be changed, so
/// masking has to produce a copy, and one pass over the bytes is the cheapest copy there is.
pub fn extend_masked(out: &mut Vec<u8>, src: &[u8], mask: [u8; 4], offset: usize) {
    out.reserve(src.len());
    let (key, wide) = key_at(mask, offset);
    let mut chunks = src.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        out.extend_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    for (i, b) in chunks.remainder().iter().enumerate() {
        out.push(b ^ key[i % 4]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(buf: &mut [u8], mask: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= mask[(offset + i) % 4];
        }
    }

    #[test]
    fn known_vector() {
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
        let mut data = *b"Hello";
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(data, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
        apply_mask(&mut data, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&data, b"Hello");
    }

    #[test]
    fn split_unmask_equals_whole() {
        let mask = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..100u8).collect();
        let mut whole = orig.clone();
        apply_mask(&mut whole, mask, 0);
        let mut parts = orig.clone();
        let (a, rest) = parts.split_at_mut(13);
        let (b, c) = rest.split_at_mut(30);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 13);
        apply_mask(c, mask, 43);
        assert_eq!(whole, parts);
    }

    #[test]
    fn empty_is_noop() {
        let mut e: [u8; 0] = [];
        apply_mask(&mut e, [9, 9, 9, 9], 3);
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn extend_masked_matches_in_place(data in proptest::collection::vec(any::<u8>(), 0..100),
                                          mask in any::<[u8; 4]>(), offset in 0usize..1000) {
            let mut in_place = data.clone();
            apply_mask(&mut in_place, mask, offset);
            let mut out = vec![0xAA];
            extend_masked(&mut out, &data, mask, offset);
            prop_assert_eq!(out[0], 0xAA);
            prop_assert_eq!(&out[1..], &in_place[..]);
        }

        #[test]
        fn matches_bytewise_xor(data in proptest::collection::vec(any::<u8>(), 0..100),
                                mask in any::<[u8; 4]>(), offset in 0usize..1000) {
            let mut fast = data.clone();
            let mut slow = data;
            apply_mask(&mut fast, mask, offset);
            naive(&mut slow, mask, offset);
            prop_assert_eq!(fast, slow);
        }
    }
}
