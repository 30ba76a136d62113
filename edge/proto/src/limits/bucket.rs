//! One token bucket, sans-IO and in integers.
//!
//! The level is kept in pico-tokens (10⁻¹² token). A rate in thousandths of a token per second
//! is exactly that many pico-tokens per nanosecond, so a refill is one multiplication of the
//! elapsed nanoseconds — no division, no rounding, no drift however the instants are spaced.

use std::time::Instant;

use super::Rate;

/// Pico-tokens per token.
const PICO: i128 = 1_000_000_000_000;

/// A token bucket fed instants by its caller; it never reads the clock.
///
/// It starts full. [`try_take`](Self::try_take) takes `n` tokens or nothing.
///
/// **Oversized takes.** A take larger than the whole burst could never fit, and letting it
/// through for free would make the limit a suggestion for anyone sending large messages. So
/// it is refused unless the bucket is full; then it passes and drives the level negative: the
/// debt is repaid by the refill before anything else passes, and the average rate holds.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Pico-tokens per nanosecond (= thousandths of a token per second).
    rate: u64,
    burst: u64,
    /// Pico-tokens; negative while an oversized take is being repaid.
    level: i128,
    /// The latest instant seen; earlier instants (from another core's clock read, say) add
    /// nothing rather than moving time backwards.
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: Rate, now: Instant) -> Self {
        Self {
            rate: rate.milli_per_s(),
            burst: rate.burst(),
            level: i128::from(rate.burst()) * PICO,
            last: now,
        }
    }

    /// Takes `n` tokens at `now` if they are there (see the type's note on oversized takes);
    /// a refused take leaves the bucket as it was, apart from the refill up to `now`.
    pub fn try_take(&mut self, now: Instant, n: u64) -> bool {
        self.refill(now);
        if self.can_take(n) {
            self.take(n);
            true
        } else {
            false
        }
    }

    /// Whole tokens available at the last instant seen (negative while in debt).
    pub fn available(&self) -> i128 {
        self.level.div_euclid(PICO)
    }

    fn capacity(&self) -> i128 {
        i128::from(self.burst) * PICO
    }

    /// Adds what the rate gave since the last instant, up to the burst.
    pub fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_nanos();
        if elapsed == 0 {
            return;
        }
        self.last = now;
        let capacity = self.capacity();
        if self.level >= capacity {
            return;
        }
        // Saturating: after a long quiet spell the product can exceed u128, and anything
        // that large fills the bucket anyway.
        let gain = elapsed.saturating_mul(u128::from(self.rate));
        let gain = i128::try_from(gain).unwrap_or(i128::MAX);
        self.level = self.level.saturating_add(gain).min(capacity);
    }

    /// Whether `n` tokens can be taken now (after [`refill`](Self::refill)).
    pub fn can_take(&self, n: u64) -> bool {
        if n == 0 {
            // Costs nothing, so even a bucket in debt has nothing to refuse it for.
            return true;
        }
        if n > self.burst {
            return self.level >= self.capacity();
        }
        self.level >= i128::from(n) * PICO
    }

    /// Takes `n` tokens; the caller checked [`can_take`](Self::can_take).
    pub fn take(&mut self, n: u64) {
        self.level -= i128::from(n) * PICO;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn burst_then_steady_rate_exact_counts() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(10, 5), t0);
        let passed = (0..100).filter(|_| b.try_take(t0, 1)).count();
        assert_eq!(passed, 5, "the burst, all at once");
        // One token every 100 ms, not a nanosecond earlier.
        assert!(!b.try_take(t0 + ms(100) - Duration::from_nanos(1), 1));
        assert!(b.try_take(t0 + ms(100), 1));
        assert!(!b.try_take(t0 + ms(100), 1));
        // Trying every millisecond for the rest of 10 s: exactly the rate, 10 per second.
        let mut passed = 1;
        for i in 101..=10_000 {
            while b.try_take(t0 + ms(i), 1) {
                passed += 1;
            }
        }
        assert_eq!(passed, 100);
    }

    #[test]
    fn rates_that_do_not_divide_a_second_do_not_drift() {
        // 3 tokens/s is 333_333_333.3 ns each: a nanosecond clock would drift, pico-tokens do not.
        let t0 = Instant::now();
        // (A burst of 2 so the cap never clips a token that arrived between two tries.)
        let mut b = TokenBucket::new(Rate::per_second(3, 2), t0);
        assert!(b.try_take(t0, 2));
        let mut passed = 0;
        for i in 1..=300_000u64 {
            // Steps of 70 µs: the token boundaries (every 333_333_333.3 ns) fall between them.
            if b.try_take(t0 + Duration::from_micros(i * 70), 1) {
                passed += 1;
            }
        }
        // 21 s at 3/s.
        assert_eq!(passed, 63);
        // Fractional rates too: 0.5/s (500 milli) refills one token every 2 s.
        let mut half = TokenBucket::new(Rate::from_milli(500, 1), t0);
        assert!(half.try_take(t0, 1));
        assert!(!half.try_take(t0 + ms(1999), 1));
        assert!(half.try_take(t0 + ms(2000), 1));
    }

    #[test]
    fn a_refused_take_takes_nothing() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(100, 100), t0);
        assert!(b.try_take(t0, 60));
        assert!(!b.try_take(t0, 41), "41 > the 40 left");
        assert_eq!(b.available(), 40);
        assert!(b.try_take(t0, 40));
    }

    #[test]
    fn oversized_takes_pass_only_from_full_and_leave_a_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(100, 100), t0);
        assert!(b.try_take(t0, 1));
        assert!(!b.try_take(t0, 250), "not full: refused");
        assert!(b.try_take(t0 + ms(10), 250), "full again: passes");
        assert_eq!(b.available(), -150);
        // The debt is repaid first: nothing for 1.5 s, then the rate resumes.
        assert!(!b.try_take(t0 + ms(1509), 1));
        assert!(b.try_take(t0 + ms(1520), 1));
        // Zero costs nothing even in debt (the message count is a separate bucket).
        assert!(b.try_take(t0 + ms(1520), 0));
    }

    #[test]
    fn time_never_runs_backwards() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(1, 1), t0 + ms(1000));
        assert!(b.try_take(t0 + ms(1000), 1));
        assert!(!b.try_take(t0, 1), "an earlier instant adds nothing");
        assert!(!b.try_take(t0 + ms(1999), 1));
        assert!(b.try_take(t0 + ms(2000), 1));
    }

    #[test]
    fn huge_gaps_saturate_to_full() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Rate::per_second(100_000_000_000, 1_000_000_000_000), t0);
        assert!(b.try_take(t0, 1_000_000_000_000));
        b.refill(t0 + Duration::from_secs(10 * 365 * 86_400));
        assert_eq!(b.available(), 1_000_000_000_000);
    }
}
