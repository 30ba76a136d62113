//! The kernel TLS system calls: install the `tls` upper layer protocol, hand it (and read back)
//! one direction's crypto info, and move the rare non-data record (alerts, KeyUpdate) with
//! `recvmsg`/`sendmsg` and a record-type control message — rustix and monoio have no safe
//! `recvmsg`/`sendmsg` with SOL_TLS control data, and these records are rare enough for a
//! non-blocking syscall.
//!
//! The crypto info is passed as bytes: its layout (`tls12_crypto_info_*`) belongs to the TLS
//! room; the kernel validates whatever it is given.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd};

/// `SOL_TLS` / `TLS_TX` / `TLS_RX` / `TLS_SET_RECORD_TYPE` / `TLS_GET_RECORD_TYPE` of
/// `<linux/tls.h>`, and `TCP_ULP` of `<linux/tcp.h>`.
const SOL_TLS: libc::c_int = 282;
const TLS_TX: libc::c_int = 1;
const TLS_RX: libc::c_int = 2;
const TLS_SET_RECORD_TYPE: libc::c_int = 1;
const TLS_GET_RECORD_TYPE: libc::c_int = 2;
const TCP_ULP: libc::c_int = 31;

/// Which direction's keys a crypto info is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Tx,
    Rx,
}

impl Direction {
    fn optname(self) -> libc::c_int {
        match self {
            Direction::Tx => TLS_TX,
            Direction::Rx => TLS_RX,
        }
    }
}

/// Installs the kernel's `tls` upper layer protocol on a connected TCP socket. Until a
/// direction gets keys the socket still carries plain bytes, so a failure here leaves the
/// connection usable in userspace.
pub fn set_ulp_tls(fd: BorrowedFd<'_>) -> io::Result<()> {
    const NAME: &[u8] = b"tls";
    // SAFETY: the option value is a valid buffer of `NAME.len()` bytes for the whole call and
    // `fd` is an open descriptor borrowed for it.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_TCP,
            TCP_ULP,
            NAME.as_ptr().cast(),
            NAME.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Hands one direction's keys and sequence number to the kernel: `info` is the bytes of a C
/// `tls12_crypto_info_*` struct. The kernel copies it and keeps no pointer.
pub fn set_crypto_info(fd: BorrowedFd<'_>, dir: Direction, info: &[u8]) -> io::Result<()> {
    // SAFETY: `info` is readable for `info.len()` bytes for the whole call and the kernel reads
    // at most that many (it refuses a length that does not match a layout it knows).
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_TLS,
            dir.optname(),
            info.as_ptr().cast(),
            info.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads one direction's crypto info back from the kernel: the same layout
/// [`set_crypto_info`] takes, with `rec_seq` advanced to the next record's sequence number.
/// Returns the bytes written into `buf` (the key is among them: wipe `buf` after use).
pub fn get_crypto_info(fd: BorrowedFd<'_>, dir: Direction, buf: &mut [u8]) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is writable for `len` bytes and `len` is a valid in/out length for the whole
    // call; the kernel writes at most `len` bytes and stores the written length back.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_TLS,
            dir.optname(),
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(len as usize)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One record taken with its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// The TLS content type the kernel reported; `None` when it sent no record-type message,
    /// which means application data.
    pub content_type: Option<u8>,
    /// Bytes written to the front of the buffer.
    pub len: usize,
}

/// Space for one `cmsghdr` carrying one byte, aligned as `cmsghdr` requires.
#[repr(C)]
struct OneByteCmsg {
    _align: [libc::cmsghdr; 0],
    buf: [u8; 64],
}

impl OneByteCmsg {
    fn new() -> Self {
        OneByteCmsg {
            _align: [],
            buf: [0; 64],
        }
    }
}

/// Reads the next record with its content type, without blocking. Used after a plain read
/// failed with EIO, which is how a kTLS socket says "the next record is not application data".
/// `Ok(None)`: nothing to read right now.
pub fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Record>> {
    let mut cmsg = OneByteCmsg::new();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr (null pointers, zero lengths) is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.buf.as_mut_ptr().cast();
    msg.msg_controllen = cmsg.buf.len() as _;
    let n = loop {
        // SAFETY: `msg` points at `iov` (which covers `buf`) and at the control buffer `cmsg`,
        // all alive and exclusively borrowed for the whole call.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(err),
        }
    };
    // SAFETY: the kernel filled `msg.msg_control` with `msg_controllen` bytes of well-formed
    // control messages; CMSG_FIRSTHDR/CMSG_NXTHDR stay inside them and CMSG_DATA points at at
    // least one byte of a SOL_TLS/TLS_GET_RECORD_TYPE message (its cmsg_len says so).
    let content_type = unsafe {
        let mut found = None;
        let mut hdr = libc::CMSG_FIRSTHDR(&msg);
        while !hdr.is_null() {
            if (*hdr).cmsg_level == SOL_TLS
                && (*hdr).cmsg_type == TLS_GET_RECORD_TYPE
                && (*hdr).cmsg_len as usize >= libc::CMSG_LEN(1) as usize
            {
                found = Some(*libc::CMSG_DATA(hdr));
            }
            hdr = libc::CMSG_NXTHDR(&msg, hdr);
        }
        found
    };
    Ok(Some(Record {
        content_type,
        len: n,
    }))
}

/// Sends `data` as one record of `content_type` (an alert, a KeyUpdate), without blocking.
/// Returns the bytes sent; a record that does not fit right now is not sent (`WouldBlock`).
pub fn send_record(fd: BorrowedFd<'_>, content_type: u8, data: &[u8]) -> io::Result<usize> {
    let mut cmsg = OneByteCmsg::new();
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr (null pointers, zero lengths) is a valid empty message header.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.buf.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(size_of::<u8>() as u32) } as usize;
    debug_assert!(space <= cmsg.buf.len());
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer holds `space` zeroed, aligned bytes, enough for one cmsghdr
    // with one byte of data, so CMSG_FIRSTHDR is non-null and CMSG_DATA is inside the buffer.
    // sendmsg only reads `data` (the iovec's mutable pointer is an API artefact).
    let n = unsafe {
        let hdr = libc::CMSG_FIRSTHDR(&msg);
        (*hdr).cmsg_level = SOL_TLS;
        (*hdr).cmsg_type = TLS_SET_RECORD_TYPE;
        (*hdr).cmsg_len = libc::CMSG_LEN(size_of::<u8>() as u32) as _;
        *libc::CMSG_DATA(hdr) = content_type;
        loop {
            let n = libc::sendmsg(
                fd.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
            if n >= 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                break n;
            }
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsFd;
    use std::time::Duration;

    use crate::test_sockets::tcp_pair as pair;

    fn kernel_has_tls() -> bool {
        std::path::Path::new("/proc/net/tls_stat").exists()
    }

    #[test]
    fn without_the_tls_ulp_the_failure_is_reported_not_hidden() {
        // On a kernel with kTLS this succeeds; without it (these CI hosts) it must be an error
        // naming the cause, never a panic or a silent success.
        let (c, _s) = pair();
        match set_ulp_tls(c.as_fd()) {
            Ok(()) => assert!(kernel_has_tls()),
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }

    #[test]
    fn crypto_info_on_a_socket_without_the_ulp_is_refused() {
        // SOL_TLS options exist only under the tls ULP: both directions are an error here, and
        // a read-back writes nothing into the buffer.
        let (c, _s) = pair();
        let info = [0u8; 40];
        assert!(set_crypto_info(c.as_fd(), Direction::Tx, &info).is_err());
        assert!(set_crypto_info(c.as_fd(), Direction::Rx, &info).is_err());
        let mut back = [0xAAu8; 64];
        assert!(get_crypto_info(c.as_fd(), Direction::Tx, &mut back).is_err());
        assert_eq!(back, [0xAA; 64]);
    }

    #[test]
    fn records_on_a_plain_socket_carry_no_type() {
        // Without the tls ULP there is no record-type message: the bytes are data, and an empty
        // socket is WouldBlock, not an error.
        let (mut c, s) = pair();
        let mut buf = [0u8; 16];
        assert_eq!(recv_record(s.as_fd(), &mut buf).unwrap(), None);
        c.write_all(b"abc").unwrap();
        let mut got = None;
        for _ in 0..400 {
            got = recv_record(s.as_fd(), &mut buf).unwrap();
            if got.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            got,
            Some(Record {
                content_type: None,
                len: 3
            })
        );
        assert_eq!(&buf[..3], b"abc");
    }

    #[test]
    fn a_typed_record_on_a_plain_socket_sends_its_bytes_or_is_refused() {
        // A plain TCP socket ignores (or refuses) the SOL_TLS control message; either way the
        // call neither panics nor sends more than `data`.
        let (mut c, s) = pair();
        match send_record(s.as_fd(), 21, &[1, 0]) {
            Ok(n) => {
                assert_eq!(n, 2);
                let mut got = [0u8; 2];
                c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                c.read_exact(&mut got).unwrap();
                assert_eq!(got, [1, 0]);
            }
            Err(e) => assert!(e.raw_os_error().is_some(), "{e}"),
        }
    }
}
