//! `wssedge-sys`: every `unsafe` of the wssedge runtime, behind small safe functions.
//!
//! The `wssedge` crate denies `unsafe_code`; what it needs from the kernel that neither std,
//! socket2 nor rustix offers safely lives here, one room per job. Each `unsafe` block carries a
//! `// SAFETY:` line and each room has tests that exercise it.
//!
//! - [`sock`]: the read path's non-blocking recv/send, queue depths (SIOCOUTQ, TCP_INFO),
//!   poll, shutdown of a listener by number, TCP_DEFER_ACCEPT.
//! - [`ktls`]: the kernel TLS socket options and record-typed `recvmsg`/`sendmsg`.
//! - [`fd`]: borrowing a runtime's raw descriptor, passing descriptors (SCM_RIGHTS), taking the
//!   one a predecessor handed over.
//! - [`cred`]: peer credentials, effective ids, a socket's mode before bind.
//! - [`fs`]: non-blocking exclusive `flock`.
//! - [`affinity`]: the CPUs this process may run on.
//! - [`clock`]: CLOCK_MONOTONIC as a number (systemd wants it).
//! - [`signals`]: blocking and waiting for signals (`sigwait`).
//! - [`bpf_maps`]: the eBPF map layouts and their `aya::Pod` impls.
//! - [`privilege`]: becoming the configured user, giving capabilities back.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod affinity;
pub mod bpf_maps;
pub mod clock;
pub mod cred;
pub mod fd;
pub mod fs;
pub mod ktls;
pub mod privilege;
pub mod signals;
pub mod sock;

#[cfg(test)]
mod unsafe_stays_here;

/// What the rooms' tests share.
#[cfg(test)]
pub(crate) mod test_sockets {
    use std::net::{TcpListener, TcpStream};

    /// A connected loopback TCP pair: (client, server).
    pub(crate) fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        (c, s)
    }
}
