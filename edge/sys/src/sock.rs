//! The raw socket calls of the read and write paths and of the listeners: non-blocking
//! recv/send, the depth of a send buffer and of an accept queue, poll, and the options socket2
//! has no setter for.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::RecvFlags;
use socket2::SockRef;

/// What a non-blocking receive found.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// This many bytes were written to the front of the buffer.
    Data(usize),
    /// Nothing to read right now: wait for readiness again.
    WouldBlock,
    /// The peer closed its sending side.
    Eof,
}

/// The one `recv(MSG_DONTWAIT)` loop (EINTR retried) over an initialised or spare buffer.
fn recv_dontwait(
    fd: BorrowedFd<'_>,
    mut recv: impl FnMut(BorrowedFd<'_>) -> rustix::io::Result<usize>,
) -> io::Result<Recv> {
    loop {
        match recv(fd) {
            Ok(0) => return Ok(Recv::Eof),
            Ok(n) => return Ok(Recv::Data(n)),
            Err(Errno::AGAIN) => return Ok(Recv::WouldBlock),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads whatever the socket holds into `buf` without blocking (MSG_DONTWAIT).
pub fn recv_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Recv> {
    if buf.is_empty() {
        return Ok(Recv::WouldBlock);
    }
    recv_dontwait(fd, |fd| {
        rustix::net::recv(fd, &mut *buf, RecvFlags::DONTWAIT).map(|(_, n)| n)
    })
}

/// Appends what the socket holds (at most `max` bytes) to `dst` without blocking, reading
/// straight into its spare capacity: no zero-filling of space the kernel is about to write.
pub fn recv_append(fd: BorrowedFd<'_>, dst: &mut bytes::BytesMut, max: usize) -> io::Result<Recv> {
    if max == 0 {
        return Ok(Recv::WouldBlock);
    }
    dst.reserve(max);
    let spare: &mut [MaybeUninit<u8>] = &mut dst.spare_capacity_mut()[..max];
    let got = recv_dontwait(fd, |fd| {
        rustix::net::recv(fd, &mut *spare, RecvFlags::DONTWAIT).map(|(_, n)| n)
    })?;
    if let Recv::Data(n) = got {
        // SAFETY: recv initialised exactly `n <= max` bytes at the start of the spare capacity
        // (rustix returns the initialised length, never more than the slice it was given).
        unsafe { dst.set_len(dst.len() + n) };
    }
    Ok(got)
}

/// Writes what the socket takes of `buf` without blocking (MSG_DONTWAIT, and MSG_NOSIGNAL so a
/// peer that reset gives EPIPE, not SIGPIPE). `Ok(None)`: the socket is full, wait for
/// writability.
pub fn send_nonblocking(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<Option<usize>> {
    if buf.is_empty() {
        return Ok(Some(0));
    }
    let sock = SockRef::from(&fd);
    loop {
        match sock.send_with_flags(buf, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// [`send_nonblocking`] for several slices in one sendmsg (a gathered write: the kernel copies
/// each slice once, no user-space staging).
pub fn send_vectored_nonblocking(
    fd: BorrowedFd<'_>,
    bufs: &[io::IoSlice<'_>],
) -> io::Result<Option<usize>> {
    if bufs.iter().all(|b| b.is_empty()) {
        return Ok(Some(0));
    }
    let sock = SockRef::from(&fd);
    loop {
        match sock.send_vectored_with_flags(bufs, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) {
            Ok(n) => return Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Bytes queued in the socket's send buffer, not yet acknowledged by the peer (SIOCOUTQ).
pub fn unsent_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ) writes one c_int through the pointer, which points at `n`,
    // alive for the call; `fd` is a borrowed, open descriptor.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n.max(0) as usize)
}

/// Connections waiting in a listening socket's accept queue (TCP_INFO: for a listener the
/// kernel reports its accept queue length in `tcpi_unacked`).
pub fn accept_queue_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    accept_queue_len_raw(fd.as_raw_fd())
}

/// [`accept_queue_len`] of a listener known by number (a runtime's listener exposes only its
/// raw descriptor). A number that is not an open socket is an error (EBADF, ENOTSOCK).
pub fn accept_queue_len_raw(fd: RawFd) -> io::Result<usize> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is alive and that large;
    // the descriptor is only a number to the kernel (a closed one fails with EBADF).
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked as usize)
}

/// Shuts a listener down by number without closing it: its pending accepts fail and what
/// reached its queue is reset, while the descriptor stays open for its owner to close. A number
/// that is not an open socket is an error (EBADF, ENOTSOCK).
pub fn shutdown_listener_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: shutdown reads no memory of ours; the descriptor is only a number to the kernel.
    let rc = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Waits up to `timeout` for `fd` to become readable (a listener: a connection to accept);
/// false on timeout or when a signal interrupted the wait.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
        tv_sec: i64::MAX,
        tv_nsec: 0,
    });
    match poll(&mut fds, Some(&timeout)) {
        Ok(n) => Ok(n > 0),
        Err(Errno::INTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// TCP_DEFER_ACCEPT: a listener wakes its accept only when data arrived (or after `secs`).
pub fn set_defer_accept(fd: BorrowedFd<'_>, secs: u32) -> io::Result<()> {
    let secs = libc::c_int::try_from(secs).unwrap_or(libc::c_int::MAX);
    // SAFETY: the option value points at a live c_int and the length is its exact size; `fd` is
    // a borrowed, open descriptor.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    use crate::test_sockets::tcp_pair as pair;

    /// Polls `f` until it stops saying WouldBlock (the loopback delivers within microseconds;
    /// the bound only keeps a broken kernel from hanging the test).
    fn until_ready(mut f: impl FnMut() -> Recv) -> Recv {
        for _ in 0..400 {
            let got = f();
            if got != Recv::WouldBlock {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Recv::WouldBlock
    }

    #[test]
    fn recv_never_blocks_and_sees_data_then_eof() {
        let (mut c, s) = pair();
        let mut buf = [0u8; 16];
        assert_eq!(
            recv_nonblocking(s.as_fd(), &mut buf).unwrap(),
            Recv::WouldBlock
        );
        assert_eq!(
            recv_nonblocking(s.as_fd(), &mut []).unwrap(),
            Recv::WouldBlock
        );
        c.write_all(b"hello").unwrap();
        let got = until_ready(|| recv_nonblocking(s.as_fd(), &mut buf).unwrap());
        assert_eq!(got, Recv::Data(5));
        assert_eq!(&buf[..5], b"hello");
        drop(c);
        let eof = until_ready(|| recv_nonblocking(s.as_fd(), &mut buf).unwrap());
        assert_eq!(eof, Recv::Eof);
    }

    #[test]
    fn a_vectored_send_puts_the_slices_on_the_wire_in_order() {
        let (mut c, s) = pair();
        let parts = [&b"\x81\x05"[..], b"hel", b"", b"lo"];
        let slices: Vec<io::IoSlice<'_>> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
        assert_eq!(
            send_vectored_nonblocking(s.as_fd(), &slices).unwrap(),
            Some(7)
        );
        assert_eq!(send_vectored_nonblocking(s.as_fd(), &[]).unwrap(), Some(0));
        let mut got = [0u8; 7];
        std::io::Read::read_exact(&mut c, &mut got).unwrap();
        assert_eq!(&got, b"\x81\x05hello");
    }

    #[test]
    fn recv_append_adds_only_what_arrived() {
        let (mut c, s) = pair();
        let mut dst = bytes::BytesMut::from(&b"kept:"[..]);
        assert_eq!(
            recv_append(s.as_fd(), &mut dst, 64).unwrap(),
            Recv::WouldBlock
        );
        assert_eq!(
            recv_append(s.as_fd(), &mut dst, 0).unwrap(),
            Recv::WouldBlock
        );
        c.write_all(b"0123456789").unwrap();
        let got = until_ready(|| recv_append(s.as_fd(), &mut dst, 4).unwrap());
        assert_eq!(got, Recv::Data(4), "never more than max");
        assert_eq!(&dst[..], b"kept:0123");
        assert_eq!(recv_append(s.as_fd(), &mut dst, 64).unwrap(), Recv::Data(6));
        assert_eq!(&dst[..], b"kept:0123456789");
        drop(c);
        let eof = until_ready(|| recv_append(s.as_fd(), &mut dst, 64).unwrap());
        assert_eq!(eof, Recv::Eof);
        assert_eq!(&dst[..], b"kept:0123456789");
    }

    #[test]
    fn send_stops_at_a_full_socket_and_counts_what_is_unsent() {
        let (_c, s) = pair();
        let sock = SockRef::from(&s);
        sock.set_send_buffer_size(16 * 1024).unwrap();
        assert_eq!(send_nonblocking(s.as_fd(), &[]).unwrap(), Some(0));
        assert_eq!(unsent_bytes(s.as_fd()).unwrap(), 0);
        let chunk = vec![7u8; 64 * 1024];
        let mut full = false;
        for _ in 0..1000 {
            if send_nonblocking(s.as_fd(), &chunk).unwrap().is_none() {
                full = true;
                break;
            }
        }
        assert!(full, "a peer that never reads must fill the socket");
        assert!(unsent_bytes(s.as_fd()).unwrap() > 0);
    }

    #[test]
    fn send_to_a_reset_peer_is_an_error_not_a_signal() {
        let (c, s) = pair();
        SockRef::from(&c).set_linger(Some(Duration::ZERO)).unwrap();
        drop(c);
        let mut failed = false;
        for _ in 0..100 {
            match send_nonblocking(s.as_fd(), b"x") {
                Err(_) => {
                    failed = true;
                    break;
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        assert!(
            failed,
            "EPIPE/ECONNRESET, and the test process is still alive"
        );
    }

    #[test]
    fn accept_queue_length_counts_waiting_connections() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(accept_queue_len(l.as_fd()).unwrap(), 0);
        let addr = l.local_addr().unwrap();
        let _c: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while accept_queue_len_raw(l.as_raw_fd()).unwrap() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "queue never reached 3"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = l.accept().unwrap();
        assert_eq!(accept_queue_len(l.as_fd()).unwrap(), 2);
    }

    #[test]
    fn a_number_that_is_no_socket_is_an_error() {
        let file = tempfile::tempfile().unwrap();
        assert!(accept_queue_len_raw(file.as_raw_fd()).is_err());
        assert!(shutdown_listener_raw(file.as_raw_fd()).is_err());
        assert!(shutdown_listener_raw(-1).is_err());
    }

    #[test]
    fn a_shut_listener_stays_open_and_accepts_nothing() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        shutdown_listener_raw(l.as_raw_fd()).unwrap();
        assert!(l.local_addr().is_ok(), "still an open descriptor");
        assert!(l.accept().is_err());
    }

    #[test]
    fn poll_sees_a_waiting_connection_and_times_out_without_one() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!poll_readable(l.as_fd(), Duration::from_millis(1)).unwrap());
        let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        assert!(poll_readable(l.as_fd(), Duration::from_secs(5)).unwrap());
    }

    #[test]
    fn defer_accept_reads_back() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        set_defer_accept(l.as_fd(), 3).unwrap();
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into the live c_int `v`.
        let rc = unsafe {
            libc::getsockopt(
                l.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0);
        assert!(
            v > 0,
            "the kernel rounds to retransmits but keeps it on: {v}"
        );
    }
}
