//! OpenTelemetry export (`[telemetry]`) against an OTLP/HTTP receiver built on the official
//! `opentelemetry-proto` types: the upgrade decision's span (admitted and refused), the
//! session's span as its child, the caller's `traceparent` honoured (its trace, its parent, its
//! sampled flag) and passed on to the upstream member with the edge's span as parent; and a
//! collector that is not there costs the edge nothing but counted spans.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, Span};
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::backend::{Backend, Mode};
use crate::harness::*;
use crate::proxy::proxy_config;

/// The caller's trace: the spec's example, sampled.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// What one export request carried.
#[derive(Debug, Clone)]
struct Received {
    target: String,
    content_type: String,
    service_name: Option<String>,
    spans: Vec<Span>,
}

/// An OTLP/HTTP trace receiver on loopback: it decodes every POST's body as an
/// `ExportTraceServiceRequest` and answers 200.
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let got = Arc::new(Mutex::new(Vec::new()));
        let store = got.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    if let Some(r) = receive(stream).await {
                        store.lock().unwrap().push(r);
                    }
                });
            }
        });
        Receiver { addr, got, task }
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Span> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.spans.clone())
            .collect()
    }

    /// Waits until a span satisfies `pick`, and returns it.
    async fn span(&self, what: &str, pick: impl Fn(&Span) -> bool) -> Span {
        eventually(what, |_| {
            let found = self.spans().into_iter().find(|s| pick(s));
            async move { found.ok_or_else(|| "not yet".to_string()) }
        })
        .await
    }
}

/// One HTTP/1.1 request: the head, `Content-Length` bytes of body, then a 200.
async fn receive(mut stream: TcpStream) -> Option<Received> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let target = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let length: usize = field("content-length")?.parse().ok()?;
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let request = ExportTraceServiceRequest::decode(&buf[head_end..head_end + length]).ok()?;
    let _ = stream
        .write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
    let mut service_name = None;
    let mut spans = Vec::new();
    for rs in request.resource_spans {
        if let Some(res) = &rs.resource {
            service_name = service_name.or_else(|| string_attr(&res.attributes, "service.name"));
        }
        for ss in rs.scope_spans {
            spans.extend(ss.spans);
        }
    }
    Some(Received {
        target,
        content_type: field("content-type").unwrap_or_default(),
        service_name,
        spans,
    })
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn string_attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key) {
        Some(AnyValue::StringValue(s)) => Some(s.clone()),
        _ => None,
    }
}

fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(AnyValue::IntValue(i)) => Some(*i),
        _ => None,
    }
}

fn bool_attr(attrs: &[KeyValue], key: &str) -> Option<bool> {
    match attr(attrs, key) {
        Some(AnyValue::BoolValue(b)) => Some(*b),
        _ => None,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn telemetry_section(endpoint: &str) -> String {
    format!("[telemetry]\notlp_endpoint = \"{endpoint}\"\nexport_interval_ms = 20\n")
}

/// A proxied session in the caller's trace, one outside it (unsampled by its caller) and a
/// refused upgrade: every span the edge exports says what it decided and why.
#[tokio::test]
async fn upgrade_and_session_spans_follow_the_caller_s_trace_to_the_member() {
    let receiver = Receiver::start().await;
    let backend = Backend::start(Mode::Echo).await;
    let srv = Server::with_config(&proxy_config(
        &[backend.url("/base")],
        &[],
        &telemetry_section(&receiver.endpoint()),
    ));

    // 1. Sampled by its caller: a proxied echo, then a normal close.
    let traceparent = format!("00-{TRACE}-{CALLER_SPAN}-01");
    let (_, mut ws) = expect_upgraded(
        &srv,
        &ws_request("/p/quotes", &[("traceparent", traceparent.as_str())]),
    )
    .await;
    expect_echo(&mut ws, "hello through the trace").await;
    ws.send(&cframe(true, OP_CLOSE, &close_payload(1000, "bye")))
        .await;
    assert_eq!(ws.expect_close().await, Some(1000));

    // 2. Not sampled by its caller: nothing of it is exported, but the member still gets the
    //    trace (unsampled) to continue.
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    let unsampled = format!("00-{unsampled_trace}-b7ad6b7169203331-00");
    let (_, mut quiet) = expect_upgraded(
        &srv,
        &ws_request("/p/quiet", &[("traceparent", unsampled.as_str())]),
    )
    .await;
    expect_echo(&mut quiet, "unsampled").await;
    quiet
        .send(&cframe(true, OP_CLOSE, &close_payload(1000, "")))
        .await;
    assert_eq!(quiet.expect_close().await, Some(1000));

    // 3. Refused: no route for the path in proxy mode.
    let refused = attempt(&srv, &ws_request("/nowhere", &[]))
        .await
        .refused("no route");

    let upgrade = receiver
        .span("the admitted upgrade's span", |s| {
            s.name == "wssedge.upgrade" && hex(&s.trace_id) == TRACE
        })
        .await;
    assert_eq!(
        hex(&upgrade.parent_span_id),
        CALLER_SPAN,
        "the caller's span is the parent"
    );
    assert_eq!(upgrade.kind, SpanKind::Server as i32);
    let a = &upgrade.attributes;
    assert_eq!(bool_attr(a, "wssedge.admitted"), Some(true), "{a:?}");
    assert_eq!(int_attr(a, "http.response.status_code"), Some(101));
    assert_eq!(string_attr(a, "wssedge.reason").as_deref(), Some("ok"));
    assert_eq!(string_attr(a, "wssedge.app").as_deref(), Some("proxy"));
    assert_eq!(string_attr(a, "url.path").as_deref(), Some("/p/quotes"));
    assert_eq!(
        string_attr(a, "client.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(upgrade.end_time_unix_nano >= upgrade.start_time_unix_nano);

    // The member continues the trace under the edge's span, sampled as the caller said.
    let seen: Vec<Vec<String>> = backend
        .upgrades()
        .iter()
        .map(|u| u.all("traceparent").iter().map(|v| v.to_string()).collect())
        .collect();
    let expected = format!("00-{TRACE}-{}-01", hex(&upgrade.span_id));
    assert!(
        seen.contains(&vec![expected.clone()]),
        "{expected} in {seen:?}"
    );
    assert!(
        seen.iter().any(|v| v.len() == 1
            && v[0].starts_with(&format!("00-{unsampled_trace}-"))
            && v[0].ends_with("-00")),
        "the unsampled trace goes on, unsampled: {seen:?}"
    );

    let session = receiver
        .span("the session's span", |s| {
            s.name == "wssedge.session" && hex(&s.trace_id) == TRACE
        })
        .await;
    assert_eq!(
        session.parent_span_id, upgrade.span_id,
        "a child of the upgrade"
    );
    let a = &session.attributes;
    assert_eq!(int_attr(a, "websocket.close.code"), Some(1000), "{a:?}");
    assert!(int_attr(a, "wssedge.bytes_in").unwrap_or(0) > 0, "{a:?}");
    assert!(int_attr(a, "wssedge.bytes_out").unwrap_or(0) > 0, "{a:?}");
    assert!(int_attr(a, "wssedge.duration_ms").is_some());
    assert!(session.start_time_unix_nano >= upgrade.start_time_unix_nano);

    let refusal = receiver
        .span("the refused upgrade's span", |s| {
            s.name == "wssedge.upgrade"
                && bool_attr(&s.attributes, "wssedge.admitted") == Some(false)
        })
        .await;
    let a = &refusal.attributes;
    assert_eq!(
        int_attr(a, "http.response.status_code"),
        Some(i64::from(refused.status)),
        "{a:?}"
    );
    assert_eq!(
        string_attr(a, "wssedge.reason"),
        Some(refused.reason.clone())
    );
    assert_eq!(string_attr(a, "url.path").as_deref(), Some("/nowhere"));
    assert_ne!(hex(&refusal.trace_id), TRACE, "a trace of its own");
    assert!(refusal.parent_span_id.is_empty(), "no caller: a root span");

    // Nothing of the unsampled trace was exported.
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| hex(&s.trace_id) == unsampled_trace),
        "an unsampled trace was exported"
    );
    for r in receiver.got.lock().unwrap().iter() {
        assert_eq!(r.target, "/v1/traces");
        assert_eq!(r.content_type, "application/x-protobuf");
        assert_eq!(r.service_name.as_deref(), Some("wssedge"));
    }
    srv.wait_metric(
        "wssedge_telemetry_spans_total",
        &[("result", "exported")],
        3.0,
    )
    .await;
    visible_line(&format!(
        "telemetry: {} spans received over OTLP/HTTP; the member got traceparent {expected}",
        receiver.spans().len()
    ));
}

/// A collector that is not there: sessions are served as ever; the spans are counted as
/// failed and the edge says so once.
#[tokio::test]
async fn a_missing_collector_costs_only_counted_spans() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let srv = ServerBuilder::new()
        .config(&telemetry_section(&format!("http://127.0.0.1:{port}")))
        .start();
    for i in 0..3 {
        let mut ws = srv.raw().await;
        expect_echo(&mut ws, &format!("still served {i}")).await;
    }
    srv.wait_metric(
        "wssedge_telemetry_spans_total",
        &[("result", "failed")],
        3.0,
    )
    .await;
    assert_eq!(
        srv.metric("wssedge_telemetry_spans_total", &[("result", "exported")])
            .await,
        0.0
    );
    srv.proc
        .wait_stderr(
            "the export failure's log line",
            "OpenTelemetry export failed",
        )
        .await;
}

/// What the configuration refuses, with what to write instead.
#[tokio::test]
async fn a_bad_telemetry_section_refuses_the_start() {
    for (section, needle) in [
        (
            "[telemetry]\notlp_endpoint = \"https://collector:4318\"\n",
            "http://",
        ),
        (
            "[telemetry]\notlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 1.5\n",
            "sample_ratio",
        ),
    ] {
        let (status, _, stderr) = ServerBuilder::new().config(section).run_expect_exit();
        assert_eq!(status.code(), Some(2), "{section}: {stderr}");
        assert!(stderr.contains(needle), "{section}: {stderr}");
    }
}

/// A collector that accepts and then says nothing: each export waits `export_timeout_ms`, never
/// longer; the sessions are served meanwhile, the spans are counted as failed, and a drain
/// still ends the process promptly (the exporter's last post is bounded too).
#[tokio::test]
async fn a_silent_collector_holds_nothing_but_its_own_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("addr"));
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream); // read nothing, answer nothing
        }
    });
    let mut srv = ServerBuilder::new()
        .config(&format!(
            "{}export_timeout_ms = 300\nqueue_spans = 4\n",
            telemetry_section(&endpoint)
        ))
        .start();
    for i in 0..6 {
        let mut ws = srv.raw().await;
        expect_echo(
            &mut ws,
            &format!("served while the collector is silent {i}"),
        )
        .await;
    }
    srv.wait_metric(
        "wssedge_telemetry_spans_total",
        &[("result", "failed")],
        1.0,
    )
    .await;
    assert_eq!(
        srv.metric("wssedge_telemetry_spans_total", &[("result", "exported")])
            .await,
        0.0
    );
    // SAFETY: kill(2) on the pid of the server this test started.
    let rc = unsafe { libc::kill(srv.proc.pid() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let status = srv.proc.exited_within(WAIT).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        srv.proc.stderr()
    );
    held.abort();
}
