//! Kernel TLS offload tests: the real `wssedge` binary with `[tls] ktls = "required"` on a
//! kernel that has kTLS, driven by independent userspace clients (tokio-rustls, tungstenite and
//! a blocking rustls client). `cargo xtask vmtest` runs them inside a QEMU guest on Debian's 6.1
//! kernel with `WSSEDGE_VMTEST=1` and `--test-threads=1`: `/proc/net/tls_stat` is global, so
//! the per-test deltas are only exact when tests run one at a time.
//!
//! Every test proves the offload itself rather than trusting the server: the kernel's
//! `TlsTxSw`/`TlsRxSw` move by exactly the number of connections the test made, and the
//! edge's `wssedge_tls_sessions_total{mode="ktls"}` agrees. On a kernel without kTLS (the
//! development hosts) every test prints `skipped: …` and passes; inside the vmtest guest a
//! missing kTLS is a failure.

// The e2e suite uses (and so checks) every helper; this suite needs only some of them.
#[allow(dead_code, unused_imports)]
#[path = "../e2e/harness/mod.rs"]
mod harness;

mod clients;
mod kernel;

mod close;
mod connections;
mod fanout;
mod key_limit;
mod memory;
mod messages;
mod suites;
