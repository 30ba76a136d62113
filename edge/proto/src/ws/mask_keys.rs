//! Where a client-role [`Session`](super::Session) draws its masking keys. The protocol crate
//! reads no randomness itself: the runtime hands in a source (the edge's is backed by the
//! system CSPRNG), tests a deterministic one.

/// Fills buffers with fresh, unpredictable bytes for masking keys (RFC 6455 §5.3: each frame's
/// key must not be predictable by the peer).
pub trait MaskKeySource: Send {
    /// Overwrites all of `buf`.
    fn fill(&mut self, buf: &mut [u8]);
}

impl<F: FnMut(&mut [u8]) + Send> MaskKeySource for F {
    fn fill(&mut self, buf: &mut [u8]) {
        self(buf)
    }
}

/// A deterministic source for tests (SplitMix64): varied keys, the same on every run.
#[cfg(test)]
pub(crate) fn test_source(seed: u64) -> impl MaskKeySource {
    let mut state = seed;
    move |buf: &mut [u8]| {
        for chunk in buf.chunks_mut(8) {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}
