//! The guest kernel: Debian's package for a suite, downloaded and unpacked once, never
//! installed.
//!
//! `bookworm` (Debian 12, the kernel of the hosts this edge is for) comes from the machine's own
//! apt sources. `sid` (the newest kernel Debian ships) comes from an extra sources list under
//! `target/vmtest/apt-sid/`, with its own package lists: apt is pointed at them with `-o`
//! options, and the machine's apt configuration is left alone.
//!
//! Kernels are kept in `kernel/<suite>/<package>/`, laid out as `boot/vmlinuz-<v>` and
//! `lib/modules/<v>/` whatever the package's own layout (newer packages put both under
//! `usr/lib/modules/<v>/`, split over `linux-binary-*`, `linux-modules-*` and `linux-base-*`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{banner, cannot_run, run_bounded, Tools, APT_LIMIT};

/// Debian's metapackage for the generic kernel (the `-cloud` flavour has no 9p).
const KERNEL_META: &str = "linux-image-amd64";
/// Marks a complete unpack in `kernel/<suite>/<package>/`.
const UNPACKED: &str = ".unpacked";

/// Whose kernel the guest boots.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Suite {
    /// Debian 12's kernel (6.1): what the exchange's hosts run.
    #[default]
    Bookworm,
    /// The newest kernel in Debian (`sid`): kTLS rekeying and today's BPF.
    Sid,
}

impl Suite {
    pub const ALL: [Suite; 2] = [Suite::Bookworm, Suite::Sid];

    pub fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Sid => "sid",
        }
    }

    pub fn parse(name: &str) -> Result<Suite> {
        Suite::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .with_context(|| format!("unknown kernel {name:?} (bookworm or sid)"))
    }

    /// The `-o` options that give apt this suite's sources and lists (none: the machine's own).
    fn apt_options(self, dir: &Path) -> Result<Vec<String>> {
        match self {
            Suite::Bookworm => Ok(Vec::new()),
            Suite::Sid => {
                let apt = dir.join("apt-sid");
                let parts = apt.join("sources.list.d");
                std::fs::create_dir_all(apt.join("lists/partial"))?;
                std::fs::create_dir_all(apt.join("cache/archives/partial"))?;
                std::fs::create_dir_all(&parts)?;
                let list = apt.join("sources.list");
                std::fs::write(&list, "deb http://deb.debian.org/debian sid main\n")?;
                let o = |k: &str, v: &Path| ["-o".to_string(), format!("{k}={}", v.display())];
                Ok([
                    o("Dir::Etc::SourceList", &list),
                    o("Dir::Etc::SourceParts", &parts),
                    o("Dir::State::Lists", &apt.join("lists")),
                    o("Dir::Cache", &apt.join("cache")),
                ]
                .concat())
            }
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

pub struct Kernel {
    pub suite: Suite,
    /// e.g. `6.1.0-48-amd64`.
    pub version: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<version>` of the unpacked package, with its `modules.dep`.
    pub modules: PathBuf,
}

/// apt for one suite: its options on every call.
struct Apt {
    suite: Suite,
    options: Vec<String>,
}

impl Apt {
    fn new(suite: Suite, dir: &Path) -> Result<Apt> {
        Ok(Apt {
            suite,
            options: suite.apt_options(dir)?,
        })
    }

    fn command(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.args(&self.options);
        c
    }

    fn update(&self) -> Result<()> {
        let st = run_bounded(
            self.command("apt-get")
                .args(["update", "-q"])
                .env("DEBIAN_FRONTEND", "noninteractive"),
            "apt-get update",
            APT_LIMIT,
        )?;
        if !st.success() {
            bail!("apt-get update ({}) failed ({st})", self.suite);
        }
        Ok(())
    }

    /// `apt-cache depends PKG`, after one `apt-get update` if apt knows no such package yet (a
    /// fresh machine, or the suite's first use).
    fn depends(&self, pkg: &str, updated: &mut bool) -> Result<String> {
        loop {
            let out = self
                .command("apt-cache")
                .args(["depends", pkg])
                .stdin(Stdio::null())
                .output()
                .map_err(|_| cannot_run("no apt-cache to find Debian's kernel package"))?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("Depends:") {
                return Ok(text);
            }
            if *updated {
                return Err(cannot_run(format!(
                    "cannot fetch the {} guest kernel: apt-cache depends {pkg} names nothing \
                     (is Debian's main archive reachable?)",
                    self.suite
                )));
            }
            eprintln!(
                "vmtest: apt-cache knows no {pkg} ({}); running apt-get update once",
                self.suite
            );
            *updated = true;
            if let Err(e) = self.update() {
                eprintln!("vmtest: {e:#}");
            }
        }
    }

    /// `apt-get download` into `dl` (retried once after `apt-get update`: the lists may be
    /// stale).
    fn download(&self, pkgs: &[String], dl: &Path, updated: &mut bool) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dl).with_context(|| format!("create {}", dl.display()))?;
        loop {
            // apt warns that the download runs unsandboxed when `_apt` cannot write `dl`.
            let st = run_bounded(
                self.command("apt-get")
                    .args(["download", "-q"])
                    .args(pkgs)
                    .current_dir(dl),
                "apt-get download",
                APT_LIMIT,
            )?;
            if st.success() {
                return pkgs.iter().map(|p| find_deb(dl, p)).collect();
            }
            if *updated {
                return Err(cannot_run(format!(
                    "cannot fetch the {} guest kernel: apt-get download {} failed",
                    self.suite,
                    pkgs.join(" ")
                )));
            }
            *updated = true;
            self.update().ok();
        }
    }
}

pub fn ensure_kernel(dir: &Path, suite: Suite, tools: &Tools) -> Result<Kernel> {
    let kernels = dir.join("kernel").join(suite.name());
    let apt = Apt::new(suite, dir)?;
    let mut updated = false;
    let packages = match kernel_packages(&apt, &mut updated) {
        Ok(p) => p,
        Err(e) => {
            // Offline, or apt knows no kernel: any kernel unpacked earlier still does the job.
            if let Some(cached) = cached_kernel(&kernels) {
                eprintln!("vmtest: {e:#}; using the cached {}", cached.display());
                return kernel_in(&cached, suite);
            }
            return Err(e);
        }
    };
    let image = &packages[0];
    let unpacked = kernels.join(image);
    if !unpacked.join(UNPACKED).is_file() {
        banner(&format!(
            "vmtest: fetching {} ({suite})",
            packages.join(" ")
        ));
        let debs = apt.download(&packages, &dir.join("download"), &mut updated)?;
        unpack(&debs, &unpacked, tools)?;
        for deb in debs {
            let _ = std::fs::remove_file(deb); // the unpacked tree is the cache
        }
        prune_other_kernels(dir, &kernels, image);
    }
    kernel_in(&unpacked, suite)
}

/// The suite's kernel image package (first), and the packages that hold its parts when the
/// image is split (`linux-binary-*`, `linux-modules-*`, `linux-base-*`).
fn kernel_packages(apt: &Apt, updated: &mut bool) -> Result<Vec<String>> {
    let meta = apt.depends(KERNEL_META, updated)?;
    let image = parse_kernel_depends(&meta).ok_or_else(|| {
        cannot_run(format!(
            "cannot fetch the {} guest kernel: apt-cache depends {KERNEL_META} names no \
             linux-image package",
            apt.suite
        ))
    })?;
    let parts = parse_split_parts(&apt.depends(&image, updated)?, &image);
    Ok([vec![image], parts].concat())
}

/// Called right after a new kernel is unpacked: the suite's other kernels (400 MB each,
/// unpacked) are superseded, and so is every initramfs built for a kernel no longer kept.
fn prune_other_kernels(dir: &Path, kernels: &Path, keep: &str) {
    let entries = |d: &Path| std::fs::read_dir(d).into_iter().flatten().flatten();
    for e in entries(kernels) {
        if e.file_name() != keep {
            eprintln!("vmtest: removing the superseded {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    // Kernels unpacked before they were kept per suite (`kernel/<package>/`).
    for e in entries(&dir.join("kernel")) {
        let name = e.file_name();
        if !Suite::ALL.iter().any(|s| name == s.name()) {
            eprintln!("vmtest: removing the superseded {}", e.path().display());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    // Kernels of every suite that stay, by version.
    let kept: Vec<String> = entries(&dir.join("kernel"))
        .flat_map(|suite| entries(&suite.path()).collect::<Vec<_>>())
        .filter_map(|k| std::fs::read_to_string(k.path().join(UNPACKED)).ok())
        .map(|v| v.trim().to_string())
        .collect();
    for e in entries(dir) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("initramfs-") else {
            continue;
        };
        if !kept.iter().any(|v| rest.starts_with(&format!("{v}."))) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The versioned package `linux-image-amd64` depends on, e.g. `linux-image-6.1.0-48-amd64`.
fn parse_kernel_depends(text: &str) -> Option<String> {
    depends(text).find(|p| p.starts_with("linux-image-"))
}

/// Where a split image's parts are: its `linux-{binary,modules,base}-<flavour>` dependencies
/// (none for a whole image such as Debian 12's).
fn parse_split_parts(text: &str, image: &str) -> Vec<String> {
    let flavour = image.trim_start_matches("linux-image-");
    depends(text)
        .filter(|p| {
            ["linux-binary-", "linux-modules-", "linux-base-"]
                .iter()
                .any(|part| p.strip_prefix(part) == Some(flavour))
        })
        .collect()
}

/// The plain package names on `Depends:` lines (not `<virtual>` ones).
fn depends(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .filter(|p| !p.contains(['<', ' ']))
        .map(str::to_string)
}

fn cached_kernel(kernels: &Path) -> Option<PathBuf> {
    std::fs::read_dir(kernels)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join(UNPACKED).is_file())
}

fn find_deb(dl: &Path, pkg: &str) -> Result<PathBuf> {
    let prefix = format!("{pkg}_");
    std::fs::read_dir(dl)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .with_context(|| format!("apt-get download left no {prefix}*.deb in {}", dl.display()))
}

/// `dpkg -x` (never install) every part into one tree, moved to the classic layout, and
/// `depmod -b` on it, whose `modules.dep` gives the dependencies of the modules the initramfs
/// takes.
fn unpack(debs: &[PathBuf], into: &Path, tools: &Tools) -> Result<()> {
    // Package names have dots (`linux-image-6.1.0-48-amd64`): append, never `with_extension`.
    let mut partial = into.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("create {}", partial.display()))?;
    let _ = std::fs::remove_dir_all(into);
    for deb in debs {
        let st = run_bounded(
            Command::new("dpkg").arg("-x").arg(deb).arg(&partial),
            "dpkg -x",
            Duration::from_secs(120),
        )?;
        if !st.success() {
            bail!("dpkg -x {} failed ({st})", deb.display());
        }
    }
    to_classic_layout(&partial)?;
    let version = module_version(&partial)?;
    depmod(tools, &partial, &version)?;
    std::fs::rename(&partial, into)?;
    std::fs::write(into.join(UNPACKED), format!("{version}\n"))?;
    Ok(())
}

/// Newer packages keep everything under `usr/lib/modules/<v>/` (with `vmlinuz` beside the
/// modules): moved to `lib/modules/<v>/` and `boot/vmlinuz-<v>`, where `depmod -b` and the
/// rest of vmtest look.
fn to_classic_layout(root: &Path) -> Result<()> {
    let merged = root.join("usr/lib/modules");
    if root.join("lib/modules").exists() || !merged.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(root.join("lib"))?;
    std::fs::rename(&merged, root.join("lib/modules"))?;
    let version = module_version(root)?;
    let image = root.join("lib/modules").join(&version).join("vmlinuz");
    if image.is_file() {
        std::fs::create_dir_all(root.join("boot"))?;
        std::fs::rename(&image, root.join(format!("boot/vmlinuz-{version}")))?;
    }
    Ok(())
}

fn module_version(root: &Path) -> Result<String> {
    let dir = root.join("lib/modules");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("no {} in the kernel package", dir.display()))?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    match versions.len() {
        1 => Ok(versions.remove(0)),
        _ => bail!(
            "expected one kernel version in {}, found {versions:?}",
            dir.display()
        ),
    }
}

fn kernel_in(root: &Path, suite: Suite) -> Result<Kernel> {
    let version = module_version(root)?;
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        bail!(
            "{} missing: delete {} to fetch it again",
            vmlinuz.display(),
            root.display()
        );
    }
    Ok(Kernel {
        suite,
        modules: root.join("lib/modules").join(&version),
        version,
        vmlinuz,
    })
}

pub(super) fn depmod(tools: &Tools, root: &Path, version: &str) -> Result<()> {
    let st = Command::new(&tools.depmod)
        .arg("-b")
        .arg(root)
        .arg(version)
        .stdin(Stdio::null())
        .status()
        .context("spawn depmod")?;
    if !st.success() {
        bail!("depmod -b {} {version} failed ({st})", root.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_kernel_package() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-48-amd64\n";
        assert_eq!(
            parse_kernel_depends(out).as_deref(),
            Some("linux-image-6.1.0-48-amd64")
        );
        assert_eq!(parse_kernel_depends("E: No packages found\n"), None);
        let sid = "linux-image-amd64\n  Depends: linux-base-amd64\n  \
                   Depends: linux-image-7.2.13+deb14-amd64\n";
        assert_eq!(
            parse_kernel_depends(sid).as_deref(),
            Some("linux-image-7.2.13+deb14-amd64")
        );
    }

    #[test]
    fn finds_the_parts_of_a_split_image() {
        let image = "linux-image-7.2.13+deb14-amd64";
        let out = "linux-image-7.2.13+deb14-amd64\n  PreDepends: linux-base\n \
                   |Depends: dracut\n |Depends: initramfs-tools\n  \
                   Depends: <linux-initramfs-tool>\n    dracut\n  \
                   Depends: linux-base-7.2.13+deb14-amd64\n  \
                   Depends: linux-binary-7.2.13+deb14-amd64\n  \
                   Depends: linux-modules-7.2.13+deb14-amd64\n";
        assert_eq!(
            parse_split_parts(out, image),
            [
                "linux-base-7.2.13+deb14-amd64",
                "linux-binary-7.2.13+deb14-amd64",
                "linux-modules-7.2.13+deb14-amd64"
            ]
        );
        // Debian 12's image is whole: no parts.
        let whole = "linux-image-6.1.0-48-amd64\n  PreDepends: kmod\n  \
                     Depends: initramfs-tools\n  Depends: linux-base\n";
        assert!(parse_split_parts(whole, "linux-image-6.1.0-48-amd64").is_empty());
    }

    #[test]
    fn names_the_suites() {
        assert_eq!(Suite::parse("sid").unwrap(), Suite::Sid);
        assert_eq!(Suite::parse("bookworm").unwrap(), Suite::Bookworm);
        assert!(Suite::parse("trixie").is_err());
    }
}
