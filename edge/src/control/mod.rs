//! The control room: the Unix control socket (`--control PATH`) and its client, `wssedge ctl`.
//!
//! The admin listener stays read-only; every change of live state (revocations, reloads,
//! drain) comes through here, from a peer the kernel vouches for (SO_PEERCRED), and the
//! process's [`ControlHandler`] audits each command with the caller's uid and pid.
//!
//! - [`protocol`]: the wire format, one JSON object per line both ways, typed requests.
//! - [`server`]: [`ControlServer`], the accept thread and its bounded client threads.
//! - [`client`]: [`ControlClient`] and [`run_cli`], behind `wssedge ctl`.
//! - `socket`: creating the socket file with mode 0600 in a private directory (not group- or
//!   world-writable, owned by root or us), its lock, removal of our own stale socket only.
//! - [`client`] checks the listener's credentials too: `wssedge ctl` talks only to a server
//!   running as root or as the caller's uid.
//! - `session`: serving one client; `lines`: bounded line reads with a deadline.
//! - `sys`: the few calls std lacks (SO_PEERCRED, fchmod, geteuid, flock), from `wssedge_sys`.

pub mod client;
mod lines;
pub mod protocol;
pub mod server;
mod session;
mod socket;
mod sys;

#[cfg(test)]
mod tests;

pub use client::{run_cli, ClientError, ControlClient};
pub use protocol::{
    parse_request, ProtocolError, Request, Response, RevocationChange, RevocationKind,
    RevocationList, Status,
};
pub use server::{ControlError, ControlHandler, ControlOptions, ControlServer};
pub use sys::PeerCred;
