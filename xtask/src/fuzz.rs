//! Coverage-guided fuzzing on the stable toolchain: `cargo xtask fuzz [--minutes N]
//! [--seconds N] [--target NAME]...`, and the test command's `fuzz` layer (a short bounded run
//! of every target).
//!
//! cargo-fuzz needs nightly only for its sanitizer flags (`-Zsanitizer`). The coverage
//! libFuzzer steers by is LLVM's SanitizerCoverage, which stable rustc enables with
//! `-Cpasses=sancov-module` and its `-Cllvm-args`; libfuzzer-sys builds libFuzzer itself from
//! C++ source. So the targets in `fuzz/` are built here with those flags (no AddressSanitizer:
//! the code under test is safe Rust; debug assertions and overflow checks are on instead) and
//! run as plain libFuzzer binaries.
//!
//! Each run starts from the target's committed seeds (`fuzz/seeds/TARGET/`, plus generated
//! ones such as the README's configuration) and the corpus earlier runs grew in
//! `target/fuzz/corpus/TARGET/`, which it replays first: a crash found once stays a failing
//! case until fixed. A crash is written to `target/fuzz/artifacts/TARGET/` and the report says
//! how to replay it. The report (`target/fuzz/report.md`) gives per target: executions, their
//! rate, coverage (edges) and features reached, and the corpus size.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{banner, Counts, Env, Outcome};

/// Every target in `fuzz/Cargo.toml`, with the dictionary that helps it (under `fuzz/dicts/`).
pub const TARGETS: [(&str, Option<&str>); 7] = [
    ("frame_parser", None),
    ("upgrade_parser", Some("http.dict")),
    ("whole_session", Some("http.dict")),
    ("client_hello", None),
    ("jwt_token", Some("jwt.dict")),
    ("config_loader", Some("toml.dict")),
    ("deflate", None),
];

/// The test command's run per target: long enough to replay the corpus and explore a little
/// (coverage from the seeds saturates within seconds), short enough for seven targets to cost
/// about a minute; `cargo xtask fuzz` is for the long runs.
const LAYER_SECONDS: u64 = 10;
/// `cargo xtask fuzz` without `--minutes`/`--seconds`.
const DEFAULT_MINUTES: u64 = 10;
/// A fixed seed in the test command, so a CI failure can be replayed with the same choices.
const LAYER_SEED: u32 = 20_261_207;

/// SanitizerCoverage as cargo-fuzz configures it, minus the nightly-only sanitizer.
const COVERAGE_FLAGS: [&str; 6] = [
    "--cfg fuzzing",
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
];

struct Options {
    seconds: u64,
    targets: Vec<&'static str>,
    seed: Option<u32>,
    /// The fuzz crate's build profile: `release` for long runs, `fuzz-quick` (the code under
    /// test optimised, its dependencies not: half the cold build) for the test command.
    profile: &'static str,
}

/// `cargo xtask fuzz ...`
pub fn run(args: &[String]) -> Result<bool> {
    let opts = parse_args(args)?;
    let env = Env::detect();
    let results = fuzz_all(&env, &opts)?;
    Ok(results.iter().all(|r| r.crash.is_none()))
}

/// The test command's `fuzz` layer: each target for [`LAYER_SECONDS`], one test per target.
pub fn layer(env: &Env) -> Result<Outcome> {
    let opts = Options {
        seconds: crate::seconds_from_env("WSSEDGE_FUZZ_SECONDS", LAYER_SECONDS),
        targets: TARGETS.iter().map(|(t, _)| *t).collect(),
        seed: Some(LAYER_SEED),
        profile: "fuzz-quick",
    };
    let results = fuzz_all(env, &opts)?;
    let failed = results.iter().filter(|r| r.crash.is_some()).count() as u64;
    Ok(Outcome::Ran(Counts {
        passed: results.len() as u64 - failed,
        failed,
        skipped: 0,
    }))
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut seconds = DEFAULT_MINUTES * 60;
    let mut targets = Vec::new();
    let mut seed = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| -> Result<String> {
            it.next()
                .cloned()
                .with_context(|| format!("{name} needs a value"))
        };
        match a.as_str() {
            "--minutes" => seconds = 60 * value("--minutes")?.parse::<u64>()?,
            "--seconds" => seconds = value("--seconds")?.parse()?,
            "--seed" => seed = Some(value("--seed")?.parse()?),
            "--target" => {
                let name = value("--target")?;
                let Some((t, _)) = TARGETS.iter().find(|(t, _)| *t == name) else {
                    bail!("unknown fuzz target {name:?} (targets: {})", target_names());
                };
                targets.push(*t);
            }
            "-h" | "--help" => {
                eprintln!(
                    "usage: cargo xtask fuzz [--minutes N | --seconds N] [--seed N] [--target NAME]...\n\
                     each target runs that long (default {DEFAULT_MINUTES} minutes); targets: {}",
                    target_names()
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if seconds == 0 {
        bail!("a fuzz run needs at least one second");
    }
    if targets.is_empty() {
        targets = TARGETS.iter().map(|(t, _)| *t).collect();
    }
    Ok(Options {
        seconds,
        targets,
        seed,
        profile: "release",
    })
}

fn target_names() -> String {
    TARGETS
        .iter()
        .map(|(t, _)| *t)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What one bounded run of one target found.
#[derive(Debug, Default, PartialEq)]
pub struct RunStats {
    pub execs: u64,
    pub execs_per_s: u64,
    /// Coverage counters (edges) reached.
    pub cov: u64,
    /// libFuzzer's features (edges with hit-count buckets, compare values, ...).
    pub ft: u64,
    pub corpus_units: u64,
}

struct TargetResult {
    target: &'static str,
    seconds: f64,
    stats: RunStats,
    /// The reproducer libFuzzer wrote, and the panic or signal it died of.
    crash: Option<(Option<PathBuf>, String)>,
}

fn fuzz_all(env: &Env, opts: &Options) -> Result<Vec<TargetResult>> {
    let fuzz_dir = env.root.join("fuzz");
    let work = env.target.join("fuzz");
    let bin_dir = build(env, &fuzz_dir, &work, opts.profile)?;
    let generated = work.join("seeds-generated");
    write_generated_seeds(env, &generated)?;
    // libFuzzer is single-threaded: as many targets at once as there are CPUs.
    let at_once = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut results = Vec::new();
    for batch in opts.targets.chunks(at_once) {
        banner(&format!("fuzz {} for {} s", batch.join(", "), opts.seconds));
        let ran: Vec<Result<TargetResult>> = std::thread::scope(|scope| {
            let runs: Vec<_> = batch
                .iter()
                .map(|target| {
                    let (bin_dir, work, generated) = (&bin_dir, &work, &generated);
                    scope.spawn(move || run_target(env, bin_dir, work, generated, target, opts))
                })
                .collect();
            runs.into_iter()
                .map(|r| {
                    r.join()
                        .unwrap_or_else(|_| bail!("a fuzz runner thread panicked"))
                })
                .collect()
        });
        for r in ran {
            results.push(r?);
        }
    }
    let report = render_report(&results, opts.seconds);
    std::fs::write(work.join("report.md"), &report)?;
    eprintln!("{report}");
    eprintln!("report: {}", work.join("report.md").display());
    Ok(results)
}

/// The host's target triple: cargo must be given one explicitly, so that the coverage flags
/// reach the targets' code and not the build scripts and proc macros.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .context("rustc -vV names no host")
}

fn build(env: &Env, fuzz_dir: &Path, work: &Path, profile: &str) -> Result<PathBuf> {
    ensure_cxx();
    // The fuzz crate is outside the workspace; start from the workspace's lock so it builds
    // the very versions the tests ran (cargo adds libFuzzer's own entries).
    let lock = fuzz_dir.join("Cargo.lock");
    if !lock.exists() {
        std::fs::copy(env.root.join("Cargo.lock"), &lock).context("seeding fuzz/Cargo.lock")?;
    }
    let triple = host_triple()?;
    let args = [
        "build",
        "--profile",
        profile,
        "--bins",
        "--target",
        triple.as_str(),
        "--manifest-path",
        "fuzz/Cargo.toml",
    ];
    eprintln!("$ RUSTFLAGS=<coverage> cargo {}", args.join(" "));
    let status = env
        .cargo()
        .args(args)
        .env("CARGO_TARGET_DIR", work)
        .env("RUSTFLAGS", COVERAGE_FLAGS.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null())
        .status()
        .context("spawning cargo to build the fuzz targets")?;
    if !status.success() {
        bail!("building the fuzz targets failed ({status})");
    }
    Ok(work.join(triple).join(profile))
}

/// libfuzzer-sys compiles libFuzzer (C++): a C++ compiler must be there.
fn ensure_cxx() {
    if crate::which("c++").is_some() || crate::which("g++").is_some() {
        return;
    }
    if crate::is_root() && crate::which("apt-get").is_some() {
        banner("installing g++ (libFuzzer is C++)");
        if let Err(e) = crate::apt_install_quietly(&["g++"]) {
            eprintln!("xtask: apt-get install g++ failed: {e:#}");
        }
    } else {
        eprintln!("xtask: no C++ compiler and cannot install one (need root and apt-get)");
    }
}

/// Seeds made from the tree rather than committed twice: the README's full configuration
/// (every key with its default) for the loader.
fn write_generated_seeds(env: &Env, dir: &Path) -> Result<()> {
    let config_dir = dir.join("config_loader");
    std::fs::create_dir_all(&config_dir)?;
    let readme = std::fs::read_to_string(env.root.join("README.md"))?;
    for (i, block) in toml_blocks(&readme).into_iter().enumerate() {
        std::fs::write(config_dir.join(format!("readme-{i}.toml")), block)?;
    }
    Ok(())
}

/// The bodies of the ```toml blocks of a Markdown text.
fn toml_blocks(markdown: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("```toml\n") {
        let body = &rest[start + "```toml\n".len()..];
        let Some(end) = body.find("```") else { break };
        blocks.push(&body[..end]);
        rest = &body[end + 3..];
    }
    blocks
}

fn run_target(
    env: &Env,
    bin_dir: &Path,
    work: &Path,
    generated: &Path,
    target: &'static str,
    opts: &Options,
) -> Result<TargetResult> {
    let corpus = work.join("corpus").join(target);
    let artifacts = work.join("artifacts").join(target);
    std::fs::create_dir_all(&corpus)?;
    std::fs::create_dir_all(&artifacts)?;
    let mut cmd = Command::new(bin_dir.join(target));
    // The first directory is where new inputs go; the others are only read.
    cmd.arg(&corpus);
    for seeds in [
        env.root.join("fuzz/seeds").join(target),
        generated.join(target),
    ] {
        if seeds.is_dir() {
            cmd.arg(seeds);
        }
    }
    cmd.arg(format!("-max_total_time={}", opts.seconds))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .arg("-timeout=10")
        .arg("-rss_limit_mb=2048")
        .arg("-max_len=4096");
    if let Some(dict) = TARGETS.iter().find(|(t, _)| *t == target).and_then(|t| t.1) {
        cmd.arg(format!(
            "-dict={}",
            env.root.join("fuzz/dicts").join(dict).display()
        ));
    }
    if let Some(seed) = opts.seed {
        cmd.arg(format!("-seed={seed}"));
    }
    let t0 = Instant::now();
    let log = work.join(format!("{target}.log"));
    let out = run_bounded(&mut cmd, &log, Duration::from_secs(opts.seconds + 120))
        .with_context(|| format!("running fuzz target {target}"))?;
    let seconds = t0.elapsed().as_secs_f64();
    let stats = parse_stats(&out.log);
    let crash = (!out.success).then(|| {
        let reproducer = find_reproducer(&out.log);
        let why = crash_reason(&out.log);
        if let Some(p) = &reproducer {
            eprintln!(
                "fuzz {target}: FAILED ({why}); replay with:\n  {} {}",
                bin_dir.join(target).display(),
                p.display()
            );
        } else {
            eprintln!(
                "fuzz {target}: FAILED ({why}); last lines:\n{}",
                tail(&out.log, 30)
            );
        }
        (reproducer, why)
    });
    if crash.is_none() {
        eprintln!(
            "fuzz {target}: {} execs ({}/s), cov {}, ft {}, corpus {}",
            stats.execs, stats.execs_per_s, stats.cov, stats.ft, stats.corpus_units
        );
    }
    Ok(TargetResult {
        target,
        seconds,
        stats,
        crash,
    })
}

struct RunOutput {
    success: bool,
    log: String,
}

/// Runs a fuzzer with its stderr captured to `log_path`, killed if it outlives `limit` (libFuzzer
/// stops itself at `-max_total_time`; this is only the guard against a hang outside a unit).
fn run_bounded(cmd: &mut Command, log_path: &Path, limit: Duration) -> Result<RunOutput> {
    let log = std::fs::File::create(log_path)?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Kept next to the report: the whole libFuzzer output of the last run of this target.
    let log = String::from_utf8_lossy(&std::fs::read(log_path)?).into_owned();
    Ok(match status {
        Some(s) => RunOutput {
            success: s.success(),
            log,
        },
        None => RunOutput {
            success: false,
            log: format!("{log}\nxtask: killed after {} s", limit.as_secs()),
        },
    })
}

/// libFuzzer's final numbers: the `stat::` lines and the last progress line's `cov:`, `ft:`
/// and `corp:` fields.
pub fn parse_stats(log: &str) -> RunStats {
    let mut s = RunStats::default();
    for line in log.lines() {
        if let Some(v) = line.strip_prefix("stat::number_of_executed_units:") {
            s.execs = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("stat::average_exec_per_sec:") {
            s.execs_per_s = v.trim().parse().unwrap_or(0);
        } else if line.starts_with('#') && line.contains(" cov: ") {
            let field = |name: &str| -> Option<u64> {
                let rest = line.split(name).nth(1)?;
                let word = rest.split_whitespace().next()?;
                word.split('/').next()?.parse().ok()
            };
            s.cov = field(" cov: ").unwrap_or(s.cov);
            s.ft = field(" ft: ").unwrap_or(s.ft);
            s.corpus_units = field(" corp: ").unwrap_or(s.corpus_units);
        }
    }
    s
}

fn find_reproducer(log: &str) -> Option<PathBuf> {
    log.lines()
        .find_map(|l| l.split_once("Test unit written to "))
        .map(|(_, p)| PathBuf::from(p.trim()))
}

/// The panic message, or libFuzzer's one-line summary of what went wrong.
fn crash_reason(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    if let Some(i) = lines.iter().position(|l| l.contains("panicked at")) {
        let msg = lines.get(i + 1).copied().unwrap_or_default();
        let why = format!("{} {}", lines[i].trim(), msg.trim());
        // A panic message may print a whole value; the report keeps the start of it.
        return match why.char_indices().nth(240) {
            Some((cut, _)) => format!("{}…", &why[..cut]),
            None => why,
        };
    }
    lines
        .iter()
        .find(|l| l.starts_with("SUMMARY:") || l.contains("ERROR: libFuzzer"))
        .map(|l| l.trim().to_owned())
        .or_else(|| lines.last().map(|l| l.trim().to_owned()))
        .unwrap_or_else(|| "no output".into())
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn render_report(results: &[TargetResult], seconds: u64) -> String {
    let mut r = String::new();
    let _ = writeln!(
        r,
        "# Fuzzing report\n\nlibFuzzer on stable rustc (SanitizerCoverage, no ASan), {seconds} s per \
         target, corpus replayed first.\n\n\
         | target | result | seconds | execs | execs/s | cov (edges) | features | corpus |\n\
         |---|---|---:|---:|---:|---:|---:|---:|"
    );
    for t in results {
        let result = match &t.crash {
            None => "ok".to_owned(),
            Some((Some(p), why)) => format!("CRASH {why} ({})", p.display()),
            Some((None, why)) => format!("FAILED {why}"),
        };
        let s = &t.stats;
        let _ = writeln!(
            r,
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            t.target,
            result.replace('|', "\\|"),
            t.seconds,
            s.execs,
            s.execs_per_s,
            s.cov,
            s.ft,
            s.corpus_units
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_final_numbers() {
        let log = "INFO: Seed: 1\n\
                   #2\tINITED cov: 10 ft: 11 corp: 1/1b exec/s: 0 rss: 28Mb\n\
                   #13385305\tDONE   cov: 161 ft: 479 corp: 282/26Kb lim: 4096 exec/s: 637395 rss: 28Mb\n\
                   Done 13385305 runs in 21 second(s)\n\
                   stat::number_of_executed_units: 13385305\n\
                   stat::average_exec_per_sec:     637395\n\
                   stat::new_units_added:          2361\n";
        assert_eq!(
            parse_stats(log),
            RunStats {
                execs: 13_385_305,
                execs_per_s: 637_395,
                cov: 161,
                ft: 479,
                corpus_units: 282,
            }
        );
    }

    #[test]
    fn a_crash_names_its_panic_and_reproducer() {
        let log = "#1 INITED cov: 3 ft: 3 corp: 1/1b\n\
                   thread '<unnamed>' (20162) panicked at fuzz_targets/jwt_token.rs:36:53:\n\
                   a valid verifier: no keys\n\
                   ==20162== ERROR: libFuzzer: deadly signal\n\
                   artifact_prefix='a/'; Test unit written to a/crash-8768a53e\n";
        assert_eq!(
            find_reproducer(log),
            Some(PathBuf::from("a/crash-8768a53e"))
        );
        let why = crash_reason(log);
        assert!(
            why.contains("jwt_token.rs:36:53") && why.contains("no keys"),
            "{why}"
        );
    }

    #[test]
    fn finds_the_readme_toml_blocks() {
        let md = "x\n```toml\n[a]\nb = 1\n```\ny\n```sh\nz\n```\n```toml\nc = 2\n```\n";
        assert_eq!(toml_blocks(md), vec!["[a]\nb = 1\n", "c = 2\n"]);
    }

    #[test]
    fn every_target_is_built_by_the_fuzz_crate() {
        let manifest = include_str!("../../fuzz/Cargo.toml");
        for (t, dict) in TARGETS {
            assert!(manifest.contains(&format!("name = \"{t}\"")), "{t}");
            if let Some(d) = dict {
                let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../fuzz/dicts")
                    .join(d);
                assert!(path.is_file(), "{}", path.display());
            }
        }
        assert_eq!(manifest.matches("[[bin]]").count(), TARGETS.len());
    }
}
