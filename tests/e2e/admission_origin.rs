//! `Origin` and `Host` allow-lists over the wire: exact entries and `*.domain` wildcards,
//! ports, the `null` origin, `require_origin`; refused origins get 403, refused hosts 421
//! (Misdirected Request), each with its JSON reason and counters; the check comes before the
//! token's.

use crate::admission_jwt::{claims, hs, jwt_config, key_files, with_header_token};
use crate::harness::*;

fn with_origin(origin: &str) -> String {
    ws_request("/", &[("Origin", origin)])
}

fn with_host(host: &str) -> String {
    upgrade_request_path("/", host, WS_KEY, &[])
}

const ORIGINS: &str = r#"
[origin]
allowed_origins = ["https://app.example.com", "https://*.trusted.example:*", "https://pinned.example:8443"]
"#;

#[tokio::test]
async fn origins_are_checked_against_exact_and_wildcard_entries() {
    let srv = Server::with_config(ORIGINS);
    for ok in [
        "https://app.example.com",
        "https://APP.example.com",
        "https://app.example.com:443",
        "https://a.trusted.example",
        "https://a.trusted.example:9000",
        "https://a.b.trusted.example:1",
        "https://pinned.example:8443",
    ] {
        let (_, mut ws) = expect_upgraded(&srv, &with_origin(ok)).await;
        expect_echo(&mut ws, ok).await;
    }
    // No Origin at all (a non-browser client) passes unless require_origin is set.
    expect_upgraded(&srv, &ws_request("/", &[])).await;

    let refused = [
        "https://evil.example",
        "https://app.example.com:8443",
        "http://app.example.com",
        "https://app.example.com.evil.example",
        "https://trusted.example",
        "https://atrusted.example",
        "https://pinned.example",
        "null",
        "not an origin",
    ];
    for bad in refused {
        let r = expect_refused(&srv, &with_origin(bad), 403, "origin_not_allowed").await;
        assert!(
            !r.body.contains(bad),
            "the refusal echoes the origin: {}",
            r.body
        );
    }
    expect_refusals_counted(&srv, "origin_not_allowed", refused.len() as u64).await;

    // An independent client (tokio-tungstenite) sees the 403 too.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut request = srv.url().into_client_request().expect("request");
    request
        .headers_mut()
        .insert("Origin", "https://evil.example".parse().expect("value"));
    let got = within(
        WAIT,
        "tungstenite upgrade",
        tokio_tungstenite::client_async(request, srv.tls().await),
    )
    .await;
    match got {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 403);
            let body = resp.body().as_deref().unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
            assert_eq!(v["error"], "origin_not_allowed");
        }
        Err(e) => panic!("expected an HTTP 403, got {e}"),
        Ok(_) => panic!("a refused origin upgraded"),
    }
}

#[tokio::test]
async fn require_origin_refuses_requests_without_one() {
    let srv = Server::with_config(
        "[origin]\nallowed_origins = [\"https://app.example.com\"]\nrequire_origin = true\n",
    );
    expect_refused(&srv, &ws_request("/", &[]), 403, "origin_missing").await;
    expect_upgraded(&srv, &with_origin("https://app.example.com")).await;
    expect_refused(&srv, &with_origin("null"), 403, "origin_not_allowed").await;
    expect_refusals_counted(&srv, "origin_missing", 1).await;
    expect_refusals_counted(&srv, "origin_not_allowed", 1).await;
}

#[tokio::test]
async fn hosts_are_checked_against_exact_and_wildcard_entries_with_421() {
    let srv = Server::with_config(
        r#"
[origin]
allowed_hosts = ["ws.example.com", "*.edge.example", "ports.example.com:9443", "127.0.0.1"]
"#,
    );
    for ok in [
        "ws.example.com",
        "WS.Example.COM",
        "ws.example.com:8443",
        "ws.example.com.",
        "a.edge.example",
        "a.b.edge.example:443",
        "ports.example.com:9443",
        "127.0.0.1",
    ] {
        let (_, mut ws) = expect_upgraded(&srv, &with_host(ok)).await;
        expect_echo(&mut ws, ok).await;
    }
    let refused = [
        "evil.example",
        "edge.example",
        "aedge.example",
        "ws.example.com.evil.example",
        "ports.example.com",
        "ports.example.com:9444",
        "127.0.0.2",
    ];
    for bad in refused {
        let r = expect_refused(&srv, &with_host(bad), 421, "host_not_allowed").await;
        assert!(
            r.head.starts_with("HTTP/1.1 421 "),
            "421 with its reason phrase: {}",
            r.head
        );
    }
    expect_refusals_counted(&srv, "host_not_allowed", refused.len() as u64).await;
}

/// Host and Origin are decided before the token: a refused origin is 403 whether or not a
/// token is there, and a good token does not open a refused origin.
#[tokio::test]
async fn origin_is_decided_before_the_token() {
    let files = key_files();
    let srv = Server::with_config(&jwt_config(
        &files,
        &[],
        "[origin]\nallowed_origins = [\"https://app.example.com\"]\n",
    ));
    let tok = hs(claims("alice", "origin-first"));
    expect_refused(
        &srv,
        &with_origin("https://evil.example"),
        403,
        "origin_not_allowed",
    )
    .await;
    let req = ws_request(
        "/",
        &[
            ("Origin", "https://evil.example"),
            ("Authorization", &format!("Bearer {tok}")),
        ],
    );
    expect_refused(&srv, &req, 403, "origin_not_allowed").await;
    expect_refused(
        &srv,
        &with_origin("https://app.example.com"),
        401,
        "token_missing",
    )
    .await;
    let req = ws_request(
        "/",
        &[
            ("Origin", "https://app.example.com"),
            ("Authorization", &format!("Bearer {tok}")),
        ],
    );
    expect_upgraded(&srv, &req).await;
    expect_upgraded(&srv, &with_header_token("/", &tok)).await;
    expect_refusals_counted(&srv, "origin_not_allowed", 2).await;
    expect_refusals_counted(&srv, "token_missing", 1).await;
}
