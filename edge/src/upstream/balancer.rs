//! Members (one upstream endpoint each: health flag, breaker, addresses, counters) and the
//! round-robin choice among a group's members.
//!
//! Everything here is shared by all cores and changed with atomics only: a member's state is
//! written by the health thread and by connection outcomes, read by every core at connect time
//! (once per proxied session, never per message).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use super::breaker::{Admission, Breaker};
use super::config::MemberUrl;

/// One upstream endpoint.
#[derive(Debug)]
pub struct Member {
    pub url: MemberUrl,
    /// The group's name (logs, metrics labels).
    pub group: String,
    pub breaker: Breaker,
    healthy: AtomicBool,
    /// Resolved by the health thread (never on a core: resolution blocks).
    addrs: ArcSwap<Vec<SocketAddr>>,
    connects_ok: AtomicU64,
    connect_failures: AtomicU64,
    health_checks: AtomicU64,
    health_failures: AtomicU64,
}

impl Member {
    /// A member that starts healthy (until the first check says otherwise: refusing everything
    /// for the first interval after start would be worse; the breaker guards the gap).
    pub fn new(url: MemberUrl, group: &str, breaker: Breaker) -> Self {
        let addrs = match url.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, url.port)],
            Err(_) => Vec::new(),
        };
        Self {
            url,
            group: group.to_owned(),
            breaker,
            healthy: AtomicBool::new(true),
            addrs: ArcSwap::from_pointee(addrs),
            connects_ok: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            health_failures: AtomicU64::new(0),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the health flag; returns the previous value.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed)
    }

    /// The addresses to connect to (empty until a name resolved).
    pub fn addrs(&self) -> Arc<Vec<SocketAddr>> {
        self.addrs.load_full()
    }

    /// Resolves the host name (blocking: call from the health thread or at start). An IP
    /// literal needs no resolution.
    pub fn resolve(&self) -> std::io::Result<Arc<Vec<SocketAddr>>> {
        if self.url.host.parse::<IpAddr>().is_ok() {
            return Ok(self.addrs());
        }
        let found: Vec<SocketAddr> = (self.url.host.as_str(), self.url.port)
            .to_socket_addrs()?
            .collect();
        if found.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.url.host),
            ));
        }
        if **self.addrs.load() != found {
            self.addrs.store(Arc::new(found));
        }
        Ok(self.addrs())
    }

    pub(crate) fn count_connect(&self, ok: bool) {
        let c = if ok {
            &self.connects_ok
        } else {
            &self.connect_failures
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_health(&self, ok: bool) {
        self.health_checks.fetch_add(1, Ordering::Relaxed);
        if !ok {
            self.health_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> MemberStats {
        MemberStats {
            group: self.group.clone(),
            url: self.url.to_string(),
            breaker_state: self.breaker.state_code(),
            breaker_opened_total: self.breaker.opened_total(),
            healthy: self.is_healthy(),
            connects_ok: self.connects_ok.load(Ordering::Relaxed),
            connect_failures: self.connect_failures.load(Ordering::Relaxed),
            health_checks: self.health_checks.load(Ordering::Relaxed),
            health_failures: self.health_failures.load(Ordering::Relaxed),
        }
    }
}

/// One member's counters and state, for /metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStats {
    pub group: String,
    pub url: String,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: u8,
    pub breaker_opened_total: u64,
    pub healthy: bool,
    pub connects_ok: u64,
    pub connect_failures: u64,
    pub health_checks: u64,
    pub health_failures: u64,
}

/// A member chosen for one connection attempt, holding what its breaker admitted. Settle it
/// with [`MemberRef::succeeded`] or [`MemberRef::failed`]; dropped unsettled (the attempt was
/// cancelled), it gives a half-open probe slot back without a verdict.
#[derive(Debug)]
pub struct MemberRef {
    member: Arc<Member>,
    admission: Admission,
    settled: bool,
}

impl MemberRef {
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    pub fn admission(&self) -> Admission {
        self.admission
    }

    /// The connection (and its upgrade) succeeded.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.member.count_connect(true);
        self.member.breaker.on_success(self.admission);
    }

    /// The attempt failed in a way that says something about the member.
    pub fn failed(mut self, now: Instant) {
        self.settled = true;
        self.member.count_connect(false);
        self.member.breaker.on_failure(self.admission, now);
    }

    /// The attempt failed for this request only (the member answered, e.g. a 4xx): the
    /// member is up, so its breaker counts a success.
    pub fn refused(mut self) {
        self.settled = true;
        self.member.count_connect(false);
        self.member.breaker.on_success(self.admission);
    }
}

impl std::ops::Deref for MemberRef {
    type Target = Member;
    fn deref(&self) -> &Member {
        &self.member
    }
}

impl Drop for MemberRef {
    fn drop(&mut self) {
        if !self.settled {
            self.member.breaker.abandon(self.admission);
        }
    }
}

/// Round robin over one group's members that are healthy and admitted by their breaker.
#[derive(Debug)]
pub struct Balancer {
    members: Vec<Arc<Member>>,
    /// Shared by the cores: one relaxed increment per new upstream connection.
    next: AtomicUsize,
}

impl Balancer {
    pub fn new(members: Vec<Arc<Member>>) -> Self {
        Self {
            members,
            next: AtomicUsize::new(0),
        }
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// The next usable member, or `None` when every member is down or refused by its breaker
    /// (the caller answers 503).
    pub fn pick(&self, now: Instant) -> Option<MemberRef> {
        let n = self.members.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).find_map(|i| {
            let m = &self.members[start.wrapping_add(i) % n];
            if !m.is_healthy() {
                return None;
            }
            let admission = m.breaker.try_acquire(now)?;
            Some(MemberRef {
                member: m.clone(),
                admission,
                settled: false,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::breaker::BreakerState;
    use std::time::Duration;

    fn group(n: usize, t0: Instant) -> Balancer {
        Balancer::new(
            (0..n)
                .map(|i| {
                    Arc::new(Member::new(
                        MemberUrl::parse(&format!("ws://127.0.0.1:{}/", 9000 + i)).unwrap(),
                        "g",
                        Breaker::new(2, Duration::from_millis(100), t0),
                    ))
                })
                .collect(),
        )
    }

    fn port(m: &MemberRef) -> u16 {
        m.url.port
    }

    #[test]
    fn round_robin_skips_unhealthy_and_open_members() {
        let t0 = Instant::now();
        let b = group(3, t0);
        let ports: Vec<u16> = (0..6).map(|_| port(&b.pick(t0).unwrap())).collect();
        assert_eq!(ports, [9000, 9001, 9002, 9000, 9001, 9002]);
        b.members()[1].set_healthy(false);
        let ports: Vec<u16> = (0..4).map(|_| port(&b.pick(t0).unwrap())).collect();
        assert!(!ports.contains(&9001), "{ports:?}");
        // Open member 0's breaker.
        b.pick(t0).unwrap();
        for _ in 0..2 {
            let m = loop {
                let m = b.pick(t0).unwrap();
                if port(&m) == 9000 {
                    break m;
                }
            };
            m.failed(t0);
        }
        assert_eq!(b.members()[0].breaker.state(), BreakerState::Open);
        let ports: Vec<u16> = (0..4).map(|_| port(&b.pick(t0).unwrap())).collect();
        assert_eq!(ports, [9002; 4]);
        b.members()[2].set_healthy(false);
        assert!(b.pick(t0).is_none(), "none left: the caller answers 503");
        // After open_ms one probe goes to member 0, and only one.
        let later = t0 + Duration::from_millis(100);
        let probe = b.pick(later).unwrap();
        assert_eq!((port(&probe), probe.admission()), (9000, Admission::Probe));
        assert!(b.pick(later).is_none());
        probe.succeeded();
        assert_eq!(port(&b.pick(later).unwrap()), 9000);
        let s = b.members()[0].stats();
        assert_eq!(
            (s.connects_ok, s.connect_failures, s.breaker_state),
            (1, 2, 0)
        );
    }

    #[test]
    fn a_dropped_probe_frees_its_slot() {
        let t0 = Instant::now();
        let b = group(1, t0);
        for _ in 0..2 {
            b.pick(t0).unwrap().failed(t0);
        }
        let later = t0 + Duration::from_millis(150);
        let probe = b.pick(later).unwrap();
        assert!(b.pick(later).is_none());
        drop(probe);
        assert!(b.pick(later).is_some());
    }

    #[test]
    fn refusal_counts_as_alive() {
        let t0 = Instant::now();
        let b = group(1, t0);
        b.pick(t0).unwrap().failed(t0);
        b.pick(t0).unwrap().refused();
        b.pick(t0).unwrap().failed(t0);
        assert_eq!(b.members()[0].breaker.state(), BreakerState::Closed);
        assert_eq!(b.members()[0].stats().connect_failures, 3);
    }

    #[test]
    fn ip_literals_need_no_resolution() {
        let m = Member::new(
            MemberUrl::parse("ws://[::1]:81/").unwrap(),
            "g",
            Breaker::new(1, Duration::ZERO, Instant::now()),
        );
        assert_eq!(*m.addrs(), vec!["[::1]:81".parse().unwrap()]);
        let m = Member::new(
            MemberUrl::parse("ws://localhost:82/").unwrap(),
            "g",
            Breaker::new(1, Duration::ZERO, Instant::now()),
        );
        assert!(m.addrs().is_empty());
        let addrs = m.resolve().unwrap();
        assert!(
            addrs.iter().all(|a| a.port() == 82 && a.ip().is_loopback()),
            "{addrs:?}"
        );
    }
}
