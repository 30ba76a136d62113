//! Opening an upstream connection (monoio): TCP connect, TLS for wss:// members, the upgrade
//! request and its 101 — all under one timeout — and [`UpstreamStream`], the connection the
//! relay loop then drives.
//!
//! The stream is readiness-first like the client side of the edge: the relay waits for the
//! socket's readiness (its read poll armed on [`UpstreamStream::shared_tcp`]) and then calls the non-blocking
//! [`UpstreamStream::read_plaintext`] / [`UpstreamStream::write_pending`], so a deadline never
//! cancels a read or write halfway. TLS uses rustls' buffered client API: one upstream
//! connection per proxied session is not where the edge's per-connection memory goes.

use crate::reason::Reason;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::BorrowedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;

use super::balancer::{Member, MemberRef};
use super::handshake::{parse_response, ClientHandshake, ResponseError};
use crate::sockopt::{self, AcceptedSocketOptions, Recv};

/// What [`connect`] sends: the request bytes and what its 101 must answer.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    pub bytes: Vec<u8>,
    pub handshake: ClientHandshake,
}

/// How [`connect`] connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// TCP connect + TLS handshake + upgrade, together.
    pub timeout: Duration,
    /// For wss:// members.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The upstream's 101 (status line and headers) may not exceed this.
    pub max_response_bytes: usize,
    /// TCP_NODELAY and bounded kernel buffers, as every socket of the edge gets.
    pub socket: AcceptedSocketOptions,
}

impl ConnectOptions {
    pub fn new(timeout: Duration, tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            timeout,
            tls,
            max_response_bytes: 8192,
            socket: AcceptedSocketOptions {
                send_buffer_bytes: 256 << 10,
                recv_buffer_bytes: 256 << 10,
            },
        }
    }
}

/// Why no upstream session could be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("member {0} has no resolved address")]
    NoAddress(String),
    #[error("timed out after {0:?} (connect, TLS and upgrade)")]
    Timeout(Duration),
    #[error("connect: {0}")]
    Io(io::Error),
    #[error("TLS with the upstream: {0}")]
    Tls(rustls::Error),
    #[error("wss:// member but no [upstream.tls] client configuration")]
    NoTlsConfig,
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    #[error("the upstream closed the connection before its 101")]
    Closed,
    #[error(transparent)]
    Response(#[from] ResponseError),
}

impl ConnectError {
    /// A snake_case reason for counters, logs and the client's refusal.
    pub fn reason(&self) -> Reason {
        match self {
            Self::NoAddress(_) => Reason::UpstreamNoAddress,
            Self::Timeout(_) => Reason::UpstreamTimeout,
            Self::Io(_) => Reason::UpstreamConnectFailed,
            Self::Tls(_) => Reason::UpstreamTlsFailed,
            Self::NoTlsConfig | Self::ServerName(_) => Reason::UpstreamMisconfigured,
            Self::Closed => Reason::UpstreamClosed,
            Self::Response(e) => Reason::from(e),
        }
    }

    /// Whether the breaker counts it against the member (a 4xx answer does not: the member is
    /// up and refused this one request).
    pub fn is_member_failure(&self) -> bool {
        match self {
            Self::Response(e) => e.is_member_failure(),
            _ => true,
        }
    }

    fn from_io(e: io::Error) -> Self {
        let tls = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned();
        match tls {
            Some(t) => Self::Tls(t),
            None => Self::Io(e),
        }
    }
}

/// What a non-blocking read of plaintext found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// This many plaintext bytes were appended.
    Data(usize),
    /// Nothing buffered and nothing on the socket: wait for readability.
    WouldBlock,
    /// The upstream closed its side (after any plaintext it sent).
    Eof,
}

/// Reads ciphertext for rustls without blocking.
struct NonBlocking<'a>(BorrowedFd<'a>);

impl Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match sockopt::recv_nonblocking(self.0, buf)? {
            Recv::Data(n) => Ok(n),
            Recv::Eof => Ok(0),
            Recv::WouldBlock => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// An open upstream WebSocket connection after its 101.
pub struct UpstreamStream {
    /// Shared with the relay's armed readiness polls.
    tcp: Rc<TcpStream>,
    tls: Option<Box<rustls::ClientConnection>>,
    /// Bytes to send (ciphertext under TLS); `out[out_pos..]` is pending.
    out: Vec<u8>,
    out_pos: usize,
    /// Plaintext that arrived with or right after the 101: handed out first.
    early: BytesMut,
    protocol: Option<String>,
    member: Arc<Member>,
}

impl std::fmt::Debug for UpstreamStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamStream")
            .field("member", &self.member.url)
            .field("tls", &self.tls.is_some())
            .field("pending_output", &self.pending_output())
            .field("early", &self.early.len())
            .finish_non_exhaustive()
    }
}

impl UpstreamStream {
    /// The socket, for `readable(false)` / `writable(false)`.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// The socket, for readiness polls that outlive a borrow ([`crate::readiness`]).
    pub(crate) fn shared_tcp(&self) -> Rc<TcpStream> {
        self.tcp.clone()
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        sockopt::borrow_fd(&self.tcp)
    }

    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// The subprotocol the upstream confirmed (the one the edge offered).
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// Plaintext is held that [`Self::read_plaintext`] returns without touching the socket:
    /// read before waiting for readability.
    pub fn has_buffered_plaintext(&self) -> bool {
        !self.early.is_empty()
    }

    /// Appends at most `max` plaintext bytes to `dst` without blocking: first what came with
    /// the 101, then what rustls already decrypted, then what the socket holds. Returns
    /// `WouldBlock` only when nothing is held anywhere; call it until then before waiting for
    /// readability again.
    pub fn read_plaintext(&mut self, dst: &mut BytesMut, max: usize) -> io::Result<ReadOutcome> {
        if max == 0 {
            return Ok(ReadOutcome::WouldBlock);
        }
        if !self.early.is_empty() {
            let n = max.min(self.early.len());
            dst.extend_from_slice(&self.early[..n]);
            self.early.advance(n);
            return Ok(ReadOutcome::Data(n));
        }
        let fd = sockopt::borrow_fd(&self.tcp);
        let Some(conn) = self.tls.as_deref_mut() else {
            // Plain ws://: straight into the spare capacity, nothing zero-filled.
            return match sockopt::recv_append(fd, dst, max)? {
                Recv::Data(n) => Ok(ReadOutcome::Data(n)),
                Recv::WouldBlock => Ok(ReadOutcome::WouldBlock),
                Recv::Eof => Ok(ReadOutcome::Eof),
            };
        };
        tls_read(conn, fd, dst, max, &mut self.out)
    }

    /// Queues plaintext to send (encrypted at once under TLS). The caller bounds what it
    /// queues by [`Self::pending_output`].
    pub fn queue(&mut self, plaintext: &[u8]) {
        match self.tls.as_deref_mut() {
            None => self.out.extend_from_slice(plaintext),
            Some(conn) => {
                // The buffer limit is off (see `establish`), so the writer takes everything.
                let _ = conn.writer().write_all(plaintext);
                drain_tls(conn, &mut self.out);
            }
        }
    }

    /// Whether the member is wss:// (rustls may hold decrypted plaintext the socket's
    /// readiness does not announce).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The write queue itself for a plain ws:// member, so frames can be encoded straight
    /// into it (no staging copy); None under TLS, where [`Self::queue`] encrypts.
    pub fn plain_output(&mut self) -> Option<&mut Vec<u8>> {
        match self.tls {
            None => Some(&mut self.out),
            Some(_) => None,
        }
    }

    /// Bytes queued and not yet written to the socket.
    pub fn pending_output(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Writes what is pending without blocking; returns the bytes written. Something still
    /// pending afterwards means the socket is full: wait for writability.
    pub fn write_pending(&mut self) -> io::Result<usize> {
        let fd = sockopt::borrow_fd(&self.tcp);
        let mut written = 0;
        while self.out_pos < self.out.len() {
            match sockopt::send_nonblocking(fd, &self.out[self.out_pos..])? {
                Some(n) => {
                    self.out_pos += n;
                    written += n;
                }
                None => break,
            }
        }
        if self.out_pos == self.out.len() {
            // Drained: an idle session keeps no large write buffer after a burst.
            if self.out.capacity() > 64 * 1024 {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
            self.out_pos = 0;
        } else if self.out_pos > self.out.len() / 2 {
            // Keep the buffer from growing by its written front.
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(written)
    }

    /// Queues TLS close_notify (nothing for ws://); flush with [`Self::write_pending`].
    pub fn close_notify(&mut self) {
        if let Some(conn) = self.tls.as_deref_mut() {
            conn.send_close_notify();
            drain_tls(conn, &mut self.out);
        }
    }

    /// Shuts both directions of the socket down (a pending io_uring op then completes with an
    /// error).
    pub fn shutdown(&self) {
        sockopt::shutdown_both(self.fd());
    }
}

fn drain_tls(conn: &mut rustls::ClientConnection, out: &mut Vec<u8>) {
    while conn.wants_write() {
        // Writing into a Vec cannot fail.
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}

/// One non-blocking TLS read: decrypted plaintext first, else ciphertext from the socket.
/// Appends at most `max` bytes of the plaintext rustls holds to `dst`, copied straight from
/// its buffers (no zero-filled read space in between). As `Reader::read`: `Ok(0)` once the
/// peer's close_notify is reached, `WouldBlock` when nothing is held.
fn take_plaintext(
    conn: &mut rustls::ClientConnection,
    dst: &mut BytesMut,
    max: usize,
) -> io::Result<usize> {
    let mut reader = conn.reader();
    let mut taken = 0;
    while taken < max {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            Err(_) if taken > 0 => break,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len().min(max - taken);
        dst.extend_from_slice(&chunk[..n]);
        reader.consume(n);
        taken += n;
    }
    Ok(taken)
}

fn tls_read(
    conn: &mut rustls::ClientConnection,
    fd: BorrowedFd<'_>,
    dst: &mut BytesMut,
    max: usize,
    out: &mut Vec<u8>,
) -> io::Result<ReadOutcome> {
    loop {
        match take_plaintext(conn, dst, max) {
            Ok(0) => return Ok(ReadOutcome::Eof), // close_notify received
            Ok(n) => return Ok(ReadOutcome::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The socket ended without close_notify: the relay treats it as a close.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(ReadOutcome::Eof),
            Err(e) => return Err(e),
        }
        match conn.read_tls(&mut NonBlocking(fd)) {
            Ok(0) => {
                // EOF: let rustls see it, then report what it says (plaintext left or EOF).
                if let Err(e) = conn.process_new_packets() {
                    drain_tls(conn, out);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
                return match take_plaintext(conn, dst, max) {
                    Ok(n) if n > 0 => Ok(ReadOutcome::Data(n)),
                    _ => Ok(ReadOutcome::Eof),
                };
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadOutcome::WouldBlock),
            Err(e) => return Err(e),
        }
        let processed = conn.process_new_packets();
        // Handshake messages, alerts and key updates to answer.
        drain_tls(conn, out);
        if let Err(e) = processed {
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// Opens a session on the chosen member: TCP (TCP_NODELAY, bounded buffers), TLS for wss://
/// (verified against `[upstream.tls] ca`, SNI = the member's host, the optional client
/// certificate), the upgrade request and its 101 — all within `opts.timeout`. The outcome is
/// recorded on the member's breaker and counters.
pub async fn connect(
    lease: MemberRef,
    request: &UpstreamRequest,
    opts: &ConnectOptions,
) -> Result<UpstreamStream, ConnectError> {
    let member = lease.member().clone();
    let result = match monoio::time::timeout(opts.timeout, establish(member, request, opts)).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Timeout(opts.timeout)),
    };
    match &result {
        Ok(_) => lease.succeeded(),
        Err(e) if e.is_member_failure() => lease.failed(Instant::now()),
        Err(_) => lease.refused(),
    }
    result
}

async fn establish(
    member: Arc<Member>,
    request: &UpstreamRequest,
    opts: &ConnectOptions,
) -> Result<UpstreamStream, ConnectError> {
    let addrs = member.addrs();
    let addr = *addrs
        .first()
        .ok_or_else(|| ConnectError::NoAddress(member.url.to_string()))?;
    let tls = if member.url.tls {
        let config = opts.tls.clone().ok_or(ConnectError::NoTlsConfig)?;
        let name = ServerName::try_from(member.url.host.clone())
            .map_err(|_| ConnectError::ServerName(member.url.host.clone()))?;
        let mut conn = rustls::ClientConnection::new(config, name).map_err(ConnectError::Tls)?;
        // Our own `out` buffer is the bound the relay checks; rustls' would only split writes.
        conn.set_buffer_limit(None);
        Some(Box::new(conn))
    } else {
        None
    };
    let tcp = TcpStream::connect_addr(addr)
        .await
        .map_err(ConnectError::Io)?;
    sockopt::tune_accepted(sockopt::borrow_fd(&tcp), &opts.socket).map_err(ConnectError::Io)?;
    let mut s = UpstreamStream {
        tcp: Rc::new(tcp),
        tls,
        out: Vec::new(),
        out_pos: 0,
        early: BytesMut::new(),
        protocol: None,
        member,
    };
    // Under TLS the request waits inside rustls until the handshake is done.
    s.queue(&request.bytes);
    let mut buf = BytesMut::with_capacity(1024);
    loop {
        s.write_pending().map_err(ConnectError::from_io)?;
        if s.pending_output() > 0 {
            s.tcp.writable(false).await.map_err(ConnectError::Io)?;
            continue;
        }
        let room = opts.max_response_bytes.saturating_sub(buf.len()).max(1);
        match s
            .read_plaintext(&mut buf, room.min(4096))
            .map_err(ConnectError::from_io)?
        {
            ReadOutcome::Data(_) => {
                if let Some(n) = parse_response(&buf, &request.handshake, opts.max_response_bytes)?
                {
                    buf.advance(n);
                    s.early = buf;
                    s.protocol = request.handshake.protocol().map(str::to_owned);
                    return Ok(s);
                }
            }
            // Handshake records may have produced output to send first.
            ReadOutcome::WouldBlock if s.pending_output() > 0 => {}
            ReadOutcome::WouldBlock => s.tcp.readable(false).await.map_err(ConnectError::Io)?,
            ReadOutcome::Eof => return Err(ConnectError::Closed),
        }
    }
}

#[cfg(test)]
#[path = "connect_tests.rs"]
mod tests;
