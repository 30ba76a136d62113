//! A bounded single-producer single-consumer ring: the core's side of the trail.
//!
//! Why not a channel: std's mpsc is unbounded (the house rules want a cap) and a mutex would let
//! the writer thread stall a core. The protocol is Lamport's: `tail` counts pushes and is
//! written only by the producer, `head` counts pops and is written only by the consumer; both
//! only grow (wrapping), a slot is `index % capacity`. The producer owns the slots outside
//! `[head, tail)`, the consumer those inside it, and each hands slots over with a Release store
//! that the other side reads with Acquire.

use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Keeps `head` and `tail` on separate cache lines so the two threads do not share one.
#[repr(align(128))]
struct Padded(AtomicUsize);

struct Inner<T> {
    slots: Box<[UnsafeCell<MaybeUninit<T>>]>,
    head: Padded,
    tail: Padded,
}

// SAFETY: the slots are shared between exactly one producer and one consumer (the only two
// handles, neither Clone nor Sync). A slot is written only by the producer while it is outside
// [head, tail) and read only by the consumer while inside it; the Release/Acquire pairs on
// `tail` and `head` order those accesses. Values move between threads, hence `T: Send`.
unsafe impl<T: Send> Sync for Inner<T> {}

impl<T> Inner<T> {
    fn len(&self) -> usize {
        // head first: tail read later is at least as new, so the difference never underflows;
        // it may exceed the capacity for a moment if both moved in between.
        let head = self.head.0.load(Ordering::Acquire);
        let tail = self.tail.0.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(self.slots.len())
    }
}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        let head = *self.head.0.get_mut();
        let tail = *self.tail.0.get_mut();
        let mut i = head;
        while i != tail {
            let slot = self.slots[i % self.slots.len()].get_mut();
            // SAFETY: both handles are gone (we hold `&mut`); every slot in [head, tail) was
            // written by a push and not yet read by a pop, so it holds an initialized value
            // that is dropped exactly once here.
            unsafe { slot.assume_init_drop() };
            i = i.wrapping_add(1);
        }
    }
}

/// The pushing end. `Send` (moves to its core) but not `Sync`, so `&self` methods are only ever
/// called from one thread at a time.
pub(crate) struct Producer<T> {
    inner: Arc<Inner<T>>,
    _not_sync: PhantomData<Cell<()>>,
}

/// The popping end (the writer thread).
pub(crate) struct Consumer<T> {
    inner: Arc<Inner<T>>,
    _not_sync: PhantomData<Cell<()>>,
}

/// Reads the depth from any thread (metrics).
pub(crate) struct Gauge<T> {
    inner: Arc<Inner<T>>,
}

pub(crate) fn ring<T>(capacity: usize) -> (Producer<T>, Consumer<T>, Gauge<T>) {
    let slots = (0..capacity.max(1))
        .map(|_| UnsafeCell::new(MaybeUninit::uninit()))
        .collect();
    let inner = Arc::new(Inner {
        slots,
        head: Padded(AtomicUsize::new(0)),
        tail: Padded(AtomicUsize::new(0)),
    });
    (
        Producer {
            inner: inner.clone(),
            _not_sync: PhantomData,
        },
        Consumer {
            inner: inner.clone(),
            _not_sync: PhantomData,
        },
        Gauge { inner },
    )
}

impl<T> Producer<T> {
    /// Pushes, or hands the value back when the ring is full. On success returns the depth
    /// right after the push.
    pub(crate) fn push(&self, value: T) -> Result<usize, T> {
        let inner = &*self.inner;
        let tail = inner.tail.0.load(Ordering::Relaxed); // only we write it
        let head = inner.head.0.load(Ordering::Acquire);
        let len = tail.wrapping_sub(head);
        if len >= inner.slots.len() {
            return Err(value);
        }
        let slot = inner.slots[tail % inner.slots.len()].get();
        // SAFETY: `tail` is outside [head, tail) so the consumer does not touch this slot until
        // the Release store below publishes it; the Acquire load of `head` ordered the
        // consumer's earlier read of this slot (if any) before this write. Only this producer
        // exists and it is !Sync, so no other thread writes here concurrently.
        unsafe { (*slot).write(value) };
        inner.tail.0.store(tail.wrapping_add(1), Ordering::Release);
        Ok(len + 1)
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

impl<T> Consumer<T> {
    pub(crate) fn pop(&self) -> Option<T> {
        let inner = &*self.inner;
        let head = inner.head.0.load(Ordering::Relaxed); // only we write it
        let tail = inner.tail.0.load(Ordering::Acquire);
        if head == tail {
            return None;
        }
        let slot = inner.slots[head % inner.slots.len()].get();
        // SAFETY: `head` is inside [head, tail): the producer's Release store of `tail`
        // (observed by our Acquire load) made its write of this slot visible, and it will not
        // write the slot again until our Release store of `head` hands it back. The value is
        // read out exactly once.
        let value = unsafe { (*slot).assume_init_read() };
        inner.head.0.store(head.wrapping_add(1), Ordering::Release);
        Some(value)
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

impl<T> Gauge<T> {
    pub(crate) fn len(&self) -> usize {
        self.inner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_full_and_wraparound() {
        let (p, c, g) = ring::<u32>(3);
        for round in 0..10 {
            assert_eq!(p.push(round * 10), Ok(1));
            assert_eq!(p.push(round * 10 + 1), Ok(2));
            assert_eq!(p.push(round * 10 + 2), Ok(3));
            assert_eq!(p.push(99), Err(99));
            assert_eq!(g.len(), 3);
            assert_eq!(c.pop(), Some(round * 10));
            assert_eq!(c.pop(), Some(round * 10 + 1));
            assert_eq!(c.pop(), Some(round * 10 + 2));
            assert_eq!(c.pop(), None);
            assert_eq!(c.len(), 0);
        }
    }

    #[test]
    fn values_left_in_the_ring_are_dropped_once() {
        let token = Arc::new(());
        {
            let (p, c, _g) = ring(8);
            for _ in 0..5 {
                p.push(token.clone()).unwrap();
            }
            drop(c.pop());
            assert_eq!(Arc::strong_count(&token), 5);
        }
        assert_eq!(Arc::strong_count(&token), 1);
    }

    #[test]
    fn two_threads_see_every_value_once_in_order() {
        const N: u64 = 200_000;
        let (p, c, _g) = ring::<Box<u64>>(64);
        let producer = std::thread::spawn(move || {
            for i in 0..N {
                let mut v = Box::new(i);
                loop {
                    match p.push(v) {
                        Ok(_) => break,
                        Err(back) => {
                            v = back;
                            std::thread::yield_now();
                        }
                    }
                }
            }
        });
        let mut next = 0;
        while next < N {
            if let Some(v) = c.pop() {
                assert_eq!(*v, next);
                next += 1;
            } else {
                std::thread::yield_now();
            }
        }
        producer.join().unwrap();
        assert_eq!(c.pop(), None);
    }
}
