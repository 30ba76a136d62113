//! Non-blocking exclusive locks on open files (flock, through rustix; std's `File::try_lock` is
//! newer than the project's MSRV).

use std::io;
use std::os::fd::BorrowedFd;

use rustix::fs::FlockOperation;
use rustix::io::Errno;

/// Takes an exclusive flock without waiting (EINTR retried). The error is the kernel's:
/// `WouldBlock` when another open file holds the lock.
pub fn lock_exclusive_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Takes an exclusive flock without waiting. `Ok(false)`: another open file holds it.
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    match lock_exclusive_nonblocking(fd) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::os::fd::AsFd;

    #[test]
    fn flock_is_exclusive_across_open_files_of_one_process() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lock");
        let first = File::create(&path).unwrap();
        let second = File::open(&path).unwrap();
        assert!(try_lock_exclusive(first.as_fd()).unwrap());
        assert!(!try_lock_exclusive(second.as_fd()).unwrap());
        let held = lock_exclusive_nonblocking(second.as_fd()).unwrap_err();
        assert_eq!(held.kind(), io::ErrorKind::WouldBlock);
        drop(first);
        assert!(try_lock_exclusive(second.as_fd()).unwrap());
    }
}
