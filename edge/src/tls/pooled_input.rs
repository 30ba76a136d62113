//! A session's read buffer after the hand-off, borrowed from the core's pool only while it
//! holds something: an idle connection keeps no read buffer. The kernel session reads
//! plaintext into it, the userspace one ciphertext; both fill, drain and give it back alike.

use bytes::BytesMut;

use crate::bufpool::BufPool;

/// Bytes read from the socket, `buf[..filled]`.
#[derive(Default)]
pub(crate) struct PooledInput {
    buf: Option<Vec<u8>>,
    filled: usize,
}

impl PooledInput {
    /// Space to read into (a buffer from the pool while none is held).
    pub fn space(&mut self, pool: &mut BufPool) -> &mut [u8] {
        let buf = self.buf.get_or_insert_with(|| pool.take());
        &mut buf[self.filled..]
    }

    /// `n` bytes were read into [`space`](Self::space).
    pub fn commit(&mut self, n: usize) {
        self.filled += n;
    }

    /// What was read and not consumed yet.
    pub fn filled_mut(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(buf) => &mut buf[..self.filled],
            None => &mut [],
        }
    }

    pub fn len(&self) -> usize {
        self.filled
    }

    /// Moves everything read into `out`.
    pub fn drain_into(&mut self, out: &mut BytesMut) {
        out.extend_from_slice(self.filled_mut());
        self.filled = 0;
    }

    /// The first `n` bytes are consumed; what follows (a partial record) moves to the front.
    pub fn consume(&mut self, n: usize) {
        if let Some(buf) = &mut self.buf {
            buf.copy_within(n..self.filled, 0);
        }
        self.filled -= n;
    }

    /// Forgets what was read (nothing after a close_notify counts).
    pub fn clear(&mut self) {
        self.filled = 0;
    }

    /// Gives the buffer back to the pool when it holds nothing.
    pub fn release_idle(&mut self, pool: &mut BufPool) {
        if self.filled == 0 {
            if let Some(buf) = self.buf.take() {
                pool.give(buf);
            }
        }
    }

    pub fn is_held(&self) -> bool {
        self.buf.is_some()
    }
}

/// Frees an output buffer that holds nothing (kept between the writes of a burst only).
pub(crate) fn free_if_empty(out: &mut Vec<u8>) {
    if out.is_empty() && out.capacity() > 0 {
        *out = Vec::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_a_pooled_buffer_only_while_it_holds_bytes() {
        let mut pool = BufPool::new(64, 4);
        let mut input = PooledInput::default();
        assert!(!input.is_held());
        input.space(&mut pool)[..5].copy_from_slice(b"hello");
        input.commit(5);
        input.release_idle(&mut pool);
        assert!(input.is_held(), "unconsumed bytes keep the buffer");
        input.consume(2);
        assert_eq!(input.filled_mut(), b"llo");
        let mut out = BytesMut::new();
        input.drain_into(&mut out);
        assert_eq!(&out[..], b"llo");
        input.release_idle(&mut pool);
        assert!(!input.is_held());
        assert_eq!(input.filled_mut(), b"");
    }

    #[test]
    fn free_if_empty_keeps_a_buffer_with_bytes() {
        let mut out = Vec::with_capacity(16);
        free_if_empty(&mut out);
        assert_eq!(out.capacity(), 0);
        out.push(1);
        free_if_empty(&mut out);
        assert_eq!(out, [1]);
    }
}
