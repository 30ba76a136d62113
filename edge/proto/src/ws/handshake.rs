//! The HTTP/1.1 upgrade request (RFC 6455 §4.2.1), parsed with `httparse`, and the 101 reply.
//!
//! Status codes: 400 for a malformed or incomplete-in-meaning request, 405 (with `Allow: GET`)
//! for a method other than GET, 426 (with `Sec-WebSocket-Version: 13`) for a missing or
//! unsupported WebSocket version, 431 when the request exceeds the size or header-count limits.

use base64::Engine as _;
use sha1::{Digest, Sha1};

use super::target::{valid_host, RequestTarget, TargetError};

/// The GUID of RFC 6455 §1.3, appended to the client's key before hashing.
pub const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bounds on the upgrade request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// The request line plus headers plus the empty line, in bytes.
    pub max_request_bytes: usize,
    /// The number of header fields.
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        Self {
            max_request_bytes: 8192,
            max_headers: 64,
        }
    }
}

/// A valid WebSocket upgrade request. Its `Debug` leaves credentials out (the Authorization
/// header, subprotocols and the query, which may carry a bearer token).
#[derive(Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The request target, normalised once ([`RequestTarget`]): the path every rule, the
    /// routing, the audit record and the upstream see, and the query. The raw spelling is not
    /// kept.
    pub path: RequestTarget,
    /// `host[:port]`, checked with [`valid_host`].
    pub host: String,
    /// `Sec-WebSocket-Key`, trimmed; decodes to 16 bytes.
    pub key: String,
    pub origin: Option<String>,
    /// `Sec-WebSocket-Protocol` tokens in the client's order of preference.
    pub protocols: Vec<String>,
    /// Every `Sec-WebSocket-Extensions` header value, as sent, in order: the list grammar
    /// ([`crate::ws::extensions`]) splits them (a comma may stand inside a quoted value).
    pub extensions: Vec<String>,
    /// The `Authorization` header (a credential: never logged).
    pub authorization: Option<String>,
    /// The `User-Agent` header (forwarded upstream in proxy mode); `None` when absent, repeated
    /// or not UTF-8.
    pub user_agent: Option<String>,
    /// W3C `traceparent` when sent once and valid; anything else is ignored (the spec's rule),
    /// never refused.
    pub traceparent: Option<crate::trace_context::TraceParent>,
}

impl std::fmt::Debug for UpgradeRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeRequest")
            .field("path", &self.path.path())
            .field("query_bytes", &self.path.query().map(str::len))
            .field("host", &self.host)
            .field("origin", &self.origin)
            .field("protocols", &self.protocols.len())
            .field("extensions", &self.extensions)
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl UpgradeRequest {
    /// `Sec-WebSocket-Accept`: base64(sha1(key + GUID)).
    pub fn accept_key(&self) -> String {
        accept_key_for(&self.key)
    }
}

/// `Sec-WebSocket-Accept` for a given `Sec-WebSocket-Key`.
pub fn accept_key_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Why an upgrade request was refused. Each variant is one precise cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("malformed HTTP request: {0}")]
    Malformed(&'static str),
    #[error("method is not GET")]
    BadMethod,
    #[error("HTTP version is not 1.1")]
    BadVersion,
    /// The request target cannot be normalised (see [`crate::ws::target`]).
    #[error("{0}")]
    BadTarget(TargetError),
    #[error("Host header missing")]
    MissingHost,
    #[error("Host header empty, repeated or not host[:port]")]
    BadHost,
    #[error("Upgrade header missing or without the websocket token")]
    BadUpgradeHeader,
    #[error("Connection header missing or without the upgrade token")]
    BadConnectionHeader,
    #[error("Sec-WebSocket-Key missing")]
    MissingKey,
    #[error("Sec-WebSocket-Key repeated or not base64 of 16 bytes")]
    BadKey,
    #[error("Sec-WebSocket-Version missing")]
    MissingWsVersion,
    #[error("Sec-WebSocket-Version is not 13")]
    UnsupportedWsVersion,
    #[error("a header value is not valid UTF-8")]
    BadHeaderValue,
    #[error("a Sec-WebSocket-Protocol entry is not a token (RFC 7230)")]
    BadSubprotocol,
    #[error("an upgrade request must not carry a body")]
    UnexpectedBody,
    #[error("request headers exceed the size limit")]
    HeadersTooLarge,
    #[error("request has more header fields than allowed")]
    TooManyHeaders,
}

impl HandshakeError {
    /// The HTTP status to answer with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadMethod => 405,
            Self::MissingWsVersion | Self::UnsupportedWsVersion => 426,
            Self::HeadersTooLarge | Self::TooManyHeaders => 431,
            _ => 400,
        }
    }

    /// A snake_case reason code for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed_request",
            Self::BadMethod => "bad_method",
            Self::BadVersion => "bad_version",
            Self::BadTarget(e) => e.reason(),
            Self::MissingHost => "missing_host",
            Self::BadHost => "bad_host",
            Self::BadUpgradeHeader => "bad_upgrade_header",
            Self::BadConnectionHeader => "bad_connection_header",
            Self::MissingKey => "missing_key",
            Self::BadKey => "bad_key",
            Self::MissingWsVersion => "missing_ws_version",
            Self::UnsupportedWsVersion => "unsupported_ws_version",
            Self::BadHeaderValue => "bad_header_value",
            Self::BadSubprotocol => "bad_subprotocol",
            Self::UnexpectedBody => "unexpected_body",
            Self::HeadersTooLarge => "headers_too_large",
            Self::TooManyHeaders => "too_many_headers",
        }
    }

    /// Headers the refusal response must carry.
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::MissingWsVersion | Self::UnsupportedWsVersion => {
                &[("Sec-WebSocket-Version", "13")]
            }
            Self::BadMethod => &[("Allow", "GET")],
            _ => &[],
        }
    }
}

/// Iterates the comma-separated, trimmed, non-empty elements of every header named `name`.
fn list_items<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|item| item.trim_ascii())
        .filter(|item| !item.is_empty())
}

fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    list_items(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

fn single<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Result<Option<&'a [u8]>, ()> {
    let mut it = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
    let first = it.next();
    if it.next().is_some() {
        return Err(());
    }
    Ok(first.map(|h| h.value.trim_ascii()))
}

/// A header sent once and valid UTF-8; `None` when absent, repeated or not UTF-8 (for headers
/// that are ignored, never refused, when unusable).
fn single_utf8<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a str> {
    single(headers, name)
        .ok()
        .flatten()
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// RFC 7230 §3.2.6 `token`: what a subprotocol name is (RFC 6455 §4.1). A bearer token offer
/// (`bearer.` and a JWT: base64url and dots) is one.
fn is_token(v: &[u8]) -> bool {
    !v.is_empty()
        && v.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn utf8(v: &[u8]) -> Result<String, HandshakeError> {
    std::str::from_utf8(v)
        .map(str::to_owned)
        .map_err(|_| HandshakeError::BadHeaderValue)
}

/// Parses an upgrade request at the front of `buf`.
///
/// `Ok(None)`: incomplete, need more bytes (only while `buf.len() < max_request_bytes`).
/// `Ok(Some((req, consumed)))`: bytes after `consumed` are the client's first frames — keep them.
pub fn parse_upgrade(
    buf: &[u8],
    limits: &HandshakeLimits,
) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
    let window = &buf[..buf.len().min(limits.max_request_bytes)];
    let mut headers = vec![httparse::EMPTY_HEADER; limits.max_headers];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_request_bytes {
                Err(HandshakeError::HeadersTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HandshakeError::TooManyHeaders),
        Err(e) => {
            let what = match e {
                httparse::Error::HeaderName => "header name",
                httparse::Error::HeaderValue => "header value",
                httparse::Error::NewLine => "new line",
                httparse::Error::Status => "status",
                httparse::Error::Token => "token",
                httparse::Error::Version => "version",
                _ => "request",
            };
            return Err(HandshakeError::Malformed(what));
        }
    };
    if req.method != Some("GET") {
        return Err(HandshakeError::BadMethod);
    }
    if req.version != Some(1) {
        return Err(HandshakeError::BadVersion);
    }
    let path =
        RequestTarget::parse(req.path.unwrap_or_default()).map_err(HandshakeError::BadTarget)?;
    let headers: &[httparse::Header<'_>] = req.headers;

    let host = match single(headers, "host") {
        Err(()) => return Err(HandshakeError::BadHost),
        Ok(None) => return Err(HandshakeError::MissingHost),
        Ok(Some(h)) => match std::str::from_utf8(h) {
            Ok(h) if valid_host(h) => h.to_owned(),
            _ => return Err(HandshakeError::BadHost),
        },
    };
    if !has_token(headers, "upgrade", "websocket") {
        return Err(HandshakeError::BadUpgradeHeader);
    }
    if !has_token(headers, "connection", "upgrade") {
        return Err(HandshakeError::BadConnectionHeader);
    }
    let key = match single(headers, "sec-websocket-key") {
        Err(()) => return Err(HandshakeError::BadKey),
        Ok(None) => return Err(HandshakeError::MissingKey),
        Ok(Some(k)) => {
            let mut out = [0u8; 18];
            match base64::engine::general_purpose::STANDARD.decode_slice(k, &mut out) {
                Ok(16) => utf8(k)?,
                _ => return Err(HandshakeError::BadKey),
            }
        }
    };
    match single(headers, "sec-websocket-version") {
        Ok(None) => return Err(HandshakeError::MissingWsVersion),
        Ok(Some(v)) if v == b"13" => {}
        _ => return Err(HandshakeError::UnsupportedWsVersion),
    }
    let has_body = headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
    });
    if has_body {
        return Err(HandshakeError::UnexpectedBody);
    }
    let origin = match single(headers, "origin") {
        Ok(o) => o.map(utf8).transpose()?,
        Err(()) => return Err(HandshakeError::Malformed("repeated Origin")),
    };
    let protocols = list_items(headers, "sec-websocket-protocol")
        .map(|p| {
            if is_token(p) {
                utf8(p)
            } else {
                Err(HandshakeError::BadSubprotocol)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Two Authorization headers would let a proxy and the edge disagree on the credential.
    let authorization = match single(headers, "authorization") {
        Ok(a) => a.map(utf8).transpose()?,
        Err(()) => return Err(HandshakeError::Malformed("repeated Authorization")),
    };
    let extensions = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-extensions"))
        .map(|h| utf8(h.value.trim_ascii()))
        .collect::<Result<Vec<_>, _>>()?;
    let user_agent = single_utf8(headers, "user-agent").map(str::to_owned);
    let traceparent =
        single_utf8(headers, "traceparent").and_then(crate::trace_context::TraceParent::parse);
    Ok(Some((
        UpgradeRequest {
            path,
            host,
            key,
            origin,
            protocols,
            extensions,
            authorization,
            user_agent,
            traceparent,
        },
        consumed,
    )))
}

/// Appends the 101 response. `Sec-WebSocket-Protocol` only when `protocol` is `Some`,
/// `Sec-WebSocket-Extensions` only when `extensions` is (what was agreed, exactly).
pub fn write_response_101(
    req: &UpgradeRequest,
    protocol: Option<&str>,
    extensions: Option<&str>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(req.accept_key().as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(p) = protocol {
        out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(e) = extensions {
        out.extend_from_slice(b"Sec-WebSocket-Extensions: ");
        out.extend_from_slice(e.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "GET /chat?x=1 HTTP/1.1\r\n\
        Host: server.example.com\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Origin: http://example.com\r\n\
        Sec-WebSocket-Protocol: chat, superchat\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn parse(s: &str) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
        parse_upgrade(s.as_bytes(), &HandshakeLimits::default())
    }

    fn refuse(s: &str) -> HandshakeError {
        parse(s).expect_err("should be refused")
    }

    fn with(replace: &str, by: &str) -> String {
        assert!(GOOD.contains(replace), "{replace}");
        GOOD.replace(replace, by)
    }

    #[test]
    fn authorization_is_kept_and_never_debug_printed() {
        let raw = b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer s3cr3t\r\nSec-WebSocket-Protocol: app, bearer.t0k3n\r\n\r\n";
        let (req, _) = parse_upgrade(raw, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(req.authorization.as_deref(), Some("Bearer s3cr3t"));
        let debug = format!("{req:?}");
        assert!(
            !debug.contains("s3cr3t") && !debug.contains("t0k3n"),
            "{debug}"
        );
        let twice = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n";
        assert!(parse_upgrade(twice, &HandshakeLimits::default()).is_err());
    }

    #[test]
    fn user_agent_is_kept_once_and_dropped_when_repeated() {
        assert_eq!(parse(GOOD).unwrap().unwrap().0.user_agent, None);
        let one = with(
            "Upgrade: websocket\r\n",
            "Upgrade: websocket\r\nUser-Agent:  bot/1.0 \r\n",
        );
        let (req, _) = parse(&one).unwrap().unwrap();
        assert_eq!(req.user_agent.as_deref(), Some("bot/1.0"));
        let twice = with(
            "Upgrade: websocket\r\n",
            "Upgrade: websocket\r\nUser-Agent: a\r\nuser-agent: b\r\n",
        );
        assert_eq!(parse(&twice).unwrap().unwrap().0.user_agent, None);
    }

    #[test]
    fn rfc_example() {
        let (req, n) = parse(GOOD).unwrap().unwrap();
        assert_eq!(n, GOOD.len());
        assert_eq!(req.path.as_str(), "/chat?x=1");
        assert_eq!((req.path.path(), req.path.query()), ("/chat", Some("x=1")));
        assert_eq!(req.host, "server.example.com");
        assert_eq!(req.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(req.origin.as_deref(), Some("http://example.com"));
        assert_eq!(req.protocols, vec!["chat", "superchat"]);
        assert!(req.extensions.is_empty());
        assert_eq!(req.accept_key(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn response_101() {
        let (req, _) = parse(GOOD).unwrap().unwrap();
        let mut out = Vec::new();
        write_response_101(&req, Some("chat"), None, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        );
        let mut out = Vec::new();
        write_response_101(&req, None, None, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(!s.contains("Sec-WebSocket-Protocol"));
        assert!(!s.contains("Extensions"));
        let mut out = Vec::new();
        write_response_101(
            &req,
            None,
            Some("permessage-deflate; server_no_context_takeover"),
            &mut out,
        );
        let s = String::from_utf8(out).unwrap();
        assert!(s.ends_with(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n"
        ));
        // The response parses as HTTP and tungstenite-style clients accept the key.
        let mut hs = [httparse::EMPTY_HEADER; 8];
        let mut resp = httparse::Response::new(&mut hs);
        assert!(resp.parse(s.as_bytes()).unwrap().is_complete());
        assert_eq!(resp.code, Some(101));
    }

    #[test]
    fn pipelined_frames_are_left_over() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (_, n) = parse_upgrade(&bytes, &HandshakeLimits::default())
            .unwrap()
            .unwrap();
        assert_eq!(n, GOOD.len());
        assert_eq!(&bytes[n..], &[0x81, 0x80, 1, 2, 3, 4]);
    }

    #[test]
    fn incomplete_needs_more() {
        for cut in [0, 1, 10, GOOD.len() - 2, GOOD.len() - 1] {
            assert_eq!(parse(&GOOD[..cut]).unwrap(), None, "cut {cut}");
        }
    }

    #[test]
    fn tokens_case_insensitive_lists_and_repeats() {
        let s = with(
            "Connection: Upgrade\r\n",
            "Connection: keep-alive\r\nconnection: UPGRADE\r\n",
        );
        let s = s.replace("Upgrade: websocket", "upgrade: h2c, WebSocket");
        let s = s.replace(
            "Sec-WebSocket-Protocol: chat, superchat\r\n",
            "Sec-WebSocket-Protocol: chat\r\nsec-websocket-protocol: superchat,\r\n\
             Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo\r\n",
        );
        let (req, _) = parse(&s).unwrap().unwrap();
        assert_eq!(req.protocols, vec!["chat", "superchat"]);
        assert_eq!(
            req.extensions,
            vec!["permessage-deflate; client_max_window_bits, x-foo"]
        );
        let s = with("Connection: Upgrade", "Connection: keep-alive, Upgrade");
        assert!(parse(&s).unwrap().is_some());
    }

    fn check(e: HandshakeError, status: u16, reason: &str) {
        assert_eq!((e.status(), e.reason()), (status, reason), "{e}");
    }

    #[test]
    fn refusals() {
        check(refuse(&with("GET ", "POST ")), 405, "bad_method");
        assert_eq!(
            refuse(&with("GET ", "PUT ")).extra_headers(),
            &[("Allow", "GET")]
        );
        check(refuse(&with("HTTP/1.1", "HTTP/1.0")), 400, "bad_version");
        check(refuse(&with("/chat?x=1", "*")), 400, "bad_path");
        // The target's normalisation refuses through the parser (every reason: ws::target).
        check(
            refuse(&with("/chat?x=1", "/chat#frag")),
            400,
            "fragment_in_target",
        );
        check(
            refuse(&with("/chat?x=1", "/chat?x=1#frag")),
            400,
            "fragment_in_target",
        );
        check(
            refuse(&with("/chat?x=1", "/md/..;/trade")),
            400,
            "path_parameter",
        );
        check(
            refuse(&with("/chat?x=1", "/u/%2e%2e/x")),
            400,
            "path_dot_segment",
        );
        for host in ["a/b", "a@b", "h:", "h:99999", "[::1", "a\\b", "x\"y"] {
            check(refuse(&with("server.example.com", host)), 400, "bad_host");
        }
        for offer in ["chat v2", "chat/1", "{x}", "a:b", "x\"y", "a=b"] {
            check(
                refuse(&with("chat, superchat", &format!("chat, {offer}"))),
                400,
                "bad_subprotocol",
            );
        }
        check(
            refuse(&with("Host: server.example.com\r\n", "")),
            400,
            "missing_host",
        );
        check(
            refuse(&with("Host: server.example.com\r\n", "Host: \r\n")),
            400,
            "bad_host",
        );
        check(
            refuse(&with(
                "Host: server.example.com\r\n",
                "Host: a\r\nHost: b\r\n",
            )),
            400,
            "bad_host",
        );
        check(
            refuse(&with("Upgrade: websocket\r\n", "")),
            400,
            "bad_upgrade_header",
        );
        check(
            refuse(&with("Upgrade: websocket", "Upgrade: h2c")),
            400,
            "bad_upgrade_header",
        );
        check(
            refuse(&with("Connection: Upgrade\r\n", "")),
            400,
            "bad_connection_header",
        );
        check(
            refuse(&with("Connection: Upgrade", "Connection: keep-alive")),
            400,
            "bad_connection_header",
        );
        check(
            refuse(&with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "")),
            400,
            "missing_key",
        );
        check(
            refuse(&with("dGhlIHNhbXBsZSBub25jZQ==", "dGhlIHNhbXBsZQ==")),
            400,
            "bad_key",
        );
        check(
            refuse(&with("dGhlIHNhbXBsZSBub25jZQ==", "!!!notbase64!!!")),
            400,
            "bad_key",
        );
        check(
            refuse(&with(
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
            )),
            400,
            "bad_key",
        );
        let e = refuse(&with("Sec-WebSocket-Version: 13\r\n", ""));
        check(e.clone(), 426, "missing_ws_version");
        assert_eq!(e.extra_headers(), &[("Sec-WebSocket-Version", "13")]);
        let e = refuse(&with("Version: 13", "Version: 8"));
        check(e.clone(), 426, "unsupported_ws_version");
        assert_eq!(e.extra_headers(), &[("Sec-WebSocket-Version", "13")]);
        check(
            refuse(&with(
                "Version: 13\r\n",
                "Version: 13\r\nContent-Length: 5\r\n",
            )),
            400,
            "unexpected_body",
        );
        check(
            refuse("GET / HTTP/1.1\r\nHo st: x\r\n\r\n"),
            400,
            "malformed_request",
        );
        check(refuse("\x01\x02garbage\r\n\r\n"), 400, "malformed_request");
        let mut bad_origin =
            with("Origin: http://example.com", "Origin: http://~.com").into_bytes();
        let at = bad_origin.iter().position(|&b| b == b'~').unwrap();
        bad_origin[at] = 0xff;
        let e = parse_upgrade(&bad_origin, &HandshakeLimits::default()).unwrap_err();
        check(e, 400, "bad_header_value");
        assert!(refuse(&with("GET ", "POST ")).extra_headers().len() == 1);
        assert!(refuse(&with("Host: server.example.com\r\n", ""))
            .extra_headers()
            .is_empty());
    }

    #[test]
    fn size_limits() {
        let limits = HandshakeLimits {
            max_request_bytes: 100,
            max_headers: 64,
        };
        // Incomplete and already at the limit.
        let e = parse_upgrade(&GOOD.as_bytes()[..100], &limits).unwrap_err();
        check(e, 431, "headers_too_large");
        // Just below the limit: still waiting.
        assert_eq!(
            parse_upgrade(&GOOD.as_bytes()[..99], &limits).unwrap(),
            None
        );
        // A complete request, larger than the limit.
        check(
            parse_upgrade(GOOD.as_bytes(), &limits).unwrap_err(),
            431,
            "headers_too_large",
        );
        // Exactly at the limit, followed by frames: accepted.
        let limits = HandshakeLimits {
            max_request_bytes: GOOD.len(),
            max_headers: 64,
        };
        let mut b = GOOD.as_bytes().to_vec();
        b.extend_from_slice(&[0x81, 0x80, 0, 0, 0, 0]);
        assert_eq!(parse_upgrade(&b, &limits).unwrap().unwrap().1, GOOD.len());

        let limits = HandshakeLimits {
            max_request_bytes: 8192,
            max_headers: 6,
        };
        check(
            parse_upgrade(GOOD.as_bytes(), &limits).unwrap_err(),
            431,
            "too_many_headers",
        );
        let limits = HandshakeLimits {
            max_request_bytes: 8192,
            max_headers: 7,
        };
        assert!(parse_upgrade(GOOD.as_bytes(), &limits).unwrap().is_some());
    }

    #[test]
    fn the_target_is_kept_normalised_only() {
        let (req, _) = parse(&with("/chat?x=1", "/API/%61dmin/%7eu?q=%2F"))
            .unwrap()
            .unwrap();
        assert_eq!(req.path.path(), "/API/admin/~u");
        assert_eq!(req.path.query(), Some("q=%2F"));
        // Debug shows the path, not the query (a query token is a credential).
        let raw = with("/chat?x=1", "/feed?access_token=s3cr3t");
        let (req, _) = parse(&raw).unwrap().unwrap();
        let debug = format!("{req:?}");
        assert!(
            debug.contains("/feed") && !debug.contains("s3cr3t"),
            "{debug}"
        );
    }

    #[test]
    fn hosts_and_subprotocol_tokens() {
        for host in ["edge.example:8443", "[::1]:443", "10.0.0.1", "h"] {
            let (req, _) = parse(&with("server.example.com", host)).unwrap().unwrap();
            assert_eq!(req.host, host);
        }
        let jwt = "bearer.eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLV8";
        let (req, _) = parse(&with("chat, superchat", &format!("chat, {jwt}")))
            .unwrap()
            .unwrap();
        assert_eq!(req.protocols, vec!["chat", jwt]);
        let tchars = "!#$%&'*+-.^_`|~09AZaz";
        let (req, _) = parse(&with("chat, superchat", tchars)).unwrap().unwrap();
        assert_eq!(req.protocols, vec![tchars]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn never_panics(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_upgrade(&data, &HandshakeLimits::default());
        }

        #[test]
        fn any_prefix_is_incomplete(cut in 0usize..200) {
            let cut = cut.min(GOOD.len() - 1);
            prop_assert_eq!(parse(&GOOD[..cut]).unwrap(), None);
        }
    }
}
