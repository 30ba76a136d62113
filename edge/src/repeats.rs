//! A failure that repeats — an accept failing while the process is out of descriptors, every
//! 20 ms — must not flood the log: one line per interval, saying how many there were (each one
//! is counted in its metric too).

use std::cell::Cell;
use std::time::{Duration, Instant};

/// One place's repeated failures (single-threaded: one per loop that can fail).
#[derive(Debug)]
pub(crate) struct Repeats {
    interval: Duration,
    /// When the next line may be written (`None`: at once).
    next_line: Cell<Option<Instant>>,
    /// Failures since the last line was written.
    unlogged: Cell<u64>,
}

impl Repeats {
    pub const fn every(interval: Duration) -> Self {
        Self {
            interval,
            next_line: Cell::new(None),
            unlogged: Cell::new(0),
        }
    }

    /// Counts one failure at `now`. `Some(n)`: write a line now, for the `n` failures since
    /// the last one (this one included); `None`: stay quiet.
    pub fn note(&self, now: Instant) -> Option<u64> {
        let n = self.unlogged.get() + 1;
        match self.next_line.get() {
            Some(at) if now < at => {
                self.unlogged.set(n);
                None
            }
            _ => {
                self.unlogged.set(0);
                self.next_line.set(Some(now + self.interval));
                Some(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_what_it_stands_for() {
        let r = Repeats::every(Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(r.note(t0), Some(1), "the first failure is said at once");
        // A failure every 20 ms for 10 s: quiet until the interval is over.
        let mut lines = Vec::new();
        for i in 1..=1000u32 {
            if let Some(n) = r.note(t0 + Duration::from_millis(20) * i) {
                lines.push((i, n));
            }
        }
        assert_eq!(lines, [(500, 500), (1000, 500)]);
        // After a quiet spell the next failure is said at once, alone.
        assert_eq!(r.note(t0 + Duration::from_secs(60)), Some(1));
    }
}
