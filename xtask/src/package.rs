//! `cargo xtask package [--profile NAME] [--no-build] [--fast]`: the Debian package,
//! `target/debian/wssedge_<version>_amd64.deb`, made by cargo-deb from the
//! `[package.metadata.deb]` of `edge/Cargo.toml` and the files in `ops/` (cargo-deb is installed
//! with `cargo install cargo-deb --locked` when missing). `--profile` packages another build
//! profile than `release` (the test layer packages `ci`), `--no-build` an existing binary,
//! `--fast` compresses less.
//!
//! The `package` test layer (root only: it installs and purges the package `wssedge` on this
//! machine and creates the system user `wssedge`; without root it is skipped, and with CI=true
//! a missing tool fails it):
//! - builds the `ci` profile's binary (no test features) and packages it; checks the contents,
//!   the sysctl drop-in (documented, not applied) and `systemd-analyze security --offline=yes`
//!   of the unit (an exposure above [`MAX_EXPOSURE`] fails);
//! - `dpkg -i`; `systemd-analyze verify`; the user, group, directories, modes and the conffile;
//! - a test CA and a certificate for 127.0.0.1 in /etc/wssedge/tls/; `wssedge check`;
//! - starts `/usr/bin/wssedge serve --config /etc/wssedge/wssedge.toml` as user wssedge with
//!   exactly the unit's capabilities (`setpriv`: systemd cannot run as PID 1 here) and a
//!   notification socket of its own in systemd's place; WSS echo on 127.0.0.1:443, reload
//!   (SIGHUP), restart handover (`ctl restart`), the same after a package upgrade in place,
//!   drain (`ctl drain`, exit 0), the audit trail (owner, `wssedge audit verify`);
//! - once more under strace: every system call and socket family is one the unit allows;
//! - `dpkg -r` keeps the config and the trail; `dpkg -P`; then everything the layer made is
//!   removed so that it can run again.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{banner, which, Counts, Env, Guard, Outcome};

/// Builds on the project's Rust (1.95): its rust-version is 1.85 (`cargo info cargo-deb`).
const CARGO_DEB_VERSION: &str = "3.8.0";

/// `systemd-analyze security --offline=yes` of ops/systemd/wssedge.service measured 2.0 ("OK")
/// on systemd 252. What keeps it from lower, each needed: the host's network (an internet edge:
/// no PrivateNetwork=, no IPAddressDeny=), NotifyAccess=all (the restart successor announces
/// itself), CAP_NET_ADMIN/CAP_BPF/CAP_NET_BIND_SERVICE as ambient capabilities (eBPF limiter,
/// :443), @privileged (bpf) and @resources (sched_setaffinity) in the system call filter, no
/// PrivateUsers= (it would void those capabilities), no ProcSubset=pid (the kTLS probe reads
/// /proc/sys and /proc/net). Dropping any one hardening line raises it to 2.1 or more.
const MAX_EXPOSURE: f64 = 2.0;

/// The unit's capabilities: CAP_NET_BIND_SERVICE (10), CAP_NET_ADMIN (12), CAP_PERFMON (38),
/// CAP_BPF (39).
const UNIT_CAPS: u64 = (1 << 10) | (1 << 12) | (1 << 38) | (1 << 39);
const SETPRIV_CAPS: &str = "+net_bind_service,+bpf,+net_admin,+perfmon";

const USER: &str = "wssedge";
const CONFIG: &str = "/etc/wssedge/wssedge.toml";
const CONTROL: &str = "/run/wssedge/control.sock";
const UNIT_INSTALLED: &str = "/usr/lib/systemd/system/wssedge.service";
const NOTIFY_SOCKET: &str = "/run/wssedge-xtask-notify.sock";

/// Every wait of the layer is bounded by one of these.
const STEP_LIMIT: Duration = Duration::from_secs(60);
const ECHO_LIMIT: Duration = Duration::from_secs(20);
const EXIT_LIMIT: Duration = Duration::from_secs(30);

const ECHO_PY: &str = r#"
import asyncio, ssl, sys
from websockets.asyncio.client import connect
async def main():
    ctx = ssl.create_default_context(cafile=sys.argv[2])
    async with connect(sys.argv[1], ssl=ctx, open_timeout=10, close_timeout=5) as ws:
        text = "hello through the packaged wssedge"
        await ws.send(text)
        got = await asyncio.wait_for(ws.recv(), 10)
        if got != text:
            sys.exit(f"echo differs: {got!r}")
        print("echoed", len(got), "bytes")
asyncio.run(main())
"#;

// ---------------------------------------------------------------------------------------------
// cargo xtask package
// ---------------------------------------------------------------------------------------------

pub fn run(args: &[String]) -> Result<bool> {
    let mut profile = "release".to_string();
    let mut build = true;
    let mut fast = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--profile" => profile = it.next().context("--profile needs a value")?.clone(),
            s if s.starts_with("--profile=") => profile = s["--profile=".len()..].to_string(),
            "--no-build" => build = false,
            "--fast" => fast = true,
            _ => bail!("unknown argument {a:?} (cargo xtask package [--profile NAME] [--no-build] [--fast])"),
        }
    }
    let env = Env::detect();
    let deb = build_package(&env, &profile, build, fast, &env.target.join("debian"))?;
    println!("{}", deb.display());
    Ok(true)
}

/// Builds (unless `build` is false) `-p wssedge --bin wssedge` in `profile` and packages it
/// into `out_dir`; the path of the .deb.
pub(crate) fn build_package(
    env: &Env,
    profile: &str,
    build: bool,
    fast: bool,
    out_dir: &Path,
) -> Result<PathBuf> {
    ensure_cargo_deb(env)?;
    if build {
        let args = [
            "build",
            "-p",
            "wssedge",
            "--profile",
            profile,
            "--bin",
            "wssedge",
        ];
        eprintln!("$ cargo {}", args.join(" "));
        let st = env.cargo().args(args).stdin(Stdio::null()).status()?;
        if !st.success() {
            bail!("building wssedge ({profile}) failed ({st})");
        }
    }
    std::fs::create_dir_all(out_dir)?;
    // cargo-deb deletes every target/debian/wssedge_*_amd64.deb wherever it writes: a package
    // made elsewhere (the test layer's) keeps `cargo xtask package`'s there.
    let default_dir = env.target.join("debian");
    let mut kept = Vec::new();
    if out_dir != default_dir {
        for e in std::fs::read_dir(&default_dir)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("wssedge_") && name.ends_with(".deb") {
                let aside = out_dir.join(format!(".kept-{name}"));
                if std::fs::rename(e.path(), &aside).is_ok() {
                    kept.push((aside, e.path()));
                }
            }
        }
    }
    let made = run_cargo_deb(env, profile, fast, out_dir);
    for (aside, back) in kept {
        let _ = std::fs::rename(aside, back);
    }
    made
}

fn run_cargo_deb(env: &Env, profile: &str, fast: bool, out_dir: &Path) -> Result<PathBuf> {
    let mut args = vec!["deb", "-p", "wssedge", "--profile", profile, "--no-build"];
    if fast {
        args.push("--fast");
    }
    eprintln!("$ cargo {} -o {}", args.join(" "), out_dir.display());
    let out = env
        .cargo()
        .args(&args)
        .arg("-o")
        .arg(out_dir)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("spawn cargo deb")?;
    if !out.status.success() {
        bail!("cargo deb failed ({})", out.status);
    }
    // cargo-deb prints the package's path last.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .context("cargo deb printed no .deb path")?;
    if !deb.is_file() {
        bail!("cargo deb reported {}, which does not exist", deb.display());
    }
    Ok(deb)
}

fn ensure_cargo_deb(env: &Env) -> Result<()> {
    let has = || {
        env.cargo()
            .args(["deb", "--version"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if has() {
        return Ok(());
    }
    banner(&format!("installing cargo-deb {CARGO_DEB_VERSION}"));
    let st = env
        .cargo()
        .args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            CARGO_DEB_VERSION,
        ])
        .stdin(Stdio::null())
        .status()
        .context("spawn cargo install")?;
    if !st.success() || !has() {
        bail!("cargo install cargo-deb --version {CARGO_DEB_VERSION} --locked failed ({st})");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The `package` test layer
// ---------------------------------------------------------------------------------------------

/// One line per check, counted.
#[derive(Default)]
struct Checks {
    counts: Counts,
}

impl Checks {
    fn record(&mut self, name: &str, result: Result<String>) -> bool {
        match result {
            Ok(detail) => {
                self.counts.passed += 1;
                if detail.is_empty() {
                    eprintln!("package: ok    {name}");
                } else {
                    eprintln!("package: ok    {name}: {detail}");
                }
                true
            }
            Err(e) => {
                self.counts.failed += 1;
                eprintln!("package: FAIL  {name}: {e:#}");
                false
            }
        }
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.counts.skipped += 1;
        eprintln!("package: skip  {name}: {why}");
    }
}

/// What the layer changed on the machine, undone by [`cleanup`] whatever happened.
#[derive(Default)]
struct Machine {
    user_existed: bool,
    installed: bool,
    notify_socket: bool,
    /// Every edge process the layer started or had started by a handover.
    edge_pids: Vec<u32>,
    /// When the build and the package were done (the layer's own time starts there).
    built: Option<Instant>,
}

pub(crate) fn layer(env: &Env) -> Result<Outcome> {
    if !crate::is_root() {
        return Ok(Outcome::Skipped(
            "needs root: installs the package and creates a system user".into(),
        ));
    }
    if let Err(reason) = ensure_tools() {
        return Ok(Outcome::Skipped(reason));
    }
    if let Err(e) = ensure_cargo_deb(env) {
        return Ok(Outcome::Skipped(format!("{e:#}")));
    }
    let work = env.target.join("xtask-package");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let t0 = Instant::now();
    let mut checks = Checks::default();
    let mut machine = Machine {
        user_existed: user_exists(),
        ..Machine::default()
    };
    if dpkg_status().is_some() {
        eprintln!(
            "package: a wssedge package is installed (left by an earlier run?): purging it first"
        );
        let _ = run_limited(
            "dpkg -P",
            Command::new("dpkg").args(["-P", "wssedge"]),
            STEP_LIMIT,
            &work,
        );
    }
    if let Err(e) = scenario(env, &work, &mut checks, &mut machine) {
        checks.record("the scenario ran to its end", Err(e));
    }
    cleanup(&work, &mut checks, &mut machine);
    eprintln!(
        "package: {} passed, {} failed, {} skipped in {:.1} s, {:.1} s of it after the build",
        checks.counts.passed,
        checks.counts.failed,
        checks.counts.skipped,
        t0.elapsed().as_secs_f64(),
        machine.built.map_or(0.0, |b| b.elapsed().as_secs_f64())
    );
    Ok(Outcome::Ran(checks.counts))
}

/// dpkg, systemd-analyze, setpriv, openssl, adduser, python3 (and strace, optional): installed
/// with apt when missing. The reason the layer cannot run otherwise.
fn ensure_tools() -> std::result::Result<(), String> {
    let wanted = [
        ("dpkg-deb", "dpkg"),
        ("systemd-analyze", "systemd"),
        ("setpriv", "util-linux"),
        ("openssl", "openssl"),
        ("adduser", "adduser"),
        ("python3", "python3"),
    ];
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(tool, _)| which(tool).is_none())
        .map(|(_, pkg)| *pkg)
        .collect();
    // Optional: the system call check is skipped without it.
    if which("strace").is_none() && which("apt-get").is_some() {
        if let Err(e) = crate::apt_install_quietly(&["strace"]) {
            eprintln!("package: strace could not be installed: {e:#}");
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    if which("apt-get").is_none() {
        return Err(format!("missing {} and no apt-get", missing.join(", ")));
    }
    banner(&format!("installing {}", missing.join(" ")));
    crate::apt_install_quietly(&missing)
        .map_err(|e| format!("apt-get install {}: {e:#}", missing.join(" ")))?;
    match wanted.iter().find(|(tool, _)| which(tool).is_none()) {
        Some((tool, pkg)) => Err(format!("{tool} still missing after installing {pkg}")),
        None => Ok(()),
    }
}

fn scenario(env: &Env, work: &Path, checks: &mut Checks, machine: &mut Machine) -> Result<()> {
    let unit_src = env.root.join("ops/systemd/wssedge.service");

    // The package, from the ci profile's binary (no extra features).
    let deb = build_package_for_test(env, work)?;
    machine.built = Some(Instant::now());
    checks.record(
        "package built",
        Ok(format!(
            "{} ({:.1} MB)",
            deb.display(),
            std::fs::metadata(&deb)?.len() as f64 / 1e6
        )),
    );
    checks.record("package contents", check_contents(&deb, work));
    checks.record(
        "sysctl drop-in names existing settings (documented, not applied)",
        check_sysctl_dropin(&env.root.join("ops/debian/60-wssedge.conf")),
    );
    checks.record("systemd-analyze security", check_security(&unit_src, work));

    // Install.
    let (st, out) = run_limited(
        "dpkg -i",
        Command::new("dpkg").arg("-i").arg(&deb),
        STEP_LIMIT,
        work,
    )?;
    machine.installed = dpkg_status().is_some();
    let installed = checks.record(
        "dpkg -i",
        if st.success() {
            Ok(String::new())
        } else {
            Err(anyhow::anyhow!("{st}: {}", out.trim()))
        },
    );
    if !installed {
        bail!("the package did not install");
    }
    for line in out.lines().filter(|l| !l.trim().is_empty()) {
        eprintln!("  dpkg: {line}");
    }
    checks.record("systemd-analyze verify", check_verify(work));
    let ids = checks.record("user and group wssedge", check_user());
    checks.record("directories, owners and modes", check_dirs(env));
    if !ids {
        bail!("no wssedge user to run as");
    }

    // A certificate for 127.0.0.1 from a test CA.
    let ca = write_test_certificate(work)?;
    checks.record("test certificate in /etc/wssedge/tls", Ok(String::new()));
    checks.record("wssedge check (as wssedge)", check_config(work));

    let addrs = Addrs::pick()?;
    serve(env, work, &deb, &ca, &addrs, checks, machine)?;
    match which("strace") {
        Some(_) => {
            checks.record(
                "system calls and address families within the unit's filters (strace)",
                traced_run(env, work, &unit_src, &addrs, &ca, machine),
            );
        }
        None => checks.skip(
            "system calls and address families within the unit's filters (strace)",
            "no strace",
        ),
    }

    // Remove: the binary goes, the config and the trail stay.
    let (st, out) = run_limited(
        "dpkg -r",
        Command::new("dpkg").args(["-r", "wssedge"]),
        STEP_LIMIT,
        work,
    )?;
    checks.record(
        "dpkg -r keeps config and audit trail",
        check_removed(st, &out),
    );
    let (st, out) = run_limited(
        "dpkg -P",
        Command::new("dpkg").args(["-P", "wssedge"]),
        STEP_LIMIT,
        work,
    )?;
    machine.installed = dpkg_status().is_some();
    checks.record("dpkg -P", check_purged(st, &out));
    Ok(())
}

/// The same build the other layers use, without their test-only features, packaged apart from
/// target/debian/ (where `cargo xtask package` puts the release package).
fn build_package_for_test(env: &Env, work: &Path) -> Result<PathBuf> {
    build_package(env, "ci", true, true, &work.join("deb"))
}

fn check_contents(deb: &Path, work: &Path) -> Result<String> {
    let (st, list) = run_limited(
        "dpkg-deb -c",
        Command::new("dpkg-deb").arg("-c").arg(deb),
        STEP_LIMIT,
        work,
    )?;
    if !st.success() {
        bail!("dpkg-deb -c: {st}");
    }
    let want = [
        "./usr/bin/wssedge",
        "./usr/lib/systemd/system/wssedge.service",
        "./etc/wssedge/wssedge.toml",
        "./usr/share/doc/wssedge/examples/60-wssedge.conf",
    ];
    let paths: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    for w in want {
        if !paths.contains(&w) {
            bail!("{w} is not in the package");
        }
    }
    if let Some(p) = paths.iter().find(|p| p.contains("sysctl.d")) {
        bail!("{p}: the sysctl drop-in must not be applied by the package");
    }
    let ctrl = work.join("control");
    let _ = std::fs::remove_dir_all(&ctrl);
    let (st, _) = run_limited(
        "dpkg-deb -e",
        Command::new("dpkg-deb").arg("-e").arg(deb).arg(&ctrl),
        STEP_LIMIT,
        work,
    )?;
    if !st.success() {
        bail!("dpkg-deb -e: {st}");
    }
    let conffiles = std::fs::read_to_string(ctrl.join("conffiles")).unwrap_or_default();
    if !conffiles.lines().any(|l| l.trim() == CONFIG) {
        bail!("{CONFIG} is not a conffile (conffiles: {conffiles:?})");
    }
    for script in ["postinst", "prerm", "postrm"] {
        if !ctrl.join(script).is_file() {
            bail!("no {script} maintainer script");
        }
    }
    Ok(format!(
        "{} files; {CONFIG} a conffile; postinst, prerm, postrm",
        paths.iter().filter(|p| !p.ends_with('/')).count()
    ))
}

/// Every `name = value` of the drop-in is a setting this kernel has (/proc/sys/NAME); nothing
/// is applied.
fn check_sysctl_dropin(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let mut n = 0;
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, _) = line.split_once('=').context("a line without `=`")?;
        let proc = Path::new("/proc/sys").join(name.trim().replace('.', "/"));
        if !proc.exists() {
            bail!(
                "{} is not a setting of this kernel ({})",
                name.trim(),
                proc.display()
            );
        }
        n += 1;
    }
    Ok(format!("{n} settings"))
}

/// The overall exposure, at most [`MAX_EXPOSURE`].
fn check_security(unit: &Path, work: &Path) -> Result<String> {
    let (st, out) = run_limited(
        "systemd-analyze security",
        Command::new("systemd-analyze")
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(unit),
        STEP_LIMIT,
        work,
    )?;
    let score = parse_exposure(&out).with_context(|| {
        format!(
            "no overall exposure in systemd-analyze's output ({st}): {}",
            out.lines().last().unwrap_or("")
        )
    })?;
    let (value, verdict) = score;
    if value > MAX_EXPOSURE {
        for l in out.lines().filter(|l| l.starts_with('✗')) {
            eprintln!("  {l}");
        }
        bail!("overall exposure {value:.1} {verdict}, above the {MAX_EXPOSURE:.1} this unit keeps");
    }
    Ok(format!(
        "overall exposure {value:.1} {verdict} (threshold {MAX_EXPOSURE:.1})"
    ))
}

/// `→ Overall exposure level for wssedge.service: 2.0 OK 🙂` → (2.0, "OK").
fn parse_exposure(out: &str) -> Option<(f64, String)> {
    let line = out.lines().find(|l| l.contains("Overall exposure level"))?;
    let rest = line.rsplit_once(": ")?.1;
    let mut words = rest.split_whitespace();
    let value = words.next()?.parse().ok()?;
    Some((value, words.next().unwrap_or("").to_string()))
}

fn check_verify(work: &Path) -> Result<String> {
    let (st, out) = run_limited(
        "systemd-analyze verify",
        Command::new("systemd-analyze")
            .args(["verify", "--no-pager"])
            .arg(UNIT_INSTALLED),
        STEP_LIMIT,
        work,
    )?;
    let about_ours: Vec<&str> = out.lines().filter(|l| l.contains("wssedge")).collect();
    if !st.success() || !about_ours.is_empty() {
        bail!("{st}: {}", out.trim());
    }
    Ok(UNIT_INSTALLED.to_string())
}

fn user_exists() -> bool {
    getent("passwd", USER).is_some()
}

fn getent(db: &str, key: &str) -> Option<Vec<String>> {
    let out = Command::new("getent")
        .args([db, key])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Some(line.split(':').map(str::to_string).collect())
}

/// (uid, gid) of the wssedge user and group.
fn ids() -> Result<(u32, u32)> {
    let pw = getent("passwd", USER).context("no user wssedge")?;
    let gr = getent("group", USER).context("no group wssedge")?;
    Ok((pw[2].parse()?, gr[2].parse()?))
}

fn check_user() -> Result<String> {
    let pw = getent("passwd", USER).context("getent passwd wssedge: no such user")?;
    let gr = getent("group", USER).context("getent group wssedge: no such group")?;
    let (uid, gid): (u32, u32) = (pw[2].parse()?, gr[2].parse()?);
    if uid == 0 || uid >= 1000 {
        bail!("uid {uid} is not a system uid");
    }
    if pw[3] != gr[2] {
        bail!("the user's primary group is {}, not wssedge ({gid})", pw[3]);
    }
    if pw[6] != "/usr/sbin/nologin" && pw[6] != "/bin/false" {
        bail!("login shell {}", pw[6]);
    }
    if Path::new(&pw[5]).exists() {
        bail!("home {} exists", pw[5]);
    }
    Ok(format!(
        "uid {uid}, gid {gid}, home {}, shell {}",
        pw[5], pw[6]
    ))
}

/// PATH's owner (as names), mode and kind.
fn expect_path(path: &str, user: u32, group: u32, mode: u32) -> Result<()> {
    let m = std::fs::symlink_metadata(path).with_context(|| format!("{path} is missing"))?;
    let got = m.permissions().mode() & 0o7777;
    if m.uid() != user || m.gid() != group || got != mode {
        bail!(
            "{path}: owner {}:{} mode {got:04o}, expected {user}:{group} {mode:04o}",
            m.uid(),
            m.gid()
        );
    }
    Ok(())
}

fn check_dirs(env: &Env) -> Result<String> {
    let (uid, gid) = ids()?;
    expect_path("/var/log/wssedge", uid, gid, 0o750)?;
    expect_path("/var/lib/wssedge", uid, gid, 0o750)?;
    expect_path("/etc/wssedge/tls", 0, gid, 0o750)?;
    expect_path("/etc/wssedge/audit.key", uid, gid, 0o600)?;
    let key_len = std::fs::metadata("/etc/wssedge/audit.key")?.len();
    if key_len < 32 {
        bail!("/etc/wssedge/audit.key holds {key_len} bytes, fewer than 32");
    }
    let installed =
        std::fs::read_to_string(CONFIG).with_context(|| format!("{CONFIG} is missing"))?;
    let shipped = std::fs::read_to_string(env.root.join("ops/debian/wssedge.toml"))?;
    if installed != shipped {
        bail!("{CONFIG} differs from ops/debian/wssedge.toml");
    }
    for p in ["/usr/bin/wssedge", UNIT_INSTALLED] {
        if !Path::new(p).is_file() {
            bail!("{p} is missing");
        }
    }
    Ok("/var/log/wssedge, /var/lib/wssedge wssedge:wssedge 0750; /etc/wssedge/tls root:wssedge 0750; \
        audit.key wssedge 0600; wssedge.toml as shipped"
        .into())
}

/// A CA and a leaf for IP 127.0.0.1 (EC P-256, 2 days) in /etc/wssedge/tls/, as an operator
/// would put them: the key root:wssedge 0640. The CA's path.
fn write_test_certificate(work: &Path) -> Result<PathBuf> {
    let ca_key = work.join("ca.key");
    let ca = work.join("ca.pem");
    let leaf_key = work.join("leaf.key");
    let csr = work.join("leaf.csr");
    let leaf = work.join("leaf.pem");
    let ext = work.join("leaf.ext");
    std::fs::write(
        &ext,
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth\nsubjectAltName = IP:127.0.0.1\n",
    )?;
    let openssl = |what: &str, args: &[&str]| -> Result<()> {
        let mut c = Command::new("openssl");
        c.args(args).current_dir(work);
        let (st, out) = run_limited(what, &mut c, STEP_LIMIT, work)?;
        if !st.success() {
            bail!("openssl {what}: {st}: {}", out.trim());
        }
        Ok(())
    };
    let p = |p: &Path| p.to_string_lossy().into_owned();
    openssl(
        "req (CA)",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p(&ca_key),
            "-out",
            &p(&ca),
            "-days",
            "2",
            "-subj",
            "/CN=wssedge package test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )?;
    openssl(
        "req (leaf)",
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &p(&leaf_key),
            "-out",
            &p(&csr),
            "-subj",
            "/CN=127.0.0.1",
        ],
    )?;
    openssl(
        "x509 (leaf)",
        &[
            "x509",
            "-req",
            "-in",
            &p(&csr),
            "-CA",
            &p(&ca),
            "-CAkey",
            &p(&ca_key),
            "-CAcreateserial",
            "-out",
            &p(&leaf),
            "-days",
            "2",
            "-extfile",
            &p(&ext),
        ],
    )?;
    let (_, gid) = ids()?;
    let put = |from: &Path, to: &str, mode: u32| -> Result<()> {
        std::fs::copy(from, to).with_context(|| format!("copy to {to}"))?;
        std::os::unix::fs::chown(to, Some(0), Some(gid))?;
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put(&leaf, "/etc/wssedge/tls/fullchain.pem", 0o644)?;
    put(&leaf_key, "/etc/wssedge/tls/privkey.pem", 0o640)?;
    Ok(ca)
}

/// `setpriv` and its arguments that make the process what the unit makes it: user and group
/// wssedge, no new privileges, the unit's capabilities as ambient ones and nothing else in the
/// bounding set (`with_caps`), or no capability at all.
fn setpriv_args(with_caps: bool) -> Vec<String> {
    let mut a = vec![
        "setpriv".to_string(),
        format!("--reuid={USER}"),
        format!("--regid={USER}"),
        "--init-groups".into(),
    ];
    if with_caps {
        a.push(format!("--inh-caps={SETPRIV_CAPS}"));
        a.push(format!("--ambient-caps={SETPRIV_CAPS}"));
        a.push(format!("--bounding-set=-all,{SETPRIV_CAPS}"));
    } else {
        a.push("--inh-caps=-all".into());
        a.push("--bounding-set=-all".into());
    }
    a.push("--no-new-privs".into());
    a
}

fn as_wssedge(with_caps: bool) -> Command {
    let a = setpriv_args(with_caps);
    let mut c = Command::new(&a[0]);
    c.args(&a[1..]).env_remove("RUST_LOG");
    c
}

fn check_config(work: &Path) -> Result<String> {
    let mut c = as_wssedge(false);
    c.args(["/usr/bin/wssedge", "check", "--config", CONFIG]);
    let (st, out) = run_limited("wssedge check", &mut c, STEP_LIMIT, work)?;
    if !st.success() {
        bail!("{st}: {}", out.trim());
    }
    Ok(out.trim().to_string())
}

fn ctl(args: &[&str], work: &Path) -> Result<String> {
    let mut c = as_wssedge(false);
    c.args(["/usr/bin/wssedge", "ctl", "--control", CONTROL])
        .args(args);
    let (st, out) = run_limited(
        &format!("wssedge ctl {}", args.join(" ")),
        &mut c,
        STEP_LIMIT,
        work,
    )?;
    if !st.success() {
        bail!("wssedge ctl {}: {st}: {}", args.join(" "), out.trim());
    }
    Ok(out)
}

fn ctl_pid(work: &Path) -> Option<u32> {
    let out = ctl(&["status"], work).ok()?;
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v["pid"].as_u64().map(|p| p as u32)
}

/// Runs the edge as the unit would and drives it: echo, reload, restart handover, drain.
/// Where the edge under test listens: the shipped addresses unless this machine already uses
/// them (then loopback ports given as flags).
struct Addrs {
    target: SocketAddr,
    admin: SocketAddr,
    overrides: Vec<String>,
}

impl Addrs {
    fn pick() -> Result<Addrs> {
        let mut overrides: Vec<String> = Vec::new();
        let mut target = SocketAddr::from(([127, 0, 0, 1], 443));
        if TcpListener::bind("0.0.0.0:443").is_err() {
            let port = crate::free_port()?;
            eprintln!(
                "package: note  0.0.0.0:443 is in use here: listening on 127.0.0.1:{port} instead"
            );
            overrides.extend(["--listen".into(), format!("127.0.0.1:{port}")]);
            target.set_port(port);
        }
        let mut admin = SocketAddr::from(([127, 0, 0, 1], 9901));
        if TcpListener::bind(admin).is_err() {
            let port = crate::free_port()?;
            eprintln!(
                "package: note  127.0.0.1:9901 is in use here: admin on 127.0.0.1:{port} instead"
            );
            overrides.extend(["--admin".into(), format!("127.0.0.1:{port}")]);
            admin.set_port(port);
        }
        Ok(Addrs {
            target,
            admin,
            overrides,
        })
    }
}

fn serve(
    env: &Env,
    work: &Path,
    deb: &Path,
    ca: &Path,
    addrs: &Addrs,
    checks: &mut Checks,
    machine: &mut Machine,
) -> Result<()> {
    let (uid, gid) = ids()?;
    // What RuntimeDirectory=wssedge (0750) would make.
    let _ = std::fs::remove_dir_all("/run/wssedge");
    std::fs::create_dir("/run/wssedge")?;
    std::os::unix::fs::chown("/run/wssedge", Some(uid), Some(gid))?;
    std::fs::set_permissions("/run/wssedge", std::fs::Permissions::from_mode(0o750))?;

    let (target, admin, overrides) = (addrs.target, addrs.admin, &addrs.overrides);

    // sd_notify: a socket of our own stands in for systemd's, when the binary speaks it.
    let speaks_notify = binary_mentions("/usr/bin/wssedge", b"NOTIFY_SOCKET");
    let notify = if speaks_notify {
        let _ = std::fs::remove_file(NOTIFY_SOCKET);
        let n = Notify::bind(NOTIFY_SOCKET, uid)?;
        machine.notify_socket = true;
        Some(n)
    } else {
        None
    };

    let log = work.join("wssedge.log");
    let mut cmd = as_wssedge(true);
    cmd.args(["/usr/bin/wssedge", "serve", "--config", CONFIG])
        .args(overrides)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log)?);
    if notify.is_some() {
        cmd.env("NOTIFY_SOCKET", NOTIFY_SOCKET);
    } else {
        cmd.env_remove("NOTIFY_SOCKET");
    }
    eprintln!("$ {cmd:?}");
    let mut server = Guard {
        name: "wssedge (as user wssedge)",
        child: cmd.spawn().context("spawn setpriv wssedge serve")?,
        group: false,
    };
    let first_pid = server.child.id();
    machine.edge_pids.push(first_pid);
    let listening = crate::wait_listening(&mut server, work);
    if !checks.record(
        "serve as wssedge: listening",
        listening
            .as_ref()
            .map(|a| format!("wss://{a}/ (pid {first_pid})"))
            .map_err(|e| anyhow::anyhow!("{e:#}")),
    ) {
        bail!("the edge did not start");
    }
    checks.record(
        "process credentials",
        check_credentials(first_pid, uid, gid),
    );
    checks.record(
        "eBPF per-IP limiter under the unit's capabilities",
        check_limiter(&log, 0),
    );
    checks.record("admin /healthz on 127.0.0.1", check_healthz(admin));
    match &notify {
        Some(n) => {
            checks.record(
                "sd_notify READY=1",
                n.wait_for("READY=1", STEP_LIMIT)
                    .map(|m| m.replace('\n', " ")),
            );
        }
        None => checks.skip(
            "sd_notify READY=1",
            "the binary does not read NOTIFY_SOCKET yet",
        ),
    }

    let python = crate::ensure_python_websockets(env);
    let echo = |checks: &mut Checks, name: &str| {
        let r = python
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e:#}"))
            .and_then(|py| wss_echo(py, target, ca, work));
        checks.record(name, r)
    };
    echo(
        checks,
        "WSS echo through 127.0.0.1 (certificate from /etc/wssedge/tls)",
    );

    // Reload.
    let reload_mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-HUP", &first_pid.to_string()])
        .status();
    checks.record(
        "SIGHUP reloads",
        wait_log(
            &log,
            reload_mark,
            "configuration reloaded",
            Duration::from_secs(15),
        ),
    );
    match &notify {
        Some(n) => {
            checks.record(
                "sd_notify RELOADING=1",
                n.wait_for("RELOADING=1", STEP_LIMIT).map(|_| String::new()),
            );
        }
        None => checks.skip(
            "sd_notify RELOADING=1",
            "the binary does not read NOTIFY_SOCKET yet",
        ),
    }

    // Restart handover: the successor is a child of the edge, still as wssedge.
    let mut pid = first_pid;
    let restarted = restart(pid, &mut server, work);
    if let Ok(p) = &restarted {
        pid = *p;
        machine.edge_pids.push(pid);
    }
    checks.record(
        "ctl restart hands over (old process exits 0)",
        restarted.map(|p| format!("pid {first_pid} → {p}")),
    );
    if pid != first_pid {
        checks.record("successor's credentials", check_credentials(pid, uid, gid));
        checks.record(
            "the successor's eBPF per-IP limiter",
            check_limiter(&log, 1),
        );
        match &notify {
            Some(n) => {
                checks.record(
                    "sd_notify MAINPID of the successor",
                    n.wait_for(&format!("MAINPID={pid}"), STEP_LIMIT)
                        .map(|_| String::new()),
                );
            }
            None => checks.skip(
                "sd_notify MAINPID of the successor",
                "the binary does not read NOTIFY_SOCKET yet",
            ),
        }
        echo(checks, "WSS echo through the successor");

        // An upgrade replaces /usr/bin/wssedge under the running edge; the handover is how
        // the new binary takes over without refusing a connection.
        let (st, out) = run_limited(
            "dpkg -i (upgrade in place)",
            Command::new("dpkg").arg("-i").arg(deb),
            STEP_LIMIT,
            work,
        )?;
        let upgraded = if st.success() {
            restart(pid, &mut server, work)
        } else {
            Err(anyhow::anyhow!("dpkg -i: {st}: {}", out.trim()))
        };
        match upgraded {
            Ok(p) => {
                checks.record(
                    "ctl restart after an upgrade starts the new binary",
                    Ok(format!("pid {pid} → {p}")),
                );
                pid = p;
                machine.edge_pids.push(pid);
                echo(checks, "WSS echo after the upgrade");
            }
            Err(e) => {
                checks.record("ctl restart after an upgrade starts the new binary", Err(e));
            }
        }
    }

    // Drain.
    let drained = ctl(&["drain"], work).and_then(|_| wait_gone(pid, &mut server, EXIT_LIMIT));
    checks.record("ctl drain: clean exit", drained);
    if let Some(n) = &notify {
        checks.record(
            "sd_notify STOPPING=1",
            n.wait_for("STOPPING=1", STEP_LIMIT).map(|_| String::new()),
        );
    } else {
        checks.skip(
            "sd_notify STOPPING=1",
            "the binary does not read NOTIFY_SOCKET yet",
        );
    }
    // Whatever is still running of ours (a failed handover or drain) goes now.
    drop(server);
    stop_leftovers(machine);
    checks.record("audit trail under /var/log/wssedge", check_audit(uid, work));
    Ok(())
}

/// The edge once more, under `strace -f` (as root, tracing setpriv and what it executes):
/// start, echo, reload, restart handover, drain. Every system call the edge and its successor
/// made after their `execve` must be in the unit's SystemCallFilter= (as this host's systemd
/// expands its groups), and every socket family in RestrictAddressFamilies=.
fn traced_run(
    env: &Env,
    work: &Path,
    unit: &Path,
    addrs: &Addrs,
    ca: &Path,
    machine: &mut Machine,
) -> Result<String> {
    let unit_text = std::fs::read_to_string(unit)?;
    let allowed = allowed_syscalls(&unit_text, work)?;
    let families: Vec<&str> = directive(&unit_text, "RestrictAddressFamilies")
        .flat_map(str::split_whitespace)
        .collect();
    let trace = work.join("strace.txt");
    let log = work.join("wssedge.log");
    let _ = std::fs::rename(&log, work.join("wssedge-first.log"));
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"])
        .arg(&trace)
        .args(setpriv_args(true))
        .args(["/usr/bin/wssedge", "serve", "--config", CONFIG])
        .args(&addrs.overrides)
        .env_remove("RUST_LOG")
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(File::create(&log)?);
    let mut server = Guard {
        name: "strace wssedge",
        child: cmd.spawn().context("spawn strace")?,
        group: false,
    };
    crate::wait_listening(&mut server, work)?;
    let pid = ctl_pid(work).context("the traced edge does not answer `ctl status`")?;
    machine.edge_pids.push(pid);
    let python = crate::ensure_python_websockets(env)?;
    wss_echo(&python, addrs.target, ca, work)?;
    let mark = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let _ = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
    wait_log(
        &log,
        mark,
        "configuration reloaded",
        Duration::from_secs(15),
    )?;
    let successor = restart(pid, &mut server, work)?;
    machine.edge_pids.push(successor);
    wss_echo(&python, addrs.target, ca, work)?;
    ctl(&["drain"], work)?;
    wait_gone(successor, &mut server, EXIT_LIMIT)?;
    let t0 = Instant::now();
    while server.exited().is_none() {
        if t0.elapsed() > EXIT_LIMIT {
            bail!("strace still running {EXIT_LIMIT:?} after the drain");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(server);

    let text = std::fs::read_to_string(&trace)?;
    let (used, used_families) = traced_calls(&text);
    if used.is_empty() {
        bail!("no system call of /usr/bin/wssedge in {}", trace.display());
    }
    let denied: Vec<&String> = used.iter().filter(|c| !allowed.contains(*c)).collect();
    if !denied.is_empty() {
        bail!(
            "not in SystemCallFilter=: {denied:?} (trace: {})",
            trace.display()
        );
    }
    let foreign: Vec<&String> = used_families
        .iter()
        .filter(|f| !families.contains(&f.as_str()))
        .collect();
    if !foreign.is_empty() {
        bail!("socket families not in RestrictAddressFamilies=: {foreign:?}");
    }
    Ok(format!(
        "{} distinct calls, families {:?}, through start, echo, reload, restart, drain",
        used.len(),
        used_families
    ))
}

/// The values of every `KEY=` line of the unit.
fn directive<'a>(unit: &'a str, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    unit.lines()
        .filter_map(move |l| l.strip_prefix(key)?.strip_prefix('='))
}

/// The system calls the unit's (allow-list) SystemCallFilter= lines permit, groups expanded
/// with this host's `systemd-analyze syscall-filter`.
fn allowed_syscalls(unit: &str, work: &Path) -> Result<BTreeSet<String>> {
    let (st, out) = run_limited(
        "systemd-analyze syscall-filter",
        Command::new("systemd-analyze").args(["syscall-filter", "--no-pager"]),
        STEP_LIMIT,
        work,
    )?;
    if !st.success() {
        bail!("systemd-analyze syscall-filter: {st}");
    }
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in out.lines() {
        if line.starts_with('@') {
            current = Some(line.trim().to_string());
        } else if let (Some(g), Some(item)) = (&current, line.strip_prefix("    ")) {
            let item = item.trim();
            if !item.is_empty() && !item.starts_with('#') {
                groups.entry(g.clone()).or_default().push(item.to_string());
            }
        }
    }
    let mut allowed = BTreeSet::new();
    let mut todo: Vec<String> = directive(unit, "SystemCallFilter")
        .filter(|v| !v.starts_with('~'))
        .flat_map(str::split_whitespace)
        .map(str::to_string)
        .collect();
    let mut expanded = BTreeSet::new();
    while let Some(item) = todo.pop() {
        if item.starts_with('@') {
            if expanded.insert(item.clone()) {
                let members = groups
                    .get(&item)
                    .with_context(|| format!("systemd-analyze knows no group {item}"))?;
                todo.extend(members.iter().cloned());
            }
        } else {
            allowed.insert(item);
        }
    }
    Ok(allowed)
}

/// From `strace -f -o` output: the system calls made after the first successful
/// `execve("/usr/bin/wssedge", …)` (what setpriv did before is systemd's part under the unit),
/// and the families of the sockets they created.
fn traced_calls(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut calls = BTreeSet::new();
    let mut families = BTreeSet::new();
    let mut started = false;
    for line in text.lines() {
        let Some((_, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        if !started {
            started = rest.starts_with("execve(\"/usr/bin/wssedge\"") && rest.ends_with("= 0");
            continue;
        }
        let call = rest.strip_prefix("<... ").unwrap_or(rest);
        let name: String = call
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.is_empty() {
            continue; // `+++ exited`, `--- SIGCHLD`
        }
        if (name == "socket" || name == "socketpair")
            && !call.starts_with(&format!("{name} resumed"))
        {
            if let Some(f) = call
                .split_once('(')
                .and_then(|(_, a)| a.split([',', ')']).next())
                .filter(|f| f.starts_with("AF_"))
            {
                families.insert(f.to_string());
            }
        }
        calls.insert(name);
    }
    (calls, families)
}

/// `ctl restart` of the edge `old`: the successor's PID once it answers on the control socket
/// and `old` has exited 0 (its status when it is our child, else its absence).
fn restart(old: u32, server: &mut Guard, work: &Path) -> Result<u32> {
    ctl(&["restart"], work)?;
    let t0 = Instant::now();
    loop {
        let old_gone = if old == server.child.id() {
            match server.exited() {
                Some(s) if !s.success() => bail!("the old process exited with {s}"),
                Some(_) => true,
                None => false,
            }
        } else {
            !process_alive(old)
        };
        if old_gone {
            if let Some(p) = ctl_pid(work).filter(|p| *p != old) {
                return Ok(p);
            }
        }
        if t0.elapsed() > EXIT_LIMIT {
            bail!("no handover within {EXIT_LIMIT:?} (old process gone: {old_gone})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn check_credentials(pid: u32, uid: u32, gid: u32) -> Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("pid {pid} is gone"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    let ids_ok = |v: String, want: u32| v.split_whitespace().all(|x| x == want.to_string());
    if !ids_ok(field("Uid:"), uid) || !ids_ok(field("Gid:"), gid) {
        bail!(
            "Uid: {} Gid: {} (want {uid}/{gid} throughout)",
            field("Uid:"),
            field("Gid:")
        );
    }
    let hex = |name: &str| u64::from_str_radix(&field(name), 16).unwrap_or(u64::MAX);
    let (eff, bnd) = (hex("CapEff:"), hex("CapBnd:"));
    if eff & !UNIT_CAPS != 0 || bnd & !UNIT_CAPS != 0 {
        bail!("CapEff {eff:016x} CapBnd {bnd:016x}: more than the unit's {UNIT_CAPS:016x}");
    }
    Ok(format!(
        "uid/gid {uid}/{gid}, CapEff {eff:016x}, CapBnd {bnd:016x} (unit: {UNIT_CAPS:016x})"
    ))
}

/// The `nth` start-up line (0: the first process, 1: its successor) that says where the per-IP
/// limit is enforced.
fn limiter_line(log: &Path, nth: usize) -> Result<String> {
    let text = std::fs::read_to_string(log)?;
    let line = text
        .lines()
        .filter(|l| l.contains("per-IP connection limit"))
        .nth(nth)
        .context("no `per-IP connection limit` line in the log")?;
    let what = line.split_once("  ").map(|(_, r)| r).unwrap_or(line).trim();
    Ok(what.chars().take(160).collect())
}

/// The `nth` process enforces the per-IP limit in the kernel.
fn check_limiter(log: &Path, nth: usize) -> Result<String> {
    let line = limiter_line(log, nth)?;
    if !line.contains("eBPF") {
        bail!("{line}");
    }
    Ok(line)
}

fn check_healthz(admin: SocketAddr) -> Result<String> {
    use std::io::Write as _;
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.lines().next().unwrap_or("").to_string();
    if !status.starts_with("HTTP/1.1 200") {
        bail!("{status}");
    }
    Ok(format!("{admin}: {status}"))
}

fn wss_echo(python: &Path, target: SocketAddr, ca: &Path, work: &Path) -> Result<String> {
    let script = work.join("echo.py");
    std::fs::write(&script, ECHO_PY)?;
    let mut c = Command::new(python);
    c.arg(&script).arg(format!("wss://{target}/")).arg(ca);
    let (st, out) = run_limited("the echo client", &mut c, ECHO_LIMIT, work)?;
    if !st.success() {
        bail!("{st}: {}", out.trim());
    }
    Ok(out.trim().to_string())
}

/// Waits until `needle` appears in the log after byte `from`.
fn wait_log(log: &Path, from: u64, needle: &str, limit: Duration) -> Result<String> {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read(log).unwrap_or_default();
        let tail = String::from_utf8_lossy(text.get(from as usize..).unwrap_or(&[]));
        if let Some(line) = tail.lines().find(|l| l.contains(needle)) {
            let what = line.split_once("INFO ").map(|(_, r)| r).unwrap_or(line);
            return Ok(what.chars().take(160).collect());
        }
        if t0.elapsed() > limit {
            bail!("no `{needle}` in {} within {limit:?}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn process_alive(pid: u32) -> bool {
    // A zombie (exited, not reaped by its new parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
}

/// Waits for the edge `pid` to end: our child (its exit status must be 0) or the successor of a
/// handover (not our child: gone from /proc, and its last log line says it stopped cleanly).
fn wait_gone(pid: u32, server: &mut Guard, limit: Duration) -> Result<String> {
    let t0 = Instant::now();
    if pid == server.child.id() {
        loop {
            if let Some(s) = server.exited() {
                if !s.success() {
                    bail!("exit status {s}");
                }
                return Ok(format!(
                    "pid {pid} exited 0 after {:.1} s",
                    t0.elapsed().as_secs_f64()
                ));
            }
            if t0.elapsed() > limit {
                bail!("pid {pid} still running {limit:?} after the drain");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    while process_alive(pid) {
        if t0.elapsed() > limit {
            bail!("pid {pid} still running {limit:?} after the drain");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(format!(
        "pid {pid} gone after {:.1} s",
        t0.elapsed().as_secs_f64()
    ))
}

fn check_audit(uid: u32, work: &Path) -> Result<String> {
    let live = Path::new("/var/log/wssedge/audit.log");
    let m = std::fs::metadata(live).context("/var/log/wssedge/audit.log is missing")?;
    if m.uid() != uid {
        bail!(
            "{} is owned by uid {}, not wssedge ({uid})",
            live.display(),
            m.uid()
        );
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir("/var/log/wssedge")?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("audit.log"))
        })
        .collect();
    files.sort();
    let mut c = as_wssedge(false);
    c.args([
        "/usr/bin/wssedge",
        "audit",
        "verify",
        "--key",
        "/etc/wssedge/audit.key",
    ])
    .args(&files);
    let (st, out) = run_limited("wssedge audit verify", &mut c, STEP_LIMIT, work)?;
    if !st.success() {
        bail!("wssedge audit verify: {st}: {}", out.trim());
    }
    Ok(format!(
        "{} file(s) owned by wssedge, mode {:04o}; audit verify: {}",
        files.len(),
        m.permissions().mode() & 0o7777,
        out.lines().last().unwrap_or("").trim()
    ))
}

fn check_removed(st: ExitStatus, out: &str) -> Result<String> {
    if !st.success() {
        bail!("dpkg -r: {st}: {}", out.trim());
    }
    for gone in ["/usr/bin/wssedge", UNIT_INSTALLED] {
        if Path::new(gone).exists() {
            bail!("{gone} is still there");
        }
    }
    for kept in [
        CONFIG,
        "/etc/wssedge/audit.key",
        "/var/log/wssedge/audit.log",
    ] {
        if !Path::new(kept).exists() {
            bail!("{kept} was removed");
        }
    }
    match dpkg_status() {
        Some(s) if s.contains("config-files") => {}
        other => bail!("dpkg status {other:?}, expected config-files"),
    }
    Ok("binary and unit gone; wssedge.toml, audit.key, audit trail kept".into())
}

fn check_purged(st: ExitStatus, out: &str) -> Result<String> {
    if !st.success() {
        bail!("dpkg -P: {st}: {}", out.trim());
    }
    if dpkg_status().is_some() {
        bail!("dpkg still knows wssedge");
    }
    for gone in [CONFIG, "/var/lib/wssedge"] {
        if Path::new(gone).exists() {
            bail!("{gone} survived the purge");
        }
    }
    if !Path::new("/var/log/wssedge/audit.log").exists() {
        bail!("the purge removed the audit trail");
    }
    Ok(
        "config and state gone; audit trail, its key and the user kept (see ops/debian/postrm)"
            .into(),
    )
}

/// `dpkg-query`'s status of wssedge, None when dpkg knows nothing of it.
fn dpkg_status() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "wssedge"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty() && !s.contains("not-installed")).then_some(s)
}

/// Stops the edge processes of the layer still running (a failed handover or drain): SIGTERM,
/// then SIGKILL after 10 s. Only PIDs the layer recorded, and only while they still run
/// /usr/bin/wssedge (a PID is not reused by another program unnoticed).
fn stop_leftovers(machine: &mut Machine) {
    let ours = |pid: u32| {
        process_alive(pid)
            && std::fs::read_link(format!("/proc/{pid}/exe"))
                .is_ok_and(|e| e.to_string_lossy().starts_with("/usr/bin/wssedge"))
    };
    for pid in std::mem::take(&mut machine.edge_pids) {
        if !ours(pid) {
            continue;
        }
        eprintln!("package: stopping the edge pid {pid}, still running");
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let t0 = Instant::now();
        while ours(pid) && t0.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(100));
        }
        if ours(pid) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

/// Undoes what the layer did to the machine: the package, the files the purge keeps by design
/// (audit trail, audit key, /etc/wssedge), /run/wssedge, and the user if the layer made it.
fn cleanup(work: &Path, checks: &mut Checks, machine: &mut Machine) {
    stop_leftovers(machine);
    if machine.installed || dpkg_status().is_some() {
        let _ = run_limited(
            "dpkg -P",
            Command::new("dpkg").args(["-P", "wssedge"]),
            STEP_LIMIT,
            work,
        );
    }
    for dir in [
        "/var/log/wssedge",
        "/etc/wssedge",
        "/run/wssedge",
        "/var/lib/wssedge",
    ] {
        let _ = std::fs::remove_dir_all(dir);
    }
    if machine.notify_socket {
        let _ = std::fs::remove_file(NOTIFY_SOCKET);
    }
    if !machine.user_existed && user_exists() {
        let _ = run_limited(
            "deluser",
            Command::new("deluser").args(["--system", USER]),
            STEP_LIMIT,
            work,
        );
        if getent("group", USER).is_some() {
            let _ = run_limited(
                "delgroup",
                Command::new("delgroup").args(["--system", USER]),
                STEP_LIMIT,
                work,
            );
        }
    }
    let leftovers: Vec<&str> = [
        "/var/log/wssedge",
        "/etc/wssedge",
        "/run/wssedge",
        "/var/lib/wssedge",
    ]
    .into_iter()
    .filter(|p| Path::new(p).exists())
    .collect();
    let user_left = !machine.user_existed && user_exists();
    checks.record(
        "cleaned up (the layer can run again)",
        if leftovers.is_empty() && !user_left && dpkg_status().is_none() {
            Ok(String::new())
        } else {
            Err(anyhow::anyhow!(
                "left: {leftovers:?}{}",
                if user_left {
                    " and the user wssedge"
                } else {
                    ""
                }
            ))
        },
    );
}

/// Whether the file holds `needle` (a feature's tell-tale string in the binary).
fn binary_mentions(path: &str, needle: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
}

/// Runs `cmd` to its end or `limit` (then it is killed); its exit status and output (stdout
/// then stderr, through a file).
fn run_limited(
    what: &str,
    cmd: &mut Command,
    limit: Duration,
    work: &Path,
) -> Result<(ExitStatus, String)> {
    let path = work.join("step.out");
    let f = File::create(&path)?;
    cmd.stdin(Stdio::null()).stdout(f.try_clone()?).stderr(f);
    let mut child = cmd.spawn().with_context(|| format!("spawn {what}"))?;
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok((status, std::fs::read_to_string(&path).unwrap_or_default()))
}

/// A stand-in for systemd's notification socket: every datagram the edge sends, in order.
struct Notify {
    rx: mpsc::Receiver<String>,
    seen: std::cell::RefCell<Vec<String>>,
}

impl Notify {
    fn bind(path: &str, uid: u32) -> Result<Notify> {
        let sock = UnixDatagram::bind(path).with_context(|| format!("bind {path}"))?;
        // The edge runs as wssedge and must be able to write to it.
        std::os::unix::fs::chown(path, Some(uid), None)?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Notify {
            rx,
            seen: Default::default(),
        })
    }

    /// The first message (seen before or arriving within `limit`) with a line equal to `line`.
    fn wait_for(&self, line: &str, limit: Duration) -> Result<String> {
        let has = |m: &String| m.lines().any(|l| l == line);
        if let Some(m) = self.seen.borrow().iter().find(|m| has(m)) {
            return Ok(m.clone());
        }
        let t0 = Instant::now();
        while let Some(left) = limit.checked_sub(t0.elapsed()) {
            match self.rx.recv_timeout(left) {
                Ok(m) => {
                    self.seen.borrow_mut().push(m.clone());
                    if has(&m) {
                        return Ok(m);
                    }
                }
                Err(_) => break,
            }
        }
        bail!(
            "no {line} within {limit:?} (received: {:?})",
            self.seen.borrow()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_trace() {
        let text = "10 execve(\"/usr/bin/setpriv\", [\"setpriv\"], 0x0 /* 3 vars */) = 0\n\
            10 capset({...}) = 0\n\
            10 execve(\"/usr/bin/wssedge\", [\"wssedge\"], 0x0 /* 3 vars */) = 0\n\
            10 socket(AF_UNIX, SOCK_STREAM|SOCK_CLOEXEC, 0) = 3\n\
            11 io_uring_enter(3, 1, 0, 0, NULL, 8 <unfinished ...>\n\
            10 socket(AF_INET, SOCK_STREAM, IPPROTO_IP) = 4\n\
            11 <... io_uring_enter resumed>) = 1\n\
            11 +++ exited with 0 +++\n";
        let (calls, families) = traced_calls(text);
        assert_eq!(
            calls.into_iter().collect::<Vec<_>>(),
            ["io_uring_enter", "socket"]
        );
        assert_eq!(
            families.into_iter().collect::<Vec<_>>(),
            ["AF_INET", "AF_UNIX"]
        );
    }

    #[test]
    fn reads_the_exposure_line() {
        let out = "✗ UMask= ...\n\n→ Overall exposure level for wssedge.service: 2.0 OK 🙂\n";
        assert_eq!(parse_exposure(out), Some((2.0, "OK".to_string())));
        assert_eq!(parse_exposure("nothing"), None);
    }

    #[test]
    fn the_shipped_unit_keeps_its_hardening() {
        let unit = include_str!("../../ops/systemd/wssedge.service");
        for line in [
            "Type=notify",
            "NotifyAccess=all",
            "ExecStart=/usr/bin/wssedge serve --config /etc/wssedge/wssedge.toml",
            "User=wssedge",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_BPF CAP_NET_ADMIN CAP_PERFMON",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line}");
        }
        // Every hardening setting carries a comment saying why it holds for wssedge.
        let lines: Vec<&str> = unit.lines().collect();
        for key in [
            "NoNewPrivileges",
            "ProtectSystem",
            "ProtectHome",
            "PrivateTmp",
            "PrivateDevices",
            "PrivateMounts",
            "ProtectKernelTunables",
            "ProtectKernelModules",
            "ProtectKernelLogs",
            "ProtectControlGroups",
            "ProtectClock",
            "ProtectHostname",
            "ProtectProc",
            "RestrictNamespaces",
            "RestrictRealtime",
            "RestrictSUIDSGID",
            "LockPersonality",
            "MemoryDenyWriteExecute",
            "RemoveIPC",
            "RestrictAddressFamilies",
            "SystemCallArchitectures",
            "SystemCallFilter",
            "AmbientCapabilities",
            "UMask",
            "ReadWritePaths",
            "LimitNOFILE",
            "NotifyAccess",
            "KillMode",
            "TimeoutStopSec",
        ] {
            let i = lines
                .iter()
                .position(|l| l.starts_with(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{key}= is missing"));
            assert!(
                i > 0 && lines[i - 1].starts_with('#'),
                "{key}= has no comment"
            );
        }
    }
}
