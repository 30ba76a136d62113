//! Test harness: starts the real `wssedge` binary on ephemeral loopback ports with a temporary
//! state dir, parses its start lines, and kills it on drop. Clients are independent of the
//! server code: tokio-rustls for TLS, tokio-tungstenite for WebSocket, and a small raw frame
//! codec for the cases tungstenite refuses to produce.

mod admin;
mod config;
mod http;
mod kernel;
mod pki;
mod process;
mod python;
mod redis;
mod tls;
mod upgrade;
mod wire;

pub use admin::*;
pub use config::*;
pub use http::*;
pub use kernel::*;
pub use pki::*;
pub use process::*;
pub use python::*;
pub use redis::*;
pub use tls::*;
pub use upgrade::*;
pub use wire::*;

use std::time::Duration;

/// Upper bound for any single wait in these tests (the machine is shared and loaded).
pub const WAIT: Duration = Duration::from_secs(10);

/// Runs `fut` with a deadline; panics with `what` when it expires.
pub async fn within<T>(d: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(d, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {d:?}: {what}"),
    }
}

/// Polls `probe` with its attempt number (0, 1, …) every 50 ms until it gives `Ok`, for up to
/// [`WAIT`]; then panics with `what` and the last `Err` (what the probe saw instead).
pub async fn eventually<T, Fut>(what: &str, mut probe: impl FnMut(u32) -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = std::time::Instant::now() + WAIT;
    for attempt in 0.. {
        match probe(attempt).await {
            Ok(v) => return v,
            Err(seen) => assert!(
                std::time::Instant::now() < deadline,
                "{what}: still not so after {WAIT:?} ({seen})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!("the attempts outlast the deadline")
}

/// Deterministic filler bytes.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
        .collect()
}

/// Writes one line straight to the process's stderr. libtest captures `println!`/`eprintln!`
/// of passing tests; a skip notice or a measured figure must be seen without `--nocapture`.
pub fn visible_line(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Seconds since the UNIX epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}
