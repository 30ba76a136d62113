//! `Host` and `Origin` allow-lists.
//!
//! Entries are exact names or `*.example.com` wildcards, compared case-insensitively, with a
//! trailing dot ignored (`example.com.` is `example.com`):
//!
//! - A wildcard matches one **or more** labels in front of its suffix (`a.example.com`,
//!   `a.b.example.com`) and never the apex `example.com`; put the apex in as well if it is
//!   meant. It must stand alone as the first label and cover at least two labels (`*.com` is
//!   refused as too broad). It never matches an IP address.
//! - IP literals (`192.0.2.1`, `[2001:db8::1]`) are compared as addresses, so `[::1]` and
//!   `[0:0::1]` are the same entry.
//! - Internationalised names are compared as given, in their ASCII (punycode `xn--…`) form:
//!   that is what browsers send. A non-ASCII entry is refused with that hint.
//!
//! Ports. A `Host` entry without a port allows any port; with one, only that port (a `Host`
//! header without a port means 443: the edge only speaks WSS). An `Origin` is a
//! scheme-host-port triple (RFC 6454), so an `Origin` entry without a port means the scheme's
//! default port only (`https://app.example.com` allows `https://app.example.com` and
//! `https://app.example.com:443`, not `:8443`); `scheme://host:*` allows any port. Treating a
//! portless origin entry as "any port" would trust every other site on that host.
//!
//! The `null` origin (sandboxed frames, `file:` pages, some redirects) is refused unless the
//! list contains `null`. An empty list checks nothing; `require_origin` refuses requests
//! without `Origin` (non-browser clients) whatever the list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::Deserialize;

/// An allow-list entry that cannot be used, with the key it sits under: `validate` and
/// `from_config` name the entry and say what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{key}` = {value}: {reason}")]
pub struct OriginConfigError {
    pub key: &'static str,
    pub value: String,
    pub reason: EntryError,
}

impl OriginConfigError {
    fn new(key: &'static str, value: &str, reason: EntryError) -> Self {
        Self {
            key,
            value: value.to_owned(),
            reason,
        }
    }
}

/// What is wrong with one `Host` or `Origin` entry (or header).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("port must be 1..=65535")]
    Port,
    #[error("port must be 1..=65535 or *")]
    PortOrAny,
    #[error("scheme {0} has no default port; give one, or :* for any")]
    NoDefaultPort(String),
    #[error("expected scheme://host[:port] (or null)")]
    NotAnOrigin,
    #[error("bad scheme")]
    BadScheme,
    #[error("an origin has no path, query, fragment or user; only scheme://host[:port]")]
    MoreThanAnOrigin,
    #[error("unclosed [")]
    UnclosedBracket,
    #[error("junk after ]")]
    JunkAfterBracket,
    #[error("an IPv6 address must be in brackets: [2001:db8::1]")]
    BareIpv6,
    #[error("not an IPv6 address inside [ ]")]
    BadIpv6,
    #[error("write internationalised names in punycode (xn--…), as browsers send them")]
    NotPunycode,
    #[error("a wildcard is not a host")]
    WildcardHost,
    #[error("*.<one label> is too broad; name at least two labels (*.example.com)")]
    WildcardTooBroad,
    #[error("a wildcard never covers IP addresses")]
    WildcardIp,
    #[error("empty or over-long host name")]
    NameLength,
    #[error("looks like an IP address; write IPv4 as four decimal parts")]
    NumericTld,
    #[error("empty or over-long label")]
    LabelLength,
    #[error("a wildcard is only allowed as the whole first label: *.example.com")]
    MisplacedWildcard,
    #[error("host names hold letters, digits, '-' and '_' only")]
    NameChar,
}

/// `[origin]`: which `Host` and `Origin` values may upgrade.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginConfig {
    /// `scheme://host[:port|:*]`, `scheme://*.domain[:port|:*]` or `null`. Empty: any.
    #[serde(deserialize_with = "crate::config_list::one_or_many")]
    pub allowed_origins: Vec<String>,
    /// `host[:port]`, `*.domain[:port]`, IPs (`[v6]` in brackets). Empty: any.
    #[serde(deserialize_with = "crate::config_list::one_or_many")]
    pub allowed_hosts: Vec<String>,
    /// Refuse requests that carry no `Origin` header.
    pub require_origin: bool,
}

impl OriginConfig {
    pub fn validate(&self) -> Result<(), OriginConfigError> {
        OriginPolicy::from_config(self).map(|_| ())
    }
}

/// Why a request's `Host` or `Origin` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OriginRefusal {
    #[error("the request has no Origin header and one is required")]
    OriginMissing,
    #[error("Origin is not in allowed_origins (or is malformed)")]
    OriginNotAllowed,
    #[error("Host is not in allowed_hosts (or is malformed)")]
    HostNotAllowed,
}

impl OriginRefusal {
    pub fn reason(self) -> &'static str {
        match self {
            OriginRefusal::OriginMissing => "origin_missing",
            OriginRefusal::OriginNotAllowed => "origin_not_allowed",
            OriginRefusal::HostNotAllowed => "host_not_allowed",
        }
    }

    /// 403 for origins: the page's origin is not trusted. 421 (Misdirected Request) for
    /// hosts: the request reached a server that does not serve that name.
    pub fn status(self) -> u16 {
        match self {
            OriginRefusal::OriginMissing | OriginRefusal::OriginNotAllowed => 403,
            OriginRefusal::HostNotAllowed => 421,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPat {
    Name(String),
    /// The suffix with its leading dot: `.example.com`.
    Wildcard(String),
    Ip(IpAddr),
}

impl HostPat {
    fn matches(&self, host: &HostPat) -> bool {
        match (self, host) {
            (HostPat::Name(a), HostPat::Name(b)) => a == b,
            (HostPat::Wildcard(suffix), HostPat::Name(b)) => {
                b.len() > suffix.len() && b.ends_with(suffix.as_str())
            }
            (HostPat::Ip(a), HostPat::Ip(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPat {
    Any,
    Exact(u16),
    /// Origins only: the scheme's default port.
    Default,
}

#[derive(Debug, Clone)]
struct HostEntry {
    host: HostPat,
    port: PortPat,
}

#[derive(Debug, Clone)]
struct OriginEntry {
    scheme: String,
    host: HostPat,
    port: PortPat,
}

/// The compiled allow-lists. Cheap to query, no allocation beyond lower-casing the header.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    hosts: Vec<HostEntry>,
    origins: Vec<OriginEntry>,
    allow_null: bool,
    require_origin: bool,
}

impl OriginPolicy {
    pub fn from_config(c: &OriginConfig) -> Result<Self, OriginConfigError> {
        let mut p = OriginPolicy {
            require_origin: c.require_origin,
            ..Default::default()
        };
        for e in &c.allowed_hosts {
            let (host, port) = split_host_port(e)
                .map_err(|r| OriginConfigError::new("origin.allowed_hosts", e, r))?;
            let host = parse_host(host, true)
                .map_err(|r| OriginConfigError::new("origin.allowed_hosts", e, r))?;
            let port = match port {
                None => PortPat::Any,
                Some(s) => PortPat::Exact(parse_port(s).ok_or_else(|| {
                    OriginConfigError::new("origin.allowed_hosts", e, EntryError::Port)
                })?),
            };
            p.hosts.push(HostEntry { host, port });
        }
        for e in &c.allowed_origins {
            if e.eq_ignore_ascii_case("null") {
                p.allow_null = true;
                continue;
            }
            let entry = parse_origin_entry(e)
                .map_err(|r| OriginConfigError::new("origin.allowed_origins", e, r))?;
            p.origins.push(entry);
        }
        Ok(p)
    }

    /// Checks `Host` first (a misdirected request is answered as such), then `Origin`.
    pub fn check(&self, host: &str, origin: Option<&str>) -> Result<(), OriginRefusal> {
        self.check_host(host)?;
        self.check_origin(origin)
    }

    pub fn check_host(&self, host: &str) -> Result<(), OriginRefusal> {
        if self.hosts.is_empty() {
            return Ok(());
        }
        let parsed = split_host_port(host).ok().and_then(|(h, port)| {
            let port = match port {
                None => 443,
                Some(p) => parse_port(p)?,
            };
            Some((parse_host(h, false).ok()?, port))
        });
        let Some((h, port)) = parsed else {
            return Err(OriginRefusal::HostNotAllowed);
        };
        let ok = self.hosts.iter().any(|e| {
            e.host.matches(&h)
                && match e.port {
                    PortPat::Any => true,
                    PortPat::Exact(p) => p == port,
                    PortPat::Default => port == 443,
                }
        });
        if ok {
            Ok(())
        } else {
            Err(OriginRefusal::HostNotAllowed)
        }
    }

    pub fn check_origin(&self, origin: Option<&str>) -> Result<(), OriginRefusal> {
        let Some(origin) = origin else {
            return if self.require_origin {
                Err(OriginRefusal::OriginMissing)
            } else {
                Ok(())
            };
        };
        if self.origins.is_empty() && !self.allow_null {
            return Ok(());
        }
        let origin = origin.trim();
        if origin.eq_ignore_ascii_case("null") {
            return if self.allow_null {
                Ok(())
            } else {
                Err(OriginRefusal::OriginNotAllowed)
            };
        }
        let Ok((scheme, host, port)) = parse_origin(origin, false) else {
            return Err(OriginRefusal::OriginNotAllowed);
        };
        let explicit = match port {
            None => None,
            Some(p) => match parse_port(p) {
                Some(p) => Some(p),
                None => return Err(OriginRefusal::OriginNotAllowed),
            },
        };
        let default = default_port(&scheme);
        let ok = self.origins.iter().any(|e| {
            e.scheme == scheme
                && e.host.matches(&host)
                && match e.port {
                    PortPat::Any => true,
                    PortPat::Exact(p) => explicit.or(default) == Some(p),
                    PortPat::Default => explicit.is_none() || explicit == default,
                }
        });
        if ok {
            Ok(())
        } else {
            Err(OriginRefusal::OriginNotAllowed)
        }
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

fn parse_origin_entry(e: &str) -> Result<OriginEntry, EntryError> {
    let (scheme, host, port) = parse_origin(e, true)?;
    let port = match port {
        None => PortPat::Default,
        Some("*") => PortPat::Any,
        Some(p) => PortPat::Exact(parse_port(p).ok_or(EntryError::PortOrAny)?),
    };
    if port == PortPat::Default && default_port(&scheme).is_none() {
        return Err(EntryError::NoDefaultPort(scheme));
    }
    Ok(OriginEntry { scheme, host, port })
}

/// `scheme://host[:port]`, nothing after: a serialised origin (RFC 6454 §6.2).
fn parse_origin(s: &str, entry: bool) -> Result<(String, HostPat, Option<&str>), EntryError> {
    let (scheme, rest) = s.split_once("://").ok_or(EntryError::NotAnOrigin)?;
    let valid_scheme = scheme
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    if !valid_scheme {
        return Err(EntryError::BadScheme);
    }
    if rest.contains(['/', '?', '#', '@']) {
        return Err(EntryError::MoreThanAnOrigin);
    }
    let (host, port) = split_host_port(rest)?;
    let host = parse_host(host, entry)?;
    Ok((scheme.to_ascii_lowercase(), host, port))
}

/// `host[:port]` / `[v6][:port]` → (host, port text).
fn split_host_port(s: &str) -> Result<(&str, Option<&str>), EntryError> {
    if let Some(rest) = s.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or(EntryError::UnclosedBracket)?;
        return match after {
            "" => Ok((&s[..v6.len() + 2], None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((&s[..v6.len() + 2], Some(port))),
                None => Err(EntryError::JunkAfterBracket),
            },
        };
    }
    match s.split_once(':') {
        None => Ok((s, None)),
        Some((h, p)) if !p.contains(':') => Ok((h, Some(p))),
        Some(_) => Err(EntryError::BareIpv6),
    }
}

/// 1..=65535 in plain decimal digits (no sign, no spaces, at most 5 digits).
fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u16>().ok().filter(|&p| p != 0)
}

fn parse_host(h: &str, allow_wildcard: bool) -> Result<HostPat, EntryError> {
    if let Some(v6) = h.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return v6
            .parse::<Ipv6Addr>()
            .map(|a| HostPat::Ip(IpAddr::V6(a)))
            .map_err(|_| EntryError::BadIpv6);
    }
    if !h.is_ascii() {
        return Err(EntryError::NotPunycode);
    }
    let lower = h.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if let Ok(v4) = name.parse::<Ipv4Addr>() {
        return Ok(HostPat::Ip(IpAddr::V4(v4)));
    }
    if let Some(suffix) = name.strip_prefix("*.") {
        if !allow_wildcard {
            return Err(EntryError::WildcardHost);
        }
        dns_name(suffix)?;
        if suffix.split('.').count() < 2 {
            return Err(EntryError::WildcardTooBroad);
        }
        if suffix.parse::<Ipv4Addr>().is_ok() {
            return Err(EntryError::WildcardIp);
        }
        return Ok(HostPat::Wildcard(format!(".{suffix}")));
    }
    dns_name(name)?;
    Ok(HostPat::Name(name.to_owned()))
}

/// Letters, digits, `-` and `_` in non-empty labels of at most 63, at most 253 in all.
fn dns_name(n: &str) -> Result<(), EntryError> {
    if n.is_empty() || n.len() > 253 {
        return Err(EntryError::NameLength);
    }
    // TLDs are never numeric; `1.2.3` or `127.1` would be IP shorthand to some resolvers.
    if n.rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(EntryError::NumericTld);
    }
    for label in n.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(EntryError::LabelLength);
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(if label.contains('*') {
                EntryError::MisplacedWildcard
            } else {
                EntryError::NameChar
            });
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "origin_tests.rs"]
mod tests;
