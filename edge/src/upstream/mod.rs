//! The upstream side of proxied WebSocket sessions: routes, member groups, health, breakers,
//! the upgrade towards a member and the connection the relay loop drives.
//!
//! - [`config`]: `[upstream]` and `[[routes]]`, and the [`RouteTable`] (longest prefix wins).
//! - [`handshake`] (sans-IO): the upgrade request with the forwarded and identity headers, and
//!   the check of the upstream's 101.
//! - [`breaker`]: a consecutive-failure circuit breaker per member (atomics only).
//! - [`balancer`]: [`Member`]s and round robin over the usable ones of a group.
//! - [`health`]: one background thread checking every member.
//! - [`mask_keys`]: the CSPRNG behind the masking keys of client-role sessions.
//! - [`connect`] (monoio): TCP + TLS + upgrade under one timeout, and [`UpstreamStream`].
//! - [`relay`]: a session's route, its upstream opened, and the relay of its messages.
//!
//! [`Upstreams`] is built once at start from the configuration and shared by every core.
//! Proxying one session: `route` → `pick` → `request` → `connect`, then the relay drives the
//! stream with a client-role [`crate::ws::Session`] (the connection loop decides when).

pub mod balancer;
pub mod breaker;
pub mod config;
pub mod connect;
pub mod handshake;
pub mod health;
pub mod mask_keys;
pub(crate) mod relay;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use crate::metrics::{escape_label, PrometheusFamilies};

pub use balancer::{Balancer, Member, MemberRef, MemberStats};
pub use breaker::{Admission, Breaker, BreakerState};
pub use config::{
    ForwardHeaders, GroupConfig, MemberUrl, Route, RouteTable, UpstreamConfig, UpstreamTls,
};
pub use connect::{
    connect, ConnectError, ConnectOptions, ReadOutcome, UpstreamRequest, UpstreamStream,
};
pub use handshake::{ClientContext, ClientHandshake, ResponseError};
pub use health::{HealthChecker, HealthStats};
pub use mask_keys::SystemMaskKeys;

use crate::config_error::ConfigError;
use crate::tls::policy::{self, TlsConfigError};

/// Why the upstream side could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("[upstream.tls]: {0}")]
    Tls(#[from] TlsConfigError),
    #[error("cannot start the upstream health checker: {0}")]
    Health(std::io::Error),
}

/// The rustls client configuration for wss:// members: the policy's versions and AEAD suites,
/// only `ca` as trust anchors, ALPN http/1.1, the client certificate when configured.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, TlsConfigError> {
    let mut roots = rustls::RootCertStore::empty();
    let cas = policy::load_cert_chain(&tls.ca)?;
    for ca in cas {
        roots.add(ca).map_err(|e| TlsConfigError::BadPem {
            path: tls.ca.clone(),
            detail: format!("not usable as a trust anchor: {e}"),
        })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(policy::crypto_provider()))
        .with_protocol_versions(policy::PROTOCOL_VERSIONS)
        .map_err(TlsConfigError::Rustls)?
        .with_root_certificates(roots);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain = policy::load_cert_chain(cert)?;
            let key_der = policy::load_private_key(key)?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|source| match source {
                    rustls::Error::InconsistentKeys(_) => TlsConfigError::KeyMismatchFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    },
                    source => TlsConfigError::UnusableKeyFile {
                        key: key.clone(),
                        source,
                    },
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![policy::ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// One group: its name and balancer.
#[derive(Debug)]
pub struct Group {
    pub name: String,
    pub balancer: Balancer,
}

/// Everything the upstream side needs, built once at start and shared by the cores.
#[derive(Debug)]
pub struct Upstreams {
    routes: RouteTable,
    groups: Vec<Group>,
    members: Vec<Arc<Member>>,
    headers: ForwardHeaders,
    /// The query parameter that carries a bearer token (`[jwt] query_param`), taken out of
    /// every target forwarded upstream: a token never leaves the edge.
    token_query_param: Option<String>,
    connect: ConnectOptions,
    health: Option<HealthChecker>,
}

/// A routed request: which group, and the path to ask the member for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed<'a> {
    pub group: usize,
    /// The client's path after the route's prefix, plus its query.
    pub rest: &'a str,
    pub lossy: bool,
}

impl Upstreams {
    /// Validates, loads the TLS files, resolves member names once and starts the health
    /// checker.
    pub fn from_config(cfg: &UpstreamConfig, routes: &[Route]) -> Result<Self, UpstreamError> {
        Self::build(cfg, routes, true)
    }

    /// [`Self::from_config`] without the health thread (tests, tools).
    pub fn without_health_checks(
        cfg: &UpstreamConfig,
        routes: &[Route],
    ) -> Result<Self, UpstreamError> {
        Self::build(cfg, routes, false)
    }

    fn build(cfg: &UpstreamConfig, routes: &[Route], health: bool) -> Result<Self, UpstreamError> {
        cfg.validate(routes)?;
        let tls = cfg.tls.as_ref().map(client_config).transpose()?;
        let epoch = Instant::now();
        let mut members = Vec::new();
        let mut groups = Vec::new();
        for g in &cfg.groups {
            let mut group_members = Vec::new();
            for url in &g.members {
                let url = MemberUrl::parse(url)
                    .map_err(|e| ConfigError::invalid("upstream.groups.members", url, e))?;
                let m = Arc::new(Member::new(
                    url,
                    &g.name,
                    Breaker::new(
                        cfg.breaker_failures,
                        std::time::Duration::from_millis(cfg.breaker_open_ms),
                        epoch,
                    ),
                ));
                if let Err(e) = m.resolve() {
                    // Not fatal: the health thread keeps trying, the member stays unusable.
                    tracing::warn!(group = %g.name, member = %m.url, error = %e, "upstream member does not resolve yet");
                }
                group_members.push(m.clone());
                members.push(m);
            }
            groups.push(Group {
                name: g.name.clone(),
                balancer: Balancer::new(group_members),
            });
        }
        let routes = RouteTable::new(routes, |name| groups.iter().position(|g| g.name == name));
        let health = if health {
            Some(
                HealthChecker::start(
                    members.clone(),
                    health::CheckConfig {
                        timeout: cfg.health_timeout(),
                        tls: tls.clone(),
                    },
                    cfg.health_interval(),
                )
                .map_err(UpstreamError::Health)?,
            )
        } else {
            None
        };
        Ok(Self {
            routes,
            groups,
            members,
            headers: cfg.headers.clone(),
            token_query_param: None,
            connect: ConnectOptions::new(cfg.connect_timeout(), tls),
            health,
        })
    }

    pub fn routes(&self) -> &RouteTable {
        &self.routes
    }

    /// The route for a request target, if any.
    pub fn route<'a>(&self, target: &'a crate::ws::RequestTarget) -> Option<Routed<'a>> {
        self.routes
            .route_indexed(target)
            .map(|(r, group, rest)| Routed {
                group,
                rest,
                lossy: r.lossy,
            })
    }

    pub fn group(&self, index: usize) -> Option<&Group> {
        self.groups.get(index)
    }

    /// A usable member of the group; `None`: answer 503.
    pub fn pick(&self, group: usize, now: Instant) -> Option<MemberRef> {
        self.groups.get(group)?.balancer.pick(now)
    }

    /// Takes every `name=…` parameter out of the queries forwarded upstream (`[jwt]
    /// query_param`: the token the edge verified, or one it did not look at, stays here).
    pub fn strip_query_param(&mut self, name: &str) {
        self.token_query_param = Some(name.to_owned());
    }

    /// The target the member is asked for: its path joined with the route's remainder, without
    /// the token parameter (the other parameters in their order).
    pub fn forwarded_target(&self, member: &MemberUrl, rest: &str) -> String {
        let joined = member.join(rest);
        match &self.token_query_param {
            Some(param) => crate::auth::jwt::redact_query_token(&joined, param).into_owned(),
            None => joined,
        }
    }

    /// The upgrade request for `member`, with a fresh key.
    pub fn request(
        &self,
        member: &MemberUrl,
        rest: &str,
        client: &ClientContext<'_>,
    ) -> UpstreamRequest {
        let mut bytes = Vec::with_capacity(512);
        let handshake = handshake::write_request(
            member,
            &self.forwarded_target(member, rest),
            client,
            &self.headers,
            &mut bytes,
        );
        UpstreamRequest { bytes, handshake }
    }

    /// The options [`connect`] takes.
    pub fn connect_options(&self) -> &ConnectOptions {
        &self.connect
    }

    /// Sets the socket options of upstream connections (the `[limits]` buffer sizes).
    pub fn set_socket_options(&mut self, socket: crate::sockopt::AcceptedSocketOptions) {
        self.connect.socket = socket;
    }

    /// Every configured header name (what the edge writes; a client's copies never pass).
    pub fn forward_headers(&self) -> &ForwardHeaders {
        &self.headers
    }

    /// Per member state and counters, for /metrics.
    pub fn metrics(&self) -> Vec<MemberStats> {
        self.members.iter().map(|m| m.stats()).collect()
    }

    /// The health checker's totals (checks, failures, rounds), when it runs.
    pub fn health_stats(&self) -> Option<&Arc<HealthStats>> {
        self.health.as_ref().map(HealthChecker::stats)
    }
}

/// Per member: breaker state, health, connects by result, and the health checks.
impl PrometheusFamilies for Upstreams {
    fn render_families(&self, out: &mut String) {
        let members = self.metrics();
        let label = |m: &MemberStats| {
            format!(
                "group=\"{}\",member=\"{}\"",
                escape_label(&m.group),
                escape_label(&m.url)
            )
        };
        // (name, type, help, rows of one member: extra labels and value)
        type Rows = fn(&MemberStats) -> Vec<(&'static str, u64)>;
        let families: [(&str, &str, &str, Rows); 5] = [
            (
                "wssedge_upstream_breaker_state",
                "gauge",
                "Circuit breaker per member: 0 closed, 1 open, 2 half-open",
                |m| vec![("", m.breaker_state as u64)],
            ),
            (
                "wssedge_upstream_breaker_opened_total",
                "counter",
                "Times a member's breaker opened",
                |m| vec![("", m.breaker_opened_total)],
            ),
            (
                "wssedge_upstream_healthy",
                "gauge",
                "1 while the member's last health check passed",
                |m| vec![("", m.healthy as u64)],
            ),
            (
                "wssedge_upstream_connects_total",
                "counter",
                "Upstream session opens (TCP, TLS, upgrade) by result",
                |m| {
                    vec![
                        (",result=\"ok\"", m.connects_ok),
                        (",result=\"failed\"", m.connect_failures),
                    ]
                },
            ),
            (
                "wssedge_upstream_health_checks_total",
                "counter",
                "Health checks per member by result",
                |m| {
                    vec![
                        (
                            ",result=\"ok\"",
                            m.health_checks.saturating_sub(m.health_failures),
                        ),
                        (",result=\"failed\"", m.health_failures),
                    ]
                },
            ),
        ];
        for (name, kind, help, rows) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for m in &members {
                for (extra, value) in rows(m) {
                    let _ = writeln!(out, "{name}{{{}{extra}}} {value}", label(m));
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn cfg(toml_text: &str) -> (UpstreamConfig, Vec<Route>) {
        #[derive(serde::Deserialize)]
        struct W {
            upstream: UpstreamConfig,
            #[serde(default)]
            routes: Vec<Route>,
        }
        let w: W = toml::from_str(toml_text).unwrap();
        (w.upstream, w.routes)
    }

    #[test]
    fn built_from_config_routes_picks_and_writes_requests() {
        let (c, r) = cfg(r#"
[upstream]
[upstream.headers]
subject = "x-client-subject"
[[upstream.groups]]
name = "md"
members = ["ws://127.0.0.1:9001/feed", "ws://127.0.0.1:9002/feed"]
[[routes]]
prefix = "/md"
group = "md"
lossy = true
"#);
        let mut u = Upstreams::without_health_checks(&c, &r).unwrap();
        let target = crate::ws::RequestTarget::parse("/md/x?y=1").unwrap();
        let routed = u.route(&target).unwrap();
        assert_eq!(
            routed,
            Routed {
                group: 0,
                rest: "/x?y=1",
                lossy: true
            }
        );
        let other = crate::ws::RequestTarget::parse("/other").unwrap();
        assert!(u.route(&other).is_none());
        let now = Instant::now();
        let a = u.pick(0, now).unwrap();
        let b = u.pick(0, now).unwrap();
        assert_ne!(a.url.port, b.url.port);
        let req = crate::ws::parse_upgrade(
            b"GET /md/x?y=1 HTTP/1.1\r\nHost: e\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            &Default::default(),
        )
        .unwrap()
        .unwrap()
        .0;
        let ctx = ClientContext {
            request: &req,
            user_agent: None,
            peer: IpAddr::from([127, 0, 0, 1]),
            protocol: None,
            identity: None,
            token: None,
            traceparent: None,
        };
        let out = u.request(&a.url, routed.rest, &ctx);
        let text = String::from_utf8(out.bytes).unwrap();
        assert!(text.starts_with("GET /feed/x?y=1 HTTP/1.1\r\n"), "{text}");
        // A query token never goes upstream; the other parameters keep their order.
        u.strip_query_param("access_token");
        for (rest, want) in [
            ("/x?access_token=a.b.c&y=1", "/feed/x?y=1"),
            ("/x?y=1&access_token=a.b.c&z=2", "/feed/x?y=1&z=2"),
            ("?access%5Ftoken=a.b.c", "/feed"),
            ("/x?y=1", "/feed/x?y=1"),
            ("", "/feed"),
        ] {
            assert_eq!(u.forwarded_target(&a.url, rest), want, "{rest}");
            let out = u.request(&a.url, rest, &ctx);
            let text = String::from_utf8(out.bytes).unwrap();
            assert!(
                text.starts_with(&format!("GET {want} HTTP/1.1\r\n")),
                "{text}"
            );
            assert!(!text.contains("a.b.c"), "{text}");
        }
        let m = u.metrics();
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].breaker_state, m[0].healthy, m[0].group.as_str()),
            (0, true, "md")
        );
        assert!(u.health_stats().is_none());
    }

    #[test]
    fn writes_one_labelled_row_per_member_and_family() {
        let (c, r) = cfg(r#"
[upstream]
[[upstream.groups]]
name = 'm"d'
members = ["ws://127.0.0.1:9001/feed"]
"#);
        let u = Upstreams::without_health_checks(&c, &r).unwrap();
        let mut out = String::new();
        u.render_families(&mut out);
        let member = r#"group="m\"d",member="ws://127.0.0.1:9001/feed""#;
        let want = [
            "# HELP wssedge_upstream_breaker_state Circuit breaker per member: 0 closed, 1 open, 2 half-open".to_owned(),
            "# TYPE wssedge_upstream_breaker_state gauge".to_owned(),
            format!("wssedge_upstream_breaker_state{{{member}}} 0"),
            "# HELP wssedge_upstream_breaker_opened_total Times a member's breaker opened".to_owned(),
            "# TYPE wssedge_upstream_breaker_opened_total counter".to_owned(),
            format!("wssedge_upstream_breaker_opened_total{{{member}}} 0"),
            "# HELP wssedge_upstream_healthy 1 while the member's last health check passed".to_owned(),
            "# TYPE wssedge_upstream_healthy gauge".to_owned(),
            format!("wssedge_upstream_healthy{{{member}}} 1"),
            "# HELP wssedge_upstream_connects_total Upstream session opens (TCP, TLS, upgrade) by result".to_owned(),
            "# TYPE wssedge_upstream_connects_total counter".to_owned(),
            format!("wssedge_upstream_connects_total{{{member},result=\"ok\"}} 0"),
            format!("wssedge_upstream_connects_total{{{member},result=\"failed\"}} 0"),
            "# HELP wssedge_upstream_health_checks_total Health checks per member by result".to_owned(),
            "# TYPE wssedge_upstream_health_checks_total counter".to_owned(),
            format!("wssedge_upstream_health_checks_total{{{member},result=\"ok\"}} 0"),
            format!("wssedge_upstream_health_checks_total{{{member},result=\"failed\"}} 0"),
        ];
        assert_eq!(out.lines().collect::<Vec<_>>(), want, "{out}");
    }

    #[test]
    fn bad_config_and_missing_tls_files_are_refused() {
        let (c, r) = cfg(r#"
[upstream]
[[upstream.groups]]
name = "md"
members = ["wss://h:1/"]
"#);
        let e = Upstreams::without_health_checks(&c, &r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[upstream.tls]"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a pem").unwrap();
        let mut c = c;
        c.tls = Some(UpstreamTls {
            ca: ca.clone(),
            cert: None,
            key: None,
        });
        let e = Upstreams::without_health_checks(&c, &r)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ca.pem"), "{e}");
    }

    #[test]
    fn health_checker_runs_and_stops_with_upstreams() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (c, r) = cfg(&format!(
            r#"
[upstream]
health_interval_ms = 20
health_timeout_ms = 10
[[upstream.groups]]
name = "md"
members = ["ws://127.0.0.1:{}/"]
"#,
            l.local_addr().unwrap().port()
        ));
        let u = Upstreams::from_config(&c, &r).unwrap();
        let stats = u.health_stats().unwrap().clone();
        let t = Instant::now();
        while stats.rounds.load(std::sync::atomic::Ordering::Relaxed) < 2 {
            assert!(t.elapsed().as_secs() < 5);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(u);
        assert_eq!(Arc::strong_count(&stats), 1, "the thread is gone");
    }
}
