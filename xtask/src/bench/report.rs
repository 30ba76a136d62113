//! report.md (one table per scenario) and the raw-number part of report.json.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::results::{ratio_text, Cell, Flag, Scenario};
use super::{
    BROADCAST, DIRECT_BACKEND, FLEET_CHECKS, FLEET_CROSS, FLEET_NOCHECKS, FLEET_SAME, NCHAN,
    NGINX_PROXY, UWS, UWS_DEFLATE, WSSEDGE_BEFORE, WSSEDGE_DEFLATE_OFF, WSSEDGE_DEFLATE_ON,
    WSSEDGE_PROXY, WSSEDGE_PROXY_BEFORE, WSSEDGE_PUBSUB, WSSEDGE_PUBSUB_BEFORE,
    WSSEDGE_PUBSUB_DEFLATE_OFF, WSSEDGE_PUBSUB_DEFLATE_ON,
};

/// Row order of the fan-out tables: wssedge first, then its peers.
pub const FANOUT_ORDER: [&str; 5] = [WSSEDGE_PUBSUB, WSSEDGE_PUBSUB_BEFORE, BROADCAST, UWS, NCHAN];

/// The peer every ratio is taken against.
pub const OURS: &str = "wssedge";

/// Row order of the proxy tables: the baseline, the reference without an upstream, the two
/// proxies (the ratios there are wssedge-proxy / nginx-proxy).
pub const PROXY_ORDER: [&str; 5] = [
    DIRECT_BACKEND,
    OURS,
    WSSEDGE_PROXY,
    WSSEDGE_PROXY_BEFORE,
    NGINX_PROXY,
];

/// The before/after table of a `--before` run: each wssedge mode against the same mode of the
/// other build, cell by cell (after / before: below 1 = this build cheaper or faster).
pub fn before_after_markdown(cells: &[Cell], label: &dyn Fn(&str) -> String) -> String {
    let pairs = [
        (OURS, WSSEDGE_BEFORE),
        (WSSEDGE_PROXY, WSSEDGE_PROXY_BEFORE),
    ];
    let mut rows = Vec::new();
    for s in Scenario::ALL {
        for g in groups(cells, s) {
            for (now, then) in pairs {
                let find = |p: &str| g.iter().copied().find(|c| c.peer == p);
                let (Some(a), Some(b)) = (find(now), find(then)) else {
                    continue;
                };
                let cpu = |c: &Cell| {
                    if s.is_proxy() {
                        c.fine_cpu_us_per_msg()
                    } else {
                        c.cpu_us_per_msg()
                    }
                };
                let p99 = |c: &Cell| c.gen.as_ref().map(|g| g.latency_us.p99);
                let ratio =
                    |m: &dyn Fn(&Cell) -> Option<f64>| match (a.flag(), b.flag(), m(a), m(b)) {
                        (None, None, Some(x), Some(y)) if y > 0.0 => fmt_num(x / y),
                        _ => "n/a".into(),
                    };
                let what = match (a.rate, a.depth) {
                    (Some(r), _) => format!("{} msg/s", fmt_num(r)),
                    (None, Some(d)) => format!("depth {d}"),
                    _ => format!("{} conns", a.connections),
                };
                rows.push(format!(
                    "| {} | {} B, {what} | {} | {} | {} | {} | {} | {} |",
                    s.name(),
                    a.payload,
                    label(now),
                    opt(cpu(b)),
                    opt(cpu(a)),
                    ratio(&cpu),
                    ratio(&p99),
                    [note(a), note(b)]
                        .iter()
                        .filter(|n| !n.is_empty())
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("; "),
                ));
            }
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "## before / after: this build against the `--before` build\n\n\
         Same cells, same run, alternating order. Ratios are this build / before (below 1 = \
         this build cheaper or faster); CPU is the server's (the proxy's alone in the proxy \
         scenarios).\n\n\
         | scenario | cell | mode | before CPU µs/msg | after CPU µs/msg | CPU after/before | p99 after/before | note |\n\
         |---|---|---|---:|---:|---:|---:|---|\n",
    );
    for r in rows {
        md.push_str(&r);
        md.push('\n');
    }
    md.push('\n');
    md
}

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
    host_busy_note(c, &mut n);
    n
}

/// "host busy" when other processes took a noticeable share of the CPUs during the window.
fn host_busy_note(c: &Cell, n: &mut String) {
    if let Some(f) = c.host_busy().filter(|_| c.error.is_none()) {
        if !n.is_empty() {
            n.push_str("; ");
        }
        let _ = write!(n, "host busy: others used {f:.2} CPU");
    }
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
        "server_cpu_us_per_msg": c.scenario.is_some_and(Scenario::per_message)
            .then(|| c.cpu_us_per_msg())
            .flatten(),
        "server_cpu_us_per_msg_schedstat": c.scenario.is_some_and(Scenario::per_message)
            .then(|| {
                let rate = c.gen.as_ref()?.achieved();
                Some(c.server_sched_s? / c.window_s / rate * 1e6)
            })
            .flatten(),
        "backend_cpu_s": c.backend_cpu_s,
        "backend_cpu_ticks": c.backend_cpu_s.map(|_| c.backend_ticks),
        "backend_cpu_s_schedstat": c.backend_sched_s,
        "backend_cpu_us_per_msg": c.backend_cpu_us_per_msg(),
        "foreign_cpu_s": c.foreign_cpu_s,
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

// ---------------------------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------------------------

/// Server CPU ns per delivery (a delivery: one publication reaching one subscriber).
fn ns_per_delivery(c: &Cell) -> Option<f64> {
    c.cpu_us_per_msg().map(|us| us * 1e3)
}

/// The fan-out table: one row per peer and cell, and wssedge against the best peer of the
/// cell (the lowest figure among the other peers whose cell is sound).
pub fn fanout_markdown(cells: &[Cell], label: &dyn Fn(&str) -> String) -> String {
    let groups = groups(cells, Scenario::Fanout);
    if groups.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "## fanout: one publisher, N subscribers of its topic\n\n\
         Deliveries = publications × subscribers reaching them; server CPU ns/delivery = \
         server CPU (process tree) / deliveries. Latency: the publisher's timestamp in `data` to \
         the subscriber's receipt. Lost must be 0 (every peer closes, never drops, here). \
         RSS/sub = (server RSS during the window − before) / subscribers. Best-peer ratios: \
         wssedge / the best other peer of the cell (target ≤ 0.5). A server that kept its CPU \
         busy all window is marked saturated: its CPU per delivery is then a bound.\n\n\
         | payload | subscribers | pub/s | peer | deliveries/s | server CPU ns/delivery | p50 µs | p99 µs | p99.9 µs | max µs | lost | RSS B/sub | client CPU | wssedge/best CPU | wssedge/best p99 | note |\n\
         |---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let p99 = |c: &Cell| c.gen.as_ref().map(|g| g.latency_us.p99);
    for g in &groups {
        let ours = g.iter().copied().find(|c| c.peer == WSSEDGE_PUBSUB);
        let best = |m: &dyn Fn(&Cell) -> Option<f64>| {
            g.iter()
                .filter(|c| c.peer != WSSEDGE_PUBSUB && c.peer != WSSEDGE_PUBSUB_BEFORE)
                .filter(|c| c.flag().is_none())
                .filter_map(|c| m(c))
                .filter(|v| *v > 0.0)
                .fold(None, |b: Option<f64>, v| Some(b.map_or(v, |b| b.min(v))))
        };
        let vs_best = |m: &dyn Fn(&Cell) -> Option<f64>| match (ours, best(m)) {
            (Some(o), Some(b)) if o.flag().is_none() => opt(m(o).map(|v| v / b)),
            _ => "n/a".into(),
        };
        let (cpu_ratio, p99_ratio) = (vs_best(&ns_per_delivery), vs_best(&p99));
        for c in ordered(g, &FANOUT_ORDER) {
            let l = c.gen.as_ref().map(|g| g.latency_us.clone());
            let f = c.gen.as_ref().and_then(|g| g.fanout.clone());
            let is_ours = c.peer == WSSEDGE_PUBSUB;
            let _ = writeln!(
                md,
                "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.payload,
                c.connections,
                opt(c.rate),
                label(&c.peer),
                opt(c.gen.as_ref().map(|g| g.achieved())),
                opt(ns_per_delivery(c)),
                opt(l.as_ref().map(|l| l.p50)),
                opt(l.as_ref().map(|l| l.p99)),
                opt(l.as_ref().map(|l| l.p999)),
                opt(l.as_ref().map(|l| l.max)),
                opt(f.as_ref().map(|f| f.lost)),
                opt(c.mem.as_ref().map(|m| m.rss_per_conn())),
                client_busy(c),
                if is_ours { cpu_ratio.clone() } else { String::new() },
                if is_ours { p99_ratio.clone() } else { String::new() },
                fanout_note(c),
            );
        }
    }
    md.push('\n');
    md
}

/// Row order of the fleet table: one node without Redis, then the fleet same-node and cross.
const FLEET_ORDER: [&str; 3] = [WSSEDGE_PUBSUB, FLEET_SAME, FLEET_CROSS];

/// The fleet table: publish→receive on the publisher's node and on another node of a fleet
/// on one Redis, against one node alone; the nodes' CPU per delivery and Redis' per
/// publication.
pub fn fleet_markdown(cells: &[Cell], label: &dyn Fn(&str) -> String) -> String {
    let groups = groups(cells, Scenario::Fleet);
    if groups.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "## fleet: two nodes on one Redis, the publisher on node A\n\n\
         Same node: subscribers on A; cross node: subscribers on B (A → Redis → B). One node \
         alone (no Redis) is the baseline. Nodes' CPU ns/delivery = both nodes' CPU / \
         deliveries; Redis µs/publication = redis-server's CPU / publications. Target: cross-node \
         p99 ≤ 2 × same-node p99.\n\n\
         | payload | subscribers | pub/s | peer | deliveries/s | nodes' CPU ns/delivery | Redis CPU µs/publication | p50 µs | p99 µs | p99.9 µs | max µs | lost | cross/same p99 | note |\n\
         |---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    let p99 = |c: &Cell| c.gen.as_ref().map(|g| g.latency_us.p99);
    for g in &groups {
        let find = |peer: &str| {
            g.iter()
                .copied()
                .find(|c| c.peer == peer && c.flag().is_none())
        };
        let cross_same = match (
            find(FLEET_CROSS).and_then(p99),
            find(FLEET_SAME).and_then(p99),
        ) {
            (Some(x), Some(s)) if s > 0.0 => opt(Some(x / s)),
            _ => "n/a".into(),
        };
        for c in ordered(g, &FLEET_ORDER) {
            let l = c.gen.as_ref().map(|g| g.latency_us.clone());
            let f = c.gen.as_ref().and_then(|g| g.fanout.clone());
            let redis_us = match (c.backend_cpu_s, f.as_ref().map(|f| f.publications)) {
                (Some(cpu), Some(n)) if n > 0.0 => Some(cpu * 1e6 / n),
                _ => None,
            };
            let _ = writeln!(
                md,
                "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                c.payload,
                c.connections,
                opt(c.rate),
                label(&c.peer),
                opt(c.gen.as_ref().map(|g| g.achieved())),
                opt(ns_per_delivery(c)),
                opt(redis_us),
                opt(l.as_ref().map(|l| l.p50)),
                opt(l.as_ref().map(|l| l.p99)),
                opt(l.as_ref().map(|l| l.p999)),
                opt(l.as_ref().map(|l| l.max)),
                opt(f.as_ref().map(|f| f.lost)),
                if c.peer == FLEET_CROSS {
                    cross_same.clone()
                } else {
                    String::new()
                },
                fanout_note(c),
            );
        }
    }
    md.push('\n');
    md
}

/// The fleet's upgrade cells: one node with the checks that ask Redis at every upgrade
/// (single-use claim, identity count) against the same node without them.
pub fn fleet_upgrades_markdown(cells: &[Cell], label: &dyn Fn(&str) -> String) -> String {
    let groups = groups(cells, Scenario::FleetUpgrades);
    if groups.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "## fleet-upgrades: upgrades with the fleet's checks against without\n\n\
         One node on its Redis; every connection carries its own token (a fresh jti). Checks: \
         `single_use` (claimed in Redis) and `per_identity_connections` (counted in Redis). \
         Target: achieved upgrades/s with checks ≥ 0.8 × without.\n\n\
         | offered hs/s | peer | achieved hs/s | success | hs p50 µs | hs p99 µs | node CPU µs/handshake | Redis CPU µs/handshake | checks/none hs/s | note |\n\
         |---:|---|---:|---:|---:|---:|---:|---:|---:|---|\n",
    );
    for g in &groups {
        let rate = |peer: &str| {
            g.iter()
                .find(|c| c.peer == peer)
                .and_then(|c| c.gen.as_ref().map(|g| g.handshakes_per_s()))
        };
        let ratio = match (rate(FLEET_CHECKS), rate(FLEET_NOCHECKS)) {
            (Some(a), Some(b)) if b > 0.0 => opt(Some(a / b)),
            _ => "n/a".into(),
        };
        for c in ordered(g, &[FLEET_CHECKS, FLEET_NOCHECKS]) {
            let hs = c
                .gen
                .as_ref()
                .map(|g| (g.handshakes_per_s(), g.handshake_us.clone()));
            let redis_us = match (c.backend_cpu_s, hs.as_ref().map(|h| h.0 * c.window_s)) {
                (Some(cpu), Some(n)) if n > 0.0 => Some(cpu * 1e6 / n),
                _ => None,
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                opt(c.rate),
                label(&c.peer),
                opt(hs.as_ref().map(|h| h.0)),
                c.handshake_success()
                    .map(|s| format!("{:.2} %", s * 100.0))
                    .unwrap_or_else(|| "n/a".into()),
                opt(hs.as_ref().map(|h| h.1.p50)),
                opt(hs.as_ref().map(|h| h.1.p99)),
                opt(c.cpu_us_per_handshake()),
                opt(redis_us),
                if c.peer == FLEET_CHECKS {
                    ratio.clone()
                } else {
                    String::new()
                },
                note(c),
            );
        }
    }
    md.push('\n');
    md
}

fn fanout_note(c: &Cell) -> String {
    let mut n = note(c);
    if c.error.is_none() && c.server_saturated() {
        if !n.is_empty() {
            n.push_str("; ");
        }
        n.push_str(
            "server saturated (one CPU all window: CPU/delivery is a bound, latency queueing)",
        );
    }
    if let Some(f) = c.gen.as_ref().and_then(|g| g.fanout.as_ref()) {
        if f.subscribers_closed > 0.0 {
            if !n.is_empty() {
                n.push_str("; ");
            }
            let _ = write!(n, "{} subscribers closed", f.subscribers_closed);
        }
    }
    n
}

// ---------------------------------------------------------------------------------------------
// Compression
// ---------------------------------------------------------------------------------------------

/// A server with compression off and on: (off peer, on peer, what to call the pair).
type Pair = (&'static str, &'static str, &'static str);
const ECHO_PAIRS: [Pair; 1] = [(WSSEDGE_DEFLATE_OFF, WSSEDGE_DEFLATE_ON, "wssedge")];
const FANOUT_PAIRS: [Pair; 2] = [
    (
        WSSEDGE_PUBSUB_DEFLATE_OFF,
        WSSEDGE_PUBSUB_DEFLATE_ON,
        "wssedge",
    ),
    (UWS, UWS_DEFLATE, "uWebSockets"),
];
/// Row order of the compression tables: each server off, then on.
const COMPRESSION_ORDER: [&str; 6] = [
    WSSEDGE_DEFLATE_OFF,
    WSSEDGE_DEFLATE_ON,
    WSSEDGE_PUBSUB_DEFLATE_OFF,
    WSSEDGE_PUBSUB_DEFLATE_ON,
    UWS,
    UWS_DEFLATE,
];
/// The peers with compression on: they must have agreed to it for their figures to count.
const ON_PEERS: [&str; 3] = [WSSEDGE_DEFLATE_ON, WSSEDGE_PUBSUB_DEFLATE_ON, UWS_DEFLATE];
/// The issue's targets, shown beside the measured figure (never asserted): fan-out CPU per
/// delivery with compression at most this many times without (compress once), and an idle
/// connection with compression negotiated at most this many bytes above one without.
pub const FANOUT_CPU_TARGET: f64 = 1.2;
pub const IDLE_RSS_TARGET_BYTES: f64 = 1024.0;

/// The compression cells' CPU: schedstat (ns) where the kernel has it, µs per echo or ns per
/// delivery; on/off differences of a few percent need more than whole ticks.
fn compression_cpu(c: &Cell) -> Option<f64> {
    let us = c.fine_cpu_us_per_msg()?;
    Some(if c.scenario == Some(Scenario::CompressionFanout) {
        us * 1e3
    } else {
        us
    })
}

fn negotiated(c: &Cell) -> Option<f64> {
    c.gen.as_ref()?.deflate.as_ref().map(|d| d.negotiated)
}

fn wire_received(c: &Cell) -> Option<f64> {
    c.gen.as_ref()?.wire.as_ref()?.per_msg_received
}

fn wire_sent(c: &Cell) -> Option<f64> {
    c.gen.as_ref()?.wire.as_ref()?.per_msg_sent
}

fn compressed_share(c: &Cell) -> Option<f64> {
    c.gen.as_ref()?.deflate.as_ref()?.compressed_share
}

fn p50(c: &Cell) -> Option<f64> {
    c.gen.as_ref().map(|g| g.latency_us.p50)
}

fn p99(c: &Cell) -> Option<f64> {
    c.gen.as_ref().map(|g| g.latency_us.p99)
}

/// Why a cell of the compression set cannot stand in a ratio, if it cannot: its flag, or an
/// "on" server that agreed to nothing (its figures would be uncompressed ones).
fn compression_unusable(c: &Cell) -> Option<String> {
    let flag = if c.scenario.is_some_and(Scenario::is_idle) {
        c.error.clone().map(|e| format!("failed: {e}"))
    } else {
        c.flag().map(|f| f.text())
    };
    let on = ON_PEERS.contains(&c.peer.as_str());
    flag.or_else(|| (on && negotiated(c).unwrap_or(0.0) <= 0.0).then(|| "not negotiated".into()))
}

fn pair_cells<'a>(g: &[&'a Cell], pair: Pair) -> Option<(&'a Cell, &'a Cell)> {
    let find = |p: &str| g.iter().copied().find(|c| c.peer == p);
    let (off, on) = (find(pair.0)?, find(pair.1)?);
    (compression_unusable(off).is_none() && compression_unusable(on).is_none()).then_some((off, on))
}

/// `on / off` of `metric` in one group's pair, `None` when a side is missing or unusable.
fn on_over_off(g: &[&Cell], pair: Pair, metric: &dyn Fn(&Cell) -> Option<f64>) -> Option<f64> {
    let (off, on) = pair_cells(g, pair)?;
    match (metric(off), metric(on)) {
        (Some(a), Some(b)) if a > 0.0 => Some(b / a),
        _ => None,
    }
}

/// RSS per idle connection, on − off, in bytes.
fn idle_delta(g: &[&Cell], pair: Pair) -> Option<f64> {
    let (off, on) = pair_cells(g, pair)?;
    Some(on.mem.as_ref()?.rss_per_conn() - off.mem.as_ref()?.rss_per_conn())
}

fn compression_note(c: &Cell) -> String {
    let mut n = compression_unusable(c).unwrap_or_default();
    let mut add = |s: &str| {
        if !n.is_empty() {
            n.push_str("; ");
        }
        n.push_str(s);
    };
    if c.error.is_none() && c.gen.is_some() && !c.scenario.is_some_and(Scenario::is_idle) {
        if c.fine_cpu_is_ticks() {
            add(&format!("CPU from {} ticks", c.server_ticks));
        }
        if c.server_saturated() {
            add("server saturated (CPU/msg is a bound, latency queueing)");
        }
        if let Some(f) = c.gen.as_ref().and_then(|g| g.fanout.as_ref()) {
            if f.subscribers_closed > 0.0 {
                add(&format!("{} subscribers closed", f.subscribers_closed));
            }
        }
    }
    host_busy_note(c, &mut n);
    n
}

fn share(v: Option<f64>) -> String {
    v.map(|s| format!("{:.0} %", s * 100.0))
        .unwrap_or_else(|| "n/a".into())
}

fn within(ratio: Option<f64>, target: f64) -> &'static str {
    match ratio {
        Some(r) if r <= target => "yes",
        Some(_) => "**no**",
        None => "n/a",
    }
}

/// The "Compression" section: each server with permessage-deflate off and on, the same
/// market-data messages offered to both, and the on/off ratios beside the issue's targets.
pub fn compression_markdown(cells: &[Cell], label: &dyn Fn(&str) -> String) -> String {
    let echo = groups(cells, Scenario::CompressionEcho);
    let idle = groups(cells, Scenario::CompressionIdle);
    let fanout = groups(cells, Scenario::CompressionFanout);
    if echo.is_empty() && idle.is_empty() && fanout.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "## Compression: permessage-deflate off vs on\n\n\
         The generator offers `permessage-deflate; client_max_window_bits` to every server and \
         sends market-data JSON (book snapshots of the payload's size); servers with compression \
         off do not agree, so both sides of a pair see the same messages. wssedge runs from a \
         config with `[compression] enabled = false | true`, `context_takeover = \"none\"` \
         (level 3, min_bytes 128). uWebSockets.js does not load on this host (glibc 2.36), so \
         its C++ core stands in: `uws_pubsub` with `SHARED_COMPRESSOR` against the same without \
         compression. Agreed = connections whose 101 agreed to permessage-deflate. Wire bytes \
         are WebSocket frame bytes (headers included, TLS records not) over the measured \
         window, per message. Compressed = the share of received data messages with RSV1. CPU \
         from schedstat (ns). Ratios are on / off.\n\n",
    );
    if !echo.is_empty() {
        md.push_str(
            "### echo, open loop (latency corrected for coordinated omission)\n\n\
             | payload | conns | offered msg/s | peer | agreed | achieved msg/s | server CPU µs/msg | wire B/msg client→server | wire B/msg server→client | compressed | p50 µs | p99 µs | client CPU | note |\n\
             |---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for g in &echo {
            for c in ordered(g, &COMPRESSION_ORDER) {
                let _ = writeln!(
                    md,
                    "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.payload,
                    c.connections,
                    opt(c.rate),
                    label(&c.peer),
                    opt(negotiated(c)),
                    opt(c.gen.as_ref().map(|g| g.achieved())),
                    opt(compression_cpu(c)),
                    opt(wire_sent(c)),
                    opt(wire_received(c)),
                    share(compressed_share(c)),
                    opt(p50(c)),
                    opt(p99(c)),
                    client_busy(c),
                    compression_note(c),
                );
            }
            for pair in ECHO_PAIRS {
                let r = |m: &dyn Fn(&Cell) -> Option<f64>| opt(on_over_off(g, pair, m));
                let _ = writeln!(
                    md,
                    "| | | | **{} on / off** | | | **{}** | {} | **{}** | | {} | **{}** | | |",
                    pair.2,
                    r(&compression_cpu),
                    r(&wire_sent),
                    r(&wire_received),
                    r(&p50),
                    r(&p99),
                );
            }
        }
        md.push('\n');
    }
    if !idle.is_empty() {
        let _ = writeln!(
            md,
            "### idle: memory per connection with compression negotiated\n\n\
             RSS and kernel per connection as in the idle table. Target: RSS with compression \
             within {IDLE_RSS_TARGET_BYTES:.0} B of without (`context_takeover = \"none\"`: no \
             zlib state outlives a message).\n\n\
             | connections | peer | agreed | RSS B/conn | kernel B/conn | total B/conn | RSS on − off B/conn | within target | note |\n\
             |---:|---|---:|---:|---:|---:|---:|---:|---|"
        );
        for g in &idle {
            let delta = idle_delta(g, ECHO_PAIRS[0]);
            for c in ordered(g, &COMPRESSION_ORDER) {
                let m = c.mem.as_ref();
                let is_on = c.peer == WSSEDGE_DEFLATE_ON;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.connections,
                    label(&c.peer),
                    opt(negotiated(c)),
                    opt(m.map(|m| m.rss_per_conn())),
                    opt(m.map(|m| m.sock_per_conn())),
                    opt(m.map(|m| m.total_per_conn())),
                    if is_on {
                        delta
                            .map(|d| format!("{d:+.0}"))
                            .unwrap_or_else(|| "n/a".into())
                    } else {
                        String::new()
                    },
                    if is_on {
                        within(delta, IDLE_RSS_TARGET_BYTES)
                    } else {
                        ""
                    },
                    [compression_note(c), idle_note(c)]
                        .into_iter()
                        .filter(|n| !n.is_empty())
                        .collect::<Vec<_>>()
                        .join("; "),
                );
            }
        }
        md.push('\n');
    }
    if !fanout.is_empty() {
        let _ = writeln!(
            md,
            "### fan-out: one publisher, N subscribers\n\n\
             Server CPU ns/delivery = server CPU / deliveries; wire B/delivery = the \
             subscribers' received bytes / deliveries; wire B/publication = what the publisher \
             sent per publication (compressed too where agreed). Target: wssedge's CPU per \
             delivery with compression ≤ {FANOUT_CPU_TARGET} × without (a publication is \
             compressed once for all its subscribers). uWebSockets deflates each delivery on its \
             own.\n\n\
             | payload | subscribers | pub/s | peer | agreed | deliveries/s | server CPU ns/delivery | wire B/delivery | wire B/publication | compressed | p50 µs | p99 µs | lost | client CPU | note |\n\
             |---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for g in &fanout {
            for c in ordered(g, &COMPRESSION_ORDER) {
                let f = c.gen.as_ref().and_then(|g| g.fanout.clone());
                let _ = writeln!(
                    md,
                    "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.payload,
                    c.connections,
                    opt(c.rate),
                    label(&c.peer),
                    opt(negotiated(c)),
                    opt(c.gen.as_ref().map(|g| g.achieved())),
                    opt(compression_cpu(c)),
                    opt(wire_received(c)),
                    opt(wire_sent(c)),
                    share(compressed_share(c)),
                    opt(p50(c)),
                    opt(p99(c)),
                    opt(f.as_ref().map(|f| f.lost)),
                    client_busy(c),
                    compression_note(c),
                );
            }
            let _ = writeln!(
                md,
                "\n| pair | CPU/delivery on / off | within ≤ {FANOUT_CPU_TARGET} | wire B/delivery on / off | p50 on / off | p99 on / off |\n\
                 |---|---:|---:|---:|---:|---:|"
            );
            for pair in FANOUT_PAIRS {
                if !g.iter().any(|c| c.peer == pair.0 || c.peer == pair.1) {
                    continue;
                }
                let cpu = on_over_off(g, pair, &compression_cpu);
                let _ = writeln!(
                    md,
                    "| {} ({} B, {} × {}/s) | **{}** | {} | {} | {} | {} |",
                    pair.2,
                    g[0].payload,
                    g[0].connections,
                    opt(g[0].rate),
                    opt(cpu),
                    if pair.0 == WSSEDGE_PUBSUB_DEFLATE_OFF {
                        within(cpu, FANOUT_CPU_TARGET)
                    } else {
                        "—"
                    },
                    opt(on_over_off(g, pair, &wire_received)),
                    opt(on_over_off(g, pair, &p50)),
                    opt(on_over_off(g, pair, &p99)),
                );
            }
            md.push('\n');
        }
    }
    md
}

/// The compression section's numbers for report.json: rows per group, the on/off ratios
/// (null when a side is missing, flagged or did not negotiate) and the targets.
pub fn compression_json(cells: &[Cell]) -> Value {
    let row = |c: &Cell| {
        // an idle hold has no messages: no rate, CPU or latency to speak of
        let flowing = !c.scenario.is_some_and(Scenario::is_idle);
        let f = |v: Option<f64>| v.filter(|_| flowing);
        json!({
            "peer": c.peer,
            "negotiated": negotiated(c),
            "deflate_answer": c.gen.as_ref().and_then(|g| g.deflate.as_ref()).map(|d| d.answer.clone()),
            "achieved_per_s": f(c.gen.as_ref().map(|g| g.achieved())),
            "server_cpu": f(compression_cpu(c)),
            "wire_bytes_per_msg_sent": f(wire_sent(c)),
            "wire_bytes_per_msg_received": f(wire_received(c)),
            "compressed_share": f(compressed_share(c)),
            "p50_us": f(p50(c)),
            "p99_us": f(p99(c)),
            "rss_per_conn": c.mem.as_ref().map(|m| m.rss_per_conn()),
            "kernel_per_conn": c.mem.as_ref().map(|m| m.sock_per_conn()),
            "lost": c.gen.as_ref().and_then(|g| g.fanout.as_ref()).map(|f| f.lost),
            "flag": compression_unusable(c),
        })
    };
    let ratios = |g: &[&Cell], pair: Pair| {
        json!({
            "server": pair.2,
            "off": pair.0,
            "on": pair.1,
            "server_cpu": on_over_off(g, pair, &compression_cpu),
            "wire_bytes_per_msg_sent": on_over_off(g, pair, &wire_sent),
            "wire_bytes_per_msg_received": on_over_off(g, pair, &wire_received),
            "p50_us": on_over_off(g, pair, &p50),
            "p99_us": on_over_off(g, pair, &p99),
        })
    };
    let head = |g: &[&Cell]| {
        json!({
            "payload": g[0].payload,
            "connections": g[0].connections,
            "rate": g[0].rate,
        })
    };
    let echo: Vec<Value> = groups(cells, Scenario::CompressionEcho)
        .iter()
        .map(|g| {
            let mut v = head(g);
            v["cpu_unit"] = json!("us_per_msg");
            v["rows"] = ordered(g, &COMPRESSION_ORDER)
                .into_iter()
                .map(row)
                .collect();
            v["on_over_off"] = ECHO_PAIRS.iter().map(|p| ratios(g, *p)).collect();
            v
        })
        .collect();
    let idle: Vec<Value> = groups(cells, Scenario::CompressionIdle)
        .iter()
        .map(|g| {
            let delta = idle_delta(g, ECHO_PAIRS[0]);
            let mut v = head(g);
            v["rows"] = ordered(g, &COMPRESSION_ORDER)
                .into_iter()
                .map(row)
                .collect();
            v["rss_per_conn_on_minus_off"] = json!(delta);
            v["target_bytes"] = json!(IDLE_RSS_TARGET_BYTES);
            v["within_target"] = json!(delta.map(|d| d <= IDLE_RSS_TARGET_BYTES));
            v
        })
        .collect();
    let fanout: Vec<Value> = groups(cells, Scenario::CompressionFanout)
        .iter()
        .map(|g| {
            let mut v = head(g);
            v["cpu_unit"] = json!("ns_per_delivery");
            v["rows"] = ordered(g, &COMPRESSION_ORDER)
                .into_iter()
                .map(row)
                .collect();
            v["on_over_off"] = FANOUT_PAIRS
                .iter()
                .filter(|p| g.iter().any(|c| c.peer == p.0 || c.peer == p.1))
                .map(|p| {
                    let mut r = ratios(g, *p);
                    if p.0 == WSSEDGE_PUBSUB_DEFLATE_OFF {
                        let cpu = on_over_off(g, *p, &compression_cpu);
                        r["server_cpu_target"] = json!(FANOUT_CPU_TARGET);
                        r["within_target"] = json!(cpu.map(|x| x <= FANOUT_CPU_TARGET));
                    }
                    r
                })
                .collect();
            v
        })
        .collect();
    json!({ "echo": echo, "idle": idle, "fanout": fanout })
}

// ---------------------------------------------------------------------------------------------
// Proxy mode
// ---------------------------------------------------------------------------------------------

fn proxy_label(peer: &str, label: &dyn Fn(&str) -> String) -> String {
    if peer == OURS {
        format!("{}: echo, no upstream (reference)", label(peer))
    } else {
        label(peer)
    }
}

/// The direct-backend cell of a proxy group, when it measured cleanly.
fn direct_of<'a>(group: &[&'a Cell]) -> Option<&'a Cell> {
    group
        .iter()
        .copied()
        .find(|c| c.peer == DIRECT_BACKEND && c.flag().is_none())
}

/// Latency this cell adds over the direct backend at the same rate, at percentile `pick`.
fn added(
    c: &Cell,
    direct: Option<&Cell>,
    pick: fn(&super::results::Latency) -> f64,
) -> Option<f64> {
    if c.peer == DIRECT_BACKEND {
        return None;
    }
    let d = direct?.gen.as_ref()?;
    Some(pick(&c.gen.as_ref()?.latency_us) - pick(&d.latency_us))
}

/// A signed number (the added latency may come out negative in noise).
fn opt_signed(v: Option<f64>) -> String {
    match v {
        Some(x) if x > 0.0 => format!("+{}", fmt_num(x)),
        Some(x) => fmt_num(x),
        None => "—".into(),
    }
}

fn proxy_note(c: &Cell) -> String {
    let mut n = c.flag().map(|f| f.text()).unwrap_or_default();
    if c.error.is_none() && c.fine_cpu_is_ticks() {
        if let Some(step) = c.coarse_cpu() {
            if !n.is_empty() {
                n.push_str("; ");
            }
            let _ = write!(n, "CPU ±{:.0} % ({} ticks)", step * 100.0, c.server_ticks);
        }
    }
    host_busy_note(c, &mut n);
    n
}

/// `wssedge-proxy / nginx-proxy` for one metric: the number (None if either is flagged or
/// missing) and its text.
fn proxy_ratio(group: &[&Cell], metric: &dyn Fn(&Cell) -> Option<f64>) -> (Option<f64>, String) {
    let find = |p: &str| group.iter().copied().find(|c| c.peer == p);
    let (Some(w), Some(n)) = (find(WSSEDGE_PROXY), find(NGINX_PROXY)) else {
        return (None, "n/a".into());
    };
    let text = ratio_text(metric(w), w.flag().as_ref(), metric(n), n.flag().as_ref())
        .replace("wssedge ", "wssedge-proxy ");
    let num = match (w.flag(), n.flag(), metric(w), metric(n)) {
        (None, None, Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    (num, text)
}

type Metric<'a> = Box<dyn Fn(&Cell) -> Option<f64> + 'a>;

/// The open-loop metrics with a ratio, in column order: (json key, metric).
fn open_metrics<'a>(direct: Option<&'a Cell>) -> Vec<(&'static str, Metric<'a>)> {
    let lat = |f: fn(&super::results::Latency) -> f64| -> Metric<'a> {
        Box::new(move |c: &Cell| c.gen.as_ref().map(|g| f(&g.latency_us)))
    };
    let mut metrics = throughput_and_cpu_metrics();
    metrics.extend([
        ("p50_us", lat(|l| l.p50)),
        ("p99_us", lat(|l| l.p99)),
        ("p999_us", lat(|l| l.p999)),
        (
            "added_p50_us",
            Box::new(move |c: &Cell| added(c, direct, |l| l.p50)),
        ),
        (
            "added_p99_us",
            Box::new(move |c: &Cell| added(c, direct, |l| l.p99)),
        ),
    ]);
    metrics
}

/// The first columns of both loops: messages per second, the proxy's and the backend's CPU.
fn throughput_and_cpu_metrics<'a>() -> Vec<(&'static str, Metric<'a>)> {
    vec![
        (
            "msgs_per_s",
            Box::new(|c: &Cell| c.gen.as_ref().map(|g| g.achieved())),
        ),
        (
            "proxy_cpu_us_per_msg",
            Box::new(|c: &Cell| c.fine_cpu_us_per_msg()),
        ),
        (
            "backend_cpu_us_per_msg",
            Box::new(|c: &Cell| c.backend_cpu_us_per_msg()),
        ),
    ]
}

fn closed_metrics<'a>() -> Vec<(&'static str, Metric<'a>)> {
    let mut metrics = throughput_and_cpu_metrics();
    metrics.extend::<[(&'static str, Metric<'a>); 2]>([
        (
            "p50_us",
            Box::new(|c: &Cell| c.gen.as_ref().map(|g| g.latency_us.p50)),
        ),
        (
            "p99_us",
            Box::new(|c: &Cell| c.gen.as_ref().map(|g| g.latency_us.p99)),
        ),
    ]);
    metrics
}

/// Backend CPU column: a number for the proxies, "—" where there is no separate backend.
fn backend_col(c: &Cell) -> String {
    c.backend_cpu_us_per_msg()
        .map(fmt_num)
        .unwrap_or_else(|| "—".into())
}

/// The "Proxy mode" section of report.md: open loop (hop latency, CPU per message) and
/// closed loop (throughput), each with a wssedge-proxy / nginx-proxy ratio row.
pub fn proxy_markdown(cells: &[Cell], label: &dyn Fn(&str) -> String) -> String {
    let mut md = String::new();
    let open = groups(cells, Scenario::Proxy);
    let closed = groups(cells, Scenario::ProxyClosed);
    if open.is_empty() && closed.is_empty() {
        return md;
    }
    let fine = cells
        .iter()
        .filter(|c| c.scenario.is_some_and(Scenario::is_proxy) && c.gen.is_some())
        .all(|c| !c.fine_cpu_is_ticks());
    let _ = writeln!(
        md,
        "## Proxy mode
"
    );
    let _ = writeln!(
        md,
        "wssedge's proxy mode (`[upstream]` group + `[[routes]] prefix = \"/\"`, `cores = 1`) and \
         nginx both terminate TLS and relay every message to the same kind of ws:// backend, \
         `echo-plain` (tokio-tungstenite, one thread), over one upstream connection per client. \
         Proxy and backend share CPU {}, the generator has CPU {} to itself. **Proxy CPU** is \
         the proxy process tree alone (nginx: master + worker), **backend CPU** is `echo-plain`, \
         each per echoed message, from {}. For `direct-backend` (the generator straight to \
         `echo-plain` over ws://, no TLS) and wssedge's echo mode the first CPU column is that \
         server's. **Added hop** = the row's p50/p99 − direct-backend's at the same rate: TLS \
         termination plus the relay. The echo row is wssedge with TLS and no upstream against \
         the plain backend: another server, so its difference is not TLS's share alone, but the \
         gap between it and wssedge-proxy is what the relay costs wssedge. The last row of \
         each group is wssedge-proxy / nginx-proxy (below 1: wssedge-proxy cheaper or faster; \
         for msg/s above 1 is faster).\n",
        super::SERVER_CPU,
        super::CLIENT_CPU,
        if fine {
            "schedstat (ns)"
        } else {
            "utime+stime ticks where schedstat is missing (see notes)"
        }
    );
    if !open.is_empty() {
        let _ = writeln!(
            md,
            "### open loop at a fixed rate (latency corrected for coordinated omission)\n"
        );
        let _ = writeln!(
            md,
            "| payload | conns | offered msg/s | peer | achieved msg/s | proxy CPU µs/msg | backend CPU µs/msg | p50 µs | p99 µs | p99.9 µs | added hop p50 µs | added hop p99 µs | client CPU | note |"
        );
        let _ = writeln!(
            md,
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for g in &open {
            let direct = direct_of(g);
            for c in ordered(g, &PROXY_ORDER) {
                let l = c.gen.as_ref().map(|g| g.latency_us.clone());
                let _ = writeln!(
                    md,
                    "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.payload,
                    c.connections,
                    opt(c.rate),
                    proxy_label(&c.peer, label),
                    opt(c.gen.as_ref().map(|g| g.achieved())),
                    opt(c.fine_cpu_us_per_msg()),
                    backend_col(c),
                    opt(l.as_ref().map(|l| l.p50)),
                    opt(l.as_ref().map(|l| l.p99)),
                    opt(l.as_ref().map(|l| l.p999)),
                    opt_signed(added(c, direct, |l| l.p50)),
                    opt_signed(added(c, direct, |l| l.p99)),
                    client_busy(c),
                    proxy_note(c),
                );
            }
            let r: Vec<String> = open_metrics(direct)
                .iter()
                .map(|(_, m)| proxy_ratio(g, m.as_ref()).1)
                .collect();
            let _ = writeln!(
                md,
                "| | | | **wssedge-proxy / nginx-proxy** | {} | **{}** | {} | {} | **{}** | {} | {} | **{}** | | |",
                r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]
            );
        }
        md.push('\n');
    }
    if !closed.is_empty() {
        let _ = writeln!(md, "### closed loop (throughput)\n");
        let _ = writeln!(
            md,
            "| payload | conns | depth | peer | msgs/s | proxy CPU µs/msg | backend CPU µs/msg | p50 µs | p99 µs | client CPU | note |"
        );
        let _ = writeln!(md, "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|");
        for g in &closed {
            for c in ordered(g, &PROXY_ORDER) {
                let _ = writeln!(
                    md,
                    "| {} B | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.payload,
                    c.connections,
                    c.depth.unwrap_or(1),
                    proxy_label(&c.peer, label),
                    opt(c.gen.as_ref().map(|g| g.achieved())),
                    opt(c.fine_cpu_us_per_msg()),
                    backend_col(c),
                    opt(c.gen.as_ref().map(|g| g.latency_us.p50)),
                    opt(c.gen.as_ref().map(|g| g.latency_us.p99)),
                    client_busy(c),
                    proxy_note(c),
                );
            }
            let r: Vec<String> = closed_metrics()
                .iter()
                .map(|(_, m)| proxy_ratio(g, m.as_ref()).1)
                .collect();
            let _ = writeln!(
                md,
                "| | | | **wssedge-proxy / nginx-proxy** | **{}** | **{}** | {} | {} | {} | | |",
                r[0], r[1], r[2], r[3], r[4]
            );
        }
        md.push('\n');
    }
    md
}

/// The proxy tables' numbers for report.json: per group its rows (with the added hop latency)
/// and the wssedge-proxy / nginx-proxy ratios (null when a side is flagged or missing).
pub fn proxy_json(cells: &[Cell]) -> Value {
    let group_json = |g: &Vec<&Cell>, metrics: Vec<(&'static str, Metric<'_>)>| {
        let first = g[0];
        let rows: Vec<Value> = ordered(g, &PROXY_ORDER)
            .into_iter()
            .map(|c| {
                let mut row = serde_json::Map::new();
                row.insert("peer".into(), json!(c.peer));
                for (k, m) in &metrics {
                    row.insert((*k).into(), json!(m(c)));
                }
                row.insert("flag".into(), json!(c.flag().map(|f| f.text())));
                Value::Object(row)
            })
            .collect();
        let ratios: serde_json::Map<String, Value> = metrics
            .iter()
            .map(|(k, m)| ((*k).to_string(), json!(proxy_ratio(g, m.as_ref()).0)))
            .collect();
        json!({
            "payload": first.payload,
            "connections": first.connections,
            "rate": first.rate,
            "depth": first.depth,
            "rows": rows,
            "ratio_wssedge_proxy_over_nginx_proxy": ratios,
        })
    };
    json!({
        "open_loop": groups(cells, Scenario::Proxy)
            .iter()
            .map(|g| group_json(g, open_metrics(direct_of(g))))
            .collect::<Vec<_>>(),
        "closed_loop": groups(cells, Scenario::ProxyClosed)
            .iter()
            .map(|g| group_json(g, closed_metrics()))
            .collect::<Vec<_>>(),
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

    /// A proxy-set cell: `cpu_s` (schedstat) over 2 s at 1000 msg/s, `backend_s` apart.
    fn proxy_cell(
        s: Scenario,
        peer: &str,
        cpu_s: f64,
        backend_s: Option<f64>,
        p50: f64,
        p99: f64,
    ) -> Cell {
        let mut c = rate_cell(peer, 0.0, p99, 0.3);
        c.scenario = Some(s);
        if s == Scenario::ProxyClosed {
            c.rate = None;
            c.depth = Some(1);
        }
        c.server_sched_s = Some(cpu_s);
        c.backend_sched_s = backend_s;
        c.backend_cpu_s = backend_s.map(|_| 0.0);
        if let Some(g) = c.gen.as_mut() {
            g.latency_us.p50 = p50;
        }
        c
    }

    #[test]
    fn proxy_tables_hop_latency_and_ratios() {
        use Scenario::{Proxy, ProxyClosed};
        let cells = vec![
            // Run order differs from the table order.
            proxy_cell(Proxy, NGINX_PROXY, 0.08, Some(0.02), 100.0, 300.0),
            proxy_cell(Proxy, DIRECT_BACKEND, 0.02, None, 60.0, 100.0),
            proxy_cell(Proxy, WSSEDGE_PROXY, 0.04, Some(0.02), 80.0, 150.0),
            proxy_cell(Proxy, OURS, 0.03, None, 70.0, 120.0),
            proxy_cell(ProxyClosed, WSSEDGE_PROXY, 0.04, Some(0.02), 80.0, 150.0),
            proxy_cell(ProxyClosed, NGINX_PROXY, 0.08, Some(0.02), 100.0, 300.0),
            // An echo table cell must not leak into the proxy tables.
            rate_cell(OURS, 0.04, 100.0, 0.3),
        ];
        let md = proxy_markdown(&cells, &|p: &str| format!("<{p}>"));
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| 64 B")).collect();
        assert_eq!(rows.len(), 6, "{md}");
        assert!(rows[0].contains("<direct-backend>"), "{md}");
        assert!(rows[1].contains("<wssedge>: echo, no upstream"), "{md}");
        // wssedge-proxy: 0.04 s / 2 s / 1000 msg/s = 20 µs/msg, backend 10; hop +20 / +50.
        assert!(
            rows[2].contains("<wssedge-proxy> | 1000 | 20.0 | 10.0 | 80.0 | 150 |"),
            "{md}"
        );
        assert!(rows[2].contains("| +20.0 | +50.0 |"), "{md}");
        assert!(rows[3].contains("| 40.0 | 10.0 |") && rows[3].contains("| +40.0 | +200 |"));
        // No backend column and no hop for the baseline itself.
        assert!(rows[0].contains("| 10.0 | — |") && rows[0].contains("| — | — |"));
        let ratio: Vec<&str> = md
            .lines()
            .filter(|l| l.contains("**wssedge-proxy / nginx-proxy**"))
            .collect();
        assert_eq!(ratio.len(), 2, "{md}");
        // CPU 20/40, backend 10/10, p50 80/100, p99 150/300, hop p99 50/200.
        assert!(
            ratio[0].contains("| 1.00 | **0.50** | 1.00 | 0.80 | **0.50** |")
                && ratio[0].contains("| **0.25** |"),
            "{md}"
        );
        assert!(ratio[1].contains("| **1.00** | **0.50** | 1.00 |"), "{md}");
        assert!(md.contains("from schedstat (ns)"), "{md}");

        let j = proxy_json(&cells);
        let open = &j["open_loop"][0];
        assert_eq!(open["rows"][0]["peer"], DIRECT_BACKEND);
        assert_eq!(open["rows"][2]["added_p99_us"], 50.0);
        assert_eq!(open["rows"][0]["added_p99_us"], Value::Null);
        let r = &open["ratio_wssedge_proxy_over_nginx_proxy"];
        assert_eq!(r["proxy_cpu_us_per_msg"], 0.5);
        assert_eq!(r["added_p99_us"], 0.25);
        assert_eq!(j["closed_loop"][0]["depth"], 1);
        assert_eq!(cell_json(&cells[2])["backend_cpu_us_per_msg"], 10.0);

        // A flagged side gives its flag, not a number; no direct baseline, no hop.
        let mut flagged = cells.clone();
        flagged[0].gen.as_mut().unwrap().client_cpu_busy = 0.95;
        flagged.remove(1);
        let md = proxy_markdown(&flagged, &|p: &str| p.to_string());
        assert!(md.contains("| **client-bound** |"), "{md}");
        assert!(!md.contains("+20.0"), "{md}");
        assert_eq!(
            proxy_json(&flagged)["open_loop"][0]["ratio_wssedge_proxy_over_nginx_proxy"]["p99_us"],
            Value::Null
        );
        assert_eq!(proxy_markdown(&cells[6..], &|p: &str| p.to_string()), "");
    }

    /// A compression-set cell: `cpu_s` (schedstat) over 2 s, the generator's wire bytes and
    /// deflate counts as `--deflate` writes them.
    fn compression_cell(
        s: Scenario,
        peer: &str,
        cpu_s: f64,
        wire: (f64, f64),
        agreed: f64,
        p99: f64,
    ) -> Cell {
        let extra = format!(
            r#","wire_bytes_sent":1,"wire_bytes_received":1,"wire_bytes_per_msg_sent":{},
            "wire_bytes_per_msg_received":{},"deflate":{{"negotiated":{agreed},"declined":0,
            "compressed_share":{},"answer":"permessage-deflate"}}}}"#,
            wire.0,
            wire.1,
            if agreed > 0.0 { 1.0 } else { 0.0 }
        );
        let text = FAKE.trim_end().trim_end_matches('}').to_string() + &extra;
        let (mut g, raw) = GenResult::parse(&text).unwrap();
        g.latency_us.p99 = p99;
        if s == Scenario::CompressionFanout {
            g.fanout = Some(crate::bench::results::FanoutCounts {
                subscribers: 1000.0,
                ..Default::default()
            });
        }
        Cell {
            scenario: Some(s),
            peer: peer.into(),
            payload: 512,
            connections: if s == Scenario::CompressionFanout {
                1
            } else {
                50
            },
            rate: Some(1000.0),
            gen: Some(g),
            raw: Some(raw),
            server_cpu_s: cpu_s,
            server_sched_s: Some(cpu_s),
            server_ticks: 1000,
            window_s: 2.0,
            ..Cell::default()
        }
    }

    #[test]
    fn compression_section_ratios_and_targets() {
        use Scenario::{CompressionEcho, CompressionFanout, CompressionIdle};
        let idle = |peer: &str, agreed: f64, rss: u64| {
            let mut c = compression_cell(CompressionIdle, peer, 0.0, (0.0, 0.0), agreed, 0.0);
            c.rate = None;
            c.connections = 1000;
            c.mem = Some(Mem {
                n: 1000,
                rss_before: 1_000_000,
                rss_during: 1_000_000 + rss * 1000,
                sock_before: 0,
                sock_during: 0,
            });
            c
        };
        let cells = vec![
            // 0.04 s / 2 s / 1000 msg/s = 20 µs/msg off, 24 on.
            compression_cell(
                CompressionEcho,
                WSSEDGE_DEFLATE_ON,
                0.048,
                (260.0, 250.0),
                50.0,
                300.0,
            ),
            compression_cell(
                CompressionEcho,
                WSSEDGE_DEFLATE_OFF,
                0.04,
                (520.0, 500.0),
                0.0,
                200.0,
            ),
            idle(WSSEDGE_DEFLATE_OFF, 0.0, 13_000),
            idle(WSSEDGE_DEFLATE_ON, 1000.0, 13_500),
            // Fan-out: 1000 deliveries/s; 1.1 µs → 1100 ns off, 1320 on (1.20: within).
            compression_cell(
                CompressionFanout,
                WSSEDGE_PUBSUB_DEFLATE_OFF,
                0.0022,
                (0.0, 580.0),
                0.0,
                100.0,
            ),
            compression_cell(
                CompressionFanout,
                WSSEDGE_PUBSUB_DEFLATE_ON,
                0.00264,
                (0.0, 290.0),
                1.0,
                100.0,
            ),
            compression_cell(CompressionFanout, UWS, 0.002, (0.0, 580.0), 0.0, 100.0),
            // uWS with compression that agreed to nothing: no ratio.
            compression_cell(
                CompressionFanout,
                UWS_DEFLATE,
                0.02,
                (0.0, 290.0),
                0.0,
                100.0,
            ),
        ];
        let md = compression_markdown(&cells, &|p: &str| format!("<{p}>"));
        let rows: Vec<&str> = md.lines().filter(|l| l.starts_with("| 512 B")).collect();
        assert_eq!(rows.len(), 6, "{md}");
        // Table order: off before on, whatever the run order.
        assert!(rows[0].contains("<wssedge-deflate-off>"), "{md}");
        assert!(
            rows[1].contains("| 50.0 | 1000 | 24.0 | 260 | 250 | 100 % |"),
            "{md}"
        );
        let ratio = md
            .lines()
            .find(|l| l.contains("**wssedge on / off**"))
            .unwrap();
        assert!(ratio.contains("| **1.20** | 0.50 | **0.50** |"), "{ratio}");
        assert!(ratio.contains("| **1.50** |"), "{ratio}");
        // Idle: +500 B per connection, within the 1 KiB target.
        assert!(md.contains("| +500 | yes |"), "{md}");
        let fan = md
            .lines()
            .find(|l| l.starts_with("| wssedge (512 B"))
            .unwrap();
        assert!(fan.contains("| **1.20** | yes | 0.50 |"), "{fan}");
        let uws = md
            .lines()
            .find(|l| l.starts_with("| uWebSockets (512 B"))
            .unwrap();
        assert!(uws.contains("| **n/a** | — | n/a |"), "{uws}");
        assert!(md.contains("not negotiated"), "{md}");

        let j = compression_json(&cells);
        let e = &j["echo"][0]["on_over_off"][0];
        assert_eq!(e["server"], "wssedge");
        assert!((e["server_cpu"].as_f64().unwrap() - 1.2).abs() < 1e-9);
        assert_eq!(j["idle"][0]["rss_per_conn_on_minus_off"], 500.0);
        assert_eq!(j["idle"][0]["within_target"], true);
        assert_eq!(j["idle"][0]["rows"][0]["p99_us"], Value::Null);
        let f = &j["fanout"][0]["on_over_off"];
        assert_eq!(f[0]["within_target"], true);
        assert_eq!(f[0]["server_cpu_target"], 1.2);
        assert_eq!(f[1]["server_cpu"], Value::Null);
        // Rows in table order: uws-deflate last.
        assert_eq!(j["fanout"][0]["rows"][3]["flag"], "not negotiated");
        assert_eq!(j["echo"][0]["rows"][0]["peer"], WSSEDGE_DEFLATE_OFF);
        // Over the target reads "no", and nothing at all without the compression cells.
        let mut over = cells.clone();
        over[5].server_sched_s = Some(0.003);
        assert!(compression_markdown(&over, &|p: &str| p.to_string()).contains("| **no** |"));
        assert_eq!(
            compression_markdown(&cells[..0], &|p: &str| p.to_string()),
            ""
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1234.5), "1234");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(f64::NAN), "n/a");
    }

    #[test]
    fn before_after_pairs_each_mode_with_its_other_build() {
        use Scenario::Proxy;
        let label = |p: &str| p.to_string();
        assert_eq!(
            before_after_markdown(&[rate_cell(OURS, 0.04, 100.0, 0.3)], &label),
            ""
        );
        let cells = vec![
            rate_cell(WSSEDGE_BEFORE, 0.05, 200.0, 0.3),
            rate_cell(OURS, 0.04, 100.0, 0.3),
            rate_cell("tungstenite", 0.08, 300.0, 0.3),
            proxy_cell(Proxy, WSSEDGE_PROXY, 0.04, Some(0.02), 80.0, 150.0),
            proxy_cell(Proxy, WSSEDGE_PROXY_BEFORE, 0.05, Some(0.02), 80.0, 300.0),
        ];
        let md = before_after_markdown(&cells, &label);
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.starts_with("| rate") || l.starts_with("| proxy"))
            .collect();
        assert_eq!(rows.len(), 2, "{md}");
        // 0.04 / 0.05 of CPU, 100 / 200 of p99.
        assert!(
            rows[0].contains("| wssedge |") && rows[0].contains("| 0.80 | 0.50 |"),
            "{md}"
        );
        assert!(
            rows[1].contains("| wssedge-proxy |") && rows[1].contains("| 0.80 | 0.50 |"),
            "{md}"
        );
    }
}
