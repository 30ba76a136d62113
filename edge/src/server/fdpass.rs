//! Passing descriptors to another process over a Unix socket (SCM_RIGHTS): the restart hands
//! its listening sockets, their instance locks and the admin listener to its successor. The
//! system calls live in `wssedge_sys::fd`.
//!
//! The socket is a `SOCK_SEQPACKET` pair, so each message keeps its boundaries and carries its
//! own descriptors. Received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`).

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

/// Descriptors in one message (the kernel allows 253; the handover sends more messages).
pub(crate) const MAX_FDS: usize = wssedge_sys::fd::MAX_FDS;

/// Sends `data` (one message) with `fds` attached.
pub(crate) fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    wssedge_sys::fd::pass_fds(sock, data, fds)
}

/// Receives one message into `buf`: its length (0 at end of stream) and the descriptors it
/// carried, owned (closed on drop).
pub(crate) fn recv(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
    wssedge_sys::fd::recv_fds(sock, buf)
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
