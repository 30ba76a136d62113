//! The control server: one accept thread, at most `max_clients` short-lived client threads.
//!
//! Control traffic is rare and small, so plain blocking threads off the cores are the simple
//! choice; every client is bounded in time (a deadline per request line, a write timeout) and
//! in number, so a stuck `wssedge ctl` can never pin a thread or starve the next operator.

use std::io::{self, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::SockRef;

use super::protocol::{Request, Response};
use super::session;
use super::socket::BoundSocket;
use super::sys::{self, PeerCred};

/// What the server asks of the process: carry out commands, and hear about refusals.
///
/// Both calls run on control threads, never on a core; `handle` is expected to be quick
/// (enqueue work for the cores, swap a config) and to write the audit record of the command.
pub trait ControlHandler: Send + Sync {
    /// Carries out one well-formed command from an authorised peer.
    fn handle(&self, request: &Request, peer: &PeerCred) -> Response;
    /// Anything a peer tried that did not reach [`ControlHandler::handle`]: a uid that may not
    /// use the socket, the server being busy, a malformed or over-long request line, a
    /// request that did not arrive in time. `reason` never contains more than 64 characters
    /// of client input. The audit trail records these too.
    fn refused(&self, peer: &PeerCred, reason: &str);
}

/// Limits of the control server.
#[derive(Debug, Clone)]
pub struct ControlOptions {
    /// Clients served at once; one more is told the server is busy and closed.
    pub max_clients: usize,
    /// Each request line must arrive whole within this time (counted from the connection or
    /// the previous answer), or the client is told so and dropped.
    pub read_timeout: Duration,
    /// A client that does not read its answer within this time is dropped.
    pub write_timeout: Duration,
}

impl Default for ControlOptions {
    fn default() -> Self {
        ControlOptions {
            max_clients: 16,
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the control socket could not be started. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket path {path} is {len} bytes; Unix sockets allow at most {max}: choose a shorter --control path")]
    PathTooLong {
        path: PathBuf,
        len: usize,
        max: usize,
    },
    #[error("control socket path {path:?} does not name a file: give a path like /run/wssedge/control.sock to --control")]
    NotAFilePath { path: PathBuf },
    #[error("directory {dir} for the control socket does not exist: create it (owned by the wssedge user, mode 0700) or choose another --control path")]
    NoDirectory { dir: PathBuf },
    #[error("directory {dir} of the control socket has mode {mode:04o}: others can write to it (group- or world-writable; a sticky bit, as on /tmp, does not help: anyone may still create the socket's name first), so the socket path could be taken or squatted; use a directory only wssedge's user can write to (e.g. /run/wssedge, mode 0700)")]
    SharedDirectory { dir: PathBuf, mode: u32 },
    #[error("directory {dir} of the control socket belongs to uid {owner}, who could take the socket path: use a directory owned by root or by wssedge's user (uid {me}), e.g. /run/wssedge with mode 0700")]
    ForeignDirectory { dir: PathBuf, owner: u32, me: u32 },
    #[error("{dir}, above the control socket's directory, has mode {mode:04o}: others can write to it and it is not sticky, so they could move the socket's directory aside and put their own in its place; put the socket under directories only root (or wssedge's user) can write to, e.g. /run/wssedge")]
    SharedAncestor { dir: PathBuf, mode: u32 },
    #[error("{dir}, above the control socket's directory, belongs to uid {owner}, who could move the socket's directory aside and put their own in its place; put the socket under directories owned by root or by wssedge's user (uid {me}), e.g. /run/wssedge")]
    ForeignAncestor { dir: PathBuf, owner: u32, me: u32 },
    #[error(
        "{path} exists and is not a socket: remove it yourself or choose another --control path"
    )]
    NotASocket { path: PathBuf },
    #[error("{path} is a socket file of uid {owner}, not of wssedge's user (uid {me}), and nothing answers on it: wssedge does not remove another user's file; remove it yourself if it is stale, or choose another --control path")]
    ForeignSocket { path: PathBuf, owner: u32, me: u32 },
    #[error("another wssedge is serving the control socket {path} (it answered a connection): stop it or choose another --control path")]
    AlreadyServed { path: PathBuf },
    #[error("another wssedge holds {lock}, the lock of control socket {path}: stop it or choose another --control path")]
    Locked { path: PathBuf, lock: PathBuf },
    #[error("control socket {path}: {action} failed: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The running control socket. Dropping it (or [`ControlServer::shutdown`]) stops accepting,
/// removes the socket file, closes every client and waits for the control threads.
pub struct ControlServer {
    path: PathBuf,
    /// `None` once stopped.
    socket: Option<BoundSocket>,
    stop: Arc<AtomicBool>,
    /// How long, at shutdown, clients being served get to finish before they are cut (ms).
    grace_ms: Arc<AtomicU64>,
    acceptor: Option<JoinHandle<()>>,
}

impl ControlServer {
    /// Binds `path` (mode 0600) and serves it with [`ControlOptions::default`].
    pub fn start(
        path: &Path,
        handler: Arc<dyn ControlHandler>,
    ) -> Result<ControlServer, ControlError> {
        Self::start_with(path, handler, ControlOptions::default())
    }

    /// [`ControlServer::start`] with explicit limits.
    pub fn start_with(
        path: &Path,
        handler: Arc<dyn ControlHandler>,
        options: ControlOptions,
    ) -> Result<ControlServer, ControlError> {
        let socket = BoundSocket::bind(path)?;
        let io_err = |action: &'static str| {
            move |source| ControlError::Io {
                path: path.to_owned(),
                action,
                source,
            }
        };
        let listener = socket
            .listener
            .try_clone()
            .map_err(io_err("cloning the listener"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let grace_ms = Arc::new(AtomicU64::new(0));
        let acceptor = Acceptor {
            listener,
            handler,
            options,
            stop: stop.clone(),
            grace_ms: grace_ms.clone(),
            clients: Vec::new(),
            server_uid: sys::effective_uid(),
        };
        let thread = std::thread::Builder::new()
            .name("wssedge-control".into())
            .spawn(move || acceptor.run())
            .map_err(io_err("starting the accept thread"))?;
        tracing::info!(path = %path.display(), "control socket listening");
        Ok(ControlServer {
            path: path.to_owned(),
            socket: Some(socket),
            stop,
            grace_ms,
            acceptor: Some(thread),
        })
    }

    /// Checks, without binding, that `path` can be a control socket: its length, and a
    /// directory that exists, is not group- or world-writable and belongs to root or to us.
    /// [`ControlServer::start`] checks it again.
    pub fn check_path(path: &Path) -> Result<(), ControlError> {
        super::socket::check_path(path, super::sys::effective_uid())
    }

    /// [`ControlServer::check_path`] for the uid that will serve (the edge checks before it
    /// binds anything, while it may still be root, for the user it will become).
    pub fn check_path_for(path: &Path, uid: u32) -> Result<(), ControlError> {
        super::socket::check_path(path, uid)
    }

    /// Where the socket lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the server now (drop does the same).
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    /// Stops accepting at once, but gives the clients being served up to `grace` to finish
    /// (a command that is being answered — `restart` — gets its answer out) before they are
    /// cut. The socket file and its lock are gone when this returns.
    pub fn shutdown_after_answers(mut self, grace: Duration) {
        self.grace_ms
            .store(grace.as_millis() as u64, Ordering::SeqCst);
        self.stop_now();
    }

    fn stop_now(&mut self) {
        let Some(socket) = self.socket.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // On Linux, shutting down the read side of a listening Unix socket wakes a blocked
        // accept with EINVAL; the accept thread then sees `stop` and leaves.
        let _ = SockRef::from(&socket.listener).shutdown(Shutdown::Read);
        // Remove the file first so a `wssedge ctl` from now on hears "nothing listens".
        drop(socket);
        if let Some(thread) = self.acceptor.take() {
            if thread.join().is_err() {
                tracing::error!("the control accept thread panicked");
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// One client being served: its thread, and a handle to cut its socket at shutdown.
struct Client {
    stream: CutHandle,
    thread: JoinHandle<()>,
}

/// The accept thread's clone of a client's socket, to cut it at shutdown. The client's thread
/// empties it when it is done, so a finished client holds no descriptor while the accept
/// thread waits for the next one (a soak found the last client's socket held that way).
type CutHandle = Arc<Mutex<Option<UnixStream>>>;

fn take(handle: &CutHandle) -> Option<UnixStream> {
    handle.lock().unwrap_or_else(|e| e.into_inner()).take()
}

struct Acceptor {
    listener: UnixListener,
    handler: Arc<dyn ControlHandler>,
    options: ControlOptions,
    stop: Arc<AtomicBool>,
    grace_ms: Arc<AtomicU64>,
    clients: Vec<Client>,
    server_uid: u32,
}

impl Acceptor {
    fn run(mut self) {
        let accept_failures = crate::repeats::Repeats::every(Duration::from_secs(10));
        loop {
            let accepted = self.listener.accept();
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            match accepted {
                Ok((stream, _)) => self.admit(stream),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning, and say it once per
                    // interval rather than 20 times a second.
                    if let Some(times) = accept_failures.note(std::time::Instant::now()) {
                        tracing::warn!(error = %e, times, "control accept failed (retried every 50 ms; said once per 10 s)");
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        // Cut every client's socket so its thread leaves its read now (after the grace, if
        // one was given), then wait for it.
        let grace = Duration::from_millis(self.grace_ms.load(Ordering::SeqCst));
        let deadline = std::time::Instant::now() + grace;
        for client in self.clients.drain(..) {
            while !client.thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Some(stream) = take(&client.stream) {
                let _ = stream.shutdown(Shutdown::Both);
            }
            let _ = client.thread.join();
        }
    }

    fn admit(&mut self, stream: UnixStream) {
        let peer = match sys::peer_cred(stream.as_fd()) {
            Ok(peer) => peer,
            Err(e) => {
                tracing::warn!(error = %e, "control client without credentials; dropped");
                return;
            }
        };
        let _ = stream.set_write_timeout(Some(self.options.write_timeout));
        if let Err(refused) = authorize(&peer, self.server_uid) {
            turn_away(stream, &peer, &*self.handler, &refused.to_string());
            return;
        }
        self.clients.retain(|c| !c.thread.is_finished());
        if self.clients.len() >= self.options.max_clients {
            let reason = format!(
                "the control socket is busy ({} clients connected): retry in a few seconds",
                self.clients.len()
            );
            turn_away(stream, &peer, &*self.handler, &reason);
            return;
        }
        let Ok(handle) = stream.try_clone() else {
            turn_away(
                stream,
                &peer,
                &*self.handler,
                "cannot serve: out of descriptors",
            );
            return;
        };
        let handler = self.handler.clone();
        let options = self.options.clone();
        let cut: CutHandle = Arc::new(Mutex::new(Some(handle)));
        let done = cut.clone();
        let spawned = std::thread::Builder::new()
            .name("wssedge-control-client".into())
            .spawn(move || {
                session::serve(stream, peer, &*handler, &options);
                drop(take(&done));
            });
        match spawned {
            Ok(thread) => self.clients.push(Client {
                stream: cut,
                thread,
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a control client thread");
                if let Some(handle) = take(&cut) {
                    turn_away(
                        handle,
                        &peer,
                        &*self.handler,
                        "cannot serve: out of threads",
                    );
                }
            }
        }
    }
}

/// A peer that is neither root nor the server's user.
#[derive(Debug, thiserror::Error)]
#[error(
    "uid {uid} may not use this control socket: run wssedge ctl as uid {server_uid} (the server's user) or as root"
)]
pub(crate) struct Unauthorized {
    uid: u32,
    server_uid: u32,
}

/// Only root and the user wssedge runs as may change it. The socket's 0600 mode already says
/// so; this check holds even if someone loosens the mode or passes the descriptor on.
pub(crate) fn authorize(peer: &PeerCred, server_uid: u32) -> Result<(), Unauthorized> {
    if peer.uid == 0 || peer.uid == server_uid {
        Ok(())
    } else {
        Err(Unauthorized {
            uid: peer.uid,
            server_uid,
        })
    }
}

/// Tells a peer why it is not served, reports it to the handler, and closes.
pub(crate) fn turn_away(
    mut stream: UnixStream,
    peer: &PeerCred,
    handler: &dyn ControlHandler,
    reason: &str,
) {
    tracing::warn!(
        uid = peer.uid,
        gid = peer.gid,
        pid = peer.pid,
        reason,
        "control client refused"
    );
    handler.refused(peer, reason);
    let _ = stream.write_all(&Response::error(reason).to_line());
}
