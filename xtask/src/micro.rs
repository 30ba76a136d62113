//! `cargo xtask micro [--quick] [--no-criterion] [--no-callgrind]`: the micro benchmarks of the
//! WebSocket core's hot paths in one table.
//!
//! * Instruction counts (the stable number on a noisy machine): the `instructions` bench binary
//!   runs each path under `valgrind --tool=callgrind` with 1 and with 11 iterations; the
//!   difference divided by 10 is the cost of one iteration without the per-process set-up.
//! * Wall time: `cargo bench --bench codec -- --quick` (criterion), read back from
//!   `target/criterion/<group>/<size>/new/estimates.json`.
//!
//! The report goes to `target/bench/micro.md` and `target/bench/micro.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{apt_install, banner, is_root, which, Env};

/// The sized paths, in report order; `handshake_echo` and `deliver` come last.
const SIZED_PATHS: [&str; 4] = ["parse", "unmask", "utf8", "encode"];
const HANDSHAKE: &str = "handshake_echo";
const HANDSHAKE_SIZE: u64 = 64;
/// One pub/sub delivery under userspace TLS (framing, outbox, copy, encryption), after the
/// handshake; at a market-data tick's size and at 1 KiB.
const DELIVER: &str = "deliver";
const DELIVER_SIZES: [u64; 2] = [64, 1024];
const FULL_SIZES: [u64; 3] = [16, 1024, 65536];
const QUICK_SIZES: [u64; 2] = [64, 16384];
/// The two iteration counts whose instruction difference is `DELTA` iterations.
const FEW: u64 = 1;
const MANY: u64 = 11;
const DELTA: u64 = MANY - FEW;
/// The bench binary's dispatcher, into which the workloads are inlined. Counting only inside it
/// leaves out the per-process set-up (a freshly generated certificate and key), whose cost
/// varies by about a million instructions from run to run and would drown the small paths.
const SCOPE: &str = "instructions::run*";

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Opts {
    quick: bool,
    no_criterion: bool,
    no_callgrind: bool,
}

fn usage() -> &'static str {
    "usage: cargo xtask micro [--quick] [--no-criterion] [--no-callgrind]\n  \
     --quick          fewer callgrind sizes (64 B and 16 KiB)\n  \
     --no-criterion   skip the criterion wall-time run\n  \
     --no-callgrind   skip the valgrind/callgrind instruction counts"
}

fn parse_opts(args: &[String]) -> Result<Option<Opts>> {
    let mut o = Opts::default();
    for a in args {
        match a.as_str() {
            "--quick" => o.quick = true,
            "--no-criterion" => o.no_criterion = true,
            "--no-callgrind" => o.no_callgrind = true,
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    Ok(Some(o))
}

/// One line of the report: instruction counts and/or criterion wall time for (path, size).
#[derive(Debug, Default, Clone, PartialEq)]
struct Row {
    path: String,
    size: u64,
    /// Total Ir of the runs with `FEW` and `MANY` iterations.
    ir_few: Option<u64>,
    ir_many: Option<u64>,
    ir_per_iter: Option<f64>,
    ir_per_byte: Option<f64>,
    median_ns: Option<f64>,
    gib_per_s: Option<f64>,
    /// Counted only inside `SCOPE` (else the whole process).
    scoped: bool,
    /// Why a number is missing (a failed run), shown under the table.
    note: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------------------------

fn parse_count(s: &str) -> Option<u64> {
    let digits: String = s.chars().filter(|c| *c != ',').collect();
    digits.parse().ok()
}

/// The total from valgrind's stderr: `==123== Collected : 4567890`.
fn parse_collected(stderr: &str) -> Option<u64> {
    stderr.lines().find_map(|l| {
        let rest = l.split_once("Collected")?.1.trim_start();
        let rest = rest.strip_prefix(':')?;
        parse_count(rest.split_whitespace().next()?)
    })
}

/// The total from a callgrind out file: its `summary:` line (or `totals:`), first event = Ir.
fn parse_out_file(text: &str) -> Option<u64> {
    let find = |key: &str| {
        text.lines().find_map(|l| {
            let rest = l.trim().strip_prefix(key)?;
            parse_count(rest.split_whitespace().next()?)
        })
    };
    find("summary:").or_else(|| find("totals:"))
}

/// Instructions of one iteration: the difference of the two totals over `DELTA` iterations.
/// `None` when the longer run did not cost more (a broken measurement).
fn ir_per_iteration(few: u64, many: u64) -> Option<f64> {
    (many > few).then(|| (many - few) as f64 / DELTA as f64)
}

/// `median.point_estimate` (ns) from criterion's `estimates.json`.
fn parse_estimates(text: &str) -> Result<f64> {
    let v: Value = serde_json::from_str(text).context("estimates.json is not JSON")?;
    v.pointer("/median/point_estimate")
        .and_then(Value::as_f64)
        .context("estimates.json has no median.point_estimate")
}

/// The bytes per iteration criterion was told (`throughput.Bytes` in `benchmark.json`).
fn parse_throughput_bytes(text: &str) -> Option<u64> {
    let v: Value = serde_json::from_str(text).ok()?;
    let t = v.get("throughput")?;
    t.get("Bytes")
        .or_else(|| t.get("BytesDecimal"))
        .and_then(Value::as_u64)
}

fn gib_per_s(bytes: u64, ns: f64) -> Option<f64> {
    (ns > 0.0).then(|| bytes as f64 / ns * 1e9 / (1u64 << 30) as f64)
}

/// The `instructions` bench executable from `cargo bench --no-run --message-format=json`.
fn find_executable(json_lines: &str, target: &str) -> Option<PathBuf> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == target)
        .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
        .next_back()
}

// ---------------------------------------------------------------------------------------------
// Rendering
// ---------------------------------------------------------------------------------------------

fn opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "–".to_string(),
    }
}

fn render_markdown(rows: &[Row], header: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# wssedge micro benchmarks\n\n{header}\n");
    s.push_str(
        "| path | size (B) | Ir/iteration | Ir/byte | criterion median (ns) | GiB/s |\n\
         |---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r.path,
            r.size,
            opt(r.ir_per_iter, 1),
            opt(r.ir_per_byte, 3),
            opt(r.median_ns, 1),
            opt(r.gib_per_s, 2)
        );
    }
    let notes: Vec<String> = rows
        .iter()
        .filter_map(|r| Some(format!("- {} {}: {}", r.path, r.size, r.note.as_ref()?)))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\n{}", notes.join("\n"));
    }
    s
}

fn rows_json(rows: &[Row]) -> Value {
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "path": r.path,
                    "size": r.size,
                    "ir_total_1": r.ir_few,
                    "ir_total_11": r.ir_many,
                    "ir_scope": if r.ir_few.is_none() { Value::Null } else if r.scoped { json!(SCOPE) } else { json!("process") },
                    "ir_per_iteration": r.ir_per_iter,
                    "ir_per_byte": r.ir_per_byte,
                    "criterion_median_ns": r.median_ns,
                    "gib_per_s": r.gib_per_s,
                    "note": r.note,
                })
            })
            .collect(),
    )
}

// ---------------------------------------------------------------------------------------------
// Running
// ---------------------------------------------------------------------------------------------

type Table = BTreeMap<(usize, u64), Row>;

fn path_rank(path: &str) -> usize {
    SIZED_PATHS
        .iter()
        .position(|p| *p == path)
        .unwrap_or(SIZED_PATHS.len() + usize::from(path == DELIVER))
}

fn row<'a>(table: &'a mut Table, path: &str, size: u64) -> &'a mut Row {
    table.entry((path_rank(path), size)).or_insert_with(|| Row {
        path: path.to_string(),
        size,
        ..Row::default()
    })
}

/// Makes sure valgrind is there; `Err(reason)` for a visible skip.
fn ensure_valgrind() -> std::result::Result<PathBuf, String> {
    if let Some(v) = which("valgrind") {
        return Ok(v);
    }
    if !is_root() || which("apt-get").is_none() {
        return Err("valgrind is not installed and cannot be (need root and apt-get)".into());
    }
    banner("installing valgrind");
    apt_install(&["valgrind"]).map_err(|e| format!("apt-get install valgrind failed: {e:#}"))?;
    which("valgrind").ok_or_else(|| "valgrind still missing after apt-get install".into())
}

fn build_instructions(env: &Env) -> Result<PathBuf> {
    let args = [
        "bench",
        "-p",
        "wssedge",
        "--bench",
        "instructions",
        "--no-run",
    ];
    let messages = super::cargo_build_json(env, &args, "the instructions bench")?;
    find_executable(&messages, "instructions")
        .context("cargo did not report the instructions executable")
}

/// Total Ir of one `BIN PATH SIZE N` run under callgrind.
fn callgrind_total(
    valgrind: &Path,
    bin: &Path,
    dir: &Path,
    path: &str,
    size: u64,
    n: u64,
    scoped: bool,
) -> Result<u64> {
    let out_file = dir.join(format!("callgrind.{path}.{size}.{n}.out"));
    let mut cmd = Command::new(valgrind);
    cmd.arg("--tool=callgrind");
    if scoped {
        cmd.arg("--collect-atstart=no")
            .arg(format!("--toggle-collect={SCOPE}"));
    }
    let out = cmd
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(bin)
        .args([path.to_string(), size.to_string(), n.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("spawn valgrind")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(10).collect();
        bail!(
            "valgrind exited with {}:\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    if let Some(x) = parse_collected(&stderr) {
        return Ok(x);
    }
    let text = std::fs::read_to_string(&out_file)
        .with_context(|| format!("reading {}", out_file.display()))?;
    parse_out_file(&text).context("no `Collected :` line and no summary in the out file")
}

fn run_callgrind(env: &Env, o: &Opts, table: &mut Table) -> Result<bool> {
    banner("micro: instruction counts (callgrind)");
    let valgrind = match ensure_valgrind() {
        Ok(v) => v,
        Err(reason) => {
            eprintln!("micro: callgrind SKIPPED: {reason}");
            return Ok(true);
        }
    };
    let bin = build_instructions(env)?;
    let dir = env.target.join("bench").join("callgrind");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let sizes: &[u64] = if o.quick { &QUICK_SIZES } else { &FULL_SIZES };
    let mut points: Vec<(&str, u64)> = SIZED_PATHS
        .iter()
        .flat_map(|p| sizes.iter().map(move |s| (*p, *s)))
        .collect();
    points.push((HANDSHAKE, HANDSHAKE_SIZE));
    points.extend(DELIVER_SIZES.iter().map(|s| (DELIVER, *s)));
    let mut ok = true;
    for (path, size) in points {
        // The two runs are independent; instruction counts do not care that they overlap.
        let pair = |scoped: bool| {
            std::thread::scope(|s| {
                let a = s.spawn(|| callgrind_total(&valgrind, &bin, &dir, path, size, FEW, scoped));
                let b = callgrind_total(&valgrind, &bin, &dir, path, size, MANY, scoped);
                (a.join().expect("callgrind thread"), b)
            })
        };
        let mut scoped = true;
        let (mut few, mut many) = pair(true);
        if matches!((&few, &many), (Ok(0), _) | (_, Ok(0))) {
            eprintln!(
                "micro: {path} {size}: nothing counted inside {SCOPE} (inlined away?); \
                 counting the whole process, set-up noise included"
            );
            scoped = false;
            (few, many) = pair(false);
        }
        let r = row(table, path, size);
        r.scoped = scoped;
        if !scoped {
            r.note = Some(format!("whole process counted ({SCOPE} not found)"));
        }
        match (few, many) {
            (Ok(few), Ok(many)) => {
                r.ir_few = Some(few);
                r.ir_many = Some(many);
                r.ir_per_iter = ir_per_iteration(few, many);
                if r.ir_per_iter.is_none() {
                    ok = false;
                    r.note = Some(format!(
                        "{MANY} iterations ({many} Ir) did not cost more than {FEW} ({few} Ir)"
                    ));
                }
                if path != HANDSHAKE {
                    r.ir_per_byte = r.ir_per_iter.map(|i| i / size as f64);
                }
                eprintln!(
                    "micro: {path:>14} {size:>6} B: {} Ir/iteration",
                    opt(r.ir_per_iter, 1)
                );
            }
            (Err(e), _) | (_, Err(e)) => {
                ok = false;
                eprintln!("micro: {path} {size}: callgrind failed: {e:#}");
                r.note = Some(format!(
                    "callgrind failed: {}",
                    format!("{e:#}").lines().next().unwrap_or("")
                ));
            }
        }
    }
    Ok(ok)
}

fn run_criterion(env: &Env, table: &mut Table) -> Result<bool> {
    banner("micro: wall time (criterion --quick)");
    let args = [
        "bench", "-p", "wssedge", "--bench", "codec", "--", "--quick",
    ];
    eprintln!("$ cargo {}", args.join(" "));
    let st = env
        .cargo()
        .args(args)
        .stdin(Stdio::null())
        .status()
        .context("running cargo bench")?;
    if !st.success() {
        eprintln!("micro: cargo bench --bench codec failed ({st})");
        return Ok(false);
    }
    let root = env.target.join("criterion");
    let mut ok = true;
    for group in SIZED_PATHS {
        let gdir = root.join(group);
        let entries = match std::fs::read_dir(&gdir) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("micro: no criterion results in {}: {e}", gdir.display());
                ok = false;
                continue;
            }
        };
        for entry in entries.flatten() {
            let Some(size) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue; // criterion's `report` directory and the like
            };
            let new = entry.path().join("new");
            let median = std::fs::read_to_string(new.join("estimates.json"))
                .map_err(anyhow::Error::from)
                .and_then(|t| parse_estimates(&t));
            let median = match median {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("micro: {group}/{size}: {e:#}");
                    ok = false;
                    continue;
                }
            };
            let bytes = std::fs::read_to_string(new.join("benchmark.json"))
                .ok()
                .and_then(|t| parse_throughput_bytes(&t))
                .unwrap_or(size);
            let r = row(table, group, size);
            r.median_ns = Some(median);
            r.gib_per_s = gib_per_s(bytes, median);
        }
    }
    Ok(ok)
}

fn git_rev(root: &Path) -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(root)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(args: &[String]) -> Result<bool> {
    let Some(o) = parse_opts(args)? else {
        eprintln!("{}", usage());
        return Ok(true);
    };
    let env = Env::detect();
    let mut table = Table::new();
    let mut ok = true;
    if o.no_callgrind {
        eprintln!("micro: callgrind skipped (--no-callgrind)");
    } else {
        ok &= run_callgrind(&env, &o, &mut table)?;
    }
    if o.no_criterion {
        eprintln!("micro: criterion skipped (--no-criterion)");
    } else {
        ok &= run_criterion(&env, &mut table)?;
    }
    let rows: Vec<Row> = table.into_values().collect();
    let header = format!(
        "commit {}; Ir/iteration = (Ir({MANY} iterations) − Ir({FEW})) / {DELTA} under callgrind, \
         counted inside `{SCOPE}`{}; criterion {}.",
        git_rev(&env.root),
        if o.quick { " (quick sizes)" } else { "" },
        if o.no_criterion { "skipped" } else { "--quick" },
    );
    let md = render_markdown(&rows, &header);
    let out = env.target.join("bench");
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let json = json!({
        "commit": git_rev(&env.root),
        "quick": o.quick,
        "criterion": !o.no_criterion,
        "callgrind": !o.no_callgrind,
        "iterations": [FEW, MANY],
        "ir_scope": SCOPE,
        "rows": rows_json(&rows),
    });
    std::fs::write(out.join("micro.md"), &md).context("writing micro.md")?;
    std::fs::write(
        out.join("micro.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )
    .context("writing micro.json")?;
    banner("micro: report");
    println!("{md}");
    eprintln!(
        "micro: wrote {} and {}",
        out.join("micro.md").display(),
        out.join("micro.json").display()
    );
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn options() {
        assert_eq!(parse_opts(&[]).unwrap(), Some(Opts::default()));
        let o = parse_opts(&s(&["--quick", "--no-criterion", "--no-callgrind"]))
            .unwrap()
            .unwrap();
        assert!(o.quick && o.no_criterion && o.no_callgrind);
        assert_eq!(parse_opts(&s(&["--help"])).unwrap(), None);
        assert!(parse_opts(&s(&["--fast"])).is_err());
    }

    #[test]
    fn valgrind_collected_line() {
        let stderr = "==4242== Callgrind, a call-graph generating cache profiler\n\
                      ==4242== Events    : Ir\n\
                      ==4242== Collected : 12345678\n\
                      ==4242== \n\
                      ==4242== I   refs:      12,345,678\n";
        assert_eq!(parse_collected(stderr), Some(12_345_678));
        assert_eq!(parse_collected("==1== Events : Ir\n"), None);
    }

    #[test]
    fn callgrind_out_file_summary() {
        let text = "# callgrind format\nversion: 1\ncreator: callgrind-3.22.0\n\
                    events: Ir\nsummary: 987654\n\nfl=(1) a.rs\nfn=(1) main\n3 10\n";
        assert_eq!(parse_out_file(text), Some(987_654));
        let totals = "events: Ir\nfn=(1) main\n3 10\ntotals: 4321\n";
        assert_eq!(parse_out_file(totals), Some(4321));
        assert_eq!(parse_out_file("events: Ir\n"), None);
    }

    #[test]
    fn ir_difference() {
        assert_eq!(ir_per_iteration(1_000_000, 1_002_345), Some(234.5));
        assert_eq!(ir_per_iteration(500, 500), None);
        assert_eq!(ir_per_iteration(600, 500), None);
    }

    #[test]
    fn criterion_estimates() {
        let text = r#"{"mean":{"confidence_interval":{"confidence_level":0.95,"lower_bound":40.1,"upper_bound":42.3},"point_estimate":41.0,"standard_error":0.5},
            "median":{"confidence_interval":{"confidence_level":0.95,"lower_bound":39.0,"upper_bound":40.5},"point_estimate":39.75,"standard_error":0.4},
            "median_abs_dev":null,"slope":null,"std_dev":null}"#;
        assert_eq!(parse_estimates(text).unwrap(), 39.75);
        assert!(parse_estimates("{}").is_err());
        assert!(parse_estimates("not json").is_err());
        let bench = r#"{"group_id":"utf8","value_str":"1024","throughput":{"Bytes":1021}}"#;
        assert_eq!(parse_throughput_bytes(bench), Some(1021));
        // 1 GiB in one second.
        let g = gib_per_s(1 << 30, 1e9).unwrap();
        assert!((g - 1.0).abs() < 1e-12);
    }

    #[test]
    fn cargo_json_executable() {
        let lines = r#"{"reason":"compiler-artifact","target":{"name":"wssedge"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"instructions"},"executable":"/t/release/deps/instructions-abc"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            find_executable(lines, "instructions"),
            Some(PathBuf::from("/t/release/deps/instructions-abc"))
        );
        assert_eq!(find_executable(lines, "codec"), None);
    }

    #[test]
    fn markdown_table() {
        let mut table = Table::new();
        row(&mut table, HANDSHAKE, 64).ir_per_iter = Some(1_234_567.0);
        let r = row(&mut table, "parse", 1024);
        r.ir_per_iter = Some(512.0);
        r.ir_per_byte = Some(0.5);
        r.median_ns = Some(100.0);
        r.gib_per_s = gib_per_s(1024, 100.0);
        row(&mut table, "encode", 16).note = Some("callgrind failed".into());
        let rows: Vec<Row> = table.into_values().collect();
        assert_eq!(rows[0].path, "parse");
        assert_eq!(rows[2].path, HANDSHAKE);
        let md = render_markdown(&rows, "hdr");
        assert!(md.contains("\nhdr\n"));
        assert!(
            md.contains("| parse | 1024 | 512.0 | 0.500 | 100.0 | 9.54 |"),
            "{md}"
        );
        assert!(md.contains("| encode | 16 | – | – | – | – |"), "{md}");
        assert!(
            md.contains("| handshake_echo | 64 | 1234567.0 | – | – | – |"),
            "{md}"
        );
        assert!(md.contains("- encode 16: callgrind failed"));
        let j = rows_json(&rows);
        assert_eq!(j[0]["ir_per_byte"], 0.5);
        assert!(j[1]["ir_per_iteration"].is_null());
    }
}
