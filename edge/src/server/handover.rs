//! Restart handover (`wssedge ctl restart`, SIGUSR2): the running process starts a new
//! process of the same binary with the same arguments and hands it, over a `SOCK_SEQPACKET`
//! pair inherited across exec ([`ENV`] names its descriptor), every listening socket, the
//! instance lock of each listen address and the admin listener (SCM_RIGHTS, see [`fd`]).
//!
//! Why nothing is refused: the successor's listeners are the *same* sockets — one accept queue
//! per socket in the kernel, shared by both processes. Until the successor reports ready the
//! predecessor keeps accepting; then its cores cancel their accepts (never shutting the sockets
//! down, which would close them for the successor too) and, once every cancelled accept has
//! come back, the successor's cores start. No connection is taken by the process going away
//! (it would only be served to be closed with 1012 again), and none waits longer than about a
//! core tick in the queue. The order matters twice: io_uring accepts wait on a listener
//! exclusively (one waiter is woken per connection), so with both processes' accepts armed a
//! wakeup could go to an accept being cancelled and leave the connection queued, unseen by the
//! successor until the next one arrives (seen: a client stuck 10 s); a successor that arms its
//! accepts after the predecessor's are gone finds the queue as it is. The instance lock travels the same way, so the address is never
//! unlocked in between.
//!
//! The exchange:
//! 1. predecessor → successor: an [`Offer`] (addresses, counts), then the descriptors;
//! 2. successor: binds what is new, starts its cores on the inherited listeners with their
//!    accepts held (attaching its own eBPF program to the group, which replaces the
//!    predecessor's), then → `ready` (or `failed` with the reason: the predecessor keeps
//!    serving);
//! 3. predecessor: starts its drain (1012 "service_restart"), waits until every core's accepts
//!    have returned; seals every core's replay shard and hands the successor its live single-use
//!    `jti`s (`replay_entries` messages, then `replay_done` with the count), if the successor
//!    said it takes them → `accepts_released`; the successor puts the entries in its own
//!    shards, then its cores start accepting;
//! 4. predecessor: answers the control command, stops serving the control socket →
//!    `control_released`;
//! 5. successor: binds the control socket; its audit writer takes the trail over once the
//!    predecessor has sealed it at the end of its drain.
//!
//! Why the replay store travels at step 3: a `jti` used on the old process must stay used. The
//! old process takes no connection after its accepts returned, and once a shard is sealed its
//! in-flight upgrades get 503 `replay_store_unavailable` for a new `jti` (they retry on the
//! successor, which has the entry if it was used): nothing is admitted there that the successor
//! does not know of. A successor that does not receive the whole store (an old process from
//! before this message, a core of it that did not answer, a broken transfer, more entries than
//! its `max_tracked_jti`) distrusts every single-use token issued before it took over (401
//! `replay_unproven`, see `Admission::distrust_tokens_before`) rather than admit a replay.
//!
//! [`fd`]: wssedge_sys::fd

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use socket2::Socket;

use super::listen::{InstanceLock, ListenerSet};
use crate::auth::replay::HandedEntry;
use wssedge_sys::fd;

/// The binary a restart starts: the file at the path this process was started from. When a
/// package upgrade replaced it, the kernel names ours "PATH (deleted)": the new file at PATH is
/// the one meant (a restart after an upgrade is how the upgrade takes effect).
fn successor_binary(exe: PathBuf) -> PathBuf {
    let Some(text) = exe.to_str() else {
        return exe;
    };
    match text.strip_suffix(" (deleted)") {
        Some(path) if std::path::Path::new(path).is_file() => PathBuf::from(path),
        _ => exe,
    }
}

/// The environment variable naming the successor's end of the handover socket.
pub(crate) const ENV: &str = "WSSEDGE_HANDOVER_FD";

/// How long a successor may take to report ready before the restart is given up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The first message: what follows.
#[derive(Debug, Serialize, Deserialize)]
struct Offer {
    /// The predecessor's pid (for the logs).
    pid: u32,
    /// Per listen address, in order: `listeners` listener descriptors, then its lock.
    sets: Vec<OfferedSet>,
    /// The admin listener's address; its descriptor comes last.
    admin: Option<SocketAddr>,
    /// Descriptors in the messages that follow.
    fds: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct OfferedSet {
    addr: SocketAddr,
    listeners: usize,
}

/// The successor's answer.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
enum Answer {
    Ready {
        pid: u32,
        /// The successor holds its accepts until `accepts_released` (absent from successors
        /// built before that message: they accept at once and would take it for another).
        #[serde(default)]
        holds_accepts: bool,
        /// The successor reads the replay store before `accepts_released` (absent from
        /// successors built before: they would take the entries for another message).
        #[serde(default)]
        takes_replay: bool,
    },
    Failed {
        reason: String,
    },
}

const ACCEPTS_RELEASED: &[u8] = b"accepts_released";
const CONTROL_RELEASED: &[u8] = b"control_released";
/// Followed by up to [`ENTRIES_PER_MESSAGE`] [`HandedEntry`]s on the wire.
const REPLAY_ENTRIES: &[u8] = b"replay_entries\n";
/// Followed by a [`ReplayDone`] (JSON): the store's end.
const REPLAY_DONE: &[u8] = b"replay_done\n";
/// Entries per message: 48 KiB, well within a socket buffer and the successor's receive buffer.
const ENTRIES_PER_MESSAGE: usize = 2048;
/// The successor's receive buffer (a message longer than it would be cut: refused).
const RECV_BYTES: usize = 64 * 1024;
/// How long one message of the store may wait for room in the socket.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The end of the replay store: how many entries were sent, and whether that is all of it
/// (false: a core of the old process did not answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct ReplayDone {
    entries: usize,
    complete: bool,
}

/// The replay store as a successor received it.
#[derive(Debug, Default)]
pub(crate) struct InheritedReplay {
    /// The entries kept (at most the cap the successor asked for).
    pub entries: Vec<HandedEntry>,
    /// Entries announced by the messages (kept or not).
    received: usize,
    /// More entries than the cap, or a message that was no whole number of entries.
    lost: bool,
    done: Option<ReplayDone>,
}

impl InheritedReplay {
    /// Every live entry of the old process arrived and was kept.
    pub fn is_whole(&self) -> bool {
        !self.lost
            && self
                .done
                .is_some_and(|d| d.complete && d.entries == self.received)
    }

    /// Why it is not whole, for the log line.
    pub fn shortfall(&self) -> &'static str {
        match self.done {
            _ if self.lost => "more entries than max_tracked_jti, or a malformed message",
            None => "the previous process sent no replay store (or not all of it)",
            Some(d) if !d.complete => "a core of the previous process did not hand its shard over",
            Some(_) if !self.is_whole() => "fewer entries arrived than were announced",
            Some(_) => "nothing missing",
        }
    }

    fn take(&mut self, message: &[u8], cap: usize) {
        match HandedEntry::from_wire(message) {
            Some(entries) => {
                self.received += entries.len();
                let room = cap.saturating_sub(self.entries.len());
                if entries.len() > room {
                    self.lost = true;
                }
                self.entries.extend(entries.into_iter().take(room));
            }
            None => self.lost = true,
        }
    }
}

/// What a running edge can hand over: copies of its listening sockets (the cores own the
/// originals) and of its admin listener.
pub(crate) struct Handoff {
    pub sets: Vec<(SocketAddr, Vec<OwnedFd>)>,
    pub admin: Option<(SocketAddr, OwnedFd)>,
}

/// A successor that reported ready.
pub(crate) struct Successor {
    sock: Socket,
    pub pid: u32,
    /// It waits for `accepts_released` before accepting.
    holds_accepts: bool,
    /// It reads the replay store before `accepts_released`.
    pub takes_replay: bool,
    _child: Child,
}

impl Successor {
    /// Hands the successor the replay store's live entries (`complete`: all of them), before
    /// `accepts_released`. Only to a successor that takes them.
    pub fn hand_replay(
        &self,
        entries: &[HandedEntry],
        complete: bool,
    ) -> Result<(), HandoverError> {
        if !self.takes_replay {
            return Ok(());
        }
        send_replay(&self.sock, entries, complete)
    }

    /// Tells the successor this process accepts no more: its cores may start. Nothing for a
    /// successor that does not wait for it (it accepts already).
    pub fn accepts_released(&self) {
        if !self.holds_accepts {
            return;
        }
        if let Err(e) = fd::pass_fds(self.sock.as_fd(), ACCEPTS_RELEASED, &[]) {
            tracing::warn!(error = %e, "could not tell the new process to start accepting");
        }
    }

    /// Tells the successor the control socket is free to take.
    pub fn control_released(&self) {
        if let Err(e) = fd::pass_fds(self.sock.as_fd(), CONTROL_RELEASED, &[]) {
            tracing::warn!(error = %e, "could not tell the new process the control socket is free");
        }
    }
}

/// The replay store's messages: the entries in chunks, then the end with the count.
fn send_replay(
    sock: &Socket,
    entries: &[HandedEntry],
    complete: bool,
) -> Result<(), HandoverError> {
    sock.set_write_timeout(Some(SEND_TIMEOUT))?;
    let mut message =
        Vec::with_capacity(REPLAY_ENTRIES.len() + ENTRIES_PER_MESSAGE * HandedEntry::WIRE_BYTES);
    for chunk in entries.chunks(ENTRIES_PER_MESSAGE) {
        message.clear();
        message.extend_from_slice(REPLAY_ENTRIES);
        for e in chunk {
            e.to_wire(&mut message);
        }
        fd::pass_fds(sock.as_fd(), &message, &[])?;
    }
    message.clear();
    message.extend_from_slice(REPLAY_DONE);
    let done = ReplayDone {
        entries: entries.len(),
        complete,
    };
    message.extend_from_slice(&serde_json::to_vec(&done)?);
    Ok(fd::pass_fds(sock.as_fd(), &message, &[])?)
}

/// Starts the successor, hands everything over and waits until it serves.
pub(crate) fn spawn_successor(
    handoff: &Handoff,
    locks: &[InstanceLock],
) -> Result<Successor, HandoverError> {
    let (ours, theirs) = Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)?;
    // Only the child's end crosses exec; ours stays close-on-exec.
    theirs.set_cloexec(false)?;
    let exe = successor_binary(std::env::current_exe().map_err(HandoverError::NoBinary)?);
    let mut cmd = Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(ENV, theirs.as_raw_fd().to_string())
        .stdin(Stdio::null());
    // Connections accepted through io_uring are not close-on-exec: none may reach the
    // successor, which would hold them unknowingly (the clients would never see their close).
    fd::exec_keeping_only(&mut cmd, theirs.as_raw_fd());
    let mut child = cmd.spawn().map_err(|source| HandoverError::Spawn {
        exe: exe.clone(),
        source,
    })?;
    drop(theirs);
    tracing::info!(pid = child.id(), exe = %exe.display(), "restart: new process started");
    match offer_and_wait(&ours, handoff, locks) {
        Ok(Ready {
            pid,
            holds_accepts,
            takes_replay,
        }) => Ok(Successor {
            sock: ours,
            pid,
            holds_accepts,
            takes_replay,
            _child: child,
        }),
        Err(e) => {
            // It may still be starting (or stuck): it must not serve next to us unannounced.
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// What a successor said when it reported ready.
struct Ready {
    pid: u32,
    holds_accepts: bool,
    takes_replay: bool,
}

/// Hands everything over; what the successor said when ready.
fn offer_and_wait(
    sock: &Socket,
    handoff: &Handoff,
    locks: &[InstanceLock],
) -> Result<Ready, HandoverError> {
    let mut fds: Vec<BorrowedFd<'_>> = Vec::new();
    let mut sets = Vec::new();
    for ((addr, listeners), lock) in handoff.sets.iter().zip(locks) {
        fds.extend(listeners.iter().map(AsFd::as_fd));
        fds.push(lock.socket());
        sets.push(OfferedSet {
            addr: *addr,
            listeners: listeners.len(),
        });
    }
    if let Some((_, admin)) = &handoff.admin {
        fds.push(admin.as_fd());
    }
    let offer = Offer {
        pid: std::process::id(),
        sets,
        admin: handoff.admin.as_ref().map(|(a, _)| *a),
        fds: fds.len(),
    };
    let header = serde_json::to_vec(&offer)?;
    fd::pass_fds(sock.as_fd(), &header, &[])?;
    for chunk in fds.chunks(fd::MAX_FDS) {
        fd::pass_fds(sock.as_fd(), b"fds", chunk)?;
    }
    sock.set_read_timeout(Some(READY_TIMEOUT))?;
    let mut buf = [0u8; 4096];
    let (n, _) = fd::recv_fds(sock.as_fd(), &mut buf).map_err(HandoverError::NotReady)?;
    if n == 0 {
        return Err(HandoverError::Exited);
    }
    match serde_json::from_slice::<Answer>(&buf[..n]) {
        Ok(Answer::Ready {
            pid,
            holds_accepts,
            takes_replay,
        }) => Ok(Ready {
            pid,
            holds_accepts,
            takes_replay,
        }),
        Ok(Answer::Failed { reason }) => Err(HandoverError::Refused(reason)),
        Err(e) => Err(HandoverError::Unexpected(e)),
    }
}

/// Why a handover failed: the old process keeps serving, or the new one does not start.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover: {0}")]
    Io(#[from] std::io::Error),
    #[error("handover: {0}")]
    Message(#[from] serde_json::Error),
    #[error("handover: {0}")]
    Broken(&'static str),
    #[error(transparent)]
    Inherit(#[from] wssedge_sys::fd::InheritError),
    #[error("cannot find this binary: {0}")]
    NoBinary(#[source] std::io::Error),
    #[error("cannot start {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        source: std::io::Error,
    },
    #[error("the new process did not report ready within {READY_TIMEOUT:?}: {0}")]
    NotReady(#[source] std::io::Error),
    #[error("the new process exited before serving (see its log)")]
    Exited,
    #[error("the new process refused to start: {0}")]
    Refused(String),
    #[error("the new process answered something unexpected: {0}")]
    Unexpected(#[source] serde_json::Error),
}

/// What a successor received.
pub(crate) struct Inheritance {
    sock: Socket,
    from_pid: u32,
    sets: Vec<ListenerSet>,
    admin: Option<(SocketAddr, TcpListener)>,
    /// The predecessor said `control_released` where `accepts_released` was expected.
    control_released_early: std::cell::Cell<bool>,
}

/// What a successor heard from its predecessor while waiting for a word.
enum Heard {
    Expected,
    Gone,
    Other(Vec<u8>),
    Nothing(std::io::Error),
}

impl Heard {
    fn log(&self, from_pid: u32, awaited: &str) {
        match self {
            Heard::Expected => {}
            Heard::Gone => tracing::info!(from_pid, "the previous process has gone"),
            Heard::Other(what) => tracing::warn!(
                from_pid,
                message = %String::from_utf8_lossy(what),
                "unexpected message from the previous process (waiting for it to {awaited})"
            ),
            Heard::Nothing(e) => tracing::warn!(
                from_pid,
                error = %e,
                "the previous process did not {awaited} in time; going on"
            ),
        }
    }
}

/// In a successor (the environment names a handover socket): receives what the predecessor
/// hands over. `None` in an edge started normally.
pub(crate) fn inherit() -> Result<Option<Inheritance>, HandoverError> {
    // The variable is removed: it is not for our own children (a later restart passes its own).
    let Some(handed) = fd::take_fd_from_env(ENV)? else {
        return Ok(None);
    };
    let sock = Socket::from(handed);
    sock.set_cloexec(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = vec![0u8; 64 * 1024];
    let (n, _) = fd::recv_fds(sock.as_fd(), &mut buf)?;
    let offer: Offer = serde_json::from_slice(&buf[..n])?;
    let mut fds = Vec::with_capacity(offer.fds);
    while fds.len() < offer.fds {
        let (n, more) = fd::recv_fds(sock.as_fd(), &mut buf)?;
        if n == 0 {
            return Err(HandoverError::Broken(
                "the previous process went away during the handover",
            ));
        }
        fds.extend(more);
    }
    let mut fds = fds.into_iter();
    let mut next = || {
        fds.next()
            .ok_or(HandoverError::Broken("fewer descriptors than announced"))
    };
    let mut sets = Vec::new();
    for set in &offer.sets {
        let mut per_core = Vec::new();
        for _ in 0..set.listeners {
            per_core.push(TcpListener::from(next()?));
        }
        let lock = InstanceLock::inherited(next()?, set.addr);
        sets.push(ListenerSet {
            addr: set.addr,
            per_core,
            lock,
        });
    }
    let admin = match offer.admin {
        Some(addr) => Some((addr, TcpListener::from(next()?))),
        None => None,
    };
    tracing::info!(
        from_pid = offer.pid,
        addresses = sets.len(),
        "restart: listening sockets taken over from the previous process"
    );
    Ok(Some(Inheritance {
        sock,
        from_pid: offer.pid,
        sets,
        admin,
        control_released_early: Default::default(),
    }))
}

/// A configured address matches an inherited one when equal, or when it asked for an
/// ephemeral port on the same IP (the predecessor resolved it).
fn matches(wanted: SocketAddr, have: SocketAddr) -> bool {
    wanted == have || (wanted.port() == 0 && wanted.ip() == have.ip())
}

impl Inheritance {
    /// The inherited listeners of `wanted`, if the predecessor served it (and they still
    /// listen: a core of the predecessor that died shut its own down).
    pub fn take_set(&mut self, wanted: SocketAddr) -> Option<ListenerSet> {
        let i = self.sets.iter().position(|s| matches(wanted, s.addr))?;
        let mut set = self.sets.remove(i);
        set.per_core
            .retain(|l| socket2::SockRef::from(l).is_listener().unwrap_or(false));
        Some(set)
    }

    /// The inherited admin listener, if it serves `wanted`.
    pub fn take_admin(&mut self, wanted: SocketAddr) -> Option<TcpListener> {
        match &self.admin {
            Some((addr, _)) if matches(wanted, *addr) => self.admin.take().map(|(_, l)| l),
            _ => None,
        }
    }

    /// Addresses the predecessor served that the new configuration does not: closed here
    /// (their queued connections are reset by the last close).
    pub fn drop_unused(&mut self) {
        for set in self.sets.drain(..) {
            tracing::warn!(addr = %set.addr, "restart: no longer configured; its listeners close");
        }
        if let Some((addr, _)) = self.admin.take() {
            tracing::info!(%addr, "restart: the admin address changed; the old admin listener closes");
        }
    }

    fn answer(&self, answer: &Answer) {
        let line = serde_json::to_vec(answer).unwrap_or_default();
        if let Err(e) = fd::pass_fds(self.sock.as_fd(), &line, &[]) {
            tracing::warn!(error = %e, "could not answer the previous process");
        }
    }

    /// Tells the predecessor this process serves.
    pub fn ready(&self) {
        self.answer(&Answer::Ready {
            pid: std::process::id(),
            holds_accepts: true,
            takes_replay: true,
        });
    }

    /// Tells the predecessor this process will not serve, and why.
    pub fn failed(&self, reason: &str) {
        self.answer(&Answer::Failed {
            reason: reason.to_owned(),
        });
    }

    /// Waits until the predecessor accepts no more (or is gone, or `timeout`: then this
    /// process accepts anyway, next to it, rather than leave the queues unserved), taking the
    /// replay store it hands over meanwhile (at most `max_entries` entries are kept).
    pub fn wait_accepts_released(&self, timeout: Duration, max_entries: usize) -> InheritedReplay {
        let deadline = std::time::Instant::now() + timeout;
        let mut replay = InheritedReplay::default();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.wait_for(ACCEPTS_RELEASED, left.max(Duration::from_millis(1))) {
                Heard::Expected => return replay,
                // It let go of the control socket too, so of everything before it.
                Heard::Other(what) if what == CONTROL_RELEASED => {
                    self.control_released_early.set(true);
                    return replay;
                }
                Heard::Other(what) if what.starts_with(REPLAY_ENTRIES) => {
                    replay.take(&what[REPLAY_ENTRIES.len()..], max_entries);
                }
                Heard::Other(what) if what.starts_with(REPLAY_DONE) => {
                    replay.done = serde_json::from_slice(&what[REPLAY_DONE.len()..]).ok();
                }
                heard => {
                    heard.log(self.from_pid, "stop accepting");
                    return replay;
                }
            }
        }
    }

    /// Waits until the predecessor has stopped serving the control socket (or gone). An
    /// `accepts_released` that comes after its own wait gave up is passed over: taking it for
    /// this word would bind the control socket while the predecessor still serves it.
    pub fn wait_control_released(&self, timeout: Duration) {
        if self.control_released_early.get() {
            return;
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.wait_for(CONTROL_RELEASED, left.max(Duration::from_millis(1))) {
                Heard::Expected => return,
                // Late words of the accepts' handover (its wait gave up first).
                Heard::Other(what)
                    if !left.is_zero()
                        && (what == ACCEPTS_RELEASED
                            || what.starts_with(REPLAY_ENTRIES)
                            || what.starts_with(REPLAY_DONE)) =>
                {
                    continue
                }
                heard => return heard.log(self.from_pid, "release the control socket"),
            }
        }
    }

    fn wait_for(&self, expected: &[u8], timeout: Duration) -> Heard {
        let _ = self.sock.set_read_timeout(Some(timeout));
        let mut buf = vec![0u8; RECV_BYTES];
        match fd::recv_fds(self.sock.as_fd(), &mut buf) {
            Ok((n, _)) if &buf[..n] == expected => Heard::Expected,
            Ok((0, _)) => Heard::Gone,
            Ok((n, _)) => Heard::Other(buf[..n].to_vec()),
            Err(e) => Heard::Nothing(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a package upgrade replaced the binary, `current_exe` names the old file
    /// "… (deleted)": the restart starts the new file at the same path.
    #[test]
    fn a_replaced_binary_restarts_into_the_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("wssedge");
        std::fs::write(&new, b"new").unwrap();
        let deleted = PathBuf::from(format!("{} (deleted)", new.display()));
        assert_eq!(successor_binary(deleted), new);
        // Nothing at the path any more: the name is kept (the spawn's error then says so).
        let gone = dir.path().join("gone (deleted)");
        assert_eq!(successor_binary(gone.clone()), gone);
        assert_eq!(successor_binary(new.clone()), new);
    }

    #[test]
    fn configured_addresses_match_what_was_resolved() {
        let have: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        assert!(matches("127.0.0.1:4433".parse().unwrap(), have));
        assert!(matches("127.0.0.1:0".parse().unwrap(), have));
        assert!(!matches("127.0.0.2:0".parse().unwrap(), have));
        assert!(!matches("127.0.0.1:4434".parse().unwrap(), have));
    }

    #[test]
    fn answers_round_trip() {
        let line = serde_json::to_vec(&Answer::Ready {
            pid: 7,
            holds_accepts: true,
            takes_replay: true,
        })
        .unwrap();
        assert_eq!(
            line,
            br#"{"msg":"ready","pid":7,"holds_accepts":true,"takes_replay":true}"#
        );
        // A successor from before the replay handover does not take the store.
        assert!(matches!(
            serde_json::from_slice(br#"{"msg":"ready","pid":7,"holds_accepts":true}"#),
            Ok(Answer::Ready {
                takes_replay: false,
                ..
            })
        ));
        // A successor from before `accepts_released` does not hold its accepts.
        assert!(matches!(
            serde_json::from_slice(br#"{"msg":"ready","pid":7}"#),
            Ok(Answer::Ready {
                holds_accepts: false,
                ..
            })
        ));
        assert!(matches!(
            serde_json::from_slice(br#"{"msg":"failed","reason":"x"}"#),
            Ok(Answer::Failed { .. })
        ));
    }

    /// A successor's end of a handover socket pair, and the predecessor's.
    fn exchange() -> (Inheritance, Socket) {
        let (ours, theirs) =
            Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap();
        let inheritance = Inheritance {
            sock: theirs,
            from_pid: 1,
            sets: Vec::new(),
            admin: None,
            control_released_early: Default::default(),
        };
        (inheritance, ours)
    }

    #[test]
    fn a_late_accepts_released_is_not_taken_for_control_released() {
        let (successor, predecessor) = exchange();
        // The successor's wait for the accepts gives up before the word comes.
        successor.wait_accepts_released(Duration::from_millis(10), 0);
        fd::pass_fds(predecessor.as_fd(), ACCEPTS_RELEASED, &[]).unwrap();
        waits_for_the_late_control_released(successor, predecessor);
    }

    /// The predecessor says control_released 100 ms from now: the successor's wait for it must
    /// not return on anything it was sent before.
    fn waits_for_the_late_control_released(successor: Inheritance, predecessor: Socket) {
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            fd::pass_fds(predecessor.as_fd(), CONTROL_RELEASED, &[]).unwrap();
            predecessor
        });
        let t = std::time::Instant::now();
        successor.wait_control_released(Duration::from_secs(5));
        assert!(
            t.elapsed() >= Duration::from_millis(90),
            "returned on an earlier message, {:?} in",
            t.elapsed()
        );
        drop(sender.join().unwrap());
    }

    fn entries(n: u64) -> Vec<HandedEntry> {
        (0..n)
            .map(|i| HandedEntry {
                key: crate::auth::replay::jti_key(&i.to_string()),
                exp: 1_000 + i,
            })
            .collect()
    }

    /// The store crosses in several messages before `accepts_released`, from another thread
    /// (the socket buffer is smaller than the store: the sender waits for the reader).
    #[test]
    fn the_replay_store_crosses_whole_before_the_accepts() {
        let (successor, predecessor) = exchange();
        let sent = entries(3 * ENTRIES_PER_MESSAGE as u64 + 5);
        let expected = sent.clone();
        let sender = std::thread::spawn(move || {
            send_replay(&predecessor, &sent, true).unwrap();
            fd::pass_fds(predecessor.as_fd(), ACCEPTS_RELEASED, &[]).unwrap();
            predecessor
        });
        let got = successor.wait_accepts_released(Duration::from_secs(10), 1_000_000);
        assert!(got.is_whole(), "{}", got.shortfall());
        assert_eq!(got.entries, expected);
        drop(sender.join().unwrap());
    }

    #[test]
    fn a_replay_store_that_is_not_whole_says_why() {
        // More than the successor's cap: the cap holds, and it is not whole.
        let (successor, predecessor) = exchange();
        let sender = std::thread::spawn(move || {
            send_replay(&predecessor, &entries(10), true).unwrap();
            fd::pass_fds(predecessor.as_fd(), ACCEPTS_RELEASED, &[]).unwrap();
            predecessor
        });
        let got = successor.wait_accepts_released(Duration::from_secs(10), 4);
        assert_eq!(got.entries.len(), 4);
        assert!(!got.is_whole());
        assert!(got.shortfall().contains("max_tracked_jti"));
        drop(sender.join().unwrap());

        // A core of the old process did not answer.
        let (successor, predecessor) = exchange();
        send_replay(&predecessor, &entries(3), false).unwrap();
        fd::pass_fds(predecessor.as_fd(), ACCEPTS_RELEASED, &[]).unwrap();
        let got = successor.wait_accepts_released(Duration::from_secs(5), 100);
        assert_eq!(got.entries.len(), 3);
        assert!(!got.is_whole());
        assert!(got.shortfall().contains("did not hand"));

        // An old process sends no store at all.
        let (successor, predecessor) = exchange();
        fd::pass_fds(predecessor.as_fd(), ACCEPTS_RELEASED, &[]).unwrap();
        let got = successor.wait_accepts_released(Duration::from_secs(5), 100);
        assert!(!got.is_whole());
        assert!(got.shortfall().contains("no replay store"));

        // The process goes away halfway.
        let (successor, predecessor) = exchange();
        let mut half = REPLAY_ENTRIES.to_vec();
        entries(1)[0].to_wire(&mut half);
        fd::pass_fds(predecessor.as_fd(), &half, &[]).unwrap();
        drop(predecessor);
        let got = successor.wait_accepts_released(Duration::from_secs(5), 100);
        assert_eq!(got.entries.len(), 1);
        assert!(!got.is_whole());

        // A message that is no whole number of entries.
        let (successor, predecessor) = exchange();
        let mut bad = REPLAY_ENTRIES.to_vec();
        bad.extend_from_slice(&[0u8; 23]);
        fd::pass_fds(predecessor.as_fd(), &bad, &[]).unwrap();
        send_replay(&predecessor, &[], true).unwrap();
        fd::pass_fds(predecessor.as_fd(), ACCEPTS_RELEASED, &[]).unwrap();
        assert!(!successor
            .wait_accepts_released(Duration::from_secs(5), 100)
            .is_whole());
    }

    /// A successor whose wait for the accepts gave up takes a late store for no word about the
    /// control socket.
    #[test]
    fn a_late_replay_store_is_not_taken_for_control_released() {
        let (successor, predecessor) = exchange();
        let got = successor.wait_accepts_released(Duration::from_millis(10), 100);
        assert!(!got.is_whole());
        send_replay(&predecessor, &entries(5), true).unwrap();
        fd::pass_fds(predecessor.as_fd(), ACCEPTS_RELEASED, &[]).unwrap();
        waits_for_the_late_control_released(successor, predecessor);
    }

    #[test]
    fn control_released_first_also_releases_the_accepts() {
        let (successor, predecessor) = exchange();
        fd::pass_fds(predecessor.as_fd(), CONTROL_RELEASED, &[]).unwrap();
        successor.wait_accepts_released(Duration::from_secs(5), 0);
        let t = std::time::Instant::now();
        successor.wait_control_released(Duration::from_secs(5));
        assert!(t.elapsed() < Duration::from_secs(1), "already heard");
    }
}
