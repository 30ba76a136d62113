//! kTLS policy on a kernel without kTLS (the development hosts: no `CONFIG_TLS`, so
//! `setsockopt(TCP_ULP, "tls")` fails with ENOENT). `required` refuses to start and names what
//! is missing; `auto` (the default) serves over userspace rustls and says so; `off` never
//! offloads. The offload itself is tested in a guest with kTLS (`tests/ktls`, `cargo xtask
//! vmtest`); on such a kernel these tests skip, since they assert its absence.

use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::Message;

use crate::harness::*;

/// False (with a visible line) on a kernel that has kTLS.
fn kernel_without_ktls_or_skip() -> bool {
    if kernel_has_ktls() {
        visible_line(
            "skipped: this kernel has kTLS; the userspace fallback tests need one without",
        );
        return false;
    }
    true
}

#[test]
fn required_refuses_to_start_and_names_the_missing_tls_ulp() {
    if !kernel_without_ktls_or_skip() {
        return;
    }
    let (status, out, err) = ServerBuilder::new()
        .config("[tls]\nktls = \"required\"\n")
        .run_expect_exit();
    assert_eq!(status.code(), Some(2), "stdout: {out}\nstderr: {err}");
    assert!(
        !out.contains("listening on"),
        "it listened without kTLS: {out}"
    );
    assert!(
        err.contains("TCP_ULP") && err.contains("tls"),
        "stderr does not name the missing TCP_ULP \"tls\": {err}"
    );
}

#[tokio::test]
async fn auto_is_the_default_and_serves_over_userspace_tls() {
    if !kernel_without_ktls_or_skip() {
        return;
    }
    for config in ["", "[tls]\nktls = \"auto\"\n"] {
        let srv = Server::with_config(config);
        let line = wait_for_stderr_line(&srv, "kTLS").await;
        assert!(
            line.contains("unavailable") && line.contains("TCP_ULP"),
            "the start-up line does not say kTLS is unavailable and why: {line}"
        );
        serve_one_echo(&srv).await;
        assert_sessions_on_userspace(&srv, 1.0).await;
    }
}

#[tokio::test]
async fn off_serves_over_userspace_tls_without_trying() {
    if !kernel_without_ktls_or_skip() {
        return;
    }
    let srv = Server::with_config("[tls]\nktls = \"off\"\n");
    serve_one_echo(&srv).await;
    assert_sessions_on_userspace(&srv, 1.0).await;
    assert_eq!(
        srv.metric("wssedge_ktls_fallbacks_total", &[]).await,
        0.0,
        "ktls = \"off\" attempted an offload"
    );
}

#[test]
fn check_names_a_bad_ktls_mode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wssedge.toml");
    std::fs::write(&path, "[tls]\nktls = \"sometimes\"\n").unwrap();
    let (code, _out, err) = run_wssedge(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(2), "stderr: {err}");
    assert!(
        err.contains("ktls") && err.contains("sometimes"),
        "stderr does not name the key and the value: {err}"
    );
}

async fn serve_one_echo(srv: &Server) {
    let mut ws = srv.ws().await;
    assert_eq!(
        message_text(&echo(&mut ws, Message::text("over rustls")).await),
        "over rustls"
    );
    within(WAIT, "close", ws.close(None)).await.expect("close");
}

/// `sessions` handshakes counted under userspace TLS, none under kTLS, and the gauge at 0.
async fn assert_sessions_on_userspace(srv: &Server, sessions: f64) {
    let labels = [("mode", "userspace")];
    srv.wait_metric("wssedge_tls_sessions_total", &labels, sessions)
        .await;
    let body = srv.metrics().await;
    assert_eq!(
        metric_sum(&body, "wssedge_tls_sessions_total", &labels),
        sessions
    );
    assert_eq!(
        metric_sum(&body, "wssedge_tls_sessions_total", &[("mode", "ktls")]),
        0.0,
        "a session counted as kTLS on a kernel without it"
    );
    assert!(
        body.lines()
            .any(|l| l.starts_with("wssedge_ktls_available")),
        "no wssedge_ktls_available gauge:\n{body}"
    );
    assert_eq!(metric_sum(&body, "wssedge_ktls_available", &[]), 0.0);
}

/// The first stderr line containing `needle`, waiting (bounded) for the reader thread.
async fn wait_for_stderr_line(srv: &Server, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let err = srv.proc.stderr();
        if let Some(line) = err.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no stderr line containing {needle:?}:\n{err}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
