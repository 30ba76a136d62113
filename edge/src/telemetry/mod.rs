//! OpenTelemetry traces (`[telemetry]`): a span per upgrade decision and per session end,
//! exported over OTLP/HTTP (protobuf) by a thread of its own. Cores only build a small record
//! and push it on a lock-free bounded queue (a full queue drops the span and counts it); they
//! never wake the exporter, which collects on its own clock. Nothing of the export — a
//! system call, encoding, connecting, a slow or dead collector — ever reaches a core. (A
//! channel that woke the exporter per span cost the cores about a tenth more CPU per
//! connection under a handshake storm.)
//!
//! Trace context: a valid W3C `traceparent` on the upgrade request puts the upgrade in the
//! caller's trace (its `sampled` flag decides, parent-based); without one the edge starts a
//! trace and samples it at `sample_ratio`. In proxy mode the upstream's upgrade request
//! carries the edge's own `traceparent` (the upgrade span as parent), so the member's spans
//! join the same trace. The session's span is a child of the upgrade's.
//!
//! Logs through `tracing` are unchanged.

mod export;
pub mod span;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use span::{SpanRecord, TraceSpan};

/// `[telemetry]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP base URL (as `OTEL_EXPORTER_OTLP_ENDPOINT`): traces are posted to
    /// `<endpoint>/v1/traces`. `http://` only; None = no export.
    pub otlp_endpoint: Option<String>,
    /// The share of traces the edge starts (no `traceparent`) that are exported, 0.0..=1.0.
    /// A caller's `traceparent` decides for its own trace.
    pub sample_ratio: f64,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Spans waiting for export; beyond this new spans are dropped (counted).
    pub queue_spans: usize,
    /// How often the exporter posts what has gathered (sooner when a batch is full).
    pub export_interval_ms: u64,
    /// Spans per request.
    pub batch_spans: usize,
    /// Connect + send + answer, per request.
    pub export_timeout_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
            service_name: "wssedge".into(),
            queue_spans: 8192,
            export_interval_ms: 1000,
            batch_spans: 512,
            export_timeout_ms: 5000,
        }
    }
}

impl TelemetryConfig {
    /// Checks what can be checked before start.
    pub fn validate(&self) -> Result<(), crate::config::ConfigError> {
        let invalid = |key: &'static str, value: &dyn std::fmt::Display, why: &str| {
            Err(crate::config::ConfigError::invalid(
                key,
                value.to_string(),
                why.to_string(),
            ))
        };
        if let Some(endpoint) = &self.otlp_endpoint {
            if let Err(why) = export::Endpoint::parse(endpoint) {
                return invalid("telemetry.otlp_endpoint", endpoint, &why);
            }
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return invalid(
                "telemetry.sample_ratio",
                &self.sample_ratio,
                "must be between 0.0 (none) and 1.0 (every trace)",
            );
        }
        if self.queue_spans == 0 || self.batch_spans == 0 {
            return invalid(
                "telemetry.queue_spans",
                &self.queue_spans,
                "queue_spans and batch_spans must be at least 1",
            );
        }
        if self.export_interval_ms == 0 || self.export_timeout_ms == 0 {
            return invalid(
                "telemetry.export_interval_ms",
                &self.export_interval_ms,
                "export_interval_ms and export_timeout_ms must be at least 1",
            );
        }
        Ok(())
    }
}

/// Counters of the export (`wssedge_telemetry_spans_total`).
#[derive(Debug, Default)]
pub struct TelemetryStats {
    pub exported: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    pub export_requests_failed: AtomicU64,
}

impl crate::metrics::PrometheusFamilies for TelemetryStats {
    fn render_families(&self, out: &mut String) {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP wssedge_telemetry_spans_total Spans by outcome: exported to the OTLP endpoint, dropped (export queue full), failed (the endpoint refused or could not be reached)\n\
             # TYPE wssedge_telemetry_spans_total counter"
        );
        for (result, n) in [
            ("exported", &self.exported),
            ("dropped", &self.dropped),
            ("failed", &self.failed),
        ] {
            let _ = writeln!(
                out,
                "wssedge_telemetry_spans_total{{result=\"{result}\"}} {}",
                n.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP wssedge_telemetry_export_failures_total OTLP export requests that failed\n\
             # TYPE wssedge_telemetry_export_failures_total counter\n\
             wssedge_telemetry_export_failures_total {}",
            self.export_requests_failed.load(Ordering::Relaxed)
        );
    }
}

/// A core's way to the exporter: cheap to clone, never blocks.
#[derive(Clone)]
pub struct SpanSink {
    queue: Arc<crossbeam_queue::ArrayQueue<SpanRecord>>,
    stats: Arc<TelemetryStats>,
    sample_ratio: f64,
}

impl std::fmt::Debug for SpanSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanSink").finish_non_exhaustive()
    }
}

impl SpanSink {
    /// The trace context of an upgrade: the caller's trace when it sent a valid
    /// `traceparent`, else a new one sampled at `sample_ratio`.
    pub fn begin(&self, parent: Option<wssedge_proto::trace_context::TraceParent>) -> TraceSpan {
        TraceSpan::begin(parent, self.sample_ratio)
    }

    /// Hands a finished span to the exporter (dropped, counted, when its queue is full or the
    /// exporter is gone).
    pub fn emit(&self, span: SpanRecord) {
        if self.queue.push(span).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The exporter thread and the cores' sink to it.
pub struct Telemetry {
    pub sink: SpanSink,
    pub stats: Arc<TelemetryStats>,
    exporter: Option<std::thread::JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Telemetry {
    /// Starts the exporter when `otlp_endpoint` is set.
    pub fn start(cfg: &TelemetryConfig) -> std::io::Result<Option<Telemetry>> {
        let Some(endpoint) = &cfg.otlp_endpoint else {
            return Ok(None);
        };
        let endpoint = export::Endpoint::parse(endpoint)
            .map_err(|why| std::io::Error::new(std::io::ErrorKind::InvalidInput, why))?;
        let stats = Arc::new(TelemetryStats::default());
        let queue = Arc::new(crossbeam_queue::ArrayQueue::new(cfg.queue_spans));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let exporter = export::Exporter {
            endpoint,
            resource: export::resource(&cfg.service_name),
            batch: cfg.batch_spans,
            interval: Duration::from_millis(cfg.export_interval_ms),
            timeout: Duration::from_millis(cfg.export_timeout_ms),
            stats: stats.clone(),
            stop: stop.clone(),
        };
        tracing::info!(
            endpoint = %exporter.endpoint,
            sample_ratio = cfg.sample_ratio,
            "OpenTelemetry: exporting upgrade and session spans over OTLP/HTTP"
        );
        let thread = std::thread::Builder::new()
            .name("wssedge-otlp".into())
            .spawn({
                let queue = queue.clone();
                move || exporter.run(&queue)
            })?;
        Ok(Some(Telemetry {
            sink: SpanSink {
                queue,
                stats: stats.clone(),
                sample_ratio: cfg.sample_ratio,
            },
            stats,
            exporter: Some(thread),
            stop,
        }))
    }

    /// Posts what is queued and stops the exporter (after the cores: their spans are in).
    pub fn shutdown(self) {
        let Telemetry {
            sink,
            exporter,
            stop,
            ..
        } = self;
        drop(sink);
        stop.store(true, Ordering::SeqCst);
        if let Some(t) = exporter {
            let _ = t.join();
        }
    }
}
