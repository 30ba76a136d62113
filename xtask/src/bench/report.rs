//! report.md (one table per scenario) and the raw-number part of report.json.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::results::{ratio_text, Cell, Flag, Scenario};

/// The peer every ratio is taken against.
pub const OURS: &str = "wssedge";

/// A number with a sensible number of digits.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(fmt_num).unwrap_or_else(|| "n/a".into())
}

fn same_params(a: &Cell, b: &Cell) -> bool {
    a.scenario == b.scenario
        && a.payload == b.payload
        && a.connections == b.connections
        && a.rate == b.rate
        && a.depth == b.depth
}

/// Groups (in first-seen order) of cells with identical parameters, for one scenario.
fn groups(cells: &[Cell], s: Scenario) -> Vec<Vec<&Cell>> {
    let mut out: Vec<Vec<&Cell>> = Vec::new();
    for c in cells.iter().filter(|c| c.scenario == Some(s)) {
        match out.iter_mut().find(|g| same_params(g[0], c)) {
            Some(g) => g.push(c),
            None => out.push(vec![c]),
        }
    }
    out
}

/// Rows of one group in the peers' canonical order (not the alternating run order).
fn ordered<'a>(group: &[&'a Cell], peer_order: &[&str]) -> Vec<&'a Cell> {
    let mut v = group.to_vec();
    v.sort_by_key(|c| {
        peer_order
            .iter()
            .position(|p| *p == c.peer)
            .unwrap_or(usize::MAX)
    });
    v
}

fn note(c: &Cell) -> String {
    let mut n = c.flag().map(|f| f.text()).unwrap_or_default();
    if let Some(step) = c.coarse_cpu().filter(|_| c.error.is_none()) {
        if !n.is_empty() {
            n.push_str("; ");
        }
        let _ = write!(n, "CPU ±{:.0} % ({} ticks)", step * 100.0, c.server_ticks);
    }
    n
}

/// The ratio column for `c` against our cell of the same group.
fn ratio_col(
    c: &Cell,
    ours: Option<&Cell>,
    metric: &dyn Fn(&Cell) -> Option<f64>,
    flag: &dyn Fn(&Cell) -> Option<Flag>,
) -> String {
    if c.peer == OURS {
        return "—".into();
    }
    let Some(o) = ours else {
        return "n/a".into();
    };
    ratio_text(metric(o), flag(o).as_ref(), metric(c), flag(c).as_ref())
}

fn client_busy(c: &Cell) -> String {
    c.gen
        .as_ref()
        .map(|g| format!("{:.0} %", g.client_cpu_busy * 100.0))
        .unwrap_or_else(|| "n/a".into())
}

pub fn markdown(cells: &[Cell], peer_order: &[&str], label: &dyn Fn(&str) -> String) -> String {
    let mut md = String::new();
    let flag = |c: &Cell| c.flag();
    // Idle has no generator-side CPU limit worth flagging; only failures count.
    let failed_only = |c: &Cell| c.error.clone().map(Flag::Failed);
    let lat = |c: &Cell| c.gen.as_ref().map(|g| g.latency_us.p99);
    let hs99 = |c: &Cell| c.gen.as_ref().map(|g| g.handshake_us.p99);

    let rate_groups = groups(cells, Scenario::Rate);
    if !rate_groups.is_empty() {
        let _ = writeln!(md, "## rate: open loop at fixed offered rates\n");
        let _ = writeln!(
            md,
            "Server CPU µs/msg = server CPU time (utime+stime over the process tree) / messages \
             echoed. Ratios are wssedge / peer (below 1 = wssedge cheaper or faster).\n"
        );
        let _ = writeln!(
            md,
            "| payload | conns | offered msg/s | peer | achieved msg/s | server CPU µs/msg | p50 µs | p99 µs | p99.9 µs | max µs | client CPU | wssedge/peer CPU µs/msg | wssedge/peer p99 | note |"
        );
        let _ = writeln!(
            md,
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for g in &rate_groups {
            let ours = g.iter().copied().find(|c| c.peer == OURS);
            for c in ordered(g, peer_order) {
                let l = c.gen.as_ref().map(|g| g.latency_us.clone());
                let _ = writeln!(
                    md,
                    "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.payload,
                    c.connections,
                    opt(c.rate),
                    label(&c.peer),
                    opt(c.gen.as_ref().map(|g| g.achieved())),
                    opt(c.cpu_us_per_msg()),
                    opt(l.as_ref().map(|l| l.p50)),
                    opt(l.as_ref().map(|l| l.p99)),
                    opt(l.as_ref().map(|l| l.p999)),
                    opt(l.as_ref().map(|l| l.max)),
                    client_busy(c),
                    ratio_col(c, ours, &|c: &Cell| c.cpu_us_per_msg(), &flag),
                    ratio_col(c, ours, &lat, &flag),
                    note(c),
                );
            }
        }
        md.push('\n');
    }

    let closed = groups(cells, Scenario::Closed);
    if !closed.is_empty() {
        let _ = writeln!(md, "## closed: maximum throughput (closed loop)\n");
        let _ = writeln!(
            md,
            "| payload | conns | depth | peer | msgs/s | server CPU µs/msg | p50 µs | p99 µs | client CPU | wssedge/peer CPU µs/msg | wssedge/peer p99 | note |"
        );
        let _ = writeln!(
            md,
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for g in &closed {
            let ours = g.iter().copied().find(|c| c.peer == OURS);
            for c in ordered(g, peer_order) {
                let _ = writeln!(
                    md,
                    "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.payload,
                    c.connections,
                    c.depth.unwrap_or(1),
                    label(&c.peer),
                    opt(c.gen.as_ref().map(|g| g.achieved())),
                    opt(c.cpu_us_per_msg()),
                    opt(c.gen.as_ref().map(|g| g.latency_us.p50)),
                    opt(lat(c)),
                    client_busy(c),
                    ratio_col(c, ours, &|c: &Cell| c.cpu_us_per_msg(), &flag),
                    ratio_col(c, ours, &lat, &flag),
                    note(c),
                );
            }
        }
        md.push('\n');
    }

    let storm = groups(cells, Scenario::Storm);
    if !storm.is_empty() {
        let _ = writeln!(
            md,
            "## storm: TLS + WebSocket handshakes at a fixed offered rate\n"
        );
        let _ = writeln!(
            md,
            "| offered hs/s | peer | achieved hs/s | success | hs p50 µs | hs p99 µs | server CPU µs/handshake | client CPU | wssedge/peer CPU µs/hs | wssedge/peer hs p99 | note |"
        );
        let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
        for g in &storm {
            let ours = g.iter().copied().find(|c| c.peer == OURS);
            for c in ordered(g, peer_order) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    opt(c.rate),
                    label(&c.peer),
                    opt(c.gen.as_ref().map(|g| g.handshakes_per_s())),
                    c.handshake_success()
                        .map(|s| format!("{:.2} %", s * 100.0))
                        .unwrap_or_else(|| "n/a".into()),
                    opt(c.gen.as_ref().map(|g| g.handshake_us.p50)),
                    opt(hs99(c)),
                    opt(c.cpu_us_per_handshake()),
                    client_busy(c),
                    ratio_col(c, ours, &|c: &Cell| c.cpu_us_per_handshake(), &flag),
                    ratio_col(c, ours, &hs99, &flag),
                    note(c),
                );
            }
        }
        md.push('\n');
    }

    let idle = groups(cells, Scenario::Idle);
    if !idle.is_empty() {
        let _ = writeln!(md, "## idle: memory per idle upgraded connection\n");
        let _ = writeln!(
            md,
            "RSS = (server VmRSS while holding − before) / N, summed over the process tree. Kernel = \
             (`/proc/net/sockstat` TCP mem pages × 4096) delta / N; on loopback that counts the \
             client's socket too.\n"
        );
        let _ = writeln!(
            md,
            "| connections | peer | RSS B/conn | kernel B/conn | total B/conn | wssedge/peer total | note |"
        );
        let _ = writeln!(md, "|---:|---|---:|---:|---:|---:|---|");
        for g in &idle {
            let ours = g.iter().copied().find(|c| c.peer == OURS);
            for c in ordered(g, peer_order) {
                let m = c.mem.as_ref();
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    c.connections,
                    label(&c.peer),
                    opt(m.map(|m| m.rss_per_conn())),
                    opt(m.map(|m| m.sock_per_conn())),
                    opt(m.map(|m| m.total_per_conn())),
                    ratio_col(
                        c,
                        ours,
                        &|c: &Cell| c.mem.as_ref().map(|m| m.total_per_conn()),
                        &failed_only
                    ),
                    idle_note(c),
                );
            }
        }
        md.push('\n');
    }
    md
}

/// A failure, or fewer connections opened than asked for (the figures are per opened one).
fn idle_note(c: &Cell) -> String {
    if let Some(e) = &c.error {
        return format!("failed: {e}");
    }
    match &c.mem {
        Some(m) if m.n < c.connections => {
            let failed = c.gen.as_ref().map_or(0.0, |g| g.handshakes_failed);
            format!(
                "only {} of {} opened ({failed:.0} failed); per opened connection",
                m.n, c.connections
            )
        }
        _ => String::new(),
    }
}

/// One cell with its derived numbers, for report.json.
pub fn cell_json(c: &Cell) -> Value {
    json!({
        "scenario": c.scenario.map(|s| s.name()),
        "peer": c.peer,
        "payload": c.payload,
        "connections": c.connections,
        "rate": c.rate,
        "depth": c.depth,
        "server_cpu_s": c.server_cpu_s,
        "window_s": c.window_s,
        "server_cpu_ticks": c.server_ticks,
        "server_cpu_s_schedstat": c.server_sched_s,
        "server_cpu_us_per_msg": matches!(c.scenario, Some(Scenario::Rate | Scenario::Closed))
            .then(|| c.cpu_us_per_msg())
            .flatten(),
        "server_cpu_us_per_msg_schedstat": matches!(c.scenario, Some(Scenario::Rate | Scenario::Closed))
            .then(|| {
                let rate = c.gen.as_ref()?.achieved();
                Some(c.server_sched_s? / c.window_s / rate * 1e6)
            })
            .flatten(),
        "server_cpu_us_per_handshake": (c.scenario == Some(Scenario::Storm))
            .then(|| c.cpu_us_per_handshake())
            .flatten(),
        "handshake_success": c.handshake_success(),
        "flag": c.flag().map(|f| f.text()),
        "error": c.error,
        "memory": c.mem.as_ref().map(|m| json!({
            "n": m.n,
            "rss_before": m.rss_before,
            "rss_during": m.rss_during,
            "tcp_mem_before": m.sock_before,
            "tcp_mem_during": m.sock_during,
            "rss_per_conn": m.rss_per_conn(),
            "kernel_per_conn": m.sock_per_conn(),
            "total_per_conn": m.total_per_conn(),
        })),
        "generator": c.raw,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::results::{GenResult, Mem};

    const FAKE: &str = r#"{"mode":"open","proto":"wss","connections":50,"payload":64,
        "rate":1000,"duration_s":2.0,"sent":2000,"received":2000,"errors":0,"late_sends":0,
        "msgs_per_s":1000.0,"latency_us":{"p50":40,"p90":60,"p99":100,"p999":300,"p9999":900,
        "max":1500,"mean":45.5},"handshake_us":{"p50":800,"p99":2000,"max":3000},
        "handshakes_ok":50,"handshakes_failed":0,"client_cpu_s":0.5,"client_cpu_busy":0.25,
        "threads":1}"#;

    fn rate_cell(peer: &str, cpu_s: f64, p99: f64, busy: f64) -> Cell {
        let (mut g, raw) = GenResult::parse(FAKE).unwrap();
        g.latency_us.p99 = p99;
        g.client_cpu_busy = busy;
        Cell {
            scenario: Some(Scenario::Rate),
            peer: peer.into(),
            payload: 64,
            connections: 50,
            rate: Some(1000.0),
            gen: Some(g),
            raw: Some(raw),
            server_cpu_s: cpu_s,
            server_ticks: 1000,
            window_s: 2.0,
            ..Cell::default()
        }
    }

    #[test]
    fn renders_tables_with_ratios_and_flags() {
        let mut cells = vec![
            // Run order differs from the table order.
            rate_cell("tungstenite", 0.08, 200.0, 0.3),
            rate_cell(OURS, 0.04, 100.0, 0.3),
            rate_cell("fastwebsockets", 0.02, 50.0, 0.95),
        ];
        cells.push(Cell {
            scenario: Some(Scenario::Idle),
            peer: OURS.into(),
            connections: 1000,
            mem: Some(Mem {
                n: 1000,
                rss_before: 0,
                rss_during: 2_000_000,
                sock_before: 0,
                sock_during: 0,
            }),
            ..Cell::default()
        });
        cells.push(Cell {
            scenario: Some(Scenario::Idle),
            peer: "tungstenite".into(),
            connections: 1000,
            mem: Some(Mem {
                n: 1000,
                rss_before: 0,
                rss_during: 8_000_000,
                sock_before: 0,
                sock_during: 0,
            }),
            ..Cell::default()
        });
        cells.push(Cell {
            scenario: Some(Scenario::Idle),
            peer: "nginx".into(),
            connections: 1000,
            mem: Some(Mem {
                n: 900,
                rss_before: 0,
                rss_during: 900_000,
                sock_before: 0,
                sock_during: 0,
            }),
            ..Cell::default()
        });
        let order = [OURS, "tungstenite", "fastwebsockets", "nginx"];
        let md = markdown(&cells, &order, &|p: &str| format!("<{p}>"));
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| 64 B")).collect();
        assert_eq!(rows.len(), 3, "{md}");
        assert!(rows[0].contains("<wssedge>"), "{md}");
        // 0.04 CPU-s / 2 s / 1000 msg/s = 20 µs/msg; ours is the baseline.
        assert!(
            rows[0].contains("| 20.0 |") && rows[0].contains("| — | — |"),
            "{md}"
        );
        // Against tungstenite: 20/40 µs = 0.50 and p99 100/200 = 0.50.
        assert!(
            rows[1].contains("<tungstenite>") && rows[1].contains("| 0.50 | 0.50 |"),
            "{md}"
        );
        // fastwebsockets' generator was saturated: no ratio, a flag instead.
        assert!(
            rows[2].contains("| client-bound | client-bound | client-bound |"),
            "{md}"
        );
        assert!(md.contains("## idle"));
        assert!(
            md.contains("| 1000 | <tungstenite> | 8000 | 0.00 | 8000 | 0.25 |  |"),
            "{md}"
        );
        assert!(
            md.contains("| 1000 | <nginx> | 1000 | 0.00 | 1000 | 2.00 | only 900 of 1000 opened"),
            "{md}"
        );
        assert!(!md.contains("## storm"));
        let j = cell_json(&cells[1]);
        assert_eq!(j["server_cpu_us_per_msg"], 20.0);
        assert_eq!(j["generator"]["latency_us"]["p50"], 40);
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1234.5), "1234");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(f64::NAN), "n/a");
    }
}
