//! The raw calls std does not expose, fenced here: the peer's credentials (SO_PEERCRED; std's
//! `UnixStream::peer_cred` is unstable), a socket's mode before bind (fchmod), the effective
//! uid, and a non-blocking exclusive lock (flock; std's `File::try_lock` is newer than our
//! MSRV). Each `unsafe` block is one libc call on a descriptor borrowed for that call.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Who is on the other end of a control connection, as the kernel recorded it at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    /// 0 when the peer lives in another pid namespace.
    pub pid: u32,
}

/// Reads SO_PEERCRED of a connected Unix socket.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a valid, writable ucred and `len` holds its exact size, so the kernel
    // writes at most that many bytes into it; `fd` is open for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<libc::ucred>() {
        return Err(io::Error::other(format!(
            "SO_PEERCRED returned {len} bytes, expected {}",
            size_of::<libc::ucred>()
        )));
    }
    Ok(PeerCred {
        uid: cred.uid,
        gid: cred.gid,
        pid: u32::try_from(cred.pid).unwrap_or(0),
    })
}

/// Sets the mode of a socket before it is bound: Linux creates the socket file with the
/// socket inode's mode (less the umask), so the file never exists with a wider mode.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: fchmod reads no memory of ours; `fd` is open for the whole call.
    let rc = unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

/// Takes an exclusive flock without waiting. `Ok(false)`: another open file holds it.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    loop {
        // SAFETY: flock reads no memory of ours; `fd` is open for the whole call.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(false),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn peer_cred_of_a_socketpair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_cred(a.as_fd()).unwrap();
        assert_eq!(cred.uid, effective_uid());
        // SAFETY: getegid takes no arguments and cannot fail.
        assert_eq!(cred.gid, unsafe { libc::getegid() });
        assert_eq!(cred.pid, std::process::id());
    }

    /// What `wssedge ctl` reads: from the connecting end, the credentials of the process that
    /// listens (recorded at its `listen`), not its own.
    #[test]
    fn peer_cred_from_the_client_side_names_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let cred = peer_cred(client.as_fd()).unwrap();
        assert_eq!(cred.uid, effective_uid());
        assert_eq!(cred.pid, std::process::id());
        drop(listener);
    }

    #[test]
    fn peer_cred_of_a_file_is_an_error_not_garbage() {
        let file = tempfile::tempfile().unwrap();
        assert!(peer_cred(file.as_fd()).is_err());
    }

    #[test]
    fn flock_is_exclusive_across_open_files_of_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = File::create(&path).unwrap();
        let second = File::open(&path).unwrap();
        assert!(try_lock_exclusive(first.as_fd()).unwrap());
        assert!(!try_lock_exclusive(second.as_fd()).unwrap());
        drop(first);
        assert!(try_lock_exclusive(second.as_fd()).unwrap());
    }
}
