//! Socket options and the few raw socket calls the read path needs, in one room.
//!
//! Every accepted socket gets TCP_NODELAY (a trading message must not wait for Nagle) and
//! bounded kernel buffers, so a connection's kernel memory has a ceiling. The non-blocking
//! `recv` is the second half of the readiness-first read: it never waits and never owns a
//! buffer beyond the call, so a deadline can never cut it off halfway.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use socket2::SockRef;

/// Borrows the descriptor of a socket owned by `owner` (monoio's streams expose only
/// `AsRawFd`).
pub fn borrow_fd<T: AsRawFd>(owner: &T) -> BorrowedFd<'_> {
    let fd: RawFd = owner.as_raw_fd();
    // SAFETY: `owner` owns the open descriptor and is borrowed for the returned lifetime, so the
    // descriptor cannot be closed while the BorrowedFd exists.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// The options every accepted socket gets.
#[derive(Debug, Clone, Copy)]
pub struct AcceptedSocketOptions {
    pub send_buffer_bytes: usize,
    pub recv_buffer_bytes: usize,
}

/// Applies [`AcceptedSocketOptions`] and TCP_NODELAY to an accepted socket.
pub fn tune_accepted(fd: BorrowedFd<'_>, opts: &AcceptedSocketOptions) -> io::Result<()> {
    let sock = SockRef::from(&fd);
    sock.set_tcp_nodelay(true)?;
    sock.set_send_buffer_size(opts.send_buffer_bytes)?;
    sock.set_recv_buffer_size(opts.recv_buffer_bytes)?;
    Ok(())
}

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

/// Reads whatever the socket holds into `buf` without blocking (MSG_DONTWAIT).
pub fn recv_nonblocking(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Recv> {
    // SAFETY: `buf` is a valid, writable (and initialised) slice of `buf.len()` bytes.
    unsafe { recv_into(fd, buf.as_mut_ptr(), buf.len()) }
}

/// Appends what the socket holds (at most `max` bytes) to `dst` without blocking, reading
/// straight into its spare capacity: no zero-filling of space the kernel is about to write.
pub fn recv_append(fd: BorrowedFd<'_>, dst: &mut bytes::BytesMut, max: usize) -> io::Result<Recv> {
    dst.reserve(max);
    let spare = &mut dst.spare_capacity_mut()[..max];
    // SAFETY: `spare` is `max` bytes of allocated capacity owned by `dst`, valid for writes
    // for the whole call (recv never reads them).
    let got = unsafe { recv_into(fd, spare.as_mut_ptr().cast(), max) }?;
    if let Recv::Data(n) = got {
        // SAFETY: the kernel initialised exactly `n <= max` bytes at the start of the spare
        // capacity.
        unsafe { dst.set_len(dst.len() + n) };
    }
    Ok(got)
}

/// The one `recv(MSG_DONTWAIT)` loop (EINTR retried).
///
/// # Safety
/// `ptr` must be valid for writes of `len` bytes for the whole call.
unsafe fn recv_into(fd: BorrowedFd<'_>, ptr: *mut u8, len: usize) -> io::Result<Recv> {
    if len == 0 {
        return Ok(Recv::WouldBlock);
    }
    loop {
        // SAFETY: the caller guarantees `ptr` is writable for `len` bytes; `fd` is a borrowed,
        // open descriptor; recv writes at most `len` bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), ptr.cast(), len, libc::MSG_DONTWAIT) };
        if n > 0 {
            return Ok(Recv::Data(n as usize));
        }
        if n == 0 {
            return Ok(Recv::Eof);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(Recv::WouldBlock),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

/// Writes what the socket takes of `buf` without blocking (MSG_DONTWAIT, and MSG_NOSIGNAL so a
/// peer that reset gives EPIPE, not SIGPIPE). `Ok(None)`: the socket is full, wait for
/// writability.
pub fn send_nonblocking(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<Option<usize>> {
    if buf.is_empty() {
        return Ok(Some(0));
    }
    loop {
        // SAFETY: `buf` is a valid, readable slice of `buf.len()` bytes for the whole call, and
        // `fd` is a borrowed, open descriptor; send reads at most `len` bytes from it.
        let n = unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(err),
        }
    }
}

/// SO_LINGER 0: closing the socket then resets it (RST) and frees its queued data at once,
/// instead of keeping it for a peer that does not read.
pub fn set_linger_zero(fd: BorrowedFd<'_>) {
    let _ = SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
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

/// Shuts both directions down: a pending io_uring write on this socket then completes with an
/// error, which is how an expired write deadline ends a connection without cancelling anything.
pub fn shutdown_both(fd: BorrowedFd<'_>) {
    let _ = SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
}

/// Connections waiting in a listening socket's accept queue (TCP_INFO: for a listener the
/// kernel reports its accept queue length in `tcpi_unacked`).
pub fn accept_queue_len(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: tcp_info is plain old data; all-zero is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is alive and that large;
    // `fd` is a borrowed, open descriptor.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
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

/// Waits up to `timeout` for `fd` to become readable (a listener: a connection to accept);
/// false on timeout. For the blocking threads off the cores (admin) that must notice a stop.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: std::time::Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, alive for the call; `fd` is a borrowed, open descriptor.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        n if n > 0 => Ok(true),
        0 => Ok(false),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// The kernel's view of a socket's buffer sizes (it reports double what was asked, for its
/// own bookkeeping).
pub fn buffer_sizes(fd: impl AsFd) -> io::Result<(usize, usize)> {
    let fd = fd.as_fd();
    let sock = SockRef::from(&fd);
    Ok((sock.send_buffer_size()?, sock.recv_buffer_size()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }

    #[test]
    fn accept_queue_length_counts_waiting_connections() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(accept_queue_len(l.as_fd()).unwrap(), 0);
        let addr = l.local_addr().unwrap();
        let _c: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while accept_queue_len(l.as_fd()).unwrap() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "queue never reached 3"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _ = l.accept().unwrap();
        assert_eq!(accept_queue_len(l.as_fd()).unwrap(), 2);
    }

    #[test]
    fn accepted_socket_options_read_back() {
        let (_c, s) = pair();
        let opts = AcceptedSocketOptions {
            send_buffer_bytes: 64 * 1024,
            recv_buffer_bytes: 32 * 1024,
        };
        tune_accepted(s.as_fd(), &opts).unwrap();
        assert!(s.nodelay().unwrap(), "TCP_NODELAY must be on");
        let (snd, rcv) = buffer_sizes(&s).unwrap();
        // Linux doubles the requested value; it must be bounded near what we asked.
        assert!(
            (64 * 1024..=2 * 64 * 1024).contains(&snd),
            "SO_SNDBUF {snd}"
        );
        assert!(
            (32 * 1024..=2 * 32 * 1024).contains(&rcv),
            "SO_RCVBUF {rcv}"
        );
    }

    #[test]
    fn recv_never_blocks_and_sees_eof() {
        let (mut c, s) = pair();
        let mut buf = [0u8; 16];
        assert_eq!(
            recv_nonblocking(s.as_fd(), &mut buf).unwrap(),
            Recv::WouldBlock
        );
        c.write_all(b"hello").unwrap();
        let mut got = Recv::WouldBlock;
        for _ in 0..100 {
            got = recv_nonblocking(s.as_fd(), &mut buf).unwrap();
            if got != Recv::WouldBlock {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, Recv::Data(5));
        assert_eq!(&buf[..5], b"hello");
        drop(c);
        let mut eof = Recv::WouldBlock;
        for _ in 0..100 {
            eof = recv_nonblocking(s.as_fd(), &mut buf).unwrap();
            if eof != Recv::WouldBlock {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(eof, Recv::Eof);
    }

    /// A peer that does not read fills the socket: send says so instead of blocking, the
    /// unsent count covers what is queued, and SO_LINGER 0 makes the close a reset.
    #[test]
    fn send_stops_at_a_full_socket_and_linger_zero_resets() {
        let (c, s) = pair();
        let opts = AcceptedSocketOptions {
            send_buffer_bytes: 16 * 1024,
            recv_buffer_bytes: 16 * 1024,
        };
        tune_accepted(s.as_fd(), &opts).unwrap();
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0usize;
        let mut full = false;
        for _ in 0..1000 {
            match send_nonblocking(s.as_fd(), &chunk).unwrap() {
                Some(n) => sent += n,
                None => {
                    full = true;
                    break;
                }
            }
        }
        assert!(full, "a peer that never reads must fill the socket");
        assert!(sent < 4 << 20, "bounded buffers: {sent} bytes went in");
        assert!(unsent_bytes(s.as_fd()).unwrap() > 0);
        set_linger_zero(s.as_fd());
        drop(s);
        let mut c = c;
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 20];
        let mut reset = false;
        for _ in 0..1000 {
            match std::io::Read::read(&mut c, &mut buf) {
                Ok(0) => break,
                Ok(_) => continue,
                Err(e) => {
                    reset = e.kind() == std::io::ErrorKind::ConnectionReset;
                    break;
                }
            }
        }
        assert!(reset, "closing with SO_LINGER 0 must reset the connection");
    }

    #[test]
    fn recv_append_adds_only_what_arrived() {
        let (mut c, s) = pair();
        let mut dst = bytes::BytesMut::from(&b"kept:"[..]);
        assert_eq!(
            recv_append(s.as_fd(), &mut dst, 64).unwrap(),
            Recv::WouldBlock
        );
        c.write_all(b"0123456789").unwrap();
        let mut got = Recv::WouldBlock;
        for _ in 0..100 {
            got = recv_append(s.as_fd(), &mut dst, 4).unwrap();
            if got != Recv::WouldBlock {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(got, Recv::Data(4), "never more than max");
        assert_eq!(&dst[..], b"kept:0123");
        assert_eq!(recv_append(s.as_fd(), &mut dst, 64).unwrap(), Recv::Data(6));
        assert_eq!(&dst[..], b"kept:0123456789");
        drop(c);
        let mut eof = Recv::WouldBlock;
        for _ in 0..100 {
            eof = recv_append(s.as_fd(), &mut dst, 64).unwrap();
            if eof != Recv::WouldBlock {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(eof, Recv::Eof);
    }
}
