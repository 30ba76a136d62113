//! Signals taken by a waiting thread (`sigwait`), not by a handler: a set of signals, blocked
//! in the calling thread (and so in every thread it starts later), and a wait for the next one.

use std::io;

pub use libc::c_int as Signal;

/// A set of signals (`sigset_t`).
#[derive(Clone, Copy)]
pub struct SignalSet(libc::sigset_t);

impl SignalSet {
    /// The set holding exactly `signals`; an invalid signal number is an error (EINVAL).
    pub fn of(signals: &[Signal]) -> io::Result<Self> {
        // SAFETY: sigset_t is a plain bit array; all-zero is a valid value, and sigemptyset
        // initialises it before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable sigset_t alive for the call.
        if unsafe { libc::sigemptyset(&mut set) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for &signal in signals {
            // SAFETY: as above; sigaddset checks the signal number.
            if unsafe { libc::sigaddset(&mut set, signal) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(SignalSet(set))
    }

    /// Whether `signal` is in the set.
    pub fn contains(&self, signal: Signal) -> bool {
        // SAFETY: `self.0` is an initialised sigset_t; sigismember only reads it.
        unsafe { libc::sigismember(&self.0, signal) == 1 }
    }

    /// Blocks the set's signals in the calling thread — and so in every thread it starts later.
    pub fn block_in_this_thread(&self) -> io::Result<()> {
        // SAFETY: `self.0` is a valid signal set; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &self.0, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }

    /// Waits for one of the set's signals, which must be blocked in this thread, and takes it.
    pub fn wait(&self) -> io::Result<Signal> {
        let mut signal: libc::c_int = 0;
        // SAFETY: `self.0` is a valid signal set and `signal` a valid place for sigwait to store
        // the signal number.
        let rc = unsafe { libc::sigwait(&self.0, &mut signal) };
        if rc == 0 {
            Ok(signal)
        } else {
            Err(io::Error::from_raw_os_error(rc))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_holds_what_it_was_built_of() {
        let set = SignalSet::of(&[libc::SIGTERM, libc::SIGHUP]).unwrap();
        assert!(set.contains(libc::SIGTERM));
        assert!(set.contains(libc::SIGHUP));
        assert!(!set.contains(libc::SIGINT));
        assert!(SignalSet::of(&[0x7fff]).is_err(), "no such signal");
    }

    /// A blocked signal sent to one thread waits for its `sigwait` there, in a thread of its
    /// own so the test process's other threads keep their masks.
    #[test]
    fn a_blocked_signal_is_taken_by_wait() {
        let got = std::thread::spawn(|| {
            let set = SignalSet::of(&[libc::SIGUSR1]).unwrap();
            set.block_in_this_thread().unwrap();
            // SAFETY: pthread_self names this live thread; SIGUSR1 is blocked in it, so it
            // stays pending until the wait below takes it.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR1) };
            assert_eq!(rc, 0);
            set.wait().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(got, libc::SIGUSR1);
    }
}
