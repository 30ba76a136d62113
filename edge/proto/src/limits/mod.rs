//! Rate arithmetic, sans-IO and in integers: a [`Rate`], the [`TokenBucket`] it feeds and
//! the shared identity budget's arithmetic ([`budget`]).
//! The caller passes the instants; nothing here reads a clock.

mod bucket;
pub mod budget;

pub use bucket::TokenBucket;

/// Rates are held in thousandths of a token per second: fine enough for "one message every
/// 20 s" (0.05/s), coarse enough that the largest rate times a day of nanoseconds fits u128.
pub const MILLI: u64 = 1000;

/// One unit's limit in integers: a refill rate in thousandths of a token per second and a
/// burst (the bucket's capacity) in whole tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    milli_per_s: u64,
    burst: u64,
}

impl Rate {
    /// `per_s` whole tokens per second, holding at most `burst`. Both are raised to at least 1:
    /// a zero rate or burst would refuse everything, which is not a rate limit.
    pub fn per_second(per_s: u64, burst: u64) -> Self {
        Self::from_milli(per_s.saturating_mul(MILLI), burst)
    }

    /// `milli_per_s` thousandths of a token per second, holding at most `burst` tokens.
    pub fn from_milli(milli_per_s: u64, burst: u64) -> Self {
        Self {
            milli_per_s: milli_per_s.max(1),
            burst: burst.max(1),
        }
    }

    /// Thousandths of a token per second, which is also pico-tokens per nanosecond.
    pub fn milli_per_s(&self) -> u64 {
        self.milli_per_s
    }

    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Whole tokens the rate refills in `nanos`, rounded down.
    pub fn tokens_in(&self, nanos: u128) -> u64 {
        let pico = nanos.saturating_mul(u128::from(self.milli_per_s));
        u64::try_from(pico / 1_000_000_000_000).unwrap_or(u64::MAX)
    }
}
