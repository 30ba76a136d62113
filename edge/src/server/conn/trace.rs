//! The connection's spans (`[telemetry]`): one for its upgrade decision — admitted or refused,
//! with the admission's reason, the identity it saw and the route it took — and, for a session,
//! one for its end (close code, bytes, duration) as the upgrade span's child. Built only when
//! the trace is sampled; handed to the exporter without waiting.

use std::time::Instant;

use crate::auth::admission::Admitted;
use crate::reason::Reason;
use crate::telemetry::{SpanRecord, TraceSpan};
use crate::tls::identity::ClientIdentity;

/// A connection's trace, from its upgrade request on.
#[derive(Debug)]
pub(super) struct ConnTrace {
    pub span: TraceSpan,
    /// When its 101 went out (the session span starts there).
    pub upgraded_at: Option<Instant>,
}

/// What the upgrade span says.
pub(super) struct UpgradeDecision<'a> {
    pub peer: std::net::SocketAddr,
    pub path: String,
    pub identity: Option<&'a ClientIdentity>,
    pub admitted: Option<&'a Admitted>,
    pub allowed: bool,
    pub status: u16,
    pub reason: Reason,
    /// What serves the session once admitted: echo, proxy, pubsub.
    pub app: Option<&'static str>,
}

pub(super) fn upgrade_span(
    span: TraceSpan,
    accepted_at: Instant,
    d: UpgradeDecision<'_>,
) -> SpanRecord {
    let token = d.admitted.and_then(|a| a.token.as_ref());
    let record = SpanRecord::ending_now(span, "wssedge.upgrade", accepted_at.elapsed())
        .attr("client.address", d.peer.ip().to_string())
        .attr("url.path", d.path)
        .attr("wssedge.admitted", d.allowed)
        .attr("http.response.status_code", i64::from(d.status))
        .attr("wssedge.reason", d.reason.as_str())
        .attr_opt("wssedge.app", d.app)
        .attr_opt("enduser.id", token.and_then(|t| t.sub.clone()))
        .attr_opt(
            "wssedge.identity.subject",
            d.identity.map(|i| i.subject.clone()),
        )
        .attr_opt(
            "wssedge.identity.spiffe_id",
            d.identity.and_then(|i| i.spiffe_id.clone()),
        );
    // OpenTelemetry's rule for server spans: a 5xx is the server's error; a 4xx is the
    // client's (the span's status stays unset; the attributes say why).
    if d.status >= 500 {
        SpanRecord {
            error: Some(d.reason.as_str().to_owned()),
            ..record
        }
    } else {
        record
    }
}

pub(super) fn session_span(
    parent: &TraceSpan,
    upgraded_at: Instant,
    path: Option<String>,
    close_code: Option<u16>,
    bytes_in: u64,
    bytes_out: u64,
) -> SpanRecord {
    let elapsed = upgraded_at.elapsed();
    SpanRecord::ending_now(parent.child(), "wssedge.session", elapsed)
        .attr_opt("url.path", path)
        .attr_opt("websocket.close.code", close_code.map(i64::from))
        .attr("wssedge.bytes_in", bytes_in)
        .attr("wssedge.bytes_out", bytes_out)
        .attr("wssedge.duration_ms", elapsed.as_millis() as u64)
}
