//! Per-source-IP connection limits enforced by the kernel before any TLS work, listener
//! steering, and kernel counters.
//!
//! The kernel side is `ebpf/src/edge.bpf.c` (C, committed compiled as `ebpf/obj/edge.bpf.o`
//! with the SHA-256 of its sources, rebuilt by `cargo xtask ebpf`); the map layouts are in
//! `ebpf/include/edge_maps.h`, mirrored in [`maps`].
//!
//! - [`EbpfLimiter`]: attaches the `sk_reuseport` program to the listener group (refuses
//!   over-limit or blocked sources with an immediate ECONNREFUSED, steers the rest to the
//!   active listeners by 4-tuple hash) and the tracing programs that release slots.
//! - [`UserspaceLimiter`]: the same rules at accept when eBPF cannot load.
//! - [`self_test`]: proves at start that this kernel holds the limit (loading is not enough).
//!
//! Exactness: a slot is reserved atomically at the SYN (fetch-and-add on the source's
//! counter, rolled back over the limit) and released exactly once, whichever way the
//! connection ends; see the header comment of `edge.bpf.c` for every path and
//! [`EbpfLimiter::sweep`] for the residual cases.

mod kernel;
pub mod maps;
mod rules;
mod self_test;
mod userspace;

#[cfg(test)]
mod tests;

use std::net::IpAddr;

pub use kernel::{EbpfError, EbpfLimiter, OBJECT, SOURCES};
pub use rules::{
    addr_of, key_of, Cidr, IpOverride, Limit, LimitConfig, LimitConfigError, RuleTable,
};
pub use self_test::{run as self_test, SelfTestError, SelfTestPassed, SELF_TEST_SOURCE};
pub use userspace::{LimitGuard, Refused, UserspaceLimiter, IP_BLOCKED, IP_LIMIT};

/// Per-address figures: slots held now, accepted and refused in total.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpStats {
    /// Connections holding a slot (handshakes in flight included).
    pub current: u32,
    pub accepted: u64,
    pub refused: u64,
}

/// Global counters of a limiter (kernel: summed over CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterStats {
    /// New connection attempts seen (kernel: SYNs; userspace: acquire calls).
    pub syns_seen: u64,
    pub refused_limit: u64,
    pub refused_blocked: u64,
    /// Attempts that got a slot.
    pub accepted: u64,
    /// Slots given back.
    pub released: u64,
    /// Kernel: a retransmitted SYN of a 4-tuple that already held a slot.
    pub retransmit: u64,
    /// Kernel: no active listener selectable (the kernel's own pick was used).
    pub no_listener: u64,
    /// Kernel: sockets born without a reservation (SYN-cookie ACK), counted late.
    pub unreserved: u64,
    /// Refused because a tracking table was full.
    pub table_full: u64,
    /// Kernel: stale reservations released by [`EbpfLimiter::sweep`].
    pub expired: u64,
}

/// The kernel's counters have the same shape.
pub type KernelStats = LimiterStats;

fn top_n(mut all: Vec<(IpAddr, IpStats)>, n: usize) -> Vec<(IpAddr, IpStats)> {
    all.sort_by(|a, b| b.1.refused.cmp(&a.1.refused).then(a.0.cmp(&b.0)));
    all.truncate(n);
    all
}
