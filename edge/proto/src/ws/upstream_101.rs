//! The check of an upstream's 101, the edge's client side of the upgrade (RFC 6455 §4.1):
//! the key it sent, what the answer must hold, and why an answer is refused.

use base64::Engine as _;

use super::handshake::accept_key_for;

/// The request's key and what the 101 must answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    key: String,
    accept: String,
    protocol: Option<String>,
}

impl ClientHandshake {
    /// The handshake whose `Sec-WebSocket-Key` is `nonce` in base64. The caller draws the
    /// nonce fresh from a CSPRNG for each request (RFC 6455 §4.1); tests give a fixed one.
    pub fn with_nonce(nonce: [u8; 16], protocol: Option<&str>) -> Self {
        let key = base64::engine::general_purpose::STANDARD.encode(nonce);
        let accept = accept_key_for(&key);
        Self {
            key,
            accept,
            protocol: protocol.map(str::to_owned),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }
}

/// Why an upstream's answer to the upgrade was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("upstream answered HTTP {0} instead of 101")]
    Status(u16),
    #[error("malformed HTTP response from upstream: {0}")]
    Malformed(&'static str),
    #[error("upstream response headers exceed {0} bytes")]
    TooLarge(usize),
    #[error("upstream response has too many header fields")]
    TooManyHeaders,
    #[error("upstream 101 without `Upgrade: websocket`")]
    BadUpgrade,
    #[error("upstream 101 without `Connection: Upgrade`")]
    BadConnection,
    #[error("upstream 101 without Sec-WebSocket-Accept")]
    MissingAccept,
    #[error("upstream 101 with a wrong Sec-WebSocket-Accept")]
    BadAccept,
    #[error("upstream chose subprotocol {got:?}, the edge offered {offered:?}")]
    Protocol {
        offered: Option<String>,
        got: Option<String>,
    },
    #[error("upstream 101 enables extensions the edge never offered")]
    UnexpectedExtension,
}

impl ResponseError {
    /// A snake_case reason for counters and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Status(_) => "upstream_status",
            Self::Malformed(_) => "upstream_malformed",
            Self::TooLarge(_) => "upstream_too_large",
            Self::TooManyHeaders => "upstream_too_many_headers",
            Self::BadUpgrade => "upstream_bad_upgrade",
            Self::BadConnection => "upstream_bad_connection",
            Self::MissingAccept => "upstream_missing_accept",
            Self::BadAccept => "upstream_bad_accept",
            Self::Protocol { .. } => "upstream_protocol_mismatch",
            Self::UnexpectedExtension => "upstream_unexpected_extension",
        }
    }

    /// Says something about the member's health (the breaker counts it), as opposed to an
    /// answer about this one request (a 4xx: the member is up and refused this client).
    pub fn is_member_failure(&self) -> bool {
        !matches!(self, Self::Status(400..=499))
    }
}

/// The most header fields read from an upstream's response.
pub const MAX_RESPONSE_HEADERS: usize = 32;

fn tokens<'a>(
    headers: &'a [httparse::Header<'a>],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(move |h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Parses the upstream's answer at the front of `buf`.
///
/// `Ok(None)`: incomplete (only while `buf` is shorter than `max_bytes`).
/// `Ok(Some(n))`: a valid 101; bytes after `n` are the upstream's first frames — keep them.
pub fn parse_response(
    buf: &[u8],
    hs: &ClientHandshake,
    max_bytes: usize,
) -> Result<Option<usize>, ResponseError> {
    let window = &buf[..buf.len().min(max_bytes)];
    let mut storage = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut storage);
    let consumed = match resp.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= max_bytes {
                Err(ResponseError::TooLarge(max_bytes))
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
        Err(httparse::Error::Status) => return Err(ResponseError::Malformed("status line")),
        Err(httparse::Error::Version) => return Err(ResponseError::Malformed("version")),
        Err(_) => return Err(ResponseError::Malformed("headers")),
    };
    let code = resp.code.unwrap_or(0);
    if code != 101 {
        return Err(ResponseError::Status(code));
    }
    if resp.version != Some(1) {
        return Err(ResponseError::Malformed("101 over HTTP/1.0"));
    }
    let headers: &[httparse::Header<'_>] = resp.headers;
    if !tokens(headers, "upgrade").any(|t| t.eq_ignore_ascii_case(b"websocket")) {
        return Err(ResponseError::BadUpgrade);
    }
    if !tokens(headers, "connection").any(|t| t.eq_ignore_ascii_case(b"upgrade")) {
        return Err(ResponseError::BadConnection);
    }
    let mut accepts = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"));
    match (accepts.next(), accepts.next()) {
        (None, _) => return Err(ResponseError::MissingAccept),
        (Some(a), None) if a.value.trim_ascii() == hs.accept.as_bytes() => {}
        _ => return Err(ResponseError::BadAccept),
    }
    let chosen: Vec<&[u8]> = tokens(headers, "sec-websocket-protocol").collect();
    let got = match chosen.as_slice() {
        [] => None,
        [one] => Some(String::from_utf8_lossy(one).into_owned()),
        _ => {
            return Err(ResponseError::Protocol {
                offered: hs.protocol.clone(),
                got: Some(String::from_utf8_lossy(&chosen.join(&b","[..])).into_owned()),
            })
        }
    };
    if got != hs.protocol {
        return Err(ResponseError::Protocol {
            offered: hs.protocol.clone(),
            got,
        });
    }
    if tokens(headers, "sec-websocket-extensions").next().is_some() {
        return Err(ResponseError::UnexpectedExtension);
    }
    Ok(Some(consumed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response_101(hs: &ClientHandshake, extra: &str) -> String {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n{extra}\r\n",
            hs.accept
        )
    }

    #[test]
    fn accepts_a_valid_101_and_keeps_trailing_frames() {
        let hs = ClientHandshake::with_nonce(*b"the sample nonce", Some("md.v2"));
        assert_eq!(hs.key(), "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(hs.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let resp = response_101(&hs, "Sec-WebSocket-Protocol: md.v2\r\n");
        let mut bytes = resp.clone().into_bytes();
        bytes.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
        assert_eq!(parse_response(&bytes, &hs, 4096), Ok(Some(resp.len())));
        // Every strict prefix is incomplete.
        for cut in 0..resp.len() {
            assert_eq!(parse_response(&bytes[..cut], &hs, 4096), Ok(None), "{cut}");
        }
    }

    #[test]
    fn refusals_are_typed() {
        let hs = ClientHandshake::with_nonce([1; 16], None);
        let p = |s: &str| parse_response(s.as_bytes(), &hs, 4096);
        let e = p("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").unwrap_err();
        assert_eq!(e, ResponseError::Status(503));
        assert!(e.is_member_failure());
        let e = p("HTTP/1.1 403 Forbidden\r\n\r\n").unwrap_err();
        assert_eq!(e, ResponseError::Status(403));
        assert!(!e.is_member_failure());
        assert_eq!(e.reason(), "upstream_status");
        let good = response_101(&hs, "");
        assert_eq!(
            p(&good.replace(&hs.accept, "AAAAAAAAAAAAAAAAAAAAAAAAAAA=")),
            Err(ResponseError::BadAccept)
        );
        assert_eq!(
            p(&good.replace(&format!("Sec-WebSocket-Accept: {}\r\n", hs.accept), "")),
            Err(ResponseError::MissingAccept)
        );
        assert_eq!(
            p(&response_101(
                &hs,
                &format!("Sec-WebSocket-Accept: {}\r\n", hs.accept)
            )),
            Err(ResponseError::BadAccept)
        );
        assert_eq!(
            p(&good.replace("Upgrade: websocket", "Upgrade: h2c")),
            Err(ResponseError::BadUpgrade)
        );
        assert_eq!(
            p(&good.replace("Connection: Upgrade", "Connection: close")),
            Err(ResponseError::BadConnection)
        );
        assert_eq!(
            p(&response_101(&hs, "Sec-WebSocket-Protocol: chat\r\n")),
            Err(ResponseError::Protocol {
                offered: None,
                got: Some("chat".into())
            })
        );
        assert_eq!(
            p(&response_101(
                &hs,
                "Sec-WebSocket-Extensions: permessage-deflate\r\n"
            )),
            Err(ResponseError::UnexpectedExtension)
        );
        assert!(matches!(
            p("garbage\r\n\r\n"),
            Err(ResponseError::Malformed(_))
        ));
        assert_eq!(
            p(&good.replace("HTTP/1.1", "HTTP/1.0")),
            Err(ResponseError::Malformed("101 over HTTP/1.0"))
        );

        let offered = ClientHandshake::with_nonce([1; 16], Some("md.v2"));
        let no_proto = response_101(&offered, "");
        assert_eq!(
            parse_response(no_proto.as_bytes(), &offered, 4096),
            Err(ResponseError::Protocol {
                offered: Some("md.v2".into()),
                got: None
            })
        );
    }

    #[test]
    fn size_is_bounded() {
        let hs = ClientHandshake::with_nonce([1; 16], None);
        let big = format!("HTTP/1.1 101 OK\r\nX-Pad: {}\r\n", "a".repeat(5000));
        assert_eq!(
            parse_response(big.as_bytes(), &hs, 4096),
            Err(ResponseError::TooLarge(4096))
        );
        assert_eq!(parse_response(&big.as_bytes()[..4095], &hs, 4096), Ok(None));
        let many: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
        let resp = format!("HTTP/1.1 101 OK\r\n{many}\r\n");
        assert_eq!(
            parse_response(resp.as_bytes(), &hs, 8192),
            Err(ResponseError::TooManyHeaders)
        );
    }
}
