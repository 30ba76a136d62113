//! `cargo xtask vmtest [--kernel bookworm|sid] [--exec "SHELL COMMAND"]`: the kTLS tests
//! inside a QEMU guest.
//!
//! The host kernel has no `CONFIG_TLS`, so kTLS is tested in a guest running Debian's generic
//! kernel (fetched with `apt-get download`, unpacked with `dpkg -x`, never installed), booted in
//! software emulation (`/dev/kvm` cannot boot it on these machines). A small initramfs (static
//! busybox, the modules for virtio-9p, `tls` and the AEAD crypto) has an `/init` that mounts the
//! host's `/` read-only over virtio-9p, chroots into it and runs one job from a script in a
//! read-write 9p share. Host-built test binaries run unchanged in the guest (same glibc).
//! Measured recipe: `shared/notes/ktls-vm.md`.
//!
//! Without `--exec` the job is, in one boot: the `ktls` test target of `wssedge`, the kernel
//! tests of the eBPF limiter (`ebpf::tests` of the `wssedge` lib, as root: none may skip) and the
//! e2e per-IP scenario with `ip_limiter = "ebpf"`; as a layer of `cargo xtask test` it prints
//! the usual `vmtest: N passed, ...` line, with the counts per part and the eBPF release path.
//!
//! The kernels ([`kernel`]): Debian 12's 6.1 (`bookworm`, the kernel of the hosts this edge is
//! for) and the newest Debian ships (`sid`). The layer boots each once and runs every test in
//! that boot, a line per kernel and one total; `--kernel bookworm|sid` picks one (and is the
//! kernel `--exec` boots: bookworm unless given).
//!
//! Everything lives in `target/vmtest/`: `kernel/<suite>/<package>/` (the unpacked kernel, kept),
//! `initramfs-<kver>.cpio` (rebuilt only when its inputs change), `share/` (job script, exit
//! code, and whatever the job writes there) and `console.log` (the guest's serial console).

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod kernel;

use self::kernel::{depmod, ensure_kernel, Kernel, Suite};
use super::{
    apt_install, banner, cargo_build_json, is_root, parse_cargo_test, which, Counts, Env, Guard,
    Outcome,
};

/// Host packages: QEMU, the busybox the initramfs is made of, and `depmod`.
const PACKAGES: [&str; 3] = ["qemu-system-x86", "busybox-static", "kmod"];
const QEMU: &str = "qemu-system-x86_64";

/// The guest's modules; their dependencies are added from `modules.dep`.
const MODULES: &[&str] = &[
    // The host's `/` and the share over virtio-9p.
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    // kTLS itself.
    "tls",
    // sock_diag for `ss`: without them it silently falls back to /proc/net/tcp, which has no
    // ULP line (`tcp-ulp-tls ... rxconf: sw txconf: sw`) for the tests to check.
    "tcp_diag",
    "udp_diag",
    "unix_diag",
    // AES-GCM: the generic templates (autoloaded by the crypto API) and the AES-NI/CLMUL code.
    "gcm",
    "ctr",
    "ghash_generic",
    "aesni_intel",
    "ghash_clmulni_intel",
    // ChaCha20-Poly1305 (template `rfc7539`), generic and x86-64; 7.x names the ChaCha cipher
    // `chacha` and keeps the x86-64 code in `libchacha`/`libpoly1305`.
    "chacha20poly1305",
    "chacha",
    "chacha_generic",
    "poly1305_generic",
    "chacha_x86_64",
    "poly1305_x86_64",
];
/// Crypto implementations whose modules differ between kernels: 6.1 has `chacha_generic`,
/// `chacha_x86_64`, `ghash_generic`...; 7.x folds the x86-64 code into `lib/crypto`
/// (`libchacha`, `libpoly1305`, `gcm`'s own GHASH, pulled in through `modules.dep`) and names
/// the cipher `chacha`. Each is taken where the kernel has it and skipped where it does not.
const MODULES_WHERE_PRESENT: &[&str] = &[
    "ghash_generic",
    "ghash_clmulni_intel",
    "chacha_generic",
    "chacha",
    "poly1305_generic",
    "chacha_x86_64",
    "poly1305_x86_64",
];
/// Loaded by `/init` before anything else (the 9p root needs them, `tls` must be there).
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "tls"];
/// On a real host udev loads these from the CPU's modalias; loading them in the guest makes kTLS
/// use the same implementations as in production. The templates still autoload.
const CPU_MODULES: &[&str] = &[
    "aesni_intel",
    "ghash_clmulni_intel",
    "chacha_x86_64",
    "poly1305_x86_64",
];

/// Console lines from the guest's `/init`: the job starts, the job ended with this status.
const START_MARKER: &str = "WSSEDGE-VMTEST-START";
const EXIT_MARKER: &str = "WSSEDGE-VMTEST-EXIT=";
/// The job's status when `/init` itself failed before or around it.
const INIT_FAILED: i32 = 125;

const TIMEOUT_ENV: &str = "WSSEDGE_VMTEST_TIMEOUT_S";
/// Where in the share the guest tests leave what they measured (`WSSEDGE_VMTEST_OUT`).
const FINDINGS_DIR: &str = "findings";
/// In the guest: scratch space (TMPDIR, HOME) and the read-write share, both on a tmpfs at /run.
const GUEST_TMP: &str = "/run/tmp";
const GUEST_SHARE: &str = "/run/share";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(9 * 60);
/// apt-get download/update of a 70 MB package; generous, but bounded.
const APT_LIMIT: Duration = Duration::from_secs(5 * 60);
/// QEMU exits right after `poweroff -f`; this only bounds a guest that fails to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(20);
/// A guest that has not printed its start marker by then is stuck in its boot (it takes 10–20 s
/// under TCG): killed and booted again like a boot that failed, instead of holding the layer
/// until the whole timeout and failing it (a bookworm boot hung so once in CI).
const BOOT_LIMIT: Duration = Duration::from_secs(150);

/// Bump when the initramfs layout or the cpio writer changes, to force a rebuild.
const INITRAMFS_FORMAT: &str = "wssedge-vmtest-initramfs-1";

// ---------------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------------

/// `cargo xtask vmtest [--kernel bookworm|sid] [--exec CMD]`.
pub fn run(args: &[String]) -> Result<bool> {
    let args = parse_args(args)?;
    match args.exec {
        None => {
            if let Some(one) = args.suite {
                LAYER_SUITE
                    .set(one)
                    .expect("the layer's kernel is chosen once");
            }
            super::run_tests(&["vmtest"])
        }
        Some(command) => run_exec(&Env::detect(), args.suite.unwrap_or_default(), &command),
    }
}

/// The one kernel `cargo xtask vmtest --kernel` chose for the layer (unset: every kernel).
static LAYER_SUITE: OnceLock<Suite> = OnceLock::new();

const USAGE: &str = "usage: cargo xtask vmtest [--kernel bookworm|sid] [--exec \"SHELL COMMAND\"]";

#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    /// `None`: every kernel (the layer) or bookworm (`--exec`).
    suite: Option<Suite>,
    /// `None` means the kTLS tests.
    exec: Option<String>,
}

/// `--kernel NAME` and `--exec CMD` (or `--kernel=NAME`, `--exec=CMD`).
fn parse_args(args: &[String]) -> Result<Args> {
    let mut out = Args::default();
    let mut kernel = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (a.as_str(), None),
        };
        let mut value = || -> Result<String> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag {
            "--exec" => {
                if out.exec.replace(value()?).is_some() {
                    bail!("--exec given twice");
                }
            }
            "--kernel" => {
                if kernel.replace(Suite::parse(&value()?)?).is_some() {
                    bail!("--kernel given twice");
                }
            }
            _ => bail!("unknown argument {a:?} ({USAGE})"),
        }
    }
    out.suite = kernel;
    Ok(out)
}

/// The `vmtest` layer of `cargo xtask test`: the kTLS and eBPF tests in each guest.
pub fn layer(env: &Env) -> Result<Outcome> {
    if !has_ktls_target(env)? {
        return Ok(Outcome::Skipped(
            "package wssedge has no `ktls` test target yet (tests/ktls); \
             `cargo xtask vmtest --exec CMD` still runs a command in the guest"
                .into(),
        ));
    }
    let tests = build_guest_tests(env)?;
    // Every kernel of the matrix, or the one `--kernel` chose; each booted once for all tests.
    let suites = match LAYER_SUITE.get() {
        Some(one) => vec![*one],
        None => Suite::ALL.to_vec(),
    };
    let mut total = Counts::default();
    let mut lines = Vec::new();
    for suite in suites {
        let vm = match Vm::prepare(env, suite) {
            Ok(vm) => vm,
            // One kernel that cannot run here skips the layer, as a missing tool does: CI
            // counts that as a failure, a developer's machine as a skip.
            Err(e) => return skip_or_fail(e, suite),
        };
        let t0 = Instant::now();
        let (c, parts, release) = run_guest_tests(&vm, &tests)?;
        lines.push(format!(
            "vmtest ({suite}, {}): {} passed, {} failed, {} skipped ({:.1} s) [{parts}; eBPF release: {release}]",
            vm.kernel.version,
            c.passed,
            c.failed,
            c.skipped,
            t0.elapsed().as_secs_f64()
        ));
        total.passed += c.passed;
        total.failed += c.failed;
        total.skipped += c.skipped;
    }
    for line in lines {
        println!("{line}");
    }
    Ok(Outcome::Ran(total))
}

/// What runs in each guest, in this order, one boot for all: the kTLS tests, the kernel tests
/// of the eBPF limiter (the `wssedge` lib's `ebpf::tests`) and the e2e per-IP scenario with
/// `ip_limiter = "ebpf"` (the real binary, its start-up self-test included).
const GUEST_PARTS: [(&str, &str); 3] = [
    ("kTLS", ""),
    ("eBPF", "ebpf::tests::"),
    (
        "e2e eBPF",
        "ip_limits::the_ebpf_limiter_refuses_the_syn --exact",
    ),
];
/// Boots per kernel at most, when the guest never reaches its job (an emulated early-boot
/// failure, not a test's).
const BOOTS: u32 = 3;
/// Console line before each part's output (`<marker> <index>`).
const PART_MARKER: &str = "WSSEDGE-VMTEST-PART";
/// The finding `ebpf::tests` leaves: which path releases the slots of dead handshakes.
const RELEASE_FINDING: &str = "ebpf-release-path";

/// The guest tests in one guest. A guest that never reached its job (the emulated boot
/// of a newer kernel panics now and then, before any test ran) is booted again, up to [`BOOTS`] times.
/// Returns the total, `kTLS a/b, ...` per part, and the eBPF release path the tests reported.
fn run_guest_tests(vm: &Vm, tests: &GuestTests) -> Result<(Counts, String, String)> {
    // The tests write what they measured (memory per connection, key-limit and KeyUpdate
    // behaviour, the eBPF release path) here; the host prints it after the run.
    let findings = vm.share().join(FINDINGS_DIR);
    let exes = [&tests.ktls, &tests.lib, &tests.e2e];
    let mut command = String::from("rc=0\n");
    for (i, ((_, filter), exe)) in GUEST_PARTS.iter().zip(exes).enumerate() {
        // libtest colours its output when stdout is a tty, and the guest's console is one.
        command.push_str(&format!(
            "echo {PART_MARKER} {i}\n{} {filter} --test-threads=1 --color=never || rc=1\n",
            shell_quote(&exe.display().to_string())
        ));
    }
    command.push_str("exit $rc");
    let job = Job {
        dir: tests.manifest_dir.clone(),
        env: vec![
            (
                "CARGO_MANIFEST_DIR".into(),
                tests.manifest_dir.display().to_string(),
            ),
            (
                "WSSEDGE_VMTEST_OUT".into(),
                format!("{GUEST_SHARE}/{FINDINGS_DIR}"),
            ),
        ],
        command,
    };
    let mut run = vm.run(&job)?;
    // A boot that fails this way is independent of the last (about 1 in 8 for 7.2 under TCG):
    // three boots make a red layer from it about 1 in 500 instead of 1 in 64.
    for attempt in 1..BOOTS {
        if run.boot.is_some() || run.timed_out.is_some() {
            break;
        }
        eprintln!(
            "vmtest: {}; booting once more",
            run.failure(&vm.console_log())
        );
        let kept = vm
            .console_log()
            .with_extension(format!("failed-boot-{attempt}.log"));
        let _ = std::fs::rename(vm.console_log(), &kept);
        run = vm.run(&job)?;
    }
    print_findings(&findings);
    let release = fs::read_to_string(findings.join(RELEASE_FINDING))
        .ok()
        .and_then(|t| Some(t.split_once(": ")?.1.trim().to_string()))
        .unwrap_or_else(|| "not reported".into());
    let parts = part_counts(&run.job_output);
    Ok((test_counts(&run, &vm.console_log()), parts, release))
}

/// `kTLS 17/17, eBPF 6/6, e2e eBPF 1/1` (passed/run) from the job's output.
fn part_counts(output: &str) -> String {
    let mut text: Vec<String> = vec![String::new(); GUEST_PARTS.len()];
    let mut current = None;
    for line in output.lines() {
        if let Some(i) = line.trim().strip_prefix(PART_MARKER) {
            current = i.trim().parse::<usize>().ok().filter(|i| *i < text.len());
        } else if let Some(i) = current {
            text[i].push_str(line);
            text[i].push('\n');
        }
    }
    GUEST_PARTS
        .iter()
        .zip(&text)
        .map(|((name, _), out)| {
            let c = parse_cargo_test(out);
            format!("{name} {}/{}", c.passed, c.passed + c.failed)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Prints the measurements the guest tests left in `dir` (one file each).
fn print_findings(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    files.sort();
    for file in files {
        if let Ok(text) = fs::read_to_string(&file) {
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            println!("vmtest finding ({name}):\n{}", text.trim_end());
        }
    }
}

fn run_exec(env: &Env, suite: Suite, command: &str) -> Result<bool> {
    let vm = Vm::prepare(env, suite)?;
    let job = Job {
        dir: env.root.clone(),
        env: Vec::new(),
        command: command.to_string(),
    };
    let run = vm.run(&job)?;
    let log = vm.console_log();
    match run.exit {
        Some(rc) => {
            println!("vmtest: job exited with status {rc} ({})", run.timing());
            Ok(rc == 0)
        }
        None => {
            println!("vmtest: {} ({})", run.failure(&log), run.timing());
            Ok(false)
        }
    }
}

/// A reason the guest cannot run on this machine (a skip, not a failure, outside CI).
#[derive(Debug)]
struct CannotRun(String);

impl fmt::Display for CannotRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CannotRun {}

fn cannot_run(reason: impl Into<String>) -> anyhow::Error {
    CannotRun(reason.into()).into()
}

fn skip_or_fail(e: anyhow::Error, suite: Suite) -> Result<Outcome> {
    match e.downcast::<CannotRun>() {
        Ok(CannotRun(reason)) => Ok(Outcome::Skipped(format!("{suite}: {reason}"))),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// The kTLS test binary
// ---------------------------------------------------------------------------------------------

struct TestBinary {
    exe: PathBuf,
    /// cargo runs integration tests from their package's directory; so do we.
    manifest_dir: PathBuf,
}

/// The test executables of one build (one `wssedge` binary, which the kTLS and e2e tests spawn).
struct GuestTests {
    ktls: PathBuf,
    lib: PathBuf,
    e2e: PathBuf,
    manifest_dir: PathBuf,
}

fn has_ktls_target(env: &Env) -> Result<bool> {
    let out = env
        .cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("spawn cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed ({})", out.status);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parse cargo metadata")?;
    let targets = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == "wssedge")
        .flat_map(|p| p["targets"].as_array().into_iter().flatten());
    Ok(targets.into_iter().any(|t| {
        t["name"] == "ktls"
            && t["kind"]
                .as_array()
                .is_some_and(|k| k.contains(&"test".into()))
    }))
}

/// Builds the `ktls` and `e2e` tests, the `wssedge` lib's unit tests and the `wssedge` binary
/// the integration tests spawn, in one cargo run (so they share that binary).
fn build_guest_tests(env: &Env) -> Result<GuestTests> {
    let args = [
        "test",
        "-p",
        "wssedge",
        "--test",
        "ktls",
        "--test",
        "e2e",
        "--lib",
        "--no-run",
        "--profile",
        "ci",
    ];
    let messages = cargo_build_json(env, &args, "the guest tests")?;
    let find = |name: &str| {
        find_test_executable(&messages, name)
            .with_context(|| format!("cargo reported no test executable for `{name}`"))
    };
    let ktls = find("ktls")?;
    Ok(GuestTests {
        lib: find("wssedge")?.exe,
        e2e: find("e2e")?.exe,
        ktls: ktls.exe,
        manifest_dir: ktls.manifest_dir,
    })
}

/// The `compiler-artifact` of test target `name` in cargo's JSON messages.
fn find_test_executable(messages: &str, name: &str) -> Option<TestBinary> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact")
        .filter(|m| m["target"]["name"] == name && m["profile"]["test"] == true)
        .find_map(|m| {
            let exe = PathBuf::from(m["executable"].as_str()?);
            let manifest = PathBuf::from(m["manifest_path"].as_str()?);
            Some(TestBinary {
                exe,
                manifest_dir: manifest.parent()?.to_path_buf(),
            })
        })
}

/// libtest's summary lines, or one failure when the run itself went wrong.
fn test_counts(run: &GuestRun, log: &Path) -> Counts {
    let mut c = parse_cargo_test(&run.job_output);
    let failing: Vec<&str> = run
        .job_output
        .lines()
        .filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED"))
        .collect();
    if !failing.is_empty() {
        eprintln!("vmtest: failing tests: {}", failing.join(", "));
    }
    match run.exit {
        Some(0) => {}
        Some(rc) if c.failed == 0 => {
            // A crashed test binary or a broken guest: no "test result" line tells us.
            eprintln!(
                "vmtest: the test binary exited with {rc} without reporting a failed test: \
                 counting one failure (console: {})",
                log.display()
            );
            c.failed = 1;
        }
        Some(_) => {}
        None => {
            eprintln!("vmtest: {}", run.failure(log));
            c.failed += 1;
        }
    }
    eprintln!("vmtest: {}", run.timing());
    c
}

// ---------------------------------------------------------------------------------------------
// The guest
// ---------------------------------------------------------------------------------------------

/// One command for the guest: run from `dir` with `env` added to the standard environment.
struct Job {
    dir: PathBuf,
    env: Vec<(String, String)>,
    command: String,
}

struct Vm {
    /// `target/vmtest`.
    dir: PathBuf,
    qemu: PathBuf,
    kernel: Kernel,
    initramfs: PathBuf,
    timeout: Duration,
}

struct GuestRun {
    /// The job's exit status from the exit marker; `None` when the marker never came.
    exit: Option<i32>,
    timed_out: Option<Duration>,
    /// From starting QEMU to the job's first line.
    boot: Option<Duration>,
    total: Duration,
    /// Console lines between the start and exit markers.
    job_output: String,
}

impl GuestRun {
    fn timing(&self) -> String {
        let boot = self.boot.map_or("guest did not boot".into(), |b| {
            format!("boot {:.1} s", b.as_secs_f64())
        });
        format!("{boot}, total {:.1} s", self.total.as_secs_f64())
    }

    fn failure(&self, log: &Path) -> String {
        match (self.timed_out, self.boot) {
            (Some(t), _) => format!(
                "the guest did not finish within {} s ({TIMEOUT_ENV} to change); QEMU was killed, \
                 see {}",
                t.as_secs(),
                log.display()
            ),
            (None, None) => format!(
                "QEMU exited before the guest started the job (kernel panic or broken initramfs?); \
                 see {}",
                log.display()
            ),
            (None, Some(_)) => format!(
                "QEMU exited without the `{EXIT_MARKER}` line (guest crashed?); see {}",
                log.display()
            ),
        }
    }
}

impl Vm {
    /// Everything the guest needs on the host, fetched or built once and cached.
    fn prepare(env: &Env, suite: Suite) -> Result<Vm> {
        if !is_root() {
            return Err(cannot_run(
                "needs root (apt-get for qemu/busybox/kmod, the host's / exported to the guest)",
            ));
        }
        let timeout = timeout_from_env()?;
        let tools = ensure_tools()?;
        let dir = env.target.join("vmtest");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let kernel = ensure_kernel(&dir, suite, &tools)?;
        let initramfs = ensure_initramfs(&dir, &kernel, &tools)?;
        Ok(Vm {
            dir,
            qemu: tools.qemu,
            kernel,
            initramfs,
            timeout,
        })
    }

    fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }

    fn share(&self) -> PathBuf {
        self.dir.join("share")
    }

    /// Boots the guest, runs `job`, and returns once QEMU is gone (exited or killed).
    fn run(&self, job: &Job) -> Result<GuestRun> {
        let _lock = lock_dir(&self.dir, self.timeout)?;
        self.write_share(job)?;
        banner(&format!(
            "vmtest: booting {} ({}; console also in {})",
            self.kernel.version,
            self.kernel.suite,
            self.console_log().display()
        ));
        let mut cmd = self.qemu_command();
        eprintln!("$ {cmd:?}");
        let t0 = Instant::now();
        let mut qemu = Guard {
            name: "qemu",
            child: cmd
                .spawn()
                .with_context(|| format!("spawn {}", self.qemu.display()))?,
            group: false,
        };
        let stdout = qemu.child.stdout.take().expect("piped stdout");
        let log = File::create(self.console_log())
            .with_context(|| format!("create {}", self.console_log().display()))?;
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || stream_console(stdout, log, &tx));
        let (exit, boot, timed_out) = wait_for_guest(&rx, t0, self.timeout, BOOT_LIMIT);
        if timed_out {
            eprintln!(
                "vmtest: timeout after {} s, killing QEMU",
                self.timeout.as_secs()
            );
        } else {
            // The console closed or the guest powered off: QEMU is exiting on its own.
            wait_exit(&mut qemu, POWEROFF_GRACE);
        }
        drop(qemu); // kills QEMU (by its PID) if it is still running
        let console = reader.join().unwrap_or_default();
        Ok(GuestRun {
            exit,
            timed_out: timed_out.then_some(self.timeout),
            boot: boot.map(|b| b - t0),
            total: t0.elapsed(),
            job_output: job_lines(&console),
        })
    }

    /// A fresh share with the job script (the guest sees it at [`GUEST_SHARE`]) and an empty
    /// findings folder.
    fn write_share(&self, job: &Job) -> Result<()> {
        let share = self.share();
        let _ = std::fs::remove_dir_all(&share);
        std::fs::create_dir_all(&share).with_context(|| format!("create {}", share.display()))?;
        std::fs::write(share.join("job.sh"), job_script(job))?;
        std::fs::create_dir_all(share.join(FINDINGS_DIR))?;
        Ok(())
    }

    fn qemu_command(&self) -> Command {
        let mut c = Command::new(&self.qemu);
        // -nographic would route SeaBIOS's VGA text through the serial port, terminal resets
        // (ESC c) included; a serial-only machine keeps the console clean.
        c.args([
            "-accel",
            "tcg,thread=multi",
            "-cpu",
            "max",
            "-smp",
            "2",
            "-m",
            "2048",
        ])
        .args([
            "-display", "none", "-vga", "none", "-serial", "stdio", "-monitor", "none",
        ])
        .args(["-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(&self.kernel.vmlinuz)
        .arg("-initrd")
        .arg(&self.initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .arg("-virtfs")
        .arg(virtfs(Path::new("/"), "hostroot", true))
        .arg("-virtfs")
        .arg(virtfs(&self.share(), "share", false));
        c.stdin(Stdio::null()).stdout(Stdio::piped());
        c
    }
}

fn timeout_from_env() -> Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(DEFAULT_TIMEOUT),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Ok(Duration::from_secs(s)),
            _ => bail!("{TIMEOUT_ENV} must be a positive number of seconds, got {v:?}"),
        },
    }
}

fn wait_exit(child: &mut Guard, limit: Duration) {
    let t0 = Instant::now();
    while child.exited().is_none() && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One vmtest at a time: the share and the console log are per directory.
fn lock_dir(dir: &Path, limit: Duration) -> Result<File> {
    let path = dir.join("lock");
    let f = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let (t0, mut warned) = (Instant::now(), false);
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if t0.elapsed() < limit => {
                if !warned {
                    warned = true;
                    eprintln!(
                        "vmtest: waiting for another vmtest run ({})",
                        path.display()
                    );
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => bail!(
                "cannot lock {} (another vmtest still running?): {e}",
                path.display()
            ),
        }
    }
}

/// `-virtfs` for a host directory (QEMU option values escape `,` as `,,`).
fn virtfs(path: &Path, tag: &str, readonly: bool) -> String {
    let path = path.display().to_string().replace(',', ",,");
    // multidevs=remap: the host's / spans several filesystems; keep inode numbers unique.
    let mut s = format!("local,path={path},mount_tag={tag},security_model=none,multidevs=remap");
    if readonly {
        s.push_str(",readonly=on");
    }
    s
}

fn job_script(job: &Job) -> String {
    let mut s = String::from("# Written by `cargo xtask vmtest`; run by the guest's /init.\n");
    s.push_str(
        "export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
         LANG=C.UTF-8 WSSEDGE_VMTEST=1 RUST_BACKTRACE=1\n",
    );
    s.push_str(&format!("export HOME={GUEST_TMP} TMPDIR={GUEST_TMP}\n"));
    for (k, v) in &job.env {
        s.push_str(&format!("export {k}={}\n", shell_quote(v)));
    }
    s.push_str(&format!(
        "cd {} || exit {INIT_FAILED}\n",
        shell_quote(&job.dir.display().to_string())
    ));
    s.push_str(&job.command);
    s.push('\n');
    s
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

enum ConsoleEvent {
    Started(Instant),
    Exited(i32),
}

/// Copies the serial console to our stdout and to `log`, reporting the markers; returns the
/// whole console text once QEMU closes it.
fn stream_console(mut out: ChildStdout, mut log: File, tx: &mpsc::Sender<ConsoleEvent>) -> String {
    let mut console = String::new();
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = match out.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&buf[..n]);
        let _ = stdout.flush();
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let raw: Vec<u8> = pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let _ = writeln!(log, "{line}");
            if let Some(ev) = marker(line) {
                let _ = tx.send(ev);
            }
            console.push_str(line);
            console.push('\n');
        }
    }
    let rest = String::from_utf8_lossy(&pending);
    let _ = write!(log, "{rest}");
    console.push_str(&rest);
    console
}

fn marker(line: &str) -> Option<ConsoleEvent> {
    if line.trim() == START_MARKER {
        return Some(ConsoleEvent::Started(Instant::now()));
    }
    let (_, rc) = line.rsplit_once(EXIT_MARKER)?;
    rc.trim().parse().ok().map(ConsoleEvent::Exited)
}

/// Waits for the exit marker and QEMU's end, bounded by `limit`: (status, start, timed out).
fn wait_for_guest(
    rx: &mpsc::Receiver<ConsoleEvent>,
    t0: Instant,
    limit: Duration,
    boot_limit: Duration,
) -> (Option<i32>, Option<Instant>, bool) {
    let mut deadline = t0 + limit;
    let boot_deadline = t0 + boot_limit;
    let (mut exit, mut started) = (None, None);
    loop {
        let now = Instant::now();
        if started.is_none() && exit.is_none() && now >= boot_deadline && boot_deadline < deadline {
            // A hung boot: not a timeout of the job; the caller boots again.
            return (None, None, false);
        }
        let next = if started.is_none() {
            deadline.min(boot_deadline.max(now))
        } else {
            deadline
        };
        let left = next.saturating_duration_since(now);
        if left.is_zero() {
            // Past the grace after the marker counts as done; otherwise it is the timeout.
            return (exit, started, exit.is_none());
        }
        match rx.recv_timeout(left) {
            Ok(ConsoleEvent::Started(at)) => started = Some(at),
            Ok(ConsoleEvent::Exited(rc)) => {
                exit = Some(rc);
                deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // The console closed: QEMU has exited.
            Err(mpsc::RecvTimeoutError::Disconnected) => return (exit, started, false),
        }
    }
}

/// The console lines between the start marker and the (last) exit marker.
fn job_lines(console: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in console.lines() {
        if line.trim() == START_MARKER {
            inside = true;
            out.clear();
        } else if line.contains(EXIT_MARKER) {
            inside = false;
        } else if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Host tools
// ---------------------------------------------------------------------------------------------

struct Tools {
    qemu: PathBuf,
    busybox: PathBuf,
    depmod: PathBuf,
}

impl Tools {
    fn find() -> Result<Tools, Vec<&'static str>> {
        let qemu = which(QEMU);
        let busybox = Some(PathBuf::from("/bin/busybox")).filter(|b| is_static_elf(b));
        let depmod = which("depmod")
            .or_else(|| Some(PathBuf::from("/usr/sbin/depmod")).filter(|p| p.is_file()));
        match (qemu, busybox, depmod) {
            (Some(qemu), Some(busybox), Some(depmod)) => Ok(Tools {
                qemu,
                busybox,
                depmod,
            }),
            (q, b, d) => Err([(q, QEMU), (b, "static /bin/busybox"), (d, "depmod")]
                .into_iter()
                .filter(|(found, _)| found.is_none())
                .map(|(_, what)| what)
                .collect()),
        }
    }
}

fn ensure_tools() -> Result<Tools> {
    let missing = match Tools::find() {
        Ok(t) => return Ok(t),
        Err(missing) => missing,
    };
    if which("apt-get").is_none() {
        return Err(cannot_run(format!(
            "missing {} and no apt-get to install {}",
            missing.join(", "),
            PACKAGES.join(" ")
        )));
    }
    banner(&format!("installing {}", PACKAGES.join(" ")));
    if let Err(e) = apt_install(&PACKAGES) {
        return Err(cannot_run(format!(
            "missing {} and apt-get install {} failed: {e:#}",
            missing.join(", "),
            PACKAGES.join(" ")
        )));
    }
    Tools::find().map_err(|missing| {
        cannot_run(format!(
            "still missing {} after installing {}",
            missing.join(", "),
            PACKAGES.join(" ")
        ))
    })
}

/// A dynamically linked busybox would panic the guest (no libc in the initramfs): require an
/// ELF without a program interpreter (PT_INTERP).
fn is_static_elf(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // 64-bit little-endian ELF only (x86-64).
    if bytes.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..usize::from(phnum)).all(|i| {
        let at = usize::try_from(phoff).unwrap_or(usize::MAX) + i * usize::from(phentsize);
        bytes
            .get(at..at + 4)
            .is_some_and(|t| u32::from_le_bytes(t.try_into().expect("4 bytes")) != 3)
    })
}

/// A command with a hard time limit; the child is killed by its PID when it runs over.
fn run_bounded(cmd: &mut Command, name: &'static str, limit: Duration) -> Result<ExitStatus> {
    eprintln!("$ {cmd:?}");
    let mut g = Guard {
        name,
        child: cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {name}"))?,
        group: false,
    };
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if let Some(s) = g.exited() {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{name} did not finish within {} s", limit.as_secs())
}

// ---------------------------------------------------------------------------------------------
// The initramfs
// ---------------------------------------------------------------------------------------------

fn ensure_initramfs(dir: &Path, kernel: &Kernel, tools: &Tools) -> Result<PathBuf> {
    let plan = module_closure(&kernel.modules, MODULES)?;
    let init = init_script(&plan.present(CPU_MODULES));
    let modules = plan.files;
    let stamp = inputs_stamp(&init, &modules, kernel, tools)?;
    let out = dir.join(format!("initramfs-{}.cpio", kernel.version));
    let stamp_file = out.with_extension("stamp");
    if out.is_file() && std::fs::read_to_string(&stamp_file).ok().as_deref() == Some(&stamp) {
        return Ok(out);
    }
    banner("vmtest: building the initramfs");
    let staging = dir.join("initramfs.d");
    stage(&staging, &init, &modules, kernel, tools)?;
    let tmp = out.with_extension("cpio.tmp");
    write_cpio(&staging, &tmp)?;
    std::fs::rename(&tmp, &out)?;
    std::fs::write(&stamp_file, &stamp)?;
    let names: Vec<String> = modules.iter().map(|m| module_name(m)).collect();
    eprintln!(
        "vmtest: {} ({} KiB) with {} modules: {}",
        out.display(),
        std::fs::metadata(&out)?.len() / 1024,
        names.len(),
        names.join(" ")
    );
    if !plan.builtin.is_empty() || !plan.absent.is_empty() {
        eprintln!(
            "vmtest: built into {}: {}; not in it (its code lives elsewhere there): {}",
            kernel.version,
            plan.builtin.join(" "),
            plan.absent.join(" ")
        );
    }
    Ok(out)
}

/// The wanted modules and everything they depend on, as paths relative to `lib/modules/<v>`.
fn module_closure(modules_dir: &Path, wanted: &[&str]) -> Result<ModulePlan> {
    let dep_file = modules_dir.join("modules.dep");
    let text = std::fs::read_to_string(&dep_file)
        .with_context(|| format!("read {}", dep_file.display()))?;
    // Packages without the list (none known) make every missing module an error.
    let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    closure_from_dep(&text, &builtin, wanted)
}

/// What goes into the initramfs, and what this kernel does not have as a module.
#[derive(Debug, PartialEq, Eq)]
struct ModulePlan {
    /// Paths relative to `lib/modules/<v>`, dependencies first.
    files: Vec<String>,
    /// Wanted modules built into this kernel (modprobe knows them from `modules.builtin`).
    builtin: Vec<String>,
    /// Wanted implementations this kernel does not have ([`MODULES_WHERE_PRESENT`]).
    absent: Vec<String>,
}

impl ModulePlan {
    /// Of `wanted`, those `/init` can load or finds built in.
    fn present<'a>(&self, wanted: &[&'a str]) -> Vec<&'a str> {
        wanted
            .iter()
            .copied()
            .filter(|m| !self.absent.iter().any(|f| f == m))
            .collect()
    }
}

fn closure_from_dep(
    modules_dep: &str,
    modules_builtin: &str,
    wanted: &[&str],
) -> Result<ModulePlan> {
    let deps: BTreeMap<String, (&str, Vec<&str>)> = modules_dep
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(path, d)| {
            (
                module_name(path).to_string(),
                (path, d.split_whitespace().collect()),
            )
        })
        .collect();
    let builtin: Vec<String> = modules_builtin.lines().map(module_name).collect();
    let mut plan = ModulePlan {
        files: Vec::new(),
        builtin: Vec::new(),
        absent: Vec::new(),
    };
    for name in wanted {
        let name = name.replace('-', "_");
        let Some((path, needs)) = deps.get(&name) else {
            if builtin.contains(&name) {
                plan.builtin.push(name);
            } else if MODULES_WHERE_PRESENT.contains(&name.as_str()) {
                plan.absent.push(name);
            } else {
                bail!(
                    "module {name} is neither in this kernel's modules.dep nor built in (renamed?)"
                );
            }
            continue;
        };
        for p in needs.iter().copied().chain([*path]) {
            if !plan.files.iter().any(|q: &String| q == p) {
                plan.files.push(p.to_string());
            }
        }
    }
    Ok(plan)
}

/// `kernel/arch/x86/crypto/aesni-intel.ko.xz` → `aesni_intel`, the name modprobe uses.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split_once(".ko").map_or(file, |(s, _)| s);
    stem.replace('-', "_")
}

/// What the initramfs is made of; a change in any of it rebuilds the archive.
fn inputs_stamp(init: &str, modules: &[String], kernel: &Kernel, tools: &Tools) -> Result<String> {
    let mut h = Fnv::default();
    h.update(INITRAMFS_FORMAT.as_bytes());
    h.update(init.as_bytes());
    h.update(kernel.version.as_bytes());
    h.update(&std::fs::read(&tools.busybox)?);
    for m in modules {
        h.update(m.as_bytes());
        h.update(&std::fs::read(kernel.modules.join(m))?);
    }
    Ok(format!("{:016x}\n", h.0))
}

/// FNV-1a, 64 bit: stable across Rust versions (unlike `DefaultHasher`), plenty for a cache key.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The initramfs tree: busybox, `/init`, `/sbin/modprobe` (the kernel's usermode helper runs
/// it to autoload crypto modules), the modules (decompressed) and depmod's indexes for them.
fn stage(
    staging: &Path,
    init: &str,
    modules: &[String],
    kernel: &Kernel,
    tools: &Tools,
) -> Result<()> {
    let _ = std::fs::remove_dir_all(staging);
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "run", "tmp", "share", "mnt/host",
    ] {
        std::fs::create_dir_all(staging.join(d))?;
    }
    std::fs::copy(&tools.busybox, staging.join("bin/busybox"))?;
    std::os::unix::fs::symlink("/bin/busybox", staging.join("sbin/modprobe"))?;
    std::fs::write(staging.join("init"), init)?;
    std::fs::set_permissions(staging.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let mod_root = staging.join("lib/modules").join(&kernel.version);
    for m in modules {
        let (rel, data) = module_contents(&kernel.modules.join(m), m)?;
        let dest = mod_root.join(rel);
        std::fs::create_dir_all(dest.parent().expect("module path has a folder"))?;
        std::fs::write(dest, data)?;
    }
    // modprobe reads these to tell built-in modules from missing ones.
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        let src = kernel.modules.join(f);
        if src.is_file() {
            std::fs::copy(&src, mod_root.join(f))?;
        }
    }
    depmod(tools, staging, &kernel.version)
}

/// A module's bytes under a `.ko` name: busybox's modprobe may lack xz/zstd support, so
/// compressed modules (newer Debian kernels; 6.1's are plain) are stored decompressed.
fn module_contents(src: &Path, rel: &str) -> Result<(String, Vec<u8>)> {
    let tool = match rel.rsplit_once(".ko") {
        Some((_, "")) => return Ok((rel.to_string(), std::fs::read(src)?)),
        Some((_, ".xz")) => "xz",
        Some((_, ".zst")) => "zstd",
        Some((_, ".gz")) => "gzip",
        _ => bail!("unexpected module file name {rel}"),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(src)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("decompressing {rel} needs {tool}; install it"))?;
    if !out.status.success() {
        bail!("{tool} -dc {} failed ({})", src.display(), out.status);
    }
    let (stem, _) = rel.rsplit_once(".ko").expect("checked above");
    Ok((format!("{stem}.ko"), out.stdout))
}

/// The guest's PID 1. It never exits (that would panic the kernel): every path ends in the
/// exit marker and `poweroff -f`.
fn init_script(cpu_modules: &[&str]) -> String {
    format!(
        r#"#!/bin/busybox sh
# /init of the wssedge vmtest guest; generated by xtask/src/vmtest.rs.
export PATH=/sbin:/bin
/bin/busybox --install -s /bin
fail() {{ echo "vmtest init: $*"; echo; echo {EXIT_MARKER}{INIT_FAILED}; poweroff -f; }}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in {boot}; do modprobe $m || fail "modprobe $m failed"; done
modprobe -a {cpu} || echo "vmtest init: CPU-specific crypto unavailable, generic code only"
H=/mnt/host
P9=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o $P9,ro,cache=loose hostroot $H || fail "cannot mount the host's / over 9p"
mount -t 9p -o $P9 share /share || fail "cannot mount the share"
# The host's / is read-only: the guest's own proc, sys, dev and tmpfs go on top.
mkdir -p /dev/pts /dev/shm
ln -s /proc/self/fd /dev/fd
mount -t proc proc $H/proc || fail "mount proc"
mount -t sysfs sysfs $H/sys || fail "mount sys"
mount --bind /dev $H/dev || fail "bind /dev"
mount -t devpts devpts $H/dev/pts || fail "mount devpts"
mount -t tmpfs -o mode=1777 tmpfs $H/dev/shm || fail "tmpfs on $H/dev/shm"
# The guest's scratch space and the share live in a tmpfs on /run. Not on /tmp: the workspace
# itself may live under the host's /tmp (a CI clone), and a tmpfs there would hide it.
mount -t tmpfs -o mode=755 tmpfs $H/run || fail "tmpfs on $H/run"
mkdir -p $H{GUEST_TMP} $H{GUEST_SHARE} && chmod 1777 $H{GUEST_TMP} || fail "scratch dirs on /run"
S={GUEST_SHARE}
mount --bind /share $H$S || fail "cannot mount the share at $S"
ip link set lo up || fail "cannot bring lo up"
echo {START_MARKER}
env -i /bin/chroot $H /bin/sh $S/job.sh </dev/null
rc=$?
echo $rc >/share/rc
sync
echo
echo {EXIT_MARKER}$rc
poweroff -f
"#,
        boot = BOOT_MODULES.join(" "),
        GUEST_TMP = GUEST_TMP,
        GUEST_SHARE = GUEST_SHARE,
        cpu = cpu_modules.join(" "),
    )
}

// ---------------------------------------------------------------------------------------------
// cpio (newc), the initramfs format: written here rather than depending on a cpio tool
// ---------------------------------------------------------------------------------------------

fn write_cpio(staging: &Path, out: &Path) -> Result<()> {
    let mut archive = Cpio::default();
    // The kernel opens /dev/console for /init's stdio before /init runs.
    archive.entry("dev/console", 0o020_600, (5, 1), &[]);
    add_tree(&mut archive, staging, staging)?;
    std::fs::write(out, archive.finish()).with_context(|| format!("write {}", out.display()))
}

/// Directories before their contents, sorted: the same inputs give the same archive.
fn add_tree(archive: &mut Cpio, root: &Path, dir: &Path) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .strip_prefix(root)?
            .to_str()
            .context("non-UTF-8 path")?
            .to_string();
        let meta = std::fs::symlink_metadata(&path)?;
        let perm = meta.permissions().mode() & 0o7777;
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            let target = target.to_str().context("non-UTF-8 link")?;
            archive.entry(&name, 0o120_000 | 0o777, (0, 0), target.as_bytes());
        } else if meta.is_dir() {
            archive.entry(&name, 0o040_000 | perm, (0, 0), &[]);
            add_tree(archive, root, &path)?;
        } else {
            archive.entry(&name, 0o100_000 | perm, (0, 0), &std::fs::read(&path)?);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Cpio {
    bytes: Vec<u8>,
    next_ino: u32,
}

impl Cpio {
    /// One `070701` record: header, NUL-terminated name and data, each padded to 4 bytes.
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.next_ino += 1;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.next_ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            u32::try_from(data.len()).expect("initramfs file under 4 GiB"),
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for f in fields {
            self.bytes.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn exec_arguments() {
        let exec = |v: &[&str]| parse_args(&s(v)).map(|a| a.exec);
        assert_eq!(parse_args(&[]).unwrap(), Args::default());
        assert_eq!(
            exec(&["--exec", "uname -r; ls"]).unwrap().as_deref(),
            Some("uname -r; ls")
        );
        assert_eq!(exec(&["--exec=true"]).unwrap().as_deref(), Some("true"));
        assert!(parse_args(&s(&["--exec"])).is_err());
        assert!(parse_args(&s(&["--exec", "a", "--exec", "b"])).is_err());
        assert!(parse_args(&s(&["--nope"])).is_err());
    }

    #[test]
    fn kernel_arguments() {
        let suite = |v: &[&str]| parse_args(&s(v)).map(|a| a.suite);
        assert_eq!(suite(&[]).unwrap(), None);
        assert_eq!(suite(&["--kernel", "sid"]).unwrap(), Some(Suite::Sid));
        assert_eq!(
            suite(&["--kernel=bookworm"]).unwrap(),
            Some(Suite::Bookworm)
        );
        assert_eq!(
            parse_args(&s(&["--kernel", "sid", "--exec", "uname -r"])).unwrap(),
            Args {
                suite: Some(Suite::Sid),
                exec: Some("uname -r".into())
            }
        );
        assert!(suite(&["--kernel", "trixie"]).is_err());
        assert!(suite(&["--kernel"]).is_err());
        assert!(suite(&["--kernel", "sid", "--kernel", "sid"]).is_err());
    }

    #[test]
    fn finds_the_test_executable() {
        let lines = r#"{"reason":"compiler-artifact","target":{"name":"wssedge"},"profile":{"test":false},"executable":"/t/ci/wssedge","manifest_path":"/w/edge/Cargo.toml"}
{"reason":"compiler-artifact","target":{"name":"ktls"},"profile":{"test":true},"executable":"/t/ci/deps/ktls-1","manifest_path":"/w/edge/Cargo.toml"}
{"reason":"build-finished","success":true}"#;
        let t = find_test_executable(lines, "ktls").unwrap();
        assert_eq!(t.exe, Path::new("/t/ci/deps/ktls-1"));
        assert_eq!(t.manifest_dir, Path::new("/w/edge"));
        assert!(find_test_executable(lines, "e2e").is_none());
    }

    #[test]
    fn counts_each_part_of_the_job() {
        let out = "WSSEDGE-VMTEST-PART 0\n\
                   test result: ok. 17 passed; 0 failed; 0 ignored; 0 measured\n\
                   WSSEDGE-VMTEST-PART 1\n\
                   test result: FAILED. 5 passed; 1 failed; 0 ignored; 0 measured\n\
                   WSSEDGE-VMTEST-PART 2\n";
        assert_eq!(part_counts(out), "kTLS 17/17, eBPF 5/6, e2e eBPF 0/0");
    }

    #[test]
    fn closes_module_dependencies() {
        let dep = "kernel/net/tls/tls.ko:\n\
            kernel/fs/9p/9p.ko: kernel/net/9p/9pnet.ko kernel/fs/netfs/netfs.ko\n\
            kernel/net/9p/9pnet.ko:\n\
            kernel/arch/x86/crypto/aesni-intel.ko.xz: kernel/crypto/cryptd.ko\n";
        assert_eq!(
            closure_from_dep(dep, "", &["9p", "tls", "aesni_intel"])
                .unwrap()
                .files,
            s(&[
                "kernel/net/9p/9pnet.ko",
                "kernel/fs/netfs/netfs.ko",
                "kernel/fs/9p/9p.ko",
                "kernel/net/tls/tls.ko",
                "kernel/crypto/cryptd.ko",
                "kernel/arch/x86/crypto/aesni-intel.ko.xz",
            ])
        );
        assert!(closure_from_dep(dep, "", &["nope"]).is_err());
        // A newer kernel: virtio_pci built in, the x86 ChaCha code folded into libchacha.
        let plan = closure_from_dep(
            dep,
            "kernel/drivers/virtio/virtio_pci.ko\n",
            &["virtio_pci", "tls", "chacha_x86_64", "aesni_intel"],
        )
        .unwrap();
        assert_eq!(plan.builtin, s(&["virtio_pci"]));
        assert_eq!(plan.absent, s(&["chacha_x86_64"]));
        assert_eq!(plan.files.len(), 3);
        assert_eq!(
            plan.present(&["aesni_intel", "chacha_x86_64"]),
            ["aesni_intel"]
        );
        // Built in, or an implementation known to move: a required module that is neither fails.
        assert!(closure_from_dep(dep, "kernel/x/virtio_pci.ko\n", &["9pnet_virtio"]).is_err());
        assert_eq!(
            module_name("kernel/arch/x86/crypto/aesni-intel.ko.xz"),
            "aesni_intel"
        );
    }

    #[test]
    fn a_boot_that_hangs_is_given_up_for_another_but_a_started_job_keeps_its_time() {
        let (tx, rx) = mpsc::channel();
        let t0 = Instant::now();
        let (exit, started, timed_out) =
            wait_for_guest(&rx, t0, Duration::from_secs(30), Duration::from_millis(50));
        assert_eq!(
            (exit, started, timed_out),
            (None, None, false),
            "a hung boot"
        );
        assert!(t0.elapsed() < Duration::from_secs(5));
        let t0 = Instant::now();
        tx.send(ConsoleEvent::Started(t0)).unwrap();
        let (exit, started, timed_out) = wait_for_guest(
            &rx,
            t0,
            Duration::from_millis(300),
            Duration::from_millis(50),
        );
        assert_eq!(
            (exit, started.is_some(), timed_out),
            (None, true, true),
            "the job's timeout"
        );
    }

    #[test]
    fn reads_the_console_markers() {
        assert!(matches!(
            marker("WSSEDGE-VMTEST-START"),
            Some(ConsoleEvent::Started(_))
        ));
        assert!(matches!(
            marker("WSSEDGE-VMTEST-EXIT=3"),
            Some(ConsoleEvent::Exited(3))
        ));
        assert!(matches!(
            marker("no newline WSSEDGE-VMTEST-EXIT=0"),
            Some(ConsoleEvent::Exited(0))
        ));
        assert!(marker("WSSEDGE-VMTEST-EXIT=$rc").is_none());
        let console = "boot noise\nWSSEDGE-VMTEST-START\ntest a ... ok\n\n\
            WSSEDGE-VMTEST-EXIT=0\n[ 2.1] reboot\n";
        assert_eq!(job_lines(console), "test a ... ok\n\n");
    }

    #[test]
    fn counts_tests_and_broken_runs() {
        let run = |exit, output: &str| GuestRun {
            exit,
            timed_out: None,
            boot: Some(Duration::from_secs(3)),
            total: Duration::from_secs(9),
            job_output: output.to_string(),
        };
        let log = Path::new("console.log");
        let ok = "test a ... ok\ntest b ... FAILED\n\
            test result: FAILED. 1 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out\n";
        let c = test_counts(&run(Some(101), ok), log);
        assert_eq!((c.passed, c.failed, c.skipped), (1, 1, 2));
        assert_eq!(test_counts(&run(Some(101), "panic\n"), log).failed, 1);
        assert_eq!(test_counts(&run(None, ""), log).failed, 1);
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(shell_quote("/a b/it's"), r"'/a b/it'\''s'");
        assert_eq!(
            virtfs(Path::new("/x,y"), "t", true),
            "local,path=/x,,y,mount_tag=t,security_model=none,multidevs=remap,readonly=on"
        );
    }

    #[test]
    fn writes_newc_records() {
        let mut c = Cpio::default();
        c.entry("init", 0o100_755, (0, 0), b"#!");
        let bytes = c.finish();
        assert!(bytes.starts_with(b"070701"));
        assert!(bytes.len().is_multiple_of(4));
        // 110-byte header + "init\0" padded to 116, 2 data bytes padded to 120, then the trailer.
        assert_eq!(&bytes[110..115], b"init\0");
        assert_eq!(&bytes[116..118], b"#!");
        assert_eq!(&bytes[120..126], b"070701");
    }

    #[test]
    fn recognises_static_elf() {
        assert!(!is_static_elf(Path::new("/nonexistent")));
        // The test binary itself is dynamically linked (glibc).
        assert!(!is_static_elf(&std::env::current_exe().unwrap()));
    }
}
