//! A `ws://` or `wss://` URL the edge connects to: an upstream group's member or a
//! `[[pubsub.feeds]]` feed. One parser, so both take the same spellings.
//!
//! `ws://host[:port][/path][?query]` or `wss://…`. The query depends on the caller: a member's
//! has none (the client's query is appended to the member's path), a feed may want
//! `?channel=…`. Refused: user info (it would end up in logs and is not how the upstream room
//! authenticates), a fragment (never sent on the wire), an IPv6 address without brackets (its
//! last group would read as a port), a port with a sign, and anything that is not printable
//! ASCII.

use std::net::Ipv6Addr;

/// Whether a URL may carry a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryRule {
    Allow,
    Refuse,
}

/// An address, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// wss:// (TLS, through `[upstream.tls]`) or ws://.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The request target: the path, starting with `/`, and the query if any.
    pub target: String,
}

/// Why a URL is refused; each says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsUrlError {
    #[error("the scheme must be ws:// or wss://")]
    Scheme,
    #[error("no query (?…) allowed: the client's query is appended to an upstream member's path")]
    Query,
    #[error("no fragment (#…) allowed: it is never sent")]
    Fragment,
    #[error("no user info (user@) allowed")]
    UserInfo,
    #[error("the path and query must be printable ASCII without spaces (percent-encode the rest)")]
    Target,
    #[error("unclosed '[' in an IPv6 host")]
    UnclosedBracket,
    #[error("{host:?} is not an IPv6 address")]
    NotIpv6 { host: String },
    #[error("junk after ']'; write [v6]:port")]
    AfterBracket,
    #[error("an IPv6 address must be in brackets: ws://[2001:db8::1]:9100/")]
    BareIpv6,
    #[error("the host is empty")]
    EmptyHost,
    #[error("{host:?} is not a valid host name (letters, digits, '-', '.', '_'; IPv6 in [ ])")]
    HostName { host: String },
    #[error("port {port:?} is not 1-65535")]
    Port { port: String },
}

/// Longest DNS name (RFC 1035), in its dotted text form.
const MAX_HOST_BYTES: usize = 253;

impl WsUrl {
    pub fn parse(url: &str, query: QueryRule) -> Result<WsUrl, WsUrlError> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("wss://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("ws://") {
            (false, r)
        } else {
            return Err(WsUrlError::Scheme);
        };
        if rest.contains('#') {
            return Err(WsUrlError::Fragment);
        }
        if query == QueryRule::Refuse && rest.contains('?') {
            return Err(WsUrlError::Query);
        }
        let split = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(split);
        if authority.contains('@') {
            return Err(WsUrlError::UserInfo);
        }
        if target.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(WsUrlError::Target);
        }
        let target = if target.starts_with('/') {
            target.to_owned()
        } else {
            format!("/{target}")
        };
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let end = r.find(']').ok_or(WsUrlError::UnclosedBracket)?;
            let host = &r[..end];
            if host.parse::<Ipv6Addr>().is_err() {
                return Err(WsUrlError::NotIpv6 {
                    host: host.to_owned(),
                });
            }
            let port = match &r[end + 1..] {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or(WsUrlError::AfterBracket)?),
            };
            (host, port)
        } else {
            if authority.matches(':').count() > 1 {
                return Err(WsUrlError::BareIpv6);
            }
            let (host, port) = match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            };
            if host.is_empty() {
                return Err(WsUrlError::EmptyHost);
            }
            let name_ok = host.len() <= MAX_HOST_BYTES
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            if !name_ok {
                return Err(WsUrlError::HostName {
                    host: host.to_owned(),
                });
            }
            (host, port)
        };
        let port = match port {
            None if tls => 443,
            None => 80,
            // Digits only: `u16::from_str` would also take `+80`.
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => n,
                _ => return Err(WsUrlError::Port { port: p.to_owned() }),
            },
        };
        Ok(WsUrl {
            tls,
            host: host.to_owned(),
            port,
            target,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As a feed takes it (a query allowed).
    fn parse(u: &str) -> Result<WsUrl, WsUrlError> {
        WsUrl::parse(u, QueryRule::Allow)
    }

    #[test]
    fn a_query_is_refused_where_the_caller_says_so() {
        for u in ["ws://x/?q", "ws://x?q", "wss://x/a?"] {
            assert_eq!(
                WsUrl::parse(u, QueryRule::Refuse),
                Err(WsUrlError::Query),
                "{u}"
            );
            assert!(parse(u).is_ok(), "{u}");
        }
        assert_eq!(
            WsUrl::parse("ws://x/#f", QueryRule::Refuse),
            Err(WsUrlError::Fragment)
        );
    }

    fn url(tls: bool, host: &str, port: u16, target: &str) -> WsUrl {
        WsUrl {
            tls,
            host: host.into(),
            port,
            target: target.into(),
        }
    }

    #[test]
    fn plain_and_tls_feeds_parse_with_default_ports() {
        assert_eq!(
            parse("ws://127.0.0.1:9100/feed"),
            Ok(url(false, "127.0.0.1", 9100, "/feed"))
        );
        assert_eq!(
            parse("wss://feed.example.com"),
            Ok(url(true, "feed.example.com", 443, "/"))
        );
        assert_eq!(
            parse("ws://feed?channel=all"),
            Ok(url(false, "feed", 80, "/?channel=all"))
        );
        assert_eq!(
            parse("wss://[::1]:8443/md?x=1"),
            Ok(url(true, "::1", 8443, "/md?x=1"))
        );
        assert_eq!(
            parse("ws://[2001:db8::1]/"),
            Ok(url(false, "2001:db8::1", 80, "/"))
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let cases = [
            ("http://feed/", WsUrlError::Scheme),
            ("WS://feed/", WsUrlError::Scheme),
            ("feed:9100", WsUrlError::Scheme),
            ("ws://feed/#x", WsUrlError::Fragment),
            ("ws://user:pw@feed/", WsUrlError::UserInfo),
            ("ws://feed/a b", WsUrlError::Target),
            ("ws://feed/\u{e9}", WsUrlError::Target),
            ("ws://[::1/", WsUrlError::UnclosedBracket),
            ("ws://[::1]x/", WsUrlError::AfterBracket),
            ("ws://::1/", WsUrlError::BareIpv6),
            ("ws:///feed", WsUrlError::EmptyHost),
            ("ws://:80/feed", WsUrlError::EmptyHost),
        ];
        for (u, e) in cases {
            assert_eq!(parse(u), Err(e), "{u}");
        }
        assert!(matches!(
            parse("ws://[1.2.3.4]/"),
            Err(WsUrlError::NotIpv6 { .. })
        ));
        for host in ["ws://fe ed/", "ws://fe%64/", "ws://a\"b/"] {
            assert!(
                matches!(parse(host), Err(WsUrlError::HostName { .. })),
                "{host}"
            );
        }
        for port in ["0", "65536", "+80", "", "80a", "-1"] {
            assert_eq!(
                parse(&format!("ws://feed:{port}/")),
                Err(WsUrlError::Port { port: port.into() }),
                "{port}"
            );
        }
        let long = format!("ws://{}/", "a".repeat(MAX_HOST_BYTES + 1));
        assert!(matches!(parse(&long), Err(WsUrlError::HostName { .. })));
    }
}
