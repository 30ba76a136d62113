//! The kernel TLS system calls, in one small `unsafe` room: install the `tls` upper layer
//! protocol, hand it one direction's keys, and move the rare non-data record (alerts, KeyUpdate)
//! with `recvmsg`/`sendmsg` and a record-type control message — monoio has no public `recvmsg`
//! with control data, and these records are rare enough for a non-blocking syscall.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd};

use super::crypto_info::CryptoInfo;

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

/// Hands one direction's keys and sequence number to the kernel.
pub fn set_crypto(fd: BorrowedFd<'_>, dir: Direction, info: &CryptoInfo) -> io::Result<()> {
    let bytes = info.as_bytes();
    let name = match dir {
        Direction::Tx => TLS_TX,
        Direction::Rx => TLS_RX,
    };
    // SAFETY: `bytes` is exactly the C `tls12_crypto_info_*` struct (see crypto_info), valid
    // for the whole call; the kernel copies it and keeps no pointer.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_TLS,
            name,
            bytes.as_ptr().cast(),
            bytes.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads one direction's crypto info back from the kernel: the same layout `set_crypto` takes,
/// with `rec_seq` advanced to the next record's sequence number — the kernel's exact count of
/// records under the current key. Returns the bytes written into `buf`.
pub fn get_crypto(fd: BorrowedFd<'_>, dir: Direction, buf: &mut [u8]) -> io::Result<usize> {
    let name = match dir {
        Direction::Tx => TLS_TX,
        Direction::Rx => TLS_RX,
    };
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is writable for `len` bytes and `len` is a valid in/out length for the whole
    // call; the kernel writes at most `len` bytes and stores the written length back.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_TLS,
            name,
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
    /// The TLS content type (21 alert, 22 handshake, 23 application data).
    pub content_type: u8,
    /// Bytes written to the front of the buffer.
    pub len: usize,
}

/// Space for one `cmsghdr` carrying one byte, aligned as `cmsghdr` requires.
#[repr(C)]
struct OneByteCmsg {
    _align: [libc::cmsghdr; 0],
    buf: [u8; 64],
}

/// Reads the next record with its content type, without blocking. Used after a plain read
/// failed with EIO, which is how a kTLS socket says "the next record is not application data".
/// `Ok(None)`: nothing to read right now.
pub fn recv_record(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<Record>> {
    let mut cmsg = OneByteCmsg {
        _align: [],
        buf: [0; 64],
    };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message header.
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
        // Without a record-type message the bytes are application data.
        content_type: content_type.unwrap_or(crate::tls::wire::CONTENT_APPLICATION_DATA),
        len: n,
    }))
}

/// Sends `data` as one record of `content_type` (an alert, a KeyUpdate), without blocking.
/// Returns the bytes sent; a record that does not fit right now is not sent (`WouldBlock`).
pub fn send_record(fd: BorrowedFd<'_>, content_type: u8, data: &[u8]) -> io::Result<usize> {
    let mut cmsg = OneByteCmsg {
        _align: [],
        buf: [0; 64],
    };
    let mut iov = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty message header.
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
