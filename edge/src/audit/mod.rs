//! The audit trail: a tamper-evident, append-only record of every admission decision and
//! every state change, written off the data path.
//!
//! ```text
//! core 0 ── AuditSink ──► SPSC ring (+ overflow) ─┐
//! core 1 ── AuditSink ──► SPSC ring (+ overflow) ─┼─► "wssedge-audit" thread ─► <path> (JSON lines)
//! control / reload ── AuditHandle ─► bounded queue ┘      HMAC chain, fsync, rotation
//! ```
//!
//! * Cores never block and never drop: [`AuditSink::record`] pushes into a lock-free ring and
//!   spills into a per-core overflow list when it is full; above the high-water mark
//!   [`AuditSink::over_high_water`] tells the core to refuse new connections before TLS, which
//!   bounds the overflow (each admitted connection emits a bounded number of records, and the
//!   refusals themselves are counted, not queued: [`AuditSink::refused_at_accept`] turns an
//!   episode of them into one `refusal_summary` record per reason, see `summary`).
//! * Every line carries `prev` (the previous line's MAC) and `mac` = HMAC-SHA256(key, prev ||
//!   the line up to and including its `prev` field): without the key nobody can edit, drop,
//!   reorder or recompute records unnoticed. See [`chain`] for the exact byte layout.
//! * Rotated files end with a `seal` record; every file starts with an `open` record naming the
//!   previous file and its last MAC, so the chain runs across files. [`verify`] checks it and
//!   names the first problem.
//! * Durability: records are durable up to the last fsync (`fsync_interval_ms`).
//!
//! Token-derived data: records never hold a token. The only fields derived from one are the
//! `jti`, `sub` and `token_sha256` of an `upgrade` record (see [`token_sha256`]).

mod chain;
mod config;
mod files;
mod key;
use wssedge_proto::audit_record as record;
mod ring;
mod sink;
mod stats;
mod summary;
mod time;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use config::AuditConfig;
pub use record::{AuditEvent, Identity, PeerRefusals};

/// Hex SHA-256 of a token as presented: lets an auditor match a record to a token they hold
/// without the trail ever containing one. (Bearer tokens carry a signature, so the hash cannot
/// be reversed by guessing.)
pub fn token_sha256(token: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token);
    chain::hex(d.as_ref())
}
pub use sink::{AuditHandle, AuditSink};
pub use stats::AuditStats;
pub use verify::{run_cli, sort_trail_files, verify, Problem, ProblemKind, VerifyReport};
pub use writer::AuditTrail;

/// Why the trail could not start or stop cleanly. Every variant says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("audit key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("audit trail {path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: String,
        source: std::io::Error,
    },
    #[error("audit trail {path}: {reason}")]
    Trail { path: PathBuf, reason: String },
    #[error(
        "the audit writer thread stopped on a bug (panic); records it had not written are lost"
    )]
    WriterPanicked,
}
