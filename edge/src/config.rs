//! The edge's configuration: one typed struct, read from TOML, overridden by flags, validated
//! once at load. A bad config is refused with the key, the value and the reason.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::config_error::ConfigError;

/// The whole configuration, as validated.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub tls: TlsConfig,
    pub limits: Limits,
    /// Host and Origin allow-lists checked at the upgrade.
    pub origin: crate::auth::OriginConfig,
    /// JWT session tokens at the upgrade; absent = no token required.
    pub jwt: Option<crate::auth::JwtConfig>,
    /// The audit trail of every security decision (off without a path).
    pub audit: crate::audit::AuditConfig,
    /// Proxy mode: the upstream groups sessions are forwarded to (absent: the edge echoes).
    pub upstream: Option<crate::upstream::UpstreamConfig>,
    /// Path prefix → upstream group or pub/sub (longest prefix wins).
    pub routes: Vec<crate::routes::Route>,
    /// Market-data fan-out on the `pubsub = true` routes.
    pub pubsub: wssedge_proto::pubsub::PubsubConfig,
    /// A fleet of edges on one Redis (absent: this edge keeps all its state itself).
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// permessage-deflate (RFC 7692): where it is negotiated and how.
    pub compression: crate::compression::CompressionConfig,
    /// OpenTelemetry traces over OTLP/HTTP: a span per upgrade decision and session end.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// The file this configuration was read from (what `wssedge ctl reload` re-reads).
    #[serde(skip)]
    pub source: Option<PathBuf>,
    /// The command-line flags applied over the file (a reload applies them again).
    #[serde(skip)]
    pub overrides: Overrides,
}

/// Listeners, cores and the admin endpoint.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// WSS listen addresses; every core gets its own SO_REUSEPORT listener on each.
    #[serde(deserialize_with = "wssedge_proto::config_list::one_or_many")]
    pub listen: Vec<SocketAddr>,
    /// Use the first N CPUs this process may run on (sched_getaffinity).
    pub cores: Option<usize>,
    /// Use exactly these CPUs, one core thread pinned on each.
    #[serde(deserialize_with = "wssedge_proto::config_list::option_one_or_many")]
    pub cpus: Option<Vec<usize>>,
    /// The admin listener: /metrics, /healthz, /readyz.
    pub admin: SocketAddr,
    /// Where the development certificate lives when no certificate is configured.
    pub state_dir: PathBuf,
    /// The control socket (Unix, mode 0600): revocations and other live changes, each one
    /// logged with the caller's uid and pid. None = no control socket.
    pub control: Option<PathBuf>,
    /// A drain (SIGTERM, SIGINT, `wssedge ctl drain`, or the old process of a restart) waits
    /// this long for its sessions' close handshakes before the cores stop anyway.
    pub drain_timeout_ms: u64,
    /// Serve as this user once the listeners are bound and the eBPF limiter is loaded (see
    /// `privilege`): started as root it becomes the user; started with capabilities it keeps
    /// none in effect. None = serve as started.
    pub user: Option<String>,
    /// After a connection's work, keep the core's thread polling the ring this long before it
    /// sleeps (0: sleep at once). For hosts that isolate cores for the edge: it spends CPU to
    /// skip the wake-up of the next message.
    pub busy_poll_us: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 8443))],
            cores: None,
            cpus: None,
            admin: SocketAddr::from(([127, 0, 0, 1], 9901)),
            state_dir: PathBuf::from("wssedge-dev"),
            control: None,
            drain_timeout_ms: 5_000,
            user: None,
            busy_poll_us: 0,
        }
    }
}

impl ServerConfig {
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
}

/// The `[tls]` section is owned by the TLS room (versions, suites, groups, resumption, SNI
/// chains, client certificates, CRLs, identity rules, kTLS).
pub type TlsConfig = crate::tls::settings::TlsSettings;

/// Every bound the edge enforces so that idle, slow or flooding clients cannot exhaust it.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections per process, split evenly across cores.
    pub max_connections: usize,
    /// TLS handshakes plus upgrades in progress, per core: connections whose first byte (the
    /// ClientHello's) arrived. Beyond it a connection that starts its handshake is closed.
    pub max_handshakes_in_flight: usize,
    /// Connections that have sent nothing yet, per core. They cost no TLS work and hold no
    /// handshake slot; beyond this many the oldest of them is closed to admit the new one, so a
    /// flood of silent sockets cannot lock out the clients that speak.
    pub max_silent_connections: usize,
    /// A connection's first byte must arrive within this (capped at `handshake_timeout_ms`).
    pub first_byte_timeout_ms: u64,
    /// Covers the TLS handshake and the upgrade request until the 101 is sent.
    pub handshake_timeout_ms: u64,
    /// An upgraded connection that receives nothing for this long is closed with 1001.
    pub idle_timeout_ms: u64,
    /// A write that makes no progress for this long marks a slow consumer: its close frame is
    /// queued if it fits and the connection is reset after `close_timeout_ms`.
    pub write_timeout_ms: u64,
    /// A ping is sent after this long without anything received from the client; 0 = no pings.
    pub ping_interval_ms: u64,
    /// The client must answer (send anything) within this long after our ping, else 1001.
    pub pong_timeout_ms: u64,
    /// After our close frame: how long the last bytes may take to leave before the connection
    /// is reset (SO_LINGER 0).
    pub close_timeout_ms: u64,
    /// A frame (and a fragmented message) must be complete this long after its first byte
    /// arrived, else close 1008 `frame_timeout`: bytes dribbled in slowly enough to keep the
    /// idle timeout away must not hold a partial frame for ever.
    pub frame_timeout_ms: u64,
    /// Bytes queued for one connection's socket (beyond the socket's own buffer). At the cap the
    /// edge stops reading what would add to it (the client's requests, its upstream's
    /// messages); lossy routes drop whole messages instead.
    pub max_outbound_bytes: usize,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    /// Bytes connections hold per core — partly received frames and messages, and writes
    /// queued toward clients and upstreams; the connection that crosses it is closed with 1013.
    pub max_buffered_bytes_per_core: usize,
    /// Size cap of the HTTP upgrade request (431 beyond).
    pub max_request_bytes: usize,
    /// Header count cap of the HTTP upgrade request (431 beyond).
    pub max_headers: usize,
    /// SO_SNDBUF of every accepted socket.
    pub socket_send_buffer_bytes: usize,
    /// SO_RCVBUF of every accepted socket.
    pub socket_recv_buffer_bytes: usize,
    /// Sessions one identity (a token's subject, else the client certificate) may hold at
    /// once over all cores; beyond it the upgrade gets 429. Unset: no limit.
    pub per_identity_connections: Option<u32>,
    /// Connections one source address may hold (handshakes included); 0 = no limit. Refused
    /// before any TLS work: at the SYN by eBPF, else at accept.
    pub per_ip_connections: u32,
    /// Per-CIDR limits (`{ cidr = "10.1.0.0/16", limit = 1000 }`; limit 0 = blocked).
    pub ip_overrides: Vec<crate::ebpf::IpOverride>,
    /// Where the per-IP limit is enforced: "auto" (eBPF where it loads), "ebpf", "userspace".
    pub ip_limiter: crate::limits::ip_limit::IpLimiterMode,
    /// Each connection's messages: messages/s and bytes/s with bursts (none set: no limit).
    pub connection_rate: crate::limits::RateConfig,
    /// Each identity's messages over all its sessions and cores (token subject, else client
    /// certificate); anonymous sessions have only the connection limit.
    pub identity_rate: crate::limits::RateConfig,
    /// Each connection's control frames (pings and pongs), apart from its messages: on by
    /// default, so a ping or pong flood is refused even where no message rate is set.
    pub control_rate: crate::limits::RateConfig,
}

impl Limits {
    /// The per-connection rate limit, in the form the buckets run on.
    pub fn connection_rate(&self) -> Result<crate::limits::RateLimit, ConfigError> {
        self.connection_rate
            .compile_at(&crate::limits::rate_keys!("limits.connection_rate"))
    }

    /// The per-identity rate limit, in the form the buckets run on.
    pub fn identity_rate(&self) -> Result<crate::limits::RateLimit, ConfigError> {
        self.identity_rate
            .compile_at(&crate::limits::rate_keys!("limits.identity_rate"))
    }

    /// The per-connection allowance for pings and pongs.
    pub fn control_rate(&self) -> Result<crate::limits::RateLimit, ConfigError> {
        self.control_rate
            .compile_at(&crate::limits::rate_keys!("limits.control_rate"))
    }

    /// The per-IP rules as the limiters take them.
    pub fn ip_limits(&self) -> crate::ebpf::LimitConfig {
        crate::ebpf::LimitConfig {
            per_ip_connections: self.per_ip_connections,
            ip_overrides: self.ip_overrides.clone(),
        }
    }
}

/// The control-frame allowance: far above any heartbeat (a client pings every few seconds at
/// most, and answers our pings), far below a flood (millions a second on one core).
/// The longest `[server] busy_poll_us` accepted: 10 ms.
pub const MAX_BUSY_POLL_US: u64 = 10_000;

pub const DEFAULT_CONTROL_FRAMES_PER_S: f64 = 20.0;
/// What a client may send at once, e.g. a burst of pings after a stall.
pub const DEFAULT_CONTROL_FRAMES_BURST: u64 = 100;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_handshakes_in_flight: 256,
            max_silent_connections: 1024,
            first_byte_timeout_ms: 2_000,
            handshake_timeout_ms: 5_000,
            idle_timeout_ms: 300_000,
            write_timeout_ms: 30_000,
            ping_interval_ms: 30_000,
            pong_timeout_ms: 10_000,
            close_timeout_ms: 1_000,
            frame_timeout_ms: 30_000,
            max_outbound_bytes: 1 << 20,
            max_frame_bytes: 16 << 20,
            max_message_bytes: 16 << 20,
            max_buffered_bytes_per_core: 256 << 20,
            max_request_bytes: 8192,
            max_headers: 64,
            socket_send_buffer_bytes: 256 << 10,
            socket_recv_buffer_bytes: 256 << 10,
            per_identity_connections: None,
            per_ip_connections: 0,
            ip_overrides: Vec::new(),
            ip_limiter: Default::default(),
            connection_rate: Default::default(),
            identity_rate: Default::default(),
            control_rate: crate::limits::RateConfig {
                messages_per_s: Some(DEFAULT_CONTROL_FRAMES_PER_S),
                burst_messages: Some(DEFAULT_CONTROL_FRAMES_BURST),
                ..Default::default()
            },
        }
    }
}

impl Limits {
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// How long a connection may stay silent: `first_byte_timeout_ms`, within the handshake's.
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_millis(self.first_byte_timeout_ms.min(self.handshake_timeout_ms))
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.write_timeout_ms)
    }
    /// None: no server pings.
    pub fn ping_interval(&self) -> Option<Duration> {
        (self.ping_interval_ms > 0).then(|| Duration::from_millis(self.ping_interval_ms))
    }
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_millis(self.pong_timeout_ms)
    }
    pub fn close_timeout(&self) -> Duration {
        Duration::from_millis(self.close_timeout_ms)
    }
    pub fn frame_timeout(&self) -> Duration {
        Duration::from_millis(self.frame_timeout_ms)
    }
}

/// Flags that override the file, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cores: Option<usize>,
    pub cpus: Option<Vec<usize>>,
    pub admin: Option<SocketAddr>,
    pub state_dir: Option<PathBuf>,
    pub control: Option<PathBuf>,
}

impl Config {
    /// Reads and parses a TOML file; unknown keys are refused.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.source = Some(path.to_owned());
        Ok(config)
    }

    /// Parses TOML text. The error carries toml's key, line and reason.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The configuration in force, every default spelled out, as TOML that reads back to the
    /// same configuration (`wssedge check --print`). A password in a URL (`redis://:pw@…`)
    /// is replaced by `REDACTED`: the output is meant for tickets and diffs. Secrets the edge
    /// reads from files (JWT keys, the audit key, Redis' `password_file`) appear as their paths.
    pub fn effective_toml(&self) -> Result<String, String> {
        let mut value = toml::Value::try_from(self).map_err(|e| e.to_string())?;
        redact_url_passwords(&mut value);
        toml::to_string_pretty(&value).map_err(|e| e.to_string())
    }

    /// Applies command-line flags over the file's values.
    pub fn apply(&mut self, o: Overrides) {
        self.overrides = o.clone();
        if !o.listen.is_empty() {
            self.server.listen = o.listen;
        }
        if o.cert.is_some() {
            self.tls.cert = o.cert;
        }
        if o.key.is_some() {
            self.tls.key = o.key;
        }
        if o.cores.is_some() {
            self.server.cores = o.cores;
            self.server.cpus = None;
        }
        if o.cpus.is_some() {
            self.server.cpus = o.cpus;
            self.server.cores = None;
        }
        if let Some(admin) = o.admin {
            self.server.admin = admin;
        }
        if let Some(dir) = o.state_dir {
            self.server.state_dir = dir;
        }
        if o.control.is_some() {
            self.server.control = o.control;
        }
    }

    /// Checks every value once, so the rest of the edge can trust them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.origin.validate()?;
        match &self.upstream {
            Some(upstream) => upstream.validate(&self.routes)?,
            None => crate::routes::validate(&self.routes, false)?,
        }
        self.audit.validate()?;
        self.compression.validate()?;
        self.telemetry.validate()?;
        if let Some(fleet) = &self.fleet {
            fleet.validate()?;
        }
        let feeds = self.pubsub.feed_urls()?;
        if let Some(feed) = feeds.iter().find(|f| f.tls) {
            if self
                .upstream
                .as_ref()
                .and_then(|u| u.tls.as_ref())
                .is_none()
            {
                return Err(ConfigError::invalid(
                    "pubsub.feeds.url",
                    format!("wss://{}:{}{}", feed.host, feed.port, feed.target),
                    "a wss:// feed needs [upstream.tls] ca = \"…\" to verify it",
                ));
            }
        }
        if let Some(jwt) = &self.jwt {
            jwt.validate()?;
        }
        let s = &self.server;
        if s.listen.is_empty() {
            return Err(ConfigError::invalid(
                "server.listen",
                "[]",
                "at least one listen address is needed",
            ));
        }
        for (i, a) in s.listen.iter().enumerate() {
            if s.listen[..i].contains(a) {
                return Err(ConfigError::invalid("server.listen", a, "listed twice"));
            }
        }
        if s.cores.is_some() && s.cpus.is_some() {
            return Err(ConfigError::invalid(
                "server.cores",
                s.cores.unwrap_or(0),
                "give either `cores` or `cpus`, not both",
            ));
        }
        if s.drain_timeout_ms == 0 {
            return Err(ConfigError::invalid(
                "server.drain_timeout_ms",
                0,
                "must be greater than 0 (the time sessions get to finish their close handshake)",
            ));
        }
        if s.busy_poll_us > MAX_BUSY_POLL_US {
            return Err(ConfigError::invalid(
                "server.busy_poll_us",
                s.busy_poll_us,
                format!(
                    "at most {MAX_BUSY_POLL_US} (a window this long never lets a core sleep under \
                     any traffic: isolate the core and keep the window to tens of microseconds)"
                ),
            ));
        }
        if s.cores == Some(0) {
            return Err(ConfigError::invalid(
                "server.cores",
                0,
                "must be at least 1",
            ));
        }
        if let Some(cpus) = &s.cpus {
            if cpus.is_empty() {
                return Err(ConfigError::invalid(
                    "server.cpus",
                    "[]",
                    "name at least one CPU",
                ));
            }
            for (i, c) in cpus.iter().enumerate() {
                if cpus[..i].contains(c) {
                    return Err(ConfigError::invalid(
                        "server.cpus",
                        format!("{cpus:?}"),
                        format!("CPU {c} listed twice"),
                    ));
                }
            }
        }
        self.tls.validate()?;
        if self.tls.cert.is_none() {
            if let Some(a) = s.listen.iter().find(|a| !a.ip().is_loopback()) {
                return Err(ConfigError::invalid(
                    "server.listen",
                    a,
                    "the development certificate is for loopback only: give a real certificate with \
                     --cert/--key (or [tls] cert/key), or listen on 127.0.0.1/::1",
                ));
            }
        }
        let l = &self.limits;
        let positive: [(&'static str, u64); 17] = [
            ("limits.pong_timeout_ms", l.pong_timeout_ms),
            ("limits.close_timeout_ms", l.close_timeout_ms),
            ("limits.frame_timeout_ms", l.frame_timeout_ms),
            ("limits.max_outbound_bytes", l.max_outbound_bytes as u64),
            ("limits.max_connections", l.max_connections as u64),
            (
                "limits.max_handshakes_in_flight",
                l.max_handshakes_in_flight as u64,
            ),
            (
                "limits.max_silent_connections",
                l.max_silent_connections as u64,
            ),
            ("limits.first_byte_timeout_ms", l.first_byte_timeout_ms),
            ("limits.handshake_timeout_ms", l.handshake_timeout_ms),
            ("limits.idle_timeout_ms", l.idle_timeout_ms),
            ("limits.write_timeout_ms", l.write_timeout_ms),
            ("limits.max_frame_bytes", l.max_frame_bytes as u64),
            ("limits.max_message_bytes", l.max_message_bytes as u64),
            (
                "limits.max_buffered_bytes_per_core",
                l.max_buffered_bytes_per_core as u64,
            ),
            ("limits.max_request_bytes", l.max_request_bytes as u64),
            ("limits.max_headers", l.max_headers as u64),
            (
                "limits.socket_send_buffer_bytes",
                l.socket_send_buffer_bytes as u64,
            ),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(ConfigError::invalid(key, 0, "must be greater than 0"));
            }
        }
        if l.socket_recv_buffer_bytes < 4096 {
            return Err(ConfigError::invalid(
                "limits.socket_recv_buffer_bytes",
                l.socket_recv_buffer_bytes,
                "must be at least 4096",
            ));
        }
        if l.max_frame_bytes > l.max_message_bytes {
            return Err(ConfigError::invalid(
                "limits.max_frame_bytes",
                l.max_frame_bytes,
                format!(
                    "must not exceed limits.max_message_bytes ({})",
                    l.max_message_bytes
                ),
            ));
        }
        if let Err(e) = l.ip_limits().validate() {
            return Err(ConfigError::invalid(
                "limits.ip_overrides",
                l.ip_overrides.len(),
                e.to_string(),
            ));
        }
        l.connection_rate()?;
        l.identity_rate()?;
        l.control_rate()?;
        if l.max_request_bytes < 256 {
            return Err(ConfigError::invalid(
                "limits.max_request_bytes",
                l.max_request_bytes,
                "must be at least 256",
            ));
        }
        Ok(())
    }
}

/// Replaces the password of every `scheme://user:password@host…` string in `value`.
fn redact_url_passwords(value: &mut toml::Value) {
    match value {
        toml::Value::String(s) => {
            if let Some(redacted) = redact_url_password(s) {
                *s = redacted;
            }
        }
        toml::Value::Array(items) => items.iter_mut().for_each(redact_url_passwords),
        toml::Value::Table(t) => t.iter_mut().for_each(|(_, v)| redact_url_passwords(v)),
        _ => {}
    }
}

/// `scheme://user:password@rest` with the password replaced; `None` when there is none.
fn redact_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (userinfo, host) = rest[..authority_end].rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    if password.is_empty() {
        return None;
    }
    Some(format!(
        "{scheme}://{user}:REDACTED@{host}{}",
        &rest[authority_end..]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `check --print`: every key, readable back into the same configuration; passwords in URLs
    /// replaced.
    #[test]
    fn the_effective_configuration_reads_back_as_itself() {
        let readme = include_str!("../../README.md");
        let start = readme.find("## Configuration").unwrap();
        let block = &readme[start..];
        let body = &block[block.find("```toml").unwrap() + 7..];
        let toml_text = &body[..body.find("```").unwrap()];
        for text in [
            "",
            toml_text,
            "[fleet]\nredis = \"redis://edge:s3cret@10.0.0.5:6379/0\"\n\
             [jwt]\naudience = \"wssedge\"\n\
             [[routes]]\nprefix = \"/md\"\npubsub = true\n",
        ] {
            let config = Config::from_toml(text).unwrap();
            let printed = config.effective_toml().unwrap();
            let again = Config::from_toml(&printed)
                .unwrap_or_else(|e| panic!("the printed configuration reads back: {e}\n{printed}"));
            assert_eq!(again.effective_toml().unwrap(), printed);
            assert!(printed.contains("max_message_bytes = "), "{printed}");
            assert!(!printed.contains("s3cret"), "{printed}");
        }
        let printed =
            Config::from_toml("[fleet]\nredis = \"redis://edge:s3cret@10.0.0.5:6379/0\"\n")
                .unwrap()
                .effective_toml()
                .unwrap();
        assert!(
            printed.contains("redis = \"redis://edge:REDACTED@10.0.0.5:6379/0\""),
            "{printed}"
        );
    }

    #[test]
    fn url_passwords_and_only_they_are_redacted() {
        let r = |s| redact_url_password(s);
        assert_eq!(
            r("rediss://:pw@redis.example:6380/1").as_deref(),
            Some("rediss://:REDACTED@redis.example:6380/1")
        );
        assert_eq!(
            r("ws://u:p@h:1/path?x=a@b").as_deref(),
            Some("ws://u:REDACTED@h:1/path?x=a@b")
        );
        assert_eq!(r("ws://127.0.0.1:9000/feed?who=a@b"), None);
        assert_eq!(r("redis://user@host"), None);
        assert_eq!(r("/etc/wssedge/wssedge.toml"), None);
    }

    /// The README's "every key with its default" block must stay a valid configuration.
    #[test]
    fn the_readme_configuration_parses_and_validates() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("## Configuration")
            .expect("README has a Configuration section");
        let block = &readme[start..];
        let body = &block[block.find("```toml").expect("a toml block") + 7..];
        let toml = &body[..body.find("```").expect("the block ends")];
        let config = Config::from_toml(toml).expect("the README's configuration parses");
        config
            .validate()
            .expect("the README's configuration validates");
    }

    /// Operators write one value where they have one: every key that takes a list of
    /// scalars takes a single value too (`audience = "wssedge"` was refused with "expected a
    /// sequence").
    #[test]
    fn a_list_key_takes_a_single_value() {
        let c = Config::from_toml(
            "[server]\nlisten = \"127.0.0.1:8443\"\ncpus = 1\n\
             [tls]\nversions = \"1.3\"\ncipher_suites = \"TLS13_AES_128_GCM_SHA256\"\n\
             groups = \"X25519\"\ncrls = \"/etc/wssedge/clients.crl\"\n\
             [[tls.identity_rules]]\npath_prefix = \"/\"\nallow = \"any\"\n\
             [jwt]\nkeys = \"/etc/wssedge/jwt.pem\"\nalgorithms = \"ES256\"\n\
             audience = \"wssedge\"\nrequired_claims = \"exp\"\nsources = \"header\"\n\
             [origin]\nallowed_origins = \"https://trade.example\"\n\
             allowed_hosts = \"edge.example\"\n\
             [upstream]\n[[upstream.groups]]\nname = \"g\"\nmembers = \"ws://127.0.0.1:9000\"\n",
        )
        .unwrap();
        assert_eq!(c.server.listen, ["127.0.0.1:8443".parse().unwrap()]);
        assert_eq!(c.server.cpus, Some(vec![1]));
        assert_eq!(c.tls.versions, ["1.3"]);
        assert_eq!(c.tls.cipher_suites, ["TLS13_AES_128_GCM_SHA256"]);
        assert_eq!(c.tls.groups, ["X25519"]);
        assert_eq!(c.tls.crls, [PathBuf::from("/etc/wssedge/clients.crl")]);
        assert_eq!(c.tls.identity_rules[0].allow, ["any"]);
        let jwt = c.jwt.as_ref().unwrap();
        assert_eq!(jwt.keys, [PathBuf::from("/etc/wssedge/jwt.pem")]);
        assert_eq!(jwt.algorithms, ["ES256"]);
        assert_eq!(jwt.audience, ["wssedge"]);
        assert_eq!(jwt.required_claims, ["exp"]);
        assert_eq!(jwt.sources, [wssedge_proto::jwt::TokenSource::Header]);
        assert_eq!(c.origin.allowed_origins, ["https://trade.example"]);
        assert_eq!(c.origin.allowed_hosts, ["edge.example"]);
        assert_eq!(
            c.upstream.as_ref().unwrap().groups[0].members,
            ["ws://127.0.0.1:9000"]
        );
        // A wrong item is still named with its key.
        let e = Config::from_toml("[server]\nlisten = \"8443\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") && e.contains("socket address"), "{e}");
    }

    #[test]
    fn defaults_validate() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn pubsub_needs_no_upstream_but_a_wss_feed_needs_its_trust() {
        let c = Config::from_toml(
            "[pubsub]\nhistory = 10\n[[pubsub.feeds]]\nurl = \"ws://127.0.0.1:9100/feed\"\n\
             [[routes]]\nprefix = \"/md\"\npubsub = true\n",
        )
        .unwrap();
        c.validate().unwrap();
        let c = Config::from_toml("[[pubsub.feeds]]\nurl = \"wss://feed.example/md\"\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("pubsub.feeds.url") && e.contains("[upstream.tls]"),
            "{e}"
        );
        let c = Config::from_toml("[pubsub]\nqueue_messages = 0\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("pubsub.queue_messages"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Config::from_toml("[limits]\nmax_conections = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_conections"), "{e}");
    }

    #[test]
    fn a_busy_poll_window_is_bounded() {
        let c = Config::from_toml("[server]\nbusy_poll_us = 50\n").unwrap();
        assert!(c.validate().is_ok());
        assert_eq!(Config::default().server.busy_poll_us, 0, "off by default");
        let c = Config::from_toml("[server]\nbusy_poll_us = 1000000\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("server.busy_poll_us") && e.contains("1000000") && e.contains("10000"),
            "{e}"
        );
    }

    #[test]
    fn bad_value_names_key_and_value() {
        let e = Config::from_toml("[limits]\nmax_connections = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_connections"), "{e}");
        let mut c = Config::from_toml("[limits]\nmax_frame_bytes = 0\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("limits.max_frame_bytes") && e.contains("= 0"),
            "{e}"
        );
        c.limits.max_frame_bytes = 100;
        c.limits.max_message_bytes = 10;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("max_message_bytes"));
    }

    #[test]
    fn flags_override_file() {
        let mut c = Config::from_toml("[server]\nlisten = [\"127.0.0.1:1\"]\ncores = 2\n").unwrap();
        c.apply(Overrides {
            listen: vec!["127.0.0.1:2".parse().unwrap()],
            cpus: Some(vec![0]),
            ..Default::default()
        });
        assert_eq!(
            c.server.listen,
            vec!["127.0.0.1:2".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(c.server.cores, None);
        assert_eq!(c.server.cpus, Some(vec![0]));
    }

    #[test]
    fn dev_certificate_is_loopback_only() {
        let mut c = Config::default();
        c.server.listen = vec!["0.0.0.0:8443".parse().unwrap()];
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("--cert"), "{e}");
        c.server.listen = vec!["[::1]:8443".parse().unwrap()];
        c.validate().unwrap();
    }

    #[test]
    fn missing_certificate_file_is_named() {
        let mut c = Config::default();
        c.tls.cert = Some("/nonexistent/cert.pem".into());
        c.tls.key = Some("/nonexistent/key.pem".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("tls.cert") && e.contains("/nonexistent/cert.pem"),
            "{e}"
        );
    }
}
