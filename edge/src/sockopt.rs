//! Socket options and the few raw socket calls the read path needs, in one room.
//!
//! Every accepted socket gets TCP_NODELAY (a trading message must not wait for Nagle) and
//! bounded kernel buffers, so a connection's kernel memory has a ceiling. The non-blocking
//! `recv` is the second half of the readiness-first read: it never waits and never owns a
//! buffer beyond the call, so a deadline can never cut it off halfway. The raw calls behind
//! them live in `wssedge_sys::sock`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use socket2::SockRef;

pub use wssedge_sys::fd::borrow_fd;
pub use wssedge_sys::sock::{
    accept_queue_len, poll_readable, recv_append, recv_nonblocking, send_nonblocking,
    send_vectored_nonblocking, unsent_bytes, Recv,
};

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

/// SO_LINGER 0: closing the socket then resets it (RST) and frees its queued data at once,
/// instead of keeping it for a peer that does not read.
pub fn set_linger_zero(fd: BorrowedFd<'_>) {
    let _ = SockRef::from(&fd).set_linger(Some(std::time::Duration::ZERO));
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
    use std::net::{TcpListener, TcpStream};

    // The re-exported reads, sends and queue depths are tested where they live (wssedge-sys).
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
}
