//! A topic's sequence and its history ring: what a reconnecting subscriber can get back.
//!
//! Sequence numbers start at 1 in an epoch and grow by exactly 1 per publication. The ring keeps
//! the last `history` publications (their shared frames), and none older than `ttl`. Because
//! entries only ever leave from the old end, the ring always holds one unbroken run of seqs
//! ending at the last one: a gap `since+1 ..= last` is recoverable exactly when the oldest kept
//! seq is at most `since + 1`.
//!
//! Time is the caller's: every call that can expire entries takes `now`. An instant earlier
//! than an entry's (another core's clock read) ages nothing rather than going backwards.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// One kept publication.
#[derive(Debug, Clone)]
struct Kept {
    seq: u64,
    published_at: Instant,
    /// The frame body every subscriber was sent.
    frame: Bytes,
}

/// The log's sequence has reached `u64::MAX`: the topic needs a new epoch (a new
/// [`TopicLog`]); subscribers are told `recovered:false` and resync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the topic's sequence is exhausted (u64::MAX); start a new epoch")]
pub struct SequenceExhausted;

/// What [`TopicLog::append`] made of a publication sequenced elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The next seq: kept.
    Next,
    /// At or before the last seq: already had, nothing changed.
    Duplicate,
    /// Past a gap: kept, and the ring starts again from it.
    Gap,
}

/// What a subscribe with (or without) `since` gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// The client's copy is complete once `replay` is delivered (nothing missed counts).
    pub recovered: bool,
    /// The missed frames, oldest first; empty unless `recovered`.
    pub replay: Vec<Bytes>,
    /// The topic's last seq (0: nothing published in this epoch): the `subscribed` answer's
    /// `seq`, and the last seq in `replay`.
    pub last_seq: u64,
}

/// One topic's epoch, sequence and history.
#[derive(Debug, Clone)]
pub struct TopicLog {
    epoch: String,
    last_seq: u64,
    /// At most this many kept publications (`[pubsub] history`).
    capacity: usize,
    ttl: Duration,
    ring: VecDeque<Kept>,
}

impl TopicLog {
    /// A new epoch: nothing published yet, the next seq is 1. `epoch` is the caller's (a
    /// random or time-derived string: this crate draws no randomness).
    pub fn new(epoch: String, history: usize, ttl: Duration) -> Self {
        Self::continuing(epoch, 0, history, ttl)
    }

    /// A log that carries on an epoch after `last_seq` (a topic handed over from an owner that
    /// kept its sequence); its history starts empty, so only `since == last_seq` recovers.
    pub fn continuing(epoch: String, last_seq: u64, history: usize, ttl: Duration) -> Self {
        Self {
            epoch,
            last_seq,
            capacity: history,
            ttl,
            ring: VecDeque::new(),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// The last seq given out (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// Publications kept for recovery right now (before any expiry at a later instant).
    pub fn kept(&self) -> usize {
        self.ring.len()
    }

    /// Sequences the next publication: `build` gets its seq and returns the frame body
    /// ([`super::protocol::encode_publication`]); the frame is kept and returned with the seq.
    pub fn publish(
        &mut self,
        now: Instant,
        build: impl FnOnce(u64) -> Bytes,
    ) -> Result<(u64, Bytes), SequenceExhausted> {
        let seq = self.last_seq.checked_add(1).ok_or(SequenceExhausted)?;
        let frame = build(seq);
        self.last_seq = seq;
        self.keep(seq, now, frame.clone());
        Ok((seq, frame))
    }

    /// Keeps a publication sequenced elsewhere (the fleet's Redis) in this epoch: the next seq
    /// is kept; an old one is a duplicate (`Duplicate`, nothing kept); one past a gap starts
    /// the ring again from it (`Gap`: what was missed cannot be replayed from here).
    pub fn append(&mut self, seq: u64, now: Instant, frame: Bytes) -> Appended {
        if seq <= self.last_seq {
            return Appended::Duplicate;
        }
        let outcome = if seq == self.last_seq + 1 {
            Appended::Next
        } else {
            self.ring.clear();
            Appended::Gap
        };
        self.last_seq = seq;
        self.keep(seq, now, frame);
        outcome
    }

    /// Takes the sequence and history read from elsewhere (the fleet's Redis): `entries` are
    /// `(seq, published_at, frame)`, oldest first, ending at or before `last_seq`. In the same
    /// epoch they are merged with what this log kept (publications it holds beyond `last_seq`
    /// came in meanwhile and stay); another epoch replaces the log.
    pub fn adopt(
        &mut self,
        epoch: &str,
        last_seq: u64,
        entries: impl IntoIterator<Item = (u64, Instant, Bytes)>,
    ) {
        let mine: Vec<Kept> = if epoch == self.epoch {
            std::mem::take(&mut self.ring).into()
        } else {
            self.epoch = epoch.to_string();
            self.last_seq = 0;
            self.ring.clear();
            Vec::new()
        };
        let theirs = entries
            .into_iter()
            .filter(|(seq, _, _)| *seq <= last_seq)
            .map(|(seq, published_at, frame)| Kept {
                seq,
                published_at,
                frame,
            });
        let mut all: Vec<Kept> = theirs.chain(mine).collect();
        all.sort_by_key(|k| k.seq);
        all.dedup_by_key(|k| k.seq);
        let last = self.last_seq.max(last_seq);
        // The unbroken run that ends at the last seq, at most `capacity` long.
        let mut run: VecDeque<Kept> = VecDeque::new();
        let mut want = last;
        for k in all.into_iter().rev() {
            if run.len() >= self.capacity || k.seq != want || want == 0 {
                break;
            }
            want -= 1;
            run.push_front(k);
        }
        self.last_seq = last;
        self.ring = run;
    }

    fn keep(&mut self, seq: u64, now: Instant, frame: Bytes) {
        self.expire(now);
        if self.capacity > 0 {
            if self.ring.len() >= self.capacity {
                self.ring.pop_front();
            }
            self.ring.push_back(Kept {
                seq,
                published_at: now,
                frame,
            });
        }
    }

    /// Drops kept publications older than the ttl at `now`.
    pub fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.ring.front() {
            if now.saturating_duration_since(oldest.published_at) > self.ttl {
                self.ring.pop_front();
            } else {
                break;
            }
        }
    }

    /// What a subscriber that last saw `since` = (epoch, seq) missed.
    ///
    /// - no `since`: nothing asked, `recovered:false`, no replay;
    /// - another epoch, or a seq after the last one: `recovered:false` (the client's position
    ///   does not belong to this sequence);
    /// - seq == last seq: nothing missed, `recovered:true` whatever the history;
    /// - otherwise `recovered:true` with `seq+1 ..= last` in order if all of it is still kept
    ///   (after expiry at `now`), else `recovered:false`. Seq 0 means "from the start".
    pub fn recover(&mut self, since: Option<(&str, u64)>, now: Instant) -> Recovery {
        self.expire(now);
        let not_recovered = Recovery {
            recovered: false,
            replay: Vec::new(),
            last_seq: self.last_seq,
        };
        let Some((epoch, seq)) = since else {
            return not_recovered;
        };
        if epoch != self.epoch || seq > self.last_seq {
            return not_recovered;
        }
        if seq == self.last_seq {
            return Recovery {
                recovered: true,
                replay: Vec::new(),
                last_seq: self.last_seq,
            };
        }
        // seq < last_seq here, so seq + 1 cannot overflow.
        let first_missed = seq + 1;
        let Some(oldest) = self.ring.front().map(|k| k.seq) else {
            return not_recovered;
        };
        if oldest > first_missed {
            return not_recovered;
        }
        let skip = usize::try_from(first_missed - oldest).unwrap_or(usize::MAX);
        Recovery {
            recovered: true,
            replay: self
                .ring
                .iter()
                .skip(skip)
                .map(|k| k.frame.clone())
                .collect(),
            last_seq: self.last_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(300);

    fn frame(seq: u64) -> Bytes {
        Bytes::from(format!("f{seq}"))
    }

    /// A log with `n` publications at `t0`.
    fn log_with(history: usize, n: u64, t0: Instant) -> TopicLog {
        let mut log = TopicLog::new("e1".into(), history, TTL);
        for want in 1..=n {
            let (seq, f) = log.publish(t0, frame).expect("seq");
            assert_eq!((seq, f), (want, frame(want)));
        }
        log
    }

    fn frames(range: std::ops::RangeInclusive<u64>) -> Vec<Bytes> {
        range.map(frame).collect()
    }

    #[test]
    fn seqs_start_at_one_and_grow_by_one() {
        let t0 = Instant::now();
        let log = log_with(10, 3, t0);
        assert_eq!((log.epoch(), log.last_seq(), log.kept()), ("e1", 3, 3));
        let fresh = TopicLog::new("e2".into(), 10, TTL);
        assert_eq!(fresh.last_seq(), 0);
    }

    #[test]
    fn appended_publications_keep_the_run_unbroken() {
        let t0 = Instant::now();
        let mut log = TopicLog::continuing("e1".into(), 4, 10, TTL);
        assert_eq!(log.append(5, t0, frame(5)), Appended::Next);
        assert_eq!(log.append(5, t0, frame(5)), Appended::Duplicate);
        assert_eq!(log.append(3, t0, frame(3)), Appended::Duplicate);
        assert_eq!(log.append(6, t0, frame(6)), Appended::Next);
        assert_eq!(log.recover(Some(("e1", 4)), t0).replay, frames(5..=6));
        assert_eq!(log.append(9, t0, frame(9)), Appended::Gap);
        assert_eq!(log.last_seq(), 9);
        assert!(
            !log.recover(Some(("e1", 6)), t0).recovered,
            "7 and 8 were never here"
        );
        assert_eq!(log.recover(Some(("e1", 8)), t0).replay, frames(9..=9));
    }

    #[test]
    fn adopted_history_merges_with_what_came_in_meanwhile() {
        let t0 = Instant::now();
        // Live publications 8 and 9 arrived before the read of 1..=8 did.
        let mut log = TopicLog::continuing("e1".into(), 7, 5, TTL);
        log.append(8, t0, frame(8));
        log.append(9, t0, frame(9));
        log.adopt("e1", 8, (1..=8).map(|s| (s, t0, frame(s))));
        assert_eq!(log.last_seq(), 9);
        let r = log.recover(Some(("e1", 4)), t0);
        assert!(r.recovered);
        assert_eq!(r.replay, frames(5..=9), "capacity 5: the last five");
        // A read that is ahead of the live ones: its last seq wins, later ones are duplicates.
        let mut log = TopicLog::continuing("e1".into(), 2, 10, TTL);
        log.adopt("e1", 6, (3..=6).map(|s| (s, t0, frame(s))));
        assert_eq!(log.append(6, t0, frame(6)), Appended::Duplicate);
        assert_eq!(log.append(7, t0, frame(7)), Appended::Next);
        assert_eq!(log.recover(Some(("e1", 2)), t0).replay, frames(3..=7));
        // Another epoch replaces everything.
        log.adopt("e2", 2, (1..=2).map(|s| (s, t0, frame(s))));
        assert_eq!((log.epoch(), log.last_seq()), ("e2", 2));
        assert_eq!(log.recover(Some(("e2", 0)), t0).replay, frames(1..=2));
        assert!(!log.recover(Some(("e1", 6)), t0).recovered);
        // Entries with a hole: only the run that ends at the last seq counts.
        log.adopt("e3", 5, [1, 2, 4, 5].map(|s| (s, t0, frame(s))));
        assert!(!log.recover(Some(("e3", 2)), t0).recovered);
        assert_eq!(log.recover(Some(("e3", 3)), t0).replay, frames(4..=5));
    }

    #[test]
    fn the_gap_is_replayed_in_order() {
        let t0 = Instant::now();
        let mut log = log_with(10, 57, t0);
        let r = log.recover(Some(("e1", 51)), t0);
        assert_eq!(
            r,
            Recovery {
                recovered: true,
                replay: frames(52..=57),
                last_seq: 57
            }
        );
        assert_eq!(log.recover(Some(("e1", 47)), t0).replay, frames(48..=57));
    }

    #[test]
    fn nothing_missed_is_recovered_even_without_history() {
        let t0 = Instant::now();
        for history in [0, 1, 10] {
            let mut log = log_with(history, 5, t0);
            let r = log.recover(Some(("e1", 5)), t0 + TTL * 10);
            assert_eq!((r.recovered, r.replay.len(), r.last_seq), (true, 0, 5));
        }
        let mut empty = TopicLog::new("e1".into(), 0, TTL);
        assert!(empty.recover(Some(("e1", 0)), t0).recovered);
    }

    #[test]
    fn no_history_never_recovers_a_gap() {
        let t0 = Instant::now();
        let mut log = log_with(0, 5, t0);
        assert_eq!(log.kept(), 0);
        let r = log.recover(Some(("e1", 4)), t0);
        assert_eq!((r.recovered, r.replay.len()), (false, 0));
    }

    #[test]
    fn seq_zero_means_from_the_start() {
        let t0 = Instant::now();
        let mut log = log_with(10, 4, t0);
        assert_eq!(log.recover(Some(("e1", 0)), t0).replay, frames(1..=4));
        let mut wrapped = log_with(3, 4, t0);
        assert!(!wrapped.recover(Some(("e1", 0)), t0).recovered);
    }

    #[test]
    fn another_epoch_or_a_future_seq_is_not_recovered() {
        let t0 = Instant::now();
        let mut log = log_with(10, 5, t0);
        for since in [
            Some(("e0", 5)),
            Some(("e0", 4)),
            Some(("E1", 4)),
            Some(("", 0)),
            Some(("e1", 6)),
            Some(("e1", u64::MAX)),
            None,
        ] {
            let r = log.recover(since, t0);
            assert_eq!(
                r,
                Recovery {
                    recovered: false,
                    replay: Vec::new(),
                    last_seq: 5
                },
                "{since:?}"
            );
        }
    }

    #[test]
    fn the_ring_keeps_the_last_history_publications() {
        let t0 = Instant::now();
        let mut log = log_with(3, 10, t0);
        assert_eq!(log.kept(), 3);
        assert_eq!(log.recover(Some(("e1", 7)), t0).replay, frames(8..=10));
        assert_eq!(log.recover(Some(("e1", 9)), t0).replay, frames(10..=10));
        assert!(
            !log.recover(Some(("e1", 6)), t0).recovered,
            "8 is the oldest kept"
        );
        for more in 11..=100 {
            log.publish(t0, frame).expect("seq");
            assert_eq!(log.kept(), 3);
            let r = log.recover(Some(("e1", more - 3)), t0);
            assert_eq!(r.replay, frames(more - 2..=more));
        }
    }

    #[test]
    fn entries_older_than_the_ttl_are_not_replayed() {
        let t0 = Instant::now();
        let mut log = TopicLog::new("e1".into(), 100, TTL);
        for i in 0..5u64 {
            log.publish(t0 + Duration::from_secs(100 * i), frame)
                .expect("seq");
        }
        // At t0+500 s seq 1 and seq 2 are 500 s and 400 s old: gone. Seq 3 is exactly 300 s
        // old: kept (dropped when older than the ttl, not when as old as it).
        let now = t0 + Duration::from_secs(500);
        assert_eq!(log.recover(Some(("e1", 2)), now).replay, frames(3..=5));
        assert_eq!(log.kept(), 3);
        assert!(!log.recover(Some(("e1", 1)), now).recovered);
        let later = now + Duration::from_secs(1);
        assert!(!log.recover(Some(("e1", 2)), later).recovered);
        assert_eq!(log.recover(Some(("e1", 3)), later).replay, frames(4..=5));
        let r = log.recover(Some(("e1", 4)), t0 + Duration::from_secs(10_000));
        assert_eq!((r.recovered, log.kept()), (false, 0));
        assert!(
            log.recover(Some(("e1", 5)), t0 + Duration::from_secs(10_000))
                .recovered
        );
    }

    #[test]
    fn publishing_expires_old_entries_too() {
        let t0 = Instant::now();
        let mut log = log_with(100, 10, t0);
        log.publish(t0 + TTL + Duration::from_millis(1), frame)
            .expect("seq");
        assert_eq!(log.kept(), 1);
    }

    #[test]
    fn an_earlier_instant_ages_nothing() {
        let t0 = Instant::now() + Duration::from_secs(1000);
        let mut log = log_with(10, 3, t0);
        let before = t0 - Duration::from_secs(1000);
        assert_eq!(log.recover(Some(("e1", 0)), before).replay, frames(1..=3));
    }

    #[test]
    fn u64_edges_do_not_overflow() {
        let t0 = Instant::now();
        let mut log = TopicLog::continuing("e9".into(), u64::MAX - 2, 10, TTL);
        assert!(log.recover(Some(("e9", u64::MAX - 2)), t0).recovered);
        assert!(
            !log.recover(Some(("e9", u64::MAX - 3)), t0).recovered,
            "not kept here"
        );
        assert_eq!(log.publish(t0, frame).expect("seq").0, u64::MAX - 1);
        assert_eq!(log.publish(t0, frame).expect("seq").0, u64::MAX);
        assert_eq!(log.publish(t0, frame), Err(SequenceExhausted));
        assert_eq!(
            log.last_seq(),
            u64::MAX,
            "a refused publish changes nothing"
        );
        assert_eq!(
            log.recover(Some(("e9", u64::MAX - 2)), t0).replay,
            frames(u64::MAX - 1..=u64::MAX)
        );
        let r = log.recover(Some(("e9", u64::MAX)), t0);
        assert_eq!(
            (r.recovered, r.replay.len(), r.last_seq),
            (true, 0, u64::MAX)
        );
        assert_eq!(log.recover(Some(("e9", 0)), t0).replay.len(), 0);
    }
}
