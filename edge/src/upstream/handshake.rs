//! The upgrade request the edge sends to an upstream (sans-IO); the check of its 101 is
//! [`crate::ws::upstream_101`].
//!
//! What is forwarded is an allow-list, not the client's headers minus a deny-list: the
//! upstream sees `Origin`, `User-Agent`, the one subprotocol the edge selected (never the
//! client's whole list: entries may carry bearer tokens), `X-Forwarded-For/-Proto/-Host` written
//! by the edge (a client's own copies are never trusted), and the identity headers configured
//! in `[upstream.headers]`. Everything else — hop-by-hop headers, the client's WebSocket key and
//! extensions, `Authorization` (the edge verified it; claims travel as headers), cookies, any
//! client copy of a configured header — stays behind. `X-Forwarded-Host` is written only for a
//! `Host` that is `host[:port]` ([`valid_host`]). Because only the edge writes the
//! configured names, a client cannot spoof them even when the feature that fills one has no
//! value for this session.
//!
//! Values from certificates and tokens are written only if they are printable: a control
//! character (CR, LF, NUL…) drops that header rather than let it split the request.

use std::net::IpAddr;

use serde_json::Value;

use super::config::{ForwardHeaders, MemberUrl};
use crate::auth::jwt::VerifiedToken;
use crate::tls::ClientIdentity;
use crate::ws::handshake::UpgradeRequest;
pub use crate::ws::upstream_101::{
    parse_response, ClientHandshake, ResponseError, MAX_RESPONSE_HEADERS,
};
use crate::ws::valid_host;

/// The longest value written for one identity or claim header; longer ones are dropped.
pub const MAX_FORWARDED_VALUE: usize = 4096;

/// What the edge knows about the client whose session is proxied.
#[derive(Debug, Clone, Copy)]
pub struct ClientContext<'a> {
    pub request: &'a UpgradeRequest,
    /// The client's `User-Agent`, if the caller kept it.
    pub user_agent: Option<&'a str>,
    /// The client's address (`X-Forwarded-For`).
    pub peer: IpAddr,
    /// The subprotocol the edge selected for the client (offered upstream alone).
    pub protocol: Option<&'a str>,
    pub identity: Option<&'a ClientIdentity>,
    pub token: Option<&'a VerifiedToken>,
    /// W3C `traceparent` for the member (the edge's upgrade span as parent).
    pub traceparent: Option<&'a str>,
}

/// A handshake under a fresh random `Sec-WebSocket-Key`.
fn fresh_handshake(protocol: Option<&str>) -> ClientHandshake {
    let mut nonce = [0u8; 16];
    // aws-lc's DRBG does not fail once seeded; the key is a nonce, not a secret (RFC 6455
    // §4.1), so even a repeated one would only weaken the proof that the peer speaks
    // WebSocket.
    let _ = aws_lc_rs::rand::fill(&mut nonce);
    ClientHandshake::with_nonce(nonce, protocol)
}

/// A value is written only if it is short and printable (visible ASCII, space, tab, or
/// non-ASCII UTF-8).
fn printable(v: &str) -> bool {
    v.len() <= MAX_FORWARDED_VALUE && v.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn header(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.trim().as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn optional(out: &mut Vec<u8>, name: &Option<String>, value: Option<&str>) {
    if let (Some(name), Some(value)) = (name, value) {
        if printable(value) {
            header(out, name, value);
        }
    }
}

/// A claim as header text: strings as they are, arrays joined by spaces, numbers and booleans
/// as text; objects and null are not forwarded.
pub fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .filter(|i| !i.is_array())
                .filter_map(claim_text)
                .collect();
            Some(parts.join(" "))
        }
        Value::Null | Value::Object(_) => None,
    }
}

/// Writes the upgrade request for `member` at `path` (the member's path with the client's
/// remainder, see [`MemberUrl::join`]) into `out`; returns what the 101 must answer.
pub fn write_request(
    member: &MemberUrl,
    path: &str,
    client: &ClientContext<'_>,
    headers: &ForwardHeaders,
    out: &mut Vec<u8>,
) -> ClientHandshake {
    let hs = fresh_handshake(client.protocol);
    write_request_with(member, path, client, headers, &hs, out);
    hs
}

/// [`write_request`] with a given handshake (tests, retries).
pub fn write_request_with(
    member: &MemberUrl,
    path: &str,
    client: &ClientContext<'_>,
    headers: &ForwardHeaders,
    hs: &ClientHandshake,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    header(out, "Host", &member.host_header());
    out.extend_from_slice(
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n",
    );
    header(out, "Sec-WebSocket-Key", hs.key());
    if let Some(p) = hs.protocol() {
        header(out, "Sec-WebSocket-Protocol", p);
    }
    if let Some(o) = client.request.origin.as_deref().filter(|o| printable(o)) {
        header(out, "Origin", o);
    }
    if let Some(ua) = client.user_agent.filter(|v| printable(v)) {
        header(out, "User-Agent", ua);
    }
    header(out, "X-Forwarded-For", &client.peer.to_string());
    if let Some(tp) = client.traceparent.filter(|v| printable(v)) {
        header(out, "traceparent", tp);
    }
    out.extend_from_slice(b"X-Forwarded-Proto: https\r\n");
    // The parser refuses any other Host; checked again here, where it is written.
    if valid_host(&client.request.host) {
        header(out, "X-Forwarded-Host", &client.request.host);
    }
    if let Some(id) = client.identity {
        optional(out, &headers.subject, id.subject_cn.as_deref());
        if !id.dns.is_empty() {
            optional(out, &headers.san_dns, Some(&id.dns.join(",")));
        }
        optional(out, &headers.spiffe, id.spiffe_id.as_deref());
        optional(out, &headers.fingerprint, Some(&id.fingerprint_sha256));
    }
    if let Some(token) = client.token {
        for (claim, name) in &headers.claims {
            if let Some(text) = token.claims.get(claim).and_then(claim_text) {
                if printable(&text) {
                    header(out, name, &text);
                }
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::handshake::{parse_upgrade, HandshakeLimits};

    const CLIENT_REQ: &str = "GET /md/eurusd?depth=5 HTTP/1.1\r\n\
        Host: edge.example\r\n\
        Upgrade: websocket\r\n\
        Connection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\
        Origin: https://app.example\r\n\
        Sec-WebSocket-Protocol: md.v2, bearer.s3cr3t\r\n\
        Authorization: Bearer s3cr3t\r\n\
        X-Client-Subject: forged\r\n\
        X-Forwarded-For: 6.6.6.6\r\n\r\n";

    fn client_req() -> UpgradeRequest {
        parse_upgrade(CLIENT_REQ.as_bytes(), &HandshakeLimits::default())
            .unwrap()
            .unwrap()
            .0
    }

    fn headers_cfg() -> ForwardHeaders {
        ForwardHeaders {
            subject: Some("x-client-subject".into()),
            san_dns: Some("x-client-san-dns".into()),
            spiffe: Some("x-client-spiffe".into()),
            fingerprint: Some("x-client-cert-sha256".into()),
            claims: [
                ("sub".to_owned(), "x-token-sub".to_owned()),
                ("scope".to_owned(), "x-token-scope".to_owned()),
                ("n".to_owned(), "x-token-n".to_owned()),
                ("obj".to_owned(), "x-token-obj".to_owned()),
                ("evil".to_owned(), "x-token-evil".to_owned()),
            ]
            .into_iter()
            .collect(),
        }
    }

    fn identity() -> ClientIdentity {
        ClientIdentity {
            subject_cn: Some("trader-7".into()),
            subject: "CN=trader-7".into(),
            dns: vec!["a.example".into(), "b.example".into()],
            uris: vec!["spiffe://corp/trader".into()],
            spiffe_id: Some("spiffe://corp/trader".into()),
            spiffe_invalid: false,
            fingerprint_sha256: "ab".repeat(32),
            serial_hex: "01".into(),
            issuer: "CN=ca".into(),
            issuer_der: vec![],
            not_after_unix: 0,
            not_before_unix: 0,
            intermediates: vec![],
        }
    }

    fn token() -> VerifiedToken {
        let claims = serde_json::json!({
            "sub": "user-1",
            "scope": ["md:read", "md:depth", 7, true],
            "n": 42,
            "obj": {"a": 1},
            "evil": "x\r\nX-Injected: 1",
        });
        let serde_json::Value::Object(claims) = claims else {
            unreachable!()
        };
        VerifiedToken {
            sub: Some("user-1".into()),
            jti: None,
            exp: None,
            iat: None,
            nbf: None,
            scopes: vec![],
            token_sha256_hex: String::new(),
            alg: crate::auth::jwt::Alg::Hs256,
            kid: "k".into(),
            claims,
        }
    }

    /// Parses what the edge wrote as an HTTP request: (path, headers lowercased).
    fn parse_written(bytes: &[u8]) -> (String, Vec<(String, String)>) {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        let n = req.parse(bytes).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        (
            req.path.unwrap().to_owned(),
            req.headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8(h.value.to_vec()).unwrap(),
                    )
                })
                .collect(),
        )
    }

    fn get<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
        h.iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn write(
        identity: Option<&ClientIdentity>,
        token: Option<&VerifiedToken>,
    ) -> (ClientHandshake, Vec<u8>) {
        let req = client_req();
        let member = MemberUrl::parse("ws://10.0.0.5:9001/feed").unwrap();
        let ctx = ClientContext {
            request: &req,
            user_agent: Some("probe/1.0"),
            peer: "192.0.2.7".parse().unwrap(),
            protocol: Some("md.v2"),
            identity,
            token,
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        };
        let mut out = Vec::new();
        let hs = write_request(
            &member,
            &member.join("/eurusd?depth=5"),
            &ctx,
            &headers_cfg(),
            &mut out,
        );
        (hs, out)
    }

    #[test]
    fn x_forwarded_host_is_written_only_for_a_valid_host() {
        let member = MemberUrl::parse("ws://10.0.0.5:9001/feed").unwrap();
        for (host, forwarded) in [
            ("edge.example:8443", Some("edge.example:8443")),
            ("[::1]:443", Some("[::1]:443")),
            ("evil.example/admin", None),
            ("a@b", None),
            ("h:99999", None),
        ] {
            let mut req = client_req();
            req.host = host.into();
            let ctx = ClientContext {
                request: &req,
                user_agent: None,
                peer: "192.0.2.7".parse().unwrap(),
                protocol: None,
                identity: None,
                token: None,
                traceparent: None,
            };
            let mut out = Vec::new();
            write_request(&member, "/feed", &ctx, &ForwardHeaders::default(), &mut out);
            let (_, h) = parse_written(&out);
            assert_eq!(
                get(&h, "x-forwarded-host"),
                forwarded.into_iter().collect::<Vec<_>>(),
                "{host}"
            );
        }
    }

    #[test]
    fn request_forwards_the_allow_list_and_identity() {
        let id = identity();
        let tok = token();
        let (hs, out) = write(Some(&id), Some(&tok));
        let (path, h) = parse_written(&out);
        assert_eq!(path, "/feed/eurusd?depth=5");
        assert_eq!(get(&h, "host"), ["10.0.0.5:9001"]);
        assert_eq!(get(&h, "upgrade"), ["websocket"]);
        assert_eq!(get(&h, "connection"), ["Upgrade"]);
        assert_eq!(get(&h, "sec-websocket-version"), ["13"]);
        assert_eq!(get(&h, "sec-websocket-key"), [hs.key()]);
        assert_ne!(
            hs.key(),
            "dGhlIHNhbXBsZSBub25jZQ==",
            "a fresh key, not the client's"
        );
        assert_eq!(get(&h, "sec-websocket-protocol"), ["md.v2"]);
        assert_eq!(get(&h, "origin"), ["https://app.example"]);
        assert_eq!(get(&h, "user-agent"), ["probe/1.0"]);
        assert_eq!(get(&h, "x-forwarded-for"), ["192.0.2.7"]);
        assert_eq!(
            get(&h, "traceparent"),
            ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"]
        );
        assert_eq!(get(&h, "x-forwarded-proto"), ["https"]);
        assert_eq!(get(&h, "x-forwarded-host"), ["edge.example"]);
        assert_eq!(get(&h, "x-client-subject"), ["trader-7"]);
        assert_eq!(get(&h, "x-client-san-dns"), ["a.example,b.example"]);
        assert_eq!(get(&h, "x-client-spiffe"), ["spiffe://corp/trader"]);
        assert_eq!(get(&h, "x-client-cert-sha256"), ["ab".repeat(32).as_str()]);
        assert_eq!(get(&h, "x-token-sub"), ["user-1"]);
        assert_eq!(get(&h, "x-token-scope"), ["md:read md:depth 7 true"]);
        assert_eq!(get(&h, "x-token-n"), ["42"]);
        assert!(get(&h, "x-token-obj").is_empty());
        // A claim with CR/LF is dropped, never split into a second header.
        assert!(get(&h, "x-token-evil").is_empty());
        assert!(get(&h, "x-injected").is_empty());
        for gone in ["authorization", "sec-websocket-extensions", "cookie"] {
            assert!(get(&h, gone).is_empty(), "{gone}");
        }
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("s3cr3t") && !text.contains("forged") && !text.contains("6.6.6.6"));
    }

    #[test]
    fn configured_names_are_never_filled_from_the_client() {
        let (_, out) = write(None, None);
        let (_, h) = parse_written(&out);
        for name in [
            "x-client-subject",
            "x-client-spiffe",
            "x-token-sub",
            "x-client-cert-sha256",
        ] {
            assert!(get(&h, name).is_empty(), "{name}");
        }
        assert_eq!(get(&h, "x-forwarded-for"), ["192.0.2.7"]);
    }

    #[test]
    fn claim_texts() {
        use serde_json::json;
        assert_eq!(claim_text(&json!("a b")), Some("a b".into()));
        assert_eq!(claim_text(&json!(1.5)), Some("1.5".into()));
        assert_eq!(claim_text(&json!(false)), Some("false".into()));
        assert_eq!(
            claim_text(&json!(["x", 1, [2], {"o": 1}])),
            Some("x 1".into())
        );
        assert_eq!(claim_text(&json!(null)), None);
        assert_eq!(claim_text(&json!({"a": 1})), None);
    }

    #[test]
    fn tungstenite_accepts_our_request_and_we_accept_its_101() {
        // tungstenite's server-side handshake is the oracle for both halves.
        use std::io::{Cursor, Read, Write};
        struct Io {
            input: Cursor<Vec<u8>>,
            output: Vec<u8>,
        }
        impl Read for Io {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.input.read(b)
            }
        }
        impl Write for Io {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.output.write(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (hs, req) = write(None, None);
        let io = Io {
            input: Cursor::new(req),
            output: Vec::new(),
        };
        use tungstenite::handshake::server::{ErrorResponse, Request, Response};
        // The error type is tungstenite's callback signature, not ours.
        #[allow(clippy::result_large_err)]
        fn choose(_: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", "md.v2".parse().unwrap());
            Ok(resp)
        }
        let ws = tungstenite::accept_hdr(io, choose).unwrap();
        let io = ws.into_inner();
        let n = parse_response(&io.output, &hs, 4096).unwrap().unwrap();
        assert_eq!(n, io.output.len());
    }
}
