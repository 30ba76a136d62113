//! Upgrade attempts that may be refused: the request, the 101 or the refusal with its JSON
//! reason, and the checks every admission test makes of them.

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{
    cframe, header, read_head, read_to_close, send_all, status_code, upgrade_request_path, within,
    RawWs, Server, OP_TEXT, WAIT,
};

/// The `Sec-WebSocket-Key` of [`ws_request`]; its accept value is [`WS_ACCEPT`].
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// An upgrade request for `target` (`/path?query`) with `Host: 127.0.0.1` and `extra` headers.
pub fn ws_request(target: &str, extra: &[(&str, &str)]) -> String {
    upgrade_request_path(target, "127.0.0.1", WS_KEY, extra)
}

/// A refused upgrade: the status, the head, the body and the reason code its JSON names.
#[derive(Debug)]
pub struct Refused {
    pub status: u16,
    pub head: String,
    pub body: String,
    /// `error` of the JSON body (empty when the body is not that JSON).
    pub reason: String,
    /// Whether the server closed the connection after the response.
    pub closed: bool,
}

/// What an upgrade attempt got.
pub enum Outcome {
    Upgraded { head: String, ws: RawWs },
    Refused(Refused),
}

impl Outcome {
    /// The 101 head and the session; panics with `what` and the response if refused.
    pub fn upgraded(self, what: &str) -> (String, RawWs) {
        match self {
            Outcome::Upgraded { head, ws } => (head, ws),
            Outcome::Refused(r) => panic!(
                "{what}: expected 101, got {}:\n{}{}",
                r.status, r.head, r.body
            ),
        }
    }
    /// The refusal; panics with `what` if the upgrade went through.
    pub fn refused(self, what: &str) -> Refused {
        match self {
            Outcome::Refused(r) => r,
            Outcome::Upgraded { head, .. } => panic!("{what}: expected a refusal, got:\n{head}"),
        }
    }
}

/// Sends `req` and reads the answer: a 101 (the stream becomes a [`RawWs`]) or a refusal with
/// its body, after which the server must close. `Err` when the stream fails before a response
/// head arrives (a TLS alert, a reset, EOF): what a refused client certificate looks like
/// under TLS 1.3, where the client's side of the handshake completes first.
pub async fn try_attempt_over(
    mut tls: TlsStream<TcpStream>,
    req: &str,
) -> std::io::Result<Outcome> {
    within(
        WAIT,
        "write upgrade request",
        send_all(&mut tls, req.as_bytes()),
    )
    .await?;
    let (head, rest) = within(WAIT, "response head", read_head(&mut tls)).await?;
    let status = status_code(&head)
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response head: {head:?}")))?;
    if status == 101 {
        return Ok(Outcome::Upgraded {
            head,
            ws: RawWs::from_parts(tls, rest),
        });
    }
    let len = header(&head, "content-length").and_then(|v| v.parse::<usize>().ok());
    let (more, closed) = read_to_close(&mut tls, WAIT).await;
    let mut body = rest;
    body.extend_from_slice(&more);
    if let Some(len) = len {
        assert!(
            body.len() >= len,
            "refusal body shorter than its Content-Length {len}: {head}{}",
            String::from_utf8_lossy(&body)
        );
        body.truncate(len);
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    let reason = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_default();
    Ok(Outcome::Refused(Refused {
        status,
        head,
        body,
        reason,
        closed,
    }))
}

/// [`try_attempt_over`] that panics when no response head arrives.
pub async fn attempt_over(tls: TlsStream<TcpStream>, req: &str) -> Outcome {
    try_attempt_over(tls, req)
        .await
        .unwrap_or_else(|e| panic!("no response to the upgrade request: {e}\nrequest:\n{req}"))
}

/// One upgrade attempt on a fresh TLS connection to `srv` (its dev CA trusted).
pub async fn attempt(srv: &Server, req: &str) -> Outcome {
    attempt_over(srv.tls().await, req).await
}

/// Expects `req` to be refused with `status` and the JSON reason `reason`, and the connection
/// closed afterwards; returns the refusal for further checks.
pub async fn expect_refused(srv: &Server, req: &str, status: u16, reason: &str) -> Refused {
    let r = attempt(srv, req).await.refused(reason);
    check_refused(&r, status, reason, req);
    r
}

/// The checks of [`expect_refused`] on a refusal already read.
pub fn check_refused(r: &Refused, status: u16, reason: &str, req: &str) {
    assert_eq!(
        (r.status, r.reason.as_str()),
        (status, reason),
        "request:\n{req}\nresponse:\n{}{}",
        r.head,
        r.body
    );
    assert!(
        header(&r.head, "content-type").is_some_and(|v| v.starts_with("application/json")),
        "refusal without a JSON content type:\n{}",
        r.head
    );
    assert!(r.closed, "connection still open after the {status} refusal");
}

/// Expects a 101 with the right accept key; returns the head and the session.
pub async fn expect_upgraded(srv: &Server, req: &str) -> (String, RawWs) {
    let (head, ws) = attempt(srv, req).await.upgraded(req);
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some(WS_ACCEPT),
        "{head}"
    );
    (head, ws)
}

/// Sends a text message on a raw session and expects its echo (the session is live).
pub async fn expect_echo(ws: &mut RawWs, text: &str) {
    ws.send(&cframe(true, OP_TEXT, text.as_bytes())).await;
    assert_eq!(ws.message().await, (OP_TEXT, text.as_bytes().to_vec()));
}
