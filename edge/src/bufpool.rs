//! A per-core pool of read buffers.
//!
//! Reads are readiness-first: a connection takes a buffer only once its socket is readable and
//! gives it back as soon as everything in it has been consumed, so an idle connection holds no
//! buffer. The pool is per core (no locks) and capped: buffers beyond the cap are freed.
//!
//! Buffers are handed out at full length and already initialised: zeroing 64 KiB each time an
//! idle connection wakes would cost more than the read itself. Their contents are unspecified;
//! users track how much of a buffer they filled.

/// Capacity of every pooled buffer: room for a whole TLS record (16 KiB + overhead) several times.
pub const POOL_BUFFER_CAPACITY: usize = 64 * 1024;

/// A per-core stack of equally sized, empty buffers.
#[derive(Debug)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    max_retained: usize,
    capacity: usize,
}

impl BufPool {
    /// A pool handing out buffers of `capacity` bytes, keeping at most `max_retained` spare ones.
    pub fn new(capacity: usize, max_retained: usize) -> Self {
        Self {
            free: Vec::new(),
            max_retained,
            capacity,
        }
    }

    /// A buffer of exactly the pool's capacity in length, initialised, contents unspecified.
    pub fn take(&mut self) -> Vec<u8> {
        self.free.pop().unwrap_or_else(|| vec![0; self.capacity])
    }

    /// Returns a buffer. A buffer that grew past the pool's capacity (a large message) or does
    /// not fit the pool is freed rather than kept, so the pool never hoards memory.
    pub fn give(&mut self, mut buf: Vec<u8>) {
        if self.free.len() < self.max_retained
            && buf.capacity() >= self.capacity
            && buf.capacity() <= 2 * self.capacity
        {
            buf.truncate(self.capacity);
            if buf.len() < self.capacity {
                buf.resize(self.capacity, 0);
            }
            self.free.push(buf);
        }
    }

    /// Spare buffers held right now.
    pub fn spare(&self) -> usize {
        self.free.len()
    }

    /// The capacity of the buffers this pool hands out.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

impl Default for BufPool {
    fn default() -> Self {
        Self::new(POOL_BUFFER_CAPACITY, 64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_returned_buffers_and_frees_oversized_ones() {
        let mut pool = BufPool::new(1024, 2);
        let mut a = pool.take();
        assert_eq!(a.len(), 1024, "handed out at full length");
        a[..5].copy_from_slice(b"hello");
        let ptr = a.as_ptr();
        pool.give(a);
        assert_eq!(pool.spare(), 1);
        let b = pool.take();
        assert_eq!(b.as_ptr(), ptr, "the same buffer is reused");
        assert_eq!(b.len(), 1024, "a reused buffer comes back at full length");
        let big = Vec::with_capacity(1024 * 8);
        pool.give(big);
        assert_eq!(pool.spare(), 0, "an oversized buffer is freed, not hoarded");
        pool.give(b);
        pool.give(Vec::with_capacity(1024));
        pool.give(Vec::with_capacity(1024));
        assert_eq!(pool.spare(), 2, "the pool keeps at most its cap");
    }
}
