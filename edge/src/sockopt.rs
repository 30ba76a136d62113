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
    if buf.is_empty() {
        return Ok(Recv::WouldBlock);
    }
    loop {
        // SAFETY: `buf` is a valid, writable slice of `buf.len()` bytes for the whole call, and
        // `fd` is a borrowed, open descriptor; recv writes at most `len` bytes into it.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
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

/// Shuts both directions down: a pending io_uring write on this socket then completes with an
/// error, which is how an expired write deadline ends a connection without cancelling anything.
pub fn shutdown_both(fd: BorrowedFd<'_>) {
    let _ = SockRef::from(&fd).shutdown(std::net::Shutdown::Both);
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
}
