//! Counters and gauges, per core, rendered as Prometheus text by the admin listener.
//!
//! Each core writes only its own [`CoreMetrics`]; the admin thread only reads. Hot counters
//! are single-writer atomics (a plain load + store, no locked instruction on the data path).
//! Labelled counters (refusal reasons, handshake results, close codes) change only when a
//! connection is refused or ends, and sit behind a per-core mutex that only that core and the
//! scraper ever take.

use crate::reason::{KtlsFallback, LossyDrop, Reason};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A counter written by exactly one thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: load + store is enough and avoids a locked read-modify-write.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counts of values under fixed integer bounds, written by exactly one thread (a core) and
/// summed over cores when rendered: what the latency and ratio histograms share.
#[derive(Debug)]
struct Buckets<const N: usize> {
    bounds: &'static [u64; N],
    buckets: [Counter; N],
    count: Counter,
    sum: Counter,
}

impl<const N: usize> Buckets<N> {
    const fn new(bounds: &'static [u64; N]) -> Self {
        Self {
            bounds,
            buckets: [const { Counter(AtomicU64::new(0)) }; N],
            count: Counter(AtomicU64::new(0)),
            sum: Counter(AtomicU64::new(0)),
        }
    }

    fn observe(&self, v: u64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.buckets[i].inc();
        }
        self.count.inc();
        self.sum.add(v);
    }

    /// Renders `all` (one per core, each with `bounds`) as one histogram; bounds and sum are
    /// divided by `unit` (microseconds to seconds, hundredths to a ratio).
    fn render_sum<'a>(
        out: &mut String,
        name: &str,
        help: &str,
        bounds: &[u64; N],
        unit: f64,
        all: impl Iterator<Item = &'a Self> + Clone,
    ) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0u64;
        for (i, bound) in bounds.iter().enumerate() {
            cumulative += all.clone().map(|h| h.buckets[i].get()).sum::<u64>();
            let le = *bound as f64 / unit;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count: u64 = all.clone().map(|h| h.count.get()).sum();
        let sum: u64 = all.map(|h| h.sum.get()).sum();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", sum as f64 / unit);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// A latency histogram written by exactly one thread (a core), summed over cores when
/// rendered. Fixed bucket bounds, from 10 µs (an in-process hop) to 5 s (a slow handshake).
#[derive(Debug)]
pub struct Histogram(Buckets<{ HISTOGRAM_BOUNDS_US.len() }>);

impl Default for Histogram {
    fn default() -> Self {
        Self(Buckets::new(&HISTOGRAM_BOUNDS_US))
    }
}

/// Upper bounds of the histogram buckets, in microseconds (`+Inf` is `count`).
pub const HISTOGRAM_BOUNDS_US: [u64; 18] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000,
];

impl Histogram {
    pub fn observe(&self, d: std::time::Duration) {
        self.0.observe(d.as_micros().min(u64::MAX as u128) as u64);
    }

    pub fn count(&self) -> u64 {
        self.0.count.get()
    }

    /// Renders the histograms of all cores as one, in seconds.
    pub fn render_sum<'a>(
        out: &mut String,
        name: &str,
        help: &str,
        all: impl Iterator<Item = &'a Histogram> + Clone,
    ) {
        let all = all.map(|h| &h.0);
        Buckets::render_sum(out, name, help, &HISTOGRAM_BOUNDS_US, 1e6, all);
    }
}

/// Compression ratios (uncompressed ÷ compressed size) of the messages a core sent
/// compressed, written by that core only.
#[derive(Debug)]
pub struct RatioHistogram(Buckets<{ RATIO_BOUNDS_PERCENT.len() }>);

impl Default for RatioHistogram {
    fn default() -> Self {
        Self(Buckets::new(&RATIO_BOUNDS_PERCENT))
    }
}

/// Upper bounds of the ratio buckets, in hundredths (1.0 = no gain; JSON reaches 3–10).
pub const RATIO_BOUNDS_PERCENT: [u64; 10] = [100, 125, 150, 200, 300, 400, 600, 800, 1_200, 2_000];

impl RatioHistogram {
    pub fn observe(&self, uncompressed: usize, compressed: usize) {
        self.0
            .observe((uncompressed as u64 * 100) / (compressed.max(1) as u64));
    }

    /// Renders the histograms of all cores as one.
    pub fn render_sum<'a>(
        out: &mut String,
        name: &str,
        help: &str,
        all: impl Iterator<Item = &'a RatioHistogram> + Clone,
    ) {
        let all = all.map(|h| &h.0);
        Buckets::render_sum(out, name, help, &RATIO_BOUNDS_PERCENT, 100.0, all);
    }
}

/// A gauge written by exactly one thread.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    #[inline]
    pub fn add(&self, n: i64) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
    /// For a gauge sampled rather than counted.
    pub fn set(&self, n: i64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

/// Which side sent a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Server,
    Client,
    /// Proxy mode: a close sent by the upstream and passed on to the client.
    Upstream,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
            Side::Upstream => "upstream",
        }
    }
}

/// Who sent a KeyUpdate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyUpdateDirection {
    Sent,
    Received,
}

impl KeyUpdateDirection {
    fn as_str(self) -> &'static str {
        match self {
            KeyUpdateDirection::Sent => "sent",
            KeyUpdateDirection::Received => "received",
        }
    }
}

#[derive(Debug, Default)]
struct Labelled {
    handshakes: BTreeMap<(&'static str, &'static str), u64>,
    refusals: BTreeMap<&'static str, u64>,
    close_codes: BTreeMap<(u16, Side), u64>,
    ktls_fallbacks: BTreeMap<&'static str, u64>,
    ktls_alerts: BTreeMap<&'static str, u64>,
    ktls_key_updates: BTreeMap<(KeyUpdateDirection, bool), u64>,
    lossy_drops: BTreeMap<&'static str, u64>,
    rate_limited: BTreeMap<(&'static str, &'static str), u64>,
}

/// One core's metrics.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    pub core: usize,
    pub cpu: usize,
    /// False once the core's runtime has stopped (its listener is closed first).
    pub alive: AtomicBool,
    pub accepted: Counter,
    /// Accepts that failed (out of descriptors or buffers); retried after a short pause.
    pub accept_errors: Counter,
    /// Accepted, nothing received yet (no handshake slot held).
    pub silent: Gauge,
    pub handshaking: Gauge,
    pub open: Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub panics: Counter,
    /// Accept to 101 (TLS handshake plus the upgrade, admission included).
    pub handshake_time: Histogram,
    /// Proxy mode: from reading a message on one side to handing it to the other side's
    /// socket, both directions.
    pub proxy_hop: Histogram,
    /// Heartbeat pings sent to clients.
    pub pings_sent: Counter,
    /// Passes of the connection loops (each a wait, then the work it woke up).
    pub loop_passes: Counter,
    /// `[server] busy_poll_us`: spin windows begun (each after a connection's work found the
    /// spinner asleep), and the spinner's turns of the runtime within them.
    pub busy_poll_windows: Counter,
    pub busy_poll_turns: Counter,
    /// Loops that gave the core back after a run of passes that never waited.
    pub loop_yields: Counter,
    /// Passes that neither waited nor made progress (a bug; yielded, never repeated at once).
    pub loop_stalls: Counter,
    /// Clients that took nothing for `write_timeout_ms` while bytes waited for them.
    pub slow_consumers: Counter,
    /// Connections reset because their last bytes did not leave within `close_timeout_ms`.
    pub close_resets: Counter,
    /// Client reads paused because the bytes queued for the client reached the outbound cap.
    pub read_pauses: Counter,
    /// Proxy mode: upstream reads paused because the client's queue reached the outbound cap.
    pub upstream_pauses: Counter,
    /// Bytes this core's connections hold: partial input and queued output, both sides.
    pub buffered_bytes: Gauge,
    /// Read buffers held by connections right now.
    pub read_buffers_held: Gauge,
    /// Deadlines armed in the core's timer wheel (sampled by the core's ticker).
    pub timers: Gauge,
    /// Entries in the core's shard of the replay store (sampled after each purge).
    pub replay_entries: Gauge,
    /// Completed handshakes whose records the kernel took over / userspace rustls kept.
    pub tls_sessions_ktls: Counter,
    pub tls_sessions_userspace: Counter,
    /// Connections whose records the kernel encrypts right now.
    pub ktls_open: Gauge,
    /// Records under kTLS: sent (exact) and received (a lower bound).
    pub ktls_tx_records: Counter,
    pub ktls_rx_records: Counter,
    /// Drains: sessions ordered closed (1001 or 1012), connections taken from the accept
    /// queue and closed unserved, connections still open when the drain deadline ended them.
    pub drain_sessions_closed: Counter,
    pub drain_queued_closed: Counter,
    pub drain_forced: Counter,
    /// permessage-deflate, sent: messages compressed, their bytes before and after, ratios.
    pub deflate_out_messages: Counter,
    pub deflate_out_uncompressed: Counter,
    pub deflate_out_compressed: Counter,
    pub deflate_ratio: RatioHistogram,
    /// Deflate runs: one per message compressed on its own, one per shared frame and window.
    pub deflate_runs: Counter,
    /// permessage-deflate, received: messages inflated, their bytes before and after.
    pub deflate_in_messages: Counter,
    pub deflate_in_compressed: Counter,
    pub deflate_in_uncompressed: Counter,
    /// Compressed messages refused: inflated past the message limit, or not DEFLATE data.
    pub inflate_too_large: Counter,
    pub inflate_corrupt: Counter,
    labelled: Mutex<Labelled>,
}

impl CoreMetrics {
    pub fn new(core: usize, cpu: usize) -> Self {
        Self {
            core,
            cpu,
            ..Default::default()
        }
    }

    fn labelled(&self) -> std::sync::MutexGuard<'_, Labelled> {
        // A poisoned lock only means a panic elsewhere while counting; the counts stay usable.
        self.labelled.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn handshake(&self, ok: bool, reason: Reason) {
        let reason = reason.as_str();
        let result = if ok { "ok" } else { "failed" };
        *self
            .labelled()
            .handshakes
            .entry((result, reason))
            .or_default() += 1;
    }

    pub fn refusal(&self, reason: Reason) {
        *self.labelled().refusals.entry(reason.as_str()).or_default() += 1;
    }

    /// An offload attempt that stayed in (or fell back to) userspace, by reason.
    pub fn ktls_fallback(&self, reason: KtlsFallback) {
        *self
            .labelled()
            .ktls_fallbacks
            .entry(reason.as_str())
            .or_default() += 1;
    }

    /// An alert record received under kTLS (close_notify, fatal, other).
    pub fn ktls_alert(&self, kind: &'static str) {
        *self.labelled().ktls_alerts.entry(kind).or_default() += 1;
    }

    /// A TLS 1.3 KeyUpdate under kTLS: ours, or the client's (followed on RX); `requested`:
    /// it asked the other side for new keys too.
    pub fn ktls_key_update(&self, direction: KeyUpdateDirection, requested: bool) {
        *self
            .labelled()
            .ktls_key_updates
            .entry((direction, requested))
            .or_default() += 1;
    }

    /// A whole message dropped on a lossy route (`backpressure` or `rate_limit`).
    pub fn lossy_drop(&self, reason: LossyDrop) {
        *self
            .labelled()
            .lossy_drops
            .entry(reason.as_str())
            .or_default() += 1;
    }

    /// A message over a rate limit: `scope` connection or identity, `action` close or drop.
    pub fn rate_limited(&self, scope: &'static str, action: &'static str) {
        *self
            .labelled()
            .rate_limited
            .entry((scope, action))
            .or_default() += 1;
    }

    pub fn close_code(&self, code: u16, side: Side) {
        *self.labelled().close_codes.entry((code, side)).or_default() += 1;
    }

    /// How often `reason` was refused on this core (tests and health checks).
    pub fn refusals_of(&self, reason: &str) -> u64 {
        self.labelled()
            .refusals
            .iter()
            .filter(|(r, _)| **r == reason)
            .map(|(_, n)| *n)
            .sum()
    }
}

/// A room that keeps statistics of its own and writes their Prometheus families itself, so
/// that this module needs none of that room's types.
pub trait PrometheusFamilies: std::fmt::Debug + Send + Sync {
    /// Appends whole families (`# HELP`, `# TYPE`, then the samples) to `out`.
    fn render_families(&self, out: &mut String);
}

/// All cores' metrics, for the admin listener.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub cores: Vec<Arc<CoreMetrics>>,
    /// The start-up probe found a kernel TLS offload this process uses.
    pub ktls_available: bool,
    /// The audit trail's counters, when a trail is written.
    pub audit: Option<Arc<crate::audit::AuditStats>>,
    /// Set from the moment a drain (or the old side of a restart) starts: `/readyz` says 503.
    pub draining: Arc<AtomicBool>,
    /// Rooms that write their own families (the per-IP limiter; in proxy mode the upstream
    /// members), in this order, after the audit gauges.
    pub rooms: Vec<Arc<dyn PrometheusFamilies>>,
    /// In a fleet: its link's state, for `/healthz`.
    pub fleet: Option<Arc<crate::fleet::FleetStatus>>,
}

impl Registry {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn all_alive(&self) -> bool {
        !self.cores.is_empty() && self.cores.iter().all(|c| c.alive.load(Ordering::Relaxed))
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut hist = String::new();
        Histogram::render_sum(
            &mut hist,
            "wssedge_handshake_seconds",
            "Accept to 101: TLS handshake, upgrade request and admission",
            self.cores.iter().map(|c| &c.handshake_time),
        );
        RatioHistogram::render_sum(
            &mut hist,
            "wssedge_compression_ratio",
            "permessage-deflate: uncompressed / compressed size of each message sent compressed",
            self.cores.iter().map(|c| &c.deflate_ratio),
        );
        Histogram::render_sum(
            &mut hist,
            "wssedge_proxy_hop_seconds",
            "Proxy mode: a message's time inside the edge, read on one side to written on the other",
            self.cores.iter().map(|c| &c.proxy_hop),
        );

        let cores = &self.cores;
        let mut gauge = |name: &str, help: &str, rows: &mut dyn Iterator<Item = (String, i64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for (labels, v) in rows {
                let _ = writeln!(out, "{name}{{{labels}}} {v}");
            }
        };
        gauge(
            "wssedge_core_up",
            "1 while the core's runtime serves its listener",
            &mut cores.iter().map(|c| {
                (
                    format!("core=\"{}\",cpu=\"{}\"", c.core, c.cpu),
                    c.alive.load(Ordering::Relaxed) as i64,
                )
            }),
        );
        gauge(
            "wssedge_connections",
            "Connections by core and state",
            &mut cores.iter().flat_map(|c| {
                [
                    (
                        format!("core=\"{}\",state=\"silent\"", c.core),
                        c.silent.get(),
                    ),
                    (
                        format!("core=\"{}\",state=\"handshake\"", c.core),
                        c.handshaking.get(),
                    ),
                    (format!("core=\"{}\",state=\"open\"", c.core), c.open.get()),
                ]
            }),
        );
        gauge(
            "wssedge_buffered_bytes",
            "Bytes connections hold: partly received frames and messages, and writes queued either way",
            &mut cores
                .iter()
                .map(|c| (format!("core=\"{}\"", c.core), c.buffered_bytes.get())),
        );
        gauge(
            "wssedge_read_buffers_held",
            "Read buffers held by connections (an idle connection holds none)",
            &mut cores
                .iter()
                .map(|c| (format!("core=\"{}\"", c.core), c.read_buffers_held.get())),
        );
        gauge(
            "wssedge_timers",
            "Deadlines armed in the core's timer wheel",
            &mut cores
                .iter()
                .map(|c| (format!("core=\"{}\"", c.core), c.timers.get())),
        );
        gauge(
            "wssedge_replay_entries",
            "Token ids the core's shard of the replay store remembers (expired ones go within a second)",
            &mut cores
                .iter()
                .map(|c| (format!("core=\"{}\"", c.core), c.replay_entries.get())),
        );
        gauge(
            "wssedge_ktls_connections",
            "Connections whose TLS records the kernel encrypts right now",
            &mut cores
                .iter()
                .map(|c| (format!("core=\"{}\"", c.core), c.ktls_open.get())),
        );
        let _ = writeln!(
            out,
            "# HELP wssedge_draining 1 from the moment a drain starts (readyz is 503)\n\
             # TYPE wssedge_draining gauge\nwssedge_draining {}",
            self.is_draining() as i64
        );
        let _ = writeln!(
            out,
            "# HELP wssedge_ktls_available 1 when connections are handed to kernel TLS after \
             their handshake\n# TYPE wssedge_ktls_available gauge\nwssedge_ktls_available {}",
            self.ktls_available as i64
        );

        let mut counter = |name: &str, help: &str, rows: Vec<(String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in rows {
                if labels.is_empty() {
                    let _ = writeln!(out, "{name} {v}");
                } else {
                    let _ = writeln!(out, "{name}{{{labels}}} {v}");
                }
            }
        };
        counter(
            "wssedge_accept_errors_total",
            "Accepts that failed (EMFILE, ENFILE, ENOBUFS...): retried every 20 ms, logged once per 10 s",
            cores
                .iter()
                .map(|c| (format!("core=\"{}\"", c.core), c.accept_errors.get()))
                .collect(),
        );
        counter(
            "wssedge_connections_accepted_total",
            "TCP connections accepted",
            cores
                .iter()
                .map(|c| (format!("core=\"{}\"", c.core), c.accepted.get()))
                .collect(),
        );
        let dir = |f: fn(&CoreMetrics) -> u64, g: fn(&CoreMetrics) -> u64| {
            vec![
                (
                    "direction=\"in\"".to_owned(),
                    cores.iter().map(|c| f(c)).sum(),
                ),
                (
                    "direction=\"out\"".to_owned(),
                    cores.iter().map(|c| g(c)).sum(),
                ),
            ]
        };
        counter(
            "wssedge_frames_total",
            "WebSocket frames",
            dir(|c| c.frames_in.get(), |c| c.frames_out.get()),
        );
        counter(
            "wssedge_bytes_total",
            "Plaintext bytes",
            dir(|c| c.bytes_in.get(), |c| c.bytes_out.get()),
        );
        let sum = |f: fn(&CoreMetrics) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();
        counter(
            "wssedge_compressed_messages_total",
            "permessage-deflate: messages received compressed (in) and sent compressed (out)",
            dir(
                |c| c.deflate_in_messages.get(),
                |c| c.deflate_out_messages.get(),
            ),
        );
        counter(
            "wssedge_compression_bytes_total",
            "permessage-deflate: those messages' bytes, compressed (on the wire) and uncompressed",
            vec![
                (
                    "direction=\"in\",form=\"compressed\"".to_owned(),
                    sum(|c| c.deflate_in_compressed.get()),
                ),
                (
                    "direction=\"in\",form=\"uncompressed\"".to_owned(),
                    sum(|c| c.deflate_in_uncompressed.get()),
                ),
                (
                    "direction=\"out\",form=\"compressed\"".to_owned(),
                    sum(|c| c.deflate_out_compressed.get()),
                ),
                (
                    "direction=\"out\",form=\"uncompressed\"".to_owned(),
                    sum(|c| c.deflate_out_uncompressed.get()),
                ),
            ],
        );
        counter(
            "wssedge_compression_runs_total",
            "permessage-deflate: deflate runs (one per echoed or proxied message compressed, one \
             per publication and window size however many subscribers get it)",
            vec![(String::new(), sum(|c| c.deflate_runs.get()))],
        );
        counter(
            "wssedge_inflate_refusals_total",
            "permessage-deflate: compressed messages refused (1009 inflated_too_large, 1007 \
             bad_compressed_data)",
            vec![
                (
                    "reason=\"inflated_too_large\"".to_owned(),
                    sum(|c| c.inflate_too_large.get()),
                ),
                (
                    "reason=\"bad_compressed_data\"".to_owned(),
                    sum(|c| c.inflate_corrupt.get()),
                ),
            ],
        );
        counter(
            "wssedge_drain_closed_total",
            "Connections a drain closed: live sessions ordered closed (1001/1012), connections \
             taken from the accept queue and closed unserved, connections left at the deadline",
            vec![
                (
                    "what=\"session\"".to_owned(),
                    cores.iter().map(|c| c.drain_sessions_closed.get()).sum(),
                ),
                (
                    "what=\"queued\"".to_owned(),
                    cores.iter().map(|c| c.drain_queued_closed.get()).sum(),
                ),
                (
                    "what=\"forced\"".to_owned(),
                    cores.iter().map(|c| c.drain_forced.get()).sum(),
                ),
            ],
        );
        counter(
            "wssedge_panics_total",
            "Panics caught in a connection (each closed that connection with 1011)",
            vec![(String::new(), cores.iter().map(|c| c.panics.get()).sum())],
        );
        counter(
            "wssedge_pings_sent_total",
            "Heartbeat pings sent to clients",
            vec![(
                String::new(),
                cores.iter().map(|c| c.pings_sent.get()).sum(),
            )],
        );
        counter(
            "wssedge_connection_loop_passes_total",
            "Passes of the connection loops: a wait, then the work it woke up",
            vec![(
                String::new(),
                cores.iter().map(|c| c.loop_passes.get()).sum(),
            )],
        );
        counter(
            "wssedge_busy_poll_windows_total",
            "busy_poll_us: spin windows begun after connection work found the core's spinner asleep",
            vec![(
                String::new(),
                cores.iter().map(|c| c.busy_poll_windows.get()).sum(),
            )],
        );
        counter(
            "wssedge_busy_poll_turns_total",
            "busy_poll_us: runtime turns the spinners took instead of sleeping",
            vec![(
                String::new(),
                cores.iter().map(|c| c.busy_poll_turns.get()).sum(),
            )],
        );
        counter(
            "wssedge_connection_loop_yields_total",
            "Connection loops that gave their core back: after a run of passes that never waited \
             (budget), or after a pass that neither waited nor made progress (stalled: a bug)",
            vec![
                (
                    "reason=\"budget\"".to_owned(),
                    cores.iter().map(|c| c.loop_yields.get()).sum(),
                ),
                (
                    "reason=\"stalled\"".to_owned(),
                    cores.iter().map(|c| c.loop_stalls.get()).sum(),
                ),
            ],
        );
        counter(
            "wssedge_backpressure_total",
            "Backpressure events: slow consumers found, connections reset at close, reads paused at the outbound cap",
            vec![
                (
                    "event=\"slow_consumer\"".to_owned(),
                    cores.iter().map(|c| c.slow_consumers.get()).sum(),
                ),
                (
                    "event=\"close_reset\"".to_owned(),
                    cores.iter().map(|c| c.close_resets.get()).sum(),
                ),
                (
                    "event=\"read_paused\"".to_owned(),
                    cores.iter().map(|c| c.read_pauses.get()).sum(),
                ),
                (
                    "event=\"upstream_paused\"".to_owned(),
                    cores.iter().map(|c| c.upstream_pauses.get()).sum(),
                ),
            ],
        );
        let mut drops: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut limited: BTreeMap<(&'static str, &'static str), u64> = BTreeMap::new();
        for c in cores {
            let l = c.labelled();
            for (k, v) in &l.lossy_drops {
                *drops.entry(k).or_default() += v;
            }
            for (k, v) in &l.rate_limited {
                *limited.entry(*k).or_default() += v;
            }
        }
        counter(
            "wssedge_lossy_drops_total",
            "Whole messages dropped on lossy routes, by why",
            drops
                .iter()
                .map(|(r, n)| (format!("reason=\"{r}\""), *n))
                .collect(),
        );
        counter(
            "wssedge_rate_limited_total",
            "Client messages over a rate limit, by limit scope and what was done",
            limited
                .iter()
                .map(|((scope, action), n)| (format!("scope=\"{scope}\",action=\"{action}\""), *n))
                .collect(),
        );

        let sum = |f: fn(&CoreMetrics) -> u64| cores.iter().map(|c| f(c)).sum::<u64>();
        counter(
            "wssedge_tls_sessions_total",
            "Completed TLS handshakes by where their records are encrypted",
            vec![
                (
                    "mode=\"ktls\"".to_owned(),
                    sum(|c| c.tls_sessions_ktls.get()),
                ),
                (
                    "mode=\"userspace\"".to_owned(),
                    sum(|c| c.tls_sessions_userspace.get()),
                ),
            ],
        );
        counter(
            "wssedge_ktls_records_total",
            "TLS records under kernel TLS: tx exact, rx a lower bound",
            vec![
                (
                    "direction=\"tx\"".to_owned(),
                    sum(|c| c.ktls_tx_records.get()),
                ),
                (
                    "direction=\"rx\"".to_owned(),
                    sum(|c| c.ktls_rx_records.get()),
                ),
            ],
        );

        let mut handshakes: BTreeMap<(&str, &str), u64> = BTreeMap::new();
        let mut refusals: BTreeMap<&str, u64> = BTreeMap::new();
        let mut closes: BTreeMap<(u16, Side), u64> = BTreeMap::new();
        let mut fallbacks: BTreeMap<&str, u64> = BTreeMap::new();
        let mut alerts: BTreeMap<&str, u64> = BTreeMap::new();
        let mut key_updates: BTreeMap<(KeyUpdateDirection, bool), u64> = BTreeMap::new();
        for c in cores {
            let l = c.labelled();
            for (k, v) in &l.ktls_fallbacks {
                *fallbacks.entry(k).or_default() += v;
            }
            for (k, v) in &l.ktls_alerts {
                *alerts.entry(k).or_default() += v;
            }
            for (k, v) in &l.ktls_key_updates {
                *key_updates.entry(*k).or_default() += v;
            }
            for (k, v) in &l.handshakes {
                *handshakes.entry(*k).or_default() += v;
            }
            for (k, v) in &l.refusals {
                *refusals.entry(k).or_default() += v;
            }
            for (k, v) in &l.close_codes {
                *closes.entry(*k).or_default() += v;
            }
        }
        counter(
            "wssedge_handshakes_total",
            "TLS handshakes and upgrades by result and reason",
            handshakes
                .into_iter()
                .map(|((r, why), v)| (format!("result=\"{r}\",reason=\"{why}\""), v))
                .collect(),
        );
        counter(
            "wssedge_refusals_total",
            "Connections refused or closed by the edge, by reason",
            refusals
                .into_iter()
                .map(|(r, v)| (format!("reason=\"{r}\""), v))
                .collect(),
        );
        counter(
            "wssedge_close_codes_total",
            "WebSocket close codes sent (server) and received (client)",
            closes
                .into_iter()
                .map(|((code, side), v)| (format!("code=\"{code}\",side=\"{}\"", side.as_str()), v))
                .collect(),
        );
        let mut audit_gauges = String::new();
        if let Some(a) = &self.audit {
            let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
            counter(
                "wssedge_audit_records_total",
                "Audit records written (and fsynced up to durable_seq)",
                vec![(String::new(), get(&a.records_written))],
            );
            counter(
                "wssedge_audit_overflowed_total",
                "Audit records that waited in a core's overflow list (the ring was full)",
                vec![(String::new(), get(&a.records_overflowed))],
            );
            counter(
                "wssedge_audit_fsyncs_total",
                "fsyncs of the audit trail",
                vec![(String::new(), get(&a.fsyncs))],
            );
            counter(
                "wssedge_audit_rotations_total",
                "Audit trail files rotated (sealed and renamed)",
                vec![(String::new(), get(&a.rotations))],
            );
            counter(
                "wssedge_audit_write_errors_total",
                "Failed writes to the audit trail (retried; records are kept)",
                vec![(String::new(), get(&a.write_errors))],
            );
            let mut gauges = String::new();
            let _ = writeln!(
                gauges,
                "# HELP wssedge_audit_durable_seq The last audit record known fsynced\n\
                 # TYPE wssedge_audit_durable_seq gauge\nwssedge_audit_durable_seq {}",
                get(&a.durable_seq)
            );
            let _ = writeln!(
                gauges,
                "# HELP wssedge_audit_queue_depth Audit records waiting in a core's ring\n\
                 # TYPE wssedge_audit_queue_depth gauge"
            );
            for core in 0..a.cores() {
                let _ = writeln!(
                    gauges,
                    "wssedge_audit_queue_depth{{core=\"{core}\"}} {}",
                    a.core_depth(core)
                );
            }
            audit_gauges = gauges;
        }
        counter(
            "wssedge_ktls_fallbacks_total",
            "Handshakes kTLS could have taken that stayed in userspace (or closed), by reason",
            fallbacks
                .into_iter()
                .map(|(r, v)| (format!("reason=\"{r}\""), v))
                .collect(),
        );
        counter(
            "wssedge_ktls_alerts_total",
            "Alert records received under kernel TLS, by kind",
            alerts
                .into_iter()
                .map(|(k, v)| (format!("kind=\"{k}\""), v))
                .collect(),
        );
        counter(
            "wssedge_ktls_key_updates_total",
            "TLS 1.3 KeyUpdate messages under kernel TLS: sent (our new keys) or received (the client's, followed), and whether they asked the other side to update too",
            key_updates
                .into_iter()
                .map(|((d, r), v)| {
                    let request = if r { "requested" } else { "not_requested" };
                    (format!("direction=\"{}\",request=\"{request}\"", d.as_str()), v)
                })
                .collect(),
        );
        out.push_str(&audit_gauges);
        for room in &self.rooms {
            room.render_families(&mut out);
        }
        out.push_str(&hist);
        out
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
pub fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_and_sums_cores() {
        let a = Arc::new(CoreMetrics::new(0, 3));
        let b = Arc::new(CoreMetrics::new(1, 5));
        a.frames_in.add(2);
        b.frames_in.add(3);
        a.refusal(Reason::NotTls);
        b.refusal(Reason::NotTls);
        b.close_code(1009, Side::Server);
        a.handshake(false, Reason::TlsProtocolVersion);
        a.open.add(1);
        let text = Registry {
            fleet: None,
            cores: vec![a, b],
            ktls_available: false,
            audit: None,
            draining: Default::default(),
            rooms: Vec::new(),
        }
        .render();
        assert!(
            text.contains("wssedge_frames_total{direction=\"in\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("wssedge_refusals_total{reason=\"not_tls\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("wssedge_close_codes_total{code=\"1009\",side=\"server\"} 1"),
            "{text}"
        );
        assert!(text.contains(
            "wssedge_handshakes_total{result=\"failed\",reason=\"tls_protocol_version\"} 1"
        ));
        assert!(text.contains("wssedge_connections{core=\"0\",state=\"open\"} 1"));
        assert!(text.contains("wssedge_core_up{core=\"1\",cpu=\"5\"} 0"));
        assert!(text.contains("wssedge_draining 0"), "{text}");
        assert!(text.contains("wssedge_drain_closed_total{what=\"session\"} 0"));
    }
}
