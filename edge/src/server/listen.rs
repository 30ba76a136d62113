//! Listener set-up: one SO_REUSEPORT listener per core and address, guarded by an exclusive
//! per-address lock so a stray second instance can never join the reuseport group and
//! silently take half of the connections.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener};

use socket2::{Domain, Protocol, Socket, Type};

/// Accept backlog of every listener (the kernel caps it at net.core.somaxconn).
pub const BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "another wssedge already serves {addr}: stop it first, or choose another --listen address"
    )]
    AlreadyServed { addr: SocketAddr },
    #[error("cannot listen on {addr}: {source} (is another program using that port? is the address configured on this host?)")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot take the instance lock for {addr}: {source}")]
    Lock { addr: SocketAddr, source: io::Error },
}

/// Held for the life of the process: while it exists no other wssedge can serve the address.
///
/// The lock is an abstract Unix socket named after the address. Like the TCP port itself it
/// lives in the network namespace, it vanishes when the process dies (no stale lock files),
/// and binding it twice fails atomically.
#[derive(Debug)]
pub struct InstanceLock {
    _socket: UnixListener,
    pub addr: SocketAddr,
}

impl InstanceLock {
    pub fn take(addr: SocketAddr) -> Result<Self, ListenError> {
        let name = format!("wssedge/listen/{addr}");
        let unix = UnixAddr::from_abstract_name(name.as_bytes())
            .map_err(|source| ListenError::Lock { addr, source })?;
        match UnixListener::bind_addr(&unix) {
            Ok(socket) => Ok(Self {
                _socket: socket,
                addr,
            }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                Err(ListenError::AlreadyServed { addr })
            }
            Err(source) => Err(ListenError::Lock { addr, source }),
        }
    }

    /// The lock as handed over by the previous process of a restart (the same bound socket:
    /// the address is never unlocked in between).
    pub(crate) fn inherited(socket: std::os::fd::OwnedFd, addr: SocketAddr) -> Self {
        Self {
            _socket: UnixListener::from(socket),
            addr,
        }
    }

    /// The lock's socket, to hand it to a successor.
    pub(crate) fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self._socket)
    }
}

pub(crate) fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// One address's listeners, one per core, all in one SO_REUSEPORT group.
#[derive(Debug)]
pub struct ListenerSet {
    pub addr: SocketAddr,
    pub per_core: Vec<TcpListener>,
    pub lock: InstanceLock,
}

/// Binds `cores` listeners on `addr`. Port 0 picks one ephemeral port shared by all cores.
pub fn bind_listeners(addr: SocketAddr, cores: usize) -> Result<ListenerSet, ListenError> {
    let bind_err = |source| ListenError::Bind { addr, source };
    // A fixed port is locked before binding, so a second instance never joins the group even
    // for an instant. An ephemeral port is unique once bound; it is locked right after.
    let early_lock = if addr.port() != 0 {
        Some(InstanceLock::take(addr)?)
    } else {
        None
    };
    let first = reuseport_listener(addr).map_err(bind_err)?;
    let actual = first.local_addr().map_err(bind_err)?;
    let lock = match early_lock {
        Some(lock) => lock,
        None => InstanceLock::take(actual)?,
    };
    let mut per_core = vec![first];
    for _ in 1..cores {
        per_core.push(
            reuseport_listener(actual).map_err(|source| ListenError::Bind {
                addr: actual,
                source,
            })?,
        );
    }
    Ok(ListenerSet {
        addr: actual,
        per_core,
        lock,
    })
}

/// Makes `set` hold exactly `cores` listeners: a restart's successor may run another number of
/// cores than its predecessor. Missing ones join the group (the instance lock is ours, so no
/// stray can); extra ones are closed — their queued connections are reset, so a successor
/// should keep the core count (`needs restart` is not a reason to shrink).
pub(crate) fn fit_to_cores(set: &mut ListenerSet, cores: usize) -> Result<(), ListenError> {
    while set.per_core.len() < cores {
        let l = reuseport_listener(set.addr).map_err(|source| ListenError::Bind {
            addr: set.addr,
            source,
        })?;
        set.per_core.push(l);
    }
    if set.per_core.len() > cores {
        tracing::warn!(
            addr = %set.addr,
            inherited = set.per_core.len(),
            cores,
            "fewer cores than the previous process: its extra listeners are closed"
        );
        set.per_core.truncate(cores);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_port_is_shared_by_all_cores_and_locked() {
        let set = bind_listeners("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(set.addr.port(), 0);
        assert_eq!(set.per_core.len(), 3);
        for l in &set.per_core {
            assert_eq!(l.local_addr().unwrap(), set.addr);
        }
        match bind_listeners(set.addr, 1) {
            Err(ListenError::AlreadyServed { addr }) => assert_eq!(addr, set.addr),
            other => panic!("a second instance must be refused, got {other:?}"),
        }
    }

    #[test]
    fn lock_is_released_with_the_set() {
        let set = bind_listeners("127.0.0.1:0".parse().unwrap(), 1).unwrap();
        let addr = set.addr;
        drop(set);
        // Only the lock is checked again: rebinding the TCP port itself could race another
        // test's ephemeral port picking up the number meanwhile.
        let again = InstanceLock::take(addr).expect("the lock is free once the set is dropped");
        assert_eq!(again.addr, addr);
    }
}
