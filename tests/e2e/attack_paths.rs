//! What an attacker can put in the upgrade request's target and headers, in proxy mode, with
//! the in-process backend ([`Backend`]) as the upstream (issue 12, items 2, 4 and 11):
//!
//! - path rules (`[[tls.identity_rules]]`, `[[jwt.scopes]]`) and routes cannot be stepped
//!   around by how the path is spelled: percent-encoding, `;` parameters, `..;`, `//`,
//!   backslashes, double encoding, case. Every spelling is either refused (400 with its
//!   `path_*` reason, nothing sent upstream) or normalised into a path the rule catches; the
//!   upstream never receives an upgrade for a protected path, and what it receives is the
//!   normalised path;
//! - a query-string token never reaches the upstream (the other parameters do, in order);
//! - a subprotocol that is not an RFC 7230 token, a `#fragment`, and a Host that is not
//!   `host[:port]` are refused with 400 before anything is forwarded; a valid Host is what
//!   `X-Forwarded-Host` carries.

use serde_json::json;
use wssedge_proto::attack_spellings::{self, lenient, under};

use crate::admission_jwt::{bearer, claims, hs, jwt_config, key_files, unique_jti, with};
use crate::admission_mtls::Ca;
use crate::audit::trail;
use crate::backend::{Backend, Mode};
use crate::harness::*;
use crate::proxy::proxy_config;

#[test]
fn the_lenient_model_resolves_the_known_spellings() {
    for &(raw, want) in attack_spellings::KNOWN {
        assert_eq!(lenient(raw), want, "{raw}");
    }
}

// ---------------------------------------------------------------------------------------------
// Item 2: path rules and routes against spellings of protected paths
// ---------------------------------------------------------------------------------------------

/// Paths no session may reach without passing their rule: the identity-gated ones, the
/// scope-gated one, and anything a `/u/…` request could reach outside the member's `/base`.
const PROTECTED: &[&str] = &["/api/admin", "/admin", "/trade", "/secret"];

/// What one attempt came to.
#[derive(Debug)]
struct Seen {
    target: &'static str,
    status: u16,
    reason: String,
    /// Upstream connects the attempt caused, and the targets the backend received for it.
    connects: f64,
    received: Vec<String>,
}

async fn connects(srv: &Server) -> f64 {
    srv.metric("wssedge_upstream_connects_total", &[]).await
}

async fn try_target(
    srv: &Server,
    backend: &Backend,
    target: &'static str,
    extra: &[(&str, &str)],
) -> Seen {
    let before_up = backend.upgrades().len();
    let before_connects = connects(srv).await;
    let outcome = attempt(srv, &ws_request(target, extra)).await;
    let (status, reason) = match outcome {
        Outcome::Upgraded { mut ws, .. } => {
            expect_echo(&mut ws, target).await;
            (101, String::new())
        }
        Outcome::Refused(r) => {
            assert!(r.closed, "{target}: connection open after {}", r.status);
            (r.status, r.reason)
        }
    };
    Seen {
        target,
        status,
        reason,
        connects: connects(srv).await - before_connects,
        received: backend.upgrades()[before_up..]
            .iter()
            .map(|u| u.target.clone())
            .collect(),
    }
}

/// `[[tls.identity_rules]]` on `/api/admin`, `/admin` and `/desk/` (client certificates optional; these
/// clients present none), `[[jwt.scopes]]` on `/trade` (the clients' token has scope `read`),
/// routes `/u` → member `/base` and `/` → member `/`, both on one backend; an audit trail.
#[tokio::test]
async fn spellings_of_protected_paths_never_reach_the_upstream() {
    let backend = Backend::start(Mode::Echo).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new("wssedge e2e attack paths CA");
    let ca_path = dir.path().join("client-ca.pem");
    ca.write_pem(&ca_path);
    let files = key_files();
    let t = trail();
    let tls = format!(
        "[tls]\nclient_auth = \"optional\"\nclient_ca = {}\n\
         [[tls.identity_rules]]\npath_prefix = \"/api/admin\"\nallow = [\"cn:ops-admin\"]\n\
         [[tls.identity_rules]]\npath_prefix = \"/admin\"\nallow = [\"cn:ops-admin\"]\n\
         [[tls.identity_rules]]\npath_prefix = \"/desk/\"\nallow = [\"cn:ops-admin\"]\n",
        toml_path(&ca_path)
    );
    let tail = format!(
        "[[jwt.scopes]]\npath_prefix = \"/trade\"\nscope = \"trade\"\n\
         [upstream]\nhealth_interval_ms = 60000\nhealth_timeout_ms = 500\n\
         [[upstream.groups]]\nname = \"root\"\nmembers = [{}]\n\
         [[upstream.groups]]\nname = \"based\"\nmembers = [{}]\n\
         [[routes]]\nprefix = \"/u\"\ngroup = \"based\"\n\
         [[routes]]\nprefix = \"/\"\ngroup = \"root\"\n{}",
        toml_str(&backend.url("/")),
        toml_str(&backend.url("/base")),
        t.section(None)
    );
    let srv = Server::with_config(&format!("{tls}{}", jwt_config(&files, &[], &tail)));
    let tok = hs(with(
        claims("reader", &unique_jti("attack-paths")),
        "scope",
        json!("read"),
    ));
    let auth = bearer(&tok);
    let auth = [("Authorization", auth.as_str())];

    // The plain paths are refused by their rules.
    for (target, status, reason) in [
        ("/api/admin/x", 403, "identity_required"),
        ("/admin/x", 403, "identity_required"),
        ("/trade", 403, "scope_missing"),
        ("/desk/x", 403, "identity_required"),
        // A rule on a directory covers its bare name, which Spring (`/desk/**`) and Express
        // serve as the directory.
        ("/desk", 403, "identity_required"),
        ("/Desk", 403, "identity_required"),
    ] {
        let s = try_target(&srv, &backend, target, &auth).await;
        assert_eq!((s.status, s.reason.as_str()), (status, reason), "{s:?}");
    }

    // Every spelling, and what it must get: refused before anything is forwarded.
    let spellings: &[(&str, u16, &str)] = &[
        ("/api/%61dmin/x", 403, "identity_required"),
        ("/API/Admin/x", 403, "identity_required"),
        ("//admin/x", 400, "path_empty_segment"),
        ("/trade;x=1", 400, "path_parameter"),
        ("/md/..;/trade", 400, "path_parameter"),
        ("/trade%3b", 400, "path_encoded_delimiter"),
        ("/Trade", 403, "scope_missing"),
        ("/%74rade/x", 403, "scope_missing"),
        ("/u/..%2fsecret", 400, "path_encoded_delimiter"),
        ("/u/%2F..%2F..%2Fsecret", 400, "path_encoded_delimiter"),
        ("/u/..\\secret", 400, "path_backslash"),
        ("/u/%252e%252e/secret", 400, "path_double_encoding"),
        ("/u/../secret", 400, "path_dot_segment"),
        ("/u/.%2E/secret", 400, "path_dot_segment"),
        ("/trade%00", 400, "path_control_byte"),
        ("/trade%zz", 400, "path_bad_escape"),
        ("/u/%C0%AE%C0%AE/secret", 400, "path_non_ascii"),
        // What Java's equalsIgnoreCase reads as "admin", a fullwidth slash, a trimmed space.
        ("/api/adm%C4%B1n/x", 400, "path_non_ascii"),
        ("/api%EF%BC%8Fadmin/x", 400, "path_non_ascii"),
        ("/trade%20", 400, "path_encoded_space"),
    ];
    for (known, _) in attack_spellings::KNOWN {
        assert!(
            spellings.iter().any(|(target, _, _)| target == known),
            "{known} is a known spelling the edge is not tried with"
        );
    }
    let mut seen = Vec::new();
    for (target, _, _) in spellings {
        seen.push(try_target(&srv, &backend, target, &auth).await);
    }
    for s in &seen {
        visible_line(&format!(
            "attack path {:<28} -> {} {:<24} upstream connects {} received {:?}",
            s.target, s.status, s.reason, s.connects, s.received
        ));
    }
    // Whatever happened, no upgrade the backend received may resolve to a protected path.
    for u in backend.upgrades() {
        let resolved = lenient(&u.target);
        assert!(
            !PROTECTED.iter().any(|p| under(&resolved, p)),
            "the upstream received {:?}, which a lenient server serves as {resolved:?}",
            u.target
        );
    }
    for (s, (_, status, reason)) in seen.iter().zip(spellings) {
        assert_eq!(
            (s.status, s.reason.as_str()),
            (*status, *reason),
            "{}: {s:?}",
            s.target
        );
        assert_eq!(
            (s.connects, s.received.len()),
            (0.0, 0),
            "{}: a refused request reached the upstream: {s:?}",
            s.target
        );
    }
    for reason in [
        "path_empty_segment",
        "path_encoded_delimiter",
        "path_parameter",
        "path_backslash",
        "path_double_encoding",
        "path_dot_segment",
        "path_control_byte",
        "path_bad_escape",
    ] {
        let n = spellings.iter().filter(|(_, _, r)| *r == reason).count();
        expect_refusals_counted(&srv, reason, n as u64).await;
    }

    // Allowed paths still work, and the upstream receives them normalised: unreserved
    // characters decoded, other escapes kept (in uppercase), the query as sent, the route
    // matched whatever the case.
    for (target, want) in [
        ("/md/%61b%63?x=%41&y", "/md/abc?x=%41&y"),
        ("/u/ok", "/base/ok"),
        ("/U/%7Euser/", "/base/~user/"),
        ("/quotes/a%2cb,c", "/quotes/a%2Cb,c"),
    ] {
        let s = try_target(&srv, &backend, target, &auth).await;
        assert_eq!(s.status, 101, "{s:?}");
        assert_eq!(s.received, vec![want.to_owned()], "{target}");
    }

    // The audit record of a refused upgrade names the normalised path; a 400 is a refusal.
    let records = t
        .wait_for("the identity refusal and a path refusal", |r| {
            r.iter().any(|x| {
                x["event"] == "upgrade"
                    && x["reason"] == "identity_required"
                    && x["path"] == "/api/admin/x"
            }) && r
                .iter()
                .any(|x| x["event"] == "refusal" && x["reason"] == "path_backslash")
        })
        .await;
    assert!(
        !records.iter().any(|x| x["path"] == "/api/%61dmin/x"),
        "an audit record carries the raw spelling"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 4: the query token stays at the edge
// ---------------------------------------------------------------------------------------------

/// `[jwt] sources = ["query"]`: the token admits, and the member receives the target without
/// it, the other parameters in their order.
#[tokio::test]
async fn a_query_token_never_reaches_the_upstream() {
    let backend = Backend::start(Mode::Echo).await;
    let files = key_files();
    let srv = Server::with_config(&jwt_config(
        &files,
        &[("sources", r#"["query"]"#)],
        &proxy_config(&[backend.url("/base")], &[], ""),
    ));
    let cases = [
        ("/p/feed?access_token={t}&x=1", "/base/feed?x=1"),
        ("/p/feed?x=1&access_token={t}&y=2", "/base/feed?x=1&y=2"),
        ("/p?access_token={t}", "/base"),
        ("/p/a?b=2&access%5Ftoken={t}", "/base/a?b=2"),
        // Second tokens smuggled past the extractor's exact name, for upstreams that read
        // query names case-insensitively (ASP.NET) or split on `;` (Go before 1.17).
        (
            "/p/feed?access_token={t}&ACCESS_TOKEN={t}&x=1;access_token={t}",
            "/base/feed?x=1",
        ),
    ];
    for (template, want) in cases {
        let tok = hs(claims("quinn", &unique_jti("query-token")));
        let target = template.replace("{t}", &tok);
        let before = backend.upgrades().len();
        let (_, mut ws) = expect_upgraded(&srv, &ws_request(&target, &[])).await;
        expect_echo(&mut ws, "query token").await;
        let ups = backend.upgrades();
        let got = &ups[before..];
        visible_line(&format!(
            "query token: client {template} -> upstream {:?}",
            got.iter()
                .map(|u| u.target.replace(&tok, "<token>"))
                .collect::<Vec<_>>()
        ));
        assert_eq!(got.len(), 1, "{got:#?}");
        assert!(
            !got[0].target.contains(&tok) && !got[0].target.contains("access"),
            "the token reached the upstream: {}",
            got[0].target.replace(&tok, "<token>")
        );
        assert_eq!(got[0].target, want);
        assert!(
            got[0].headers.iter().all(|(_, v)| !v.contains(&tok)),
            "the token reached the upstream in a header"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Item 11: subprotocols, fragments, Host
// ---------------------------------------------------------------------------------------------

/// A `Sec-WebSocket-Protocol` entry that is not an RFC 7230 token is refused (400
/// `bad_subprotocol`) and nothing is forwarded; a bearer token (base64url and dots) is a
/// token and still works.
#[tokio::test]
async fn a_subprotocol_that_is_not_a_token_is_refused() {
    let backend = Backend::start(Mode::Echo).await;
    let files = key_files();
    let srv = Server::with_config(&jwt_config(
        &files,
        &[("sources", r#"["subprotocol"]"#)],
        &proxy_config(&[backend.url("/base")], &[], ""),
    ));
    let tok = hs(claims("sam", &unique_jti("subprotocol")));
    let bad = ["chat v2", "chat/1", "chat\"", "{chat}", "chat:1", "a@b"];
    for offer in bad {
        let protocols = format!("{offer}, bearer.{tok}");
        let before = (backend.upgrades().len(), connects(&srv).await);
        let r = attempt(
            &srv,
            &ws_request("/p", &[("Sec-WebSocket-Protocol", &protocols)]),
        )
        .await;
        let r = match r {
            Outcome::Upgraded { head, .. } => {
                let ups = backend.upgrades();
                panic!(
                    "{offer:?}: upgraded:\n{head}upstream saw: {:?}",
                    ups.last().map(|u| u.all("sec-websocket-protocol"))
                )
            }
            Outcome::Refused(r) => r,
        };
        check_refused(&r, 400, "bad_subprotocol", offer);
        assert_eq!(
            (backend.upgrades().len(), connects(&srv).await),
            before,
            "{offer:?} reached the upstream"
        );
    }
    expect_refusals_counted(&srv, "bad_subprotocol", bad.len() as u64).await;
    // A token offer (base64url and dots: a token) beside a good application protocol is
    // admitted and only `chat` goes on. (This backend selects no subprotocol, which the edge
    // does not accept from a member it offered one to: the client then gets a 502.)
    let protocols = format!("chat, bearer.{tok}");
    let before = backend.upgrades().len();
    let _ = attempt(
        &srv,
        &ws_request("/p", &[("Sec-WebSocket-Protocol", &protocols)]),
    )
    .await;
    let ups = backend.upgrades();
    assert_eq!(ups.len(), before + 1, "the token offer was refused");
    let u = ups.last().unwrap();
    assert_eq!(u.all("sec-websocket-protocol"), ["chat"]);
    assert!(u.headers.iter().all(|(_, v)| !v.contains(&tok)));

    // Without [jwt] the check holds as well (echo mode); token subprotocols still upgrade.
    let echo = Server::start();
    expect_refused(
        &echo,
        &ws_request("/", &[("Sec-WebSocket-Protocol", "chat, x y")]),
        400,
        "bad_subprotocol",
    )
    .await;
    let (_, mut ws) = expect_upgraded(
        &echo,
        &ws_request("/", &[("Sec-WebSocket-Protocol", "chat, v2.json+x")]),
    )
    .await;
    expect_echo(&mut ws, "tokens").await;
}

/// A request target with a `#fragment` (RFC 6455 §3 forbids it) is refused with 400
/// `fragment_in_target`, in the path or after the query; nothing is forwarded.
#[tokio::test]
async fn a_fragment_in_the_target_is_refused() {
    let backend = Backend::start(Mode::Echo).await;
    let srv = Server::with_config(&proxy_config(&[backend.url("/base")], &[], ""));
    let targets = ["/p/x#frag", "/p/x?y=1#frag", "/p#", "/p/%23ok#"];
    for target in targets {
        let before = (backend.upgrades().len(), connects(&srv).await);
        let r = attempt(&srv, &ws_request(target, &[])).await;
        let r = match r {
            Outcome::Upgraded { .. } => panic!(
                "{target}: upgraded; upstream saw {:?}",
                backend.upgrades().last().map(|u| u.target.clone())
            ),
            Outcome::Refused(r) => r,
        };
        check_refused(&r, 400, "fragment_in_target", target);
        assert_eq!(
            (backend.upgrades().len(), connects(&srv).await),
            before,
            "{target} reached the upstream"
        );
    }
    expect_refusals_counted(&srv, "fragment_in_target", targets.len() as u64).await;
}

/// `Host` must be `host[:port]` (RFC 3986 reg-name, IPv4 or bracketed IPv6; port digits):
/// anything else is 400 `bad_host` and nothing is forwarded; a valid one reaches the upstream
/// as `X-Forwarded-Host`, exactly.
#[tokio::test]
async fn a_malformed_host_is_refused_and_never_forwarded() {
    let backend = Backend::start(Mode::Echo).await;
    let srv = Server::with_config(&proxy_config(&[backend.url("/base")], &[], ""));
    let bad = [
        "evil.example/admin",
        "evil.example?x",
        "user@evil.example",
        "evil.example#x",
        "a\"b",
        "[::1",
        "[::1]x",
        "[not-v6]",
        "host:port",
        "host:",
        "host:99999",
        "h:1:2",
        "<script>",
        "a\\b",
    ];
    for host in bad {
        let before = (backend.upgrades().len(), connects(&srv).await);
        let req = upgrade_request_path("/p", host, WS_KEY, &[]);
        let r = attempt(&srv, &req).await;
        let r = match r {
            Outcome::Upgraded { .. } => panic!(
                "Host {host:?}: upgraded; upstream saw X-Forwarded-Host {:?}",
                backend
                    .upgrades()
                    .last()
                    .map(|u| u.all("x-forwarded-host").join(","))
            ),
            Outcome::Refused(r) => r,
        };
        check_refused(&r, 400, "bad_host", host);
        assert_eq!(
            (backend.upgrades().len(), connects(&srv).await),
            before,
            "Host {host:?} reached the upstream"
        );
    }
    for host in [
        "edge.example",
        "edge.example:8443",
        "10.0.0.1",
        "[::1]:443",
        "[2001:db8::1]",
        "xn--bcher-kva.example",
    ] {
        let req = upgrade_request_path("/p", host, WS_KEY, &[]);
        let (_, mut ws) = expect_upgraded(&srv, &req).await;
        expect_echo(&mut ws, host).await;
        let ups = backend.upgrades();
        assert_eq!(ups.last().unwrap().all("x-forwarded-host"), [host]);
    }
}
