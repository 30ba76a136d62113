//! `[fleet]` in the configuration file: the Redis the edges of a fleet share, and what a node
//! does when it cannot reach it.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config_error::ConfigError;

/// A password file is a secret: read at most this much of it.
const MAX_PASSWORD_BYTES: u64 = 4096;
const MIN_LEASE_MS: u64 = 500;
const MAX_LEASE_MS: u64 = 600_000;

/// What a node does with new upgrades while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownMode {
    /// Serve on local state (counted and audited).
    #[default]
    Local,
    /// Refuse new upgrades with 503 `fleet_unavailable`; open sessions go on.
    RefuseNew,
}

impl DownMode {
    pub fn name(self) -> &'static str {
        match self {
            DownMode::Local => "local",
            DownMode::RefuseNew => "refuse_new",
        }
    }
}

/// What a single-use token's replay check does while Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SingleUseDown {
    /// Refuse the token, 401 `replay_check_unavailable`: no node can tell whether another took
    /// it meanwhile.
    #[default]
    Refuse,
    /// Check this node's store only (a token may then be used once per node until Redis is back).
    Local,
}

/// The fleet's Redis and this node's part in it. Absent: a single edge, all state local.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://host:port/db` or `rediss://…` (TLS, verified against `ca`).
    pub redis: String,
    /// CA bundle that verifies a `rediss://` server (default: the system's roots).
    #[serde(default)]
    pub ca: Option<PathBuf>,
    /// The Redis password (AUTH), read from this file (mode 0600, one line).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// This node's name in the fleet (default: the host name and the first listen port).
    #[serde(default)]
    pub node: Option<String>,
    /// A node's fleet-held state expires this long after it stops renewing it.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    #[serde(default)]
    pub down: DownMode,
    #[serde(default)]
    pub single_use_down: SingleUseDown,
}

fn default_lease_ms() -> u64 {
    5_000
}

/// Where the fleet's Redis is, parsed from `redis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTarget {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub db: i64,
}

impl FleetConfig {
    /// Checks every value, and reads the password file (so a bad one stops the start).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.target()?;
        if !(MIN_LEASE_MS..=MAX_LEASE_MS).contains(&self.lease_ms) {
            return Err(ConfigError::invalid(
                "fleet.lease_ms",
                self.lease_ms,
                format!(
                    "between {MIN_LEASE_MS} and {MAX_LEASE_MS}: how long a node that stopped \
                     renewing (killed) still holds its sessions' counts"
                ),
            ));
        }
        if let Some(node) = &self.node {
            check_node_name(node)?;
        }
        if self.ca.is_some() && !self.target()?.tls {
            return Err(ConfigError::invalid(
                "fleet.ca",
                self.ca
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
                "a CA only applies to rediss:// (TLS); use rediss:// or remove `ca`",
            ));
        }
        if let Some(ca) = &self.ca {
            if !ca.is_file() {
                return Err(ConfigError::invalid(
                    "fleet.ca",
                    ca.display(),
                    "no such file (a PEM bundle of the CAs that sign the Redis server's certificate)",
                ));
            }
        }
        self.password()?;
        Ok(())
    }

    /// The parsed `redis` address.
    pub fn target(&self) -> Result<RedisTarget, ConfigError> {
        parse_redis_url(&self.redis)
            .map_err(|why| ConfigError::invalid("fleet.redis", &self.redis, why))
    }

    /// The password from `password_file` (trailing newline dropped), if one is configured.
    pub fn password(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        read_password(path)
            .map(Some)
            .map_err(|why| ConfigError::invalid("fleet.password_file", path.display(), why))
    }

    /// This node's name: `node`, or the host name and the first listen port.
    pub fn node_name(&self, listen: &[SocketAddr]) -> String {
        if let Some(node) = &self.node {
            return node.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "edge".into());
        match listen.first() {
            Some(a) => format!("{host}:{}", a.port()),
            None => host,
        }
    }
}

/// Node names go into Redis keys and listings: printable, no spaces, short.
fn check_node_name(node: &str) -> Result<(), ConfigError> {
    let ok = node.len() <= 64
        && node
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && node
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            "fleet.node",
            node,
            "1 to 64 characters of letters, digits, '-', '_', '.' and ':', starting with a letter or a digit",
        ))
    }
}

/// `redis[s]://[user@]host[:port][/db]`; a password in the URL is refused (it belongs in
/// `password_file`, not in a config file others read).
pub(crate) fn parse_redis_url(url: &str) -> Result<RedisTarget, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("redis://") {
        (false, rest)
    } else if let Some(rest) = url.strip_prefix("rediss://") {
        (true, rest)
    } else {
        return Err("must start with redis:// or rediss:// (TLS)".into());
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Err("no credentials in the URL: put the password in `password_file`".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("bad port {p:?}"))?;
            (h, port)
        }
        _ => (authority, 6379),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("no host".into());
    }
    let db = match path {
        "" => 0,
        p => p
            .parse::<i64>()
            .ok()
            .filter(|d| *d >= 0)
            .ok_or_else(|| format!("bad database number {p:?} (an integer, e.g. /0)"))?,
    };
    Ok(RedisTarget {
        tls,
        host: host.to_string(),
        port,
        db,
    })
}

fn read_password(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "permissions {mode:04o} are too open: the password must not be readable by group or \
             others (chmod 600)"
        ));
    }
    if meta.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "longer than {MAX_PASSWORD_BYTES} bytes: is this the right file?"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let password = text.trim_end_matches(['\r', '\n']);
    if password.is_empty() || password.contains('\n') {
        return Err("must hold the password on one line".into());
    }
    Ok(password.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(toml_text: &str) -> FleetConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_and_urls() {
        let f = fleet("redis = \"redis://127.0.0.1:6380/2\"\n");
        assert_eq!((f.lease_ms, f.down), (5000, DownMode::Local));
        assert_eq!(
            f.target().unwrap(),
            RedisTarget {
                tls: false,
                host: "127.0.0.1".into(),
                port: 6380,
                db: 2
            }
        );
        f.validate().unwrap();
        let t = parse_redis_url("rediss://redis.example").unwrap();
        assert_eq!((t.tls, t.port, t.db), (true, 6379, 0));
        let t = parse_redis_url("redis://[::1]:7000").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 7000));
    }

    #[test]
    fn bad_values_name_the_key_and_the_fix() {
        for (text, key, says) in [
            ("redis = \"http://x\"", "fleet.redis", "redis://"),
            ("redis = \"redis://u:pw@x\"", "fleet.redis", "password_file"),
            ("redis = \"redis://x:0\"", "fleet.redis", "port"),
            ("redis = \"redis://x/db\"", "fleet.redis", "database"),
            (
                "redis = \"redis://x\"\nlease_ms = 10",
                "fleet.lease_ms",
                "between",
            ),
            (
                "redis = \"redis://x\"\nnode = \"a b\"",
                "fleet.node",
                "letters",
            ),
            (
                "redis = \"redis://x\"\nnode = \"-\"",
                "fleet.node",
                "starting",
            ),
            (
                "redis = \"redis://x\"\nca = \"/etc/hosts\"",
                "fleet.ca",
                "rediss://",
            ),
            (
                "redis = \"rediss://x\"\nca = \"/nonexistent.pem\"",
                "fleet.ca",
                "no such file",
            ),
            (
                "redis = \"redis://x\"\npassword_file = \"/nonexistent\"",
                "fleet.password_file",
                "cannot read",
            ),
        ] {
            let e = fleet(text).validate().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(says), "{text}: {e}");
        }
        assert!(toml::from_str::<FleetConfig>("redis = \"redis://x\"\ndown = \"maybe\"").is_err());
    }

    #[test]
    fn the_password_file_must_be_private() {
        let dir = std::env::temp_dir().join(format!("wssedge-fleet-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("redis.pass");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut f = fleet("redis = \"redis://x\"");
        f.password_file = Some(path.clone());
        let e = f.validate().unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(f.password().unwrap().as_deref(), Some("s3cret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_default_node_name_is_the_host_and_the_port() {
        let f = fleet("redis = \"redis://x\"");
        let name = f.node_name(&["127.0.0.1:8443".parse().unwrap()]);
        assert!(name.ends_with(":8443"), "{name}");
        let f = fleet("redis = \"redis://x\"\nnode = \"edge-a\"");
        assert_eq!(f.node_name(&[]), "edge-a");
    }
}
