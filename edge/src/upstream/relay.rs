//! Proxy mode: one client session's upstream side on its core: its route, its connection
//! (opened before the client's 101) and the relay over it.
//!
//! The client's connection loop owns a [`Relay`] and drives it readiness-first like the
//! client's own socket: readable → a bounded non-blocking read → frames parsed in place by a
//! client-role [`Session`] → whole messages handed to the client session; the client's messages
//! go the other way through the same session, which masks them (a client must). Payloads stay
//! `Bytes` slices from the read buffer to the other side's encoder: the only copies are the
//! masking toward the upstream and the TLS encryption on each side.
//!
//! Nothing here waits: the loop decides when to read (not while the client's queue is at its
//! cap, unless the route is lossy) and when to write.

use std::time::Instant;

use bytes::BytesMut;

use super::{ClientContext, ConnectError, ReadOutcome, SystemMaskKeys, UpstreamStream, Upstreams};
use crate::readiness::ArmedPoll;
use crate::reason::Reason;
use crate::refuse::Refusal;
use crate::ws::{Event, Message, Outbox, Session, SessionLimits, SessionState, UpgradeRequest};

/// What the upstream side produced in one step, for the client side to act on.
#[derive(Debug)]
pub(crate) enum UpstreamEvent {
    /// A whole message for the client, and when its last bytes were read.
    Message(Message, Instant),
    /// The upstream closed the session with this code (forwarded to the client); `None`: its
    /// close frame was empty, and the client's is too.
    Closed { code: Option<u16>, reason: String },
    /// The upstream broke the protocol or the connection: the client gets 1014.
    Failed { reason: Reason },
}

/// How much one upstream read may take (bounded: one flooding upstream cannot starve the
/// core, and the buffer it leaves behind is bounded too).
const READ_CHUNK: usize = 64 * 1024;

/// One proxied session's upstream connection.
pub(crate) struct Relay {
    stream: UpstreamStream,
    /// The upstream socket's read readiness, kept armed across loop passes.
    readable: ArmedPoll,
    session: Session,
    plaintext: BytesMut,
    /// Whole messages may be dropped for this route when the client cannot keep up.
    lossy: bool,
    /// The member this session went to (`group/host:port`), for logs and audit records.
    member: String,
    /// We sent our close to the upstream (after the client closed, or on our own close).
    closing: bool,
    peer_closed: bool,
    /// Given up on (broken, stalled): see [`Relay::abandon`].
    abandoned: bool,
    /// The last read stopped at its bound with more possibly held (rustls keeps decrypted
    /// plaintext the socket's readiness does not announce): read again without waiting.
    more: bool,
    /// Frames toward the upstream not yet masked into its write queue: masked (copied) as the
    /// upstream's socket takes bytes, so a large message is never copied whole past the cap.
    outbox: Outbox,
    /// How much the upstream's write queue may hold before more frames are masked into it.
    max_queued: usize,
    /// Frames toward a wss:// upstream are gathered here, then encrypted in one piece.
    staging: Vec<u8>,
}

impl Relay {
    /// `max_queued`: the outbound cap (`max_outbound_bytes`) this side's write queue fills to.
    pub fn new(
        stream: UpstreamStream,
        limits: SessionLimits,
        max_queued: usize,
        lossy: bool,
        member: String,
    ) -> Self {
        Self {
            readable: ArmedPoll::readable(stream.shared_tcp()),
            stream,
            session: Session::client(limits, SystemMaskKeys),
            plaintext: BytesMut::new(),
            // What came with the 101 is read before any readiness wait.
            more: true,
            outbox: Outbox::new(),
            max_queued,
            staging: Vec::new(),
            lossy,
            member,
            closing: false,
            peer_closed: false,
            abandoned: false,
        }
    }

    /// Whole messages may be dropped for this route when the client cannot keep up.
    pub fn is_lossy(&self) -> bool {
        self.lossy
    }

    /// The member this session went to (`group/host:port`).
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The last read stopped at its bound with more possibly held: read again without waiting
    /// for readiness (the next [`Relay::read`] clears it).
    pub fn holds_more(&self) -> bool {
        self.more
    }

    /// Resolves when the upstream socket is readable (consumes nothing).
    pub async fn readable(&self) -> std::io::Result<()> {
        self.readable.ready().await
    }

    /// Resolves when the upstream socket takes more (consumes nothing).
    pub async fn writable(&self) -> std::io::Result<()> {
        self.stream.tcp().writable(false).await
    }

    /// Shuts both directions of the upstream connection.
    pub fn shutdown(&self) {
        self.stream.shutdown();
    }

    /// Bytes queued toward the upstream (its socket took none of them yet): frames still in
    /// the outbox (with what each costs to keep) and the write queue's bytes.
    pub fn pending_output(&self) -> usize {
        self.outbox.len() + self.outbox.overhead() + self.stream.pending_output()
    }

    /// Bytes held in partly received upstream frames (the read buffer by its capacity, as the
    /// client's: a large partial frame grows it by doubling).
    pub fn buffered(&self) -> usize {
        self.plaintext.capacity() + self.session.buffered_bytes()
    }

    /// Data messages the upstream completed so far (its progress; see
    /// [`Session::messages_received`]).
    pub fn messages_received(&self) -> u64 {
        self.session.messages_received()
    }

    /// Whether the upstream began a frame or a fragmented message it has not completed.
    pub fn in_message(&self) -> bool {
        !self.plaintext.is_empty() || self.session.in_message()
    }

    pub fn is_done(&self) -> bool {
        self.peer_closed || self.session.state() == SessionState::Closed
    }

    /// Reads what the upstream has (a few bounded chunks, at most `room` bytes: what still
    /// fits under the client's outbound cap) and parses it into `out`. Returns the plaintext
    /// bytes read.
    pub fn read(&mut self, now: Instant, out: &mut Vec<UpstreamEvent>, room: usize) -> usize {
        const MAX_READS: usize = 4;
        /// Even a nearly full queue reads a little, so a frame header can complete.
        const MIN_READ: usize = 4096;
        self.more = false;
        let mut total = 0;
        let mut room = room.max(MIN_READ);
        for i in 0..MAX_READS {
            let chunk = READ_CHUNK.min(room);
            match self.stream.read_plaintext(&mut self.plaintext, chunk) {
                Ok(ReadOutcome::Data(n)) => {
                    total += n;
                    self.parse(now, out);
                    if self.peer_closed {
                        break;
                    }
                    if n < chunk && !self.stream.is_tls() && !self.stream.has_buffered_plaintext() {
                        // A short read of a plain socket drained it: no EAGAIN read to learn
                        // that (a third of all reads under pipelined load).
                        break;
                    }
                    room = room.saturating_sub(n);
                    if room == 0 {
                        // The loop decides when to read again (not while the client's queue
                        // is at its cap).
                        self.more = true;
                        break;
                    }
                    self.more = i + 1 == MAX_READS;
                }
                Ok(ReadOutcome::WouldBlock) => break,
                Ok(ReadOutcome::Eof) => {
                    self.parse(now, out);
                    if !self.peer_closed && !self.closing {
                        out.push(UpstreamEvent::Failed {
                            reason: Reason::UpstreamClosed,
                        });
                    }
                    self.peer_closed = true;
                    break;
                }
                Err(e) => {
                    tracing::debug!(member = %self.member, error = %e, "upstream read failed");
                    self.peer_closed = true;
                    out.push(UpstreamEvent::Failed {
                        reason: Reason::UpstreamReadFailed,
                    });
                    break;
                }
            }
        }
        // An idle session keeps no read buffer: once every frame is parsed out, the buffer's
        // memory goes with the last payload slice handed on.
        if self.plaintext.is_empty() {
            self.plaintext = BytesMut::new();
        }
        // Pongs to the upstream's pings and our close replies.
        self.encode();
        total
    }

    fn parse(&mut self, now: Instant, out: &mut Vec<UpstreamEvent>) {
        self.session.receive(&mut self.plaintext);
        while let Some(event) = self.session.poll_event() {
            match event {
                Event::Message(m) => out.push(UpstreamEvent::Message(m, now)),
                // Answered by the session itself (pong queued); never shown to the client.
                Event::Ping(_) | Event::Pong(_) => {}
                Event::PeerClosed { code, reason } => {
                    self.peer_closed = true;
                    if !self.closing {
                        out.push(UpstreamEvent::Closed { code, reason });
                    }
                }
                Event::Failed { reason, .. } => {
                    self.peer_closed = true;
                    tracing::debug!(member = %self.member, reason = reason.as_str(), "upstream broke the WebSocket protocol");
                    out.push(UpstreamEvent::Failed {
                        reason: Reason::UpstreamProtocolError,
                    });
                }
            }
        }
    }

    /// A client message for the upstream (masked on the way).
    pub fn forward(&mut self, message: Message) {
        if self.closing || self.session.state() != SessionState::Open {
            return;
        }
        self.session.send(message.kind, message.payload);
        self.encode();
    }

    /// Our close toward the upstream: the client's code when the client closed, else ours.
    pub fn close(&mut self, code: u16, reason: Reason) {
        self.close_with(Some(code), reason.as_str());
    }

    /// Our close toward the upstream, `None` for an empty one (the client's was empty).
    pub fn close_with(&mut self, code: Option<u16>, reason: &str) {
        if self.closing {
            return;
        }
        self.closing = true;
        if self.session.state() == SessionState::Open {
            // 1005/1006 are never sent on the wire: say 1000 instead.
            let code = code.map(|c| {
                if crate::ws::close_code::is_valid_on_wire(c) {
                    c
                } else {
                    1000
                }
            });
            self.session.close_with(code, reason);
        }
        self.encode();
    }

    /// Drops the frames toward the upstream it has not begun to take (the session is closed
    /// for the core's budget: they will not be delivered); one it is in the middle of stays.
    pub fn discard_unstarted(&mut self) {
        self.drain_session();
        self.outbox.discard_unstarted();
    }

    /// The upstream connection broke: nothing more is said to it.
    pub fn abandon(&mut self) {
        self.closing = true;
        self.peer_closed = true;
        self.abandoned = true;
    }

    /// Whether the upstream was given up on (broken, stalled): no wait for it at the end.
    pub fn is_abandoned(&self) -> bool {
        self.abandoned
    }

    /// Moves the session's frames to the outbox (nothing copied), then masks into the write
    /// queue what it has room for.
    fn encode(&mut self) {
        self.drain_session();
        self.feed_write_queue();
    }

    /// Moves the session's frames to the outbox: headers and shared payloads, nothing copied.
    fn drain_session(&mut self) {
        while let Some(frame) = self.session.poll_transmit() {
            self.outbox.push(frame);
        }
    }

    /// Masks queued frames into the upstream's write queue (encrypting them for wss://) while
    /// it holds less than the cap, 64 KiB at a time. The staging buffer is reused between
    /// pieces and freed after a large run, so an idle session keeps none of it.
    fn feed_write_queue(&mut self) {
        const PIECE: usize = 64 * 1024;
        const KEEP: usize = 64 * 1024;
        loop {
            let queued = self.stream.pending_output();
            if self.outbox.is_empty() || queued >= self.max_queued {
                break;
            }
            let room = (self.max_queued - queued).min(PIECE);
            if let Some(out) = self.stream.plain_output() {
                // ws://: the masked copy is the only copy, made in the write queue itself.
                self.outbox.fill(out, room);
                continue;
            }
            self.staging.clear();
            self.outbox.fill(&mut self.staging, room);
            self.stream.queue(&self.staging);
        }
        self.staging.clear();
        if self.staging.capacity() > KEEP {
            self.staging = Vec::new();
        }
    }

    /// Writes what the upstream socket takes now; returns the bytes written. `Err`: the
    /// upstream connection is broken.
    pub fn write_some(&mut self) -> std::io::Result<usize> {
        let mut written = 0;
        loop {
            self.feed_write_queue();
            if self.stream.pending_output() == 0 {
                break;
            }
            match self.stream.write_pending()? {
                0 => break,
                n => written += n,
            }
        }
        Ok(written)
    }
}

/// A request's route in proxy mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub group: usize,
    /// The path after the route's prefix, plus the query, for the member's path.
    pub rest: String,
    pub lossy: bool,
}

/// The route of an admitted request. No route matching: 404.
pub(crate) fn route(upstreams: &Upstreams, request: &UpgradeRequest) -> Result<Route, Refusal> {
    match upstreams.route(&request.path) {
        Some(r) => Ok(Route {
            group: r.group,
            rest: r.rest.to_owned(),
            lossy: r.lossy,
        }),
        None => Err(Refusal::Http {
            status: 404,
            reason: Reason::NoRoute,
            extra_headers: &[],
        }),
    }
}

/// Opens a session's upstream side: a member of the route's group (round robin over the
/// healthy ones whose breaker admits), connected and upgraded within the connect timeout (and
/// until `expired`, the client's handshake deadline, resolves). 503 at once when no member is
/// usable. `peer` names the client in logs.
pub(crate) async fn open(
    upstreams: &Upstreams,
    route: &Route,
    client: &ClientContext<'_>,
    limits: SessionLimits,
    max_queued: usize,
    expired: impl std::future::Future<Output = ()>,
    peer: std::net::SocketAddr,
) -> Result<Relay, Refusal> {
    const RETRY: &[(&str, &str)] = &[("Retry-After", "1")];
    let Some(lease) = upstreams.pick(route.group, Instant::now()) else {
        return Err(Refusal::Http {
            status: 503,
            reason: Reason::UpstreamUnavailable,
            extra_headers: RETRY,
        });
    };
    let member = format!("{}/{}", lease.group, lease.url);
    let request = upstreams.request(&lease.url, &route.rest, client);
    let connected = monoio::select! {
        r = super::connect(lease, &request, upstreams.connect_options()) => Some(r),
        _ = expired => None,
    };
    match connected {
        Some(Ok(stream)) => {
            tracing::debug!(%peer, member, "upstream session open");
            Ok(Relay::new(stream, limits, max_queued, route.lossy, member))
        }
        Some(Err(e)) => {
            tracing::debug!(%peer, member, error = %e, "upstream connect failed");
            // The member answered, but not with a 101 (a 4xx, a 5xx, a bad accept):
            // a bad gateway. No answer in time: a timeout. Anything else: the connect
            // failed. Both of those: unavailable, try again.
            Err(match &e {
                ConnectError::Response(_) => Refusal::Http {
                    status: 502,
                    reason: Reason::UpstreamRefused,
                    extra_headers: &[],
                },
                ConnectError::Timeout(_) => Refusal::Http {
                    status: 503,
                    reason: Reason::UpstreamTimeout,
                    extra_headers: RETRY,
                },
                _ => Refusal::Http {
                    status: 503,
                    reason: Reason::UpstreamConnectFailed,
                    extra_headers: RETRY,
                },
            })
        }
        None => Err(Refusal::Http {
            status: 503,
            reason: Reason::UpstreamTimeout,
            extra_headers: RETRY,
        }),
    }
}
