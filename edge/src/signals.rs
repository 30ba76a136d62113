//! SIGTERM and SIGINT, taken by one thread with `sigwait` (not a handler): the signals are
//! blocked in every thread, so none is interrupted, and the waiting thread turns a signal
//! into an ordinary flag the cores poll on their tick.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A signal set holding SIGTERM and SIGINT.
fn stop_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: `set` is a plain value initialised by sigemptyset before any other use; the
    // calls only write into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigemptyset(&mut set) != 0
            || libc::sigaddset(&mut set, libc::SIGTERM) != 0
            || libc::sigaddset(&mut set, libc::SIGINT) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(set)
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread — and so in every thread it starts later.
/// Call first thing in `main`, before any thread exists.
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_signals()?;
    // SAFETY: `set` is a valid signal set; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Starts the thread that waits for SIGTERM or SIGINT and sets `stop` when one arrives.
pub fn watch_stop_signals(stop: Arc<AtomicBool>) -> io::Result<()> {
    let set = stop_signals()?;
    std::thread::Builder::new()
        .name("wssedge-signals".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` is a valid signal set blocked in this thread (inherited), and
            // `signal` is a valid place for sigwait to store the signal number.
            let rc = unsafe { libc::sigwait(&set, &mut signal) };
            if rc == 0 {
                tracing::info!(
                    signal,
                    "stop requested: the cores stop, the audit trail is sealed"
                );
                stop.store(true, Ordering::SeqCst);
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_stop_set_builds() {
        assert!(super::stop_signals().is_ok());
    }
}
