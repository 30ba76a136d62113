//! The shared identity budget's arithmetic, apart from the atomics that share it across cores
//! (the edge's `limits::identity`): a GCRA over the tokens *spent*. `x` is the position on
//! the token timeline (whole tokens the rate has produced since the budget's epoch), `tat` how
//! far spent and reserved tokens reach along it, and the level `burst − (max(tat, x) − x)`.

use std::time::Instant;

use super::Rate;

impl Rate {
    /// Whole tokens the rate has produced from `epoch` to `now`: the position `x` on the
    /// token timeline (instants before `epoch` count as it).
    pub fn timeline(&self, epoch: Instant, now: Instant) -> u64 {
        self.tokens_in(now.saturating_duration_since(epoch).as_nanos())
    }

    /// Tokens in the bucket at timeline position `x` if spent tokens reach `tat` (reserved
    /// ones included); 0 while an oversized message's debt is being repaid.
    pub fn level(&self, tat: u64, x: u64) -> u64 {
        let owed = tat.max(x) - x;
        self.burst().saturating_sub(owed)
    }

    /// What one take grants out of `available`: up to `want`, at most `share` of it (half
    /// when other cores hold the identity), at least `short` (or none). `short` beyond the
    /// burst is the oversized case: all of it, and only from a full budget nobody else holds
    /// a reservation on (`full`).
    pub fn grant(&self, available: u64, full: bool, short: u64, want: u64, shared: bool) -> u64 {
        if short == 0 {
            0
        } else if short > self.burst() {
            if full {
                short
            } else {
                0
            }
        } else if available < short {
            0
        } else {
            // Cores that visit one after another split a scarce budget instead of the first
            // taking it all; a core alone still drains a full burst in a few visits.
            let share = if shared {
                available.div_ceil(2)
            } else {
                available
            };
            want.min(share).max(short).min(available)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_timeline_counts_whole_tokens_since_the_epoch() {
        let r = Rate::per_second(100, 10);
        let t0 = Instant::now();
        assert_eq!(r.timeline(t0, t0), 0);
        assert_eq!(r.timeline(t0, t0 + Duration::from_millis(25)), 2);
        assert_eq!(
            r.timeline(t0 + Duration::from_secs(1), t0),
            0,
            "before the epoch"
        );
    }

    #[test]
    fn the_level_is_the_burst_less_what_is_owed() {
        let r = Rate::per_second(100, 10);
        assert_eq!(r.level(0, 0), 10);
        assert_eq!(r.level(5, 0), 5);
        assert_eq!(r.level(5, 7), 10, "spends behind the timeline owe nothing");
        assert_eq!(r.level(50, 0), 0, "a debt never goes below empty");
    }

    #[test]
    fn grants_split_a_scarce_budget_and_keep_oversized_takes_for_a_full_one() {
        let r = Rate::per_second(100, 10);
        assert_eq!(r.grant(10, true, 0, 8, false), 0, "nothing needed");
        assert_eq!(r.grant(3, false, 4, 8, false), 0, "short of what is needed");
        assert_eq!(r.grant(10, true, 2, 8, false), 8, "alone: what it wants");
        assert_eq!(r.grant(10, true, 2, 8, true), 5, "shared: half");
        assert_eq!(r.grant(3, false, 3, 8, true), 3, "at least what is needed");
        assert_eq!(r.grant(10, true, 25, 25, false), 25, "oversized, from full");
        assert_eq!(r.grant(9, false, 25, 25, false), 0, "oversized, not full");
    }
}
