//! Why a configuration was refused: the key, the value and the reason. Its own room, so that
//! the rooms whose sections `config` holds can report a bad value without importing `config`.

use std::path::PathBuf;

/// Why a configuration was refused. Every variant names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source} (check the path given to --config)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {}", .source.to_string().trim_end())]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("invalid value for `{key}` = {value}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0}")]
    Pubsub(#[from] wssedge_proto::pubsub::PubsubConfigError),
}

impl ConfigError {
    pub fn invalid(
        key: &'static str,
        value: impl std::fmt::Display,
        reason: impl std::fmt::Display,
    ) -> Self {
        ConfigError::Invalid {
            key,
            value: value.to_string(),
            reason: reason.to_string(),
        }
    }
}
