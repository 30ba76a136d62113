//! The admin listener: read-only HTTP for `/metrics` (Prometheus text), `/healthz` and
//! `/readyz`. It runs on its own small thread, off the cores, and answers one short request per
//! connection with bounded reads and timeouts, so a scraper can never slow the data path.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Registry;

const MAX_REQUEST: usize = 4096;

/// Binds the admin address and serves it on a background thread. Returns the bound address.
pub fn start(addr: SocketAddr, registry: Registry) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    serve(listener, registry, Arc::new(AtomicBool::new(false)))?;
    Ok(bound)
}

/// Serves `listener` on a background thread until `stop` is set (a restart hands the
/// listener on: the successor serves it from then on). The listener is made non-blocking and
/// polled, so a stop is noticed within [`STOP_POLL`] without shutting the socket down (it may
/// be shared with the successor).
pub fn serve(
    listener: TcpListener,
    registry: Registry,
    stop: Arc<AtomicBool>,
) -> io::Result<SocketAddr> {
    let bound = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("wssedge-admin".into())
        .spawn(move || {
            let accept_failures = crate::repeats::Repeats::every(Duration::from_secs(10));
            while !stop.load(Ordering::Relaxed) {
                match crate::sockopt::poll_readable(listener.as_fd(), STOP_POLL) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin poll failed");
                        std::thread::sleep(STOP_POLL);
                        continue;
                    }
                }
                match listener.accept() {
                    Ok((s, _)) => {
                        // Accepted sockets inherit nothing from the listener's O_NONBLOCK.
                        let _ = s.set_nonblocking(false);
                        if let Err(e) = answer(s, &registry) {
                            tracing::debug!(error = %e, "admin request failed");
                        }
                    }
                    // Another process sharing the listener took it first.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => {
                        // EMFILE and friends: retried every 50 ms, said once per interval.
                        if let Some(times) = accept_failures.note(std::time::Instant::now()) {
                            tracing::warn!(error = %e, times, "admin accept failed (retried every 50 ms; said once per 10 s)");
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(bound)
}

/// How soon the admin thread notices a stop.
const STOP_POLL: Duration = Duration::from_millis(100);

fn answer(mut stream: TcpStream, registry: &Registry) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return respond(&mut stream, 431, "text/plain", "request too large\n");
        }
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" && method != "HEAD" {
        return respond(&mut stream, 405, "text/plain", "only GET\n");
    }
    let (status, ctype, body) = route(path, registry);
    respond(&mut stream, status, ctype, &body)
}

/// What each admin path answers: (status, content type, body).
pub fn route(path: &str, registry: &Registry) -> (u16, &'static str, String) {
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", registry.render()),
        "/healthz" => (
            200,
            "text/plain",
            match &registry.fleet {
                Some(fleet) => format!("ok\n{}", fleet.health_line()),
                None => "ok\n".into(),
            },
        ),
        // A draining edge must leave the load balancer's rotation at once, even while its
        // cores still serve the sessions they are closing.
        "/readyz" if registry.is_draining() => (503, "text/plain", "draining\n".into()),
        "/readyz" if registry.all_alive() => (200, "text/plain", "ready\n".into()),
        "/readyz" => (
            503,
            "text/plain",
            "not ready: a core is not serving\n".into(),
        ),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn respond(stream: &mut TcpStream, status: u16, ctype: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        crate::refuse::status_text(status),
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::CoreMetrics;

    #[test]
    fn readyz_follows_the_cores_and_metrics_render() {
        let core = Arc::new(CoreMetrics::new(0, 0));
        let reg = Registry {
            fleet: None,
            cores: vec![core.clone()],
            ktls_available: false,
            audit: None,
            draining: Default::default(),
            rooms: Vec::new(),
        };
        assert_eq!(route("/readyz", &reg).0, 503);
        core.alive.store(true, Ordering::Relaxed);
        assert_eq!(route("/readyz", &reg).0, 200);
        reg.draining.store(true, Ordering::Relaxed);
        assert_eq!(
            route("/readyz", &reg),
            (503, "text/plain", "draining\n".into())
        );
        assert_eq!(route("/healthz", &reg).0, 200);
        let (status, _, body) = route("/metrics", &reg);
        assert_eq!(status, 200);
        assert!(body.contains("wssedge_connections_accepted_total"));
        assert_eq!(route("/nope", &reg).0, 404);
    }

    #[test]
    fn serves_over_http() {
        let reg = Registry {
            fleet: None,
            cores: vec![Arc::new(CoreMetrics::new(0, 0))],
            ktls_available: false,
            audit: None,
            draining: Default::default(),
            rooms: Vec::new(),
        };
        let addr = start("127.0.0.1:0".parse().unwrap(), reg).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.ends_with("ok\n"));
    }
}
