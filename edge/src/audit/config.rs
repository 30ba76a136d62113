//! `[audit]` in the configuration file.

use std::path::PathBuf;

use serde::Deserialize;

use crate::audit::key::read_key_file;
use crate::config_error::ConfigError;

/// Smallest rotation size: a file must hold its `open`, `start`, some records and a `seal`.
const MIN_ROTATE_BYTES: u64 = 4096;
const MAX_FSYNC_INTERVAL_MS: u64 = 60_000;
const MIN_RING: usize = 16;
const MAX_RING: usize = 1 << 24;

/// The audit trail's configuration. No `path` means no trail.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The live file. Rotated files sit next to it as `<path>.<UTC time>.<first seq>`.
    pub path: Option<PathBuf>,
    /// The HMAC key: raw bytes (used as is, a trailing newline included), at least 32, mode 0600.
    pub key_file: Option<PathBuf>,
    /// Records are durable up to the last fsync; this bounds what a power cut can take.
    /// 0 = fsync after every batch the writer writes.
    pub fsync_interval_ms: u64,
    /// Rotate the live file once it holds this many bytes.
    pub rotate_bytes: u64,
    /// Records each core may queue before spilling into its overflow list.
    pub ring_capacity: usize,
    /// Fraction of `ring_capacity` above which a core refuses new connections before TLS.
    pub high_water: f64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            path: None,
            key_file: None,
            fsync_interval_ms: 1000,
            rotate_bytes: 64 << 20,
            ring_capacity: 65_536,
            high_water: 0.5,
        }
    }
}

impl AuditConfig {
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Records per core above which [`crate::audit::AuditSink::over_high_water`] is true.
    pub(crate) fn high_water_records(&self) -> usize {
        ((self.ring_capacity as f64 * self.high_water).ceil() as usize)
            .clamp(1, self.ring_capacity.max(1))
    }

    /// Checks every value, and with a `path` also the key file (existence, length, mode).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.fsync_interval_ms > MAX_FSYNC_INTERVAL_MS {
            return Err(ConfigError::invalid(
                "audit.fsync_interval_ms",
                self.fsync_interval_ms,
                format!("at most {MAX_FSYNC_INTERVAL_MS}: records written since the last fsync are lost on a power cut"),
            ));
        }
        if self.rotate_bytes < MIN_ROTATE_BYTES {
            return Err(ConfigError::invalid(
                "audit.rotate_bytes",
                self.rotate_bytes,
                format!("at least {MIN_ROTATE_BYTES}"),
            ));
        }
        if !(MIN_RING..=MAX_RING).contains(&self.ring_capacity) {
            return Err(ConfigError::invalid(
                "audit.ring_capacity",
                self.ring_capacity,
                format!("between {MIN_RING} and {MAX_RING} records per core"),
            ));
        }
        if !(self.high_water.is_finite() && self.high_water > 0.0 && self.high_water <= 1.0) {
            return Err(ConfigError::invalid(
                "audit.high_water",
                self.high_water,
                "a fraction of ring_capacity in (0, 1], e.g. 0.5",
            ));
        }
        let Some(path) = &self.path else {
            if let Some(k) = &self.key_file {
                return Err(ConfigError::invalid(
                    "audit.path",
                    "(unset)",
                    format!("audit.key_file = {} is set but audit.path is not: set audit.path to turn the trail on, or remove key_file", k.display()),
                ));
            }
            return Ok(());
        };
        let shown = path.display();
        if path.file_name().is_none() {
            return Err(ConfigError::invalid(
                "audit.path",
                shown,
                "must name a file",
            ));
        }
        if path.is_dir() {
            return Err(ConfigError::invalid(
                "audit.path",
                shown,
                "is a directory; name a file inside it",
            ));
        }
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            return Err(ConfigError::invalid(
                "audit.path",
                shown,
                format!(
                    "its directory {} does not exist; create it (mode 0700)",
                    dir.display()
                ),
            ));
        }
        let Some(key) = &self.key_file else {
            return Err(ConfigError::invalid(
                "audit.key_file",
                "(unset)",
                "required when audit.path is set: a file of at least 32 random bytes, mode 0600",
            ));
        };
        read_key_file(key, true)
            .map(|_| ())
            .map_err(|reason| ConfigError::invalid("audit.key_file", key.display(), reason))
    }
}
