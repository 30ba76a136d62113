//! The exporter thread: gathers spans for `export_interval_ms` (or a full batch), encodes them
//! as one OTLP `ExportTraceServiceRequest` (protobuf) and posts it to `<endpoint>/v1/traces`
//! over HTTP/1.1. A failed post is counted and logged (at most once a minute), never retried:
//! spans are diagnostics, and a retry queue would be memory a dead collector could fill.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;

use super::span::{AttrValue, SpanRecord};
use super::TelemetryStats;

/// Where traces go: `http://host[:port][/base]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// `host:port` to connect to and to send as `Host`.
    authority: String,
    /// The request target: the base path + `/v1/traces`.
    target: String,
}

impl Endpoint {
    pub(super) fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = match url.strip_prefix("http://") {
            Some(rest) => rest,
            None if url.starts_with("https://") => {
                return Err("https:// endpoints are not supported: export to a collector on this host or its network over http:// (e.g. http://127.0.0.1:4318) and let it forward over TLS".into())
            }
            None => return Err("expected an OTLP/HTTP base URL such as http://127.0.0.1:4318".into()),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty()
            || authority.contains('@')
            || !authority
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]_".contains(c))
        {
            return Err("the host is missing or not a plain host[:port]".into());
        }
        if path.contains(['?', '#', ' ']) {
            return Err("the base path may not carry a query or fragment".into());
        }
        // 4318 is OTLP/HTTP's port.
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let authority = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:4318")
        };
        Ok(Endpoint {
            authority,
            target: format!("{}/v1/traces", path.trim_end_matches('/')),
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "http://{}{}", self.authority, self.target)
    }
}

pub(super) fn resource(service_name: &str) -> Resource {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    Resource {
        attributes: vec![
            kv("service.name", AttrValue::Str(service_name.to_owned())),
            kv(
                "service.version",
                AttrValue::Str(env!("CARGO_PKG_VERSION").into()),
            ),
            kv(
                "service.instance.id",
                AttrValue::Str(format!("{host}/{}", std::process::id())),
            ),
            kv("host.name", AttrValue::Str(host)),
        ],
        ..Default::default()
    }
}

fn kv(key: &str, value: AttrValue) -> KeyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(b),
    };
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// One OTLP request body for `spans`.
pub(super) fn encode(resource: &Resource, spans: Vec<SpanRecord>) -> Vec<u8> {
    let spans = spans
        .into_iter()
        .map(|s| Span {
            trace_id: s.context.trace_id.to_vec(),
            span_id: s.context.span_id.to_vec(),
            parent_span_id: s.context.parent_id.map(|p| p.to_vec()).unwrap_or_default(),
            // W3C trace flags in the low byte: sampled (we only export sampled spans).
            flags: 0x01,
            name: s.name.to_owned(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: s.start_unix_nanos,
            end_time_unix_nano: s.end_unix_nanos,
            attributes: s.attributes.into_iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(match s.error {
                Some(message) => Status {
                    message,
                    code: status::StatusCode::Error as i32,
                },
                None => Status::default(),
            }),
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource.clone()),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "wssedge".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

pub(super) struct Exporter {
    pub endpoint: Endpoint,
    pub resource: Resource,
    pub batch: usize,
    pub interval: Duration,
    pub timeout: Duration,
    pub stats: Arc<TelemetryStats>,
    pub stop: Arc<AtomicBool>,
}

impl Exporter {
    /// Collects on its own clock (every `POLL`, never woken by a core), posts a batch when
    /// one is full or the interval is up, and on stop posts what is left and ends.
    pub(super) fn run(self, queue: &ArrayQueue<SpanRecord>) {
        const POLL: Duration = Duration::from_millis(50);
        let mut pending: Vec<SpanRecord> = Vec::new();
        let mut due = Instant::now() + self.interval;
        let mut last_warning: Option<Instant> = None;
        loop {
            let stopping = self.stop.load(Ordering::SeqCst);
            while let Some(span) = queue.pop() {
                pending.push(span);
            }
            if pending.len() >= self.batch || Instant::now() >= due || stopping {
                while !pending.is_empty() {
                    let take = pending.len().min(self.batch);
                    let batch: Vec<SpanRecord> = pending.drain(..take).collect();
                    self.post(batch, &mut last_warning);
                }
                due = Instant::now() + self.interval;
            }
            if stopping {
                return;
            }
            std::thread::sleep(POLL.min(due.saturating_duration_since(Instant::now())));
        }
    }

    fn post(&self, batch: Vec<SpanRecord>, last_warning: &mut Option<Instant>) {
        let n = batch.len() as u64;
        let body = encode(&self.resource, batch);
        match self.send(&body) {
            Ok(()) => {
                self.stats.exported.fetch_add(n, Ordering::Relaxed);
            }
            Err(why) => {
                self.stats.failed.fetch_add(n, Ordering::Relaxed);
                self.stats
                    .export_requests_failed
                    .fetch_add(1, Ordering::Relaxed);
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
                    *last_warning = Some(Instant::now());
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        spans = n,
                        error = %why,
                        "OpenTelemetry export failed; spans dropped (further failures within a minute are only counted: wssedge_telemetry_spans_total{{result=\"failed\"}})"
                    );
                }
            }
        }
    }

    /// One POST on a fresh connection; Ok on a 2xx answer.
    fn send(&self, body: &[u8]) -> Result<(), String> {
        let deadline = Instant::now() + self.timeout;
        let addr = self
            .endpoint
            .authority
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", self.endpoint.authority))?
            .next()
            .ok_or_else(|| format!("{} resolves to nothing", self.endpoint.authority))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout)
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let _ = stream.set_nodelay(true);
        stream
            .set_write_timeout(Some(left()))
            .map_err(|e| e.to_string())?;
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: wssedge/{}\r\n\r\n",
            self.endpoint.target,
            self.endpoint.authority,
            body.len(),
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body))
            .map_err(|e| format!("sending: {e}"))?;
        // The status line is all we need; the answer is read up to 4 KiB, never more.
        let mut answer = Vec::with_capacity(256);
        let mut buf = [0u8; 512];
        while !answer.windows(2).any(|w| w == b"\r\n") && answer.len() < 4096 {
            stream
                .set_read_timeout(Some(left()))
                .map_err(|e| e.to_string())?;
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("reading the answer: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&answer);
        let line = line.lines().next().unwrap_or("");
        match line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
        {
            Some(code) if (200..300).contains(&code) => Ok(()),
            Some(_) => Err(format!("the endpoint answered {line:?}")),
            None => Err(format!("no HTTP answer (got {line:?})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::span::TraceSpan;

    #[test]
    fn endpoints_are_otlp_http_base_urls() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(e.to_string(), "http://127.0.0.1:4318/v1/traces");
        let e = Endpoint::parse("http://collector/otlp/").unwrap();
        assert_eq!(e.to_string(), "http://collector:4318/otlp/v1/traces");
        let e = Endpoint::parse("http://[::1]:9999").unwrap();
        assert_eq!(e.authority, "[::1]:9999");
        assert_eq!(
            Endpoint::parse("http://[::1]").unwrap().authority,
            "[::1]:4318"
        );
        for bad in [
            "https://c:4318",
            "127.0.0.1:4318",
            "http://",
            "http://user@c:4318",
            "http://c:4318/x?y",
            "http://c d",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
        assert!(Endpoint::parse("https://c")
            .unwrap_err()
            .contains("http://"));
    }

    #[test]
    fn a_span_encodes_to_the_otlp_message_with_its_ids_and_attributes() {
        let ctx = TraceSpan::begin(None, 1.0);
        let span = SpanRecord::ending_now(ctx, "wssedge.upgrade", Duration::from_millis(3))
            .attr("http.response.status_code", 403i64)
            .attr("wssedge.reason", "origin_not_allowed")
            .attr("wssedge.admitted", false);
        let body = encode(&resource("edge-x"), vec![span]);
        let req = ExportTraceServiceRequest::decode(body.as_slice()).unwrap();
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert!(res.attributes.iter().any(|kv| kv.key == "service.name"
            && kv.value.as_ref().unwrap().value
                == Some(any_value::Value::StringValue("edge-x".into()))));
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, ctx.trace_id.to_vec());
        assert_eq!(s.span_id, ctx.span_id.to_vec());
        assert!(s.parent_span_id.is_empty());
        assert_eq!(s.name, "wssedge.upgrade");
        assert_eq!(s.kind, span::SpanKind::Server as i32);
        assert!(s.end_time_unix_nano - s.start_time_unix_nano >= 3_000_000);
        assert_eq!(s.attributes.len(), 3);
        assert_eq!(
            s.attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(403))
        );
    }

    /// A dead endpoint costs one counted failure per batch, and the exporter ends on stop.
    #[test]
    fn a_dead_endpoint_is_counted_and_the_exporter_still_stops() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let stats = Arc::new(TelemetryStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let exporter = Exporter {
            endpoint: Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
            resource: resource("t"),
            batch: 2,
            interval: Duration::from_secs(60),
            timeout: Duration::from_millis(500),
            stats: stats.clone(),
            stop: stop.clone(),
        };
        let queue = Arc::new(ArrayQueue::new(8));
        for _ in 0..3 {
            let ctx = TraceSpan::begin(None, 1.0);
            queue
                .push(SpanRecord::ending_now(ctx, "s", Duration::ZERO))
                .unwrap();
        }
        let t = std::thread::spawn({
            let queue = queue.clone();
            move || exporter.run(&queue)
        });
        stop.store(true, Ordering::SeqCst);
        t.join().unwrap();
        assert_eq!(stats.failed.load(Ordering::Relaxed), 3);
        assert_eq!(stats.export_requests_failed.load(Ordering::Relaxed), 2);
        assert_eq!(stats.exported.load(Ordering::Relaxed), 0);
    }
}
