//! Descriptors: borrowing the one a runtime's socket holds, passing descriptors to another
//! process over a Unix socket (SCM_RIGHTS, via rustix), and taking the one a predecessor
//! process handed over through the environment.

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::io::Errno;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// Borrows the descriptor of a socket owned by `owner` (monoio's streams expose only
/// `AsRawFd`). `owner` must own the descriptor it reports, as every socket type does.
pub fn borrow_fd<T: AsRawFd>(owner: &T) -> BorrowedFd<'_> {
    let fd: RawFd = owner.as_raw_fd();
    // SAFETY: `owner` owns the open descriptor and is borrowed for the returned lifetime, so the
    // descriptor cannot be closed while the BorrowedFd exists.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Descriptors in one message (the kernel allows 253; send more messages for more).
pub const MAX_FDS: usize = 64;

/// Sends `data` (one message on a `SOCK_SEQPACKET` or stream Unix socket) with `fds` attached.
pub fn pass_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors in one message (at most {MAX_FDS})",
            fds.len()
        )));
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other(
            "no room for the descriptors' control message",
        ));
    }
    let iov = [IoSlice::new(data)];
    loop {
        match rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) if n == data.len() => return Ok(()),
            Ok(_) => return Err(io::Error::other("a handover message was cut short")),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message into `buf`: its length (0 at end of stream) and the descriptors it
/// carried, owned (closed on drop) and close-on-exec (`MSG_CMSG_CLOEXEC`).
pub fn recv_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let got = loop {
        match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(got) => break got,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = message {
            fds.extend(rights);
        }
    }
    if got
        .flags
        .intersects(ReturnFlags::CTRUNC | ReturnFlags::TRUNC)
    {
        // The descriptors that did arrive close with `fds`.
        return Err(io::Error::other("a handover message was truncated"));
    }
    Ok((got.bytes, fds))
}

/// Why the descriptor named in the environment could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    #[error("{var}={value:?} is not a descriptor number")]
    NotANumber { var: String, value: OsString },
    #[error("{var}={fd}: no such open descriptor")]
    NotOpen { var: String, fd: RawFd },
}

/// Takes ownership of the descriptor whose number the environment variable `var` holds, and
/// removes the variable (it is for this process, not its children). `Ok(None)` when `var` is
/// not set.
///
/// The variable is the parent's promise that it passed this descriptor to this process for this
/// one use: nothing else in the process knows the number. Call it once, early, from the main
/// thread (it changes the environment).
pub fn take_fd_from_env(var: &str) -> Result<Option<OwnedFd>, InheritError> {
    let Some(value) = std::env::var_os(var) else {
        return Ok(None);
    };
    std::env::remove_var(var);
    let fd: RawFd =
        value
            .to_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| InheritError::NotANumber {
                var: var.to_owned(),
                value: value.clone(),
            })?;
    // SAFETY: F_GETFD only reads the descriptor's flags; it fails (EBADF) on a closed number.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(InheritError::NotOpen {
            var: var.to_owned(),
            fd,
        });
    }
    // SAFETY: the descriptor is open (checked above) and the parent passed it to this process
    // for this use alone (the variable's contract): nothing else owns it, and the variable is
    // gone so it cannot be taken twice.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, IntoRawFd};

    fn pair() -> (socket2::Socket, socket2::Socket) {
        socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap()
    }

    #[test]
    fn a_borrowed_fd_is_the_owners() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(borrow_fd(&l).as_raw_fd(), l.as_raw_fd());
    }

    /// A descriptor sent across is the same open file: what is written to a pipe through the
    /// received copy comes out of the original's other end.
    #[test]
    fn descriptors_cross_with_their_message() {
        let (a, b) = pair();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        pass_fds(a.as_fd(), b"two", &[writer.as_fd(), listener.as_fd()]).unwrap();
        pass_fds(a.as_fd(), b"none", &[]).unwrap();
        drop(writer);
        let mut buf = [0u8; 16];
        let (n, fds) = recv_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"two"[..], 2));
        for fd in &fds {
            let flags = rustix::io::fcntl_getfd(fd).unwrap();
            assert!(
                flags.contains(rustix::io::FdFlags::CLOEXEC),
                "received close-on-exec"
            );
        }
        let mut fds = fds.into_iter();
        let mut w = std::fs::File::from(fds.next().unwrap());
        w.write_all(b"through the copy").unwrap();
        drop(w);
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the copy");
        let l = std::net::TcpListener::from(fds.next().unwrap());
        assert_eq!(l.local_addr().unwrap(), listener.local_addr().unwrap());
        let (n, fds) = recv_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"none"[..], 0));
        drop(a);
        assert_eq!(recv_fds(b.as_fd(), &mut buf).unwrap().0, 0, "end of stream");
    }

    #[test]
    fn the_most_descriptors_fit_one_message_and_one_more_is_refused() {
        let (a, b) = pair();
        let fds = vec![a.as_fd(); MAX_FDS];
        pass_fds(a.as_fd(), b"full", &fds).unwrap();
        let mut buf = [0u8; 8];
        let (n, got) = recv_fds(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], got.len()), (&b"full"[..], MAX_FDS));
        let fds = vec![a.as_fd(); MAX_FDS + 1];
        assert!(pass_fds(a.as_fd(), b"x", &fds).is_err());
    }

    #[test]
    fn a_message_longer_than_the_buffer_is_an_error() {
        let (a, b) = pair();
        pass_fds(a.as_fd(), b"0123456789", &[]).unwrap();
        let mut buf = [0u8; 4];
        assert!(recv_fds(b.as_fd(), &mut buf).is_err());
    }

    /// The environment is process-wide: one test covers every case, in order.
    #[test]
    fn the_environment_names_the_inherited_descriptor_once() {
        const VAR: &str = "WSSEDGE_SYS_TEST_FD";
        std::env::remove_var(VAR);
        assert!(take_fd_from_env(VAR).unwrap().is_none());

        std::env::set_var(VAR, "seven");
        let e = take_fd_from_env(VAR).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{VAR}=\"seven\" is not a descriptor number")
        );
        assert!(std::env::var_os(VAR).is_none(), "the variable is removed");

        // A number no descriptor can have (above any RLIMIT_NOFILE): a number closed here could
        // be reused at once by another test's open and taken from under it.
        let closed: RawFd = 1 << 30;
        std::env::set_var(VAR, closed.to_string());
        let e = take_fd_from_env(VAR).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{VAR}={closed}: no such open descriptor")
        );

        let (a, b) = pair();
        std::env::set_var(VAR, b.into_raw_fd().to_string());
        let taken = take_fd_from_env(VAR).unwrap().unwrap();
        pass_fds(a.as_fd(), b"hi", &[]).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(recv_fds(taken.as_fd(), &mut buf).unwrap().0, 2);
        assert!(take_fd_from_env(VAR).unwrap().is_none(), "taken once");
    }
}

/// `CLOSE_RANGE_CLOEXEC` (Linux 5.11): mark the range close-on-exec instead of closing it.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = libc::CLOSE_RANGE_CLOEXEC;

/// Makes `cmd`'s child mark every descriptor above stderr close-on-exec except `keep`, between
/// fork and exec: a descriptor opened without close-on-exec must not cross into the new program.
/// (monoio's io_uring accepts carry no `SOCK_CLOEXEC`: without this, every connection live at
/// the fork would be inherited by a restart's successor, which never knows it and holds it
/// until it exits.) Race-free, unlike setting the flag after each accept, which a fork between
/// the accept's completion and the `fcntl` would beat.
pub fn exec_keeping_only(cmd: &mut std::process::Command, keep: RawFd) {
    use std::os::unix::process::CommandExt as _;
    let keep = keep.max(3) as libc::c_uint;
    // SAFETY: the closure runs in the forked child before exec. It only issues close_range(2)
    // (or, on kernels before 5.11, fcntl(2) in a loop), both async-signal-safe, allocates
    // nothing and touches no lock another thread of the parent may have held at the fork.
    unsafe {
        cmd.pre_exec(move || {
            cloexec_range(3, keep - 1)?;
            cloexec_range(keep + 1, libc::c_uint::MAX)
        });
    }
}

/// Marks descriptors `first..=last` close-on-exec (nothing when the range is empty).
fn cloexec_range(first: libc::c_uint, last: libc::c_uint) -> io::Result<()> {
    if first > last {
        return Ok(());
    }
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets descriptor flags.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
        return Err(err);
    }
    // An older kernel: each open descriptor up to the limit, one fcntl each.
    // SAFETY: sysconf only reads a limit.
    let open_max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) };
    let end = if open_max <= 0 {
        1 << 20
    } else {
        open_max as libc::c_uint
    };
    for fd in first..=last.min(end) {
        // SAFETY: F_SETFD on a descriptor that may not be open fails with EBADF and changes
        // nothing; on an open one it sets only its close-on-exec flag.
        unsafe { libc::fcntl(fd as libc::c_int, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

#[cfg(test)]
mod exec_tests {
    use std::os::fd::AsRawFd;
    use std::process::Command;

    /// A descriptor without close-on-exec does not reach the child; the kept one does.
    #[test]
    fn only_the_kept_descriptor_crosses_exec() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        for s in [&a, &b] {
            let fd = s.as_raw_fd();
            // SAFETY: clears FD_CLOEXEC on a descriptor this test owns.
            assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
        }
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "[ -e /proc/self/fd/{} ] && echo kept; [ -e /proc/self/fd/{} ] && echo leaked; true",
            a.as_raw_fd(),
            b.as_raw_fd()
        ));
        super::exec_keeping_only(&mut cmd, a.as_raw_fd());
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "kept\n");
    }
}
