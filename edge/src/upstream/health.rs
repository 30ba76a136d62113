//! The health checker: one background thread for the whole process (never on a core), with
//! short-lived helpers for each round, that checks every member each interval — a TCP connect within the timeout, plus a full TLS
//! handshake for wss:// members — and sets its health flag. Name resolution happens here too,
//! so the cores never block on DNS. A transition is logged once (warn when a member goes down,
//! info when it comes back). Dropping the checker stops and joins the thread.
//!
//! Up to 16 members are checked at once, each on a thread of its own: a round takes about one
//! timeout per 16 members, and the next round starts one interval after the previous one
//! ended.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;

use super::balancer::Member;

/// Process-wide check counters, for /metrics.
#[derive(Debug, Default)]
pub struct HealthStats {
    pub checks: AtomicU64,
    pub failures: AtomicU64,
    pub rounds: AtomicU64,
}

/// What one check needs.
#[derive(Clone)]
pub struct CheckConfig {
    pub timeout: Duration,
    /// For wss:// members (None: their check fails, as a connect would).
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("cannot resolve: {0}")]
    Resolve(std::io::Error),
    #[error("no address")]
    NoAddress,
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("TLS handshake: {0}")]
    Tls(String),
    #[error("timed out")]
    Timeout,
}

/// Checks one member once (blocking, bounded by `cfg.timeout` for the connect and again for
/// the TLS handshake).
pub fn check_member(member: &Member, cfg: &CheckConfig) -> Result<(), CheckError> {
    let addrs = member.resolve().map_err(CheckError::Resolve)?;
    let addr = *addrs.first().ok_or(CheckError::NoAddress)?;
    let tcp =
        TcpStream::connect_timeout(&addr, cfg.timeout).map_err(|source| match source.kind() {
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => CheckError::Timeout,
            _ => CheckError::Connect { addr, source },
        })?;
    if member.url.tls {
        let tls = cfg
            .tls
            .clone()
            .ok_or_else(|| CheckError::Tls("no [upstream.tls] configuration".into()))?;
        tls_handshake(tcp, &member.url.host, tls, cfg.timeout)?;
    }
    Ok(())
}

fn tls_handshake(
    mut tcp: TcpStream,
    host: &str,
    config: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), CheckError> {
    let deadline = Instant::now() + timeout;
    let name = ServerName::try_from(host.to_owned()).map_err(|e| CheckError::Tls(e.to_string()))?;
    let mut conn =
        rustls::ClientConnection::new(config, name).map_err(|e| CheckError::Tls(e.to_string()))?;
    while conn.is_handshaking() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CheckError::Timeout);
        }
        let _ = tcp.set_read_timeout(Some(left));
        let _ = tcp.set_write_timeout(Some(left));
        match conn.complete_io(&mut tcp) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(CheckError::Timeout)
            }
            Err(e) => return Err(CheckError::Tls(e.to_string())),
        }
    }
    // A polite close: the member should not log a reset for every check.
    conn.send_close_notify();
    let _ = conn.write_tls(&mut tcp);
    let _ = tcp.flush();
    Ok(())
}

/// Members checked at once. A round takes about one check timeout per this many members, not
/// one per member: a member that black-holes the checks does not hold up the others' verdicts.
const PARALLEL_CHECKS: usize = 16;

/// Checks every member once (up to [`PARALLEL_CHECKS`] at a time, each on a short-lived
/// thread), updating flags and counters and logging transitions.
pub fn check_round(members: &[Arc<Member>], cfg: &CheckConfig, stats: &HealthStats) {
    for batch in members.chunks(PARALLEL_CHECKS) {
        std::thread::scope(|s| {
            for m in batch {
                let check = || check_and_record(m, cfg, stats);
                // Without a thread to spare, the check runs here: later, never skipped.
                if let Err(e) = std::thread::Builder::new()
                    .name("wssedge-check".into())
                    .spawn_scoped(s, check)
                {
                    tracing::debug!(error = %e, "no thread for a health check; checking inline");
                    check_and_record(m, cfg, stats);
                }
            }
        });
    }
    stats.rounds.fetch_add(1, Ordering::Relaxed);
}

/// One member's check: its flag, counters and a log line when its health changes.
fn check_and_record(m: &Member, cfg: &CheckConfig, stats: &HealthStats) {
    let result = check_member(m, cfg);
    stats.checks.fetch_add(1, Ordering::Relaxed);
    m.count_health(result.is_ok());
    let was = m.set_healthy(result.is_ok());
    match result {
        Ok(()) if !was => {
            tracing::info!(group = %m.group, member = %m.url, "upstream member is healthy again");
        }
        Ok(()) => {}
        Err(e) => {
            stats.failures.fetch_add(1, Ordering::Relaxed);
            if was {
                tracing::warn!(group = %m.group, member = %m.url, error = %e, "upstream member failed its health check");
            }
        }
    }
}

/// The running checker thread. Dropping it stops and joins the thread.
pub struct HealthChecker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<HealthStats>,
}

impl HealthChecker {
    /// Starts the thread; the first round runs at once.
    pub fn start(
        members: Vec<Arc<Member>>,
        cfg: CheckConfig,
        interval: Duration,
    ) -> std::io::Result<Self> {
        let stats = Arc::new(HealthStats::default());
        let (tx, rx) = mpsc::channel::<()>();
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("wssedge-health".into())
            .spawn(move || loop {
                check_round(&members, &cfg, &thread_stats);
                // A message or a dropped sender both mean stop.
                match rx.recv_timeout(interval) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })?;
        Ok(Self {
            stop: Some(tx),
            thread: Some(thread),
            stats,
        })
    }

    pub fn stats(&self) -> &Arc<HealthStats> {
        &self.stats
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread out of its wait; a round in progress finishes
        // first (bounded by members × timeout).
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for HealthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecker")
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::breaker::Breaker;
    use crate::upstream::config::MemberUrl;
    use std::net::TcpListener;

    fn member(url: &str) -> Arc<Member> {
        Arc::new(Member::new(
            MemberUrl::parse(url).unwrap(),
            "g",
            Breaker::new(1, Duration::from_secs(1), Instant::now()),
        ))
    }

    /// A member `ws://127.0.0.1:PORT/` and the listener on PORT (dropping it takes the member
    /// down).
    fn listening_member() -> (TcpListener, Arc<Member>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let m = member(&format!(
            "ws://127.0.0.1:{}/",
            l.local_addr().unwrap().port()
        ));
        (l, m)
    }

    fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    fn plain() -> CheckConfig {
        CheckConfig {
            timeout: Duration::from_millis(300),
            tls: None,
        }
    }

    #[test]
    fn tcp_check_sets_the_flag_and_counts() {
        let (l, up) = listening_member();
        let down = member(&format!("ws://127.0.0.1:{}/", closed_port()));
        let stats = HealthStats::default();
        check_round(&[up.clone(), down.clone()], &plain(), &stats);
        assert!(up.is_healthy());
        assert!(!down.is_healthy());
        assert_eq!(stats.checks.load(Ordering::Relaxed), 2);
        assert_eq!(stats.failures.load(Ordering::Relaxed), 1);
        let s = down.stats();
        assert_eq!(
            (s.health_checks, s.health_failures, s.healthy),
            (1, 1, false)
        );
        drop(l);
        check_round(std::slice::from_ref(&up), &plain(), &stats);
        assert!(!up.is_healthy());
    }

    #[test]
    fn wss_check_needs_a_verified_handshake() {
        use crate::tls::testpki::TestPki;
        use crate::upstream::test_support::client_config;
        let pki = TestPki::new_named("upstream CA");
        let server_cfg = pki.server_config("127.0.0.1");
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = l.accept().unwrap();
                let mut conn = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                while conn.is_handshaking() {
                    if conn.complete_io(&mut s).is_err() {
                        break;
                    }
                }
            }
        });
        let m = member(&format!("wss://127.0.0.1:{port}/"));
        let good = CheckConfig {
            timeout: Duration::from_secs(2),
            tls: Some(client_config(&pki, None)),
        };
        check_member(&m, &good).unwrap();
        // A client that trusts another CA refuses the member.
        let other = TestPki::new_named("other CA");
        let bad = CheckConfig {
            timeout: Duration::from_secs(2),
            tls: Some(client_config(&other, None)),
        };
        let e = check_member(&m, &bad).unwrap_err();
        assert!(matches!(e, CheckError::Tls(_)), "{e}");
        server.join().unwrap();
    }

    /// Members whose TLS handshake never answers are checked side by side: their connections
    /// are all open at once, where one after another each would close before the next.
    #[test]
    fn silent_members_are_checked_at_once_not_one_after_another() {
        use crate::tls::testpki::TestPki;
        use crate::upstream::test_support::client_config;
        use std::sync::atomic::AtomicUsize;
        const N: usize = 4;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, m) = (open.clone(), most.clone());
        // Accepts N connections, never speaks, and counts how many are open together.
        let silent = std::thread::spawn(move || {
            let readers: Vec<_> = (0..N)
                .map(|_| {
                    let (mut s, _) = l.accept().unwrap();
                    let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(now, Ordering::SeqCst);
                    let o = o.clone();
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut s, &mut std::io::sink());
                        o.fetch_sub(1, Ordering::SeqCst);
                    })
                })
                .collect();
            readers.into_iter().for_each(|r| r.join().unwrap());
        });
        let members: Vec<_> = (0..N)
            .map(|_| member(&format!("wss://127.0.0.1:{port}/")))
            .collect();
        let pki = TestPki::new_named("upstream CA");
        let cfg = CheckConfig {
            timeout: Duration::from_millis(500),
            tls: Some(client_config(&pki, None)),
        };
        let stats = HealthStats::default();
        check_round(&members, &cfg, &stats);
        silent.join().unwrap();
        assert!(members.iter().all(|m| !m.is_healthy()));
        assert_eq!(stats.failures.load(Ordering::Relaxed), N as u64);
        assert_eq!(stats.rounds.load(Ordering::Relaxed), 1);
        assert_eq!(
            most.load(Ordering::SeqCst),
            N,
            "all checks were open together"
        );
    }

    #[test]
    fn the_thread_checks_periodically_and_stops_on_drop() {
        let (l, m) = listening_member();
        let checker =
            HealthChecker::start(vec![m.clone()], plain(), Duration::from_millis(20)).unwrap();
        let t = Instant::now();
        while checker.stats().rounds.load(Ordering::Relaxed) < 3 {
            assert!(t.elapsed() < Duration::from_secs(5), "no rounds");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(m.is_healthy());
        drop(l);
        let t = Instant::now();
        while m.is_healthy() {
            assert!(t.elapsed() < Duration::from_secs(5), "never marked down");
            std::thread::sleep(Duration::from_millis(5));
        }
        let stats = checker.stats().clone();
        let t = Instant::now();
        drop(checker);
        assert!(t.elapsed() < Duration::from_secs(2), "drop joins promptly");
        let rounds = stats.rounds.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(stats.rounds.load(Ordering::Relaxed), rounds, "stopped");
    }
}
