//! Who a process is and who is on the other end of a Unix socket, through rustix's safe calls:
//! the peer's credentials (SO_PEERCRED; std's `UnixStream::peer_cred` is unstable), the
//! effective ids, and a socket's mode before bind (fchmod).

use std::io;
use std::os::fd::BorrowedFd;

/// Who is on the other end of a Unix socket, as the kernel recorded it at connect (or, from
/// the connecting end, at the listener's `listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub uid: u32,
    pub gid: u32,
    /// 0 when the peer lives in another pid namespace.
    pub pid: u32,
}

/// Reads SO_PEERCRED of a connected Unix socket.
pub fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let cred = rustix::net::sockopt::socket_peercred(fd)?;
    Ok(PeerCred {
        uid: cred.uid.as_raw(),
        gid: cred.gid.as_raw(),
        pid: u32::try_from(cred.pid.as_raw_nonzero().get()).unwrap_or(0),
    })
}

/// Sets the mode of a socket before it is bound: Linux creates the socket file with the
/// socket inode's mode (less the umask), so the file never exists with a wider mode.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    rustix::fs::fchmod(fd, rustix::fs::Mode::from_raw_mode(mode))?;
    Ok(())
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// This process's effective gid.
pub fn effective_gid() -> u32 {
    rustix::process::getegid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;

    #[test]
    fn peer_cred_of_a_socketpair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_cred(a.as_fd()).unwrap();
        assert_eq!(cred.uid, effective_uid());
        assert_eq!(cred.gid, effective_gid());
        assert_eq!(cred.pid, std::process::id());
    }

    /// From the connecting end, the credentials of the process that listens (recorded at its
    /// `listen`), not its own.
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
    fn fchmod_sets_the_mode() {
        let file = tempfile::NamedTempFile::new().unwrap();
        fchmod(file.as_file().as_fd(), 0o640).unwrap();
        let mode = std::fs::metadata(file.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn effective_ids_are_the_ones_std_sees_on_files_we_create() {
        use std::os::unix::fs::MetadataExt;
        let file = tempfile::NamedTempFile::new().unwrap();
        let meta = std::fs::metadata(file.path()).unwrap();
        assert_eq!(meta.uid(), effective_uid());
        // The group of a new file is the egid unless the directory is set-group-id.
        let dir = std::fs::metadata(file.path().parent().unwrap()).unwrap();
        if dir.mode() & 0o2000 == 0 {
            assert_eq!(meta.gid(), effective_gid());
        }
    }
}
