//! The Grafana dashboard (`ops/grafana/wssedge.json`) against a real edge: one edge with every
//! metric room it has turned on at once (proxy mode with an upstream group, a pub/sub route with
//! a feed, per-IP limits, the audit trail, compression, a fleet on a real `redis-server`), some
//! traffic through each, then every metric name any panel queries must be in its `/metrics`.
//! The dashboard itself must be importable (a `${DS_PROMETHEUS}` input, schemaVersion 39, the
//! `instance` variable) and have a panel with queries for each area.

use std::collections::BTreeSet;

use futures_util::SinkExt as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::admission_jwt::{claims, hs, jwt_config, key_files, unique_jti, with_header_token};
use crate::backend::{Backend, Mode};
use crate::harness::*;
use crate::pubsub::{connect, next_json, publish, subscribe};

const DASHBOARD: &str = include_str!("../../ops/grafana/wssedge.json");

/// Each area of the dashboard, by the titles of panels that must cover it (this test's config
/// turns every one of them on).
const AREAS: &[(&str, &[&str])] = &[
    (
        "connections",
        &["Open sessions per core", "Connections by state"],
    ),
    (
        "handshakes and refusals",
        &[
            "TLS handshakes and upgrades by result",
            "Upgrade refusals by reason (HTTP status before the upgrade)",
            "Close codes after the upgrade",
        ],
    ),
    ("messages", &["Message rate in/out (frames)"]),
    (
        "latency",
        &[
            "Handshake latency (accept to 101)",
            "Proxy hop latency",
            "Pub/sub delivery latency",
        ],
    ),
    (
        "kTLS",
        &["kTLS share of sessions", "TLS sessions: kTLS vs userspace"],
    ),
    (
        "per-IP limiter",
        &[
            "Per-IP limiter mode",
            "eBPF limiter fallback",
            "Per-IP limiter events",
        ],
    ),
    (
        "audit trail",
        &[
            "Audit records written",
            "Audit fsync lag",
            "Audit write errors, rotations and blocked accepts",
        ],
    ),
    (
        "upstreams",
        &["Upstream circuit breakers", "Upstream connects by result"],
    ),
    (
        "pub/sub",
        &[
            "Pub/sub publications and deliveries",
            "Pub/sub drops and slow consumers",
        ],
    ),
    ("compression", &["Compression bytes before/after"]),
    ("fleet", &["Fleet link up"]),
    ("reloads", &["Reloads"]),
];

/// Every panel, rows' nested panels included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The `wssedge_…` identifiers in a PromQL expression (`wssedge_[a-z0-9_]+`).
fn metric_names(expr: &str) -> Vec<String> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = expr[i..].find("wssedge_") {
        let start = i + at;
        let preceded = start > 0 && {
            let c = bytes[start - 1];
            c.is_ascii_alphanumeric() || c == b'_' || c == b':'
        };
        let mut end = start + "wssedge_".len();
        while end < bytes.len()
            && (bytes[end].is_ascii_lowercase()
                || bytes[end].is_ascii_digit()
                || bytes[end] == b'_')
        {
            end += 1;
        }
        if !preceded && end > start + "wssedge_".len() {
            out.push(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// What `/metrics` exposes: family name → type (`# TYPE` lines), and every sample name.
struct Exposed {
    types: std::collections::BTreeMap<String, String>,
    samples: BTreeSet<String>,
}

impl Exposed {
    fn parse(body: &str) -> Exposed {
        let mut types = std::collections::BTreeMap::new();
        let mut samples = BTreeSet::new();
        for line in body.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (words.next(), words.next()) {
                    types.insert(name.to_owned(), kind.to_owned());
                }
            } else if !line.is_empty() && !line.starts_with('#') {
                let end = line
                    .find(|c: char| c == '{' || c.is_whitespace())
                    .unwrap_or(line.len());
                samples.insert(line[..end].to_owned());
            }
        }
        Exposed { types, samples }
    }

    /// `name` is a family (`# TYPE`) or a sample; `X_bucket`, `X_sum` and `X_count` count as
    /// exposed when `X` is a histogram family.
    fn has(&self, name: &str) -> bool {
        let histogram_part = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|suffix| name.strip_suffix(suffix))
            .any(|family| self.types.get(family).map(String::as_str) == Some("histogram"));
        histogram_part || self.types.contains_key(name) || self.samples.contains(name)
    }
}

/// The dashboard is importable and every panel queries something; returns the metric names its
/// queries (and its template variables) use.
fn check_dashboard(dashboard: &Value) -> BTreeSet<String> {
    assert_eq!(dashboard["schemaVersion"], 39, "schemaVersion");
    let inputs = dashboard["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "a DS_PROMETHEUS datasource input: {inputs:?}"
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let instance = variables
        .iter()
        .find(|v| v["name"] == "instance")
        .expect("an `instance` template variable");
    assert_eq!(instance["datasource"]["uid"], "${DS_PROMETHEUS}");

    let mut names = BTreeSet::new();
    names.extend(metric_names(
        instance["definition"].as_str().unwrap_or_default(),
    ));
    let panels = all_panels(dashboard);
    let mut ids = BTreeSet::new();
    let mut queried = 0;
    for p in &panels {
        let title = p["title"].as_str().unwrap_or_default();
        assert!(!title.is_empty(), "a panel without a title: {p}");
        assert!(ids.insert(p["id"].to_string()), "panel id reused: {title}");
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "{title}: the datasource input"
        );
        let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        assert!(!targets.is_empty(), "panel {title:?} has no targets");
        for t in targets {
            let expr = t["expr"].as_str().unwrap_or_default();
            let used = metric_names(expr);
            assert!(
                !used.is_empty(),
                "panel {title:?}: a target that queries no wssedge metric: {t}"
            );
            assert!(
                expr.contains("instance=~\"$instance\""),
                "panel {title:?}: a target that ignores the instance variable: {expr}"
            );
            names.extend(used);
        }
        queried += 1;
    }
    assert!(queried >= AREAS.len(), "{queried} panels with queries");

    let titles: BTreeSet<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    let missing: Vec<String> = AREAS
        .iter()
        .flat_map(|(area, want)| {
            want.iter()
                .filter(|t| !titles.contains(**t))
                .map(move |t| format!("{area}: {t:?}"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "panels missing from the dashboard: {missing:#?}"
    );
    names
}

/// One edge with every metric room on, traffic through each, and every name the dashboard
/// queries found in its `/metrics`.
#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    let names = check_dashboard(&dashboard);

    let redis = RedisServer::start();
    let backend = Backend::start(Mode::Echo).await;
    let feed_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("feed listener");
    let feed_url = format!(
        "ws://127.0.0.1:{}/feed",
        feed_listener.local_addr().expect("feed address").port()
    );
    let files = key_files();
    let trail = crate::audit::trail();
    let rooms = format!(
        "[[routes]]\nprefix = \"/md\"\npubsub = true\n\
         [pubsub]\nhistory = 16\n[[pubsub.feeds]]\nurl = \"{feed_url}\"\n\
         {audit}\
         [compression]\nenabled = true\n\
         [limits]\nper_ip_connections = 64\nip_limiter = \"auto\"\n\
         [fleet]\nredis = \"{redis}\"\nnode = \"dashboard\"\n",
        audit = trail.section(None),
        redis = redis.url(),
    );
    let cfg = jwt_config(
        &files,
        &[],
        &crate::proxy::proxy_config(&[backend.url("/base")], &[], &rooms),
    );
    let srv = ServerBuilder::new().config(&cfg).start();

    // The feed: the edge connects to it; one publication from it.
    let feed_topic = "dash.feed";
    let (tcp, _) = within(
        WAIT,
        "the edge connects to its feed",
        feed_listener.accept(),
    )
    .await
    .expect("accept the feed connection");
    let mut feed = within(
        WAIT,
        "the feed upgrade",
        tokio_tungstenite::accept_async(tcp),
    )
    .await
    .expect("feed upgrade");
    srv.wait_metric("wssedge_pubsub_feed_up", &[("url", &feed_url)], 1.0)
        .await;
    srv.wait_metric("wssedge_fleet_up", &[("node", "dashboard")], 1.0)
        .await;

    // Proxy: a session through the group to the echo backend, closed by the client.
    let token = hs(claims("dash", &unique_jti("dash-proxy")));
    let (_, mut ws) = expect_upgraded(&srv, &with_header_token("/p/x", &token)).await;
    expect_echo(&mut ws, "through the upstream").await;
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "done")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));
    drop(ws);
    // A refusal before the upgrade.
    expect_refused(&srv, &ws_request("/p/x", &[]), 401, "token_missing").await;

    // Pub/sub: a subscriber gets a client's publication and the feed's.
    let mut sub = connect(&srv, "read").await;
    subscribe(&mut sub, 1, &["dash.t", feed_topic], None).await;
    let mut publisher = connect(&srv, "publish").await;
    let seq = publish(&mut publisher, 2, "dash.t", json!({"n": 1})).await;
    let got = next_json(&mut sub).await;
    assert_eq!(
        (got["topic"].as_str(), got["seq"].as_u64()),
        (Some("dash.t"), Some(seq)),
        "{got}"
    );
    feed.send(Message::text(
        json!({"topic": feed_topic, "data": {"bid": 1}}).to_string(),
    ))
    .await
    .expect("feed frame");
    let got = next_json(&mut sub).await;
    assert_eq!(got["topic"].as_str(), Some(feed_topic), "{got}");

    // Each room counted what went through it (its samples are there, not only its header).
    for (name, labels) in [
        ("wssedge_upstream_connects_total", &[("result", "ok")][..]),
        ("wssedge_proxy_hop_seconds_count", &[][..]),
        ("wssedge_handshake_seconds_count", &[][..]),
        ("wssedge_close_codes_total", &[("code", "1000")][..]),
        ("wssedge_refusals_total", &[("reason", "token_missing")][..]),
        ("wssedge_pubsub_publications_total", &[][..]),
        ("wssedge_pubsub_deliveries_total", &[][..]),
        ("wssedge_pubsub_delivery_seconds_count", &[][..]),
        ("wssedge_pubsub_feed_publications_total", &[][..]),
        ("wssedge_fleet_published_total", &[][..]),
        ("wssedge_audit_records_total", &[][..]),
        ("wssedge_tls_sessions_total", &[][..]),
    ] {
        srv.wait_metric(name, labels, 1.0).await;
    }

    let body = srv.metrics().await;
    let exposed = Exposed::parse(&body);
    let mode = ["ebpf", "userspace"]
        .into_iter()
        .find(|m| metric_sum(&body, "wssedge_ip_limiter", &[("mode", m)]) == 1.0)
        .unwrap_or_else(|| panic!("the per-IP limiter is on: {body}"));
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !exposed.has(n))
        // The fallback family exists only where `auto` wanted eBPF and could not have it.
        .filter(|n| !(mode == "ebpf" && *n == "wssedge_ip_limiter_fallback"))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics the dashboard queries that /metrics does not export: {missing:#?}\n\
         (the dashboard uses {} names; /metrics has the families {:?})",
        names.len(),
        exposed.types.keys().collect::<Vec<_>>()
    );
    if mode == "ebpf" {
        visible_line(
            "dashboard: the per-IP limiter runs in eBPF here; wssedge_ip_limiter_fallback \
             (userspace fallback only) was not checked",
        );
    }
    // The histogram panels query real histogram families.
    for family in [
        "wssedge_handshake_seconds",
        "wssedge_proxy_hop_seconds",
        "wssedge_pubsub_delivery_seconds",
    ] {
        assert!(
            names.contains(&format!("{family}_bucket")),
            "no quantile panel for {family}"
        );
        assert_eq!(
            exposed.types.get(family).map(String::as_str),
            Some("histogram"),
            "{family}"
        );
    }
    drop(feed);
}

#[test]
fn metric_names_are_found_in_promql() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(wssedge_proxy_hop_seconds_bucket\
             {instance=~\"$instance\"}[$__rate_interval]))) / wssedge_x_total + \
             not_wssedge_y"
        ),
        ["wssedge_proxy_hop_seconds_bucket", "wssedge_x_total"]
    );
    let exposed = Exposed::parse(
        "# TYPE wssedge_h histogram\nwssedge_h_bucket{le=\"+Inf\"} 1\n\
         # TYPE wssedge_c counter\nwssedge_g 3\n",
    );
    for name in [
        "wssedge_h_bucket",
        "wssedge_h_count",
        "wssedge_c",
        "wssedge_g",
    ] {
        assert!(exposed.has(name), "{name}");
    }
    for name in ["wssedge_c_count", "wssedge_missing"] {
        assert!(!exposed.has(name), "{name}");
    }
}
