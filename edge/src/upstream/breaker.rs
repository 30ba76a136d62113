//! A consecutive-failure circuit breaker per upstream member, shared by every core.
//!
//! Closed → (N consecutive failures) → Open → (open_ms later) → HalfOpen: one probe connection at
//! a time → Closed on its success, Open again on its failure.
//!
//! The whole state is one `AtomicU64` changed by compare-and-swap, so the cores never take a
//! lock and never see the state half-updated (the failure count, the probe slot and the opening
//! time always move together). Sans-IO: the caller passes the time.
//!
//! Layout of the word: bits 0–1 state, bit 2 probe in flight, bits 3–23 consecutive failures
//! (saturating), bits 24–63 the opening time in milliseconds since the breaker's epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The state as metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

/// What [`Breaker::try_acquire`] allowed: an ordinary connection, or the one half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Normal,
    Probe,
}

const STATE_MASK: u64 = 0b11;
const PROBE: u64 = 0b100;
const FAIL_SHIFT: u32 = 3;
const FAIL_MAX: u64 = (1 << 21) - 1;
const TIME_SHIFT: u32 = 24;
const TIME_MAX: u64 = (1 << 40) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    state: BreakerState,
    probe: bool,
    failures: u64,
    opened_ms: u64,
}

impl Word {
    fn unpack(w: u64) -> Self {
        Self {
            state: match w & STATE_MASK {
                1 => BreakerState::Open,
                2 => BreakerState::HalfOpen,
                _ => BreakerState::Closed,
            },
            probe: w & PROBE != 0,
            failures: (w >> FAIL_SHIFT) & FAIL_MAX,
            opened_ms: w >> TIME_SHIFT,
        }
    }

    fn pack(self) -> u64 {
        (self.state as u64)
            | if self.probe { PROBE } else { 0 }
            | (self.failures.min(FAIL_MAX) << FAIL_SHIFT)
            | (self.opened_ms.min(TIME_MAX) << TIME_SHIFT)
    }
}

/// One member's breaker. `Send + Sync`: share it in an `Arc`.
#[derive(Debug)]
pub struct Breaker {
    word: AtomicU64,
    failures_to_open: u64,
    open_ms: u64,
    epoch: Instant,
    /// Closed → Open transitions, for metrics.
    opened_total: AtomicU64,
}

impl Breaker {
    /// `failures_to_open` ≥ 1 (validated by config); `epoch` is any instant before the first call.
    pub fn new(failures_to_open: u32, open: Duration, epoch: Instant) -> Self {
        Self {
            word: AtomicU64::new(0),
            failures_to_open: u64::from(failures_to_open.max(1)),
            open_ms: open.as_millis() as u64,
            epoch,
            opened_total: AtomicU64::new(0),
        }
    }

    fn ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Applies `f` atomically; `f` returns the new word, or None to leave it (and return None).
    fn update<T>(&self, mut f: impl FnMut(Word) -> Option<(Word, T)>) -> Option<T> {
        let mut cur = self.word.load(Ordering::Acquire);
        loop {
            let (next, out) = f(Word::unpack(cur))?;
            let packed = next.pack();
            if packed == cur {
                return Some(out);
            }
            match self
                .word
                .compare_exchange_weak(cur, packed, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(out),
                Err(actual) => cur = actual,
            }
        }
    }

    /// May a connection be tried now? `None`: the breaker refuses (open, or the half-open probe
    /// is already out).
    pub fn try_acquire(&self, now: Instant) -> Option<Admission> {
        let now_ms = self.ms(now);
        self.update(|w| match w.state {
            BreakerState::Closed => Some((w, Admission::Normal)),
            BreakerState::Open if now_ms.saturating_sub(w.opened_ms) >= self.open_ms => Some((
                Word {
                    state: BreakerState::HalfOpen,
                    probe: true,
                    ..w
                },
                Admission::Probe,
            )),
            BreakerState::Open => None,
            BreakerState::HalfOpen if !w.probe => {
                Some((Word { probe: true, ..w }, Admission::Probe))
            }
            BreakerState::HalfOpen => None,
        })
    }

    /// The connection succeeded. A probe (or any success while half-open) closes the breaker;
    /// a success while closed resets the failure count; a late success of a connection admitted
    /// before the breaker opened changes nothing (the probe decides).
    pub fn on_success(&self, admission: Admission) {
        // Most successes find a closed breaker with no failures: skip the shared write.
        let w = Word::unpack(self.word.load(Ordering::Acquire));
        if w.state == BreakerState::Closed && w.failures == 0 && admission == Admission::Normal {
            return;
        }
        self.update(|w| {
            let closed = Word {
                state: BreakerState::Closed,
                probe: false,
                failures: 0,
                opened_ms: 0,
            };
            match (w.state, admission) {
                (BreakerState::Closed, _) | (BreakerState::HalfOpen, _) => Some((closed, ())),
                (BreakerState::Open, _) => None,
            }
        });
    }

    /// The connection failed: count it, and open the breaker at the threshold or when the probe
    /// failed.
    pub fn on_failure(&self, admission: Admission, now: Instant) {
        let now_ms = self.ms(now);
        let opened = self.update(|w| {
            let open = Word {
                state: BreakerState::Open,
                probe: false,
                failures: w.failures + 1,
                opened_ms: now_ms,
            };
            match (w.state, admission) {
                (BreakerState::Closed, _) if w.failures + 1 >= self.failures_to_open => {
                    Some((open, true))
                }
                (BreakerState::Closed, _) => Some((
                    Word {
                        failures: w.failures + 1,
                        ..w
                    },
                    false,
                )),
                (BreakerState::HalfOpen, Admission::Probe) => Some((open, true)),
                // A connection admitted while closed that fails late: the breaker is already
                // open or probing; the probe decides.
                (BreakerState::HalfOpen, Admission::Normal) | (BreakerState::Open, _) => None,
            }
        });
        if opened == Some(true) {
            self.opened_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The admitted attempt ended without a verdict (cancelled): give the probe slot back.
    pub fn abandon(&self, admission: Admission) {
        if admission == Admission::Probe {
            self.update(|w| {
                (w.state == BreakerState::HalfOpen && w.probe)
                    .then_some((Word { probe: false, ..w }, ()))
            });
        }
    }

    pub fn state(&self) -> BreakerState {
        Word::unpack(self.word.load(Ordering::Acquire)).state
    }

    /// 0 closed, 1 open, 2 half-open.
    pub fn state_code(&self) -> u8 {
        self.state() as u8
    }

    pub fn consecutive_failures(&self) -> u64 {
        Word::unpack(self.word.load(Ordering::Acquire)).failures
    }

    /// How many times the breaker opened.
    pub fn opened_total(&self) -> u64 {
        self.opened_total.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn breaker() -> (Breaker, Instant) {
        let t0 = Instant::now();
        (Breaker::new(3, Duration::from_millis(100), t0), t0)
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn word_round_trips() {
        let w = Word {
            state: BreakerState::HalfOpen,
            probe: true,
            failures: 12345,
            opened_ms: 1 << 39,
        };
        assert_eq!(Word::unpack(w.pack()), w);
        let sat = Word {
            failures: u64::MAX,
            ..w
        };
        assert_eq!(Word::unpack(sat.pack()).failures, FAIL_MAX);
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let (b, t0) = breaker();
        let a = b.try_acquire(t0).unwrap();
        assert_eq!(a, Admission::Normal);
        b.on_failure(a, t0);
        b.on_failure(a, t0);
        b.on_success(a); // resets the count
        assert_eq!(b.consecutive_failures(), 0);
        b.on_failure(a, t0);
        b.on_failure(a, t0);
        assert_eq!(b.state(), BreakerState::Closed);
        b.on_failure(a, ms(t0, 10));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.state_code(), 1);
        assert_eq!(b.opened_total(), 1);
        assert_eq!(b.try_acquire(ms(t0, 50)), None);
        assert_eq!(b.try_acquire(ms(t0, 109)), None);
    }

    #[test]
    fn half_open_allows_one_probe_and_closes_on_success() {
        let (b, t0) = breaker();
        for _ in 0..3 {
            b.on_failure(Admission::Normal, t0);
        }
        let p = b.try_acquire(ms(t0, 100)).unwrap();
        assert_eq!(p, Admission::Probe);
        assert_eq!(b.state_code(), 2);
        // One probe at a time.
        assert_eq!(b.try_acquire(ms(t0, 101)), None);
        b.on_success(p);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.try_acquire(ms(t0, 102)), Some(Admission::Normal));
    }

    #[test]
    fn failed_probe_reopens_for_another_period() {
        let (b, t0) = breaker();
        for _ in 0..3 {
            b.on_failure(Admission::Normal, t0);
        }
        let p = b.try_acquire(ms(t0, 150)).unwrap();
        b.on_failure(p, ms(t0, 160));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.opened_total(), 2);
        assert_eq!(b.try_acquire(ms(t0, 259)), None);
        assert_eq!(b.try_acquire(ms(t0, 260)), Some(Admission::Probe));
    }

    #[test]
    fn abandoned_probe_frees_the_slot_and_late_results_do_not_decide() {
        let (b, t0) = breaker();
        let early = b.try_acquire(t0).unwrap();
        for _ in 0..3 {
            b.on_failure(Admission::Normal, t0);
        }
        // A success admitted before the opening does not close an open breaker.
        b.on_success(early);
        assert_eq!(b.state(), BreakerState::Open);
        let p = b.try_acquire(ms(t0, 100)).unwrap();
        b.abandon(p);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        let p2 = b.try_acquire(ms(t0, 100)).unwrap();
        assert_eq!(p2, Admission::Probe);
        // A late failure of an ordinary connection leaves the probe to decide.
        b.on_failure(Admission::Normal, ms(t0, 101));
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.on_success(p2);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn concurrent_probe_is_unique() {
        let t0 = Instant::now();
        let b = Arc::new(Breaker::new(1, Duration::ZERO, t0));
        b.on_failure(Admission::Normal, t0);
        let probes: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let b = b.clone();
                    s.spawn(move || {
                        (0..1000)
                            .filter(|_| b.try_acquire(Instant::now()) == Some(Admission::Probe))
                            .count()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(probes, 1);
    }
}
