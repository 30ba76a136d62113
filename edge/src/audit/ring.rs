//! A bounded queue between one core (the producer) and the writer thread (the consumer): the
//! core's side of the trail.
//!
//! Why not a channel: std's mpsc is unbounded (the house rules want a cap) and a mutex would let
//! the writer thread stall a core. The queue is crossbeam's `ArrayQueue` (bounded, lock-free,
//! slots allocated once); a push to a full queue hands the value back, which is where the sink's
//! overflow list takes over. The three handles keep the roles apart: one `Producer` and one
//! `Consumer` (neither `Clone`), and any number of depth readers.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// The pushing end (moves to its core).
pub(crate) struct Producer<T> {
    queue: Arc<ArrayQueue<T>>,
}

/// The popping end (the writer thread).
pub(crate) struct Consumer<T> {
    queue: Arc<ArrayQueue<T>>,
}

/// Reads the depth from any thread (metrics).
pub(crate) struct Gauge<T> {
    queue: Arc<ArrayQueue<T>>,
}

/// A queue of `capacity` records (at least one).
pub(crate) fn ring<T>(capacity: usize) -> (Producer<T>, Consumer<T>, Gauge<T>) {
    let queue = Arc::new(ArrayQueue::new(capacity.max(1)));
    (
        Producer {
            queue: queue.clone(),
        },
        Consumer {
            queue: queue.clone(),
        },
        Gauge { queue },
    )
}

impl<T> Producer<T> {
    /// Pushes, or hands the value back when the ring is full. On success returns the depth
    /// right after the push (the consumer may have taken some since).
    pub(crate) fn push(&self, value: T) -> Result<usize, T> {
        self.queue.push(value)?;
        Ok(self.queue.len().max(1))
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

impl<T> Consumer<T> {
    pub(crate) fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

impl<T> Gauge<T> {
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
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
            assert_eq!(p.len(), 3);
            assert_eq!(c.pop(), Some(round * 10));
            assert_eq!(c.pop(), Some(round * 10 + 1));
            assert_eq!(c.pop(), Some(round * 10 + 2));
            assert_eq!(c.pop(), None);
            assert_eq!(c.len(), 0);
        }
    }

    #[test]
    fn a_zero_capacity_still_holds_one() {
        let (p, c, _g) = ring::<u8>(0);
        assert_eq!(p.push(1), Ok(1));
        assert_eq!(p.push(2), Err(2));
        assert_eq!(c.pop(), Some(1));
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
