//! systemd's readiness protocol (`sd_notify(3)`) without libsystemd: one datagram per state
//! change to the socket `$NOTIFY_SOCKET` names, when it names one. Outside systemd nothing is
//! sent and nothing fails.
//!
//! What the unit (`Type=notify`, `NotifyAccess=all`) is told:
//! - `READY=1` once every core serves;
//! - `RELOADING=1` with `MONOTONIC_USEC` when a reload starts, `READY=1` when it is done
//!   (refused or not: the edge serves on either way);
//! - `STOPPING=1` when a drain starts;
//! - a restart's new process sends `MAINPID=<its pid>` with its `READY=1`: systemd then
//!   follows it, and the old process's exit is no longer the service's (the unit must let a
//!   process other than the main one speak: `NotifyAccess=all`).
//!
//! A message that cannot be sent is logged once and otherwise ignored: the edge serves the
//! same whether or not a supervisor hears it.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable systemd sets for a `Type=notify` service.
pub const ENV: &str = "NOTIFY_SOCKET";

/// Where state changes go; `None` inside: not supervised by systemd.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    warned: AtomicBool,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`: a path, or an abstract name written with a leading `@`.
    pub fn from_env() -> Notifier {
        let target = std::env::var_os(ENV).and_then(|v| {
            let v = v.to_string_lossy().into_owned();
            let addr = match v.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
                None if v.starts_with('/') => SocketAddr::from_pathname(&v),
                None => {
                    tracing::warn!(
                        value = %v,
                        "{ENV} is neither a path nor an abstract name (@…): systemd is not told of readiness"
                    );
                    return None;
                }
            };
            match (addr, UnixDatagram::unbound()) {
                (Ok(addr), Ok(socket)) => Some((socket, addr)),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(value = %v, error = %e, "cannot reach {ENV}: systemd is not told of readiness");
                    None
                }
            }
        });
        Notifier {
            target,
            warned: AtomicBool::new(false),
        }
    }

    /// A notifier that sends nothing (not under systemd).
    pub fn none() -> Notifier {
        Notifier {
            target: None,
            warned: AtomicBool::new(false),
        }
    }

    /// Whether a supervisor listens.
    pub fn is_supervised(&self) -> bool {
        self.target.is_some()
    }

    /// Every core serves. A restart's new process names itself the service's main process.
    pub fn ready(&self, successor: bool) {
        if successor {
            self.send(&format!(
                "MAINPID={}\nREADY=1\nSTATUS=serving (took over from the previous process)",
                std::process::id()
            ));
        } else {
            self.send("READY=1\nSTATUS=serving");
        }
    }

    /// A reload starts (SIGHUP, `wssedge ctl reload`).
    pub fn reloading(&self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            wssedge_sys::clock::monotonic_usec()
        ));
    }

    /// A reload is over; the edge serves (with the new configuration, or the old one if it
    /// was refused).
    pub fn reloaded(&self) {
        self.send("READY=1\nSTATUS=serving");
    }

    /// A drain starts: the service is on its way out.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=draining");
    }

    /// A free-form status line (`systemctl status` shows it).
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", status.replace('\n', " ")));
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "cannot notify systemd ({ENV}); further failures are not logged");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn listener() -> (tempfile::TempDir, UnixDatagram, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path)
    }

    fn recv(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    fn notifier_for(path: &std::path::Path) -> Notifier {
        Notifier {
            target: Some((
                UnixDatagram::unbound().unwrap(),
                SocketAddr::from_pathname(path).unwrap(),
            )),
            warned: AtomicBool::new(false),
        }
    }

    #[test]
    fn each_state_is_one_datagram_in_systemd_s_words() {
        let (_dir, socket, path) = listener();
        let n = notifier_for(&path);
        n.ready(false);
        assert_eq!(recv(&socket), "READY=1\nSTATUS=serving");
        n.reloading();
        let reloading = recv(&socket);
        let mut lines = reloading.lines();
        assert_eq!(lines.next(), Some("RELOADING=1"));
        let usec: u64 = lines
            .next()
            .and_then(|l| l.strip_prefix("MONOTONIC_USEC="))
            .and_then(|v| v.parse().ok())
            .expect("MONOTONIC_USEC=<number>");
        assert!(usec <= wssedge_sys::clock::monotonic_usec());
        n.reloaded();
        assert_eq!(recv(&socket), "READY=1\nSTATUS=serving");
        n.stopping();
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=draining");
        n.ready(true);
        let successor = recv(&socket);
        assert!(
            successor.starts_with(&format!("MAINPID={}\nREADY=1\n", std::process::id())),
            "{successor}"
        );
        n.status("two\nlines");
        assert_eq!(recv(&socket), "STATUS=two lines");
    }

    #[test]
    fn an_abstract_name_is_reached_too() {
        let name = format!("wssedge-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), addr)),
            warned: AtomicBool::new(false),
        };
        n.stopping();
        assert_eq!(recv(&socket), "STOPPING=1\nSTATUS=draining");
    }

    /// Nobody listening (systemd gone, a stale variable): the edge carries on.
    #[test]
    fn a_dead_socket_is_survived() {
        let (_dir, socket, path) = listener();
        drop(socket);
        let n = notifier_for(&path);
        n.ready(false);
        n.stopping();
        assert!(n.warned.load(Ordering::Relaxed));
        let off = Notifier::none();
        assert!(!off.is_supervised());
        off.ready(false);
    }
}
