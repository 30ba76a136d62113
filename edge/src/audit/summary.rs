//! Refusals counted instead of recorded one by one: what a core does with the connections it
//! turns away at accept while its audit queue is above the high-water mark.
//!
//! A stalled writer (full disk) makes the core refuse every new connection; were each refusal
//! queued as its own record, the refusals themselves would grow the queue without bound (one
//! record per connect, whatever the mark). Instead each one is counted here — per reason, with
//! the first and last time and the addresses refused most — in a fixed amount of memory, and
//! the core writes one `refusal_summary` record per reason once its queue is back under the
//! mark. That record stands for every refusal it counts.
//!
//! The addresses are the heavy hitters of the Space-Saving algorithm (Metwally, Agrawal,
//! El Abbadi, 2005) with [`TOP_PEERS`] counters: an address refused more than `count /
//! TOP_PEERS` times is always listed, and each listed figure is a lower bound of that
//! address's refusals (exact while at most [`TOP_PEERS`] addresses were refused). The rest is
//! `unattributed`, so the listed figures plus `unattributed` always add up to `count`.

use std::net::IpAddr;

use crate::audit::record::{AuditEvent, PeerRefusals};
use crate::audit::time::Timestamp;
use crate::reason::Reason;

/// Addresses a summary names.
pub(crate) const TOP_PEERS: usize = 8;

/// Reasons counted at once. The reasons are the accept path's `&'static str`s (a handful); a
/// reason beyond this many is counted under the last slot's reason rather than grow the list.
const MAX_REASONS: usize = 8;

/// The refusals of one pressure episode, per reason. Fixed size whatever the clients do.
#[derive(Debug, Default)]
pub(crate) struct RefusalTally {
    reasons: Vec<ReasonTally>,
}

#[derive(Debug)]
struct ReasonTally {
    reason: Reason,
    count: u64,
    from: Timestamp,
    to: Timestamp,
    peers: TopPeers,
}

/// Space-Saving counters: `(address, count, overestimate)`.
#[derive(Debug, Default)]
struct TopPeers {
    slots: Vec<(IpAddr, u64, u64)>,
}

impl TopPeers {
    fn count(&mut self, ip: IpAddr) {
        if let Some(slot) = self.slots.iter_mut().find(|s| s.0 == ip) {
            slot.1 += 1;
        } else if self.slots.len() < TOP_PEERS {
            self.slots.push((ip, 1, 0));
        } else if let Some(min) = self.slots.iter_mut().min_by_key(|s| s.1) {
            // The newcomer takes the smallest counter; what that counter held may all have
            // been other addresses', hence the overestimate.
            *min = (ip, min.1 + 1, min.1);
        }
    }

    /// The listed addresses with their guaranteed refusals, most first (ties by address).
    fn listed(&self) -> Vec<PeerRefusals> {
        let mut out: Vec<(u64, IpAddr)> = self
            .slots
            .iter()
            .map(|&(ip, n, over)| (n - over, ip))
            .filter(|&(n, _)| n > 0)
            .collect();
        out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        out.into_iter()
            .map(|(refusals, ip)| PeerRefusals {
                ip: ip.to_string(),
                refusals,
            })
            .collect()
    }
}

impl RefusalTally {
    pub(crate) fn is_empty(&self) -> bool {
        self.reasons.is_empty()
    }

    /// Counts one refusal of `ip` for `reason` at `at`.
    pub(crate) fn count(&mut self, reason: Reason, ip: IpAddr, at: Timestamp) {
        let i = match self.reasons.iter().position(|r| r.reason == reason) {
            Some(i) => i,
            None if self.reasons.len() < MAX_REASONS => {
                self.reasons.push(ReasonTally {
                    reason,
                    count: 0,
                    from: at,
                    to: at,
                    peers: TopPeers::default(),
                });
                self.reasons.len() - 1
            }
            None => self.reasons.len() - 1,
        };
        let r = &mut self.reasons[i];
        r.count += 1;
        r.from = r.from.min(at);
        r.to = r.to.max(at);
        r.peers.count(ip);
    }

    /// Ends the episode: one `refusal_summary` per reason, in the order the reasons were first
    /// met. The tally is empty afterwards.
    pub(crate) fn take(&mut self) -> Vec<AuditEvent> {
        self.reasons
            .drain(..)
            .map(|r| {
                let peers = r.peers.listed();
                let listed: u64 = peers.iter().map(|p| p.refusals).sum();
                AuditEvent::RefusalSummary {
                    reason: r.reason.as_str().to_owned(),
                    count: r.count,
                    from: r.from.rfc3339(),
                    to: r.to.rfc3339(),
                    peers,
                    unattributed: r.count - listed,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_parts(1_700_000_000 + secs, 0)
    }

    fn summary(e: &AuditEvent) -> (&str, u64, &str, &str, &[PeerRefusals], u64) {
        match e {
            AuditEvent::RefusalSummary {
                reason,
                count,
                from,
                to,
                peers,
                unattributed,
            } => (reason, *count, from, to, peers, *unattributed),
            other => panic!("not a summary: {other:?}"),
        }
    }

    #[test]
    fn one_summary_per_reason_with_count_span_and_exact_peers() {
        let mut t = RefusalTally::default();
        assert!(t.is_empty());
        for n in 0..1000u64 {
            t.count(Reason::AuditBackpressure, ip("192.0.2.1"), at(10 + n % 7));
        }
        t.count(Reason::AuditBackpressure, ip("2001:db8::1"), at(3));
        t.count(Reason::MaxConnections, ip("192.0.2.9"), at(20));
        let got = t.take();
        assert!(t.is_empty(), "taking ends the episode");
        assert_eq!(got.len(), 2);
        let (reason, count, from, to, peers, unattributed) = summary(&got[0]);
        assert_eq!(
            (reason, count, unattributed),
            ("audit_backpressure", 1001, 0)
        );
        assert_eq!(from, "2023-11-14T22:13:23.000000000Z");
        assert_eq!(to, "2023-11-14T22:13:36.000000000Z");
        assert_eq!(
            peers,
            &[
                PeerRefusals {
                    ip: "192.0.2.1".into(),
                    refusals: 1000
                },
                PeerRefusals {
                    ip: "2001:db8::1".into(),
                    refusals: 1
                },
            ]
        );
        let (reason, count, ..) = summary(&got[1]);
        assert_eq!((reason, count), ("max_connections", 1));
        assert!(t.take().is_empty());
    }

    #[test]
    fn many_addresses_stay_bounded_and_the_heavy_one_is_named() {
        let mut t = RefusalTally::default();
        let mut total = 0u64;
        // 60k refusals from 30k addresses, one of which sends a third of them.
        for n in 0..40_000u32 {
            let spread = IpAddr::from([10, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
            t.count(Reason::AuditBackpressure, spread, at(0));
            total += 1;
            if n % 2 == 0 {
                t.count(Reason::AuditBackpressure, ip("198.51.100.7"), at(1));
                total += 1;
            }
        }
        assert_eq!(t.reasons.len(), 1);
        assert!(t.reasons[0].peers.slots.len() <= TOP_PEERS);
        let got = t.take();
        let (_, count, _, _, peers, unattributed) = summary(&got[0]);
        assert_eq!(count, total);
        assert!(peers.len() <= TOP_PEERS);
        assert_eq!(peers[0].ip, "198.51.100.7", "{peers:?}");
        assert!(peers[0].refusals <= 20_000, "a lower bound: {peers:?}");
        assert!(peers[0].refusals > 20_000 - total / TOP_PEERS as u64);
        let listed: u64 = peers.iter().map(|p| p.refusals).sum();
        assert_eq!(listed + unattributed, count, "the figures add up");
    }

    #[test]
    fn reasons_are_bounded_too() {
        let reasons = &Reason::ALL[..MAX_REASONS + 2];
        let mut t = RefusalTally::default();
        for &r in reasons {
            t.count(r, ip("192.0.2.1"), at(0));
        }
        let got = t.take();
        assert_eq!(got.len(), MAX_REASONS);
        let counted: u64 = got.iter().map(|e| summary(e).1).sum();
        assert_eq!(counted, reasons.len() as u64, "nothing uncounted");
    }
}
