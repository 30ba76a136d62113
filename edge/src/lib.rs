//! wssedge: a kernel-assisted, thread-per-core WSS edge for Linux.
//!
//! The WebSocket protocol lives in [`ws`], sans-IO: bytes in, events and frames out. [`tls`]
//! owns rustls policy and the owned-buffer driver of its unbuffered API. [`server`] owns
//! threads, sockets and the connection lifecycle; the remaining rooms each do one job.

#![deny(unsafe_code)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod bufpool;
pub mod compression;
pub mod config;
pub mod config_error;
pub mod control;
pub mod ebpf;
pub mod fleet;
pub mod limits;
pub mod metrics;
pub mod privilege;
pub(crate) mod pubsub;
pub(crate) mod readiness;
pub mod reason;
pub mod refuse;
pub(crate) mod repeats;
pub mod routes;
pub mod server;
pub mod signals;
pub mod sockopt;
pub mod systemd;
pub mod telemetry;
pub mod tls;
pub mod upstream;

pub use wssedge_proto::ws;
