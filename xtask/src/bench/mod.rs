//! `cargo xtask bench`: wssedge side by side with peer servers, one report.
//!
//! Every scenario runs against every peer in the same run, in alternating order, each server
//! freshly started and pinned to CPU 0 and the generator (`wssbench`) pinned to CPU 1. Server
//! CPU is read from /proc (utime+stime over the server's process tree) around the generator's
//! measured window. Output: `target/bench/report.md`, `report.json` and one latency SVG per rate.
//!
//! The proxy set (`proxy`, `proxy-closed`) puts wssedge's proxy mode and nginx in front of the
//! same `echo-plain` backend, next to the backend reached directly over ws:// and wssedge's
//! echo mode. The backend shares the server's CPU ([`BACKEND_CPU`]); its CPU is counted apart,
//! so the proxies are compared on the proxy process alone.

// The nginx template and its renderer live with the peers; compiled here without their deps.
mod fanout;
pub(crate) mod fleet;
#[path = "../../../bench/peers/src/nginx.rs"]
mod nginx;
mod plot;
pub(crate) mod procfs;
mod report;
mod results;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{apt_install, banner, free_port, is_root, which, Env, Guard};
use report::OURS;
use results::{Cell, GenResult, Mem, Scenario};

const SERVER_CPU: &str = "0";
const CLIENT_CPU: &str = "1";
/// The ws:// backend behind a proxy (and behind nginx in the echo scenarios) shares the
/// server's CPU. With two CPUs the other choice is the generator's CPU, which would slow the
/// client and mix the backend's scheduling into every latency sample. On the server's CPU a
/// proxy and its backend take turns on one core: a cheaper proxy leaves more of that core to
/// the backend, which is the comparison we want, and each process's CPU is still read apart.
const BACKEND_CPU: &str = SERVER_CPU;
/// Default offered rate of the proxy scenario: moderate, far from saturating proxy + backend
/// on one core, so the latency is the hop's and not a queue's.
const PROXY_RATE: f64 = 5000.0;
const START_LIMIT: Duration = Duration::from_secs(30);
/// Extra time a generator gets beyond its nominal run before it is killed.
const GEN_GRACE: Duration = Duration::from_secs(30);

struct PeerDef {
    key: &'static str,
    label: &'static str,
    /// `--proto` for the generator.
    proto: &'static str,
    scenarios: &'static [Scenario],
}

const ALL_SCENARIOS: &[Scenario] = &[
    Scenario::Rate,
    Scenario::Closed,
    Scenario::Storm,
    Scenario::Idle,
];
const FLOOR_SCENARIOS: &[Scenario] = &[Scenario::Rate, Scenario::Closed];
/// wssedge's echo mode also runs in the proxy set, as the reference without an upstream.
const OURS_SCENARIOS: &[Scenario] = &[
    Scenario::Rate,
    Scenario::Closed,
    Scenario::Storm,
    Scenario::Idle,
    Scenario::Proxy,
    Scenario::ProxyClosed,
];
const FANOUT_SCENARIOS: &[Scenario] = &[Scenario::Fanout];
/// uWebSockets without compression is both a fan-out peer and the compression set's "off".
const UWS_SCENARIOS: &[Scenario] = &[Scenario::Fanout, Scenario::CompressionFanout];
const COMPRESSION_ECHO_SCENARIOS: &[Scenario] =
    &[Scenario::CompressionEcho, Scenario::CompressionIdle];
const COMPRESSION_FANOUT_SCENARIOS: &[Scenario] = &[Scenario::CompressionFanout];
/// The single-node pub/sub peer is the fleet cells' baseline too.
const PUBSUB_SCENARIOS: &[Scenario] = &[Scenario::Fanout, Scenario::Fleet];
const FLEET_SCENARIOS: &[Scenario] = &[Scenario::Fleet];
const FLEET_UPGRADE_SCENARIOS: &[Scenario] = &[Scenario::FleetUpgrades];
/// One fleet node on its Redis, `[jwt]` with and without `single_use` and
/// `per_identity_connections` (each checked in Redis at the upgrade).
const FLEET_CHECKS: &str = "wssedge-fleet-checks";
const FLEET_NOCHECKS: &str = "wssedge-fleet-nochecks";
/// Offered upgrades/s of the fleet-upgrades cell (high enough to find the node's ceiling).
const FLEET_UPGRADE_RATE: f64 = 2000.0;
/// A fleet of two nodes on one Redis: the publisher on node A, subscribers on A or on B.
const FLEET_SAME: &str = "wssedge-fleet-same";
const FLEET_CROSS: &str = "wssedge-fleet-cross";

/// The fan-out set's peers, each with its own native pub/sub, in their table order.
const WSSEDGE_PUBSUB: &str = "wssedge-pubsub";
/// The pub/sub mode from the `--before` build.
const WSSEDGE_PUBSUB_BEFORE: &str = "wssedge-pubsub-before";
const BROADCAST: &str = "broadcast";
const UWS: &str = "uws";
const NCHAN: &str = "nchan";
/// The topic every fan-out cell publishes to and subscribes to.
const FANOUT_TOPIC: &str = "trades.BTC-USD";
const PROXY_SCENARIOS: &[Scenario] = &[Scenario::Proxy, Scenario::ProxyClosed];

/// The compression set: wssedge's echo and pub/sub modes from one config each, `[compression]
/// enabled = false | true` (context_takeover "none"), and uWebSockets with SHARED_COMPRESSOR
/// beside the plain one. The generator offers permessage-deflate to all of them; "off" servers
/// do not read the offer.
const WSSEDGE_DEFLATE_OFF: &str = "wssedge-deflate-off";
const WSSEDGE_DEFLATE_ON: &str = "wssedge-deflate-on";
const WSSEDGE_PUBSUB_DEFLATE_OFF: &str = "wssedge-pubsub-deflate-off";
const WSSEDGE_PUBSUB_DEFLATE_ON: &str = "wssedge-pubsub-deflate-on";
const UWS_DEFLATE: &str = "uws-deflate";
/// Default payload of the compression cells: a market-data book snapshot of this size (above
/// the edge's `min_bytes`, the size of a typical top-of-book update with a few levels).
const COMPRESSION_PAYLOAD: u64 = 512;
/// Offered msg/s of the compression echo (50 connections): well under a core, so CPU per
/// message and latency are not queueing.
const COMPRESSION_RATE: f64 = 5000.0;
/// Idle connections of the compression idle cell, `--quick` too: the on − off difference is
/// compared with 1 KiB per connection, and at 2,000 connections fixed costs (the core's shared
/// zlib state) and the allocator's noise alone came to about that (+1.1 KB at 2,000, +3 B at
/// 5,000, −0.7 KB at 10,000 connections here).
const COMPRESSION_IDLE_N: u64 = 10_000;

/// The proxy set's peers (besides wssedge's echo mode), in their table order.
const WSSEDGE_PROXY: &str = "wssedge-proxy";
const NGINX_PROXY: &str = "nginx-proxy";
const DIRECT_BACKEND: &str = "direct-backend";
/// The same two wssedge modes from another build (`--before REV|BINARY`), for a refactoring's
/// before/after figures measured in one run on one host.
const WSSEDGE_BEFORE: &str = "wssedge-before";
const WSSEDGE_PROXY_BEFORE: &str = "wssedge-proxy-before";
/// wssedge's echo with `[server] busy_poll_us` set: the same cells as `wssedge` in open loop,
/// for the latency the spin buys and the CPU it costs.
const WSSEDGE_BUSY_POLL: &str = "wssedge-busypoll";
/// The window `wssedge-busypoll` spins for.
const BUSY_POLL_US: u64 = 50;

const PEERS: [PeerDef; 26] = [
    PeerDef {
        key: OURS,
        label: "wssedge (userspace TLS)",
        proto: "wss",
        scenarios: OURS_SCENARIOS,
    },
    PeerDef {
        key: WSSEDGE_BUSY_POLL,
        label: "wssedge (busy_poll_us = 50)",
        proto: "wss",
        scenarios: &[Scenario::Rate],
    },
    PeerDef {
        key: WSSEDGE_BEFORE,
        label: "wssedge (before)",
        proto: "wss",
        scenarios: ALL_SCENARIOS,
    },
    PeerDef {
        key: "tungstenite",
        label: "tokio-tungstenite",
        proto: "wss",
        scenarios: ALL_SCENARIOS,
    },
    PeerDef {
        key: "fastwebsockets",
        label: "fastwebsockets",
        proto: "wss",
        scenarios: ALL_SCENARIOS,
    },
    PeerDef {
        key: "nginx",
        label: "nginx (TLS) → plain echo backend",
        proto: "wss",
        scenarios: ALL_SCENARIOS,
    },
    PeerDef {
        key: "floor-tls",
        label: "floor: raw TLS echo",
        proto: "tls",
        scenarios: FLOOR_SCENARIOS,
    },
    PeerDef {
        key: "floor-tcp",
        label: "floor: raw TCP echo",
        proto: "tcp",
        scenarios: FLOOR_SCENARIOS,
    },
    PeerDef {
        key: WSSEDGE_PROXY,
        label: "wssedge-proxy (TLS) → echo-plain",
        proto: "wss",
        scenarios: PROXY_SCENARIOS,
    },
    PeerDef {
        key: WSSEDGE_PROXY_BEFORE,
        label: "wssedge-proxy (before) → echo-plain",
        proto: "wss",
        scenarios: PROXY_SCENARIOS,
    },
    PeerDef {
        key: NGINX_PROXY,
        label: "nginx-proxy (TLS) → echo-plain",
        proto: "wss",
        scenarios: PROXY_SCENARIOS,
    },
    PeerDef {
        key: DIRECT_BACKEND,
        label: "direct-backend: echo-plain over ws://",
        proto: "ws",
        scenarios: PROXY_SCENARIOS,
    },
    PeerDef {
        key: WSSEDGE_PUBSUB,
        label: "wssedge pub/sub (userspace TLS)",
        proto: "wss",
        scenarios: PUBSUB_SCENARIOS,
    },
    PeerDef {
        key: FLEET_SAME,
        label: "wssedge fleet: publisher and subscribers on node A",
        proto: "wss",
        scenarios: FLEET_SCENARIOS,
    },
    PeerDef {
        key: FLEET_CROSS,
        label: "wssedge fleet: publisher on A, subscribers on B",
        proto: "wss",
        scenarios: FLEET_SCENARIOS,
    },
    PeerDef {
        key: FLEET_CHECKS,
        label: "wssedge fleet node: single_use + per_identity_connections in Redis",
        proto: "wss",
        scenarios: FLEET_UPGRADE_SCENARIOS,
    },
    PeerDef {
        key: FLEET_NOCHECKS,
        label: "wssedge fleet node: neither",
        proto: "wss",
        scenarios: FLEET_UPGRADE_SCENARIOS,
    },
    PeerDef {
        key: WSSEDGE_PUBSUB_BEFORE,
        label: "wssedge pub/sub (before)",
        proto: "wss",
        scenarios: FANOUT_SCENARIOS,
    },
    PeerDef {
        key: BROADCAST,
        label: "tokio-tungstenite broadcast",
        proto: "wss",
        scenarios: FANOUT_SCENARIOS,
    },
    PeerDef {
        key: UWS,
        label: "uWebSockets pub/sub",
        proto: "wss",
        scenarios: UWS_SCENARIOS,
    },
    PeerDef {
        key: NCHAN,
        label: "nginx + nchan",
        proto: "wss",
        scenarios: FANOUT_SCENARIOS,
    },
    PeerDef {
        key: WSSEDGE_DEFLATE_OFF,
        label: "wssedge echo, compression off",
        proto: "wss",
        scenarios: COMPRESSION_ECHO_SCENARIOS,
    },
    PeerDef {
        key: WSSEDGE_DEFLATE_ON,
        label: "wssedge echo, compression on",
        proto: "wss",
        scenarios: COMPRESSION_ECHO_SCENARIOS,
    },
    PeerDef {
        key: WSSEDGE_PUBSUB_DEFLATE_OFF,
        label: "wssedge pub/sub, compression off",
        proto: "wss",
        scenarios: COMPRESSION_FANOUT_SCENARIOS,
    },
    PeerDef {
        key: WSSEDGE_PUBSUB_DEFLATE_ON,
        label: "wssedge pub/sub, compression on",
        proto: "wss",
        scenarios: COMPRESSION_FANOUT_SCENARIOS,
    },
    PeerDef {
        key: UWS_DEFLATE,
        label: "uWebSockets pub/sub, SHARED_COMPRESSOR",
        proto: "wss",
        scenarios: COMPRESSION_FANOUT_SCENARIOS,
    },
];

fn peer_def(key: &str) -> &'static PeerDef {
    PEERS
        .iter()
        .find(|p| p.key == key)
        .expect("peer keys are validated")
}

fn label(key: &str) -> String {
    PEERS
        .iter()
        .find(|p| p.key == key)
        .map(|p| p.label.to_string())
        .unwrap_or_else(|| key.to_string())
}

#[derive(Debug, Clone, PartialEq)]
struct Opts {
    quick: bool,
    no_build: bool,
    connections: u64,
    payloads: Vec<u64>,
    rates: Vec<f64>,
    /// Measured seconds of the rate, closed and storm cells.
    duration: f64,
    closed_duration: f64,
    warmup: f64,
    depths: Vec<u64>,
    /// Offered msg/s of the proxy scenario (open loop).
    proxy_rate: f64,
    storm_rate: f64,
    idle_n: u64,
    idle_hold: f64,
    peers: Vec<String>,
    scenarios: Vec<Scenario>,
    /// `--before`: a wssedge binary, or a git revision to build one from.
    before: Option<String>,
    /// Fan-out cells: (subscribers, publications/s).
    fanout: Vec<(u64, f64)>,
    /// Fan-out payloads (`--payload` when given).
    fanout_payloads: Vec<u64>,
    /// Fleet cells: (subscribers, publications/s).
    fleet: Vec<(u64, f64)>,
    /// `fleet-upgrades`: upgrades/s offered (above what the server CPU can take, it measures
    /// the ceiling).
    upgrade_rate: f64,
    /// Compression set: market-data payload sizes, the echo's offered msg/s, fan-out cells.
    compression_payloads: Vec<u64>,
    compression_rate: f64,
    compression_fanout: Vec<(u64, f64)>,
    /// Connections of the compression idle cell (`--idle-connections` sets both).
    compression_idle_n: u64,
}

/// Peers that run only when `--before` names the other build.
fn is_before_peer(key: &str) -> bool {
    key == WSSEDGE_BEFORE || key == WSSEDGE_PROXY_BEFORE || key == WSSEDGE_PUBSUB_BEFORE
}

fn list<T: std::str::FromStr>(flag: &str, v: &str) -> Result<Vec<T>> {
    let out: Result<Vec<T>> = v
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("{flag}: bad value {s:?}"))
        })
        .collect();
    let out = out?;
    if out.is_empty() {
        bail!("{flag} needs at least one value");
    }
    Ok(out)
}

fn parse_opts(args: &[String]) -> Result<Opts> {
    let quick = args.iter().any(|a| a == "--quick");
    let mut o = Opts {
        quick,
        no_build: false,
        connections: 50,
        payloads: vec![64],
        rates: if quick {
            vec![2000.0, 10000.0]
        } else {
            vec![2000.0, 5000.0, 10000.0, 20000.0]
        },
        duration: if quick { 1.5 } else { 5.0 },
        closed_duration: if quick { 1.0 } else { 3.0 },
        warmup: if quick { 0.5 } else { 1.0 },
        depths: vec![1, 16],
        proxy_rate: PROXY_RATE,
        storm_rate: if quick { 200.0 } else { 500.0 },
        idle_n: if quick { 2000 } else { 10000 },
        idle_hold: if quick { 1.0 } else { 4.0 },
        peers: PEERS
            .iter()
            .filter(|p| !is_before_peer(p.key))
            .map(|p| p.key.to_string())
            .collect(),
        scenarios: Scenario::ALL.to_vec(),
        before: None,
        fanout: if quick {
            vec![(200, 250.0)]
        } else {
            // The two 1M deliveries/s cells, and one that saturates no server (its
            // CPU per delivery is a measurement, not a bound).
            vec![(200, 250.0), (1000, 1000.0), (10_000, 100.0)]
        },
        fanout_payloads: if quick { vec![64] } else { vec![64, 1024] },
        // The 10k publications/s, to a few subscribers per node.
        fleet: if quick {
            vec![(10, 2000.0)]
        } else {
            vec![(10, 10_000.0)]
        },
        upgrade_rate: if quick {
            FLEET_UPGRADE_RATE / 2.0
        } else {
            FLEET_UPGRADE_RATE
        },
        compression_payloads: vec![COMPRESSION_PAYLOAD],
        compression_rate: COMPRESSION_RATE,
        // The 1,000 subscribers at 50k deliveries/s: about half a core for wssedge
        // without compression (one send per delivery at this spacing), and the generator,
        // which decrypts and inflates every delivery on one core, not the bottleneck (at
        // 100/s it was, with compression).
        compression_fanout: vec![(1000, 50.0)],
        compression_idle_n: COMPRESSION_IDLE_N,
    };
    let mut peers_given = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        if flag == "--quick" {
            continue;
        }
        if flag == "--no-build" {
            o.no_build = true;
            continue;
        }
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "--connections" => o.connections = list(flag, &value()?)?[0],
            "--payload" => {
                o.payloads = list(flag, &value()?)?;
                o.fanout_payloads = o.payloads.clone();
            }
            "--fanout" | "--fleet" | "--compression-fanout" => {
                let v: Vec<String> = list(flag, &value()?)?;
                let cells = v
                    .iter()
                    .map(|cell| {
                        let (n, r) = cell.split_once('x').with_context(|| {
                            format!("--fanout: {cell:?} is not SUBSCRIBERSxRATE")
                        })?;
                        let n: u64 = n.parse().with_context(|| format!("--fanout: {cell:?}"))?;
                        let r: f64 = r.parse().with_context(|| format!("--fanout: {cell:?}"))?;
                        if n == 0 || !(r > 0.0 && r <= 1e6) {
                            bail!("--fanout: {cell:?}: subscribers > 0, rate in (0, 1e6]");
                        }
                        Ok((n, r))
                    })
                    .collect::<Result<Vec<_>>>()?;
                match flag {
                    "--fleet" => o.fleet = cells,
                    "--compression-fanout" => o.compression_fanout = cells,
                    _ => o.fanout = cells,
                }
            }
            "--compression-payload" => {
                let v: Vec<u64> = list(flag, &value()?)?;
                if v.iter().any(|b| !(256..=1 << 20).contains(b)) {
                    bail!(
                        "--compression-payload: bytes in [256, 1048576] (market data needs room)"
                    );
                }
                o.compression_payloads = v;
            }
            "--compression-rate" => {
                let r: f64 = list(flag, &value()?)?[0];
                if !(r > 0.0 && r <= 1e6) {
                    bail!("--compression-rate: msg/s in (0, 1e6]");
                }
                o.compression_rate = r;
            }
            "--rates" => o.rates = list(flag, &value()?)?,
            "--upgrade-rate" => {
                let r: f64 = list(flag, &value()?)?[0];
                if !(r > 0.0 && r <= 1e5) {
                    bail!("--upgrade-rate: upgrades/s in (0, 1e5]");
                }
                o.upgrade_rate = r;
            }
            "--proxy-rate" => {
                let r: f64 = list(flag, &value()?)?[0];
                if !(r > 0.0 && r <= 1e6) {
                    bail!("--proxy-rate: msg/s in (0, 1e6]");
                }
                o.proxy_rate = r;
            }
            "--duration" => {
                let d: f64 = list(flag, &value()?)?[0];
                if !(d > 0.0 && d < 3600.0) {
                    bail!("--duration: seconds in (0, 3600)");
                }
                o.duration = d;
                o.closed_duration = d;
            }
            "--idle-connections" => {
                o.idle_n = list(flag, &value()?)?[0];
                o.compression_idle_n = o.idle_n;
            }
            "--before" => o.before = Some(value()?),
            "--peers" => {
                peers_given = true;
                let v: Vec<String> = list(flag, &value()?)?;
                for p in &v {
                    if !PEERS.iter().any(|d| d.key == p) {
                        bail!(
                            "unknown peer {p:?} (peers: {})",
                            PEERS.iter().map(|p| p.key).collect::<Vec<_>>().join(", ")
                        );
                    }
                }
                // Canonical order, so tables always list wssedge first.
                o.peers = PEERS
                    .iter()
                    .filter(|d| v.iter().any(|p| p == d.key))
                    .map(|d| d.key.to_string())
                    .collect();
            }
            "--scenarios" => {
                let v: Vec<String> = list(flag, &value()?)?;
                let mut s = Vec::new();
                for name in &v {
                    if name == "compression" {
                        s.extend(Scenario::COMPRESSION);
                        continue;
                    }
                    s.push(Scenario::parse(name).with_context(|| {
                        format!(
                            "unknown scenario {name:?} ({}, compression)",
                            Scenario::ALL.map(|s| s.name()).join(", ")
                        )
                    })?);
                }
                // `fleet` is both halves of the fleet's benchmark.
                if s.contains(&Scenario::Fleet) {
                    s.push(Scenario::FleetUpgrades);
                }
                o.scenarios = Scenario::ALL
                    .into_iter()
                    .filter(|x| s.contains(x))
                    .collect();
            }
            _ => bail!("unknown argument {a:?}"),
        }
    }
    if o.connections == 0 {
        bail!("--connections must be positive");
    }
    match (&o.before, peers_given) {
        (Some(_), false) => {
            o.peers = PEERS.iter().map(|p| p.key.to_string()).collect();
        }
        (None, _) if o.peers.iter().any(|p| is_before_peer(p)) => {
            bail!(
                "{WSSEDGE_BEFORE}, {WSSEDGE_PROXY_BEFORE} and {WSSEDGE_PUBSUB_BEFORE} need \
                 --before REV|BINARY"
            );
        }
        _ => {}
    }
    Ok(o)
}

/// One planned measurement (before it runs).
#[derive(Debug, Clone)]
struct Planned {
    scenario: Scenario,
    payload: u64,
    connections: u64,
    rate: Option<f64>,
    depth: Option<u64>,
    /// Peers in this cell's run order (alternating between cells).
    peers: Vec<String>,
}

fn plan(o: &Opts) -> Vec<Planned> {
    let mut groups = Vec::new();
    for s in &o.scenarios {
        let base = |payload, connections, rate, depth| Planned {
            scenario: *s,
            payload,
            connections,
            rate,
            depth,
            peers: o
                .peers
                .iter()
                .filter(|p| peer_def(p).scenarios.contains(s))
                .cloned()
                .collect(),
        };
        match s {
            Scenario::Rate => {
                for p in &o.payloads {
                    for r in &o.rates {
                        groups.push(base(*p, o.connections, Some(*r), None));
                    }
                }
            }
            Scenario::Closed => {
                for p in &o.payloads {
                    for d in &o.depths {
                        groups.push(base(*p, o.connections, None, Some(*d)));
                    }
                }
            }
            Scenario::Storm => {
                groups.push(base(o.payloads[0], o.connections, Some(o.storm_rate), None))
            }
            Scenario::Idle => groups.push(base(o.payloads[0], o.idle_n, None, None)),
            Scenario::Proxy => {
                for p in &o.payloads {
                    groups.push(base(*p, o.connections, Some(o.proxy_rate), None));
                }
            }
            Scenario::ProxyClosed => {
                for p in &o.payloads {
                    for d in &o.depths {
                        groups.push(base(*p, o.connections, None, Some(*d)));
                    }
                }
            }
            Scenario::Fanout => {
                for p in &o.fanout_payloads {
                    for (n, r) in &o.fanout {
                        groups.push(base(*p, *n, Some(*r), None));
                    }
                }
            }
            Scenario::Fleet => {
                for (n, r) in &o.fleet {
                    groups.push(base(o.fanout_payloads[0], *n, Some(*r), None));
                }
            }
            Scenario::FleetUpgrades => groups.push(base(
                o.payloads[0],
                o.connections,
                Some(o.upgrade_rate),
                None,
            )),
            Scenario::CompressionEcho => {
                for p in &o.compression_payloads {
                    groups.push(base(*p, o.connections, Some(o.compression_rate), None));
                }
            }
            Scenario::CompressionIdle => groups.push(base(
                o.compression_payloads[0],
                o.compression_idle_n,
                None,
                None,
            )),
            Scenario::CompressionFanout => {
                for p in &o.compression_payloads {
                    for (n, r) in &o.compression_fanout {
                        groups.push(base(*p, *n, Some(*r), None));
                    }
                }
            }
        }
    }
    groups.retain(|g| !g.peers.is_empty());
    for (i, g) in groups.iter_mut().enumerate() {
        if i % 2 == 1 {
            g.peers.reverse();
        }
    }
    groups
}

/// Seconds one peer's run of a group is expected to take.
fn cell_secs(o: &Opts, g: &Planned) -> f64 {
    let overhead = 0.5;
    match g.scenario {
        Scenario::Rate
        | Scenario::Storm
        | Scenario::Proxy
        | Scenario::FleetUpgrades
        | Scenario::CompressionEcho => o.warmup + o.duration + overhead,
        Scenario::Closed | Scenario::ProxyClosed => o.warmup + o.closed_duration + overhead,
        // Opening N TLS connections at a few thousand per second, then the hold.
        Scenario::Idle | Scenario::CompressionIdle => {
            g.connections as f64 / 2000.0 + o.idle_hold + overhead
        }
        Scenario::Fanout | Scenario::Fleet | Scenario::CompressionFanout => {
            g.connections as f64 / 2000.0 + o.warmup + o.duration + overhead
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

/// `listening on wss://127.0.0.1:PORT/ (...)` or `listening on 127.0.0.1:PORT`.
fn parse_listen_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("listening on ")?;
    let rest = rest.split_once("://").map(|(_, r)| r).unwrap_or(rest);
    let end = rest.find(['/', ' ']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

struct Ctx {
    env: Env,
    bin: PathBuf,
    generator: PathBuf,
    state: PathBuf,
    logs: PathBuf,
    taskset: bool,
    clk_tck: u64,
    nginx: Option<PathBuf>,
    /// nginx and the nchan module's path (the fan-out peer).
    nchan: Option<(PathBuf, PathBuf)>,
    /// The built uWebSockets pub/sub peer.
    uws: Option<PathBuf>,
    /// The same with SHARED_COMPRESSOR (the compression set).
    uws_deflate: Option<PathBuf>,
    /// `redis-server` (the fleet scenario's).
    redis: Option<PathBuf>,
    /// The `--before` build's wssedge binary.
    before: Option<PathBuf>,
}

impl Ctx {
    /// The wssedge binary a wssedge peer (this build's or the `--before` one) runs.
    fn wssedge(&self, peer: &str) -> PathBuf {
        match (&self.before, is_before_peer(peer)) {
            (Some(b), true) => b.clone(),
            _ => self.bin.join("wssedge"),
        }
    }

    /// A command pinned to `cpu` (via taskset, which execs: the PID stays the program's).
    fn pinned(&self, cpu: &str, program: &Path) -> Command {
        if self.taskset {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu).arg(program);
            c
        } else {
            Command::new(program)
        }
    }
}

/// Spawns `cmd` with stdout piped into a channel of lines (drained for the process's lifetime).
fn spawn_lines(
    name: &'static str,
    cmd: &mut Command,
    stderr_log: &Path,
) -> Result<(Guard, mpsc::Receiver<String>)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr_log)?);
    let mut child = cmd.spawn().with_context(|| format!("spawn {name}"))?;
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                // Nobody listens any more; keep draining so the child never blocks.
                continue;
            }
        }
    });
    Ok((
        Guard {
            name,
            child,
            group: false,
        },
        rx,
    ))
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn wait_listen_line(g: &mut Guard, rx: &mpsc::Receiver<String>, log: &Path) -> Result<SocketAddr> {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(a) = parse_listen_addr(&line) {
                    return Ok(a);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(100));
                let status = g.exited();
                bail!(
                    "{} exited before listening ({status:?}): {}",
                    g.name,
                    last_line(log)
                );
            }
        }
        if let Some(s) = g.exited() {
            bail!(
                "{} exited before listening ({s}): {}",
                g.name,
                last_line(log)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{} printed no `listening on` line within {START_LIMIT:?}",
                g.name
            );
        }
    }
}

/// A running server: its guards (dropped = stopped, in order) and the PIDs whose process
/// trees are charged for CPU and memory: the front process(es) and, apart, a ws:// backend.
struct Server {
    guards: Vec<Guard>,
    roots: Vec<u32>,
    backend: Vec<u32>,
    addr: SocketAddr,
    /// Fleet: where the publisher connects when not to `addr`.
    publish_addr: Option<SocketAddr>,
}

/// CPU time of a set of process trees at one instant.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    ticks: u64,
    sched_ns: Option<u64>,
}

impl CpuSample {
    fn of(pids: &[u32]) -> CpuSample {
        let proc_root = Path::new("/proc");
        CpuSample {
            ticks: procfs::tree_cpu_ticks(proc_root, pids),
            sched_ns: procfs::tree_sched_ns(proc_root, pids),
        }
    }
    /// (ticks, schedstat seconds) from `self` to `later`.
    fn delta(self, later: CpuSample) -> (u64, Option<f64>) {
        (
            later.ticks.saturating_sub(self.ticks),
            self.sched_ns
                .zip(later.sched_ns)
                .map(|(a, b)| b.saturating_sub(a) as f64 / 1e9),
        )
    }
}

impl Server {
    /// One process serving `addr`, with no backend of its own.
    fn alone(g: Guard, addr: SocketAddr) -> Self {
        Server {
            roots: vec![g.child.id()],
            backend: Vec::new(),
            guards: vec![g],
            addr,
            publish_addr: None,
        }
    }

    /// Everything we started for this peer.
    fn all_pids(&self) -> Vec<u32> {
        self.roots.iter().chain(&self.backend).copied().collect()
    }
    /// The PIDs whose CPU is "server CPU" in `s`: in the proxy set the front process alone
    /// (its backend is counted apart); elsewhere the whole stack, as nginx + its backend
    /// stand together for one echo server there.
    fn charged(&self, s: Scenario) -> Vec<u32> {
        if s.is_proxy() || s.is_fleet() {
            self.roots.clone()
        } else {
            self.all_pids()
        }
    }
    fn rss(&self) -> u64 {
        procfs::tree_rss(Path::new("/proc"), &self.all_pids())
    }
    fn died(&mut self) -> Option<String> {
        self.guards.iter_mut().find_map(|g| {
            g.exited()
                .map(|s| format!("{} exited during the run ({s})", g.name))
        })
    }
}

fn start_server(ctx: &Ctx, peer: &str, tag: &str) -> Result<Server> {
    let cert = ctx.state.join("dev-leaf.pem");
    let key = ctx.state.join("dev-leaf.key");
    let peer_cmd = |name: &str, tls: bool| {
        let mut c = ctx.pinned(SERVER_CPU, &ctx.bin.join(name));
        c.args(["--listen", "127.0.0.1:0", "--threads", "1"]);
        if tls {
            c.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        c
    };
    let log = |what: &str| ctx.logs.join(format!("{tag}.{what}.log"));
    let single_logged = |name: &'static str, mut cmd: Command, what: &str| -> Result<Server> {
        let l = log(what);
        let (mut g, rx) = spawn_lines(name, &mut cmd, &l)?;
        let addr = wait_listen_line(&mut g, &rx, &l)?;
        Ok(Server::alone(g, addr))
    };
    let single = |name: &'static str, cmd: Command| single_logged(name, cmd, "server");
    // The ws:// backend of nginx and wssedge-proxy; `direct-backend` is the same server alone.
    let backend = || -> Result<Server> {
        let mut c = ctx.pinned(BACKEND_CPU, &ctx.bin.join("echo-plain"));
        c.args(["--listen", "127.0.0.1:0", "--threads", "1"]);
        single_logged("echo-plain", c, "backend")
    };
    // `front` in front of `backend`: stopped before it, CPU counted apart from it.
    let stack = |front: Guard, addr: SocketAddr, backend: Server| -> Server {
        let mut guards = backend.guards;
        let roots = vec![front.child.id()];
        guards.insert(0, front);
        Server {
            guards,
            roots,
            backend: backend.roots,
            addr,
            publish_addr: None,
        }
    };
    // wssedge on `conf` (written to the logs as `{tag}.{what}.wssedge.toml`): its guard and
    // the address of its listen line. `cores = 1` under a CPU-0 mask: its core runs on CPU 0.
    let start_wssedge = |conf: &str, what: &str| -> Result<(Guard, SocketAddr)> {
        let conf_path = ctx.logs.join(format!("{tag}.{what}.wssedge.toml"));
        std::fs::write(&conf_path, conf)?;
        let mut c = ctx.pinned(SERVER_CPU, &ctx.wssedge(peer));
        c.arg("serve")
            .arg("--config")
            .arg(&conf_path)
            .arg("--state-dir")
            .arg(&ctx.state);
        let l = log(what);
        let (mut g, rx) = spawn_lines("wssedge", &mut c, &l)?;
        let addr = wait_listen_line(&mut g, &rx, &l)?;
        Ok((g, addr))
    };
    // A fresh redis-server (nothing on disk) on a free port, once it listens.
    let start_redis = || -> Result<(Guard, u16)> {
        let redis_bin = ctx.redis.as_ref().context("redis-server unavailable")?;
        let port = free_port()?;
        let dir = ctx.logs.join(format!("{tag}.redis"));
        std::fs::create_dir_all(&dir)?;
        let mut c = ctx.pinned(BACKEND_CPU, redis_bin);
        c.args(fleet::redis_args(port, &dir));
        let (mut redis, _rx) = spawn_lines("redis-server", &mut c, &log("redis"))?;
        fleet::wait_listening(SocketAddr::from(([127, 0, 0, 1], port))).or_else(|e| match redis
            .exited()
        {
            Some(s) => bail!("redis-server exited at start ({s})"),
            None => Err(e),
        })?;
        Ok((redis, port))
    };
    match peer {
        OURS | WSSEDGE_BEFORE => {
            let mut c = ctx.pinned(SERVER_CPU, &ctx.wssedge(peer));
            c.args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
                .arg("--state-dir")
                .arg(&ctx.state)
                .args(["--cpus", SERVER_CPU]);
            single("wssedge", c)
        }
        WSSEDGE_BUSY_POLL => {
            let conf = format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\ncpus = [{SERVER_CPU}]\n\
                 busy_poll_us = {BUSY_POLL_US}\n"
            );
            let (g, addr) = start_wssedge(&conf, "server")?;
            Ok(Server::alone(g, addr))
        }
        "tungstenite" => single("peer-tungstenite", peer_cmd("peer-tungstenite", true)),
        "fastwebsockets" => single("peer-fastwebsockets", peer_cmd("peer-fastwebsockets", true)),
        "floor-tls" => single("floor-tls", peer_cmd("floor-tls", true)),
        "floor-tcp" => single("floor-tcp", peer_cmd("floor-tcp", false)),
        DIRECT_BACKEND => backend(),
        WSSEDGE_PROXY | WSSEDGE_PROXY_BEFORE => {
            let backend = backend()?;
            // The proxy-mode config of issue 7; port 0 = the listen line tells the port (no
            // race with other processes for a port picked in advance).
            let conf = format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\ncores = 1\n\n\
                 [upstream]\n[[upstream.groups]]\nname = \"echo\"\nmembers = [\"ws://{}/\"]\n\n\
                 [[routes]]\nprefix = \"/\"\ngroup = \"echo\"\n",
                backend.addr
            );
            let (g, addr) = start_wssedge(&conf, "server")?;
            Ok(stack(g, addr, backend))
        }
        "nginx" | NGINX_PROXY => {
            let nginx = ctx.nginx.as_ref().context("nginx unavailable")?;
            let backend = backend()?;
            let port = free_port()?;
            let prefix = ctx.logs.join(format!("nginx-{tag}"));
            let _ = std::fs::remove_dir_all(&prefix);
            std::fs::create_dir_all(&prefix)?;
            let listen = format!("127.0.0.1:{port}");
            let conf =
                nginx::render_nginx_conf(&listen, &backend.addr.to_string(), &cert, &key, &prefix);
            let conf_path = prefix.join("nginx.conf");
            std::fs::write(&conf_path, conf)?;
            let mut c = ctx.pinned(SERVER_CPU, nginx);
            c.args(nginx::nginx_args(&prefix));
            // Its own process group: stopping it stops the workers too (a SIGKILLed master
            // leaves its workers running).
            {
                use std::os::unix::process::CommandExt;
                c.process_group(0);
            }
            let l = log("nginx");
            let (mut g, _rx) = spawn_lines("nginx", &mut c, &l)?;
            g.group = true;
            let addr: SocketAddr = listen.parse()?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Some(s) = g.exited() {
                    bail!(
                        "nginx exited at start ({s}): {}",
                        last_line(&prefix.join("error.log"))
                    );
                }
                if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("nginx is not listening on {addr} after 10 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(stack(g, addr, backend))
        }
        WSSEDGE_PUBSUB | WSSEDGE_PUBSUB_BEFORE => {
            let conf = pubsub_conf(&fanout_secret(ctx)?, "");
            let (g, addr) = start_wssedge(&conf, "server")?;
            Ok(Server::alone(g, addr))
        }
        WSSEDGE_PUBSUB_DEFLATE_OFF | WSSEDGE_PUBSUB_DEFLATE_ON => {
            let on = peer == WSSEDGE_PUBSUB_DEFLATE_ON;
            let conf = pubsub_conf(&fanout_secret(ctx)?, &compression_conf(on));
            let (g, addr) = start_wssedge(&conf, "server")?;
            Ok(Server::alone(g, addr))
        }
        WSSEDGE_DEFLATE_OFF | WSSEDGE_DEFLATE_ON => {
            // Echo mode (no upstream, no routes), both twins from a config so that only
            // `[compression]` differs between them.
            let conf = format!(
                "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\ncores = 1\n\n\
                 [limits]\nmax_connections = 200000\n\n{}",
                compression_conf(peer == WSSEDGE_DEFLATE_ON)
            );
            let (g, addr) = start_wssedge(&conf, "server")?;
            Ok(Server::alone(g, addr))
        }
        FLEET_CHECKS | FLEET_NOCHECKS => {
            let (redis, port) = start_redis()?;
            let conf = fleet::upgrade_node_conf(&fanout_secret(ctx)?, port, peer == FLEET_CHECKS);
            let (g, addr) = start_wssedge(&conf, "server")?;
            fleet::wait_subscribed(port, 1)?;
            Ok(Server {
                roots: vec![g.child.id()],
                backend: vec![redis.child.id()],
                guards: vec![g, redis],
                addr,
                publish_addr: None,
            })
        }
        FLEET_SAME | FLEET_CROSS => {
            let (redis, port) = start_redis()?;
            let secret = fanout_secret(ctx)?;
            let mut nodes = Vec::new();
            for node in ["a", "b"] {
                let conf = fleet::node_conf(&secret, port, node);
                nodes.push(start_wssedge(&conf, &format!("node-{node}"))?);
            }
            // Both nodes deliver what Redis announces before the window starts.
            fleet::wait_subscribed(port, 2)?;
            let (b, b_addr) = nodes.pop().context("node b")?;
            let (a, a_addr) = nodes.pop().context("node a")?;
            let subscribers = if peer == FLEET_CROSS { b_addr } else { a_addr };
            Ok(Server {
                roots: vec![a.child.id(), b.child.id()],
                backend: vec![redis.child.id()],
                guards: vec![a, b, redis],
                addr: subscribers,
                publish_addr: (peer == FLEET_CROSS).then_some(a_addr),
            })
        }
        BROADCAST => single("peer-broadcast", peer_cmd("peer-broadcast", true)),
        UWS | UWS_DEFLATE => {
            let bin = if peer == UWS {
                ctx.uws.as_ref()
            } else {
                ctx.uws_deflate.as_ref()
            }
            .context("uWebSockets was not built")?;
            let mut c = ctx.pinned(SERVER_CPU, bin);
            // Port 0: it prints the port it bound. Backpressure limit 4 MiB, closing at it
            // (its default drops messages silently).
            c.arg("0").arg(&cert).arg(&key).args(["4194304", "1"]);
            single("uws_pubsub", c)
        }
        NCHAN => {
            let (nginx, module) = ctx.nchan.as_ref().context("nginx + nchan unavailable")?;
            let port = free_port()?;
            let prefix = ctx.logs.join(format!("nchan-{tag}"));
            let _ = std::fs::remove_dir_all(&prefix);
            std::fs::create_dir_all(&prefix)?;
            let listen = format!("127.0.0.1:{port}");
            let conf = nginx::render_nchan_conf(&listen, &cert, &key, module, &prefix);
            std::fs::write(prefix.join("nginx.conf"), conf)?;
            let mut c = ctx.pinned(SERVER_CPU, nginx);
            c.args(nginx::nginx_args(&prefix));
            {
                use std::os::unix::process::CommandExt;
                c.process_group(0);
            }
            let l = log("nginx");
            let (mut g, _rx) = spawn_lines("nginx", &mut c, &l)?;
            g.group = true;
            let addr: SocketAddr = listen.parse()?;
            wait_connectable(&mut g, addr, &prefix)?;
            Ok(Server::alone(g, addr))
        }
        other => bail!("unknown peer {other}"),
    }
}

/// wssedge's pub/sub set-up: `/md` a pub/sub route, the publisher's token HS256; `extra`
/// appended (a `[compression]` section).
fn pubsub_conf(secret: &Path, extra: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nadmin = \"127.0.0.1:0\"\ncores = 1\n\n\
         [limits]\nmax_connections = 200000\n\n\
         [jwt]\nhs_secret_file = \"{}\"\n\n\
         [pubsub]\nhistory = 1000\n\n\
         [[routes]]\nprefix = \"/md\"\npubsub = true\n\n{extra}",
        secret.display()
    )
}

/// The compression set's `[compression]`: on or off for every path, the defaults otherwise
/// (min_bytes 128, level 3), no context kept on either side.
fn compression_conf(on: bool) -> String {
    format!("[compression]\nenabled = {on}\ncontext_takeover = \"none\"\n")
}

/// The HS256 secret wssedge-pubsub verifies and the generator signs its token with (the
/// publisher needs the publish scope).
fn fanout_secret(ctx: &Ctx) -> Result<PathBuf> {
    let path = ctx.state.join("fanout-hs256.key");
    if !path.is_file() {
        let mut key = [0u8; 48];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
            .context("reading /dev/urandom")?;
        std::fs::write(&path, key)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(path)
}

/// Waits until nginx accepts on `addr` (it prints no listening line).
fn wait_connectable(g: &mut Guard, addr: SocketAddr, prefix: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = g.exited() {
            bail!(
                "nginx exited at start ({s}): {}",
                last_line(&prefix.join("error.log"))
            );
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nginx is not listening on {addr} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// One cell
// ---------------------------------------------------------------------------------------------

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn tag(g: &Planned, peer: &str) -> String {
    let mut t = format!("{}-{}B", g.scenario.name(), g.payload);
    if let Some(r) = g.rate {
        t.push_str(&format!("-r{r}"));
    }
    if let Some(d) = g.depth {
        t.push_str(&format!("-d{d}"));
    }
    if g.scenario.is_idle() {
        t.push_str(&format!("-n{}", g.connections));
    }
    format!("{t}-{peer}")
}

fn run_cell(ctx: &Ctx, o: &Opts, g: &Planned, peer: &str) -> Cell {
    let mut cell = Cell {
        scenario: Some(g.scenario),
        peer: peer.to_string(),
        payload: g.payload,
        connections: g.connections,
        rate: g.rate,
        depth: g.depth,
        ..Cell::default()
    };
    if let Err(e) = measure(ctx, o, g, peer, &mut cell) {
        cell.error = Some(format!("{e:#}"));
    }
    cell
}

fn measure(ctx: &Ctx, o: &Opts, g: &Planned, peer: &str, cell: &mut Cell) -> Result<()> {
    let t = tag(g, peer);
    let mut server = start_server(ctx, peer, &t)?;
    let proto = peer_def(peer).proto;
    let url = match proto {
        "wss" | "ws" if g.scenario.is_fanout() => format!("{proto}://{}/md", server.addr),
        "wss" | "ws" => format!("{proto}://{}/", server.addr),
        p => format!("{p}://{}", server.addr),
    };
    let (mode, duration, warmup) = match g.scenario {
        Scenario::Rate | Scenario::Proxy | Scenario::CompressionEcho => {
            ("open", o.duration, o.warmup)
        }
        Scenario::Fanout | Scenario::Fleet | Scenario::CompressionFanout => {
            ("fanout", o.duration, o.warmup)
        }
        Scenario::Closed | Scenario::ProxyClosed => ("closed", o.closed_duration, o.warmup),
        Scenario::Storm | Scenario::FleetUpgrades => ("storm", o.duration, o.warmup),
        Scenario::Idle | Scenario::CompressionIdle => ("idle", o.idle_hold, 0.0),
    };
    let json_path = ctx.logs.join(format!("{t}.json"));
    let _ = std::fs::remove_file(&json_path);
    let mut cmd = ctx.pinned(CLIENT_CPU, &ctx.generator);
    cmd.arg(mode)
        .arg("--url")
        .arg(&url)
        .arg("--ca")
        .arg(ctx.state.join("dev-ca.pem"))
        .args(["--connections", &g.connections.to_string()])
        .args(["--duration", &duration.to_string()])
        .args(["--warmup", &warmup.to_string()])
        .args(["--payload", &g.payload.to_string()])
        .args(["--cpus", "1"])
        .arg("--json")
        .arg(&json_path)
        .args(["--proto", proto]);
    if let Some(r) = g.rate {
        cmd.args(["--rate", &format!("{r}")]);
    }
    if let Some(d) = g.depth {
        cmd.args(["--depth", &d.to_string()]);
    }
    if g.scenario.is_idle() {
        cmd.args(["--hold", &o.idle_hold.to_string()]);
    }
    if g.scenario.is_compression() {
        cmd.args(["--deflate", "--market-data"]);
    }
    if g.scenario.is_fanout() {
        let wire = if peer == NCHAN { "nchan" } else { "json" };
        cmd.args(["--fanout-proto", wire, "--topic", FANOUT_TOPIC]);
        if [
            WSSEDGE_PUBSUB,
            WSSEDGE_PUBSUB_BEFORE,
            FLEET_SAME,
            FLEET_CROSS,
            WSSEDGE_PUBSUB_DEFLATE_OFF,
            WSSEDGE_PUBSUB_DEFLATE_ON,
        ]
        .contains(&peer)
        {
            cmd.arg("--hs256-secret-file").arg(fanout_secret(ctx)?);
        }
        if let Some(p) = server.publish_addr {
            cmd.arg("--publish-url").arg(format!("{proto}://{p}/md"));
        }
    }
    if g.scenario == Scenario::FleetUpgrades {
        cmd.arg("--mint-per-connection").arg(fanout_secret(ctx)?);
    }
    let gen_log = ctx.logs.join(format!("{t}.gen.log"));

    let proc_root = Path::new("/proc");
    let before = (server.rss(), procfs::tcp_mem_bytes(proc_root).unwrap_or(0));
    let mut t0 = Instant::now();
    let (mut gen, rx) = spawn_lines("wssbench", &mut cmd, &gen_log)?;
    let nominal = Duration::from_secs_f64(warmup + duration);
    if g.scenario.is_fanout() {
        // The window starts once every subscriber is subscribed (seconds for thousands).
        let deadline = t0 + Duration::from_secs(90 + g.connections / 200);
        wait_ready_line(&rx, "FANOUT_READY", &mut gen, &gen_log, t0, deadline)?;
        t0 = Instant::now();
    }
    let mut limit = t0 + nominal + GEN_GRACE;
    if g.scenario.is_idle() {
        // Wait for all connections, then take the "during" sample.
        // wssbench itself gives up on setup after connect timeout + 60 s + N/500 s.
        limit += Duration::from_secs(90 + g.connections / 200);
        let rest = wait_ready_line(&rx, "IDLE_READY", &mut gen, &gen_log, t0, limit)?;
        let n = rest
            .trim()
            .strip_prefix("n=")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(g.connections);
        std::thread::sleep(Duration::from_millis(500));
        cell.mem = Some(Mem {
            n,
            rss_before: before.0,
            rss_during: server.rss(),
            sock_before: before.1,
            sock_during: procfs::tcp_mem_bytes(proc_root).unwrap_or(0),
        });
        // The hold starts when the last connection is up.
        limit = Instant::now() + Duration::from_secs_f64(o.idle_hold) + GEN_GRACE;
    } else {
        let charged = server.charged(g.scenario);
        // Outside the proxy set (and the fleet's Redis) the backend is part of `charged`.
        let backend =
            if (g.scenario.is_proxy() || g.scenario.is_fleet()) && !server.backend.is_empty() {
                server.backend.clone()
            } else {
                Vec::new()
            };
        // Everything we run (servers, backend, generator) descends from this process.
        let ours = [std::process::id()];
        let foreign = || {
            Some(
                procfs::cpu_busy_ticks(proc_root)?
                    .saturating_sub(procfs::tree_cpu_ticks(proc_root, &ours)),
            )
        };
        sleep_until(t0 + Duration::from_secs_f64(warmup));
        let (s0, b0, f0, w0) = (
            CpuSample::of(&charged),
            CpuSample::of(&backend),
            foreign(),
            Instant::now(),
        );
        sleep_until(t0 + nominal);
        let (s1, b1, f1, w1) = (
            CpuSample::of(&charged),
            CpuSample::of(&backend),
            foreign(),
            Instant::now(),
        );
        cell.foreign_cpu_s = f0
            .zip(f1)
            .map(|(a, b)| b.saturating_sub(a) as f64 / ctx.clk_tck as f64);
        (cell.server_ticks, cell.server_sched_s) = s0.delta(s1);
        if g.scenario.is_fanout() {
            // Memory while every subscriber is connected and publications flow.
            cell.mem = Some(Mem {
                n: g.connections,
                rss_before: before.0,
                rss_during: server.rss(),
                sock_before: before.1,
                sock_during: procfs::tcp_mem_bytes(proc_root).unwrap_or(0),
            });
        }
        cell.server_cpu_s = cell.server_ticks as f64 / ctx.clk_tck as f64;
        if !backend.is_empty() {
            let (ticks, sched) = b0.delta(b1);
            cell.backend_ticks = ticks;
            cell.backend_cpu_s = Some(ticks as f64 / ctx.clk_tck as f64);
            cell.backend_sched_s = sched;
        }
        cell.window_s = (w1 - w0).as_secs_f64();
    }
    let status = loop {
        if let Some(s) = gen.exited() {
            break s;
        }
        if Instant::now() > limit {
            bail!("wssbench still running {:?} after its start", limit - t0);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    drop(gen);
    if let Some(why) = server.died() {
        bail!("{why}");
    }
    drop(server);
    if !status.success() {
        bail!("wssbench exited with {status}: {}", last_line(&gen_log));
    }
    let text = std::fs::read_to_string(&json_path)
        .with_context(|| format!("wssbench wrote no {}", json_path.display()))?;
    let (gr, raw) = GenResult::parse(&text)?;
    cell.gen = Some(gr);
    cell.raw = Some(raw);
    Ok(())
}

/// Waits for the generator's line starting with `marker` (its connections are set up) and
/// returns the rest of it; fails when the generator ends first or `deadline` passes.
fn wait_ready_line(
    rx: &mpsc::Receiver<String>,
    marker: &str,
    gen: &mut Guard,
    gen_log: &Path,
    t0: Instant,
    deadline: Instant,
) -> Result<String> {
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(rest) = line.trim().strip_prefix(marker) {
                    return Ok(rest.to_owned());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(100));
                bail!(
                    "wssbench ended without {marker} ({:?}): {}",
                    gen.exited(),
                    last_line(gen_log)
                );
            }
        }
        if Instant::now() > deadline {
            bail!("no {marker} within {:?}", deadline - t0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command
// ---------------------------------------------------------------------------------------------

fn build(env: &Env) -> Result<()> {
    let args = [
        "build",
        "--release",
        "-p",
        "wssedge",
        "-p",
        "wssbench",
        "-p",
        "wssedge-peers",
    ];
    eprintln!("$ cargo {}", args.join(" "));
    let st = env.cargo().args(args).stdin(Stdio::null()).status()?;
    if st.success() {
        return Ok(());
    }
    // A broken peer must not hide the rest: build what builds, skip the missing later.
    eprintln!("xtask: the combined build failed; building the packages one by one");
    let mut ok = true;
    for p in ["wssedge", "wssbench", "wssedge-peers"] {
        let st = env
            .cargo()
            .args(["build", "--release", "-p", p])
            .stdin(Stdio::null())
            .status()?;
        if !st.success() && p != "wssedge-peers" {
            ok = false;
        }
    }
    if !ok {
        bail!("building wssedge / wssbench failed");
    }
    Ok(())
}

/// The `--before` wssedge: `spec` is a binary, or a git revision built (release, in its own
/// worktree and target directory under target/bench/) once per revision.
fn before_binary(env: &Env, spec: &str) -> Result<PathBuf> {
    let as_path = PathBuf::from(spec);
    if as_path.is_file() {
        return Ok(as_path);
    }
    let rev = sh(
        "git",
        &["rev-parse", "--verify", &format!("{spec}^{{commit}}")],
        &env.root,
    );
    if rev.len() != 40 {
        bail!("--before {spec:?} is neither a file nor a git revision of this repository");
    }
    let dir = env.target.join("bench").join("before");
    let out = dir.join(format!("wssedge-{}", &rev[..12]));
    if out.is_file() {
        eprintln!("xtask: --before: reusing {}", out.display());
        return Ok(out);
    }
    let src = dir.join("src");
    if src.exists() {
        let _ = Command::new("git")
            .args(["worktree", "remove", "--force"])
            .arg(&src)
            .current_dir(&env.root)
            .status();
        let _ = std::fs::remove_dir_all(&src);
    }
    std::fs::create_dir_all(&dir)?;
    let st = Command::new("git")
        .args(["worktree", "add", "--detach"])
        .arg(&src)
        .arg(&rev)
        .current_dir(&env.root)
        .status()?;
    if !st.success() {
        bail!("git worktree add {} {rev} failed", src.display());
    }
    banner(&format!(
        "bench: build the --before wssedge ({})",
        &rev[..12]
    ));
    let target = dir.join("target");
    let st = Command::new(&env.cargo)
        .args(["build", "--release", "-p", "wssedge", "--bin", "wssedge"])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&src)
        .stdin(Stdio::null())
        .status()?;
    let _ = Command::new("git")
        .args(["worktree", "remove", "--force"])
        .arg(&src)
        .current_dir(&env.root)
        .status();
    if !st.success() {
        bail!("building wssedge at {rev} failed");
    }
    std::fs::copy(target.join("release").join("wssedge"), &out)?;
    Ok(out)
}

/// The binaries a peer needs, for a visible skip when one is missing.
fn peer_bins(peer: &str) -> &'static [&'static str] {
    match peer {
        OURS => &["wssedge"],
        "tungstenite" => &["peer-tungstenite"],
        "fastwebsockets" => &["peer-fastwebsockets"],
        "nginx" | NGINX_PROXY | DIRECT_BACKEND => &["echo-plain"],
        "floor-tls" => &["floor-tls"],
        "floor-tcp" => &["floor-tcp"],
        WSSEDGE_PROXY => &["wssedge", "echo-plain"],
        // The before binary itself is checked where `--before` is resolved.
        WSSEDGE_BEFORE | WSSEDGE_PUBSUB_BEFORE => &[],
        WSSEDGE_PROXY_BEFORE => &["echo-plain"],
        WSSEDGE_PUBSUB | FLEET_SAME | FLEET_CROSS | FLEET_CHECKS | FLEET_NOCHECKS => &["wssedge"],
        WSSEDGE_DEFLATE_OFF
        | WSSEDGE_DEFLATE_ON
        | WSSEDGE_PUBSUB_DEFLATE_OFF
        | WSSEDGE_PUBSUB_DEFLATE_ON => &["wssedge"],
        BROADCAST => &["peer-broadcast"],
        _ => &[],
    }
}

fn find_nginx() -> Option<PathBuf> {
    which("nginx").or_else(|| {
        [
            "/usr/sbin/nginx",
            "/usr/local/sbin/nginx",
            "/usr/local/nginx/sbin/nginx",
        ]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    })
}

fn ensure_nginx() -> std::result::Result<PathBuf, String> {
    if let Some(n) = find_nginx() {
        return Ok(n);
    }
    if !is_root() || which("apt-get").is_none() {
        return Err("nginx is not installed and cannot be (need root and apt-get)".into());
    }
    banner("installing nginx-light");
    apt_install(&["nginx-light"]).map_err(|e| format!("apt-get install nginx-light: {e:#}"))?;
    find_nginx().ok_or_else(|| "nginx-light installed but no nginx binary found".into())
}

/// Our open-files limit (soft), which every server and the generator inherit.
fn nofile_limit() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// Root may be able to raise the open-files limit; the idle scenario needs one descriptor per
/// connection in the server (two in nginx: client + upstream).
fn raise_nofile(idle_n: u64) {
    let want = 2 * idle_n + 1024;
    if nofile_limit().is_some_and(|n| n >= want) {
        return;
    }
    if is_root() && which("prlimit").is_some() {
        let _ = Command::new("prlimit")
            .arg("--pid")
            .arg(std::process::id().to_string())
            .arg(format!("--nofile={want}:{want}"))
            .stderr(Stdio::null())
            .status();
    }
    if let Some(n) = nofile_limit().filter(|n| *n < want) {
        eprintln!(
            "xtask: open-files limit is {n} and cannot be raised: nginx (2 descriptors per \
             connection) may not open all {idle_n} idle connections"
        );
    }
}

fn sh(cmd: &str, args: &[&str], dir: &Path) -> String {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// `nginx -v` prints its version on stderr.
fn nginx_version(nginx: &Path) -> String {
    Command::new(nginx)
        .arg("-v")
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
        .unwrap_or_default()
}

fn environment(env: &Env, ctx: &Ctx) -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let commit = sh("git", &["rev-parse", "HEAD"], &env.root);
    let dirty = !sh("git", &["status", "--porcelain"], &env.root).is_empty();
    json!({
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "cpu_model": cpu_model,
        "cpus_online": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "commit": commit,
        "dirty": dirty,
        "clk_tck": ctx.clk_tck,
        "open_files_limit": nofile_limit(),
        "pinning": if ctx.taskset { format!("server CPU {SERVER_CPU}, ws:// backend CPU {BACKEND_CPU}, generator CPU {CLIENT_CPU} (taskset)") } else { "none (taskset unavailable)".into() },
        "tls": "wssedge: userspace TLS (kTLS not available here)",
        "nginx": ctx.nginx.as_ref().map(|p| nginx_version(p)),
        "before_binary": ctx.before.as_ref().map(|p| p.display().to_string()),
    })
}

fn print_plan(o: &Opts, groups: &[Planned]) {
    let eta: f64 = groups
        .iter()
        .map(|g| cell_secs(o, g) * g.peers.len() as f64)
        .sum();
    banner("bench: plan");
    eprintln!(
        "peers: {}",
        o.peers
            .iter()
            .map(|p| label(p))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for g in groups {
        let what = match g.scenario {
            Scenario::Fanout | Scenario::Fleet | Scenario::CompressionFanout => format!(
                "{}: {} subscribers × {} publications/s, {} B, {} s (+{} s warmup)",
                g.scenario.name(),
                g.connections,
                g.rate.unwrap_or(0.0),
                g.payload,
                o.duration,
                o.warmup
            ),
            Scenario::Rate | Scenario::Proxy | Scenario::CompressionEcho => format!(
                "{}: open loop {} msg/s, {} conns, {} B, {} s (+{} s warmup)",
                g.scenario.name(),
                g.rate.unwrap_or(0.0),
                g.connections,
                g.payload,
                o.duration,
                o.warmup
            ),
            Scenario::Closed | Scenario::ProxyClosed => format!(
                "{}: depth {}, {} conns, {} B, {} s (+{} s warmup)",
                g.scenario.name(),
                g.depth.unwrap_or(1),
                g.connections,
                g.payload,
                o.closed_duration,
                o.warmup
            ),
            Scenario::Storm | Scenario::FleetUpgrades => format!(
                "{}: {} handshakes/s, {} s (+{} s warmup)",
                g.scenario.name(),
                g.rate.unwrap_or(0.0),
                o.duration,
                o.warmup
            ),
            Scenario::Idle | Scenario::CompressionIdle => format!(
                "{}: {} connections held {} s",
                g.scenario.name(),
                g.connections,
                o.idle_hold
            ),
        };
        eprintln!("  {what} × [{}]", g.peers.join(", "));
    }
    eprintln!("ETA: about {:.0} s of measurement", eta);
}

pub fn run(args: &[String]) -> Result<bool> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!(
            "usage: cargo xtask bench [--quick] [--connections N] [--payload B,...] [--rates R,...] \
             [--proxy-rate R] [--upgrade-rate R] [--duration S] [--no-build] [--peers {}] [--scenarios {}] \
             [--idle-connections N] [--before REV|BINARY] [--compression-payload B,...] \
             [--compression-rate R] [--compression-fanout SUBSxRATE,...]\n\
             The proxy set alone: --scenarios proxy,proxy-closed\n\
             The compression set alone (off vs on, echo, idle, fan-out): --scenarios compression\n\
             --before adds wssedge-before and wssedge-proxy-before: the same modes from another \
             build (a binary, or a git revision built under target/bench/before/), and a \
             before/after table",
            PEERS.iter().map(|p| p.key).collect::<Vec<_>>().join(","),
            Scenario::ALL.map(|s| s.name()).join(",")
        );
        return Ok(true);
    }
    let mut o = parse_opts(args)?;
    let env = Env::detect();
    let out = env.target.join("bench");
    let logs = out.join("logs");
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs)?;

    print_plan(&o, &plan(&o));
    let planned_peers = o.peers.clone();

    let tb = Instant::now();
    if o.no_build {
        eprintln!("xtask: --no-build: using the binaries already in target/release");
    } else {
        banner("bench: build");
        build(&env)?;
    }
    let before = match &o.before {
        Some(b) => Some(before_binary(&env, b)?),
        None => None,
    };
    let build_s = tb.elapsed().as_secs_f64();
    eprintln!("xtask: build took {build_s:.1} s");

    let bin = env.target.join("release");
    // WSSBENCH=PATH runs another generator binary (for trying a generator under development).
    let generator = std::env::var_os("WSSBENCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| bin.join("wssbench"));
    let mut skipped: Vec<(String, String)> = Vec::new();
    if !generator.is_file() {
        bail!("no generator at {}", generator.display());
    }
    let mut nginx = None;
    if o.peers.iter().any(|p| p == "nginx" || p == NGINX_PROXY) {
        match ensure_nginx() {
            Ok(n) => nginx = Some(n),
            Err(why) => skipped.push(("nginx".into(), why)),
        }
    }
    let fanout_on = o.scenarios.contains(&Scenario::Fanout);
    let compression_fanout_on = o.scenarios.contains(&Scenario::CompressionFanout);
    let mut nchan = None;
    if fanout_on && o.peers.iter().any(|p| p == NCHAN) {
        match fanout::ensure_nchan() {
            Ok(n) => nchan = Some(n),
            Err(why) => skipped.push((NCHAN.into(), why)),
        }
    }
    let mut uws = None;
    if (fanout_on || compression_fanout_on) && o.peers.iter().any(|p| p == UWS) {
        match fanout::ensure_uws(&env) {
            Ok(b) => uws = Some(b),
            Err(why) => skipped.push((UWS.into(), why)),
        }
    }
    let mut uws_deflate = None;
    if compression_fanout_on && o.peers.iter().any(|p| p == UWS_DEFLATE) {
        match fanout::ensure_uws_deflate(&env) {
            Ok(b) => uws_deflate = Some(b),
            Err(why) => skipped.push((UWS_DEFLATE.into(), why)),
        }
    }
    let mut redis = None;
    let fleet_peers = [FLEET_SAME, FLEET_CROSS, FLEET_CHECKS, FLEET_NOCHECKS];
    if o.scenarios.iter().any(|s| s.is_fleet())
        && o.peers.iter().any(|p| fleet_peers.contains(&p.as_str()))
    {
        match fleet::ensure_redis() {
            Ok(r) => redis = Some(r),
            Err(why) => {
                for p in fleet_peers {
                    skipped.push((p.into(), why.clone()));
                }
            }
        }
    }
    for p in &o.peers {
        if let Some(b) = peer_bins(p).iter().find(|b| !bin.join(b).is_file()) {
            skipped.push((p.clone(), format!("{b} was not built")));
        }
    }
    o.peers.retain(|p| !skipped.iter().any(|(s, _)| s == p));
    for (p, why) in &skipped {
        eprintln!("xtask: SKIPPING {}: {why}", label(p));
    }
    let ours = [
        OURS,
        WSSEDGE_PROXY,
        WSSEDGE_PUBSUB,
        FLEET_SAME,
        FLEET_CROSS,
        FLEET_CHECKS,
        FLEET_NOCHECKS,
        WSSEDGE_DEFLATE_OFF,
        WSSEDGE_DEFLATE_ON,
        WSSEDGE_PUBSUB_DEFLATE_OFF,
        WSSEDGE_PUBSUB_DEFLATE_ON,
    ];
    if !o.peers.iter().any(|p| ours.contains(&p.as_str())) {
        bail!("no wssedge peer (wssedge, wssedge-proxy, wssedge-pubsub, wssedge-fleet-*) is among the peers to run");
    }
    if o.scenarios.contains(&Scenario::Idle) {
        raise_nofile(o.idle_n);
    }
    if o.scenarios.contains(&Scenario::CompressionIdle) {
        raise_nofile(o.compression_idle_n);
    }
    if o.scenarios.contains(&Scenario::Fanout) {
        // One descriptor per subscriber in the server and in the generator (nginx: the same).
        raise_nofile(o.fanout.iter().map(|c| c.0).max().unwrap_or(0));
    }
    if compression_fanout_on {
        raise_nofile(o.compression_fanout.iter().map(|c| c.0).max().unwrap_or(0));
    }

    let ctx = Ctx {
        bin,
        generator,
        state: out.join("state"),
        logs,
        taskset: which("taskset").is_some()
            && std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2),
        clk_tck: procfs::clk_tck(),
        nginx,
        nchan,
        uws,
        uws_deflate,
        redis,
        before,
        env,
    };
    if !ctx.taskset {
        eprintln!(
            "xtask: WARNING: no taskset or fewer than 2 CPUs: server and generator are not pinned"
        );
    }

    let groups = plan(&o);
    if o.peers != planned_peers {
        eprintln!("xtask: revised plan without the skipped peers:");
        print_plan(&o, &groups);
    }

    // The first wssedge start writes the dev CA and leaf every TLS peer uses.
    std::fs::create_dir_all(&ctx.state)?;
    if !ctx.state.join("dev-leaf.pem").is_file() {
        let s = start_server(&ctx, OURS, "cert")?;
        drop(s);
        if !ctx.state.join("dev-leaf.pem").is_file() {
            bail!(
                "wssedge wrote no {}",
                ctx.state.join("dev-leaf.pem").display()
            );
        }
    }

    banner("bench: measuring");
    let load_before = procfs::loadavg(Path::new("/proc"));
    let tm = Instant::now();
    let mut cells = Vec::new();
    let total: usize = groups.iter().map(|g| g.peers.len()).sum();
    for g in &groups {
        for peer in &g.peers {
            let c = run_cell(&ctx, &o, g, peer);
            eprintln!(
                "[{:>3}/{total}] {:>5.0} s  {:<40} {}",
                cells.len() + 1,
                tm.elapsed().as_secs_f64(),
                tag(g, peer),
                summary(&c)
            );
            cells.push(c);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let measure_s = tm.elapsed().as_secs_f64();
    let load_after = procfs::loadavg(Path::new("/proc"));

    let order: Vec<&str> = PEERS.iter().map(|p| p.key).collect();
    let mut md = format!(
        "# wssedge benchmark{}\n\nServer pinned to CPU {SERVER_CPU}, ws:// backend (behind nginx \
         and wssedge-proxy) to CPU {BACKEND_CPU}, generator (wssbench) to CPU \
         {CLIENT_CPU}; every server freshly started per cell; peers alternate order between \
         cells. Build {build_s:.0} s, measuring {measure_s:.0} s. Server CPU is utime+stime, counted \
         in ticks of 1/{} s: short windows at low rates make per-message figures coarse \
         (report.json also has a ns-resolution schedstat figure per cell).\n\n",
        if o.quick { " (--quick)" } else { "" },
        ctx.clk_tck
    );
    // Only two CPUs: anything else running (a build) lands on the server's or the client's CPU.
    let busy: Vec<f64> = cells.iter().filter_map(Cell::host_busy).collect();
    if !busy.is_empty() {
        md.push_str(&format!(
            "**Host busy**: in {} of {} cells other processes took over {} CPU (up to {:.2}) \
             of the two this host has; those cells' notes say so. Their tails (p99 and beyond) \
             and closed-loop throughput suffer most, CPU per message least: rerun on a quiet \
             host before reading small differences.\n\n",
            busy.len(),
            cells.len(),
            results::HOST_BUSY_CPUS,
            busy.iter().copied().fold(0.0, f64::max)
        ));
    }
    for (p, why) in &skipped {
        md.push_str(&format!("**{} skipped**: {why}\n\n", label(p)));
    }
    if let Some(n) =
        nofile_limit().filter(|n| o.scenarios.contains(&Scenario::Idle) && *n < 2 * o.idle_n + 1024)
    {
        md.push_str(&format!(
            "Open-files limit {n} (could not be raised): nginx needs two descriptors per idle \
             connection (client + upstream).\n\n"
        ));
    }
    md.push_str(&report::markdown(&cells, &order, &label));
    md.push_str(&report::proxy_markdown(&cells, &label));
    md.push_str(&report::fanout_markdown(&cells, &label));
    md.push_str(&report::fleet_markdown(&cells, &label));
    md.push_str(&report::fleet_upgrades_markdown(&cells, &label));
    md.push_str(&report::compression_markdown(&cells, &label));
    md.push_str(&report::before_after_markdown(&cells, &label));

    let mut plots = Vec::new();
    for g in groups.iter().filter(|g| g.scenario.is_open_loop()) {
        let peer_order: &[&str] = if g.scenario.is_proxy() {
            &report::PROXY_ORDER
        } else {
            &order
        };
        let lines: Vec<(String, [f64; 5])> = peer_order
            .iter()
            .filter_map(|p| {
                cells.iter().find(|c| {
                    c.peer == *p
                        && c.scenario == Some(g.scenario)
                        && c.rate == g.rate
                        && c.payload == g.payload
                })
            })
            .filter_map(|c| {
                let l = &c.gen.as_ref()?.latency_us;
                Some((label(&c.peer), [l.p50, l.p90, l.p99, l.p999, l.p9999]))
            })
            .collect();
        if lines.is_empty() {
            continue;
        }
        let name = format!(
            "latency-{}-{}-{}B.svg",
            g.scenario.name(),
            g.rate.unwrap_or(0.0),
            g.payload
        );
        let path = out.join(&name);
        let title = format!(
            "{}open loop {} msg/s, {} conns, {} B: latency by percentile",
            if g.scenario.is_proxy() { "proxy: " } else { "" },
            g.rate.unwrap_or(0.0),
            g.connections,
            g.payload
        );
        match plot::latency_svg(&path, &title, &lines) {
            Ok(()) => plots.push(name),
            Err(e) => eprintln!("xtask: plot {name}: {e:#}"),
        }
    }
    if !plots.is_empty() {
        md.push_str("## latency plots\n\n");
        for p in &plots {
            md.push_str(&format!("- [{p}]({p})\n"));
        }
    }

    let report_json = json!({
        "environment": environment(&ctx.env, &ctx),
        "quick": o.quick,
        "build_s": build_s,
        "measure_s": measure_s,
        "loadavg_1m": {"before": load_before, "after": load_after},
        "plan": {
            "connections": o.connections,
            "payloads": o.payloads,
            "rates": o.rates,
            "duration_s": o.duration,
            "closed_duration_s": o.closed_duration,
            "warmup_s": o.warmup,
            "depths": o.depths,
            "proxy_rate": o.proxy_rate,
            "storm_rate": o.storm_rate,
            "upgrade_rate": o.upgrade_rate,
            "idle_connections": o.idle_n,
            "idle_hold_s": o.idle_hold,
            "fanout": o.fanout.iter().map(|(n, r)| json!({"subscribers": n, "rate": r})).collect::<Vec<_>>(),
            "fanout_payloads": o.fanout_payloads,
            "compression_payloads": o.compression_payloads,
            "compression_rate": o.compression_rate,
            "compression_fanout": o.compression_fanout.iter().map(|(n, r)| json!({"subscribers": n, "rate": r})).collect::<Vec<_>>(),
            "peers": o.peers,
            "scenarios": o.scenarios.iter().map(|s| s.name()).collect::<Vec<_>>(),
        },
        "skipped": skipped.iter().map(|(p, w)| json!({"peer": p, "reason": w})).collect::<Vec<_>>(),
        "labels": PEERS.iter().map(|p| (p.key.to_string(), Value::from(p.label))).collect::<serde_json::Map<_, _>>(),
        "cells": cells.iter().map(report::cell_json).collect::<Vec<_>>(),
        "proxy": report::proxy_json(&cells),
        "compression": report::compression_json(&cells),
        "plots": plots,
    });
    std::fs::write(out.join("report.md"), &md)?;
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report_json)?,
    )?;
    banner("bench: report");
    println!("{md}");
    eprintln!(
        "xtask: build {build_s:.1} s, measuring {measure_s:.1} s; wrote {} and {}",
        out.join("report.md").display(),
        out.join("report.json").display()
    );
    // A failed cell is in the report; the command still fails so it is not missed.
    let failed = cells.iter().filter(|c| c.error.is_some()).count();
    if failed > 0 {
        eprintln!(
            "xtask: {failed} cell(s) failed (see the report's notes and {})",
            ctx.logs.display()
        );
    }
    Ok(failed == 0)
}

fn summary(c: &Cell) -> String {
    if let Some(e) = &c.error {
        return format!("FAILED: {e}");
    }
    let flag = c
        .flag()
        .map(|f| format!(" [{}]", f.text()))
        .unwrap_or_default();
    let Some(g) = &c.gen else {
        return "no result".into();
    };
    match c.scenario {
        Some(Scenario::Idle | Scenario::CompressionIdle) => c
            .mem
            .as_ref()
            .map(|m| {
                format!(
                    "{} conns: {:.0} B/conn RSS + {:.0} B/conn kernel",
                    m.n,
                    m.rss_per_conn(),
                    m.sock_per_conn()
                )
            })
            .unwrap_or_default(),
        Some(Scenario::Storm | Scenario::FleetUpgrades) => format!(
            "{:.0} hs/s ok, p99 {:.0} µs, {} µs CPU/hs{flag}",
            g.handshakes_per_s(),
            g.handshake_us.p99,
            c.cpu_us_per_handshake()
                .map(report::fmt_num)
                .unwrap_or_default()
        ),
        Some(s) if s.is_proxy() => format!(
            "{:.0} msg/s, p50 {:.0} p99 {:.0} µs, {} µs CPU/msg{}, client {:.0} %{flag}",
            g.achieved(),
            g.latency_us.p50,
            g.latency_us.p99,
            c.fine_cpu_us_per_msg()
                .map(report::fmt_num)
                .unwrap_or_default(),
            c.backend_cpu_us_per_msg()
                .map(|b| format!(" (+{} backend)", report::fmt_num(b)))
                .unwrap_or_default(),
            g.client_cpu_busy * 100.0
        ),
        _ => format!(
            "{:.0} msg/s, p99 {:.0} µs, {} µs CPU/msg, client {:.0} %{flag}",
            g.achieved(),
            g.latency_us.p99,
            c.cpu_us_per_msg().map(report::fmt_num).unwrap_or_default(),
            g.client_cpu_busy * 100.0
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options() {
        let o = parse_opts(&s(&["--quick"])).unwrap();
        assert_eq!(o.rates, vec![2000.0, 10000.0]);
        assert_eq!((o.storm_rate, o.idle_n), (200.0, 2000));
        let o = parse_opts(&s(&[
            "--rates=1000,3000",
            "--payload",
            "16,1024",
            "--peers",
            "floor-tcp,wssedge",
            "--scenarios",
            "closed,rate",
            "--duration",
            "3",
        ]))
        .unwrap();
        assert_eq!(o.rates, vec![1000.0, 3000.0]);
        assert_eq!(o.payloads, vec![16, 1024]);
        assert_eq!(o.peers, vec!["wssedge", "floor-tcp"]);
        assert_eq!(o.scenarios, vec![Scenario::Rate, Scenario::Closed]);
        assert_eq!((o.duration, o.closed_duration), (3.0, 3.0));
        assert!(parse_opts(&s(&["--peers", "apache"])).is_err());
        assert!(parse_opts(&s(&["--scenarios", "nope"])).is_err());
        assert!(parse_opts(&s(&["--rates"])).is_err());
        assert!(parse_opts(&s(&["--bogus"])).is_err());
    }

    #[test]
    fn before_peers_run_only_with_a_before_build() {
        let o = parse_opts(&s(&["--quick"])).unwrap();
        assert!(!o.peers.iter().any(|p| is_before_peer(p)));
        let o = parse_opts(&s(&["--before", "HEAD~1"])).unwrap();
        assert_eq!(o.before.as_deref(), Some("HEAD~1"));
        assert!(o.peers.iter().any(|p| p == WSSEDGE_BEFORE));
        assert!(o.peers.iter().any(|p| p == WSSEDGE_PROXY_BEFORE));
        let o = parse_opts(&s(&["--before=x", "--peers", "wssedge-before,wssedge"])).unwrap();
        assert_eq!(o.peers, vec![OURS, WSSEDGE_BEFORE]);
        assert!(parse_opts(&s(&["--peers", "wssedge,wssedge-before"])).is_err());
        // The echo-mode copy runs the echo scenarios, the proxy copy the proxy set.
        let o = parse_opts(&s(&["--before", "x", "--scenarios", "rate,proxy"])).unwrap();
        let groups = plan(&o);
        assert!(groups
            .iter()
            .filter(|g| g.scenario == Scenario::Rate)
            .all(|g| g.peers.iter().any(|p| p == WSSEDGE_BEFORE)));
        assert!(groups
            .iter()
            .filter(|g| g.scenario == Scenario::Proxy)
            .all(|g| g.peers.iter().any(|p| p == WSSEDGE_PROXY_BEFORE)));
    }

    #[test]
    fn plan_alternates_and_skips_floors_where_meaningless() {
        let o = parse_opts(&s(&["--quick"])).unwrap();
        let p = plan(&o);
        // 2 rates + 2 depths + storm + idle + proxy rate + 2 proxy depths + one fan-out cell
        // + one fleet cell + one fleet-upgrades cell + the three compression cells.
        assert_eq!(p.len(), 15);
        let upgrades = p
            .iter()
            .find(|g| g.scenario == Scenario::FleetUpgrades)
            .unwrap();
        let mut upgrade_peers = upgrades.peers.clone();
        upgrade_peers.sort();
        assert_eq!(upgrade_peers, [FLEET_CHECKS, FLEET_NOCHECKS]);
        let fleet_opts = parse_opts(&s(&["--scenarios", "fleet"])).unwrap();
        assert_eq!(
            fleet_opts.scenarios,
            [Scenario::Fleet, Scenario::FleetUpgrades]
        );
        let fleet = p.iter().find(|g| g.scenario == Scenario::Fleet).unwrap();
        let mut fleet_peers = fleet.peers.clone();
        fleet_peers.sort();
        assert_eq!(fleet_peers, [FLEET_CROSS, FLEET_SAME, WSSEDGE_PUBSUB]);
        assert_eq!(p[0].peers[0], OURS);
        assert_eq!(p[1].peers.last().map(String::as_str), Some(OURS));
        let storm = p.iter().find(|g| g.scenario == Scenario::Storm).unwrap();
        assert!(!storm.peers.iter().any(|x| x.starts_with("floor")));
        assert!(storm.peers.iter().any(|x| x == "nginx"));
        let rate = &p[0];
        assert_eq!(rate.peers.len(), 7);
        assert!(
            rate.peers.iter().any(|x| x == WSSEDGE_BUSY_POLL),
            "busy polling is measured against the same cells without"
        );
        assert!(!rate.peers.iter().any(|x| x.contains("proxy")));
        // The proxy set: its three peers plus wssedge's echo mode, at the moderate rate.
        let proxy = p.iter().find(|g| g.scenario == Scenario::Proxy).unwrap();
        let mut peers = proxy.peers.clone();
        peers.sort();
        assert_eq!(
            peers,
            vec![DIRECT_BACKEND, NGINX_PROXY, OURS, WSSEDGE_PROXY]
        );
        assert_eq!(proxy.rate, Some(PROXY_RATE));
        let closed = p
            .iter()
            .filter(|g| g.scenario == Scenario::ProxyClosed)
            .map(|g| g.depth)
            .collect::<Vec<_>>();
        assert_eq!(closed, vec![Some(1), Some(16)]);
        // The fan-out set: its four peers, each with its own pub/sub.
        let fanout = p.iter().find(|g| g.scenario == Scenario::Fanout).unwrap();
        let mut peers = fanout.peers.clone();
        peers.sort();
        assert_eq!(peers, vec![BROADCAST, NCHAN, UWS, WSSEDGE_PUBSUB]);
        assert_eq!((fanout.connections, fanout.rate), (200, Some(250.0)));
        let eta: f64 = p
            .iter()
            .map(|g| cell_secs(&o, g) * g.peers.len() as f64)
            .sum();
        // The fan-out set adds about 20 s, the fleet's about 13 s, compression's about 22 s.
        assert!(eta < 170.0, "quick ETA {eta}");
        let full: f64 = plan(&parse_opts(&[]).unwrap())
            .iter()
            .map(|g| cell_secs(&parse_opts(&[]).unwrap(), g) * g.peers.len() as f64)
            .sum();
        // Fan-out: 2 payloads × 3 cells × 4 peers, about 210 s; compression about 60 s.
        assert!((500.0..700.0).contains(&full), "default ETA {full}");
        // The proxy set alone, at another rate.
        let o = parse_opts(&s(&[
            "--quick",
            "--scenarios",
            "proxy,proxy-closed",
            "--proxy-rate",
            "3000",
        ]))
        .unwrap();
        let p = plan(&o);
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].rate, Some(3000.0));
        assert!(p.iter().all(|g| g.peers.len() == 4));
        assert!(parse_opts(&s(&["--proxy-rate", "0"])).is_err());
        // The fleet's upgrade storm, offered past the ceiling.
        let o = parse_opts(&s(&["--scenarios", "fleet", "--upgrade-rate", "4000"])).unwrap();
        let storm: Vec<_> = plan(&o)
            .into_iter()
            .filter(|g| g.scenario == Scenario::FleetUpgrades)
            .collect();
        assert_eq!(storm.len(), 1);
        assert_eq!(storm[0].rate, Some(4000.0));
        assert!(parse_opts(&s(&["--upgrade-rate", "0"])).is_err());
    }

    #[test]
    fn compression_set_pairs_each_server_off_and_on() {
        let o = parse_opts(&s(&["--quick", "--scenarios", "compression"])).unwrap();
        assert_eq!(o.scenarios, Scenario::COMPRESSION);
        let p = plan(&o);
        let peers = |sc: Scenario| {
            let g = p.iter().find(|g| g.scenario == sc).unwrap();
            let mut v = g.peers.clone();
            v.sort();
            (v, g.payload, g.connections, g.rate)
        };
        assert_eq!(
            peers(Scenario::CompressionEcho),
            (
                s(&[WSSEDGE_DEFLATE_OFF, WSSEDGE_DEFLATE_ON]),
                COMPRESSION_PAYLOAD,
                50,
                Some(COMPRESSION_RATE)
            )
        );
        assert_eq!(
            peers(Scenario::CompressionIdle),
            (
                s(&[WSSEDGE_DEFLATE_OFF, WSSEDGE_DEFLATE_ON]),
                COMPRESSION_PAYLOAD,
                COMPRESSION_IDLE_N,
                None
            )
        );
        assert_eq!(
            peers(Scenario::CompressionFanout),
            (
                s(&[
                    UWS,
                    UWS_DEFLATE,
                    WSSEDGE_PUBSUB_DEFLATE_OFF,
                    WSSEDGE_PUBSUB_DEFLATE_ON
                ]),
                COMPRESSION_PAYLOAD,
                1000,
                Some(50.0)
            )
        );
        let eta: f64 = p
            .iter()
            .map(|g| cell_secs(&o, g) * g.peers.len() as f64)
            .sum();
        assert!(eta < 40.0, "compression ETA {eta}");
        let o = parse_opts(&s(&[
            "--scenarios=compression",
            "--idle-connections",
            "3000",
        ]))
        .unwrap();
        assert_eq!((o.idle_n, o.compression_idle_n), (3000, 3000));
        let o = parse_opts(&s(&[
            "--scenarios",
            "compression-fanout",
            "--compression-fanout",
            "500x200,1000x50",
            "--compression-payload",
            "300,1024",
            "--compression-rate",
            "2000",
        ]))
        .unwrap();
        assert_eq!(o.compression_fanout, vec![(500, 200.0), (1000, 50.0)]);
        assert_eq!(o.compression_rate, 2000.0);
        assert_eq!(plan(&o).len(), 4);
        assert!(parse_opts(&s(&["--compression-payload", "64"])).is_err());
        assert!(parse_opts(&s(&["--compression-rate", "0"])).is_err());
    }

    #[test]
    fn listening_lines() {
        assert_eq!(
            parse_listen_addr("listening on wss://127.0.0.1:4433/ (trust /x/dev-ca.pem)"),
            Some("127.0.0.1:4433".parse().unwrap())
        );
        assert_eq!(
            parse_listen_addr("listening on 127.0.0.1:9001"),
            Some("127.0.0.1:9001".parse().unwrap())
        );
        assert_eq!(parse_listen_addr("listening on garbage"), None);
        assert_eq!(parse_listen_addr("hello"), None);
    }
}
