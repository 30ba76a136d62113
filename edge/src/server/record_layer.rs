//! A connection's record layer: userspace rustls until the hand-off, the kernel after it.
//!
//! The connection loop talks to this one type, so the read path (readiness, then a
//! non-blocking read into a pooled buffer), the write path (one owned buffer to io_uring) and
//! the close are the same whichever side encrypts.

use std::os::fd::BorrowedFd;

use bytes::BytesMut;

use crate::bufpool::BufPool;
use crate::tls::ktls::KernelTls;
use crate::tls::{TlsError, TlsSession};

// The layer lives inside the connection's task (already one heap allocation); boxing the larger
// variant would add a second allocation per connection for nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RecordLayer {
    User(TlsSession),
    Kernel(KernelTls),
    /// Only inside the hand-off, while the session is moved out.
    Detached,
}

impl RecordLayer {
    /// Space to receive into. `limit` cuts the read short (record-boundary reads before the
    /// hand-off).
    pub fn recv_space<'a>(&'a mut self, pool: &mut BufPool, limit: Option<usize>) -> &'a mut [u8] {
        let space = match self {
            RecordLayer::User(tls) => tls.recv_space(pool),
            RecordLayer::Kernel(k) => k.recv_space(pool),
            RecordLayer::Detached => return &mut [],
        };
        match limit {
            Some(n) if n < space.len() => &mut space[..n],
            _ => space,
        }
    }

    /// `n` bytes were received; returns the kTLS records that read is counted as (0 in
    /// userspace, where rustls counts).
    pub fn commit_recv(&mut self, n: usize) -> u64 {
        match self {
            RecordLayer::User(tls) => {
                tls.commit_recv(n);
                0
            }
            RecordLayer::Kernel(k) => k.commit_recv(n),
            RecordLayer::Detached => 0,
        }
    }

    /// Turns what was received into plaintext (decrypting in userspace; a move under kTLS).
    pub fn process(&mut self, plaintext: &mut BytesMut) -> Result<(), TlsError> {
        match self {
            RecordLayer::User(tls) => tls.process(plaintext),
            RecordLayer::Kernel(k) => {
                k.drain_into(plaintext);
                Ok(())
            }
            RecordLayer::Detached => Err(TlsError::Internal("record layer detached")),
        }
    }

    /// The client sent close_notify (userspace; under kTLS the loop sees the alert itself).
    pub fn peer_closed(&self) -> bool {
        matches!(self, RecordLayer::User(tls) if tls.peer_closed())
    }

    pub fn is_handshaking(&self) -> bool {
        match self {
            RecordLayer::User(tls) => tls.is_handshaking(),
            RecordLayer::Kernel(_) => false,
            RecordLayer::Detached => true,
        }
    }

    /// Queues application data for the client.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<(), ()> {
        match self {
            RecordLayer::User(tls) => tls.encrypt(plaintext).map_err(|_| ()),
            RecordLayer::Kernel(k) => k.queue(plaintext).map_err(|_| ()),
            RecordLayer::Detached => Err(()),
        }
    }

    pub fn has_pending_output(&self) -> bool {
        match self {
            RecordLayer::User(tls) => tls.has_pending_output(),
            RecordLayer::Kernel(k) => k.has_pending_output(),
            RecordLayer::Detached => false,
        }
    }

    /// Bytes queued for the socket (ciphertext in userspace, plaintext under kTLS).
    pub fn pending_output_len(&self) -> usize {
        self.pending_output().len()
    }

    pub fn pending_output(&self) -> &[u8] {
        match self {
            RecordLayer::User(tls) => tls.pending_output(),
            RecordLayer::Kernel(k) => k.pending_output(),
            RecordLayer::Detached => &[],
        }
    }

    /// `n` bytes of [`Self::pending_output`] were written; returns the kTLS records made.
    pub fn consume_output(&mut self, n: usize) -> u64 {
        match self {
            RecordLayer::User(tls) => {
                tls.consume_output(n);
                0
            }
            RecordLayer::Kernel(k) => k.consume_output(n),
            RecordLayer::Detached => 0,
        }
    }

    pub fn release_idle(&mut self, pool: &mut BufPool) {
        match self {
            RecordLayer::User(tls) => tls.release_idle(pool),
            RecordLayer::Kernel(k) => k.release_idle(pool),
            RecordLayer::Detached => {}
        }
    }

    /// Part of a TLS record (or of a handshake message) is held, waiting for the rest: under
    /// userspace TLS only; the kernel keeps its partial records to itself.
    pub fn holds_partial_record(&self) -> bool {
        match self {
            RecordLayer::User(tls) => tls.buffered_ciphertext() > 0,
            _ => false,
        }
    }

    pub fn holds_read_buffer(&self) -> bool {
        match self {
            RecordLayer::User(tls) => tls.holds_read_buffer(),
            RecordLayer::Kernel(k) => k.holds_read_buffer(),
            RecordLayer::Detached => false,
        }
    }

    /// Queues (userspace) our close_notify; under kTLS it is sent by [`Self::send_close_notify`]
    /// after the queued data is written. `false` when there is nothing to say it with.
    pub fn queue_close_notify(&mut self) -> bool {
        match self {
            RecordLayer::User(tls) => tls.queue_close_notify().is_ok(),
            RecordLayer::Kernel(_) => true,
            RecordLayer::Detached => false,
        }
    }

    /// Under kTLS: sends close_notify once the queued plaintext is out (WouldBlock: wait for
    /// room and call again). Userspace queued it with the data already.
    pub fn send_close_notify(&mut self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        match self {
            RecordLayer::Kernel(k) => k.send_close_notify(fd),
            _ => Ok(()),
        }
    }

    pub fn kernel(&mut self) -> Option<&mut KernelTls> {
        match self {
            RecordLayer::Kernel(k) => Some(k),
            _ => None,
        }
    }

    pub fn user(&self) -> Option<&TlsSession> {
        match self {
            RecordLayer::User(tls) => Some(tls),
            _ => None,
        }
    }
}
