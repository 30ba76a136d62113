//! The producers: [`AuditSink`] (one per core, never blocks, never drops) and [`AuditHandle`]
//! (control socket, reloads: may wait briefly, never drops); and the writer's side of both.
//!
//! Order and boundedness of a core's queue: records go into the lock-free ring; when it is
//! full they go into the core's overflow list, and from then on *every* record goes there until
//! the writer has taken the list, so the per-core order is kept. The writer takes the list
//! under its mutex after emptying the ring under the same lock (the core only uses the ring
//! again once the list was taken). The list is unbounded in type but bounded by what may reach
//! it: above the high-water mark the core refuses new connections before TLS, and
//! - a connection already admitted emits a bounded number of records (accept, upgrade,
//!   close/refusal: at most a handful), so those add at most a few records per connection
//!   then open (itself bounded by `max_connections`);
//! - a connection refused at accept ([`AuditSink::refused_at_accept`]) while the queue is above
//!   the mark adds nothing: it is counted in the core's [`RefusalTally`] (fixed size), which
//!   becomes one `refusal_summary` record per reason once the queue is back under the mark.
//!   Were each such refusal its own record, a flood of connects against a stalled writer would
//!   grow the list by one record per connect, whatever the mark;
//! - the control side has its own queue, bounded by waiting ([`AuditHandle::record`]).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread::Thread;
use std::time::Duration;

use crate::audit::record::AuditEvent;
use crate::audit::ring::{ring, Consumer, Gauge, Producer};
use crate::audit::stats::AuditStats;
use crate::audit::summary::RefusalTally;
use crate::audit::time::Timestamp;
use crate::reason::Reason;

/// What the control socket and reloads may queue before they wait for the writer.
const CONTROL_QUEUE: usize = 4096;

/// A record waiting for the writer. The event is boxed so a ring slot is small (24 bytes, 32
/// with the queue's per-slot stamp): a full default ring then costs ~2 MiB per core, not ~20 MiB.
pub(crate) struct Pending {
    pub at: Timestamp,
    pub core: Option<usize>,
    pub event: Box<AuditEvent>,
}

pub(crate) struct Overflow {
    list: Mutex<VecDeque<Pending>>,
    /// Mirrors `list.len()`, written under the lock. Non-zero tells the core to keep using the
    /// list (order), and lets it and the metrics read the depth without the lock.
    len: AtomicUsize,
    overflowed: AtomicU64,
}

/// Depth of one core's queue for metrics.
pub(crate) struct CoreGauge {
    ring: Gauge<Pending>,
    overflow: Arc<Overflow>,
}

impl CoreGauge {
    pub(crate) fn depth(&self) -> usize {
        self.ring.len() + self.overflow.len.load(Ordering::Relaxed)
    }

    pub(crate) fn overflowed(&self) -> u64 {
        self.overflow.overflowed.load(Ordering::Relaxed)
    }
}

/// State shared by all producers and the writer thread.
pub(crate) struct Shared {
    /// Set by shutdown: the writer drains, writes `stop` and a seal, and exits.
    pub stop: AtomicBool,
    /// Set by the writer once it started its final drain: later records cannot be written.
    pub closed: AtomicBool,
    /// Set when the writer thread ends for any reason (a panic included): cores then refuse new
    /// connections, as with a full ring, because their records could no longer be written.
    pub writer_dead: AtomicBool,
    pub writer: OnceLock<Thread>,
    pub stats: Arc<AuditStats>,
    control: Mutex<VecDeque<Pending>>,
    control_space: Condvar,
    /// Tests: end the writer as a SIGKILL would (no drain, no seal).
    #[cfg(test)]
    pub abort: AtomicBool,
    /// Tests: the writer takes nothing from the queues while set.
    #[cfg(test)]
    pub pause: AtomicBool,
    /// Tests: make the next N appends fail halfway through.
    #[cfg(test)]
    pub inject_write_failures: std::sync::atomic::AtomicU32,
}

impl Shared {
    pub(crate) fn wake_writer(&self) {
        if let Some(t) = self.writer.get() {
            t.unpark();
        }
    }

    fn late(&self) {
        let n = self.stats.records_late.fetch_add(1, Ordering::Relaxed);
        if n == 0 {
            tracing::error!("audit record given after the audit writer stopped: it is not in the trail (stop the cores before the trail)");
        }
    }

    /// The writer takes everything the control side queued.
    pub(crate) fn take_control(&self) -> VecDeque<Pending> {
        let taken = std::mem::take(&mut *lock(&self.control));
        if !taken.is_empty() {
            self.control_space.notify_all();
        }
        taken
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a VecDeque half-updated; keep going.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A core's producer. Moved to its core thread; `Send`, not `Sync` (one thread records).
pub struct AuditSink {
    inner: Option<SinkInner>,
}

struct SinkInner {
    core: usize,
    ring: Producer<Pending>,
    overflow: Arc<Overflow>,
    shared: Arc<Shared>,
    high_water: usize,
    /// The depth at which the core wakes the writer early instead of waiting for its tick.
    wake_at: usize,
    /// Connections refused at accept while above the mark, not yet summarised.
    refused: RefCell<RefusalTally>,
}

impl SinkInner {
    fn depth(&self) -> usize {
        self.ring.len() + self.overflow.len.load(Ordering::Relaxed)
    }

    fn over_high_water(&self) -> bool {
        self.shared.writer_dead.load(Ordering::Relaxed) || self.depth() >= self.high_water
    }

    /// Writes the summaries of the refusals counted so far once the queue is under the mark
    /// (`force`: whatever the depth, the core is going away).
    fn end_pressure(&self, force: bool) {
        if self.refused.borrow().is_empty() || (!force && self.over_high_water()) {
            return;
        }
        let summaries = self.refused.borrow_mut().take();
        for event in summaries {
            self.push(event);
        }
    }

    fn push(&self, event: AuditEvent) {
        if self.shared.closed.load(Ordering::Acquire) {
            self.shared.late();
            return;
        }
        let pending = Pending {
            at: Timestamp::now(),
            core: Some(self.core),
            event: Box::new(event),
        };
        let pending = if self.overflow.len.load(Ordering::Acquire) == 0 {
            match self.ring.push(pending) {
                Ok(depth) => {
                    if depth == self.wake_at {
                        self.shared.wake_writer();
                    }
                    return;
                }
                Err(back) => back,
            }
        } else {
            pending
        };
        let mut list = lock(&self.overflow.list);
        list.push_back(pending);
        let len = list.len();
        self.overflow.len.store(len, Ordering::Release);
        drop(list);
        self.overflow.overflowed.fetch_add(1, Ordering::Relaxed);
        self.shared
            .stats
            .records_overflowed
            .fetch_add(1, Ordering::Relaxed);
        if len == 1 {
            self.shared.wake_writer();
        }
    }
}

impl AuditSink {
    /// A sink for a trail that is off: records nothing, never refuses.
    pub fn disabled() -> Self {
        AuditSink { inner: None }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues a record. Never blocks (no lock unless the ring is full), never drops. A pressure
    /// episode that has ended gets its summaries first, so they precede what follows it.
    pub fn record(&self, event: AuditEvent) {
        let Some(s) = &self.inner else { return };
        s.end_pressure(false);
        s.push(event);
    }

    /// A connection refused at accept, before TLS. Under the high-water mark its record
    /// (`event`) is queued as any other. At or above it — where the core refuses every new
    /// connection, so a flood of connects would otherwise add one record per connect to a
    /// queue that is not draining — the refusal is counted instead (per reason, with its time
    /// and address, in fixed memory), and one `refusal_summary` record per reason, standing for
    /// all of them, is queued once the queue is back under the mark (on the next record or
    /// [`AuditSink::tick`]). The caller counts the refusal in the metrics either way.
    pub fn refused_at_accept(
        &self,
        peer: SocketAddr,
        reason: Reason,
        event: impl FnOnce() -> AuditEvent,
    ) {
        let Some(s) = &self.inner else { return };
        if s.over_high_water() {
            s.refused
                .borrow_mut()
                .count(reason, peer.ip(), Timestamp::now());
            return;
        }
        s.end_pressure(false);
        s.push(event());
    }

    /// The core's periodic call: ends a pressure episode (queues its summaries) once the queue
    /// is back under the mark, even when no connection arrives to notice it.
    pub fn tick(&self) {
        if let Some(s) = &self.inner {
            s.end_pressure(false);
        }
    }

    /// True while this core's queue is above the high-water mark, or the writer is gone: the
    /// core must then refuse new connections before TLS (and count them) until it drains.
    pub fn over_high_water(&self) -> bool {
        self.inner.as_ref().is_some_and(SinkInner::over_high_water)
    }

    /// Records queued on this core (ring plus overflow).
    pub fn depth(&self) -> usize {
        self.inner.as_ref().map_or(0, SinkInner::depth)
    }
}

impl Drop for AuditSink {
    /// A core that stops during an episode still leaves its summaries (a few records).
    fn drop(&mut self) {
        if let Some(s) = &self.inner {
            s.end_pressure(true);
        }
    }
}

/// A producer for threads that are not cores (control socket, reloads). `Clone + Send + Sync`.
/// When the writer is far behind it waits for room rather than grow without bound: these are
/// rare events and an audited state change may wait for its record.
#[derive(Clone)]
pub struct AuditHandle {
    shared: Option<Arc<Shared>>,
}

impl AuditHandle {
    pub fn disabled() -> Self {
        AuditHandle { shared: None }
    }

    /// Queues a record with a null `core`. May wait while the queue is full; never drops.
    pub fn record(&self, event: AuditEvent) {
        let Some(s) = &self.shared else { return };
        let at = Timestamp::now();
        let mut q = lock(&s.control);
        while q.len() >= CONTROL_QUEUE {
            if s.closed.load(Ordering::Acquire) || s.writer_dead.load(Ordering::Relaxed) {
                break;
            }
            s.wake_writer();
            q = s
                .control_space
                .wait_timeout(q, Duration::from_millis(50))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        if s.closed.load(Ordering::Acquire) || s.writer_dead.load(Ordering::Relaxed) {
            drop(q);
            s.late();
            return;
        }
        q.push_back(Pending {
            at,
            core: None,
            event: Box::new(event),
        });
        drop(q);
        s.wake_writer();
    }
}

/// The writer's end of one core's queue.
pub(crate) struct CoreDrain {
    ring: Consumer<Pending>,
    overflow: Arc<Overflow>,
}

impl CoreDrain {
    /// Hands queued records to `f` in the order the core recorded them: up to `limit` from the
    /// ring, then, if the core spilled, the rest of the ring and the whole overflow list.
    /// Returns how many.
    pub(crate) fn drain(&self, limit: usize, mut f: impl FnMut(Pending)) -> usize {
        let mut n = 0;
        while n < limit {
            match self.ring.pop() {
                Some(p) => {
                    f(p);
                    n += 1;
                }
                None => break,
            }
        }
        if n < limit && self.overflow.len.load(Ordering::Acquire) > 0 {
            let (ring_rest, list) = {
                let mut list = lock(&self.overflow.list);
                // Under the lock the core only appends to the list, so what is in the ring now
                // was recorded before anything in the list.
                let mut ring_rest = Vec::new();
                while let Some(p) = self.ring.pop() {
                    ring_rest.push(p);
                }
                let taken = std::mem::take(&mut *list);
                self.overflow.len.store(0, Ordering::Release);
                (ring_rest, taken)
            };
            n += ring_rest.len() + list.len();
            ring_rest.into_iter().chain(list).for_each(&mut f);
        }
        n
    }
}

/// Builds the shared state, one sink per core and the writer's drains.
pub(crate) fn build(
    cores: usize,
    ring_capacity: usize,
    high_water: usize,
) -> (Arc<Shared>, Vec<AuditSink>, Vec<CoreDrain>, AuditHandle) {
    let mut producers = Vec::with_capacity(cores);
    let mut drains = Vec::with_capacity(cores);
    let mut gauges = Vec::with_capacity(cores);
    for _ in 0..cores {
        let (p, c, g) = ring(ring_capacity);
        let overflow = Arc::new(Overflow {
            list: Mutex::new(VecDeque::new()),
            len: AtomicUsize::new(0),
            overflowed: AtomicU64::new(0),
        });
        producers.push((p, overflow.clone()));
        drains.push(CoreDrain {
            ring: c,
            overflow: overflow.clone(),
        });
        gauges.push(CoreGauge { ring: g, overflow });
    }
    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        closed: AtomicBool::new(false),
        writer_dead: AtomicBool::new(false),
        writer: OnceLock::new(),
        stats: Arc::new(AuditStats::new(gauges)),
        control: Mutex::new(VecDeque::new()),
        control_space: Condvar::new(),
        #[cfg(test)]
        abort: AtomicBool::new(false),
        #[cfg(test)]
        pause: AtomicBool::new(false),
        #[cfg(test)]
        inject_write_failures: std::sync::atomic::AtomicU32::new(0),
    });
    // Wake early at a quarter of the ring (capped): the writer's own tick is a few ms.
    let wake_at = (ring_capacity / 4).clamp(1, 1024);
    let sinks = producers
        .into_iter()
        .enumerate()
        .map(|(core, (ring, overflow))| AuditSink {
            inner: Some(SinkInner {
                core,
                ring,
                overflow,
                shared: shared.clone(),
                high_water,
                wake_at,
                refused: RefCell::new(RefusalTally::default()),
            }),
        })
        .collect();
    let handle = AuditHandle {
        shared: Some(shared.clone()),
    };
    (shared, sinks, drains, handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(n: usize) -> AuditEvent {
        AuditEvent::Accept {
            peer: format!("192.0.2.1:{n}"),
        }
    }

    fn peer_of(p: &Pending) -> String {
        match &*p.event {
            AuditEvent::Accept { peer } => peer.clone(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_full_ring_spills_in_order_and_nothing_is_lost() {
        let (shared, sinks, drains, _h) = build(1, 4, 2);
        let sink = &sinks[0];
        for n in 0..10 {
            sink.record(accept(n));
        }
        assert_eq!(sink.depth(), 10);
        assert_eq!(shared.stats.core_overflowed(0), 6);
        // A partial drain takes ring records first; the core keeps spilling meanwhile.
        let mut got = Vec::new();
        drains[0].drain(2, |p| got.push(peer_of(&p)));
        sink.record(accept(10));
        drains[0].drain(usize::MAX, |p| got.push(peer_of(&p)));
        // Back to the ring after the list was taken.
        sink.record(accept(11));
        assert_eq!(shared.stats.core_depth(0), 1);
        drains[0].drain(usize::MAX, |p| got.push(peer_of(&p)));
        let want: Vec<String> = (0..12).map(|n| format!("192.0.2.1:{n}")).collect();
        assert_eq!(got, want);
        assert_eq!(sink.depth(), 0);
    }

    #[test]
    fn high_water_flag_toggles_with_depth_and_a_dead_writer() {
        let (shared, sinks, drains, _h) = build(2, 8, 4);
        let sink = &sinks[1];
        for n in 0..3 {
            sink.record(accept(n));
        }
        assert!(!sink.over_high_water());
        sink.record(accept(3));
        assert!(sink.over_high_water(), "4 of 8 with mark 4");
        assert!(!sinks[0].over_high_water(), "per core");
        for n in 4..12 {
            sink.record(accept(n)); // overflow counts toward the depth
        }
        assert!(sink.over_high_water());
        drains[1].drain(usize::MAX, |_| {});
        assert!(!sink.over_high_water());
        shared.writer_dead.store(true, Ordering::Relaxed);
        assert!(sinks[0].over_high_water(), "no writer: refuse");
        assert!(!AuditSink::disabled().over_high_water());
    }

    fn refusal(n: usize) -> AuditEvent {
        AuditEvent::Refusal {
            peer: format!("192.0.2.1:{n}"),
            reason: "audit_backpressure".into(),
            status: None,
            code: None,
        }
    }

    fn peer(n: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], n))
    }

    #[test]
    fn refusals_above_the_mark_are_counted_not_queued_then_summarised_once() {
        let (shared, sinks, drains, _h) = build(1, 8, 4);
        let sink = &sinks[0];
        // Under the mark a refusal at accept is a record like any other.
        sink.refused_at_accept(peer(1), Reason::MaxConnections, || refusal(1));
        assert_eq!(sink.depth(), 1);
        for n in 0..3 {
            sink.record(accept(n));
        }
        assert!(sink.over_high_water());
        // A flood against a queue that does not drain: counted, the queue does not move.
        for n in 0..50_000 {
            sink.refused_at_accept(peer(n as u16), Reason::AuditBackpressure, || {
                panic!("no record is built above the mark")
            });
        }
        sink.refused_at_accept(peer(7), Reason::MaxConnections, || refusal(7));
        assert_eq!(sink.depth(), 4);
        assert_eq!(shared.stats.core_overflowed(0), 0);
        sink.tick();
        assert_eq!(sink.depth(), 4, "still above the mark: no summary yet");

        let mut got = Vec::new();
        drains[0].drain(usize::MAX, |p| got.push(p));
        assert_eq!(got.len(), 4);
        sink.tick();
        assert_eq!(sink.depth(), 2, "under the mark: one summary per reason");
        sink.tick();
        sink.record(accept(99));
        assert_eq!(sink.depth(), 3, "an episode is summarised once");
        got.clear();
        drains[0].drain(usize::MAX, |p| got.push(p));
        match &*got[0].event {
            AuditEvent::RefusalSummary {
                reason,
                count,
                peers,
                unattributed,
                ..
            } => {
                assert_eq!((reason.as_str(), *count), ("audit_backpressure", 50_000));
                assert_eq!(peers.len(), 1, "one address: {peers:?}");
                assert_eq!(
                    (peers[0].ip.as_str(), peers[0].refusals),
                    ("192.0.2.1", 50_000)
                );
                assert_eq!(*unattributed, 0);
            }
            other => panic!("expected the summary first, got {other:?}"),
        }
        assert!(matches!(
            &*got[1].event,
            AuditEvent::RefusalSummary { reason, count: 1, .. } if reason == "max_connections"
        ));
        assert_eq!(peer_of(&got[2]), "192.0.2.1:99");
    }

    #[test]
    fn a_summary_precedes_the_next_record_once_the_pressure_ends() {
        let (_shared, sinks, drains, _h) = build(1, 8, 2);
        let sink = &sinks[0];
        sink.record(accept(0));
        sink.record(accept(1));
        sink.refused_at_accept(peer(2), Reason::AuditBackpressure, || refusal(2));
        drains[0].drain(usize::MAX, |_| {});
        // No tick in between: the next record itself ends the episode, after its summary.
        sink.record(accept(3));
        let mut got = Vec::new();
        drains[0].drain(usize::MAX, |p| got.push(p));
        assert!(matches!(
            &*got[0].event,
            AuditEvent::RefusalSummary { count: 1, .. }
        ));
        assert_eq!(peer_of(&got[1]), "192.0.2.1:3");
    }

    #[test]
    fn a_sink_dropped_during_an_episode_leaves_its_summary() {
        let (_shared, mut sinks, drains, _h) = build(1, 8, 2);
        let sink = sinks.pop().unwrap();
        sink.record(accept(0));
        sink.record(accept(1));
        for n in 0..10 {
            sink.refused_at_accept(peer(n), Reason::AuditBackpressure, || refusal(0));
        }
        drop(sink);
        let mut got = Vec::new();
        drains[0].drain(usize::MAX, |p| got.push(p));
        assert_eq!(got.len(), 3);
        assert!(matches!(
            &*got[2].event,
            AuditEvent::RefusalSummary { count: 10, .. }
        ));
    }

    #[test]
    fn records_after_close_are_counted_as_late() {
        let (shared, sinks, _drains, handle) = build(1, 16, 8);
        shared.closed.store(true, Ordering::Release);
        sinks[0].record(accept(1));
        handle.record(accept(2));
        assert_eq!(shared.stats.records_late.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn sinks_are_send() {
        fn send<T: Send>() {}
        fn send_sync<T: Send + Sync>() {}
        send::<AuditSink>();
        send_sync::<AuditHandle>();
        send_sync::<AuditStats>();
    }
}
