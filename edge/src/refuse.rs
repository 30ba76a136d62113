//! The one refusal path.
//!
//! Every connection the edge turns away or closes for cause goes through [`Refusal::record`]:
//! a [`Reason`] (its label is stable: dashboards and the audit trail key on it), a counter, a
//! log line, an audit record, and what the client is told — nothing before TLS, a TLS alert, an HTTP
//! status before the upgrade, or a close code after it.

use std::net::SocketAddr;

use crate::audit::AuditSink;
use crate::metrics::{CoreMetrics, Side};
use crate::reason::Reason;

/// Why and how a connection is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Closed with nothing sent: right after accept, before any TLS work (connection or
    /// handshake limits), or when the client can no longer be written to (write timeout).
    Silent { reason: Reason },
    /// The TLS handshake failed or timed out; any alert rustls queued is flushed first.
    Tls { reason: Reason },
    /// The upgrade request was refused with an HTTP status; the connection then closes.
    Http {
        status: u16,
        reason: Reason,
        extra_headers: &'static [(&'static str, &'static str)],
    },
    /// An upgraded connection is closed by the edge with a WebSocket close code.
    Close { code: u16, reason: Reason },
}

impl Refusal {
    pub fn reason(&self) -> Reason {
        match self {
            Refusal::Silent { reason }
            | Refusal::Tls { reason }
            | Refusal::Http { reason, .. }
            | Refusal::Close { reason, .. } => *reason,
        }
    }

    /// Counts and logs the refusal (its audit record: [`Refusal::audit_event`]).
    pub fn record(&self, metrics: &CoreMetrics, peer: SocketAddr) {
        metrics.refusal(self.reason());
        match self {
            Refusal::Silent { reason } => {
                let reason = reason.as_str();
                tracing::debug!(%peer, reason, "connection closed without a word")
            }
            Refusal::Tls { reason } => {
                metrics.handshake(false, *reason);
                let reason = reason.as_str();
                tracing::debug!(%peer, reason, "TLS handshake refused")
            }
            Refusal::Http { status, reason, .. } => {
                metrics.handshake(false, *reason);
                let reason = reason.as_str();
                tracing::debug!(%peer, status, reason, "upgrade refused")
            }
            Refusal::Close { code, reason } => {
                metrics.close_code(*code, Side::Server);
                let reason = reason.as_str();
                tracing::debug!(%peer, code, reason, "connection closed by the edge")
            }
        }
    }

    /// The audit record of this refusal (the upgrade's own record, with who and what, is
    /// written by the connection).
    pub fn audit_event(&self, peer: SocketAddr) -> crate::audit::AuditEvent {
        use crate::audit::AuditEvent;
        let peer = peer.to_string();
        match self {
            Refusal::Silent { reason } => AuditEvent::Refusal {
                peer,
                reason: reason.as_str().to_owned(),
                status: None,
                code: None,
            },
            Refusal::Tls { reason } => AuditEvent::TlsFailure {
                peer,
                reason: reason.as_str().to_owned(),
            },
            Refusal::Http { status, reason, .. } => AuditEvent::Refusal {
                peer,
                reason: reason.as_str().to_owned(),
                status: Some(*status),
                code: None,
            },
            Refusal::Close { code, reason } => AuditEvent::Refusal {
                peer,
                reason: reason.as_str().to_owned(),
                status: None,
                code: Some(*code),
            },
        }
    }

    /// The HTTP response for an [`Refusal::Http`], `None` for the others.
    pub fn http_response(&self) -> Option<Vec<u8>> {
        match self {
            Refusal::Http {
                status,
                reason,
                extra_headers,
            } => Some(http_response(*status, reason.as_str(), extra_headers)),
            _ => None,
        }
    }
}

/// Where a core keeps what a refusal leaves: its counters and its audit trail. The core
/// implements it; this room needs no more of the core than that.
pub(crate) trait RefusalRecorder {
    fn metrics(&self) -> &CoreMetrics;
    fn audit(&self) -> &AuditSink;
}

impl<T: RefusalRecorder> RefusalRecorder for std::rc::Rc<T> {
    fn metrics(&self) -> &CoreMetrics {
        (**self).metrics()
    }
    fn audit(&self) -> &AuditSink {
        (**self).audit()
    }
}

impl Refusal {
    /// The one refusal path on a core: the counter and log line, and the audit record.
    pub(crate) fn record_on(&self, core: &impl RefusalRecorder, peer: SocketAddr) {
        self.record(core.metrics(), peer);
        core.audit().record(self.audit_event(peer));
    }

    /// [`Refusal::record_on`] for a connection turned away at accept: always counted, but while
    /// the audit queue is above its mark the record is folded into the core's refusal summary
    /// ([`AuditSink::refused_at_accept`]), so a flood against a stalled trail cannot grow it.
    pub(crate) fn record_at_accept(&self, core: &impl RefusalRecorder, peer: SocketAddr) {
        self.record(core.metrics(), peer);
        core.audit()
            .refused_at_accept(peer, self.reason(), || self.audit_event(peer));
    }
}

/// The standard reason phrase of the statuses the edge sends.
pub fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        421 => "Misdirected Request",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// A complete HTTP/1.1 refusal: status, extra headers, `Connection: close` and a short JSON body
/// naming the reason code (never a secret).
pub fn http_response(status: u16, reason: &str, extra_headers: &[(&str, &str)]) -> Vec<u8> {
    let body = format!("{{\"error\":\"{reason}\"}}\n");
    let mut out = format!("HTTP/1.1 {status} {}\r\n", status_text(status));
    for (name, value) in extra_headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("Content-Type: application/json\r\nConnection: close\r\n");
    out.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_refusal_carries_status_headers_and_reason() {
        let r = Refusal::Http {
            status: 426,
            reason: Reason::UnsupportedWsVersion,
            extra_headers: &[("Sec-WebSocket-Version", "13")],
        };
        let text = String::from_utf8(r.http_response().unwrap()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Connection: close"));
        assert!(text.ends_with("{\"error\":\"unsupported_ws_version\"}\n"));
        let body_len = text.split("\r\n\r\n").nth(1).unwrap().len();
        assert!(text.contains(&format!("Content-Length: {body_len}\r\n")));
    }

    #[test]
    fn record_counts_by_reason_and_close_code() {
        let m = CoreMetrics::new(0, 0);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Refusal::Close {
            code: 1013,
            reason: Reason::BufferBudget,
        }
        .record(&m, peer);
        Refusal::Silent {
            reason: Reason::MaxConnections,
        }
        .record(&m, peer);
        assert_eq!(m.refusals_of("buffer_budget"), 1);
        assert_eq!(m.refusals_of("max_connections"), 1);
        assert!(Refusal::Tls {
            reason: Reason::NotTls
        }
        .http_response()
        .is_none());
    }
}
