//! SIGTERM, SIGINT, SIGHUP and SIGUSR2, taken by one thread with `sigwait` (not a handler): the
//! signals are blocked in every thread, so none is interrupted, and the waiting thread turns
//! each into a [`Command`] for the main thread.
//!
//! - SIGTERM / SIGINT: drain (1001 to every client, then exit 0); a second one during the
//!   drain stops at once.
//! - SIGHUP: reload the configuration and certificates.
//! - SIGUSR2: restart handover to a new process of the same binary.

use std::io;

use wssedge_sys::signals::SignalSet;

use crate::server::{Command, Commands};

/// The signals the lifecycle thread takes.
const SIGNALS: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2];

/// A signal set holding [`SIGNALS`].
fn lifecycle_signals() -> io::Result<SignalSet> {
    SignalSet::of(&SIGNALS)
}

/// Blocks the lifecycle signals in the calling thread — and so in every thread it starts
/// later. Call first thing in `main`, before any thread exists.
pub fn block_stop_signals() -> io::Result<()> {
    lifecycle_signals()?.block_in_this_thread()
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
                // The set is blocked in this thread (inherited from `main`).
                let Ok(signal) = set.wait() else {
                    continue;
                };
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
