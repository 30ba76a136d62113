//! The upgrade request's target, normalised once (sans-IO): the one path every path rule, the
//! routing, the audit record and the forwarded request see, and the `Host` authority.
//!
//! Upstreams disagree about paths: Tomcat, Jetty and Spring read `..;` as `..` and drop
//! `;parameters`, many servers percent-decode before they route, some treat `\` as `/`, merge
//! `//`, or match case-insensitively. A rule that checks the raw path can be stepped around by
//! any spelling an upstream resolves differently. So the edge normalises the path here, once,
//! and refuses whatever it cannot normalise to one unambiguous form:
//!
//! - a percent-encoded unreserved character (RFC 3986: letters, digits, `-._~`) is decoded, as
//!   RFC 3986 §6.2.2.2 normalises: `/api/%61dmin` is `/api/admin`;
//! - other escapes of printable ASCII stay encoded, in uppercase hex (`%2c` → `%2C`): a
//!   reserved character and its escape are not the same to every upstream, so neither is
//!   turned into the other on the way;
//! - the path is ASCII: an escaped byte above 0x7F is refused, so no upstream's Unicode case
//!   mapping (Java's `equalsIgnoreCase` reads `ı` as `I`), best-fit or NFKC folding can make a
//!   protected path out of one the rules did not see;
//! - refused (400), with the reason [`TargetError::reason`] names:
//!   an encoded `/`, `\`, `;`, `?` or `#` (`path_encoded_delimiter`), `%25`
//!   (`path_double_encoding`), an encoded control byte (`path_control_byte`), an encoded space
//!   (`path_encoded_space`: trimmed by some matchers, `/trade%20` read as `/trade`), an escaped
//!   non-ASCII byte (`path_non_ascii`), a bad escape (`path_bad_escape`), `;`
//!   (`path_parameter`), `\` (`path_backslash`), an empty segment (`//`) but the last
//!   (`path_empty_segment`), a `.` or `..` segment however spelled (`path_dot_segment`), a `#`
//!   anywhere (`fragment_in_target`), any other byte RFC 3986 does not allow in a path, or a
//!   non-ASCII byte in the query (`bad_target_char`), and a target that is not origin-form
//!   (`bad_path`);
//! - case is kept: the upstream receives the path in the client's case, and rules and routes
//!   ([`PathPrefix`]) match ASCII-case-insensitively, so `/Trade` falls under a `/trade` rule.
//!   Prefixes are written with unreserved characters and `/` only, so no escape kept in a path
//!   can spell one of their segments.
//!
//! The query is kept as sent (its parameters are the application's), apart from a `#`.

use std::fmt;

/// A request target in normal form: the path (see the module documentation) and the query.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestTarget {
    /// The normalised path, then `?` and the query when there is one.
    text: String,
    /// Where the path ends in `text`.
    path_len: usize,
}

/// Why a request target was refused. Every variant is answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("request target is not an absolute path")]
    NotOriginForm,
    #[error("request target carries a #fragment")]
    Fragment,
    #[error("request target has a byte RFC 3986 does not allow there")]
    BadChar,
    #[error("path has a malformed percent-escape, or escaped bytes that are not UTF-8")]
    BadEscape,
    #[error("path has an encoded control byte")]
    ControlByte,
    #[error("path has an encoded space")]
    EncodedSpace,
    #[error("path has an escaped non-ASCII byte")]
    NonAscii,
    #[error("path has an encoded '%' (double encoding)")]
    DoubleEncoding,
    #[error("path has an encoded '/', '\\', ';', '?' or '#'")]
    EncodedDelimiter,
    #[error("path has a ';' parameter")]
    Parameter,
    #[error("path has a backslash")]
    Backslash,
    #[error("path has an empty segment ('//')")]
    EmptySegment,
    #[error("path has a '.' or '..' segment")]
    DotSegment,
}

impl TargetError {
    /// The stable reason code (counters, audit records, the JSON body).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotOriginForm => "bad_path",
            Self::Fragment => "fragment_in_target",
            Self::BadChar => "bad_target_char",
            Self::BadEscape => "path_bad_escape",
            Self::ControlByte => "path_control_byte",
            Self::EncodedSpace => "path_encoded_space",
            Self::NonAscii => "path_non_ascii",
            Self::DoubleEncoding => "path_double_encoding",
            Self::EncodedDelimiter => "path_encoded_delimiter",
            Self::Parameter => "path_parameter",
            Self::Backslash => "path_backslash",
            Self::EmptySegment => "path_empty_segment",
            Self::DotSegment => "path_dot_segment",
        }
    }

    /// Every variant, for tests that pin the reasons.
    pub const ALL: [TargetError; 13] = [
        Self::NotOriginForm,
        Self::Fragment,
        Self::BadChar,
        Self::BadEscape,
        Self::ControlByte,
        Self::EncodedSpace,
        Self::NonAscii,
        Self::DoubleEncoding,
        Self::EncodedDelimiter,
        Self::Parameter,
        Self::Backslash,
        Self::EmptySegment,
        Self::DotSegment,
    ];
}

/// RFC 3986 unreserved, sub-delims but `;`, `:` and `@`: what a path segment may hold as
/// itself.
fn segment_char(b: u8) -> bool {
    unreserved(b) || b"!$&'()*+,=:@".contains(&b)
}

/// RFC 3986 unreserved: what an escape is decoded to (and all a configured prefix may hold).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~".contains(&b)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn push_escaped(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 15)] as char);
}

/// Appends the normal form of one path segment (without its `/`) to `out`.
fn normalise_segment(seg: &[u8], out: &mut String) -> Result<(), TargetError> {
    // The bytes the segment stands for, to check that escaped bytes are UTF-8 and to spot a
    // dot segment however it was spelled.
    let mut decoded = Vec::with_capacity(seg.len());
    let mut i = 0;
    while i < seg.len() {
        let b = seg[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    seg.get(i + 1).copied().and_then(hex_value),
                    seg.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(TargetError::BadEscape);
                };
                let v = hi << 4 | lo;
                match v {
                    b'%' => return Err(TargetError::DoubleEncoding),
                    0..=0x1f | 0x7f => return Err(TargetError::ControlByte),
                    b' ' => return Err(TargetError::EncodedSpace),
                    0x80..=0xff => return Err(TargetError::NonAscii),
                    b'/' | b'\\' | b';' | b'?' | b'#' => return Err(TargetError::EncodedDelimiter),
                    v if unreserved(v) => out.push(v as char),
                    v => push_escaped(out, v),
                }
                decoded.push(v);
                i += 3;
            }
            b';' => return Err(TargetError::Parameter),
            b'\\' => return Err(TargetError::Backslash),
            b if segment_char(b) => {
                out.push(b as char);
                decoded.push(b);
                i += 1;
            }
            _ => return Err(TargetError::BadChar),
        }
    }
    if decoded == b"." || decoded == b".." {
        return Err(TargetError::DotSegment);
    }
    Ok(())
}

impl RequestTarget {
    /// Normalises an origin-form request target (`/path?query`), or says why it cannot.
    pub fn parse(raw: &str) -> Result<RequestTarget, TargetError> {
        if !raw.starts_with('/') {
            return Err(TargetError::NotOriginForm);
        }
        // RFC 6455 §3: a WebSocket URI has no fragment; a client never sends one.
        if raw.contains('#') {
            return Err(TargetError::Fragment);
        }
        let (path, query) = match raw.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (raw, None),
        };
        let mut text = String::with_capacity(raw.len());
        let mut segments = path[1..].split('/').peekable();
        while let Some(seg) = segments.next() {
            text.push('/');
            normalise_segment(seg.as_bytes(), &mut text)?;
            // `/a/` (a directory) is fine; `//a` or `/a//b` is read as `/a` or `/a/b` by
            // servers that merge slashes.
            if seg.is_empty() && segments.peek().is_some() {
                return Err(TargetError::EmptySegment);
            }
        }
        let path_len = text.len();
        if let Some(q) = query {
            if !q.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(TargetError::BadChar);
            }
            text.push('?');
            text.push_str(q);
        }
        Ok(RequestTarget { text, path_len })
    }

    /// The normalised path.
    pub fn path(&self) -> &str {
        &self.text[..self.path_len]
    }

    /// The query (after `?`), as the client sent it.
    pub fn query(&self) -> Option<&str> {
        self.text.get(self.path_len + 1..)
    }

    /// The normalised path and the query: what the upstream is asked for (after the route's
    /// prefix is replaced and a query token taken out).
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for RequestTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for RequestTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.text, f)
    }
}

/// A configured path prefix (identity rules, scope rules, routes): a normal path of unreserved
/// characters and `/`, matched on segment boundaries and ASCII-case-insensitively. `/api`
/// covers `/api`, `/API/x` and `/api?q`, not `/apiary`; a prefix ending in `/` covers
/// everything below it (and, for a rule, the bare path too: see [`PathPrefix::covers_bare`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPrefix(String);

impl PathPrefix {
    /// Why a configured prefix is refused (for the config error).
    pub const REQUIREMENT: &'static str = "must be a plain path starting with '/' of letters, \
        digits, '-', '.', '_', '~' and '/': no query, fragment, %-escapes, other punctuation, \
        empty segments ('//') or dot segments";

    /// Checks a configured prefix: in normal form, of unreserved characters and `/` only (so
    /// no escape a normal path keeps can spell one of its segments).
    pub fn parse(prefix: &str) -> Result<PathPrefix, &'static str> {
        let plain = prefix.bytes().all(|b| b == b'/' || unreserved(b));
        match RequestTarget::parse(prefix) {
            Ok(t) if plain && t.query().is_none() && t.as_str() == prefix => {
                Ok(PathPrefix(prefix.to_owned()))
            }
            _ => Err(Self::REQUIREMENT),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether two prefixes cover the same paths (they differ in case only).
    pub fn same_as(&self, other: &PathPrefix) -> bool {
        self.0.eq_ignore_ascii_case(&other.0)
    }

    /// The rest of `path` after this prefix when the prefix covers it: empty, or starting with
    /// `/` (for a prefix ending in `/`, the rest keeps that slash).
    pub fn strip<'a>(&self, path: &'a str) -> Option<&'a str> {
        let p = self.0.as_str();
        let head = path.get(..p.len())?;
        if !head.eq_ignore_ascii_case(p) {
            return None;
        }
        let rest = &path[p.len()..];
        if p.ends_with('/') {
            return Some(&path[p.len() - 1..]);
        }
        (rest.is_empty() || rest.starts_with('/')).then_some(rest)
    }

    /// Whether this prefix covers `path`.
    pub fn covers(&self, path: &str) -> bool {
        self.strip(path).is_some()
    }

    /// Whether this is a directory prefix (`/admin/`) and `path` its bare name (`/admin`),
    /// which many servers serve as the directory (Spring's `/admin/**`, Express without strict
    /// routing). A rule on `/admin/` must cover `/admin` too, unless a rule on `/admin` itself
    /// says otherwise: rule lookups try [`covers`](Self::covers) on every rule first.
    pub fn covers_bare(&self, path: &str) -> bool {
        self.0
            .strip_suffix('/')
            .is_some_and(|dir| dir.len() > 1 && dir.eq_ignore_ascii_case(path))
    }
}

impl fmt::Display for PathPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `host` is a valid `Host` value: `host[:port]`, the host a DNS name (letters,
/// digits, `-`, `_`, `.`; not empty) or an IPv4 address, or a bracketed IPv6 address; the port
/// 1 to 65535. Narrower than RFC 3986's reg-name on purpose: escapes and sub-delims (`%2F`,
/// `,`) in a Host are what upstreams that decode `X-Forwarded-Host` or split it as a list
/// would read differently.
pub fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after {
            "" => return true,
            p => match p.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return false,
            },
        }
    } else {
        match host.rsplit_once(':') {
            Some((n, p)) => (Some(n), Some(p)),
            None => (Some(host), None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
        if port.parse::<u32>().map_or(true, |p| p == 0 || p > 65535) {
            return false;
        }
    }
    let Some(name) = name else {
        return true;
    };
    // An IPv4 address is a DNS-like name too.
    !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

#[cfg(test)]
#[path = "target_tests.rs"]
mod tests;
