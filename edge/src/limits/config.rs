//! What a user writes for one rate limit, and the integer form the buckets run on.
//!
//! Rates are converted once, at load, to thousandths of a token per second, so no bucket
//! ever does float arithmetic: two buckets fed the same instants agree to the token, however
//! long they run.

use serde::Deserialize;

use crate::config_error::ConfigError;

pub use wssedge_proto::limits::Rate;
pub(crate) use wssedge_proto::limits::MILLI;

/// Far above what one client can push through one edge; beyond it, leave the key out.
const MAX_MESSAGES_PER_S: f64 = 1e9;
/// 100 GB/s. Also what keeps the shared budget's u64 token timeline from wrapping: at this
/// rate it lasts ~5.8 years of one identity's uninterrupted sessions.
const MAX_BYTES_PER_S: u64 = 100_000_000_000;
/// Bursts above this are "no limit" spelled differently; the cap keeps every product of a
/// burst and the bucket's sub-token scale inside i128.
const MAX_BURST: u64 = 1_000_000_000_000;

/// One rate limit as configured: messages and/or bytes per second, each with an optional
/// burst. Every key is optional; a config with nothing set is no limit at all.
///
/// ```toml
/// messages_per_s = 100      # may be fractional: 0.5 = one message every 2 s
/// bytes_per_s = 1_000_000
/// burst_messages = 200      # default: one second's worth (rounded up, at least 1)
/// burst_bytes = 4_000_000   # default: one second's worth
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    /// Sustained messages per second (a message is a whole WebSocket message, any size).
    pub messages_per_s: Option<f64>,
    /// Sustained payload bytes per second.
    pub bytes_per_s: Option<u64>,
    /// Messages that may arrive at once after a quiet spell; default one second's worth.
    pub burst_messages: Option<u64>,
    /// Payload bytes that may arrive at once after a quiet spell; default one second's worth.
    pub burst_bytes: Option<u64>,
}

/// The full key names an error should carry. `ConfigError` keys are `&'static str`, so the
/// section a `RateConfig` sits in is baked in at compile time with `rate_keys!`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateKeys {
    pub messages_per_s: &'static str,
    pub bytes_per_s: &'static str,
    pub burst_messages: &'static str,
    pub burst_bytes: &'static str,
}

/// `rate_keys!("limits.connection_rate")` names every key of a `RateConfig` in that section,
/// e.g. `limits.connection_rate.bytes_per_s` (use it as `crate::limits::rate_keys!`).
macro_rules! rate_keys {
    () => {
        $crate::limits::RateKeys {
            messages_per_s: "messages_per_s",
            bytes_per_s: "bytes_per_s",
            burst_messages: "burst_messages",
            burst_bytes: "burst_bytes",
        }
    };
    ($section:literal) => {
        $crate::limits::RateKeys {
            messages_per_s: concat!($section, ".messages_per_s"),
            bytes_per_s: concat!($section, ".bytes_per_s"),
            burst_messages: concat!($section, ".burst_messages"),
            burst_bytes: concat!($section, ".burst_bytes"),
        }
    };
}
pub(crate) use rate_keys;

impl RateKeys {
    /// The field names alone, for a `RateConfig` validated outside any section.
    pub const BARE: RateKeys = rate_keys!();
}

/// A validated [`RateConfig`]: which units are limited, and how. `Copy`, a few words: every
/// connection gets its own buckets built from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimit {
    pub messages: Option<Rate>,
    pub bytes: Option<Rate>,
}

impl RateLimit {
    pub const UNLIMITED: RateLimit = RateLimit {
        messages: None,
        bytes: None,
    };

    pub fn is_unlimited(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }
}

impl RateConfig {
    /// Checks the config, naming the bare field names in errors.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile_at(&RateKeys::BARE).map(drop)
    }

    /// Checks the config, naming `keys` in errors (see `rate_keys!`).
    pub fn validate_at(&self, keys: &RateKeys) -> Result<(), ConfigError> {
        self.compile_at(keys).map(drop)
    }

    /// The integer limit the buckets run on; errors name the bare field names.
    pub fn compile(&self) -> Result<RateLimit, ConfigError> {
        self.compile_at(&RateKeys::BARE)
    }

    /// The integer limit the buckets run on; errors name `keys`.
    pub fn compile_at(&self, keys: &RateKeys) -> Result<RateLimit, ConfigError> {
        let messages = match self.messages_per_s {
            None => {
                burst_without_rate(keys.burst_messages, self.burst_messages, "messages_per_s")?;
                None
            }
            Some(per_s) => {
                if !per_s.is_finite() || per_s <= 0.0 {
                    return Err(ConfigError::invalid(
                        keys.messages_per_s,
                        per_s,
                        "must be a positive number of messages per second \
                         (leave the key out for no limit)",
                    ));
                }
                if per_s > MAX_MESSAGES_PER_S {
                    return Err(ConfigError::invalid(
                        keys.messages_per_s,
                        per_s,
                        format!("at most {MAX_MESSAGES_PER_S} (leave the key out for no limit)"),
                    ));
                }
                // In range by the checks above: at most 1e12.
                let milli = (per_s * MILLI as f64).round() as u64;
                if milli == 0 {
                    return Err(ConfigError::invalid(
                        keys.messages_per_s,
                        per_s,
                        "below the precision of 0.001 messages per second",
                    ));
                }
                let burst = self.burst_messages.unwrap_or(milli.div_ceil(MILLI));
                check_burst(keys.burst_messages, burst)?;
                Some(Rate::from_milli(milli, burst))
            }
        };
        let bytes = match self.bytes_per_s {
            None => {
                burst_without_rate(keys.burst_bytes, self.burst_bytes, "bytes_per_s")?;
                None
            }
            Some(0) => {
                return Err(ConfigError::invalid(
                    keys.bytes_per_s,
                    0,
                    "0 would refuse every message (leave the key out for no limit)",
                ))
            }
            Some(per_s) if per_s > MAX_BYTES_PER_S => {
                return Err(ConfigError::invalid(
                    keys.bytes_per_s,
                    per_s,
                    format!("at most {MAX_BYTES_PER_S} (leave the key out for no limit)"),
                ))
            }
            Some(per_s) => {
                let burst = self.burst_bytes.unwrap_or(per_s);
                check_burst(keys.burst_bytes, burst)?;
                Some(Rate::per_second(per_s, burst))
            }
        };
        Ok(RateLimit { messages, bytes })
    }
}

fn burst_without_rate(
    key: &'static str,
    burst: Option<u64>,
    rate_key: &str,
) -> Result<(), ConfigError> {
    match burst {
        None => Ok(()),
        Some(b) => Err(ConfigError::invalid(
            key,
            b,
            format!("needs `{rate_key}` as well: a burst without a rate limits nothing"),
        )),
    }
}

fn check_burst(key: &'static str, burst: u64) -> Result<(), ConfigError> {
    if burst == 0 {
        return Err(ConfigError::invalid(
            key,
            0,
            "must be at least 1 (leave the key out for one second's worth)",
        ));
    }
    if burst > MAX_BURST {
        return Err(ConfigError::invalid(
            key,
            burst,
            format!("at most {MAX_BURST}"),
        ));
    }
    Ok(())
}
