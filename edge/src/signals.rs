//! SIGTERM, SIGINT, SIGHUP and SIGUSR2, taken by one thread with `sigwait` (not a handler): the
//! signals are blocked in every thread, so none is interrupted, and the waiting thread turns
//! each into a [`Command`] for the main thread.
//!
//! - SIGTERM / SIGINT: drain (1001 to every client, then exit 0); a second one during the
//!   drain stops at once.
//! - SIGHUP: reload the configuration and certificates.
//! - SIGUSR2: restart handover to a new process of the same binary.

use std::io;

use crate::server::{Command, Commands};

/// The signals the lifecycle thread takes.
const SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2];

/// A signal set holding [`SIGNALS`].
fn lifecycle_signals() -> io::Result<libc::sigset_t> {
    // SAFETY: `set` is a plain value initialised by sigemptyset before any other use; the
    // calls only write into it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigemptyset(&mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        for signal in SIGNALS {
            if libc::sigaddset(&mut set, signal) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(set)
    }
}

/// Blocks the lifecycle signals in the calling thread — and so in every thread it starts
/// later. Call first thing in `main`, before any thread exists.
pub fn block_stop_signals() -> io::Result<()> {
    let set = lifecycle_signals()?;
    // SAFETY: `set` is a valid signal set; a null old-set pointer is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// What a signal asks for; `draining` says whether a drain was asked for already.
fn command_for(signal: libc::c_int, draining: bool) -> Option<Command> {
    match signal {
        libc::SIGTERM | libc::SIGINT if draining => Some(Command::Stop),
        libc::SIGTERM => Some(Command::Drain { trigger: "SIGTERM" }),
        libc::SIGINT => Some(Command::Drain { trigger: "SIGINT" }),
        libc::SIGHUP => Some(Command::Reload { trigger: "SIGHUP" }),
        libc::SIGUSR2 => Some(Command::Restart {
            trigger: "SIGUSR2",
            reply: None,
        }),
        _ => None,
    }
}

/// Starts the thread that waits for the lifecycle signals and sends their commands.
pub fn watch_stop_signals(commands: Commands) -> io::Result<()> {
    let set = lifecycle_signals()?;
    std::thread::Builder::new()
        .name("wssedge-signals".into())
        .spawn(move || {
            let mut draining = false;
            loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: `set` is a valid signal set blocked in this thread (inherited), and
                // `signal` is a valid place for sigwait to store the signal number.
                let rc = unsafe { libc::sigwait(&set, &mut signal) };
                if rc != 0 {
                    continue;
                }
                let Some(command) = command_for(signal, draining) else {
                    continue;
                };
                match &command {
                    Command::Drain { trigger } => {
                        draining = true;
                        tracing::info!(signal = trigger, "drain requested: every session gets 1001, then the edge exits (a second signal stops at once)");
                    }
                    Command::Stop => tracing::warn!(signal, "second stop signal: stopping now"),
                    Command::Reload { .. } => tracing::info!("SIGHUP: reloading configuration and certificates"),
                    Command::Restart { .. } => tracing::info!("SIGUSR2: restart handover to a new process"),
                }
                if commands.send(command).is_err() {
                    return; // the edge has stopped
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signal_set_builds() {
        assert!(lifecycle_signals().is_ok());
    }

    #[test]
    fn each_signal_asks_for_its_command() {
        assert!(matches!(
            command_for(libc::SIGTERM, false),
            Some(Command::Drain { trigger: "SIGTERM" })
        ));
        assert!(matches!(
            command_for(libc::SIGINT, true),
            Some(Command::Stop)
        ));
        assert!(matches!(
            command_for(libc::SIGHUP, false),
            Some(Command::Reload { .. })
        ));
        assert!(matches!(
            command_for(libc::SIGUSR2, false),
            Some(Command::Restart { reply: None, .. })
        ));
        assert!(command_for(libc::SIGPIPE, false).is_none());
    }
}
