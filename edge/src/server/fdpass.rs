//! Passing descriptors to another process over a Unix socket (SCM_RIGHTS): the restart hands
//! its listening sockets, their instance locks and the admin listener to its successor. The
//! only `unsafe` of the handover lives here.
//!
//! The socket is a `SOCK_SEQPACKET` pair, so each message keeps its boundaries and carries its
//! own descriptors. Received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Descriptors in one message (the kernel allows 253; the handover sends more messages).
pub(crate) const MAX_FDS: usize = 64;

const FD_BYTES: usize = std::mem::size_of::<libc::c_int>();

/// Room for the control message of `n` descriptors, as 8-byte-aligned words.
fn control_space(n: usize) -> Vec<u64> {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    let bytes = unsafe { libc::CMSG_SPACE((n * FD_BYTES) as u32) } as usize;
    vec![0u64; bytes.div_ceil(8)]
}

/// Sends `data` (one message) with `fds` attached.
pub(crate) fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!(
            "{} descriptors in one message (at most {MAX_FDS})",
            fds.len()
        )));
    }
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let mut control = control_space(fds.len());
    // SAFETY: msghdr is plain old data; all-zero (null pointers, zero lengths) is valid.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = (control.len() * 8) as _;
        // SAFETY: msg_control points at `control`, which is CMSG_SPACE(len) bytes, aligned and
        // alive: CMSG_FIRSTHDR returns its start (non-null since the length covers one header),
        // and CMSG_DATA room for exactly `fds.len()` ints follows the header.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((fds.len() * FD_BYTES) as u32) as _;
            let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
            for (i, fd) in fds.iter().enumerate() {
                data.add(i).write_unaligned(fd.as_raw_fd());
            }
        }
    }
    loop {
        // SAFETY: `msg` points at `iov` (over `data`) and `control`, all alive for the call;
        // the descriptors are borrowed, so open.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return if n as usize == data.len() {
                Ok(())
            } else {
                Err(io::Error::other("a handover message was cut short"))
            };
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Receives one message into `buf`: its length (0 at end of stream) and the descriptors it
/// carried, owned (closed on drop).
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = control_space(MAX_FDS);
    // SAFETY: as in `send`.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = (control.len() * 8) as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (over `buf`, writable) and `control`, alive for the call.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled `control` up to msg_controllen with well-formed headers;
    // CMSG_FIRSTHDR/CMSG_NXTHDR walk them within that length and return null at the end; an
    // SCM_RIGHTS payload holds (cmsg_len - CMSG_LEN(0)) / 4 descriptors, now ours to own.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let bytes = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<libc::c_int>();
                for i in 0..bytes / FD_BYTES {
                    let fd: RawFd = data.add(i).read_unaligned();
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
        // The descriptors that did arrive close with `fds`.
        return Err(io::Error::other("a handover message was truncated"));
    }
    Ok((n, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;

    fn pair() -> (socket2::Socket, socket2::Socket) {
        socket2::Socket::pair(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None).unwrap()
    }

    /// A descriptor sent across is the same open file: what is written to a pipe through the
    /// received copy comes out of the original's other end.
    #[test]
    fn descriptors_cross_with_their_message() {
        let (a, b) = pair();
        let (mut reader, writer) = std::io::pipe().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send(a.as_fd(), b"two", &[writer.as_fd(), listener.as_fd()]).unwrap();
        send(a.as_fd(), b"none", &[]).unwrap();
        drop(writer);
        let mut buf = [0u8; 16];
        let (n, fds) = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"two"[..], 2));
        let mut fds = fds.into_iter();
        let mut w = std::fs::File::from(fds.next().unwrap());
        w.write_all(b"through the copy").unwrap();
        drop(w);
        let mut got = String::new();
        reader.read_to_string(&mut got).unwrap();
        assert_eq!(got, "through the copy");
        let l = std::net::TcpListener::from(fds.next().unwrap());
        assert_eq!(l.local_addr().unwrap(), listener.local_addr().unwrap());
        let (n, fds) = recv(b.as_fd(), &mut buf).unwrap();
        assert_eq!((&buf[..n], fds.len()), (&b"none"[..], 0));
        drop(a);
        assert_eq!(recv(b.as_fd(), &mut buf).unwrap().0, 0, "end of stream");
    }

    #[test]
    fn too_many_descriptors_are_refused_before_sending() {
        let (a, _b) = pair();
        let fds = vec![a.as_fd(); MAX_FDS + 1];
        assert!(send(a.as_fd(), b"x", &fds).is_err());
    }
}
