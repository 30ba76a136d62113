//! `[upstream]` and `[[routes]]`: where proxied sessions go, validated once at load.
//!
//! A route maps a path prefix to a group of members; the longest matching prefix wins, on a
//! segment boundary and ASCII-case-insensitively (a [`PathPrefix`]: `/md` matches `/md`, `/MD`,
//! `/md/x` and `/md?x`, never `/mdx`). The client's path after the prefix and its query are
//! appended to the member's path. The path is the upgrade parser's normalised one
//! ([`RequestTarget`]): dot segments, encoded separators and the other spellings an upstream
//! could resolve into a path the route never meant to expose are refused before routing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config_error::ConfigError;
use crate::ws::{PathPrefix, RequestTarget};
use wssedge_proto::ws_url::{QueryRule, WsUrl};

/// The `[upstream]` section.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// TCP connect + TLS handshake + upgrade to one member, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How often every member is checked (TCP connect, plus a TLS handshake for wss://).
    pub health_interval_ms: u64,
    pub health_timeout_ms: u64,
    /// Consecutive connect failures that open a member's breaker.
    pub breaker_failures: u32,
    /// How long an open breaker refuses before it lets one probe through (half-open).
    pub breaker_open_ms: u64,
    /// Trust and client certificate for wss:// members.
    pub tls: Option<UpstreamTls>,
    /// Headers the edge fills for the upstream (and always strips from the client's request).
    pub headers: ForwardHeaders,
    pub groups: Vec<GroupConfig>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 1000,
            health_interval_ms: 1000,
            health_timeout_ms: 500,
            breaker_failures: 5,
            breaker_open_ms: 2000,
            tls: None,
            headers: ForwardHeaders::default(),
            groups: Vec::new(),
        }
    }
}

/// `[upstream.tls]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM CA certificates the members' certificates must chain to (no system roots: the
    /// upstreams are ours).
    pub ca: PathBuf,
    /// Optional client certificate chain (PEM, leaf first) and its key.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[upstream.headers]`: header names for what the edge knows about the client.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardHeaders {
    /// The mTLS subject CN.
    pub subject: Option<String>,
    /// The DNS SANs, comma-joined.
    pub san_dns: Option<String>,
    /// The SPIFFE ID (URI SAN of a valid X.509-SVID).
    pub spiffe: Option<String>,
    /// SHA-256 of the client certificate, lowercase hex.
    pub fingerprint: Option<String>,
    /// JWT claim name → header name.
    pub claims: BTreeMap<String, String>,
}

impl ForwardHeaders {
    /// Every configured header name, with the key that configures it.
    pub fn names(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("upstream.headers.subject", self.subject.as_deref()),
            ("upstream.headers.san_dns", self.san_dns.as_deref()),
            ("upstream.headers.spiffe", self.spiffe.as_deref()),
            ("upstream.headers.fingerprint", self.fingerprint.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .chain(
            self.claims
                .values()
                .map(|v| ("upstream.headers.claims", v.as_str())),
        )
    }
}

/// `[[upstream.groups]]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupConfig {
    pub name: String,
    /// `ws://host[:port][/path]` or `wss://…`.
    #[serde(deserialize_with = "wssedge_proto::config_list::one_or_many")]
    pub members: Vec<String>,
}

pub use crate::routes::Route;

/// A member's address, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberUrl {
    /// wss:// (TLS) or ws://.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    /// The path, starting with `/`.
    pub path: String,
}

/// Why a member URL is refused; each says what to write instead.
pub use wssedge_proto::ws_url::WsUrlError as MemberUrlError;

impl MemberUrl {
    /// Parses `ws://host[:port][/path]` or `wss://…` (the parser feeds use too). No user
    /// info, query or fragment.
    pub fn parse(url: &str) -> Result<MemberUrl, MemberUrlError> {
        let u = WsUrl::parse(url, QueryRule::Refuse)?;
        Ok(MemberUrl {
            tls: u.tls,
            host: u.host,
            port: u.port,
            path: u.target,
        })
    }

    /// The `Host` header value: host, bracketed if IPv6, with the port unless it is the default.
    pub fn host_header(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The member's path with the client's remainder (`/x?y` or `?y` or empty) appended,
    /// without a doubled `/`.
    pub fn join(&self, rest: &str) -> String {
        if rest.is_empty() {
            return self.path.clone();
        }
        let base = if rest.starts_with('/') {
            self.path.trim_end_matches('/')
        } else {
            self.path.as_str()
        };
        format!("{base}{rest}")
    }
}

impl std::fmt::Display for MemberUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}://{host}:{}{}", self.port, self.path)
    }
}

/// Header names the edge writes itself or that belong to one hop: none can be configured.
pub const RESERVED_HEADERS: &[&str] = &[
    "host",
    "connection",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "sec-websocket-accept",
    "origin",
    "user-agent",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn positive(key: &'static str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(key, 0, "must be greater than 0"));
    }
    Ok(())
}

impl UpstreamConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn health_interval(&self) -> Duration {
        Duration::from_millis(self.health_interval_ms)
    }
    pub fn health_timeout(&self) -> Duration {
        Duration::from_millis(self.health_timeout_ms)
    }

    /// Checks the section and the routes against it. Files are only checked to exist here;
    /// their contents are read by [`crate::upstream::Upstreams::from_config`].
    pub fn validate(&self, routes: &[Route]) -> Result<(), ConfigError> {
        positive("upstream.connect_timeout_ms", self.connect_timeout_ms)?;
        positive("upstream.health_interval_ms", self.health_interval_ms)?;
        positive("upstream.health_timeout_ms", self.health_timeout_ms)?;
        positive(
            "upstream.breaker_failures",
            u64::from(self.breaker_failures),
        )?;
        positive("upstream.breaker_open_ms", self.breaker_open_ms)?;
        if self.health_timeout_ms > self.health_interval_ms {
            return Err(ConfigError::invalid(
                "upstream.health_timeout_ms",
                self.health_timeout_ms,
                format!(
                    "must not exceed upstream.health_interval_ms ({})",
                    self.health_interval_ms
                ),
            ));
        }
        if let Some(tls) = &self.tls {
            for (key, path) in [
                ("upstream.tls.ca", Some(&tls.ca)),
                ("upstream.tls.cert", tls.cert.as_ref()),
                ("upstream.tls.key", tls.key.as_ref()),
            ] {
                if let Some(p) = path {
                    if !p.is_file() {
                        return Err(ConfigError::invalid(
                            key,
                            p.display(),
                            "file not found; check the path",
                        ));
                    }
                }
            }
            if tls.cert.is_some() != tls.key.is_some() {
                return Err(ConfigError::invalid(
                    "upstream.tls.cert",
                    tls.cert
                        .as_ref()
                        .map_or("(none)".into(), |p| p.display().to_string()),
                    "give both `cert` and `key` for a client certificate, or neither",
                ));
            }
        }
        let mut seen: Vec<String> = Vec::new();
        for (key, name) in self.headers.names() {
            let lower = name.to_ascii_lowercase();
            if !is_token(name) {
                return Err(ConfigError::invalid(
                    key,
                    name,
                    "not a valid HTTP header name",
                ));
            }
            if RESERVED_HEADERS.contains(&lower.as_str()) {
                return Err(ConfigError::invalid(
                    key,
                    name,
                    "the edge writes this header itself (or it belongs to one hop); pick another name",
                ));
            }
            if seen.contains(&lower) {
                return Err(ConfigError::invalid(
                    key,
                    name,
                    "header name used twice (names are case-insensitive)",
                ));
            }
            seen.push(lower);
        }
        for claim in self.headers.claims.keys() {
            if claim.is_empty() {
                return Err(ConfigError::invalid(
                    "upstream.headers.claims",
                    "\"\"",
                    "a claim name is empty",
                ));
            }
        }
        if self.groups.is_empty() {
            return Err(ConfigError::invalid(
                "upstream.groups",
                "[]",
                "define at least one group",
            ));
        }
        for (i, g) in self.groups.iter().enumerate() {
            if g.name.is_empty() {
                return Err(ConfigError::invalid(
                    "upstream.groups.name",
                    "\"\"",
                    "empty",
                ));
            }
            if self.groups[..i].iter().any(|o| o.name == g.name) {
                return Err(ConfigError::invalid(
                    "upstream.groups.name",
                    &g.name,
                    "group defined twice",
                ));
            }
            if g.members.is_empty() {
                return Err(ConfigError::invalid(
                    "upstream.groups.members",
                    format!("{} = []", g.name),
                    "a group needs at least one member",
                ));
            }
            for (j, m) in g.members.iter().enumerate() {
                let url = MemberUrl::parse(m)
                    .map_err(|e| ConfigError::invalid("upstream.groups.members", m, e))?;
                if g.members[..j].contains(m) {
                    return Err(ConfigError::invalid(
                        "upstream.groups.members",
                        m,
                        format!("listed twice in group {}", g.name),
                    ));
                }
                if url.tls && self.tls.is_none() {
                    return Err(ConfigError::invalid(
                        "upstream.groups.members",
                        m,
                        "a wss:// member needs [upstream.tls] ca = \"…\" to verify it",
                    ));
                }
            }
        }
        crate::routes::validate(routes, true)?;
        for group in routes.iter().filter_map(Route::group) {
            if !self.groups.iter().any(|g| g.name == group) {
                return Err(ConfigError::invalid(
                    "routes.group",
                    group,
                    format!(
                        "no such [[upstream.groups]] (defined: {})",
                        self.groups
                            .iter()
                            .map(|g| g.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The group routes, longest prefix first; each with its parsed prefix and the index of its
/// group (pub/sub routes are not the upstream room's).
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<(Route, PathPrefix, usize)>,
}

impl RouteTable {
    /// `group_index` maps a group name to its index (validated before: unknown names and
    /// prefixes that are not plain paths are dropped here).
    pub fn new(routes: &[Route], group_index: impl Fn(&str) -> Option<usize>) -> Self {
        let mut routes: Vec<(Route, PathPrefix, usize)> = routes
            .iter()
            .filter_map(|r| {
                let prefix = PathPrefix::parse(&r.prefix).ok()?;
                group_index(r.group()?).map(|g| (r.clone(), prefix, g))
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.0.prefix.len()));
        Self { routes }
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for a request target and the remainder to append to the member's path (the
    /// normalised path after the prefix, then the query).
    pub fn route<'a>(&self, target: &'a RequestTarget) -> Option<(&Route, &'a str)> {
        self.route_indexed(target).map(|(r, _, rest)| (r, rest))
    }

    /// [`Self::route`] with the group index.
    pub fn route_indexed<'a>(&self, target: &'a RequestTarget) -> Option<(&Route, usize, &'a str)> {
        let path = target.path();
        self.routes.iter().find_map(|(r, prefix, g)| {
            // A prefix ending in '/' keeps that slash in the remainder, so the join with the
            // member's path has exactly one.
            let rest = prefix.strip(path)?;
            let cut = path.len() - rest.len();
            Some((r, *g, &target.as_str()[cut..]))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[upstream]
connect_timeout_ms = 1000
health_interval_ms = 1000
health_timeout_ms = 500
breaker_failures = 5
breaker_open_ms = 2000
[upstream.headers]
subject = "x-client-subject"
san_dns = "x-client-san-dns"
spiffe = "x-client-spiffe"
fingerprint = "x-client-cert-sha256"
claims = { sub = "x-token-sub", scope = "x-token-scope" }
[[upstream.groups]]
name = "marketdata"
members = ["ws://127.0.0.1:9001/feed", "ws://backend.example:9443/feed"]
[[upstream.groups]]
name = "orders"
members = ["ws://[::1]/o/"]
[[routes]]
prefix = "/md"
group = "marketdata"
lossy = true
[[routes]]
prefix = "/md/slow"
group = "orders"
[[routes]]
prefix = "/"
group = "orders"
"#;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrapper {
        upstream: UpstreamConfig,
        #[serde(default)]
        routes: Vec<Route>,
    }

    fn sample() -> Wrapper {
        toml::from_str(SAMPLE).unwrap()
    }

    fn target(s: &str) -> RequestTarget {
        RequestTarget::parse(s).unwrap()
    }

    fn err(w: &Wrapper) -> String {
        w.upstream.validate(&w.routes).unwrap_err().to_string()
    }

    #[test]
    fn sample_parses_and_validates() {
        let w = sample();
        w.upstream.validate(&w.routes).unwrap();
        assert_eq!(w.upstream.headers.claims["sub"], "x-token-sub");
        assert!(w.routes[0].lossy);
        assert!(!w.routes[1].lossy);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let e = toml::from_str::<Wrapper>(&SAMPLE.replace("breaker_open_ms", "breaker_opn_ms"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("breaker_opn_ms"), "{e}");
        let e = toml::from_str::<Wrapper>(&SAMPLE.replace("lossy = true", "lossless = true"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("lossless"), "{e}");
    }

    #[test]
    fn bad_configs_name_key_and_reason() {
        let mut w = sample();
        w.routes[0].group = Some("nope".into());
        let e = err(&w);
        assert!(
            e.contains("routes.group") && e.contains("nope") && e.contains("marketdata"),
            "{e}"
        );

        let mut w = sample();
        w.upstream.groups[1].name = "marketdata".into();
        assert!(err(&w).contains("defined twice"));

        let mut w = sample();
        w.upstream.groups[0].members.push("http://x/".into());
        let e = err(&w);
        assert!(
            e.contains("upstream.groups.members") && e.contains("ws://"),
            "{e}"
        );

        let mut w = sample();
        w.upstream.groups[0]
            .members
            .push("wss://secure:9443/".into());
        let e = err(&w);
        assert!(e.contains("[upstream.tls]"), "{e}");

        let mut w = sample();
        w.upstream.groups[0].members.clear();
        assert!(err(&w).contains("at least one member"));

        let mut w = sample();
        let first = w.upstream.groups[0].members[0].clone();
        w.upstream.groups[0].members.push(first);
        assert!(err(&w).contains("listed twice"));

        let mut w = sample();
        w.upstream.headers.spiffe = Some("X-Client-Subject".into());
        assert!(err(&w).contains("used twice"));

        let mut w = sample();
        w.upstream.headers.subject = Some("Host".into());
        assert!(err(&w).contains("writes this header itself"));

        let mut w = sample();
        w.upstream.headers.subject = Some("bad header".into());
        assert!(err(&w).contains("not a valid HTTP header name"));

        let mut w = sample();
        w.upstream.breaker_failures = 0;
        assert!(err(&w).contains("upstream.breaker_failures"));

        let mut w = sample();
        w.upstream.health_timeout_ms = 5000;
        assert!(err(&w).contains("health_interval_ms"));

        let mut w = sample();
        w.routes.push(w.routes[0].clone());
        assert!(err(&w).contains("same prefix"));

        for bad in ["md", "/md/../x", "/md%2F", "/md;x", "//md", "/md?x"] {
            let mut w = sample();
            w.routes[0].prefix = bad.into();
            let e = err(&w);
            assert!(
                e.contains("routes.prefix") && e.contains("plain path"),
                "{bad}: {e}"
            );
        }
        let mut w = sample();
        w.routes[0].prefix = "/MD/SLOW".into();
        assert!(err(&w).contains("same prefix"));

        let mut w = sample();
        w.upstream.tls = Some(UpstreamTls {
            ca: "/nonexistent/ca.pem".into(),
            cert: None,
            key: None,
        });
        let e = err(&w);
        assert!(
            e.contains("upstream.tls.ca") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );

        let mut w = sample();
        w.upstream.groups.clear();
        w.routes.clear();
        assert!(err(&w).contains("at least one group"));

        assert!(crate::routes::validate(&sample().routes, false).is_err());
        assert!(crate::routes::validate(&[], false).is_ok());
    }

    #[test]
    fn member_urls() {
        let m = MemberUrl::parse("wss://backend.example:9443/feed").unwrap();
        assert_eq!(
            m,
            MemberUrl {
                tls: true,
                host: "backend.example".into(),
                port: 9443,
                path: "/feed".into()
            }
        );
        assert_eq!(m.host_header(), "backend.example:9443");
        let m = MemberUrl::parse("ws://10.0.0.1").unwrap();
        assert_eq!(
            (m.port, m.path.as_str(), m.host_header()),
            (80, "/", "10.0.0.1".into())
        );
        let m = MemberUrl::parse("wss://[::1]:443/x").unwrap();
        assert_eq!((m.host.as_str(), m.host_header()), ("::1", "[::1]".into()));
        assert_eq!(m.to_string(), "wss://[::1]:443/x");
        for bad in [
            "http://x/",
            "ws://",
            "ws://:80/",
            "ws://x:0/",
            "ws://x:99999/",
            "ws://x/?q",
            "ws://u@x/",
            "ws://[::1/",
            "ws://[nope]/",
            "ws://x y/",
            "ws://x/a b",
            "ws://::1/",
            "ws://x:+80/",
        ] {
            assert!(MemberUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn joins_paths() {
        let m = MemberUrl::parse("ws://h/feed").unwrap();
        assert_eq!(m.join(""), "/feed");
        assert_eq!(m.join("/a?b=1"), "/feed/a?b=1");
        assert_eq!(m.join("?b=1"), "/feed?b=1");
        let m = MemberUrl::parse("ws://h/feed/").unwrap();
        assert_eq!(m.join("/a"), "/feed/a");
        let m = MemberUrl::parse("ws://h").unwrap();
        assert_eq!(m.join("/a"), "/a");
        assert_eq!(m.join(""), "/");
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let w = sample();
        let groups = ["marketdata", "orders"];
        let t = RouteTable::new(&w.routes, |n| groups.iter().position(|g| *g == n));
        let r = |p: &str| {
            t.route(&target(p))
                .map(|(r, rest)| (r.prefix.clone(), rest.to_owned()))
        };
        assert_eq!(r("/md"), Some(("/md".into(), "".into())));
        assert_eq!(r("/md?x=1"), Some(("/md".into(), "?x=1".into())));
        assert_eq!(
            r("/md/eurusd?d=5"),
            Some(("/md".into(), "/eurusd?d=5".into()))
        );
        assert_eq!(r("/md/slow/x"), Some(("/md/slow".into(), "/x".into())));
        assert_eq!(r("/md/slowish"), Some(("/md".into(), "/slowish".into())));
        // `/mdx` is not under `/md`: the catch-all `/` takes it.
        assert_eq!(r("/mdx"), Some(("/".into(), "/mdx".into())));
        assert_eq!(t.route_indexed(&target("/md/slow")).unwrap().1, 1);
        assert_eq!(r("/md/..x"), Some(("/md".into(), "/..x".into())));
        // Case-insensitive, on the normalised path; the remainder is the normalised one.
        assert_eq!(r("/MD/Slow/X"), Some(("/md/slow".into(), "/X".into())));
        assert_eq!(
            r("/%6Dd/%7Eeur?x=%41"),
            Some(("/md".into(), "/~eur?x=%41".into()))
        );
        let t = RouteTable::new(&w.routes[..1], |n| groups.iter().position(|g| *g == n));
        assert_eq!(t.route(&target("/other")), None);
    }

    #[test]
    fn root_prefix_joins_cleanly() {
        let m = MemberUrl::parse("ws://h/o/").unwrap();
        let n = MemberUrl::parse("ws://h/o").unwrap();
        let routes = vec![Route {
            prefix: "/".into(),
            group: Some("g".into()),
            pubsub: false,
            lossy: false,
            compression: None,
        }];
        let t = RouteTable::new(&routes, |_| Some(0));
        let ab = target("/a/b?c");
        let (_, rest) = t.route(&ab).unwrap();
        assert_eq!(m.join(rest), "/o/a/b?c");
        assert_eq!(n.join(rest), "/o/a/b?c");
        let root = target("/?c");
        let (_, rest) = t.route(&root).unwrap();
        assert_eq!(n.join(rest), "/o/?c");
    }
}
