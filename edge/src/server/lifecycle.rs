//! The process's life besides serving: drain (SIGTERM/SIGINT, `wssedge ctl drain`), reload
//! (SIGHUP, `wssedge ctl reload`) and restart handover (SIGUSR2, `wssedge ctl restart`).
//!
//! The signal thread and the control socket send [`Command`]s to the main thread, which
//! carries them out one at a time. A drain reaches the cores through [`Lifecycle`]: each core
//! sees the [`DrainOrder`] on its next tick and, on its own thread, stops accepting, closes
//! what is still queued, orders its live sessions closed with the order's code, and stops once
//! its connections are gone or the deadline has passed (see `core::DrainState`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use crate::reason::Reason;

/// What the main thread is asked to do.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting, close every session with 1001 "going_away", wait for them, exit 0.
    Drain { trigger: &'static str },
    /// Stop now (a second SIGTERM/SIGINT during a drain): the cores end at their next tick.
    Stop,
    /// Re-read the configuration and certificates (SIGHUP; `ctl reload` runs it directly).
    Reload { trigger: &'static str },
    /// Hand the listeners to a new process of the same binary, then drain with 1012. `reply`
    /// hears the new process's pid once it serves, or why there is none.
    Restart {
        trigger: &'static str,
        reply: Option<mpsc::Sender<Result<u32, RestartError>>>,
    },
}

/// Why a restart did not hand over (this process keeps serving); the control socket shows
/// the text.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// A drain had begun: there is nothing left to hand over.
    #[error("the edge is draining")]
    Draining,
    #[error(transparent)]
    Handover(#[from] super::handover::HandoverError),
}

/// Sends commands to the main thread (the signal thread and the control socket hold one).
pub type Commands = mpsc::Sender<Command>;

/// A drain as the cores see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DrainOrder {
    /// The close code and reason every live session gets: 1001 "going_away", or 1012
    /// "service_restart" when a successor took the listeners over.
    pub code: u16,
    pub reason: Reason,
    /// When the cores stop even if sessions are still closing.
    pub deadline: Instant,
    /// The listeners are shared with a successor process: stop accepting on them but never
    /// shut them down (that would close them for the successor too); its cores serve what is
    /// queued.
    pub handed_over: bool,
}

impl DrainOrder {
    pub fn going_away(deadline: Instant) -> Self {
        DrainOrder {
            code: 1001,
            reason: Reason::GoingAway,
            deadline,
            handed_over: false,
        }
    }

    pub fn service_restart(deadline: Instant) -> Self {
        DrainOrder {
            code: 1012,
            reason: Reason::ServiceRestart,
            deadline,
            handed_over: true,
        }
    }
}

/// Shared by the main thread (writes) and the cores (read on every tick).
///
/// It also passes the accepts from one process to the next in a restart, so that no
/// connection is ever accepted by the process going away: the successor's cores hold their
/// accepts ([`Lifecycle::accepts_held`]) until the predecessor's have all returned
/// ([`Lifecycle::accepting_cores`] is zero). Meanwhile new connections wait in the shared
/// accept queues, which both processes hold open: usually for a few milliseconds (from the
/// predecessor's last accept to the successor's first), at most for the predecessor's wait
/// for its cores; only a backlog overflowing meanwhile would drop SYNs (clients retry them).
#[derive(Default)]
pub(crate) struct Lifecycle {
    /// Also the metrics registry's flag: `/readyz` answers 503 from the moment it is set.
    draining: Arc<AtomicBool>,
    order: ArcSwapOption<DrainOrder>,
    /// Cores whose accept loops have not all returned.
    accepting: AtomicUsize,
    /// Set in a restart's successor until its predecessor has stopped accepting.
    held: AtomicBool,
}

impl Lifecycle {
    /// A lifecycle whose draining flag is `draining` (the metrics registry's).
    pub fn new(draining: Arc<AtomicBool>) -> Self {
        Lifecycle {
            draining,
            ..Default::default()
        }
    }

    /// A successor's: its cores start with their accepts held until [`Self::release_accepts`].
    pub fn holding_accepts(draining: Arc<AtomicBool>) -> Self {
        let life = Self::new(draining);
        life.held.store(true, Ordering::SeqCst);
        life
    }

    /// True while the cores must not accept yet (a successor whose predecessor still does).
    pub fn accepts_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    pub fn release_accepts(&self) {
        self.held.store(false, Ordering::Release);
    }

    /// A core with listeners counts itself in before it serves…
    pub fn core_accepts(&self) {
        self.accepting.fetch_add(1, Ordering::SeqCst);
    }

    /// …and out once its last accept loop has returned (its accepts completed).
    pub fn core_stopped_accepting(&self) {
        self.accepting.fetch_sub(1, Ordering::SeqCst);
    }

    pub fn accepting_cores(&self) -> usize {
        self.accepting.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until no core accepts any more; false at the timeout.
    pub fn wait_accepts_stopped(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.accepting_cores() > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// The flag `/readyz` and `wssedge_draining` read.
    pub fn draining_flag(&self) -> Arc<AtomicBool> {
        self.draining.clone()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Starts a drain: readiness goes first, then the cores get the order. The first order
    /// stands; a second is ignored (false).
    pub fn start_drain(&self, order: DrainOrder) -> bool {
        if self.draining.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.order.store(Some(Arc::new(order)));
        true
    }

    /// The drain in progress, if any (a core reads it on every tick).
    pub fn drain(&self) -> Option<DrainOrder> {
        self.order.load().as_deref().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_sets_readiness_first_and_the_first_order_stands() {
        let flag = Arc::new(AtomicBool::new(false));
        let life = Lifecycle::new(flag.clone());
        assert!(!life.is_draining());
        assert_eq!(life.drain(), None);
        let at = Instant::now();
        assert!(life.start_drain(DrainOrder::going_away(at)));
        assert!(
            flag.load(Ordering::SeqCst),
            "the registry's flag is the same"
        );
        assert!(!life.start_drain(DrainOrder::service_restart(at)));
        let order = life.drain().unwrap();
        assert_eq!(
            (order.code, order.reason, order.handed_over),
            (1001, Reason::GoingAway, false)
        );
    }

    #[test]
    fn accepts_are_held_in_a_successor_and_counted_out_in_a_predecessor() {
        let fresh = Lifecycle::new(Arc::default());
        assert!(!fresh.accepts_held(), "a first process accepts at once");
        let successor = Lifecycle::holding_accepts(Arc::default());
        assert!(successor.accepts_held());
        successor.release_accepts();
        assert!(!successor.accepts_held());

        let life = Arc::new(Lifecycle::new(Arc::default()));
        life.core_accepts();
        life.core_accepts();
        assert!(
            !life.wait_accepts_stopped(Duration::from_millis(5)),
            "two cores accept"
        );
        life.core_stopped_accepting();
        let core = {
            let life = life.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                life.core_stopped_accepting();
            })
        };
        assert!(life.wait_accepts_stopped(Duration::from_secs(5)));
        assert_eq!(life.accepting_cores(), 0);
        core.join().unwrap();
    }

    #[test]
    fn a_refused_restart_says_why_in_the_words_the_control_socket_shows() {
        use super::super::handover::HandoverError;
        assert_eq!(RestartError::Draining.to_string(), "the edge is draining");
        assert_eq!(
            RestartError::from(HandoverError::Exited).to_string(),
            "the new process exited before serving (see its log)"
        );
        assert_eq!(
            RestartError::from(HandoverError::Broken("no listeners")).to_string(),
            "handover: no listeners"
        );
    }
}
