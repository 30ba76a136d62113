//! The monotonic clock as a number: systemd's `RELOADING=1` message carries it
//! (`MONOTONIC_USEC`), and std's `Instant` does not expose its value.

/// CLOCK_MONOTONIC in microseconds.
pub fn monotonic_usec() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64) * 1_000_000 + (t.tv_nsec as u64) / 1_000
}

#[cfg(test)]
mod tests {
    #[test]
    fn it_never_goes_back_and_matches_instant() {
        let start = std::time::Instant::now();
        let a = super::monotonic_usec();
        let b = super::monotonic_usec();
        assert!(a > 0 && b >= a, "{a} then {b}");
        // Instant is CLOCK_MONOTONIC too: the two agree on elapsed time.
        let elapsed = start.elapsed().as_micros() as u64;
        assert!(
            b - a <= elapsed + 1,
            "{} us between reads, {elapsed} us elapsed",
            b - a
        );
    }
}
