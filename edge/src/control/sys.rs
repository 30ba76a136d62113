//! The calls std does not expose, as the control room uses them: the peer's credentials
//! (SO_PEERCRED), a socket's mode before bind (fchmod), the effective uid, and a non-blocking
//! exclusive lock (flock). They live in `wssedge_sys`.

pub use wssedge_sys::cred::{effective_uid, fchmod, peer_cred, PeerCred};
pub use wssedge_sys::fs::try_lock_exclusive;
