//! The generator's JSON, one measured cell, and the derived numbers and flags.

use anyhow::{Context, Result};
use serde_json::Value;

/// `client_cpu_busy` above this: the generator, not the server, was the bottleneck.
pub const CLIENT_BOUND_BUSY: f64 = 0.9;
/// Other processes' CPU above this (in CPUs) during a window: the cell's note says so.
pub const HOST_BUSY_CPUS: f64 = 0.1;
/// Achieved below this fraction of the offered rate: the server did not keep up.
pub const SUSTAINED_FRACTION: f64 = 0.95;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub p9999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Handshake {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// What `wssbench --json FILE` writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenResult {
    pub mode: String,
    pub proto: String,
    pub connections: f64,
    pub payload: f64,
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub sent: f64,
    pub received: f64,
    pub errors: f64,
    pub late_sends: f64,
    pub msgs_per_s: f64,
    pub latency_us: Latency,
    pub handshake_us: Handshake,
    pub handshakes_ok: f64,
    pub handshakes_failed: f64,
    pub client_cpu_s: f64,
    pub client_cpu_busy: f64,
    pub threads: f64,
    /// The fan-out mode's own counts.
    pub fanout: Option<FanoutCounts>,
    /// WebSocket bytes over the window (`wire_bytes_*`), when the generator counts them.
    pub wire: Option<WireCounts>,
    /// `--deflate`: what was agreed and how much arrived compressed.
    pub deflate: Option<DeflateCounts>,
}

/// WebSocket frame bytes of the measured window, both ways. Echo: per message sent and per
/// echo received; fan-out: the publisher's per publication, the subscribers' per delivery.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WireCounts {
    pub bytes_sent: f64,
    pub bytes_received: f64,
    pub per_msg_sent: Option<f64>,
    pub per_msg_received: Option<f64>,
}

/// `"deflate"` in the generator's JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeflateCounts {
    /// Connections whose 101 agreed to permessage-deflate, and whose did not.
    pub negotiated: f64,
    pub declined: f64,
    /// Of the data messages received in the window, the compressed share.
    pub compressed_share: Option<f64>,
    /// The 101's `Sec-WebSocket-Extensions` answer (one of them).
    pub answer: String,
}

/// `"fanout"` in the generator's JSON: deliveries against what every subscriber should have got.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FanoutCounts {
    pub subscribers: f64,
    pub subscribers_closed: f64,
    pub publications: f64,
    pub expected_deliveries: f64,
    pub deliveries: f64,
    pub lost: f64,
    pub out_of_order: f64,
    pub duplicates: f64,
}

fn num(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(0.0)
}

impl GenResult {
    pub fn parse(text: &str) -> Result<(GenResult, Value)> {
        let v: Value = serde_json::from_str(text).context("generator JSON")?;
        let obj = v
            .as_object()
            .context("generator JSON: expected an object")?;
        for key in ["mode", "duration_s", "msgs_per_s"] {
            if !obj.contains_key(key) {
                anyhow::bail!("generator JSON: missing {key:?}");
            }
        }
        let lat = v.get("latency_us").cloned().unwrap_or(Value::Null);
        let hs = v.get("handshake_us").cloned().unwrap_or(Value::Null);
        let g = GenResult {
            mode: v["mode"].as_str().unwrap_or_default().to_string(),
            proto: v
                .get("proto")
                .and_then(Value::as_str)
                .unwrap_or("wss")
                .to_string(),
            connections: num(&v, "connections"),
            payload: num(&v, "payload"),
            rate: v.get("rate").and_then(Value::as_f64),
            duration_s: num(&v, "duration_s"),
            sent: num(&v, "sent"),
            received: num(&v, "received"),
            errors: num(&v, "errors"),
            late_sends: num(&v, "late_sends"),
            msgs_per_s: num(&v, "msgs_per_s"),
            latency_us: Latency {
                p50: num(&lat, "p50"),
                p90: num(&lat, "p90"),
                p99: num(&lat, "p99"),
                p999: num(&lat, "p999"),
                p9999: num(&lat, "p9999"),
                max: num(&lat, "max"),
                mean: num(&lat, "mean"),
            },
            handshake_us: Handshake {
                p50: num(&hs, "p50"),
                p99: num(&hs, "p99"),
                max: num(&hs, "max"),
            },
            handshakes_ok: num(&v, "handshakes_ok"),
            handshakes_failed: num(&v, "handshakes_failed"),
            client_cpu_s: num(&v, "client_cpu_s"),
            client_cpu_busy: num(&v, "client_cpu_busy"),
            threads: num(&v, "threads"),
            fanout: v
                .get("fanout")
                .filter(|f| f.is_object())
                .map(|f| FanoutCounts {
                    subscribers: num(f, "subscribers"),
                    subscribers_closed: num(f, "subscribers_closed"),
                    publications: num(f, "publications"),
                    expected_deliveries: num(f, "expected_deliveries"),
                    deliveries: num(f, "deliveries"),
                    lost: num(f, "lost"),
                    out_of_order: num(f, "out_of_order"),
                    duplicates: num(f, "duplicates"),
                }),
            wire: v.get("wire_bytes_sent").map(|_| WireCounts {
                bytes_sent: num(&v, "wire_bytes_sent"),
                bytes_received: num(&v, "wire_bytes_received"),
                per_msg_sent: v.get("wire_bytes_per_msg_sent").and_then(Value::as_f64),
                per_msg_received: v.get("wire_bytes_per_msg_received").and_then(Value::as_f64),
            }),
            deflate: v
                .get("deflate")
                .filter(|d| d.is_object())
                .map(|d| DeflateCounts {
                    negotiated: num(d, "negotiated"),
                    declined: num(d, "declined"),
                    compressed_share: d.get("compressed_share").and_then(Value::as_f64),
                    answer: d
                        .get("answer")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                }),
        };
        Ok((g, v))
    }

    /// Messages per second actually echoed back.
    pub fn achieved(&self) -> f64 {
        if self.duration_s > 0.0 && self.received > 0.0 {
            self.received / self.duration_s
        } else {
            self.msgs_per_s
        }
    }

    pub fn handshakes_per_s(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.handshakes_ok / self.duration_s
        } else {
            0.0
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    Rate,
    Closed,
    Storm,
    Idle,
    /// Proxy mode, open loop at one moderate rate: the hop latency and the proxy's CPU.
    Proxy,
    /// Proxy mode, closed loop: throughput through proxy + backend.
    ProxyClosed,
    /// Pub/sub: one publisher at a fixed rate, N subscribers of its topic.
    Fanout,
    /// Pub/sub in a fleet on Redis: subscribers on the publisher's node or on another one.
    Fleet,
    /// Upgrades on a fleet node with the checks that ask Redis (single-use, identity counts)
    /// against without them.
    FleetUpgrades,
    /// permessage-deflate off vs on: echo at a fixed rate with market-data payloads.
    CompressionEcho,
    /// permessage-deflate off vs on: memory per idle connection with it negotiated.
    CompressionIdle,
    /// permessage-deflate off vs on: pub/sub fan-out of market data.
    CompressionFanout,
}

impl Scenario {
    pub const ALL: [Scenario; 12] = [
        Scenario::Rate,
        Scenario::Closed,
        Scenario::Storm,
        Scenario::Idle,
        Scenario::Proxy,
        Scenario::ProxyClosed,
        Scenario::Fanout,
        Scenario::Fleet,
        Scenario::FleetUpgrades,
        Scenario::CompressionEcho,
        Scenario::CompressionIdle,
        Scenario::CompressionFanout,
    ];
    /// `--scenarios compression`: the three compression scenarios.
    pub const COMPRESSION: [Scenario; 3] = [
        Scenario::CompressionEcho,
        Scenario::CompressionIdle,
        Scenario::CompressionFanout,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Rate => "rate",
            Scenario::Closed => "closed",
            Scenario::Storm => "storm",
            Scenario::Idle => "idle",
            Scenario::Proxy => "proxy",
            Scenario::ProxyClosed => "proxy-closed",
            Scenario::Fanout => "fanout",
            Scenario::Fleet => "fleet",
            Scenario::FleetUpgrades => "fleet-upgrades",
            Scenario::CompressionEcho => "compression-echo",
            Scenario::CompressionIdle => "compression-idle",
            Scenario::CompressionFanout => "compression-fanout",
        }
    }
    /// The proxy set: the front process's CPU is counted apart from its backend's.
    pub fn is_proxy(self) -> bool {
        matches!(self, Scenario::Proxy | Scenario::ProxyClosed)
    }
    /// Open loop at a fixed offered rate (latency corrected for coordinated omission).
    pub fn is_open_loop(self) -> bool {
        matches!(
            self,
            Scenario::Rate | Scenario::Proxy | Scenario::CompressionEcho
        )
    }
    /// N upgraded connections held idle, memory sampled.
    pub fn is_idle(self) -> bool {
        matches!(self, Scenario::Idle | Scenario::CompressionIdle)
    }
    /// The generator offers permessage-deflate and sends market data.
    pub fn is_compression(self) -> bool {
        Scenario::COMPRESSION.contains(&self)
    }
    /// Scenarios whose figure of merit is CPU per echoed message.
    pub fn per_message(self) -> bool {
        matches!(
            self,
            Scenario::Rate
                | Scenario::Closed
                | Scenario::Proxy
                | Scenario::ProxyClosed
                | Scenario::Fanout
                | Scenario::Fleet
                | Scenario::CompressionEcho
                | Scenario::CompressionFanout
        )
    }
    /// Runs a Redis next to the server, counted apart.
    pub fn is_fleet(self) -> bool {
        matches!(self, Scenario::Fleet | Scenario::FleetUpgrades)
    }
    /// One publisher, subscribers (the generator's fan-out mode).
    pub fn is_fanout(self) -> bool {
        matches!(
            self,
            Scenario::Fanout | Scenario::Fleet | Scenario::CompressionFanout
        )
    }
    pub fn parse(s: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// Server memory around an idle hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mem {
    pub n: u64,
    pub rss_before: u64,
    pub rss_during: u64,
    pub sock_before: u64,
    pub sock_during: u64,
}

impl Mem {
    pub fn rss_per_conn(&self) -> f64 {
        self.rss_during.saturating_sub(self.rss_before) as f64 / self.n.max(1) as f64
    }
    pub fn sock_per_conn(&self) -> f64 {
        self.sock_during.saturating_sub(self.sock_before) as f64 / self.n.max(1) as f64
    }
    pub fn total_per_conn(&self) -> f64 {
        self.rss_per_conn() + self.sock_per_conn()
    }
}

/// One (scenario, parameters, peer) measurement.
#[derive(Debug, Clone, Default)]
pub struct Cell {
    pub scenario: Option<Scenario>,
    pub peer: String,
    pub payload: u64,
    pub connections: u64,
    /// Offered msgs/s (rate) or handshakes/s (storm).
    pub rate: Option<f64>,
    pub depth: Option<u64>,
    pub gen: Option<GenResult>,
    pub raw: Option<Value>,
    /// Server CPU seconds (process tree) over our sampling window of `window_s` seconds.
    pub server_cpu_s: f64,
    /// The same in clock ticks (its resolution).
    pub server_ticks: u64,
    pub window_s: f64,
    /// The same CPU time from schedstat (ns resolution), when the kernel has schedstats.
    pub server_sched_s: Option<f64>,
    /// Proxy scenarios: the backend's CPU seconds over the same window, counted apart from
    /// the server's (which is then the proxy process alone). `None` elsewhere.
    pub backend_cpu_s: Option<f64>,
    pub backend_ticks: u64,
    pub backend_sched_s: Option<f64>,
    /// CPU seconds other processes on the host (not ours: not xtask's process tree) took
    /// during the window, from /proc/stat. Two CPUs are all there is: a build running beside
    /// the benchmark lands on the server's or the generator's CPU.
    pub foreign_cpu_s: Option<f64>,
    pub mem: Option<Mem>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flag {
    Failed(String),
    ClientBound,
    NotSustained,
    /// Fan-out: deliveries that never arrived.
    Lost(u64),
}

impl Flag {
    pub fn text(&self) -> String {
        match self {
            Flag::Failed(why) => format!("failed: {why}"),
            Flag::ClientBound => "client-bound".into(),
            Flag::NotSustained => "not sustained".into(),
            Flag::Lost(n) => format!("{n} lost"),
        }
    }
}

impl Cell {
    /// Why this cell's numbers cannot be compared, if they cannot.
    pub fn flag(&self) -> Option<Flag> {
        if let Some(e) = &self.error {
            return Some(Flag::Failed(e.clone()));
        }
        let Some(g) = &self.gen else {
            return Some(Flag::Failed("no generator result".into()));
        };
        if g.client_cpu_busy > CLIENT_BOUND_BUSY {
            return Some(Flag::ClientBound);
        }
        let offered = self.rate.unwrap_or(0.0);
        let achieved = match self.scenario {
            Some(Scenario::Rate | Scenario::Proxy | Scenario::CompressionEcho) => g.achieved(),
            // Offered deliveries: the publication rate times the subscribers.
            Some(Scenario::Fanout | Scenario::Fleet | Scenario::CompressionFanout) => {
                let f = g.fanout.as_ref()?;
                if f.lost > 0.0 {
                    return Some(Flag::Lost(f.lost as u64));
                }
                let offered = offered * self.connections as f64;
                return (offered > 0.0 && g.achieved() < SUSTAINED_FRACTION * offered)
                    .then_some(Flag::NotSustained);
            }
            Some(Scenario::Storm | Scenario::FleetUpgrades) => g.handshakes_per_s(),
            _ => return None,
        };
        if offered > 0.0 && achieved < SUSTAINED_FRACTION * offered {
            return Some(Flag::NotSustained);
        }
        None
    }

    /// utime+stime come in whole ticks: with few of them the CPU figures are coarse. The
    /// relative resolution (one tick) when it is worse than 5 %.
    pub fn coarse_cpu(&self) -> Option<f64> {
        if self.window_s <= 0.0 || self.gen.is_none() {
            return None;
        }
        let step = 1.0 / self.server_ticks.max(1) as f64;
        (step > 0.05).then_some(step)
    }

    /// The server's process tree kept about one CPU busy all window: its CPU per message is
    /// then a bound (the work it managed), and its latency mostly queueing.
    pub fn server_saturated(&self) -> bool {
        self.server_cpu_rate().is_some_and(|r| r >= 0.95)
    }

    /// Server CPU seconds per second of wall time during the window.
    fn server_cpu_rate(&self) -> Option<f64> {
        (self.window_s > 0.0).then(|| self.server_cpu_s / self.window_s)
    }

    /// Server CPU µs per echoed message: the server's CPU rate over the achieved message rate,
    /// so a small misalignment of our window with the generator's does not skew it.
    pub fn cpu_us_per_msg(&self) -> Option<f64> {
        let rate = self.gen.as_ref()?.achieved();
        (rate > 0.0).then_some(self.server_cpu_rate()? / rate * 1e6)
    }

    /// CPU µs per echoed message for `cpu_s` seconds over the window.
    fn per_msg(&self, cpu_s: f64) -> Option<f64> {
        let rate = self.gen.as_ref()?.achieved();
        (self.window_s > 0.0 && rate > 0.0).then(|| cpu_s / self.window_s / rate * 1e6)
    }

    /// Server CPU µs per message from schedstat (ns resolution) when the kernel has it, else
    /// from utime+stime ticks. The proxy tables use this: their windows are short and the
    /// backend's share is small, so whole ticks would be too coarse.
    pub fn fine_cpu_us_per_msg(&self) -> Option<f64> {
        self.per_msg(self.server_sched_s.unwrap_or(self.server_cpu_s))
    }

    /// The backend's CPU µs per message (proxy scenarios), schedstat first like
    /// [`Cell::fine_cpu_us_per_msg`].
    pub fn backend_cpu_us_per_msg(&self) -> Option<f64> {
        self.per_msg(self.backend_sched_s.or(self.backend_cpu_s)?)
    }

    /// Other processes' CPU during the window, in CPUs (1.0 = one CPU busy all along), when
    /// it is enough to disturb the measurement (over a tenth of a CPU).
    pub fn host_busy(&self) -> Option<f64> {
        let f = self.foreign_cpu_s? / self.window_s;
        (self.window_s > 0.0 && f > HOST_BUSY_CPUS).then_some(f)
    }

    /// Whether [`Cell::fine_cpu_us_per_msg`] had to fall back to ticks.
    pub fn fine_cpu_is_ticks(&self) -> bool {
        self.server_sched_s.is_none()
    }

    /// Server CPU µs per successful handshake (storm).
    pub fn cpu_us_per_handshake(&self) -> Option<f64> {
        let rate = self.gen.as_ref()?.handshakes_per_s();
        (rate > 0.0).then_some(self.server_cpu_rate()? / rate * 1e6)
    }

    pub fn handshake_success(&self) -> Option<f64> {
        let g = self.gen.as_ref()?;
        let total = g.handshakes_ok + g.handshakes_failed;
        (total > 0.0).then_some(g.handshakes_ok / total)
    }
}

/// `wssedge / peer` as text, or why there is no ratio. `None` values mean "not measured".
pub fn ratio_text(
    ours: Option<f64>,
    ours_flag: Option<&Flag>,
    theirs: Option<f64>,
    their_flag: Option<&Flag>,
) -> String {
    if let Some(f) = their_flag {
        return f.text();
    }
    if let Some(f) = ours_flag {
        return format!("wssedge {}", f.text());
    }
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const FAKE: &str = r#"{"mode":"open","proto":"wss","connections":50,"payload":64,
        "rate":10000,"duration_s":5.0,"sent":50000,"received":49990,"errors":0,"late_sends":3,
        "msgs_per_s":9998.0,"latency_us":{"p50":40,"p90":60,"p99":120,"p999":300,"p9999":900,
        "max":1500,"mean":45.5},"handshake_us":{"p50":800,"p99":2000,"max":3000},
        "handshakes_ok":50,"handshakes_failed":0,"client_cpu_s":2.0,"client_cpu_busy":0.4,
        "threads":1}"#;

    pub fn cell(busy: f64, received: f64, rate: f64) -> Cell {
        let (mut g, raw) = GenResult::parse(FAKE).unwrap();
        g.client_cpu_busy = busy;
        g.received = received;
        Cell {
            scenario: Some(Scenario::Rate),
            peer: "wssedge".into(),
            rate: Some(rate),
            gen: Some(g),
            raw: Some(raw),
            server_cpu_s: 1.0,
            window_s: 5.0,
            ..Cell::default()
        }
    }

    #[test]
    fn parses_generator_json() {
        let (g, raw) = GenResult::parse(FAKE).unwrap();
        assert_eq!(g.mode, "open");
        assert_eq!(g.rate, Some(10000.0));
        assert_eq!(g.latency_us.p999, 300.0);
        assert_eq!(g.latency_us.mean, 45.5);
        assert_eq!(g.handshake_us.p99, 2000.0);
        assert_eq!(g.client_cpu_busy, 0.4);
        assert_eq!(raw["late_sends"], 3);
        assert!((g.achieved() - 9998.0).abs() < 1e-9);
        // A closed-loop result has no rate; missing optional fields default to zero.
        let (g, _) =
            GenResult::parse(r#"{"mode":"closed","duration_s":2,"msgs_per_s":5.5,"rate":null}"#)
                .unwrap();
        assert_eq!((g.rate, g.msgs_per_s, g.latency_us.p99), (None, 5.5, 0.0));
        assert!(GenResult::parse(r#"{"mode":"closed"}"#).is_err());
        assert_eq!((g.wire, g.deflate), (None, None));
        // --deflate: wire bytes and what was agreed.
        let (g, _) = GenResult::parse(
            r#"{"mode":"open","duration_s":1,"msgs_per_s":10,"wire_bytes_sent":5000,
            "wire_bytes_received":3000,"wire_bytes_per_msg_sent":250.5,
            "wire_bytes_per_msg_received":null,"deflate":{"negotiated":50,"declined":0,
            "compressed_share":0.98,"answer":"permessage-deflate; server_no_context_takeover"}}"#,
        )
        .unwrap();
        let w = g.wire.unwrap();
        assert_eq!(
            (w.bytes_sent, w.per_msg_sent, w.per_msg_received),
            (5000.0, Some(250.5), None)
        );
        let d = g.deflate.unwrap();
        assert_eq!((d.negotiated, d.compressed_share), (50.0, Some(0.98)));
        assert!(d.answer.starts_with("permessage-deflate"));
        assert!(GenResult::parse("not json").is_err());
    }

    #[test]
    fn flags() {
        assert_eq!(cell(0.5, 50000.0, 10000.0).flag(), None);
        assert_eq!(cell(0.95, 50000.0, 10000.0).flag(), Some(Flag::ClientBound));
        // 9400/s of 10000 offered is below 95 %.
        assert_eq!(cell(0.5, 47000.0, 10000.0).flag(), Some(Flag::NotSustained));
        assert_eq!(cell(0.5, 47500.0, 10000.0).flag(), None);
        // Client-bound wins over not sustained: the client is the likely reason.
        assert_eq!(cell(0.99, 10.0, 10000.0).flag(), Some(Flag::ClientBound));
        let mut c = cell(0.1, 1.0, 1.0);
        c.error = Some("boom".into());
        assert_eq!(c.flag(), Some(Flag::Failed("boom".into())));
        // Closed loop: never "not sustained".
        let mut c = cell(0.1, 1.0, 0.0);
        c.scenario = Some(Scenario::Closed);
        c.rate = None;
        assert_eq!(c.flag(), None);
    }

    #[test]
    fn cpu_per_message_and_ratios() {
        // 1 CPU-s over 5 s = 0.2 CPU; 10000 msg/s → 20 µs/msg.
        let c = cell(0.5, 50000.0, 10000.0);
        assert!((c.cpu_us_per_msg().unwrap() - 20.0).abs() < 1e-9);
        assert!((c.cpu_us_per_handshake().unwrap() - 0.2 / 10.0 * 1e6).abs() < 1e-6);
        assert_eq!(c.handshake_success(), Some(1.0));
        // 1 CPU-s in 100 ticks: fine; in 10 ticks: ±10 %.
        let mut c = c;
        c.server_ticks = 100;
        assert_eq!(c.coarse_cpu(), None);
        c.server_ticks = 10;
        assert_eq!(c.coarse_cpu(), Some(0.1));
        // Others' CPU: 0.25 CPU-s in 5 s = 0.05 CPU (quiet), 1 CPU-s = 0.2 CPU (busy).
        c.foreign_cpu_s = Some(0.25);
        assert_eq!(c.host_busy(), None);
        c.foreign_cpu_s = Some(1.0);
        assert_eq!(c.host_busy(), Some(0.2));
        // Proxy figures: schedstat first, the backend apart.
        c.backend_sched_s = Some(0.5);
        assert!((c.backend_cpu_us_per_msg().unwrap() - 10.0).abs() < 1e-9);
        assert!(c.fine_cpu_is_ticks());
        c.server_sched_s = Some(2.0);
        assert!((c.fine_cpu_us_per_msg().unwrap() - 40.0).abs() < 1e-9);
        assert_eq!(ratio_text(Some(10.0), None, Some(20.0), None), "0.50");
        assert_eq!(
            ratio_text(Some(10.0), None, Some(20.0), Some(&Flag::ClientBound)),
            "client-bound"
        );
        assert_eq!(
            ratio_text(Some(10.0), Some(&Flag::NotSustained), Some(20.0), None),
            "wssedge not sustained"
        );
        assert_eq!(ratio_text(Some(1.0), None, Some(0.0), None), "n/a");
        let m = Mem {
            n: 1000,
            rss_before: 1_000_000,
            rss_during: 5_000_000,
            sock_before: 4096,
            sock_during: 4096 * 501,
        };
        assert_eq!(m.rss_per_conn(), 4000.0);
        assert_eq!(m.sock_per_conn(), 2048.0);
        assert_eq!(m.total_per_conn(), 6048.0);
    }
}
