//! The kernel TLS system calls as the TLS room uses them: crypto infos by their layout, and
//! records typed by the wire's content types. The calls themselves live in
//! `wssedge_sys::ktls`.

use std::io;
use std::os::fd::BorrowedFd;

pub use wssedge_sys::ktls::{set_ulp_tls, Direction};

use super::crypto_info::CryptoInfo;

/// Hands one direction's keys and sequence number to the kernel.
pub fn set_crypto(fd: BorrowedFd<'_>, dir: Direction, info: &CryptoInfo) -> io::Result<()> {
    wssedge_sys::ktls::set_crypto_info(fd, dir, info.as_bytes())
}

/// Reads one direction's crypto info back from the kernel: the same layout `set_crypto` takes,
/// with `rec_seq` advanced to the next record's sequence number — the kernel's exact count of
/// records under the current key. Returns the bytes written into `buf`.
pub fn get_crypto(fd: BorrowedFd<'_>, dir: Direction, buf: &mut [u8]) -> io::Result<usize> {
    wssedge_sys::ktls::get_crypto_info(fd, dir, buf)
}

/// One record taken with its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The TLS content type (21 alert, 22 handshake, 23 application data).
    pub content_type: u8,
    /// Bytes written to the front of the buffer.
    pub len: usize,
}

/// Reads the next record with its content type, without blocking. Used after a plain read
/// failed with EIO, which is how a kTLS socket says "the next record is not application data".
/// `Ok(None)`: nothing to read right now.
pub fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Record>> {
    Ok(wssedge_sys::ktls::recv_record(fd, buf)?.map(|r| Record {
        // Without a record-type message the bytes are application data.
        content_type: r
            .content_type
            .unwrap_or(crate::tls::wire::CONTENT_APPLICATION_DATA),
        len: r.len,
    }))
}

/// Sends `data` as one record of `content_type` (an alert, a KeyUpdate), without blocking.
/// Returns the bytes sent; a record that does not fit right now is not sent (`WouldBlock`).
pub use wssedge_sys::ktls::send_record;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    #[test]
    fn without_the_tls_ulp_the_failure_is_reported_not_hidden() {
        // On a kernel with kTLS this succeeds; without it (these CI hosts) it must be an error
        // naming the cause, never a panic or a silent success.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, _) = l.accept().unwrap();
        match set_ulp_tls(c.as_fd()) {
            Ok(()) => assert!(std::path::Path::new("/proc/net/tls_stat").exists()),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }

    #[test]
    fn records_on_a_plain_socket_are_application_data() {
        // Without the tls ULP there is no record-type message: the bytes are data (type 23),
        // and an empty socket is WouldBlock, not an error.
        use std::io::Write;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(recv_record(s.as_fd(), &mut buf).unwrap(), None);
        c.write_all(b"abc").unwrap();
        let mut got = None;
        for _ in 0..200 {
            got = recv_record(s.as_fd(), &mut buf).unwrap();
            if got.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(
            got,
            Some(Record {
                content_type: 23,
                len: 3
            })
        );
    }
}
