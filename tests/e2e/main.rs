//! End-to-end tests: the real `wssedge` binary on loopback, driven by independent clients
//! (tokio-rustls + tokio-tungstenite, and raw frames where tungstenite refuses to go).
//! Every test starts its own server on ephemeral ports and kills it on drop.

mod harness;

mod admin;
mod admission_jwt;
mod admission_mtls;
mod admission_origin;
mod attack_auth;
mod attack_broken;
mod attack_flow;
mod attack_ops;
mod attack_paths;
mod attack_queues;
mod attack_silent;
mod audit;
/// The in-process ws:// backend the proxy tests forward to.
mod backend;
mod browser;
mod busy_poll;
mod chaos_upstream;
mod cli;
mod compression;
mod control;
mod dashboard;
mod echo;
mod fleet;
mod heartbeat;
mod ip_limits;
mod ktls;
mod lifecycle;
mod limits;
#[cfg(feature = "panic-injection")]
mod panic;
mod privilege;
mod protocol;
mod proxy;
mod pubsub;
mod rate_limits;
mod soft_records;
mod telemetry;
mod transport;
mod upgrade;
