//! Counters and gauges, per core, rendered as Prometheus text by the admin listener.
//!
//! Each core writes only its own [`CoreMetrics`]; the admin thread only reads. Hot counters
//! are single-writer atomics (a plain load + store, no locked instruction on the data path).
//! Labelled counters (refusal reasons, handshake results, close codes) change only when a
//! connection is refused or ends, and sit behind a per-core mutex that only that core and the
//! scraper ever take.

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
}

/// Which side sent a close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Side {
    Server,
    Client,
}

impl Side {
    fn as_str(self) -> &'static str {
        match self {
            Side::Server => "server",
            Side::Client => "client",
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
}

/// One core's metrics.
#[derive(Debug, Default)]
pub struct CoreMetrics {
    pub core: usize,
    pub cpu: usize,
    /// False once the core's runtime has stopped (its listener is closed first).
    pub alive: AtomicBool,
    pub accepted: Counter,
    pub handshaking: Gauge,
    pub open: Gauge,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    pub panics: Counter,
    /// Bytes held in partly received frames and messages on this core.
    pub buffered_bytes: Gauge,
    /// Read buffers held by connections right now.
    pub read_buffers_held: Gauge,
    /// Completed handshakes whose records the kernel took over / userspace rustls kept.
    pub tls_sessions_ktls: Counter,
    pub tls_sessions_userspace: Counter,
    /// Connections whose records the kernel encrypts right now.
    pub ktls_open: Gauge,
    /// Records under kTLS: sent (exact) and received (a lower bound).
    pub ktls_tx_records: Counter,
    pub ktls_rx_records: Counter,
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

    pub fn handshake(&self, ok: bool, reason: &'static str) {
        let result = if ok { "ok" } else { "failed" };
        *self
            .labelled()
            .handshakes
            .entry((result, reason))
            .or_default() += 1;
    }

    pub fn refusal(&self, reason: &'static str) {
        *self.labelled().refusals.entry(reason).or_default() += 1;
    }

    /// An offload attempt that stayed in (or fell back to) userspace, by reason.
    pub fn ktls_fallback(&self, reason: &'static str) {
        *self.labelled().ktls_fallbacks.entry(reason).or_default() += 1;
    }

    /// An alert record received under kTLS (close_notify, fatal, other).
    pub fn ktls_alert(&self, kind: &'static str) {
        *self.labelled().ktls_alerts.entry(kind).or_default() += 1;
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

/// All cores' metrics, for the admin listener.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    pub cores: Vec<Arc<CoreMetrics>>,
    /// The start-up probe found a kernel TLS offload this process uses.
    pub ktls_available: bool,
    /// The audit trail's counters, when a trail is written.
    pub audit: Option<Arc<crate::audit::AuditStats>>,
    /// The per-IP connection limiter (eBPF or userspace).
    pub(crate) ip_limiter: Option<Arc<crate::server::ip_limit::IpLimiter>>,
}

impl Registry {
    pub fn all_alive(&self) -> bool {
        !self.cores.is_empty() && self.cores.iter().all(|c| c.alive.load(Ordering::Relaxed))
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
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
                        format!("core=\"{}\",state=\"handshake\"", c.core),
                        c.handshaking.get(),
                    ),
                    (format!("core=\"{}\",state=\"open\"", c.core), c.open.get()),
                ]
            }),
        );
        gauge(
            "wssedge_buffered_bytes",
            "Bytes held in partly received frames and messages",
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
            "wssedge_ktls_connections",
            "Connections whose TLS records the kernel encrypts right now",
            &mut cores
                .iter()
                .map(|c| (format!("core=\"{}\"", c.core), c.ktls_open.get())),
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
        counter(
            "wssedge_panics_total",
            "Panics caught in a connection (each closed that connection with 1011)",
            vec![(String::new(), cores.iter().map(|c| c.panics.get()).sum())],
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
        for c in cores {
            let l = c.labelled();
            for (k, v) in &l.ktls_fallbacks {
                *fallbacks.entry(k).or_default() += v;
            }
            for (k, v) in &l.ktls_alerts {
                *alerts.entry(k).or_default() += v;
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
        out.push_str(&audit_gauges);
        if let Some(limiter) = &self.ip_limiter {
            render_ip_limits(&mut out, limiter);
        }
        out
    }
}

/// The per-IP limiter's mode, counters and the ten most refused addresses.
fn render_ip_limits(out: &mut String, limiter: &crate::server::ip_limit::IpLimiter) {
    let _ = writeln!(
        out,
        "# HELP wssedge_ip_limiter Where the per-IP connection limit is enforced\n\
         # TYPE wssedge_ip_limiter gauge\nwssedge_ip_limiter{{mode=\"{}\"}} 1",
        limiter.mode()
    );
    let Some((stats, top)) = limiter.stats(10) else {
        return;
    };
    let _ = writeln!(
        out,
        "# HELP wssedge_ip_limit_total Per-IP limiter events (kernel: SYNs)\n\
         # TYPE wssedge_ip_limit_total counter"
    );
    for (event, n) in [
        ("seen", stats.syns_seen),
        ("accepted", stats.accepted),
        ("refused_limit", stats.refused_limit),
        ("refused_blocked", stats.refused_blocked),
        ("released", stats.released),
    ] {
        let _ = writeln!(out, "wssedge_ip_limit_total{{event=\"{event}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP wssedge_ip_refused_total Connections refused per source address (top 10)\n\
         # TYPE wssedge_ip_refused_total counter"
    );
    for (ip, s) in top.iter().filter(|(_, s)| s.refused > 0) {
        let _ = writeln!(
            out,
            "wssedge_ip_refused_total{{addr=\"{ip}\"}} {}",
            s.refused
        );
    }
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
        a.refusal("not_tls");
        b.refusal("not_tls");
        b.close_code(1009, Side::Server);
        a.handshake(false, "tls_protocol_version");
        a.open.add(1);
        let text = Registry {
            cores: vec![a, b],
            ktls_available: false,
            audit: None,
            ip_limiter: None,
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
    }
}
