//! A connection's record layer: userspace rustls until the hand-off, the kernel after it.
//!
//! The connection loop talks to this one type, so the read path (readiness, then a
//! non-blocking read into a pooled buffer), the write path (one owned buffer to io_uring) and
//! the close are the same whichever side encrypts. It also owns what only a record layer can
//! judge: when the session may go to the kernel ([`RecordLayer::hand_off`]), what a failed
//! hand-off means ([`RecordLayer::stay_in_userspace`]) and the life of the kernel's keys
//! ([`RecordLayer::refresh_keys`]). The connection hears back what to do, never how.

use std::io;
use std::net::SocketAddr;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::BytesMut;

use crate::bufpool::BufPool;
use crate::metrics::{CoreMetrics, KeyUpdateDirection};
use crate::reason::{KtlsFallback, Reason};
use crate::sockopt::{self, Recv};
use crate::tls::ktls::{
    self, ControlRecord, KernelTls, KtlsMode, KtlsPolicy, OffloadError, RekeyError,
};
use crate::tls::soft::{self, SoftTls, TakeOverError};
use crate::tls::{Negotiated, TlsError, TlsSession};
use crate::ws::Outbox;

/// Where a connection's records are encrypted, once its handshake is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsMode {
    Kernel,
    Userspace,
}

impl TlsMode {
    fn name(self) -> &'static str {
        match self {
            TlsMode::Kernel => "ktls",
            TlsMode::Userspace => "userspace",
        }
    }
}

/// What one non-blocking read from the client's socket gave.
#[derive(Debug)]
pub(crate) enum Received {
    /// `n` bytes received into the layer; `filled`: the read took all the space offered (more
    /// may be waiting); `records`: the kTLS records that read is counted as (0 in userspace,
    /// where rustls counts).
    Data {
        n: usize,
        filled: bool,
        records: u64,
    },
    WouldBlock,
    Eof,
    /// Under kTLS: a non-data record heads the socket ([`RecordLayer::take_control_record`]).
    ControlRecord,
    /// The read failed; `reason` is the counter label when the kernel named the failure.
    Failed {
        error: io::Error,
        reason: Option<Reason>,
    },
}

/// What a write of frames straight from the outbox did ([`RecordLayer::transmit_frames`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direct {
    /// Not this way (userspace TLS, bytes already queued in the layer, a masked frame first):
    /// copy through the layer as usual.
    NotApplicable,
    /// The socket is full.
    WouldBlock,
    /// `bytes` went out, counted as `records` kTLS records.
    Wrote { bytes: usize, records: u64 },
}

/// The connection must end because of its record layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerEnd {
    /// The refusal's reason (a silent refusal: counter and audit record).
    pub reason: Reason,
    /// Nothing more can be written (else the queued bytes and close_notify still go).
    pub abort: bool,
}

/// What the key maintenance asks of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyStep {
    /// The keys are good for now.
    Fresh,
    /// Our KeyUpdate must go out before more data and the socket is full: wait for room, then
    /// call [`RecordLayer::refresh_keys`] again.
    WaitWritable,
    /// The keys cannot go on: close with 1001 and this reason (the client's close reply is not
    /// awaited: what it sends next may not even decrypt).
    Close(Reason),
    /// Our KeyUpdate went out but the kernel refused the new keys: the client already expects
    /// them, so nothing more can be said (`tls_rekey_failed`).
    Broken,
}

// The layer lives inside the connection's task (already one heap allocation); boxing the larger
// variant would add a second allocation per connection for nothing.
#[allow(clippy::large_enum_variant)]
enum Layer {
    /// Boxed: rustls' state is the largest a connection has, and it goes at the take-over;
    /// inline it would keep its size in every idle connection's task.
    User(Box<TlsSession>),
    Kernel(KernelTls),
    /// Userspace records after the take-over from rustls ([`soft`]): the one copy is the one
    /// into the record.
    Soft(SoftTls),
    /// Only inside the hand-off, while the session is moved out.
    Detached,
}

/// A connection's record layer, and where its records are encrypted once that is decided.
pub(crate) struct RecordLayer {
    layer: Layer,
    /// Decided once the handshake is done: handed to the kernel, or kept in userspace.
    mode: Option<TlsMode>,
    /// What the handshake agreed on (and the client's certificates), kept for every later
    /// decision: the kernel hand-off gives the rustls session up.
    negotiated: Option<Negotiated>,
}

impl RecordLayer {
    pub fn new(tls: TlsSession) -> Self {
        Self {
            layer: Layer::User(Box::new(tls)),
            mode: None,
            negotiated: None,
        }
    }

    /// Where records are encrypted, once decided.
    pub fn mode(&self) -> Option<TlsMode> {
        self.mode
    }

    /// What the handshake agreed on; `None` while it runs.
    pub fn negotiated(&mut self) -> Option<&Negotiated> {
        if self.negotiated.is_none() {
            if let Layer::User(tls) = &self.layer {
                self.negotiated = tls.negotiated();
            }
        }
        self.negotiated.as_ref()
    }

    /// One non-blocking read from `fd` into the layer's pooled buffer, at most `limit` bytes
    /// ([`Self::read_limit`]).
    pub fn receive(
        &mut self,
        fd: BorrowedFd<'_>,
        pool: &mut BufPool,
        limit: Option<usize>,
    ) -> Received {
        let got = {
            let space = self.recv_space(pool, limit);
            let len = space.len();
            sockopt::recv_nonblocking(fd, space).map(|r| (r, len))
        };
        match got {
            Ok((Recv::Data(n), space)) => Received::Data {
                n,
                filled: n >= space || self.short_reads_may_hide_records(),
                records: self.commit_recv(n),
            },
            Ok((Recv::WouldBlock, _)) => Received::WouldBlock,
            Ok((Recv::Eof, _)) => Received::Eof,
            Err(e) if e.raw_os_error() == Some(libc::EIO) && self.is_kernel() => {
                Received::ControlRecord
            }
            Err(error) => Received::Failed {
                reason: kernel_read_error(&error).filter(|_| self.is_kernel()),
                error,
            },
        }
    }

    /// Space to receive into. `limit` cuts the read short (record-boundary reads before the
    /// hand-off).
    fn recv_space<'a>(&'a mut self, pool: &mut BufPool, limit: Option<usize>) -> &'a mut [u8] {
        let space = match &mut self.layer {
            Layer::User(tls) => tls.recv_space(pool),
            Layer::Kernel(k) => k.recv_space(pool),
            Layer::Soft(s) => s.recv_space(pool),
            Layer::Detached => return &mut [],
        };
        match limit {
            Some(n) if n < space.len() => &mut space[..n],
            _ => space,
        }
    }

    /// `n` bytes were received; returns the kTLS records that read is counted as.
    fn commit_recv(&mut self, n: usize) -> u64 {
        match &mut self.layer {
            Layer::User(tls) => {
                tls.commit_recv(n);
                0
            }
            Layer::Kernel(k) => k.commit_recv(n),
            Layer::Soft(s) => {
                s.commit_recv(n);
                0
            }
            Layer::Detached => 0,
        }
    }

    /// A kernel that can rekey decrypts the record after the data it returns to learn its type,
    /// and a KeyUpdate found that way is not announced by poll (sid's 7.2): a short read there
    /// does not mean the socket is drained, so the caller reads on until it would block.
    fn short_reads_may_hide_records(&self) -> bool {
        matches!(&self.layer, Layer::Kernel(k) if k.can_rekey())
    }

    fn is_kernel(&self) -> bool {
        matches!(self.layer, Layer::Kernel(_))
    }

    /// Turns what was received into plaintext (decrypting in userspace; a move under kTLS).
    pub fn process(&mut self, plaintext: &mut BytesMut) -> Result<(), TlsError> {
        match &mut self.layer {
            Layer::User(tls) => tls.process(plaintext),
            Layer::Kernel(k) => {
                k.drain_into(plaintext);
                Ok(())
            }
            Layer::Soft(s) => s.process(plaintext),
            Layer::Detached => Err(TlsError::Internal("record layer detached")),
        }
    }

    /// The client sent close_notify (userspace; under kTLS the loop sees the alert itself).
    pub fn peer_closed(&self) -> bool {
        match &self.layer {
            Layer::User(tls) => tls.peer_closed(),
            Layer::Soft(s) => s.peer_closed(),
            _ => false,
        }
    }

    pub fn is_handshaking(&self) -> bool {
        match &self.layer {
            Layer::User(tls) => tls.is_handshaking(),
            Layer::Kernel(_) | Layer::Soft(_) => false,
            Layer::Detached => true,
        }
    }

    /// Queues application data for the client.
    pub fn send(&mut self, plaintext: &[u8]) -> Result<(), ()> {
        match &mut self.layer {
            Layer::User(tls) => tls.encrypt(plaintext).map_err(|_| ()),
            Layer::Kernel(k) => k.queue(plaintext).map_err(|_| ()),
            Layer::Soft(s) => s.encrypt(plaintext).map_err(|_| ()),
            Layer::Detached => Err(()),
        }
    }

    pub fn has_pending_output(&self) -> bool {
        match &self.layer {
            Layer::User(tls) => tls.has_pending_output(),
            Layer::Kernel(k) => k.has_pending_output(),
            Layer::Soft(s) => s.has_pending_output(),
            Layer::Detached => false,
        }
    }

    /// After the take-over from rustls: seals up to `max` bytes of `outbox`'s frames straight
    /// into records (copied once, into the record). `None`: not this layer (copy through
    /// [`Self::send`]).
    pub fn seal_frames(&mut self, outbox: &mut Outbox, max: usize) -> Option<Result<usize, ()>> {
        match &mut self.layer {
            Layer::Soft(s) => Some(s.encrypt_from(outbox, max).map_err(|_| ())),
            _ => None,
        }
    }

    /// Bytes queued for the socket (ciphertext in userspace, plaintext under kTLS).
    pub fn pending_output_len(&self) -> usize {
        self.pending_output().len()
    }

    fn pending_output(&self) -> &[u8] {
        match &self.layer {
            Layer::User(tls) => tls.pending_output(),
            Layer::Kernel(k) => k.pending_output(),
            Layer::Soft(s) => s.pending_output(),
            Layer::Detached => &[],
        }
    }

    /// Writes what `fd` takes of the queued bytes now, without blocking: `Some((bytes,
    /// records))` when it took some (records: the kTLS records made), `None` when it took none.
    pub fn transmit(&mut self, fd: BorrowedFd<'_>) -> io::Result<Option<(usize, u64)>> {
        match sockopt::send_nonblocking(fd, self.pending_output())? {
            Some(n) if n > 0 => Ok(Some((n, self.consume_output(n)))),
            _ => Ok(None),
        }
    }

    /// Under kTLS with nothing queued here: writes `outbox`'s frames straight to the socket,
    /// as slices of the frames themselves (their headers and shared payloads) in one sendmsg:
    /// no user-space copy, the kernel encrypts. At most `max` bytes.
    pub fn transmit_frames(
        &mut self,
        fd: BorrowedFd<'_>,
        outbox: &mut Outbox,
        max: usize,
    ) -> io::Result<Direct> {
        /// Slices per sendmsg (UIO_MAXIOV is 1024; a batch of small publications is 2 each).
        const MAX_SLICES: usize = 256;
        let Layer::Kernel(k) = &mut self.layer else {
            return Ok(Direct::NotApplicable);
        };
        if k.has_pending_output() || !k.may_send() {
            return Ok(Direct::NotApplicable);
        }
        let mut slices = Vec::with_capacity(MAX_SLICES.min(2 * outbox.frames() + 1));
        if outbox.gather(&mut slices, max, MAX_SLICES) == 0 {
            return Ok(Direct::NotApplicable);
        }
        match sockopt::send_vectored_nonblocking(fd, &slices)? {
            Some(n) if n > 0 => {
                drop(slices);
                outbox.advance(n);
                Ok(Direct::Wrote {
                    bytes: n,
                    records: k.sent_directly(n),
                })
            }
            _ => Ok(Direct::WouldBlock),
        }
    }

    /// `n` bytes of the pending output were written; returns the kTLS records made.
    fn consume_output(&mut self, n: usize) -> u64 {
        match &mut self.layer {
            Layer::User(tls) => {
                tls.consume_output(n);
                0
            }
            Layer::Kernel(k) => k.consume_output(n),
            Layer::Soft(s) => {
                s.consume_output(n);
                0
            }
            Layer::Detached => 0,
        }
    }

    pub fn release_idle(&mut self, pool: &mut BufPool) {
        match &mut self.layer {
            Layer::User(tls) => tls.release_idle(pool),
            Layer::Kernel(k) => k.release_idle(pool),
            Layer::Soft(s) => s.release_idle(pool),
            Layer::Detached => {}
        }
    }

    /// Part of a TLS record (or of a handshake message) is held, waiting for the rest: under
    /// userspace TLS only; the kernel keeps its partial records to itself.
    pub fn holds_partial_record(&self) -> bool {
        match &self.layer {
            Layer::User(tls) => tls.buffered_ciphertext() > 0,
            Layer::Soft(s) => s.holds_partial_record(),
            _ => false,
        }
    }

    pub fn holds_read_buffer(&self) -> bool {
        match &self.layer {
            Layer::User(tls) => tls.holds_read_buffer(),
            Layer::Kernel(k) => k.holds_read_buffer(),
            Layer::Soft(s) => s.holds_read_buffer(),
            Layer::Detached => false,
        }
    }

    /// Queues (userspace) our close_notify; under kTLS it is sent by [`Self::send_close_notify`]
    /// after the queued data is written. `false` when there is nothing to say it with.
    pub fn queue_close_notify(&mut self) -> bool {
        match &mut self.layer {
            Layer::User(tls) => tls.queue_close_notify().is_ok(),
            Layer::Soft(s) => s.queue_close_notify().is_ok(),
            Layer::Kernel(_) => true,
            Layer::Detached => false,
        }
    }

    /// Under kTLS: sends close_notify once the queued plaintext is out (WouldBlock: wait for
    /// room and call again). Userspace queued it with the data already.
    pub fn send_close_notify(&mut self, fd: BorrowedFd<'_>) -> io::Result<()> {
        match &mut self.layer {
            Layer::Kernel(k) => k.send_close_notify(fd),
            _ => Ok(()),
        }
    }

    /// How much the next read may take: before the hand-off (to the kernel, or to our own
    /// userspace records), no more than what completes the record in the buffer, so the new
    /// record layer starts on a record boundary even when the client pipelines data right after
    /// its Finished. `finishing`: the connection is ending (no hand-off will come).
    pub fn read_limit(&self, finishing: bool) -> Option<usize> {
        if self.mode.is_some() || finishing {
            return None;
        }
        match &self.layer {
            Layer::User(tls) if !tls.is_handshaking() => Some(tls.bytes_to_record_boundary()),
            _ => None,
        }
    }

    /// Userspace, and every record received is decrypted: a point where the kernel could take
    /// over.
    pub fn is_quiescent(&self) -> bool {
        matches!(&self.layer, Layer::User(tls) if tls.is_quiescent())
    }

    /// Before the hand-off to the kernel: every record received is decrypted (reads stop at
    /// record boundaries) and only our pending bytes hold the hand-off up.
    pub fn awaiting_handoff(&self, finishing: bool) -> bool {
        self.mode.is_none()
            && self.read_limit(finishing) == Some(0)
            && matches!(&self.layer, Layer::User(t) if t.is_quiescent() && t.has_pending_output())
    }

    /// Once the handshake is done: keeps what it agreed on and decides where records are
    /// encrypted from now on — handed to the kernel at the first quiescent point (every record
    /// received is decrypted, every record queued is written), or kept in userspace.
    pub fn hand_off(
        &mut self,
        fd: BorrowedFd<'_>,
        pool: &mut BufPool,
        policy: &KtlsPolicy,
        metrics: &CoreMetrics,
        peer: SocketAddr,
    ) -> Option<LayerEnd> {
        if self.mode.is_some() {
            return None;
        }
        let Layer::User(tls) = &self.layer else {
            return None;
        };
        if tls.is_handshaking() {
            return None;
        }
        if self.negotiated.is_none() {
            self.negotiated = tls.negotiated();
        }
        if !tls.is_quiescent() || tls.has_pending_output() {
            return None; // reads stop at the next record boundary; try again then
        }
        if policy.offloads() {
            let Layer::User(tls) = std::mem::replace(&mut self.layer, Layer::Detached) else {
                return Some(LayerEnd {
                    reason: Reason::KtlsHandoffFailed,
                    abort: true,
                });
            };
            match ktls::offload(*tls, fd, pool, &policy.support, policy.key_limit_override) {
                Ok(kernel) => {
                    self.layer = Layer::Kernel(kernel);
                    self.decide(TlsMode::Kernel, metrics, peer);
                    return None;
                }
                Err(OffloadError::Fallback {
                    tls,
                    reason,
                    detail,
                }) => {
                    self.layer = Layer::User(tls);
                    metrics.ktls_fallback(reason);
                    log_fallback_once(reason, &detail);
                    if policy.mode == KtlsMode::Required {
                        self.decide(TlsMode::Userspace, metrics, peer);
                        return Some(LayerEnd {
                            reason: Reason::KtlsRequired,
                            abort: false,
                        });
                    }
                }
                Err(OffloadError::Broken { reason, detail }) => {
                    metrics.ktls_fallback(reason);
                    tracing::warn!(%peer, reason = reason.as_str(), detail, "kTLS hand-off failed after the secrets were extracted; connection closed");
                    return Some(LayerEnd {
                        reason: Reason::KtlsHandoffFailed,
                        abort: true,
                    });
                }
            }
        }
        self.take_over_in_userspace(pool, policy, metrics, peer)
    }

    /// Userspace records from here on: ours ([`soft`]) rather than rustls', so that a frame is
    /// copied once, into its record. A session rustls cannot give up stays with rustls.
    fn take_over_in_userspace(
        &mut self,
        pool: &mut BufPool,
        policy: &KtlsPolicy,
        metrics: &CoreMetrics,
        peer: SocketAddr,
    ) -> Option<LayerEnd> {
        let Layer::User(tls) = std::mem::replace(&mut self.layer, Layer::Detached) else {
            return Some(LayerEnd {
                reason: Reason::TlsInternal,
                abort: true,
            });
        };
        match soft::take_over(*tls, pool, policy.key_limit_override) {
            Ok(records) => self.layer = Layer::Soft(records),
            Err(TakeOverError::NotYet(tls)) => self.layer = Layer::User(tls),
            Err(TakeOverError::Broken(detail)) => {
                tracing::warn!(%peer, detail, "userspace record take-over failed after the secrets were extracted; connection closed");
                return Some(LayerEnd {
                    reason: Reason::TlsInternal,
                    abort: true,
                });
            }
        }
        self.decide(TlsMode::Userspace, metrics, peer);
        None
    }

    /// The hand-off is not possible for this connection: count it, say it once, and serve in
    /// userspace — or close, when kTLS is required.
    pub fn stay_in_userspace(
        &mut self,
        reason: KtlsFallback,
        detail: &str,
        mode: KtlsMode,
        metrics: &CoreMetrics,
        peer: SocketAddr,
    ) -> Option<LayerEnd> {
        metrics.ktls_fallback(reason);
        log_fallback_once(reason, detail);
        self.decide(TlsMode::Userspace, metrics, peer);
        (mode == KtlsMode::Required).then_some(LayerEnd {
            reason: Reason::KtlsRequired,
            abort: false,
        })
    }

    fn decide(&mut self, mode: TlsMode, metrics: &CoreMetrics, peer: SocketAddr) {
        self.mode = Some(mode);
        match mode {
            TlsMode::Kernel => {
                metrics.tls_sessions_ktls.inc();
                metrics.ktls_open.add(1);
            }
            TlsMode::Userspace => metrics.tls_sessions_userspace.inc(),
        }
        if let Some(n) = &self.negotiated {
            tracing::debug!(
                %peer,
                tls = mode.name(),
                version = ?n.version,
                suite = ?n.suite.suite(),
                sni = n.sni.as_deref().unwrap_or(""),
                "TLS established"
            );
        }
    }

    /// Under kTLS: the non-data record at the head of the socket (a read said
    /// [`Received::ControlRecord`]), read and acted on; the alert kinds are counted. `Ok(None)`:
    /// nothing there after all. `Err(reason)`: the record could not be read.
    pub fn take_control_record(
        &mut self,
        fd: BorrowedFd<'_>,
        pool: &mut BufPool,
        metrics: &CoreMetrics,
    ) -> Result<Option<ControlRecord>, Reason> {
        let Layer::Kernel(kernel) = &mut self.layer else {
            return Err(Reason::TlsRecordReadFailed);
        };
        let record = kernel
            .take_control_record(fd, pool)
            .map_err(|e| kernel_read_error(&e).unwrap_or(Reason::TlsRecordReadFailed))?;
        if let Some(kind) = record.as_ref().and_then(ControlRecord::alert_kind) {
            metrics.ktls_alert(kind);
        }
        if let Some(ControlRecord::KeyUpdate { requested }) = record {
            metrics.ktls_key_update(KeyUpdateDirection::Received, requested);
        }
        Ok(record)
    }

    /// Under kTLS: our KeyUpdate is due (the client asked, or our count is near the limit); it
    /// goes out before anything more is read or written.
    pub fn tx_rekey_due(&self) -> bool {
        matches!(&self.layer, Layer::Kernel(k) if k.tx_rekey_due())
    }

    /// Under kTLS: takes exact record counts from the kernel now and then. Call once per pass,
    /// before [`Self::refresh_keys`].
    pub fn sync_key_counts(&mut self, fd: BorrowedFd<'_>, peer: SocketAddr) {
        let Layer::Kernel(kernel) = &mut self.layer else {
            return;
        };
        if kernel.wants_sync() {
            if let Err(e) = kernel.sync_with_kernel(fd) {
                log_unreadable_counts_once(peer, &e);
            }
        }
    }

    /// Under kTLS: replaces our keys when due (where the kernel can), or asks for a close
    /// before the suite's record limit. Call again after [`KeyStep::WaitWritable`].
    pub fn refresh_keys(
        &mut self,
        fd: BorrowedFd<'_>,
        peer: SocketAddr,
        metrics: &CoreMetrics,
    ) -> KeyStep {
        let Layer::Kernel(kernel) = &mut self.layer else {
            return KeyStep::Fresh;
        };
        while kernel.tx_rekey_due() {
            match kernel.rekey_tx(fd) {
                Ok(requested) => {
                    metrics.ktls_key_update(KeyUpdateDirection::Sent, requested);
                    tracing::debug!(%peer, requested, "TLS keys updated (KeyUpdate)");
                }
                Err(RekeyError::NotSent(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                    return KeyStep::WaitWritable;
                }
                Err(RekeyError::NotSent(e)) => {
                    tracing::warn!(%peer, error = %e, "TLS key update not sent");
                    return KeyStep::Close(Reason::TlsKeyLimit);
                }
                Err(RekeyError::AfterSend(e)) => {
                    tracing::warn!(%peer, error = %e, "the kernel refused our new TLS keys");
                    return KeyStep::Broken;
                }
            }
        }
        if kernel.key_limit_reached() {
            return KeyStep::Close(Reason::TlsKeyLimit);
        }
        KeyStep::Fresh
    }
}

/// The counter label of a kTLS read error that ends the connection.
fn kernel_read_error(e: &io::Error) -> Option<Reason> {
    match e.raw_os_error() {
        // A record failed to authenticate (or keys changed under a kernel that cannot follow).
        Some(libc::EBADMSG) => Some(Reason::TlsBadRecord),
        // A record longer than TLS allows, or the kernel started mid-record.
        Some(libc::EMSGSIZE) => Some(Reason::TlsRecordOverflow),
        _ => None,
    }
}

/// True the first time it is asked for `flag`: a kernel that refuses something refuses it on
/// every connection, so one line says why, not one per connection.
fn first_time(flag: &AtomicBool) -> bool {
    !flag.swap(true, Ordering::Relaxed)
}

/// A fallback to userspace is logged once per process (then only counted).
fn log_fallback_once(reason: KtlsFallback, detail: &str) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if first_time(&LOGGED) {
        tracing::warn!(
            reason = reason.as_str(),
            detail,
            "kTLS hand-off refused; this connection stays in userspace (further fallbacks are only counted: wssedge_ktls_fallbacks_total)"
        );
    }
}

/// Exact record counts the kernel would not give are logged once per process.
fn log_unreadable_counts_once(peer: SocketAddr, e: &io::Error) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if first_time(&LOGGED) {
        tracing::warn!(%peer, error = %e, "the kernel's kTLS record counts are unreadable; key limits follow our own estimates, which undercount a client's small records");
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    #[test]
    fn an_open_connection_does_not_carry_rustls_handshake_state_inline() {
        // Every idle connection holds a record layer for its life; rustls' handshake state
        // (over a kilobyte) is boxed and goes at the take-over, so the layer is the size of
        // its largest post-handshake form. Growing past this is a choice to make, not to
        // drift into: it is paid by every idle connection (see perf-scripts/idle-memory.sh).
        let layer = std::mem::size_of::<RecordLayer>();
        assert!(layer <= 900, "RecordLayer is {layer} bytes");
        let session = std::mem::size_of::<TlsSession>();
        assert!(
            session > layer,
            "rustls' state ({session} B) is the one worth boxing"
        );
    }

    fn handshaking_layer() -> RecordLayer {
        let config = crate::tls::testpki::TestPki::new().server_config("edge.test");
        RecordLayer::new(TlsSession::new(config).expect("a TLS session"))
    }

    fn peer() -> SocketAddr {
        "127.0.0.1:9".parse().unwrap()
    }

    #[test]
    fn kernel_read_errors_name_their_counter() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(
            kernel_read_error(&e(libc::EBADMSG)),
            Some(Reason::TlsBadRecord)
        );
        assert_eq!(
            kernel_read_error(&e(libc::EMSGSIZE)),
            Some(Reason::TlsRecordOverflow)
        );
        assert_eq!(kernel_read_error(&e(libc::ECONNRESET)), None);
    }

    #[test]
    fn a_handshaking_layer_reads_freely_and_hands_nothing_off() {
        let mut layer = handshaking_layer();
        assert!(layer.is_handshaking());
        assert_eq!(layer.read_limit(false), None);
        assert!(!layer.awaiting_handoff(false));
        let metrics = CoreMetrics::new(0, 0);
        let policy = KtlsPolicy::decide(KtlsMode::Off, None).expect("a policy");
        let fd = loopback_socket();
        let end = layer.hand_off(
            fd.as_fd(),
            &mut BufPool::default(),
            &policy,
            &metrics,
            peer(),
        );
        assert_eq!(end, None);
        assert_eq!(
            layer.mode(),
            None,
            "nothing is decided while the handshake runs"
        );
        assert_eq!(
            layer.refresh_keys(fd.as_fd(), peer(), &metrics),
            KeyStep::Fresh
        );
        assert!(!layer.tx_rekey_due());
    }

    /// Without kTLS a finished handshake's records are taken over from rustls at once (the
    /// session was quiescent): frames are then sealed straight from the outbox.
    #[test]
    fn without_ktls_the_records_are_taken_over_in_userspace() {
        use bytes::Bytes;
        use std::io::Read;

        use crate::ws::{MessageKind, Payload, Session, SessionLimits};

        let metrics = CoreMetrics::new(0, 0);
        let policy = KtlsPolicy::decide(KtlsMode::Off, None).expect("a policy");
        let mut h = crate::tls::handshaken::tls13();
        let mut layer = RecordLayer::new(h.server);
        let fd = loopback_socket();
        assert_eq!(
            layer.read_limit(false),
            Some(0),
            "a record boundary: hand off now"
        );
        let end = layer.hand_off(fd.as_fd(), &mut h.pool, &policy, &metrics, peer());
        assert_eq!(end, None);
        assert_eq!(layer.mode(), Some(TlsMode::Userspace));
        let mut session = Session::new(SessionLimits::default());
        session.send(
            MessageKind::Text,
            Payload::Single(Bytes::from_static(b"tick")),
        );
        let mut outbox = Outbox::new();
        while let Some(f) = session.poll_transmit() {
            outbox.push(f);
        }
        assert_eq!(layer.seal_frames(&mut outbox, usize::MAX), Some(Ok(6)));
        let wire = layer.pending_output().to_vec();
        h.client.read_tls(&mut &wire[..]).unwrap();
        h.client.process_new_packets().unwrap();
        let mut got = [0u8; 6];
        h.client.reader().read_exact(&mut got).unwrap();
        assert_eq!(&got, b"\x81\x04tick");
    }

    #[test]
    fn a_refused_hand_off_closes_only_when_ktls_is_required() {
        let metrics = CoreMetrics::new(0, 0);
        let mut layer = handshaking_layer();
        let end = layer.stay_in_userspace(
            KtlsFallback::NotQuiescent,
            "detail",
            KtlsMode::Auto,
            &metrics,
            peer(),
        );
        assert_eq!(end, None);
        assert_eq!(layer.mode(), Some(TlsMode::Userspace));
        assert_eq!(layer.read_limit(false), None, "decided: reads are free");
        let mut layer = handshaking_layer();
        let end = layer.stay_in_userspace(
            KtlsFallback::NotQuiescent,
            "detail",
            KtlsMode::Required,
            &metrics,
            peer(),
        );
        assert_eq!(
            end,
            Some(LayerEnd {
                reason: Reason::KtlsRequired,
                abort: false
            })
        );
        assert_eq!(layer.mode(), Some(TlsMode::Userspace));
        assert_eq!(metrics.tls_sessions_userspace.get(), 2);
    }

    /// A socket nobody reads, for the operations that only touch it under kTLS.
    fn loopback_socket() -> std::net::UdpSocket {
        std::net::UdpSocket::bind("127.0.0.1:0").expect("a loopback socket")
    }
}
