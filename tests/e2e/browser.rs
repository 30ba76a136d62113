//! A real browser against the edge: Debian's chromium, headless, offers permessage-deflate on its
//! own (nothing here shapes its offer), and its JavaScript exchanges text both ways through the
//! echo route, a 1 MiB message among them. The page comes from a small HTTP server inside the
//! test and posts its outcome back to it; the edge's /metrics must show that both directions
//! were really compressed.
//!
//! Chromium comes from `WSSEDGE_E2E_CHROMIUM`, else `chromium` on PATH (`cargo xtask test`
//! installs Debian's package); without it these tests fail, naming what to install.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_channel::mpsc;
use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::harness::*;

/// Chromium's start, the page's 1 MiB of JavaScript string work and the exchange, on a shared
/// two-core machine that may be building at the same time.
const REPORT_WAIT: Duration = Duration::from_secs(60);

/// The size of the large message, in UTF-8 bytes.
const MIB: usize = 1 << 20;

const ECHO_CONFIG: &str = "\
[compression]
enabled = true
[limits]
max_message_bytes = 2097152
max_frame_bytes = 2097152
";

#[tokio::test]
async fn chromium_negotiates_permessage_deflate_and_echoes_text_both_ways() {
    let srv = Server::with_config(ECHO_CONFIG);
    let report = run_page(&srv, "echo").await;
    report.assert_opened();
    let outcome = &report.json;

    assert_eq!(
        outcome["extensions"].as_str(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        "what chromium says was agreed: {outcome:#}"
    );
    assert_eq!(outcome["error"], serde_json::Value::Null, "{outcome:#}");
    let results = outcome["results"].as_array().expect("results");
    let sent = outcome["sent"].as_array().expect("sent");
    assert_eq!(
        results.len(),
        sent.len(),
        "every message came back: {outcome:#}"
    );
    for r in results {
        assert_eq!(r["same"], true, "echo differs: {r}");
    }
    let sizes: Vec<u64> = sent.iter().filter_map(|s| s["bytes"].as_u64()).collect();
    assert!(
        sizes.contains(&(MIB as u64)),
        "a 1 MiB message was sent: {sizes:?}"
    );
    assert_eq!(
        (
            outcome["close"]["code"].as_u64(),
            outcome["close"]["clean"].as_bool()
        ),
        (Some(1000), Some(true)),
        "the page's close was answered: {outcome:#}"
    );

    // Chromium compresses every message it sends (at least those); the edge exactly those of
    // min_bytes (128) or more.
    let big_ones = sizes.iter().filter(|&&n| n >= 128).count() as f64;
    let compressed = "wssedge_compressed_messages_total";
    srv.wait_metric(compressed, &[("direction", "in")], big_ones)
        .await;
    wait_metric_exactly(
        &srv,
        compressed,
        &[("direction", "out")],
        big_ones,
        "the edge compresses what reaches min_bytes, nothing else",
    )
    .await;
    let body = srv.metrics().await;
    let mut seen = Vec::new();
    for direction in ["in", "out"] {
        let bytes = |form| {
            metric_sum(
                &body,
                "wssedge_compression_bytes_total",
                &[("direction", direction), ("form", form)],
            )
        };
        let (plain, wire) = (bytes("uncompressed"), bytes("compressed"));
        // zlib takes this text to about a fifth, never a twentieth: a count far below that
        // lost the bytes of a message's earlier frames.
        assert!(
            plain >= MIB as f64 && wire * 20.0 > plain && wire * 2.0 < plain,
            "{direction}: {wire} bytes on the wire for {plain} uncompressed"
        );
        seen.push(format!(
            "{direction} {plain} B → {wire} B ({:.1}×)",
            plain / wire
        ));
    }
    visible_line(&format!(
        "browser: page reported after {:.1} s; deflate {}",
        report.took.as_secs_f64(),
        seen.join(", ")
    ));
}

#[tokio::test]
async fn chromium_is_closed_1009_when_its_message_inflates_past_the_limit() {
    let srv = Server::with_config(
        "[compression]\nenabled = true\n\
         [limits]\nmax_message_bytes = 65536\nmax_frame_bytes = 65536\n",
    );
    let report = run_page(&srv, "oversize").await;
    report.assert_opened();
    let outcome = &report.json;
    assert!(
        outcome["extensions"]
            .as_str()
            .is_some_and(|e| e.starts_with("permessage-deflate")),
        "{outcome:#}"
    );
    assert_eq!(
        (
            outcome["close"]["code"].as_u64(),
            outcome["close"]["reason"].as_str()
        ),
        (Some(1009), Some("inflated_too_large")),
        "{outcome:#}"
    );
    assert_eq!(outcome["results"], serde_json::json!([]), "{outcome:#}");
    srv.wait_metric_eq(
        "wssedge_inflate_refusals_total",
        &[("reason", "inflated_too_large")],
        1.0,
    )
    .await;
}

/// What the page posted, and how long after chromium's start. Chromium stays up until the
/// report is dropped, so a failed assertion on it prints chromium's log.
struct Report {
    json: serde_json::Value,
    took: Duration,
    _browser: Chromium,
}

impl Report {
    /// The page's WebSocket opened: `ws.extensions` is set in `onopen` only.
    fn assert_opened(&self) {
        let outcome = &self.json;
        assert!(
            outcome["extensions"].is_string(),
            "chromium's WebSocket to the edge never opened (a refused certificate, or a refused \
             upgrade: see the edge's and chromium's logs below): {outcome:#}"
        );
    }
}

/// Serves the page for `mode`, opens it in chromium and waits for the page's report.
async fn run_page(srv: &Server, mode: &str) -> Report {
    let (reports, mut rx) = mpsc::unbounded();
    let site = PageServer::start(page(srv.addr, mode), reports).await;
    let started = Instant::now();
    let mut browser = Chromium::open(&format!("http://{}/", site.addr), &leaf_spki(srv));
    let deadline = tokio::time::sleep(REPORT_WAIT);
    tokio::pin!(deadline);
    let body = tokio::select! {
        body = rx.next() => body.expect("the page server runs as long as the test"),
        status = browser.child.wait() => panic!(
            "chromium exited ({status:?}) before the page reported; requests seen: {:?}\n{}",
            site.seen(),
            browser.log()
        ),
        () = &mut deadline => panic!(
            "no report from the page within {REPORT_WAIT:?}; requests seen: {:?}\n{}",
            site.seen(),
            browser.log()
        ),
    };
    let took = started.elapsed();
    let json = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("the page's report is not JSON ({e}): {body}"));
    Report {
        json,
        took,
        _browser: browser,
    }
}

/// base64(SHA-256(SubjectPublicKeyInfo)) of the certificate the edge presents, so chromium
/// accepts exactly that key (`--ignore-certificate-errors-spki-list`) rather than any.
fn leaf_spki(srv: &Server) -> String {
    use base64::Engine as _;
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    let ca = srv
        .ca_pem
        .as_ref()
        .expect("the edge runs with its dev certificate");
    let leaf_pem = ca.with_file_name("dev-leaf.pem");
    let leaf = CertificateDer::pem_file_iter(&leaf_pem)
        .unwrap_or_else(|e| panic!("read {}: {e}", leaf_pem.display()))
        .next()
        .unwrap_or_else(|| panic!("{} holds no certificate", leaf_pem.display()))
        .expect("a PEM certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("a DER certificate");
    let spki = cert.tbs_certificate.subject_pki.raw;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, spki);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// Headless chromium in a process group of its own, killed whole on drop: its zygote,
/// renderer, GPU and network processes must not outlive the test.
struct Chromium {
    child: tokio::process::Child,
    pgid: libc::pid_t,
    log: PathBuf,
    profile: tempfile::TempDir,
}

impl Chromium {
    fn open(url: &str, spki: &str) -> Chromium {
        let profile = tempfile::tempdir().expect("tempdir");
        let log = profile.path().join("chromium.log");
        let stderr = std::fs::File::create(&log).expect("create chromium.log");
        let mut cmd = tokio::process::Command::new(chromium_binary());
        cmd.args([
            "--headless=new",
            // As root chromium refuses to start sandboxed, and containers seldom allow its
            // namespaces anyway; it only ever loads the test's own page.
            "--no-sandbox",
            "--disable-gpu",
            // Shared memory in a container is often a 64 MiB /dev/shm; the 1 MiB messages
            // pass through it several times.
            "--disable-dev-shm-usage",
            // Network only to loopback: nothing of Google's services, updates or metrics.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-domain-reliability",
            "--disable-sync",
            "--no-first-run",
            "--no-default-browser-check",
            "--no-pings",
            "--metrics-recording-only",
        ])
        // Honoured only together with a user data dir of its own.
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg(url)
        // Its ~/.config, ~/.cache and crash database go to the profile too, not the user's.
        .env("HOME", profile.path())
        .env("XDG_CONFIG_HOME", profile.path().join(".config"))
        .env("XDG_CACHE_HOME", profile.path().join(".cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", chromium_binary().display()));
        let pgid = child.id().expect("a running child") as libc::pid_t;
        Chromium {
            child,
            pgid,
            log,
            profile,
        }
    }

    /// Chromium's stderr, without the D-Bus complaints of a machine without a session bus.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let kept: Vec<&str> = text.lines().filter(|l| !l.contains("dbus/")).collect();
        let tail = &kept[kept.len().saturating_sub(60)..];
        format!(
            "---- chromium stderr ({}) ----\n{}",
            self.log.display(),
            tail.join("\n")
        )
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this test created for chromium.
        unsafe { libc::kill(-self.pgid, libc::SIGKILL) };
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // crashpad's handler leaves the group (it daemonizes); it names the profile in its
        // arguments, so it is found and killed by its pid.
        let left = loop {
            let left = self.leftovers();
            if left.is_empty() || Instant::now() >= deadline {
                break left;
            }
            for &pid in &left {
                // SAFETY: kill(2) on a process of this chromium's (its group or its profile).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        } else {
            assert!(
                left.is_empty(),
                "chromium processes {left:?} outlived SIGKILL for {WAIT:?}"
            );
        }
    }
}

impl Chromium {
    /// Chromium's processes still alive: in its group, or naming its profile. Zombies of the
    /// group that this process adopted (a test may make it a subreaper) are reaped here.
    fn leftovers(&self) -> Vec<libc::pid_t> {
        let profile = self.profile.path().as_os_str().as_encoded_bytes();
        let me = std::process::id() as libc::pid_t;
        let mut left = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return left;
        };
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<libc::pid_t>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // pid (comm) state ppid pgrp ...: comm may hold spaces, so split after its ')'.
            let fields: Vec<&str> = stat
                .rsplit_once(')')
                .map(|(_, rest)| rest.split_whitespace().collect())
                .unwrap_or_default();
            let (Some(state), Some(ppid), Some(pgrp)) = (
                fields.first(),
                fields.get(1).and_then(|f| f.parse::<libc::pid_t>().ok()),
                fields.get(2).and_then(|f| f.parse::<libc::pid_t>().ok()),
            ) else {
                continue;
            };
            if *state == "Z" {
                if pgrp == self.pgid && ppid == me {
                    // SAFETY: waitpid(2) on a zombie child of this process, without blocking.
                    unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
                }
                continue;
            }
            let names_profile = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(profile.len()).any(|w| w == profile));
            if pgrp == self.pgid || names_profile {
                left.push(pid);
            }
        }
        left
    }
}

fn chromium_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("WSSEDGE_E2E_CHROMIUM") {
        return PathBuf::from(p);
    }
    which("chromium").unwrap_or_else(|| {
        panic!(
            "chromium is not installed (apt-get install chromium, or name a Chromium binary in \
             WSSEDGE_E2E_CHROMIUM; `cargo xtask test` installs it)"
        )
    })
}

/// The tiny HTTP server the browser talks to: `GET /` is the page, `POST /report` its outcome
/// (forwarded to the test); anything else 404. One request per connection.
struct PageServer {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    async fn start(page: String, reports: mpsc::UnboundedSender<String>) -> PageServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind page server");
        let addr = listener.local_addr().expect("page server address");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let page = Arc::new(page);
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (page, seen, reports) = (page.clone(), seen2.clone(), reports.clone());
                tokio::spawn(async move {
                    let _ = serve_one(conn, &page, &seen, &reports).await;
                });
            }
        });
        PageServer { addr, seen, task }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut conn: TcpStream,
    page: &str,
    seen: &Mutex<Vec<String>>,
    reports: &mpsc::UnboundedSender<String>,
) -> std::io::Result<()> {
    let (head, mut body) = read_head(&mut conn).await?;
    let request_line = head.lines().next().unwrap_or_default().to_owned();
    seen.lock().unwrap().push(request_line.clone());
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while body.len() < length {
        let mut chunk = vec![0u8; length - body.len()];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let (status, kind, content) =
        match request_line.split_whitespace().take(2).collect::<Vec<_>>()[..] {
            ["GET", "/"] => ("200 OK", "text/html; charset=utf-8", page.as_bytes()),
            ["POST", "/report"] => {
                let _ = reports.unbounded_send(String::from_utf8_lossy(&body).into_owned());
                ("200 OK", "text/plain", &b"thanks"[..])
            }
            _ => ("404 Not Found", "text/plain", &b"not here"[..]),
        };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        content.len()
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(content).await?;
    conn.shutdown().await
}

/// The page: opens the edge's echo route over wss://, sends its messages, compares every echo
/// with what it sent, closes, and posts `{extensions, sent, results, error, close}`.
///
/// `mode` "echo": short ASCII, short non-ASCII, 20 KiB and exactly 1 MiB (UTF-8) of JSON lines
/// with counters, prices and non-ASCII names — compressible, not a repeated block — and a last
/// short one. "oversize": one 256 KiB message of that text, for an edge whose limit is lower.
fn page(edge: SocketAddr, mode: &str) -> String {
    let cfg = serde_json::json!({
        "url": format!("wss://{edge}/"),
        "mode": mode,
        "mib": MIB,
    });
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>wssedge permessage-deflate</title></head>
<body><script>
"use strict";
const CFG = {cfg};
const out = {{ extensions: null, sent: [], results: [], error: null, close: null }};
let reported = false;
function report() {{
  if (reported) return;
  reported = true;
  fetch("/report", {{ method: "POST", body: JSON.stringify(out) }});
}}
function fail(what) {{
  if (out.error === null) out.error = String(what);
}}
window.addEventListener("error", (e) => {{ fail("script error: " + e.message); report(); }});
const enc = new TextEncoder();
function text(bytes, seed) {{
  const places = ["Zürich", "São Paulo", "東京", "Kraków", "Ελλάδα", "Москва", "🚀 launch"];
  const parts = [];
  let len = 0, px = 6400000 + seed;
  for (let i = 0; ; i++) {{
    px += ((i * 7919 + seed) % 201) - 100;
    const line = JSON.stringify({{
      seq: i, venue: places[(i * 5 + seed) % places.length], px: (px / 100).toFixed(2),
      qty: ((i * 37 + seed) % 1000) / 100, side: (i % 3) ? "buy" : "sell", id: (i * 2654435761 % 4294967296).toString(16)
    }}) + "\n";
    const n = enc.encode(line).length;
    if (len + n > bytes) break;
    parts.push(line);
    len += n;
  }}
  parts.push("·".repeat(Math.floor((bytes - len) / 2)) + ".".repeat((bytes - len) % 2));
  return parts.join("");
}}
const msgs = CFG.mode === "echo"
  ? ["hello, edge", "grüße ✓ 日本語 🚀", text(20 * 1024, 1), text(CFG.mib, 2), "bye"]
  : [text(256 * 1024, 3)];
let next = 0;
let ws;
try {{
  ws = new WebSocket(CFG.url);
}} catch (e) {{
  fail("new WebSocket: " + e);
  report();
}}
ws.onopen = () => {{
  out.extensions = ws.extensions;
  for (const m of msgs) {{
    out.sent.push({{ chars: m.length, bytes: enc.encode(m).length }});
    ws.send(m);
  }}
}};
ws.onmessage = (ev) => {{
  if (next >= msgs.length) {{ fail("an echo too many"); return; }}
  const want = msgs[next++];
  const got = ev.data;
  const r = {{ index: next - 1, same: got === want, bytes: typeof got === "string" ? enc.encode(got).length : -1 }};
  if (!r.same && typeof got === "string") {{
    let i = 0;
    while (i < got.length && got[i] === want[i]) i++;
    r.first_difference = i;
  }}
  out.results.push(r);
  if (next === msgs.length) ws.close(1000, "done");
}};
ws.onerror = () => fail("error event after " + next + " echoes");
ws.onclose = (ev) => {{
  out.close = {{ code: ev.code, reason: ev.reason, clean: ev.wasClean }};
  report();
}};
</script></body></html>
"#
    )
}
